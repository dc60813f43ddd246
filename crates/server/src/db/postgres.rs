//! The PostgreSQL store (`--database-url postgres://…`): a connection pool,
//! and the schema in `MIGRATIONS`, applied in order when the store opens
//! (`hutch_schema.version` is the number applied; a transaction-level
//! advisory lock keeps two servers from migrating at once).
//!
//! One server per database, or several control planes: the store holds a
//! session-level advisory lock on a connection of its own for its whole
//! life — exclusive for `hutch serve` ([`Access::Exclusive`]), so that a
//! second server pointed at the same database fails to start instead of
//! adopting (and reaping) the first one's sandboxes; shared for the
//! replicas of a control plane ([`Access::Shared`]), which keeps a
//! `hutch serve` away from their database. PostgreSQL drops the lock with
//! the session when it restarts: the store checks its connection every
//! [`HOLDER_CHECK`] and, once PostgreSQL is back, connects again and takes
//! the lock again. If another server took it meanwhile, this one stops
//! (exit status 1) rather than share the database.
//!
//! Replicas share the work that must run once through a second lock,
//! [`LEADER_LOCK`], that one of them holds at a time on the same connection
//! ([`Store::leads`]); and learn of each other's changes to sandboxes from
//! `NOTIFY hutch_sandboxes` (a trigger sends each changed row's id:
//! [`Store::sandbox_changes`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use super::{
    Access, ApiKeyRow, DbError, KeyKind, KeyOwner, LIVE_STATES, NODE_COLUMNS, NewKey, NodeBeat,
    NodeRow, PLACEMENT_COLUMNS, PauseMode, Placement, Revoke, SANDBOX_COLUMNS, SandboxChange,
    SandboxColumns, SandboxRow, SandboxState, Spawns, Store, TagRow, TeamRow, TemplateRow,
    VolumeRow, int, node_row, placement_row,
};

