//! The server's state: API keys, templates and sandboxes, behind the
//! [`Store`] trait. Two backends implement it — [`sqlite`], the embedded
//! default (`DATA/hutch.db`), and [`postgres`] (`--database-url
//! postgres://…`) — and all SQL lives in those two modules: the rest of the
//! server sees the trait and the row types below.
//!
//! Each backend keeps its own list of schema migrations, applied in order
//! when it opens; never edit a shipped migration, append one. The same
//! tests (`tests.rs`) run against both backends, PostgreSQL being a real
//! server started for each test.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use hutch_runtime::{Cidr, EgressPolicy};
use serde::{Deserialize, Serialize};

/// The store, shared by everything in the server.
pub type Db = Arc<dyn Store>;

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL server: a `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// The store a server uses: `url` when one is given (only PostgreSQL
    /// URLs are), else `DATA/hutch.db`.
    pub fn new(url: Option<&str>, data_dir: &Path) -> Result<Location, DbError> {
        match url {
            None => Ok(Location::Sqlite(data_dir.join("hutch.db"))),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Location::Postgres(u.to_string()))
            }
            Some(u) => Err(DbError::Url(redact(u))),
        }
    }
}

impl fmt::Display for Location {
    /// The file, or the URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Whether a server has its database to itself, or shares it with other
/// replicas of a control plane (PostgreSQL only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// One server per database (`hutch serve`).
    Exclusive,
    /// The replicas of a control plane (`hutch control`).
    Shared,
}

/// Opens (creating and migrating as needed) the store at `location`.
pub async fn open(location: &Location) -> Result<Db, DbError> {
    open_with(location, Access::Exclusive).await
}

/// [`open`], alone or shared with other control planes.
pub async fn open_with(location: &Location, access: Access) -> Result<Db, DbError> {
    Ok(match location {
        Location::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path)?),
        Location::Postgres(url) => Arc::new(postgres::PostgresStore::open(url, access).await?),
    })
}

/// What changed among the sandboxes ([`Store::sandbox_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxChange {
    /// The row of this sandbox.
    One(String),
    /// Anything: look at every row.
    All,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) reported an error.
    #[error(transparent)]
    Postgres(#[from] sqlx::Error),
    /// The database was made by a newer Hutch.
    #[error("schema version {found} is newer than this server's ({known}); upgrade hutch")]
    TooNew {
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// Another server holds the database.
    #[error(
        "another Hutch server is using this database; one server per database \
         (stop the other one, or give this one its own database)"
    )]
    InUse,
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?}: only postgres:// (or postgresql://) URLs are")]
    Url(String),
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

/// The server's state, whatever holds it. Every method is one atomic
/// change or one consistent read.
#[async_trait]
pub trait Store: Send + Sync {
    /// Which backend this is (`sqlite` or `postgresql`), for logs.
    fn backend(&self) -> &'static str;

    /// Whether this server runs the work that must run once among the
    /// control planes sharing the store (always, for a store not shared).
    fn leads(&self) -> bool {
        true
    }

    /// The ids of the sandboxes whose rows others change, as they change,
    /// for a store shared by several control planes; `None` for one that
    /// is not.
    async fn sandbox_changes(&self) -> Option<tokio::sync::mpsc::Receiver<SandboxChange>> {
        None
    }

    // ----- teams ------------------------------------------------------

    /// The default team: the one the first key belongs to, which owns the
    /// templates the server builds itself and may manage teams.
    async fn default_team(&self) -> Result<TeamRow, DbError>;
    /// Inserts a team; `Ok(false)` when its name is taken.
    async fn insert_team(&self, t: TeamRow) -> Result<bool, DbError>;
    /// Every team, oldest first.
    async fn list_teams(&self) -> Result<Vec<TeamRow>, DbError>;

    // ----- API keys ---------------------------------------------------

