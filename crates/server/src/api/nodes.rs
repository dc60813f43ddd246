//! A control plane's nodes: `GET /hutch/v1/nodes` lists them (keys of the
//! default team), and `POST /hutch/cluster/v1/heartbeat` is where they
//! report ([`crate::node::cluster`]), with the cluster secret instead of an
//! API key.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use hutch_protocol::api::ClusterNode;

use crate::auth::Caller;
use crate::db::NodeBeat;
use crate::error::ApiError;
use crate::node::cluster::BeatReply;
use crate::state::AppState;
use crate::time;

/// Where nodes send their heartbeats.
pub(crate) const HEARTBEAT_PATH: &str = "/hutch/cluster/v1/heartbeat";

#[utoipa::path(
    get,
    path = "/hutch/v1/nodes",
    tag = "hutch",
    responses(
        (status = 200, description = "The nodes of the cluster, by name (none on a server that runs its own sandboxes).", body = Vec<ClusterNode>),
        (status = 403, description = "Not a key of the default team.", body = super::openapi::Error)
    )
)]
pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<ClusterNode>>, ApiError> {
    if !caller.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only keys of the default team see the cluster's nodes",
        ));
    }
    let Some(cluster) = &st.cluster else {
        return Ok(Json(Vec::new()));
    };
    let now = time::now_ms();
    Ok(Json(
        cluster
            .nodes()
            .into_iter()
            .map(|n| ClusterNode {
                state: if n.lease_until > now {
                    ClusterNode::ALIVE
                } else {
                    ClusterNode::LOST
                }
                .to_owned(),
                name: n.beat.id,
                url: n.beat.url,
                instance_id: n.beat.instance_id,
                version: n.beat.version,
                heartbeat_at: time::rfc3339(n.heartbeat_at),
                sandboxes: n.allocated.sandboxes,
                max_sandboxes: n.beat.capacity.sandboxes,
                cpus: n.allocated.cpus,
                max_cpus: n.beat.capacity.cpus,
                memory_mb: n.allocated.memory_mb,
                max_memory_mb: n.beat.capacity.memory_mb,
                reported_sandboxes: n.beat.sandboxes,
                layers: n.beat.layers.len(),
            })
            .collect(),
    ))
}

/// `POST /hutch/cluster/v1/heartbeat`: a node reports; its lease is
/// extended. Only the cluster secret is admitted (401 otherwise; 404 on a
/// server that has no cluster).
pub(super) async fn heartbeat(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Json<BeatReply>, ApiError> {
    let Some(cluster) = &st.cluster else {
        return Err(ApiError::not_found(
            "this server runs its own sandboxes: nodes join a control plane (hutch control)",
        ));
    };
    if !cluster.admits(req.headers().get(header::AUTHORIZATION)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a node joins with the cluster's node secret (Authorization: Bearer <secret>)",
        ));
    }
    let body = axum::body::to_bytes(req.into_body(), 4 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("heartbeat body: {e}")))?;
    let beat: NodeBeat = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("heartbeat body: {e}")))?;
    let reply = cluster
        .heartbeat(beat)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(Json(reply))
}
