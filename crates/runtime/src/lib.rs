//! Hutch's sandbox runtime: turns a template's layers into a running,
//! isolated sandbox and tears it down.
//!
//! A sandbox is an OCI container run by `runc`:
//!
//! * its root is an overlayfs mount whose lower layers are the template's
//!   content-addressed layer directories (never written to) and whose upper
//!   directory is private to the sandbox, on a file system of its own whose
//!   size is the sandbox's disk limit (see `disk.rs`);
//! * it runs under the seccomp filter of [`seccomp`] and the CPU, memory
//!   and pids limits of [`spec::Limits`];
//! * its init process is the agent, `hutch-envd`, bind-mounted read-only
//!   from the host together with its [`BootConfig`] (see
//!   [`hutch_protocol::boot`] for the paths);
//! * the host talks to the agent over a unix socket that the host binds in
//!   the sandbox's bundle directory, which the sandbox cannot see, and hands
//!   to the agent as an inherited descriptor ([`Runtime::agent_socket`],
//!   [`AgentClient`]); no path the host follows is one a sandbox can write
//!   (see `confined.rs` for the few host-side writes into a sandbox's tree).
//!
//! The container's configuration is built by [`spec::build`]; its module
//! docs explain the isolation choices.
//!
//! # Host layout
//!
//! ```text
//! <state_dir>/<id>/          0700
//!     disk.img               sparse ext4 image, `limits.disk_mb` long
//!     disk/                  its mountpoint (through an autoclear loop device)
//!         upper/  work/      overlay upper and work directories
//!         console.log        the container's stdout and stderr: on the
//!                            sandbox's own disk, so inside its quota
//!     rootfs/                the overlay mountpoint (the container's root)
//!     hutch/                 0700; the runc bundle: config.json, boot.json,
//!                            00-hutch-path.sh, init.pid, and envd.sock (the
//!                            agent's socket, bound by the host)
//!     netns                  its network namespace (a bind mount), unless
//!                            loopback-only; see [`network`]
//!     network.json           its address, interface, policy
//! <state_dir>.runc-view/     a shared mount: `<id>/root` and `<id>/netns`
//!                            show a sandbox to the tools' mount namespace
//!                            while `runc run` starts it (see `toolns`)
//! <runc_root>/<id>/          runc's own state for the container
//! ```
//!
//! `<state_dir>` itself is a private bind mount of itself while sandboxes
//! run ([`Runtime::release_host_mounts`] removes it when none is left), so
//! that the mount namespace host tools run in (runc, `mkfs.ext4`, `e2fsck`)
//! holds none of the sandboxes' mounts.
//!
//! Nothing under `<state_dir>/<id>` is bind-mounted into the sandbox
//! writable: only the agent binary, `boot.json` and the login-PATH script,
//! read-only. The sandbox's `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf` are written into its root file system (so onto its
//! disk) before it first starts.
//!
//! The container's cgroup is `/<cgroup_parent>/<id>` in every hierarchy.
//!
//! The server is not made a child subreaper: once `runc run --detach`
//! returns, the container's init is re-parented to the host's init, so
//! sandboxes survive a server restart and can be re-adopted
//! ([`Runtime::list_host_sandboxes`], [`Runtime::adopt`]).
//!
//! # Stopping a sandbox and booting it again on its files
//!
//! [`Runtime::stop_keep_disk`] stops a sandbox but keeps its files (a
//! filesystem-only pause): the container is killed and deleted (its
//! processes and cgroups go, its memory is freed), its network is released
//! (address, link, rule chain), the overlay and the disk are unmounted
//! (which frees the loop device), and everything in `state_dir/<id>` is
//! removed but `disk.img`, which holds the writable layer. What is left:
//!
//! ```text
//! <state_dir>/<id>/          0700
//!     disk.img               the sandbox's disk, unmounted
//! ```
//!
//! [`Runtime::create`] with [`SandboxSpec::resume_from_disk`] boots the
//! sandbox again on that disk: the same id, and the spec the caller gives
//! (it must name the same layers; the boot config, limits and network
//! policy are normally the same too), a new network address, a new agent.
//! Every file the sandbox had written is there; no process survives. A
//! failed boot stops it again with the disk kept. Such a sandbox is still
//! listed by [`Runtime::list_host_sandboxes`] (its directory exists);
//! [`Runtime::destroy`] removes it, disk included. Both steps are
//! idempotent and can be repeated after a crash halfway through:
//! `stop_keep_disk` finishes an interrupted stop (or stops a sandbox whose
//! resume was interrupted).

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hutch_protocol::boot::{AGENT_SOCKET_NAME, BootConfig};

mod agent;
mod confined;
mod disk;
mod error;
mod keyed;
mod mounts;
pub mod network;
mod process;
mod runc;
pub mod seccomp;
pub mod spec;
mod toolns;

pub use agent::{AgentClient, DEFAULT_REQUEST_TIMEOUT};
pub use error::RuntimeError;
pub use network::{Cidr, CidrError, EgressPolicy, NetworkConfig, NetworkPolicy};
pub use process::{
    Command, CommandExit, DEFAULT_READY_TIMEOUT, OutputStream, run_command, spawn_command,
    start_and_wait_ready,
};

use error::IoContext;
pub use keyed::KeyedLocks;
use runc::Runc;
use toolns::{ToolNamespace, ToolView};

/// How long [`Runtime::create`] waits for the agent to answer `GET /health`.
pub const AGENT_BOOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default cgroup parent: sandboxes live in `/hutch/<id>`.
pub const DEFAULT_CGROUP_PARENT: &str = "hutch";

/// Default runc binary, looked up in `PATH`.
pub const DEFAULT_RUNC: &str = "runc";

/// Longest sandbox id: ids are also hostnames (at most 64 bytes).
pub const MAX_ID_LEN: usize = 63;

/// How long stopping and resuming wait for a disk's loop device to be
/// released after its unmount.
const LOOP_RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-attempt timeout of the health checks while booting and adopting.
const HEALTH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest pause between health checks while booting (they start at 1 ms).
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How much of `console.log` error messages quote.
const LOG_TAIL_BYTES: u64 = 4096;
const LOG_TAIL_LINES: usize = 40;

