//! Sandbox lifecycle: creation, expiry, killing, and re-adoption across
//! server restarts.
//!
//! # States
//!
//! A sandbox row is `starting` while the runtime boots it and the agent is
//! initialised, `running` once it serves requests, `paused` while it is
//! paused (`POST /sandboxes/{id}/pause` or its timeout, until `connect` or
//! a request resumes it), and `killed` once it is destroyed (by
//! `DELETE /sandboxes/{id}`, by expiry, or because it could not be kept
//! across a restart). Killed rows are kept as history. A sandbox claimed
//! from the warm pool gets its row at the claim, already `running`; pooled
//! sandboxes have no row.
//!
//! # Kill
//!
//! A kill answers as soon as the sandbox can no longer run or be reached:
//! the front door stops routing to it, its init is sent SIGKILL (which ends
//! its whole PID namespace; `Runtime::kill_init`), and its row is marked
//! `killed`. Its host objects — container, cgroups, network, mounts, disk —
//! are torn down behind the answer (`Node::destroy`, 100–300 ms), in
//! tasks a shutdown waits for, [`TEARDOWN_CONCURRENCY`] at a time. A teardown cut short by a crash leaves a
//! directory whose row is not `running`, which the next start destroys.
//!
//! # Pause and resume
//!
//! A pause has a mode (`pause_mode` in the row; E2B's `memory` flag):
//!
//! * **memory** (the default, E2B's `full`): every process of the sandbox
//!   is frozen (the freezer cgroup, as `runc pause` does): they keep their memory,
//!   open files and connections — a client streaming a process's output
//!   just sees nothing until the resume — and use no CPU. `connect` thaws
//!   them.
//! * **filesystem** (`memory: false`): the sandbox is stopped with its
//!   files kept (`Runtime::stop_keep_disk`): every process is killed, its
//!   cgroup and memory are freed, its network address is released; its
//!   disk (the writable layer) stays. `connect` boots it again on the same
//!   files (`SandboxSpec::resume_from_disk`): the same id, template layers,
//!   boot config, limits and network policy, then the same `/init` (its
//!   variables and access token) and the template's start command, as a
//!   cold boot. `connect` with `memory: false` does the same to a
//!   sandbox paused in memory (E2B's "reboot").
//!
//! Either way the sandbox's clock stops: the lifetime it had left is stored
//! (`paused_remaining_ms`) and re-armed at the resume (nothing left, as
//! after a pause at its timeout: the default lifetime), so a paused sandbox
//! never expires. A filesystem pause is recorded before the sandbox is
//! stopped, and a resume only after it runs again, so a server that dies in
//! between leaves a sandbox recorded paused, which the next start stops
//! (again) with its disk kept.
//!
//! The front door answers requests for a paused sandbox with 502, naming
//! `connect` — unless the sandbox was created with `autoResume` and is
//! paused in memory: then the request resumes it (as `connect` would, with
//! the default lifetime) and is served. A filesystem-paused sandbox is
//! never resumed by a request (as in E2B: it has no running state to wake;
//! a create asking for both is refused).
//!
//! # Expiry
//!
//! Every running sandbox has an `end_at`. One reaper task sleeps until the
//! earliest `end_at` (or until woken because one moved) and destroys what has
//! expired — or pauses it, in the mode it asked for, if it was created with
//! `autoPause` (its [`Lifecycle`]). `POST /sandboxes/{id}/timeout` sets
//! `end_at = now + timeout`; `POST /sandboxes/{id}/refreshes` only ever
//! extends it.
//!
//! # Re-adoption at startup
//!
//! Sandboxes outlive the server: stopping it (SIGTERM/SIGINT) stops
//! accepting connections and leaves every sandbox running. At the next start
//! the server reconciles what the runtime finds on the host
//! (`Runtime::list_host_sandboxes`) with the database:
//!
//! * a sandbox the database has as `running`, that the runtime can
//!   re-attach to (`Runtime::adopt` returns it) and whose `end_at` is still
//!   in the future, is kept: it is routed to again and its expiry re-armed
//!   from the stored `end_at`;
//! * a sandbox the database has as `paused` whose container runc reports
//!   paused is kept paused, with the lifetime it had left (its frozen agent
//!   is not health-checked);
//! * a sandbox the database has as paused filesystem-only is stopped again
//!   with its disk kept (which finishes a pause or undoes a resume the
//!   server was in the middle of) and kept paused, unless its disk is gone;
//! * one whose `end_at` has passed while the server was down is destroyed
//!   and marked `killed`;
//! * one the runtime cannot adopt (its agent or container is gone), one the
//!   database has as `starting` (the server stopped mid-creation), and one
//!   on the host that the database does not know, are destroyed; their rows
//!   (if any) are marked `killed`. Sandboxes of the warm pool have no row
//!   until they are claimed, so this is also what happens to a pool left
//!   behind by a killed server; the new server then boots a new pool (see
//!   [`crate::pool`]).
//!
//! Nothing else is needed from a re-adopted sandbox: its agent still holds
//! its environment (layer 3 was delivered by `/init` and the template layers
//! are in its boot config), and its network (namespace, address, rules) is
//! kernel state that outlived the server. Listing the host's sandboxes also
//! removes network objects no sandbox directory records any more.
//!
//! # Dead agents
//!
//! Every live sandbox's agent is watched through a pidfd ([`watch_agent`]):
//! if it exits while the sandbox is live, the sandbox is destroyed and
//! marked `killed` at once.
//!
//! # Network policy
//!
//! A create's egress policy (`allow_internet_access`, `network`) is stored
//! with the row. A cold boot gets it in its spec; a pooled sandbox (booted
//! with the default policy) gets it at the claim, before `/init`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hutch_image::TemplateMetadata;
use hutch_protocol::boot::{BOOT_SCHEMA_VERSION, BootConfig, InitRequest};
use hutch_runtime::{AgentClient, EgressPolicy, NetworkPolicy, SandboxSpec, SandboxStatus};

use crate::db::{
    Ingress, Lifecycle, NetworkRecord, PauseMode, SandboxRow, SandboxState, TemplateRow,
};
use crate::limits::{self, Limits};
use crate::node::{BootSpec, Booted, NodeError};
use crate::pool::{self, Claim};
use crate::prometheus::Operation;
use crate::state::{AppState, LiveSandbox, Paused};
use crate::{DEFAULT_SANDBOX_TIMEOUT_SECS, ids, time};
use tracing::Instrument as _;

