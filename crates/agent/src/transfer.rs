//! File transfer over plain HTTP, as E2B's agent serves it:
//!
//! * `GET /files?path=&username=` — the file's bytes, gzip-compressed when
//!   `Accept-Encoding` prefers it;
//! * `POST /files?path=&username=` — `multipart/form-data` (parts named
//!   `file`, several files at once) or `application/octet-stream` (one file
//!   at `path`), either optionally `Content-Encoding: gzip`.
//!
//! Both take the sandbox's access token either as `X-Access-Token` or as a
//! signed URL (`signature`, `signature_expiration`: see [`file_signature`]).
//!
//! Uploads stream to a temporary file in the target's directory, owned by
//! the user, and are renamed into place once the body is complete: a failed
//! upload leaves neither a partial file nor a truncated old one. Watchers
//! leave those temporary files out, and after the rename the agent touches
//! the file's owner and size once more, so a watcher sees a new upload as
//! `CREATE`, `CHMOD`, `WRITE` of the target — the sequence E2B's agent
//! produces by writing in place, which SDK users count on.

use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use sha2::Digest as _;

use crate::Agent;
use crate::fsops::{
    Caller, FsError, FsErrorKind, UPLOAD_TEMP_PREFIX, base_name, path_string, random_u64,
    read_metadata, validate_metadata, write_metadata,
};
use crate::http::{ACCESS_TOKEN_HEADER, json_error};

/// Request headers carrying file metadata: `X-Metadata-<key>: <value>`.
pub const METADATA_HEADER_PREFIX: &str = "x-metadata-";

/// Bytes read from a file per response chunk.
const READ_CHUNK: usize = 64 * 1024;

/// Query parameters of `/files`.
#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    /// The file (or, for a multipart upload, the default target).
    pub path: Option<String>,
    /// The user the transfer acts for.
    pub username: Option<String>,
    /// `v1_...` signature, instead of `X-Access-Token`.
    pub signature: Option<String>,
    /// Unix seconds after which the signature is refused.
    pub signature_expiration: Option<String>,
}

/// The signature of a file URL: `"v1_"` + unpadded standard base64 of
/// `sha256("<path>:<read|write>:<username or ''>:<token>[:<expiration>]")`,
/// as E2B's agent and SDKs compute it. `path` and `username` are the query
/// parameters as sent, unresolved.
pub fn file_signature(
    path: &str,
    operation: &str,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{operation}:{username}:{token}:{exp}"),
        None => format!("{path}:{operation}:{username}:{token}"),
    };
    let digest = sha2::Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Checks the access token of a `/files` request (E2B's rules): none set →
/// open; `X-Access-Token` given → it must match; else a valid, unexpired
/// signature for `operation` is required.
fn authorize(
    agent: &Agent,
    headers: &HeaderMap,
    query: &FilesQuery,
    operation: &str,
) -> Result<(), HttpError> {
    let Some(token) = agent.sandbox_state().access_token else {
        return Ok(());
    };
    let unauthorized = |m: &str| http_error(StatusCode::UNAUTHORIZED, m);
    let given = headers
        .get(ACCESS_TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !given.is_empty() {
        return if hutch_protocol::same_secret(given, token) {
            Ok(())
        } else {
            Err(unauthorized(
                "invalid X-Access-Token: it does not match this sandbox's access token",
            ))
        };
    }
    let Some(signature) = query.signature.as_deref() else {
        return Err(unauthorized(
            "missing X-Access-Token header or signature query parameter: this sandbox requires its access token",
        ));
    };
    let expiration = match query.signature_expiration.as_deref() {
        None => None,
        Some(raw) => Some(raw.trim().parse::<i64>().map_err(|_| {
            http_error(
                StatusCode::BAD_REQUEST,
                format!("invalid signature_expiration {raw:?}: expected Unix seconds"),
            )
        })?),
    };
    let expected = file_signature(
        query.path.as_deref().unwrap_or_default(),
        operation,
        query.username.as_deref().unwrap_or_default(),
        &token,
        expiration,
    );
    if !hutch_protocol::same_secret(&expected, signature) {
        return Err(unauthorized("invalid signature"));
    }
    if let Some(exp) = expiration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if exp < now {
            return Err(unauthorized("signature is already expired"));
        }
    }
    Ok(())
}

/// An error reply: status and message, sent as E2B's JSON error body.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
}

