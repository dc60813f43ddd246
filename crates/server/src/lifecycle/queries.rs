//! What the registry answers about its sandboxes, and the operations the
//! HTTP layer starts: each runs to completion in a task of its own, so a
//! client that goes away never leaves a sandbox half-made or its record
//! behind its container.

use std::future::Future;
use std::sync::Arc;

use hutch_image::TemplateMetadata;

use super::{
    CreateArgs, PauseOutcome, ResumeOutcome, SandboxError, create_sandbox, fork_sandbox,
    kill_sandbox, pause_sandbox, resume_sandbox, snapshot_sandbox,
};
use crate::db::{PauseMode, SandboxRow, SandboxState};
use crate::metrics::{self, SandboxMetric};
use crate::sandbox_logs;
use crate::state::AppState;

/// Which sandboxes a listing asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// The team they belong to.
    pub team: String,
    /// Their states (running and paused only: the others are not listed).
    pub states: Vec<SandboxState>,
    /// Metadata they all have (key, value).
    pub metadata: Vec<(String, String)>,
    /// Their template's id or name; `None` or empty for any.
    pub template: Option<String>,
    /// Only those started at or after this (unix ms).
    pub started_after: Option<i64>,
}

/// The sandboxes `filter` asks for, oldest first.
pub(crate) async fn list(st: &AppState, filter: &Filter) -> Result<Vec<SandboxRow>, SandboxError> {
    let rows = st.db.sandboxes_in(&filter.states).await?;
    let live = st.live();
    Ok(rows
        .into_iter()
        .filter(|r| r.team_id == filter.team && live.contains_key(&r.id))
        .filter(|r| {
            filter
                .metadata
                .iter()
                .all(|(k, v)| r.metadata.get(k).is_some_and(|x| x == v))
        })
        .filter(|r| {
            filter.template.as_deref().is_none_or(|t| {
                t.is_empty()
                    || t == r.template_id
                    || t == r.template_name
                    // A tagged build of the template.
                    || r.template_name.split_once('@').is_some_and(|(name, _)| name == t)
            })
        })
        .filter(|r| filter.started_after.is_none_or(|t| r.started_at >= t))
        .collect())
}

/// Whether sandbox `id` is running or paused and team `team`'s: another
/// team's sandboxes are answered as absent. Among control planes sharing
/// a store, one made through another an instant ago is loaded first.
async fn owns(st: &Arc<AppState>, team: &str, id: &str) -> bool {
    crate::replicas::ensure_known(st, id).await;
    st.live().get(id).is_some_and(|e| e.team == team)
}

