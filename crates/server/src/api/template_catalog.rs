//! E2B's template management routes (the builds themselves are in
//! [`super::e2b_templates`]):
//!
//! - `GET /templates`, `GET /v2/templates` (`limit`, `nextToken`): every
//!   template (snapshots are at `GET /snapshots`), by name;
//! - `GET /templates/{id}` (`limit`, `nextToken` over the builds): one
//!   template with its kept builds, newest first;
//! - `PATCH /templates/{id}`, `PATCH /v2/templates/{id}` `{public}`;
//! - `POST /templates/tags` `{target, tags}` → `201 {buildID, tags}`,
//!   `DELETE /templates/tags` `{name, tags}` → `204`,
//!   `GET /templates/{id}/tags` → `[{tag, buildID, createdAt}]`;
//! - `GET /templates/{id}/builds/{buildID}/logs` (`cursor`, `limit`,
//!   `direction`, `level`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hutch_image::TemplateMetadata;
use hutch_protocol::api::{
    AssignTags, AssignedTags, BuildLogs, RemoveTags, TemplateBuildSummary, TemplateDetails,
    TemplateSummary, TemplateTagInfo, TemplateUpdate, TemplateUpdated,
};
use serde::Deserialize;
use utoipa_axum::routes;

use super::openapi::ApiRouter;
use super::paging::page;
use crate::auth::Caller;
use crate::catalog::{self, TemplateView};
use crate::db::TemplateRow;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;
use crate::template_api::{LogWindow, TemplateApi};
use crate::{ENVD_VERSION, limits, time};

/// The routes (behind the API key); `api` is the template build service,
/// which holds the build logs.
pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(list_v2))
        .routes(routes!(details, update))
        .routes(routes!(update_v2))
        .routes(routes!(assign_tags, remove_tags))
        .routes(routes!(tags))
        .routes(routes!(build_logs))
}

/// A page of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(super) struct PageQuery {
    limit: Option<usize>,
    next_token: Option<String>,
}

/// `GET /templates`: every template.
#[utoipa::path(
    get,
    path = "/templates",
    tag = "templates",
    responses((status = 200, description = "The templates the team may use.", body = Vec<TemplateSummary>))
)]
async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<TemplateSummary>>, ApiError> {
    let views = catalog::overview(&st, &caller.team).await?;
    Ok(Json(views.iter().map(|v| summary(&st, v)).collect()))
}

/// `GET /v2/templates`: every template, paged by template id.
#[utoipa::path(
    get,
    path = "/v2/templates",
    tag = "templates",
    params(PageQuery),
    responses((status = 200, description = "A page of the templates the team may use.", body = Vec<TemplateSummary>, headers(("x-next-token" = String, description = "The next page's `nextToken`, when there is one."))))
)]
async fn list_v2(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let all: Vec<TemplateSummary> = catalog::overview(&st, &caller.team)
        .await?
        .iter()
        .map(|v| summary(&st, v))
        .collect();
    let (items, headers) = page(all, q.limit, q.next_token.as_deref(), |t| &t.template_id)?;
    Ok((headers, Json(items)).into_response())
}

