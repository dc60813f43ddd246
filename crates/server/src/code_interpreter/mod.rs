//! The code interpreter template, `code-interpreter-v1`: the template E2B's
//! code interpreter SDKs (`e2b-code-interpreter`, `@e2b/code-interpreter`)
//! create sandboxes from by default.
//!
//! Hutch builds it itself, with its ordinary build engine, from the
//! [`DOCKERFILE`] in this directory (`FROM base`, Python packages pinned in
//! [`REQUIREMENTS`]) and its execution service, [`SERVICE`] (a Python
//! program speaking the SDKs' protocol on port 49999, running code in
//! Jupyter kernels). The service is the template's start command and its
//! `/health` the ready check, so a sandbox is handed out with a kernel ready.
//!
//! When: right after `base` exists (a server that builds `base` at its first
//! start goes on with this one), or at the first create of the template on a
//! server that has `base` but not it yet. While it builds, creates answer
//! 503 saying so, as for `base`. The build is cached like any other.
//!
//! Why Python for the service: the kernels are Jupyter kernels, and
//! `jupyter_client` is the reference implementation of their protocol
//! (ZeroMQ sockets, signed messages, kernel specs, interrupts and restarts);
//! the service is a thin translation of that into the SDKs' HTTP stream.
//! It merges no environment itself: it asks the agent (see
//! `hutch_protocol::boot::ENVIRONMENT_SOCKET`) before every cell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_builder::BASE_TEMPLATE;

use crate::builds::{self, Status};
use crate::state::AppState;
use crate::{ids, time};

/// The template's name: what the SDKs ask for when given no template.
pub(crate) const TEMPLATE: &str = "code-interpreter-v1";
/// The template's recipe.
pub(crate) const DOCKERFILE: &str = include_str!("Dockerfile");
/// The execution service, copied into the template.
pub(crate) const SERVICE: &str = include_str!("service.py");
/// The Python packages of the template, all pinned.
pub(crate) const REQUIREMENTS: &str = include_str!("requirements.txt");
/// The service's port, the one the SDKs talk to.
pub(crate) const PORT: u16 = 49999;

/// The host's certificate bundle, handed to the build's package downloads
/// (a host behind a TLS-inspecting proxy trusts the proxy's CA there).
const HOST_TRUST_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long a sandbox's service gets to start its first kernel.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Only one caller at a time decides whether to start the build.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The last failed build: when, and why. A create within [`RETRY_AFTER`]
/// of it gets the reason instead of another build.
static FAILED: std::sync::Mutex<Option<(Instant, String)>> = std::sync::Mutex::new(None);

/// How long a failed build is not tried again by creates.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// Where the template's build stands, for a create that did not find it.
pub(crate) enum Build {
    /// Being built: try again shortly.
    Running,
    /// Its last build failed, for this reason, a short while ago.
    Failed(String),
    /// Not being built (it exists, or there is no `base` to build it from).
    Idle,
}

/// Starts building the template in the background unless it exists, is
/// being built, failed a short while ago, or `base` is missing.
pub(crate) async fn ensure(st: &Arc<AppState>) -> Build {
    let _one = STARTING.lock().await;
    if st.builds.building(TEMPLATE).is_some() {
        return Build::Running;
    }
    match st.db.find_template(TEMPLATE.to_owned()).await {
        Ok(Some(_)) => return Build::Idle,
        Ok(None) => {}
        Err(e) => {
            tracing::error!("cannot look up the template '{TEMPLATE}': {e}");
            return Build::Idle;
        }
    }
    match st.db.find_template(BASE_TEMPLATE.to_owned()).await {
        Ok(Some(_)) => {}
        Ok(None) => return Build::Idle,
        Err(e) => {
            tracing::error!("cannot look up the template '{BASE_TEMPLATE}': {e}");
            return Build::Idle;
        }
    }
    if let Some((when, why)) = &*FAILED.lock().unwrap_or_else(|p| p.into_inner())
        && when.elapsed() < RETRY_AFTER
    {
        let left = (RETRY_AFTER - when.elapsed()).as_secs() / 60 + 1;
        return Build::Failed(format!(
            "{why}; it is built again at the next server start, or at a create in {left} min"
        ));
    }
    match start(st) {
        Ok(()) => Build::Running,
        Err(e) => {
            tracing::error!("cannot start building the template '{TEMPLATE}': {e}");
            failed(e.clone());
            Build::Failed(e)
        }
    }
}

