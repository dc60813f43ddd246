//! Hutch's API key routes: create, list and revoke keys. Only a key's
//! SHA-256 is stored; the key itself is shown once, in the answer to its
//! creation.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::db::{ApiKeyRow, Revoke};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::{auth, ids, time};

/// Characters of a key kept for display.
const PREFIX_CHARS: usize = 10;

/// The answer to `POST /hutch/v1/api-keys`: the only time the key is shown.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    /// The key's id (for revoking it).
    pub id: String,
    /// The key itself.
    pub key: String,
    /// Its first characters, as listed.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A key as `GET /hutch/v1/api-keys` lists it: never the key itself.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedApiKey {
    /// The key's id.
    pub id: String,
    /// Its first characters.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null while the key is valid.
    pub revoked_at: Option<String>,
}

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

/// `POST /hutch/v1/api-keys` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateBody {
    /// `apiKey` (the default: `e2b_…`, for `X-API-Key`) or `accessToken`
    /// (`sk_e2b_…`, for `Authorization: Bearer`).
    #[serde(default)]
    kind: Option<String>,
}

pub(super) async fn create(
    State(st): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let key = match body.kind.as_deref() {
        None | Some("apiKey") => ids::new_api_key(),
        Some("accessToken") => ids::new_user_access_token(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind {other:?}: expected \"apiKey\" or \"accessToken\""
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
