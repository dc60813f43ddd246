//! E2B's sandbox routes. Field names, status codes and error bodies follow
//! E2B's control-plane API so the official SDKs work unchanged.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hutch_protocol::api::{
    AutoResume, ConnectSandbox, ForkError, ForkRequest, ForkResult, LifecycleInfo, ListedSandbox,
    LogLevel, NewSandbox, PauseSandbox, SandboxCreated, SandboxLogEntry, SandboxLogLine,
    SandboxLogs, SandboxLogsV2, SandboxNetwork, SandboxNetworkUpdate, SandboxVolumeMount,
    SnapshotInfo, SnapshotRequest,
};
use hutch_runtime::EgressPolicy;
use serde::Deserialize;

use crate::auth::Caller;
use crate::db::{Ingress, Lifecycle, PauseMode, SandboxRow, SandboxState};
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::frontdoor::MASK_PORT;
use crate::ids;
use crate::lifecycle::Filter;
use crate::lifecycle::{self, CreateArgs, PauseOutcome, ResumeOutcome, timeout_ms};
use crate::metrics::SandboxMetric;
use crate::sandbox_logs;
use crate::state::AppState;
use crate::{
    CLIENT_ID, DEFAULT_REFRESH_SECS, DEFAULT_SANDBOX_TIMEOUT_SECS, ENVD_VERSION,
    MAX_SANDBOX_TIMEOUT_SECS, time,
};

/// The lifecycle a create asks for, or a 400: a sandbox that auto-pauses
/// filesystem-only cannot auto-resume (a request has nothing running to
/// wake; `connect` boots it again).
fn lifecycle_of(
    auto_pause: Option<bool>,
    auto_pause_memory: Option<bool>,
    auto_resume: Option<AutoResume>,
) -> Result<Lifecycle, ApiError> {
    let auto_pause = auto_pause.unwrap_or(false).then(|| {
        if auto_pause_memory.unwrap_or(true) {
            PauseMode::Memory
        } else {
            PauseMode::Filesystem
        }
    });
    let auto_resume = auto_resume.is_some_and(|r| r.enabled);
    if auto_resume && auto_pause == Some(PauseMode::Filesystem) {
        return Err(ApiError::bad_request(
            "autoResume cannot be combined with autoPauseMemory: false: a sandbox paused \
             filesystem-only is resumed with connect",
        ));
    }
    Ok(Lifecycle {
        auto_pause,
        auto_resume,
    })
}

/// The egress policy a create asks for, or a 400 naming the first entry
/// refused.
fn egress_policy(
    allow_internet_access: Option<bool>,
    network: Option<SandboxNetwork>,
) -> Result<EgressPolicy, ApiError> {
    let network = network.unwrap_or_default();
    egress_lists(allow_internet_access, network.allow_out, network.deny_out)
}

/// How requests may reach a new sandbox's ports: a fresh traffic access
/// token when `allowPublicTraffic` is `false`, and a checked
/// `maskRequestHost`.
fn ingress_of(network: Option<&SandboxNetwork>) -> Result<Ingress, ApiError> {
    let Some(network) = network else {
        return Ok(Ingress::default());
    };
    let mask = network.mask_request_host.clone().filter(|m| !m.is_empty());
    if let Some(m) = &mask {
        let sample = m.replace(MASK_PORT, "8080");
        if sample.len() > 253 || HeaderValue::from_str(&sample).is_err() || sample.contains(' ') {
            return Err(ApiError::bad_request(format!(
                "network.maskRequestHost: '{m}' is not a host (name or address, with an optional port; {MASK_PORT} stands for the port)"
            )));
        }
    }
    Ok(Ingress {
        traffic_token: (network.allow_public_traffic == Some(false)).then(ids::new_access_token),
        mask_request_host: mask,
    })
}

