//! Extracting one layer tar into a directory laid out the way overlayfs wants a lower layer.
//!
//! * `.wh.<name>` becomes a character device 0:0 called `<name>` (an overlayfs whiteout);
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory and is not written.
//! * Paths are confined to the layer directory: leading `/` is dropped, `..` cannot climb above
//!   the root, and symlinks met while walking to an entry's parent are resolved *inside* the
//!   layer directory (as if it were `/`), never on the host. The entry itself is never
//!   followed: whatever is in its place is removed first.
//! * Device nodes are not extracted, but for character devices 0:0 (whiteouts written as
//!   such): a sandbox's `/dev` is a file system of its own, and its device cgroup would refuse
//!   to open them anyway — except `/dev/net/tun`, which runc's default rules let through and
//!   which a layer must not hand to a sandbox. FIFOs are kept.
//! * What a layer may unpack to is bounded by a byte budget (see [`unpack_layer`]); names or
//!   link targets holding a NUL byte are refused.
//! * Ownership (numeric), permission bits including setuid/setgid/sticky, mtimes and xattrs
//!   are kept. A directory's metadata is applied after everything else (so creating its
//!   children does not disturb its mtime), taken from the last entry naming it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};

/// Why extraction stopped.
#[derive(Debug)]
pub(crate) enum ExtractError {
    /// Reading the layer stream failed: bad compression, bad tar, truncation.
    Read(io::Error),
    /// The tar is well-formed but says something impossible (e.g. a hard link to nothing).
    Bad(String),
    /// The layer unpacks to more than the byte budget it was given.
    TooLarge,
    /// Writing into the staging directory failed.
    Write {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

type Result<T> = std::result::Result<T, ExtractError>;

fn write_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |cause| ExtractError::Write {
        action,
        path: path.to_owned(),
        cause,
    }
}

fn rustix_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> ExtractError + 'a {
    move |errno| ExtractError::Write {
        action,
        path: path.to_owned(),
        cause: errno.into(),
    }
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Metadata of an entry, as the tar (and its PAX records) say.
#[derive(Clone, Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Extracts the tar stream `reader` into `root` (an existing, empty directory). Returns the
/// reader, positioned after the tar's end-of-archive marker (or at EOF if it had none), and
/// the stream offset where the last entry's data (padded to a 512-byte block) ends: a reader
/// further than that read an end-of-archive block, one exactly there hit EOF instead.
///
/// `max_bytes` bounds what the layer may unpack to: an entry whose data would end past that
/// offset of the tar stream, or file data (sparse files counted at their full size) adding up
/// to more, stops extraction with [`ExtractError::TooLarge`] before it is written.
pub(crate) fn unpack_layer<R: Read>(reader: R, root: &Path, max_bytes: u64) -> Result<(R, u64)> {
    let mut archive = tar::Archive::new(reader);
    let mut dirs: HashMap<PathBuf, Meta> = HashMap::new();
    let mut end = 0u64;
    let mut budget = max_bytes;
    {
        let entries = archive.entries().map_err(ExtractError::Read)?;
        for entry in entries {
            let mut entry = entry.map_err(ExtractError::Read)?;
            end = entry
                .raw_file_position()
                .saturating_add(entry.size().div_ceil(512) * 512);
            if end > max_bytes {
                return Err(ExtractError::TooLarge);
            }
            unpack_entry(&mut entry, root, &mut dirs, &mut budget)?;
        }
    }
    // Deepest first; order does not matter for correctness but keeps it predictable.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, meta) in dirs {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => apply_meta_path(&path, &meta, false)?,
            // Replaced by a later entry, or removed by a whiteout; nothing to do.
            _ => {}
        }
    }
    Ok((archive.into_inner(), end))
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
    dirs: &mut HashMap<PathBuf, Meta>,
    budget: &mut u64,
) -> Result<()> {
    let kind = entry.header().entry_type();
    // A NUL cannot be part of a file name; a PAX path or link target holding one is forged.
    if entry.path_bytes().contains(&0) || entry.link_name_bytes().is_some_and(|l| l.contains(&0)) {
        return Err(ExtractError::Bad(format!(
            "entry {:?} has a NUL byte in its name or link target",
            String::from_utf8_lossy(&entry.path_bytes())
        )));
    }
    let comps = normalize(&entry.path_bytes());
    let meta = read_meta(entry)?;

    let Some((name, parents)) = comps.split_last() else {
        // The layer root itself ("./" or "/").
        if kind.is_dir() {
            set_xattrs_path(root, &meta.xattrs, false)?;
            dirs.insert(root.to_owned(), meta);
        }
        return Ok(());
    };

    let name_bytes = name.as_bytes();
    if name_bytes.starts_with(WHITEOUT_PREFIX) {
        let parent = secure_dir(root, parents)?;
        if name_bytes == OPAQUE_MARKER {
            return rustix::fs::lsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(rustix_err("set the opaque xattr on", &parent));
        }
        if name_bytes.starts_with(b".wh..wh.") {
            // Other aufs bookkeeping files (.wh..wh.plnk, .wh..wh.aufs): not content.
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&name_bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(ExtractError::Bad(format!(
                "whiteout entry {:?} names no file",
                String::from_utf8_lossy(&entry.path_bytes())
            )));
        }
        let path = parent.join(hidden);
        remove_existing(&path)?;
        rustix::fs::mknodat(CWD, &path, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(rustix_err("create the whiteout device", &path))?;
        return rustix::fs::chownat(
            CWD,
            &path,
            uid(meta.uid),
            gid(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(rustix_err("set the owner of", &path));
    }

    let parent = secure_dir(root, parents)?;
    let path = parent.join(name);

    use tar::EntryType as T;
    match kind {
        T::Directory => {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    remove_existing(&path)?;
                    fs::create_dir(&path).map_err(write_err("create directory", &path))?;
                }
            }
            set_xattrs_path(&path, &meta.xattrs, false)?;
            dirs.insert(path, meta);
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            remove_existing(&path)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(o_nofollow())
                .open(&path)
                .map_err(write_err("create file", &path))?;
            copy_data(entry, &mut file, &path, budget)?;
            rustix::fs::fchown(&file, uid(meta.uid), gid(meta.gid))
                .map_err(rustix_err("set the owner of", &path))?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
                .map_err(rustix_err("set the mode of", &path))?;
            for (key, value) in &meta.xattrs {
                rustix::fs::fsetxattr(&file, key.as_os_str(), value, XattrFlags::empty())
                    .map_err(rustix_err("set an xattr on", &path))?;
            }
            rustix::fs::futimens(&file, &times(meta.mtime))
                .map_err(rustix_err("set the mtime of", &path))?;
        }
        T::Symlink => {
            let Some(target) = entry.link_name_bytes() else {
                return Err(ExtractError::Bad(format!(
                    "symlink {:?} has no target",
                    String::from_utf8_lossy(&entry.path_bytes())
                )));
            };
            let target = OsStr::from_bytes(&target).to_owned();
            remove_existing(&path)?;
            std::os::unix::fs::symlink(&target, &path)
                .map_err(write_err("create symlink", &path))?;
            apply_meta_path(&path, &meta, true)?;
        }
        T::Link => {
            let Some(target) = entry.link_name_bytes() else {
                return Err(ExtractError::Bad(format!(
                    "hard link {:?} has no target",
                    String::from_utf8_lossy(&entry.path_bytes())
                )));
            };
            let tcomps = normalize(&target);
            let Some((tname, tparents)) = tcomps.split_last() else {
                return Err(ExtractError::Bad(format!(
                    "hard link {:?} points at the layer root",
                    String::from_utf8_lossy(&entry.path_bytes())
                )));
            };
            let tpath = secure_existing_dir(root, tparents)
                .map(|d| d.join(tname))
                .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
                .ok_or_else(|| {
                    ExtractError::Bad(format!(
                        "hard link {:?} points at {:?}, which is not an earlier file of the layer",
                        String::from_utf8_lossy(&entry.path_bytes()),
                        String::from_utf8_lossy(&target)
                    ))
                })?;
            if tpath == path {
                return Ok(());
            }
            remove_existing(&path)?;
            fs::hard_link(&tpath, &path).map_err(write_err("create hard link", &path))?;
        }
        T::Char | T::Block | T::Fifo => {
            let (file_type, dev) = match kind {
                T::Fifo => (FileType::Fifo, 0),
                _ => {
                    let header = entry.header();
                    let major = header
                        .device_major()
                        .map_err(ExtractError::Read)?
                        .unwrap_or(0);
                    let minor = header
                        .device_minor()
                        .map_err(ExtractError::Read)?
                        .unwrap_or(0);
                    if kind != T::Char || (major, minor) != (0, 0) {
                        tracing::debug!(
                            path = %String::from_utf8_lossy(&entry.path_bytes()),
                            major,
                            minor,
                            "not extracting a device node"
                        );
                        return Ok(());
                    }
                    (FileType::CharacterDevice, rustix::fs::makedev(major, minor))
                }
            };
            remove_existing(&path)?;
            rustix::fs::mknodat(CWD, &path, file_type, Mode::empty(), dev)
                .map_err(rustix_err("create device node", &path))?;
            set_xattrs_path(&path, &meta.xattrs, false)?;
            apply_meta_path(&path, &meta, false)?;
        }
        // PAX and GNU long-name records are consumed by the tar reader; anything else
        // (global headers, unknown types) carries no file.
        _ => {}
    }
    Ok(())
}

/// O_NOFOLLOW, so creating a file never writes through a symlink.
fn o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Copies an entry's data into `file`, taking what it writes from `budget`.
fn copy_data<R: Read>(entry: &mut R, file: &mut File, path: &Path, budget: &mut u64) -> Result<()> {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExtractError::Read(e)),
        };
        *budget = budget.checked_sub(n as u64).ok_or(ExtractError::TooLarge)?;
        file.write_all(&buf[..n])
            .map_err(write_err("write file", path))?;
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
    let header = entry.header();
    let mode = header.mode().map_err(ExtractError::Read)? & 0o7777;
    let mut uid = header.uid().map_err(ExtractError::Read)?;
    let mut gid = header.gid().map_err(ExtractError::Read)?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(header.mtime().map_err(ExtractError::Read)?).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(ExtractError::Read)? {
        for ext in pax {
            let ext = ext.map_err(ExtractError::Read)?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if allowed_xattr(name) {
                    xattrs.push((OsStr::from_bytes(name).to_owned(), value.to_vec()));
                }
            } else if key == b"uid" {
                uid = parse_pax_u64(value, "uid")?;
            } else if key == b"gid" {
                gid = parse_pax_u64(value, "gid")?;
            } else if key == b"mtime" {
                mtime = parse_pax_time(value)?;
            }
        }
    }
    let to_id = |v: u64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| ExtractError::Bad(format!("{what} {v} is out of range")))
    };
    Ok(Meta {
        mode,
        uid: to_id(uid, "uid")?,
        gid: to_id(gid, "gid")?,
        mtime,
        xattrs,
    })
}

