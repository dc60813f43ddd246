//! E2B's volume content API, which the SDKs' `Volume` methods call with the
//! volume's token (`Authorization: Bearer`, no API key; the SDKs find it at
//! `E2B_VOLUME_API_URL`, this server's address):
//!
//! | route | what |
//! |---|---|
//! | `GET /volumecontent/{id}/dir?path=&depth=` | `200 [entry]`: a directory's entries, `depth` levels (1–10) |
//! | `POST /volumecontent/{id}/dir?path=&uid=&gid=&mode=&force=` | `201 entry`: a directory (`force`: with its parents, and no error if it exists) |
//! | `GET /volumecontent/{id}/path?path=` | `200 entry` (a symlink with its `target`) |
//! | `PATCH /volumecontent/{id}/path?path=` `{uid?, gid?, mode?}` | `200 entry` |
//! | `DELETE /volumecontent/{id}/path?path=` | `204` (a directory with its contents) |
//! | `GET /volumecontent/{id}/file?path=` | `200` the file's bytes, streamed |
//! | `PUT /volumecontent/{id}/file?path=&uid=&gid=&mode=&force=` | `201 entry`: the body streamed into the file (`force`: make its directory, replace a file) |
//!
//! An entry is `{name, type, path, size, mode, uid, gid, atime, mtime,
//! ctime, target?}`. Errors are `{code, message}` with a string `code`
//! (`PATH_NOT_FOUND`, `PATH_ALREADY_EXISTS`, `CANNOT_DELETE_ROOT`,
//! `INVALID_REQUEST`, `NO_SPACE`, `UNAUTHENTICATED`, `INTERNAL`), as E2B's
//! content API answers. New files default to mode 0666 and directories to
//! 0777, owned by uid and gid 9090 (E2B's defaults).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hutch_runtime::{VolumeEntry, VolumeFs, VolumeFsError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_util::io::ReaderStream;
use utoipa_axum::routes;

use super::openapi::ApiRouter;
use crate::state::AppState;
use crate::time;
use crate::volumes::{self, ContentError};

/// E2B's default owner of what the content API makes.
const DEFAULT_ID: u32 = 9090;
/// E2B's default mode of a new file.
const DEFAULT_FILE_MODE: u32 = 0o666;
/// E2B's default mode of a new directory.
const DEFAULT_DIR_MODE: u32 = 0o777;

/// The routes (outside the API-key check: they take the volume's token).
pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_dir, make_dir))
        .routes(routes!(stat, update_metadata, remove))
        .routes(routes!(read_file, write_file))
}

impl IntoResponse for ContentError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ContentError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            ContentError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ContentError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            ContentError::Fs(e) => match e {
                VolumeFsError::NotFound(_) => (StatusCode::NOT_FOUND, "PATH_NOT_FOUND"),
                VolumeFsError::Exists(_) => (StatusCode::CONFLICT, "PATH_ALREADY_EXISTS"),
                VolumeFsError::Root => (StatusCode::BAD_REQUEST, "CANNOT_DELETE_ROOT"),
                VolumeFsError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
                VolumeFsError::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "NO_SPACE"),
                VolumeFsError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            },
        };
        if status.is_server_error() {
            tracing::warn!("volume content: {self}");
        }
        let body = super::openapi::VolumeContentError {
            code: code.to_owned(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// The query of a volume content request; one that does not parse is a
/// 400 in the API's own error body (`INVALID_REQUEST`).
pub(super) struct ContentQuery<T>(T);

impl<T, S> FromRequestParts<S> for ContentQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ContentError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ContentError> {
        crate::error::parse_query(&parts.uri)
            .map(ContentQuery)
            .map_err(ContentError::Invalid)
    }
}

/// The query every route takes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PathQuery {
    path: Option<String>,
    depth: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    force: Option<bool>,
}

impl PathQuery {
    /// The owner asked for (E2B's 9090 by default) and `force`.
    fn owner_and_force(&self) -> (u32, u32, bool) {
        (
            self.uid.unwrap_or(DEFAULT_ID),
            self.gid.unwrap_or(DEFAULT_ID),
            self.force.unwrap_or(false),
        )
    }