/// Where the runtime keeps its state and which binaries it uses.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-sandbox directories (`DATA_DIR/sandboxes`).
    pub state_dir: PathBuf,
    /// runc's `--root` (`DATA_DIR/runc`), private to Hutch.
    pub runc_root: PathBuf,
    /// The runc binary; a bare name is looked up in `PATH`.
    pub runc: PathBuf,
    /// Host path of the static `hutch-envd` binary bound into sandboxes.
    pub envd: PathBuf,
    /// Cgroup parent of all sandboxes (relative to each hierarchy's root).
    pub cgroup_parent: String,
    /// How sandboxes are networked ([`network`]).
    pub network: NetworkConfig,
}

impl RuntimeConfig {
    /// The standard layout under a data directory: `data_dir/sandboxes`,
    /// `data_dir/runc`, runc from `PATH`, cgroup parent `hutch`.
    pub fn new(data_dir: &Path, envd: PathBuf) -> Self {
        RuntimeConfig {
            state_dir: data_dir.join("sandboxes"),
            runc_root: data_dir.join("runc"),
            runc: PathBuf::from(DEFAULT_RUNC),
            envd,
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_owned(),
            network: NetworkConfig::default(),
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox id: also its hostname, runc container id and state
    /// directory name. 1–63 characters from `[A-Za-z0-9_.-]`, starting
    /// with a letter or digit. Must equal `boot.sandbox_id`.
    pub id: String,
    /// The template's layer directories, base layer first.
    pub layers: Vec<PathBuf>,
    /// Written to `/run/hutch/boot.json` for the agent.
    pub boot: BootConfig,
    /// Set `no_new_privs` on the agent and so on every process of the
    /// sandbox (the default): setuid binaries such as `sudo` cannot raise
    /// privileges. `false` only for templates that declare they need
    /// privilege escalation (a passwordless-`sudo` user, as in the `base`
    /// template). Either way processes stay within the capability bounding
    /// set, so root inside the sandbox has no more power than without it.
    pub no_new_privileges: bool,
    /// Wait for the agent to answer `GET /health` before returning (the
    /// normal case). `false` returns as soon as runc has started the
    /// container; for stand-in agents that serve no HTTP.
    pub wait_for_agent: bool,
    /// Its network: by default an address, a route through the host and
    /// internet access ([`network`]).
    pub network: NetworkPolicy,
    /// CPU, memory, pids and disk limits ([`spec::Limits::default`] unless
    /// set).
    pub limits: spec::Limits,
    /// Boot on the disk a [`Runtime::stop_keep_disk`] kept for this id,
    /// instead of a new one: the same writable layer, so the sandbox finds
    /// every file it had. `layers` must be those it was created with;
    /// `limits.disk_mb` is not used (the disk keeps its size). `false` (the
    /// default) claims a fresh id.
    pub resume_from_disk: bool,
}

impl SandboxSpec {
    /// A spec for `boot.sandbox_id` that waits for the agent.
    pub fn new(layers: Vec<PathBuf>, boot: BootConfig) -> Self {
        SandboxSpec {
            id: boot.sandbox_id.clone(),
            layers,
            boot,
            no_new_privileges: true,
            wait_for_agent: true,
            network: NetworkPolicy::default(),
            limits: spec::Limits::default(),
            resume_from_disk: false,
        }
    }
}

/// A running sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The sandbox id.
    pub id: String,
    /// Host pid of the container's init (the agent).
    pub init_pid: u32,
    /// Host path of the agent's unix socket.
    pub socket: PathBuf,
    /// Host path of the sandbox's root filesystem (the overlay mount).
    pub rootfs: PathBuf,
    /// Its IPv4 address; `None` for a loopback-only sandbox.
    pub address: Option<std::net::Ipv4Addr>,
}

impl Sandbox {
    /// A client for this sandbox's agent.
    pub fn agent(&self) -> AgentClient {
        AgentClient::new(self.socket.clone())
    }
}

/// Boots, adopts and destroys sandboxes. Cheap to clone; all clones share
/// one configuration.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RuntimeConfig,
    runc: Runc,
    /// `cfg.cgroup_parent` without surrounding slashes.
    cgroup_parent: String,
    /// Whether the host accounts swap per cgroup, so that the memory limit
    /// can cover swap too.
    limit_swap: bool,
    /// Host-side networking.
    network: network::Network,
    /// Per-id locks serializing `create` and `destroy` of the same id.
    locks: KeyedLocks,
    /// Where runc, `mkfs.ext4` and `e2fsck` run.
    tools: Arc<ToolNamespace>,
    /// Whether `state_dir` is a mount point of its own, so that the tools'
    /// namespace can drop every sandbox's mounts at once.
    anchored: bool,
}

/// The host paths of one sandbox.
struct Paths {
    dir: PathBuf,
    disk_image: PathBuf,
    disk: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    rootfs: PathBuf,
    bundle: PathBuf,
    config_json: PathBuf,
    boot_json: PathBuf,
    profile_script: PathBuf,
    pid_file: PathBuf,
    console_log: PathBuf,
    socket: PathBuf,
}

impl Runtime {
    /// Checks the configuration: runc must run (`runc --version`) and the
    /// agent binary must be an executable file. Creates `state_dir` and
    /// `runc_root` (mode 0700) if needed. Relative paths are made absolute
    /// against the current directory.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let abs = |p: &Path| std::path::absolute(p).ctx(|| format!("resolve {}", p.display()));
        let state_dir = abs(&cfg.state_dir)?;
        let runc_root = abs(&cfg.runc_root)?;
        let envd = abs(&cfg.envd)?;
        // A bare name is looked up in PATH by the OS; anything with a slash
        // is a path.
        let runc_bin = if cfg.runc.components().count() > 1 {
            abs(&cfg.runc)?
        } else {
            cfg.runc.clone()
        };

        mounts::check_overlay_safe(&state_dir, "state_dir")?;
        let cgroup_parent = check_cgroup_parent(&cfg.cgroup_parent)?;

