//! `POST /hutch/v1/builds`: build a template from a Dockerfile.
//!
//! The query parameter `spec` holds the build as JSON
//! ([`BuildSpec`]: name, Dockerfile text, build arguments, `noCache`, start
//! and ready commands); the body is the build context as a tar (what
//! `hutch template build` packs, `.dockerignore` applied). The answer is a
//! stream of newline-delimited JSON objects, one per log line
//! (`{"type":"step"|"cached"|"output"|"note", "message", ...}`), ending with
//! `{"type":"done","template":{...}}` or
//! `{"type":"error","message":...,"exitCode":...}` (see
//! [`hutch_protocol::api::builds`]). The build goes on if the client
//! disconnects.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hutch_builder::recipe::Recipe;
use hutch_protocol::api::{BuildEnd, BuildSpec};
use serde::Deserialize;

use crate::auth::Caller;
use crate::builds::{self, Job, Status};
use crate::error::{ApiError, ApiQuery};
use crate::ids;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BuildQuery {
    /// The build, a `BuildSpec` as JSON.
    spec: Option<String>,
}

#[utoipa::path(
    post,
    path = "/hutch/v1/builds",
    tag = "hutch",
    params(BuildQuery),
    request_body(content = super::openapi::Binary, content_type = "application/x-tar", description = "The build context."),
    responses((status = 200, description = "The build's log, one JSON object a line, ending with its outcome.", content_type = "application/x-ndjson", body = hutch_protocol::api::BuildStreamLine), (status = 400, description = "An invalid spec or context.", body = super::openapi::Error), (status = 409, description = "Being built already.", body = super::openapi::Error))
)]
pub(super) async fn build(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<BuildQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let checked = match check(&st, q) {
        Ok(checked) => crate::catalog::check_buildable(&st, &caller.team, &checked.0.name)
            .await
            .map(|()| checked)
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let (mut reader, upload) = super::upload::open(body);
    let (spec, recipe) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            drop(reader);
            upload.finish().await;
            return Err(e);
        }
    };
    let dir = st
        .data_dir
        .join("tmp")
        .join(format!("context-{}", ids::new_id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("cannot create {}: {e}", dir.display())))?;
    let target = dir.clone();
    let unpacked =
        tokio::task::spawn_blocking(move || hutch_builder::context::unpack(&mut reader, &target))
            .await;
    upload.finish().await;
    let unpacked = unpacked.map_err(|e| ApiError::internal(format!("context task failed: {e}")))?;
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(ApiError::bad_request(e.to_string()));
    }

    let job = builds::start(
        &st,
        builds::Request {
            team: caller.team,
            name: spec.name,
            template_id: None,
            build_id: None,
            frontend: "dockerfile",
            recipe,
            build_args: spec.build_args,
            no_cache: spec.no_cache,
            context: Some(dir),
            files: Default::default(),
            ready_timeout: Duration::from_secs(
                spec.ready_timeout_secs
                    .unwrap_or(hutch_runtime::DEFAULT_READY_TIMEOUT.as_secs()),
            ),
            limits: spec.limits,
            default: true,
            tags: Vec::new(),
        },
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ndjson(job)),
    )
        .into_response())
}

/// Everything about a build request that can be checked before its
/// context arrives: the spec, the name, the limits and the Dockerfile.
fn check(st: &AppState, q: BuildQuery) -> Result<(BuildSpec, Recipe), ApiError> {
    let spec = q
        .spec
        .ok_or_else(|| ApiError::bad_request("missing query parameter 'spec'"))?;
    let spec: BuildSpec = serde_json::from_str(&spec)
        .map_err(|e| ApiError::bad_request(format!("invalid build spec: {e}")))?;
    if !super::valid_template_name(&spec.name) {
        return Err(ApiError::bad_request(format!(
            "invalid template name '{}': use 1 to 63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            spec.name
        )));
    }
    if st.builds.building(&spec.name).is_some() {
        return Err(ApiError::conflict(format!(
            "template '{}' is being built already",
            spec.name
        )));
    }
    if let Some(limits) = spec.limits {
        crate::limits::template_defaults(&spec.name, Some(&limits), &st.max_limits)
            .map_err(ApiError::bad_request)?;
    }
    let mut recipe = hutch_builder::dockerfile::parse(&spec.dockerfile, &spec.build_args)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    recipe.start_cmd = spec.start_cmd.clone().filter(|c| !c.trim().is_empty());
    recipe.ready_cmd = spec.ready_cmd.clone().filter(|c| !c.trim().is_empty());
    Ok((spec, recipe))
}

/// The last line of a job's stream.
fn end_of(status: Status) -> Option<BuildEnd> {
    match status {
        Status::Building => None,
        Status::Ready(meta) => Some(BuildEnd::Done { template: meta }),
        Status::Failed { message, exit_code } => Some(BuildEnd::Error { message, exit_code }),
    }
}

/// The job's log as NDJSON, from the first line to the end.
fn ndjson(
    job: Arc<Job>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    let seen = job.subscribe();
    futures::stream::unfold(
        (job, seen, 0usize, false),
        |(job, mut seen, offset, done)| async move {
            if done {
                return None;
            }
            loop {
                // Read the status before the lines: a line pushed after
                // this read is still sent before the final object.
                let status = job.status();
                let lines = job.lines(offset, 1000);
                if !lines.is_empty() {
                    let mut out = Vec::new();
                    for l in &lines {
                        serde_json::to_writer(&mut out, l).expect("log lines serialize");
                        out.push(b'\n');
                    }
                    let next = offset + lines.len();
                    return Some((Ok(out.into()), (job, seen, next, false)));
                }
                match end_of(status) {
                    None => job.changed(&mut seen).await,
                    Some(end) => {
                        let mut out = serde_json::to_vec(&end).expect("the end serializes");
                        out.push(b'\n');
                        return Some((Ok(out.into()), (job, seen, offset, true)));
                    }
                }
            }
        },
    )
}
