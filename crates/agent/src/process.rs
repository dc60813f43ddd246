//! Processes the agent started: their output fan-out, input and end.
//!
//! Each process has one pump task that drains its output as it arrives and
//! forwards every chunk to the current watchers (the `Start` call that
//! created it and any `Connect` calls). A watcher is a bounded channel: a
//! slow watcher slows the pump (and so the process) rather than losing
//! output, and a watcher that went away is dropped. With no watchers left
//! the output is still drained, so a process whose client disconnected
//! keeps running and never blocks on a full pipe.
//!
//! The `end` event is sent once the process has exited and its output has
//! reached end-of-file — or, when a background child it left behind still
//! holds the output open, [`EXIT_GRACE`] after the exit: everything the
//! process wrote before exiting is in the pipe by then and is delivered, so
//! `sh -c 'server & echo started'` returns like it does in a terminal. The
//! background child's later output is drained and discarded (it never gets
//! `SIGPIPE` or blocks on a full pipe).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hutch_protocol::envd::process::ProcessConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::reaper::ExitReceiver;
use crate::spawn::{ChildIo, PtyMaster};
use crate::status::ExitInfo;

/// How long output is still forwarded after the process exited while a
/// descendant keeps its output open.
pub const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Largest output chunk sent in one `data` event.
pub const CHUNK_SIZE: usize = 32 * 1024;
/// Chunks buffered per watcher before the pump waits for it.
const WATCHER_BUFFER: usize = 16;
/// Finished processes remembered for `Connect` after their end.
const FINISHED_KEPT: usize = 64;

/// One event of a process's life after `start`.
#[derive(Debug, Clone)]
pub enum Event {
    /// Output on stdout.
    Stdout(Bytes),
    /// Output on stderr.
    Stderr(Bytes),
    /// Output on the pseudo-terminal.
    Pty(Bytes),
    /// The end; always the last event.
    End(ExitInfo),
}

/// What a new watcher gets.
pub enum Watch {
    /// The process is running: events from now on, ending with `End`.
    Live(mpsc::Receiver<Event>),
    /// The process already ended.
    Ended(ExitInfo),
}

enum Input {
    Pipe(pipe::Sender),
    Pty(Arc<PtyMaster>),
}

#[derive(Default)]
struct Watchers {
    senders: Vec<mpsc::Sender<Event>>,
    end: Option<ExitInfo>,
}

/// A process started by the agent.
pub struct ProcessHandle {
    /// Its pid (also its process group id).
    pub pid: u32,
    /// The tag given when it was started.
    pub tag: Option<String>,
    /// The configuration it was started with, as requested.
    pub config: ProcessConfig,
    /// Start order within the agent (pids can wrap; this does not).
    seq: u64,
    input: tokio::sync::Mutex<Option<Input>>,
    pty: Option<Arc<PtyMaster>>,
    watchers: Mutex<Watchers>,
}