/// Why a sandbox operation failed; the HTTP layer maps each to E2B's
/// status and error body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    /// No running or paused sandbox has this id.
    #[error("sandbox '{0}' not found")]
    NotFound(String),
    /// No template has this id or name.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// The template is one Hutch builds itself (`base`, the code
    /// interpreter's), still being built.
    #[error(
        "template '{name}' is still being built (Hutch builds it once, at its first start or first use){progress}; try again in a minute"
    )]
    TemplateBuilding {
        /// Its name.
        name: String,
        /// ` (N s so far; now: …)`, or nothing.
        progress: String,
    },
    /// The template is one Hutch builds itself, and its build failed.
    #[error("template '{name}' cannot be used now: {why}")]
    TemplateUnbuilt {
        /// Its name.
        name: String,
        /// Why, and when it is tried again.
        why: String,
    },
    /// The sandbox is paused, and the operation needs it running.
    #[error("sandbox {0} is paused: resume it with POST /sandboxes/{0}/connect")]
    Paused(String),
    /// The template catalog refused (a snapshot's name, say).
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The request asks for something that cannot be (a limit out of
    /// bounds).
    #[error("{0}")]
    Invalid(String),
    /// The node ran out of host disk space (507: freeing space fixes it).
    #[error("{0}")]
    HostFull(String),
    /// No node can take the sandbox now, or its node cannot be reached
    /// (503: a retry later may succeed).
    #[error("{0}")]
    Unavailable(String),
    /// The node or the sandbox failed.
    #[error("{0}")]
    Failed(String),
    /// The store failed.
    #[error("database error: {0}")]
    Db(#[from] crate::db::DbError),
}

impl SandboxError {
    /// The node failed at `what`: [`SandboxError::HostFull`] when the cause
    /// is a full host disk, else [`SandboxError::Failed`].
    pub(crate) fn node(what: String, cause: &NodeError) -> SandboxError {
        let message = format!("{what}: {cause}");
        match cause {
            NodeError::HostFull(_) => SandboxError::HostFull(message),
            NodeError::Unavailable(_) => SandboxError::Unavailable(message),
            _ => SandboxError::Failed(message),
        }
    }
}

/// What a create request asks for (validated by the caller).
pub(crate) struct CreateArgs {
    /// The team it is for.
    pub team: String,
    /// Template id or name.
    pub template: String,
    /// Lifetime, in seconds.
    pub timeout_secs: u64,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Layer 3.
    pub env: BTreeMap<String, String>,
    /// The agent access token of a `secure` sandbox.
    pub access_token: Option<String>,
    /// What the sandbox may reach on the network.
    pub network: EgressPolicy,
    /// The resource limits it asks for (unchecked; see [`crate::limits`]).
    pub limits: limits::Requested,
    /// What its timeout does; whether requests resume it.
    pub lifecycle: Lifecycle,
    /// What requests to its ports need, and the Host they get.
    pub ingress: Ingress,
    /// Volumes to mount: (volume name or id, absolute path).
    pub volume_mounts: Vec<(String, String)>,
}

/// Records `message` in sandbox `id`'s log ([`crate::sandbox_logs`]).
fn journal(st: &AppState, id: &str, message: impl Into<String>) {
    st.logs
        .event(id, hutch_protocol::api::LogLevel::Info, message);
}

/// How many killed sandboxes are torn down at once; more wait their turn
/// (they are already dead and unreachable).
pub(crate) const TEARDOWN_CONCURRENCY: usize = 8;

/// How many sandboxes boot at once: twice the host's CPUs, at least 4.
/// More wait their turn before they start, so that each boot's time limit
/// for its agent (`hutch_runtime::AGENT_BOOT_TIMEOUT`) counts from when it
/// has the host's attention, not from when a burst of creates arrived: a
/// burst past what the host boots in that time queues instead of failing.
pub(crate) fn boot_concurrency() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (2 * cpus).max(4)
}

/// Runs a sandbox operation, counting it and its duration in the
/// server's Prometheus metrics.
async fn metered<T>(
    st: &AppState,
    op: Operation,
    work: impl std::future::Future<Output = Result<T, SandboxError>>,
) -> Result<T, SandboxError> {
    let started = std::time::Instant::now();
    let result = work.await;
    st.prometheus
        .operation(op, result.is_ok(), started.elapsed());
    result
}

/// How long a claimed pooled sandbox's agent gets to take its environment
/// before the claim gives up on it (and boots a fresh sandbox instead).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates and starts a sandbox; returns its row (state `running`). Takes
/// a sandbox from the warm pool when one is ready (see [`crate::pool`]),
/// else boots one. Traced as `sandbox.create`, with the sandbox's id and
/// whether it came from the pool.
#[tracing::instrument(
    name = "sandbox.create",
    skip_all,
    fields(template = %args.template, sandbox = tracing::field::Empty, pooled = tracing::field::Empty)
)]
pub(crate) async fn create_sandbox(
    st: &Arc<AppState>,
    args: CreateArgs,
) -> Result<SandboxRow, SandboxError> {
    metered(st, Operation::Create, create_unmetered(st, args)).await
}