        match std::fs::metadata(&envd) {
            Ok(m) if !m.is_file() => {
                return Err(RuntimeError::EnvdNotFound {
                    path: envd,
                    reason: "not a regular file".to_owned(),
                });
            }
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                return Err(RuntimeError::EnvdNotFound {
                    path: envd,
                    reason: "not executable".to_owned(),
                });
            }
            Ok(_) if elf_interpreter(&envd) => {
                return Err(RuntimeError::EnvdNotFound {
                    path: envd,
                    reason: "it is dynamically linked, but sandboxes need a static binary (build it with `cargo build -p hutch-envd --profile agent --target x86_64-unknown-linux-musl`)".to_owned(),
                });
            }
            Ok(_) => {}
            Err(e) => {
                return Err(RuntimeError::EnvdNotFound {
                    path: envd,
                    reason: format!(
                        "{e} (build it with `cargo build -p hutch-envd --profile agent --target x86_64-unknown-linux-musl`)"
                    ),
                });
            }
        }

        match std::process::Command::new(&runc_bin)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(RuntimeError::RuncBroken {
                    path: runc_bin,
                    detail: format!(
                        "{}: {}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            Err(source) => {
                return Err(RuntimeError::RuncNotFound {
                    path: runc_bin,
                    source,
                });
            }
        }

        for dir in [&state_dir, &runc_root] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .ctx(|| format!("create {}", dir.display()))?;
        }

        let network = network::Network::new(cfg.network.clone(), &state_dir)?;

        let anchored = mounts::ensure_anchor(&state_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot make the state directory a mount point; host tools will see every sandbox's mounts");
            false
        });
        let stage_dir = state_dir.with_extension("runc-view");
        let tools = if anchored {
            ToolNamespace::new(&state_dir, &stage_dir).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot make the tools' mount namespace; host tools will see every sandbox's mounts");
                ToolNamespace::host(&stage_dir)
            })
        } else {
            ToolNamespace::host(&stage_dir)
        };
        let tools = Arc::new(tools);

        let runc = Runc {
            binary: runc_bin.clone(),
            root: runc_root.clone(),
            tools: tools.clone(),
        };
        Ok(Runtime {
            inner: Arc::new(Inner {
                cfg: RuntimeConfig {
                    state_dir,
                    runc_root,
                    runc: runc_bin,
                    envd,
                    cgroup_parent: cfg.cgroup_parent,
                    network: cfg.network,
                },
                runc,
                cgroup_parent,
                limit_swap: swap_accounting(),
                network,
                locks: Default::default(),
                tools,
                anchored,
            }),
        })
    }

    /// Removes the state directory's own mount point (made at
    /// [`Runtime::new`] so that runc's namespace can drop every sandbox's
    /// mounts at once) when no sandbox is mounted below it any more, so that
    /// a server that stops with nothing running leaves no mount behind.
    /// With sandboxes left (for the next server to re-adopt) it stays.
    pub fn release_host_mounts(&self) {
        self.inner.tools.release();
        if !self.inner.anchored {
            return;
        }
        match mounts::release_anchor(&self.inner.cfg.state_dir) {
            Ok(true) => tracing::debug!("state directory mount point removed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove the state directory's mount point"),
        }
    }

    /// The (absolute) configuration in use.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    /// Host path of a sandbox's agent socket
    /// (`state_dir/<id>/hutch/envd.sock`).
    pub fn agent_socket(&self, id: &str) -> PathBuf {
        self.paths(id).socket
    }

    /// Host path of a sandbox's container log (its stdout and stderr).
    pub fn console_log(&self, id: &str) -> PathBuf {
        self.paths(id).console_log
    }

    /// Host path of a sandbox's writable layer (the overlay upper
    /// directory, `state_dir/<id>/disk/upper`, on the sandbox's own disk).
    /// Valid from the moment [`Runtime::create`] returns until the sandbox
    /// is destroyed or stopped ([`Runtime::stop_keep_disk`] unmounts it).
    /// Template builds read it once a step's command has finished, before
    /// destroying the sandbox, to turn it into a layer.
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        self.paths(id).upper
    }

    /// Host path where a sandbox's own disk is mounted while it runs
    /// (`state_dir/<id>/disk`): its writable layer and console log.
    pub fn disk_dir(&self, id: &str) -> PathBuf {
        self.paths(id).disk
    }

    fn paths(&self, id: &str) -> Paths {
        let dir = self.inner.cfg.state_dir.join(id);
        let bundle = dir.join("hutch");
        Paths {
            disk_image: dir.join("disk.img"),
            upper: dir.join("disk/upper"),
            work: dir.join("disk/work"),
            disk: dir.join("disk"),
            rootfs: dir.join("rootfs"),
            socket: bundle.join(AGENT_SOCKET_NAME),
            config_json: bundle.join("config.json"),
            boot_json: bundle.join("boot.json"),
            profile_script: bundle.join("00-hutch-path.sh"),
            pid_file: bundle.join("init.pid"),
            console_log: dir.join("disk/console.log"),
            bundle,
            dir,
        }
    }

    /// The container's cgroup path.
    fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.inner.cgroup_parent)
    }

    /// Boots a sandbox and, unless `spec.wait_for_agent` is false, waits up
    /// to [`AGENT_BOOT_TIMEOUT`] for its agent to answer `GET /health`.
    ///
    /// Steps: claim `state_dir/<id>` (fails with
    /// [`RuntimeError::AlreadyExists`] if anything exists under the id,
    /// touching nothing), create its subdirectories, mount the overlay
    /// (upper directory root takes the mode and owner of the top layer's
    /// root), write `boot.json`, the login-PATH script (if the rootfs has
    /// `/etc/profile.d`) and `config.json`, then `runc run --detach`.
    ///
    /// With [`SandboxSpec::resume_from_disk`], the id must instead hold a
    /// disk kept by [`Runtime::stop_keep_disk`] and nothing else (no runc
    /// container: [`RuntimeError::AlreadyExists`]; no disk:
    /// [`RuntimeError::NoKeptDisk`]); the disk is checked and mounted
    /// instead of made, and its upper directory is used as it is.
    ///
    /// On any failure everything done so far is undone (container killed
    /// and deleted, overlay unmounted, state directory removed; when
    /// resuming, everything but the kept disk). The work
    /// runs in its own task, so dropping the returned future does not
    /// interrupt it halfway: a failed boot is still cleaned up, and a
    /// sandbox that booted after its caller went away is found by
    /// [`Runtime::list_host_sandboxes`].
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let this = self.clone();
        join(tokio::spawn(async move { this.create_inner(spec).await })).await
    }

    async fn create_inner(&self, spec: SandboxSpec) -> Result<Sandbox, RuntimeError> {
        validate_id(&spec.id)?;
        if spec.boot.sandbox_id != spec.id {
            return Err(RuntimeError::InvalidSpec {
                id: spec.id.clone(),
                reason: format!(
                    "boot.sandboxId is {:?}; it must equal the sandbox id",
                    spec.boot.sandbox_id
                ),
            });
        }
        if spec.layers.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: spec.id.clone(),
                reason: "no layers".to_owned(),
            });
        }
        if let Err(reason) = spec.limits.validate() {
            return Err(RuntimeError::InvalidSpec {
                id: spec.id.clone(),
                reason,
            });
        }

        let _guard = self.inner.locks.lock(&spec.id).await;

        // Claim the id. Nothing is cleaned up on these errors: whatever
        // exists belongs to someone else.
        let paths = self.paths(&spec.id);
        let runc_state = self.inner.cfg.runc_root.join(&spec.id);
        let dir = paths.dir.clone();
        let disk_image = paths.disk_image.clone();
        let id = spec.id.clone();
        let resume = spec.resume_from_disk;
        blocking(move || {
            if runc_state.exists() {
                return Err(RuntimeError::AlreadyExists(id));
            }
            if resume {
                return claim_kept_disk(&id, &dir, &disk_image);
            }
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(RuntimeError::AlreadyExists(id))
                }
                Err(e) => Err(RuntimeError::io(format!("create {}", dir.display()), e)),
            }
        })
        .await?;

        match self.boot(&spec, paths).await {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                tracing::warn!(id = %spec.id, error = %e, "sandbox boot failed; cleaning up");
                let cleanup = if resume {
                    self.teardown_keep_disk(&spec.id).await
                } else {
                    self.teardown(&spec.id).await
                };
                if let Err(cleanup) = cleanup {
                    tracing::error!(id = %spec.id, error = %cleanup, "cleanup after failed boot failed");
                }
                Err(e)
            }
        }
    }

    async fn boot(&self, spec: &SandboxSpec, paths: Paths) -> Result<Sandbox, RuntimeError> {
        let paths = Arc::new(paths);
        // The network (namespace, links, rules) and the file system (disk,
        // overlay, bundle) are independent until runc joins them: set both
        // up at once.
        let network = async {
            match &spec.network {
                NetworkPolicy::Loopback => Ok(None),
                NetworkPolicy::Egress(policy) => {
                    let this = self.clone();
                    let id = spec.id.clone();
                    let dir = paths.dir.clone();
                    let policy = policy.clone();
                    let started = std::time::Instant::now();
                    let address =
                        blocking(move || Ok(this.inner.network.setup(&id, &dir, &policy)?.address))
                            .await?;
                    tracing::debug!(id = %spec.id, elapsed = ?started.elapsed(), %address, "sandbox network set up");
                    Ok::<_, RuntimeError>(Some(address))
                }
            }
        };
        let boot_started = std::time::Instant::now();
        let networked = !matches!(spec.network, NetworkPolicy::Loopback);
        let netns = networked.then(|| paths.dir.join(network::NETNS_FILE));
        let view = self
            .inner
            .tools
            .view(&spec.id, &paths.rootfs, netns.as_deref());
        let files = {
            let paths = paths.clone();
            let view = view.clone();
            let layers = spec.layers.clone();
            let boot = spec.boot.clone();
            let id = spec.id.clone();
            let envd = self.inner.cfg.envd.clone();
            let tools = self.inner.tools.clone();
            let cgroups_path = self.cgroups_path(&spec.id);
            let confinement = Confinement {
                no_new_privileges: spec.no_new_privileges,
                limits: spec.limits,
                limit_swap: self.inner.limit_swap,
            };
            let disk = if spec.resume_from_disk {
                DiskSource::Kept
            } else {
                DiskSource::New
            };
            let resolv_conf = networked.then(|| self.inner.network.resolv_conf());
            blocking(move || {
                prepare(
                    &id,
                    &layers,
                    &boot,
                    &envd,
                    &cgroups_path,
                    confinement,
                    disk,
                    resolv_conf.as_deref(),
                    &paths,
                    &view,
                    &tools,
                )
            })
        };
        // Both always finish (a failed boot's cleanup must not race a setup
        // still running), then the first error counts.
        let (address, files) = tokio::join!(network, files);
        let address = address?;
        files?;
        let set_up = boot_started.elapsed();

        // The agent's socket: bound here, where the sandbox cannot reach,
        // and inherited by the agent; the host's copy closes once runc has
        // handed it over.
        let listener = std::os::unix::net::UnixListener::bind(&paths.socket)
            .ctx(|| format!("bind {}", paths.socket.display()))?;
        // runc sees the root and network namespace at the spec's paths for
        // as long as it runs.
        let staged = self
            .inner
            .tools
            .stage(&spec.id, &paths.rootfs, netns.as_deref())?;
        let run = self
            .inner
            .runc
            .run_detached(
                &spec.id,
                &paths.bundle,
                &paths.pid_file,
                &paths.console_log,
                listener.into(),
            )
            .await;
        drop(staged);
        run?;
        let ran = boot_started.elapsed();
        let pid_text = tokio::fs::read_to_string(&paths.pid_file)
            .await
            .ctx(|| format!("read {}", paths.pid_file.display()))?;
        let init_pid: u32 = pid_text.trim().parse().map_err(|_| {
            RuntimeError::Internal(format!(
                "runc wrote an invalid pid {pid_text:?} to {}",
                paths.pid_file.display()
            ))
        })?;

        if spec.wait_for_agent {
            self.wait_for_agent(&spec.id, init_pid, &paths).await?;
        }
        tracing::debug!(
            id = %spec.id,
            set_up = ?set_up,
            runc = ?ran - set_up,
            agent = ?boot_started.elapsed() - ran,
            "sandbox booted"
        );
        Ok(Sandbox {
            id: spec.id.clone(),
            init_pid,
            socket: paths.socket.clone(),
            rootfs: paths.rootfs.clone(),
            address,
        })
    }

    async fn wait_for_agent(&self, id: &str, pid: u32, paths: &Paths) -> Result<(), RuntimeError> {
        let client = AgentClient::new(paths.socket.clone()).with_timeout(HEALTH_ATTEMPT_TIMEOUT);
        let deadline = tokio::time::Instant::now() + AGENT_BOOT_TIMEOUT;
        // The agent is usually up a millisecond or two after runc returns:
        // poll fast first, then back off.
        let mut interval = Duration::from_millis(1);
        loop {
            let last_error = match client.health().await {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if !process_alive(pid) {
                return Err(RuntimeError::AgentExited {
                    id: id.to_owned(),
                    log_tail: log_tail(&paths.console_log),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::AgentBootTimeout {
                    id: id.to_owned(),
                    socket: paths.socket.clone(),
                    timeout: AGENT_BOOT_TIMEOUT,
                    last_error,
                    log_tail: log_tail(&paths.console_log),
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(HEALTH_POLL_INTERVAL);
        }
    }

    /// Force-kills and removes a sandbox: `runc delete --force` (an unknown
    /// container is fine), unmounts the rootfs (lazily if busy), removes
    /// leftover cgroup directories and `state_dir/<id>`. Idempotent: a
    /// sandbox that does not exist is destroyed already.
    ///
    /// A `destroy` racing a [`Runtime::create`] of the same id waits until
    /// the boot has finished (or failed), then destroys the result. Like
    /// `create`, it runs to completion even if its future is dropped.
    ///
    /// If a mount under the state directory cannot be removed, the
    /// directory is left alone ([`RuntimeError::StillMounted`]): deleting it
    /// would delete through the mount.
    pub async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let this = self.clone();
        let id = id.to_owned();
        join(tokio::spawn(async move {
            let _guard = this.inner.locks.lock(&id).await;
            this.teardown(&id).await
        }))
        .await
    }

    async fn teardown(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.runc.delete_force(id).await?;
        let paths = self.paths(id);
        let cgroups_path = self.cgroups_path(id);
        let runc_state = self.inner.cfg.runc_root.join(id);
        let id = id.to_owned();
        let this = self.clone();
        blocking(move || {
            // Before the unmount: the namespace's bind mount keeps the
            // sandbox's end of the link alive until the host end is gone.
            if let Err(e) = this.inner.network.teardown(&id, &paths.dir) {
                // Whatever is left has no record once the directory is
                // gone; `list_host_sandboxes` removes it.
                tracing::warn!(%id, error = %e, "cannot remove the sandbox's network");
            }
            remove_cgroups(&cgroups_path);
            if let Some(path) = mounts::unmount_all_under(&paths.dir)? {
                return Err(RuntimeError::StillMounted { id, path });
            }
            // Unmounting the disk freed its loop device (autoclear); this
            // catches one bound some other way.
            disk::detach_loops_under(&paths.dir);
            remove_dir_if_exists(&paths.dir)?;
            // runc removes its state on delete; this covers a crash between
            // runc creating the directory and writing its state.
            remove_dir_if_exists(&runc_state)
        })
        .await
    }

    /// Stops a sandbox but keeps its disk (see the module docs): kills and
    /// deletes the container (`runc delete --force`: every process, the
    /// cgroups, the memory), removes its network (the address is released),
    /// unmounts its overlay and its disk (freeing the loop device), and
    /// removes everything in `state_dir/<id>` but `disk.img`.
    /// [`Runtime::create`] with [`SandboxSpec::resume_from_disk`] boots it
    /// again on that disk; [`Runtime::destroy`] removes it.
    ///
    /// Idempotent: stopping a stopped sandbox changes nothing, and a stop
    /// (or a resume) interrupted by a crash is finished. Fails with
    /// [`RuntimeError::NoKeptDisk`], touching nothing, if the id has no
    /// disk; with [`RuntimeError::DiskInUse`] if the disk cannot be
    /// unmounted (it is then left mounted, and nothing is deleted). Runs to
    /// completion even if its future is dropped; serialized with `create`
    /// and `destroy` of the same id.
    pub async fn stop_keep_disk(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let this = self.clone();
        let id = id.to_owned();
        join(tokio::spawn(async move {
            let _guard = this.inner.locks.lock(&id).await;
            this.teardown_keep_disk(&id).await
        }))
        .await
    }

    /// [`Runtime::stop_keep_disk`], under the id's lock.
    async fn teardown_keep_disk(&self, id: &str) -> Result<(), RuntimeError> {
        let paths = self.paths(id);
        if !paths.disk_image.is_file() {
            return Err(RuntimeError::NoKeptDisk { id: id.to_owned() });
        }
        self.inner.runc.delete_force(id).await?;
        let cgroups_path = self.cgroups_path(id);
        let runc_state = self.inner.cfg.runc_root.join(id);
        let id = id.to_owned();
        let this = self.clone();
        blocking(move || {
            if let Err(e) = this.inner.network.teardown(&id, &paths.dir) {
                tracing::warn!(%id, error = %e, "cannot remove the sandbox's network");
            }
            remove_cgroups(&cgroups_path);
            if let Some(path) = mounts::unmount_all_under(&paths.dir)? {
                return Err(RuntimeError::DiskInUse {
                    id,
                    detail: format!("{} is still mounted", path.display()),
                });
            }
            // Autoclear frees the loop device once the disk is unmounted; a
            // device still bound after that is freed by force.
            if !disk::wait_loops_released(&paths.dir, LOOP_RELEASE_TIMEOUT) {
                disk::detach_loops_under(&paths.dir);
            }
            let entries =
                std::fs::read_dir(&paths.dir).ctx(|| format!("list {}", paths.dir.display()))?;
            for entry in entries {
                let entry = entry.ctx(|| format!("list {}", paths.dir.display()))?;
                let path = entry.path();
                if path == paths.disk_image {
                    continue;
                }
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(RuntimeError::io(format!("remove {}", path.display()), e));
                    }
                }
            }
            remove_dir_if_exists(&runc_state)
        })
        .await
    }

    /// Ids with anything left on the host: a runc container under
    /// `runc_root` or a directory under `state_dir`. Sorted, no duplicates.
    /// Sandboxes stopped with their disk kept ([`Runtime::stop_keep_disk`])
    /// are listed too: their directory holds the disk.
    /// Names that are not valid sandbox ids are skipped (with a warning).
    /// Loop devices bound to the disk image of a sandbox directory that no
    /// longer exists are detached here.
    ///
    /// Network objects of this runtime that no sandbox directory records
    /// any more (left by a crash: interfaces, rule chains, address claims;
    /// see [`network`]) have no id to report: they are removed here.
    pub async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let this = self.clone();
        blocking(move || {
            if let Err(e) = this.inner.network.reconcile() {
                tracing::warn!(error = %e, "cannot remove leftover sandbox network objects");
            }
            // Loop devices still bound to the disk of a sandbox whose
            // directory is gone have no id to report either.
            disk::detach_orphan_loops(&this.inner.cfg.state_dir);
            Ok(())
        })
        .await?;
        let dirs = [
            self.inner.cfg.runc_root.clone(),
            self.inner.cfg.state_dir.clone(),
        ];
        blocking(move || {
            let mut ids = std::collections::BTreeSet::new();
            for dir in &dirs {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(RuntimeError::io(format!("list {}", dir.display()), e)),
                };
                for entry in entries {
                    let entry = entry.ctx(|| format!("list {}", dir.display()))?;
                    if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    match entry.file_name().into_string() {
                        Ok(name) if validate_id(&name).is_ok() => {
                            ids.insert(name);
                        }
                        Ok(name) => {
                            tracing::warn!(dir = %dir.display(), %name, "ignoring entry that is not a sandbox id");
                        }
                        Err(name) => {
                            tracing::warn!(dir = %dir.display(), ?name, "ignoring non-UTF-8 entry");
                        }
                    }
                }
            }
            Ok(ids.into_iter().collect())
        })
        .await
    }

    /// Replaces the egress policy of a sandbox that has a network, at once
    /// and atomically (one nftables transaction); used when a sandbox from
    /// the warm pool is claimed with a policy of its own. Fails for a
    /// loopback-only sandbox.
    pub async fn set_egress_policy(
        &self,
        id: &str,
        policy: &EgressPolicy,
    ) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.locks.lock(id).await;
        let this = self.clone();
        let dir = self.paths(id).dir;
        let policy = policy.clone();
        blocking(move || this.inner.network.set_policy(&dir, &policy).map(|_| ())).await
    }

    /// A sandbox's address, if it has a network.
    pub fn address(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        network::Network::read_record(&self.paths(id).dir).map(|r| r.address)
    }

    /// Kills every process of the sandbox and waits until none is left,
    /// keeping its files mounted: afterwards nothing can change its writable
    /// layer ([`Runtime::upper_dir`]), which the host can then read as a
    /// still tree. [`Runtime::destroy`] removes the rest. Template builds
    /// halt a step's sandbox before turning its changes into a layer.
    pub async fn halt(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.locks.lock(id).await;
        self.inner.runc.kill_all(id).await?;
        let deadline = tokio::time::Instant::now() + AGENT_BOOT_TIMEOUT;
        let mut interval = Duration::from_millis(1);
        loop {
            match self.status(id).await? {
                None | Some(SandboxStatus::Stopped) => return Ok(()),
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(RuntimeError::Internal(format!(
                        "sandbox {id} still has processes {AGENT_BOOT_TIMEOUT:?} after SIGKILL"
                    )));
                }
                Some(_) => {}
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(HEALTH_POLL_INTERVAL);
        }
    }

    /// Freezes every process of the sandbox (`runc pause`, the freezer
    /// cgroup): they use no CPU, keep their memory, and their open streams
    /// stay open. Pausing a paused sandbox is not an error.
    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.locks.lock(id).await;
        match self.status(id).await? {
            Some(SandboxStatus::Paused) => Ok(()),
            Some(_) => self.inner.runc.freeze(id, true).await,
            None => Err(RuntimeError::NotFound { id: id.to_owned() }),
        }
    }

    /// Thaws a paused sandbox (`runc resume`). Resuming a running sandbox
    /// is not an error.
    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.locks.lock(id).await;
        match self.status(id).await? {
            Some(SandboxStatus::Running) => Ok(()),
            Some(_) => self.inner.runc.freeze(id, false).await,
            None => Err(RuntimeError::NotFound { id: id.to_owned() }),
        }
    }

    /// Host pid of the sandbox's init (its agent), as runc records it;
    /// `None` if it has no container or no live init.
    pub async fn init_pid(&self, id: &str) -> Result<Option<u32>, RuntimeError> {
        validate_id(id)?;
        Ok(self
            .inner
            .runc
            .state(id)
            .await?
            .map(|s| s.pid)
            .filter(|&pid| pid != 0 && process_alive(pid)))
    }

    /// What runc says of the sandbox's container; `None` if it has none.
    pub async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, RuntimeError> {
        validate_id(id)?;
        Ok(self
            .inner
            .runc
            .state(id)
            .await?
            .map(|s| match s.status.as_str() {
                "running" => SandboxStatus::Running,
                "paused" => SandboxStatus::Paused,
                "created" | "creating" => SandboxStatus::Created,
                _ => SandboxStatus::Stopped,
            }))
    }

    /// Re-adopts a sandbox left by a previous server process: `Some` if
    /// runc reports it `running` and its agent answers `GET /health`;
    /// `None` otherwise (the caller then destroys it).
    pub async fn adopt(&self, id: &str) -> Result<Option<Sandbox>, RuntimeError> {
        validate_id(id)?;
        let Some(state) = self.inner.runc.state(id).await? else {
            return Ok(None);
        };
        if state.status != "running" || state.pid == 0 {
            tracing::info!(%id, status = %state.status, "not adopting sandbox: not running");
            return Ok(None);
        }
        let paths = self.paths(id);
        let client = AgentClient::new(paths.socket.clone()).with_timeout(HEALTH_ATTEMPT_TIMEOUT);
        // A few attempts: the agent may be busy right after a host hiccup.
        let mut last = None;
        for _ in 0..3 {
            match client.health().await {
                Ok(()) => {
                    return Ok(Some(Sandbox {
                        id: id.to_owned(),
                        init_pid: state.pid,
                        socket: paths.socket,
                        rootfs: paths.rootfs,
                        address: network::Network::read_record(&paths.dir).map(|r| r.address),
                    }));
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(e) = last {
            tracing::info!(%id, error = %e, "not adopting sandbox: agent does not answer");
        }
        Ok(None)
    }
}

/// A sandbox container's state, as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Created but its init not started.
    Created,
    /// Running.
    Running,
    /// Frozen by [`Runtime::pause`].
    Paused,
    /// Its init has exited.
    Stopped,
}

/// Host-side preparation of a sandbox (blocking).
/// How a sandbox is confined, beyond what every sandbox shares.
#[derive(Debug, Clone, Copy)]
struct Confinement {
    /// [`SandboxSpec::no_new_privileges`].
    no_new_privileges: bool,
    /// [`SandboxSpec::limits`].
    limits: spec::Limits,
    /// Whether the memory limit covers swap (the host accounts it).
    limit_swap: bool,
}

/// Where a booting sandbox's disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskSource {
    /// A new, empty one of `limits.disk_mb`.
    New,
    /// The one [`Runtime::stop_keep_disk`] kept
    /// ([`SandboxSpec::resume_from_disk`]).
    Kept,
}