/// Why input could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Stdin was not requested, or was closed.
    #[error("stdin of process {0} is not open (started with stdin disabled, or already closed)")]
    Closed(u32),
    /// Writing failed (the process closed its end, or exited).
    #[error("writing to process {pid}: {source}")]
    Write {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ProcessHandle {
    fn watchers(&self) -> MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a watcher.
    pub fn watch(&self) -> Watch {
        let mut watchers = self.watchers();
        if let Some(end) = &watchers.end {
            return Watch::Ended(end.clone());
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        watchers.senders.push(tx);
        Watch::Live(rx)
    }

    /// Whether the process has ended.
    pub fn ended(&self) -> bool {
        self.watchers().end.is_some()
    }

    /// Whether the process runs on a pseudo-terminal.
    pub fn has_pty(&self) -> bool {
        self.pty.is_some()
    }

    /// Writes input to the process's stdin or terminal.
    pub async fn write_input(&self, data: &[u8]) -> Result<(), InputError> {
        let mut input = self.input.lock().await;
        let result = match input.as_mut() {
            None => return Err(InputError::Closed(self.pid)),
            Some(Input::Pipe(pipe)) => pipe.write_all(data).await,
            Some(Input::Pty(master)) => master.write_all(data).await,
        };
        result.map_err(|source| InputError::Write {
            pid: self.pid,
            source,
        })
    }

    /// Closes stdin (end-of-file for the process). Returns false when there
    /// was no open stdin pipe.
    pub async fn close_stdin(&self) -> bool {
        let mut input = self.input.lock().await;
        match input.as_ref() {
            Some(Input::Pipe(_)) => {
                *input = None;
                true
            }
            _ => false,
        }
    }

    /// Resizes the process's terminal. Returns false without one.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<bool> {
        match &self.pty {
            Some(pty) => pty.resize(cols, rows).map(|()| true),
            None => Ok(false),
        }
    }

    /// Sends `signal` to the process's whole process group.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let pgid = self.pid as libc::pid_t;
        // SAFETY: plain syscall.
        if unsafe { libc::kill(-pgid, signal) } == 0 {
            return Ok(());
        }
        let group_error = io::Error::last_os_error();
        // The group may be gone while the process is not (it left it).
        // SAFETY: plain syscall.
        if unsafe { libc::kill(pgid, signal) } == 0 {
            return Ok(());
        }
        Err(group_error)
    }

    async fn broadcast(&self, event: Event) {
        let senders = self.watchers().senders.clone();
        let mut gone = Vec::new();
        for (i, tx) in senders.iter().enumerate() {
            if tx.send(event.clone()).await.is_err() {
                gone.push(i);
            }
        }
        if !gone.is_empty() {
            let mut watchers = self.watchers();
            watchers
                .senders
                .retain(|tx| !gone.iter().any(|&i| tx.same_channel(&senders[i])));
        }
    }

    async fn finish(&self, info: ExitInfo) {
        let senders = {
            let mut watchers = self.watchers();
            watchers.end = Some(info.clone());
            std::mem::take(&mut watchers.senders)
        };
        for tx in senders {
            let _ = tx.send(Event::End(info.clone())).await;
        }
    }
}

/// The processes of one agent.
#[derive(Default)]
pub struct ProcessTable {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    started: u64,
    running: HashMap<u32, Arc<ProcessHandle>>,
    /// Most recent last.
    finished: VecDeque<Arc<ProcessHandle>>,
}

/// Which process a call is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// By pid.
    Pid(u32),
    /// By the tag given at start.
    Tag(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(pid) => write!(f, "process with pid {pid}"),
            Selector::Tag(tag) => write!(f, "process with tag {tag:?}"),
        }
    }
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a freshly spawned process and starts draining it. The
    /// returned watch sees every event from the first byte of output.
    pub fn insert(
        self: &Arc<Self>,
        pid: u32,
        tag: Option<String>,
        config: ProcessConfig,
        io: ChildIo,
        exit: ExitReceiver,
    ) -> (Arc<ProcessHandle>, Watch) {
        let (input, pty, output) = match io {
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (stdin.map(Input::Pipe), None, Output::Pipes(stdout, stderr)),
            ChildIo::Pty(master) => {
                let master = Arc::new(master);
                (
                    Some(Input::Pty(master.clone())),
                    Some(master.clone()),
                    Output::Pty(master),
                )
            }
        };
        let mut table = self.lock();
        table.started += 1;
        let handle = Arc::new(ProcessHandle {
            pid,
            tag,
            config,
            seq: table.started,
            input: tokio::sync::Mutex::new(input),
            pty,
            watchers: Mutex::new(Watchers::default()),
        });
        let watch = handle.watch();
        table.running.insert(pid, handle.clone());
        drop(table);
        let table = Arc::clone(self);
        let pump_handle = handle.clone();
        tokio::spawn(async move {
            let info = pump(&pump_handle, output, exit).await;
            // Stdin is useless now; close it so nothing blocks on it.
            *pump_handle.input.lock().await = None;
            table.retire(&pump_handle);
            pump_handle.finish(info).await;
        });
        (handle, watch)
    }

    fn retire(&self, handle: &Arc<ProcessHandle>) {
        let mut table = self.lock();
        if let Some(h) = table.running.get(&handle.pid)
            && Arc::ptr_eq(h, handle)
        {
            table.running.remove(&handle.pid);
        }
        table.finished.push_back(handle.clone());
        while table.finished.len() > FINISHED_KEPT {
            table.finished.pop_front();
        }
    }

    /// A running process.
    pub fn running(&self, selector: &Selector) -> Option<Arc<ProcessHandle>> {
        let table = self.lock();
        match selector {
            Selector::Pid(pid) => table.running.get(pid).cloned(),
            Selector::Tag(tag) => table
                .running
                .values()
                .filter(|h| h.tag.as_deref() == Some(tag))
                .max_by_key(|h| h.seq)
                .cloned(),
        }
    }

    /// A running process, else the most recent finished one that matches.
    pub fn any(&self, selector: &Selector) -> Option<Arc<ProcessHandle>> {
        if let Some(h) = self.running(selector) {
            return Some(h);
        }
        let table = self.lock();
        table
            .finished
            .iter()
            .rev()
            .find(|h| match selector {
                Selector::Pid(pid) => h.pid == *pid,
                Selector::Tag(tag) => h.tag.as_deref() == Some(tag),
            })
            .cloned()
    }

    /// All running processes, by pid.
    pub fn list(&self) -> Vec<Arc<ProcessHandle>> {
        let mut list: Vec<_> = self.lock().running.values().cloned().collect();
        list.sort_by_key(|h| h.seq);
        list
    }
}

