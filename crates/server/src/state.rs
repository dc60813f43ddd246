//! Everything the handlers share.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hutch_image::LayerStore;
use hutch_runtime::{Runtime, RuntimeConfig};

use crate::node::Node;
use tokio::sync::{Notify, RwLock};

use crate::db::{self, Db, Ingress, Lifecycle, PauseMode, SandboxRow};
use crate::error::io_reason;
use crate::pool::Pool;
use crate::{DEFAULT_WARM_POOL, ServerConfig, ServerError};

/// A running or paused sandbox, as the front door and the reaper see it.
#[derive(Debug, Clone)]
pub(crate) struct LiveSandbox {
    /// Where its agent is reached.
    pub agent: hutch_runtime::AgentLink,
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
    /// What requests to its ports need, and the Host they get.
    pub ingress: Ingress,
    /// The team that owns it.
    pub team: String,
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
    pub fn running(
        agent: hutch_runtime::AgentLink,
        end_at: i64,
        agent_pid: u32,
        row: &SandboxRow,
    ) -> Self {
        LiveSandbox {
            agent,
            end_at,
            paused: None,
            agent_pid: Some(agent_pid),
            lifecycle: row.lifecycle,
            ingress: row.ingress.clone(),
            team: row.team_id.clone(),
        }
    }
}

pub(crate) struct AppState {
    pub data_dir: PathBuf,
    /// API keys, templates and sandboxes.
    pub db: Db,
    /// The API keys service (every authenticated request checks one).
    pub keys: crate::auth::Keys,
    /// The default team's id: it owns the templates the server builds
    /// itself (public to every team) and may manage teams.
    pub default_team: String,
    pub store: Arc<LayerStore>,
    /// The node that runs the sandboxes.
    pub node: Arc<dyn Node>,
    /// The largest limits a sandbox may be given.
    pub max_limits: crate::LimitMaxima,
    /// Running and paused sandboxes by id: the front door routes only to
    /// the running ones.
    pub live: Mutex<HashMap<String, LiveSandbox>>,
    /// One lock per sandbox, held while it is paused or resumed, so that
    /// two transitions of the same sandbox never interleave (those of
    /// different sandboxes run side by side).
    pub transitions: hutch_runtime::KeyedLocks,
    /// Teardowns of killed sandboxes, finishing behind their kill; a
    /// shutdown waits for them.
    pub teardowns: tokio_util::task::TaskTracker,
    /// How many of those run at once ([`crate::lifecycle::TEARDOWN_CONCURRENCY`]):
    /// a burst of kills answers at once and its teardowns queue here
    /// instead of competing for the host all together.
    pub teardown_slots: tokio::sync::Semaphore,
    /// How many sandboxes boot at once ([`crate::lifecycle::boot_concurrency`]).
    pub boot_slots: tokio::sync::Semaphore,
    /// Wakes the reaper when an expiry moves.
    pub reaper_wake: Notify,
    /// Set on shutdown; the reaper stops.
    pub reaper_stop: tokio_util::sync::CancellationToken,
    /// Held shared while layers may be in use by a starting sandbox or an
    /// import, exclusively while unreferenced layers are removed.
    pub layers_lock: RwLock<()>,
    /// Templates that must not be pruned though no sandbox uses them yet
    /// (a fork's snapshot until its sandboxes exist): see
    /// [`crate::catalog::pin`].
    pub pinned_templates: Mutex<std::collections::HashSet<String>>,
    /// Set while the default `base` template is being built.
    pub base_building: std::sync::atomic::AtomicBool,
    /// Pre-booted sandboxes per template.
    pub pool: Pool,
    /// Every running sandbox's resource usage over its life.
    pub metrics: crate::metrics::History,
    /// The counters and histograms `GET /metrics` serves.
    pub prometheus: crate::prometheus::Metrics,
    /// Every sandbox's log: its lifecycle and its start command's output.
    pub logs: crate::sandbox_logs::Journal,
    /// Held shared from a create's lookup of its volumes until its row
    /// exists, exclusively while volumes are deleted or collected.
    pub volumes_lock: RwLock<()>,
    /// The size of a new volume, MiB.
    pub volume_size_mb: u64,
    /// The key volume tokens are signed with, once read
    /// ([`crate::volumes`]).
    pub volume_token_key: std::sync::OnceLock<Vec<u8>>,
    /// Registries that image pulls reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Runs template builds (`None` on a server whose node cannot build).
    pub builder: Option<hutch_builder::engine::Engine>,
    /// Whether other control planes share this one's store (PostgreSQL):
    /// then the live map follows the store ([`crate::replicas`]).
    pub replicated: bool,
    /// The nodes of a control plane (`None`: the node is this machine);
    /// [`AppState::node`] is the same cluster.
    pub cluster: Option<Arc<crate::node::cluster::Cluster>>,
    /// Where templates are pushed for nodes on other machines (`None`:
    /// the node is this machine).
    pub registry: Option<crate::distribution::TemplateRegistry>,
    /// Template builds in progress and recently finished.
    pub builds: crate::builds::Jobs,
    /// Keeps the data directory's lock file locked for the server's life.
    _lock: File,
}

