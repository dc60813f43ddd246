//! `hutch node`: this machine's sandboxes, served to a control plane
//! through the node API ([`super::api`]).
//!
//! A node keeps what the control plane gives it and nothing else: its data
//! directory holds the layer store (filled by pulls from the template
//! registry), the sandboxes' disks and runc's state — no database and no
//! API keys. Its sandboxes outlive it: a node stopped and started again
//! finds them running, and the control plane re-adopts them through it. A
//! node that stops with no sandbox left removes the host mounts it made
//! for them, as `hutch serve` does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::node::api::{NodeInfo, NodeSecret};
use crate::{MachineConfig, ServerError, error::io_reason, http};

/// How to run a node.
#[derive(Clone)]
pub struct NodeConfig {
    /// Where the node API listens.
    pub listen: SocketAddr,
    /// Root of the node's state: layers, sandboxes, runc's state.
    pub data_dir: PathBuf,
    /// The agent, runc and networking.
    pub machine: MachineConfig,
    /// The secret control planes present (at least
    /// [`NodeSecret::MIN_LEN`] characters).
    pub secret: String,
    /// Registries (`host[:port]`) the node pulls template layers from
    /// over plain HTTP. Registries on loopback always are.
    pub insecure_registries: Vec<String>,
    /// Connection limits and timeouts of the listener.
    pub http: http::Limits,
    /// The control plane this node joins (`None`: it waits to be driven,
    /// as by `hutch-bench`).
    pub join: Option<super::join::JoinConfig>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("machine", &self.machine)
            .field("secret", &"<redacted>")
            .field("insecure_registries", &self.insecure_registries)
            .field("join", &self.join)
            .finish()
    }
}

/// A bound, ready node.
pub struct NodeServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    http: http::Limits,
    router: axum::Router,
    node: Arc<super::LocalNode>,
    /// Its heartbeats, and the control plane's answer to the first.
    joiner: Option<(super::join::Joiner, Option<super::cluster::BeatReply>)>,
    _lock: std::fs::File,
}

impl NodeServer {
    /// Opens the data directory and the runtime, and binds the listener.
    pub async fn bind(cfg: NodeConfig) -> Result<NodeServer, ServerError> {
        let secret = NodeSecret::new(&cfg.secret).map_err(ServerError::Config)?;
        let data = std::path::absolute(&cfg.data_dir).map_err(|e| {
            ServerError::Config(format!(
                "data directory {}: {}",
                cfg.data_dir.display(),
                io_reason(&e)
            ))
        })?;
        let (lock, store) = crate::state::open_machine_dir(&data)?;
        let runtime = crate::state::local_runtime(&cfg.machine, &data)?;
        let node = super::LocalNode::new(runtime, store, data.join("tmp").join("snapshots"))
            .with_pull_options(hutch_image::PullOptions {
                insecure_registries: cfg.insecure_registries.clone(),
                ..Default::default()
            });
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ServerError::Listen {
                addr: cfg.listen,
                reason: io_reason(&e),
            })?;
        let local_addr = listener.local_addr().map_err(ServerError::Serve)?;
        let info = NodeInfo {
            instance_id: uuid::Uuid::new_v4().to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        tracing::info!(instance = %info.instance_id, data = %data.display(), "node ready");
        let node = Arc::new(node);
        let joiner = match cfg.join {
            None => None,
            Some(join) => {
                let reported = node.clone();
                let joiner = super::join::Joiner::new(
                    join,
                    secret.clone(),
                    info.instance_id.clone(),
                    Arc::new(move || (reported.sandbox_count(), reported.held_layers())),
                )
                .map_err(ServerError::Config)?;
                let first = joiner.first_beat().await.map_err(ServerError::Config)?;
                Some((joiner, first))
            }
        };
        Ok(NodeServer {
            listener,
            local_addr,
            http: cfg.http,
            router: super::api::router(node.clone(), secret, info),
            node,
            joiner,
            _lock: lock,
        })
    }

    /// The address the node API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGTERM or SIGINT; sandboxes keep running.
    pub async fn run(self) -> Result<(), ServerError> {
        self.run_until(crate::shutdown_signal()).await
    }

    /// Serves until `shutdown` completes; sandboxes keep running.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some((joiner, first)) = self.joiner {
            tokio::spawn(joiner.run(first, stop.clone()));
        }
        http::serve(
            self.listener,
            self.router,
            self.http,
            shutdown,
            Duration::from_secs(5),
        )
        .await;
        stop.cancel();
        // Nothing left running: the host mounts made for sandboxes go too.
        match super::Node::list(&*self.node).await {
            Ok(ids) if ids.is_empty() => {
                super::Node::release_host_mounts(&*self.node);
                tracing::info!("node stopped");
            }
            Ok(ids) => tracing::info!(
                sandboxes = ids.len(),
                "node stopped; its sandboxes keep running"
            ),
            Err(e) => tracing::warn!("node stopped; cannot list its sandboxes: {e}"),
        }
        Ok(())
    }
}
