//! The Hutch control plane.
//!
//! One TCP listener serves three things:
//!
//! * the **control-plane REST API**, wire-compatible with E2B's
//!   (`/sandboxes`, `/v2/sandboxes`, …; see [`api`]), so the official SDKs
//!   work unmodified against a self-hosted Hutch;
//! * Hutch's own routes under `/hutch/v1/` (template import, registry pull, list, removal);
//! * the **sandbox front door** ([`frontdoor`]): a request addressed to a
//!   sandbox (header `E2b-Sandbox-Id`, or a `Host` of the form
//!   `<port>-<id>.<domain>`) is proxied, streaming both ways, to that
//!   sandbox's agent over its unix socket.
//!
//! State lives in `DATA/hutch.db` (SQLite, see [`db`]); image layers in the
//! layer store under `DATA/images`; sandboxes under `DATA/sandboxes`.
//!
//! Every route except `GET /health` and the front door requires the header
//! `X-API-Key`. On first start the server generates a key, keeps only its
//! SHA-256, and writes the key itself to `DATA/api-key` (mode 0600).
//!
//! # Sandbox lifecycle
//!
//! A sandbox expires at its `endAt` (creation time + `timeout`, moved by
//! `POST /sandboxes/{id}/timeout` and `/refreshes`): it is then destroyed
//! and its row marked `killed`. `DELETE /sandboxes/{id}` does the same at
//! once. `POST /sandboxes/{id}/pause` freezes a sandbox and stops its clock
//! until `connect` resumes it. See [`lifecycle`] for pausing, how sandboxes
//! survive a server restart (re-adoption) and what a shutdown does;
//! [`metrics`] for `GET /sandboxes/{id}/metrics`.
//!
//! # Warm pool
//!
//! Per template, the server keeps a few sandboxes booted ahead of demand
//! ([`Server::set_warm_pool`], default [`DEFAULT_WARM_POOL`]), so that a
//! create is a claim of a running sandbox rather than a boot. See [`pool`].

pub use db::Capacity;
pub use hutch_runtime::NetworkConfig;
pub use node::cluster::DEFAULT_LEASE as DEFAULT_NODE_LEASE;
pub use node::join::JoinConfig;
pub use node::serve::{NodeConfig, NodeServer};

pub mod api;
mod auth;
mod base;
mod builds;
mod catalog;
mod code_interpreter;
pub mod db;
mod distribution;
mod error;
pub mod frontdoor;
pub mod http;
mod ids;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
mod node;
pub mod pool;
mod prometheus;
mod replicas;
mod sandbox_logs;
#[cfg(feature = "simulation")]
pub mod simulation;
mod state;
mod teams;
mod template_api;
#[cfg(test)]
mod testing;
mod time;
mod trace_context;
mod volumes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::ApiError;
pub use limits::LimitMaxima;

/// The envd protocol version the sandboxes report (`envdVersion`). The SDKs
/// switch features on by it (see the wire contract), so it must name the
/// highest version whose features Hutch really implements: recursive watch
/// (0.1.4), metrics (0.1.5), the `stdin` flag (0.3.0), the sandbox's default
/// user (0.4.0), `CloseStdin` (0.5.2), octet-stream and gzip uploads
/// (0.5.7), file metadata (0.6.2), `includeEntry` in watches (0.6.3).
pub const ENVD_VERSION: &str = "0.6.3";

/// Sandbox lifetime when a create request gives no `timeout`, in seconds.
pub const DEFAULT_SANDBOX_TIMEOUT_SECS: u64 = 300;

/// The longest lifetime a sandbox may be given at once, in seconds.
pub const MAX_SANDBOX_TIMEOUT_SECS: u64 = 86_400;

/// What `POST /sandboxes/{id}/refreshes` extends a sandbox by when the body
/// gives no `duration`, in seconds.
pub const DEFAULT_REFRESH_SECS: u64 = 15;

/// `clientID` reported for every sandbox (E2B's field; one host here).
pub const CLIENT_ID: &str = "hutch";

/// Sandboxes kept booted per template, ready to be claimed, unless
/// [`Server::set_warm_pool`] says otherwise.
pub const DEFAULT_WARM_POOL: usize = 1;

/// How long a shutdown waits for the teardowns of killed sandboxes.
const TEARDOWN_GRACE: Duration = Duration::from_secs(60);