/// [`create_sandbox`] without its metrics.
async fn create_unmetered(
    st: &Arc<AppState>,
    args: CreateArgs,
) -> Result<SandboxRow, SandboxError> {
    // Layers must not be garbage-collected between the lookup and the
    // moment the row makes the template "in use".
    let layers_guard = st.layers_lock.read().await;
    let found = crate::catalog::resolve(st, &args.team, &args.template).await?;
    // The code interpreter template is built at its first use.
    let building = match &found {
        None if args.template == crate::code_interpreter::TEMPLATE => {
            match crate::code_interpreter::ensure(st).await {
                crate::code_interpreter::Build::Running => true,
                crate::code_interpreter::Build::Failed(why) => {
                    return Err(SandboxError::TemplateUnbuilt {
                        name: args.template.clone(),
                        why,
                    });
                }
                crate::code_interpreter::Build::Idle => false,
            }
        }
        None => {
            args.template == hutch_builder::BASE_TEMPLATE
                && st.base_building.load(std::sync::atomic::Ordering::SeqCst)
        }
        Some(_) => false,
    };
    let template = found.ok_or_else(|| {
        if building {
            let progress = st
                .builds
                .building(&args.template)
                .map(|job| {
                    format!(
                        " ({} s so far; now: {})",
                        job.elapsed_secs(),
                        job.last_line().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            SandboxError::TemplateBuilding {
                name: args.template.clone(),
                progress,
            }
        } else {
            SandboxError::TemplateNotFound(args.template.clone())
        }
    })?;
    let meta = crate::catalog::metadata(&template)?;

    let defaults = limits::template_defaults(&template.name, meta.limits.as_ref(), &st.max_limits)
        .map_err(SandboxError::Failed)?;
    let sandbox_limits =
        limits::resolve(defaults, &args.limits, &st.max_limits).map_err(SandboxError::Invalid)?;
    // Its volumes cannot be deleted before its row says it uses them.
    let volumes_guard = st.volumes_lock.read().await;
    let volume_mounts = crate::volumes::resolve_mounts(st, &args.team, &args.volume_mounts)
        .await
        .map_err(|e| match e {
            crate::volumes::VolumeError::Db(e) => SandboxError::Db(e),
            e @ crate::volumes::VolumeError::InvalidMounts(_) => {
                SandboxError::Invalid(e.to_string())
            }
            e => SandboxError::Failed(e.to_string()),
        })?;

    // Pooled sandboxes have the template's default limits and no volumes:
    // a create asking for others boots its own.
    if sandbox_limits == defaults
        && volume_mounts.is_empty()
        && let Some(row) = claim_pooled(st, &template, &args, &sandbox_limits).await?
    {
        st.prometheus.pool_create(true);
        tracing::Span::current()
            .record("sandbox", row.id.as_str())
            .record("pooled", true);
        drop(layers_guard);
        pool::refill_after_create(st, &template.id);
        return Ok(row);
    }

    st.prometheus.pool_create(false);
    let id = ids::new_id();
    tracing::Span::current()
        .record("sandbox", id.as_str())
        .record("pooled", false);
    let mut row = new_row(
        &id,
        &template,
        &args,
        &sandbox_limits,
        SandboxState::Starting,
    );
    row.volume_mounts = volume_mounts;
    st.db.insert_sandbox(row.clone()).await?;
    drop(layers_guard);
    drop(volumes_guard);

    let mut spec = sandbox_spec(&id, &template, &meta, sandbox_limits);
    spec.sandbox.network = NetworkPolicy::Egress(args.network.clone());
    spec.sandbox.volumes = crate::volumes::mounts(&row.volume_mounts);
    let cold_boot = st.pool.cold_boot();
    let started = async {
        let sandbox = boot_sandbox(st, spec, &meta).await?;
        AgentClient::over(sandbox.agent.clone())
            .init(&init_request(&args.env, &args.access_token))
            .instrument(tracing::info_span!("agent.init"))
            .await
            .map_err(|e| NodeError::Failed(format!("initialising its agent failed: {e}")))?;
        Ok::<_, NodeError>(sandbox)
    }
    .await;
    drop(cold_boot);
    let sandbox = match started {
        Ok(s) => s,
        Err(cause) => {
            if let Err(e) = st.node.destroy(&id).await {
                tracing::warn!(sandbox = %id, "cleaning up a failed sandbox: {e}");
            }
            if let Err(e) = st.db.delete_sandbox(id.clone()).await {
                tracing::warn!(sandbox = %id, "removing a failed sandbox's row: {e}");
            }
            return Err(SandboxError::node(
                format!("cannot start a sandbox from template '{}'", template.name),
                &cause,
            ));
        }
    };

    // The lifetime counts from when the sandbox is usable.
    row.end_at = time::now_ms().saturating_add(timeout_ms(args.timeout_secs));
    row.state = SandboxState::Running;
    route_running(
        st,
        &id,
        LiveSandbox::running(sandbox.agent.clone(), row.end_at, sandbox.init_pid, &row),
    );
    st.db.set_running(id.clone(), row.end_at).await?;
    st.pool.record_cold(&template.id);
    tracing::info!(sandbox = %id, template = %template.name, "sandbox started");
    journal(
        st,
        &id,
        format!("sandbox started from template '{}'", template.name),
    );
    // Refill only now, so that the pool's boot does not compete with this
    // one.
    pool::refill_after_create(st, &template.id);
    Ok(row)
}

/// Claims a pooled sandbox of `template` for a create, if there is one:
/// gives it its sandbox layer, records it `running` and routes to it.
/// `Ok(None)`: none ready (or the ones tried were dead); boot one. The
/// caller holds the layers lock, so the template cannot be removed before
/// the row exists.
#[tracing::instrument(name = "pool.claim", skip_all)]
async fn claim_pooled(
    st: &Arc<AppState>,
    template: &TemplateRow,
    args: &CreateArgs,
    sandbox_limits: &Limits,
) -> Result<Option<SandboxRow>, SandboxError> {
    loop {
        let (pooled, waited) = match st.pool.take(&template.id) {
            Claim::Ready(p) => (p, false),
            Claim::Wait(promise) => match promise.await {
                Ok(p) => (p, true),
                Err(_) => return Ok(None),
            },
            Claim::Cold => return Ok(None),
        };
        // Booted from a build the template has since replaced (under the
        // same id, as a rebuild through the template API does).
        if pooled.build_id != template.build_id {
            pool::discard(st, pooled.id);
            if waited {
                return Ok(None);
            }
            continue;
        }
        // Pooled sandboxes boot with the default policy; another one is
        // applied before anything runs in the sandbox.
        if !args.network.is_default()
            && let Err(e) = st.node.set_egress_policy(&pooled.id, &args.network).await
        {
            tracing::warn!(
                sandbox = %pooled.id,
                "cannot apply the network policy to a pooled sandbox, destroying it: {e}"
            );
            pool::discard(st, pooled.id);
            if waited {
                return Ok(None);
            }
            continue;
        }
        let agent = AgentClient::over(pooled.agent.clone()).with_timeout(CLAIM_TIMEOUT);
        if let Err(e) = agent
            .init(&init_request(&args.env, &args.access_token))
            .await
        {
            tracing::warn!(
                sandbox = %pooled.id,
                template = %template.name,
                "pooled sandbox does not answer, destroying it: {e}"
            );
            pool::discard(st, pooled.id);
            if waited {
                return Ok(None);
            }
            continue;
        }
        // The lifetime counts from the claim.
        let row = new_row(
            &pooled.id,
            template,
            args,
            sandbox_limits,
            SandboxState::Running,
        );
        if let Err(e) = st.db.insert_sandbox(row.clone()).await {
            pool::discard(st, pooled.id);
            return Err(e.into());
        }
        route_running(
            st,
            &pooled.id,
            LiveSandbox::running(pooled.agent, row.end_at, pooled.init_pid, &row),
        );
        st.pool.record_claim(&template.id);
        journal(
            st,
            &pooled.id,
            format!(
                "sandbox started from template '{}' (from the warm pool)",
                template.name
            ),
        );
        tracing::info!(
            sandbox = %pooled.id,
            template = %template.name,
            "sandbox started (from the warm pool)"
        );
        return Ok(Some(row));
    }
}

/// A new sandbox's row; its lifetime counts from now.
fn new_row(
    id: &str,
    template: &TemplateRow,
    args: &CreateArgs,
    sandbox_limits: &Limits,
    state: SandboxState,
) -> SandboxRow {
    let now = time::now_ms();
    SandboxRow {
        id: id.to_owned(),
        team_id: args.team.clone(),
        template_id: template.id.clone(),
        template_name: template.name.clone(),
        state,
        sandbox_env: args.env.clone(),
        metadata: args.metadata.clone(),
        started_at: now,
        end_at: now.saturating_add(timeout_ms(args.timeout_secs)),
        ended_at: None,
        cpu_count: sandbox_limits.cpus,
        memory_mb: limits::memory_mb(sandbox_limits),
        disk_size_mb: sandbox_limits.disk_mb,
        pids: u64::try_from(sandbox_limits.pids).ok(),
        paused_remaining_ms: None,
        pause_mode: None,
        lifecycle: args.lifecycle,
        ingress: args.ingress.clone(),
        volume_mounts: Vec::new(),
        access_token: args.access_token.clone(),
        network: Some(NetworkRecord::encode(&args.network)),
    }
}

/// The `POST /init` that hands a sandbox its layer 3 (`env`) and its
/// access token.
fn init_request(env: &BTreeMap<String, String>, access_token: &Option<String>) -> InitRequest {
    InitRequest {
        env_vars: Some(env.clone()),
        access_token: access_token.clone(),
        timestamp: Some(serde_json::Value::String(time::rfc3339(time::now_ms()))),
        ..InitRequest::default()
    }
}

/// Boots a sandbox of a template: the runtime's boot, then the template's
/// start command (in the background, with the template's environment and
/// user) and its ready command, polled until it succeeds. The same for a
/// cold boot and a pooled one, so a pooled sandbox is handed out with its
/// start command already running. On failure nothing is left behind (but
/// the kept disk of a sandbox booted on it, [`SandboxSpec::resume_from_disk`]).
pub(crate) async fn boot_sandbox(
    st: &AppState,
    spec: BootSpec,
    meta: &TemplateMetadata,
) -> Result<Booted, NodeError> {
    let id = spec.sandbox.id.clone();
    let resume = spec.sandbox.resume_from_disk;
    let mut spec = spec;
    spec.image = crate::distribution::image_for(st, &spec.layers)
        .instrument(tracing::info_span!("template.image"))
        .await
        .map_err(NodeError::Failed)?;
    let sandbox = {
        let _slot = st
            .boot_slots
            .acquire()
            .instrument(tracing::info_span!("boot.queue"))
            .await
            .expect("the boot slots are never closed");
        st.node
            .create(spec)
            .instrument(tracing::info_span!("node.create", sandbox = %id))
            .await?
    };
    if meta.start_cmd.is_none() && meta.ready_cmd.is_none() {
        return Ok(sandbox);
    }
    let logs = st.logs.clone();
    let log_id = id.clone();
    let follow: hutch_runtime::CommandEvents =
        Box::new(move |event| logs.start_command(&log_id, event));
    match hutch_runtime::start_and_wait_ready(
        &sandbox.agent,
        meta.start_cmd.as_deref(),
        meta.ready_cmd.as_deref(),
        hutch_runtime::DEFAULT_READY_TIMEOUT,
        Some(follow),
    )
    .await
    {
        Ok(()) => Ok(sandbox),
        Err(e) => {
            let cleanup = if resume {
                st.node.stop_keep_disk(&id).await
            } else {
                st.node.destroy(&id).await
            };
            if let Err(d) = cleanup {
                tracing::warn!(sandbox = %id, "cleaning up a sandbox that did not get ready: {d}");
            }
            Err(NodeError::Failed(format!(
                "its start or ready command failed: {e}"
            )))
        }
    }
}

/// How to boot sandbox `id` of `template` with `limits`: the same for a
/// cold boot and a pooled one (whose limits are the template's defaults).
pub(crate) fn sandbox_spec(
    id: &str,
    template: &TemplateRow,
    meta: &TemplateMetadata,
    limits: Limits,
) -> BootSpec {
    let sandbox = SandboxSpec {
        id: id.to_owned(),
        layers: Vec::new(),
        boot: BootConfig {
            schema_version: BOOT_SCHEMA_VERSION,
            sandbox_id: id.to_owned(),
            template_id: template.id.clone(),
            template_name: template.name.clone(),
            template_env: meta.env.clone(),
            template_user: meta.user.clone(),
            template_workdir: meta.workdir.clone(),
        },
        no_new_privileges: !meta.allow_privilege_escalation,
        wait_for_agent: true,
        // Pooled sandboxes boot with the default; a claim applies another.
        network: NetworkPolicy::default(),
        limits,
        resume_from_disk: false,
        volumes: Vec::new(),
    };
    BootSpec {
        layers: meta.layers.clone(),
        image: None,
        sandbox,
    }
}

/// Kills a running or paused sandbox: it is no longer routed to, its
/// processes are killed and it is recorded killed before this returns; its
/// host objects (container, network, mounts, disk) are torn down behind
/// it ([`AppState::teardowns`]). `Ok(false)` if it is neither running nor
/// paused.
pub(crate) async fn kill_sandbox(st: &Arc<AppState>, id: &str) -> Result<bool, SandboxError> {
    metered(st, Operation::Kill, kill_unmetered(st, id)).await
}

/// [`kill_sandbox`] without its metrics.
async fn kill_unmetered(st: &Arc<AppState>, id: &str) -> Result<bool, SandboxError> {
    // Whoever removes the entry owns the kill: the front door stops routing
    // to it at once, and a concurrent kill or expiry sees it gone.
    let Some(entry) = st.live().remove(id) else {
        return Ok(false);
    };
    // It stops running now (a frozen one cannot run anyway; one paused
    // filesystem-only has no process)...
    if let Some(pid) = entry.agent_pid
        && let Err(e) = st.node.kill_now(id, pid).await
    {
        tracing::warn!(sandbox = %id, "cannot kill the sandbox's processes at once: {e}");
    }
    st.db.mark_killed(id.to_string(), time::now_ms()).await?;
    tracing::info!(sandbox = %id, "sandbox killed");
    journal(st, id, "sandbox killed");
    st.logs.ended(id);
    // ...and leaves the host behind the answer. A teardown that fails, or
    // that a crash cuts short, leaves a directory the next start destroys
    // (its row is no longer `running`).
    let st2 = st.clone();
    let id = id.to_owned();
    st.teardowns.spawn(async move {
        let slot = st2.teardown_slots.acquire().await;
        if let Err(e) = st2.node.destroy(&id).await {
            tracing::error!(sandbox = %id, "cannot tear down the killed sandbox: {e}");
            return;
        }
        drop(slot);
        // A replaced template or a fork's snapshot may now be unused, and
        // so may a deleted volume.
        if let Ok(Some(row)) = st2.db.get_sandbox(id.clone()).await {
            crate::catalog::sandbox_gone(&st2, &row.template_id).await;
            if !row.volume_mounts.is_empty() {
                crate::volumes::collect_garbage(&st2).await;
            }
        }
    });
    Ok(true)
}

/// Sets when team `team`'s running sandbox `id` expires. `Ok(false)` if
/// it is neither running nor paused (or another team's); a 409 if it is
/// paused (its lifetime is frozen with it; `connect` resumes it).
pub(crate) async fn set_end_at(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    end_at: impl FnOnce(i64) -> i64,
) -> Result<bool, SandboxError> {
    crate::replicas::ensure_known(st, id).await;
    let new_end = {
        let mut live = st.live();
        let Some(entry) = live.get_mut(id).filter(|e| e.team == team) else {
            return Ok(false);
        };
        if entry.paused.is_some() {
            return Err(SandboxError::Paused(id.to_string()));
        }
        entry.end_at = end_at(entry.end_at);
        entry.end_at
    };
    st.db.set_end_at(id.to_string(), new_end).await?;
    st.reaper_wake.notify_one();
    Ok(true)
}

/// Replaces the egress policy of team `team`'s running or paused sandbox
/// `id`:
/// applied on the node at once (new connections follow it) when the
/// sandbox has a network — running, or paused in memory — and recorded
/// either way, so that a resume, a boot on its files and a re-adoption
/// apply it.
pub(crate) async fn set_network(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    policy: EgressPolicy,
) -> Result<(), SandboxError> {
    crate::replicas::ensure_known(st, id).await;
    let _transition = st.transitions.lock(id).await;
    let stopped = match st.live().get(id) {
        Some(e) if e.team == team => e.paused.is_some_and(|p| p.mode == PauseMode::Filesystem),
        _ => return Err(SandboxError::NotFound(id.to_owned())),
    };
    if !stopped {
        match st.node.set_egress_policy(id, &policy).await {
            Ok(()) => {}
            Err(NodeError::NotFound(_)) => return Err(SandboxError::NotFound(id.to_owned())),
            Err(e) => {
                return Err(SandboxError::Failed(format!(
                    "cannot change sandbox {id}'s network rules: {e}"
                )));
            }
        }
    }
    st.db
        .set_network(id.to_owned(), NetworkRecord::encode(&policy))
        .await?;
    tracing::info!(sandbox = %id, "network rules replaced");
    journal(st, id, "network rules replaced");
    Ok(())
}

/// What [`pause_sandbox`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PauseOutcome {
    /// Paused now.
    Paused,
    /// It was paused already.
    AlreadyPaused,
    /// Neither running nor paused.
    NotFound,
}

/// Pauses a running sandbox `mode` (see the module doc) and stops its
/// clock: the lifetime it has left is kept (in the database too) and
/// re-armed by [`resume_sandbox`].
pub(crate) async fn pause_sandbox(
    st: &Arc<AppState>,
    id: &str,
    mode: PauseMode,
) -> Result<PauseOutcome, SandboxError> {
    metered(st, Operation::Pause, pause_unmetered(st, id, mode)).await
}

/// [`pause_sandbox`] without its metrics.
async fn pause_unmetered(
    st: &Arc<AppState>,
    id: &str,
    mode: PauseMode,
) -> Result<PauseOutcome, SandboxError> {
    let _transition = st.transitions.lock(id).await;
    match st.live().get(id) {
        None => return Ok(PauseOutcome::NotFound),
        Some(e) if e.paused.is_some() => return Ok(PauseOutcome::AlreadyPaused),
        Some(_) => {}
    }
    let remaining = match mode {
        PauseMode::Memory => match freeze(st, id).await? {
            Some(remaining) => remaining,
            None => return Ok(PauseOutcome::NotFound),
        },
        PauseMode::Filesystem => {
            let remaining = match st.live().get(id) {
                Some(e) => e.end_at.saturating_sub(time::now_ms()).max(0),
                None => return Ok(PauseOutcome::NotFound),
            };
            if !stop_keeping_files(st, id, remaining).await? {
                return Ok(PauseOutcome::NotFound);
            }
            remaining
        }
    };
    tracing::info!(sandbox = %id, mode = mode.as_str(), remaining_ms = remaining, "sandbox paused");
    journal(st, id, format!("sandbox paused ({})", mode.as_str()));
    Ok(PauseOutcome::Paused)
}

/// A memory pause: freezes every process of a running sandbox and records
/// it paused. The lifetime it had left; `None` if it is gone.
async fn freeze(st: &Arc<AppState>, id: &str) -> Result<Option<i64>, SandboxError> {
    match st.node.pause(id).await {
        Ok(()) => {}
        // Killed (or expired) meanwhile.
        Err(NodeError::NotFound(_)) => return Ok(None),
        Err(e) => {
            return Err(SandboxError::Failed(format!(
                "cannot pause sandbox {id}: {e}"
            )));
        }
    }
    let remaining = {
        let mut live = st.live();
        let Some(entry) = live.get_mut(id) else {
            // Killed meanwhile; the kill destroys the frozen container.
            return Ok(None);
        };
        let remaining = entry.end_at.saturating_sub(time::now_ms()).max(0);
        entry.paused = Some(Paused {
            remaining_ms: remaining,
            mode: PauseMode::Memory,
        });
        remaining
    };
    st.db
        .set_paused(id.to_string(), remaining, PauseMode::Memory)
        .await?;
    st.reaper_wake.notify_one();
    Ok(Some(remaining))
}

/// A filesystem pause of a running sandbox, or of one paused in memory
/// (whose memory is then dropped): records it paused filesystem-only with
/// `remaining` ms of its lifetime left — from then on the front door does
/// not route to it and its agent's exit is expected — then stops it with
/// its disk kept. `Ok(false)` if it is gone (killed meanwhile, or its disk
/// is missing: it is then destroyed and marked killed). If the stop fails
/// it stays recorded paused; a `connect` tries again.
async fn stop_keeping_files(
    st: &Arc<AppState>,
    id: &str,
    remaining: i64,
) -> Result<bool, SandboxError> {
    {
        let mut live = st.live();
        let Some(entry) = live.get_mut(id) else {
            return Ok(false);
        };
        entry.paused = Some(Paused {
            remaining_ms: remaining,
            mode: PauseMode::Filesystem,
        });
        entry.agent_pid = None;
    }
    st.db
        .set_paused(id.to_string(), remaining, PauseMode::Filesystem)
        .await?;
    st.reaper_wake.notify_one();
    match st.node.stop_keep_disk(id).await {
        Ok(()) => Ok(true),
        Err(NodeError::NoKeptDisk(_)) => {
            if st.live().contains_key(id) {
                tracing::warn!(sandbox = %id, "the sandbox has no disk any more; destroying it");
                kill_sandbox(st, id).await?;
            }
            Ok(false)
        }
        Err(e) => Err(SandboxError::Failed(format!(
            "cannot stop sandbox {id} (it stays paused; connect tries again): {e}"
        ))),
    }
}

/// What [`resume_sandbox`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeOutcome {
    /// It was running (its lifetime extended to `timeout` if given).
    WasRunning,
    /// It was paused and runs again.
    Resumed,
    /// Neither running nor paused.
    NotFound,
}

/// `connect`: resumes a paused sandbox — thaws one paused in memory, boots
/// one paused filesystem-only again on its files (and so one paused in
/// memory when `memory` is `Some(false)`, E2B's "reboot") — and re-arms
/// its expiry, at now + the lifetime it had left (the default lifetime if
/// none was left), or now + `timeout_secs` when given. A running sandbox's
/// life is extended to at least now + `timeout_secs`.
pub(crate) async fn resume_sandbox(
    st: &Arc<AppState>,
    id: &str,
    timeout_secs: Option<u64>,
    memory: Option<bool>,
) -> Result<ResumeOutcome, SandboxError> {
    metered(
        st,
        Operation::Resume,
        resume_unmetered(st, id, timeout_secs, memory),
    )
    .await
}

/// [`resume_sandbox`] without its metrics.
async fn resume_unmetered(
    st: &Arc<AppState>,
    id: &str,
    timeout_secs: Option<u64>,
    memory: Option<bool>,
) -> Result<ResumeOutcome, SandboxError> {
    let _transition = st.transitions.lock(id).await;
    let now = time::now_ms();
    let wanted_end = timeout_secs.map(|s| now.saturating_add(timeout_ms(s)));
    let (paused, team) = match st.live().get(id) {
        None => return Ok(ResumeOutcome::NotFound),
        Some(e) => (e.paused, e.team.clone()),
    };
    let Some(paused) = paused else {
        if let Some(end) = wanted_end
            && !set_end_at(st, &team, id, |current| current.max(end)).await?
        {
            return Ok(ResumeOutcome::NotFound);
        }
        return Ok(ResumeOutcome::WasRunning);
    };
    let end_at = || {
        wanted_end.unwrap_or_else(|| {
            let lifetime = if paused.remaining_ms > 0 {
                paused.remaining_ms
            } else {
                timeout_ms(DEFAULT_SANDBOX_TIMEOUT_SECS)
            };
            time::now_ms().saturating_add(lifetime)
        })
    };
    if paused.mode == PauseMode::Memory && memory != Some(false) {
        return thaw(st, id, end_at).await;
    }
    if paused.mode == PauseMode::Memory {
        tracing::info!(sandbox = %id, "dropping the memory of a paused sandbox to reboot it");
        if !stop_keeping_files(st, id, paused.remaining_ms).await? {
            return Ok(ResumeOutcome::NotFound);
        }
    }
    let Some(sandbox) = boot_on_files(st, id).await? else {
        return Ok(ResumeOutcome::NotFound);
    };
    // Killed meanwhile: the kill destroys what was booted.
    if !mark_resumed(st, id, end_at(), Some(&sandbox)).await? {
        return Ok(ResumeOutcome::NotFound);
    }
    tracing::info!(sandbox = %id, "sandbox resumed (booted again on its files)");
    journal(st, id, "sandbox resumed (booted again on its files)");
    Ok(ResumeOutcome::Resumed)
}

/// Thaws a sandbox paused in memory; it then expires at `end_at()`.
async fn thaw(
    st: &Arc<AppState>,
    id: &str,
    end_at: impl FnOnce() -> i64,
) -> Result<ResumeOutcome, SandboxError> {
    match st.node.resume(id).await {
        Ok(()) => {}
        Err(NodeError::NotFound(_)) => return Ok(ResumeOutcome::NotFound),
        Err(e) => {
            return Err(SandboxError::Failed(format!(
                "cannot resume sandbox {id}: {e}"
            )));
        }
    }
    if !mark_resumed(st, id, end_at(), None).await? {
        return Ok(ResumeOutcome::NotFound);
    }
    tracing::info!(sandbox = %id, "sandbox resumed");
    journal(st, id, "sandbox resumed");
    Ok(ResumeOutcome::Resumed)
}

/// Boots a sandbox paused filesystem-only again on its files, as it was
/// created: its template's layers and boot config, its limits and network
/// policy (from its row), then its `/init` (variables, access token).
/// `Ok(None)` if it is gone (killed meanwhile, or its disk is missing: it
/// is then destroyed and marked killed). On failure it stays paused.
async fn boot_on_files(st: &Arc<AppState>, id: &str) -> Result<Option<Booted>, SandboxError> {
    let Some(row) = st
        .db
        .get_sandbox(id.to_string())
        .await?
        .filter(|r| r.state == SandboxState::Paused)
    else {
        return Ok(None);
    };
    // The template's layers must stay while the sandbox boots on them.
    let layers_guard = st.layers_lock.read().await;
    let (template, meta) = crate::catalog::find(st, &row.template_id)
        .await?
        .ok_or_else(|| {
            SandboxError::Failed(format!(
                "cannot resume sandbox {id}: its template {} is gone",
                row.template_id
            ))
        })?;
    let defaults = limits::template_defaults(&template.name, meta.limits.as_ref(), &st.max_limits)
        .unwrap_or_default();
    let mut spec = sandbox_spec(id, &template, &meta, limits::recorded(&row, defaults));
    spec.sandbox.network = NetworkPolicy::Egress(recorded_policy(&row));
    spec.sandbox.volumes = crate::volumes::mounts(&row.volume_mounts);
    spec.sandbox.resume_from_disk = true;

    // Stopped for sure: this also finishes a pause that failed or was
    // interrupted halfway, and tells whether its disk is still there.
    match st.node.stop_keep_disk(id).await {
        Ok(()) => {}
        Err(NodeError::NoKeptDisk(_)) => {
            drop(layers_guard);
            tracing::warn!(sandbox = %id, "the paused sandbox has no disk any more; destroying it");
            kill_sandbox(st, id).await?;
            return Ok(None);
        }
        Err(e) => {
            return Err(SandboxError::Failed(format!(
                "cannot resume sandbox {id}: {e}"
            )));
        }
    }
    let cold_boot = st.pool.cold_boot();
    let booted = async {
        let sandbox = boot_sandbox(st, spec, &meta).await?;
        if let Err(e) = AgentClient::over(sandbox.agent.clone())
            .init(&init_request(&row.sandbox_env, &row.access_token))
            .await
        {
            if let Err(e) = st.node.stop_keep_disk(id).await {
                tracing::warn!(sandbox = %id, "stopping a sandbox whose resume failed: {e}");
            }
            return Err(NodeError::Failed(format!(
                "initialising its agent failed: {e}"
            )));
        }
        Ok::<_, NodeError>(sandbox)
    }
    .await;
    drop(cold_boot);
    drop(layers_guard);
    match booted {
        Ok(sandbox) => Ok(Some(sandbox)),
        // Killed while it booted.
        Err(_) if !st.live().contains_key(id) => Ok(None),
        Err(cause) => Err(SandboxError::node(
            format!("cannot resume sandbox {id} (it stays paused)"),
            &cause,
        )),
    }
}

/// The egress policy a sandbox was created with (the default for rows from
/// before it was recorded). A record that cannot be read fails closed: no
/// internet access.
pub(crate) fn recorded_policy(row: &SandboxRow) -> EgressPolicy {
    match row.network.as_deref().map(NetworkRecord::decode) {
        None => EgressPolicy::default(),
        Some(Ok(policy)) => policy,
        Some(Err(e)) => {
            tracing::warn!(sandbox = %row.id, "unreadable network policy, denying internet access: {e}");
            EgressPolicy {
                allow_internet_access: false,
                ..EgressPolicy::default()
            }
        }
    }
}

/// `secs` as milliseconds.
pub(crate) fn timeout_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Reconciles the host's sandboxes with the database (see the module doc).
/// A control plane reconciles each node as it reports instead
/// ([`readopt_node`]).
pub(crate) async fn readopt(st: &Arc<AppState>) {
    if st.cluster.is_some() {
        return;
    }
    let Some(rows) = live_rows(st).await else {
        return;
    };
    let on_host: BTreeSet<String> = match st.node.list().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::error!("cannot list the sandboxes on this host: {e}");
            BTreeSet::new()
        }
    };
    reconcile(st, rows, &on_host).await;
}

