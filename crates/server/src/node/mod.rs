//! The node API: the boundary between the control side, which decides
//! (which sandboxes exist, in which state, until when, routed where), and a
//! node, which does (containers, cgroups, networks, disks).
//!
//! Everything the server asks of the machine that runs its sandboxes goes
//! through [`Node`]; nothing above it touches runc, cgroups, nftables or a
//! host path of a sandbox. [`LocalNode`] — [`hutch_runtime::Runtime`] and
//! the layer store — is the local node. The vocabulary is plain data that
//! crosses a network ([`BootSpec`], [`EgressPolicy`], [`Usage`]), and a
//! node's errors are [`NodeError`]s — a kind and a message — so that a node
//! across the network answers the same way.
//!
//! A sandbox's agent is reached through [`Booted::agent`] (or
//! [`Node::agent_link`]): a connection to it, wherever the node is. The
//! control side relays processes, files and ports over it, and sends its
//! `/init`.

pub(crate) mod api;
pub(crate) mod cluster;
#[cfg(any(test, feature = "simulation"))]
pub(crate) mod fake;
pub(crate) mod join;
pub(crate) mod remote;
pub(crate) mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use hutch_image::LayerStore;
use hutch_runtime::{
    AgentLink, CgroupUsage, EgressPolicy, Runtime, RuntimeError, SandboxSpec, SandboxStatus,
};
use serde::{Deserialize, Serialize};

/// A sandbox a node booted or re-adopted.
#[derive(Debug, Clone)]
pub(crate) struct Booted {
    /// The node's pid of its agent (the container's init): which agent a
    /// watch or a kill is about, so that one of a sandbox booted again
    /// under the same id is never mistaken for it.
    pub init_pid: u32,
    /// Where its agent is reached.
    pub agent: AgentLink,
}

/// What a node is asked to boot: the runtime's spec, with the template's
/// layers named by diff id, base first — the node finds them in its own
/// layer store, or pulls them as [`BootSpec::image`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BootSpec {
    /// The template's layers, base first, as the control side names them.
    pub layers: Vec<String>,
    /// The registry image (by digest) holding those layers, for a node
    /// that may not have them ([`crate::distribution`]); `None` when the
    /// node has them (the local node, or a layer only that node made).
    #[serde(default)]
    pub image: Option<String>,
    /// The rest of what to boot; its `layers` are the node's to fill.
    pub sandbox: SandboxSpec,
}

/// What a node reports of one sandbox's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Usage {
    /// CPU time and memory, from its cgroups.
    pub cgroup: CgroupUsage,
    /// Bytes in use on its disk.
    pub disk_used: u64,
    /// Its disk's size, bytes.
    pub disk_total: u64,
}

/// New whole lines of a sandbox's console log, from an offset on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsoleChunk {
    /// The lines read (whole lines, unless one line fills a chunk).
    pub text: String,
    /// Where the next read starts.
    pub next: u64,
}

/// Why a node could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "camelCase")]
pub(crate) enum NodeError {
    /// The node has no such sandbox (killed meanwhile, say).
    #[error("{0}")]
    NotFound(String),
    /// A sandbox to boot or stop on its kept disk has none.
    #[error("{0}")]
    NoKeptDisk(String),
    /// The host's disk (or quota) is full: freeing space fixes it.
    #[error("{0}")]
    HostFull(String),
    /// The node that holds the sandbox, or any node with room for a new
    /// one, cannot be reached now (it may come back: a retry later can
    /// succeed).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else, with the node's explanation.
    #[error("{0}")]
    Failed(String),
}

impl From<RuntimeError> for NodeError {
    fn from(e: RuntimeError) -> Self {
        let message = e.to_string();
        match e {
            RuntimeError::NotFound { .. } => NodeError::NotFound(message),
            RuntimeError::NoKeptDisk { .. } => NodeError::NoKeptDisk(message),
            e => NodeError::failed(&e),
        }
    }
}

