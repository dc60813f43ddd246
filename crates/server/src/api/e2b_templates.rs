//! E2B's template build API, so that the official SDKs' `Template` builder
//! (`Template.build(...)`) works against Hutch unmodified. These are the
//! routes: each handler reads the request, calls the service
//! ([`crate::template_api`]) and answers with its result, mapping its
//! [`TemplateApiError`] to a status.
//!
//! The SDKs build in five calls; Hutch answers each as follows.
//!
//! 1. `POST /v3/templates` `{name, tags?, cpuCount?, memoryMB?}` (older
//!    SDKs may say `alias`) → `202 {templateID, buildID, public, names,
//!    tags, aliases}`. The template id is that of the template of that name
//!    when one exists (a rebuild keeps it, as with E2B), else a new one. The
//!    build waits in memory until it is started.
//! 2. Per `COPY` step, `GET /templates/{templateID}/files/{hash}` →
//!    `201 {present, url}`. `present` says whether the file set is stored
//!    (`DATA/build-files/<hash>/`); `url` is where the SDK `PUT`s a tar of
//!    it: `/hutch/v1/build-files/{hash}?token=...` on this server, absolute,
//!    built from the request's `Host` (and `X-Forwarded-Proto`). The SDKs
//!    upload with a plain HTTP client, without the API key, so that route
//!    is outside the API-key check: it takes the random per-hash token
//!    handed out here instead (valid for
//!    [`GRANT_TTL`](crate::template_api::GRANT_TTL)). The tar (gzipped or
//!    not) holds the files with paths relative to the SDK's context
//!    directory; it is unpacked into a temporary directory and renamed into
//!    place, so a file set is either whole or absent.
//! 3. `POST /v2/templates/{templateID}/builds/{buildID}` (the steps) →
//!    `202`: the steps become a build recipe (see
//!    [`crate::template_api`]) that the build engine runs in the background
//!    ([`crate::builds`]).
//! 4. `GET /templates/{templateID}/builds/{buildID}/status?logsOffset=&limit=&level=`,
//!    polled: `{templateID, buildID, status, logs, logEntries, reason?}`.
//! 5. `GET /templates/aliases/{name}`: `200 {templateID, public}` or 404
//!    (`Template.exists`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hutch_protocol::api::{
    LogLevel, TemplateAliasInfo, TemplateBuildRequest, TemplateBuildStart, TemplateBuildStatus,
};
use serde::Deserialize;
use utoipa_axum::routes;

use super::openapi::ApiRouter;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;
use crate::template_api::{self, LogPage, TemplateApi, TemplateApiError};

/// The routes: those behind the API key, and the upload route, which
/// checks its own token.
pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(request_build))
        .routes(routes!(alias))
        .routes(routes!(file_link))
        .routes(routes!(start_build))
        .routes(routes!(status))
}

/// `PUT /hutch/v1/build-files/{hash}`: its upload token is its credential.
pub(super) fn upload_routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(upload))
}

/// Each error of the service as E2B's error body: its message, with the
/// status that says what kind of failure it is. Server-side failures are
/// logged (as [`ApiError::internal`] does).
impl From<TemplateApiError> for ApiError {
    fn from(e: TemplateApiError) -> Self {
        use TemplateApiError as E;
        let status = match &e {
            E::Db(db) => return crate::error::db_error(db),
            E::InvalidHash(_)
            | E::NameMissing
            | E::InvalidTag(_)
            | E::InvalidName(_)
            | E::InvalidLimits(_)
            | E::NoPublicAddress
            | E::Unpack(_)
            | E::RegistryCredentials(_)
            | E::InvalidStep { .. }
            | E::UnknownStep { .. } => StatusCode::BAD_REQUEST,
            E::UploadTokenMissing => StatusCode::UNAUTHORIZED,
            E::UploadTokenInvalid => StatusCode::FORBIDDEN,
            E::TemplateNotFound(_) | E::BuildNotRequested { .. } | E::BuildNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            E::Building(_) | E::AlreadyStarted(_) | E::NameTaken(_) => StatusCode::CONFLICT,
            E::CreateDir { .. } | E::Task(_) | E::Store(_) => {
                return ApiError::internal(e.to_string());
            }
        };
        ApiError::new(status, e.to_string())
    }
}

// ----- 1. request a build ------------------------------------------------

