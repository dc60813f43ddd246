//! The service behind E2B's template build API (the routes are in
//! `api::e2b_templates`): builds requested and waiting to be started,
//! upload grants, the uploaded file sets, the translation of E2B's build
//! steps into a [`Recipe`], and the status and log of a build as E2B's SDKs
//! poll them.
//!
//! A build is requested first ([`TemplateApi::request_build`]) and waits in
//! memory until it is started ([`TemplateApi::start_build`]), for at most
//! an hour. Meanwhile the SDK uploads the files of its `COPY` steps: each
//! file set, named by its SHA-256, is a tar (gzipped or not) unpacked into
//! `DATA/build-files/<hash>/` ([`TemplateApi::store_file_set`]). It is
//! unpacked into a temporary directory under `DATA/build-files/.tmp/` and
//! renamed into place, so a file set is either whole or absent. Uploads do
//! not carry the API key: each takes the random per-hash token handed out
//! with its URL ([`TemplateApi::file_link`]), valid for [`GRANT_TTL`].
//! File sets nobody asked for in a week are removed when the server starts.
//!
//! Errors are [`TemplateApiError`]s; the HTTP layer maps each to a status.

use hutch_image::TemplateDocument as _;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hutch_builder::BuildError;
use hutch_builder::recipe::{Copy, Recipe, RunCommand, Step, StepKind};
use hutch_image::TemplateMetadata;
use hutch_protocol::api::{
    BuildFilesUploaded, BuildLogEntry, BuildLogKind, BuildLogLine, BuildStatusReason, LogLevel,
    TemplateAliasInfo, TemplateBuildRequest, TemplateBuildRequested, TemplateBuildStart,
    TemplateBuildStatus, TemplateFileLink,
};
use serde_json::Value;

use crate::builds::{self, Status};
use crate::catalog::DEFAULT_TAG;
use crate::db::DbError;
use crate::state::AppState;
use crate::{ids, time};

/// How long an upload URL stays valid.
pub(crate) const GRANT_TTL: Duration = Duration::from_secs(3600);

/// How long a requested build waits to be started before it is forgotten.
const PENDING_TTL: Duration = Duration::from_secs(3600);

/// Most log entries one status call returns (E2B's page size).
const MAX_PAGE: usize = 100;

/// Log entries of the failing step sent along with an error.
const REASON_ENTRIES: usize = 20;

/// The image E2B's SDKs start from by default (`Template()` without a
/// `from_*`, or `from_base_image()`): Hutch's own `base` template is its
/// counterpart.
const E2B_BASE_IMAGE: &str = "e2bdev/base";

/// Log text of the engine's start/ready check: what follows belongs to
/// E2B's `finalize` step.
const FINALIZE_NOTE: &str = "checking the start and ready commands";

/// Uploaded file sets not asked for this long are removed when the server
/// starts (the SDK uploads them again when it needs them).
const FILE_SET_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a template-API request cannot be done. Each message is complete and
/// is what the client is told; the HTTP layer picks the status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TemplateApiError {
    /// A file-set hash is not a SHA-256 in lowercase hex (the SDKs'
    /// form); it is refused before it can name a path.
    #[error("invalid files hash '{0}': expected 64 lowercase hex digits (SHA-256)")]
    InvalidHash(String),
    /// A build request names no template (neither `name` nor `alias`).
    #[error("the template name is missing ('name')")]
    NameMissing,
    /// A build request's tag is not a valid tag.
    #[error(
        "invalid tag '{0}': use 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.' or '-'"
    )]
    InvalidTag(String),
    /// A build request's template name is not a valid template name.
    #[error(
        "invalid template name '{0}': use 1 to 63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    /// A build request's `cpuCount` or `memoryMB` is out of the bounds
    /// this server allows (the message says which and why).
    #[error("{0}")]
    InvalidLimits(String),
    /// Another team's template has that name.
    #[error("template name '{0}' is taken by another team; choose another name")]
    NameTaken(String),
    /// A build of the template of that name is running: one at a time.
    #[error("template '{0}' is being built already")]
    Building(String),
    /// No template, and no requested build, has that id or name.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// The request does not say at which address clients reach this server
    /// (no `Host`), so no upload URL can be given.
    #[error("the request has no Host header to build an upload URL from")]
    NoPublicAddress,
    /// An upload came without its token.
    #[error("missing upload token: use the URL from GET /templates/{{templateID}}/files/{{hash}}")]
    UploadTokenMissing,
    /// An upload's token is not the one handed out for its hash, or has
    /// expired.
    #[error(
        "invalid or expired upload token: ask GET /templates/{{templateID}}/files/{{hash}} for a new URL"
    )]
    UploadTokenInvalid,
    /// The temporary directory of an upload cannot be created.
    #[error("cannot create {}: {cause}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The blocking task that unpacks or places an upload failed
    /// (panicked or was cancelled).
    #[error("upload task failed: {0}")]
    Task(tokio::task::JoinError),
    /// The uploaded body is not a (gzipped) tar that unpacks safely.
    #[error("cannot unpack the uploaded files: {0}")]
    Unpack(BuildError),
    /// The unpacked files cannot be moved into place.
    #[error("cannot store the files: {0}")]
    Store(std::io::Error),
    /// No build of that id was requested for that template and is waiting
    /// to be started.
    #[error(
        "build '{build_id}' of template '{template_id}' not found: request one with POST /v3/templates"
    )]
    BuildNotRequested {
        /// The template id or name given.
        template_id: String,
        /// The build id given.
        build_id: String,
    },
    /// The build has been started already (a build starts once).
    #[error("build '{0}' has been started already")]
    AlreadyStarted(String),
    /// The build's base image needs registry credentials, which template
    /// builds do not take.
    #[error(
        "registry credentials ('{0}') are not supported in template builds: pull the image with `hutch template pull` (which takes credentials) and start from that template with from_template(...)"
    )]
    RegistryCredentials(String),
    /// A build step is malformed: an argument is missing or invalid, or
    /// the files of a `COPY` step were not uploaded.
    #[error("step {step} ({kind}): {reason}")]
    InvalidStep {
        /// The step's number, 1-based as the SDKs count.
        step: usize,
        /// Its type, upper case.
        kind: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A build step is of a type Hutch does not build.
    #[error(
        "step {step}: unknown step type '{kind}' (Hutch builds ENV, ARG, RUN, WORKDIR, USER and COPY steps)"
    )]
    UnknownStep {
        /// The step's number, 1-based as the SDKs count.
        step: usize,
        /// Its type, upper case.
        kind: String,
    },
    /// No build of that id of that template is known (requested, running,
    /// or finished within the hour).
    #[error("build '{build_id}' of template '{template_id}' not found")]
    BuildNotFound {
        /// The template id or name given.
        template_id: String,
        /// The build id given.
        build_id: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbError),
}

