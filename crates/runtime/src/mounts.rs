//! Host-side mounts: the sandbox's overlay root and finding/removing mounts.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::{IoContext, RuntimeError};

/// Longest overlay option string passed to `mount(2)`: the kernel copies
/// at most one page of mount data (4096 bytes, including the final NUL).
const MAX_MOUNT_DATA: usize = 4000;

/// Characters overlayfs treats specially in its option string (`,` separates
/// options, `:` separates lower layers, `\` escapes).
fn has_overlay_special(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\'))
}

/// Checks that `path` can appear verbatim in an overlay option string.
pub(crate) fn check_overlay_safe(path: &Path, what: &str) -> Result<(), RuntimeError> {
    if has_overlay_special(path) {
        return Err(RuntimeError::InvalidConfig(format!(
            "{what} {} contains ',', ':' or '\\', which overlayfs options cannot hold",
            path.display()
        )));
    }
    Ok(())
}

/// Mounts an overlay at `target`.
///
/// `layers` are given base first, as templates store them; overlayfs wants
/// the topmost layer first in `lowerdir`, so they are reversed here. When
/// the option string would not fit in a page, or a layer path contains a
/// character overlayfs cannot take, the layers are opened and named through
/// `/proc/self/fd/N` instead (short and free of special characters; the
/// kernel resolves them when mounting, after which the descriptors are
/// closed).
pub(crate) fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let plain: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let needs_fds = layers
        .iter()
        .any(|l| has_overlay_special(l) || l.to_str().is_none());
    let options = |lower: &[String]| {
        format!(
            "lowerdir={},upperdir={},workdir={},index=off",
            lower.join(":"),
            upper.display(),
            work.display()
        )
    };
    let mut data = options(&plain);
    // Kept open until the mount call returns.
    let mut fds = Vec::new();
    if needs_fds || data.len() > MAX_MOUNT_DATA {
        let mut names = Vec::with_capacity(layers.len());
        for layer in layers.iter().rev() {
            let f = File::open(layer).ctx(|| format!("open layer {}", layer.display()))?;
            names.push(format!("/proc/self/fd/{}", f.as_raw_fd()));
            fds.push(f);
        }
        data = options(&names);
        if data.len() > MAX_MOUNT_DATA {
            return Err(RuntimeError::InvalidConfig(format!(
                "too many layers ({}) for one overlay mount",
                layers.len()
            )));
        }
    }
    let data = CString::new(data).map_err(|_| {
        RuntimeError::InvalidConfig("overlay options contain a NUL byte".to_owned())
    })?;
    let res = rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), &*data);
    drop(fds);
    res.map_err(std::io::Error::from)
        .ctx(|| format!("mount overlay at {}", target.display()))
}

/// Mount points at or below `dir`, deepest (most recently mounted) first.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx(|| "read /proc/self/mountinfo".to_owned())?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // mountinfo lists mounts in mount order; undo them in reverse.
    found.reverse();
    Ok(found)
}

/// Mount points of cgroup hierarchies (v1 controllers and named
/// hierarchies, and the v2 unified hierarchy).
pub(crate) fn cgroup_mountpoints() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let mountpoint = line.split(' ').nth(4)?;
            let (_, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            matches!(fstype, "cgroup" | "cgroup2")
                .then(|| PathBuf::from(unescape_mountinfo(mountpoint)))
        })
        .collect()
}

/// Decodes the octal escapes (`\040` for space, …) mountinfo uses.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes `dir` a mount point of its own — a private bind mount of itself —
/// so that everything mounted below it can be hidden from a mount namespace
/// in one `umount2(dir, MNT_DETACH)` (see [`crate::runc`]). Done only when
/// nothing is mounted at or below `dir` yet: a bind over existing mounts
/// would hide them from their own teardown. Returns whether `dir` is such a
/// mount point afterwards.
pub(crate) fn ensure_anchor(dir: &Path) -> Result<bool, RuntimeError> {
    // As mountinfo names it.
    let dir = &dir
        .canonicalize()
        .ctx(|| format!("resolve {}", dir.display()))?;
    let under = mounts_under(dir)?;
    if under.iter().any(|p| p == dir) {
        return Ok(true);
    }
    if !under.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            "sandboxes of an earlier version are mounted here; runc will see every host mount until they are gone and the server restarts"
        );
        return Ok(false);
    }
    rustix::mount::mount_bind(dir, dir)
        .map_err(std::io::Error::from)
        .ctx(|| format!("bind-mount {} onto itself", dir.display()))?;
    rustix::mount::mount_change(dir, rustix::mount::MountPropagationFlags::PRIVATE)
        .map_err(std::io::Error::from)
        .ctx(|| format!("make {} a private mount", dir.display()))?;
    Ok(true)
}

/// Undoes [`ensure_anchor`] when nothing else is mounted below `dir`;
/// whether `dir` is no mount point afterwards.
pub(crate) fn release_anchor(dir: &Path) -> Result<bool, RuntimeError> {
    let dir = &dir
        .canonicalize()
        .ctx(|| format!("resolve {}", dir.display()))?;
    let under = mounts_under(dir)?;
    if under.iter().any(|p| p != dir) {
        return Ok(false);
    }
    if under.is_empty() {
        return Ok(true);
    }
    rustix::mount::unmount(dir, UnmountFlags::NOFOLLOW)
        .map_err(std::io::Error::from)
        .ctx(|| format!("unmount {}", dir.display()))?;
    Ok(true)
}

/// Unmounts everything at or below `dir`: a plain unmount first, a lazy
/// detach if the mount is busy. Returns the first mount point that is still
/// mounted afterwards, if any.
pub(crate) fn unmount_all_under(dir: &Path) -> Result<Option<PathBuf>, RuntimeError> {
    for target in mounts_under(dir)? {
        match rustix::mount::unmount(&target, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!(path = %target.display(), "mount busy; detaching it lazily");
                if let Err(e) =
                    rustix::mount::unmount(&target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                {
                    tracing::warn!(path = %target.display(), error = %e, "lazy unmount failed");
                }
            }
            // Already gone (raced with another cleanup).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(e) => {
                tracing::warn!(path = %target.display(), error = %e, "unmount failed");
            }
        }
    }
    Ok(mounts_under(dir)?.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/trailing\\"), "/trailing\\");
    }

    #[test]
    fn detects_overlay_special_chars() {
        assert!(has_overlay_special(Path::new("/a:b")));
        assert!(has_overlay_special(Path::new("/a,b")));
        assert!(!has_overlay_special(Path::new("/data/layers/sha256-abc")));
        assert!(check_overlay_safe(Path::new("/x,y"), "state dir").is_err());
    }
}