impl AppState {
    /// Opens the data directory and sets up the node: this machine (the
    /// runtime, and the template builder on it), or the cluster of
    /// [`ServerConfig::cluster`].
    pub async fn open(cfg: &ServerConfig) -> Result<Arc<AppState>, ServerError> {
        if let Some(cluster) = &cfg.cluster {
            return AppState::open_control(cfg, cluster).await;
        }
        let data = DataDir::open(cfg).await?;
        let runtime = local_runtime(&cfg.machine(), &data.path)?;
        let builder = hutch_builder::engine::Engine::new(
            runtime.clone(),
            (*data.store).clone(),
            &data.path.join("build-cache"),
            &data.path.join("tmp").join("builds"),
        )
        .map_err(|e| ServerError::DataDir {
            path: data.path.join("build-cache"),
            reason: e.to_string(),
        })?;
        let node = crate::node::LocalNode::new(
            runtime,
            data.store.clone(),
            data.path.join("tmp").join("snapshots"),
        );
        Ok(AppState::assemble(
            cfg,
            data,
            Arc::new(node),
            Some(builder),
            None,
        ))
    }

    /// A control plane whose sandboxes run on the nodes that join it, its
    /// templates reaching them through the template registry.
    async fn open_control(
        cfg: &ServerConfig,
        cluster: &crate::ClusterConfig,
    ) -> Result<Arc<AppState>, ServerError> {
        let secret =
            crate::node::api::NodeSecret::new(&cluster.secret).map_err(ServerError::Config)?;
        let registry = crate::distribution::TemplateRegistry::new(
            &cluster.template_registry,
            hutch_image::PullOptions {
                insecure_registries: cfg.insecure_registries.clone(),
                ..Default::default()
            },
        )
        .map_err(ServerError::Config)?;
        let data = DataDir::open_with(cfg, db::Access::Shared).await?;
        let left =
            crate::distribution::clear_push_scratch(&crate::distribution::push_scratch(&data.path));
        if left > 0 {
            tracing::info!("removed {left} push(es) a previous run left unfinished");
        }
        let replicated = matches!(data.location, db::Location::Postgres(_));
        let nodes =
            crate::node::cluster::Cluster::open(data.db.clone(), secret, cluster.node_lease)
                .await
                .map_err(ServerError::Config)?;
        let nodes = Arc::new(nodes);
        let mut st = AppState::assemble(cfg, data, nodes.clone(), None, Some(registry));
        let state = Arc::get_mut(&mut st).expect("not shared yet");
        state.cluster = Some(nodes);
        state.replicated = replicated;
        Ok(st)
    }

    /// A server's state over the data directory `data` and `node`.
    fn assemble(
        cfg: &ServerConfig,
        data: DataDir,
        node: Arc<dyn Node>,
        builder: Option<hutch_builder::engine::Engine>,
        registry: Option<crate::distribution::TemplateRegistry>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            max_limits: cfg.max_limits,
            data_dir: data.path,
            keys: crate::auth::Keys::new(data.db.clone(), data.default_team.clone()),
            default_team: data.default_team,
            db: data.db,
            store: data.store,
            node,
            live: Mutex::new(HashMap::new()),
            transitions: hutch_runtime::KeyedLocks::default(),
            teardowns: tokio_util::task::TaskTracker::new(),
            teardown_slots: tokio::sync::Semaphore::new(crate::lifecycle::TEARDOWN_CONCURRENCY),
            boot_slots: tokio::sync::Semaphore::new(crate::lifecycle::boot_concurrency()),
            reaper_wake: Notify::new(),
            reaper_stop: tokio_util::sync::CancellationToken::new(),
            layers_lock: RwLock::new(()),
            pinned_templates: Mutex::default(),
            base_building: std::sync::atomic::AtomicBool::new(false),
            pool: Pool::new(DEFAULT_WARM_POOL),
            metrics: crate::metrics::History::default(),
            prometheus: crate::prometheus::Metrics::new(),
            logs: crate::sandbox_logs::Journal::default(),
            volumes_lock: RwLock::new(()),
            volume_size_mb: cfg.volume_size_mb,
            volume_token_key: std::sync::OnceLock::new(),
            insecure_registries: cfg.insecure_registries.clone(),
            builder,
            replicated: false,
            cluster: None,
            registry,
            builds: Default::default(),
            _lock: data.lock,
        })
    }

    /// State over `cfg`'s data directory whose sandboxes run on `node`,
    /// without a builder: for tests of the control side.
    #[cfg(test)]
    pub async fn with_node(
        cfg: &ServerConfig,
        node: Arc<dyn Node>,
    ) -> Result<Arc<AppState>, ServerError> {
        Ok(AppState::assemble(
            cfg,
            DataDir::open(cfg).await?,
            node,
            None,
            None,
        ))
    }

    /// State over `cfg`'s data directory whose sandboxes run on the nodes
    /// that join it with `secret`, leased for `lease`: for tests of the
    /// cluster's control side.
    #[cfg(test)]
    pub async fn with_cluster(
        cfg: &ServerConfig,
        secret: &str,
        lease: std::time::Duration,
    ) -> Result<Arc<AppState>, ServerError> {
        let data = DataDir::open(cfg).await?;
        let secret = crate::node::api::NodeSecret::new(secret).map_err(ServerError::Config)?;
        let nodes = crate::node::cluster::Cluster::open(data.db.clone(), secret, lease)
            .await
            .map_err(ServerError::Config)?;
        let nodes = Arc::new(nodes);
        let mut st = AppState::assemble(cfg, data, nodes.clone(), None, None);
        Arc::get_mut(&mut st).expect("not shared yet").cluster = Some(nodes);
        Ok(st)
    }

    /// The running sandboxes (locked briefly; never held across an await).
    pub fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveSandbox>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stop_reaper(&self) {
        self.reaper_stop.cancel();
    }
}