impl NodeError {
    /// [`NodeError::HostFull`] when `e` comes from a full host disk, else
    /// [`NodeError::Failed`]; its message either way.
    fn failed(e: &(dyn std::error::Error + 'static)) -> NodeError {
        if crate::error::is_storage_full(e) {
            NodeError::HostFull(e.to_string())
        } else {
            NodeError::Failed(e.to_string())
        }
    }
}

/// What the control side can ask of a node. Calls on one sandbox may come
/// concurrently; the node serialises what must be (the control side holds a
/// lock per sandbox for its own transitions).
#[async_trait]
pub(crate) trait Node: Send + Sync {
    /// Boots a sandbox: its container running, its agent answering.
    async fn create(&self, spec: BootSpec) -> Result<Booted, NodeError>;

    /// Removes a sandbox and everything it holds on the node. Removing one
    /// that is gone is not an error.
    async fn destroy(&self, id: &str) -> Result<(), NodeError>;

    /// Stops a sandbox keeping only its disk, to boot it again later
    /// ([`SandboxSpec::resume_from_disk`]); [`NodeError::NoKeptDisk`] if it
    /// has none.
    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError>;

    /// Kills every process of a sandbox at once, its agent being `pid`; the
    /// teardown is still [`Node::destroy`]'s. `Ok(false)` if that process
    /// is gone.
    async fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError>;

    /// Returns once the agent `pid` of sandbox `id` has exited (at once if
    /// it is gone); an error if the node cannot tell.
    async fn agent_exited(&self, id: &str, pid: u32) -> Result<(), NodeError>;

    /// Freezes every process of a sandbox, keeping its memory.
    async fn pause(&self, id: &str) -> Result<(), NodeError>;

    /// Thaws a frozen sandbox.
    async fn resume(&self, id: &str) -> Result<(), NodeError>;

    /// Replaces a running sandbox's egress policy.
    async fn set_egress_policy(&self, id: &str, policy: &EgressPolicy) -> Result<(), NodeError>;

    /// The ids of every sandbox the node holds (for re-adoption after a
    /// restart); removes stray network objects on the way.
    async fn list(&self) -> Result<Vec<String>, NodeError>;

    /// Where a sandbox's container stands; `None` if it has none.
    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, NodeError>;

    /// The pid of a sandbox's agent while it lives.
    async fn agent_pid(&self, id: &str) -> Result<Option<u32>, NodeError>;

    /// Takes over a running sandbox a previous server left: `None` if it
    /// cannot be (not running, agent silent).
    async fn adopt(&self, id: &str) -> Result<Option<Booted>, NodeError>;

    /// A sandbox's CPU, memory and disk.
    async fn usage(&self, id: &str) -> Result<Usage, NodeError>;

    /// Writes what a sandbox changed on top of `layers` (its template's,
    /// base first) as a new layer into the node's layer store; `None` when
    /// it changed nothing. The caller keeps the sandbox from running
    /// meanwhile (frozen, or stopped with its disk kept — which is then
    /// mounted for the read and unmounted after), so that the layer is one
    /// moment of it.
    async fn snapshot_layer(
        &self,
        id: &str,
        layers: &[String],
    ) -> Result<Option<String>, NodeError>;

    /// Where a sandbox's agent is reached.
    fn agent_link(&self, id: &str) -> AgentLink;

    /// A sandbox's console log — its agent's log (and what runc said) —
    /// from byte `offset` on, in whole lines.
    async fn console_log(&self, id: &str, offset: u64) -> Result<ConsoleChunk, NodeError>;

    /// At a shutdown that leaves no sandbox running: drops what the node
    /// mounted for its sandboxes.
    fn release_host_mounts(&self);

    /// Creates volume `id` of `size_mb` MiB, ready to be mounted into
    /// sandboxes ([`SandboxSpec::volumes`]).
    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), NodeError>;

    /// Makes volume `id` ready again after a restart of the host.
    async fn mount_volume(&self, id: &str) -> Result<(), NodeError>;

    /// Removes volume `id` and its data; no sandbox may use it.
    async fn destroy_volume(&self, id: &str) -> Result<(), NodeError>;

