//! The default `base` template: built from Debian packages the first time
//! a server starts without one (a minute or two, shown in the server log),
//! then reused by every later start. While it builds, creating a sandbox
//! from `base` answers 503 with a message saying so. Once it exists, the
//! code interpreter template is built from it ([`crate::code_interpreter`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hutch_builder::{BASE_SUITE, BASE_TEMPLATE};
use hutch_image::{TEMPLATE_SCHEMA_VERSION, TemplateMetadata, TemplateSource};

use crate::builds::{Job, LogKind, Status};
use crate::catalog::Registration;
use crate::state::AppState;
use crate::{ids, time};

/// Starts building the base template in the background unless it exists.
pub(crate) async fn ensure(st: Arc<AppState>) {
    match st.db.find_template(BASE_TEMPLATE.to_owned()).await {
        // Every team starts sandboxes from it (databases from before teams
        // have it private).
        Ok(Some(t)) => {
            if !t.public
                && t.team_id == st.default_team
                && let Err(e) = st.db.set_template_public(t.id, true).await
            {
                tracing::error!("cannot make the base template public: {e}");
            }
            let _ = crate::code_interpreter::ensure(&st).await;
            return;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!("cannot look up the base template: {e}");
            return;
        }
    }
    if st.base_building.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        let job = crate::builds::track(&st, BASE_TEMPLATE);
        let first = format!(
            "building the default template '{BASE_TEMPLATE}' from Debian {BASE_SUITE} packages (first start only; takes a minute or two)"
        );
        tracing::info!("{first}");
        job.push("info", first, LogKind::Note);
        let started = std::time::Instant::now();
        match build(&st, &job).await {
            Ok(meta) => {
                let done = format!(
                    "template '{BASE_TEMPLATE}' is ready ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                tracing::info!("{done}");
                job.push("info", done, LogKind::Note);
                job.finish(Status::Ready(Box::new(meta)));
                st.base_building.store(false, Ordering::SeqCst);
                // The code interpreter is built from it.
                let _ = crate::code_interpreter::ensure(&st).await;
                return;
            }
            Err(e) => {
                let message = format!(
                    "building the template '{BASE_TEMPLATE}' failed: {e}; restart the server to try again, or import an image with `hutch template import`"
                );
                tracing::error!("{message}");
                job.push("error", message.clone(), LogKind::Note);
                job.finish(Status::Failed {
                    message,
                    exit_code: None,
                });
            }
        }
        st.base_building.store(false, Ordering::SeqCst);
    });
}

async fn build(st: &Arc<AppState>, job: &Arc<Job>) -> Result<TemplateMetadata, String> {
    let work = st
        .data_dir
        .join("tmp")
        .join(format!("base-{}", ids::new_id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let result = build_in(st, &work, job).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn build_in(
    st: &Arc<AppState>,
    work: &std::path::Path,
    job: &Arc<Job>,
) -> Result<TemplateMetadata, String> {
    let dir = work.to_owned();
    let job = job.clone();
    let tar = tokio::task::spawn_blocking(move || {
        hutch_builder::build_base_rootfs(&dir, &mut |line| {
            // mmdebstrap's progress lines start with "I:".
            if let Some(info) = line.strip_prefix("I: ") {
                tracing::info!(template = BASE_TEMPLATE, "{info}");
                job.push(
                    "info",
                    info.to_owned(),
                    LogKind::Output { stream: "stderr" },
                );
            } else {
                tracing::debug!(template = BASE_TEMPLATE, "{line}");
            }
        })
    })
    .await
    .map_err(|e| format!("build task failed: {e}"))?
    .map_err(|e| e.to_string())?;

    let _layers = st.layers_lock.read().await;
    let store = st.store.clone();
    let diff_id = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&tar)?;
        store
            .add_layer_tar(&mut file)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .map_err(|e| format!("storing task failed: {e}"))?
    .map_err(|e| format!("cannot store the root filesystem: {e}"))?;

    let image = hutch_builder::base_image_config();
    let id = ids::new_id();
    let now = time::now_ms();
    let meta = TemplateMetadata {
        schema_version: TEMPLATE_SCHEMA_VERSION,
        id: id.clone(),
        name: BASE_TEMPLATE.to_owned(),
        created_at: time::rfc3339(now),
        source: TemplateSource::Recipe {
            recipe: "debian-base".to_owned(),
            description: format!(
                "mmdebstrap {BASE_SUITE}: {}",
                hutch_builder::BASE_PACKAGES.join(" ")
            ),
        },
        env: hutch_env::image_layer(&image.env),
        user: image.user.clone(),
        workdir: image.working_dir.clone(),
        layers: vec![diff_id],
        image,
        // Its user `user` has passwordless sudo, as in E2B's base template.
        allow_privilege_escalation: true,
        start_cmd: None,
        ready_cmd: None,
        limits: None,
    };
    crate::catalog::register(st, &st.default_team, &meta, Registration::New)
        .await
        .map_err(|e| format!("cannot record the template: {e}"))?;
    // Every team starts sandboxes from it.
    st.db
        .set_template_public(meta.id.clone(), true)
        .await
        .map_err(|e| format!("cannot make the template public: {e}"))?;
    Ok(meta)
}