/// The template API's own state: builds requested but not started, and
/// upload grants; and where the uploaded file sets live.
pub(crate) struct TemplateApi {
    /// Where uploaded file sets live: `DATA/build-files/<hash>/`.
    files: PathBuf,
    /// By build id.
    pending: Mutex<HashMap<String, Pending>>,
    /// Upload tokens by file-set hash.
    grants: Mutex<HashMap<String, Grant>>,
}

/// A build requested with `POST /v3/templates` and not started yet.
#[derive(Debug, Clone)]
struct Pending {
    /// The team it is for.
    team: String,
    /// The template id handed out for it.
    template_id: String,
    /// The template name.
    name: String,
    /// When it was requested (it is forgotten after [`PENDING_TTL`]).
    since: Instant,
    /// Things the request asked for that Hutch does not apply.
    notes: Vec<String>,
    /// `cpuCount` / `memoryMB`: the template's default limits.
    limits: Option<hutch_image::TemplateLimits>,
    /// The build's tags, `default` included when it becomes the default.
    tags: Vec<String>,
}

/// The upload token of one file set.
#[derive(Debug, Clone)]
struct Grant {
    /// The token, random.
    token: String,
    /// When it expires.
    until: Instant,
}

/// Which log entries a status call asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogPage {
    /// Only entries at this level or above (the offset counts those).
    pub min_level: LogLevel,
    /// The first entry; 0 when not given.
    pub offset: Option<usize>,
    /// How many entries at most; [`MAX_PAGE`] when not given, and never
    /// more.
    pub limit: Option<usize>,
}

/// Which log entries a build logs call asks for (E2B's
/// `GET /templates/{id}/builds/{buildID}/logs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogWindow {
    /// Only entries at this level or above.
    pub min_level: LogLevel,
    /// Unix ms: only entries after it (forward) or before it (backward).
    pub cursor: Option<i64>,
    /// How many entries at most; [`MAX_PAGE`] when not given, and never
    /// more.
    pub limit: Option<usize>,
    /// Oldest first from the cursor; else newest first.
    pub forward: bool,
}

impl TemplateApi {
    /// The template API of the server with the data directory `data_dir`.
    /// Removes what uploads interrupted by a crash or a stop left behind,
    /// and the file sets nobody has asked for in a week.
    pub(crate) fn open(data_dir: &Path) -> TemplateApi {
        let files = data_dir.join("build-files");
        let _ = std::fs::remove_dir_all(files.join(".tmp"));
        prune_file_sets(&files, FILE_SET_TTL);
        TemplateApi {
            files,
            pending: Mutex::default(),
            grants: Mutex::default(),
        }
    }

    /// The builds waiting to be started, locked (a poisoned lock is taken
    /// over: the map stays consistent whatever panicked).
    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upload grants, locked (as [`Self::pending`]).
    fn grants(&self) -> MutexGuard<'_, HashMap<String, Grant>> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upload token for `hash`: the one already handed out while it is
    /// valid (two builds may upload the same files), else a new one.
    fn grant(&self, hash: &str) -> String {
        let now = Instant::now();
        let mut grants = self.grants();
        grants.retain(|_, g| g.until > now);
        grants
            .entry(hash.to_owned())
            .or_insert_with(|| Grant {
                token: ids::new_access_token(),
                until: now + GRANT_TTL,
            })
            .token
            .clone()
    }

    /// Whether `token` is the unexpired upload token of `hash`.
    fn token_valid(&self, hash: &str, token: &str) -> bool {
        self.grants().get(hash).is_some_and(|g| {
            g.until > Instant::now() && hutch_protocol::same_secret(&g.token, token)
        })
    }

    // ----- 1. request a build ------------------------------------------