/// How long a shutdown waits for open connections (e.g. live `exec`
/// streams) before it stops serving them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the single listener (REST API and sandbox front door).
    pub listen: SocketAddr,
    /// Root of all state: database, API key, layers, sandboxes.
    pub data_dir: PathBuf,
    /// The agent binary (`hutch-envd`) mounted into every sandbox.
    pub envd: PathBuf,
    /// The `runc` binary (a path, or a name looked up in `PATH`).
    pub runc: PathBuf,
    /// Registries (`host[:port]`) that image pulls reach over plain HTTP instead of HTTPS.
    /// Registries on loopback always are.
    pub insecure_registries: Vec<String>,
    /// The largest CPU, memory, disk and pids limits a sandbox may be
    /// given ([`LimitMaxima::for_host`] by default; see [`limits`]).
    pub max_limits: LimitMaxima,
    /// Connection limits and timeouts of the listener (see [`http`]).
    pub http: http::Limits,
    /// Sandbox networking: the address pool, fallback nameservers, tools.
    pub network: NetworkConfig,
    /// The PostgreSQL database to keep the server's state in
    /// (`postgres://user:password@host:port/db`); `None` keeps it in SQLite
    /// at `DATA/hutch.db`.
    pub database_url: Option<String>,
    /// The size of a new volume, MiB: its quota (a sparse file: it takes
    /// host disk only as it is written).
    pub volume_size_mb: u64,
    /// Run as a control plane whose sandboxes run on the nodes that join
    /// it (`hutch node --join`) instead of on this machine.
    pub cluster: Option<ClusterConfig>,
}

/// How a control plane runs its cluster ([`ServerConfig::cluster`]).
#[derive(Clone)]
pub struct ClusterConfig {
    /// The secret nodes join with and admit control planes by
    /// ([`NodeConfig::secret`]).
    pub secret: String,
    /// The registry repository (`host[:port]/path`) templates are pushed
    /// to for the nodes to pull.
    pub template_registry: String,
    /// How long a node counts as alive after its last heartbeat.
    pub node_lease: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("secret", &"<redacted>")
            .field("template_registry", &self.template_registry)
            .field("node_lease", &self.node_lease)
            .finish()
    }
}

/// What a machine that runs sandboxes needs: the agent, runc, networking.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// The agent binary (`hutch-envd`) mounted into every sandbox.
    pub envd: PathBuf,
    /// The `runc` binary (a path, or a name looked up in `PATH`).
    pub runc: PathBuf,
    /// Sandbox networking: the address pool, nameservers, tools.
    pub network: NetworkConfig,
}

impl ServerConfig {
    /// What this server's own machine runs sandboxes with.
    pub(crate) fn machine(&self) -> MachineConfig {
        MachineConfig {
            envd: self.envd.clone(),
            runc: self.runc.clone(),
            network: self.network.clone(),
        }
    }
}

/// [`ServerConfig::volume_size_mb`] by default: 10 GiB.
pub const DEFAULT_VOLUME_SIZE_MB: u64 = 10 * 1024;

impl ServerConfig {
    /// A server on `listen` over `data_dir` with the agent binary `envd`,
    /// everything else at its default: `runc` from `PATH`, no plain-HTTP
    /// registries, the default limits, listener and network settings, and
    /// SQLite in the data directory.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, envd: PathBuf) -> ServerConfig {
        ServerConfig {
            listen,
            data_dir,
            envd,
            runc: PathBuf::from("runc"),
            insecure_registries: Vec::new(),
            max_limits: LimitMaxima::default(),
            http: http::Limits::default(),
            network: NetworkConfig::default(),
            database_url: None,
            volume_size_mb: DEFAULT_VOLUME_SIZE_MB,
            cluster: None,
        }
    }
}