/// The rows of the sandboxes starting, running or paused; `None` (logged)
/// when the store cannot be read.
async fn live_rows(st: &AppState) -> Option<Vec<SandboxRow>> {
    match st
        .db
        .sandboxes_in(&[
            SandboxState::Starting,
            SandboxState::Running,
            SandboxState::Paused,
        ])
        .await
    {
        Ok(rows) => Some(rows),
        Err(e) => {
            tracing::error!("cannot read sandboxes from the database, none re-adopted: {e}");
            None
        }
    }
}

/// Re-adopts each of `rows` or destroys it, and destroys what `on_host`
/// holds that no row knows.
async fn reconcile(st: &Arc<AppState>, rows: Vec<SandboxRow>, on_host: &BTreeSet<String>) {
    let now = time::now_ms();
    let mut known = BTreeSet::new();
    for row in rows {
        known.insert(row.id.clone());
        let why = match readopt_one(st, &row, now).await {
            Ok(()) => continue,
            Err(why) => why,
        };
        tracing::info!(sandbox = %row.id, "destroying sandbox: {why}");
        if let Err(e) = st.node.destroy(&row.id).await {
            tracing::warn!(sandbox = %row.id, "cannot destroy sandbox: {e}");
        }
        if let Err(e) = st.db.mark_killed(row.id.clone(), now).await {
            tracing::warn!(sandbox = %row.id, "cannot mark sandbox killed: {e}");
        }
    }
    for id in on_host.difference(&known) {
        tracing::info!(sandbox = %id, "destroying a sandbox the database does not know");
        if let Err(e) = st.node.destroy(id).await {
            tracing::warn!(sandbox = %id, "cannot destroy sandbox: {e}");
        }
        if let Err(e) = st.db.mark_killed(id.clone(), now).await {
            tracing::warn!(sandbox = %id, "cannot mark sandbox killed: {e}");
        }
    }
}

