//! A cluster: the nodes that joined a control plane, driven as one
//! [`Node`].
//!
//! Nodes join by heartbeat ([`Cluster::heartbeat`], `POST
//! /hutch/cluster/v1/heartbeat` with the cluster secret): each beat carries
//! the node's address, its instance id (new at each start), its capacity
//! and the layers it holds, and extends its lease in the store
//! ([`crate::db::Store::node_heartbeat`]). A node whose lease runs out is
//! **lost**: no sandbox is placed on it, and calls for its sandboxes fail
//! at once with [`NodeError::Unavailable`], naming it, instead of waiting
//! on a connection. Its sandboxes are not destroyed: when it beats again
//! the control plane reconciles it ([`crate::lifecycle::readopt_node`]),
//! re-adopting what still runs.
//!
//! Every sandbox a node runs — warm-pool ones too — has a placement in the
//! store ([`crate::db::Placement`]): which node, and the CPU and memory
//! limits it takes of that node's capacity. Calls about a sandbox go to
//! the node of its placement; an agent link resolves the node at each
//! connection, so a node that comes back at another address is followed.
//!
//! # Placement
//!
//! A create goes to [`place`]'s choice: among the nodes alive with room
//! for the sandbox's limits (and, when its layers are only on some nodes —
//! a snapshot a node made — among those), `K` = [`SAMPLE`] are drawn at
//! random and the least loaded is taken — load being the sum of the
//! fractions of its CPU, memory and sandbox capacity already allocated,
//! less a small bonus when it holds the template's layers. Sampling
//! instead of ranking every node keeps a create's cost flat in the size of
//! the cluster and spreads concurrent creates of several control planes
//! instead of sending them all to the one least loaded node. The choice is
//! then reserved in the store in one conditional update
//! ([`crate::db::Store::place_sandbox`]): when another control plane filled
//! the node meanwhile, the next candidate is tried. A node that fails the
//! boot is left out of the retry ([`ATTEMPTS`] nodes at most).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use hutch_runtime::{AgentDial, AgentLink, DialFuture, EgressPolicy, SandboxStatus};
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

use super::api::NodeSecret;
use super::remote::RemoteNode;
use super::{BootSpec, Booted, ConsoleChunk, Node, NodeError, Usage};
use crate::db::{Capacity, Db, NodeBeat, NodeRow, Placement};
use crate::time;

/// How many candidate nodes a placement draws.
pub(crate) const SAMPLE: usize = 3;

/// How many nodes a create tries before it fails.
pub(crate) const ATTEMPTS: usize = 3;

/// What holding a template's layers is worth in a node's load: a tie
/// breaker between nodes about as loaded, never a reason to pile sandboxes
/// onto one node while others are idle.
const LAYERS_BONUS: f64 = 0.05;

/// How long a node's lease lasts by default: it is lost this long after
/// its last heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// What the control plane answers a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BeatReply {
    /// How long the lease lasts, ms.
    pub lease_ms: u64,
    /// When to beat again, ms.
    pub interval_ms: u64,
}

/// What changed in the cluster since the last look ([`Cluster::refresh`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A node is alive with an instance this control plane has not
    /// reconciled yet: it joined, came back, or restarted.
    Joined { node: String, instance: String },
    /// A node's lease ran out.
    Lost { node: String, since_ms: i64 },
}

/// One node of the cluster, as this control plane last saw it.
struct Member {
    row: NodeRow,
    remote: Arc<RemoteNode>,
    /// The instance whose sandboxes were reconciled with the store.
    reconciled: Option<String>,
    /// Whether its loss was reported.
    lost_reported: bool,
}

impl Member {
    fn alive(&self, now: i64) -> bool {
        self.row.lease_until > now
    }
}

#[derive(Default)]
struct Inner {
    members: BTreeMap<String, Member>,
    /// Sandbox id → node id, as the store's placements say.
    placed: HashMap<String, String>,
}

/// The nodes of a cluster and the placements of their sandboxes.
pub(crate) struct Cluster {
    db: Db,
    secret: NodeSecret,
    lease: Duration,
    inner: Arc<Mutex<Inner>>,
}

/// The state of a sandbox's node, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeOf {
    /// The node's name.
    pub node: String,
    /// Whether its lease ran out.
    pub lost: bool,
}