/// A policy of internet access (allowed when absent) and allow and deny
/// lists; a 400 naming the entry that is refused
/// ([`EgressPolicy::from_lists`]).
fn egress_lists(
    allow_internet_access: Option<bool>,
    allow_out: Option<Vec<String>>,
    deny_out: Option<Vec<String>>,
) -> Result<EgressPolicy, ApiError> {
    EgressPolicy::from_lists(
        allow_internet_access.unwrap_or(true),
        &allow_out.unwrap_or_default(),
        &deny_out.unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// E2B's name for a pause mode.
fn pause_mode_name(mode: PauseMode) -> &'static str {
    match mode {
        PauseMode::Memory => ListedSandbox::PAUSED_FULL,
        PauseMode::Filesystem => ListedSandbox::PAUSED_FILESYSTEM,
    }
}

/// Sandbox `row` as listed, with its node on a cluster.
fn listed(st: &AppState, row: &SandboxRow) -> ListedSandbox {
    let mut listed = ListedSandbox::from(row);
    if let Some(at) = st.cluster.as_ref().and_then(|c| c.node_of(&row.id)) {
        listed.hutch_node = Some(at.node);
        listed.hutch_node_state = Some(
            if at.lost {
                ListedSandbox::NODE_LOST
            } else {
                ListedSandbox::NODE_ALIVE
            }
            .to_owned(),
        );
    }
    listed
}

impl From<&SandboxRow> for ListedSandbox {
    fn from(r: &SandboxRow) -> Self {
        ListedSandbox {
            template_id: r.template_id.clone(),
            alias: Some(r.template_name.clone()),
            sandbox_id: r.id.clone(),
            client_id: CLIENT_ID.to_string(),
            started_at: time::rfc3339(r.started_at),
            end_at: time::rfc3339(r.end_at),
            cpu_count: r.cpu_count,
            memory_mb: r.memory_mb,
            disk_size_mb: r.disk_size_mb,
            hutch_pids: r.pids,
            state: match r.state {
                SandboxState::Paused => ListedSandbox::PAUSED,
                _ => ListedSandbox::RUNNING,
            }
            .to_string(),
            envd_version: ENVD_VERSION.to_string(),
            metadata: r.metadata.clone(),
            domain: None,
            envd_access_token: r.access_token.clone(),
            lifecycle: LifecycleInfo {
                on_timeout: if r.lifecycle.auto_pause.is_some() {
                    "pause"
                } else {
                    "kill"
                }
                .to_string(),
                auto_resume: r.lifecycle.auto_resume,
            },
            pause_mode: r
                .pause_mode
                .filter(|_| r.state == SandboxState::Paused)
                .map(|m| pause_mode_name(m).to_string()),
            hutch_auto_pause_memory: r.lifecycle.auto_pause.map(|m| m == PauseMode::Memory),
            volume_mounts: r
                .volume_mounts
                .iter()
                .map(|m| SandboxVolumeMount {
                    name: m.name.clone(),
                    path: m.path.clone(),
                })
                .collect(),
            hutch_node: None,
            hutch_node_state: None,
        }
    }
}

/// The answer to a create or a connect.
fn created(row: SandboxRow) -> SandboxCreated {
    SandboxCreated {
        template_id: row.template_id,
        sandbox_id: row.id,
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        alias: Some(row.template_name),
        domain: None,
        envd_access_token: row.access_token,
        traffic_access_token: row.ingress.traffic_token,
    }
}

/// A body's optional `timeout`, checked as [`check_timeout`] does.
fn optional_timeout(secs: Option<u64>) -> Result<Option<u64>, ApiError> {
    secs.map(|secs| check_timeout(secs, "timeout")).transpose()
}

fn check_timeout(secs: u64, what: &str) -> Result<u64, ApiError> {
    if secs == 0 {
        return Err(ApiError::bad_request(format!(
            "{what} must be at least 1 second"
        )));
    }
    if secs > MAX_SANDBOX_TIMEOUT_SECS {
        return Err(ApiError::bad_request(format!(
            "{what} {secs}s is above the maximum of {MAX_SANDBOX_TIMEOUT_SECS}s"
        )));
    }
    Ok(secs)
}

#[utoipa::path(
    post,
    path = "/sandboxes",
    tag = "sandboxes",
    request_body = NewSandbox,
    responses((status = 201, description = "The sandbox started.", body = SandboxCreated), (status = 400, description = "An invalid request.", body = super::openapi::Error), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
pub(super) async fn create(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewSandbox>,
) -> Result<Response, ApiError> {
    let timeout_secs = check_timeout(
        body.timeout.unwrap_or(DEFAULT_SANDBOX_TIMEOUT_SECS),
        "timeout",
    )?;
    let env = body.env_vars.unwrap_or_default();
    let env_list: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    hutch_env::validate_sandbox_env(&env_list).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ingress = ingress_of(body.network.as_ref())?;
    let network = egress_policy(body.allow_internet_access, body.network)?;
    let lifecycle = lifecycle_of(body.auto_pause, body.auto_pause_memory, body.auto_resume)?;
    let args = CreateArgs {
        team: caller.team,
        template: body.template_id,
        timeout_secs,
        metadata: body.metadata.unwrap_or_default(),
        env,
        access_token: body.secure.unwrap_or(false).then(ids::new_access_token),
        network,
        limits: crate::limits::Requested {
            cpu_count: body.cpu_count,
            memory_mb: body.memory_mb,
            disk_size_mb: body.disk_size_mb,
            pids: body.hutch_pids,
        },
        lifecycle,
        ingress,
        volume_mounts: body
            .volume_mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.name, m.path))
            .collect(),
    };
    let row = lifecycle::create(&st, args).await?;
    Ok((StatusCode::CREATED, Json(created(row))).into_response())
}

