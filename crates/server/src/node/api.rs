//! The node API over HTTP: what `hutch node` serves, so that a control
//! plane on another machine drives this one's sandboxes ([`super::remote`]
//! is its client). Every [`Node`] operation is one route under `/v1/`, its
//! arguments and answer JSON (the node module's own types), its errors a
//! [`NodeError`] as JSON with a status that says its kind.
//!
//! A sandbox's agent is reached through the node:
//! `GET /v1/sandboxes/{id}/agent` with `Upgrade: hutch-agent` answers `101`
//! and from then on the connection carries bytes to and from the agent's
//! socket, unchanged — the control side speaks HTTP to the agent over it
//! exactly as it does over the socket of a local node.
//!
//! Every request must carry `Authorization: Bearer <node secret>`: the
//! secret shared by the control plane and its nodes ([`NodeSecret`]).
//! Nothing but a control plane has it, and nothing else is served: a
//! sandbox's traffic reaches it only through a control plane's front door.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hutch_runtime::EgressPolicy;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::{BootSpec, Node, NodeError};

/// The protocol named in `Upgrade` by an agent tunnel.
pub(crate) const AGENT_UPGRADE: &str = "hutch-agent";

/// The secret a control plane and its nodes share; compared in constant
/// time.
#[derive(Clone)]
pub(crate) struct NodeSecret(Arc<str>);

impl NodeSecret {
    /// Least length of a secret, bytes.
    pub const MIN_LEN: usize = 32;

    /// `secret`, trimmed of surrounding white space (a file's final
    /// newline); refused if shorter than [`NodeSecret::MIN_LEN`].
    pub fn new(secret: &str) -> Result<NodeSecret, String> {
        let secret = secret.trim();
        if secret.len() < Self::MIN_LEN {
            return Err(format!(
                "a node secret has at least {} characters; this one has {}",
                Self::MIN_LEN,
                secret.len()
            ));
        }
        Ok(NodeSecret(secret.into()))
    }

    /// The `Authorization` header value that carries it.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header carries it.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| hutch_protocol::same_secret(given, &*self.0))
    }
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(<redacted>)")
    }
}

/// A booted sandbox, as the node answers it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BootedWire {
    /// The node's pid of its agent.
    pub init_pid: u32,
}

/// `POST /v1/sandboxes/{id}/kill` and `GET /v1/sandboxes/{id}/agent-exit`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AgentPid {
    /// Which agent of the sandbox.
    pub pid: u32,
}

/// The answer of `POST /v1/sandboxes/{id}/kill`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Killed {
    /// Whether that agent was there to be killed.
    pub killed: bool,
}

/// `POST /v1/sandboxes/{id}/snapshot-layer`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotLayer {
    /// The sandbox's template layers, base first.
    pub layers: Vec<String>,
}

/// `GET /v1/sandboxes/{id}/console`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConsoleFrom {
    /// The byte offset to read from.
    pub offset: u64,
}

/// `POST /v1/volumes/{id}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewVolume {
    /// Its size, MiB.
    pub size_mb: u64,
}

/// What `GET /v1/node` answers: who this node is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeInfo {
    /// A fresh id at every start of the node: a control plane that sees it
    /// change knows the node restarted.
    pub instance_id: String,
    /// The Hutch version it runs.
    pub version: String,
}

/// The status a [`NodeError`] is answered with; [`from_status`] reads it
/// back on the control side (the body says the kind too).
fn status_of(e: &NodeError) -> StatusCode {
    match e {
        NodeError::NotFound(_) => StatusCode::NOT_FOUND,
        NodeError::NoKeptDisk(_) => StatusCode::CONFLICT,
        NodeError::HostFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        NodeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A [`NodeError`] from an answer that carried none in its body.
pub(crate) fn from_status(status: StatusCode, text: String) -> NodeError {
    match status {
        StatusCode::NOT_FOUND => NodeError::NotFound(text),
        StatusCode::CONFLICT => NodeError::NoKeptDisk(text),
        StatusCode::INSUFFICIENT_STORAGE => NodeError::HostFull(text),
        StatusCode::SERVICE_UNAVAILABLE => NodeError::Unavailable(text),
        _ => NodeError::Failed(text),
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        (status_of(&self), Json(self)).into_response()
    }
}

type Shared = State<Arc<Served>>;
type Answer<T> = Result<Json<T>, NodeError>;

struct Served {
    node: Arc<dyn Node>,
    info: NodeInfo,
}

/// The node API's routes over `node`, admitting requests that carry
/// `secret`.
pub(crate) fn router(node: Arc<dyn Node>, secret: NodeSecret, info: NodeInfo) -> Router {
    let served = Arc::new(Served { node, info });
    Router::new()
        .route("/v1/node", get(node_info))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", axum::routing::delete(destroy))
        .route("/v1/sandboxes/{id}/stop-keep-disk", post(stop_keep_disk))
        .route("/v1/sandboxes/{id}/kill", post(kill_now))
        .route("/v1/sandboxes/{id}/agent-exit", get(agent_exited))
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/egress", axum::routing::put(egress))
        .route("/v1/sandboxes/{id}/status", get(status))
        .route("/v1/sandboxes/{id}/agent-pid", get(agent_pid))
        .route("/v1/sandboxes/{id}/adopt", post(adopt))
        .route("/v1/sandboxes/{id}/usage", get(usage))
        .route("/v1/sandboxes/{id}/snapshot-layer", post(snapshot_layer))
        .route("/v1/sandboxes/{id}/console", get(console))
        .route("/v1/sandboxes/{id}/agent", get(agent_tunnel))
        .route("/v1/volumes", get(list_volumes))
        .route(
            "/v1/volumes/{id}",
            post(create_volume).delete(destroy_volume),
        )
        .route("/v1/volumes/{id}/mount", post(mount_volume))
        .layer(axum::middleware::from_fn(traced))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let secret = secret.clone();
                async move {
                    if secret.admits(req.headers().get(header::AUTHORIZATION)) {
                        next.run(req).await
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            Json(NodeError::Failed(
                                "the node API needs the node secret (Authorization: Bearer …)"
                                    .to_owned(),
                            )),
                        )
                            .into_response()
                    }
                }
            },
        ))
        .with_state(served)
}