/// Schema migrations, in order; `hutch_schema.version` is the number
/// applied. The same tables as the SQLite store's, in PostgreSQL's types.
const MIGRATIONS: &[&str] = &[
    // 1: API keys, templates, sandboxes.
    "CREATE TABLE api_keys (
        id          BIGSERIAL PRIMARY KEY,
        hash        TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the key
        prefix      TEXT NOT NULL,          -- first characters, for display
        created_at  BIGINT NOT NULL,        -- Unix ms
        revoked_at  BIGINT                  -- Unix ms; NULL while valid
    );
    CREATE TABLE templates (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        metadata    TEXT NOT NULL,          -- TemplateMetadata::to_json
        created_at  BIGINT NOT NULL
    );
    CREATE TABLE sandboxes (
        id                  TEXT PRIMARY KEY,
        template_id         TEXT NOT NULL,
        template_name       TEXT NOT NULL,
        state               TEXT NOT NULL,  -- starting | running | paused | killed
        sandbox_env         TEXT NOT NULL,  -- JSON object: layer 3
        metadata            TEXT NOT NULL,  -- JSON object: user metadata
        started_at          BIGINT NOT NULL,
        end_at              BIGINT NOT NULL,
        ended_at            BIGINT,
        cpu_count           BIGINT NOT NULL,
        memory_mb           BIGINT NOT NULL,
        disk_size_mb        BIGINT NOT NULL,
        paused_remaining_ms BIGINT,         -- while paused
        access_token        TEXT,
        network             TEXT,           -- JSON NetworkRecord
        pids                BIGINT,
        pause_mode          TEXT,           -- 'memory' | 'filesystem' while paused
        auto_pause          TEXT,           -- at its timeout: NULL kills it, else pause mode
        auto_resume         BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX sandboxes_state ON sandboxes (state);
    CREATE INDEX sandboxes_template ON sandboxes (template_id, state);",
    // 7: every template row is a build with its own id (existing rows get
    // a random UUID) and a public flag; tags name builds of a template.
    "ALTER TABLE templates ADD COLUMN build_id TEXT NOT NULL DEFAULT gen_random_uuid()::text;
    ALTER TABLE templates ALTER COLUMN build_id DROP DEFAULT;
    ALTER TABLE templates ADD COLUMN public BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE TABLE template_tags (
        name        TEXT NOT NULL,          -- the template's name
        tag         TEXT NOT NULL,
        template_id TEXT NOT NULL,          -- the build (template row) it names
        created_at  BIGINT NOT NULL,
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
        size_mb     BIGINT NOT NULL,
        created_at  BIGINT NOT NULL,
        deleted_at  BIGINT                -- its data goes once no sandbox uses it
    );
    CREATE UNIQUE INDEX volumes_name ON volumes (name) WHERE deleted_at IS NULL;
    ALTER TABLE sandboxes ADD COLUMN volume_mounts TEXT; -- JSON [MountRecord]",
    // 10: teams. Every key, template, sandbox and volume belongs to one;
    // the rows from before teams go to the default team made here. Keys
    // get a public id (a UUID), a name, a kind and their last characters.
    "CREATE TABLE teams (
        id          TEXT PRIMARY KEY,       -- a UUID
        name        TEXT NOT NULL UNIQUE,
        created_at  BIGINT NOT NULL,        -- Unix ms
        is_default  BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE UNIQUE INDEX teams_default ON teams (is_default) WHERE is_default;
    INSERT INTO teams (id, name, created_at, is_default)
        VALUES (gen_random_uuid()::text, 'default',
            (extract(epoch FROM now()) * 1000)::bigint, TRUE);
    ALTER TABLE api_keys ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN uuid TEXT NOT NULL DEFAULT gen_random_uuid()::text;
    ALTER TABLE api_keys ALTER COLUMN uuid DROP DEFAULT;
    ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'api_key'; -- api_key | access_token
    ALTER TABLE api_keys ADD COLUMN suffix TEXT NOT NULL DEFAULT '';
    UPDATE api_keys SET
        kind = CASE WHEN substr(prefix, 1, 7) = 'sk_e2b_' THEN 'access_token' ELSE 'api_key' END,
        name = CASE WHEN substr(prefix, 1, 7) = 'sk_e2b_' THEN 'access token' ELSE 'API key' END;
    CREATE UNIQUE INDEX api_keys_uuid ON api_keys (uuid);
    ALTER TABLE templates ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE sandboxes ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE volumes ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
    UPDATE api_keys SET team_id = (SELECT id FROM teams WHERE is_default);
    UPDATE templates SET team_id = (SELECT id FROM teams WHERE is_default);
    UPDATE sandboxes SET team_id = (SELECT id FROM teams WHERE is_default);
    UPDATE volumes SET team_id = (SELECT id FROM teams WHERE is_default);
    DROP INDEX volumes_name;
    CREATE UNIQUE INDEX volumes_name ON volumes (team_id, name) WHERE deleted_at IS NULL;",
    // 11: nodes, as their heartbeats report them, with the sums of the
    // placements on them; and placements, which node each sandbox is on.
    "CREATE TABLE nodes (
        id              TEXT PRIMARY KEY,   -- the node's name
        url             TEXT NOT NULL,      -- its node API
        instance_id     TEXT NOT NULL,      -- this run of it
        version         TEXT NOT NULL,
        cap_cpus        BIGINT NOT NULL,    -- what it admits
        cap_memory_mb   BIGINT NOT NULL,
        cap_sandboxes   BIGINT NOT NULL,
        alloc_cpus      BIGINT NOT NULL DEFAULT 0, -- the sums of its placements
        alloc_memory_mb BIGINT NOT NULL DEFAULT 0,
        alloc_sandboxes BIGINT NOT NULL DEFAULT 0,
        sandboxes       BIGINT NOT NULL,    -- how many it reports holding
        layers          TEXT NOT NULL,      -- JSON array: the layers it holds
        registered_at   BIGINT NOT NULL,    -- Unix ms: its instance's first heartbeat
        heartbeat_at    BIGINT NOT NULL,    -- Unix ms
        lease_until     BIGINT NOT NULL     -- Unix ms
    );
    CREATE TABLE placements (
        sandbox_id  TEXT PRIMARY KEY,
        node_id     TEXT NOT NULL,
        cpus        BIGINT NOT NULL,
        memory_mb   BIGINT NOT NULL,
        placed_at   BIGINT NOT NULL         -- Unix ms
    );
    CREATE INDEX placements_node ON placements (node_id);",
    // 12: every change to a sandbox row is announced to the control
    // planes sharing the database (`LISTEN hutch_sandboxes`), with its id.
    "CREATE FUNCTION hutch_sandbox_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('hutch_sandboxes', COALESCE(NEW.id, OLD.id));
        RETURN NULL;
    END $$;
    CREATE TRIGGER sandboxes_changed AFTER INSERT OR UPDATE OR DELETE ON sandboxes
        FOR EACH ROW EXECUTE FUNCTION hutch_sandbox_changed();",
];