fn http_error(status: StatusCode, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

impl From<FsError> for HttpError {
    fn from(e: FsError) -> HttpError {
        http_error(e.http_status(), e.message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        json_error(self.status, &self.message)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::new(FsErrorKind::Internal, format!("file task failed: {e}")))?
}

async fn caller_of(agent: &Arc<Agent>, query: &FilesQuery) -> Result<Caller, HttpError> {
    let agent = agent.clone();
    let user = query.username.clone();
    Ok(blocking(move || agent.caller(user.as_deref())).await?)
}

/// `GET /files`.
pub async fn get_file(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<FilesQuery>,
    headers: HeaderMap,
) -> Response {
    get_file_inner(&agent, &query, &headers)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn get_file_inner(
    agent: &Arc<Agent>,
    query: &FilesQuery,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    authorize(agent, headers, query, "read")?;
    let caller = caller_of(agent, query).await?;
    let path = caller.resolve(query.path.as_deref().unwrap_or_default())?;
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(http_error(
                StatusCode::NOT_FOUND,
                format!("path '{}' does not exist", path.display()),
            ));
        }
        Err(e) => return Err(FsError::io(format!("checking {}", path.display()), &e).into()),
    };
    if meta.is_dir() {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            format!("path '{}' is a directory", path.display()),
        ));
    }
    let gzip = match negotiate(headers.get(header::ACCEPT_ENCODING)) {
        Some(gzip) => gzip,
        None => {
            return Err(http_error(
                StatusCode::NOT_ACCEPTABLE,
                "no acceptable encoding found, supported: [gzip identity]",
            ));
        }
    };
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| FsError::io(format!("opening {}", path.display()), &e))?;
    // A client that takes gzip gets it only where it pays (identity is
    // always allowed unless refused).
    let gzip = gzip
        && (!identity_acceptable(headers.get(header::ACCEPT_ENCODING))
            || compresses_well(&mut file)
                .await
                .map_err(|e| FsError::io(format!("reading {}", path.display()), &e))?);

    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::VARY, "Accept-Encoding");
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&base_name(&path))) {
        response = response.header(header::CONTENT_DISPOSITION, v);
    }
    let body = if gzip {
        response = response.header(header::CONTENT_ENCODING, "gzip");
        Body::from_stream(gzip_stream(file))
    } else {
        // Files in /proc and /sys claim sizes they do not have: announce a
        // length only for files with data blocks.
        let length = (meta.is_file() && meta.blocks() > 0).then_some(meta.len());
        if let Some(length) = length {
            response = response.header(header::CONTENT_LENGTH, length);
        }
        Body::from_stream(read_stream(file, length))
    };
    response
        .body(body)
        .map_err(|e| http_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Picks the response encoding from `Accept-Encoding` as E2B's agent does:
/// the supported coding with the highest quality, in header order on ties;
/// identity unless excluded. `Some(true)` = gzip, `Some(false)` = identity,
/// `None` = nothing acceptable (406).
fn negotiate(accept: Option<&HeaderValue>) -> Option<bool> {
    let Some(mut codings) = codings(accept) else {
        return Some(false);
    };
    let identity_rejected = identity_rejected(&codings);
    // Stable: equal qualities keep header order.
    codings.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    for (name, q) in &codings {
        if *q <= 0.0 {
            continue;
        }
        match name.as_str() {
            "identity" => return Some(false),
            "*" => return Some(identity_rejected),
            "gzip" => return Some(true),
            _ => {}
        }
    }
    (!identity_rejected).then_some(false)
}

/// Whether `Accept-Encoding` lets the answer go uncompressed (it does
/// unless it refuses `identity`, by name or through `*;q=0`).
fn identity_acceptable(accept: Option<&HeaderValue>) -> bool {
    codings(accept).is_none_or(|c| !identity_rejected(&c))
}

/// The codings of a non-empty `Accept-Encoding`, with their qualities.
fn codings(accept: Option<&HeaderValue>) -> Option<Vec<(String, f32)>> {
    let header = accept
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.trim().is_empty())?;
    Some(
        header
            .split(',')
            .map(|item| {
                let mut parts = item.split(';');
                let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let mut q = 1.0;
                for p in parts {
                    let p = p.trim();
                    if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                        q = v.trim().parse().unwrap_or(q);
                    }
                }
                (name, q)
            })
            .collect(),
    )
}