    /// The ids of the volumes the node holds.
    async fn list_volumes(&self) -> Result<Vec<String>, NodeError>;

    /// Volume `id`'s files, for the content API (blocking operations).
    fn volume_fs(&self, id: &str) -> Result<hutch_runtime::VolumeFs, NodeError>;
}

/// The machine the server runs on: its runtime, and the layer store its
/// sandboxes' templates and snapshots live in.
pub(crate) struct LocalNode {
    runtime: Runtime,
    layers: Arc<LayerStore>,
    /// Where snapshot layers are written before they are stored.
    scratch: PathBuf,
    /// How images are pulled ([`BootSpec::image`]).
    pull: hutch_image::PullOptions,
    /// The layers of each image pulled since the node started.
    pulled: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// One pull of an image at a time.
    pulling: hutch_runtime::KeyedLocks,
}

/// Where a node records, for each layer a control plane named that it
/// pulled as another diff id, that diff id: `<store>/aliases/<hex>`.
/// A layer pushed to a registry is its directory tarred again, so its diff
/// id there differs from the one it was first stored under; the control
/// side keeps naming it by the first.
const ALIASES: &str = "aliases";

impl LocalNode {
    /// The node over `runtime` and `layers`, writing snapshot layers under
    /// `scratch` (emptied now: what is there a crash left).
    pub fn new(runtime: Runtime, layers: Arc<LayerStore>, scratch: PathBuf) -> LocalNode {
        if let Err(e) = std::fs::remove_dir_all(&scratch)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %scratch.display(), "cannot clear snapshot scratch space: {e}");
        }
        if let Err(e) = std::fs::create_dir_all(&scratch) {
            tracing::warn!(path = %scratch.display(), "cannot create snapshot scratch space: {e}");
        }
        LocalNode {
            runtime,
            layers,
            scratch,
            pull: hutch_image::PullOptions::default(),
            pulled: Default::default(),
            pulling: Default::default(),
        }
    }

    /// The layers this node holds, as control planes name them: those in
    /// its store and those it pulled under another diff id.
    pub fn held_layers(&self) -> Vec<String> {
        let mut held = self.layers.layer_ids().unwrap_or_else(|e| {
            tracing::warn!("cannot list the layer store: {e}");
            Vec::new()
        });
        if let Ok(aliases) = std::fs::read_dir(self.layers.root().join(ALIASES)) {
            held.extend(
                aliases
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(|h| format!("sha256:{h}"))),
            );
        }
        held.sort();
        held.dedup();
        held
    }

    /// How many sandboxes this node holds (a directory each).
    pub fn sandbox_count(&self) -> u64 {
        std::fs::read_dir(&self.runtime.config().state_dir)
            .map(|dir| dir.flatten().filter(|e| e.path().is_dir()).count() as u64)
            .unwrap_or(0)
    }

    /// Pulls [`BootSpec::image`]s with `opts`.
    pub fn with_pull_options(mut self, opts: hutch_image::PullOptions) -> LocalNode {
        self.pull = opts;
        self
    }

    /// Where the alias of layer `diff_id` (a control plane's name) is
    /// recorded; `None` for a name that is not `sha256:<hex>`.
    fn alias_file(&self, diff_id: &str) -> Option<PathBuf> {
        let hex = diff_id.strip_prefix("sha256:")?;
        (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.layers.root().join(ALIASES).join(hex))
    }

    /// The diff id this node stores layer `diff_id` (a control plane's
    /// name) under.
    fn local_layer(&self, diff_id: &str) -> String {
        if self.layers.has_layer(diff_id) {
            return diff_id.to_owned();
        }
        self.alias_file(diff_id)
            .and_then(|file| std::fs::read_to_string(file).ok())
            .map(|local| local.trim().to_owned())
            .unwrap_or_else(|| diff_id.to_owned())
    }

    /// The local layers of `spec`: pulled first if it names an image.
    async fn boot_layers(&self, spec: &BootSpec) -> Result<Vec<String>, NodeError> {
        let Some(image) = &spec.image else {
            return Ok(spec.layers.iter().map(|d| self.local_layer(d)).collect());
        };
        let remembered = || {
            self.pulled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(image)
                .cloned()
        };
        if let Some(layers) = remembered() {
            return Ok(layers);
        }
        let _one = self.pulling.lock(image).await;
        if let Some(layers) = remembered() {
            return Ok(layers);
        }
        let started = std::time::Instant::now();
        let pulled = hutch_image::pull(&self.layers, image, &self.pull, &mut |_| {})
            .await
            .map_err(|e| {
                let message = format!("cannot pull the template's layers ({image}): {e}");
                if crate::error::is_storage_full(&e) {
                    NodeError::HostFull(message)
                } else {
                    NodeError::Failed(message)
                }
            })?;
        if pulled.layers.len() != spec.layers.len() {
            return Err(NodeError::Failed(format!(
                "image {image} has {} layers, the template {}",
                pulled.layers.len(),
                spec.layers.len()
            )));
        }
        for (named, local) in spec.layers.iter().zip(&pulled.layers) {
            let Some(file) = self.alias_file(named).filter(|_| named != local) else {
                continue;
            };
            let written = std::fs::create_dir_all(self.layers.root().join(ALIASES))
                .and_then(|()| std::fs::write(file, local));
            if let Err(e) = written {
                tracing::warn!("cannot record layer {named} as {local}: {e}");
            }
        }
        tracing::info!(%image, elapsed = ?started.elapsed(), "template layers pulled");
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.clone(), pulled.layers.clone());
        Ok(pulled.layers)
    }
}