impl Cluster {
    /// A cluster whose nodes admit `secret`, leased for `lease`; its
    /// members and placements read from `db`.
    pub async fn open(db: Db, secret: NodeSecret, lease: Duration) -> Result<Cluster, String> {
        let cluster = Cluster {
            db,
            secret,
            lease,
            inner: Arc::default(),
        };
        let placements = cluster
            .db
            .list_placements()
            .await
            .map_err(|e| format!("cannot read the placements: {e}"))?;
        cluster.lock().placed = placements
            .into_iter()
            .map(|p| (p.sandbox_id, p.node_id))
            .collect();
        cluster
            .refresh()
            .await
            .map_err(|e| format!("cannot read the nodes: {e}"))?;
        Ok(cluster)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an `Authorization` header carries the cluster's secret.
    pub fn admits(&self, authorization: Option<&http::HeaderValue>) -> bool {
        self.secret.admits(authorization)
    }

    /// Records a node's heartbeat (its lease runs [`Cluster::lease`] from
    /// now) and what the node should do next.
    pub async fn heartbeat(&self, beat: NodeBeat) -> Result<BeatReply, String> {
        super::remote::authority_of(&beat.url).map_err(|e| format!("node {}: {e}", beat.id))?;
        if beat.id.is_empty()
            || beat.id.len() > 63
            || !beat
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!(
                "node name {:?} is not valid: 1 to 63 letters, digits, '-', '_' or '.'",
                beat.id
            ));
        }
        let now = time::now_ms();
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        self.db
            .node_heartbeat(beat, now, now.saturating_add(lease_ms))
            .await
            .map_err(|e| e.to_string())?;
        Ok(BeatReply {
            lease_ms: self.lease.as_millis() as u64,
            interval_ms: (self.lease.as_millis() / 4).max(100) as u64,
        })
    }

    /// Reads the nodes from the store; what changed since the last read.
    pub async fn refresh(&self) -> Result<Vec<Change>, crate::db::DbError> {
        let rows = self.db.list_nodes().await?;
        let now = time::now_ms();
        let mut changes = Vec::new();
        let mut inner = self.lock();
        for row in rows {
            let id = row.beat.id.clone();
            let mut member = match inner.members.remove(&id) {
                Some(mut m) if m.row.beat.url == row.beat.url => {
                    m.row = row;
                    m
                }
                old => {
                    let Ok(remote) = RemoteNode::new(&row.beat.url, self.secret.clone()) else {
                        continue;
                    };
                    Member {
                        row,
                        remote: Arc::new(remote),
                        reconciled: old.as_ref().and_then(|m| m.reconciled.clone()),
                        lost_reported: old.is_some_and(|m| m.lost_reported),
                    }
                }
            };
            if member.alive(now) {
                member.lost_reported = false;
                if member.reconciled.as_deref() != Some(member.row.beat.instance_id.as_str()) {
                    changes.push(Change::Joined {
                        node: id.clone(),
                        instance: member.row.beat.instance_id.clone(),
                    });
                }
            } else if !member.lost_reported {
                member.lost_reported = true;
                member.reconciled = None;
                changes.push(Change::Lost {
                    node: id.clone(),
                    since_ms: member.row.heartbeat_at,
                });
            }
            inner.members.insert(id, member);
        }
        Ok(changes)
    }

    /// Records that node `node`'s instance `instance` was reconciled with
    /// the store.
    pub fn reconciled(&self, node: &str, instance: &str) {
        if let Some(m) = self.lock().members.get_mut(node) {
            m.reconciled = Some(instance.to_owned());
        }
    }

    /// Forgets which nodes were reconciled: a control plane that does not
    /// lead reconciles none, and one that comes to lead reconciles each.
    pub fn forget_reconciled(&self) {
        for m in self.lock().members.values_mut() {
            m.reconciled = None;
            m.lost_reported = false;
        }
    }

    /// Learns (or, with `None`, forgets) sandbox `id`'s node, as another
    /// control plane placed it.
    pub fn learn_placement(&self, id: &str, node: Option<String>) {
        let mut inner = self.lock();
        match node {
            Some(node) => {
                inner.placed.insert(id.to_owned(), node);
            }
            None => {
                inner.placed.remove(id);
            }
        }
    }

    /// The node of sandbox `id`, if it has one, and whether it is lost.
    pub fn node_of(&self, id: &str) -> Option<NodeOf> {
        let inner = self.lock();
        let node = inner.placed.get(id)?;
        let now = time::now_ms();
        Some(NodeOf {
            node: node.clone(),
            lost: !inner.members.get(node).is_some_and(|m| m.alive(now)),
        })
    }

    /// The sandboxes placed on node `node`.
    pub fn sandboxes_on(&self, node: &str) -> BTreeSet<String> {
        self.lock()
            .placed
            .iter()
            .filter(|(_, n)| n.as_str() == node)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Node `node` itself, to reconcile it.
    pub fn member(&self, node: &str) -> Option<Arc<RemoteNode>> {
        self.lock().members.get(node).map(|m| m.remote.clone())
    }

    /// Every node as last read, by name.
    pub fn nodes(&self) -> Vec<NodeRow> {
        self.lock()
            .members
            .values()
            .map(|m| m.row.clone())
            .collect()
    }

    /// The node to ask about sandbox `id`: an error naming it when it is
    /// lost, [`NodeError::NotFound`] when the sandbox has no placement.
    fn route(&self, id: &str) -> Result<Arc<RemoteNode>, NodeError> {
        route(&self.lock(), id)
    }

    /// Places a sandbox needing `need` and boots it there: see the module
    /// doc.
    async fn place_and_create(&self, spec: BootSpec) -> Result<Booted, NodeError> {
        let id = spec.sandbox.id.clone();
        let need = Need::of(&spec);
        let mut excluded = BTreeSet::new();
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some((node, remote)) = self.reserve(&id, &need, &excluded).await? else {
                break;
            };
            let booted = remote
                .create(spec.clone())
                .await
                .map(|b| Booted {
                    init_pid: b.init_pid,
                    agent: self.agent_link(&id),
                })
                .inspect(|_| {
                    tracing::info!(sandbox = %id, %node, "sandbox placed");
                });
            match booted {
                Ok(b) => return Ok(b),
                Err(e) => {
                    tracing::warn!(sandbox = %id, %node, "booting on the node failed: {e}");
                    self.unplace(&id).await;
                    failures.push(format!("{node}: {e}"));
                    excluded.insert(node);
                }
            }
        }
        Err(if failures.is_empty() {
            NodeError::Unavailable(self.no_room(&need))
        } else {
            NodeError::Failed(format!(
                "no node could start the sandbox ({})",
                failures.join("; ")
            ))
        })
    }

    /// Chooses a node for sandbox `id` and reserves `need` on it in the
    /// store; `None` when no node not in `excluded` has room.
    async fn reserve(
        &self,
        id: &str,
        need: &Need,
        excluded: &BTreeSet<String>,
    ) -> Result<Option<(String, Arc<RemoteNode>)>, NodeError> {
        let order = {
            let inner = self.lock();
            let now = time::now_ms();
            let candidates: Vec<Candidate> = inner
                .members
                .values()
                .filter(|m| m.alive(now) && !excluded.contains(&m.row.beat.id))
                .map(|m| Candidate::of(&m.row, need))
                .collect();
            place(&candidates, need, SAMPLE, &mut rand::rng())
        };
        for node in order {
            let placement = Placement {
                sandbox_id: id.to_owned(),
                node_id: node.clone(),
                cpus: need.cpus,
                memory_mb: need.memory_mb,
            };
            let placed = self
                .db
                .place_sandbox(placement, time::now_ms())
                .await
                .map_err(|e| NodeError::Failed(format!("cannot record the placement: {e}")))?;
            let mut inner = self.lock();
            let Some(member) = inner.members.get_mut(&node) else {
                continue;
            };
            if !placed {
                // Filled by another control plane since the last read: what
                // the store says comes with the next one.
                member.row.allocated = member.row.beat.capacity;
                continue;
            }
            member.row.allocated.cpus += need.cpus;
            member.row.allocated.memory_mb += need.memory_mb;
            member.row.allocated.sandboxes += 1;
            let remote = member.remote.clone();
            inner.placed.insert(id.to_owned(), node.clone());
            return Ok(Some((node, remote)));
        }
        Ok(None)
    }

    /// Removes sandbox `id`'s placement, giving its allocation back.
    pub async fn unplace(&self, id: &str) {
        match self.db.unplace_sandbox(id.to_owned()).await {
            Ok(_) => {
                self.lock().placed.remove(id);
            }
            Err(e) => tracing::warn!(sandbox = %id, "cannot remove the sandbox's placement: {e}"),
        }
    }

    /// Why no node can take a sandbox needing `need`, in words.
    fn no_room(&self, need: &Need) -> String {
        let inner = self.lock();
        if inner.members.is_empty() {
            return "no node has joined this control plane yet (start one with `hutch node --join URL`)".into();
        }
        let now = time::now_ms();
        let states: Vec<String> = inner
            .members
            .values()
            .map(|m| {
                let state = if !m.alive(now) {
                    format!("lost {} s ago", (now - m.row.heartbeat_at).max(0) / 1000)
                } else if !need.layers_anywhere && !m.holds(&need.layers) {
                    "does not hold the template's layers".into()
                } else {
                    let (a, c) = (m.row.allocated, m.row.beat.capacity);
                    format!(
                        "{}/{} sandboxes, {}/{} vCPUs, {}/{} MiB allocated",
                        a.sandboxes, c.sandboxes, a.cpus, c.cpus, a.memory_mb, c.memory_mb
                    )
                };
                format!("{}: {state}", m.row.beat.id)
            })
            .collect();
        format!(
            "no node has room for a sandbox of {} vCPUs and {} MiB ({})",
            need.cpus,
            need.memory_mb,
            states.join("; ")
        )
    }
}

