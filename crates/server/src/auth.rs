//! API keys: generated on first start, checked on every authenticated route.
//!
//! Only a key's SHA-256 is stored in the database; the key itself is written
//! once to `DATA/api-key` (mode 0600) for the operator and the CLI.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::db::{ApiKeyRow, Db, DbError, Revoke};
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

/// What a new key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// An API key (`X-API-Key`).
    ApiKey,
    /// An access token (`Authorization: Bearer`, as E2B's CLI sends it).
    AccessToken,
}

/// The API keys service: creates, lists and revokes keys, and checks the
/// key of every authenticated request — from memory: the valid keys'
/// hashes are read once and kept until a key is added or revoked through
/// this service (one server per database, see [`crate::db`]).
pub(crate) struct Keys {
    db: Db,
    cache: Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    /// Bumped by every change to the keys; a set read before a change is
    /// not kept after it.
    generation: u64,
    valid: Option<HashSet<String>>,
}

impl Keys {
    pub fn new(db: Db) -> Keys {
        Keys {
            db,
            cache: Mutex::default(),
        }
    }

    /// On first start (no key in the database): stores the key found in
    /// `DATA/api-key` if there is one, else generates a key and writes that
    /// file.
    pub async fn ensure_first(&self, data_dir: &Path) -> Result<(), ServerError> {
        let path = key_file(data_dir);
        let key_err = |reason: String| ServerError::ApiKey {
            path: path.clone(),
            reason,
        };
        let db_err = |e: DbError| key_err(format!("database error: {e}"));
        if self.db.has_api_keys().await.map_err(db_err)? {
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
        let result = self
            .db
            .insert_api_key(hash_key(&key), prefix_of(&key), time::now_ms())
            .await;
        self.changed();
        result.map_err(db_err)
    }

    /// Whether `key` is a key that is not revoked.
    pub async fn is_valid(&self, key: &str) -> Result<bool, DbError> {
        let hash = hash_key(key);
        let generation = {
            let cache = self.cache();
            if let Some(valid) = &cache.valid {
                return Ok(valid.contains(&hash));
            }
            cache.generation
        };
        let valid = self.db.valid_api_key_hashes().await?;
        let found = valid.contains(&hash);
        let mut cache = self.cache();
        if cache.generation == generation {
            cache.valid = Some(valid);
        }
        Ok(found)
    }

    /// A new key of `kind`, stored; returns the key (shown only now) and
    /// its row.
    pub async fn create(&self, kind: KeyKind) -> Result<(String, ApiKeyRow), DbError> {
        let key = match kind {
            KeyKind::ApiKey => ids::new_api_key(),
            KeyKind::AccessToken => ids::new_user_access_token(),
        };
        let result = self
            .db
            .create_api_key(hash_key(&key), prefix_of(&key), time::now_ms())
            .await;
        self.changed();
        let row = result?;
        tracing::info!(key_id = row.id, "API key created");
        Ok((key, row))
    }

    /// Every key, revoked or not, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKeyRow>, DbError> {
        self.db.list_api_keys().await
    }

    /// Revokes key `id`, unless it is the last valid one.
    pub async fn revoke(&self, id: i64) -> Result<Revoke, DbError> {
        let result = self.db.revoke_api_key(id, time::now_ms()).await;
        self.changed();
        if let Ok(Revoke::Revoked) = result {
            tracing::info!(key_id = id, "API key revoked");
        }
        result
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the valid keys read so far (after any change to them).
    fn changed(&self) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.valid = None;
    }
}

/// Characters of a key kept for display.
const PREFIX_CHARS: usize = 10;

fn prefix_of(key: &str) -> String {
    key.chars().take(PREFIX_CHARS).collect()
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
    match st.keys.is_valid(key.trim()).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::unauthorized("invalid API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