#[allow(clippy::too_many_arguments)]
fn prepare(
    id: &str,
    layers: &[PathBuf],
    boot: &BootConfig,
    envd: &Path,
    cgroups_path: &str,
    confinement: Confinement,
    disk: DiskSource,
    resolv_conf: Option<&str>,
    paths: &Paths,
    view: &ToolView,
    tools: &ToolNamespace,
) -> Result<(), RuntimeError> {
    let Confinement {
        no_new_privileges,
        limits,
        limit_swap,
    } = confinement;
    let mkdir = |dir: &Path, mode| {
        DirBuilder::new()
            .mode(mode)
            .create(dir)
            .ctx(|| format!("create {}", dir.display()))
    };
    for (dir, mode) in [
        (&paths.disk, 0o700),
        (&paths.rootfs, 0o755),
        (&paths.bundle, 0o700),
    ] {
        mkdir(dir, mode)?;
    }
    // The writable layer lives on the sandbox's own disk.
    match disk {
        DiskSource::New => {
            disk::create(&paths.disk_image, &paths.disk, limits.disk_mb, tools)?;
            mkdir(&paths.upper, 0o755)?;
            mkdir(&paths.work, 0o700)?;
        }
        DiskSource::Kept => {
            disk::mount_kept(&paths.disk_image, &paths.disk, tools)?;
            for dir in [&paths.upper, &paths.work] {
                if !is_real_dir(dir) {
                    return Err(RuntimeError::io(
                        format!("use the kept disk's {}", dir.display()),
                        std::io::Error::other("missing or not a directory"),
                    ));
                }
            }
        }
    }

    for layer in layers {
        match std::fs::metadata(layer) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RuntimeError::Layer {
                    path: layer.clone(),
                    reason: "not a directory".to_owned(),
                });
            }
            Err(e) => {
                return Err(RuntimeError::Layer {
                    path: layer.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }

    // The overlay's root directory takes its attributes from the upper
    // directory; give a new one the template's (top layer's) root mode and
    // owner. A kept one keeps what the sandbox made of it.
    if disk == DiskSource::New {
        let top = layers.last().expect("layers checked non-empty");
        let top_meta = std::fs::metadata(top).ctx(|| format!("stat {}", top.display()))?;
        std::os::unix::fs::chown(&paths.upper, Some(top_meta.uid()), Some(top_meta.gid()))
            .ctx(|| format!("chown {}", paths.upper.display()))?;
        std::fs::set_permissions(
            &paths.upper,
            std::fs::Permissions::from_mode(top_meta.mode() & 0o7777),
        )
        .ctx(|| format!("chmod {}", paths.upper.display()))?;
    }

    mounts::mount_overlay(layers, &paths.upper, &paths.work, &paths.rootfs)?;

    let boot_json = serde_json::to_vec_pretty(boot).map_err(|source| RuntimeError::Json {
        context: "serialize boot.json".to_owned(),
        source,
    })?;
    write_file(&paths.boot_json, &boot_json, 0o600)?;

    let profile_script = if has_profile_d(&paths.rootfs) {
        // World-readable: login shells of every user source it.
        write_file(
            &paths.profile_script,
            spec::PROFILE_SCRIPT.as_bytes(),
            0o644,
        )?;
        Some(paths.profile_script.as_path())
    } else {
        None
    };

    // The sandbox's name and resolver, as Docker writes them, but in its
    // own root file system (so on its disk, writable like any file of it)
    // rather than bound from host files. A kept disk has them already.
    if disk == DiskSource::New {
        let hosts = spec::hosts_file(id);
        let hostname = format!("{id}\n");
        let mut etc = vec![
            ("hosts", hosts.as_bytes()),
            ("hostname", hostname.as_bytes()),
        ];
        if let Some(resolv_conf) = resolv_conf {
            etc.push(("resolv.conf", resolv_conf.as_bytes()));
        }
        confined::replace_files(&paths.rootfs, "etc", &etc, 0o644)?;
    }

    // The spec names runc's view of the root and of the network namespace
    // (made by the network setup, running alongside; in place before runc
    // starts the container).
    let oci = spec::build(&spec::SpecInput {
        id,
        rootfs: &view.rootfs,
        envd,
        boot_json: &paths.boot_json,
        profile_script,
        cgroups_path,
        limits,
        limit_swap,
        seccomp: Some(seccomp::profile(&spec::DEFAULT_CAPABILITIES)),
        no_new_privileges,
        network_ns: view.netns.as_deref(),
    });
    let config = serde_json::to_vec_pretty(&oci).map_err(|source| RuntimeError::Json {
        context: "serialize config.json".to_owned(),
        source,
    })?;
    write_file(&paths.config_json, &config, 0o600)?;
    // A kept disk keeps its log; a resumed sandbox appends to it.
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&paths.console_log)
        .ctx(|| format!("create {}", paths.console_log.display()))?;
    Ok(())
}