/// Runs each request in a `node.api` span, continuing the control plane's
/// trace when the request carries one.
async fn traced(req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "node.api",
        method = %req.method(),
        path = %req.uri().path()
    );
    crate::trace_context::continue_in(&span, req.headers());
    next.run(req).instrument(span).await
}

async fn node_info(State(s): Shared) -> Json<NodeInfo> {
    Json(s.info.clone())
}

async fn list(State(s): Shared) -> Answer<Vec<String>> {
    Ok(Json(s.node.list().await?))
}

async fn create(State(s): Shared, Json(spec): Json<BootSpec>) -> Answer<BootedWire> {
    let booted = s.node.create(spec).await?;
    Ok(Json(BootedWire {
        init_pid: booted.init_pid,
    }))
}

async fn destroy(State(s): Shared, Path(id): Path<String>) -> Result<StatusCode, NodeError> {
    s.node.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop_keep_disk(State(s): Shared, Path(id): Path<String>) -> Result<StatusCode, NodeError> {
    s.node.stop_keep_disk(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn kill_now(
    State(s): Shared,
    Path(id): Path<String>,
    Json(agent): Json<AgentPid>,
) -> Answer<Killed> {
    Ok(Json(Killed {
        killed: s.node.kill_now(&id, agent.pid).await?,
    }))
}

/// Answers once the agent has exited: a long poll that the control side
/// keeps open for the agent's life.
async fn agent_exited(
    State(s): Shared,
    Path(id): Path<String>,
    Query(agent): Query<AgentPid>,
) -> Result<StatusCode, NodeError> {
    s.node.agent_exited(&id, agent.pid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(s): Shared, Path(id): Path<String>) -> Result<StatusCode, NodeError> {
    s.node.pause(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(State(s): Shared, Path(id): Path<String>) -> Result<StatusCode, NodeError> {
    s.node.resume(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn egress(
    State(s): Shared,
    Path(id): Path<String>,
    Json(policy): Json<EgressPolicy>,
) -> Result<StatusCode, NodeError> {
    s.node.set_egress_policy(&id, &policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(
    State(s): Shared,
    Path(id): Path<String>,
) -> Answer<Option<hutch_runtime::SandboxStatus>> {
    Ok(Json(s.node.status(&id).await?))
}

async fn agent_pid(State(s): Shared, Path(id): Path<String>) -> Answer<Option<u32>> {
    Ok(Json(s.node.agent_pid(&id).await?))
}

async fn adopt(State(s): Shared, Path(id): Path<String>) -> Answer<Option<BootedWire>> {
    let booted = s.node.adopt(&id).await?;
    Ok(Json(booted.map(|b| BootedWire {
        init_pid: b.init_pid,
    })))
}

async fn usage(State(s): Shared, Path(id): Path<String>) -> Answer<super::Usage> {
    Ok(Json(s.node.usage(&id).await?))
}

async fn snapshot_layer(
    State(s): Shared,
    Path(id): Path<String>,
    Json(req): Json<SnapshotLayer>,
) -> Answer<Option<String>> {
    Ok(Json(s.node.snapshot_layer(&id, &req.layers).await?))
}

async fn console(
    State(s): Shared,
    Path(id): Path<String>,
    Query(from): Query<ConsoleFrom>,
) -> Answer<super::ConsoleChunk> {
    Ok(Json(s.node.console_log(&id, from.offset).await?))
}

/// `101 Switching Protocols`, then the connection is spliced to the
/// agent's socket. The agent is connected to first, so that a sandbox
/// without one is a plain `404`.
async fn agent_tunnel(
    State(s): Shared,
    Path(id): Path<String>,
    mut req: Request,
) -> Result<Response, NodeError> {
    let asks = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(AGENT_UPGRADE));
    if !asks {
        return Err(NodeError::Failed(format!(
            "an agent tunnel needs Upgrade: {AGENT_UPGRADE}"
        )));
    }
    let link = s.node.agent_link(&id);
    let mut agent = link
        .connect()
        .await
        .map_err(|e| NodeError::NotFound(format!("the agent of sandbox {id}: {e}")))?;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
            }
            Err(e) => tracing::debug!(sandbox = %id, "agent tunnel: upgrade failed: {e}"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static(AGENT_UPGRADE)),
        ],
    )
        .into_response())
}

async fn list_volumes(State(s): Shared) -> Answer<Vec<String>> {
    Ok(Json(s.node.list_volumes().await?))
}

async fn create_volume(
    State(s): Shared,
    Path(id): Path<String>,
    Json(req): Json<NewVolume>,
) -> Result<StatusCode, NodeError> {
    s.node.create_volume(&id, req.size_mb).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn mount_volume(State(s): Shared, Path(id): Path<String>) -> Result<StatusCode, NodeError> {
    s.node.mount_volume(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn destroy_volume(State(s): Shared, Path(id): Path<String>) -> Result<StatusCode, NodeError> {
    s.node.destroy_volume(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fake::FakeNode;
    use crate::node::remote::RemoteNode;
    use crate::testing::{NODE_SECRET, serve_node_api};

    fn boot_spec(id: &str) -> BootSpec {
        BootSpec {
            layers: vec![],
            image: None,
            sandbox: hutch_runtime::SandboxSpec::new(
                vec![],
                hutch_protocol::boot::BootConfig {
                    schema_version: hutch_protocol::boot::BOOT_SCHEMA_VERSION,
                    sandbox_id: id.to_owned(),
                    template_id: "tpl".into(),
                    template_name: "app".into(),
                    template_env: vec![],
                    template_user: None,
                    template_workdir: None,
                },
            ),
        }
    }

    #[tokio::test]
    async fn a_remote_node_is_the_node_across_the_wire() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeNode::new(dir.path());
        let (url, _stop) = serve_node_api(fake.clone()).await;
        let node = RemoteNode::new(&url, NodeSecret::new(NODE_SECRET).unwrap()).unwrap();
        assert_eq!(node.info().await.unwrap().instance_id, "test-instance");

        let booted = node.create(boot_spec("sb1")).await.unwrap();
        assert_eq!(Some(booted.init_pid), fake.init_pid("sb1"));
        assert_eq!(node.list().await.unwrap(), ["sb1"]);
        assert_eq!(node.agent_pid("sb1").await.unwrap(), Some(booted.init_pid));
        // The agent, through a tunnel of the node API.
        hutch_runtime::AgentClient::over(booted.agent.clone())
            .health()
            .await
            .unwrap();
        assert!(booted.agent.to_string().contains("sandbox sb1"));

        // Each kind of error stays that kind.
        let mut again = boot_spec("sb2");
        again.sandbox.resume_from_disk = true;
        assert!(matches!(
            node.create(again).await.unwrap_err(),
            NodeError::NoKeptDisk(m) if m.contains("sb2")
        ));
        assert!(matches!(
            node.usage("nope").await.unwrap_err(),
            NodeError::NotFound(_)
        ));
        assert_eq!(node.status("nope").await.unwrap(), None);
        let e = node.agent_link("nope").connect().await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");

        // A kill, and the watch that sees it.
        let watch = tokio::spawn({
            let node = RemoteNode::new(&url, NodeSecret::new(NODE_SECRET).unwrap()).unwrap();
            async move { node.agent_exited("sb1", booted.init_pid).await }
        });
        assert!(node.kill_now("sb1", booted.init_pid).await.unwrap());
        crate::testing::patiently("the watch to see the agent exit", watch)
            .await
            .unwrap()
            .unwrap();
        node.destroy("sb1").await.unwrap();
        assert!(node.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_node_api_admits_only_the_node_secret() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeNode::new(dir.path());
        let (url, _stop) = serve_node_api(fake.clone()).await;
        let other = "another-secret-that-is-long-enough-too";
        let node = RemoteNode::new(&url, NodeSecret::new(other).unwrap()).unwrap();
        let e = node.info().await.unwrap_err();
        assert!(e.to_string().contains("node secret"), "{e}");
        assert!(node.create(boot_spec("x")).await.is_err());
        assert!(fake.list().await.unwrap().is_empty(), "nothing booted");
        let e = node.agent_link("x").connect().await.err().unwrap();
        assert!(e.to_string().contains("401"), "{e}");
        let bare = reqwest::get(format!("{url}/v1/sandboxes")).await.unwrap();
        assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

        assert!(NodeSecret::new("short").is_err());
        assert!(!format!("{:?}", NodeSecret::new(other).unwrap()).contains(other));
    }
}