fn identity_rejected(codings: &[(String, f32)]) -> bool {
    let identity_explicit_ok = codings.iter().any(|(n, q)| n == "identity" && *q > 0.0);
    codings.iter().any(|(n, q)| n == "identity" && *q == 0.0)
        || (codings.iter().any(|(n, q)| n == "*" && *q == 0.0) && !identity_explicit_ok)
}

/// How much of a file [`compresses_well`] tries.
const COMPRESSION_SAMPLE: usize = 64 << 10;

/// Whether gzip is worth it for `file`: its first [`COMPRESSION_SAMPLE`]
/// bytes shrink by a tenth or more at the fastest level. Compressed or
/// random data (archives, images, model weights) does not, and gzipping it
/// anyway costs ~20 ns a byte for nothing — seconds for a large file. The
/// file is left at its start.
async fn compresses_well(file: &mut tokio::fs::File) -> io::Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut sample = Vec::with_capacity(COMPRESSION_SAMPLE);
    (&mut *file)
        .take(COMPRESSION_SAMPLE as u64)
        .read_to_end(&mut sample)
        .await?;
    file.seek(io::SeekFrom::Start(0)).await?;
    if sample.is_empty() {
        return Ok(false);
    }
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&sample)?;
    let compressed = encoder.finish()?;
    Ok(compressed.len() * 10 <= sample.len() * 9)
}

/// `inline; filename=...` as Go's `mime.FormatMediaType` writes it: a bare
/// token when possible, a quoted string for other ASCII, RFC 2231
/// (`filename*=utf-8''...`) for anything else.
fn content_disposition(name: &str) -> String {
    const TSPECIALS: &[u8] = b"()<>@,;:\\\"/[]?=";
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !TSPECIALS.contains(&b));
    if is_token {
        return format!("inline; filename={name}");
    }
    if name.bytes().all(|b| (b == b'\t' || b >= 0x20) && b < 0x7f) {
        let escaped: String = name
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        return format!("inline; filename=\"{escaped}\"");
    }
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_graphic() && !TSPECIALS.contains(&b) && b != b'*' && b != b'\'' && b != b'%' {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("inline; filename*=utf-8''{encoded}")
}

/// The file's bytes, at most `limit` of them.
fn read_stream(
    file: tokio::fs::File,
    limit: Option<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt as _;
    let reader: Pin<Box<dyn tokio::io::AsyncRead + Send>> = match limit {
        Some(n) => Box::pin(file.take(n)),
        None => Box::pin(file),
    };
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; READ_CHUNK];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// The file gzip-compressed (fast level: throughput over ratio).
fn gzip_stream(file: tokio::fs::File) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt as _;
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    futures::stream::unfold(Some((file, encoder)), |state| async move {
        let (mut file, mut encoder) = state?;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => {
                    return match encoder.finish() {
                        Ok(rest) => Some((Ok(Bytes::from(rest)), None)),
                        Err(e) => Some((Err(e), None)),
                    };
                }
                Ok(n) => {
                    if let Err(e) = encoder.write_all(&buf[..n]) {
                        return Some((Err(e), None));
                    }
                    let out = std::mem::take(encoder.get_mut());
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((file, encoder))));
                    }
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Decompresses a gzip (possibly multi-member) byte stream as it arrives,
/// feeding the decoder small slices so one chunk cannot inflate to much.
fn gunzip(input: ByteStream) -> ByteStream {
    const SLICE: usize = 4096;
    struct State {
        input: ByteStream,
        decoder: flate2::write::MultiGzDecoder<Vec<u8>>,
        pending: Bytes,
        done: bool,
    }
    let state = State {
        input,
        decoder: flate2::write::MultiGzDecoder::new(Vec::new()),
        pending: Bytes::new(),
        done: false,
    };
    let bad = |e: io::Error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("invalid gzip body: {e}"),
        )
    };
    Box::pin(futures::stream::unfold(state, move |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if !s.pending.is_empty() {
                let n = s.pending.len().min(SLICE);
                match s.decoder.write(&s.pending[..n]) {
                    Ok(0) => {
                        s.done = true;
                        return Some((Err(bad(io::ErrorKind::WriteZero.into())), s));
                    }
                    Ok(used) => {
                        let _ = s.pending.split_to(used);
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(bad(e)), s));
                    }
                }
                let out = std::mem::take(s.decoder.get_mut());
                if !out.is_empty() {
                    return Some((Ok(Bytes::from(out)), s));
                }
                continue;
            }
            match s.input.next().await {
                Some(Ok(chunk)) => s.pending = chunk,
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    if let Err(e) = s.decoder.try_finish() {
                        return Some((Err(bad(e)), s));
                    }
                    let out = std::mem::take(s.decoder.get_mut());
                    if out.is_empty() {
                        return None;
                    }
                    return Some((Ok(Bytes::from(out)), s));
                }
            }
        }
    }))
}

