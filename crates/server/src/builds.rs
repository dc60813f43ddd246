//! Template builds: a [`Recipe`] from either frontend (a Dockerfile sent by
//! `hutch template build`, or E2B's template API) run by the build engine
//! in the background, its log kept for streaming and polling.
//!
//! A build job is independent of the request that started it: a client
//! that disconnects does not stop it. Its log lives in memory (lines
//! numbered from 0, so clients can poll "from offset N"); jobs are
//! forgotten an hour after they end. A build that fails leaves no
//! template; the layers of its completed steps stay in the store and the
//! cache. A build that succeeds registers the template under its name,
//! replacing an older template of that name (sandboxes already running
//! from the old one keep it until they end; see [`crate::db`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hutch_builder::engine::{Base, Event, Options};
use hutch_builder::recipe::Recipe;
use hutch_image::{TEMPLATE_SCHEMA_VERSION, TemplateMetadata, TemplateSource};
use hutch_protocol::api::{BuildLogKind, BuildLogLine, LogLevel, LogStream};
use hutch_runtime::OutputStream;
use tokio::sync::watch;

use crate::catalog::Registration;
use crate::state::AppState;
use crate::{ids, time};

/// Most log lines kept per build.
const MAX_LOG_LINES: usize = 100_000;

/// How long a finished job's log stays available.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

/// What a log line is, as the build code reports it to [`Job::push`]; the
/// log keeps it as the API's [`BuildLogKind`].
#[derive(Debug, Clone)]
pub(crate) enum LogKind {
    /// A step starts.
    Step {
        /// 1-based.
        index: usize,
        /// Of how many.
        total: usize,
    },
    /// The step was served from the cache.
    Cached,
    /// Output of the running step.
    Output {
        /// `stdout` or `stderr`.
        stream: &'static str,
    },
    /// Anything else.
    Note,
}

impl LogKind {
    fn into_wire(self) -> BuildLogKind {
        match self {
            LogKind::Step { index, total } => BuildLogKind::Step { index, total },
            LogKind::Cached => BuildLogKind::Cached,
            LogKind::Output { stream } => BuildLogKind::Output {
                stream: if stream == "stderr" {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                },
            },
            LogKind::Note => BuildLogKind::Note,
        }
    }
}

/// A log level by name (`info`, `warn`, `error`); `info` for any other.
fn level(name: &str) -> LogLevel {
    LogLevel::from_name(name).unwrap_or(LogLevel::Info)
}

/// Where a job is.
#[derive(Debug, Clone)]
pub(crate) enum Status {
    Building,
    Ready(Box<TemplateMetadata>),
    Failed {
        message: String,
        exit_code: Option<u8>,
    },
}

/// A build in progress or finished.
pub(crate) struct Job {
    pub id: String,
    pub template_id: String,
    pub name: String,
    /// The team the build is for.
    pub team: String,
    log: Mutex<Vec<BuildLogLine>>,
    status: Mutex<Status>,
    /// Bumped on every new line and on the end.
    changed: watch::Sender<u64>,
}

impl Job {
    /// Adds a line at `level_name` (`info`, `warn` or `error`).
    pub fn push(&self, level_name: &'static str, message: String, kind: LogKind) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= MAX_LOG_LINES {
            // Step output beyond the cap is dropped (the failing step's last
            // lines still reach its error); steps and notes always go in.
            if matches!(kind, LogKind::Output { .. }) {
                if log.len() == MAX_LOG_LINES {
                    log.push(BuildLogLine {
                        timestamp: time::now_ms(),
                        level: LogLevel::Warn,
                        message: format!(
                            "(the build log is over {MAX_LOG_LINES} lines: further output is not kept)"
                        ),
                        kind: BuildLogKind::Note,
                    });
                    drop(log);
                    self.changed.send_modify(|n| *n += 1);
                }
                return;
            }
        }
        log.push(BuildLogLine {
            timestamp: time::now_ms(),
            level: level(level_name),
            message,
            kind: kind.into_wire(),
        });
        drop(log);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Log lines from `offset` on, at most `limit`.
    pub fn lines(&self, offset: usize, limit: usize) -> Vec<BuildLogLine> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().skip(offset).take(limit).cloned().collect()
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until something changes (a line or the end).
    pub async fn changed(&self, seen: &mut watch::Receiver<u64>) {
        let _ = seen.changed().await;
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn finish(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The jobs, by build id.
#[derive(Default)]
pub(crate) struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    pub fn get(&self, build_id: &str) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(build_id)
            .cloned()
    }

    /// The job building template `name`, if one is running.
    pub fn building(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|j| j.name == name && matches!(j.status(), Status::Building))
            .cloned()
    }
}

/// Registers a job for a build that runs elsewhere (the default `base`
/// template's recipe), so that its progress shows like any build's.
pub(crate) fn track(st: &Arc<AppState>, name: &str) -> Arc<Job> {
    register(
        st,
        ids::new_build_id(),
        String::new(),
        name,
        st.default_team.clone(),
    )
}

