//! Invoking `runc` with Hutch's private state root.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::error::{IoContext, RuntimeError};
use crate::toolns::ToolNamespace;

/// Upper bound for one runc invocation; runc normally takes milliseconds.
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The part of `runc state` output Hutch uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RuncState {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The container's init process as seen from the host (0 if stopped).
    #[serde(default)]
    pub pid: u32,
}

/// `runc` with `--root` set, so Hutch's containers live apart from any
/// other runc user on the host.
#[derive(Debug, Clone)]
pub(crate) struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    /// Where runc runs (see [`ToolNamespace`]).
    pub tools: Arc<ToolNamespace>,
}

/// Output of a finished runc command.
struct Finished {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Runc {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        self.tools.apply_async(&mut cmd);
        cmd.arg("--root").arg(&self.root);
        cmd.kill_on_drop(true);
        cmd
    }

    async fn finish(
        &self,
        mut cmd: Command,
        id: &str,
        what: &'static str,
    ) -> Result<Finished, RuntimeError> {
        let out = match tokio::time::timeout(RUNC_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(RuntimeError::io(
                    format!("run {} {what}", self.binary.display()),
                    e,
                ));
            }
            Err(_) => {
                return Err(RuntimeError::Runc {
                    id: id.to_owned(),
                    command: what,
                    status: format!("no exit within {RUNC_TIMEOUT:?}; killed"),
                    output: String::new(),
                });
            }
        };
        Ok(Finished {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `runc run --detach`: creates and starts the container. runc hands its
    /// own stdio to the container's init, so stdin is `/dev/null` and
    /// stdout/stderr go to `log` (runc's own errors land there too), and
    /// `listener` becomes the init's descriptor
    /// [`hutch_protocol::boot::AGENT_LISTEN_FD`] (`--preserve-fds 1`).
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        listener: OwnedFd,
    ) -> Result<(), RuntimeError> {
        let open_log = || {
            // Readable too: the agent keeps it bounded by rotating it.
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(log)
                .ctx(|| format!("open {}", log.display()))
        };
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--detach")
            .arg("--pid-file")
            .arg(pid_file)
            .arg("--preserve-fds")
            .arg("1")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(open_log()?))
            .stderr(Stdio::from(open_log()?));
        let raw = listener.as_raw_fd();
        let target = hutch_protocol::boot::AGENT_LISTEN_FD;
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (dup2, fcntl) on a
        // descriptor that stays open until `cmd` has been spawned
        // (`listener` lives to the end of this function).
        unsafe {
            cmd.pre_exec(move || {
                if raw == target {
                    // Already in place: only its close-on-exec flag goes.
                    let flags = libc::fcntl(raw, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = match tokio::time::timeout(RUNC_TIMEOUT, cmd.status()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(RuntimeError::io(
                    format!("run {} run", self.binary.display()),
                    e,
                ));
            }
            Err(_) => {
                return Err(RuntimeError::Runc {
                    id: id.to_owned(),
                    command: "run",
                    status: format!("no exit within {RUNC_TIMEOUT:?}; killed"),
                    output: crate::log_tail(log),
                });
            }
        };
        drop(listener);
        if status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Runc {
                id: id.to_owned(),
                command: "run",
                status: status.to_string(),
                output: crate::log_tail(log),
            })
        }
    }

    /// `runc state`; `None` if runc does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuncState>, RuntimeError> {
        let mut cmd = self.command();
        cmd.arg("state").arg(id).stdin(Stdio::null());
        let out = self.finish(cmd, id, "state").await?;
        if !out.success {
            if is_not_exist(&out.stderr) {
                return Ok(None);
            }
            return Err(RuntimeError::Runc {
                id: id.to_owned(),
                command: "state",
                status: out.status,
                output: tail(&out.stderr),
            });
        }
        serde_json::from_str(&out.stdout)
            .map(Some)
            .map_err(|source| RuntimeError::Json {
                context: format!("parse `runc state {id}` output"),
                source,
            })
    }

    /// `runc delete --force`: kills the container's processes (SIGKILL to
    /// its init, which takes the whole pid namespace with it) and removes
    /// runc's state and the container's cgroups. A container runc does not
    /// know is not an error.
    pub async fn delete_force(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command();
        cmd.arg("delete")
            .arg("--force")
            .arg(id)
            .stdin(Stdio::null());
        let out = self.finish(cmd, id, "delete").await?;
        if out.success || is_not_exist(&out.stderr) {
            Ok(())
        } else {
            Err(RuntimeError::Runc {
                id: id.to_owned(),
                command: "delete",
                status: out.status,
                output: tail(&out.stderr),
            })
        }
    }
}

impl Runc {
    /// `runc kill --all <id> KILL`: SIGKILL to every process of the
    /// container (runc freezes the cgroup while it signals, so none can fork
    /// away). A container runc does not know is not found; one already
    /// stopped is fine.
    pub async fn kill_all(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command();
        cmd.arg("kill")
            .arg("--all")
            .arg(id)
            .arg("KILL")
            .stdin(Stdio::null());
        let out = self.finish(cmd, id, "kill").await?;
        if out.stderr.contains("not running") {
            return Ok(());
        }
        found_or_failed(out, id, "kill")
    }
}

/// A container command's outcome: success, [`RuntimeError::NotFound`] when
/// runc does not know the container, else the command's failure.
fn found_or_failed(out: Finished, id: &str, what: &'static str) -> Result<(), RuntimeError> {
    if out.success {
        Ok(())
    } else if is_not_exist(&out.stderr) {
        Err(RuntimeError::NotFound { id: id.to_owned() })
    } else {
        Err(RuntimeError::Runc {
            id: id.to_owned(),
            command: what,
            status: out.status,
            output: tail(&out.stderr),
        })
    }
}

/// runc's message for an unknown container id.
fn is_not_exist(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("not exist")
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let start = s.len().saturating_sub(2000);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_owned()
}