    /// Requests a build (`POST /v3/templates`): it waits in memory, under
    /// a new build id, until [`Self::start_build`]. The template id is that
    /// of the template of that name when one exists (a rebuild keeps it,
    /// as with E2B), else that of a build of the name requested already,
    /// else a new one. `cpuCount` and `memoryMB` become the template's
    /// default limits; `minFreeDiskMB` is accepted and not applied.
    pub(crate) async fn request_build(
        &self,
        st: &AppState,
        team: &str,
        body: &TemplateBuildRequest,
    ) -> Result<TemplateBuildRequested, TemplateApiError> {
        let (name, tags) = name_and_tags(body)?;
        if st.builds.building(&name).is_some() {
            return Err(TemplateApiError::Building(name));
        }
        let notes = Vec::new();
        let limits = (body.cpu_count.is_some() || body.memory_mb.is_some()).then(|| {
            hutch_image::TemplateLimits {
                cpu_count: body.cpu_count.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
                memory_mb: body.memory_mb,
                ..Default::default()
            }
        });
        if let Some(l) = &limits {
            crate::limits::template_defaults(&name, Some(l), &st.max_limits)
                .map_err(TemplateApiError::InvalidLimits)?;
        }
        let existing = match st.db.find_template(name.clone()).await? {
            Some(t) if t.name == name && t.team_id != team => {
                return Err(TemplateApiError::NameTaken(name));
            }
            Some(t) if t.name == name => Some(t.id),
            _ => None,
        };
        let build_id = ids::new_build_id();
        let template_id = {
            let mut pending = self.pending();
            pending.retain(|_, p| p.since.elapsed() < PENDING_TTL);
            // A second request for a new name before the first started.
            let requested = pending.values().find(|p| p.name == name);
            if requested.is_some_and(|p| p.team != team) {
                return Err(TemplateApiError::NameTaken(name));
            }
            let template_id = existing
                .or_else(|| requested.map(|p| p.template_id.clone()))
                .unwrap_or_else(ids::new_id);
            pending.insert(
                build_id.clone(),
                Pending {
                    team: team.to_owned(),
                    template_id: template_id.clone(),
                    name: name.clone(),
                    since: Instant::now(),
                    notes,
                    limits,
                    tags: tags.clone(),
                },
            );
            template_id
        };
        tracing::info!(template = %name, build = %build_id, "template build requested");
        Ok(TemplateBuildRequested {
            template_id,
            build_id,
            public: false,
            names: vec![name.clone()],
            tags,
            aliases: vec![name],
        })
    }

    // ----- 2. file sets --------------------------------------------------

    /// Whether the file set `hash` of a build of `template_id` is stored,
    /// and the URL to upload it to (given even when it is present, for the
    /// SDKs' `force_upload`): `{base}/hutch/v1/build-files/{hash}?token=T`,
    /// with `base` the scheme and authority clients reached this server
    /// at. A present file set is touched, so that it is not pruned as
    /// stale. `base` is `None` when the request does not say; that is
    /// refused after the hash and the template are checked.
    pub(crate) async fn file_link(
        &self,
        st: &AppState,
        team: &str,
        template_id: &str,
        hash: &str,
        base: Option<&str>,
    ) -> Result<TemplateFileLink, TemplateApiError> {
        check_hash(hash)?;
        self.known_template(st, team, template_id).await?;
        let dir = self.files.join(hash);
        let present = dir.is_dir();
        if present {
            // In use: keep it from being pruned as stale.
            let _ = std::fs::File::open(&dir).and_then(|f| f.set_modified(SystemTime::now()));
        }
        let base = base.ok_or(TemplateApiError::NoPublicAddress)?;
        let url = format!(
            "{base}/hutch/v1/build-files/{hash}?token={}",
            self.grant(hash)
        );
        Ok(TemplateFileLink { present, url })
    }