/// A new job, building, in the server's list.
fn register(
    st: &Arc<AppState>,
    id: String,
    template_id: String,
    name: &str,
    team: String,
) -> Arc<Job> {
    let job = Arc::new(Job {
        id,
        template_id,
        name: name.to_owned(),
        team,
        log: Mutex::new(Vec::new()),
        status: Mutex::new(Status::Building),
        changed: watch::channel(0).0,
    });
    st.builds
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job.id.clone(), job.clone());
    job
}

impl Job {
    /// The last line of its log, if any.
    pub fn last_line(&self) -> Option<String> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.last().map(|l| l.message.clone())
    }

    /// Seconds since its first line.
    pub fn elapsed_secs(&self) -> i64 {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.first()
            .map_or(0, |l| (time::now_ms() - l.timestamp) / 1000)
    }
}

/// A build to start.
pub(crate) struct Request {
    /// The team the build is for.
    pub team: String,
    /// The template's name.
    pub name: String,
    /// The template id to register it under (the template API hands it
    /// out before the build); a new one if `None`.
    pub template_id: Option<String>,
    /// The build id; a new one if `None`.
    pub build_id: Option<String>,
    /// `dockerfile` or `template-api`.
    pub frontend: &'static str,
    pub recipe: Recipe,
    pub build_args: Vec<(String, String)>,
    pub no_cache: bool,
    /// The context directory (removed when the build ends).
    pub context: Option<PathBuf>,
    /// Uploaded file sets by hash.
    pub files: HashMap<String, PathBuf>,
    pub ready_timeout: Duration,
    /// Default limits of the template's sandboxes (validated already).
    pub limits: Option<hutch_image::TemplateLimits>,
    /// Whether the build becomes the template's default (what `name` and
    /// `name:default` start), replacing the previous one; else it is known
    /// by its [`Request::tags`] only.
    pub default: bool,
    /// Tags to point at the build (valid, without `default`).
    pub tags: Vec<String>,
}

/// Starts a build in the background; returns its job at once.
pub(crate) fn start(st: &Arc<AppState>, req: Request) -> Arc<Job> {
    let job = register(
        st,
        req.build_id.clone().unwrap_or_else(ids::new_build_id),
        req.template_id.clone().unwrap_or_else(ids::new_id),
        &req.name,
        req.team.clone(),
    );
    let st = st.clone();
    let j = job.clone();
    tokio::spawn(async move {
        let context = req.context.clone();
        let started = std::time::Instant::now();
        let status = match run(&st, &j, req).await {
            Ok(meta) => {
                j.push(
                    "info",
                    format!(
                        "template '{}' built in {:.1} s",
                        meta.name,
                        started.elapsed().as_secs_f64()
                    ),
                    LogKind::Note,
                );
                Status::Ready(Box::new(meta))
            }
            Err((message, exit_code)) => {
                j.push("error", message.clone(), LogKind::Note);
                tracing::warn!(template = %j.name, build = %j.id, "build failed: {message}");
                Status::Failed { message, exit_code }
            }
        };
        st.prometheus
            .build(matches!(status, Status::Ready(_)), started.elapsed());
        if let Some(dir) = context {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        j.finish(status);
        tokio::time::sleep(KEEP_FINISHED).await;
        st.builds
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&j.id);
    });
    job
}