fn failed(why: String) {
    *FAILED.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), why));
}

fn start(st: &Arc<AppState>) -> Result<(), String> {
    let mut recipe = hutch_builder::dockerfile::parse(DOCKERFILE, &[])
        .map_err(|e| format!("its Dockerfile: {e}"))?;
    recipe.start_cmd = Some("python3 /opt/hutch/interpreter/service.py".to_owned());
    recipe.ready_cmd = Some(format!(
        "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/health', timeout=5)\""
    ));
    let context = st
        .data_dir
        .join("tmp")
        .join(format!("interpreter-{}", ids::new_id()));
    std::fs::create_dir_all(&context)
        .map_err(|e| format!("cannot create {}: {e}", context.display()))?;
    let trust = std::fs::read(HOST_TRUST_STORE).unwrap_or_default();
    for (name, bytes) in [
        ("service.py", SERVICE.as_bytes()),
        ("requirements.txt", REQUIREMENTS.as_bytes()),
        ("host-ca-certificates.crt", trust.as_slice()),
    ] {
        let path = context.join(name);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    tracing::info!(
        "building the template '{TEMPLATE}' (the code interpreter) from '{BASE_TEMPLATE}' and pinned PyPI packages; takes a few minutes the first time"
    );
    let job = builds::start(
        st,
        builds::Request {
            team: st.default_team.clone(),
            name: TEMPLATE.to_owned(),
            template_id: None,
            build_id: None,
            frontend: "dockerfile",
            recipe,
            build_args: Vec::new(),
            no_cache: false,
            context: Some(context),
            files: Default::default(),
            ready_timeout: READY_TIMEOUT,
            limits: None,
            default: true,
            tags: Vec::new(),
        },
    );
    // Every team creates sandboxes from it, as from `base`.
    let st = st.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut seen = job.subscribe();
        loop {
            match job.status() {
                Status::Building => job.changed(&mut seen).await,
                Status::Ready(meta) => {
                    if let Err(e) = st.db.set_template_public(meta.id.clone(), true).await {
                        tracing::error!("cannot make the template '{TEMPLATE}' public: {e}");
                    }
                    tracing::info!(
                        "template '{TEMPLATE}' is ready ({:.0} s; at {})",
                        started.elapsed().as_secs_f64(),
                        time::rfc3339(time::now_ms())
                    );
                    return;
                }
                Status::Failed { message, .. } => {
                    tracing::error!("building the template '{TEMPLATE}' failed: {message}");
                    failed(format!("its build failed: {message}"));
                    return;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_parses_and_copies_the_service() {
        let recipe = hutch_builder::dockerfile::parse(DOCKERFILE, &[]).unwrap();
        assert_eq!(recipe.from, BASE_TEMPLATE);
        let text: Vec<&str> = recipe.steps.iter().map(|s| s.text.as_str()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("COPY") && t.contains("service.py")),
            "{text:?}"
        );
    }

    #[test]
    fn every_requirement_is_pinned() {
        for line in REQUIREMENTS.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, version) = line.split_once("==").expect(line);
            assert!(!name.is_empty() && !version.is_empty(), "{line}");
        }
        for needed in [
            "ipykernel",
            "jupyter_client",
            "numpy",
            "pandas",
            "matplotlib",
        ] {
            assert!(
                REQUIREMENTS
                    .lines()
                    .any(|l| l.starts_with(&format!("{needed}=="))),
                "{needed}"
            );
        }
    }
}