/// Team `team`'s sandbox `id` while it is in one of `states` (running or
/// paused).
pub(crate) async fn find_owned(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    states: &[SandboxState],
) -> Result<SandboxRow, SandboxError> {
    if !owns(st, team, id).await {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    find(st, id, states).await
}

/// The sandbox `id` while it is in one of `states` (running or paused).
pub(crate) async fn find(
    st: &AppState,
    id: &str,
    states: &[SandboxState],
) -> Result<SandboxRow, SandboxError> {
    if !st.live().contains_key(id) {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    st.db
        .get_sandbox(id.to_string())
        .await?
        .filter(|r| states.contains(&r.state))
        .ok_or_else(|| SandboxError::NotFound(id.to_string()))
}

/// The running and paused states.
pub(crate) const LISTED: &[SandboxState] = &[SandboxState::Running, SandboxState::Paused];

/// A usage sample of the running or paused sandbox `id` (see
/// [`crate::metrics`]); none for one paused filesystem-only (nothing of it
/// runs).
pub(crate) async fn metrics(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    start: Option<i64>,
    end: Option<i64>,
) -> Result<Vec<SandboxMetric>, SandboxError> {
    crate::replicas::ensure_known(st, id).await;
    let stopped = match st.live().get(id) {
        Some(e) if e.team == team => e.paused.is_some_and(|p| p.mode == PauseMode::Filesystem),
        _ => return Err(SandboxError::NotFound(id.to_string())),
    };
    let series = st.metrics.range(id, start, end);
    // Not sampled yet (it has just started): a sample now, when the range
    // reaches now.
    let now_s = crate::time::now_ms().div_euclid(1000);
    let reaches_now = start.is_none_or(|s| s <= now_s) && end.is_none_or(|e| e >= now_s);
    if !series.is_empty() || stopped || !reaches_now {
        return Ok(series);
    }
    Ok(vec![sample_now(st, id).await?])
}

/// The latest sample of each of `ids` that is a running (or paused)
/// sandbox of team `team`; sandboxes not sampled yet are sampled now (at
/// once, for all of them).
pub(crate) async fn latest_metrics(
    st: &AppState,
    team: &str,
    ids: &[String],
) -> Result<Vec<(String, SandboxMetric)>, SandboxError> {
    let known: Vec<String> = {
        let live = st.live();
        ids.iter()
            .filter(|id| live.get(*id).is_some_and(|e| e.team == team))
            .cloned()
            .collect()
    };
    let samples = futures::future::join_all(known.iter().map(|id| async move {
        match st.metrics.latest(id) {
            Some(m) => Some(m),
            None => sample_now(st, id).await.ok(),
        }
    }))
    .await;
    Ok(known
        .into_iter()
        .zip(samples)
        .filter_map(|(id, m)| m.map(|m| (id, m)))
        .collect())
}

/// The log entries of sandbox `id` (running, paused or killed) that `q`
/// asks for; a killed sandbox's log is kept for
/// [`crate::sandbox_logs::KEPT_AFTER_END`].
pub(crate) async fn logs(
    st: &AppState,
    team: &str,
    id: &str,
    q: &sandbox_logs::Query,
) -> Result<Vec<sandbox_logs::Entry>, SandboxError> {
    let row = st.db.get_sandbox(id.to_owned()).await?;
    if row.is_none_or(|r| r.team_id != team) {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    Ok(sandbox_logs::select(st.logs.entries(id), q))
}

/// One sample of sandbox `id` taken now.
async fn sample_now(st: &AppState, id: &str) -> Result<SandboxMetric, SandboxError> {
    let row = find(st, id, LISTED).await?;
    let sample = metrics::sample(metrics::Sources {
        node: st.node.clone(),
        id: id.to_string(),
        cpu_count: row.cpu_count,
    })
    .await;
    // Killed while it was measured.
    if !st.live().contains_key(id) {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    sample.map_err(SandboxError::Failed)
}

/// Runs `op` in a task of its own and waits for it.
async fn detached<T: Send + 'static>(
    what: &str,
    op: impl Future<Output = Result<T, SandboxError>> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::spawn(op)
        .await
        .map_err(|e| SandboxError::Failed(format!("{what} task failed: {e}")))?
}

/// [`create_sandbox`], to completion.
pub(crate) async fn create(
    st: &Arc<AppState>,
    args: CreateArgs,
) -> Result<SandboxRow, SandboxError> {
    let st = st.clone();
    detached("sandbox creation", async move {
        create_sandbox(&st, args).await
    })
    .await
}

/// [`kill_sandbox`], to completion; not found unless it was running or
/// paused, and team `team`'s.
pub(crate) async fn kill(st: &Arc<AppState>, team: &str, id: &str) -> Result<(), SandboxError> {
    if !owns(st, team, id).await {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    let (st, task_id) = (st.clone(), id.to_string());
    match detached("kill", async move { kill_sandbox(&st, &task_id).await }).await? {
        true => Ok(()),
        false => Err(SandboxError::NotFound(id.to_string())),
    }
}

/// [`pause_sandbox`] of team `team`'s sandbox, to completion.
pub(crate) async fn pause(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    mode: PauseMode,
) -> Result<PauseOutcome, SandboxError> {
    if !owns(st, team, id).await {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    let (st, id) = (st.clone(), id.to_string());
    detached("pause", async move { pause_sandbox(&st, &id, mode).await }).await
}

/// [`resume_sandbox`] of team `team`'s sandbox, to completion; then the
/// sandbox's row.
pub(crate) async fn resume(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    timeout_secs: Option<u64>,
    memory: Option<bool>,
) -> Result<(ResumeOutcome, SandboxRow), SandboxError> {
    if !owns(st, team, id).await {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    let (task_st, task_id) = (st.clone(), id.to_string());
    let outcome = detached("resume", async move {
        resume_sandbox(&task_st, &task_id, timeout_secs, memory).await
    })
    .await?;
    if outcome == ResumeOutcome::NotFound {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    Ok((outcome, find(st, id, &[SandboxState::Running]).await?))
}

/// [`snapshot_sandbox`] of team `team`'s sandbox, to completion.
pub(crate) async fn snapshot(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    name: Option<String>,
) -> Result<TemplateMetadata, SandboxError> {
    if !owns(st, team, id).await {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    let (st, id) = (st.clone(), id.to_string());
    detached(
        "snapshot",
        async move { snapshot_sandbox(&st, &id, name).await },
    )
    .await
}

/// [`fork_sandbox`] of team `team`'s sandbox, to completion.
pub(crate) async fn fork(
    st: &Arc<AppState>,
    team: &str,
    id: &str,
    timeout_secs: Option<u64>,
    count: u64,
) -> Result<Vec<Result<SandboxRow, SandboxError>>, SandboxError> {
    if !owns(st, team, id).await {
        return Err(SandboxError::NotFound(id.to_string()));
    }
    let (st, id) = (st.clone(), id.to_string());
    detached("fork", async move {
        fork_sandbox(&st, &id, timeout_secs, count).await
    })
    .await
}