/// Claims `dir` for a boot on its kept disk ([`SandboxSpec::resume_from_disk`]):
/// it must hold the disk image, and the disk must be free (not mounted,
/// no loop device bound to it). Leftovers of an interrupted boot (bundle
/// files, empty mountpoints) are removed. Blocking.
fn claim_kept_disk(id: &str, dir: &Path, disk_image: &Path) -> Result<(), RuntimeError> {
    if !disk_image.is_file() {
        return Err(RuntimeError::NoKeptDisk { id: id.to_owned() });
    }
    if let Some(path) = mounts::mounts_under(dir)?.into_iter().next() {
        return Err(RuntimeError::DiskInUse {
            id: id.to_owned(),
            detail: format!("{} is mounted", path.display()),
        });
    }
    if !disk::wait_loops_released(dir, LOOP_RELEASE_TIMEOUT) {
        let devices: Vec<String> = disk::loops_under(dir)
            .into_iter()
            .map(|(dev, _)| dev.display().to_string())
            .collect();
        return Err(RuntimeError::DiskInUse {
            id: id.to_owned(),
            detail: format!("still bound to {}", devices.join(", ")),
        });
    }
    let entries = std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let path = entry.path();
        if path == disk_image {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dir_if_exists(&path)?;
        } else {
            std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether the host accounts swap per memory cgroup (`memory.memsw.*` on
/// cgroup v1, `memory.swap.max` on v2): only then can a spec limit swap.
fn swap_accounting() -> bool {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("memory/memory.memsw.limit_in_bytes").exists() {
        return true;
    }
    if !root.join("cgroup.controllers").exists() {
        return false;
    }
    // cgroup v2: the file exists in every non-root cgroup when swap
    // accounting is on.
    std::fs::read_dir(root).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("memory.swap.max").exists())
    })
}

