//! E2B's sandbox routes. Field names, status codes and error bodies follow
//! E2B's control-plane API so the official SDKs work unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::db::{SandboxRow, SandboxState};
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::lifecycle::{self, CreateArgs, timeout_ms};
use crate::state::AppState;
use crate::{
    CLIENT_ID, DEFAULT_REFRESH_SECS, DEFAULT_SANDBOX_TIMEOUT_SECS, ENVD_VERSION,
    MAX_SANDBOX_TIMEOUT_SECS, time,
};

/// `POST /sandboxes` body. Other E2B fields (`autoPause`, `secure`,
/// `allow_internet_access`, `network`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template id or name.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Lifetime in seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// User metadata.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Sandbox-level environment variables (layer 3).
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// E2B's `Sandbox`: the answer to a create.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxCreated {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Agent protocol version.
    pub envd_version: String,
    /// Template name.
    pub alias: Option<String>,
    /// Always null: the SDKs then use `E2B_SANDBOX_URL` or `E2B_DOMAIN`.
    pub domain: Option<String>,
}

/// E2B's `ListedSandbox` / `SandboxDetail`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Template name.
    pub alias: Option<String>,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: when it expires.
    pub end_at: String,
    /// CPUs it may use.
    pub cpu_count: u32,
    /// Memory it may use, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Disk it may use, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running`.
    pub state: String,
    /// Agent protocol version.
    pub envd_version: String,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Always null.
    pub domain: Option<String>,
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
            state: "running".to_string(),
            envd_version: ENVD_VERSION.to_string(),
            metadata: r.metadata.clone(),
            domain: None,
        }
    }
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

