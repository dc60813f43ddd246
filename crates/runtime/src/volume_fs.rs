//! Host-side file operations on a volume's files (E2B's volume content
//! API): list, stat, make directories, read, write, change metadata,
//! remove.
//!
//! Sandboxes write a volume's tree, so any name in it may be a symlink
//! pointing anywhere. As in [`crate::confined`], every path is resolved
//! from a descriptor of the volume's root with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: symlinks resolve as they
//! would inside the volume and never leave it. What is read about a name
//! (stat) and what is removed never follows a final symlink; files are
//! opened non-blocking and checked to be regular files before any byte is
//! read or written, so a FIFO or a device cannot hang the server.
//!
//! Paths are the volume's: `/` is its root, relative paths are taken from
//! it, `.` and `..` are resolved lexically and never go above it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid};
use rustix::io::Errno;

/// How paths are resolved inside the volume.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Deepest listing.
pub const MAX_DEPTH: u32 = 10;

/// What went wrong, as the content API reports it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeFsError {
    /// Nothing at the path (or a parent is missing).
    #[error("path '{0}' not found")]
    NotFound(String),
    /// Something is at the path already.
    #[error("path '{0}' already exists")]
    Exists(String),
    /// The root cannot be removed.
    #[error("the volume's root cannot be removed")]
    Root,
    /// The request cannot apply to what is at the path.
    #[error("{0}")]
    Invalid(String),
    /// The volume is full.
    #[error("the volume is full")]
    NoSpace,
    /// Another failure.
    #[error("{0}")]
    Io(String),
}

impl VolumeFsError {
    fn of(path: &str, what: &str, e: Errno) -> VolumeFsError {
        match e {
            Errno::NOENT => VolumeFsError::NotFound(path.to_owned()),
            Errno::EXIST => VolumeFsError::Exists(path.to_owned()),
            Errno::NOSPC | Errno::DQUOT => VolumeFsError::NoSpace,
            Errno::NOTDIR => {
                VolumeFsError::Invalid(format!("a part of '{path}' is not a directory"))
            }
            Errno::ISDIR => VolumeFsError::Invalid(format!("'{path}' is a directory")),
            Errno::LOOP => VolumeFsError::Invalid(format!("'{path}' is a symlink")),
            Errno::NOTEMPTY => VolumeFsError::Invalid(format!("'{path}' is not empty")),
            e => VolumeFsError::Io(format!("{what} '{path}': {e}")),
        }
    }
}

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    /// Its name (`/` for the root).
    pub name: String,
    /// Its path in the volume (`/dir/a.txt`).
    pub path: String,
    /// `file`, `directory`, `symlink` or `unknown`.
    pub kind: &'static str,
    /// Bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Unix seconds.
    pub atime: i64,
    /// Unix seconds.
    pub mtime: i64,
    /// Unix seconds (the inode's change time).
    pub ctime: i64,
    /// A symlink's target.
    pub target: Option<String>,
}

/// A volume's files, opened at its root.
#[derive(Debug)]
pub struct VolumeFs {
    root: OwnedFd,
}

/// A path split into its components (no `.`, `..` resolved, never above
/// the root).
fn components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out
}

/// The canonical form of a volume path: `/a/b`.
pub fn normalize(path: &str) -> String {
    format!("/{}", components(path).join("/"))
}

