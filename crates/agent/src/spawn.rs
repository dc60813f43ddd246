//! Starting one process: its own session and process group, the resolved
//! identity and working directory, the exact environment, and either pipes
//! or a pseudo-terminal for its standard streams.
//!
//! Every process also gets an `oom_score_adj` [`CHILD_OOM_SCORE_ADJ_OFFSET`]
//! above the agent's own, so that when the sandbox runs out of memory the
//! kernel's OOM killer picks a user process, however small, rather than
//! the agent (which the sandbox cannot live without). Raising the value
//! needs no privilege; lowering the agent's would.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::reaper::{ExitReceiver, reaper};

/// Everything needed to start one process.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// The program: a path, or a bare name looked up in the child's `PATH`.
    pub program: &'a str,
    /// Arguments after `argv[0]`.
    pub args: &'a [String],
    /// The complete environment.
    pub env: &'a [(String, String)],
    /// User id to run as.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: &'a [u32],
    /// Working directory.
    pub cwd: &'a str,
    /// Whether stdin is a pipe kept open for input (else `/dev/null`).
    /// Ignored with a PTY.
    pub stdin: bool,
    /// Start on a new pseudo-terminal of this size (columns, rows).
    pub pty: Option<(u16, u16)>,
}

/// The parent's ends of a started process's standard streams.
pub enum ChildIo {
    /// Separate pipes.
    Pipes {
        /// Stdin, when it was requested.
        stdin: Option<pipe::Sender>,
        /// Stdout.
        stdout: pipe::Receiver,
        /// Stderr.
        stderr: pipe::Receiver,
    },
    /// One pseudo-terminal for all three.
    Pty(PtyMaster),
}

/// A started process.
pub struct Spawned {
    /// Its pid, which is also its process group and session id.
    pub pid: u32,
    /// Its streams.
    pub io: ChildIo,
    /// Delivers its wait status.
    pub exit: ExitReceiver,
}

/// How much higher than the agent's the `oom_score_adj` of every process
/// it starts is (capped at 1000). The kernel adds `adj / 1000` of the
/// memory limit to a process's size when it chooses whom to kill, so with
/// 500 any user process outweighs the agent, which uses a few MiB.
pub const CHILD_OOM_SCORE_ADJ_OFFSET: i32 = 500;

/// The `oom_score_adj` of a process the agent starts, given the agent's.
pub fn child_oom_score_adj(agent: i32) -> i32 {
    agent
        .saturating_add(CHILD_OOM_SCORE_ADJ_OFFSET)
        .clamp(-1000, 1000)
}

/// [`child_oom_score_adj`] of this process's own value, as the text written
/// to `/proc/self/oom_score_adj` (read once).
fn child_oom_score_adj_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        child_oom_score_adj(own).to_string()
    })
}

/// Starts a process as described. Must be called within a tokio runtime.
pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<Spawned> {
    let mut cmd = Command::new(spec.program);
    cmd.args(spec.args);
    cmd.env_clear();
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));

    let mut master = None;
    if let Some((cols, rows)) = spec.pty {
        let (m, slave) = open_pty(cols, rows)?;
        cmd.stdin(Stdio::from(slave.try_clone()?));
        cmd.stdout(Stdio::from(slave.try_clone()?));
        cmd.stderr(Stdio::from(slave));
        master = Some(m);
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
    }

    let cwd = CString::new(spec.cwd).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "working directory contains NUL",
        )
    })?;
    let groups: Vec<libc::gid_t> = spec.groups.to_vec();
    let (uid, gid) = (spec.uid, spec.gid);
    // SAFETY: plain syscalls.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // Without privileges the identity can only stay what it is.
    let switch_identity = euid == 0 || uid != euid || gid != egid;
    let controlling_tty = spec.pty.is_some();
    let oom_score_adj = child_oom_score_adj_text();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls; it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Best effort: a process that cannot be marked still runs.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, oom_score_adj.as_ptr().cast(), oom_score_adj.len());
                libc::close(fd);
            }
            if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if switch_identity
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let (mut child, exit) = reaper().spawn(|| cmd.spawn())?;
    // The command holds the parent's copies of the pty slave; close them so
    // the master sees EOF once the process (and its descendants) exit.
    drop(cmd);
    let pid = child.id();
    let io = match master {
        Some(master) => ChildIo::Pty(PtyMaster::new(master)?),
        None => {
            let stdin = match child.stdin.take() {
                Some(s) => Some(pipe::Sender::from_owned_fd(OwnedFd::from(s))?),
                None => None,
            };
            let stdout = child.stdout.take().expect("stdout is piped");
            let stderr = child.stderr.take().expect("stderr is piped");
            ChildIo::Pipes {
                stdin,
                stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?,
                stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?,
            }
        }
    };
    // `child` is dropped without waiting: the reaper owns waiting.
    Ok(Spawned { pid, io, exit })
}

/// Opens a new pseudo-terminal pair of the given size.
fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if peer >= 0 {
        // SAFETY: `peer` is a new fd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(peer) }
    } else {
        // Kernels before 4.13: open the slave by name.
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `name` is a writable buffer of the given length.
        if unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `name` is NUL-terminated by ptsname_r.
        let fd = unsafe {
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    resize_fd(&master, cols, rows)?;
    Ok((master, slave))
}

fn resize_fd(fd: &OwnedFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the given pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The agent's side of a process's pseudo-terminal.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        // SAFETY: fcntl on a valid fd.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `fd` is an open descriptor that the AsyncFd owns for its
        // whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(PtyMaster { fd })
    }

    /// Reads output; `Ok(0)` once every holder of the terminal has exited.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => return Ok(n),
                // Linux reports a hung-up terminal as EIO.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: `data` is valid for reads of its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Changes the terminal's size (the process gets `SIGWINCH`).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        resize_fd(self.fd.get_ref(), cols, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_the_oom_killers_first_choice() {
        assert_eq!(child_oom_score_adj(0), 500);
        assert_eq!(child_oom_score_adj(-900), -400);
        assert_eq!(child_oom_score_adj(700), 1000);
        assert_eq!(child_oom_score_adj(-1000), -500);
    }
}