/// Whether the rootfs has a `/etc/profile.d` directory, symlinks resolved
/// inside the rootfs.
fn has_profile_d(rootfs: &Path) -> bool {
    confined::is_dir(rootfs, "etc/profile.d")
}

/// A directory, not a symlink to one.
fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), RuntimeError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    f.write_all(data)
        .ctx(|| format!("write {}", path.display()))?;
    // The create mode is filtered by the umask; make it exact.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("remove {}", dir.display()), e)),
    }
}

/// Removes the container's cgroup directories runc left behind (normally
/// none: `runc delete` removes them). Best effort.
fn remove_cgroups(cgroups_path: &str) {
    let rel = cgroups_path.trim_start_matches('/');
    for mountpoint in mounts::cgroup_mountpoints() {
        let dir = mountpoint.join(rel);
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "removed leftover cgroup"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove cgroup"),
        }
    }
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<no container log at {}: {e}>", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return format!("<cannot read {}>", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    let tail = lines[from..].join("\n");
    if tail.is_empty() {
        "<empty container log>".to_owned()
    } else {
        tail
    }
}

/// Checks a sandbox id: it becomes a path component, a hostname and a runc
/// container id.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let err = |reason| {
        Err(RuntimeError::InvalidId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return err("empty");
    }
    if id.len() > MAX_ID_LEN {
        return err("longer than 63 characters");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Checks the cgroup parent and returns it without surrounding slashes.
fn check_cgroup_parent(parent: &str) -> Result<String, RuntimeError> {
    let trimmed = parent.trim_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(RuntimeError::InvalidConfig(format!(
            "cgroup_parent {parent:?} must be a relative cgroup path of [A-Za-z0-9_.-] components"
        )))
    }
}