    /// Stores the file set `hash`, read from `files` (a tar or gzipped tar
    /// of a `COPY` step's files, paths relative to the SDK's context
    /// directory), in `DATA/build-files/<hash>/`, replacing what is there,
    /// once `token` is found to be the upload token of `hash`. The tar is
    /// unpacked into a temporary directory and renamed into place, so the
    /// file set is either whole or absent.
    pub(crate) async fn store_file_set<R: Read + Send + 'static>(
        &self,
        hash: &str,
        token: Option<&str>,
        mut files: R,
    ) -> Result<BuildFilesUploaded, TemplateApiError> {
        check_hash(hash)?;
        let token = token.ok_or(TemplateApiError::UploadTokenMissing)?;
        if !self.token_valid(hash, token) {
            return Err(TemplateApiError::UploadTokenInvalid);
        }
        let root = &self.files;
        let tmp = root.join(".tmp").join(ids::new_id());
        std::fs::create_dir_all(&tmp).map_err(|cause| TemplateApiError::CreateDir {
            path: tmp.clone(),
            cause,
        })?;
        let target = tmp.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            hutch_builder::context::unpack(&mut files, &target)
        })
        .await
        .map_err(TemplateApiError::Task);
        let placed = match unpacked {
            Ok(Ok(())) => {
                let dest = root.join(hash);
                let old = root.join(".tmp").join(format!("{}-old", ids::new_id()));
                tokio::task::spawn_blocking(move || place(&tmp, &dest, &old))
                    .await
                    .map_err(TemplateApiError::Task)
                    .and_then(|r| r.map_err(TemplateApiError::Store))
            }
            Ok(Err(e)) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(TemplateApiError::Unpack(e))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        };
        placed?;
        tracing::debug!(hash = %hash, "build files uploaded");
        Ok(BuildFilesUploaded { present: true })
    }

    /// Fails with [`TemplateApiError::TemplateNotFound`] unless
    /// `template_id` names a requested build's template or a template (by
    /// id or name) of team `team`.
    async fn known_template(
        &self,
        st: &AppState,
        team: &str,
        template_id: &str,
    ) -> Result<(), TemplateApiError> {
        let pending = self
            .pending()
            .values()
            .any(|p| p.team == team && (p.template_id == template_id || p.name == template_id));
        let owned = || async {
            Ok::<_, TemplateApiError>(
                st.db
                    .find_template(template_id.to_owned())
                    .await?
                    .is_some_and(|t| t.team_id == team),
            )
        };
        if pending || owned().await? {
            Ok(())
        } else {
            Err(TemplateApiError::TemplateNotFound(template_id.to_owned()))
        }
    }

    // ----- 3. start a build ----------------------------------------------

    /// Starts the requested build `build_id` of `template_id` (an id or a
    /// name) with the steps of `body` (see [`to_recipe`]): the build engine
    /// runs it in the background ([`crate::builds`]). A build starts once;
    /// `force` builds without the cache.
    pub(crate) async fn start_build(
        &self,
        st: &Arc<AppState>,
        team: &str,
        template_id: &str,
        build_id: &str,
        body: &TemplateBuildStart,
    ) -> Result<(), TemplateApiError> {
        let pending = self
            .pending()
            .get(build_id)
            .filter(|p| p.team == team && (p.template_id == template_id || p.name == template_id))
            .cloned();
        let Some(pending) = pending else {
            if st.builds.get(build_id).is_some_and(|j| j.team == team) {
                return Err(TemplateApiError::AlreadyStarted(build_id.to_owned()));
            }
            return Err(TemplateApiError::BuildNotRequested {
                template_id: template_id.to_owned(),
                build_id: build_id.to_owned(),
            });
        };
        if st.builds.building(&pending.name).is_some() {
            return Err(TemplateApiError::Building(pending.name.clone()));
        }
        let from = base_of(body)?;
        let base_user = template_user(st, team, &from).await?;
        let (mut recipe, files) = to_recipe(body, from, base_user, &self.files)?;
        recipe.notes = pending.notes.clone();
        // Started once: a concurrent start of the same build loses here.
        if self.pending().remove(build_id).is_none() {
            return Err(TemplateApiError::AlreadyStarted(build_id.to_owned()));
        }
        builds::start(
            st,
            builds::Request {
                team: team.to_owned(),
                name: pending.name.clone(),
                template_id: Some(pending.template_id.clone()),
                build_id: Some(build_id.to_owned()),
                frontend: "template-api",
                recipe,
                build_args: Vec::new(),
                no_cache: body.force.unwrap_or(false),
                context: None,
                files,
                ready_timeout: hutch_runtime::DEFAULT_READY_TIMEOUT,
                limits: pending.limits,
                default: pending.tags.iter().any(|t| t == DEFAULT_TAG),
                tags: pending
                    .tags
                    .iter()
                    .filter(|t| *t != DEFAULT_TAG)
                    .cloned()
                    .collect(),
            },
        );
        tracing::info!(template = %pending.name, build = %build_id, "template build started");
        Ok(())
    }

    // ----- 4. status and logs --------------------------------------------

    /// The status of the build `build_id` of `template_id` (an id or a
    /// name) and the log entries `page` asks for, each with the E2B step
    /// it belongs to. A requested build not started yet is `waiting`, with
    /// no log; a failed one comes with the reason and the last output of
    /// the step that failed.
    pub(crate) fn build_status(
        &self,
        st: &AppState,
        team: &str,
        template_id: String,
        build_id: String,
        page: LogPage,
    ) -> Result<TemplateBuildStatus, TemplateApiError> {
        let Some(job) = self.job(st, team, &template_id, &build_id)? else {
            return Ok(TemplateBuildStatus {
                template_id,
                build_id,
                status: TemplateBuildStatus::WAITING.to_owned(),
                logs: Vec::new(),
                log_entries: Vec::new(),
                reason: None,
            });
        };
        // The status first: lines pushed before the end are then all there.
        let status = job.status();
        let lines: Vec<(BuildLogLine, String)> = with_steps(job.lines(0, usize::MAX))
            .into_iter()
            .filter(|(l, _)| l.level >= page.min_level)
            .collect();
        let entries: Vec<&(BuildLogLine, String)> = lines
            .iter()
            .skip(page.offset.unwrap_or(0))
            .take(page.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE))
            .collect();
        let reason = match &status {
            Status::Failed { message, .. } => {
                let step = lines
                    .last()
                    .map_or_else(|| "base".to_owned(), |(_, s)| s.clone());
                let of_step: Vec<BuildLogEntry> = lines
                    .iter()
                    .filter(|(l, s)| *s == step && matches!(l.kind, BuildLogKind::Output { .. }))
                    .map(|(l, s)| entry(l, s))
                    .collect();
                let tail = of_step[of_step.len().saturating_sub(REASON_ENTRIES)..].to_vec();
                Some(BuildStatusReason {
                    message: message.clone(),
                    step,
                    log_entries: tail,
                })
            }
            _ => None,
        };
        Ok(TemplateBuildStatus {
            template_id: job.template_id.clone(),
            build_id: job.id.clone(),
            status: match status {
                Status::Building => TemplateBuildStatus::BUILDING,
                Status::Ready(_) => TemplateBuildStatus::READY,
                Status::Failed { .. } => TemplateBuildStatus::ERROR,
            }
            .to_owned(),
            logs: entries.iter().map(|(l, _)| l.message.clone()).collect(),
            log_entries: entries.iter().map(|(l, s)| entry(l, s)).collect(),
            reason,
        })
    }
}