/// The channel sandbox changes are announced on.
const CHANGES_CHANNEL: &str = "hutch_sandboxes";

/// The template columns every query reads, in [`template_row`]'s order.
const TEMPLATE_COLUMNS: &str = "id, name, metadata, created_at, build_id, public, team_id";

/// The advisory lock keys (`pg_advisory_lock(bigint)`): "hutch" in ASCII,
/// then one for migrations and one for the server holding the database.
const MIGRATION_LOCK: i64 = 0x6875_7463_6800_0001;
const SERVER_LOCK: i64 = 0x6875_7463_6800_0002;
/// Held by the one control plane replica that runs the work that must run
/// once.
const LEADER_LOCK: i64 = 0x6875_7463_6800_0003;

/// How long opening waits for another server's hold on the database to go.
const HOLDER_WAIT: Duration = Duration::from_secs(5);

/// How often the store checks that it still holds the database.
const HOLDER_CHECK: Duration = Duration::from_secs(2);

/// How often a replica checks its connection and tries to lead: a replica
/// that dies leaves the lock to another within about this long.
const LEAD_CHECK: Duration = Duration::from_secs(1);

/// How long a query waits for a free connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
    /// Keeps [`SERVER_LOCK`] held for the store's life ([`keep_holding`]).
    holder: tokio::task::JoinHandle<()>,
    /// Whether this store holds [`LEADER_LOCK`] (always, exclusively).
    leads: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.holder.abort();
    }
}

impl PostgresStore {
    /// Connects, takes the database for this server (alone, or with other
    /// control planes: `access`), and migrates it.
    pub async fn open(url: &str, access: Access) -> Result<PostgresStore, DbError> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name("hutch");
        let holder = take_database(&options, access).await?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        migrate(&pool).await?;
        let leads = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            access == Access::Exclusive,
        ));
        Ok(PostgresStore {
            pool,
            holder: tokio::spawn(keep_holding(options.clone(), holder, access, leads.clone())),
            options,
            leads,
        })
    }
}

/// Connects and takes [`SERVER_LOCK`] on that connection, exclusively or
/// shared. A server restarted at once after a crash may find its previous
/// session not yet closed by PostgreSQL: it waits a little
/// ([`HOLDER_WAIT`]).
async fn take_database(
    options: &PgConnectOptions,
    access: Access,
) -> Result<PgConnection, DbError> {
    let mut holder = PgConnection::connect_with(options).await?;
    let deadline = tokio::time::Instant::now() + HOLDER_WAIT;
    let take = match access {
        Access::Exclusive => "SELECT pg_try_advisory_lock($1)",
        Access::Shared => "SELECT pg_try_advisory_lock_shared($1)",
    };
    loop {
        let taken: bool = sqlx::query_scalar(take)
            .bind(SERVER_LOCK)
            .fetch_one(&mut holder)
            .await?;
        if taken {
            return Ok(holder);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DbError::InUse);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the holding connection every [`HOLDER_CHECK`]; when it is gone
/// (PostgreSQL restarted, or the network dropped it), connects again and
/// takes the lock again as soon as PostgreSQL answers. Another server
/// holding it by then stops this one. A replica ([`Access::Shared`]) also
/// tries to take [`LEADER_LOCK`] on it while it does not hold it, and
/// knows it lost it with the connection.
async fn keep_holding(
    options: PgConnectOptions,
    mut holder: PgConnection,
    access: Access,
    leads: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let check = match access {
        Access::Exclusive => HOLDER_CHECK,
        Access::Shared => LEAD_CHECK,
    };
    loop {
        if access == Access::Shared && !leads.load(Ordering::SeqCst) {
            match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut holder)
                .await
            {
                Ok(true) => {
                    leads.store(true, Ordering::SeqCst);
                    tracing::info!("this control plane now runs the cluster's once-only work");
                }
                Ok(false) => {}
                Err(e) => tracing::debug!("cannot try the leader lock: {e}"),
            }
        }
        tokio::time::sleep(check).await;
        if holder.ping().await.is_ok() {
            continue;
        }
        if access == Access::Shared && leads.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "lost the connection holding the leader lock; another control plane may take it"
            );
        }
        tracing::warn!("lost the connection holding the database; connecting again");
        loop {
            match take_database(&options, access).await {
                Ok(again) => {
                    holder = again;
                    tracing::info!("holding the database again");
                    break;
                }
                Err(DbError::InUse) => {
                    tracing::error!(
                        "another Hutch server took this database while the connection to it was \
                         lost; stopping (one server per database)"
                    );
                    std::process::exit(1);
                }
                Err(e) => {
                    tracing::debug!("the database is still unreachable: {e}");
                    tokio::time::sleep(HOLDER_CHECK).await;
                }
            }
        }
    }
}