/// One written file, as the upload reply lists it.
#[derive(Debug, Clone)]
struct Written {
    path: PathBuf,
    metadata: Vec<(String, String)>,
}

impl Written {
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": base_name(&self.path),
            "type": "file",
            "path": path_string(&self.path),
        });
        if !self.metadata.is_empty() {
            v["metadata"] = self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        v
    }
}

/// `POST /files`.
pub async fn post_files(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<FilesQuery>,
    request: Request,
) -> Response {
    post_files_inner(&agent, &query, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn post_files_inner(
    agent: &Arc<Agent>,
    query: &FilesQuery,
    request: Request,
) -> Result<Response, HttpError> {
    let headers = request.headers().clone();
    authorize(agent, &headers, query, "write")?;
    let caller = Arc::new(caller_of(agent, query).await?);
    let bad_request = |m: &str| http_error(StatusCode::BAD_REQUEST, m);

    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(bad_request(&format!(
                "unsupported Content-Encoding: {other}, supported: [gzip]"
            )));
        }
    };
    let metadata =
        metadata_from(&headers).map_err(|m| bad_request(&format!("invalid metadata: {m}")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();

    let raw = read_to_the_end(Box::pin(
        request
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(io::Error::other)),
    ));
    let body = if gzip { gunzip(raw) } else { raw };

    let written = if media_type == "application/octet-stream" {
        let Some(path) = query.path.as_deref().filter(|p| !p.is_empty()) else {
            return Err(bad_request(
                "path query parameter is required for raw body upload",
            ));
        };
        let target = caller.resolve(path)?;
        vec![upload(&caller, target, &metadata, body).await?]
    } else if media_type.starts_with("multipart/") {
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|e| bad_request(&format!("invalid multipart Content-Type: {e}")))?;
        let mut form = multer::Multipart::new(body, boundary);
        let mut written: Vec<Written> = Vec::new();
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(bad_request(&format!("error reading form: {e}"))),
            };
            if field.name() != Some("file") {
                continue;
            }
            let target =
                multipart_target(&caller, query.path.as_deref(), field.file_name()).await?;
            if written.iter().any(|w| w.path == target) {
                return Err(bad_request(&format!(
                    "you cannot upload multiple files to the same path '{}' in one upload request",
                    target.display()
                )));
            }
            let field: ByteStream = Box::pin(field.map(|r| r.map_err(io::Error::other)));
            written.push(upload(&caller, target, &metadata, field).await?);
        }
        if written.is_empty() {
            return Err(bad_request("the form has no part named \"file\""));
        }
        written
    } else {
        return Err(bad_request(&format!(
            "unsupported content type: {content_type:?}, expected multipart/form-data or application/octet-stream"
        )));
    };
    let reply: Vec<serde_json::Value> = written.iter().map(Written::json).collect();
    Ok((StatusCode::OK, axum::Json(reply)).into_response())
}

