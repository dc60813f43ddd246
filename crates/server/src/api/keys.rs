//! Hutch's API key routes: create, list and revoke keys. Only a key's
//! SHA-256 is stored; the key itself is shown once, in the answer to its
//! creation.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hutch_protocol::api::{CreatedApiKey, ListedApiKey, NewApiKey};

use crate::db::{ApiKeyRow, Revoke};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::{auth, ids, time};

/// Characters of a key kept for display.
const PREFIX_CHARS: usize = 10;

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
    let key = match body.kind.as_deref() {
        None | Some(NewApiKey::API_KEY) => ids::new_api_key(),
        Some(NewApiKey::ACCESS_TOKEN) => ids::new_user_access_token(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind {other:?}: expected {:?} or {:?}",
                NewApiKey::API_KEY,
                NewApiKey::ACCESS_TOKEN
            )));
        }
    };
    let prefix: String = key.chars().take(PREFIX_CHARS).collect();
    let row = st
        .db
        .create_api_key(auth::hash_key(&key), prefix, time::now_ms())
        .await?;
    tracing::info!(key_id = row.id, "API key created");
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
    let keys = st.db.list_api_keys().await?;
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
    match st.db.revoke_api_key(key_id, time::now_ms()).await? {
        Revoke::Revoked => {
            tracing::info!(key_id, "API key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Revoke::NotFound => Err(not_found()),
        Revoke::LastKey => Err(ApiError::conflict(format!(
            "API key '{id}' is the last valid key: create another one before revoking it"
        ))),
    }
}
