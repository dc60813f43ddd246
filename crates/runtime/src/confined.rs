//! Host-side writes into a tree that a sandbox (or its image) controls.
//!
//! A sandbox's root file system is built from its template's layers — made
//! from images and build steps that anyone with an API key chooses — and
//! from its own writable layer. Any name in it may be a symlink, absolute or
//! relative, pointing anywhere; resolved by the host's kernel from the
//! host's root, `rootfs/etc/hosts` could be `/etc/shadow` of the host.
//!
//! Every host-side access to such a tree goes through here: paths are
//! resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)` from a descriptor of the tree's root, so `..` and
//! symlinks (absolute ones included) resolve as they would inside the
//! sandbox and can never leave the tree or cross into another mount; files
//! are replaced by writing a new file next to them and renaming it over the
//! name, so whatever was at the name (a symlink, a FIFO, a hard link to
//! another file) is never opened, only unlinked.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::RuntimeError;

/// How paths inside a sandbox's tree are resolved.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Opens `root` itself: a real directory (not a symlink to one).
fn open_root(root: &Path) -> Result<OwnedFd, RuntimeError> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| RuntimeError::io(format!("open {}", root.display()), e.into()))
}

/// Opens directory `dir` (relative to the tree's root, resolved inside it);
/// `None` if it does not exist or is not a directory.
fn open_dir_in(
    root: &OwnedFd,
    root_path: &Path,
    dir: &str,
) -> Result<Option<OwnedFd>, RuntimeError> {
    match rustix::fs::openat2(
        root,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(RuntimeError::io(
            format!("open /{dir} in {}", root_path.display()),
            e.into(),
        )),
    }
}

/// Replaces (or creates) each file `dir/name` of `files` inside the tree
/// rooted at `root` with its data, owned by root with `mode`. `dir` is
/// resolved inside the tree (once, for all the files); each `name` is a
/// plain file name. Whatever was at `dir/name` is replaced without being
/// opened. Returns `false`, writing nothing, when `dir` does not exist in
/// the tree.
pub(crate) fn replace_files(
    root: &Path,
    dir: &str,
    files: &[(&str, &[u8])],
    mode: u32,
) -> Result<bool, RuntimeError> {
    let root_fd = open_root(root)?;
    let Some(dir_fd) = open_dir_in(&root_fd, root, dir)? else {
        return Ok(false);
    };
    for (name, data) in files {
        let what = || format!("/{dir}/{name} in {}", root.display());
        replace_in(&dir_fd, name, data, mode)
            .map_err(|e| RuntimeError::io(format!("write {}", what()), e))?;
    }
    Ok(true)
}

/// [`replace_files`] of one file in the open directory `dir_fd`.
fn replace_in(dir_fd: &OwnedFd, name: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
    debug_assert!(!name.contains('/') && name != "." && name != "..");
    let temp = format!(".{name}.hutch-new");
    let create = || {
        rustix::fs::openat(
            dir_fd,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
    };
    let file = match create() {
        Err(Errno::EXIST) => {
            // Left by an interrupted write, or planted: remove the name
            // (never following it) and try once more.
            rustix::fs::unlinkat(dir_fd, temp.as_str(), rustix::fs::AtFlags::empty())?;
            create()
        }
        other => other,
    }?;
    let written = (|| {
        rustix::fs::fchown(
            &file,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
        )?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
        let mut f = std::fs::File::from(file);
        f.write_all(data)?;
        rustix::fs::renameat(dir_fd, temp.as_str(), dir_fd, name)?;
        Ok::<_, std::io::Error>(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir_fd, temp.as_str(), rustix::fs::AtFlags::empty());
    }
    written
}

/// Whether `dir` (relative to the tree's root, resolved inside it) is a
/// directory.
pub(crate) fn is_dir(root: &Path, dir: &str) -> bool {
    open_root(root)
        .ok()
        .and_then(|fd| open_dir_in(&fd, root, dir).ok().flatten())
        .is_some()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use rustix::fs::CWD;

    use super::*;

    fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        (tmp, root)
    }

    #[test]
    fn writes_a_new_file_with_its_mode() {
        let (_tmp, root) = tree();
        assert!(replace_files(&root, "etc", &[("hosts", b"127.0.0.1 x\n")], 0o644).unwrap());
        let p = root.join("etc/hosts");
        assert_eq!(std::fs::read(&p).unwrap(), b"127.0.0.1 x\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        assert!(!root.join("etc/.hosts.hutch-new").exists());
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_tree() {
        let (tmp, root) = tree();
        // A victim outside the tree, named by an absolute and a relative
        // symlink in the tree.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "host file\n").unwrap();
        symlink(&victim, root.join("etc/hosts")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        symlink(tmp.path(), root.join("dirlink")).unwrap();
        symlink("../../..", root.join("etc/up")).unwrap();

        assert!(replace_files(&root, "etc", &[("hosts", b"new\n")], 0o644).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
        assert!(root.join("etc/hosts").symlink_metadata().unwrap().is_file());

        // A directory given through a symlink to a host path resolves to the
        // tree's own path of that name (absent here): nothing is written.
        assert!(!replace_files(&root, "dirlink", &[("victim", b"x")], 0o644).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
        // `..` cannot climb out either: etc/up/etc is the tree's own etc.
        assert!(replace_files(&root, "etc/up/etc", &[("hostname", b"h\n")], 0o644).unwrap());
        assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"h\n");
    }

    #[test]
    fn a_fifo_or_hard_link_at_the_name_is_replaced_not_opened() {
        let (tmp, root) = tree();
        rustix::fs::mknodat(
            CWD,
            root.join("etc/resolv.conf"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        // Would block forever if opened for writing.
        assert!(
            replace_files(
                &root,
                "etc",
                &[("resolv.conf", b"nameserver 1.1.1.1\n")],
                0o644
            )
            .unwrap()
        );
        assert!(root.join("etc/resolv.conf").metadata().unwrap().is_file());

        let other = tmp.path().join("other");
        std::fs::write(&other, "untouched").unwrap();
        std::fs::hard_link(&other, root.join("etc/hostname")).unwrap();
        assert!(replace_files(&root, "etc", &[("hostname", b"h\n")], 0o644).unwrap());
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "untouched");
    }

    #[test]
    fn a_planted_temporary_name_is_not_followed() {
        let (tmp, root) = tree();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "host file\n").unwrap();
        symlink(&victim, root.join("etc/.hosts.hutch-new")).unwrap();
        assert!(replace_files(&root, "etc", &[("hosts", b"new\n")], 0o644).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
        assert_eq!(std::fs::read(root.join("etc/hosts")).unwrap(), b"new\n");
    }

    #[test]
    fn missing_directory_writes_nothing_and_root_must_be_real() {
        let (tmp, root) = tree();
        assert!(!replace_files(&root, "nope", &[("x", b"x")], 0o644).unwrap());
        std::fs::write(root.join("file"), "").unwrap();
        assert!(!replace_files(&root, "file", &[("x", b"x")], 0o644).unwrap());
        assert!(is_dir(&root, "etc"));
        assert!(!is_dir(&root, "file"));
        let link = tmp.path().join("rootlink");
        symlink(&root, &link).unwrap();
        assert!(replace_files(&link, "etc", &[("x", b"x")], 0o644).is_err());
    }
}
