//! The server's state in SQLite (`DATA/hutch.db`, WAL mode). All SQL lives
//! in this module.
//!
//! The schema is versioned with `PRAGMA user_version`: `MIGRATIONS[i]`
//! takes the schema from version `i` to `i + 1`; opening a database applies
//! the missing ones in one transaction. Never edit a shipped migration;
//! append a new one.
//!
//! Queries run on tokio's blocking pool, one at a time (a mutex around the
//! single connection).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hutch_runtime::{Cidr, EgressPolicy};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Schema migrations, in order. `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: API keys, templates, sandboxes.
    "CREATE TABLE api_keys (
        id          INTEGER PRIMARY KEY,
        hash        TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the key
        prefix      TEXT NOT NULL,          -- first characters, for display
        created_at  INTEGER NOT NULL,       -- Unix ms
        revoked_at  INTEGER                 -- Unix ms; NULL while valid
    );
    CREATE TABLE templates (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        metadata    TEXT NOT NULL,          -- TemplateMetadata::to_json
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE sandboxes (
        id            TEXT PRIMARY KEY,
        template_id   TEXT NOT NULL,
        template_name TEXT NOT NULL,
        state         TEXT NOT NULL,        -- starting | running | killed
        sandbox_env   TEXT NOT NULL,        -- JSON object: layer 3
        metadata      TEXT NOT NULL,        -- JSON object: user metadata
        started_at    INTEGER NOT NULL,
        end_at        INTEGER NOT NULL,     -- when it expires
        ended_at      INTEGER,              -- when it was killed
        cpu_count     INTEGER NOT NULL,
        memory_mb     INTEGER NOT NULL,
        disk_size_mb  INTEGER NOT NULL
    );
    CREATE INDEX sandboxes_state ON sandboxes (state);
    CREATE INDEX sandboxes_template ON sandboxes (template_id, state);",
    // 2: paused sandboxes keep the lifetime they had left.
    "ALTER TABLE sandboxes ADD COLUMN paused_remaining_ms INTEGER; -- while state = 'paused'",
    // 3: sandboxes created with `secure: true` have an agent access token.
    "ALTER TABLE sandboxes ADD COLUMN access_token TEXT;",
    // 4: the egress policy a sandbox was created with.
    "ALTER TABLE sandboxes ADD COLUMN network TEXT; -- JSON hutch_runtime::EgressPolicy",
    // 5: cpu_count, memory_mb and disk_size_mb hold the sandbox's own
    // limits (they held the host's figures before); its pids limit joins
    // them (NULL in older rows).
    "ALTER TABLE sandboxes ADD COLUMN pids INTEGER;",
    // 6: how a paused sandbox was paused (older paused rows were frozen:
    // NULL reads as 'memory'), and what its timeout does.
    "ALTER TABLE sandboxes ADD COLUMN pause_mode TEXT; -- 'memory' | 'filesystem' while paused
    ALTER TABLE sandboxes ADD COLUMN auto_pause TEXT; -- at its timeout: NULL kills it, else pause mode
    ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;",
];

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The database was made by a newer Hutch.
    #[error("schema version {found} is newer than this server's ({known}); upgrade hutch")]
    TooNew {
        /// `user_version` found.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
    /// A stored JSON column does not parse.
    #[error("corrupt {what} in the database: {cause}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// The parse error.
        cause: serde_json::Error,
    },
    /// A query task panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// Being created; counts as live (its template cannot be removed).
    Starting,
    /// Running.
    Running,
    /// Frozen (`POST /sandboxes/{id}/pause`); does not expire.
    Paused,
    /// Destroyed (expired or killed).
    Killed,
}

impl SandboxState {
    /// The state's name, as stored and as E2B reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Starting => "starting",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Killed => "killed",
        }
    }

    fn parse(s: &str) -> SandboxState {
        match s {
            "starting" => SandboxState::Starting,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            _ => SandboxState::Killed,
        }
    }
}

/// How a sandbox is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Frozen: its processes keep their memory and resume where they were
    /// (E2B's `full`).
    Memory,
    /// Stopped with only its files kept; resuming boots it again on them
    /// (E2B's `filesystem`).
    Filesystem,
}

