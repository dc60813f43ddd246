//! The embedded store: one SQLite file (`DATA/hutch.db`, WAL mode).
//!
//! The schema is versioned with `PRAGMA user_version`: `MIGRATIONS[i]`
//! takes the schema from version `i` to `i + 1`; opening a database applies
//! the missing ones in one transaction.
//!
//! Queries run on tokio's blocking pool, one at a time (a mutex around the
//! single connection).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    ApiKeyRow, DbError, KeyKind, KeyOwner, LIVE_STATES, NODE_COLUMNS, NewKey, NodeBeat, NodeRow,
    PLACEMENT_COLUMNS, PauseMode, Placement, Revoke, SANDBOX_COLUMNS, SandboxColumns, SandboxRow,
    SandboxState, Spawns, Store, TagRow, TeamRow, TemplateRow, VolumeRow, int, node_row,
    placement_row,
};

/// The template columns every query reads, in [`template_row`]'s order.
const TEMPLATE_COLUMNS: &str = "id, name, metadata, created_at, build_id, public, team_id";

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
    // 7: every template row is a build with its own id (existing rows get
    // a random UUID) and a public flag; tags name builds of a template.
    "ALTER TABLE templates ADD COLUMN build_id TEXT;
    UPDATE templates SET build_id = lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)
        || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
        || '-' || hex(randomblob(6)));
    ALTER TABLE templates ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE template_tags (
        name        TEXT NOT NULL,          -- the template's name
        tag         TEXT NOT NULL,
        template_id TEXT NOT NULL,          -- the build (template row) it names
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (name, tag)
    );
    CREATE INDEX template_tags_template ON template_tags (template_id);",
    // 8: requests to a sandbox's ports: the token they need
    // (`allowPublicTraffic: false`) and the Host they are given.
    "ALTER TABLE sandboxes ADD COLUMN traffic_token TEXT;
    ALTER TABLE sandboxes ADD COLUMN mask_request_host TEXT;",
    // 9: volumes, and the volumes each sandbox mounts.
    "CREATE TABLE volumes (
        id          TEXT PRIMARY KEY,       -- a UUID
        name        TEXT NOT NULL,
        size_mb     INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        deleted_at  INTEGER                -- its data goes once no sandbox uses it
    );
    CREATE UNIQUE INDEX volumes_name ON volumes (name) WHERE deleted_at IS NULL;
    ALTER TABLE sandboxes ADD COLUMN volume_mounts TEXT; -- JSON [MountRecord]",
    // 10: teams. Every key, template, sandbox and volume belongs to one;
    // the rows from before teams go to the default team made here. Keys
    // get a public id (a UUID), a name, a kind and their last characters.
    "CREATE TABLE teams (
        id          TEXT PRIMARY KEY,       -- a UUID
        name        TEXT NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL,       -- Unix ms
        is_default  INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX teams_default ON teams (is_default) WHERE is_default = 1;
    INSERT INTO teams (id, name, created_at, is_default)
        VALUES (lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)
        || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
        || '-' || hex(randomblob(6))), 'default', CAST(strftime('%s', 'now') AS INTEGER) * 1000, 1);
    ALTER TABLE api_keys ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN uuid TEXT;
    ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'api_key'; -- api_key | access_token
    ALTER TABLE api_keys ADD COLUMN suffix TEXT NOT NULL DEFAULT '';
    UPDATE api_keys SET uuid = lower(
        hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2)
        || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
        || '-' || hex(randomblob(6))),
        kind = CASE WHEN substr(prefix, 1, 7) = 'sk_e2b_' THEN 'access_token' ELSE 'api_key' END,
        name = CASE WHEN substr(prefix, 1, 7) = 'sk_e2b_' THEN 'access token' ELSE 'API key' END;
    CREATE UNIQUE INDEX api_keys_uuid ON api_keys (uuid);
    ALTER TABLE templates ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE sandboxes ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE volumes ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    UPDATE api_keys SET team_id = (SELECT id FROM teams WHERE is_default = 1);
    UPDATE templates SET team_id = (SELECT id FROM teams WHERE is_default = 1);
    UPDATE sandboxes SET team_id = (SELECT id FROM teams WHERE is_default = 1);
    UPDATE volumes SET team_id = (SELECT id FROM teams WHERE is_default = 1);
    DROP INDEX volumes_name;
    CREATE UNIQUE INDEX volumes_name ON volumes (team_id, name) WHERE deleted_at IS NULL;",
    // 11: nodes, as their heartbeats report them, with the sums of the
    // placements on them; and placements, which node each sandbox is on.
    "CREATE TABLE nodes (
        id              TEXT PRIMARY KEY,   -- the node's name
        url             TEXT NOT NULL,      -- its node API
        instance_id     TEXT NOT NULL,      -- this run of it
        version         TEXT NOT NULL,
        cap_cpus        INTEGER NOT NULL,   -- what it admits
        cap_memory_mb   INTEGER NOT NULL,
        cap_sandboxes   INTEGER NOT NULL,
        alloc_cpus      INTEGER NOT NULL DEFAULT 0, -- the sums of its placements
        alloc_memory_mb INTEGER NOT NULL DEFAULT 0,
        alloc_sandboxes INTEGER NOT NULL DEFAULT 0,
        sandboxes       INTEGER NOT NULL,   -- how many it reports holding
        layers          TEXT NOT NULL,      -- JSON array: the layers it holds
        registered_at   INTEGER NOT NULL,   -- Unix ms: its instance's first heartbeat
        heartbeat_at    INTEGER NOT NULL,   -- Unix ms
        lease_until     INTEGER NOT NULL    -- Unix ms
    );
    CREATE TABLE placements (
        sandbox_id  TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        cpus        INTEGER NOT NULL,
        memory_mb   INTEGER NOT NULL,
        placed_at   INTEGER NOT NULL        -- Unix ms
    );
    CREATE INDEX placements_node ON placements (node_id);",
];