#[async_trait]
impl Node for LocalNode {
    async fn create(&self, spec: BootSpec) -> Result<Booted, NodeError> {
        let layers = self.boot_layers(&spec).await?;
        let mut sandbox = spec.sandbox;
        sandbox.layers = layers.iter().map(|d| self.layers.layer_dir(d)).collect();
        Ok(booted(self.runtime.create(sandbox).await?))
    }

    async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.destroy(id).await?)
    }

    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.stop_keep_disk(id).await?)
    }

    async fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError> {
        Ok(self.runtime.kill_init(id, pid)?)
    }

    async fn agent_exited(&self, _id: &str, pid: u32) -> Result<(), NodeError> {
        process_exited(pid).await
    }

    async fn pause(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.pause(id).await?)
    }

    async fn resume(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.resume(id).await?)
    }

    async fn set_egress_policy(&self, id: &str, policy: &EgressPolicy) -> Result<(), NodeError> {
        Ok(self.runtime.set_egress_policy(id, policy).await?)
    }

    async fn list(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.runtime.list_host_sandboxes().await?)
    }

    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, NodeError> {
        Ok(self.runtime.status(id).await?)
    }

    async fn agent_pid(&self, id: &str) -> Result<Option<u32>, NodeError> {
        Ok(self.runtime.init_pid(id).await?)
    }

    async fn adopt(&self, id: &str) -> Result<Option<Booted>, NodeError> {
        Ok(self.runtime.adopt(id).await?.map(booted))
    }

    async fn usage(&self, id: &str) -> Result<Usage, NodeError> {
        let cgroup = self.runtime.cgroup_usage(id)?;
        let this = self.runtime.clone();
        let id = id.to_owned();
        let (disk_used, disk_total) = tokio::task::spawn_blocking(move || this.disk_usage(&id))
            .await
            .map_err(|e| NodeError::Failed(format!("disk usage task failed: {e}")))??;
        Ok(Usage {
            cgroup,
            disk_used,
            disk_total,
        })
    }

    async fn snapshot_layer(
        &self,
        id: &str,
        layers: &[String],
    ) -> Result<Option<String>, NodeError> {
        let upper = self.runtime.upper_dir(id);
        // Stopped with its disk kept: mounted for the read only.
        let stopped = !upper.is_dir();
        if stopped {
            self.runtime.mount_kept_disk(id).await?;
        }
        let layer = self.export_layer(upper, layers).await;
        if stopped && let Err(e) = self.runtime.stop_keep_disk(id).await {
            tracing::warn!(sandbox = %id, "cannot unmount the kept disk after its snapshot: {e}");
        }
        layer
    }

    fn agent_link(&self, id: &str) -> AgentLink {
        AgentLink::unix(self.runtime.agent_socket(id))
    }

    async fn console_log(&self, id: &str, offset: u64) -> Result<ConsoleChunk, NodeError> {
        let path = self.runtime.console_log(id);
        tokio::task::spawn_blocking(move || read_lines(&path, offset))
            .await
            .map_err(|e| NodeError::Failed(format!("console log task failed: {e}")))?
            .map_err(|e| NodeError::failed(&e))
    }

    fn release_host_mounts(&self) {
        self.runtime.release_host_mounts()
    }

    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), NodeError> {
        Ok(self.runtime.create_volume(id, size_mb).await?)
    }

    async fn mount_volume(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.mount_volume(id).await?)
    }

    async fn destroy_volume(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.destroy_volume(id).await?)
    }

    async fn list_volumes(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.runtime.list_volumes().await?)
    }

    fn volume_fs(&self, id: &str) -> Result<hutch_runtime::VolumeFs, NodeError> {
        let data = self.runtime.volume_data(id)?;
        hutch_runtime::VolumeFs::open(&data).map_err(|e| NodeError::Failed(e.to_string()))
    }
}