    /// Whether any API key, revoked or not, was ever stored.
    async fn has_api_keys(&self) -> Result<bool, DbError>;
    /// Stores a key, unless a key with its hash is stored already.
    async fn insert_api_key(&self, key: NewKey) -> Result<(), DbError>;
    /// The keys not revoked, by hash.
    async fn valid_api_keys(&self) -> Result<HashMap<String, KeyOwner>, DbError>;
    /// Stores a new key; returns its row.
    async fn create_api_key(&self, key: NewKey) -> Result<ApiKeyRow, DbError>;
    /// Every key of team `team`, revoked or not, oldest first.
    async fn list_api_keys(&self, team: String) -> Result<Vec<ApiKeyRow>, DbError>;
    /// Renames key `id` (its UUID or number) of team `team`; `Ok(false)`
    /// when the team has no such valid key.
    async fn rename_api_key(&self, team: String, id: String, name: String)
    -> Result<bool, DbError>;
    /// Revokes the valid key `id` (its UUID or number) of team `team` at
    /// `now`, unless it is the team's last valid one (two revokes at once
    /// never leave a team without a valid key).
    async fn revoke_api_key(&self, team: String, id: String, now: i64) -> Result<Revoke, DbError>;

    // ----- templates --------------------------------------------------

    /// Inserts a template; `Ok(false)` when its name is taken.
    async fn insert_template(&self, t: TemplateRow) -> Result<bool, DbError>;
    /// Inserts a template, replacing one of the same name: the old row is
    /// kept under the hidden name `<name>@<old id>` (no valid template name
    /// contains `@`), so sandboxes still running from it keep working and
    /// its layers stay referenced until it is pruned. Returns the old id.
    ///
    /// When the new row keeps the old id (E2B's template API keeps a
    /// template's id across builds), the old row moves to a fresh hidden id
    /// and the sandboxes still running from it follow it there.
    async fn replace_template(&self, t: TemplateRow) -> Result<Option<String>, DbError>;
    /// The template with this id or, failing that, this name.
    async fn find_template(&self, id_or_name: String) -> Result<Option<TemplateRow>, DbError>;
    /// Every template, by name.
    async fn list_templates(&self) -> Result<Vec<TemplateRow>, DbError>;
    /// Deletes a template row.
    async fn delete_template(&self, id: String) -> Result<(), DbError>;
    /// Sets a template row's `public` flag; `Ok(false)` when no row has
    /// this id.
    async fn set_template_public(&self, id: String, public: bool) -> Result<bool, DbError>;

    // ----- template tags ----------------------------------------------

    /// Points the tags `tags` of template `name` at the template row
    /// `template_id` (a build of it), at `now`; a tag that pointed at
    /// another build moves.
    async fn set_tags(
        &self,
        name: String,
        tags: Vec<String>,
        template_id: String,
        now: i64,
    ) -> Result<(), DbError>;
    /// Removes the tags `tags` of template `name`, all or none: the tags
    /// it does not have (then nothing was removed).
    async fn remove_tags(&self, name: String, tags: Vec<String>) -> Result<Vec<String>, DbError>;
    /// Removes every tag of template `name`.
    async fn delete_tags_of(&self, name: String) -> Result<(), DbError>;
    /// The tags of template `name` (every template's when `None`), by
    /// name and tag.
    async fn list_tags(&self, name: Option<String>) -> Result<Vec<TagRow>, DbError>;

    // ----- sandboxes --------------------------------------------------

    /// Inserts a sandbox row.
    async fn insert_sandbox(&self, s: SandboxRow) -> Result<(), DbError>;
    /// Marks a sandbox running until `end_at`.
    async fn set_running(&self, id: String, end_at: i64) -> Result<(), DbError>;
    /// Marks a running or paused sandbox paused `mode`, with
    /// `remaining_ms` of its lifetime left (a killed one stays killed).
    async fn set_paused(
        &self,
        id: String,
        remaining_ms: i64,
        mode: PauseMode,
    ) -> Result<(), DbError>;
    /// Moves a sandbox's expiry.
    async fn set_end_at(&self, id: String, end_at: i64) -> Result<(), DbError>;
    /// Replaces a sandbox's egress policy (a [`NetworkRecord`] as JSON).
    async fn set_network(&self, id: String, network: String) -> Result<(), DbError>;
    /// Marks a sandbox killed at `now` (once: a second kill keeps the
    /// first time).
    async fn mark_killed(&self, id: String, now: i64) -> Result<(), DbError>;
    /// Deletes a sandbox row (one that never started).
    async fn delete_sandbox(&self, id: String) -> Result<(), DbError>;
    /// A sandbox in any state.
    async fn get_sandbox(&self, id: String) -> Result<Option<SandboxRow>, DbError>;
    /// Sandboxes in `states`, oldest first.
    async fn sandboxes_in(&self, states: &[SandboxState]) -> Result<Vec<SandboxRow>, DbError>;
    /// How many sandboxes of a template are starting, running or paused.
    async fn live_sandboxes_of(&self, template_id: String) -> Result<u64, DbError>;
    /// For each template name sandboxes were ever created from: how many,
    /// and when the last one started (unix ms).
    async fn spawns_by_template(&self) -> Result<BTreeMap<String, Spawns>, DbError>;