impl TemplateApi {
    /// The job of the build `build_id` of `template_id` (an id or a name);
    /// `Ok(None)` while it is requested and not started.
    fn job(
        &self,
        st: &AppState,
        team: &str,
        template_id: &str,
        build_id: &str,
    ) -> Result<Option<Arc<builds::Job>>, TemplateApiError> {
        if let Some(job) = st
            .builds
            .get(build_id)
            .filter(|j| j.team == team && (j.template_id == template_id || j.name == template_id))
        {
            return Ok(Some(job));
        }
        let waiting = self.pending().get(build_id).is_some_and(|p| {
            p.team == team && (p.template_id == template_id || p.name == template_id)
        });
        if waiting {
            return Ok(None);
        }
        Err(TemplateApiError::BuildNotFound {
            template_id: template_id.to_owned(),
            build_id: build_id.to_owned(),
        })
    }

    /// The log entries of the build `build_id` of `template_id` (an id or
    /// a name) that `window` asks for. Builds are known while they run and
    /// for an hour after they end.
    pub(crate) fn build_logs(
        &self,
        st: &AppState,
        team: &str,
        template_id: String,
        build_id: String,
        window: LogWindow,
    ) -> Result<Vec<BuildLogEntry>, TemplateApiError> {
        let Some(job) = self.job(st, team, &template_id, &build_id)? else {
            return Ok(Vec::new());
        };
        let mut lines: Vec<(BuildLogLine, String)> = with_steps(job.lines(0, usize::MAX))
            .into_iter()
            .filter(|(l, _)| l.level >= window.min_level)
            .filter(|(l, _)| match window.cursor {
                None => true,
                Some(c) if window.forward => l.timestamp >= c,
                Some(c) => l.timestamp <= c,
            })
            .collect();
        if !window.forward {
            lines.reverse();
        }
        Ok(lines
            .iter()
            .take(window.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE))
            .map(|(l, s)| entry(l, s))
            .collect())
    }
}

// ----- 5. names ------------------------------------------------------------

/// The template named `alias` (`Template.exists`) that team `team` may
/// use: its id and public flag; [`TemplateApiError::TemplateNotFound`]
/// unless such a template has that name (an id does not count).
pub(crate) async fn alias(
    st: &AppState,
    team: &str,
    alias: &str,
) -> Result<TemplateAliasInfo, TemplateApiError> {
    match st.db.find_template(alias.to_owned()).await? {
        Some(t) if t.name == alias && crate::catalog::visible(&t, team) => Ok(TemplateAliasInfo {
            template_id: t.id,
            public: t.public,
        }),
        _ => Err(TemplateApiError::TemplateNotFound(alias.to_owned())),
    }
}

/// Removes file sets under `root` whose directory was last touched more
/// than `ttl` ago (asking whether a set is present touches it).
fn prune_file_sets(root: &Path, ttl: Duration) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ttl);
        if stale
            && e.file_name() != ".tmp"
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(path = %e.path().display(), "cannot remove a stale file set: {err}");
        }
    }
}

/// A file-set hash as the SDKs compute it: SHA-256, lowercase hex.
fn check_hash(hash: &str) -> Result<(), TemplateApiError> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(TemplateApiError::InvalidHash(hash.to_owned()))
    }
}

/// Moves the unpacked directory `tmp` to `dest`, replacing what is there
/// (moved aside to `old` first, then removed).
fn place(tmp: &Path, dest: &Path, old: &Path) -> std::io::Result<()> {
    let had = match std::fs::rename(dest, old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            return Err(e);
        }
    };
    let result = std::fs::rename(tmp, dest);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    if had {
        let _ = std::fs::remove_dir_all(old);
    }
    result
}

/// The template name of a request and the tags its build gets: the tag of
/// `name:tag` (E2B's implicit `default` without one) and `tags`.
fn name_and_tags(body: &TemplateBuildRequest) -> Result<(String, Vec<String>), TemplateApiError> {
    let raw = [&body.name, &body.alias]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .ok_or(TemplateApiError::NameMissing)?;
    let (name, tag) = match raw.split_once(':') {
        Some((n, t)) => (n, t),
        None => (raw.as_str(), DEFAULT_TAG),
    };
    let mut tags: Vec<String> = Vec::new();
    for t in std::iter::once(tag).chain(body.tags.iter().flatten().map(String::as_str)) {
        if !crate::catalog::valid_tag(t) {
            return Err(TemplateApiError::InvalidTag(t.to_owned()));
        }
        if !tags.iter().any(|x| x == t) {
            tags.push(t.to_owned());
        }
    }
    if !crate::catalog::valid_template_name(name) {
        return Err(TemplateApiError::InvalidName(name.to_owned()));
    }
    Ok((name.to_owned(), tags))
}

