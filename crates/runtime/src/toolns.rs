//! The mount namespace Hutch runs its host tools in: runc, `mkfs.ext4`,
//! `e2fsck`.
//!
//! # Why
//!
//! Every running sandbox holds three mounts on the host (its disk, its
//! overlay root, its network namespace). Tools that read the mount table —
//! runc parses `/proc/self/mountinfo` several times per command, `mkfs.ext4`
//! and `e2fsck` scan `/proc/mounts` to check their target is not mounted —
//! then cost more the more sandboxes run: at 1,000 sandboxes one read of
//! `mountinfo` takes ~15 ms and `mkfs.ext4` 28 ms instead of 5. And a new
//! mount namespace (which the container's is) starts as a copy of its
//! parent's whole table.
//!
//! # How
//!
//! At start the runtime makes one mount namespace for its tools (in a
//! short-lived thread that `unshare`s, held afterwards by a descriptor):
//! a copy of the host's mounts in which the state directory's own mount
//! point (`mounts::ensure_anchor`) is detached, taking every sandbox's
//! mounts with it — the files below the state directory (bundles, disk
//! images) are still there, as the underlying directory. Each tool is
//! started in it (`setns` between `fork` and `exec`), so what it sees does
//! not grow with the number of sandboxes, and nothing is copied or torn
//! down per command.
//!
//! A container's root and network namespace are mounted on the host, so
//! `runc run` cannot see them there: the runtime stages them for the
//! duration of the call. The stage directory (`<state_dir>.runc-view`) is
//! a shared mount on the host whose copy in the tools' namespace is its
//! slave, so a bind mount made under it on the host appears in the tools'
//! namespace at once; [`ToolNamespace::stage`] binds a sandbox's root and
//! network namespace at `<stage>/<id>/{root,netns}` (the paths its spec
//! names) and removes them when runc has returned.
//!
//! Where the state directory cannot be made a mount point of its own (an
//! older version's sandboxes still mounted below it), tools run in the
//! host's namespace and specs name the real paths.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountPropagationFlags, UnmountFlags};

use crate::error::{IoContext, RuntimeError};
use crate::mounts;

/// Where tools run, and how a sandbox is shown to them.
#[derive(Debug)]
pub(crate) struct ToolNamespace {
    /// The namespace; `None`: the host's.
    ns: Option<OwnedFd>,
    /// `<state_dir>.runc-view`.
    stage_dir: PathBuf,
}

/// A sandbox's root and network namespace as a tool sees them.
#[derive(Debug, Clone)]
pub(crate) struct ToolView {
    /// The sandbox's root.
    pub rootfs: PathBuf,
    /// Its network namespace file, if it has one.
    pub netns: Option<PathBuf>,
    /// Its volumes' directories, in the order of its spec.
    pub volumes: Vec<PathBuf>,
}

/// A sandbox staged for the tools' namespace (see [`ToolNamespace::stage`]);
/// unstaged on drop.
#[derive(Debug)]
pub(crate) struct Staged {
    dir: Option<PathBuf>,
}

impl ToolNamespace {
    /// Tools in the host's namespace (when the state directory is not a
    /// mount point of its own; and for tests of single tools).
    pub fn host(stage_dir: &Path) -> ToolNamespace {
        ToolNamespace {
            ns: None,
            stage_dir: stage_dir.to_path_buf(),
        }
    }

    /// Makes the tools' namespace: the host's mounts without those at or
    /// below `state_dir` (a mount point of its own), with `stage_dir`
    /// receiving the host's mounts below it. Leftovers of a crashed stage
    /// are removed first.
    pub fn new(state_dir: &Path, stage_dir: &Path) -> Result<ToolNamespace, RuntimeError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(stage_dir)
            .ctx(|| format!("create {}", stage_dir.display()))?;
        let stage_dir = stage_dir
            .canonicalize()
            .ctx(|| format!("resolve {}", stage_dir.display()))?;
        let mounted = mounts::mounts_under(&stage_dir)?;
        for m in mounted.iter().filter(|m| **m != stage_dir) {
            // Below the stage: a crashed `stage` (or an older layout's).
            let _ = rustix::mount::unmount(m, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        }
        if !mounted.contains(&stage_dir) {
            rustix::mount::mount_bind(&stage_dir, &stage_dir)
                .map_err(std::io::Error::from)
                .ctx(|| format!("bind-mount {} onto itself", stage_dir.display()))?;
        }
        // A peer group of its own, whatever the parent's propagation.
        for flags in [
            MountPropagationFlags::PRIVATE,
            MountPropagationFlags::SHARED,
        ] {
            rustix::mount::mount_change(&stage_dir, flags)
                .map_err(std::io::Error::from)
                .ctx(|| format!("set the propagation of {}", stage_dir.display()))?;
        }
        remove_entries(&stage_dir);

        let state_dir = state_dir.to_path_buf();
        let ns = std::thread::spawn(move || -> Result<OwnedFd, RuntimeError> {
            // This thread alone moves (CLONE_NEWNS implies unsharing the
            // file system context it shares with the process's other
            // threads).
            // SAFETY: CLONE_NEWNS does not unshare the file descriptor
            // table, the only flag `unshare_unsafe` warns about.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
                .map_err(std::io::Error::from)
                .ctx(|| "create the tools' mount namespace".to_owned())?;
            // Events from the host still arrive (on a host whose mounts are
            // shared), none go back; the stage becomes the host stage's
            // slave.
            rustix::mount::mount_change(
                "/",
                MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
            )
            .map_err(std::io::Error::from)
            .ctx(|| "make the tools' mounts slaves".to_owned())?;
            rustix::mount::unmount(&state_dir, UnmountFlags::DETACH)
                .map_err(std::io::Error::from)
                .ctx(|| format!("detach {} in the tools' namespace", state_dir.display()))?;
            let ns = File::open("/proc/thread-self/ns/mnt")
                .ctx(|| "open the tools' mount namespace".to_owned())?;
            Ok(ns.into())
        })
        .join()
        .map_err(|_| RuntimeError::Internal("the tools' namespace thread panicked".to_owned()))??;
        Ok(ToolNamespace {
            ns: Some(ns),
            stage_dir,
        })
    }