    // ----- volumes ----------------------------------------------------

    /// Inserts a volume; `Ok(false)` when a volume of its team not deleted
    /// has its name.
    async fn insert_volume(&self, v: VolumeRow) -> Result<bool, DbError>;
    /// Every volume, deleted ones too, oldest first.
    async fn list_volumes(&self) -> Result<Vec<VolumeRow>, DbError>;
    /// Marks a volume deleted at `now`; `Ok(false)` if it is unknown or
    /// deleted already.
    async fn mark_volume_deleted(&self, id: String, now: i64) -> Result<bool, DbError>;
    /// Removes a deleted volume's row (its data is gone).
    async fn purge_volume(&self, id: String) -> Result<(), DbError>;

    // ----- nodes and placements ---------------------------------------

    /// Records node `beat.id`'s heartbeat at `now`: inserts its row, or
    /// replaces everything it reports, and extends its lease to
    /// `lease_until`. `registered_at` is set when the row is made and
    /// again whenever its `instance_id` changes (the node restarted); the
    /// allocations are kept.
    async fn node_heartbeat(
        &self,
        beat: NodeBeat,
        now: i64,
        lease_until: i64,
    ) -> Result<(), DbError>;
    /// Every node, by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRow>, DbError>;
    /// Places sandbox `p.sandbox_id` on node `p.node_id`, all or nothing:
    /// only if that node's lease runs past `now` and its allocations plus
    /// this sandbox (`p.cpus`, `p.memory_mb`, one sandbox) stay within its
    /// capacity — then the placement is stored and the node's allocations
    /// grow by it, in one transaction, so that two control planes placing
    /// at once never fill a node past its capacity. `Ok(false)` when the
    /// node has no room, no lease, or does not exist, or when the sandbox
    /// is placed already (on any node).
    async fn place_sandbox(&self, p: Placement, now: i64) -> Result<bool, DbError>;
    /// Removes sandbox `sandbox_id`'s placement and gives its allocation
    /// back to its node, in one transaction; the node it was on (`None`
    /// if it had no placement).
    async fn unplace_sandbox(&self, sandbox_id: String) -> Result<Option<String>, DbError>;
    /// Every placement, by sandbox id.
    async fn list_placements(&self) -> Result<Vec<Placement>, DbError>;
    /// Sandbox `sandbox_id`'s placement.
    async fn placement_of(&self, sandbox_id: String) -> Result<Option<Placement>, DbError>;
}

/// What a node can hold: the sums of its sandboxes' limits it admits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// vCPUs (limits, not host cores: a node may overcommit).
    pub cpus: u64,
    /// Memory limits, MiB.
    pub memory_mb: u64,
    /// Sandboxes.
    pub sandboxes: u64,
}

/// What a node reports in each heartbeat ([`Store::node_heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBeat {
    /// The node's name: stable across its restarts, unique in a cluster.
    pub id: String,
    /// Its node API (`http://host:port`).
    pub url: String,
    /// This run of it: new at each start.
    pub instance_id: String,
    /// Its Hutch version.
    pub version: String,
    /// What it admits.
    pub capacity: Capacity,
    /// How many sandboxes it holds now (running, paused or pooled).
    pub sandboxes: u64,
    /// The layers it holds (diff ids, as control planes name them).
    pub layers: Vec<String>,
}

/// A node as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Its last heartbeat.
    pub beat: NodeBeat,
    /// The sums of its placements.
    pub allocated: Capacity,
    /// Unix ms: when its current instance first reported.
    pub registered_at: i64,
    /// Unix ms: its last heartbeat.
    pub heartbeat_at: i64,
    /// Unix ms: until when it counts as alive without another heartbeat.
    pub lease_until: i64,
}