/// Reconciles node `node` of the cluster, alive as instance `instance`,
/// with the store: the sandboxes placed on it are re-adopted (or, when
/// they no longer run there, recorded killed), and what it holds that
/// nothing here knows is destroyed. At the control plane's start
/// (`at_start`) that is everything it holds without a row — a warm pool
/// or a create the last control plane left — while it serves, only what
/// has no placement or a row already killed (a create or a pool boot may
/// be on its way). `false` (logged) when the node could not be read: the
/// next look tries again.
pub(crate) async fn readopt_node(
    st: &Arc<AppState>,
    cluster: &crate::node::cluster::Cluster,
    node: &str,
    instance: &str,
    at_start: bool,
) -> bool {
    use crate::node::Node as _;
    let Some(remote) = cluster.member(node) else {
        return false;
    };
    // The node at that address must be the instance that reported.
    match remote.info().await {
        Ok(info) if info.instance_id == instance => {}
        Ok(info) => {
            tracing::warn!(
                %node,
                "the node's address answers as instance {} rather than {instance}; reconciling it later",
                info.instance_id
            );
            return false;
        }
        Err(e) => {
            tracing::warn!(%node, "cannot reach the node, reconciling it later: {e}");
            return false;
        }
    }
    let on_host: BTreeSet<String> = match remote.list().await {
        Ok(ids) => ids.into_iter().collect(),
        Err(e) => {
            tracing::warn!(%node, "cannot list the node's sandboxes, reconciling it later: {e}");
            return false;
        }
    };
    let Some(rows) = live_rows(st).await else {
        return false;
    };
    let placed = cluster.sandboxes_on(node);
    let rows: Vec<SandboxRow> = rows
        .into_iter()
        .filter(|r| placed.contains(&r.id))
        .filter(|r| at_start || r.state != SandboxState::Starting)
        .collect();
    let known: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    for id in on_host.difference(&known) {
        if st.pool.holds(id) {
            continue;
        }
        let stale = at_start
            || !placed.contains(id)
            || matches!(
                st.db.get_sandbox(id.clone()).await,
                Ok(Some(r)) if r.state == SandboxState::Killed
            );
        if !stale {
            continue;
        }
        tracing::info!(sandbox = %id, %node, "destroying a sandbox the database does not know");
        match remote.destroy(id).await {
            Ok(()) => cluster.unplace(id).await,
            Err(e) => tracing::warn!(sandbox = %id, "cannot destroy sandbox: {e}"),
        }
    }
    // Placed here but not on the node: its placement goes when nothing
    // can still boot it there — at the control plane's start, what has no
    // live row; while it serves, what is recorded killed (a teardown the
    // node's loss cut short, the node having lost the sandbox meanwhile).
    for id in placed.difference(&on_host) {
        if known.contains(id) {
            continue;
        }
        let gone = at_start
            || matches!(
                st.db.get_sandbox(id.clone()).await,
                Ok(Some(r)) if r.state == SandboxState::Killed
            );
        if gone {
            cluster.unplace(id).await;
        }
    }
    let on_host: BTreeSet<String> = on_host.intersection(&known).cloned().collect();
    reconcile(st, rows, &on_host).await;
    cluster.reconciled(node, instance);
    tracing::info!(%node, %instance, "node reconciled");
    true
}

