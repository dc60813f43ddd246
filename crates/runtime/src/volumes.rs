//! Volumes: file systems that outlive sandboxes, mounted into any number of
//! them.
//!
//! A volume is a sparse image file (`volumes_dir/<id>/disk.img`) formatted
//! as ext4 **with** a journal (its data must survive a host crash, unlike a
//! sandbox's disk), mounted once on the host through a loop device at
//! `volumes_dir/<id>/mnt` (`nosuid,nodev,noatime`, as sandbox disks). Its
//! size is its quota: a write past it fails with `ENOSPC`, in every sandbox
//! that mounts it, and the host's file system holds only the blocks written.
//! What sandboxes see is `mnt/data` (mode 0777, so that any user of any
//! template can write; there is no user namespace, so a uid is the same in
//! every sandbox), bound at the path a create asks for
//! ([`crate::SandboxSpec::volumes`]) with `nosuid,nodev`: a setuid file one
//! sandbox writes is inert in the others.
//!
//! The host mount stays while the volume exists, across server restarts
//! (a running sandbox's bind holds the same superblock: mounting the image
//! a second time would put two file systems on one image); after a host
//! reboot [`Runtime::mount_volume`] checks (`e2fsck -p`) and mounts it
//! again. [`Runtime::destroy_volume`] unmounts it and removes its files; the
//! caller makes sure no sandbox uses it any more.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::disk;
use crate::error::{IoContext, RuntimeError};
use crate::{Runtime, blocking, mounts, validate_id};

/// A volume mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeMount {
    /// The volume's id.
    pub volume_id: String,
    /// Where the sandbox sees it: an absolute path.
    pub destination: String,
}

/// The image file under a volume's directory.
const IMAGE: &str = "disk.img";
/// The host mount point under a volume's directory.
const MOUNT: &str = "mnt";
/// What sandboxes see, inside the mounted file system.
const DATA: &str = "data";

impl Runtime {
    fn volume_root(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        validate_id(id)?;
        Ok(self.inner.cfg.volumes_dir.join(id))
    }

    /// The directory holding volume `id`'s files on the host (what
    /// sandboxes see at their mount path); it exists only while the volume
    /// is mounted.
    pub fn volume_data(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self.volume_root(id)?.join(MOUNT).join(DATA))
    }

    /// Creates volume `id` of `size_mb` MiB and mounts it on the host.
    /// Nothing is left of it on error.
    pub async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), RuntimeError> {
        disk::check_size(size_mb).map_err(|reason| RuntimeError::InvalidSpec {
            id: id.to_owned(),
            reason: format!("volume size: {reason}"),
        })?;
        let root = self.volume_root(id)?;
        let this = self.clone();
        let id = id.to_owned();
        blocking(move || {
            let made = (|| {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&this.inner.cfg.volumes_dir)
                    .ctx(|| format!("create {}", this.inner.cfg.volumes_dir.display()))?;
                DirBuilder::new()
                    .mode(0o700)
                    .create(&root)
                    .ctx(|| format!("create {}", root.display()))?;
                let mnt = root.join(MOUNT);
                DirBuilder::new()
                    .mode(0o700)
                    .create(&mnt)
                    .ctx(|| format!("create {}", mnt.display()))?;
                disk::create_image(
                    &root.join(IMAGE),
                    &mnt,
                    size_mb,
                    disk::Journal::With,
                    &this.inner.tools,
                )?;
                let data = mnt.join(DATA);
                DirBuilder::new()
                    .mode(0o777)
                    .create(&data)
                    .ctx(|| format!("create {}", data.display()))?;
                // Not narrowed by the server's umask.
                std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))
                    .ctx(|| format!("chmod {}", data.display()))
            })();
            if let Err(e) = made {
                let _ = remove(&root);
                return Err(e);
            }
            tracing::debug!(volume = %id, size_mb, "volume created");
            Ok(())
        })
        .await
    }

    /// Mounts volume `id` on the host unless it is mounted (after a host
    /// reboot); checks its file system first.
    pub async fn mount_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let root = self.volume_root(id)?;
        let this = self.clone();
        blocking(move || {
            let mnt = root.join(MOUNT);
            if mounts::mounts_under(&mnt)?.contains(&mnt) {
                return Ok(());
            }
            disk::mount_kept(&root.join(IMAGE), &mnt, &this.inner.tools)
        })
        .await
    }

    /// Unmounts volume `id` and removes its files. No sandbox may use it.
    pub async fn destroy_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let root = self.volume_root(id)?;
        blocking(move || remove(&root)).await
    }

    /// The ids of the volumes on the host.
    pub async fn list_volumes(&self) -> Result<Vec<String>, RuntimeError> {
        let dir = self.inner.cfg.volumes_dir.clone();
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(RuntimeError::io(format!("read {}", dir.display()), e)),
            };
            Ok(entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| validate_id(name).is_ok())
                .collect())
        })
        .await
    }

    /// The host directories sandbox volumes are bound from, checked to be
    /// mounted volumes.
    pub(crate) fn volume_sources(
        &self,
        sandbox: &str,
        volumes: &[VolumeMount],
    ) -> Result<Vec<PathBuf>, RuntimeError> {
        volumes
            .iter()
            .map(|v| {
                let invalid = |reason: String| RuntimeError::InvalidSpec {
                    id: sandbox.to_owned(),
                    reason,
                };
                if !v.destination.starts_with('/') || v.destination == "/" {
                    return Err(invalid(format!(
                        "volume {} has no absolute mount path other than / ({:?})",
                        v.volume_id, v.destination
                    )));
                }
                let data = self.volume_data(&v.volume_id)?;
                if !data.is_dir() {
                    return Err(invalid(format!(
                        "volume {} is not mounted on the host",
                        v.volume_id
                    )));
                }
                Ok(data)
            })
            .collect()
    }
}

/// Unmounts what is mounted under a volume's directory (waiting for its
/// loop device to be released) and removes the directory.
fn remove(root: &Path) -> Result<(), RuntimeError> {
    if !root.exists() {
        return Ok(());
    }
    mounts::unmount_all_under(root)?;
    if !disk::wait_loops_released(root, std::time::Duration::from_secs(5)) {
        disk::detach_loops_under(root);
    }
    std::fs::remove_dir_all(root).ctx(|| format!("remove {}", root.display()))
}