impl Member {
    fn holds(&self, layers: &[String]) -> bool {
        layers.iter().all(|l| self.row.beat.layers.contains(l))
    }
}

fn route(inner: &Inner, id: &str) -> Result<Arc<RemoteNode>, NodeError> {
    let Some(node) = inner.placed.get(id) else {
        return Err(NodeError::NotFound(format!(
            "sandbox {id} is on no node of this cluster"
        )));
    };
    let Some(member) = inner.members.get(node) else {
        return Err(NodeError::Unavailable(format!(
            "sandbox {id} is on node {node}, which has not reported to this control plane"
        )));
    };
    let now = time::now_ms();
    if !member.alive(now) {
        return Err(NodeError::Unavailable(format!(
            "sandbox {id} is on node {node}, which is lost: no heartbeat for {} s",
            (now - member.row.heartbeat_at).max(0) / 1000
        )));
    }
    Ok(member.remote.clone())
}

/// What a sandbox takes of a node.
#[derive(Debug, Clone)]
pub(crate) struct Need {
    pub cpus: u64,
    pub memory_mb: u64,
    /// Its template's layers.
    pub layers: Vec<String>,
    /// Whether any node can get them (from the template registry), or only
    /// the nodes that hold them.
    pub layers_anywhere: bool,
}

