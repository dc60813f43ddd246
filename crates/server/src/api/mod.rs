//! The HTTP routes.
//!
//! Every route marked "key" acts for the key's team ([`crate::teams`]):
//! another team's sandboxes, templates, snapshots and volumes are not
//! found.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /health` | no | `{"status":"ok"}` |
//! | `GET /openapi.json` | no | the OpenAPI document of these routes ([`openapi`]) |
//! | `GET /metrics` | key of the default team | Prometheus metrics ([`crate::prometheus`]) |
//! | `POST /sandboxes`, `POST /v2/sandboxes` | key | create a sandbox (201) |
//! | `GET /sandboxes`, `GET /v2/sandboxes` | key | list running sandboxes |
//! | `GET /sandboxes/{id}` | key | one sandbox |
//! | `DELETE /sandboxes/{id}` | key | kill (204) |
//! | `POST /sandboxes/{id}/timeout` | key | set the lifetime from now (204) |
//! | `POST /sandboxes/{id}/refreshes` | key | extend the lifetime (204) |
//! | `POST /sandboxes/{id}/connect`, `POST /v2/sandboxes/{id}/connect` | key | the running sandbox (200; `timeout` extends its life), or resume a paused one (201) |
//! | `POST /sandboxes/{id}/pause` | key | freeze it (204; 409 when paused already) |
//! | `POST /sandboxes/{id}/resume` | key | resume a paused sandbox (201; 409 when running) |
//! | `GET /sandboxes/{id}/metrics` | key | CPU, memory and disk usage over its life (`start`, `end`) |
//! | `GET /sandboxes/metrics?sandbox_ids=` | key | the latest sample of each sandbox named |
//! | `GET /sandboxes/{id}/logs`, `GET /v2/sandboxes/{id}/logs` | key | its log: lifecycle events and its start command's output ([`crate::sandbox_logs`]) |
//! | `PUT /sandboxes/{id}/network` | key | replace its egress rules at once (204) |
//! | `POST /sandboxes/{id}/snapshots` | key | capture its file system as a snapshot (201; a template sandboxes are created from) |
//! | `POST /sandboxes/{id}/fork` | key | snapshot it and start `count` sandboxes from it with its configuration (201; one result per fork) |
//! | `GET /snapshots` | key | list snapshots (`sandboxID`, `name`, `limit`, `nextToken`) |
//! | `GET`/`POST /volumes`, `GET`/`DELETE /volumes/{id}` | key | volumes ([`crate::volumes`]): list, create (201, with a token), one (a fresh token), delete (204; its data goes once no sandbox uses it) |
//! | `DELETE /templates/{id}` | key | remove a template or snapshot by id or name (204) |
//! | `POST /hutch/v1/templates?name=` | key | import an image tar as a template (201) |
//! | `POST /hutch/v1/templates/pull` | key | pull an image from a registry as a template (201; NDJSON progress with `Accept: application/x-ndjson`) |
//! | `GET /hutch/v1/templates` | key | list templates |
//! | `DELETE /hutch/v1/templates/{name}` | key | remove a template (204) |
//! | `POST /hutch/v1/builds?spec=` | key | build a template from a Dockerfile and a context tar; streams the build log as NDJSON |
//! | `GET /hutch/v1/pool` | key | the warm pool: size, and per template sandboxes ready and creates served from it |
//! | `POST /hutch/v1/api-keys` | key | create an API key (201; the key is shown only here) |
//! | `GET /hutch/v1/api-keys` | key | list keys (ids, prefixes, dates; never the keys) |
//! | `DELETE /hutch/v1/api-keys/{id}` | key | revoke a key (204; 409 for the team's last valid key) |
//! | `POST`/`GET /hutch/v1/teams` | key of the default team | create a team with its first key (201); list teams ([`crate::teams`]) |
//! | `GET /teams` | key | E2B's: the caller's team, with the credential it sent as its key |
//! | `GET`/`POST /api-keys`, `PATCH`/`DELETE /api-keys/{id}` | key | E2B's: the team's API keys, masked; create (201, the key shown once); rename; delete (204) |
//! | `POST /access-tokens`, `DELETE /access-tokens/{id}` | key | E2B's: create an access token (201); delete one (204) |
//! | `POST /v3/templates`, `GET /templates/{id}/files/{hash}`, `POST /v2/templates/{id}/builds/{build}`, `GET /templates/{id}/builds/{build}/status`, `GET /templates/aliases/{name}` | key | E2B's template build API ([`e2b_templates`]) |
//! | `GET /templates`, `GET /v2/templates`, `GET`/`PATCH /templates/{id}`, `PATCH /v2/templates/{id}`, `POST`/`DELETE /templates/tags`, `GET /templates/{id}/tags`, `GET /templates/{id}/builds/{build}/logs` | key | E2B's template management ([`template_catalog`]) |
//! | `/volumecontent/{id}/dir`, `…/path`, `…/file` | the volume's token | E2B's volume content API ([`volume_content`]) |
//! | `GET`/`POST /hutch/v1/cli-login/api/cli`, `POST /hutch/v1/oauth/token`, `POST /hutch/v1/oauth/revoke` | a key, in the form / the token | the browser login of E2B's CLI ([`cli_login`]) |
//! | `PUT /hutch/v1/build-files/{hash}?token=` | upload token | a `COPY` file set of a template-API build (the URL comes from `GET /templates/{id}/files/{hash}`) |
//!
//! Requests for a sandbox's agent are taken by the [front
//! door](crate::frontdoor) before any of these. The bodies and answers are
//! the types of [`hutch_protocol::api`], which the CLI uses too.

mod builds;
mod cli_login;
mod e2b_templates;
mod keys;
mod nodes;
mod openapi;
mod paging;
mod pool;
mod sandboxes;
mod scrape;
mod snapshots;
mod template_catalog;
mod templates;
mod upload;
mod volume_content;
mod volumes;

use std::sync::Arc;

use axum::Router;
use axum::extract::Extension;
use axum::http::{Method, Uri};

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, frontdoor};

pub use crate::catalog::valid_template_name;
pub(crate) use nodes::HEARTBEAT_PATH;
pub use openapi::{document, served_routes};

pub(crate) fn router(st: Arc<AppState>) -> Router {
    let template_api = Arc::new(crate::template_api::TemplateApi::open(&st.data_dir));
    let (keyed, public) = openapi::routers();
    let keyed = keyed
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            auth::require_api_key,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            count_request,
        ));
    let public = public.route_layer(axum::middleware::from_fn_with_state(
        st.clone(),
        count_request,
    ));
    Router::new()
        .merge(public)
        .merge(keyed)
        .route(nodes::HEARTBEAT_PATH, axum::routing::post(nodes::heartbeat))
        .layer(Extension(template_api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            frontdoor::front_door,
        ))
        .with_state(st)
}

/// Counts a request to a route in the Prometheus metrics, by the route's
/// path template (never the path itself: ids would make a series each).
async fn count_request(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    st.prometheus.http(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