async fn run(
    st: &Arc<AppState>,
    job: &Arc<Job>,
    req: Request,
) -> Result<TemplateMetadata, (String, Option<u8>)> {
    let fail = |m: String| (m, None);
    // Layers in use by the build must not be collected meanwhile.
    let _layers = st.layers_lock.read().await;
    let base = resolve_base(st, job, &req.recipe.from)
        .await
        .map_err(fail)?;
    job.push(
        "info",
        format!("FROM {} ({} layers)", req.recipe.from, base.layers.len()),
        LogKind::Note,
    );
    let reporter_job = job.clone();
    let report: hutch_builder::engine::Reporter = Arc::new(move |event| match event {
        Event::Step { index, total, text } => reporter_job.push(
            "info",
            format!("[{index}/{total}] {text}"),
            LogKind::Step { index, total },
        ),
        Event::Cached => reporter_job.push("info", "cached".to_owned(), LogKind::Cached),
        Event::Output { stream, line } => reporter_job.push(
            if stream == OutputStream::Stderr {
                "warn"
            } else {
                "info"
            },
            line,
            LogKind::Output {
                stream: if stream == OutputStream::Stderr {
                    "stderr"
                } else {
                    "stdout"
                },
            },
        ),
        Event::Note(n) => reporter_job.push("info", n, LogKind::Note),
    });
    let opts = Options {
        template_name: req.name.clone(),
        build_args: req.build_args.clone(),
        no_cache: req.no_cache,
        context: req.context.clone(),
        files: req.files.clone(),
        ready_timeout: req.ready_timeout,
    };
    let builder = st
        .builder
        .as_ref()
        .ok_or_else(|| ("this server cannot build templates".to_owned(), None))?;
    let built = builder
        .build(base, &req.recipe, &opts, report)
        .await
        .map_err(|e| {
            let code = e.exit_code();
            (e.to_string(), code)
        })?;
    if built.layer_steps > 0 {
        job.push(
            "info",
            format!(
                "{} of {} layer steps from the cache",
                built.cached_steps, built.layer_steps
            ),
            LogKind::Note,
        );
    }

    let now = time::now_ms();
    // A build that is not the default is a hidden row of the name.
    let (id, name) = if req.default {
        (job.template_id.clone(), req.name.clone())
    } else {
        let id = ids::new_id();
        (id.clone(), format!("{}@{id}", req.name))
    };
    let meta = TemplateMetadata {
        schema_version: TEMPLATE_SCHEMA_VERSION,
        id,
        name,
        created_at: time::rfc3339(now),
        source: TemplateSource::Build {
            frontend: req.frontend.to_owned(),
            from: req.recipe.from.clone(),
            steps: req.recipe.steps.len(),
        },
        image: built.image,
        env: built.env,
        user: built.user,
        workdir: built.workdir,
        layers: built.layers,
        allow_privilege_escalation: built.allow_privilege_escalation,
        start_cmd: built.start_cmd,
        ready_cmd: built.ready_cmd,
        limits: req.limits,
    };
    let how = if req.default {
        Registration::Replace
    } else {
        Registration::New
    };
    let replaced = crate::catalog::register_build(st, &req.team, &meta, how, job.id.clone())
        .await
        .map_err(|e| fail(format!("cannot record the template: {e}")))?;
    if !req.tags.is_empty() {
        st.db
            .set_tags(req.name.clone(), req.tags.clone(), meta.id.clone(), now)
            .await
            .map_err(|e| fail(format!("cannot record the build's tags: {e}")))?;
        job.push(
            "info",
            format!("tagged {}", req.tags.join(", ")),
            LogKind::Note,
        );
    }
    if replaced {
        job.push(
            "info",
            format!("replaced the previous template '{}'", meta.name),
            LogKind::Note,
        );
    }
    tracing::info!(template = %meta.name, build = %job.id, "template built");
    Ok(meta)
}

/// What `FROM` names: a template the build's team may use (by name or
/// id), else an image reference pulled from its registry.
async fn resolve_base(st: &Arc<AppState>, job: &Arc<Job>, from: &str) -> Result<Base, String> {
    if let Some(t) = st
        .db
        .find_template(from.to_owned())
        .await
        .map_err(|e| e.to_string())?
        .filter(|t| !t.name.contains('@') && crate::catalog::visible(t, &job.team))
    {
        let meta = crate::catalog::metadata(&t).map_err(|e| e.to_string())?;
        return Ok(Base {
            layers: meta.layers,
            env: meta.env,
            user: meta.user,
            workdir: meta.workdir,
            allow_privilege_escalation: meta.allow_privilege_escalation,
            image: meta.image,
        });
    }
    if crate::catalog::valid_template_name(from) && !from.contains(['/', ':', '.']) {
        return Err(format!(
            "FROM {from}: there is no template '{from}' (see `hutch template list`), and image references need a registry, e.g. `registry.example.com/{from}:latest`"
        ));
    }
    job.push("info", format!("pulling {from}"), LogKind::Note);
    let progress_job = job.clone();
    let mut progress = move |p: hutch_image::PullProgress| match p {
        hutch_image::PullProgress::Resolved {
            manifest_digest,
            layers,
            ..
        } => progress_job.push(
            "info",
            format!("resolved to {manifest_digest} ({layers} layers)"),
            LogKind::Note,
        ),
        hutch_image::PullProgress::Layer {
            index,
            digest,
            total,
            reused,
            complete: true,
            ..
        } => progress_job.push(
            "info",
            format!(
                "layer {} {} ({:.1} MB){}",
                index + 1,
                &digest[..digest.len().min(19)],
                total as f64 / 1e6,
                if reused { ", already stored" } else { "" }
            ),
            LogKind::Note,
        ),
        _ => {}
    };
    let image = crate::catalog::pull_image(
        st,
        from,
        hutch_image::RegistryAuth::Anonymous,
        &mut progress,
    )
    .await
    .map_err(|e| format!("FROM {from}: {e}"))?;
    let user = image.config.user.clone().filter(|u| !u.is_empty());
    let workdir = image.config.working_dir.clone().filter(|w| !w.is_empty());
    Ok(Base {
        layers: image.layers,
        env: hutch_env::image_layer(&image.config.env),
        user,
        workdir,
        allow_privilege_escalation: false,
        image: image.config,
    })
}