/// What a build starts from: the template or image reference, as given;
/// E2B's default base image is Hutch's `base` template.
fn base_of(body: &TemplateBuildStart) -> Result<String, TemplateApiError> {
    if let Some(registry) = &body.from_image_registry {
        let kind = registry
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("registry");
        return Err(TemplateApiError::RegistryCredentials(kind.to_owned()));
    }
    /// The value, trimmed, unless it is missing or blank.
    fn nonempty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    if let Some(t) = nonempty(&body.from_template) {
        return Ok(t.to_owned());
    }
    match nonempty(&body.from_image) {
        None => Ok(hutch_builder::BASE_TEMPLATE.to_owned()),
        Some(i) if i == E2B_BASE_IMAGE || i == format!("{E2B_BASE_IMAGE}:latest") => {
            Ok(hutch_builder::BASE_TEMPLATE.to_owned())
        }
        Some(i) => Ok(i.to_owned()),
    }
}

/// How a `RUN` step runs: like E2B, as `/bin/bash -l -c CMD` (what the
/// SDKs' `commands.run` does too); with `/bin/sh -c CMD` in images without
/// bash.
fn run_argv(cmd: &str) -> Vec<String> {
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        r#"if [ -x /bin/bash ]; then exec /bin/bash -l -c "$0"; fi; exec /bin/sh -c "$0""#
            .to_owned(),
        cmd.to_owned(),
    ]
}

/// The steps of a template-API build as a [`Recipe`], one recipe step per
/// API step (so step numbers match the SDK's), and the uploaded file sets
/// its `COPY` steps use.
///
/// * `ENV` and `ARG` (`[k1, v1, k2, v2, ...]`): variables of the template,
///   as E2B treats both (its SDKs turn a Dockerfile's `ARG` into `ENV`).
///   Values are expanded at build time against the environment so far.
/// * `RUN` (`[cmd, user?]`): see [`run_argv`]; `user` runs it as that user.
/// * `WORKDIR` (`[path]`), `USER` (`[name, "true"?]`: the user is created
///   if missing, with passwordless `sudo` when the second argument is
///   `true`).
/// * `COPY` (`[src, dest, owner?, mode?]` and `filesHash`): from the
///   uploaded file set; without an owner the files belong to the current
///   user, as with E2B (`base_user` is the base template's user); `mode`
///   is octal.
fn to_recipe(
    body: &TemplateBuildStart,
    from: String,
    base_user: Option<String>,
    files_root: &Path,
) -> Result<(Recipe, HashMap<String, PathBuf>), TemplateApiError> {
    let mut steps = Vec::new();
    let mut files = HashMap::new();
    let mut user = base_user;
    for (i, s) in body.steps.iter().flatten().enumerate() {
        let n = i + 1;
        let args = s.args.clone().unwrap_or_default();
        let kind = s.kind.to_ascii_uppercase();
        let bad = |m: String| TemplateApiError::InvalidStep {
            step: n,
            kind: kind.clone(),
            reason: m,
        };
        let arg = |j: usize, what: &str| {
            args.get(j)
                .filter(|a| !a.is_empty())
                .cloned()
                .ok_or_else(|| bad(format!("missing {what}")))
        };
        let optional = |j: usize| args.get(j).filter(|a| !a.is_empty()).cloned();
        let (text, step_kind) = match kind.as_str() {
            "ENV" | "ARG" => {
                if args.is_empty() || args.len() % 2 != 0 {
                    return Err(bad(
                        "expected names and values in pairs: [name1, value1, name2, value2, ...]"
                            .to_owned(),
                    ));
                }
                let pairs: Vec<(String, String)> = args
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect();
                if let Some((k, _)) = pairs
                    .iter()
                    .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
                {
                    return Err(bad(format!("invalid variable name '{k}'")));
                }
                let text = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                (format!("{kind} {text}"), StepKind::Env(pairs))
            }
            "RUN" => {
                let cmd = arg(0, "the command")?;
                let run_user = optional(1);
                let text = match &run_user {
                    Some(u) => format!("RUN {cmd} (as {u})"),
                    None => format!("RUN {cmd}"),
                };
                (
                    text,
                    StepKind::Run {
                        command: RunCommand::Exec(run_argv(&cmd)),
                        user: run_user,
                    },
                )
            }
            "WORKDIR" => {
                let dir = arg(0, "the directory")?;
                (format!("WORKDIR {dir}"), StepKind::Workdir(dir))
            }
            "USER" => {
                let name = arg(0, "the user")?;
                let sudo = optional(1).is_some_and(|a| a.eq_ignore_ascii_case("true"));
                user = Some(name.clone());
                (
                    format!("USER {name}{}", if sudo { " (sudo)" } else { "" }),
                    StepKind::User { name, sudo },
                )
            }
            "COPY" => {
                let src = arg(0, "the source")?;
                let dest = arg(1, "the destination")?;
                let chown = optional(2).or_else(|| user.clone());
                let chmod = match optional(3) {
                    Some(m) => Some(
                        u32::from_str_radix(&m, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| bad(format!("invalid mode '{m}': expected octal")))?,
                    ),
                    None => None,
                };
                let hash = s
                    .files_hash
                    .clone()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad("missing filesHash".to_owned()))?;
                check_hash(&hash).map_err(|e| bad(e.to_string()))?;
                let dir = files_root.join(&hash);
                if !dir.is_dir() {
                    return Err(bad(format!(
                        "the files of `{src}` (hash {hash}) were not uploaded"
                    )));
                }
                files.insert(hash.clone(), dir);
                (
                    format!("COPY {src} {dest}"),
                    StepKind::Copy(Copy {
                        sources: vec![src],
                        dest,
                        chown,
                        chmod,
                        extract: false,
                        files: Some(hash),
                    }),
                )
            }
            other => {
                return Err(TemplateApiError::UnknownStep {
                    step: n,
                    kind: other.to_owned(),
                });
            }
        };
        steps.push(Step {
            line: None,
            text,
            kind: step_kind,
            force: s.force.unwrap_or(false),
        });
    }
    let nonempty = |s: &Option<String>| s.clone().filter(|c| !c.trim().is_empty());
    let recipe = Recipe {
        from,
        from_line: None,
        steps,
        start_cmd: nonempty(&body.start_cmd),
        ready_cmd: nonempty(&body.ready_cmd),
        notes: Vec::new(),
    };
    Ok((recipe, files))
}

