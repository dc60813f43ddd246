//! `hutch-envd`, the agent inside every Hutch sandbox.
//!
//! It runs as the sandbox's PID 1, reaps orphans, and serves the
//! E2B-compatible agent API on a unix socket (and optionally TCP):
//!
//! * `GET /health`, `POST /init`, `GET /envs` — plain HTTP ([`http`]);
//! * `process.Process` — the Connect service that starts and watches
//!   processes ([`service`]);
//! * `filesystem.Filesystem` — stat, list, create, move, remove and watch
//!   files ([`filesystem`], [`watch`]);
//! * `GET /files`, `POST /files` — file download and upload ([`transfer`]);
//! * requests the host forwards to a port in the sandbox ([`forward`]).
//!
//! Every process gets its environment, user and working directory from
//! [`hutch_env::resolve`], fed with the template layer from the boot
//! configuration ([`hutch_protocol::boot::BootConfig`]), the sandbox layer
//! from `/init`, and the request.

pub mod console;
pub mod filesystem;
pub mod forward;
pub mod fsops;
pub mod http;
pub mod process;
pub mod reaper;
pub mod service;
pub mod spawn;
pub mod status;
pub mod transfer;
pub mod watch;

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hutch_env::EnvError;
use hutch_protocol::boot::{BootConfig, InitRequest};
use tokio::net::{TcpListener, UnixListener};

use crate::process::ProcessTable;

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The host → agent boot configuration.
    pub boot: BootConfig,
    /// Root of the filesystem whose `/etc/passwd` and `/etc/group` name
    /// users (`/` in a sandbox).
    pub accounts_root: PathBuf,
}

/// Sandbox-level settings, replaced by `POST /init`.
#[derive(Debug, Clone, Default)]
pub struct SandboxState {
    /// Layer 3 of the environment.
    pub env: Vec<(String, String)>,
    /// The access token every request must carry, once set.
    pub access_token: Option<String>,
    /// Default user when the template names none.
    pub default_user: Option<String>,
    /// Sandbox-level default working directory.
    pub default_workdir: Option<String>,
}

/// Why a process's environment could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// `/etc/passwd` or `/etc/group` could not be read.
    #[error("reading /etc/passwd and /etc/group: {0}")]
    Accounts(io::Error),
    /// A layer is invalid, or names an unknown user or group.
    #[error(transparent)]
    Env(EnvError),
}

/// One agent: its configuration, sandbox state and processes.
pub struct Agent {
    boot: BootConfig,
    accounts_root: PathBuf,
    sandbox: RwLock<SandboxState>,
    processes: Arc<ProcessTable>,
    watchers: watch::PollWatchers,
}

impl Agent {
    /// A new agent.
    pub fn new(config: AgentConfig) -> Arc<Agent> {
        Arc::new(Agent {
            boot: config.boot,
            accounts_root: config.accounts_root,
            sandbox: RwLock::new(SandboxState::default()),
            processes: Arc::default(),
            watchers: watch::PollWatchers::default(),
        })
    }

    /// The environment, user and working directory a process started now
    /// gets, given its own layer (`env`, `user`, `cwd`): the one
    /// [`hutch_env::resolve`] over the template layer of the boot
    /// configuration and the sandbox layer of `sandbox`.
    pub fn resolve_process(
        &self,
        sandbox: &SandboxState,
        env: &[(String, String)],
        user: Option<&str>,
        cwd: Option<&str>,
        pty: bool,
    ) -> Result<hutch_env::Resolved, ResolveError> {
        let accounts =
            hutch_env::Accounts::load(&self.accounts_root).map_err(ResolveError::Accounts)?;
        let boot = &self.boot;
        let template_user = boot
            .template_user
            .as_deref()
            .or(sandbox.default_user.as_deref());
        hutch_env::resolve(
            &hutch_env::TemplateLayer {
                env: &boot.template_env,
                user: template_user,
                workdir: boot.template_workdir.as_deref(),
            },
            &hutch_env::SandboxLayer {
                env: &sandbox.env,
                workdir: sandbox.default_workdir.as_deref(),
            },
            &hutch_env::ProcessLayer {
                env,
                user,
                cwd,
                pty,
            },
            &hutch_env::Identity {
                sandbox_id: &boot.sandbox_id,
                template_id: &boot.template_id,
                hostname: &boot.sandbox_id,
            },
            &accounts,
        )
        .map_err(ResolveError::Env)
    }

    /// The boot configuration.
    pub fn boot(&self) -> &BootConfig {
        &self.boot
    }