/// The request body, read by a task of its own that goes on reading (and
/// discarding) it to the end when the upload stops early — a full disk, a
/// bad part. The client (the SDK, or the server's front door relaying it)
/// then finishes sending and reads the error, instead of finding the
/// connection closed under its upload.
fn read_to_the_end(mut body: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(async move {
        while let Some(chunk) = body.next().await {
            if tx.send(chunk).await.is_err() {
                while body.next().await.is_some() {}
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

/// `X-Metadata-<key>: <value>` headers, keys lowercased (E2B's rules).
fn metadata_from(headers: &HeaderMap) -> Result<Vec<(String, String)>, String> {
    let mut metadata: Vec<(String, String)> = Vec::new();
    // Header names come lowercased; a repeated header counts once (the
    // first value, as E2B's agent takes it).
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() || metadata.iter().any(|(k, _)| k == key) {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| format!("metadata value for key {key:?} must be printable ASCII"))?;
        metadata.push((key.to_owned(), value.to_owned()));
    }
    metadata.sort();
    validate_metadata(&metadata)?;
    Ok(metadata)
}

/// Where a multipart part goes: its filename when that is an absolute path
/// (what the SDKs send), else the `path` parameter (joined with the
/// filename's last component when `path` is a directory), else the
/// filename resolved against the user's home.
async fn multipart_target(
    caller: &Arc<Caller>,
    path: Option<&str>,
    filename: Option<&str>,
) -> Result<PathBuf, FsError> {
    let path = path.filter(|p| !p.is_empty()).map(str::to_owned);
    let filename = filename.filter(|f| !f.is_empty()).map(str::to_owned);
    let caller = caller.clone();
    blocking(move || {
        if let Some(f) = filename.as_deref().filter(|f| f.starts_with('/')) {
            return caller.resolve(f);
        }
        if let Some(p) = path.as_deref() {
            let target = caller.resolve(p)?;
            if let Some(f) = filename.as_deref()
                && target.is_dir()
            {
                let name = Path::new(f).file_name().ok_or_else(|| {
                    FsError::new(
                        FsErrorKind::InvalidArgument,
                        format!("invalid filename {f:?}"),
                    )
                })?;
                return Ok(target.join(name));
            }
            return Ok(target);
        }
        match filename.as_deref() {
            Some(f) => caller.resolve(f),
            None => Err(FsError::new(
                FsErrorKind::InvalidArgument,
                "no target for the uploaded file: give the `path` query parameter or a filename",
            )),
        }
    })
    .await
}

/// Removes the temporary file unless the upload was committed.
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An upload's temporary file, opened and owned by the user.
struct Prepared {
    file: std::fs::File,
    temp: TempFile,
    target: PathBuf,
    mode: Option<u32>,
}

/// Creates the target's directories and a temporary file beside it.
fn prepare(caller: &Caller, requested: &Path) -> Result<Prepared, FsError> {
    if let Some(parent) = requested.parent() {
        caller.ensure_dirs(parent)?;
    }
    // Write through symlinks, as opening the path would.
    let mut target = requested.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&target).map_err(|e| {
                    FsError::io(format!("reading symlink {}", target.display()), &e)
                })?;
                target = crate::fsops::clean(&target.parent().unwrap_or(Path::new("/")).join(link));
            }
            _ => break,
        }
    }
    let mode = match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => {
            return Err(FsError::new(
                FsErrorKind::InvalidArgument,
                format!("path is a directory: {}", requested.display()),
            ));
        }
        Ok(m) => Some(m.mode() & 0o777),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(FsError::io(format!("checking {}", requested.display()), &e)),
    };
    let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    if mode.is_none() && target != requested {
        // A dangling symlink: its target's directory may be missing too.
        caller.ensure_dirs(&dir)?;
    }
    let (file, temp) = loop {
        let temp = dir.join(format!("{UPLOAD_TEMP_PREFIX}{:016x}", random_u64()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
        {
            Ok(f) => break (f, temp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(FsError::io(
                    format!("creating a file in {}", dir.display()),
                    &e,
                ));
            }
        }
    };
    let temp = TempFile { path: Some(temp) };
    std::os::unix::fs::fchown(&file, Some(caller.uid), Some(caller.gid))
        .map_err(|e| FsError::io(format!("changing the owner of {}", requested.display()), &e))?;
    Ok(Prepared {
        file,
        temp,
        target,
        mode,
    })
}

/// Streams `body` into a new file at `requested` (see the module docs).
async fn upload(
    caller: &Arc<Caller>,
    requested: PathBuf,
    metadata: &[(String, String)],
    mut body: ByteStream,
) -> Result<Written, FsError> {
    let c = caller.clone();
    let req = requested.clone();
    let Prepared {
        file,
        mut temp,
        target,
        mode,
    } = blocking(move || prepare(&c, &req)).await?;

    // One blocking writer per file, fed through a short queue: the body
    // streams to disk without piling up in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, u64)> {
        let mut file = file;
        let mut written = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        Ok((file, written))
    });
    let mut body_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) if chunk.is_empty() => {}
            // The writer stopped: its error says why.
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                body_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| FsError::new(FsErrorKind::Internal, format!("file writer failed: {e}")))?;
    if let Some(e) = body_error {
        return Err(FsError::new(
            FsErrorKind::InvalidArgument,
            format!("reading the upload for {}: {e}", requested.display()),
        ));
    }
    let (file, size) = written.map_err(|e| {
        let e = FsError::io(format!("writing {}", requested.display()), &e);
        if e.kind == FsErrorKind::NoSpace {
            FsError::new(
                FsErrorKind::NoSpace,
                format!("not enough disk space available: {}", e.message),
            )
        } else {
            e
        }
    })?;

    let metadata = metadata.to_vec();
    let temp_path = temp.path.clone().unwrap_or_default();
    let uid = caller.uid;
    let gid = caller.gid;
    let shown = requested.clone();
    let committed = blocking(move || {
        if !metadata.is_empty()
            && let Err(e) = write_metadata(file.as_fd(), &metadata)
        {
            match e.raw_os_error() {
                // /proc, /sys and other filesystems without xattrs.
                Some(libc::ENOTSUP) => {
                    tracing::warn!(path = %shown.display(), "filesystem does not support xattrs; metadata not stored");
                }
                Some(libc::ENOSPC | libc::EDQUOT | libc::E2BIG) => {
                    return Err(FsError::new(
                        FsErrorKind::NoSpace,
                        format!("not enough space for the metadata of {}: {e}", shown.display()),
                    ));
                }
                _ => return Err(FsError::io(format!("storing the metadata of {}", shown.display()), &e)),
            }
        }
        if let Some(mode) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| FsError::io(format!("setting the mode of {}", shown.display()), &e))?;
        }
        std::fs::rename(&temp_path, &target)
            .map_err(|e| FsError::io(format!("moving the upload into place at {}", shown.display()), &e))?;
        // The events E2B's in-place write produces after `CREATE`: the
        // owner change and the data (see the module docs).
        let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
        if size > 0 {
            let _ = file.set_len(size);
        }
        Ok(read_metadata(&target))
    })
    .await;
    match committed {
        Ok(metadata) => {
            temp.path = None;
            Ok(Written {
                path: requested,
                metadata,
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_sdk() {
        // Python: "v1_" + base64.b64encode(sha256(b"/a.txt:read::tok").digest()).rstrip(b"=")
        let sig = file_signature("/a.txt", "read", "", "tok", None);
        assert!(sig.starts_with("v1_"));
        assert!(!sig.contains('='));
        assert_eq!(sig.len(), 3 + 43);
        let digest = sha2::Sha256::digest(b"/a.txt:read::tok");
        let expected = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(sig, format!("v1_{}", expected.trim_end_matches('=')));
        assert_ne!(sig, file_signature("/a.txt", "write", "", "tok", None));
        assert_ne!(sig, file_signature("/a.txt", "read", "", "tok", Some(1)));
    }

    #[test]
    fn encoding_negotiation_follows_e2b() {
        let n = |h: &str| negotiate(Some(&HeaderValue::from_str(h).unwrap()));
        assert_eq!(negotiate(None), Some(false));
        assert_eq!(n("gzip"), Some(true));
        assert_eq!(n("gzip, deflate"), Some(true));
        assert_eq!(n("br, gzip"), Some(true));
        assert_eq!(n("identity"), Some(false));
        assert_eq!(n("identity, gzip"), Some(false));
        assert_eq!(n("gzip;q=0.5, identity"), Some(false));
        assert_eq!(n("gzip;q=0"), Some(false));
        assert_eq!(n("br"), Some(false));
        assert_eq!(n("*"), Some(false));
        assert_eq!(n("*, identity;q=0"), Some(true));
        assert_eq!(n("br, identity;q=0"), None);
        assert_eq!(n("br, *;q=0"), None);
        let ok = |h: &str| identity_acceptable(Some(&HeaderValue::from_str(h).unwrap()));
        assert!(identity_acceptable(None));
        assert!(ok("gzip, deflate"));
        assert!(!ok("gzip, identity;q=0"));
        assert!(!ok("gzip, *;q=0"));
        assert!(ok("gzip, identity, *;q=0"));
    }

    #[test]
    fn content_disposition_matches_go() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=a.txt");
        assert_eq!(
            content_disposition("a b.txt"),
            "inline; filename=\"a b.txt\""
        );
        assert_eq!(content_disposition("q\"x"), "inline; filename=\"q\\\"x\"");
        assert_eq!(
            content_disposition("caf\u{e9}.txt"),
            "inline; filename*=utf-8''caf%C3%A9.txt"
        );
    }
}
