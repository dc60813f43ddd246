//! The one place that waits for child processes.
//!
//! As PID 1 of its sandbox the agent inherits every orphaned process and
//! must reap it, or zombies pile up. It also needs the exit status of the
//! processes it started itself. Both are done by a single reaper thread that
//! owns `wait` for the whole program; nothing else may wait for a child.
//!
//! The thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`, which reports a
//! zombie without reaping it, then takes the registry lock and reaps that
//! pid. Processes are started with the same lock held ([`Reaper::spawn`]),
//! which gives two guarantees:
//!
//! * a child that exits immediately is registered before its status is
//!   looked up, so no status is lost;
//! * a child whose `exec` fails is reaped by `std::process::Command` itself
//!   (it waits for such a child before returning the error); because the
//!   reaper only reaps under the lock, it cannot steal that status.
//!
//! Statuses of unregistered pids (orphans) are discarded. When there are no
//! children at all the thread sleeps on a condition variable until the next
//! spawn.

use std::collections::HashMap;
use std::io;
use std::process::Child;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;

/// Receives the raw `waitpid` status of one child.
pub type ExitReceiver = oneshot::Receiver<i32>;

/// The program-wide reaper. Get it with [`reaper`].
pub struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

#[derive(Default)]
struct State {
    waiters: HashMap<libc::pid_t, oneshot::Sender<i32>>,
    /// Bumped on every spawn; lets the thread sleep while there are no
    /// children without missing one started meanwhile.
    generation: u64,
}

/// The reaper, started on first use.
pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            state: Mutex::new(State::default()),
            spawned: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || reaper.run())
            .expect("starting the reaper thread");
        reaper
    })
}

impl Reaper {
    /// Runs `spawn` (which starts exactly one child) with the registry
    /// locked and registers the child, returning a receiver for its status.
    pub fn spawn(
        &self,
        spawn: impl FnOnce() -> io::Result<Child>,
    ) -> io::Result<(Child, ExitReceiver)> {
        let mut state = self.lock();
        let child = spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(child.id() as libc::pid_t, tx);
        state.generation += 1;
        drop(state);
        self.spawned.notify_one();
        Ok((child, rx))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        loop {
            let generation = self.lock().generation;
            // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc == 0 {
                // SAFETY: waitid succeeded for a child, so si_pid is set.
                let pid = unsafe { info.si_pid() };
                if pid > 0 {
                    self.reap(pid);
                }
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    let mut state = self.lock();
                    while state.generation == generation {
                        state = self.spawned.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                }
                _ => {
                    // Not expected; avoid a busy loop.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    fn reap(&self, pid: libc::pid_t) {
        let mut state = self.lock();
        let mut status = 0;
        // SAFETY: plain syscall with a valid pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != pid {
            // Already reaped by `Command::spawn` after a failed exec.
            return;
        }
        match state.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => tracing::debug!(pid, status, "reaped orphan"),
        }
    }
}