/// Which node a sandbox is on, and what it takes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The sandbox (one of the warm pool has no sandbox row, but a
    /// placement).
    pub sandbox_id: String,
    /// The node.
    pub node_id: String,
    /// Its CPU limit.
    pub cpus: u64,
    /// Its memory limit, MiB.
    pub memory_mb: u64,
}

/// How often a template was used ([`Store::spawns_by_template`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spawns {
    /// Sandboxes created from it, whatever became of them.
    pub count: u64,
    /// When the last one started (unix ms).
    pub last_at: Option<i64>,
}

/// A tag of a template: a name for one of its builds (a template row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// The template's name.
    pub name: String,
    /// The tag.
    pub tag: String,
    /// The template row (build) it points at.
    pub template_id: String,
    /// Unix ms: when it was last pointed there.
    pub created_at: i64,
}

/// A count as stored: `u64`s past `i64::MAX` saturate.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count (never negative; read as 0 if it were).
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The node columns every query reads, in [`node_row`]'s order.
const NODE_COLUMNS: &str = "id, url, instance_id, version, cap_cpus, cap_memory_mb, \
     cap_sandboxes, sandboxes, layers, alloc_cpus, alloc_memory_mb, alloc_sandboxes, \
     registered_at, heartbeat_at, lease_until";

/// A node row from the columns of [`NODE_COLUMNS`], read by `text` and
/// `number` (by index): one conversion for both backends.
fn node_row(
    text: impl Fn(usize) -> Result<String, DbError>,
    number: impl Fn(usize) -> Result<i64, DbError>,
) -> Result<NodeRow, DbError> {
    let count = |i| number(i).map(unsigned);
    Ok(NodeRow {
        beat: NodeBeat {
            id: text(0)?,
            url: text(1)?,
            instance_id: text(2)?,
            version: text(3)?,
            capacity: Capacity {
                cpus: count(4)?,
                memory_mb: count(5)?,
                sandboxes: count(6)?,
            },
            sandboxes: count(7)?,
            layers: serde_json::from_str(&text(8)?).map_err(|cause| DbError::Corrupt {
                what: "layers",
                cause,
            })?,
        },
        allocated: Capacity {
            cpus: count(9)?,
            memory_mb: count(10)?,
            sandboxes: count(11)?,
        },
        registered_at: number(12)?,
        heartbeat_at: number(13)?,
        lease_until: number(14)?,
    })
}

/// The placement columns every query reads, in [`placement_row`]'s order.
const PLACEMENT_COLUMNS: &str = "sandbox_id, node_id, cpus, memory_mb";

/// A placement from the columns of [`PLACEMENT_COLUMNS`], read by `text`
/// and `number` (by index).
fn placement_row(
    text: impl Fn(usize) -> Result<String, DbError>,
    number: impl Fn(usize) -> Result<i64, DbError>,
) -> Result<Placement, DbError> {
    Ok(Placement {
        sandbox_id: text(0)?,
        node_id: text(1)?,
        cpus: unsigned(number(2)?),
        memory_mb: unsigned(number(3)?),
    })
}

/// The states a sandbox counts as live in (its template is in use).
const LIVE_STATES: &str = "('starting', 'running', 'paused')";

/// The columns of a sandbox row, in [`SANDBOX_COLUMNS`]' order, as both
/// backends store them: one conversion each way for both.
struct SandboxColumns {
    id: String,
    template_id: String,
    template_name: String,
    state: String,
    sandbox_env: String,
    metadata: String,
    started_at: i64,
    end_at: i64,
    ended_at: Option<i64>,
    cpu_count: i64,
    memory_mb: i64,
    disk_size_mb: i64,
    paused_remaining_ms: Option<i64>,
    access_token: Option<String>,
    network: Option<String>,
    pids: Option<i64>,
    pause_mode: Option<String>,
    auto_pause: Option<String>,
    auto_resume: bool,
    traffic_token: Option<String>,
    mask_request_host: Option<String>,
    volume_mounts: Option<String>,
    team_id: String,
}

