//! Runs a [`Recipe`]: each step in order, against the build state as it
//! stands (environment, build arguments, user, working directory, shell),
//! reusing cached layers where nothing the step depends on has changed.
//!
//! * `RUN` boots a build sandbox — a real sandbox of the template as built
//!   so far, with the template's environment, user and working directory in
//!   its boot config exactly as runtime sandboxes get them — runs the
//!   command through the agent with the visible build arguments as
//!   process-level variables (`ENV` shadows `ARG`, as in `docker build`),
//!   streams its output, and turns the sandbox's writable layer into a new
//!   layer ([`crate::layer::export_upper`]).
//! * `COPY`/`ADD`, `USER` and `WORKDIR` write their layers directly
//!   ([`crate::steps`]).
//! * `ENV`, `ARG` and `SHELL` change the state only.
//!
//! Nothing becomes visible until the caller registers the result: a failed
//! build leaves the layers of the steps that succeeded in the store and in
//! the cache (so fixing the failing step and building again resumes there),
//! and no template.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hutch_env::TemplateEnv;
use hutch_image::{ImageConfig, LayerStore};
use hutch_protocol::boot::{BOOT_SCHEMA_VERSION, BootConfig};
use hutch_runtime::{Command, OutputStream, Runtime, SandboxSpec};
use serde_json::json;

use crate::BuildError;
use crate::cache::{self, Cache, Entry};
use crate::context;
use crate::layer::{Owner, export_upper, store_layer};
use crate::recipe::{Recipe, RunCommand, Step, StepKind};
use crate::rootfs::LayerStack;
use crate::steps;

/// The shell of shell-form `RUN` until a `SHELL` step changes it.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Lines of a failing step's output kept for the error.
const TAIL_LINES: usize = 30;

/// What a build starts from: a template or an image, resolved.
#[derive(Debug, Clone)]
pub struct Base {
    /// Diff ids, base layer first.
    pub layers: Vec<String>,
    /// Layers 1–2 of the environment as the base has them.
    pub env: Vec<(String, String)>,
    /// Default user.
    pub user: Option<String>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Whether the base allows privilege escalation (`sudo`).
    pub allow_privilege_escalation: bool,
    /// The base's image config, carried into the result.
    pub image: ImageConfig,
}

/// How to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Name of the template being built (shown to build steps as
    /// `HUTCH_TEMPLATE_ID`-style identity, and in logs).
    pub template_name: String,
    /// `--build-arg` values.
    pub build_args: Vec<(String, String)>,
    /// Ignore the cache (results are still recorded).
    pub no_cache: bool,
    /// The build context directory, if any.
    pub context: Option<PathBuf>,
    /// Uploaded file sets by hash (template API `COPY` steps).
    pub files: HashMap<String, PathBuf>,
    /// How long the ready command may take to succeed.
    pub ready_timeout: Duration,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// Diff ids, base first.
    pub layers: Vec<String>,
    /// Layers 1–2 of the environment, resolved.
    pub env: Vec<(String, String)>,
    /// Default user.
    pub user: Option<String>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Whether processes may gain privileges (`sudo`).
    pub allow_privilege_escalation: bool,
    /// The base's image config.
    pub image: ImageConfig,
    /// Start command.
    pub start_cmd: Option<String>,
    /// Ready command.
    pub ready_cmd: Option<String>,
    /// Steps whose result came from the cache.
    pub cached_steps: usize,
    /// Steps that produce layers (cache candidates).
    pub layer_steps: usize,
}

/// What a build reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Step `index` (1-based) of `total` starts.
    Step {
        /// 1-based index.
        index: usize,
        /// Number of steps.
        total: usize,
        /// The step as written.
        text: String,
    },
    /// The current step's result came from the cache.
    Cached,
    /// A line of the current step's output.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The line, without its newline.
        line: String,
    },
    /// Something worth telling (ignored instructions, unused arguments,
    /// the start/ready check).
    Note(String),
}

/// The reporting callback.
pub type Reporter = Arc<dyn Fn(Event) + Send + Sync>;

/// Runs builds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    runtime: Runtime,
    store: LayerStore,
    cache: Cache,
    work_dir: PathBuf,
}

/// The build state between steps.
struct State {
    layers: Vec<String>,
    env: TemplateEnv,
    args: Vec<(String, String)>,
    user: Option<String>,
    workdir: Option<String>,
    shell: Vec<String>,
    key: String,
    force: bool,
    allow_priv: bool,
}