impl Need {
    fn of(spec: &BootSpec) -> Need {
        let limits = &spec.sandbox.limits;
        Need {
            cpus: u64::from(limits.cpus),
            memory_mb: u64::try_from(limits.memory_bytes).unwrap_or(0) / (1024 * 1024),
            layers: spec.layers.clone(),
            layers_anywhere: spec.image.is_some(),
        }
    }
}

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub node: String,
    pub capacity: Capacity,
    pub allocated: Capacity,
    /// Whether it holds every layer of the template.
    pub has_layers: bool,
}

impl Candidate {
    fn of(row: &NodeRow, need: &Need) -> Candidate {
        Candidate {
            node: row.beat.id.clone(),
            capacity: row.beat.capacity,
            allocated: row.allocated,
            has_layers: need.layers.iter().all(|l| row.beat.layers.contains(l)),
        }
    }

    fn fits(&self, need: &Need) -> bool {
        let (a, c) = (self.allocated, self.capacity);
        a.cpus + need.cpus <= c.cpus
            && a.memory_mb + need.memory_mb <= c.memory_mb
            && a.sandboxes < c.sandboxes
            && (need.layers_anywhere || self.has_layers)
    }

    /// How loaded it is: the lower, the better.
    fn load(&self) -> f64 {
        let frac = |a: u64, c: u64| if c == 0 { 1.0 } else { a as f64 / c as f64 };
        let (a, c) = (self.allocated, self.capacity);
        frac(a.cpus, c.cpus) + frac(a.memory_mb, c.memory_mb) + frac(a.sandboxes, c.sandboxes)
            - if self.has_layers { LAYERS_BONUS } else { 0.0 }
    }
}

