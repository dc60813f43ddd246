//! Keys and teams, Hutch's routes and E2B's.
//!
//! Hutch's: `/hutch/v1/api-keys` (create, list, revoke the caller's team's
//! keys and access tokens) and `/hutch/v1/teams` (create and list teams:
//! keys of the default team). E2B's: `GET /teams` (the caller's team, with
//! the credential it sent as the team's key — Hutch stores only hashes),
//! `/api-keys` (list, create, rename, delete) and `/access-tokens` (create,
//! delete). Only a key's SHA-256 is stored; the key itself is shown once,
//! in the answer to its creation.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hutch_protocol::api::{
    CreatedAccessToken, CreatedApiKey, CreatedTeamApiKey, KeyMask, ListedApiKey, NamedKey,
    NewApiKey, NewTeam, Team, TeamApiKey, TeamInfo,
};

use crate::auth::{Caller, credential};
use crate::db::{ApiKeyRow, KeyKind, Revoke, TeamRow};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::teams::{self, TeamError};
use crate::{ids, time};

impl From<TeamError> for ApiError {
    fn from(e: TeamError) -> Self {
        match e {
            TeamError::NotAdmin => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            TeamError::InvalidName(_) => ApiError::bad_request(e.to_string()),
            TeamError::Exists(_) => ApiError::conflict(e.to_string()),
            TeamError::Db(e) => ApiError::from(e),
        }
    }
}

fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::ApiKey => NewApiKey::API_KEY,
        KeyKind::AccessToken => NewApiKey::ACCESS_TOKEN,
    }
}

impl From<&ApiKeyRow> for ListedApiKey {
    fn from(k: &ApiKeyRow) -> Self {
        ListedApiKey {
            id: k.uuid.clone(),
            name: k.name.clone(),
            kind: kind_name(k.kind).to_owned(),
            prefix: k.prefix.clone(),
            created_at: time::rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(time::rfc3339),
        }
    }
}

// ----- Hutch's routes --------------------------------------------------

/// `POST /hutch/v1/api-keys` `{kind?, name?}` → 201 with the key.
#[utoipa::path(
    post,
    path = "/hutch/v1/api-keys",
    tag = "keys",
    request_body = Option<NewApiKey>,
    responses((status = 201, description = "The key, shown only now.", body = CreatedApiKey), (status = 400, description = "An invalid kind or name.", body = super::openapi::Error))
)]
pub(super) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
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
    let name = match (body.name, kind) {
        (Some(name), _) => checked_name(name)?,
        (None, KeyKind::ApiKey) => "API key".to_owned(),
        (None, KeyKind::AccessToken) => "access token".to_owned(),
    };
    let (key, row) = st.keys.create(&caller.team, kind, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: row.uuid,
            key,
            prefix: row.prefix,
            created_at: time::rfc3339(row.created_at),
        }),
    ))
}

/// `GET /hutch/v1/api-keys`: the caller's team's keys and tokens, revoked
/// ones too.
#[utoipa::path(
    get,
    path = "/hutch/v1/api-keys",
    tag = "keys",
    responses((status = 200, description = "The team's keys (never the keys themselves).", body = Vec<ListedApiKey>))
)]
pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<ListedApiKey>>, ApiError> {
    let keys = st.keys.list(&caller.team).await?;
    Ok(Json(keys.iter().map(ListedApiKey::from).collect()))
}

/// `DELETE /hutch/v1/api-keys/{id}`: 204; 409 for the team's last valid
/// key.
#[utoipa::path(
    delete,
    path = "/hutch/v1/api-keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id.")),
    responses((status = 204, description = "Revoked."), (status = 404, description = "No such key.", body = super::openapi::Error), (status = 409, description = "The team's last valid key.", body = super::openapi::Error))
)]
pub(super) async fn revoke(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke_key(&st, &caller, &id, None).await
}