impl PauseMode {
    /// The mode's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseMode::Memory => "memory",
            PauseMode::Filesystem => "filesystem",
        }
    }

    /// A stored name; anything unknown (or NULL, in rows from before modes)
    /// was a memory pause.
    fn parse(s: Option<&str>) -> PauseMode {
        match s {
            Some("filesystem") => PauseMode::Filesystem,
            _ => PauseMode::Memory,
        }
    }
}

/// What happens to a sandbox at its timeout, and to a paused sandbox when
/// a request comes for it through the front door.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// `None`: its timeout kills it (the default); else it is paused this
    /// way (E2B's `autoPause`, `autoPauseMemory`).
    pub auto_pause: Option<PauseMode>,
    /// A request through the front door resumes it while it is paused in
    /// memory (E2B's `autoResume.enabled`).
    pub auto_resume: bool,
}

/// A template row.
#[derive(Debug, Clone)]
pub struct TemplateRow {
    /// Template id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `TemplateMetadata` as JSON.
    pub metadata: String,
    /// Unix ms.
    pub created_at: i64,
}

/// A sandbox row.
#[derive(Debug, Clone)]
pub struct SandboxRow {
    /// Sandbox id.
    pub id: String,
    /// Its template's id.
    pub template_id: String,
    /// Its template's name (E2B's `alias`).
    pub template_name: String,
    /// Where it is in its life.
    pub state: SandboxState,
    /// Layer 3: the variables given at creation.
    pub sandbox_env: BTreeMap<String, String>,
    /// User metadata given at creation.
    pub metadata: BTreeMap<String, String>,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms: when it expires.
    pub end_at: i64,
    /// Unix ms: when it was killed.
    pub ended_at: Option<i64>,
    /// Its CPU limit (`cpuCount`).
    pub cpu_count: u32,
    /// Its memory limit, MiB (`memoryMB`).
    pub memory_mb: u64,
    /// Its disk size, MiB (`diskSizeMB`).
    pub disk_size_mb: u64,
    /// Its pids limit (`hutchPids`); `None` in rows from before it was
    /// recorded.
    pub pids: Option<u64>,
    /// While paused: the lifetime it had left, in ms.
    pub paused_remaining_ms: Option<i64>,
    /// While paused: how.
    pub pause_mode: Option<PauseMode>,
    /// Its timeout and auto-resume behaviour.
    pub lifecycle: Lifecycle,
    /// The agent's access token (`secure: true` sandboxes), which every
    /// agent request must carry as `X-Access-Token`.
    pub access_token: Option<String>,
    /// The egress policy it was created with, a [`NetworkRecord`] as
    /// JSON ([`NetworkRecord::encode`], [`NetworkRecord::decode`]); `None`
    /// for rows from before it was recorded (they had the default).
    pub network: Option<String>,
}

/// A sandbox's egress policy as the `network` column stores it:
/// `{"allowInternetAccess":false,"allowOut":["10.0.0.0/8"],"denyOut":[]}`
/// (the lists may be absent). The database keeps this record, not the
/// runtime's [`EgressPolicy`], so that the stored form stays the same
/// whatever that type becomes; the two convert into each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRecord {
    /// Internet access.
    pub allow_internet_access: bool,
    /// Address blocks re-allowed even when denied (`addr/prefix`).
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// Address blocks denied (`addr/prefix`).
    #[serde(default)]
    pub deny_out: Vec<String>,
}

impl NetworkRecord {
    /// The record of `policy`.
    pub fn of(policy: &EgressPolicy) -> NetworkRecord {
        let blocks = |list: &[Cidr]| list.iter().map(Cidr::to_string).collect();
        NetworkRecord {
            allow_internet_access: policy.allow_internet_access,
            allow_out: blocks(&policy.allow_out),
            deny_out: blocks(&policy.deny_out),
        }
    }