/// Extended attributes from the tar that may be restored. overlayfs' own `trusted.overlay.*`
/// attributes other than `opaque` (redirects, metacopy, origin) could make the mounted
/// filesystem point elsewhere, so they are dropped.
fn allowed_xattr(name: &[u8]) -> bool {
    !name.is_empty() && (!name.starts_with(b"trusted.overlay.") || name == OPAQUE_XATTR.as_bytes())
}

fn parse_pax_u64(value: &[u8], what: &str) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ExtractError::Bad(format!(
                "PAX {what} {:?} is not a number",
                String::from_utf8_lossy(value)
            ))
        })
}

fn parse_pax_time(value: &[u8]) -> Result<Timespec> {
    let bad = || {
        ExtractError::Bad(format!(
            "PAX mtime {:?} is not a time",
            String::from_utf8_lossy(value)
        ))
    };
    let s = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().map_err(|_| bad())?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let mut tv_nsec: i64 = digits.parse().map_err(|_| bad())?;
    let mut tv_sec = tv_sec;
    if secs.starts_with('-') && tv_nsec > 0 {
        // "-1.5" means 1.5 s before the epoch.
        tv_sec -= 1;
        tv_nsec = 1_000_000_000 - tv_nsec;
    }
    Ok(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

fn uid(raw: u32) -> Option<Uid> {
    Some(Uid::from_raw(raw))
}

fn gid(raw: u32) -> Option<Gid> {
    Some(Gid::from_raw(raw))
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn set_xattrs_path(path: &Path, xattrs: &[(OsString, Vec<u8>)], is_symlink: bool) -> Result<()> {
    for (key, value) in xattrs {
        let res = rustix::fs::lsetxattr(path, key.as_os_str(), value, XattrFlags::empty());
        // Only trusted.* and security.* may be set on a symlink; others are refused by the
        // kernel. That is not worth failing an import over.
        if let Err(e) = res
            && !is_symlink
        {
            return Err(rustix_err("set an xattr on", path)(e));
        }
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid/setgid), then times, without following symlinks.
fn apply_meta_path(path: &Path, meta: &Meta, is_symlink: bool) -> Result<()> {
    rustix::fs::chownat(
        CWD,
        path,
        uid(meta.uid),
        gid(meta.gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(rustix_err("set the owner of", path))?;
    if is_symlink {
        set_xattrs_path(path, &meta.xattrs, true)?;
    } else {
        // Not a symlink (checked by the caller), so following is harmless.
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
            .map_err(write_err("set the mode of", path))?;
    }
    rustix::fs::utimensat(CWD, path, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(rustix_err("set the mtime of", path))
}

/// Removes whatever is at `path` (a file, symlink, device or whole directory tree) without
/// following symlinks.
fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(write_err("remove directory", path))
        }
        Ok(_) => fs::remove_file(path).map_err(write_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_err("inspect", path)(e)),
    }
}

/// Splits a tar path into normal components: empty and `.` parts are dropped, `..` removes
/// the previous component and is ignored at the top (so nothing climbs above the root), and a
/// leading `/` means nothing.
pub(crate) fn normalize(path: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(OsString::from_vec(part.to_vec())),
        }
    }
    out
}

/// Walks `comps` below `root`, creating missing directories (mode 0755) and replacing
/// non-directories in the way, and resolving symlinks as if `root` were `/`. Returns a path
/// below `root` made only of real directories.
fn secure_dir(root: &Path, comps: &[OsString]) -> Result<PathBuf> {
    walk(root, comps, true).map(|p| p.expect("walk with create always yields a path"))
}

/// Like [`secure_dir`] but creates nothing; `None` if some component is missing or not a
/// directory.
fn secure_existing_dir(root: &Path, comps: &[OsString]) -> Option<PathBuf> {
    walk(root, comps, false).ok().flatten()
}

fn walk(root: &Path, comps: &[OsString], create: bool) -> Result<Option<PathBuf>> {
    const MAX_LINKS: usize = 40;
    let mut resolved: Vec<OsString> = Vec::new();
    let mut todo: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
    let mut links = 0;
    let join = |resolved: &[OsString]| {
        let mut p = root.to_owned();
        p.extend(resolved);
        p
    };
    while let Some(comp) = todo.pop_front() {
        if comp.is_empty() || comp == "." {
            continue;
        }
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let here = join(&resolved).join(&comp);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.is_dir() => resolved.push(comp),
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ExtractError::Bad(format!(
                        "too many levels of symlinks resolving {}",
                        here.display()
                    )));
                }
                let target = fs::read_link(&here).map_err(write_err("read symlink", &here))?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    resolved.clear();
                }
                let mut next: std::collections::VecDeque<OsString> = target
                    .split(|b| *b == b'/')
                    .filter(|p| !p.is_empty())
                    .map(|p| OsString::from_vec(p.to_vec()))
                    .collect();
                next.extend(todo.drain(..));
                todo = next;
            }
            Ok(_) if create => {
                remove_existing(&here)?;
                make_dir(&here)?;
                resolved.push(comp);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                make_dir(&here)?;
                resolved.push(comp);
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(write_err("inspect", &here)(e)),
        }
    }
    Ok(Some(join(&resolved)))
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir(path).map_err(write_err("create directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(write_err("set the mode of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_confines_paths() {
        let n = |s: &str| {
            normalize(s.as_bytes())
                .into_iter()
                .map(|c| c.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(n("./a/b/"), ["a", "b"]);
        assert_eq!(n("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(n("../../x"), ["x"]);
        assert_eq!(n("a/../../b/./c"), ["b", "c"]);
        assert!(n("./").is_empty());
    }

    #[test]
    fn pax_time_parses_fractions() {
        let t = parse_pax_time(b"1700000000.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec as i64), (1_700_000_000, 250_000_000));
        let t = parse_pax_time(b"-1.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec as i64), (-2, 500_000_000));
        assert!(parse_pax_time(b"x").is_err());
    }
}
