//! API keys: generated on first start, checked on every authenticated route.
//!
//! Only a key's SHA-256 is stored in the database; the key itself is written
//! once to `DATA/api-key` (mode 0600) for the operator and the CLI.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::db::{ApiKeyRow, Db, DbError, KeyKind, KeyOwner, NewKey, Revoke};
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

/// Who made a request: the key it carried and the team that key acts
/// for. The authentication middleware puts it in the request's
/// extensions; every authenticated handler takes it, and every service
/// acts for `team` only (another team's sandboxes, templates and volumes
/// are not found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The team the key acts for.
    pub team: String,
    /// The key's row id.
    pub key_id: i64,
    /// Whether the team is the default team (which may manage teams).
    pub admin: bool,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing API key"))
    }
}

/// The API keys service: creates, lists and revokes keys, and checks the
/// key of every authenticated request — from memory: the valid keys are
/// read once and kept until a key is added or revoked through this service
/// (one server per database, see [`crate::db`]).
pub(crate) struct Keys {
    db: Db,
    /// The default team's id.
    default_team: String,
    cache: Mutex<KeyCache>,
    /// Held while the keys are read again for a key not among them: the
    /// requests that wait meanwhile use that read (one made through
    /// another control plane an instant ago works here too, and unknown
    /// keys cost one read at a time).
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    /// Bumped by every change to the keys; a map read before a change is
    /// not kept after it.
    generation: u64,
    valid: Option<Arc<HashMap<String, KeyOwner>>>,
    /// When `valid` was read.
    read_at: Option<std::time::Instant>,
    /// How many times it was read.
    reads: u64,
}

/// How long the valid keys are kept before they are read again: the
/// longest a key revoked through another control plane sharing the store
/// stays usable here.
const KEYS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

