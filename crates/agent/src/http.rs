//! Plain HTTP endpoints, the access-token check, and the router that puts
//! them in front of the Connect services.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hutch_protocol::boot::InitRequest;
use hutch_protocol::envd::filesystem::FilesystemExt as _;
use hutch_protocol::envd::process::ProcessExt as _;

use crate::Agent;
use crate::filesystem::FilesystemService;
use crate::service::ProcessService;

/// Header carrying the sandbox's access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// The agent's whole HTTP surface: `/health`, `/init`, `/envs`, `/files`
/// and the Connect services, behind the access-token check; in front of
/// them all, the relay of forwarded requests to ports in the sandbox
/// ([`crate::forward`]).
pub fn router(agent: Arc<Agent>) -> axum::Router {
    let connect = Arc::new(ProcessService::new(agent.clone())).register(connectrpc::Router::new());
    let connect = Arc::new(FilesystemService::new(agent.clone())).register(connect);
    axum::Router::new()
        .route("/health", get(health))
        .route("/init", post(init))
        .route("/envs", get(envs))
        .route(
            "/files",
            get(crate::transfer::get_file).post(crate::transfer::post_files),
        )
        .fallback_service(connect.into_axum_service())
        .layer(middleware::from_fn_with_state(
            agent.clone(),
            crate::forward::forward,
        ))
        .layer(middleware::from_fn_with_state(agent.clone(), require_token))
        .with_state(agent)
}

/// The environment socket's router: `POST /environment` and nothing else.
pub fn environment_router(agent: Arc<Agent>) -> axum::Router {
    axum::Router::new()
        .route("/environment", post(environment))
        .with_state(agent)
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn init(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Response {
    let request: InitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid /init body: {e}")),
    };
    match agent.init(request) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn envs(State(agent): State<Arc<Agent>>) -> Json<BTreeMap<String, String>> {
    Json(agent.sandbox_state().env.into_iter().collect())
}

/// The body of `POST /environment`: a process's own layer.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentRequest {
    #[serde(default)]
    envs: BTreeMap<String, String>,
    user: Option<String>,
    cwd: Option<String>,
}

/// What a process started now with a given layer of its own would get.
#[derive(Debug, serde::Serialize)]
struct EnvironmentAnswer {
    envs: BTreeMap<String, String>,
    cwd: String,
    uid: u32,
    gid: u32,
    user: Option<String>,
    home: String,
}

/// `POST /environment` (Hutch's own): the environment, user and working
/// directory a process started now with the given `envs`, `user` and `cwd`
/// would get, by the same precedence as `Process.Start`. For services in
/// the sandbox that run code in processes they do not start through the
/// agent (the code interpreter's kernels), so that the environment is
/// still merged in one place.
async fn environment(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Response {
    let request: EnvironmentRequest = if body.is_empty() {
        EnvironmentRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid /environment body: {e}"),
                );
            }
        }
    };
    let envs: Vec<(String, String)> = request.envs.into_iter().collect();
    let sandbox = agent.sandbox_state();
    match agent.resolve_process(
        &sandbox,
        &envs,
        request.user.as_deref(),
        request.cwd.as_deref(),
        false,
    ) {
        Ok(resolved) => Json(EnvironmentAnswer {
            envs: resolved.env.into_iter().collect(),
            cwd: resolved.cwd,
            uid: resolved.uid,
            gid: resolved.gid,
            user: resolved.user_name,
            home: resolved.home,
        })
        .into_response(),
        Err(crate::ResolveError::Accounts(e)) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reading /etc/passwd and /etc/group: {e}"),
        ),
        Err(crate::ResolveError::Env(e)) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Rejects requests without the right `X-Access-Token` once one is set;
/// `/health` stays open, and `/files` checks the token itself (it also
/// takes signed URLs). Requests forwarded to a port in the sandbox are not
/// agent calls: they reach the user's own server, which is as open as E2B
/// makes sandbox ports (the forward layer takes every request carrying the
/// forward header, so the header cannot be used to reach the agent's API).
async fn require_token(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let forwarded = request
        .headers()
        .contains_key(crate::forward::FORWARD_PORT_HEADER);
    if !forwarded
        && !matches!(request.uri().path(), "/health" | "/files")
        && let Some(expected) = agent.sandbox_state().access_token
    {
        let given = request
            .headers()
            .get(ACCESS_TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !hutch_protocol::same_secret(given, expected) {
            let message = if given.is_empty() {
                "missing X-Access-Token header: this sandbox requires its access token"
            } else {
                "invalid X-Access-Token: it does not match this sandbox's access token"
            };
            return json_error(StatusCode::UNAUTHORIZED, message);
        }
    }
    next.run(request).await
}

/// A JSON error body `{"code": <status>, "message": ...}` as E2B sends.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "code": status.as_u16(), "message": message })),
    )
        .into_response()
}
