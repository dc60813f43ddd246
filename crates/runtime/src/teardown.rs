//! Removing a sandbox from the host — all of it, or all but its disk.

use std::path::Path;

use crate::error::IoContext;
use crate::*;

/// What a teardown leaves of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Nothing.
    Nothing,
    /// Its disk image: a filesystem pause ([`Runtime::stop_keep_disk`]).
    Disk,
}

impl Runtime {
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
            this.teardown(&id, Keep::Nothing).await
        }))
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
            this.teardown(&id, Keep::Disk).await
        }))
        .await
    }

    /// Mounts the disk a filesystem pause kept ([`Runtime::stop_keep_disk`])
    /// at its usual place, so that its files can be read (a snapshot's
    /// layer, from [`Runtime::upper_dir`]) while the sandbox stays stopped:
    /// nothing runs on it. [`Runtime::stop_keep_disk`] unmounts it again.
    /// Fails with [`RuntimeError::NoKeptDisk`] if the id has no kept disk;
    /// a disk mounted already is left as it is. The image is checked as for
    /// a resume.
    pub async fn mount_kept_disk(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let this = self.clone();
        let id = id.to_owned();
        join(tokio::spawn(async move {
            let _guard = this.inner.locks.lock(&id).await;
            let paths = this.paths(&id);
            if !paths.disk_image.is_file() {
                return Err(RuntimeError::NoKeptDisk { id });
            }
            if paths.upper.is_dir() {
                return Ok(());
            }
            let tools = this.inner.tools.clone();
            blocking(move || {
                match std::fs::DirBuilder::new().mode(0o700).create(&paths.disk) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(RuntimeError::io(
                            format!("create {}", paths.disk.display()),
                            e,
                        ));
                    }
                }
                disk::mount_kept(&paths.disk_image, &paths.disk, &tools)
            })
            .await
        }))
        .await
    }

    /// Removes sandbox `id` from the host, under the id's lock: kills and
    /// deletes its container (`runc delete --force`: every process, the
    /// cgroups, the memory), removes its network, unmounts everything in
    /// its directory (its overlay and its disk, which frees the loop
    /// device), then deletes the directory — all of it, or with
    /// [`Keep::Disk`] all but `disk.img`, which must exist.
    pub(crate) async fn teardown(&self, id: &str, keep: Keep) -> Result<(), RuntimeError> {
        let paths = self.paths(id);
        if keep == Keep::Disk && !paths.disk_image.is_file() {
            return Err(RuntimeError::NoKeptDisk { id: id.to_owned() });
        }
        self.inner.runc.delete_force(id).await?;
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
            this.inner.cgroups.remove(&cgroups_path);
            if let Some(path) = mounts::unmount_all_under(&paths.dir)? {
                return Err(match keep {
                    Keep::Nothing => RuntimeError::StillMounted { id, path },
                    Keep::Disk => RuntimeError::DiskInUse {
                        id,
                        detail: format!("{} is still mounted", path.display()),
                    },
                });
            }
            // Unmounting the disk lets its loop device go (autoclear) when
            // the last reference to its file system is dropped, which can
            // come after the unmount returns: under concurrent teardowns a
            // device is seen still bound for a few milliseconds. Wait for
            // that (not detaching it by force, with a warning, at once);
            // detach one still bound after the timeout.
            if !disk::wait_loops_released(&paths.dir, LOOP_RELEASE_TIMEOUT) {
                disk::detach_loops_under(&paths.dir);
            }
            match keep {
                Keep::Nothing => remove_dir_if_exists(&paths.dir)?,
                Keep::Disk => remove_all_but(&paths.dir, &paths.disk_image)?,
            }
            // runc removes its state on delete; this covers a crash between
            // runc creating the directory and writing its state.
            remove_dir_if_exists(&runc_state)
        })
        .await
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("remove {}", dir.display()), e)),
    }
}

/// Removes everything in `dir` but `keep`.
pub(crate) fn remove_all_but(dir: &Path, keep: &Path) -> Result<(), RuntimeError> {
    let entries = std::fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let path = entry.path();
        if path == keep {
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
            Err(e) => return Err(RuntimeError::io(format!("remove {}", path.display()), e)),
        }
    }
    Ok(())
}