    /// The policy it records, or why an address block does not parse.
    pub fn policy(&self) -> Result<EgressPolicy, String> {
        let blocks = |field: &str, list: &[String]| -> Result<Vec<Cidr>, String> {
            list.iter()
                .map(|b| b.parse::<Cidr>().map_err(|e| format!("{field}: {e}")))
                .collect()
        };
        Ok(EgressPolicy {
            allow_internet_access: self.allow_internet_access,
            allow_out: blocks("allowOut", &self.allow_out)?,
            deny_out: blocks("denyOut", &self.deny_out)?,
        })
    }

    /// `policy` as the `network` column stores it.
    pub fn encode(policy: &EgressPolicy) -> String {
        serde_json::to_string(&NetworkRecord::of(policy)).expect("a network record serializes")
    }

    /// The policy a `network` column holds, or why it cannot be read.
    pub fn decode(text: &str) -> Result<EgressPolicy, String> {
        serde_json::from_str::<NetworkRecord>(text)
            .map_err(|e| e.to_string())?
            .policy()
    }
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Its id.
    pub id: i64,
    /// The first characters of the key.
    pub prefix: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None` while valid.
    pub revoked_at: Option<i64>,
}

/// What [`Db::revoke_api_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// The key is revoked now.
    Revoked,
    /// No key has this id, or it was revoked already.
    NotFound,
    /// It is the last valid key: refused.
    LastKey,
}

/// The database handle; cheap to clone.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// The hashes of the valid API keys, read once and kept until a key is
    /// added or revoked: every authenticated request checks one.
    keys: Arc<Mutex<KeyCache>>,
}