impl State {
    /// Build arguments a `RUN` sees as variables: declared, valued, and not
    /// shadowed by an `ENV`.
    fn visible_args(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(k, _)| self.env.get(k).is_none())
            .cloned()
            .collect()
    }

    fn expand(&self, raw: &str) -> String {
        self.env.expand_with(raw, &self.args)
    }

    fn summary(&self) -> serde_json::Value {
        json!({
            "env": self.env.clone().into_layer(),
            "args": self.visible_args(),
            "user": self.user,
            "workdir": self.workdir,
            "shell": self.shell,
        })
    }
}

impl Engine {
    /// An engine storing layers in `store`, its cache in `cache_dir` and
    /// temporary files in `work_dir`.
    pub fn new(
        runtime: Runtime,
        store: LayerStore,
        cache_dir: &Path,
        work_dir: &Path,
    ) -> Result<Engine, BuildError> {
        // Leftovers of builds interrupted by a crash.
        let _ = std::fs::remove_dir_all(work_dir);
        std::fs::create_dir_all(work_dir)
            .map_err(|e| BuildError::Io(format!("cannot create {}: {e}", work_dir.display())))?;
        Ok(Engine {
            runtime,
            store,
            cache: Cache::open(cache_dir)?,
            work_dir: work_dir.to_owned(),
        })
    }

    /// The layer cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Runs `recipe` on `base`.
    pub async fn build(
        &self,
        base: Base,
        recipe: &Recipe,
        opts: &Options,
        report: Reporter,
    ) -> Result<Built, BuildError> {
        for note in &recipe.notes {
            report(Event::Note(note.clone()));
        }
        let mut state = State {
            key: cache::base_key(&base.layers),
            layers: base.layers.clone(),
            env: TemplateEnv::from_layer(&base.env),
            args: Vec::new(),
            user: base.user.clone(),
            workdir: base.workdir.clone(),
            shell: DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect(),
            force: opts.no_cache,
            allow_priv: base.allow_privilege_escalation,
        };
        let mut used_args = std::collections::HashSet::new();
        let total = recipe.steps.len();
        let mut cached_steps = 0;
        let mut layer_steps = 0;
        for (i, step) in recipe.steps.iter().enumerate() {
            report(Event::Step {
                index: i + 1,
                total,
                text: step.text.clone(),
            });
            if step.force {
                state.force = true;
            }
            let cached = self
                .step(&mut state, step, opts, &mut used_args, &report)
                .await
                .map_err(|e| e.at(step))?;
            if let Some(hit) = cached {
                layer_steps += 1;
                if hit {
                    cached_steps += 1;
                    report(Event::Cached);
                }
            }
        }
        for (name, _) in &opts.build_args {
            if !used_args.contains(name) {
                report(Event::Note(format!(
                    "build argument {name} was given but no ARG declares it"
                )));
            }
        }

        let built = Built {
            layers: state.layers,
            env: state.env.into_layer(),
            user: state.user,
            workdir: state.workdir,
            allow_privilege_escalation: state.allow_priv,
            image: base.image,
            start_cmd: recipe.start_cmd.clone(),
            ready_cmd: recipe.ready_cmd.clone(),
            cached_steps,
            layer_steps,
        };
        if built.start_cmd.is_some() || built.ready_cmd.is_some() {
            report(Event::Note(
                "checking the start and ready commands in a sandbox of the template".to_owned(),
            ));
            self.check_ready(&built, opts).await?;
        }
        Ok(built)
    }