enum Output {
    Pipes(pipe::Receiver, pipe::Receiver),
    Pty(Arc<PtyMaster>),
}

/// Drains the process's output to its watchers until it has exited and the
/// output is closed; returns how it ended.
async fn pump(handle: &ProcessHandle, output: Output, exit: ExitReceiver) -> ExitInfo {
    let mut exit = std::pin::pin!(exit);
    let mut status: Option<i32> = None;
    match output {
        Output::Pipes(mut stdout, mut stderr) => {
            let mut out_buf = vec![0u8; CHUNK_SIZE];
            let mut err_buf = vec![0u8; CHUNK_SIZE];
            let (mut out_open, mut err_open) = (true, true);
            let grace = tokio::time::sleep(std::time::Duration::MAX);
            let mut grace = std::pin::pin!(grace);
            while out_open || err_open || status.is_none() {
                tokio::select! {
                    () = &mut grace, if status.is_some() => {
                        tokio::spawn(discard_rest(out_open.then_some(stdout), err_open.then_some(stderr)));
                        break;
                    }
                    r = stdout.read(&mut out_buf), if out_open => match r {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => handle.broadcast(Event::Stdout(Bytes::copy_from_slice(&out_buf[..n]))).await,
                    },
                    r = stderr.read(&mut err_buf), if err_open => match r {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => handle.broadcast(Event::Stderr(Bytes::copy_from_slice(&err_buf[..n]))).await,
                    },
                    s = &mut exit, if status.is_none() => {
                        status = Some(s.unwrap_or(-1));
                        grace.as_mut().reset(tokio::time::Instant::now() + EXIT_GRACE);
                    }
                }
            }
        }
        Output::Pty(master) => {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let mut open = true;
            while open || status.is_none() {
                tokio::select! {
                    r = master.read(&mut buf), if open => match r {
                        Ok(0) | Err(_) => open = false,
                        Ok(n) => handle.broadcast(Event::Pty(Bytes::copy_from_slice(&buf[..n]))).await,
                    },
                    s = &mut exit, if status.is_none() => status = Some(s.unwrap_or(-1)),
                }
            }
        }
    }
    match status {
        Some(s) if s >= 0 => ExitInfo::from_wait_status(s),
        _ => ExitInfo {
            exit_code: -1,
            exited: false,
            status: "unknown".into(),
            error: Some("the process's exit status was lost".into()),
        },
    }
}

/// Reads what a finished process's descendants still write, so they never
/// block or get `SIGPIPE`, until they close the output.
async fn discard_rest(stdout: Option<pipe::Receiver>, stderr: Option<pipe::Receiver>) {
    async fn drain(pipe: Option<pipe::Receiver>) {
        if let Some(mut pipe) = pipe {
            let mut buf = vec![0u8; 4096];
            while matches!(pipe.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    }
    tokio::join!(drain(stdout), drain(stderr));
}
