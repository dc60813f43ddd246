//! The HTTP routes.
//!
//! Every route marked "key" acts for the key's team ([`crate::teams`]):
//! another team's sandboxes, templates, snapshots and volumes are not
//! found.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /health` | no | `{"status":"ok"}` |
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
mod paging;
mod pool;
mod sandboxes;
mod snapshots;
mod template_catalog;
mod templates;
mod volume_content;
mod volumes;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, frontdoor};

pub use crate::catalog::valid_template_name;

pub(crate) fn router(st: Arc<AppState>) -> Router {
    let (e2b_templates, build_files, template_api) = e2b_templates::routes(&st);
    let authed = Router::new()
        .route(
            "/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v1),
        )
        .route(
            "/v2/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v2),
        )
        .route(
            "/sandboxes/{id}",
            get(sandboxes::detail).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/metrics", get(sandboxes::metrics))
        .route("/sandboxes/metrics", get(sandboxes::many_metrics))
        .route("/sandboxes/{id}/logs", get(sandboxes::logs_v1))
        .route("/volumes", get(volumes::list).post(volumes::create))
        .route("/volumes/{id}", get(volumes::get).delete(volumes::delete))
        .route("/v2/sandboxes/{id}/logs", get(sandboxes::logs_v2))
        .route(
            "/sandboxes/{id}/network",
            axum::routing::put(sandboxes::set_network),
        )
        .route("/sandboxes/{id}/snapshots", post(sandboxes::snapshot))
        .route("/sandboxes/{id}/fork", post(sandboxes::fork))
        .route("/snapshots", get(snapshots::list))
        .route(
            "/templates/{template_id}",
            axum::routing::delete(templates::remove),
        )
        .route(
            "/hutch/v1/templates",
            post(templates::import).get(templates::list),
        )
        .route(
            "/hutch/v1/templates/pull",
            post(templates::pull).delete(templates::remove_pull),
        )
        .route(
            "/hutch/v1/templates/{name}",
            axum::routing::delete(templates::remove),
        )
        .route("/hutch/v1/builds", post(builds::build))
        .route("/hutch/v1/pool", get(pool::status))
        .route("/hutch/v1/api-keys", post(keys::create).get(keys::list))
        .route(
            "/hutch/v1/api-keys/{id}",
            axum::routing::delete(keys::revoke),
        )
        .route(
            "/hutch/v1/teams",
            post(keys::create_team).get(keys::list_teams),
        )
        .route("/teams", get(keys::e2b_teams))
        .route(
            "/api-keys",
            get(keys::e2b_list_keys).post(keys::e2b_create_key),
        )
        .route(
            "/api-keys/{id}",
            axum::routing::patch(keys::e2b_rename_key).delete(keys::e2b_delete_key),
        )
        .route("/access-tokens", post(keys::e2b_create_token))
        .route(
            "/access-tokens/{id}",
            axum::routing::delete(keys::e2b_delete_token),
        )
        .merge(e2b_templates)
        .merge(template_catalog::routes(template_api))
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(authed)
        .merge(build_files)
        .merge(volume_content::routes())
        .merge(cli_login::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            frontdoor::front_door,
        ))
        .with_state(st)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
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
