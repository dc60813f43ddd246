//! Hutch's template routes: import an image or pull one from a registry as a template,
//! list, remove.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hutch_image::{PullProgress, RegistryAuth};
use hutch_protocol::api::{PullEvent, Template, TemplatePullRequest};
use serde::Deserialize;

use crate::auth::Caller;
use crate::catalog::{self, ImageTemplate};
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ImportQuery {
    /// The template's name.
    name: Option<String>,
    /// Where the image came from, for display (a path or reference).
    source: Option<String>,
    /// Which image to take from an archive holding several.
    reference: Option<String>,
    /// Let processes gain privileges through setuid binaries (`sudo`):
    /// sandboxes of the template run without `no_new_privs`.
    #[serde(default, rename = "allowPrivilegeEscalation")]
    allow_privilege_escalation: bool,
}

/// `POST /hutch/v1/templates?name=NAME[&source=S][&reference=R]`, the
/// body an image as a tar stream (OCI archive, tarred OCI layout, or Docker
/// archive), streamed into the layer store as it arrives.
#[utoipa::path(
    post,
    path = "/hutch/v1/templates",
    tag = "templates",
    params(ImportQuery),
    request_body(content = super::openapi::Binary, content_type = "application/x-tar", description = "An OCI archive or `docker save` tar."),
    responses((status = 201, description = "The template.", body = Template), (status = 400, description = "An invalid name or image.", body = super::openapi::Error), (status = 409, description = "The name is taken.", body = super::openapi::Error))
)]
pub(super) async fn import(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = q
        .name
        .ok_or_else(|| ApiError::bad_request("missing query parameter 'name'"))?;
    let (tar, upload) = super::upload::open(body);
    let template = ImageTemplate {
        team: caller.team,
        name,
        source: q.source.unwrap_or_default(),
        allow_privilege_escalation: q.allow_privilege_escalation,
    };
    let imported = catalog::import(&st, template, q.reference, tar).await;
    upload.finish().await;
    Ok((StatusCode::CREATED, Json(imported?)).into_response())
}

/// `POST /hutch/v1/templates/pull` with a JSON [`TemplatePullRequest`]: pulls the image from its
/// registry and registers it as a template, like an import. Answers 201 with the template's
/// metadata; or, when the request accepts `application/x-ndjson`, 200 with a stream of
/// [`PullEvent`]s, one JSON object per line: `{"event":"resolved",...}`,
/// `{"event":"layer",...}` (per layer: `index`, `digest`, `total`, `done`, `reused`,
/// `complete`), then `{"event":"done","template":{...}}` or
/// `{"event":"error","code":N,"message":"..."}`. A client that goes away stops the pull.
#[utoipa::path(
    post,
    path = "/hutch/v1/templates/pull",
    tag = "templates",
    request_body = TemplatePullRequest,
    responses((status = 201, description = "The template.", body = Template), (status = 200, description = "With `Accept: application/x-ndjson`: the pull's progress, one event a line.", content_type = "application/x-ndjson", body = PullEvent), (status = 400, description = "An invalid request.", body = super::openapi::Error), (status = 409, description = "The name is taken.", body = super::openapi::Error))
)]
pub(super) async fn pull(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TemplatePullRequest>,
) -> Result<Response, ApiError> {
    catalog::check_new_name(&st, &caller.team, &req.name).await?;
    if req.reference.trim().is_empty() {
        return Err(ApiError::bad_request(
            "missing 'reference': the image to pull",
        ));
    }
    let auth = match (req.username.clone(), req.password.clone()) {
        (None, None) => RegistryAuth::Anonymous,
        (Some(username), Some(password)) if !username.is_empty() => {
            RegistryAuth::Basic { username, password }
        }
        _ => {
            return Err(ApiError::bad_request(
                "registry credentials need both 'username' and 'password'",
            ));
        }
    };
    let streaming = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/x-ndjson"));
    if !streaming {
        let name = req.name.clone();
        let value =
            pull_and_register(&st, &caller.team, &req, auth, &mut |p| log_pull(&name, &p)).await?;
        return Ok((StatusCode::CREATED, Json(value)).into_response());
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let events = tx.clone();
        let mut send = move |p: PullProgress| {
            if let Some(event) = pull_event(p) {
                let _ = events.send(ndjson(&event));
            }
        };
        let outcome = tokio::select! {
            outcome = pull_and_register(&st, &caller.team, &req, auth, &mut send) => outcome,
            () = tx.closed() => {
                tracing::info!(template = %req.name, "pull abandoned: the client went away");
                return;
            }
        };
        let last = match outcome {
            Ok(template) => PullEvent::Done {
                template: Box::new(template),
            },
            Err(e) => PullEvent::Error {
                code: e.status().as_u16(),
                message: e.message().to_owned(),
            },
        };
        let _ = tx.send(ndjson(&last));
    });
    let body =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::convert::Infallible>);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Pulls `req.reference` and registers it as template `req.name`.
