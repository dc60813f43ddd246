//! `GET /hutch/v1/nodes`: the nodes of a control plane's cluster.

use serde::{Deserialize, Serialize};

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    /// Its name (`hutch node --name`).
    pub name: String,
    /// Its node API.
    pub url: String,
    /// `alive`, or `lost` once its lease ran out.
    pub state: String,
    /// This run of it: new at each start.
    pub instance_id: String,
    /// Its Hutch version.
    pub version: String,
    /// RFC 3339: its last heartbeat.
    pub heartbeat_at: String,
    /// Sandboxes placed on it / admitted.
    pub sandboxes: u64,
    /// Sandboxes it admits.
    pub max_sandboxes: u64,
    /// vCPU limits placed on it.
    pub cpus: u64,
    /// vCPU limits it admits.
    pub max_cpus: u64,
    /// Memory limits placed on it, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Memory limits it admits, MiB.
    #[serde(rename = "maxMemoryMB")]
    pub max_memory_mb: u64,
    /// Sandboxes it reported holding at its last heartbeat (warm-pool ones
    /// included).
    pub reported_sandboxes: u64,
    /// Layers it holds.
    pub layers: usize,
}

impl ClusterNode {
    /// [`ClusterNode::state`] of a node whose lease runs.
    pub const ALIVE: &'static str = "alive";
    /// [`ClusterNode::state`] of a node whose lease ran out.
    pub const LOST: &'static str = "lost";
}
