//! API keys: generated on first start, checked on every authenticated route.
//!
//! Only a key's SHA-256 is stored in the database; the key itself is written
//! once to `DATA/api-key` (mode 0600) for the operator and the CLI.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::error::{ApiError, io_reason};
use crate::state::AppState;
use crate::{ServerError, ids, time};

/// The header carrying the key (header names are case-insensitive).
pub(crate) const API_KEY_HEADER: &str = "x-api-key";

/// `DATA/api-key`.
pub(crate) fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api-key")
}

pub(crate) fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// On first start (no key in the database): stores the key found in
/// `DATA/api-key` if there is one, else generates a key and writes that
/// file.
pub(crate) fn ensure_api_key(db: &Db, data_dir: &Path) -> Result<(), ServerError> {
    let path = key_file(data_dir);
    let key_err = |reason: String| ServerError::ApiKey {
        path: path.clone(),
        reason,
    };
    let db_err = |e: crate::db::DbError| key_err(format!("database error: {e}"));
    if db.has_api_keys().map_err(db_err)? {
        return Ok(());
    }
    let key = match std::fs::read_to_string(&path) {
        Ok(existing) if !existing.trim().is_empty() => existing.trim().to_string(),
        Ok(_) | Err(_) => {
            let key = ids::new_api_key();
            write_key_file(&path, &key).map_err(|e| key_err(io_reason(&e)))?;
            tracing::info!("generated an API key; it is in {}", path.display());
            key
        }
    };
    let prefix: String = key.chars().take(10).collect();
    db.insert_api_key(&hash_key(&key), &prefix, time::now_ms())
        .map_err(db_err)
}

fn write_key_file(path: &Path, key: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{key}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Middleware: 401 unless `X-API-Key` holds a valid key, or
/// `Authorization: Bearer` a valid access token (as E2B's CLI sends it).
pub(crate) async fn require_api_key(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer "));
    let api_key = req
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty());
    let Some(value) = api_key.or(bearer) else {
        return ApiError::unauthorized(
            "missing API key: send it in the X-API-Key header (or an access token as Authorization: Bearer)",
        )
        .into_response();
    };
    let Ok(key) = std::str::from_utf8(value) else {
        return ApiError::unauthorized("invalid API key").into_response();
    };
    match st.db.api_key_valid(hash_key(key.trim())).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::unauthorized("invalid API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
