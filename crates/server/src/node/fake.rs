//! A node without containers, for tests of the control side that need no
//! root and no runc: a sandbox is a plain `sleep` process standing in for
//! its agent's init (so pidfds, kills and dead-agent detection behave as
//! they do on a real node) and a small HTTP server on a unix socket
//! answering the agent's `/init` and `/health`.
//!
//! A test can hold any operation on any sandbox at its start
//! ([`FakeNode::hold`]) to interleave transitions deterministically, and
//! reads what the node did from [`FakeNode::calls`].
//!
//! Simulated nodes ([`crate::simulation`]) serve it too, without the test
//! controls.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hutch_runtime::{AgentLink, CgroupUsage, EgressPolicy, SandboxStatus};
use tokio::sync::{Notify, Semaphore};

use super::{BootSpec, Booted, ConsoleChunk, Node, NodeError, Usage};

/// Where a fake sandbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FakeState {
    /// Its init runs.
    Running,
    /// Frozen.
    Paused,
    /// Stopped with its disk kept.
    DiskOnly,
}

struct FakeSandbox {
    state: FakeState,
    /// The stand-in init while it has one.
    init: Option<tokio::process::Child>,
    /// The fake agent's server.
    agent: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeSandbox {
    fn drop(&mut self) {
        if let Some(agent) = &self.agent {
            agent.abort();
        }
        if let Some(init) = &mut self.init {
            let _ = init.start_kill();
        }
    }
}

/// An operation held at its start until released.
struct Hold {
    /// Set when the operation reached the hold.
    reached: Arc<Notify>,
    /// Gets a permit when released.
    release: Arc<Semaphore>,
}

/// A held operation (see [`FakeNode::hold`]).
pub(crate) struct Held {
    reached: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Held {
    /// Waits until the operation is held.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets it go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

/// The fake node.
pub(crate) struct FakeNode {
    dir: PathBuf,
    sandboxes: Mutex<HashMap<String, FakeSandbox>>,
    holds: Mutex<HashMap<(String, String), Hold>>,
    calls: Mutex<Vec<String>>,
    /// Whether creates fail.
    failing: std::sync::atomic::AtomicBool,
    /// Its volumes' ids.
    volumes: Mutex<std::collections::BTreeSet<String>>,
    /// The volumes each sandbox was created with (`id → destination`).
    pub mounted: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl FakeNode {
    /// A node whose agents' sockets live in `dir`.
    pub fn new(dir: &Path) -> Arc<FakeNode> {
        std::fs::create_dir_all(dir).unwrap();
        Arc::new(FakeNode {
            dir: dir.to_path_buf(),
            sandboxes: Mutex::default(),
            holds: Mutex::default(),
            calls: Mutex::default(),
            failing: Default::default(),
            volumes: Mutex::default(),
            mounted: Mutex::default(),
        })
    }

    /// Holds the next `op` (a [`Node`] method's name) on sandbox `id` at
    /// its start.
    pub fn hold(&self, op: &str, id: &str) -> Held {
        let reached = Arc::new(Notify::new());
        let release = Arc::new(Semaphore::new(0));
        self.holds.lock().unwrap().insert(
            (op.to_owned(), id.to_owned()),
            Hold {
                reached: reached.clone(),
                release: release.clone(),
            },
        );
        Held { reached, release }
    }

    /// What was asked of the node, in order: `"<op> <id>"`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Where sandbox `id` stands; `None` if the node has none.
    pub fn state(&self, id: &str) -> Option<FakeState> {
        self.sandboxes.lock().unwrap().get(id).map(|s| s.state)
    }

    /// The pid of sandbox `id`'s stand-in init.
    pub fn init_pid(&self, id: &str) -> Option<u32> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .and_then(|s| s.init.as_ref())
            .and_then(|c| c.id())
    }

    /// Makes the create of any sandbox fail.
    pub fn fail_creates(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records `op` on `id` and waits there while it is held.
    async fn enter(&self, op: &str, id: &str) {
        self.calls.lock().unwrap().push(format!("{op} {id}"));
        let hold = self
            .holds
            .lock()
            .unwrap()
            .remove(&(op.to_owned(), id.to_owned()));
        if let Some(hold) = hold {
            hold.reached.notify_one();
            let _ = hold.release.acquire().await.unwrap();
        }
    }

    fn not_found(id: &str) -> NodeError {
        NodeError::NotFound(format!("sandbox {id} not found"))
    }

    /// Where sandbox `id`'s fake agent listens.
    fn agent_socket(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sock"))
    }

    /// Starts a stand-in init and a fake agent for `id`.
    fn boot(
        &self,
        id: &str,
    ) -> Result<(tokio::process::Child, tokio::task::JoinHandle<()>), NodeError> {
        let init = tokio::process::Command::new("sleep")
            .arg("3600")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| NodeError::Failed(format!("spawn sleep: {e}")))?;
        let socket = self.agent_socket(id);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| NodeError::Failed(format!("bind {}: {e}", socket.display())))?;
        let app = Router::new()
            .route("/init", post(|| async { StatusCode::NO_CONTENT }))
            .route("/health", get(|| async { StatusCode::NO_CONTENT }));
        let agent = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((init, agent))
    }
}

#[async_trait]
impl Node for FakeNode {
    async fn create(&self, spec: BootSpec) -> Result<Booted, NodeError> {
        let spec = spec.sandbox;
        let id = spec.id.clone();
        self.enter("create", &id).await;
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NodeError::Failed(format!("sandbox {id}: the disk is full")));
        }
        if spec.resume_from_disk {
            match self.state(&id) {
                Some(FakeState::DiskOnly) => {}
                _ => {
                    return Err(NodeError::NoKeptDisk(format!(
                        "sandbox {id} has no kept disk"
                    )));
                }
            }
        }
        {
            let volumes = self.volumes.lock().unwrap();
            if let Some(v) = spec
                .volumes
                .iter()
                .find(|v| !volumes.contains(&v.volume_id))
            {
                return Err(NodeError::Failed(format!(
                    "volume {} is not mounted on the host",
                    v.volume_id
                )));
            }
        }
        self.mounted.lock().unwrap().insert(
            id.clone(),
            spec.volumes
                .iter()
                .map(|v| (v.volume_id.clone(), v.destination.clone()))
                .collect(),
        );
        let (init, agent) = self.boot(&id)?;
        let init_pid = init.id().expect("a running child has a pid");
        self.sandboxes.lock().unwrap().insert(
            id.clone(),
            FakeSandbox {
                state: FakeState::Running,
                init: Some(init),
                agent: Some(agent),
            },
        );
        Ok(Booted {
            agent: self.agent_link(&id),
            init_pid,
        })
    }

