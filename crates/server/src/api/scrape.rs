//! `GET /metrics`: the server's Prometheus metrics ([`crate::prometheus`]),
//! for keys of the default team.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::prometheus::ScrapeError;
use crate::state::AppState;

/// The exposition format's media type (OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl From<ScrapeError> for ApiError {
    fn from(e: ScrapeError) -> Self {
        match e {
            ScrapeError::NotAdmin => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            ScrapeError::Db(e) => crate::error::db_error(&e),
        }
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "hutch",
    responses((status = 200, description = "The metrics, in the OpenMetrics text format.", content_type = "application/openmetrics-text", body = String), (status = 403, description = "Not a key of the default team.", body = super::openapi::Error))
)]
pub(super) async fn metrics(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let text = crate::prometheus::scrape(&st, &caller).await?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response())
}