/// The default user of the template `from` names, if it is a template.
async fn template_user(
    st: &AppState,
    team: &str,
    from: &str,
) -> Result<Option<String>, TemplateApiError> {
    Ok(st
        .db
        .find_template(from.to_owned())
        .await?
        .filter(|t| !t.name.contains('@') && crate::catalog::visible(t, team))
        .and_then(|t| TemplateMetadata::from_json(&t.metadata).ok())
        .and_then(|m| m.user))
}

/// Each log line with the E2B step it belongs to: `base` before the first
/// step, the step's number (1-based, as the SDK counts) during it,
/// `finalize` from the start/ready check on.
fn with_steps(lines: Vec<BuildLogLine>) -> Vec<(BuildLogLine, String)> {
    let mut step = "base".to_owned();
    lines
        .into_iter()
        .map(|l| {
            match &l.kind {
                BuildLogKind::Step { index, .. } => step = index.to_string(),
                BuildLogKind::Note if l.message.starts_with(FINALIZE_NOTE) => {
                    step = "finalize".to_owned()
                }
                _ => {}
            }
            (l, step.clone())
        })
        .collect()
}

/// A log line of E2B step `step` as E2B's log entry.
fn entry(line: &BuildLogLine, step: &str) -> BuildLogEntry {
    BuildLogEntry {
        timestamp: time::rfc3339_ms(line.timestamp),
        level: line.level,
        message: line.message.clone(),
        step: step.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutch_protocol::api::{LogStream, TemplateStep};
    use serde_json::json;

    #[test]
    fn stale_file_sets_are_pruned() {
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("a".repeat(64));
        let stale = t.path().join("b".repeat(64));
        std::fs::create_dir_all(fresh.join("x")).unwrap();
        std::fs::create_dir_all(stale.join("y")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        prune_file_sets(t.path(), Duration::from_secs(60));
        assert!(fresh.exists());
        assert!(!stale.exists());
    }

    fn step(kind: &str, args: &[&str]) -> TemplateStep {
        TemplateStep {
            kind: kind.to_owned(),
            args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
            files_hash: None,
            force: Some(false),
        }
    }

    #[test]
    fn names_and_tags() {
        let req = |name: &str, tags: Option<Vec<&str>>| TemplateBuildRequest {
            name: Some(name.to_owned()),
            alias: None,
            tags: tags.map(|t| t.into_iter().map(str::to_owned).collect()),
            cpu_count: None,
            memory_mb: None,
        };
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            name_and_tags(&req("app", None)).unwrap(),
            ("app".into(), tags(&["default"]))
        );
        assert_eq!(
            name_and_tags(&req("app:default", Some(vec!["default"]))).unwrap(),
            ("app".into(), tags(&["default"]))
        );
        assert_eq!(
            name_and_tags(&req("app:v1", None)).unwrap(),
            ("app".into(), tags(&["v1"]))
        );
        assert_eq!(
            name_and_tags(&req("app", Some(vec!["v1.2", "stable"]))).unwrap(),
            ("app".into(), tags(&["default", "v1.2", "stable"]))
        );
        let e = name_and_tags(&req("app:bad/tag", None)).unwrap_err();
        assert!(e.to_string().contains("invalid tag 'bad/tag'"), "{e}");
        assert!(name_and_tags(&req("App", None)).is_err());
        let old = TemplateBuildRequest {
            name: None,
            alias: Some("legacy".into()),
            tags: None,
            cpu_count: Some(2),
            memory_mb: Some(1024),
        };
        assert_eq!(name_and_tags(&old).unwrap().0, "legacy");
    }

    #[test]
    fn bases() {
        let b = |t: Option<&str>, i: Option<&str>| TemplateBuildStart {
            from_template: t.map(str::to_owned),
            from_image: i.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(base_of(&b(Some("debian"), None)).unwrap(), "debian");
        assert_eq!(base_of(&b(None, Some("e2bdev/base"))).unwrap(), "base");
        assert_eq!(base_of(&b(None, None)).unwrap(), "base");
        assert_eq!(
            base_of(&b(None, Some("python:3.12"))).unwrap(),
            "python:3.12"
        );
        let mut creds = b(None, Some("r.example/x:1"));
        creds.from_image_registry = Some(json!({"type": "registry"}));
        assert!(base_of(&creds).is_err());
    }

    #[test]
    fn steps_map_one_to_one() {
        let t = tempfile::tempdir().unwrap();
        let hash = "a".repeat(64);
        std::fs::create_dir(t.path().join(&hash)).unwrap();
        let mut copy = step("COPY", &["src/*.py", "/app/", "", "0755"]);
        copy.files_hash = Some(hash.clone());
        let mut owned = step("COPY", &["x", "y", "root:root", ""]);
        owned.files_hash = Some(hash.clone());
        let mut forced = step("RUN", &["make", "root"]);
        forced.force = Some(true);
        let body = TemplateBuildStart {
            steps: Some(vec![
                step("ENV", &["A", "1", "B", "$A:2"]),
                copy,
                step("USER", &["builder", "true"]),
                step("copy", &[]),
                forced,
                step("WORKDIR", &["/srv"]),
            ]),
            start_cmd: Some("serve".into()),
            ready_cmd: Some("  ".into()),
            ..Default::default()
        };
        // A COPY without its hash is refused, naming the step.
        let e = to_recipe(&body, "debian".into(), None, t.path()).unwrap_err();
        assert!(e.to_string().starts_with("step 4 (COPY)"), "{e}");

        let mut body = body;
        let steps = body.steps.as_mut().unwrap();
        steps[3] = owned;
        let (r, files) = to_recipe(&body, "debian".into(), Some("user".into()), t.path()).unwrap();
        assert_eq!(r.steps.len(), 6);
        assert_eq!(r.from, "debian");
        assert_eq!(r.start_cmd.as_deref(), Some("serve"));
        assert_eq!(r.ready_cmd, None);
        assert_eq!(files[&hash], t.path().join(&hash));
        assert_eq!(
            r.steps[0].kind,
            StepKind::Env(vec![("A".into(), "1".into()), ("B".into(), "$A:2".into())])
        );
        let StepKind::Copy(c) = &r.steps[1].kind else {
            panic!("{:?}", r.steps[1]);
        };
        // No owner given: the current user (here the base's), as with E2B.
        assert_eq!(c.chown.as_deref(), Some("user"));
        assert_eq!(c.chmod, Some(0o755));
        assert_eq!(c.sources, vec!["src/*.py".to_owned()]);
        assert_eq!(c.files.as_deref(), Some(hash.as_str()));
        assert_eq!(
            r.steps[2].kind,
            StepKind::User {
                name: "builder".into(),
                sudo: true
            }
        );
        let StepKind::Copy(c) = &r.steps[3].kind else {
            panic!("{:?}", r.steps[3]);
        };
        assert_eq!((c.chown.as_deref(), c.chmod), (Some("root:root"), None));
        let StepKind::Run { command, user } = &r.steps[4].kind else {
            panic!("{:?}", r.steps[4]);
        };
        assert_eq!(user.as_deref(), Some("root"));
        assert_eq!(command, &RunCommand::Exec(run_argv("make")));
        assert!(r.steps[4].force && !r.steps[3].force);
        assert_eq!(r.steps[5].kind, StepKind::Workdir("/srv".into()));

        let bad = TemplateBuildStart {
            steps: Some(vec![step("ENV", &["A", "1"]), step("HEALTHCHECK", &["x"])]),
            ..Default::default()
        };
        let e = to_recipe(&bad, "base".into(), None, t.path()).unwrap_err();
        assert!(
            e.to_string().contains("unknown step type 'HEALTHCHECK'"),
            "{e}"
        );
        let odd = TemplateBuildStart {
            steps: Some(vec![step("ENV", &["A"])]),
            ..Default::default()
        };
        assert!(to_recipe(&odd, "base".into(), None, t.path()).is_err());
        let mode = TemplateBuildStart {
            steps: Some(vec![{
                let mut s = step("COPY", &["a", "b", "", "9"]);
                s.files_hash = Some(hash.clone());
                s
            }]),
            ..Default::default()
        };
        assert!(to_recipe(&mode, "base".into(), None, t.path()).is_err());
    }

    #[test]
    fn log_lines_get_their_steps() {
        let line = |message: &str, kind: BuildLogKind| BuildLogLine {
            timestamp: 1_700_000_000_123,
            level: LogLevel::Info,
            message: message.to_owned(),
            kind,
        };
        let lines = vec![
            line("FROM debian", BuildLogKind::Note),
            line("[1/2] RUN x", BuildLogKind::Step { index: 1, total: 2 }),
            line(
                "out",
                BuildLogKind::Output {
                    stream: LogStream::Stdout,
                },
            ),
            line("[2/2] RUN y", BuildLogKind::Step { index: 2, total: 2 }),
            line("cached", BuildLogKind::Cached),
            line(
                "checking the start and ready commands in a sandbox of the template",
                BuildLogKind::Note,
            ),
        ];
        let steps: Vec<String> = with_steps(lines).into_iter().map(|(_, s)| s).collect();
        assert_eq!(steps, ["base", "1", "1", "2", "2", "finalize"]);
        assert_eq!(
            time::rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn upload_grants() {
        let t = tempfile::tempdir().unwrap();
        let api = TemplateApi::open(t.path());
        let tok = api.grant("h");
        assert_eq!(api.grant("h"), tok, "one token per hash while valid");
        assert!(api.token_valid("h", &tok));
        assert!(!api.token_valid("h", "nope"));
        assert!(!api.token_valid("other", &tok));
        assert!(check_hash(&"0f".repeat(32)).is_ok());
        assert!(check_hash("../etc").is_err());
    }
}
