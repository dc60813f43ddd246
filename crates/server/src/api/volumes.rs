//! E2B's volume routes: `GET /volumes` → `[{volumeID, name}]`,
//! `POST /volumes {name}` → `201 {volumeID, name, token}`,
//! `GET /volumes/{id}` → `{volumeID, name, token}` (a fresh token each
//! time), `DELETE /volumes/{id}` → `204`. See [`crate::volumes`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hutch_protocol::api::{NewVolume, VolumeAndToken, VolumeInfo};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;
use crate::volumes::{self, VolumeError};

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        let status = match e {
            VolumeError::Db(db) => return ApiError::from(db),
            // E2B answers a taken name with 400, not 409.
            VolumeError::InvalidName(_)
            | VolumeError::Exists(_)
            | VolumeError::InvalidMounts(_) => StatusCode::BAD_REQUEST,
            VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
            VolumeError::Node(_) | VolumeError::Key(_) => {
                return ApiError::internal(e.to_string());
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// A volume id, checked: a UUID (E2B answers 400 otherwise).
fn checked_id(id: &str) -> Result<&str, ApiError> {
    if crate::ids::looks_like_build_id(id) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(format!("Invalid volume ID '{id}'")))
    }
}

#[utoipa::path(
    get,
    path = "/volumes",
    tag = "volumes",
    responses((status = 200, description = "The team's volumes.", body = Vec<VolumeInfo>))
)]
pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<VolumeInfo>>, ApiError> {
    Ok(Json(
        volumes::live(&st, &caller.team)
            .await?
            .into_iter()
            .map(|v| VolumeInfo {
                volume_id: v.id,
                name: v.name,
            })
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/volumes",
    tag = "volumes",
    request_body = NewVolume,
    responses((status = 201, description = "The volume, with a token for its content.", body = VolumeAndToken), (status = 400, description = "An invalid or taken name.", body = super::openapi::Error))
)]
pub(super) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewVolume>,
) -> Result<Response, ApiError> {
    let v = volumes::create(&st, &caller.team, &body.name).await?;
    let token = volumes::token(&st, &v.id)?;
    let created = VolumeAndToken {
        volume_id: v.id,
        name: v.name,
        token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(
    get,
    path = "/volumes/{id}",
    tag = "volumes",
    params(("id" = String, Path, description = "The volume's id (a UUID).")),
    responses((status = 200, description = "The volume, with a fresh token.", body = VolumeAndToken), (status = 400, description = "Not a UUID.", body = super::openapi::Error), (status = 404, description = "No such volume.", body = super::openapi::Error))
)]
pub(super) async fn get(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VolumeAndToken>, ApiError> {
    let v = volumes::get(&st, &caller.team, checked_id(&id)?).await?;
    let token = volumes::token(&st, &v.id)?;
    Ok(Json(VolumeAndToken {
        volume_id: v.id,
        name: v.name,
        token,
    }))
}

#[utoipa::path(
    delete,
    path = "/volumes/{id}",
    tag = "volumes",
    params(("id" = String, Path, description = "The volume's id (a UUID).")),
    responses((status = 204, description = "Deleted."), (status = 400, description = "Not a UUID.", body = super::openapi::Error), (status = 404, description = "No such volume.", body = super::openapi::Error))
)]
pub(super) async fn delete(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    volumes::delete(&st, &caller.team, checked_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
