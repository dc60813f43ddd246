//! The node API: the boundary between the control side, which decides
//! (which sandboxes exist, in which state, until when, routed where), and a
//! node, which does (containers, cgroups, networks, disks).
//!
//! Everything the server asks of the machine that runs its sandboxes goes
//! through [`Node`]; nothing above it touches runc, cgroups or nftables.
//! [`LocalNode`] — [`hutch_runtime::Runtime`] and the layer store — is the
//! local node. The vocabulary is the
//! runtime's plain data ([`SandboxSpec`], [`EgressPolicy`], [`Booted`]), and
//! a node's errors are [`NodeError`]s — a kind and a message — so that a
//! node across the network can answer the same way.
//!
//! A sandbox's agent is reached at [`Node::agent_socket`]: the control side
//! relays processes, files and ports to it, and sends its `/init`.

#[cfg(test)]
pub(crate) mod fake;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use hutch_image::LayerStore;
use hutch_runtime::{CgroupUsage, EgressPolicy, Runtime, RuntimeError, SandboxSpec, SandboxStatus};

/// A sandbox a node booted or re-adopted.
pub(crate) type Booted = hutch_runtime::Sandbox;

/// What a node reports of one sandbox's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// CPU time and memory, from its cgroups.
    pub cgroup: CgroupUsage,
    /// Bytes in use on its disk.
    pub disk_used: u64,
    /// Its disk's size, bytes.
    pub disk_total: u64,
}

/// Why a node could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    async fn create(&self, spec: SandboxSpec) -> Result<Booted, NodeError>;

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
    fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError>;

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

    /// Where a sandbox's agent listens.
    fn agent_socket(&self, id: &str) -> PathBuf;

    /// A sandbox's console log: its agent's log (and what runc said).
    fn console_log(&self, id: &str) -> PathBuf;

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
}

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
        }
    }
}

#[async_trait]
impl Node for LocalNode {
    async fn create(&self, spec: SandboxSpec) -> Result<Booted, NodeError> {
        Ok(self.runtime.create(spec).await?)
    }

    async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.destroy(id).await?)
    }

    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError> {
        Ok(self.runtime.stop_keep_disk(id).await?)
    }

    fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError> {
        Ok(self.runtime.kill_init(id, pid)?)
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
        Ok(self.runtime.adopt(id).await?)
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

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.runtime.agent_socket(id)
    }

    fn console_log(&self, id: &str) -> PathBuf {
        self.runtime.console_log(id)
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

impl LocalNode {
    /// Writes the changes in `upper` over `layers` as a layer into the
    /// layer store ([`Node::snapshot_layer`]).
    async fn export_layer(
        &self,
        upper: PathBuf,
        layers: &[String],
    ) -> Result<Option<String>, NodeError> {
        let lower = hutch_builder::rootfs::LayerStack::new(
            layers.iter().map(|l| self.layers.layer_dir(l)).collect(),
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
