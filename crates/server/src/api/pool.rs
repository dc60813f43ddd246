//! `GET /hutch/v1/pool`: the warm pool's state, per template the caller's
//! team may use.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use hutch_protocol::api::{PoolStatus, TemplatePool};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/hutch/v1/pool",
    tag = "hutch",
    responses((status = 200, description = "The warm pool.", body = PoolStatus))
)]
pub(super) async fn status(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<PoolStatus>, ApiError> {
    let mut templates = st.db.list_templates().await?;
    templates.retain(|t| crate::catalog::visible(t, &caller.team));
    Ok(Json(PoolStatus {
        size: st.pool.target(),
        templates: templates
            .into_iter()
            .map(|t| {
                let s = st.pool.stats(&t.id);
                TemplatePool {
                    template_id: t.id,
                    alias: t.name,
                    ready: s.ready,
                    booting: s.booting,
                    claimed: s.claimed,
                    cold: s.cold,
                    last_error: s.last_error,
                }
            })
            .collect(),
    }))
}
