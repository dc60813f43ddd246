//! Hutch's template routes: import an image or pull one from a registry as a template,
//! list, remove.

use hutch_image::TemplateDocument as _;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hutch_image::{
    ImageError, ImportProgress, ImportedImage, PullProgress, RegistryAuth, TEMPLATE_SCHEMA_VERSION,
    TemplateMetadata, TemplateSource,
};
use hutch_protocol::api::{PullEvent, Template, TemplatePullRequest};
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::catalog::Registration;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;
use crate::{ids, time};

/// Whether `name` is a valid template name: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_template_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn exists(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "template '{name}' already exists; remove it first with `hutch template rm {name}`"
    ))
}

#[derive(Debug, Deserialize)]
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
pub(super) async fn import(
    State(st): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = q
        .name
        .ok_or_else(|| ApiError::bad_request("missing query parameter 'name'"))?;
    check_new_name(&st, &name).await?;

    // Imports share the layer store; removal of unreferenced layers waits.
    let _layers = st.layers_lock.read().await;
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let mut reader = SyncIoBridge::new(reader);
    let store = st.store.clone();
    let reference = q.reference.clone();
    let log_name = name.clone();
    let imported = tokio::task::spawn_blocking(move || {
        store.import_tar_stream(&mut reader, reference.as_deref(), &mut |p| {
            log_progress(&log_name, &p)
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("import task failed: {e}")))?
    .map_err(|e| import_error(&name, e))?;

    let value = register_image_template(
        &st,
        &name,
        q.source.unwrap_or_default(),
        imported,
        q.allow_privilege_escalation,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

/// Checks that `name` is a valid template name no template has yet.
async fn check_new_name(st: &AppState, name: &str) -> Result<(), ApiError> {
    if !valid_template_name(name) {
        return Err(ApiError::bad_request(format!(
            "invalid template name '{name}': use 1 to 63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )));
    }
    if st
        .db
        .find_template(name.to_owned())
        .await?
        .is_some_and(|t| t.name == name)
    {
        return Err(exists(name));
    }
    Ok(())
}

/// Registers an imported or pulled image as the template `name` (`source`: the path or
/// reference it came from, for display), fills its warm pool, and returns it. The caller
/// holds the layers lock (read) since the image's layers were stored.
async fn register_image_template(
    st: &Arc<AppState>,
    name: &str,
    source: String,
    imported: ImportedImage,
    allow_privilege_escalation: bool,
) -> Result<Template, ApiError> {
    let id = ids::new_id();
    let now = time::now_ms();
    let user = imported.config.user.clone().filter(|u| !u.is_empty());
    let workdir = imported
        .config
        .working_dir
        .clone()
        .filter(|w| !w.is_empty());
    let meta = TemplateMetadata {
        schema_version: TEMPLATE_SCHEMA_VERSION,
        id: id.clone(),
        name: name.to_owned(),
        created_at: time::rfc3339(now),
        source: TemplateSource::Image {
            path_or_ref: source,
            manifest_digest: imported.manifest_digest.clone(),
            config_digest: imported.config_digest.clone(),
        },
        env: hutch_env::image_layer(&imported.config.env),
        user,
        workdir,
        layers: imported.layers.clone(),
        image: imported.config,
        allow_privilege_escalation,
        start_cmd: None,
        ready_cmd: None,
        limits: None,
    };
    crate::catalog::register(st, &meta, Registration::New).await?;
    tracing::info!(template = %name, layers = meta.layers.len(), "template imported");
    Ok(meta)
}

fn log_progress(name: &str, p: &ImportProgress) {
    match p {
        ImportProgress::Manifest { layers } => {
            tracing::debug!(template = %name, layers, "importing image")
        }
        ImportProgress::LayerDone { index, reused } => {
            tracing::debug!(template = %name, layer = index, reused, "layer ready")
        }
        _ => {}
    }
}

fn import_error(name: &str, e: ImageError) -> ApiError {
    match e {
        ImageError::Io { .. } => {
            ApiError::internal(format!("cannot import template '{name}': {e}"))
        }
        _ => ApiError::bad_request(format!("cannot import template '{name}': {e}")),
    }
}

/// `POST /hutch/v1/templates/pull` with a JSON [`TemplatePullRequest`]: pulls the image from its
/// registry and registers it as a template, like an import. Answers 201 with the template's
/// metadata; or, when the request accepts `application/x-ndjson`, 200 with a stream of
/// [`PullEvent`]s, one JSON object per line: `{"event":"resolved",...}`,
/// `{"event":"layer",...}` (per layer: `index`, `digest`, `total`, `done`, `reused`,
/// `complete`), then `{"event":"done","template":{...}}` or
/// `{"event":"error","code":N,"message":"..."}`. A client that goes away stops the pull.
pub(super) async fn pull(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TemplatePullRequest>,
) -> Result<Response, ApiError> {
    check_new_name(&st, &req.name).await?;
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
        let value = pull_and_register(&st, &req, auth, &mut |p| log_pull(&name, &p)).await?;
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
            outcome = pull_and_register(&st, &req, auth, &mut send) => outcome,
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
    req: &TemplatePullRequest,
    auth: RegistryAuth,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<Template, ApiError> {
    // Pulls share the layer store; removal of unreferenced layers waits.
    let _layers = st.layers_lock.read().await;
    let reference = req.reference.trim();
    let imported = crate::pull::pull_template_base(st, reference, auth, progress).await?;
    register_image_template(
        st,
        &req.name,
        reference.to_owned(),
        imported,
        req.allow_privilege_escalation,
    )
    .await
}

/// A pull's progress as a line of its stream (`None` for progress the API does not show).
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
pub(super) async fn list(State(st): State<Arc<AppState>>) -> Result<Json<Vec<Template>>, ApiError> {
    let rows = st.db.list_templates().await?;
    // Templates replaced by a newer build of the same name are hidden.
    rows.iter()
        .filter(|t| !t.name.contains('@'))
        .map(|t| {
            TemplateMetadata::from_json(&t.metadata).map_err(|e| {
                ApiError::internal(format!(
                    "template '{}' has unreadable metadata: {e}",
                    t.name
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

/// `DELETE /hutch/v1/templates/pull`: the route `POST /hutch/v1/templates/pull` takes this
/// path, so removing a template called `pull` comes here.
pub(super) async fn remove_pull(st: State<Arc<AppState>>) -> Result<StatusCode, ApiError> {
    remove(st, Path("pull".to_owned())).await
}

/// `DELETE /hutch/v1/templates/{name}` (a name or an id): 409 while
/// sandboxes of it run (its pooled sandboxes do not count: they are
/// destroyed); then removes the layers no template uses any more.
pub(super) async fn remove(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::catalog::remove(&st, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names() {
        for ok in ["a", "base", "python-3.11", "x_y", "0abc", &"a".repeat(63)] {
            assert!(valid_template_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(!valid_template_name(bad), "{bad}");
        }
    }

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