/// See [`Db::api_key_valid`].
#[derive(Default)]
struct KeyCache {
    /// Bumped by every change to the keys; a set read before a change is
    /// not kept after it.
    generation: u64,
    valid: Option<std::collections::HashSet<String>>,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            keys: Arc::default(),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, DbError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` with the connection on the current thread (startup only).
    pub fn blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    // ----- API keys ---------------------------------------------------

    /// Whether any API key, revoked or not, was ever stored.
    pub fn has_api_keys(&self) -> Result<bool, DbError> {
        self.blocking(|c| {
            Ok(
                c.query_row("SELECT EXISTS (SELECT 1 FROM api_keys)", [], |r| {
                    r.get::<_, bool>(0)
                })?,
            )
        })
    }

    /// Stores a key's hash.
    pub fn insert_api_key(&self, hash: &str, prefix: &str, now: i64) -> Result<(), DbError> {
        let result = self.blocking(|c| {
            c.execute(
                "INSERT OR IGNORE INTO api_keys (hash, prefix, created_at) VALUES (?1, ?2, ?3)",
                params![hash, prefix, now],
            )?;
            Ok(())
        });
        self.keys_changed();
        result
    }

    /// Whether `hash` belongs to a key that is not revoked (from memory once
    /// the valid keys have been read).
    pub async fn api_key_valid(&self, hash: String) -> Result<bool, DbError> {
        let generation = {
            let cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(valid) = &cache.valid {
                return Ok(valid.contains(&hash));
            }
            cache.generation
        };
        let valid = self
            .call(|c| {
                let mut st = c.prepare("SELECT hash FROM api_keys WHERE revoked_at IS NULL")?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<std::collections::HashSet<_>, _>>()?)
            })
            .await?;
        let found = valid.contains(&hash);
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation == generation {
            cache.valid = Some(valid);
        }
        Ok(found)
    }

    /// Forgets the valid keys read so far (after any change to them).
    fn keys_changed(&self) {
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.valid = None;
    }

    /// Stores a new key's hash; returns its row.
    pub async fn create_api_key(
        &self,
        hash: String,
        prefix: String,
        now: i64,
    ) -> Result<ApiKeyRow, DbError> {
        let result = self
            .call(move |c| {
                c.execute(
                    "INSERT INTO api_keys (hash, prefix, created_at) VALUES (?1, ?2, ?3)",
                    params![hash, prefix, now],
                )?;
                Ok(ApiKeyRow {
                    id: c.last_insert_rowid(),
                    prefix,
                    created_at: now,
                    revoked_at: None,
                })
            })
            .await;
        self.keys_changed();
        result
    }

    /// Every key, revoked or not, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(ApiKeyRow {
                    id: r.get(0)?,
                    prefix: r.get(1)?,
                    created_at: r.get(2)?,
                    revoked_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Revokes a valid key at `now`, unless it is the last valid one.
    pub async fn revoke_api_key(&self, id: i64, now: i64) -> Result<Revoke, DbError> {
        let result = self
            .call(move |c| {
                let tx = c.transaction()?;
                let valid: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = ?1 AND revoked_at IS NULL)",
                    [id],
                    |r| r.get(0),
                )?;
                if !valid {
                    return Ok(Revoke::NotFound);
                }
                let others: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM api_keys WHERE id != ?1 AND revoked_at IS NULL",
                    [id],
                    |r| r.get(0),
                )?;
                if others == 0 {
                    return Ok(Revoke::LastKey);
                }
                tx.execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                tx.commit()?;
                Ok(Revoke::Revoked)
            })
            .await;
        self.keys_changed();
        result
    }

    // ----- templates --------------------------------------------------

    /// Inserts a template; `Ok(false)` when its name is taken.
    pub async fn insert_template(&self, t: TemplateRow) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO templates (id, name, metadata, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![t.id, t.name, t.metadata, t.created_at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Inserts a template, replacing one of the same name: the old row is
    /// kept under the hidden name `<name>@<old id>` (no valid template name
    /// contains `@`), so sandboxes still running from it keep working and
    /// its layers stay referenced until it is pruned. Returns the old id.
    ///
    /// When the new row keeps the old id (E2B's template API keeps a
    /// template's id across builds), the old row moves to a fresh hidden id
    /// and the sandboxes still running from it follow it there.
    pub async fn replace_template(&self, t: TemplateRow) -> Result<Option<String>, DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let old: Option<String> = tx
                .query_row("SELECT id FROM templates WHERE name = ?1", [&t.name], |r| {
                    r.get(0)
                })
                .optional()?;
            if old.as_ref() == Some(&t.id) {
                let hidden = crate::ids::new_id();
                tx.execute(
                    "UPDATE templates SET id = ?2, name = name || '@' || ?2 WHERE id = ?1",
                    [&t.id, &hidden],
                )?;
                tx.execute(
                    "UPDATE sandboxes SET template_id = ?2
                     WHERE template_id = ?1 AND state IN ('starting', 'running', 'paused')",
                    [&t.id, &hidden],
                )?;
            } else if let Some(old) = &old {
                tx.execute(
                    "UPDATE templates SET name = name || '@' || id WHERE id = ?1",
                    [old],
                )?;
            }
            tx.execute(
                "INSERT INTO templates (id, name, metadata, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![t.id, t.name, t.metadata, t.created_at],
            )?;
            tx.commit()?;
            Ok(old)
        })
        .await
    }

    /// The template with this id or, failing that, this name.
    pub async fn find_template(&self, id_or_name: String) -> Result<Option<TemplateRow>, DbError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id, name, metadata, created_at FROM templates
                 WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
                [id_or_name],
                template_row,
            )
            .optional()?)
        })
        .await
    }

    /// Every template, by name.
    pub async fn list_templates(&self) -> Result<Vec<TemplateRow>, DbError> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT id, name, metadata, created_at FROM templates ORDER BY name")?;
            let rows = st.query_map([], template_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Deletes a template row.
    pub async fn delete_template(&self, id: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute("DELETE FROM templates WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    // ----- sandboxes --------------------------------------------------

    /// Inserts a sandbox row.
    pub async fn insert_sandbox(&self, s: SandboxRow) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO sandboxes (id, template_id, template_name, state, sandbox_env,
                     metadata, started_at, end_at, ended_at, cpu_count, memory_mb, disk_size_mb,
                     access_token, network, pids, auto_pause, auto_resume)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17)",
                params![
                    s.id,
                    s.template_id,
                    s.template_name,
                    s.state.as_str(),
                    to_json(&s.sandbox_env),
                    to_json(&s.metadata),
                    s.started_at,
                    s.end_at,
                    s.ended_at,
                    s.cpu_count,
                    i64::try_from(s.memory_mb).unwrap_or(i64::MAX),
                    i64::try_from(s.disk_size_mb).unwrap_or(i64::MAX),
                    s.access_token,
                    s.network,
                    s.pids.map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
                    s.lifecycle.auto_pause.map(PauseMode::as_str),
                    s.lifecycle.auto_resume,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks a sandbox running until `end_at`.
    pub async fn set_running(&self, id: String, end_at: i64) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "UPDATE sandboxes SET state = 'running', end_at = ?2, paused_remaining_ms = NULL,
                     pause_mode = NULL
                 WHERE id = ?1",
                params![id, end_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks a running or paused sandbox paused `mode`, with `remaining_ms`
    /// of its lifetime left.
    pub async fn set_paused(
        &self,
        id: String,
        remaining_ms: i64,
        mode: PauseMode,
    ) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "UPDATE sandboxes SET state = 'paused', paused_remaining_ms = ?2, pause_mode = ?3
                 WHERE id = ?1 AND state IN ('running', 'paused')",
                params![id, remaining_ms, mode.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    /// Moves a sandbox's expiry.
    pub async fn set_end_at(&self, id: String, end_at: i64) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "UPDATE sandboxes SET end_at = ?2 WHERE id = ?1",
                params![id, end_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks a sandbox killed at `now`.
    pub async fn mark_killed(&self, id: String, now: i64) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "UPDATE sandboxes SET state = 'killed', ended_at = ?2
                 WHERE id = ?1 AND state != 'killed'",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes a sandbox row (one that never started).
    pub async fn delete_sandbox(&self, id: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    /// A sandbox in any state.
    pub async fn get_sandbox(&self, id: String) -> Result<Option<SandboxRow>, DbError> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"),
                [id],
                sandbox_row,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    /// Sandboxes in `states`, oldest first.
    pub async fn sandboxes_in(&self, states: &[SandboxState]) -> Result<Vec<SandboxRow>, DbError> {
        let states: Vec<&'static str> = states.iter().map(|s| s.as_str()).collect();
        self.call(move |c| {
            let placeholders = vec!["?"; states.len()].join(", ");
            let mut st = c.prepare(&format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state IN ({placeholders})
                 ORDER BY started_at, id"
            ))?;
            let rows = st.query_map(rusqlite::params_from_iter(states), sandbox_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
        .await
    }

    /// How many sandboxes of a template are starting, running or paused.
    pub async fn live_sandboxes_of(&self, template_id: String) -> Result<u64, DbError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM sandboxes
                 WHERE template_id = ?1 AND state IN ('starting', 'running', 'paused')",
                [template_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))?)
        })
        .await
    }
}

const SANDBOX_COLUMNS: &str = "id, template_id, template_name, state, sandbox_env, metadata, \
     started_at, end_at, ended_at, cpu_count, memory_mb, disk_size_mb, paused_remaining_ms, \
     access_token, network, pids, pause_mode, auto_pause, auto_resume";

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        id: r.get(0)?,
        name: r.get(1)?,
        metadata: r.get(2)?,
        created_at: r.get(3)?,
    })
}

/// A sandbox row; the outer error is SQLite's, the inner a corrupt column.
fn sandbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SandboxRow, DbError>> {
    let state: String = r.get(3)?;
    let env: String = r.get(4)?;
    let metadata: String = r.get(5)?;
    let memory_mb: i64 = r.get(10)?;
    let disk_size_mb: i64 = r.get(11)?;
    let state = SandboxState::parse(&state);
    let pause_mode = r.get::<_, Option<String>>(16)?;
    let auto_pause = r.get::<_, Option<String>>(17)?;
    let parse = |what, text: &str| {
        serde_json::from_str::<BTreeMap<String, String>>(text)
            .map_err(|cause| DbError::Corrupt { what, cause })
    };
    let (sandbox_env, metadata) = match (parse("sandbox_env", &env), parse("metadata", &metadata)) {
        (Ok(e), Ok(m)) => (e, m),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    Ok(Ok(SandboxRow {
        id: r.get(0)?,
        template_id: r.get(1)?,
        template_name: r.get(2)?,
        state,
        sandbox_env,
        metadata,
        started_at: r.get(6)?,
        end_at: r.get(7)?,
        ended_at: r.get(8)?,
        cpu_count: r.get(9)?,
        memory_mb: u64::try_from(memory_mb).unwrap_or(0),
        disk_size_mb: u64::try_from(disk_size_mb).unwrap_or(0),
        paused_remaining_ms: r.get(12)?,
        access_token: r.get(13)?,
        network: r.get(14)?,
        pids: r
            .get::<_, Option<i64>>(15)?
            .map(|p| u64::try_from(p).unwrap_or(0)),
        pause_mode: (state == SandboxState::Paused)
            .then(|| PauseMode::parse(pause_mode.as_deref())),
        lifecycle: Lifecycle {
            auto_pause: auto_pause.map(|m| PauseMode::parse(Some(&m))),
            auto_resume: r.get(18)?,
        },
    }))
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > known {
        return Err(DbError::TooNew {
            found: version,
            known,
        });
    }
    if version == known {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tracing::info!("database schema migrated to version {}", i + 1);
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Network columns written before the record type existed (the
    /// runtime's own JSON) still read, and new ones are written the same
    /// way.
    #[test]
    fn network_records_keep_their_stored_form() {
        let stored = r#"{"allowInternetAccess":false,"allowOut":["1.1.1.1/32","10.0.0.0/8"],"denyOut":["0.0.0.0/0"]}"#;
        let policy = NetworkRecord::decode(stored).unwrap();
        assert!(!policy.allow_internet_access);
        assert_eq!(
            policy.allow_out,
            vec![
                "1.1.1.1".parse::<Cidr>().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert_eq!(policy.deny_out, vec![Cidr::ALL_IPV4]);
        assert_eq!(NetworkRecord::encode(&policy), stored);
        assert_eq!(
            NetworkRecord::encode(&policy),
            serde_json::to_string(&policy).unwrap(),
            "the same JSON as the runtime's policy"
        );

        let default = r#"{"allowInternetAccess":true,"allowOut":[],"denyOut":[]}"#;
        assert_eq!(
            NetworkRecord::decode(default).unwrap(),
            EgressPolicy::default()
        );
        assert_eq!(NetworkRecord::encode(&EgressPolicy::default()), default);
        // Lists may be absent.
        let policy = NetworkRecord::decode(r#"{"allowInternetAccess":false}"#).unwrap();
        assert!(!policy.allow_internet_access && policy.allow_out.is_empty());
        assert!(NetworkRecord::decode(r#"{"allowOut":[]}"#).is_err());
        let e = NetworkRecord::decode(r#"{"allowInternetAccess":true,"denyOut":["nope"]}"#)
            .unwrap_err();
        assert!(e.starts_with("denyOut: "), "{e}");
    }

    fn sandbox(id: &str, template_id: &str, state: SandboxState) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            template_id: template_id.into(),
            template_name: "base".into(),
            state,
            sandbox_env: BTreeMap::from([("A".into(), "a=b".into()), ("E".into(), String::new())]),
            metadata: BTreeMap::from([("owner".into(), "me".into())]),
            started_at: 1,
            end_at: 2,
            ended_at: None,
            cpu_count: 2,
            memory_mb: 1024,
            disk_size_mb: 4096,
            paused_remaining_ms: None,
            access_token: None,
            network: Some(r#"{"allowInternetAccess":false}"#.into()),
            pids: Some(1024),
            pause_mode: None,
            lifecycle: Lifecycle::default(),
        }
    }

    #[tokio::test]
    async fn migrates_once_and_round_trips_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hutch.db");
        let db = Db::open(&path).unwrap();
        drop(db);
        // Reopening an up-to-date database is a no-op.
        let db = Db::open(&path).unwrap();

        assert!(!db.has_api_keys().unwrap());
        db.insert_api_key("abc", "hutch_12", 5).unwrap();
        assert!(db.has_api_keys().unwrap());
        assert!(db.api_key_valid("abc".into()).await.unwrap());
        assert!(!db.api_key_valid("abd".into()).await.unwrap());

        let t = TemplateRow {
            id: "t1".into(),
            name: "base".into(),
            metadata: "{}".into(),
            created_at: 3,
        };
        assert!(db.insert_template(t.clone()).await.unwrap());
        assert!(
            !db.insert_template(TemplateRow {
                id: "t2".into(),
                ..t
            })
            .await
            .unwrap()
        );
        assert_eq!(
            db.find_template("base".into()).await.unwrap().unwrap().id,
            "t1"
        );
        assert_eq!(
            db.find_template("t1".into()).await.unwrap().unwrap().name,
            "base"
        );
        assert!(db.find_template("t2".into()).await.unwrap().is_none());

        db.insert_sandbox(sandbox("s1", "t1", SandboxState::Starting))
            .await
            .unwrap();
        assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 1);
        db.set_running("s1".into(), 99).await.unwrap();
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_eq!(s.state, SandboxState::Running);
        assert_eq!(s.end_at, 99);
        assert_eq!(s.sandbox_env["A"], "a=b");
        assert_eq!(s.sandbox_env["E"], "");
        assert_eq!(s.memory_mb, 1024);
        assert_eq!(s.pids, Some(1024));
        let running = db.sandboxes_in(&[SandboxState::Running]).await.unwrap();
        assert_eq!(running.len(), 1);
        db.set_paused("s1".into(), 42, PauseMode::Memory)
            .await
            .unwrap();
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_eq!(
            (s.state, s.paused_remaining_ms, s.pause_mode),
            (SandboxState::Paused, Some(42), Some(PauseMode::Memory))
        );
        // A memory pause can become a filesystem one.
        db.set_paused("s1".into(), 42, PauseMode::Filesystem)
            .await
            .unwrap();
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_eq!(s.pause_mode, Some(PauseMode::Filesystem));
        assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 1);
        assert!(
            db.sandboxes_in(&[SandboxState::Running])
                .await
                .unwrap()
                .is_empty()
        );
        db.set_running("s1".into(), 120).await.unwrap();
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_eq!(
            (s.state, s.end_at, s.paused_remaining_ms, s.pause_mode),
            (SandboxState::Running, 120, None, None)
        );
        db.mark_killed("s1".into(), 100).await.unwrap();
        assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 0);
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_eq!((s.state, s.ended_at), (SandboxState::Killed, Some(100)));
        // A killed sandbox cannot be paused.
        db.set_paused("s1".into(), 1, PauseMode::Memory)
            .await
            .unwrap();
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_eq!(s.state, SandboxState::Killed);
    }

    #[tokio::test]
    async fn lifecycles_round_trip_and_old_paused_rows_were_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hutch.db");
        // A database at schema 5 with a paused row.
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for sql in &MIGRATIONS[..5] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 5).unwrap();
            tx.execute(
                "INSERT INTO sandboxes (id, template_id, template_name, state, sandbox_env,
                     metadata, started_at, end_at, cpu_count, memory_mb, disk_size_mb,
                     paused_remaining_ms)
                 VALUES ('old', 't', 'bb', 'paused', '{}', '{}', 1, 2, 2, 512, 2048, 7)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.get_sandbox("old".into()).await.unwrap().unwrap();
        assert_eq!(old.pause_mode, Some(PauseMode::Memory));
        assert_eq!(old.lifecycle, Lifecycle::default());

        for (id, lifecycle) in [
            (
                "fs",
                Lifecycle {
                    auto_pause: Some(PauseMode::Filesystem),
                    auto_resume: false,
                },
            ),
            (
                "mem",
                Lifecycle {
                    auto_pause: Some(PauseMode::Memory),
                    auto_resume: true,
                },
            ),
        ] {
            let mut row = sandbox(id, "t", SandboxState::Running);
            row.lifecycle = lifecycle;
            db.insert_sandbox(row).await.unwrap();
            let back = db.get_sandbox(id.into()).await.unwrap().unwrap();
            assert_eq!((back.lifecycle, back.pause_mode), (lifecycle, None));
        }
    }

    #[tokio::test]
    async fn replacing_a_template_under_its_own_id_hides_the_old_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hutch.db")).unwrap();
        let row = |metadata: &str| TemplateRow {
            id: "t1".into(),
            name: "app".into(),
            metadata: metadata.into(),
            created_at: 1,
        };
        assert!(db.insert_template(row("v1")).await.unwrap());
        db.insert_sandbox(sandbox("s1", "t1", SandboxState::Running))
            .await
            .unwrap();
        assert_eq!(
            db.replace_template(row("v2")).await.unwrap(),
            Some("t1".into())
        );
        let new = db.find_template("app".into()).await.unwrap().unwrap();
        assert_eq!((new.id.as_str(), new.metadata.as_str()), ("t1", "v2"));
        // The sandbox of the old build counts for the hidden row, which
        // stays until it ends.
        let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
        assert_ne!(s.template_id, "t1");
        let hidden = db
            .find_template(s.template_id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hidden.metadata, "v1");
        assert_eq!(hidden.name, format!("app@{}", s.template_id));
        assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 0);
        assert_eq!(db.live_sandboxes_of(s.template_id).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn limits_round_trip_and_old_rows_have_no_pids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hutch.db");
        // A database at schema 4, with a row from before the pids column.
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for sql in &MIGRATIONS[..4] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 4).unwrap();
            tx.execute(
                "INSERT INTO sandboxes (id, template_id, template_name, state, sandbox_env,
                     metadata, started_at, end_at, cpu_count, memory_mb, disk_size_mb)
                 VALUES ('old', 't', 'bb', 'running', '{}', '{}', 1, 2, 8, 16000, 90000)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.get_sandbox("old".into()).await.unwrap().unwrap();
        assert_eq!((old.cpu_count, old.pids), (8, None));
        let mut new = sandbox("new", "t", SandboxState::Running);
        new.cpu_count = 1;
        new.memory_mb = 128;
        new.disk_size_mb = 64;
        new.pids = Some(100);
        db.insert_sandbox(new).await.unwrap();
        let new = db.get_sandbox("new".into()).await.unwrap().unwrap();
        assert_eq!(
            (new.cpu_count, new.memory_mb, new.disk_size_mb, new.pids),
            (1, 128, 64, Some(100))
        );
    }

    #[tokio::test]
    async fn api_keys_are_listed_and_revoked_but_never_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hutch.db")).unwrap();
        db.insert_api_key("h1", "hutch_1", 1).unwrap();
        // Read (and kept in memory) before the changes below: each change
        // is seen by the next check.
        assert!(db.api_key_valid("h1".into()).await.unwrap());
        assert!(!db.api_key_valid("h2".into()).await.unwrap());
        let first = db.list_api_keys().await.unwrap()[0].id;
        assert_eq!(db.revoke_api_key(first, 5).await.unwrap(), Revoke::LastKey);
        let second = db
            .create_api_key("h2".into(), "hutch_2".into(), 2)
            .await
            .unwrap();
        assert!(db.api_key_valid("h2".into()).await.unwrap());
        assert_eq!(second.prefix, "hutch_2");
        assert_eq!(db.list_api_keys().await.unwrap().len(), 2);
        assert_eq!(db.revoke_api_key(first, 5).await.unwrap(), Revoke::Revoked);
        assert!(!db.api_key_valid("h1".into()).await.unwrap());
        assert_eq!(db.revoke_api_key(first, 6).await.unwrap(), Revoke::NotFound);
        assert_eq!(db.revoke_api_key(999, 6).await.unwrap(), Revoke::NotFound);
        assert_eq!(
            db.revoke_api_key(second.id, 6).await.unwrap(),
            Revoke::LastKey
        );
        let keys = db.list_api_keys().await.unwrap();
        assert_eq!(keys[0].revoked_at, Some(5));
        assert_eq!(keys[1].revoked_at, None);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hutch.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 999).unwrap();
        }
        assert!(matches!(
            Db::open(&path),
            Err(DbError::TooNew { found: 999, .. })
        ));
    }
}