/// A data directory, opened: locked, its database and layer store open.
struct DataDir {
    path: PathBuf,
    location: db::Location,
    db: Db,
    default_team: String,
    store: Arc<LayerStore>,
    lock: File,
}

impl DataDir {
    /// Opens `cfg`'s data directory and its store (the database named by
    /// `cfg.database_url`, else `DATA/hutch.db`), setting up the first API
    /// key.
    async fn open(cfg: &ServerConfig) -> Result<DataDir, ServerError> {
        DataDir::open_with(cfg, db::Access::Exclusive).await
    }

    /// [`DataDir::open`], its store alone or shared with other control
    /// planes.
    async fn open_with(cfg: &ServerConfig, access: db::Access) -> Result<DataDir, ServerError> {
        let path = cfg.data_dir.as_path();
        let (lock, store) = open_machine_dir(path)?;
        let location = db::Location::new(cfg.database_url.as_deref(), path).map_err(|cause| {
            ServerError::Database {
                location: "--database-url".into(),
                cause,
            }
        })?;
        let db = db::open_with(&location, access)
            .await
            .map_err(|cause| ServerError::Database {
                location: location.to_string(),
                cause,
            })?;
        tracing::info!(backend = db.backend(), "database {location} open");
        let default_team = db
            .default_team()
            .await
            .map_err(|cause| ServerError::Database {
                location: location.to_string(),
                cause,
            })?
            .id;
        crate::auth::Keys::new(db.clone(), default_team.clone())
            .ensure_first(path)
            .await?;
        Ok(DataDir {
            path: path.to_path_buf(),
            location,
            db,
            default_team,
            store,
            lock,
        })
    }
}

/// Creates (private), checks and locks the data directory `path`, and
/// opens its layer store: what a server and a node both do first.
pub(crate) fn open_machine_dir(path: &Path) -> Result<(File, Arc<LayerStore>), ServerError> {
    let dir_err = |e: std::io::Error| ServerError::DataDir {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    };
    create_private_dir(path).map_err(dir_err)?;
    probe_writable(path).map_err(dir_err)?;
    let lock = lock_data_dir(path)?;
    let store_root = path.join("images");
    let store = LayerStore::open(&store_root).map_err(|cause| ServerError::Store {
        path: store_root.clone(),
        cause,
    })?;
    Ok((lock, Arc::new(store)))
}

/// The sandbox runtime of this machine over data directory `data`.
pub(crate) fn local_runtime(
    cfg: &crate::MachineConfig,
    data: &Path,
) -> Result<Runtime, ServerError> {
    if let Err(e) = std::fs::metadata(&cfg.envd) {
        return Err(ServerError::Envd {
            path: cfg.envd.clone(),
            reason: io_reason(&e),
        });
    }
    Runtime::new(RuntimeConfig {
        state_dir: data.join("sandboxes"),
        runc_root: data.join("runc"),
        volumes_dir: data.join("volumes"),
        runc: cfg.runc.clone(),
        envd: cfg.envd.clone(),
        cgroup_parent: "hutch".into(),
        network: cfg.network.clone(),
    })
    .map_err(ServerError::Runtime)
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