    /// Runs one step. `Some(cache hit?)` for steps that produce layers,
    /// `None` for the others.
    async fn step(
        &self,
        state: &mut State,
        step: &Step,
        opts: &Options,
        used_args: &mut std::collections::HashSet<String>,
        report: &Reporter,
    ) -> Result<Option<bool>, BuildError> {
        match &step.kind {
            StepKind::Env(pairs) => {
                for (name, raw) in pairs {
                    if hutch_env::is_reserved(name) {
                        return Err(BuildError::Step(format!(
                            "`{name}` is set by Hutch for every sandbox and cannot be set by a template"
                        )));
                    }
                    state
                        .env
                        .apply_with(name, raw, &state.args)
                        .map_err(|e| BuildError::Step(e.to_string()))?;
                }
                Ok(None)
            }
            StepKind::Arg { name, default } => {
                let given = opts.build_args.iter().find(|(k, _)| k == name);
                let value = match given {
                    Some((_, v)) => {
                        used_args.insert(name.clone());
                        Some(v.clone())
                    }
                    None => default.as_ref().map(|d| state.expand(d)),
                };
                state.args.retain(|(k, _)| k != name);
                if let Some(v) = value {
                    state.args.push((name.clone(), v));
                }
                Ok(None)
            }
            StepKind::Shell(shell) => {
                state.shell = shell.clone();
                Ok(None)
            }
            StepKind::Workdir(raw) => {
                let dir = clean_abs(&steps::absolute(
                    state.workdir.as_deref(),
                    &state.expand(raw),
                ));
                let stack = self.stack(&state.layers);
                let owner = current_owner(&stack, state.user.as_deref());
                let what = json!({"workdir": dir, "owner": [owner.uid, owner.gid]});
                let path = dir.clone();
                let hit = self
                    .write_step(state, what, move |stack, out| {
                        steps::workdir_layer(stack, &path, owner, out)
                    })
                    .await?;
                state.workdir = Some(dir);
                Ok(Some(hit))
            }
            StepKind::User { name, sudo } => {
                let user = state.expand(name);
                if user.is_empty() {
                    return Err(BuildError::Step("USER names no user".to_owned()));
                }
                let what = json!({"user": user, "sudo": sudo});
                let spec = user.clone();
                let sudo = *sudo;
                let hit = self
                    .write_step(state, what, move |stack, out| {
                        steps::user_layer(stack, &spec, sudo, out)
                    })
                    .await?;
                state.user = Some(user);
                if sudo {
                    state.allow_priv = true;
                }
                Ok(Some(hit))
            }
            StepKind::Copy(copy) => {
                let root = match &copy.files {
                    None => opts.context.clone().ok_or_else(|| {
                        BuildError::Step(
                            "there is no build context to copy from (give a context directory)"
                                .to_owned(),
                        )
                    })?,
                    Some(hash) => opts.files.get(hash).cloned().ok_or_else(|| {
                        BuildError::Step(format!("the files with hash {hash} were not uploaded"))
                    })?,
                };
                let sources: Vec<String> = copy.sources.iter().map(|s| state.expand(s)).collect();
                let dest_raw = state.expand(&copy.dest);
                let mut dest = steps::absolute(state.workdir.as_deref(), &dest_raw);
                if dest_raw.ends_with('/') && !dest.ends_with('/') {
                    dest.push('/');
                }
                let stack = self.stack(&state.layers);
                let owner = match &copy.chown {
                    Some(spec) => steps::owner(&stack, &state.expand(spec))?,
                    None => Owner::ROOT,
                };
                let chmod = copy.chmod;
                let extract = copy.extract;
                let root2 = root.clone();
                let (selected, digest) = tokio::task::spawn_blocking(move || {
                    let selected = sources
                        .iter()
                        .map(|s| context::select(&root2, s))
                        .collect::<Result<Vec<_>, _>>()?;
                    let flat: Vec<_> = selected.iter().flatten().cloned().collect();
                    let digest = context::digest(&root2, &flat)?;
                    Ok::<_, BuildError>((selected, digest))
                })
                .await
                .map_err(|e| BuildError::Io(format!("copy task failed: {e}")))??;
                let what = json!({
                    "copy": digest,
                    "sources": selected.iter().flatten().map(|s| s.rel.to_string_lossy().into_owned()).collect::<Vec<_>>(),
                    "dest": dest,
                    "owner": [owner.uid, owner.gid],
                    "chmod": chmod,
                    "extract": extract,
                });
                let hit = self
                    .write_step(state, what, move |stack, out| {
                        let plan = steps::CopyPlan {
                            root: &root,
                            selected,
                            dest,
                            owner,
                            chmod,
                            extract,
                        };
                        steps::copy_layer(stack, &plan, out).map(|()| true)
                    })
                    .await?;
                Ok(Some(hit))
            }
            StepKind::Run { command, user } => {
                let mut cmd = match command {
                    RunCommand::Shell(script) => Command::shell(&state.shell, script),
                    RunCommand::Exec(argv) => {
                        let (first, rest) = argv.split_first().ok_or_else(|| {
                            BuildError::Step("RUN with an empty command".to_owned())
                        })?;
                        Command {
                            cmd: first.clone(),
                            args: rest.to_vec(),
                            ..Default::default()
                        }
                    }
                };
                cmd.envs = state.visible_args();
                cmd.user = user.as_ref().map(|u| state.expand(u));
                let what = json!({
                    "run": [cmd.cmd, cmd.args],
                    "runUser": cmd.user,
                    "state": state.summary(),
                });
                let key = cache::step_key(&state.key, &what);
                if let Some(layer) = self.cached(state, &key) {
                    self.advance(state, key, layer);
                    return Ok(Some(true));
                }
                let layer = self.run(state, &cmd, opts, report).await?;
                self.cache.put(
                    &key,
                    &Entry {
                        diff_id: layer.clone(),
                    },
                )?;
                self.advance(state, key, layer);
                Ok(Some(false))
            }
        }
    }

