//! `GET /hutch/v1/pool`: the warm pool's state, per template.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use hutch_protocol::api::{PoolStatus, TemplatePool};

use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn status(State(st): State<Arc<AppState>>) -> Result<Json<PoolStatus>, ApiError> {
    let templates = st.db.list_templates().await?;
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
