//! Sandboxes that exist: listing and re-adopting them, freezing, halting,
//! their state and their network policy.

use crate::error::IoContext;
use crate::*;

impl Runtime {
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

    /// Kills every process of sandbox `id` at once: SIGKILL to its init
    /// (host pid `pid`), which takes the sandbox's whole PID namespace with
    /// it. Nothing is torn down ([`Runtime::destroy`] does that, and is
    /// still needed); the sandbox just stops running, in microseconds where
    /// `runc kill` takes milliseconds. The process is checked to be in the
    /// sandbox's cgroup first and signalled through a pidfd, so a recycled
    /// pid is never hit. `Ok(false)` if that process is gone. A sandbox
    /// frozen by [`Runtime::pause`] dies when thawed (the teardown does).
    pub fn kill_init(&self, id: &str, pid: u32) -> Result<bool, RuntimeError> {
        validate_id(id)?;
        let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
            return Ok(false);
        };
        let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(false),
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("open a pidfd for {pid}"),
                    e.into(),
                ));
            }
        };
        // The pidfd pins this process: if it is the sandbox's now, it is
        // the one signalled.
        let cgroup = self.cgroups_path(id);
        let owned = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.ends_with(&format!(":{cgroup}"))));
        if !owned {
            return Ok(false);
        }
        match rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(RuntimeError::io(format!("kill {pid}"), e.into())),
        }
    }

    /// What sandbox `id`'s cgroup reports of its CPU and memory.
    pub fn cgroup_usage(&self, id: &str) -> Result<CgroupUsage, RuntimeError> {
        validate_id(id)?;
        let cgroup = self.cgroups_path(id);
        self.inner
            .cgroups
            .usage(cgroup.trim_start_matches('/'))
            .ctx(|| format!("read the usage of cgroup {cgroup}"))
    }

    /// Bytes in use on sandbox `id`'s disk (what it wrote: its writable
    /// layer and its console log) and the disk's size, from one `statvfs`
    /// of the disk's file system. Nothing inside the sandbox's tree is
    /// walked, so nothing the sandbox controls (symlinks swapped in while
    /// the host walks) is ever followed, and the cost does not grow with
    /// the number of files.
    pub fn disk_usage(&self, id: &str) -> Result<(u64, u64), RuntimeError> {
        validate_id(id)?;
        let disk = self.disk_dir(id);
        statvfs_usage(&disk).ctx(|| format!("measure the disk usage of {}", disk.display()))
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

    /// Freezes every process of the sandbox (the freezer cgroup, as `runc
    /// pause` does): they use no CPU, keep their memory, and their open
    /// streams stay open. Pausing a paused sandbox is not an error.
    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.set_frozen(id, true).await
    }

    /// Thaws a paused sandbox (as `runc resume` does). Resuming a running
    /// sandbox is not an error.
    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.set_frozen(id, false).await
    }

    /// Freezes or thaws the sandbox's cgroup directly: runc reports the
    /// container `paused` or `running` from the same files, and the two
    /// runc processes a pause would start (`state`, then `pause`) cost tens
    /// of milliseconds. A sandbox without a cgroup is not found.
    async fn set_frozen(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.locks.lock(id).await;
        let cgroup = self.cgroups_path(id);
        let cgroups = self.inner.cgroups.clone();
        let id = id.to_owned();
        let what = if frozen { "freeze" } else { "thaw" };
        blocking(move || match cgroups.set_frozen(&cgroup, frozen) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RuntimeError::NotFound { id: id.clone() })
            }
            Err(e) => Err(RuntimeError::io(format!("{what} cgroup {cgroup}"), e)),
        })
        .await
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Whether `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Bytes in use on the file system mounted at `mountpoint`, and its size.
fn statvfs_usage(mountpoint: &Path) -> std::io::Result<(u64, u64)> {
    let fs = rustix::fs::statvfs(mountpoint).map_err(std::io::Error::from)?;
    let used = fs.f_blocks.saturating_sub(fs.f_bfree);
    Ok((
        used.saturating_mul(fs.f_frsize),
        fs.f_blocks.saturating_mul(fs.f_frsize),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tmpfs of its own, unmounted on drop: no other writer shares it.
    struct OwnFs(tempfile::TempDir);

    impl Drop for OwnFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn disk_usage_grows_with_what_is_written() {
        let fs = OwnFs(tempfile::tempdir().unwrap());
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=32m", "hutch-test-usage"])
            .arg(fs.0.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a tmpfs (needs root)");
        let (before, total) = statvfs_usage(fs.0.path()).unwrap();
        assert_eq!(total, 32 << 20);
        let big = fs.0.path().join("big");
        std::fs::write(&big, vec![1u8; 8 << 20]).unwrap();
        let (after, _) = statvfs_usage(fs.0.path()).unwrap();
        assert_eq!(after, before + (8 << 20), "{before} → {after}");
    }
}