    fn stack(&self, layers: &[String]) -> LayerStack {
        LayerStack::new(layers.iter().map(|l| self.store.layer_dir(l)).collect())
    }

    /// The cached result for `key`, unless forced or its layer is gone.
    fn cached(&self, state: &State, key: &str) -> Option<Option<String>> {
        if state.force {
            return None;
        }
        let entry = self.cache.get(key)?;
        match entry.diff_id {
            Some(d) if self.store.has_layer(&d) => Some(Some(d)),
            Some(_) => None,
            None => Some(None),
        }
    }

    fn advance(&self, state: &mut State, key: String, layer: Option<String>) {
        state.key = key;
        if let Some(l) = layer {
            state.layers.push(l);
        }
    }

    /// A step whose layer Hutch writes itself: cached, or `write` run on
    /// the current stack into a temporary tar that is then stored.
    async fn write_step<F>(
        &self,
        state: &mut State,
        what: serde_json::Value,
        write: F,
    ) -> Result<bool, BuildError>
    where
        F: FnOnce(&LayerStack, &mut dyn std::io::Write) -> Result<bool, BuildError>
            + Send
            + 'static,
    {
        let key = cache::step_key(&state.key, &what);
        if let Some(layer) = self.cached(state, &key) {
            self.advance(state, key, layer);
            return Ok(true);
        }
        let stack = self.stack(&state.layers);
        let store = self.store.clone();
        let work_dir = self.work_dir.clone();
        let layer = tokio::task::spawn_blocking(move || {
            store_layer(&store, &work_dir, |out| write(&stack, out))
        })
        .await
        .map_err(|e| BuildError::Io(format!("layer task failed: {e}")))??;
        self.cache.put(
            &key,
            &Entry {
                diff_id: layer.clone(),
            },
        )?;
        self.advance(state, key, layer);
        Ok(false)
    }

    /// Runs a `RUN` command in a build sandbox; returns the layer of its
    /// changes, if any.
    async fn run(
        &self,
        state: &State,
        cmd: &Command,
        opts: &Options,
        report: &Reporter,
    ) -> Result<Option<String>, BuildError> {
        let id = build_sandbox_id();
        let spec = self.build_sandbox_spec(&id, state, opts);
        let sandbox = self
            .runtime
            .create(spec)
            .await
            .map_err(BuildError::Runtime)?;
        let result = async {
            let mut lines = LineSplitter::new(report.clone());
            let exit = hutch_runtime::run_command(&sandbox.link(), cmd, &mut |stream, bytes| {
                lines.push(stream, bytes)
            })
            .await
            .map_err(|e| BuildError::Step(e.to_string()))?;
            let tail = lines.finish();
            if !exit.success() {
                return Err(BuildError::StepFailed {
                    line: None,
                    step: String::new(),
                    code: exit.code,
                    status: exit.status,
                    output: tail,
                });
            }
            // Nothing the step left running may change the tree while it
            // is read (swapping a directory for a symlink to a host path
            // between a check and a read, say): stop every process first.
            self.runtime.halt(&id).await.map_err(BuildError::Runtime)?;
            let upper = self.runtime.upper_dir(&id);
            let stack = self.stack(&state.layers);
            let store = self.store.clone();
            let work_dir = self.work_dir.clone();
            tokio::task::spawn_blocking(move || {
                store_layer(&store, &work_dir, |out| export_upper(&upper, &stack, out))
            })
            .await
            .map_err(|e| BuildError::Io(format!("layer task failed: {e}")))?
        }
        .await;
        if let Err(e) = self.runtime.destroy(&id).await {
            tracing::warn!(sandbox = %id, "cannot remove build sandbox: {e}");
        }
        result
    }