/// Why the server could not start or stopped with an error. Each message
/// is complete (it includes its cause), so `{}` is enough to report it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why, in words (e.g. "address in use").
        reason: String,
    },
    /// The data directory cannot be created or written.
    #[error("data dir {path} is not writable: {reason}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// Another server holds the data directory.
    #[error("data dir {path} is in use by another hutch server (lock file {lock})")]
    DataDirLocked {
        /// The data directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The agent binary is missing.
    #[error("agent binary {path} not found: {reason} (build it, or pass --envd PATH)")]
    Envd {
        /// The path given.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// The database could not be opened or migrated.
    #[error("cannot open the database {location}: {cause}")]
    Database {
        /// The database file, or its URL without a password.
        location: String,
        /// The cause.
        cause: db::DbError,
    },
    /// The API key could not be set up.
    #[error("cannot set up the API key file {path}: {reason}")]
    ApiKey {
        /// The key file.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// The layer store could not be opened.
    #[error("cannot open the layer store {path}: {cause}")]
    Store {
        /// The store's root.
        path: PathBuf,
        /// The cause.
        cause: hutch_image::ImageError,
    },
    /// The sandbox runtime could not be set up.
    #[error("cannot set up the sandbox runtime: {0}")]
    Runtime(hutch_runtime::RuntimeError),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A bound, ready server: state opened, sandboxes re-adopted, listener
/// bound. [`Server::run`] serves until SIGTERM/SIGINT.
pub struct Server {
    listener: tokio::net::TcpListener,
    http: http::Limits,
    state: Arc<state::AppState>,
    local_addr: SocketAddr,
}

impl Server {
    /// Opens the data directory and its state, re-adopts the sandboxes left
    /// running by a previous server, and binds the listener.
    pub async fn bind(mut cfg: ServerConfig) -> Result<Server, ServerError> {
        cfg.max_limits.validate().map_err(ServerError::Config)?;
        // Absolute, so that paths derived from it stay valid for the tools
        // run in other directories (mkfs, runc, the node).
        cfg.data_dir = std::path::absolute(&cfg.data_dir).map_err(|e| {
            ServerError::Config(format!(
                "data directory {}: {}",
                cfg.data_dir.display(),
                error::io_reason(&e)
            ))
        })?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ServerError::Listen {
                addr: cfg.listen,
                reason: error::io_reason(&e),
            })?;
        let local_addr = listener.local_addr().map_err(ServerError::Serve)?;
        let state = state::AppState::open(&cfg).await?;
        volumes::reconcile(&state).await;
        lifecycle::readopt(&state).await;
        if let Some(cluster) = &cfg.cluster {
            replicas::start(&state).await;
            lifecycle::follow_cluster(&state, true).await;
            lifecycle::spawn_cluster_follower(state.clone(), follow_interval(cluster.node_lease));
        }
        lifecycle::spawn_reaper(state.clone());
        metrics::spawn_sampler(state.clone());
        sandbox_logs::spawn_agent_log_reader(state.clone());
        Ok(Server {
            listener,
            http: cfg.http,
            state,
            local_addr,
        })
    }

    /// How many sandboxes to keep booted per template, ready to be claimed
    /// by a create (0: none, every create boots its sandbox). The default is
    /// [`DEFAULT_WARM_POOL`]. The pools are filled when the server starts
    /// running.
    pub fn set_warm_pool(&mut self, n: usize) {
        self.state.pool.set_target(n);
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Builds the default `base` template in the background unless it
    /// exists (see the `base` module).
    pub async fn ensure_base_template(&self) {
        base::ensure(self.state.clone()).await;
    }

    /// The file holding the API key generated on first start.
    pub fn api_key_file(&self) -> PathBuf {
        auth::key_file(&self.state.data_dir)
    }

    /// Serves until SIGTERM or SIGINT. Sandboxes keep running; the next
    /// server re-adopts them. The warm pool is destroyed.
    pub async fn run(self) -> Result<(), ServerError> {
        self.run_until(shutdown_signal()).await
    }

    /// Fills the warm pool, serves until `shutdown` completes, then stops
    /// accepting, gives open connections a few seconds to finish and
    /// destroys the warm pool. Sandboxes keep running.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let warm = self.state.pool.target();
        if warm > 0 {
            tracing::info!("warm pool: {warm} sandbox(es) per template");
            let st = self.state.clone();
            tokio::spawn(async move { pool::fill_all(&st).await });
        }
        let max_header_bytes = self.http.max_header_bytes;
        let app =
            api::router(self.state.clone()).layer(axum::middleware::from_fn(move |req, next| {
                http::check_headers(max_header_bytes, req, next)
            }));
        http::serve(self.listener, app, self.http, shutdown, SHUTDOWN_GRACE).await;
        self.state.stop_reaper();
        let destroyed = pool::shutdown(&self.state).await;
        if destroyed > 0 {
            tracing::info!("destroyed {destroyed} pooled sandbox(es)");
        }
        // Killed sandboxes' teardowns still running finish first (what one
        // cut short leaves is removed at the next start).
        self.state.teardowns.close();
        if tokio::time::timeout(TEARDOWN_GRACE, self.state.teardowns.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "teardowns of killed sandboxes still running after {TEARDOWN_GRACE:?}; the next start finishes them"
            );
        }
        self.state.node.release_host_mounts();
        tracing::info!("server stopped; sandboxes left running will be re-adopted at next start");
        Ok(())
    }
}

/// How often a control plane looks at its nodes: a fifth of their lease,
/// so that a lost node is noticed soon after its lease ends.
fn follow_interval(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Runs a server with `cfg` until SIGTERM/SIGINT.
pub async fn serve(cfg: ServerConfig) -> Result<(), ServerError> {
    Server::bind(cfg).await?.run().await
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}