/// `POST /v2/sandboxes`: as `POST /sandboxes`.
#[utoipa::path(
    post,
    path = "/v2/sandboxes",
    tag = "sandboxes",
    request_body = NewSandbox,
    responses((status = 201, description = "The sandbox started.", body = SandboxCreated), (status = 400, description = "An invalid request.", body = super::openapi::Error), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
pub(super) async fn create_v2(
    st: State<Arc<AppState>>,
    caller: Caller,
    body: ApiJson<NewSandbox>,
) -> Result<Response, ApiError> {
    create(st, caller, body).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    /// `k=v&k2=v2`, itself URL-encoded in the query.
    metadata: Option<String>,
    /// Comma-separated states (`running`, `paused`).
    state: Option<String>,
    /// A template id or name.
    template: Option<String>,
    /// `asc` or `desc` (the default: newest first), by start time.
    order: Option<String>,
    /// RFC 3339: only sandboxes started then or later.
    started_after: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// Largest page `GET /v2/sandboxes` returns.
const MAX_PAGE: usize = 1000;
/// Page size when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

/// The listing `q` asks for, in `states`.
fn filter(team: &str, q: &ListQuery, states: Vec<SandboxState>) -> Result<Filter, ApiError> {
    Ok(Filter {
        team: team.to_owned(),
        states,
        metadata: match &q.metadata {
            Some(m) => parse_metadata_filter(m)?,
            None => Vec::new(),
        },
        template: q.template.clone(),
        started_after: match q.started_after.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "invalid startedAfter '{s}': {e} (expected an RFC 3339 time)"
                        ))
                    })?
                    .timestamp_millis(),
            ),
        },
    })
}

/// `GET /sandboxes`: running sandboxes only, as E2B's v1 list.
#[utoipa::path(
    get,
    path = "/sandboxes",
    tag = "sandboxes",
    params(ListQuery),
    responses((status = 200, description = "The running sandboxes.", body = Vec<ListedSandbox>))
)]
pub(super) async fn list_v1(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ListedSandbox>>, ApiError> {
    let rows =
        lifecycle::list(&st, &filter(&caller.team, &q, vec![SandboxState::Running])?).await?;
    Ok(Json(rows.iter().map(|r| listed(&st, r)).collect()))
}

/// The states a `state=` filter names; running and paused when absent.
fn parse_states(filter: Option<&str>) -> Result<Vec<SandboxState>, ApiError> {
    let Some(filter) = filter else {
        return Ok(vec![SandboxState::Running, SandboxState::Paused]);
    };
    let mut states = Vec::new();
    for s in filter.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let state = match s {
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            bad => {
                return Err(ApiError::bad_request(format!(
                    "unknown sandbox state '{bad}': expected running or paused"
                )));
            }
        };
        if !states.contains(&state) {
            states.push(state);
        }
    }
    if states.is_empty() {
        states = vec![SandboxState::Running, SandboxState::Paused];
    }
    Ok(states)
}

