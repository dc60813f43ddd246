//! The node API: the boundary between the control side, which decides
//! (which sandboxes exist, in which state, until when, routed where), and a
//! node, which does (containers, cgroups, networks, disks).
//!
//! Everything the server asks of the machine that runs its sandboxes goes
//! through [`Node`]; nothing above it touches runc, cgroups or nftables.
//! [`hutch_runtime::Runtime`] is the local node. The vocabulary is the
//! runtime's plain data ([`SandboxSpec`], [`EgressPolicy`], [`Booted`]), and
//! a node's errors are [`NodeError`]s — a kind and a message — so that a
//! node across the network can answer the same way.
//!
//! A sandbox's agent is reached at [`Node::agent_socket`]: the control side
//! relays processes, files and ports to it, and sends its `/init`.

#[cfg(test)]
pub(crate) mod fake;

use std::path::PathBuf;

use async_trait::async_trait;
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
            _ => NodeError::Failed(message),
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

    /// Where a sandbox's agent listens.
    fn agent_socket(&self, id: &str) -> PathBuf;

    /// At a shutdown that leaves no sandbox running: drops what the node
    /// mounted for its sandboxes.
    fn release_host_mounts(&self);
}

#[async_trait]
impl Node for Runtime {
    async fn create(&self, spec: SandboxSpec) -> Result<Booted, NodeError> {
        Ok(Runtime::create(self, spec).await?)
    }

    async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        Ok(Runtime::destroy(self, id).await?)
    }

    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError> {
        Ok(Runtime::stop_keep_disk(self, id).await?)
    }

    fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError> {
        Ok(self.kill_init(id, pid)?)
    }

    async fn pause(&self, id: &str) -> Result<(), NodeError> {
        Ok(Runtime::pause(self, id).await?)
    }

    async fn resume(&self, id: &str) -> Result<(), NodeError> {
        Ok(Runtime::resume(self, id).await?)
    }

    async fn set_egress_policy(&self, id: &str, policy: &EgressPolicy) -> Result<(), NodeError> {
        Ok(Runtime::set_egress_policy(self, id, policy).await?)
    }

    async fn list(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.list_host_sandboxes().await?)
    }

    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, NodeError> {
        Ok(Runtime::status(self, id).await?)
    }

    async fn agent_pid(&self, id: &str) -> Result<Option<u32>, NodeError> {
        Ok(self.init_pid(id).await?)
    }

    async fn adopt(&self, id: &str) -> Result<Option<Booted>, NodeError> {
        Ok(Runtime::adopt(self, id).await?)
    }

    async fn usage(&self, id: &str) -> Result<Usage, NodeError> {
        let cgroup = self.cgroup_usage(id)?;
        let this = self.clone();
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

    fn agent_socket(&self, id: &str) -> PathBuf {
        Runtime::agent_socket(self, id)
    }

    fn release_host_mounts(&self) {
        Runtime::release_host_mounts(self)
    }
}