/// `POST /v3/templates` → `202 {templateID, buildID, ...}`: requests a
/// build; `cpuCount` and `memoryMB` become the template's default limits,
/// `minFreeDiskMB` is accepted and not applied.
#[utoipa::path(
    post,
    path = "/v3/templates",
    tag = "template builds",
    request_body = TemplateBuildRequest,
    responses((status = 202, description = "The build is requested.", body = hutch_protocol::api::TemplateBuildRequested), (status = 400, description = "An invalid request.", body = super::openapi::Error), (status = 409, description = "Being built already.", body = super::openapi::Error))
)]
pub(super) async fn request_build(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Extension(api): Extension<Arc<TemplateApi>>,
    ApiJson(body): ApiJson<TemplateBuildRequest>,
) -> Result<Response, ApiError> {
    let requested = api.request_build(&st, &caller.team, &body).await?;
    Ok((StatusCode::ACCEPTED, Json(requested)).into_response())
}

// ----- 2. file sets --------------------------------------------------------

/// The scheme and authority clients reached this server at: the `Host`
/// header (else the request URI's authority), with the scheme of
/// `X-Forwarded-Proto` (`http` unless it says `https`). `None` without a
/// host.
pub(super) fn public_base(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .filter(|h| !h.is_empty())?;
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next())
        .map(str::trim)
        .filter(|s| matches!(*s, "http" | "https"))
        .unwrap_or("http");
    Some(format!("{scheme}://{host}"))
}

/// `GET /templates/{templateID}/files/{hash}` → `201 {present, url}`. The
/// URL is given even when the files are present, for the SDKs'
/// `force_upload`.
#[utoipa::path(
    get,
    path = "/templates/{template_id}/files/{hash}",
    tag = "template builds",
    params(("template_id" = String, Path, description = "The template's id or name."), ("hash" = String, Path, description = "The SHA-256 of the file set, 64 hex digits.")),
    responses((status = 201, description = "Whether the files are stored, and where to upload them if not.", body = hutch_protocol::api::TemplateFileLink), (status = 400, description = "An invalid hash.", body = super::openapi::Error), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
pub(super) async fn file_link(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Extension(api): Extension<Arc<TemplateApi>>,
    Path((template_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let base = public_base(&headers, &uri);
    let link = api
        .file_link(&st, &caller.team, &template_id, &hash, base.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(link)).into_response())
}

/// The query of an upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UploadQuery {
    /// The upload token handed out with the upload URL.
    token: Option<String>,
}

/// `PUT /hutch/v1/build-files/{hash}?token=T` → `200 {present: true}`: a
/// tar (or gzipped tar) of a `COPY` step's files, streamed into the
/// service, which unpacks it into `DATA/build-files/<hash>/`. A new upload
/// of the same hash replaces the old one.
#[utoipa::path(
    put,
    path = "/hutch/v1/build-files/{hash}",
    tag = "template builds",
    params(("hash" = String, Path, description = "The SHA-256 of the file set, 64 hex digits."), UploadQuery),
    security(()),
    request_body(content = super::openapi::Binary, content_type = "application/x-tar", description = "The file set, a tar."),
    responses((status = 200, description = "Stored.", body = hutch_protocol::api::BuildFilesUploaded), (status = 400, description = "An invalid hash or tar.", body = super::openapi::Error), (status = 401, description = "No token.", body = super::openapi::Error), (status = 403, description = "An invalid or expired token.", body = super::openapi::Error))
)]
pub(super) async fn upload(
    Extension(api): Extension<Arc<TemplateApi>>,
    Path(hash): Path<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    // The body as a blocking reader, for the unpacking thread.
    let (reader, upload) = super::upload::open(body);
    let uploaded = api.store_file_set(&hash, q.token.as_deref(), reader).await;
    upload.finish().await;
    Ok((StatusCode::OK, Json(uploaded?)).into_response())
}

// ----- 3. start a build ----------------------------------------------------