/// The nodes to try for a sandbox needing `need`, best first: `k` of the
/// candidates with room drawn at random, least loaded first, then the
/// others with room, least loaded first (tried only when the drawn ones
/// filled up meanwhile).
pub(crate) fn place(
    candidates: &[Candidate],
    need: &Need,
    k: usize,
    rng: &mut impl rand::Rng,
) -> Vec<String> {
    let mut fitting: Vec<&Candidate> = candidates.iter().filter(|c| c.fits(need)).collect();
    fitting.shuffle(rng);
    let by_load = |a: &&Candidate, b: &&Candidate| a.load().total_cmp(&b.load());
    let split = k.min(fitting.len());
    let (drawn, rest) = fitting.split_at_mut(split);
    drawn.sort_by(by_load);
    rest.sort_by(by_load);
    drawn
        .iter()
        .chain(rest.iter())
        .map(|c| c.node.clone())
        .collect()
}

/// An agent link of a cluster's sandbox: the node is looked up at each
/// connection.
struct ClusterDial {
    inner: Arc<Mutex<Inner>>,
    id: String,
}

impl AgentDial for ClusterDial {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move {
            let remote = {
                let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                route(&inner, &self.id)
            };
            match remote {
                Ok(remote) => remote.agent_link(&self.id).connect().await,
                Err(NodeError::NotFound(m)) => {
                    Err(std::io::Error::new(std::io::ErrorKind::NotFound, m))
                }
                Err(e) => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    e.to_string(),
                )),
            }
        })
    }

    fn describe(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.placed.get(&self.id) {
            Some(node) => format!("sandbox {} on node {node}", self.id),
            None => format!("sandbox {} (on no node)", self.id),
        }
    }
}

/// How long an agent watch waits before asking a lost node again.
const LOST_WATCH_RETRY: Duration = Duration::from_secs(1);

#[async_trait]
impl Node for Cluster {
    async fn create(&self, spec: BootSpec) -> Result<Booted, NodeError> {
        if spec.sandbox.resume_from_disk {
            // Its disk is on the node it was placed on.
            let id = spec.sandbox.id.clone();
            let booted = self.route(&id)?.create(spec).await?;
            return Ok(Booted {
                init_pid: booted.init_pid,
                agent: self.agent_link(&id),
            });
        }
        self.place_and_create(spec).await
    }

    async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        match self.route(id) {
            Err(NodeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(remote) => remote.destroy(id).await?,
        }
        self.unplace(id).await;
        Ok(())
    }

    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError> {
        self.route(id)?.stop_keep_disk(id).await
    }

    async fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError> {
        self.route(id)?.kill_now(id, pid).await
    }

    /// Waits through a loss of the node: a lost node's sandboxes are not
    /// dead, and the watch goes on when it comes back.
    async fn agent_exited(&self, id: &str, pid: u32) -> Result<(), NodeError> {
        loop {
            match self.route(id) {
                Ok(remote) => return remote.agent_exited(id, pid).await,
                Err(NodeError::NotFound(_)) => return Ok(()),
                Err(_) => tokio::time::sleep(LOST_WATCH_RETRY).await,
            }
        }
    }

    async fn pause(&self, id: &str) -> Result<(), NodeError> {
        self.route(id)?.pause(id).await
    }

    async fn resume(&self, id: &str) -> Result<(), NodeError> {
        self.route(id)?.resume(id).await
    }

    async fn set_egress_policy(&self, id: &str, policy: &EgressPolicy) -> Result<(), NodeError> {
        self.route(id)?.set_egress_policy(id, policy).await
    }

    /// The sandboxes of the nodes alive; those of a lost node are
    /// reconciled when it comes back ([`crate::lifecycle::readopt_node`]).
    async fn list(&self) -> Result<Vec<String>, NodeError> {
        let members: Vec<(String, Arc<RemoteNode>)> = {
            let inner = self.lock();
            let now = time::now_ms();
            inner
                .members
                .values()
                .filter(|m| m.alive(now))
                .map(|m| (m.row.beat.id.clone(), m.remote.clone()))
                .collect()
        };
        let mut all = Vec::new();
        for (node, remote) in members {
            match remote.list().await {
                Ok(ids) => all.extend(ids),
                Err(e) => tracing::warn!(%node, "cannot list the node's sandboxes: {e}"),
            }
        }
        Ok(all)
    }

    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, NodeError> {
        self.route(id)?.status(id).await
    }

