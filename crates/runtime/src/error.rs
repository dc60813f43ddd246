//! The runtime's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while booting, adopting, talking to or
/// destroying a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configured `runc` binary could not be executed at all.
    #[error("runc not found: install it with `apt install runc` (tried {path}: {source})")]
    RuncNotFound {
        /// The configured runc path (or bare name looked up in `PATH`).
        path: PathBuf,
        /// Why it could not be started.
        source: std::io::Error,
    },

    /// `runc --version` ran but failed.
    #[error("runc at {path} does not work: `runc --version` failed: {detail}")]
    RuncBroken {
        /// The configured runc path.
        path: PathBuf,
        /// Exit status and output.
        detail: String,
    },

    /// The agent binary to bind into sandboxes is missing or unusable.
    #[error("agent binary {path} is not usable: {reason}")]
    EnvdNotFound {
        /// The configured host path of `hutch-envd`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// No sandbox container with this id exists.
    #[error("sandbox {id} does not exist")]
    NotFound {
        /// The sandbox id.
        id: String,
    },

    /// The configuration cannot work (for example a path overlayfs cannot
    /// take in its mount options).
    #[error("invalid runtime configuration: {0}")]
    InvalidConfig(String),

    /// The sandbox id cannot be used as a directory name, hostname and runc
    /// container id.
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The [`SandboxSpec`](crate::SandboxSpec) is inconsistent.
    #[error("invalid sandbox spec for {id}: {reason}")]
    InvalidSpec {
        /// The sandbox id.
        id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Something already exists on the host under this id (a state
    /// directory or a runc container); nothing was touched.
    #[error("sandbox {0} already exists on this host")]
    AlreadyExists(String),

    /// A template layer directory is missing or not a directory.
    #[error("layer {path} is not a directory: {reason}")]
    Layer {
        /// The layer path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A `runc` invocation failed.
    #[error("`runc {command}` for sandbox {id} failed ({status}): {output}")]
    Runc {
        /// The sandbox id.
        id: String,
        /// The runc sub-command (`run`, `delete`, `state`).
        command: &'static str,
        /// Exit status, or why it did not exit.
        status: String,
        /// The tail of what runc printed.
        output: String,
    },

    /// The container's init (the agent) exited while the sandbox booted.
    #[error("sandbox {id}: the agent exited during boot; container log tail:\n{log_tail}")]
    AgentExited {
        /// The sandbox id.
        id: String,
        /// The last lines of `console.log`.
        log_tail: String,
    },

    /// The agent did not answer `GET /health` in time while booting.
    #[error(
        "sandbox {id}: the agent did not answer on {socket} within {timeout:?} \
         (last error: {last_error}); container log tail:\n{log_tail}"
    )]
    AgentBootTimeout {
        /// The sandbox id.
        id: String,
        /// The host-side agent socket.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// The last health-check error.
        last_error: String,
        /// The last lines of `console.log`.
        log_tail: String,
    },

    /// The agent's socket could not be connected to.
    #[error("cannot connect to the agent at {agent}: {source}")]
    AgentUnreachable {
        /// Where the agent is: its host socket, or its node.
        agent: String,
        /// The connect error.
        source: std::io::Error,
    },

    /// The HTTP exchange with the agent failed.
    #[error("HTTP request {request} to the agent at {agent} failed: {source}")]
    AgentHttp {
        /// Where the agent is: its host socket, or its node.
        agent: String,
        /// Method and path.
        request: String,
        /// The HTTP error.
        source: hyper::Error,
    },

    /// The agent did not answer a request in time.
    #[error("HTTP request {request} to the agent at {agent} timed out after {timeout:?}")]
    AgentRequestTimeout {
        /// Where the agent is: its host socket, or its node.
        agent: String,
        /// Method and path.
        request: String,
        /// The request timeout.
        timeout: Duration,
    },

    /// The agent's process service answered something unexpected, or the
    /// connection failed midway.
    #[error("agent at {agent} failed: {detail}")]
    AgentProtocol {
        /// Where the agent is: its host socket, or its node.
        agent: String,
        /// What went wrong.
        detail: String,
    },

    /// The agent could not start a command (no such program, user or
    /// directory).
    #[error("cannot run `{command}`: {reason}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// The agent's explanation.
        reason: String,
    },

    /// A template's ready command did not succeed in time.
    #[error(
        "the ready command `{command}` did not succeed within {timeout:?} (last check: {last})"
    )]
    NotReady {
        /// The ready command.
        command: String,
        /// How long it was polled.
        timeout: Duration,
        /// The last check's result.
        last: String,
    },

    /// The agent answered with an unexpected status.
    #[error("agent answered {request} with HTTP {status}: {body}")]
    AgentStatus {
        /// Method and path.
        request: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },

    /// JSON (de)serialization failed.
    #[error("{context}: {source}")]
    Json {
        /// What was being (de)serialized.
        context: String,
        /// The underlying error.
        source: serde_json::Error,
    },

    /// A mount under the sandbox's state directory could not be removed, so
    /// the directory was left in place (removing it would reach into the
    /// mounted filesystem).
    #[error("sandbox {id}: {path} is still mounted; state directory left in place")]
    StillMounted {
        /// The sandbox id.
        id: String,
        /// The mount point.
        path: PathBuf,
    },

    /// A boot on the kept disk ([`SandboxSpec::resume_from_disk`](crate::SandboxSpec))
    /// or a [`Runtime::stop_keep_disk`](crate::Runtime::stop_keep_disk)
    /// found no disk for this id.
    #[error("sandbox {id} has no kept disk")]
    NoKeptDisk {
        /// The sandbox id.
        id: String,
    },

    /// A kept disk is still in use (mounted, or bound to a loop device), so
    /// the sandbox cannot be stopped cleanly or booted on it.
    #[error("sandbox {id}: its disk is still in use ({detail})")]
    DiskInUse {
        /// The sandbox id.
        id: String,
        /// What holds it.
        detail: String,
    },

    /// A background task of the runtime failed unexpectedly.
    #[error("internal runtime error: {0}")]
    Internal(String),

    /// The sandbox's network could not be set up, changed or removed.
    #[error("sandbox network: {0}")]
    Network(String),
}

impl RuntimeError {
    /// An [`RuntimeError::Io`] with a context message.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error to [`RuntimeError::Io`] with a lazily built message.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, RuntimeError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, RuntimeError> {
        self.map_err(|e| RuntimeError::io(context(), e))
    }
}
