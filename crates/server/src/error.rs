//! The one error type every route returns: an HTTP status and a message,
//! sent as `{"code": <status>, "message": "<text>"}` (E2B's error body; the
//! Python SDK cannot read any other).

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or a value is out of range.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: missing or unknown API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404: unknown template, sandbox or route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500: the server failed. The message is logged too.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("{message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 503: not ready yet; try again later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 502: the front door cannot reach what was asked for.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({
                "code": self.status.as_u16(),
                "message": self.message,
            })),
        )
            .into_response()
    }
}

/// Middleware: an error response that no Hutch handler made — axum's own
/// rejections (a path segment that is not valid UTF-8 or percent-encoding,
/// a body over the size limit, …) — is rewritten into E2B's JSON error body,
/// keeping its status, its message and its other headers. Responses of
/// another type (JSON already, the CLI login's HTML pages) pass untouched.
pub(crate) async fn json_errors(req: Request, next: axum::middleware::Next) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let resp = next.run(req).await;
    let status = resp.status();
    // axum's rejections are plain text (or have no body); a JSON error or
    // a page of the CLI login is an answer of its own.
    let is_rejection = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_rejection {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

impl From<crate::lifecycle::SandboxError> for ApiError {
    fn from(e: crate::lifecycle::SandboxError) -> Self {
        use crate::lifecycle::SandboxError as E;
        let status = match e {
            E::Catalog(e) => return ApiError::from(e),
            E::Db(db) => return ApiError::from(db),
            E::HostFull(_) => return storage_full(e),
            E::NotFound(_) | E::TemplateNotFound(_) => StatusCode::NOT_FOUND,
            E::TemplateBuilding { .. } | E::TemplateUnbuilt { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            E::Paused(_) => StatusCode::CONFLICT,
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        use crate::catalog::CatalogError as E;
        use hutch_image::ImageError as I;
        if is_storage_full(&e) {
            return storage_full(e);
        }
        let status = match &e {
            E::Db(db) => return db_error(db),
            E::Exists(_) | E::Taken(_) | E::InUse { .. } => StatusCode::CONFLICT,
            E::NotFound(_) | E::NoSuchTags { .. } => StatusCode::NOT_FOUND,
            E::InvalidName(_) | E::InvalidTag(_) | E::DefaultTag(_) => StatusCode::BAD_REQUEST,
            E::Import {
                error: I::Io { .. },
                ..
            } => StatusCode::INTERNAL_SERVER_ERROR,
            E::Import { .. } => StatusCode::BAD_REQUEST,
            // 404 for an unknown image or tag, 403 when the registry
            // refuses access, 502 when it cannot be reached or fails, 400
            // for an invalid reference or an image that cannot be used.
            E::Pull { error, .. } => match error {
                I::RegistryNotFound { .. } => StatusCode::NOT_FOUND,
                I::RegistryAuth { .. } => StatusCode::FORBIDDEN,
                I::RegistryUnreachable { .. } | I::Registry { .. } => StatusCode::BAD_GATEWAY,
                I::Io { .. } | I::Extract { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            },
            E::Corrupt { .. } | E::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        db_error(&e)
    }
}

/// The answer to a store error: 507 for a full disk, 503 for a database
/// that cannot serve now, else 500.
pub(crate) fn db_error(e: &crate::db::DbError) -> ApiError {
    if is_storage_full(e) {
        return storage_full(format!("database error: {e}"));
    }
    if let Some(why) = db_unavailable(e) {
        return db_unavailable_error(why, e);
    }
    ApiError::internal(format!("database error: {e}"))
}

/// A JSON body, read whatever its `Content-Type` (the SDKs do not all set
/// one); an empty body reads as `{}`. Errors are [`ApiError`]s (400).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body
        };
        serde_json::from_slice(body)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }
}

/// Query parameters; errors are [`ApiError`]s (400).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(&parts.uri)
            .map(ApiQuery)
            .map_err(ApiError::bad_request)
    }
}

/// The query of `uri` as `T`, or why not ("invalid query: …"): what every
/// query extractor answers, each in its own error body.
pub(crate) fn parse_query<T: DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| format!("invalid query: {}", e.body_text()))
}

/// Whether `e`, or an error it was caused by, is the host running out of
/// disk space or quota (`ENOSPC`, `EDQUOT`): what the API answers with 507
/// Insufficient Storage instead of a 500, since freeing space fixes it.
pub(crate) fn is_storage_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
        {
            return true;
        }
        // `DbError` is transparent: its source is the SQLite error's own.
        let sqlite = match e.downcast_ref::<crate::db::DbError>() {
            Some(crate::db::DbError::Sqlite(e)) => Some(e),
            _ => e.downcast_ref::<rusqlite::Error>(),
        };
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = sqlite
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Why the database cannot serve now, when that passes by itself: SQLite's
/// lock held by another process for longer than the server waits
/// (`SQLITE_BUSY`/`SQLITE_LOCKED`), or PostgreSQL unreachable (restarting,
/// the network down, every connection taken).
pub(crate) fn db_unavailable(e: &crate::db::DbError) -> Option<&'static str> {
    use crate::db::DbError as D;
    match e {
        D::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Some("the database is busy (another process holds its lock)")
        }
        D::Postgres(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => {
            Some("the database cannot be reached")
        }
        _ => None,
    }
}

/// 503 for a database that cannot serve now: nothing was changed, and the
/// same request can be sent again.
fn db_unavailable_error(why: &str, e: &crate::db::DbError) -> ApiError {
    tracing::warn!("{why}: {e}");
    ApiError::unavailable(format!("{why}: nothing was changed; try again ({e})"))
}

/// 507 Insufficient Storage: the host's disk is full.
pub(crate) fn storage_full(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "{message} (the host's disk is full: free some space under the data directory and try again)"
        ),
    )
}

/// An I/O error in a few words, without the "(os error N)" tail:
/// "address in use", "permission denied", …
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let words = match e.kind() {
        K::AddrInUse => "address in use",
        K::AddrNotAvailable => "address not available on this host",
        K::PermissionDenied => "permission denied",
        K::NotFound => "no such file or directory",
        K::ReadOnlyFilesystem => "read-only file system",
        K::StorageFull => "no space left on device",
        K::ConnectionRefused => "connection refused",
        _ => {
            let text = e.to_string();
            return match text.find(" (os error") {
                Some(i) => text[..i].to_lowercase(),
                None => text,
            };
        }
    };
    words.to_string()
}