/// `POST /hutch/v1/teams` `{name}` → 201 with the team and its first key
/// (keys of the default team only).
#[utoipa::path(
    post,
    path = "/hutch/v1/teams",
    tag = "teams",
    request_body = NewTeam,
    responses((status = 201, description = "The team, with its first API key.", body = TeamInfo), (status = 403, description = "Not a key of the default team.", body = super::openapi::Error), (status = 409, description = "The name is taken.", body = super::openapi::Error))
)]
pub(super) async fn create_team(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewTeam>,
) -> Result<(StatusCode, Json<TeamInfo>), ApiError> {
    let (team, key) = teams::create(&st, &caller, &body.name).await?;
    let mut info = team_info(&team);
    info.api_key = Some(key);
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /hutch/v1/teams`: every team for a key of the default team, else
/// the caller's.
#[utoipa::path(
    get,
    path = "/hutch/v1/teams",
    tag = "teams",
    responses((status = 200, description = "The teams.", body = Vec<TeamInfo>), (status = 403, description = "Not a key of the default team.", body = super::openapi::Error))
)]
pub(super) async fn list_teams(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<TeamInfo>>, ApiError> {
    let teams = teams::list(&st, &caller).await?;
    Ok(Json(teams.iter().map(team_info).collect()))
}

fn team_info(t: &TeamRow) -> TeamInfo {
    TeamInfo {
        team_id: t.id.clone(),
        name: t.name.clone(),
        created_at: time::rfc3339(t.created_at),
        is_default: t.is_default,
        api_key: None,
    }
}

// ----- E2B's routes ----------------------------------------------------

/// `GET /teams`: the caller's team, its key being the credential the
/// request carried (E2B's CLI stores it and sends it as `X-API-Key`; Hutch
/// accepts either kind there).
#[utoipa::path(
    get,
    path = "/teams",
    tag = "teams",
    responses((status = 200, description = "The caller's team.", body = Vec<Team>))
)]
pub(super) async fn e2b_teams(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Json<Vec<Team>>, ApiError> {
    let team = teams::of(&st, &caller).await?;
    Ok(Json(vec![Team {
        team_id: team.id,
        name: team.name,
        api_key: credential(&headers)?.to_owned(),
        is_default: true,
    }]))
}

/// `GET /api-keys`: the team's valid API keys, masked.
#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "keys",
    responses((status = 200, description = "The team's valid API keys, masked.", body = Vec<TeamApiKey>))
)]
pub(super) async fn e2b_list_keys(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<TeamApiKey>>, ApiError> {
    let keys = st.keys.list(&caller.team).await?;
    Ok(Json(
        keys.iter()
            .filter(|k| k.kind == KeyKind::ApiKey && k.revoked_at.is_none())
            .map(team_api_key)
            .collect(),
    ))
}

/// `POST /api-keys` `{name}` → 201 with the key.
#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "keys",
    request_body = NamedKey,
    responses((status = 201, description = "The key, shown only now.", body = CreatedTeamApiKey), (status = 400, description = "An invalid name.", body = super::openapi::Error))
)]
pub(super) async fn e2b_create_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NamedKey>,
) -> Result<(StatusCode, Json<CreatedTeamApiKey>), ApiError> {
    let name = checked_name(body.name)?;
    let (key, row) = st.keys.create(&caller.team, KeyKind::ApiKey, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTeamApiKey {
            listed: team_api_key(&row),
            key,
        }),
    ))
}

/// `PATCH /api-keys/{id}` `{name}` → 200.
#[utoipa::path(
    patch,
    path = "/api-keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id.")),
    request_body = NamedKey,
    responses((status = 200, description = "Renamed."), (status = 404, description = "No such key.", body = super::openapi::Error))
)]
pub(super) async fn e2b_rename_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NamedKey>,
) -> Result<StatusCode, ApiError> {
    let name = checked_name(body.name)?;
    find_key(&st, &caller, &id, KeyKind::ApiKey).await?;
    if st.keys.rename(&caller.team, &id, &name).await? {
        Ok(StatusCode::OK)
    } else {
        Err(key_not_found(&id))
    }
}

/// `DELETE /api-keys/{id}` → 204; 409 for the team's last valid key.
#[utoipa::path(
    delete,
    path = "/api-keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key's id.")),
    responses((status = 204, description = "Deleted."), (status = 404, description = "No such key.", body = super::openapi::Error), (status = 409, description = "The team's last valid key.", body = super::openapi::Error))
)]
pub(super) async fn e2b_delete_key(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke_key(&st, &caller, &id, Some(KeyKind::ApiKey)).await
}

/// `POST /access-tokens` `{name}` → 201 with the token.
#[utoipa::path(
    post,
    path = "/access-tokens",
    tag = "keys",
    request_body = NamedKey,
    responses((status = 201, description = "The token, shown only now.", body = CreatedAccessToken), (status = 400, description = "An invalid name.", body = super::openapi::Error))
)]
pub(super) async fn e2b_create_token(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NamedKey>,
) -> Result<(StatusCode, Json<CreatedAccessToken>), ApiError> {
    let name = checked_name(body.name)?;
    let (token, row) = st
        .keys
        .create(&caller.team, KeyKind::AccessToken, &name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedAccessToken {
            id: row.uuid.clone(),
            name: row.name.clone(),
            token,
            mask: mask(&row),
            created_at: time::rfc3339(row.created_at),
        }),
    ))
}

/// `DELETE /access-tokens/{id}` → 204.
#[utoipa::path(
    delete,
    path = "/access-tokens/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The token's id.")),
    responses((status = 204, description = "Deleted."), (status = 404, description = "No such token.", body = super::openapi::Error))
)]
pub(super) async fn e2b_delete_token(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke_key(&st, &caller, &id, Some(KeyKind::AccessToken)).await
}

// ----- shared ------------------------------------------------------------

/// Longest key name.
const MAX_NAME: usize = 200;

fn checked_name(name: String) -> Result<String, ApiError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "invalid key name {name:?}: 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(name)
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("API key '{id}' not found"))
}

/// The caller's team's valid key `id` of `kind`.
async fn find_key(
    st: &AppState,
    caller: &Caller,
    id: &str,
    kind: KeyKind,
) -> Result<ApiKeyRow, ApiError> {
    st.keys
        .list(&caller.team)
        .await?
        .into_iter()
        .find(|k| k.uuid == id && k.kind == kind && k.revoked_at.is_none())
        .ok_or_else(|| key_not_found(id))
}

/// Revokes the caller's team's key `id` (of `kind`, when given).
async fn revoke_key(
    st: &AppState,
    caller: &Caller,
    id: &str,
    kind: Option<KeyKind>,
) -> Result<StatusCode, ApiError> {
    if let Some(kind) = kind {
        find_key(st, caller, id, kind).await?;
    }
    match st.keys.revoke(&caller.team, id).await? {
        Revoke::Revoked => Ok(StatusCode::NO_CONTENT),
        Revoke::NotFound => Err(key_not_found(id)),
        Revoke::LastKey => Err(ApiError::conflict(format!(
            "API key '{id}' is the team's last valid key: create another one before revoking it"
        ))),
    }
}

fn team_api_key(k: &ApiKeyRow) -> TeamApiKey {
    TeamApiKey {
        id: k.uuid.clone(),
        name: k.name.clone(),
        mask: mask(k),
        created_at: time::rfc3339(k.created_at),
        created_by: None,
        last_used: None,
    }
}

/// Characters after the prefix a mask shows.
const MASKED_PREFIX_CHARS: usize = 2;

/// E2B's mask of a key: its kind's prefix, its length after that, its
/// first characters after the prefix and its last ones.
fn mask(k: &ApiKeyRow) -> KeyMask {
    let prefix = match k.kind {
        KeyKind::ApiKey => ids::API_KEY_PREFIX,
        KeyKind::AccessToken => ids::ACCESS_TOKEN_PREFIX,
    };
    let after = k.prefix.strip_prefix(prefix).unwrap_or_default();
    KeyMask {
        prefix: prefix.to_owned(),
        value_length: ids::SECRET_HEX_CHARS,
        masked_value_prefix: after.chars().take(MASKED_PREFIX_CHARS).collect(),
        masked_value_suffix: k.suffix.clone(),
    }
}