/// `POST /v2/templates/{templateID}/builds/{buildID}`: starts a requested
/// build with the steps of the body (`202`).
#[utoipa::path(
    post,
    path = "/v2/templates/{template_id}/builds/{build_id}",
    tag = "template builds",
    params(("template_id" = String, Path, description = "The template's id or name."), ("build_id" = String, Path, description = "The build's id.")),
    request_body = Option<TemplateBuildStart>,
    responses((status = 202, description = "The build started."), (status = 400, description = "An invalid step.", body = super::openapi::Error), (status = 404, description = "No such build.", body = super::openapi::Error), (status = 409, description = "Started already.", body = super::openapi::Error))
)]
pub(super) async fn start_build(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Extension(api): Extension<Arc<TemplateApi>>,
    Path((template_id, build_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<TemplateBuildStart>,
) -> Result<StatusCode, ApiError> {
    api.start_build(&st, &caller.team, &template_id, &build_id, &body)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

// ----- 4. status and logs --------------------------------------------------

/// The query of a status call.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusQuery {
    /// The first log entry to return.
    logs_offset: Option<usize>,
    /// How many entries at most.
    limit: Option<usize>,
    /// The lowest level of the entries to return (`debug` when empty or
    /// missing).
    level: Option<String>,
}

/// `GET /templates/{templateID}/builds/{buildID}/status`: the status and
/// the log entries from `logsOffset` (at most `limit`, 100 at most; only
/// those at `level` or above when given — the offset then counts those).
#[utoipa::path(
    get,
    path = "/templates/{template_id}/builds/{build_id}/status",
    tag = "template builds",
    params(("template_id" = String, Path, description = "The template's id or name."), ("build_id" = String, Path, description = "The build's id."), StatusQuery),
    responses((status = 200, description = "The build's status and log.", body = TemplateBuildStatus), (status = 404, description = "No such build.", body = super::openapi::Error))
)]
pub(super) async fn status(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Extension(api): Extension<Arc<TemplateApi>>,
    Path((template_id, build_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> Result<Json<TemplateBuildStatus>, ApiError> {
    let page = LogPage {
        min_level: min_level(q.level.as_deref())?,
        offset: q.logs_offset,
        limit: q.limit,
    };
    Ok(Json(api.build_status(
        &st,
        &caller.team,
        template_id,
        build_id,
        page,
    )?))
}

/// The lowest log level a `level` query asks for (`debug` when empty or
/// missing).
pub(super) fn min_level(level: Option<&str>) -> Result<LogLevel, ApiError> {
    match level.filter(|l| !l.is_empty()) {
        None => Ok(LogLevel::Debug),
        Some(l) => LogLevel::from_name(l).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown log level '{l}': expected debug, info, warn or error"
            ))
        }),
    }
}

// ----- 5. names ------------------------------------------------------------

/// `GET /templates/aliases/{alias}`: `200 {templateID, public: false}` for
/// a template of that name, else 404.
#[utoipa::path(
    get,
    path = "/templates/aliases/{alias}",
    tag = "templates",
    params(("alias" = String, Path, description = "A template's name.")),
    responses((status = 200, description = "The template of that name.", body = TemplateAliasInfo), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
pub(super) async fn alias(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(alias): Path<String>,
) -> Result<Json<TemplateAliasInfo>, ApiError> {
    Ok(Json(template_api::alias(&st, &caller.team, &alias).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "10.0.0.5:3000".parse().unwrap());
        let uri: Uri = "/templates/x/files/y".parse().unwrap();
        assert_eq!(public_base(&h, &uri).unwrap(), "http://10.0.0.5:3000");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(public_base(&h, &uri).unwrap(), "https://10.0.0.5:3000");
        assert!(public_base(&HeaderMap::new(), &uri).is_none());
    }

    #[test]
    fn errors_keep_their_statuses_and_messages() {
        let cases = [
            (
                TemplateApiError::InvalidHash("../etc".into()),
                400,
                "invalid files hash '../etc': expected 64 lowercase hex digits (SHA-256)",
            ),
            (
                TemplateApiError::NoPublicAddress,
                400,
                "the request has no Host header to build an upload URL from",
            ),
            (
                TemplateApiError::UploadTokenMissing,
                401,
                "missing upload token: use the URL from GET /templates/{templateID}/files/{hash}",
            ),
            (
                TemplateApiError::UploadTokenInvalid,
                403,
                "invalid or expired upload token: ask GET /templates/{templateID}/files/{hash} for a new URL",
            ),
            (
                TemplateApiError::TemplateNotFound("app".into()),
                404,
                "template 'app' not found",
            ),
            (
                TemplateApiError::BuildNotRequested {
                    template_id: "t".into(),
                    build_id: "b".into(),
                },
                404,
                "build 'b' of template 't' not found: request one with POST /v3/templates",
            ),
            (
                TemplateApiError::BuildNotFound {
                    template_id: "t".into(),
                    build_id: "b".into(),
                },
                404,
                "build 'b' of template 't' not found",
            ),
            (
                TemplateApiError::Building("app".into()),
                409,
                "template 'app' is being built already",
            ),
            (
                TemplateApiError::AlreadyStarted("b".into()),
                409,
                "build 'b' has been started already",
            ),
            (
                TemplateApiError::InvalidStep {
                    step: 4,
                    kind: "COPY".into(),
                    reason: "missing filesHash".into(),
                },
                400,
                "step 4 (COPY): missing filesHash",
            ),
            (
                TemplateApiError::Store(std::io::Error::other("disk full")),
                500,
                "cannot store the files: disk full",
            ),
        ];
        for (e, status, message) in cases {
            let a = ApiError::from(e);
            assert_eq!((a.status().as_u16(), a.message()), (status, message));
        }
    }
}