async fn pull_and_register(
    st: &Arc<AppState>,
    team: &str,
    req: &TemplatePullRequest,
    auth: RegistryAuth,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<Template, ApiError> {
    let template = ImageTemplate {
        team: team.to_owned(),
        name: req.name.clone(),
        source: req.reference.trim().to_owned(),
        allow_privilege_escalation: req.allow_privilege_escalation,
    };
    Ok(catalog::pull(st, template, auth, progress).await?)
}

fn pull_event(p: PullProgress) -> Option<PullEvent> {
    match p {
        PullProgress::Resolved {
            reference,
            manifest_digest,
            layers,
        } => Some(PullEvent::Resolved {
            reference,
            manifest_digest,
            layers,
        }),
        PullProgress::Layer {
            index,
            digest,
            total,
            done,
            reused,
            complete,
        } => Some(PullEvent::Layer {
            index,
            digest,
            total,
            done,
            reused,
            complete,
        }),
        _ => None,
    }
}

fn ndjson(value: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

fn log_pull(name: &str, p: &PullProgress) {
    match p {
        PullProgress::Resolved {
            reference, layers, ..
        } => tracing::debug!(template = %name, %reference, layers, "pulling image"),
        PullProgress::Layer {
            index,
            reused,
            complete: true,
            ..
        } => tracing::debug!(template = %name, layer = index, reused, "layer ready"),
        _ => {}
    }
}

/// `GET /hutch/v1/templates`: every template's metadata, by name.
#[utoipa::path(
    get,
    path = "/hutch/v1/templates",
    tag = "templates",
    responses((status = 200, description = "The templates.", body = Vec<Template>))
)]
pub(super) async fn list(
    State(st): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<Template>>, ApiError> {
    Ok(Json(catalog::list(&st, &caller.team).await?))
}

/// `DELETE /templates/{template_id}` (E2B's): as
/// `DELETE /hutch/v1/templates/{name}`.
#[utoipa::path(
    delete,
    path = "/templates/{template_id}",
    tag = "templates",
    params(("template_id" = String, Path, description = "The template's or snapshot's id or name.")),
    responses((status = 204, description = "Removed."), (status = 404, description = "No such template.", body = super::openapi::Error), (status = 409, description = "In use.", body = super::openapi::Error))
)]
pub(super) async fn remove_e2b(
    st: State<Arc<AppState>>,
    caller: Caller,
    name: Path<String>,
) -> Result<StatusCode, ApiError> {
    remove(st, caller, name).await
}

/// `DELETE /hutch/v1/templates/pull`: the route `POST /hutch/v1/templates/pull` takes this
/// path, so removing a template called `pull` comes here.
#[utoipa::path(
    delete,
    path = "/hutch/v1/templates/pull",
    tag = "templates",
    responses((status = 204, description = "Removed the template named `pull`."), (status = 404, description = "No such template.", body = super::openapi::Error))
)]
pub(super) async fn remove_pull(
    st: State<Arc<AppState>>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    remove(st, caller, Path("pull".to_owned())).await
}

/// `DELETE /hutch/v1/templates/{name}` (a name or an id): 409 while
/// sandboxes of it run (its pooled sandboxes do not count: they are
/// destroyed); then removes the layers no template uses any more.
#[utoipa::path(
    delete,
    path = "/hutch/v1/templates/{name}",
    tag = "templates",
    params(("name" = String, Path, description = "The template's name or id.")),
    responses((status = 204, description = "Removed."), (status = 404, description = "No such template.", body = super::openapi::Error), (status = 409, description = "In use.", body = super::openapi::Error))
)]
pub(super) async fn remove(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    catalog::remove(&st, &caller.team, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pull progress reads on the wire as the image crate describes it.
    #[test]
    fn pull_events_match_the_progress() {
        for p in [
            PullProgress::Resolved {
                reference: "registry.example/app:1".into(),
                manifest_digest: format!("sha256:{}", "a".repeat(64)),
                layers: 3,
            },
            PullProgress::Layer {
                index: 1,
                digest: format!("sha256:{}", "b".repeat(64)),
                total: 1000,
                done: 400,
                reused: false,
                complete: false,
            },
        ] {
            let progress = serde_json::to_value(&p).unwrap();
            let event = serde_json::to_value(pull_event(p).unwrap()).unwrap();
            assert_eq!(event, progress);
        }
    }
}