    /// How many polling filesystem watchers (`CreateWatcher`) exist.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// A snapshot of the sandbox-level settings.
    pub fn sandbox_state(&self) -> SandboxState {
        self.sandbox
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `POST /init`: replaces the sandbox-level variables (when
    /// given) and sets the access token, default user and workdir (when
    /// given).
    pub fn init(&self, request: InitRequest) -> Result<(), EnvError> {
        let env = match request.env_vars {
            Some(vars) => {
                let env: Vec<(String, String)> = vars.into_iter().collect();
                hutch_env::validate_sandbox_env(&env)?;
                Some(env)
            }
            None => None,
        };
        let mut state = self.sandbox.write().unwrap_or_else(|e| e.into_inner());
        if let Some(env) = env {
            state.env = env;
        }
        if let Some(token) = request.access_token {
            state.access_token = (!token.is_empty()).then_some(token);
        }
        if let Some(user) = request.default_user {
            state.default_user = (!user.is_empty()).then_some(user);
        }
        if let Some(workdir) = request.default_workdir {
            state.default_workdir = (!workdir.is_empty()).then_some(workdir);
        }
        Ok(())
    }

    /// The HTTP router serving this agent.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(self.clone())
    }

    /// Serves on a unix socket until the listener fails.
    pub async fn serve_unix(self: &Arc<Self>, listener: UnixListener) -> io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Serves `POST /environment` alone on `listener`, without a token:
    /// see [`bind_environment_socket`].
    pub async fn serve_environment(self: &Arc<Self>, listener: UnixListener) -> io::Result<()> {
        axum::serve(listener, http::environment_router(self.clone())).await
    }

    /// Serves on TCP until the listener fails, with `TCP_NODELAY` on every
    /// accepted connection.
    pub async fn serve_tcp(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        axum::serve(listener, self.router()).await
    }

    /// Stops every running process: `SIGTERM` to each process group, then
    /// `SIGKILL` to those still running after `grace`.
    pub async fn stop_processes(&self, grace: std::time::Duration) {
        let running = self.processes.list();
        for handle in &running {
            let _ = handle.signal(libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && running.iter().any(|h| !h.ended()) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for handle in running.iter().filter(|h| !h.ended()) {
            let _ = handle.signal(libc::SIGKILL);
        }
    }
}

/// Creates the template's default working directory if it is missing
/// (`mkdir -p`, owned by root, as Docker does for `WORKDIR`).
pub fn ensure_workdir(boot: &BootConfig) -> io::Result<()> {
    match boot.template_workdir.as_deref() {
        Some(dir) if !dir.is_empty() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir),
        _ => Ok(()),
    }
}

/// Takes over the listening unix socket the host passed on descriptor `fd`
/// (see `hutch_protocol::boot::AGENT_LISTEN_FD`). Checks that it is a
/// listening stream socket of the unix family, and marks it close-on-exec so
/// that no process the agent starts inherits it.
pub fn inherited_listener(fd: i32) -> io::Result<UnixListener> {
    use rustix::net::sockopt;
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    // SAFETY: only borrowed for the checks below; nothing else in the agent
    // uses or closes this descriptor, which the host opened for it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = rustix::io::fcntl_getfd(borrowed)?;
    rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC)?;
    let not_ours = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is {what}"),
        )
    };
    if sockopt::socket_domain(borrowed)? != rustix::net::AddressFamily::UNIX {
        return Err(not_ours("not a unix socket"));
    }
    if sockopt::socket_type(borrowed)? != rustix::net::SocketType::STREAM {
        return Err(not_ours("not a stream socket"));
    }
    if !sockopt::socket_acceptconn(borrowed)? {
        return Err(not_ours("not listening"));
    }
    // SAFETY: the descriptor is open (the checks above succeeded on it) and
    // from here on owned by the listener alone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_listener = std::os::unix::net::UnixListener::from(owned);
    std_listener.set_nonblocking(true)?;
    UnixListener::from_std(std_listener)
}

/// Binds the environment socket (`--environment-socket`): removes a stale
/// one, binds, and opens it to every user in the sandbox (it only answers
/// what processes of the sandbox are given anyway).
pub fn bind_environment_socket(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let listener = bind_fresh(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Removes a stale socket (or anything else) at `path` and binds there.
fn bind_fresh(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Binds the agent's unix socket: creates its directory (mode 0700),
/// removes a stale socket, binds.
pub fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    bind_fresh(path)
}