    async fn agent_pid(&self, id: &str) -> Result<Option<u32>, NodeError> {
        self.route(id)?.agent_pid(id).await
    }

    async fn adopt(&self, id: &str) -> Result<Option<Booted>, NodeError> {
        let adopted = self.route(id)?.adopt(id).await?;
        Ok(adopted.map(|b| Booted {
            init_pid: b.init_pid,
            agent: self.agent_link(id),
        }))
    }

    async fn usage(&self, id: &str) -> Result<Usage, NodeError> {
        self.route(id)?.usage(id).await
    }

    /// The layer is on the sandbox's node only: sandboxes booted from it
    /// are placed on that node (until snapshots travel through the
    /// template registry).
    async fn snapshot_layer(
        &self,
        id: &str,
        layers: &[String],
    ) -> Result<Option<String>, NodeError> {
        let layer = self.route(id)?.snapshot_layer(id, layers).await?;
        if let Some(layer) = &layer {
            let mut inner = self.lock();
            let node = inner.placed.get(id).cloned();
            if let Some(member) = node.and_then(|n| inner.members.get_mut(&n))
                && !member.row.beat.layers.contains(layer)
            {
                member.row.beat.layers.push(layer.clone());
            }
        }
        Ok(layer)
    }

    fn agent_link(&self, id: &str) -> AgentLink {
        AgentLink::new(ClusterDial {
            inner: self.inner.clone(),
            id: id.to_owned(),
        })
    }

    async fn console_log(&self, id: &str, offset: u64) -> Result<ConsoleChunk, NodeError> {
        self.route(id)?.console_log(id, offset).await
    }

    /// Each node drops its own mounts.
    fn release_host_mounts(&self) {}

    async fn create_volume(&self, id: &str, _size_mb: u64) -> Result<(), NodeError> {
        Err(NodeError::Failed(format!(
            "volume {id} cannot be created: a cluster's nodes share no disk, so volumes are served only by a server that runs its own sandboxes (hutch serve)"
        )))
    }

    async fn mount_volume(&self, _id: &str) -> Result<(), NodeError> {
        Ok(())
    }

    async fn destroy_volume(&self, _id: &str) -> Result<(), NodeError> {
        Ok(())
    }

    async fn list_volumes(&self) -> Result<Vec<String>, NodeError> {
        Ok(Vec::new())
    }