/// `GET /templates/{id}`: a template with its builds, paged by build id.
#[utoipa::path(
    get,
    path = "/templates/{template_id}",
    tag = "templates",
    params(("template_id" = String, Path, description = "The template's id or name."), PageQuery),
    responses((status = 200, description = "The template and a page of its builds.", body = TemplateDetails, headers(("x-next-token" = String, description = "The next page's `nextToken`, when there is one."))), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
async fn details(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(template_id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let view = catalog::describe(&st, &caller.team, &template_id).await?;
    let builds: Vec<TemplateBuildSummary> = view
        .builds
        .iter()
        .map(|(row, meta)| build_summary(&st, row, meta))
        .collect();
    let (builds, headers) = page(builds, q.limit, q.next_token.as_deref(), |b| &b.build_id)?;
    let body = TemplateDetails {
        summary: summary(&st, &view),
        builds,
    };
    Ok((headers, Json(body)).into_response())
}

/// `PATCH /templates/{id}` and `/v2/templates/{id}` `{public}` → `200
/// {names}`.
#[utoipa::path(
    patch,
    path = "/templates/{template_id}",
    tag = "templates",
    params(("template_id" = String, Path, description = "The template's id or name.")),
    request_body = Option<TemplateUpdate>,
    responses((status = 200, description = "The template's names.", body = TemplateUpdated), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
async fn update(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(template_id): Path<String>,
    ApiJson(body): ApiJson<TemplateUpdate>,
) -> Result<Json<TemplateUpdated>, ApiError> {
    let view = match body.public {
        Some(public) => catalog::set_public(&st, &caller.team, &template_id, public).await?,
        None => catalog::describe(&st, &caller.team, &template_id).await?,
    };
    Ok(Json(TemplateUpdated {
        names: vec![view.name],
    }))
}

/// `PATCH /v2/templates/{template_id}`: as `PATCH /templates/{template_id}`.
#[utoipa::path(
    patch,
    path = "/v2/templates/{template_id}",
    tag = "templates",
    params(("template_id" = String, Path, description = "The template's id or name.")),
    request_body = Option<TemplateUpdate>,
    responses((status = 200, description = "The template's names.", body = TemplateUpdated), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
async fn update_v2(
    st: State<Arc<AppState>>,
    caller: Caller,
    id: Path<String>,
    body: ApiJson<TemplateUpdate>,
) -> Result<Json<TemplateUpdated>, ApiError> {
    update(st, caller, id, body).await
}

/// `POST /templates/tags` `{target, tags}` → `201 {buildID, tags}`.
#[utoipa::path(
    post,
    path = "/templates/tags",
    tag = "templates",
    request_body = AssignTags,
    responses((status = 201, description = "The tags now name the build.", body = AssignedTags), (status = 400, description = "No or invalid tags.", body = super::openapi::Error), (status = 404, description = "No such template or build.", body = super::openapi::Error))
)]
async fn assign_tags(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<AssignTags>,
) -> Result<Response, ApiError> {
    if body.tags.is_empty() {
        return Err(ApiError::bad_request("no tags given ('tags')"));
    }
    let build = catalog::assign_tags(&st, &caller.team, &body.target, &body.tags).await?;
    let assigned = AssignedTags {
        build_id: build.build_id,
        tags: body.tags,
    };
    Ok((StatusCode::CREATED, Json(assigned)).into_response())
}

/// `DELETE /templates/tags` `{name, tags}` → `204`.
#[utoipa::path(
    delete,
    path = "/templates/tags",
    tag = "templates",
    request_body = RemoveTags,
    responses((status = 204, description = "Removed."), (status = 400, description = "No or invalid tags.", body = super::openapi::Error), (status = 404, description = "No such template or tag.", body = super::openapi::Error))
)]
async fn remove_tags(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<RemoveTags>,
) -> Result<StatusCode, ApiError> {
    if body.tags.is_empty() {
        return Err(ApiError::bad_request("no tags given ('tags')"));
    }
    catalog::remove_tags(&st, &caller.team, &body.name, &body.tags).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/{id}/tags`: `default` (when the template has a default
/// build) and every other tag, with the build each names.
#[utoipa::path(
    get,
    path = "/templates/{template_id}/tags",
    tag = "templates",
    params(("template_id" = String, Path, description = "The template's id or name.")),
    responses((status = 200, description = "The template's tags.", body = Vec<TemplateTagInfo>), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
async fn tags(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(template_id): Path<String>,
) -> Result<Json<Vec<TemplateTagInfo>>, ApiError> {
    let tags = catalog::tags_of(&st, &caller.team, &template_id).await?;
    Ok(Json(
        tags.into_iter()
            .map(|(tag, row, at)| TemplateTagInfo {
                tag,
                build_id: row.build_id,
                created_at: time::rfc3339_ms(at),
            })
            .collect(),
    ))
}

/// The query of a build logs call.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Unix ms: entries from it on (forward) or up to it (backward).
    cursor: Option<i64>,
    limit: Option<usize>,
    /// `forward` (the default) or `backward`.
    direction: Option<String>,
    /// The lowest level to return. (`source`, `temporary` or
    /// `persistent`, is ignored: Hutch keeps one log.)
    level: Option<String>,
}

/// `GET /templates/{id}/builds/{buildID}/logs` → `{logs: [...]}`.
#[utoipa::path(
    get,
    path = "/templates/{template_id}/builds/{build_id}/logs",
    tag = "template builds",
    params(("template_id" = String, Path, description = "The template's id or name."), ("build_id" = String, Path, description = "The build's id."), LogsQuery),
    responses((status = 200, description = "The build's log entries.", body = BuildLogs), (status = 404, description = "No such build.", body = super::openapi::Error))
)]
async fn build_logs(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Extension(api): Extension<Arc<TemplateApi>>,
    Path((template_id, build_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<BuildLogs>, ApiError> {
    let forward = match q.direction.as_deref().filter(|d| !d.is_empty()) {
        None | Some("forward") => true,
        Some("backward") => false,
        Some(d) => {
            return Err(ApiError::bad_request(format!(
                "unknown direction '{d}': expected forward or backward"
            )));
        }
    };
    let window = LogWindow {
        min_level: super::e2b_templates::min_level(q.level.as_deref())?,
        cursor: q.cursor,
        limit: q.limit,
        forward,
    };
    let logs = api.build_logs(&st, &caller.team, template_id, build_id, window)?;
    Ok(Json(BuildLogs { logs }))
}

/// What the listing says of a template.
fn summary(st: &AppState, v: &TemplateView) -> TemplateSummary {
    let (cpu_count, memory_mb, disk_size_mb) = default_limits(st, &v.main, &v.meta);
    let created = v
        .builds
        .iter()
        .map(|(row, _)| row.created_at)
        .min()
        .unwrap_or(v.main.created_at);
    TemplateSummary {
        template_id: v.main.id.clone(),
        build_id: v.main.build_id.clone(),
        cpu_count,
        memory_mb,
        disk_size_mb,
        public: v.main.public,
        aliases: vec![v.name.clone()],
        names: vec![v.name.clone()],
        created_at: time::rfc3339_ms(created),
        updated_at: time::rfc3339_ms(v.main.created_at),
        created_by: None,
        last_spawned_at: v.spawns.last_at.map(time::rfc3339_ms),
        spawn_count: v.spawns.count,
        build_count: v.builds.len() as u64,
        envd_version: ENVD_VERSION.to_owned(),
        build_status: "ready".to_owned(),
    }
}

/// One build as E2B describes it.
fn build_summary(
    st: &AppState,
    row: &TemplateRow,
    meta: &TemplateMetadata,
) -> TemplateBuildSummary {
    let (cpu_count, memory_mb, disk_size_mb) = default_limits(st, row, meta);
    let at = time::rfc3339_ms(row.created_at);
    TemplateBuildSummary {
        build_id: row.build_id.clone(),
        status: "ready".to_owned(),
        created_at: at.clone(),
        updated_at: at.clone(),
        finished_at: at,
        cpu_count,
        memory_mb,
        disk_size_mb,
        envd_version: ENVD_VERSION.to_owned(),
    }
}

/// The limits a build's sandboxes get by default: CPUs, memory and disk
/// (MiB).
fn default_limits(st: &AppState, row: &TemplateRow, meta: &TemplateMetadata) -> (u64, u64, u64) {
    let l = limits::template_defaults(&row.name, meta.limits.as_ref(), &st.max_limits)
        .unwrap_or_else(|_| limits::server_defaults(&st.max_limits));
    (
        u64::from(l.cpus),
        u64::try_from(l.memory_bytes / (1024 * 1024)).unwrap_or(0),
        l.disk_mb,
    )
}
