//! Creating a sandbox: its host-side preparation (disk, overlay root,
//! bundle, `/etc` files), `runc run`, and the wait for its agent.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hutch_protocol::boot::BootConfig;

use crate::error::IoContext;
use crate::running::process_alive;
use crate::teardown::{Keep, remove_all_but};
use crate::toolns::{ToolNamespace, ToolView};
use crate::*;

impl Runtime {
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
        use tracing::Instrument as _;
        let this = self.clone();
        let span = tracing::info_span!("runtime.create", sandbox = %spec.id);
        join(tokio::spawn(
            async move { this.create_inner(spec).await }.instrument(span),
        ))
        .await
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
                    self.teardown(&spec.id, Keep::Disk).await
                } else {
                    self.teardown(&spec.id, Keep::Nothing).await
                };
                if let Err(cleanup) = cleanup {
                    tracing::error!(id = %spec.id, error = %cleanup, "cleanup after failed boot failed");
                }
                Err(e)
            }
        }
    }

    async fn boot(&self, spec: &SandboxSpec, paths: Paths) -> Result<Sandbox, RuntimeError> {
        use tracing::Instrument as _;
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
        }
        .instrument(tracing::info_span!("sandbox.network"));
        let boot_started = std::time::Instant::now();
        let networked = !matches!(spec.network, NetworkPolicy::Loopback);
        let netns = networked.then(|| paths.dir.join(network::NETNS_FILE));
        let volume_sources = self.volume_sources(&spec.id, &spec.volumes)?;
        let view =
            self.inner
                .tools
                .view(&spec.id, &paths.rootfs, netns.as_deref(), &volume_sources);
        let volume_paths: Vec<String> =
            spec.volumes.iter().map(|v| v.destination.clone()).collect();
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
                limit_swap: self.inner.cgroups.swap_accounting,
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
                    &volume_paths,
                    &tools,
                )
            })
            .instrument(tracing::info_span!("sandbox.rootfs"))
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
        let staged =
            self.inner
                .tools
                .stage(&spec.id, &paths.rootfs, netns.as_deref(), &volume_sources)?;
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
            .instrument(tracing::info_span!("sandbox.runc"))
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
            self.wait_for_agent(&spec.id, init_pid, &paths)
                .instrument(tracing::info_span!("sandbox.agent_ready"))
                .await?;
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
}

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

/// Host-side preparation of a sandbox (blocking): its disk, overlay root,
/// bundle (`config.json`, `boot.json`, the login-PATH script), `/etc`
/// files and console log.
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
    volume_paths: &[String],
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
        volumes: &view
            .volumes
            .iter()
            .cloned()
            .zip(volume_paths.iter().cloned())
            .collect::<Vec<_>>(),
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
    remove_all_but(dir, disk_image)
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