/// Follows the cluster's nodes: reconciles each node that joins, comes
/// back or restarts ([`readopt_node`]), and reports each one lost.
/// The first look, at the control plane's start, runs before it serves.
pub(crate) async fn follow_cluster(st: &Arc<AppState>, at_start: bool) {
    let Some(cluster) = st.cluster.clone() else {
        return;
    };
    let changes = match cluster.refresh().await {
        Ok(changes) => changes,
        Err(e) => {
            tracing::warn!("cannot read the cluster's nodes: {e}");
            return;
        }
    };
    // Among control planes sharing a store, the one that leads reconciles
    // ([`crate::replicas`]); the others only follow the nodes.
    if !st.db.leads() {
        cluster.forget_reconciled();
        return;
    }
    for change in changes {
        match change {
            crate::node::cluster::Change::Joined { node, instance } => {
                tracing::info!(%node, %instance, "node alive");
                readopt_node(st, &cluster, &node, &instance, at_start && !st.replicated).await;
            }
            crate::node::cluster::Change::Lost { node, since_ms } => {
                let on = cluster.sandboxes_on(&node);
                tracing::warn!(
                    %node,
                    sandboxes = on.len(),
                    "node lost: no heartbeat for {} s; its sandboxes are unreachable until it comes back",
                    (time::now_ms() - since_ms).max(0) / 1000
                );
                for id in on {
                    journal(st, &id, format!("its node {node} is lost (no heartbeat)"));
                }
            }
        }
    }
}