/// `GET /v2/sandboxes`: running and paused sandboxes (`state` filters),
/// paged.
#[utoipa::path(
    get,
    path = "/v2/sandboxes",
    tag = "sandboxes",
    params(ListQuery),
    responses((status = 200, description = "A page of the running and paused sandboxes.", body = Vec<ListedSandbox>, headers(("x-next-token" = String, description = "The next page's `nextToken`, when there is one."), ("x-total-running" = u64, description = "How many of the team's sandboxes run."))))
)]
pub(super) async fn list_v2(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let states = parse_states(q.state.as_deref())?;
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_PAGE),
    };
    let newest_first = match q.order.as_deref().filter(|o| !o.is_empty()) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "invalid order '{o}': expected asc or desc"
            )));
        }
    };
    let mut rows = lifecycle::list(&st, &filter(&caller.team, &q, states)?).await?;
    let running = st
        .live()
        .values()
        .filter(|s| s.team == caller.team && s.paused.is_none())
        .count();
    // Rows come oldest first; the token names the last row returned, and
    // the page goes on after it in the order asked for (a row gone
    // meanwhile does not break it).
    if newest_first {
        rows.reverse();
    }
    if let Some(token) = &q.next_token {
        let (started, id) = parse_token(token)?;
        let key = (started, id.as_str());
        rows.retain(|r| {
            let at = (r.started_at, r.id.as_str());
            if newest_first { at < key } else { at > key }
        });
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut headers = HeaderMap::new();
    headers.insert("x-total-running", HeaderValue::from(running));
    if more && let Some(last) = rows.last() {
        let token = format!("{}.{}", last.started_at, last.id);
        if let Ok(v) = HeaderValue::from_str(&token) {
            headers.insert("x-next-token", v);
        }
    }
    let body: Vec<ListedSandbox> = rows.iter().map(|r| listed(&st, r)).collect();
    Ok((headers, Json(body)).into_response())
}

fn parse_token(token: &str) -> Result<(i64, String), ApiError> {
    token
        .split_once('.')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, id.to_string())))
        .ok_or_else(|| ApiError::bad_request(format!("invalid nextToken '{token}'")))
}

/// `k=v&k2=v2` (keys and values percent-encoded) → pairs.
fn parse_metadata_filter(s: &str) -> Result<Vec<(String, String)>, ApiError> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid metadata filter '{pair}': expected key=value"
                ))
            })?;
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("invalid percent-encoding in '{s}'"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("metadata filter '{s}' is not UTF-8")))
}

fn sandbox_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("sandbox '{id}' not found"))
}

#[utoipa::path(
    get,
    path = "/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    responses((status = 200, description = "The sandbox.", body = ListedSandbox), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn detail(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ListedSandbox>, ApiError> {
    let row = lifecycle::find_owned(&st, &caller.team, &id, lifecycle::LISTED).await?;
    Ok(Json(listed(&st, &row)))
}

