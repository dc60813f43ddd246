//! `GET /snapshots`: the snapshots, oldest first, paged as E2B pages them
//! (`limit`, `nextToken`; the next page's token in `X-Next-Token`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use hutch_protocol::api::SnapshotInfo;
use serde::Deserialize;

use super::sandboxes::snapshot_info;
use crate::error::{ApiError, ApiQuery};
use crate::lifecycle;
use crate::state::AppState;

/// Largest page.
const MAX_PAGE: usize = 1000;
/// Page size when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    /// Only the snapshots of this sandbox.
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    /// Only the snapshot of this name (or id).
    name: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_PAGE),
    };
    let mut snapshots =
        lifecycle::list_snapshots(&st, q.sandbox_id.as_deref(), q.name.as_deref()).await?;
    // Oldest first; the token is the id of the last one returned.
    if let Some(token) = q.next_token.as_deref().filter(|t| !t.is_empty()) {
        let Some(at) = snapshots.iter().position(|s| s.id == token) else {
            return Err(ApiError::bad_request(format!(
                "invalid nextToken '{token}'"
            )));
        };
        snapshots.drain(..=at);
    }
    let more = snapshots.len() > limit;
    snapshots.truncate(limit);
    let mut headers = HeaderMap::new();
    if more
        && let Some(last) = snapshots.last()
        && let Ok(v) = HeaderValue::from_str(&last.id)
    {
        headers.insert("x-next-token", v);
    }
    let page: Vec<SnapshotInfo> = snapshots
        .iter()
        // Unnamed snapshots are named by their id.
        .map(|s| snapshot_info(s, s.name != s.id))
        .collect();
    Ok((headers, Json(page)).into_response())
}