/// Starts the task that follows the cluster ([`follow_cluster`]) every
/// `every`, until the server stops.
pub(crate) fn spawn_cluster_follower(st: Arc<AppState>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = st.reaper_stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            follow_cluster(&st, false).await;
        }
    });
}

/// Re-adopts one sandbox of the database, or says why it must be
/// destroyed.
///
/// A paused container is kept paused, with the lifetime it had left, and
/// its agent is not asked anything (it is frozen). The database and runc
/// can disagree about pausing when the server stopped between the two
/// steps of a pause or resume; runc wins: a container paused by a pause
/// that was not recorded is recorded paused (unless its lifetime is over),
/// one thawed by a resume that was not recorded runs with the lifetime it
/// had left.
async fn readopt_one(st: &Arc<AppState>, row: &SandboxRow, now: i64) -> Result<(), &'static str> {
    if row.state == SandboxState::Starting {
        return Err("it was still starting when the server stopped");
    }
    if row.state == SandboxState::Paused && row.pause_mode == Some(PauseMode::Filesystem) {
        return readopt_stopped(st, row, now).await;
    }
    let status = match st.node.status(&row.id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(sandbox = %row.id, "cannot read the sandbox's state: {e}");
            None
        }
    };
    let remaining = match row.state {
        SandboxState::Paused => row.paused_remaining_ms.unwrap_or(0).max(0),
        _ => row.end_at.saturating_sub(now),
    };
    if status == Some(SandboxStatus::Paused) {
        if row.state != SandboxState::Paused {
            if remaining <= 0 {
                return Err("it expired while the server was down");
            }
            if let Err(e) = st
                .db
                .set_paused(row.id.clone(), remaining, PauseMode::Memory)
                .await
            {
                tracing::warn!(sandbox = %row.id, "cannot record sandbox paused: {e}");
            }
        }
        tracing::info!(sandbox = %row.id, "re-adopted paused sandbox");
        let agent_pid = match st.node.agent_pid(&row.id).await {
            Ok(Some(pid)) => Some(pid),
            Ok(None) => {
                tracing::warn!(sandbox = %row.id, "paused sandbox has no init pid");
                None
            }
            Err(e) => {
                tracing::warn!(sandbox = %row.id, "cannot read the sandbox's init pid: {e}");
                None
            }
        };
        route_paused(st, row, now, remaining, PauseMode::Memory, agent_pid);
        return Ok(());
    }
    let adopted = match st.node.adopt(&row.id).await {
        Ok(adopted) => adopted,
        Err(e) => {
            tracing::warn!(sandbox = %row.id, "cannot adopt sandbox: {e}");
            None
        }
    };
    let Some(sandbox) = adopted else {
        return Err("it is no longer running");
    };
    let end_at = match row.state {
        SandboxState::Paused => {
            let end_at = now.saturating_add(remaining);
            if let Err(e) = st.db.set_running(row.id.clone(), end_at).await {
                tracing::warn!(sandbox = %row.id, "cannot record sandbox running: {e}");
            }
            end_at
        }
        _ => row.end_at,
    };
    if end_at <= now {
        return Err("it expired while the server was down");
    }
    tracing::info!(sandbox = %row.id, "re-adopted running sandbox");
    journal(st, &row.id, "re-adopted by the server at its start");
    route_running(
        st,
        &row.id,
        LiveSandbox::running(sandbox.agent, end_at, sandbox.init_pid, row),
    );
    Ok(())
}