impl VolumeFs {
    /// The files under `root` (a real directory).
    pub fn open(root: &Path) -> Result<VolumeFs, VolumeFsError> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| VolumeFsError::Io(format!("open {}: {e}", root.display())))?;
        Ok(VolumeFs { root })
    }

    /// Opens `rel` (components joined; `.` for the root) inside the root.
    fn open_in(&self, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let rel = if rel.is_empty() { "." } else { rel };
        rustix::fs::openat2(&self.root, rel, flags | OFlags::CLOEXEC, mode, RESOLVE)
    }

    /// The directory holding `parts`' last component, and that component.
    fn parent<'p>(
        &self,
        path: &str,
        parts: &[&'p str],
    ) -> Result<(OwnedFd, &'p str), VolumeFsError> {
        let (name, dirs) = parts.split_last().ok_or(VolumeFsError::Root)?;
        let dir = self
            .open_in(
                &dirs.join("/"),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| VolumeFsError::of(path, "open the directory of", e))?;
        Ok((dir, name))
    }

    /// What is at `path` (a final symlink is reported, not followed).
    pub fn stat(&self, path: &str) -> Result<VolumeEntry, VolumeFsError> {
        let parts = components(path);
        if parts.is_empty() {
            let st =
                rustix::fs::fstat(&self.root).map_err(|e| VolumeFsError::of("/", "stat", e))?;
            return Ok(entry("/".to_owned(), "/".to_owned(), &st, None));
        }
        let (dir, name) = self.parent(path, &parts)?;
        stat_in(&dir, name, &normalize(path))
    }

    /// The entries under directory `path`, `depth` levels deep (1: its
    /// children), each directory's children right after it.
    pub fn list(&self, path: &str, depth: u32) -> Result<Vec<VolumeEntry>, VolumeFsError> {
        if depth > MAX_DEPTH {
            return Err(VolumeFsError::Invalid(format!(
                "depth {depth} is above the maximum of {MAX_DEPTH}"
            )));
        }
        let depth = depth.max(1);
        let dir = self
            .open_in(
                &components(path).join("/"),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| VolumeFsError::of(path, "open", e))?;
        let mut out = Vec::new();
        list_into(dir, &normalize(path), depth, &mut out)?;
        Ok(out)
    }

    /// Makes directory `path` (mode `mode`, owned by `uid:gid`); with
    /// `parents`, the missing directories above it too (mode 0777) and an
    /// existing directory at `path` is no error (it is left as it is).
    pub fn make_dir(
        &self,
        path: &str,
        uid: u32,
        gid: u32,
        mode: u32,
        parents: bool,
    ) -> Result<VolumeEntry, VolumeFsError> {
        let parts = components(path);
        if parts.is_empty() {
            return Err(VolumeFsError::Exists("/".to_owned()));
        }
        if parents {
            self.make_parents(&parts, path, uid, gid)?;
        }
        self.make_one(&parts, path, uid, gid, mode, parents)?;
        self.stat(path)
    }

    /// Makes the missing directories above `parts`' last component (mode
    /// 0777, `uid:gid`).
    fn make_parents(
        &self,
        parts: &[&str],
        path: &str,
        uid: u32,
        gid: u32,
    ) -> Result<(), VolumeFsError> {
        for i in 1..parts.len() {
            self.make_one(&parts[..i], path, uid, gid, 0o777, true)?;
        }
        Ok(())
    }

    fn make_one(
        &self,
        parts: &[&str],
        path: &str,
        uid: u32,
        gid: u32,
        mode: u32,
        exists_ok: bool,
    ) -> Result<(), VolumeFsError> {
        let (dir, name) = self.parent(path, parts)?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode & 0o7777)) {
            Ok(()) => {}
            Err(Errno::EXIST) if exists_ok => {
                let st = rustix::fs::statat(&dir, name, AtFlags::empty())
                    .map_err(|e| VolumeFsError::of(path, "stat", e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    return Err(VolumeFsError::Invalid(format!(
                        "'/{}' is not a directory",
                        parts.join("/")
                    )));
                }
                return Ok(());
            }
            Err(e) => return Err(VolumeFsError::of(path, "make directory", e)),
        }
        let made = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| VolumeFsError::of(path, "open", e))?;
        own(&made, path, Some(uid), Some(gid), Some(mode))
    }

    /// Opens file `path` for reading: its size and the file.
    pub fn open_read(&self, path: &str) -> Result<(u64, File), VolumeFsError> {
        let fd = self
            .open_in(
                &components(path).join("/"),
                OFlags::RDONLY | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| VolumeFsError::of(path, "open", e))?;
        let size = regular_size(&fd, path)?;
        clear_nonblock(&fd, path)?;
        Ok((size, File::from(fd)))
    }

    /// Opens file `path` for writing from its start: with `force`, missing
    /// directories above it are made (mode 0777, `uid:gid`) and an existing
    /// file is truncated; without, it must not exist and its directory must.
    /// The caller writes, then calls [`VolumeFs::finish_write`].
    pub fn open_write(
        &self,
        path: &str,
        uid: u32,
        gid: u32,
        force: bool,
    ) -> Result<File, VolumeFsError> {
        let parts = components(path);
        if parts.is_empty() {
            return Err(VolumeFsError::Invalid("'/' is a directory".to_owned()));
        }
        if force {
            self.make_parents(&parts, path, uid, gid)?;
        }
        let (dir, name) = self.parent(path, &parts)?;
        let how = if force { OFlags::TRUNC } else { OFlags::EXCL };
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC
                | how,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            // A FIFO nobody reads.
            Errno::NXIO => VolumeFsError::Invalid(format!("'{path}' is not a regular file")),
            e => VolumeFsError::of(path, "open", e),
        })?;
        regular_size(&fd, path)?;
        clear_nonblock(&fd, path)?;
        Ok(File::from(fd))
    }

    /// Ends a write: the data on disk, then the owner and mode; what is at
    /// `path` now.
    pub fn finish_write(
        &self,
        file: File,
        path: &str,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<VolumeEntry, VolumeFsError> {
        file.sync_all().map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC) => VolumeFsError::NoSpace,
            _ => VolumeFsError::Io(format!("sync '{path}': {e}")),
        })?;
        own(&OwnedFd::from(file), path, Some(uid), Some(gid), Some(mode))?;
        self.stat(path)
    }

    /// Changes the owner and mode of what `path` names (a final symlink is
    /// followed, inside the volume); what is unset stays.
    pub fn set_metadata(
        &self,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<VolumeEntry, VolumeFsError> {
        let fd = self
            .open_in(
                &components(path).join("/"),
                OFlags::RDONLY | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| VolumeFsError::of(path, "open", e))?;
        own(&fd, path, uid, gid, mode)?;
        let st = rustix::fs::fstat(&fd).map_err(|e| VolumeFsError::of(path, "stat", e))?;
        let parts = components(path);
        let name = parts.last().copied().unwrap_or("/").to_owned();
        Ok(entry(name, normalize(path), &st, None))
    }

    /// Removes what `path` names, a directory with everything in it (a
    /// final symlink is removed, not followed).
    pub fn remove(&self, path: &str) -> Result<(), VolumeFsError> {
        let parts = components(path);
        let (dir, name) = self.parent(path, &parts)?;
        remove_at(&dir, name, path)
    }
}