pub(super) async fn create(
    State(st): State<Arc<AppState>>,
    ApiJson(body): ApiJson<NewSandbox>,
) -> Result<Response, ApiError> {
    let timeout_secs = check_timeout(
        body.timeout.unwrap_or(DEFAULT_SANDBOX_TIMEOUT_SECS),
        "timeout",
    )?;
    let env = body.env_vars.unwrap_or_default();
    let env_list: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    hutch_env::validate_sandbox_env(&env_list).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let args = CreateArgs {
        template: body.template_id,
        timeout_secs,
        metadata: body.metadata.unwrap_or_default(),
        env,
    };
    // Run to completion even if the client goes away, so that no sandbox
    // is left half-made.
    let task_st = st.clone();
    let row = tokio::spawn(async move { lifecycle::create_sandbox(&task_st, args).await })
        .await
        .map_err(|e| ApiError::internal(format!("sandbox creation task failed: {e}")))??;
    let created = SandboxCreated {
        template_id: row.template_id,
        sandbox_id: row.id,
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        alias: Some(row.template_name),
        domain: None,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    /// `k=v&k2=v2`, itself URL-encoded in the query.
    metadata: Option<String>,
    /// Comma-separated states (`running`, `paused`).
    state: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// Largest page `GET /v2/sandboxes` returns.
const MAX_PAGE: usize = 1000;
/// Page size when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

async fn running_matching(st: &AppState, q: &ListQuery) -> Result<Vec<SandboxRow>, ApiError> {
    let filter = match &q.metadata {
        Some(m) => parse_metadata_filter(m)?,
        None => Vec::new(),
    };
    let rows = st.db.sandboxes_in(&[SandboxState::Running]).await?;
    let live = st.live();
    Ok(rows
        .into_iter()
        .filter(|r| live.contains_key(&r.id))
        .filter(|r| {
            filter
                .iter()
                .all(|(k, v)| r.metadata.get(k).is_some_and(|x| x == v))
        })
        .collect())
}

pub(super) async fn list_v1(
    State(st): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ListedSandbox>>, ApiError> {
    let rows = running_matching(&st, &q).await?;
    Ok(Json(rows.iter().map(ListedSandbox::from).collect()))
}

pub(super) async fn list_v2(
    State(st): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    if let Some(states) = &q.state {
        let states: Vec<&str> = states.split(',').map(str::trim).collect();
        if let Some(bad) = states
            .iter()
            .find(|s| !matches!(**s, "running" | "paused" | ""))
        {
            return Err(ApiError::bad_request(format!(
                "unknown sandbox state '{bad}': expected running or paused"
            )));
        }
        if !states.contains(&"running") {
            return Ok(Json(Vec::<ListedSandbox>::new()).into_response());
        }
    }
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_PAGE),
    };
    let mut rows = running_matching(&st, &q).await?;
    // Rows come oldest first; the token names the last row returned.
    if let Some(token) = &q.next_token {
        let (started, id) = parse_token(token)?;
        rows.retain(|r| (r.started_at, r.id.as_str()) > (started, id.as_str()));
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut headers = HeaderMap::new();
    if more && let Some(last) = rows.last() {
        let token = format!("{}.{}", last.started_at, last.id);
        if let Ok(v) = HeaderValue::from_str(&token) {
            headers.insert("x-next-token", v);
        }
    }
    let body: Vec<ListedSandbox> = rows.iter().map(ListedSandbox::from).collect();
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

pub(super) async fn detail(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ListedSandbox>, ApiError> {
    if !st.live().contains_key(&id) {
        return Err(sandbox_not_found(&id));
    }
    let row = st
        .db
        .get_sandbox(id.clone())
        .await?
        .filter(|r| r.state == SandboxState::Running)
        .ok_or_else(|| sandbox_not_found(&id))?;
    Ok(Json(ListedSandbox::from(&row)))
}

pub(super) async fn kill(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let task_st = st.clone();
    let task_id = id.clone();
    let killed = tokio::spawn(async move { lifecycle::kill_sandbox(&task_st, &task_id).await })
        .await
        .map_err(|e| ApiError::internal(format!("kill task failed: {e}")))??;
    if killed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(sandbox_not_found(&id))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ConnectBody {
    #[serde(default)]
    timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/connect` (and `/v2/...`): 200 with the sandbox
/// while it runs (there is no paused state to resume from yet); a given
/// `timeout` extends its life to at least now + timeout.
pub(super) async fn connect(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConnectBody>,
) -> Result<Json<SandboxCreated>, ApiError> {
    let running = match body.timeout {
        Some(secs) => {
            let end = time::now_ms().saturating_add(timeout_ms(check_timeout(secs, "timeout")?));
            lifecycle::set_end_at(&st, &id, |current| current.max(end)).await?
        }
        None => st.live().contains_key(&id),
    };
    let row = match running {
        true => st.db.get_sandbox(id.clone()).await?,
        false => None,
    }
    .filter(|r| r.state == SandboxState::Running)
    .ok_or_else(|| sandbox_not_found(&id))?;
    Ok(Json(SandboxCreated {
        template_id: row.template_id,
        sandbox_id: row.id,
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        alias: Some(row.template_name),
        domain: None,
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct TimeoutBody {
    timeout: u64,
}

pub(super) async fn set_timeout(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> Result<StatusCode, ApiError> {
    let secs = check_timeout(body.timeout, "timeout")?;
    let end = time::now_ms().saturating_add(timeout_ms(secs));
    if lifecycle::set_end_at(&st, &id, |_| end).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(sandbox_not_found(&id))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RefreshBody {
    #[serde(default)]
    duration: Option<u64>,
}

pub(super) async fn refresh(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    let secs = check_timeout(body.duration.unwrap_or(DEFAULT_REFRESH_SECS), "duration")?;
    let end = time::now_ms().saturating_add(timeout_ms(secs));
    if lifecycle::set_end_at(&st, &id, |current| current.max(end)).await? {
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
    fn page_tokens_round_trip() {
        assert_eq!(parse_token("12.abc").unwrap(), (12, "abc".to_string()));
        assert!(parse_token("abc").is_err());
    }
}