/// Re-adopts a sandbox paused filesystem-only: stops it with its disk kept
/// — a no-op if it was stopped, else it finishes the pause, or undoes the
/// resume, the server was in the middle of — and keeps it paused with the
/// lifetime it had left. Destroyed only if its disk is gone; a stop that
/// fails otherwise keeps it paused (a `connect` tries again).
async fn readopt_stopped(
    st: &Arc<AppState>,
    row: &SandboxRow,
    now: i64,
) -> Result<(), &'static str> {
    match st.node.stop_keep_disk(&row.id).await {
        Ok(()) => {}
        Err(NodeError::NoKeptDisk(_)) => return Err("its disk is gone"),
        Err(e) => tracing::warn!(sandbox = %row.id, "cannot stop the paused sandbox: {e}"),
    }
    let remaining = row.paused_remaining_ms.unwrap_or(0).max(0);
    tracing::info!(sandbox = %row.id, "re-adopted sandbox paused filesystem-only");
    route_paused(st, row, now, remaining, PauseMode::Filesystem, None);
    Ok(())
}

/// Routes to running sandbox `id` (the front door serves it from now on),
/// watches its agent and arms its expiry. The caller records it running.
fn route_running(st: &Arc<AppState>, id: &str, sandbox: LiveSandbox) {
    let pid = sandbox.agent_pid;
    st.live().insert(id.to_owned(), sandbox);
    if let Some(pid) = pid {
        watch_agent(st, id, pid);
    }
    st.reaper_wake.notify_one();
}

/// Knows re-adopted sandbox `row` paused `mode` with `remaining` ms of its
/// lifetime left (not routed to; its frozen agent, if any, watched).
fn route_paused(
    st: &Arc<AppState>,
    row: &SandboxRow,
    now: i64,
    remaining: i64,
    mode: PauseMode,
    agent_pid: Option<u32>,
) {
    st.live().insert(
        row.id.clone(),
        LiveSandbox {
            agent: st.node.agent_link(&row.id),
            end_at: now.saturating_add(remaining),
            paused: Some(Paused {
                remaining_ms: remaining,
                mode,
            }),
            agent_pid,
            lifecycle: row.lifecycle,
            ingress: row.ingress.clone(),
            team: row.team_id.clone(),
        },
    );
    if let Some(pid) = agent_pid {
        watch_agent(st, &row.id, pid);
    }
}

/// Marks paused sandbox `id` running again until `end_at`: routed to,
/// recorded, its expiry re-armed — with the new agent of `booted` if it
/// was booted again on its files (else its thawed agent stays watched).
/// `Ok(false)` if it was killed meanwhile.
async fn mark_resumed(
    st: &Arc<AppState>,
    id: &str,
    end_at: i64,
    booted: Option<&Booted>,
) -> Result<bool, SandboxError> {
    {
        let mut live = st.live();
        let Some(entry) = live.get_mut(id) else {
            return Ok(false);
        };
        entry.paused = None;
        entry.end_at = end_at;
        if let Some(sandbox) = booted {
            entry.agent = sandbox.agent.clone();
            entry.agent_pid = Some(sandbox.init_pid);
        }
    }
    if let Some(sandbox) = booted {
        watch_agent(st, id, sandbox.init_pid);
    }
    st.db.set_running(id.to_string(), end_at).await?;
    st.reaper_wake.notify_one();
    Ok(true)
}

/// Watches a live sandbox's agent (its container's init, host pid `pid`)
/// through a pidfd: if it exits while the sandbox is still live — killed
/// from the host, crashed, or out of memory — the sandbox cannot serve
/// anything any more, so it is destroyed and reported killed at once,
/// instead of lingering until its expiry. A sandbox killed through the API
/// is no longer live when its agent exits, and one paused filesystem-only
/// (or booted again since) no longer has this agent, so nothing more
/// happens then.
pub(crate) fn watch_agent(st: &Arc<AppState>, id: &str, pid: u32) {
    let st = st.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let exited = async {
            if let Err(e) = st.node.agent_exited(&id, pid).await {
                tracing::warn!(sandbox = %id, "cannot watch the sandbox's agent: {e}");
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = st.reaper_stop.cancelled() => return,
            _ = exited => {}
        }
        let ours = st.live().get(&id).is_some_and(|e| e.agent_pid == Some(pid));
        if !ours {
            return;
        }
        tracing::warn!(sandbox = %id, "the sandbox's agent exited; destroying the sandbox");
        if let Err(e) = kill_sandbox(&st, &id).await {
            tracing::warn!(sandbox = %id, "{}", e);
        }
    });
}

/// Starts the task that destroys sandboxes when they expire, or pauses
/// those created with `autoPause`.
pub(crate) fn spawn_reaper(st: Arc<AppState>) {
    tokio::spawn(async move {
        loop {
            // Among control planes sharing a store, the one that leads
            // reaps ([`crate::replicas`]).
            if !st.db.leads() {
                tokio::select! {
                    _ = st.reaper_stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let now = time::now_ms();
            let (expired, next): (Vec<String>, Option<i64>) = {
                let live = st.live();
                // Paused sandboxes do not expire.
                let running = || live.iter().filter(|(_, s)| s.paused.is_none());
                let expired = running()
                    .filter(|(_, s)| s.end_at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                let next = running().map(|(_, s)| s.end_at).filter(|&t| t > now).min();
                (expired, next)
            };
            for id in expired {
                let auto_pause = st.live().get(&id).and_then(|e| e.lifecycle.auto_pause);
                if let Some(mode) = auto_pause {
                    tracing::info!(sandbox = %id, mode = mode.as_str(), "sandbox timed out; pausing it");
                    journal(&st, &id, "sandbox timed out; pausing it");
                    let Err(e) = pause_sandbox(&st, &id, mode).await else {
                        continue;
                    };
                    // One left running would time out again at once.
                    let running = st.live().get(&id).is_some_and(|e| e.paused.is_none());
                    if !running {
                        tracing::warn!(sandbox = %id, "{}", e);
                        continue;
                    }
                    tracing::warn!(sandbox = %id, "cannot pause the sandbox, killing it: {}", e);
                } else {
                    tracing::info!(sandbox = %id, "sandbox timed out");
                    journal(&st, &id, "sandbox timed out");
                }
                if let Err(e) = kill_sandbox(&st, &id).await {
                    tracing::warn!(sandbox = %id, "{}", e);
                }
            }
            let sleep = match next {
                Some(t) => Duration::from_millis(u64::try_from(t - now).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            // A replica that may lose the lead looks again soon.
            let sleep = if st.replicated {
                sleep.min(Duration::from_secs(1))
            } else {
                sleep
            };
            tokio::select! {
                _ = st.reaper_stop.cancelled() => return,
                _ = st.reaper_wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    });
}

mod queries;
mod snapshots;
#[cfg(test)]
mod tests;

pub(crate) use queries::{
    Filter, LISTED, create, find, find_owned, fork, kill, latest_metrics, list, logs, metrics,
    pause, resume, snapshot,
};
pub(crate) use snapshots::{fork_sandbox, list_snapshots, snapshot_sandbox};