/// The sandbox columns every query reads, in [`SandboxColumns`]' order.
const SANDBOX_COLUMNS: &str = "id, template_id, template_name, state, sandbox_env, metadata, \
     started_at, end_at, ended_at, cpu_count, memory_mb, disk_size_mb, paused_remaining_ms, \
     access_token, network, pids, pause_mode, auto_pause, auto_resume, traffic_token, \
     mask_request_host, volume_mounts, team_id";

impl SandboxColumns {
    fn of(s: SandboxRow) -> SandboxColumns {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        SandboxColumns {
            state: s.state.as_str().to_string(),
            sandbox_env: to_json(&s.sandbox_env),
            metadata: to_json(&s.metadata),
            cpu_count: i64::from(s.cpu_count),
            memory_mb: int(s.memory_mb),
            disk_size_mb: int(s.disk_size_mb),
            pids: s.pids.map(int),
            pause_mode: s.pause_mode.map(|m| m.as_str().to_string()),
            auto_pause: s.lifecycle.auto_pause.map(|m| m.as_str().to_string()),
            auto_resume: s.lifecycle.auto_resume,
            traffic_token: s.ingress.traffic_token,
            mask_request_host: s.ingress.mask_request_host,
            volume_mounts: (!s.volume_mounts.is_empty()).then(|| {
                serde_json::to_string(&s.volume_mounts).unwrap_or_else(|_| "[]".to_owned())
            }),
            id: s.id,
            team_id: s.team_id,
            template_id: s.template_id,
            template_name: s.template_name,
            started_at: s.started_at,
            end_at: s.end_at,
            ended_at: s.ended_at,
            paused_remaining_ms: s.paused_remaining_ms,
            access_token: s.access_token,
            network: s.network,
        }
    }

    fn into_row(self) -> Result<SandboxRow, DbError> {
        let parse = |what, text: &str| {
            serde_json::from_str::<BTreeMap<String, String>>(text)
                .map_err(|cause| DbError::Corrupt { what, cause })
        };
        let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
        let state = SandboxState::parse(&self.state);
        Ok(SandboxRow {
            sandbox_env: parse("sandbox_env", &self.sandbox_env)?,
            metadata: parse("metadata", &self.metadata)?,
            cpu_count: u32::try_from(self.cpu_count).unwrap_or(0),
            memory_mb: unsigned(self.memory_mb),
            disk_size_mb: unsigned(self.disk_size_mb),
            pids: self.pids.map(unsigned),
            pause_mode: (state == SandboxState::Paused)
                .then(|| PauseMode::parse(self.pause_mode.as_deref())),
            lifecycle: Lifecycle {
                auto_pause: self.auto_pause.map(|m| PauseMode::parse(Some(&m))),
                auto_resume: self.auto_resume,
            },
            ingress: Ingress {
                traffic_token: self.traffic_token,
                mask_request_host: self.mask_request_host,
            },
            volume_mounts: match self.volume_mounts.as_deref() {
                None => Vec::new(),
                Some(text) => serde_json::from_str(text).map_err(|cause| DbError::Corrupt {
                    what: "volume_mounts",
                    cause,
                })?,
            },
            state,
            id: self.id,
            team_id: self.team_id,
            template_id: self.template_id,
            template_name: self.template_name,
            started_at: self.started_at,
            end_at: self.end_at,
            ended_at: self.ended_at,
            paused_remaining_ms: self.paused_remaining_ms,
            access_token: self.access_token,
            network: self.network,
        })
    }
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
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

/// A volume mounted into a sandbox, as its row records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountRecord {
    /// The volume's id.
    #[serde(rename = "volumeID")]
    pub volume_id: String,
    /// Its name when it was mounted.
    pub name: String,
    /// Where the sandbox sees it.
    pub path: String,
}

/// A volume row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// Its id (a UUID).
    pub id: String,
    /// The team that owns it.
    pub team_id: String,
    /// Its name, unique among its team's volumes not deleted.
    pub name: String,
    /// Its size (its quota), MiB.
    pub size_mb: u64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms: when it was deleted (its data goes once no sandbox uses
    /// it).
    pub deleted_at: Option<i64>,
}