    fn build_sandbox_spec(&self, id: &str, state: &State, opts: &Options) -> SandboxSpec {
        let boot = BootConfig {
            schema_version: BOOT_SCHEMA_VERSION,
            sandbox_id: id.to_owned(),
            template_id: format!("build-{}", opts.template_name),
            template_name: opts.template_name.clone(),
            template_env: state.env.clone().into_layer(),
            template_user: state.user.clone(),
            template_workdir: state.workdir.clone(),
        };
        let layers = state
            .layers
            .iter()
            .map(|l| self.store.layer_dir(l))
            .collect();
        let mut spec = SandboxSpec::new(layers, boot);
        // Build steps are the template author's own: `sudo`, setuid
        // installers and the like work, as in `docker build`.
        spec.no_new_privileges = false;
        spec.limits = build_limits();
        spec
    }

    /// Boots a sandbox of the result and runs its start and ready commands.
    async fn check_ready(&self, built: &Built, opts: &Options) -> Result<(), BuildError> {
        let id = build_sandbox_id();
        let state = State {
            layers: built.layers.clone(),
            env: TemplateEnv::from_layer(&built.env),
            args: Vec::new(),
            user: built.user.clone(),
            workdir: built.workdir.clone(),
            shell: Vec::new(),
            key: String::new(),
            force: false,
            allow_priv: built.allow_privilege_escalation,
        };
        let mut spec = self.build_sandbox_spec(&id, &state, opts);
        spec.no_new_privileges = !built.allow_privilege_escalation;
        let sandbox = self
            .runtime
            .create(spec)
            .await
            .map_err(BuildError::Runtime)?;
        let result = hutch_runtime::start_and_wait_ready(
            &sandbox.link(),
            built.start_cmd.as_deref(),
            built.ready_cmd.as_deref(),
            opts.ready_timeout,
            None,
        )
        .await
        .map_err(|e| BuildError::NotReady(e.to_string()));
        if let Err(e) = self.runtime.destroy(&id).await {
            tracing::warn!(sandbox = %id, "cannot remove build sandbox: {e}");
        }
        result
    }
}

/// Limits of build sandboxes: more generous than a sandbox's defaults,
/// since package installs and compilers need room — every host CPU, 4 GiB of
/// memory, 4096 tasks, 20 GiB of writable layer per step (a sparse file: it
/// takes host disk only as it is written).
pub fn build_limits() -> hutch_runtime::spec::Limits {
    hutch_runtime::spec::Limits {
        cpus: std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
        memory_bytes: 4 << 30,
        pids: 4096,
        disk_mb: 20 << 10,
    }
}

/// The owner new directories of a `WORKDIR` get: the current user, when it
/// resolves; else root.
fn current_owner(stack: &LayerStack, user: Option<&str>) -> Owner {
    let Some(user) = user else {
        return Owner::ROOT;
    };
    steps::accounts(stack)
        .resolve_user(user)
        .map(|u| Owner {
            uid: u.uid,
            gid: u.gid,
        })
        .unwrap_or(Owner::ROOT)
}

/// An absolute path with `.` and `..` resolved and no trailing slash.
fn clean_abs(path: &str) -> String {
    format!("/{}", context::clean(path))
}

fn build_sandbox_id() -> String {
    format!("build-{:016x}", rand::random::<u64>())
}

/// Turns output chunks into lines for the reporter and keeps the last few.
struct LineSplitter {
    report: Reporter,
    partial: [Vec<u8>; 2],
    tail: std::collections::VecDeque<String>,
}

impl LineSplitter {
    fn new(report: Reporter) -> LineSplitter {
        LineSplitter {
            report,
            partial: [Vec::new(), Vec::new()],
            tail: Default::default(),
        }
    }

    fn push(&mut self, stream: OutputStream, bytes: &[u8]) {
        let i = usize::from(stream == OutputStream::Stderr);
        self.partial[i].extend_from_slice(bytes);
        while let Some(pos) = self.partial[i].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[i].drain(..=pos).collect();
            self.emit(stream, &line[..line.len() - 1]);
        }
        // Very long lines are emitted in pieces.
        if self.partial[i].len() > 16 * 1024 {
            let line = std::mem::take(&mut self.partial[i]);
            self.emit(stream, &line);
        }
    }

    fn emit(&mut self, stream: OutputStream, line: &[u8]) {
        let line = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_owned();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        (self.report)(Event::Output { stream, line });
    }

    /// Emits what is left and returns the last lines.
    fn finish(mut self) -> String {
        for (i, stream) in [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .enumerate()
        {
            let rest = std::mem::take(&mut self.partial[i]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
        Vec::from(self.tail).join("\n")
    }
}