impl Keys {
    pub fn new(db: Db, default_team: String) -> Keys {
        Keys {
            db,
            default_team,
            cache: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// On first start (no key in the database): stores the key found in
    /// `DATA/api-key` if there is one, else generates a key and writes that
    /// file. The first key is the default team's.
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
        let new = new_key(&key, &self.default_team, "first API key", KeyKind::ApiKey);
        let result = self.db.insert_api_key(new).await;
        self.changed();
        result.map_err(db_err)
    }

    /// Who `key` is, if it is a key that is not revoked.
    pub async fn caller(&self, key: &str) -> Result<Option<Caller>, DbError> {
        let hash = hash_key(key);
        let (valid, reads) = self.cached();
        let valid = match valid {
            Some(valid) if valid.contains_key(&hash) => valid,
            // Not among the keys read: read them again, unless a read that
            // started after this request began already did.
            _ => {
                let _one = self.reading.lock().await;
                match self.cached() {
                    (Some(valid), now) if now > reads => valid,
                    _ => self.read().await?,
                }
            }
        };
        Ok(valid.get(&hash).map(|owner| Caller {
            admin: owner.team_id == self.default_team,
            team: owner.team_id.clone(),
            key_id: owner.key_id,
        }))
    }

    /// The valid keys as last read, unless older than [`KEYS_MAX_AGE`]; and
    /// how many reads there were.
    fn cached(&self) -> (Option<Arc<HashMap<String, KeyOwner>>>, u64) {
        let cache = self.cache();
        let fresh = cache.read_at.is_some_and(|t| t.elapsed() < KEYS_MAX_AGE);
        (cache.valid.clone().filter(|_| fresh), cache.reads)
    }

    /// Reads the valid keys, and keeps them unless they changed meanwhile.
    async fn read(&self) -> Result<Arc<HashMap<String, KeyOwner>>, DbError> {
        let generation = self.cache().generation;
        let valid = Arc::new(self.db.valid_api_keys().await?);
        let mut cache = self.cache();
        cache.reads += 1;
        if cache.generation == generation {
            cache.valid = Some(valid.clone());
            cache.read_at = Some(std::time::Instant::now());
        }
        Ok(valid)
    }

    /// A new key of `kind` named `name` for team `team`, stored; returns
    /// the key (shown only now) and its row.
    pub async fn create(
        &self,
        team: &str,
        kind: KeyKind,
        name: &str,
    ) -> Result<(String, ApiKeyRow), DbError> {
        let key = match kind {
            KeyKind::ApiKey => ids::new_api_key(),
            KeyKind::AccessToken => ids::new_user_access_token(),
        };
        let row = self.store(&key, team, name, kind).await?;
        tracing::info!(key_id = row.id, team = team, "API key created");
        Ok((key, row))
    }

    /// A new access token for team `team` made by a CLI login
    /// ([`ids::new_cli_token`]), named `name`; returns it (shown only now).
    pub async fn create_cli_token(&self, team: &str, name: &str) -> Result<String, DbError> {
        let exp = time::now_ms() / 1000 + CLI_TOKEN_SECS;
        let token = ids::new_cli_token(exp);
        let row = self.store(&token, team, name, KeyKind::AccessToken).await?;
        tracing::info!(key_id = row.id, team = team, "CLI login token created");
        Ok(token)
    }

    /// Stores the new key `key` and forgets the cached valid keys.
    async fn store(
        &self,
        key: &str,
        team: &str,
        name: &str,
        kind: KeyKind,
    ) -> Result<ApiKeyRow, DbError> {
        let result = self.db.create_api_key(new_key(key, team, name, kind)).await;
        self.changed();
        result
    }

    /// Revokes the valid key `key` (the key itself, as a client holds it);
    /// `Ok(false)` when it is not one.
    pub async fn revoke_key(&self, key: &str) -> Result<bool, DbError> {
        let Some(caller) = self.caller(key).await? else {
            return Ok(false);
        };
        let outcome = self
            .revoke(&caller.team, &caller.key_id.to_string())
            .await?;
        Ok(outcome == Revoke::Revoked)
    }

    /// Every key of team `team`, revoked or not, oldest first.
    pub async fn list(&self, team: &str) -> Result<Vec<ApiKeyRow>, DbError> {
        self.db.list_api_keys(team.to_owned()).await
    }

    /// Renames key `id` of team `team`; `false` when it has no such key.
    pub async fn rename(&self, team: &str, id: &str, name: &str) -> Result<bool, DbError> {
        self.db
            .rename_api_key(team.to_owned(), id.to_owned(), name.to_owned())
            .await
    }

    /// Revokes key `id` (its UUID or number) of team `team`, unless it is
    /// the team's last valid one.
    pub async fn revoke(&self, team: &str, id: &str) -> Result<Revoke, DbError> {
        let result = self
            .db
            .revoke_api_key(team.to_owned(), id.to_owned(), time::now_ms())
            .await;
        self.changed();
        if let Ok(Revoke::Revoked) = result {
            tracing::info!(key_id = id, team = team, "API key revoked");
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

/// The row of a new key `key`.
fn new_key(key: &str, team: &str, name: &str, kind: KeyKind) -> NewKey {
    NewKey {
        uuid: ids::new_build_id(),
        team_id: team.to_owned(),
        name: name.to_owned(),
        kind,
        hash: hash_key(key),
        prefix: key.chars().take(PREFIX_CHARS).collect(),
        suffix: key
            .chars()
            .skip(key.chars().count().saturating_sub(SUFFIX_CHARS))
            .collect(),
        created_at: time::now_ms(),
    }
}

/// How long a CLI login's token says it lasts: ten years (it lasts until
/// revoked).
const CLI_TOKEN_SECS: i64 = 10 * 365 * 24 * 3600;

/// Characters of a key's end kept for display.
const SUFFIX_CHARS: usize = 4;

/// Characters of a key kept for display.
const PREFIX_CHARS: usize = 10;

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

impl Keys {
    /// Removes from `headers` every Hutch credential — an `X-API-Key`, or
    /// an `Authorization: Bearer` access token, that is a valid key of any
    /// team, or that cannot be checked now — so that a request the front
    /// door passes into a sandbox never hands the sandbox's code a key to
    /// the control plane. Values that are no Hutch key (an application's
    /// own `X-API-Key` or bearer token) pass untouched.
    pub async fn strip_credentials(&self, headers: &mut axum::http::HeaderMap) {
        use axum::http::header::AUTHORIZATION;
        let api_key = headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if self.is_credential(api_key.as_deref()).await {
            headers.remove(API_KEY_HEADER);
        }
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        if self.is_credential(bearer.as_deref()).await {
            headers.remove(AUTHORIZATION);
        }
    }

    /// Whether `value` is a valid key or token of any team, or might be
    /// (the store cannot be asked now).
    async fn is_credential(&self, value: Option<&str>) -> bool {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) => !matches!(self.caller(v).await, Ok(None)),
            None => false,
        }
    }
}

/// The credential a request carries: `X-API-Key`, else an access token
/// as `Authorization: Bearer` (as E2B's CLI sends it).
pub(crate) fn credential(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer "));
    let api_key = headers
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty());
    let Some(value) = api_key.or(bearer) else {
        return Err(ApiError::unauthorized(
            "missing API key: send it in the X-API-Key header (or an access token as Authorization: Bearer)",
        ));
    };
    std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| ApiError::unauthorized("invalid API key"))
}

/// Middleware: 401 unless the request's [`credential`] is a valid key;
/// else the request goes on with its [`Caller`].
pub(crate) async fn require_api_key(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match credential(req.headers()) {
        Ok(key) => st.keys.caller(key).await,
        Err(e) => return e.into_response(),
    };
    match caller {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("invalid API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