/// Runs blocking work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    join(tokio::task::spawn_blocking(f)).await
}

/// Awaits a task, re-raising its panic.
async fn join<T>(
    handle: tokio::task::JoinHandle<Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    match handle.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(RuntimeError::Internal(format!("task cancelled: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "sbx-1", "A.b_c-9", &"x".repeat(63)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".",
            "..",
            "a/b",
            "a b",
            "a:b",
            "a,b",
            &"x".repeat(64),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroup_parents() {
        assert_eq!(check_cgroup_parent("hutch").unwrap(), "hutch");
        assert_eq!(check_cgroup_parent("/a/b/").unwrap(), "a/b");
        for bad in ["", "/", "a/../b", "a//b", "a b"] {
            assert!(check_cgroup_parent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let tail = log_tail(&p);
        assert!(tail.ends_with("line 99"));
        assert!(!tail.contains("line 10\n"));
        assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
        assert!(log_tail(&dir.path().join("missing")).contains("no container log"));
    }

    #[test]
    fn own_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}

/// Whether `path` is an ELF executable that names a program interpreter
/// (`PT_INTERP`), i.e. is dynamically linked and would not run in an image
/// without the host's libc. Anything unreadable or not a 64-bit
/// little-endian ELF (a script, say) is not.
pub fn elf_interpreter(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if data.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| u32_at(phoff + i * usize::from(phentsize)) == Some(PT_INTERP))
}

#[cfg(test)]
mod elf_tests {
    use super::elf_interpreter;

    #[test]
    fn tells_dynamic_from_static_executables() {
        // /bin/ls on Debian is dynamically linked; busybox-static is not.
        assert!(elf_interpreter(std::path::Path::new("/bin/ls")));
        if std::path::Path::new("/bin/busybox").exists() {
            assert!(!elf_interpreter(std::path::Path::new("/bin/busybox")));
        }
        assert!(!elf_interpreter(std::path::Path::new("/etc/passwd")));
        assert!(!elf_interpreter(std::path::Path::new("/no/such/file")));
    }
}
