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
//! # Where things are
//!
//! | module | concern |
//! |---|---|
//! | `lib.rs` | [`Runtime`], its construction and the host layout below |
//! | `config.rs` | [`RuntimeConfig`] and the checks made on it |
//! | `cgroups.rs` | the host's cgroup layout, a sandbox's usage |
//! | `create.rs` | a sandbox's preparation, `runc run`, the agent's start |
//! | `teardown.rs` | removing a sandbox, whole or all but its disk |
//! | `running.rs` | listing, re-adopting, freezing, halting existing sandboxes |
//! | `toolns.rs` | the mount namespace runc, `mkfs.ext4` and `e2fsck` run in |
//! | `runc.rs` | invoking runc |
//! | `disk.rs`, `mounts.rs`, `confined.rs` | disks, overlay and other mounts, confined writes |
//! | [`network`] | namespaces, addresses, links, the firewall, DNS |
//! | [`spec`], [`seccomp`] | the OCI spec and its seccomp profile |
//! | `agent.rs`, `process.rs` | talking to the agent |
//! | `keyed.rs` | per-id locks |
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

use std::fs::DirBuilder;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hutch_protocol::boot::{AGENT_SOCKET_NAME, BootConfig};

mod agent;
mod cgroups;
mod config;
mod confined;
mod create;
mod disk;
mod error;
mod keyed;
mod mounts;
pub mod network;
mod process;
mod runc;
mod running;
pub mod seccomp;
pub mod spec;
mod teardown;
mod toolns;
mod volume_fs;
mod volumes;

pub use agent::{
    AgentClient, AgentDial, AgentIo, AgentLink, AgentStream, DEFAULT_REQUEST_TIMEOUT, DialFuture,
};
pub use error::RuntimeError;
pub use network::{Cidr, CidrError, EgressPolicy, NetworkConfig, NetworkPolicy};
pub use process::{
    Command, CommandEvent, CommandEvents, CommandExit, DEFAULT_READY_TIMEOUT, OutputStream,
    run_command, spawn_command, spawn_command_following, start_and_wait_ready,
};

pub use cgroups::CgroupUsage;
pub use config::{RuntimeConfig, elf_interpreter, validate_id};
pub use keyed::KeyedLocks;
pub use running::SandboxStatus;
pub use volume_fs::{
    MAX_DEPTH as VOLUME_MAX_DEPTH, VolumeEntry, VolumeFs, VolumeFsError,
    normalize as normalize_volume_path,
};
pub use volumes::VolumeMount;

use cgroups::CgroupLayout;
use config::check_cgroup_parent;
use error::IoContext;
use runc::Runc;
use toolns::ToolNamespace;

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

/// What to boot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Volumes bound into it ([`Runtime::create_volume`]), each at its
    /// absolute path.
    pub volumes: Vec<VolumeMount>,
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
            volumes: Vec::new(),
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
        AgentClient::over(self.link())
    }

    /// Where its agent is reached.
    pub fn link(&self) -> AgentLink {
        AgentLink::unix(self.socket.clone())
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
    /// The host's cgroups.
    cgroups: CgroupLayout,
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
                    volumes_dir: cfg.volumes_dir,
                    runc: runc_bin,
                    envd,
                    cgroup_parent: cfg.cgroup_parent,
                    network: cfg.network,
                },
                runc,
                cgroup_parent,
                cgroups: CgroupLayout::detect(),
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
        assert!(running::process_alive(std::process::id()));
        assert!(!running::process_alive(u32::MAX));
    }
}
