//! Everything the handlers share.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hutch_image::LayerStore;
use hutch_runtime::{Runtime, RuntimeConfig};
use tokio::sync::{Notify, RwLock};

use crate::db::{Db, Lifecycle, PauseMode};
use crate::error::io_reason;
use crate::pool::Pool;
use crate::{DEFAULT_WARM_POOL, ServerConfig, ServerError, auth};

/// A running or paused sandbox, as the front door and the reaper see it.
#[derive(Debug, Clone)]
pub(crate) struct LiveSandbox {
    /// The agent's unix socket on the host.
    pub socket: PathBuf,
    /// Unix ms: when it expires (while running).
    pub end_at: i64,
    /// While paused: how, and the lifetime it had left. A paused sandbox
    /// does not expire and is not routed to (unless a request resumes it:
    /// [`Lifecycle::auto_resume`]).
    pub paused: Option<Paused>,
    /// Host pid of its agent while it has one (not while paused
    /// filesystem-only): the one [`crate::lifecycle::watch_agent`] watches.
    pub agent_pid: Option<u32>,
    /// What its timeout does; whether requests resume it.
    pub lifecycle: Lifecycle,
}

/// How a paused sandbox is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paused {
    /// The lifetime it had left, in ms.
    pub remaining_ms: i64,
    /// Frozen in memory, or stopped with its files kept.
    pub mode: PauseMode,
}

impl LiveSandbox {
    /// A running sandbox whose agent is `agent_pid`, expiring at `end_at`.
    pub fn running(socket: PathBuf, end_at: i64, agent_pid: u32, lifecycle: Lifecycle) -> Self {
        LiveSandbox {
            socket,
            end_at,
            paused: None,
            agent_pid: Some(agent_pid),
            lifecycle,
        }
    }
}

pub(crate) struct AppState {
    pub data_dir: PathBuf,
    pub db: Db,
    pub store: Arc<LayerStore>,
    pub runtime: Arc<Runtime>,
    /// The largest limits a sandbox may be given.
    pub max_limits: crate::LimitMaxima,
    /// Running and paused sandboxes by id: the front door routes only to
    /// the running ones.
    pub live: Mutex<HashMap<String, LiveSandbox>>,
    /// One lock per sandbox, held while it is paused or resumed, so that
    /// two transitions of the same sandbox never interleave (those of
    /// different sandboxes run side by side).
    pub transitions: hutch_runtime::KeyedLocks,
    /// Wakes the reaper when an expiry moves.
    pub reaper_wake: Notify,
    /// Set on shutdown; the reaper stops.
    pub reaper_stop: tokio_util::sync::CancellationToken,
    /// Held shared while layers may be in use by a starting sandbox or an
    /// import, exclusively while unreferenced layers are removed.
    pub layers_lock: RwLock<()>,
    /// Set while the default `base` template is being built.
    pub base_building: std::sync::atomic::AtomicBool,
    /// Pre-booted sandboxes per template.
    pub pool: Pool,
    /// Registries that image pulls reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Runs template builds.
    pub builder: hutch_builder::engine::Engine,
    /// Template builds in progress and recently finished.
    pub builds: crate::builds::Jobs,
    /// Keeps the data directory's lock file locked for the server's life.
    _lock: File,
}

impl AppState {
    pub async fn open(cfg: &ServerConfig) -> Result<Arc<AppState>, ServerError> {
        let data_dir = cfg.data_dir.clone();
        let dir_err = |e: std::io::Error| ServerError::DataDir {
            path: data_dir.clone(),
            reason: io_reason(&e),
        };
        create_private_dir(&data_dir).map_err(dir_err)?;
        probe_writable(&data_dir).map_err(dir_err)?;
        let lock = lock_data_dir(&data_dir)?;
        if let Err(e) = std::fs::metadata(&cfg.envd) {
            return Err(ServerError::Envd {
                path: cfg.envd.clone(),
                reason: io_reason(&e),
            });
        }

        let db_path = data_dir.join("hutch.db");
        let db = Db::open(&db_path).map_err(|cause| ServerError::Database {
            path: db_path.clone(),
            cause,
        })?;
        auth::ensure_api_key(&db, &data_dir)?;

        let store_root = data_dir.join("images");
        let store = LayerStore::open(&store_root).map_err(|cause| ServerError::Store {
            path: store_root.clone(),
            cause,
        })?;
        let runtime = Runtime::new(RuntimeConfig {
            state_dir: data_dir.join("sandboxes"),
            runc_root: data_dir.join("runc"),
            runc: cfg.runc.clone(),
            envd: cfg.envd.clone(),
            cgroup_parent: "hutch".into(),
            network: network_config(),
        })
        .map_err(ServerError::Runtime)?;

        let builder = hutch_builder::engine::Engine::new(
            runtime.clone(),
            store.clone(),
            &data_dir.join("build-cache"),
            &data_dir.join("tmp").join("builds"),
        )
        .map_err(|e| ServerError::DataDir {
            path: data_dir.join("build-cache"),
            reason: e.to_string(),
        })?;

        Ok(Arc::new(AppState {
            max_limits: cfg.max_limits,
            data_dir,
            db,
            store: Arc::new(store),
            runtime: Arc::new(runtime),
            live: Mutex::new(HashMap::new()),
            transitions: hutch_runtime::KeyedLocks::default(),
            reaper_wake: Notify::new(),
            reaper_stop: tokio_util::sync::CancellationToken::new(),
            layers_lock: RwLock::new(()),
            base_building: std::sync::atomic::AtomicBool::new(false),
            pool: Pool::new(DEFAULT_WARM_POOL),
            insecure_registries: cfg.insecure_registries.clone(),
            builder,
            builds: Default::default(),
            _lock: lock,
        }))
    }

    /// The running sandboxes (locked briefly; never held across an await).
    pub fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveSandbox>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stop_reaper(&self) {
        self.reaper_stop.cancel();
    }
}

/// Sandbox networking: the defaults, with the address pool from
/// `HUTCH_NETWORK_POOL` and the fallback nameservers (comma-separated) from
/// `HUTCH_FALLBACK_DNS` when set.
fn network_config() -> hutch_runtime::NetworkConfig {
    let mut cfg = hutch_runtime::NetworkConfig::default();
    if let Ok(pool) = std::env::var("HUTCH_NETWORK_POOL") {
        match pool.parse() {
            Ok(p) => cfg.pool = p,
            Err(e) => tracing::warn!("ignoring HUTCH_NETWORK_POOL: {e}"),
        }
    }
    if let Ok(dns) = std::env::var("HUTCH_FALLBACK_DNS") {
        let servers: Result<Vec<std::net::IpAddr>, _> =
            dns.split(',').map(|s| s.trim().parse()).collect();
        match servers {
            Ok(s) if !s.is_empty() => cfg.fallback_nameservers = s,
            _ => tracing::warn!("ignoring HUTCH_FALLBACK_DNS {dns:?}: expected IP addresses"),
        }
    }
    cfg
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Takes `DATA/hutch.lock` so that two servers never share a data dir
/// (each would destroy the other's sandboxes at startup).
fn lock_data_dir(dir: &Path) -> Result<File, ServerError> {
    let path = dir.join("hutch.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServerError::DataDir {
            path: dir.to_path_buf(),
            reason: io_reason(&e),
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ServerError::DataDirLocked {
            path: dir.to_path_buf(),
            lock: path,
        }),
        Err(e) => Err(ServerError::DataDir {
            path: dir.to_path_buf(),
            reason: io_reason(&e.into()),
        }),
    }
}