#[utoipa::path(
    delete,
    path = "/sandboxes/{id}",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    responses((status = 204, description = "Killed."), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn kill(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    lifecycle::kill(&st, &caller.team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/connect` (and `/v2/...`): 200 with the sandbox
/// while it runs (a given `timeout` extends its life to at least now +
/// timeout); 201 after resuming a paused one (its expiry re-armed at now +
/// the lifetime it had left, or the default lifetime when none was left,
/// or now + `timeout` when given). A sandbox paused filesystem-only is
/// booted again on its files (see [`crate::lifecycle`]).
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/connect",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<ConnectSandbox>,
    responses((status = 200, description = "The sandbox runs.", body = SandboxCreated), (status = 201, description = "The sandbox was resumed.", body = SandboxCreated), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn connect(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConnectSandbox>,
) -> Result<Response, ApiError> {
    let timeout = optional_timeout(body.timeout)?;
    let (resumed, row) = lifecycle::resume(&st, &caller.team, &id, timeout, body.memory).await?;
    let status = match resumed {
        ResumeOutcome::Resumed => StatusCode::CREATED,
        ResumeOutcome::WasRunning | ResumeOutcome::NotFound => StatusCode::OK,
    };
    Ok((status, Json(created(row))).into_response())
}

/// `POST /v2/sandboxes/{id}/connect`: as `POST /sandboxes/{id}/connect`.
#[utoipa::path(
    post,
    path = "/v2/sandboxes/{id}/connect",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<ConnectSandbox>,
    responses((status = 200, description = "The sandbox runs.", body = SandboxCreated), (status = 201, description = "The sandbox was resumed.", body = SandboxCreated), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn connect_v2(
    st: State<Arc<AppState>>,
    caller: Caller,
    id: Path<String>,
    body: ApiJson<ConnectSandbox>,
) -> Result<Response, ApiError> {
    connect(st, caller, id, body).await
}

/// `POST /sandboxes/{id}/resume` (E2B's older way to resume, before
/// `connect`): 201 with the sandbox once resumed (`timeout`: its lifetime
/// from now); 409 when it is running, 404 when unknown. `autoPause` is
/// accepted and ignored.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/resume",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<ConnectSandbox>,
    responses((status = 201, description = "The sandbox was resumed.", body = SandboxCreated), (status = 404, description = "No such sandbox.", body = super::openapi::Error), (status = 409, description = "The sandbox runs.", body = super::openapi::Error))
)]
pub(super) async fn resume(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConnectSandbox>,
) -> Result<Response, ApiError> {
    let timeout = optional_timeout(body.timeout)?;
    let row = lifecycle::find_owned(&st, &caller.team, &id, lifecycle::LISTED).await?;
    if row.state == SandboxState::Running {
        return Err(ApiError::conflict(format!(
            "sandbox {id} is already running"
        )));
    }
    let (resumed, row) = lifecycle::resume(&st, &caller.team, &id, timeout, body.memory).await?;
    if resumed == ResumeOutcome::WasRunning {
        return Err(ApiError::conflict(format!(
            "sandbox {id} is already running"
        )));
    }
    Ok((StatusCode::CREATED, Json(created(row))).into_response())
}

/// `POST /sandboxes/{id}/pause`: 204; 409 when paused already.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/pause",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<PauseSandbox>,
    responses((status = 204, description = "Paused."), (status = 404, description = "No such sandbox.", body = super::openapi::Error), (status = 409, description = "Paused already.", body = super::openapi::Error))
)]
pub(super) async fn pause(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PauseSandbox>,
) -> Result<StatusCode, ApiError> {
    let mode = if body.memory == Some(false) {
        PauseMode::Filesystem
    } else {
        PauseMode::Memory
    };
    match lifecycle::pause(&st, &caller.team, &id, mode).await? {
        PauseOutcome::Paused => Ok(StatusCode::NO_CONTENT),
        PauseOutcome::AlreadyPaused => Err(ApiError::conflict(format!(
            "sandbox {id} is already paused"
        ))),
        PauseOutcome::NotFound => Err(sandbox_not_found(&id)),
    }
}

/// `PUT /sandboxes/{id}/network`: 204 once the sandbox's egress rules are
/// replaced by the body's (a field left out is cleared).
#[utoipa::path(
    put,
    path = "/sandboxes/{id}/network",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<SandboxNetworkUpdate>,
    responses((status = 204, description = "The egress rules are replaced."), (status = 400, description = "An invalid rule.", body = super::openapi::Error), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn set_network(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SandboxNetworkUpdate>,
) -> Result<StatusCode, ApiError> {
    let policy = egress_lists(body.allow_internet_access, body.allow_out, body.deny_out)?;
    lifecycle::set_network(&st, &caller.team, &id, policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/snapshots`: 201 with the snapshot
/// (`Sandbox.create(snapshotID)` starts from it). Its file system only:
/// `memory` is accepted and not kept (see `docs/e2b-compatibility.md`).
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/snapshots",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<SnapshotRequest>,
    responses((status = 201, description = "The snapshot.", body = SnapshotInfo), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn snapshot(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    let name = body.name.filter(|n| !n.is_empty());
    let meta = lifecycle::snapshot(&st, &caller.team, &id, name.clone()).await?;
    Ok((
        StatusCode::CREATED,
        Json(snapshot_info(&meta, name.is_some())),
    ))
}

/// A snapshot as E2B shows it: known by its name when it has one.
pub(super) fn snapshot_info(meta: &hutch_image::TemplateMetadata, named: bool) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: if named {
            meta.name.clone()
        } else {
            meta.id.clone()
        },
        names: if named {
            vec![meta.name.clone()]
        } else {
            Vec::new()
        },
    }
}

/// `POST /sandboxes/{id}/fork`: 201 with one result per fork, a sandbox or
/// why it did not start; 404 when the source is not running or paused.
#[utoipa::path(
    post,
    path = "/sandboxes/{id}/fork",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<ForkRequest>,
    responses((status = 201, description = "One result per fork.", body = Vec<ForkResult>), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn fork(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ForkRequest>,
) -> Result<(StatusCode, Json<Vec<ForkResult>>), ApiError> {
    let timeout = optional_timeout(body.timeout)?;
    let forks = lifecycle::fork(&st, &caller.team, &id, timeout, body.count.unwrap_or(1)).await?;
    let results = forks
        .into_iter()
        .map(|fork| match fork {
            Ok(row) => ForkResult {
                sandbox: Some(created(row)),
                error: None,
            },
            Err(e) => {
                let e = ApiError::from(e);
                ForkResult {
                    sandbox: None,
                    error: Some(ForkError {
                        code: e.status().as_u16(),
                        message: e.message().to_owned(),
                    }),
                }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(results)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct MetricsQuery {
    /// Unix seconds.
    start: Option<i64>,
    /// Unix seconds.
    end: Option<i64>,
}

/// `GET /sandboxes/{id}/metrics`: the samples taken from `start` to `end`
/// (see [`crate::metrics`]), or one taken now for a sandbox not sampled
/// yet; none for a sandbox paused filesystem-only (nothing of it runs).
#[utoipa::path(
    get,
    path = "/sandboxes/{id}/metrics",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id."), MetricsQuery),
    responses((status = 200, description = "The samples.", body = Vec<SandboxMetric>), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn metrics(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    if let (Some(start), Some(end)) = (q.start, q.end)
        && start > end
    {
        return Err(ApiError::bad_request(format!(
            "start ({start}) is after end ({end})"
        )));
    }
    Ok(Json(
        lifecycle::metrics(&st, &caller.team, &id, q.start, q.end).await?,
    ))
}

/// Entries a logs call returns when it gives no `limit`, and at most.
const DEFAULT_LOG_LIMIT: usize = 1000;
const MAX_LOG_LIMIT: usize = 10_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// v1: unix ms, entries from then on.
    start: Option<i64>,
    /// v2: unix ms, entries from (forward) or up to (backward) then.
    cursor: Option<i64>,
    limit: Option<usize>,
    /// v2: `forward` (the default) or `backward`.
    direction: Option<String>,
    /// v2: the lowest level to return.
    level: Option<String>,
    /// v2: only entries containing this (case-insensitive).
    search: Option<String>,
}

impl LogsQuery {
    fn query(&self) -> Result<sandbox_logs::Query, ApiError> {
        let forward = match self.direction.as_deref().filter(|d| !d.is_empty()) {
            None | Some("forward") => true,
            Some("backward") => false,
            Some(d) => {
                return Err(ApiError::bad_request(format!(
                    "unknown direction '{d}': expected forward or backward"
                )));
            }
        };
        let min_level = match self.level.as_deref().filter(|l| !l.is_empty()) {
            None => None,
            Some(l) => Some(LogLevel::from_name(l).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unknown log level '{l}': expected debug, info, warn or error"
                ))
            })?),
        };
        Ok(sandbox_logs::Query {
            cursor: self.cursor.or(self.start),
            limit: self.limit.unwrap_or(DEFAULT_LOG_LIMIT).min(MAX_LOG_LIMIT),
            forward,
            min_level,
            search: self.search.clone().filter(|s| !s.is_empty()),
        })
    }
}

fn log_entry(e: sandbox_logs::Entry) -> SandboxLogEntry {
    SandboxLogEntry {
        timestamp: time::rfc3339_ms(e.at_ms),
        level: e.level,
        message: e.message,
        fields: e.fields,
    }
}

/// A v1 log line: the entry as a JSON object (`level`, `logger` — its
/// source —, `message`, its other fields), as E2B's lines are and as its CLI
/// parses them.
fn log_line(e: &sandbox_logs::Entry) -> String {
    let mut line = serde_json::Map::new();
    for (k, v) in &e.fields {
        line.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    if let Some(source) = e.fields.get("source") {
        line.insert("logger".into(), serde_json::Value::String(source.clone()));
    }
    line.insert(
        "level".into(),
        serde_json::to_value(e.level).unwrap_or_default(),
    );
    line.insert(
        "message".into(),
        serde_json::Value::String(e.message.clone()),
    );
    serde_json::Value::Object(line).to_string()
}

/// `GET /sandboxes/{id}/logs?start=&limit=`: the sandbox's log from
/// `start`, as lines and as entries.
#[utoipa::path(
    get,
    path = "/sandboxes/{id}/logs",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id."), LogsQuery),
    responses((status = 200, description = "The sandbox's log.", body = SandboxLogs), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn logs_v1(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<SandboxLogs>, ApiError> {
    let entries = lifecycle::logs(&st, &caller.team, &id, &q.query()?).await?;
    let logs = entries
        .iter()
        .map(|e| SandboxLogLine {
            timestamp: time::rfc3339_ms(e.at_ms),
            line: log_line(e),
        })
        .collect();
    Ok(Json(SandboxLogs {
        logs,
        log_entries: entries.into_iter().map(log_entry).collect(),
    }))
}

/// `GET /v2/sandboxes/{id}/logs?cursor=&limit=&direction=&level=&search=`.
#[utoipa::path(
    get,
    path = "/v2/sandboxes/{id}/logs",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id."), LogsQuery),
    responses((status = 200, description = "The sandbox's log.", body = SandboxLogsV2), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn logs_v2(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<SandboxLogsV2>, ApiError> {
    let entries = lifecycle::logs(&st, &caller.team, &id, &q.query()?).await?;
    Ok(Json(SandboxLogsV2 {
        logs: entries.into_iter().map(log_entry).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ManyMetricsQuery {
    /// Comma-separated sandbox ids.
    sandbox_ids: Option<String>,
}

/// Most sandboxes one `GET /sandboxes/metrics` asks about.
const MAX_METRICS_IDS: usize = 100;

/// `GET /sandboxes/metrics?sandbox_ids=a,b` → `{sandboxes: {id: sample}}`:
/// the latest sample of each running or paused sandbox named (unknown ones
/// are left out).
#[utoipa::path(
    get,
    path = "/sandboxes/metrics",
    tag = "sandboxes",
    params(ManyMetricsQuery),
    responses((status = 200, description = "The latest sample of each sandbox named.", body = SandboxesMetrics), (status = 400, description = "No or too many ids.", body = super::openapi::Error))
)]
pub(super) async fn many_metrics(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ManyMetricsQuery>,
) -> Result<Json<SandboxesMetrics>, ApiError> {
    let ids: Vec<String> = q
        .sandbox_ids
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "no sandbox ids given ('sandbox_ids')",
        ));
    }
    if ids.len() > MAX_METRICS_IDS {
        return Err(ApiError::bad_request(format!(
            "too many sandbox ids ({}): at most {MAX_METRICS_IDS}",
            ids.len()
        )));
    }
    let latest = lifecycle::latest_metrics(&st, &caller.team, &ids).await?;
    Ok(Json(SandboxesMetrics {
        sandboxes: latest.into_iter().collect(),
    }))
}

/// `GET /sandboxes/metrics`'s answer (E2B's `SandboxesWithMetrics`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(super) struct SandboxesMetrics {
    /// The latest sample of each sandbox, by id.
    sandboxes: std::collections::BTreeMap<String, SandboxMetric>,
}

/// `POST /sandboxes/{id}/timeout` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct TimeoutBody {
    /// The sandbox's lifetime from now, seconds.
    timeout: u64,
}

#[utoipa::path(
    post,
    path = "/sandboxes/{id}/timeout",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = TimeoutBody,
    responses((status = 204, description = "The sandbox ends `timeout` seconds from now."), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn set_timeout(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<StatusCode, ApiError> {
    let secs = check_timeout(body.timeout, "timeout")?;
    let end = time::now_ms().saturating_add(timeout_ms(secs));
    if lifecycle::set_end_at(&st, &caller.team, &id, |_| end).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(sandbox_not_found(&id))
    }
}

/// `POST /sandboxes/{id}/refreshes` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct RefreshBody {
    /// Seconds the sandbox lives at least from now (default 15).
    #[serde(default)]
    duration: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/sandboxes/{id}/refreshes",
    tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id.")),
    request_body = Option<RefreshBody>,
    responses((status = 204, description = "The sandbox lives at least `duration` seconds more."), (status = 404, description = "No such sandbox.", body = super::openapi::Error))
)]
pub(super) async fn refresh(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    let secs = check_timeout(body.duration.unwrap_or(DEFAULT_REFRESH_SECS), "duration")?;
    let end = time::now_ms().saturating_add(timeout_ms(secs));
    if lifecycle::set_end_at(&st, &caller.team, &id, |current| current.max(end)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(sandbox_not_found(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_filters() {
        assert_eq!(
            parse_metadata_filter("a=1&b=x%3Dy+z&c=").unwrap(),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x=y z".to_string()),
                ("c".to_string(), String::new()),
            ]
        );
        assert!(parse_metadata_filter("novalue").is_err());
        assert!(parse_metadata_filter("a=%zz").is_err());
        assert_eq!(parse_metadata_filter("").unwrap(), vec![]);
    }

    #[test]
    fn parses_state_filters() {
        use SandboxState::{Paused, Running};
        assert_eq!(parse_states(None).unwrap(), vec![Running, Paused]);
        assert_eq!(parse_states(Some("paused")).unwrap(), vec![Paused]);
        assert_eq!(
            parse_states(Some("running, paused,running")).unwrap(),
            vec![Running, Paused]
        );
        assert_eq!(parse_states(Some("")).unwrap(), vec![Running, Paused]);
        assert!(parse_states(Some("killed")).is_err());
    }

    #[test]
    fn parses_network_policies() {
        let p = egress_policy(None, None).unwrap();
        assert!(p.is_default());
        let body: NewSandbox = serde_json::from_str(
            r#"{"templateID":"t","allow_internet_access":false,
                "network":{"allowOut":["1.1.1.1","10.0.0.0/8"],"denyOut":["0.0.0.0/0"],"allowPublicTraffic":true}}"#,
        )
        .unwrap();
        let p = egress_policy(body.allow_internet_access, body.network).unwrap();
        assert!(!p.allow_internet_access);
        assert_eq!(p.allow_out.len(), 2);
        assert_eq!(p.deny_out, vec![hutch_runtime::Cidr::ALL_IPV4]);
        let bad = SandboxNetwork {
            deny_out: Some(vec!["10.0.0.0/8".into(), "nope".into()]),
            ..Default::default()
        };
        let e = egress_policy(Some(true), Some(bad)).unwrap_err();
        assert!(
            e.message().contains("network.denyOut[1]"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn ingress_of_a_create() {
        assert_eq!(ingress_of(None).unwrap(), Ingress::default());
        let private = SandboxNetwork {
            allow_public_traffic: Some(false),
            mask_request_host: Some("localhost:${PORT}".into()),
            ..Default::default()
        };
        let ingress = ingress_of(Some(&private)).unwrap();
        assert_eq!(ingress.traffic_token.map(|t| t.len()), Some(32));
        assert_eq!(
            ingress.mask_request_host.as_deref(),
            Some("localhost:${PORT}")
        );
        let public = SandboxNetwork {
            allow_public_traffic: Some(true),
            mask_request_host: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(ingress_of(Some(&public)).unwrap(), Ingress::default());
        for bad in ["a b", "bad\nhost", &"h".repeat(300)] {
            let network = SandboxNetwork {
                mask_request_host: Some(bad.to_owned()),
                ..Default::default()
            };
            let e = ingress_of(Some(&network)).unwrap_err();
            assert!(e.message().contains("maskRequestHost"), "{}", e.message());
        }
    }

    #[test]
    fn parses_lifecycles() {
        let body = |json: &str| -> Result<Lifecycle, ApiError> {
            let b: NewSandbox = serde_json::from_str(json).unwrap();
            lifecycle_of(b.auto_pause, b.auto_pause_memory, b.auto_resume)
        };
        assert_eq!(body(r#"{"templateID":"t"}"#).unwrap(), Lifecycle::default());
        assert_eq!(
            body(r#"{"templateID":"t","autoPause":true}"#).unwrap(),
            Lifecycle {
                auto_pause: Some(PauseMode::Memory),
                auto_resume: false
            }
        );
        assert_eq!(
            body(r#"{"templateID":"t","autoPause":true,"autoPauseMemory":false}"#).unwrap(),
            Lifecycle {
                auto_pause: Some(PauseMode::Filesystem),
                auto_resume: false
            }
        );
        // autoPauseMemory alone changes nothing.
        assert_eq!(
            body(r#"{"templateID":"t","autoPauseMemory":false,"autoResume":{"enabled":true}}"#)
                .unwrap(),
            Lifecycle {
                auto_pause: None,
                auto_resume: true
            }
        );
        assert!(
            !body(r#"{"templateID":"t","autoPause":true,"autoResume":{"enabled":false}}"#)
                .unwrap()
                .auto_resume
        );
        let e = body(
            r#"{"templateID":"t","autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":true}}"#,
        )
        .unwrap_err();
        assert!(e.message().contains("autoResume"), "{}", e.message());
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(parse_token("12.abc").unwrap(), (12, "abc".to_string()));
        assert!(parse_token("abc").is_err());
    }
}