fn entry(name: String, path: String, st: &rustix::fs::Stat, target: Option<String>) -> VolumeEntry {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        _ => "unknown",
    };
    VolumeEntry {
        name,
        path,
        kind,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o777,
        uid: st.st_uid,
        gid: st.st_gid,
        atime: st.st_atime,
        mtime: st.st_mtime,
        ctime: st.st_ctime,
        target,
    }
}

/// What `name` in `dir` is, not following a symlink.
fn stat_in(dir: &OwnedFd, name: &str, path: &str) -> Result<VolumeEntry, VolumeFsError> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| VolumeFsError::of(path, "stat", e))?;
    let target = (FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
        .then(|| rustix::fs::readlinkat(dir, name, Vec::new()).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    Ok(entry(name.to_owned(), path.to_owned(), &st, target))
}

fn list_into(
    dir: OwnedFd,
    path: &str,
    depth: u32,
    out: &mut Vec<VolumeEntry>,
) -> Result<(), VolumeFsError> {
    let mut names = child_names(&dir, path)?;
    names.sort();
    for name in names {
        let child = if path == "/" {
            format!("/{name}")
        } else {
            format!("{path}/{name}")
        };
        // Gone meanwhile: skipped.
        let Ok(e) = stat_in(&dir, &name, &child) else {
            continue;
        };
        let is_dir = e.kind == "directory";
        out.push(e);
        if is_dir
            && depth > 1
            && let Ok(sub) = rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        {
            list_into(sub, &child, depth - 1, out)?;
        }
    }
    Ok(())
}

/// The names in directory `dir` (of `path`), but `.` and `..`.
fn child_names(dir: &OwnedFd, path: &str) -> Result<Vec<String>, VolumeFsError> {
    Ok(rustix::fs::Dir::read_from(dir)
        .map_err(|e| VolumeFsError::of(path, "list", e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// The size of the regular file `fd`, or why it is not one.
fn regular_size(fd: &OwnedFd, path: &str) -> Result<u64, VolumeFsError> {
    let st = rustix::fs::fstat(fd).map_err(|e| VolumeFsError::of(path, "stat", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(VolumeFsError::Invalid(format!(
            "'{path}' is not a regular file"
        )));
    }
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

fn clear_nonblock(fd: &OwnedFd, path: &str) -> Result<(), VolumeFsError> {
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| VolumeFsError::of(path, "fcntl", e))?;
    rustix::fs::fcntl_setfl(fd, flags - OFlags::NONBLOCK)
        .map_err(|e| VolumeFsError::of(path, "fcntl", e))
}

/// Sets the mode, then the owner, of `fd`.
fn own(
    fd: &impl AsFd,
    path: &str,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
) -> Result<(), VolumeFsError> {
    if let Some(mode) = mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| VolumeFsError::of(path, "chmod", e))?;
    }
    if uid.is_some() || gid.is_some() {
        rustix::fs::fchown(fd, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
            .map_err(|e| VolumeFsError::of(path, "chown", e))?;
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively, never following a symlink.
fn remove_at(dir: &OwnedFd, name: &str, path: &str) -> Result<(), VolumeFsError> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| VolumeFsError::of(path, "stat", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| VolumeFsError::of(path, "remove", e));
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| VolumeFsError::of(path, "open", e))?;
    for child in child_names(&sub, path)? {
        match remove_at(&sub, &child, path) {
            Ok(()) | Err(VolumeFsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        .map_err(|e| VolumeFsError::of(path, "remove", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs() -> (tempfile::TempDir, VolumeFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = VolumeFs::open(dir.path()).unwrap();
        (dir, fs)
    }

    #[test]
    fn paths_never_leave_the_root() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("a/b"), "/a/b");
        assert_eq!(normalize("/a/./b/"), "/a/b");
        assert_eq!(normalize("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalize("/a/../../b"), "/b");
    }

    #[test]
    fn files_and_directories() {
        let (dir, fs) = fs();
        use std::io::{Read, Write};
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let made = fs.make_dir("/a/b", uid, gid, 0o750, true).unwrap();
        assert_eq!(
            (made.kind, made.mode, made.path.as_str()),
            ("directory", 0o750, "/a/b")
        );
        assert_eq!(
            fs.make_dir("/a/b", uid, gid, 0o755, false).unwrap_err(),
            VolumeFsError::Exists("/a/b".into())
        );
        assert!(matches!(
            fs.make_dir("/x/y", uid, gid, 0o755, false).unwrap_err(),
            VolumeFsError::NotFound(_)
        ));
        let mut f = fs.open_write("/a/b/f.txt", uid, gid, false).unwrap();
        f.write_all(b"hello").unwrap();
        let e = fs.finish_write(f, "/a/b/f.txt", uid, gid, 0o640).unwrap();
        assert_eq!((e.kind, e.size, e.mode), ("file", 5, 0o640));
        assert_eq!(
            fs.open_write("/a/b/f.txt", uid, gid, false).unwrap_err(),
            VolumeFsError::Exists("/a/b/f.txt".into())
        );
        let (size, mut r) = fs.open_read("a/b/f.txt").unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!((size, s.as_str()), (5, "hello"));
        let f = fs.open_write("/new/dir/g.txt", uid, gid, true).unwrap();
        fs.finish_write(f, "/new/dir/g.txt", uid, gid, 0o666)
            .unwrap();
        let listed: Vec<String> = fs
            .list("/", 3)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            listed,
            [
                "/a",
                "/a/b",
                "/a/b/f.txt",
                "/new",
                "/new/dir",
                "/new/dir/g.txt"
            ]
        );
        assert_eq!(fs.list("/", 1).unwrap().len(), 2);
        assert!(fs.list("/", 11).is_err());
        let e = fs
            .set_metadata("/a/b/f.txt", None, None, Some(0o600))
            .unwrap();
        assert_eq!(e.mode, 0o600);
        assert_eq!(fs.remove("/").unwrap_err(), VolumeFsError::Root);
        fs.remove("/a").unwrap();
        assert!(!dir.path().join("a").exists());
        assert!(matches!(
            fs.stat("/a").unwrap_err(),
            VolumeFsError::NotFound(_)
        ));
    }

    #[test]
    fn symlinks_stay_inside_and_special_files_are_refused() {
        let (dir, fs) = fs();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../etc", dir.path().join("up")).unwrap();
        let e = fs.stat("/abs").unwrap();
        assert_eq!(e.kind, "symlink");
        assert_eq!(e.target.as_deref(), outside.path().join("secret").to_str());
        // Resolved inside the volume: the host's file is not reached.
        assert!(matches!(
            fs.open_read("/abs").unwrap_err(),
            VolumeFsError::NotFound(_)
        ));
        assert!(matches!(
            fs.open_read("/up/passwd").unwrap_err(),
            VolumeFsError::NotFound(_)
        ));
        // Writing through a final symlink is refused; removing removes the link.
        let uid = rustix::process::geteuid().as_raw();
        assert!(fs.open_write("/abs", uid, uid, true).is_err());
        fs.remove("/abs").unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "host secret"
        );
        // A FIFO neither blocks nor is read.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(matches!(
            fs.open_read("/fifo").unwrap_err(),
            VolumeFsError::Invalid(_)
        ));
        assert!(matches!(
            fs.open_write("/fifo", uid, uid, true).unwrap_err(),
            VolumeFsError::Invalid(_)
        ));
    }
}
