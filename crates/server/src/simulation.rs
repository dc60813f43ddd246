//! Simulated nodes, for benchmarks of the control plane alone: each is the
//! node API ([`crate::node::api`]) over a node without containers (its
//! sandboxes are a `sleep` process and a small agent answering `/init` on a
//! unix socket), joining a control plane with heartbeats as `hutch node
//! --join` does. A hundred of them run in one process on one machine.
//! Built with the `simulation` feature only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::db::Capacity;
use crate::node::Node as _;
use crate::node::api::{NodeInfo, NodeSecret};
use crate::node::fake::FakeNode;
use crate::node::join::{JoinConfig, Joiner};
use crate::{ServerError, http};

/// A simulated node, serving and beating until [`SimulatedNode::stop`].
pub struct SimulatedNode {
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimulatedNode {
    /// Starts node `name` on a loopback port, its agents' sockets under
    /// `dir`, joining the control plane at `control` with `secret` and
    /// admitting `capacity`.
    pub async fn start(
        name: &str,
        dir: &Path,
        control: &str,
        secret: &str,
        capacity: Capacity,
    ) -> Result<SimulatedNode, ServerError> {
        let secret = NodeSecret::new(secret).map_err(ServerError::Config)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ServerError::Serve)?;
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        let node = FakeNode::new(dir);
        let info = NodeInfo {
            instance_id: uuid::Uuid::new_v4().to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let reported = node.clone();
        let report = Arc::new(move || {
            let held = futures::executor::block_on(reported.list()).map_or(0, |l| l.len());
            (held as u64, Vec::new())
        });
        let joiner = Joiner::new(
            JoinConfig {
                control: vec![control.to_owned()],
                name: name.to_owned(),
                advertise: format!("http://{addr}"),
                capacity,
            },
            secret.clone(),
            info.instance_id.clone(),
            report,
        )
        .map_err(ServerError::Config)?;
        let first = joiner.first_beat().await.map_err(ServerError::Config)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let router = crate::node::api::router(node, secret, info);
        let served = stop.clone();
        let serve = tokio::spawn(async move {
            http::serve(
                listener,
                router,
                http::Limits::default(),
                async move { served.cancelled().await },
                Duration::from_secs(1),
            )
            .await;
        });
        let beat = tokio::spawn(joiner.run(first, stop.clone()));
        Ok(SimulatedNode {
            addr,
            stop,
            tasks: vec![serve, beat],
        })
    }

    /// Where its node API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and beating (its sandboxes' processes go with the
    /// process).
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