/// The SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, DbError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
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
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn default_team(&self) -> Result<TeamRow, DbError> {
        self.call(|c| {
            Ok(c.query_row(
                "SELECT id, name, created_at, is_default FROM teams WHERE is_default = 1",
                [],
                team_row,
            )?)
        })
        .await
    }

    async fn insert_team(&self, t: TeamRow) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO teams (id, name, created_at, is_default) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (name) DO NOTHING",
                params![t.id, t.name, t.created_at],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_teams(&self) -> Result<Vec<TeamRow>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, name, created_at, is_default FROM teams ORDER BY created_at, name",
            )?;
            let rows = st.query_map([], team_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn has_api_keys(&self) -> Result<bool, DbError> {
        self.call(|c| Ok(c.query_row("SELECT EXISTS (SELECT 1 FROM api_keys)", [], |r| r.get(0))?))
            .await
    }

    async fn insert_api_key(&self, key: NewKey) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                &format!("INSERT OR IGNORE INTO api_keys {NEW_KEY_COLUMNS}"),
                new_key_params(&key),
            )?;
            Ok(())
        })
        .await
    }

    async fn valid_api_keys(&self) -> Result<HashMap<String, KeyOwner>, DbError> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT hash, id, team_id FROM api_keys WHERE revoked_at IS NULL")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    KeyOwner {
                        key_id: r.get(1)?,
                        team_id: r.get(2)?,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
        })
        .await
    }

    async fn create_api_key(&self, key: NewKey) -> Result<ApiKeyRow, DbError> {
        self.call(move |c| {
            c.execute(
                &format!("INSERT INTO api_keys {NEW_KEY_COLUMNS}"),
                new_key_params(&key),
            )?;
            Ok(key.row(c.last_insert_rowid()))
        })
        .await
    }

    async fn list_api_keys(&self, team: String) -> Result<Vec<ApiKeyRow>, DbError> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE team_id = ?1 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([team], api_key_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn rename_api_key(
        &self,
        team: String,
        id: String,
        name: String,
    ) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET name = ?3
                 WHERE team_id = ?1 AND (uuid = ?2 OR CAST(id AS TEXT) = ?2)
                   AND revoked_at IS NULL",
                params![team, id, name],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn revoke_api_key(&self, team: String, id: String, now: i64) -> Result<Revoke, DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let row: Option<i64> = tx
                .query_row(
                    "SELECT id FROM api_keys
                     WHERE team_id = ?1 AND (uuid = ?2 OR CAST(id AS TEXT) = ?2)
                       AND revoked_at IS NULL",
                    [&team, &id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(row) = row else {
                return Ok(Revoke::NotFound);
            };
            let others: i64 = tx.query_row(
                "SELECT COUNT(*) FROM api_keys
                 WHERE team_id = ?1 AND id != ?2 AND revoked_at IS NULL",
                params![team, row],
                |r| r.get(0),
            )?;
            if others == 0 {
                return Ok(Revoke::LastKey);
            }
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
                params![row, now],
            )?;
            tx.commit()?;
            Ok(Revoke::Revoked)
        })
        .await
    }

    async fn insert_template(&self, t: TemplateRow) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO templates (id, name, metadata, created_at, build_id, public, team_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING",
                params![
                    t.id,
                    t.name,
                    t.metadata,
                    t.created_at,
                    t.build_id,
                    t.public,
                    t.team_id
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn replace_template(&self, t: TemplateRow) -> Result<Option<String>, DbError> {
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
                    &format!(
                        "UPDATE sandboxes SET template_id = ?2
                         WHERE template_id = ?1 AND state IN {LIVE_STATES}"
                    ),
                    [&t.id, &hidden],
                )?;
                tx.execute(
                    "UPDATE template_tags SET template_id = ?2 WHERE template_id = ?1",
                    [&t.id, &hidden],
                )?;
            } else if let Some(old) = &old {
                tx.execute(
                    "UPDATE templates SET name = name || '@' || id WHERE id = ?1",
                    [old],
                )?;
            }
            tx.execute(
                "INSERT INTO templates (id, name, metadata, created_at, build_id, public, team_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.id,
                    t.name,
                    t.metadata,
                    t.created_at,
                    t.build_id,
                    t.public,
                    t.team_id
                ],
            )?;
            tx.commit()?;
            Ok(old)
        })
        .await
    }

    async fn find_template(&self, id_or_name: String) -> Result<Option<TemplateRow>, DbError> {
        self.call(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM templates
                     WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
                ),
                [id_or_name],
                template_row,
            )
            .optional()?)
        })
        .await
    }

    async fn list_templates(&self) -> Result<Vec<TemplateRow>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY name"
            ))?;
            let rows = st.query_map([], template_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete_template(&self, id: String) -> Result<(), DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM template_tags WHERE template_id = ?1", [&id])?;
            tx.execute("DELETE FROM templates WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn set_template_public(&self, id: String, public: bool) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE templates SET public = ?2 WHERE id = ?1",
                params![id, public],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn set_tags(
        &self,
        name: String,
        tags: Vec<String>,
        template_id: String,
        now: i64,
    ) -> Result<(), DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for tag in &tags {
                tx.execute(
                    "INSERT INTO template_tags (name, tag, template_id, created_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name, tag)
                     DO UPDATE SET template_id = excluded.template_id, created_at = excluded.created_at",
                    params![name, tag, template_id, now],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_tags(&self, name: String, tags: Vec<String>) -> Result<Vec<String>, DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut missing = Vec::new();
            for tag in &tags {
                let n = tx.execute(
                    "DELETE FROM template_tags WHERE name = ?1 AND tag = ?2",
                    [&name, tag],
                )?;
                if n == 0 {
                    missing.push(tag.clone());
                }
            }
            if missing.is_empty() {
                tx.commit()?;
            }
            Ok(missing)
        })
        .await
    }

    async fn delete_tags_of(&self, name: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute("DELETE FROM template_tags WHERE name = ?1", [name])?;
            Ok(())
        })
        .await
    }

    async fn list_tags(&self, name: Option<String>) -> Result<Vec<TagRow>, DbError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT name, tag, template_id, created_at FROM template_tags
                 WHERE ?1 IS NULL OR name = ?1 ORDER BY name, tag",
            )?;
            let rows = st.query_map([name], |r| {
                Ok(TagRow {
                    name: r.get(0)?,
                    tag: r.get(1)?,
                    template_id: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn insert_sandbox(&self, s: SandboxRow) -> Result<(), DbError> {
        let s = SandboxColumns::of(s);
        self.call(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO sandboxes ({SANDBOX_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                         ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
                ),
                params![
                    s.id,
                    s.template_id,
                    s.template_name,
                    s.state,
                    s.sandbox_env,
                    s.metadata,
                    s.started_at,
                    s.end_at,
                    s.ended_at,
                    s.cpu_count,
                    s.memory_mb,
                    s.disk_size_mb,
                    s.paused_remaining_ms,
                    s.access_token,
                    s.network,
                    s.pids,
                    s.pause_mode,
                    s.auto_pause,
                    s.auto_resume,
                    s.traffic_token,
                    s.mask_request_host,
                    s.volume_mounts,
                    s.team_id,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_running(&self, id: String, end_at: i64) -> Result<(), DbError> {
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

    async fn set_paused(
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

    async fn set_end_at(&self, id: String, end_at: i64) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "UPDATE sandboxes SET end_at = ?2 WHERE id = ?1",
                params![id, end_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_network(&self, id: String, network: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "UPDATE sandboxes SET network = ?2 WHERE id = ?1",
                params![id, network],
            )?;
            Ok(())
        })
        .await
    }

    async fn mark_killed(&self, id: String, now: i64) -> Result<(), DbError> {
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

    async fn delete_sandbox(&self, id: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    async fn get_sandbox(&self, id: String) -> Result<Option<SandboxRow>, DbError> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"),
                [id],
                sandbox_columns,
            )
            .optional()?
            .map(SandboxColumns::into_row)
            .transpose()
        })
        .await
    }

    async fn sandboxes_in(&self, states: &[SandboxState]) -> Result<Vec<SandboxRow>, DbError> {
        let states: Vec<&'static str> = states.iter().map(|s| s.as_str()).collect();
        self.call(move |c| {
            let placeholders = vec!["?"; states.len()].join(", ");
            let mut st = c.prepare(&format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state IN ({placeholders})
                 ORDER BY started_at, id"
            ))?;
            let rows = st.query_map(rusqlite::params_from_iter(states), sandbox_columns)?;
            rows.map(|row| row?.into_row()).collect()
        })
        .await
    }

    async fn live_sandboxes_of(&self, template_id: String) -> Result<u64, DbError> {
        self.call(move |c| {
            let n: i64 = c.query_row(
                &format!(
                    "SELECT COUNT(*) FROM sandboxes WHERE template_id = ?1 AND state IN {LIVE_STATES}"
                ),
                [template_id],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn spawns_by_template(&self) -> Result<BTreeMap<String, Spawns>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT template_name, COUNT(*), MAX(started_at) FROM sandboxes
                 GROUP BY template_name",
            )?;
            let rows = st.query_map([], |r| {
                let n: i64 = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    Spawns {
                        count: u64::try_from(n).unwrap_or(0),
                        last_at: r.get(2)?,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    async fn insert_volume(&self, v: VolumeRow) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO volumes (id, name, size_mb, created_at, deleted_at, team_id)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)
                 ON CONFLICT (team_id, name) WHERE deleted_at IS NULL DO NOTHING",
                params![
                    v.id,
                    v.name,
                    i64::try_from(v.size_mb).unwrap_or(i64::MAX),
                    v.created_at,
                    v.team_id
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeRow>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, name, size_mb, created_at, deleted_at, team_id FROM volumes
                 ORDER BY created_at, id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(VolumeRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    size_mb: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    created_at: r.get(3)?,
                    deleted_at: r.get(4)?,
                    team_id: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn mark_volume_deleted(&self, id: String, now: i64) -> Result<bool, DbError> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE volumes SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn purge_volume(&self, id: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM volumes WHERE id = ?1 AND deleted_at IS NOT NULL",
                [id],
            )?;
            Ok(())
        })
        .await
    }

    async fn node_heartbeat(
        &self,
        beat: NodeBeat,
        now: i64,
        lease_until: i64,
    ) -> Result<(), DbError> {
        let layers = serde_json::to_string(&beat.layers).unwrap_or_else(|_| "[]".to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO nodes (id, url, instance_id, version, cap_cpus, cap_memory_mb,
                     cap_sandboxes, sandboxes, layers, registered_at, heartbeat_at, lease_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)
                 ON CONFLICT (id) DO UPDATE SET
                     registered_at = CASE WHEN nodes.instance_id = excluded.instance_id
                         THEN nodes.registered_at ELSE excluded.registered_at END,
                     url = excluded.url, instance_id = excluded.instance_id,
                     version = excluded.version, cap_cpus = excluded.cap_cpus,
                     cap_memory_mb = excluded.cap_memory_mb,
                     cap_sandboxes = excluded.cap_sandboxes, sandboxes = excluded.sandboxes,
                     layers = excluded.layers, heartbeat_at = excluded.heartbeat_at,
                     lease_until = excluded.lease_until",
                params![
                    beat.id,
                    beat.url,
                    beat.instance_id,
                    beat.version,
                    int(beat.capacity.cpus),
                    int(beat.capacity.memory_mb),
                    int(beat.capacity.sandboxes),
                    int(beat.sandboxes),
                    layers,
                    now,
                    lease_until
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))?;
            let rows = st
                .query([])?
                .and_then(|r| node_row(|i| Ok(r.get(i)?), |i| Ok(r.get(i)?)));
            rows.collect()
        })
        .await
    }

    async fn place_sandbox(&self, p: Placement, now: i64) -> Result<bool, DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            // `cap - alloc` rather than `alloc + this`: never overflows.
            let n = tx.execute(
                "UPDATE nodes SET alloc_cpus = alloc_cpus + ?2,
                     alloc_memory_mb = alloc_memory_mb + ?3, alloc_sandboxes = alloc_sandboxes + 1
                 WHERE id = ?1 AND lease_until > ?4
                   AND ?2 <= cap_cpus - alloc_cpus AND ?3 <= cap_memory_mb - alloc_memory_mb
                   AND 1 <= cap_sandboxes - alloc_sandboxes",
                params![p.node_id, int(p.cpus), int(p.memory_mb), now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO placements (sandbox_id, node_id, cpus, memory_mb, placed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sandbox_id) DO NOTHING",
                params![p.sandbox_id, p.node_id, int(p.cpus), int(p.memory_mb), now],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn unplace_sandbox(&self, sandbox_id: String) -> Result<Option<String>, DbError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let placed: Option<(String, i64, i64)> = tx
                .query_row(
                    "DELETE FROM placements WHERE sandbox_id = ?1
                     RETURNING node_id, cpus, memory_mb",
                    [sandbox_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((node, cpus, memory_mb)) = placed else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE nodes SET alloc_cpus = MAX(alloc_cpus - ?2, 0),
                     alloc_memory_mb = MAX(alloc_memory_mb - ?3, 0),
                     alloc_sandboxes = MAX(alloc_sandboxes - 1, 0)
                 WHERE id = ?1",
                params![node, cpus, memory_mb],
            )?;
            tx.commit()?;
            Ok(Some(node))
        })
        .await
    }

    async fn placement_of(&self, sandbox_id: String) -> Result<Option<Placement>, DbError> {
        self.call(move |c| {
            use rusqlite::OptionalExtension as _;
            c.query_row(
                &format!("SELECT {PLACEMENT_COLUMNS} FROM placements WHERE sandbox_id = ?1"),
                [sandbox_id],
                |r| Ok(placement_row(|i| Ok(r.get(i)?), |i| Ok(r.get(i)?))),
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_placements(&self) -> Result<Vec<Placement>, DbError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {PLACEMENT_COLUMNS} FROM placements ORDER BY sandbox_id"
            ))?;
            let rows = st
                .query([])?
                .and_then(|r| placement_row(|i| Ok(r.get(i)?), |i| Ok(r.get(i)?)));
            rows.collect()
        })
        .await
    }
}

fn team_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TeamRow> {
    Ok(TeamRow {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        is_default: r.get(3)?,
    })
}

/// The columns and values of an insert of a [`NewKey`].
const NEW_KEY_COLUMNS: &str = "(uuid, team_id, name, kind, hash, prefix, suffix, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

fn new_key_params(k: &NewKey) -> impl rusqlite::Params + '_ {
    (
        k.uuid.as_str(),
        k.team_id.as_str(),
        k.name.as_str(),
        k.kind.as_str(),
        k.hash.as_str(),
        k.prefix.as_str(),
        k.suffix.as_str(),
        k.created_at,
    )
}

/// The key columns every query reads, in [`api_key_row`]'s order.
const KEY_COLUMNS: &str = "id, uuid, team_id, name, kind, prefix, suffix, created_at, revoked_at";

fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        uuid: r.get(1)?,
        team_id: r.get(2)?,
        name: r.get(3)?,
        kind: KeyKind::parse(&r.get::<_, String>(4)?),
        prefix: r.get(5)?,
        suffix: r.get(6)?,
        created_at: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        id: r.get(0)?,
        name: r.get(1)?,
        metadata: r.get(2)?,
        created_at: r.get(3)?,
        build_id: r.get(4)?,
        public: r.get(5)?,
        team_id: r.get(6)?,
    })
}

fn sandbox_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxColumns> {
    Ok(SandboxColumns {
        id: r.get(0)?,
        template_id: r.get(1)?,
        template_name: r.get(2)?,
        state: r.get(3)?,
        sandbox_env: r.get(4)?,
        metadata: r.get(5)?,
        started_at: r.get(6)?,
        end_at: r.get(7)?,
        ended_at: r.get(8)?,
        cpu_count: r.get(9)?,
        memory_mb: r.get(10)?,
        disk_size_mb: r.get(11)?,
        paused_remaining_ms: r.get(12)?,
        access_token: r.get(13)?,
        network: r.get(14)?,
        pids: r.get(15)?,
        pause_mode: r.get(16)?,
        auto_pause: r.get(17)?,
        auto_resume: r.get(18)?,
        traffic_token: r.get(19)?,
        mask_request_host: r.get(20)?,
        volume_mounts: r.get(21)?,
        team_id: r.get(22)?,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
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

/// Databases written by older Hutch versions (the shared cases are in
/// `tests.rs`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Lifecycle, PauseMode};

    #[tokio::test]
    async fn old_paused_rows_were_frozen() {
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
        let db = SqliteStore::open(&path).unwrap();
        let old = db.get_sandbox("old".into()).await.unwrap().unwrap();
        assert_eq!(old.pause_mode, Some(PauseMode::Memory));
        assert_eq!(old.lifecycle, Lifecycle::default());
    }

    #[tokio::test]
    async fn old_rows_have_no_pids() {
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
        let db = SqliteStore::open(&path).unwrap();
        let old = db.get_sandbox("old".into()).await.unwrap().unwrap();
        assert_eq!((old.cpu_count, old.pids), (8, None));
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
            SqliteStore::open(&path).map(|_| ()),
            Err(DbError::TooNew { found: 999, .. })
        ));
    }
}