/// Forwards `NOTIFY hutch_sandboxes` to `tx` until it is dropped; after
/// the connection is lost (and again at the start), sends
/// [`SandboxChange::All`]: what was announced meanwhile is unknown.
async fn listen_changes(options: PgConnectOptions, tx: tokio::sync::mpsc::Sender<SandboxChange>) {
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(
                &PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await?,
            )
            .await?;
            l.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("cannot listen for sandbox changes yet: {e}");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(LEAD_CHECK).await;
                continue;
            }
        };
        if tx.send(SandboxChange::All).await.is_err() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if tx
                        .send(SandboxChange::One(n.payload().to_owned()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // The connection was lost (and is made again): announce a
                // full look.
                Ok(None) => {
                    if tx.send(SandboxChange::All).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("listening for sandbox changes: {e}");
                    break;
                }
            }
        }
    }
}

async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS hutch_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM hutch_schema")
        .fetch_optional(&mut *tx)
        .await?;
    let version = version.unwrap_or(0);
    if version > known {
        return Err(DbError::TooNew {
            found: version,
            known,
        });
    }
    if version == known {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        tracing::info!("database schema migrated to version {}", i + 1);
    }
    sqlx::query("DELETE FROM hutch_schema")
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO hutch_schema (version) VALUES ($1)")
        .bind(known)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgresql"
    }

    fn leads(&self) -> bool {
        self.leads.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn sandbox_changes(&self) -> Option<tokio::sync::mpsc::Receiver<SandboxChange>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(listen_changes(self.options.clone(), tx));
        Some(rx)
    }

    async fn placement_of(&self, sandbox_id: String) -> Result<Option<Placement>, DbError> {
        sqlx::query(&format!(
            "SELECT {PLACEMENT_COLUMNS} FROM placements WHERE sandbox_id = $1"
        ))
        .bind(sandbox_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| placement_row(|i| Ok(r.try_get(i)?), |i| Ok(r.try_get(i)?)))
        .transpose()
    }

    async fn default_team(&self) -> Result<TeamRow, DbError> {
        let r = sqlx::query("SELECT id, name, created_at, is_default FROM teams WHERE is_default")
            .fetch_one(&self.pool)
            .await?;
        team_row(&r)
    }

    async fn insert_team(&self, t: TeamRow) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO teams (id, name, created_at, is_default) VALUES ($1, $2, $3, FALSE)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(t.id)
        .bind(t.name)
        .bind(t.created_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_teams(&self) -> Result<Vec<TeamRow>, DbError> {
        sqlx::query("SELECT id, name, created_at, is_default FROM teams ORDER BY created_at, name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(team_row)
            .collect()
    }

    async fn has_api_keys(&self) -> Result<bool, DbError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn insert_api_key(&self, key: NewKey) -> Result<(), DbError> {
        bind_new_key(
            sqlx::query(&format!(
                "INSERT INTO api_keys {NEW_KEY_COLUMNS} ON CONFLICT (hash) DO NOTHING"
            )),
            &key,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn valid_api_keys(&self) -> Result<HashMap<String, KeyOwner>, DbError> {
        sqlx::query("SELECT hash, id, team_id FROM api_keys WHERE revoked_at IS NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    KeyOwner {
                        key_id: r.try_get(1)?,
                        team_id: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    async fn create_api_key(&self, key: NewKey) -> Result<ApiKeyRow, DbError> {
        let id: i64 = bind_new_key(
            sqlx::query(&format!(
                "INSERT INTO api_keys {NEW_KEY_COLUMNS} RETURNING id"
            )),
            &key,
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(key.row(id))
    }

    async fn list_api_keys(&self, team: String) -> Result<Vec<ApiKeyRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE team_id = $1 ORDER BY created_at, id"
        ))
        .bind(team)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(api_key_row)
        .collect()
    }

    async fn rename_api_key(
        &self,
        team: String,
        id: String,
        name: String,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "UPDATE api_keys SET name = $3
             WHERE team_id = $1 AND (uuid = $2 OR id::text = $2) AND revoked_at IS NULL",
        )
        .bind(team)
        .bind(id)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_api_key(&self, team: String, id: String, now: i64) -> Result<Revoke, DbError> {
        let mut tx = self.pool.begin().await?;
        // Locks the team's valid keys: a concurrent revoke waits, then sees
        // this one's outcome.
        let valid = sqlx::query(
            "SELECT id, uuid FROM api_keys WHERE team_id = $1 AND revoked_at IS NULL FOR UPDATE",
        )
        .bind(&team)
        .fetch_all(&mut *tx)
        .await?;
        let mut found = None;
        for r in &valid {
            let (row, uuid): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
            if uuid == id || row.to_string() == id {
                found = Some(row);
            }
        }
        let Some(row) = found else {
            return Ok(Revoke::NotFound);
        };
        if valid.len() == 1 {
            return Ok(Revoke::LastKey);
        }
        sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1")
            .bind(row)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Revoke::Revoked)
    }

    async fn insert_template(&self, t: TemplateRow) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO templates (id, name, metadata, created_at, build_id, public, team_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(t.id)
        .bind(t.name)
        .bind(t.metadata)
        .bind(t.created_at)
        .bind(t.build_id)
        .bind(t.public)
        .bind(t.team_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn replace_template(&self, t: TemplateRow) -> Result<Option<String>, DbError> {
        let mut tx = self.pool.begin().await?;
        let old: Option<String> =
            sqlx::query_scalar("SELECT id FROM templates WHERE name = $1 FOR UPDATE")
                .bind(&t.name)
                .fetch_optional(&mut *tx)
                .await?;
        if old.as_ref() == Some(&t.id) {
            let hidden = crate::ids::new_id();
            sqlx::query("UPDATE templates SET id = $2, name = name || '@' || $2 WHERE id = $1")
                .bind(&t.id)
                .bind(&hidden)
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "UPDATE sandboxes SET template_id = $2
                 WHERE template_id = $1 AND state IN {LIVE_STATES}"
            ))
            .bind(&t.id)
            .bind(&hidden)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE template_tags SET template_id = $2 WHERE template_id = $1")
                .bind(&t.id)
                .bind(&hidden)
                .execute(&mut *tx)
                .await?;
        } else if let Some(old) = &old {
            sqlx::query("UPDATE templates SET name = name || '@' || id WHERE id = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO templates (id, name, metadata, created_at, build_id, public, team_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.id)
        .bind(t.name)
        .bind(t.metadata)
        .bind(t.created_at)
        .bind(t.build_id)
        .bind(t.public)
        .bind(t.team_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(old)
    }

    async fn find_template(&self, id_or_name: String) -> Result<Option<TemplateRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates
             WHERE id = $1 OR name = $1 ORDER BY (id = $1) DESC LIMIT 1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(template_row)
        .transpose()
    }

    async fn list_templates(&self) -> Result<Vec<TemplateRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(template_row)
        .collect()
    }

    async fn delete_template(&self, id: String) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM template_tags WHERE template_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_template_public(&self, id: String, public: bool) -> Result<bool, DbError> {
        let done = sqlx::query("UPDATE templates SET public = $2 WHERE id = $1")
            .bind(id)
            .bind(public)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_tags(
        &self,
        name: String,
        tags: Vec<String>,
        template_id: String,
        now: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for tag in &tags {
            sqlx::query(
                "INSERT INTO template_tags (name, tag, template_id, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name, tag)
                 DO UPDATE SET template_id = EXCLUDED.template_id, created_at = EXCLUDED.created_at",
            )
            .bind(&name)
            .bind(tag)
            .bind(&template_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_tags(&self, name: String, tags: Vec<String>) -> Result<Vec<String>, DbError> {
        let mut tx = self.pool.begin().await?;
        let mut missing = Vec::new();
        for tag in &tags {
            let done = sqlx::query("DELETE FROM template_tags WHERE name = $1 AND tag = $2")
                .bind(&name)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                missing.push(tag.clone());
            }
        }
        if missing.is_empty() {
            tx.commit().await?;
        }
        Ok(missing)
    }

    async fn delete_tags_of(&self, name: String) -> Result<(), DbError> {
        sqlx::query("DELETE FROM template_tags WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_tags(&self, name: Option<String>) -> Result<Vec<TagRow>, DbError> {
        sqlx::query(
            "SELECT name, tag, template_id, created_at FROM template_tags
             WHERE $1::text IS NULL OR name = $1 ORDER BY name, tag",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(TagRow {
                name: r.try_get(0)?,
                tag: r.try_get(1)?,
                template_id: r.try_get(2)?,
                created_at: r.try_get(3)?,
            })
        })
        .collect()
    }

    async fn insert_sandbox(&self, s: SandboxRow) -> Result<(), DbError> {
        let s = SandboxColumns::of(s);
        sqlx::query(&format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 $17, $18, $19, $20, $21, $22, $23)"
        ))
        .bind(s.id)
        .bind(s.template_id)
        .bind(s.template_name)
        .bind(s.state)
        .bind(s.sandbox_env)
        .bind(s.metadata)
        .bind(s.started_at)
        .bind(s.end_at)
        .bind(s.ended_at)
        .bind(s.cpu_count)
        .bind(s.memory_mb)
        .bind(s.disk_size_mb)
        .bind(s.paused_remaining_ms)
        .bind(s.access_token)
        .bind(s.network)
        .bind(s.pids)
        .bind(s.pause_mode)
        .bind(s.auto_pause)
        .bind(s.auto_resume)
        .bind(s.traffic_token)
        .bind(s.mask_request_host)
        .bind(s.volume_mounts)
        .bind(s.team_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_running(&self, id: String, end_at: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'running', end_at = $2, paused_remaining_ms = NULL,
                 pause_mode = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(end_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_paused(
        &self,
        id: String,
        remaining_ms: i64,
        mode: PauseMode,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'paused', paused_remaining_ms = $2, pause_mode = $3
             WHERE id = $1 AND state IN ('running', 'paused')",
        )
        .bind(id)
        .bind(remaining_ms)
        .bind(mode.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_end_at(&self, id: String, end_at: i64) -> Result<(), DbError> {
        sqlx::query("UPDATE sandboxes SET end_at = $2 WHERE id = $1")
            .bind(id)
            .bind(end_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_network(&self, id: String, network: String) -> Result<(), DbError> {
        sqlx::query("UPDATE sandboxes SET network = $2 WHERE id = $1")
            .bind(id)
            .bind(network)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_killed(&self, id: String, now: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'killed', ended_at = $2
             WHERE id = $1 AND state != 'killed'",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_sandbox(&self, id: String) -> Result<(), DbError> {
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_sandbox(&self, id: String) -> Result<Option<SandboxRow>, DbError> {
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(|r| sandbox_columns(r)?.into_row())
        .transpose()
    }

    async fn sandboxes_in(&self, states: &[SandboxState]) -> Result<Vec<SandboxRow>, DbError> {
        let states: Vec<&'static str> = states.iter().map(|s| s.as_str()).collect();
        sqlx::query(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE state = ANY($1)
             ORDER BY started_at, id"
        ))
        .bind(states)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| sandbox_columns(r)?.into_row())
        .collect()
    }

    async fn live_sandboxes_of(&self, template_id: String) -> Result<u64, DbError> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM sandboxes WHERE template_id = $1 AND state IN {LIVE_STATES}"
        ))
        .bind(template_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn spawns_by_template(&self) -> Result<BTreeMap<String, Spawns>, DbError> {
        sqlx::query(
            "SELECT template_name, COUNT(*), MAX(started_at) FROM sandboxes
             GROUP BY template_name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let n: i64 = r.try_get(1)?;
            Ok((
                r.try_get::<String, _>(0)?,
                Spawns {
                    count: u64::try_from(n).unwrap_or(0),
                    last_at: r.try_get(2)?,
                },
            ))
        })
        .collect()
    }
    async fn insert_volume(&self, v: VolumeRow) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO volumes (id, name, size_mb, created_at, deleted_at, team_id)
             VALUES ($1, $2, $3, $4, NULL, $5)
             ON CONFLICT (team_id, name) WHERE deleted_at IS NULL DO NOTHING",
        )
        .bind(v.id)
        .bind(v.name)
        .bind(i64::try_from(v.size_mb).unwrap_or(i64::MAX))
        .bind(v.created_at)
        .bind(v.team_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeRow>, DbError> {
        sqlx::query(
            "SELECT id, name, size_mb, created_at, deleted_at, team_id FROM volumes
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(VolumeRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                size_mb: u64::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
                created_at: r.try_get(3)?,
                deleted_at: r.try_get(4)?,
                team_id: r.try_get(5)?,
            })
        })
        .collect()
    }

    async fn mark_volume_deleted(&self, id: String, now: i64) -> Result<bool, DbError> {
        let done =
            sqlx::query("UPDATE volumes SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_volume(&self, id: String) -> Result<(), DbError> {
        sqlx::query("DELETE FROM volumes WHERE id = $1 AND deleted_at IS NOT NULL")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn node_heartbeat(
        &self,
        beat: NodeBeat,
        now: i64,
        lease_until: i64,
    ) -> Result<(), DbError> {
        let layers = serde_json::to_string(&beat.layers).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "INSERT INTO nodes (id, url, instance_id, version, cap_cpus, cap_memory_mb,
                 cap_sandboxes, sandboxes, layers, registered_at, heartbeat_at, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)
             ON CONFLICT (id) DO UPDATE SET
                 registered_at = CASE WHEN nodes.instance_id = EXCLUDED.instance_id
                     THEN nodes.registered_at ELSE EXCLUDED.registered_at END,
                 url = EXCLUDED.url, instance_id = EXCLUDED.instance_id,
                 version = EXCLUDED.version, cap_cpus = EXCLUDED.cap_cpus,
                 cap_memory_mb = EXCLUDED.cap_memory_mb, cap_sandboxes = EXCLUDED.cap_sandboxes,
                 sandboxes = EXCLUDED.sandboxes, layers = EXCLUDED.layers,
                 heartbeat_at = EXCLUDED.heartbeat_at, lease_until = EXCLUDED.lease_until",
        )
        .bind(beat.id)
        .bind(beat.url)
        .bind(beat.instance_id)
        .bind(beat.version)
        .bind(int(beat.capacity.cpus))
        .bind(int(beat.capacity.memory_mb))
        .bind(int(beat.capacity.sandboxes))
        .bind(int(beat.sandboxes))
        .bind(layers)
        .bind(now)
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| node_row(|i| Ok(r.try_get(i)?), |i| Ok(r.try_get(i)?)))
            .collect()
    }

    async fn place_sandbox(&self, p: Placement, now: i64) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        // One conditional update: its row lock makes a concurrent placement
        // on the node wait, then re-check the condition on the row it left
        // (READ COMMITTED suffices). `cap - alloc` rather than `alloc +
        // this`: never overflows.
        let done = sqlx::query(
            "UPDATE nodes SET alloc_cpus = alloc_cpus + $2,
                 alloc_memory_mb = alloc_memory_mb + $3, alloc_sandboxes = alloc_sandboxes + 1
             WHERE id = $1 AND lease_until > $4
               AND $2 <= cap_cpus - alloc_cpus AND $3 <= cap_memory_mb - alloc_memory_mb
               AND 1 <= cap_sandboxes - alloc_sandboxes",
        )
        .bind(&p.node_id)
        .bind(int(p.cpus))
        .bind(int(p.memory_mb))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let done = sqlx::query(
            "INSERT INTO placements (sandbox_id, node_id, cpus, memory_mb, placed_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sandbox_id) DO NOTHING",
        )
        .bind(p.sandbox_id)
        .bind(p.node_id)
        .bind(int(p.cpus))
        .bind(int(p.memory_mb))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn unplace_sandbox(&self, sandbox_id: String) -> Result<Option<String>, DbError> {
        let mut tx = self.pool.begin().await?;
        let Some(placed) = sqlx::query(
            "DELETE FROM placements WHERE sandbox_id = $1 RETURNING node_id, cpus, memory_mb",
        )
        .bind(sandbox_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let node: String = placed.try_get(0)?;
        sqlx::query(
            "UPDATE nodes SET alloc_cpus = GREATEST(alloc_cpus - $2, 0),
                 alloc_memory_mb = GREATEST(alloc_memory_mb - $3, 0),
                 alloc_sandboxes = GREATEST(alloc_sandboxes - 1, 0)
             WHERE id = $1",
        )
        .bind(&node)
        .bind(placed.try_get::<i64, _>(1)?)
        .bind(placed.try_get::<i64, _>(2)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(node))
    }

    async fn list_placements(&self) -> Result<Vec<Placement>, DbError> {
        sqlx::query(&format!(
            "SELECT {PLACEMENT_COLUMNS} FROM placements ORDER BY sandbox_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| placement_row(|i| Ok(r.try_get(i)?), |i| Ok(r.try_get(i)?)))
        .collect()
    }
}

fn team_row(r: &PgRow) -> Result<TeamRow, DbError> {
    Ok(TeamRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
        is_default: r.try_get(3)?,
    })
}

/// The columns and values of an insert of a [`NewKey`].
const NEW_KEY_COLUMNS: &str = "(uuid, team_id, name, kind, hash, prefix, suffix, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

fn bind_new_key<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    k: &NewKey,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(k.uuid.clone())
        .bind(k.team_id.clone())
        .bind(k.name.clone())
        .bind(k.kind.as_str())
        .bind(k.hash.clone())
        .bind(k.prefix.clone())
        .bind(k.suffix.clone())
        .bind(k.created_at)
}

/// The key columns every query reads, in [`api_key_row`]'s order.
const KEY_COLUMNS: &str = "id, uuid, team_id, name, kind, prefix, suffix, created_at, revoked_at";

fn api_key_row(r: &PgRow) -> Result<ApiKeyRow, DbError> {
    Ok(ApiKeyRow {
        id: r.try_get(0)?,
        uuid: r.try_get(1)?,
        team_id: r.try_get(2)?,
        name: r.try_get(3)?,
        kind: KeyKind::parse(r.try_get::<&str, _>(4)?),
        prefix: r.try_get(5)?,
        suffix: r.try_get(6)?,
        created_at: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
    })
}

fn template_row(r: &PgRow) -> Result<TemplateRow, DbError> {
    Ok(TemplateRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        metadata: r.try_get(2)?,
        created_at: r.try_get(3)?,
        build_id: r.try_get(4)?,
        public: r.try_get(5)?,
        team_id: r.try_get(6)?,
    })
}

fn sandbox_columns(r: &PgRow) -> Result<SandboxColumns, DbError> {
    Ok(SandboxColumns {
        id: r.try_get(0)?,
        template_id: r.try_get(1)?,
        template_name: r.try_get(2)?,
        state: r.try_get(3)?,
        sandbox_env: r.try_get(4)?,
        metadata: r.try_get(5)?,
        started_at: r.try_get(6)?,
        end_at: r.try_get(7)?,
        ended_at: r.try_get(8)?,
        cpu_count: r.try_get(9)?,
        memory_mb: r.try_get(10)?,
        disk_size_mb: r.try_get(11)?,
        paused_remaining_ms: r.try_get(12)?,
        access_token: r.try_get(13)?,
        network: r.try_get(14)?,
        pids: r.try_get(15)?,
        pause_mode: r.try_get(16)?,
        auto_pause: r.try_get(17)?,
        auto_resume: r.try_get(18)?,
        traffic_token: r.try_get(19)?,
        mask_request_host: r.try_get(20)?,
        volume_mounts: r.try_get(21)?,
        team_id: r.try_get(22)?,
    })
}