    async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        self.enter("destroy", id).await;
        self.sandboxes.lock().unwrap().remove(id);
        Ok(())
    }

    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError> {
        self.enter("stop_keep_disk", id).await;
        let mut sandboxes = self.sandboxes.lock().unwrap();
        let Some(sandbox) = sandboxes.get_mut(id) else {
            return Err(NodeError::NoKeptDisk(format!(
                "sandbox {id} has no kept disk"
            )));
        };
        if let Some(agent) = sandbox.agent.take() {
            agent.abort();
        }
        if let Some(mut init) = sandbox.init.take() {
            let _ = init.start_kill();
        }
        sandbox.state = FakeState::DiskOnly;
        Ok(())
    }

    async fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError> {
        self.calls.lock().unwrap().push(format!("kill_now {id}"));
        let mut sandboxes = self.sandboxes.lock().unwrap();
        let Some(init) = sandboxes.get_mut(id).and_then(|s| s.init.as_mut()) else {
            return Ok(false);
        };
        if init.id() != Some(pid) {
            return Ok(false);
        }
        Ok(init.start_kill().is_ok())
    }

    async fn agent_exited(&self, _id: &str, pid: u32) -> Result<(), NodeError> {
        super::process_exited(pid).await
    }

    async fn pause(&self, id: &str) -> Result<(), NodeError> {
        self.enter("pause", id).await;
        match self.sandboxes.lock().unwrap().get_mut(id) {
            Some(s) if s.state != FakeState::DiskOnly => {
                s.state = FakeState::Paused;
                Ok(())
            }
            _ => Err(Self::not_found(id)),
        }
    }

    async fn resume(&self, id: &str) -> Result<(), NodeError> {
        self.enter("resume", id).await;
        match self.sandboxes.lock().unwrap().get_mut(id) {
            Some(s) if s.state != FakeState::DiskOnly => {
                s.state = FakeState::Running;
                Ok(())
            }
            _ => Err(Self::not_found(id)),
        }
    }

    async fn set_egress_policy(&self, id: &str, _policy: &EgressPolicy) -> Result<(), NodeError> {
        self.enter("set_egress_policy", id).await;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, NodeError> {
        let mut ids: Vec<String> = self.sandboxes.lock().unwrap().keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, NodeError> {
        Ok(self.state(id).map(|s| match s {
            FakeState::Running => SandboxStatus::Running,
            FakeState::Paused => SandboxStatus::Paused,
            FakeState::DiskOnly => SandboxStatus::Stopped,
        }))
    }

    async fn agent_pid(&self, id: &str) -> Result<Option<u32>, NodeError> {
        Ok(self.init_pid(id))
    }

    async fn adopt(&self, id: &str) -> Result<Option<Booted>, NodeError> {
        let pid = match self.sandboxes.lock().unwrap().get(id) {
            Some(s) if s.state == FakeState::Running => s.init.as_ref().and_then(|c| c.id()),
            _ => None,
        };
        Ok(pid.map(|init_pid| Booted {
            init_pid,
            agent: self.agent_link(id),
        }))
    }

    async fn usage(&self, id: &str) -> Result<Usage, NodeError> {
        if self.state(id).is_none() {
            return Err(Self::not_found(id));
        }
        Ok(Usage {
            cgroup: CgroupUsage {
                cpu_ns: 0,
                memory: 0,
                cache: 0,
                memory_limit: 0,
            },
            disk_used: 0,
            disk_total: 0,
        })
    }

    /// A made-up layer; refused unless the sandbox is frozen or stopped,
    /// as the control side must keep it.
    async fn snapshot_layer(
        &self,
        id: &str,
        _layers: &[String],
    ) -> Result<Option<String>, NodeError> {
        self.enter("snapshot_layer", id).await;
        match self.state(id) {
            Some(FakeState::Paused | FakeState::DiskOnly) => {
                let n = self.calls.lock().unwrap().len();
                Ok(Some(format!("sha256:{n:064x}")))
            }
            Some(state) => Err(NodeError::Failed(format!(
                "sandbox {id} is {state:?}, not frozen, while its layer is read"
            ))),
            None => Err(Self::not_found(id)),
        }
    }

    fn agent_link(&self, id: &str) -> AgentLink {
        AgentLink::unix(self.agent_socket(id))
    }

    async fn console_log(&self, id: &str, offset: u64) -> Result<ConsoleChunk, NodeError> {
        super::read_lines(&self.dir.join(format!("{id}.console.log")), offset)
            .map_err(|e| NodeError::Failed(e.to_string()))
    }

    fn release_host_mounts(&self) {}

    async fn create_volume(&self, id: &str, _size_mb: u64) -> Result<(), NodeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("create_volume {id}"));
        self.volumes.lock().unwrap().insert(id.to_owned());
        std::fs::create_dir_all(self.dir.join("volumes").join(id))
            .map_err(|e| NodeError::Failed(e.to_string()))?;
        Ok(())
    }

    async fn mount_volume(&self, id: &str) -> Result<(), NodeError> {
        if self.volumes.lock().unwrap().contains(id) {
            Ok(())
        } else {
            Err(NodeError::Failed(format!("volume {id} has no image")))
        }
    }

    async fn destroy_volume(&self, id: &str) -> Result<(), NodeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("destroy_volume {id}"));
        self.volumes.lock().unwrap().remove(id);
        Ok(())
    }

    async fn list_volumes(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.volumes.lock().unwrap().iter().cloned().collect())
    }

    fn volume_fs(&self, id: &str) -> Result<hutch_runtime::VolumeFs, NodeError> {
        hutch_runtime::VolumeFs::open(&self.dir.join("volumes").join(id))
            .map_err(|e| NodeError::Failed(e.to_string()))
    }
}