    /// What a tool sees of sandbox `id` whose root is mounted at `rootfs`,
    /// network namespace at `netns` and volumes at `volumes` on the host.
    pub fn view(
        &self,
        id: &str,
        rootfs: &Path,
        netns: Option<&Path>,
        volumes: &[PathBuf],
    ) -> ToolView {
        if self.ns.is_none() {
            return ToolView {
                rootfs: rootfs.to_path_buf(),
                netns: netns.map(Path::to_path_buf),
                volumes: volumes.to_vec(),
            };
        }
        let dir = self.stage_dir.join(id);
        ToolView {
            rootfs: dir.join("root"),
            netns: netns.map(|_| dir.join("netns")),
            volumes: (0..volumes.len())
                .map(|i| dir.join(format!("vol{i}")))
                .collect(),
        }
    }

    /// Shows sandbox `id`'s root (`rootfs`), network namespace (`netns`)
    /// and volumes to the tools' namespace at the paths of
    /// [`ToolNamespace::view`], until the returned guard drops.
    pub fn stage(
        &self,
        id: &str,
        rootfs: &Path,
        netns: Option<&Path>,
        volumes: &[PathBuf],
    ) -> Result<Staged, RuntimeError> {
        if self.ns.is_none() {
            return Ok(Staged { dir: None });
        }
        let dir = self.stage_dir.join(id);
        let view = self.view(id, rootfs, netns, volumes);
        let staged = Staged {
            dir: Some(dir.clone()),
        };
        // Leftovers of an interrupted stage of the same id go first.
        staged.clear();
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .ctx(|| format!("create {}", dir.display()))?;
        DirBuilder::new()
            .mode(0o755)
            .create(&view.rootfs)
            .ctx(|| format!("create {}", view.rootfs.display()))?;
        let mut binds = vec![(rootfs, view.rootfs.as_path())];
        if let (Some(host), Some(staged_ns)) = (netns, view.netns.as_deref()) {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(staged_ns)
                .ctx(|| format!("create {}", staged_ns.display()))?;
            binds.push((host, staged_ns));
        }
        for (host, staged_dir) in volumes.iter().zip(&view.volumes) {
            DirBuilder::new()
                .mode(0o700)
                .create(staged_dir)
                .ctx(|| format!("create {}", staged_dir.display()))?;
            binds.push((host, staged_dir));
        }
        for (from, to) in binds {
            rustix::mount::mount_bind(from, to)
                .map_err(std::io::Error::from)
                .ctx(|| format!("bind-mount {} on {}", from.display(), to.display()))?;
        }
        Ok(staged)
    }

    /// Makes `cmd` start in the tools' namespace.
    pub fn apply(&self, cmd: &mut std::process::Command) {
        if let Some(fd) = self.raw() {
            // SAFETY: `enter` makes one async-signal-safe system call on a
            // descriptor that lives as long as the runtime, which outlives
            // every command it spawns.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(cmd, move || enter(fd));
            }
        }
    }

    /// [`ToolNamespace::apply`] for a Tokio command.
    pub fn apply_async(&self, cmd: &mut tokio::process::Command) {
        if let Some(fd) = self.raw() {
            // SAFETY: as in `apply`.
            unsafe {
                cmd.pre_exec(move || enter(fd));
            }
        }
    }

    fn raw(&self) -> Option<RawFd> {
        self.ns.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Removes the stage's host mount point when nothing is staged below
    /// it (the server stops).
    pub fn release(&self) {
        if self.ns.is_none() {
            return;
        }
        if let Ok(under) = mounts::mounts_under(&self.stage_dir)
            && under.iter().all(|m| *m == self.stage_dir)
            && !under.is_empty()
        {
            let _ = rustix::mount::unmount(&self.stage_dir, UnmountFlags::NOFOLLOW);
        }
    }
}

/// Joins the mount namespace `fd` (in a forked child, before `exec`).
fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns(2) on a descriptor the parent keeps open; no memory is
    // touched.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNS) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Staged {
    fn clear(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let volumes: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("vol"))
            .collect();
        for name in ["root", "netns"]
            .into_iter()
            .chain(volumes.iter().map(String::as_str))
        {
            // Not mounted (a failed stage, a leftover) is fine.
            let _ = rustix::mount::unmount(
                dir.join(name),
                UnmountFlags::DETACH | UnmountFlags::NOFOLLOW,
            );
        }
        let _ = std::fs::remove_file(dir.join("netns"));
        let _ = std::fs::remove_dir(dir.join("root"));
        for name in &volumes {
            let _ = std::fs::remove_dir(dir.join(name));
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Removes what a crash left in the stage directory (after its mounts were
/// detached): empty directories and mount-point files only, never
/// recursively — a mount that could not be detached keeps its directory.
fn remove_entries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            Staged { dir: Some(path) }.clear();
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