    fn volume_fs(&self, id: &str) -> Result<hutch_runtime::VolumeFs, NodeError> {
        Err(NodeError::Failed(format!(
            "volume {id}: a cluster's nodes share no disk, so volumes are served only by a server that runs its own sandboxes (hutch serve)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn need(cpus: u64, memory_mb: u64) -> Need {
        Need {
            cpus,
            memory_mb,
            layers: vec!["sha256:a".into()],
            layers_anywhere: true,
        }
    }

    fn node(name: &str, sandboxes: u64, has_layers: bool) -> Candidate {
        Candidate {
            node: name.into(),
            capacity: Capacity {
                cpus: 100,
                memory_mb: 100_000,
                sandboxes: 10,
            },
            allocated: Capacity {
                cpus: sandboxes * 2,
                memory_mb: sandboxes * 512,
                sandboxes,
            },
            has_layers,
        }
    }

    #[test]
    fn the_least_loaded_of_the_sample_comes_first() {
        let nodes = [node("a", 5, true), node("b", 1, true), node("c", 3, true)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(place(&nodes, &need(2, 512), 3, &mut rng), ["b", "c", "a"]);
        }
    }

    #[test]
    fn full_nodes_are_never_candidates() {
        let nodes = [node("full", 10, true), node("free", 9, true)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(place(&nodes, &need(2, 512), 3, &mut rng), ["free"]);
        let mut cpu_bound = node("cpu", 0, true);
        cpu_bound.capacity.cpus = 1;
        assert!(place(&[cpu_bound], &need(2, 512), 3, &mut rng).is_empty());
    }

    #[test]
    fn layers_made_on_one_node_keep_their_sandboxes_there() {
        let nodes = [node("has", 9, true), node("lacks", 0, false)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut only_there = need(2, 512);
        only_there.layers_anywhere = false;
        assert_eq!(place(&nodes, &only_there, 3, &mut rng), ["has"]);
        // From the registry, the idle node wins despite lacking them.
        assert_eq!(place(&nodes, &need(2, 512), 3, &mut rng)[0], "lacks");
    }

    #[test]
    fn holding_the_layers_breaks_ties_only() {
        let nodes = [node("cold", 2, false), node("warm", 2, true)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert_eq!(place(&nodes, &need(2, 512), 3, &mut rng)[0], "warm");
        let nodes = [node("idle", 0, false), node("warm", 4, true)];
        assert_eq!(place(&nodes, &need(2, 512), 3, &mut rng)[0], "idle");
    }

    #[test]
    fn a_sample_of_k_spreads_over_a_large_cluster() {
        // 100 idle nodes: sampling picks among them rather than the same
        // first one every time.
        let nodes: Vec<Candidate> = (0..100).map(|i| node(&format!("n{i}"), 0, true)).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let firsts: BTreeSet<String> = (0..50)
            .map(|_| place(&nodes, &need(2, 512), 3, &mut rng).remove(0))
            .collect();
        assert!(firsts.len() > 20, "{firsts:?}");
        // Every node with room stays a fallback.
        assert_eq!(place(&nodes, &need(2, 512), 3, &mut rng).len(), 100);
    }

    use crate::db::SandboxState;
    use crate::testing::{Harness, patiently};

    /// The placements the store holds.
    async fn placements(h: &Harness) -> Vec<String> {
        h.st.db
            .list_placements()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.sandbox_id)
            .collect()
    }

    #[tokio::test]
    async fn a_create_is_placed_reserved_and_given_back() {
        let h = Harness::in_cluster(Duration::from_secs(30)).await;
        let id = h.create().await;
        assert_eq!(placements(&h).await, vec![id.clone()]);
        let node = &h.st.db.list_nodes().await.unwrap()[0];
        assert_eq!(node.allocated.sandboxes, 1);
        crate::lifecycle::kill_sandbox(&h.st, &id).await.unwrap();
        patiently("the placement to go", async {
            while !placements(&h).await.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let node = &h.st.db.list_nodes().await.unwrap()[0];
        assert_eq!(node.allocated, Capacity::default());
    }

    #[tokio::test]
    async fn a_lost_node_takes_no_create_and_its_sandboxes_say_so() {
        let h = Harness::in_cluster(Duration::from_millis(300)).await;
        let id = h.create().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        crate::lifecycle::follow_cluster(&h.st, false).await;
        let cluster = h.st.cluster.as_ref().unwrap();
        assert!(cluster.node_of(&id).unwrap().lost);
        let e = cluster.status(&id).await.unwrap_err();
        assert!(
            matches!(&e, NodeError::Unavailable(m) if m.contains("n1") && m.contains("lost")),
            "{e}"
        );
        let e = crate::lifecycle::create_sandbox(&h.st, h.create_args())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("n1: lost"), "{e}");
        // Back: reachable again.
        h.beat(&cluster.member("n1").unwrap().base_url()).await;
        crate::lifecycle::follow_cluster(&h.st, false).await;
        assert!(!cluster.node_of(&id).unwrap().lost);
        assert!(cluster.status(&id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_returning_node_gives_back_what_it_lost_while_away() {
        let h = Harness::in_cluster(Duration::from_secs(30)).await;
        let id = h.create().await;
        // Killed while its teardown could not reach the node, and gone from
        // the node meanwhile (its machine restarted, say).
        h.st.live().remove(&id);
        h.st.db
            .mark_killed(id.clone(), crate::time::now_ms())
            .await
            .unwrap();
        crate::node::Node::destroy(&*h.node, &id).await.unwrap();
        assert_eq!(placements(&h).await, vec![id.clone()]);
        let cluster = h.st.cluster.as_ref().unwrap();
        assert!(crate::lifecycle::readopt_node(&h.st, cluster, "n1", "test-instance", false).await);
        assert!(placements(&h).await.is_empty());
        assert_eq!(h.row_state(&id).await, SandboxState::Killed);
    }
}