    fn path(&self) -> Result<String, ContentError> {
        match self.path.as_deref() {
            Some(p) if !p.is_empty() => Ok(p.to_owned()),
            _ => Err(ContentError::Invalid(
                "the path is missing ('path')".to_owned(),
            )),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// E2B's `VolumeEntryStat`.
fn entry_json(e: &VolumeEntry) -> VolumeEntryInfo {
    let kind = if e.kind == "unknown" { "file" } else { e.kind };
    VolumeEntryInfo {
        name: e.name.clone(),
        kind: kind.to_owned(),
        path: e.path.clone(),
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        atime: time::rfc3339(e.atime * 1000),
        mtime: time::rfc3339(e.mtime * 1000),
        ctime: time::rfc3339(e.ctime * 1000),
        target: e.target.clone(),
    }
}

/// A file, directory or symlink of a volume (E2B's `VolumeEntryStat`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct VolumeEntryInfo {
    /// Its name.
    name: String,
    /// `file`, `directory` or `symlink`.
    #[serde(rename = "type")]
    kind: String,
    /// Its path in the volume.
    path: String,
    /// Its size, bytes.
    size: u64,
    /// Its permission bits.
    mode: u32,
    /// Its owner.
    uid: u32,
    /// Its group.
    gid: u32,
    /// Last access, RFC 3339.
    atime: String,
    /// Last change of its content, RFC 3339.
    mtime: String,
    /// Last change of its metadata, RFC 3339.
    ctime: String,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

/// Runs `op` on volume `id`'s files (blocking, on its own thread), once
/// `headers` proved the right to.
async fn on_volume<T: Send + 'static>(
    st: &AppState,
    id: &str,
    headers: &HeaderMap,
    op: impl FnOnce(VolumeFs) -> Result<T, VolumeFsError> + Send + 'static,
) -> Result<T, ContentError> {
    let fs = volumes::content(st, id, bearer(headers)).await?;
    tokio::task::spawn_blocking(move || op(fs))
        .await
        .map_err(|e| ContentError::Failed(format!("volume task failed: {e}")))?
        .map_err(ContentError::from)
}

#[utoipa::path(
    get,
    path = "/volumecontent/{id}/dir",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    responses((status = 200, description = "The directory's entries, to `depth` levels.", body = Vec<VolumeEntryInfo>), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn list_dir(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
) -> Result<Json<Vec<VolumeEntryInfo>>, ContentError> {
    let path = q.path()?;
    let depth = q.depth.unwrap_or(1);
    let entries = on_volume(&st, &id, &headers, move |fs| fs.list(&path, depth)).await?;
    Ok(Json(entries.iter().map(entry_json).collect()))
}

#[utoipa::path(
    post,
    path = "/volumecontent/{id}/dir",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    responses((status = 201, description = "The directory made.", body = VolumeEntryInfo), (status = 409, description = "It exists.", body = super::openapi::VolumeContentError), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn make_dir(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
) -> Result<Response, ContentError> {
    let path = q.path()?;
    let (uid, gid, force) = q.owner_and_force();
    let mode = q.mode.unwrap_or(DEFAULT_DIR_MODE);
    let made = on_volume(&st, &id, &headers, move |fs| {
        fs.make_dir(&path, uid, gid, mode, force)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(entry_json(&made))).into_response())
}

#[utoipa::path(
    get,
    path = "/volumecontent/{id}/path",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    responses((status = 200, description = "The entry.", body = VolumeEntryInfo), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn stat(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
) -> Result<Json<VolumeEntryInfo>, ContentError> {
    let path = q.path()?;
    let e = on_volume(&st, &id, &headers, move |fs| fs.stat(&path)).await?;
    Ok(Json(entry_json(&e)))
}

/// `PATCH …/path` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(super) struct Metadata {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
}

#[utoipa::path(
    patch,
    path = "/volumecontent/{id}/path",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    request_body = Option<Metadata>,
    responses((status = 200, description = "The entry, changed.", body = VolumeEntryInfo), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn update_metadata(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
    body: axum::body::Bytes,
) -> Result<Json<VolumeEntryInfo>, ContentError> {
    let path = q.path()?;
    let m: Metadata = if body.is_empty() {
        Metadata::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ContentError::Invalid(format!("invalid metadata: {e}")))?
    };
    let e = on_volume(&st, &id, &headers, move |fs| {
        fs.set_metadata(&path, m.uid, m.gid, m.mode)
    })
    .await?;
    Ok(Json(entry_json(&e)))
}

#[utoipa::path(
    delete,
    path = "/volumecontent/{id}/path",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    responses((status = 204, description = "Removed."), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn remove(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
) -> Result<StatusCode, ContentError> {
    let path = q.path()?;
    on_volume(&st, &id, &headers, move |fs| fs.remove(&path)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/volumecontent/{id}/file",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    responses((status = 200, description = "The file's content.", content_type = "application/octet-stream", body = super::openapi::Binary), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn read_file(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
) -> Result<Response, ContentError> {
    let path = q.path()?;
    let (size, file) = on_volume(&st, &id, &headers, move |fs| fs.open_read(&path)).await?;
    let body = Body::from_stream(ReaderStream::new(tokio::fs::File::from_std(file)));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/volumecontent/{id}/file",
    tag = "volume content",
    params(("id" = String, Path, description = "The volume's id."), PathQuery),
    security(("volume_token" = [])),
    request_body(content = super::openapi::Binary, content_type = "application/octet-stream", description = "The file's content."),
    responses((status = 201, description = "The file written.", body = VolumeEntryInfo), (status = 409, description = "It exists as a directory.", body = super::openapi::VolumeContentError), (status = 507, description = "The volume is full.", body = super::openapi::VolumeContentError), (status = 400, description = "An invalid request.", body = super::openapi::VolumeContentError), (status = 401, description = "No valid token for the volume.", body = super::openapi::VolumeContentError), (status = 404, description = "No such path.", body = super::openapi::VolumeContentError), (status = "default", description = "An error.", body = super::openapi::VolumeContentError))
)]
async fn write_file(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ContentQuery(q): ContentQuery<PathQuery>,
    body: Body,
) -> Result<Response, ContentError> {
    let path = q.path()?;
    let (uid, gid, force) = q.owner_and_force();
    let mode = q.mode.unwrap_or(DEFAULT_FILE_MODE);
    let (mut reader, upload) = super::upload::open(body);
    let written = on_volume(&st, &id, &headers, move |fs| {
        let mut file = fs.open_write(&path, uid, gid, force)?;
        if let Err(e) = std::io::copy(&mut reader, &mut file) {
            let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
            if !full {
                return Err(VolumeFsError::Io(format!("write '{path}': {e}")));
            }
            return Err(VolumeFsError::NoSpace);
        }
        fs.finish_write(file, &path, uid, gid, mode)
    })
    .await;
    upload.finish().await;
    Ok((StatusCode::CREATED, Json(entry_json(&written?))).into_response())
}
