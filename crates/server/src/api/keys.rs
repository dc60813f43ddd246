//! Hutch's API key routes: create, list and revoke keys. Only a key's
//! SHA-256 is stored; the key itself is shown once, in the answer to its
//! creation.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hutch_protocol::api::{CreatedApiKey, ListedApiKey, NewApiKey};

use crate::auth::KeyKind;
use crate::db::{ApiKeyRow, Revoke};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::time;

impl From<&ApiKeyRow> for ListedApiKey {
    fn from(k: &ApiKeyRow) -> Self {
        ListedApiKey {
            id: k.id.to_string(),
            prefix: k.prefix.clone(),
            created_at: time::rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(time::rfc3339),
        }
    }
}

pub(super) async fn create(
    State(st): State<Arc<AppState>>,
    ApiJson(body): ApiJson<NewApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let kind = match body.kind.as_deref() {
        None | Some(NewApiKey::API_KEY) => KeyKind::ApiKey,
        Some(NewApiKey::ACCESS_TOKEN) => KeyKind::AccessToken,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind {other:?}: expected {:?} or {:?}",
                NewApiKey::API_KEY,
                NewApiKey::ACCESS_TOKEN
            )));
        }
    };
    let (key, row) = st.keys.create(kind).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: row.id.to_string(),
            key,
            prefix: row.prefix,
            created_at: time::rfc3339(row.created_at),
        }),
    ))
}

pub(super) async fn list(
    State(st): State<Arc<AppState>>,
) -> Result<Json<Vec<ListedApiKey>>, ApiError> {
    let keys = st.keys.list().await?;
    Ok(Json(keys.iter().map(ListedApiKey::from).collect()))
}

pub(super) async fn revoke(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found(format!("API key '{id}' not found"));
    let Ok(key_id) = id.parse::<i64>() else {
        return Err(not_found());
    };
    match st.keys.revoke(key_id).await? {
        Revoke::Revoked => Ok(StatusCode::NO_CONTENT),
        Revoke::NotFound => Err(not_found()),
        Revoke::LastKey => Err(ApiError::conflict(format!(
            "API key '{id}' is the last valid key: create another one before revoking it"
        ))),
    }
}