/// How requests through the front door reach a sandbox's own ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingress {
    /// Set for sandboxes created with `allowPublicTraffic: false`: requests
    /// to their ports must carry it as `e2b-traffic-access-token`.
    pub traffic_token: Option<String>,
    /// E2B's `maskRequestHost`: the `Host` requests to its ports get
    /// (`${PORT}` replaced by the port).
    pub mask_request_host: Option<String>,
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
    /// The build it is (a UUID, E2B's `buildID`); it stays with the row
    /// when a newer build of the name hides it.
    pub build_id: String,
    /// E2B's `public` flag: every team may create sandboxes from it.
    pub public: bool,
    /// The team that owns it.
    pub team_id: String,
}

/// A sandbox row.
#[derive(Debug, Clone)]
pub struct SandboxRow {
    /// Sandbox id.
    pub id: String,
    /// The team that owns it.
    pub team_id: String,
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
    /// How requests reach its ports.
    pub ingress: Ingress,
    /// The volumes mounted into it.
    pub volume_mounts: Vec<MountRecord>,
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
    /// Address blocks (`addr/prefix`) and domain patterns re-allowed even
    /// when denied.
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// Address blocks denied (`addr/prefix`).
    #[serde(default)]
    pub deny_out: Vec<String>,
}

impl NetworkRecord {
    /// The record of `policy`.
    pub fn of(policy: &EgressPolicy) -> NetworkRecord {
        NetworkRecord {
            allow_internet_access: policy.allow_internet_access,
            allow_out: policy.allow_list(),
            deny_out: policy.deny_out.iter().map(Cidr::to_string).collect(),
        }
    }

    /// The policy it records, or why an entry does not parse.
    pub fn policy(&self) -> Result<EgressPolicy, String> {
        EgressPolicy::from_lists(self.allow_internet_access, &self.allow_out, &self.deny_out)
            .map_err(|e| e.to_string())
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

/// A team: the owner of keys, templates, sandboxes and volumes. A key
/// sees and touches only what its team owns (and public templates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRow {
    /// Its id (a UUID).
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// Unix ms.
    pub created_at: i64,
    /// Whether it is the default team ([`Store::default_team`]).
    pub is_default: bool,
}

/// What a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An API key (`X-API-Key`).
    ApiKey,
    /// An access token (`Authorization: Bearer`, as E2B's CLI sends it).
    AccessToken,
}

impl KeyKind {
    /// The kind's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::ApiKey => "api_key",
            KeyKind::AccessToken => "access_token",
        }
    }

    fn parse(s: &str) -> KeyKind {
        match s {
            "access_token" => KeyKind::AccessToken,
            _ => KeyKind::ApiKey,
        }
    }
}

/// A key to store: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Its public id (a UUID).
    pub uuid: String,
    /// The team it acts for.
    pub team_id: String,
    /// Its name, for people.
    pub name: String,
    /// What it is.
    pub kind: KeyKind,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The first characters of the key.
    pub prefix: String,
    /// The last characters of the key.
    pub suffix: String,
    /// Unix ms.
    pub created_at: i64,
}

impl NewKey {
    /// Its row once stored as row `id`.
    fn row(self, id: i64) -> ApiKeyRow {
        ApiKeyRow {
            id,
            uuid: self.uuid,
            team_id: self.team_id,
            name: self.name,
            kind: self.kind,
            prefix: self.prefix,
            suffix: self.suffix,
            created_at: self.created_at,
            revoked_at: None,
        }
    }
}

/// Who a valid key is ([`Store::valid_api_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The key's row id.
    pub key_id: i64,
    /// The team it acts for.
    pub team_id: String,
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Its row id.
    pub id: i64,
    /// Its public id (a UUID).
    pub uuid: String,
    /// The team it acts for.
    pub team_id: String,
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: KeyKind,
    /// The first characters of the key.
    pub prefix: String,
    /// The last characters of the key (empty for keys from before they
    /// were recorded).
    pub suffix: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None` while valid.
    pub revoked_at: Option<i64>,
}

/// What [`Store::revoke_api_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// The key is revoked now.
    Revoked,
    /// No key has this id, or it was revoked already.
    NotFound,
    /// It is the last valid key: refused.
    LastKey,
}
