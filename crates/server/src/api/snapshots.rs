//! `GET /snapshots`: the snapshots, oldest first, paged as E2B pages them
//! (`limit`, `nextToken`; the next page's token in `X-Next-Token`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hutch_protocol::api::SnapshotInfo;
use serde::Deserialize;

use super::paging::page;
use super::sandboxes::snapshot_info;
use crate::auth::Caller;
use crate::error::{ApiError, ApiQuery};
use crate::lifecycle;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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

#[utoipa::path(
    get,
    path = "/snapshots",
    tag = "snapshots",
    params(ListQuery),
    responses((status = 200, description = "A page of the team's snapshots, oldest first.", body = Vec<SnapshotInfo>, headers(("x-next-token" = String, description = "The next page's `nextToken`, when there is one."))))
)]
pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let snapshots = lifecycle::list_snapshots(
        &st,
        &caller.team,
        q.sandbox_id.as_deref(),
        q.name.as_deref(),
    )
    .await?;
    // Oldest first; the token is the id of the last one returned.
    let (snapshots, headers) = page(snapshots, q.limit, q.next_token.as_deref(), |s| &s.id)?;
    let page: Vec<SnapshotInfo> = snapshots
        .iter()
        // Unnamed snapshots are named by their id.
        .map(|s| snapshot_info(s, s.name != s.id))
        .collect();
    Ok((headers, Json(page)).into_response())
}