/// What the control side keeps of a sandbox the runtime booted.
fn booted(sandbox: hutch_runtime::Sandbox) -> Booted {
    Booted {
        agent: sandbox.link(),
        init_pid: sandbox.init_pid,
    }
}

/// Returns once process `pid` of this host has exited (at once if there
/// is none).
pub(crate) async fn process_exited(pid: u32) -> Result<(), NodeError> {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return Ok(());
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        // Gone already.
        Err(_) => return Ok(()),
    };
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
    // and the same until the AsyncFd is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| NodeError::Failed(format!("cannot watch process {pid:?}: {e}")))?;
    // Readable once the process has exited.
    let _ = fd.readable().await;
    Ok(())
}

/// Most bytes of one console log read at a time.
const CONSOLE_CHUNK: u64 = 256 * 1024;

/// The whole lines of the file at `path` from `offset` (at most
/// [`CONSOLE_CHUNK`] bytes, lossily as UTF-8), and the offset after them.
/// A file shorter than `offset` was rotated (the agent keeps the newest
/// half): reading goes on from its end.
pub(crate) fn read_lines(path: &std::path::Path, offset: u64) -> std::io::Result<ConsoleChunk> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < offset {
        return Ok(ConsoleChunk {
            text: String::new(),
            next: len,
        });
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(CONSOLE_CHUNK).read_to_end(&mut buf)?;
    // Whole lines only, unless one line fills the chunk.
    let end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if buf.len() as u64 >= CONSOLE_CHUNK => buf.len(),
        None => 0,
    };
    Ok(ConsoleChunk {
        text: String::from_utf8_lossy(&buf[..end]).into_owned(),
        next: offset + end as u64,
    })
}

impl LocalNode {
    /// Writes the changes in `upper` over `layers` as a layer into the
    /// layer store ([`Node::snapshot_layer`]).
    async fn export_layer(
        &self,
        upper: PathBuf,
        layers: &[String],
    ) -> Result<Option<String>, NodeError> {
        let lower = hutch_builder::rootfs::LayerStack::new(
            layers
                .iter()
                .map(|l| self.layers.layer_dir(&self.local_layer(l)))
                .collect(),
        );
        let store = self.layers.clone();
        let scratch = self.scratch.clone();
        tokio::task::spawn_blocking(move || {
            hutch_builder::layer::store_layer(&store, &scratch, |out| {
                hutch_builder::layer::export_upper(&upper, &lower, out)
            })
        })
        .await
        .map_err(|e| NodeError::Failed(format!("the task writing the layer failed: {e}")))?
        .map_err(|e| NodeError::failed(&e))
    }
}
