//! Filesystem helpers shared by the `filesystem.Filesystem` service, the
//! watchers and `/files`: who a call acts for, how its paths resolve, what
//! an [`EntryInfo`] says, file metadata (xattrs) and error mapping.
//!
//! # Privileges
//!
//! The agent runs as root and performs every filesystem operation with
//! root's privileges, as E2B's agent does: a call made as user `alice` can
//! read, move or remove any file, and write anywhere. The calling user
//! decides two things only: who owns what a call creates (files and every
//! directory created on the way, chowned to the user's uid and primary gid),
//! and where relative paths and `~` point (the user's home). Sandboxes are
//! single-tenant, and the SDKs rely on this (reading root-owned files as the
//! default user is routine), so no per-user permission check is made.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use buffa::MessageField;
use connectrpc::ConnectError;
use hutch_env::{Accounts, EnvError};
use hutch_protocol::envd::filesystem::{EntryInfo, FileType};

use crate::Agent;

/// Prefix of the xattrs that hold a file's user metadata (E2B's namespace).
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";
/// Longest metadata key: the kernel limits xattr names to 255 bytes.
pub const MAX_METADATA_KEY_LEN: usize = 255 - METADATA_XATTR_PREFIX.len();
/// Largest metadata set on one file (names with prefix plus values), so it
/// fits in the one filesystem block ext4 keeps a file's xattrs in.
pub const MAX_METADATA_TOTAL_LEN: usize = 4096;

/// What went wrong, in terms both Connect codes and HTTP statuses express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsErrorKind {
    /// The path (or a user) does not exist.
    NotFound,
    /// The path exists and must not.
    AlreadyExists,
    /// The request makes no sense for this path (not a directory, a
    /// directory where a file is expected, a bad path).
    InvalidArgument,
    /// The kernel refused (read-only filesystem, immutable file, ...).
    PermissionDenied,
    /// No space or no inodes left (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// The user named by the call does not exist.
    UnknownUser,
    /// Anything else.
    Internal,
}

/// A filesystem error with a message meant for the caller.
#[derive(Debug, Clone)]
pub struct FsError {
    /// Its class.
    pub kind: FsErrorKind,
    /// What happened, naming the path.
    pub message: String,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FsError {}

impl FsError {
    /// An error of `kind`.
    pub fn new(kind: FsErrorKind, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            message: message.into(),
        }
    }

    /// Classifies an I/O error; `what` says what was being done
    /// ("reading /x").
    pub fn io(what: impl fmt::Display, e: &io::Error) -> FsError {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => FsErrorKind::NotFound,
            Some(libc::EEXIST | libc::ENOTEMPTY) => FsErrorKind::AlreadyExists,
            Some(
                libc::ENOTDIR
                | libc::EISDIR
                | libc::EINVAL
                | libc::ENAMETOOLONG
                | libc::ELOOP
                | libc::EXDEV,
            ) => FsErrorKind::InvalidArgument,
            Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY) => {
                FsErrorKind::PermissionDenied
            }
            Some(libc::ENOSPC | libc::EDQUOT) => FsErrorKind::NoSpace,
            _ => FsErrorKind::Internal,
        };
        FsError::new(kind, format!("{what}: {e}"))
    }

    /// The Connect error for this.
    pub fn to_connect(&self) -> ConnectError {
        let message = self.message.clone();
        match self.kind {
            FsErrorKind::NotFound => ConnectError::not_found(message),
            FsErrorKind::AlreadyExists => ConnectError::already_exists(message),
            FsErrorKind::InvalidArgument => ConnectError::invalid_argument(message),
            FsErrorKind::PermissionDenied => ConnectError::permission_denied(message),
            FsErrorKind::NoSpace => ConnectError::resource_exhausted(message),
            // As with process calls: a user that is not in /etc/passwd.
            FsErrorKind::UnknownUser => ConnectError::not_found(message),
            FsErrorKind::Internal => ConnectError::internal(message),
        }
    }

    /// The HTTP status for this (as E2B's `/files`: an unknown user is 401,
    /// no space is 507).
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.kind {
            FsErrorKind::NotFound => S::NOT_FOUND,
            FsErrorKind::AlreadyExists => S::CONFLICT,
            FsErrorKind::InvalidArgument => S::BAD_REQUEST,
            FsErrorKind::PermissionDenied => S::FORBIDDEN,
            FsErrorKind::NoSpace => S::INSUFFICIENT_STORAGE,
            FsErrorKind::UnknownUser => S::UNAUTHORIZED,
            FsErrorKind::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<FsError> for ConnectError {
    fn from(e: FsError) -> ConnectError {
        e.to_connect()
    }
}

/// Who a filesystem call acts for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Owner of what the call creates.
    pub uid: u32,
    /// Group of what the call creates (the user's primary group).
    pub gid: u32,
    /// Base of relative paths and `~`.
    pub home: String,
    /// Where an empty path points: the sandbox's or template's default
    /// working directory, else the home directory.
    pub default_dir: String,
    /// The sandbox's users and groups, to name owners.
    pub accounts: Accounts,
}

impl Agent {
    /// Resolves the user a filesystem call or transfer acts for: `user`
    /// when given, else the template's user, else the sandbox's default
    /// user (`/init`), else root — the same order processes use.
    pub fn caller(&self, user: Option<&str>) -> Result<Caller, FsError> {
        let accounts = Accounts::load(&self.accounts_root).map_err(|e| {
            FsError::new(
                FsErrorKind::Internal,
                format!("reading /etc/passwd and /etc/group: {e}"),
            )
        })?;
        let sandbox = self.sandbox_state();
        fn non_empty(s: Option<&str>) -> Option<&str> {
            s.filter(|s| !s.is_empty())
        }
        let spec = non_empty(user)
            .or(non_empty(self.boot.template_user.as_deref()))
            .or(non_empty(sandbox.default_user.as_deref()))
            .unwrap_or("root");
        let user = accounts.resolve_user(spec).map_err(|e| match e {
            EnvError::UnknownUser { .. } | EnvError::UnknownGroup { .. } => {
                FsError::new(FsErrorKind::UnknownUser, e.to_string())
            }
            _ => FsError::new(FsErrorKind::InvalidArgument, e.to_string()),
        })?;
        let default_dir = non_empty(sandbox.default_workdir.as_deref())
            .or(non_empty(self.boot.template_workdir.as_deref()))
            .map_or_else(|| user.home.clone(), str::to_owned);
        Ok(Caller {
            uid: user.uid,
            gid: user.gid,
            home: user.home,
            default_dir,
            accounts,
        })
    }
}

impl Caller {
    /// Resolves a path as E2B does: empty → the default directory, `~` and
    /// `~/x` → the home directory, relative → under the home directory.
    /// The result is absolute and lexically clean (no `.`, `..`, `//`).
    pub fn resolve(&self, raw: &str) -> Result<PathBuf, FsError> {
        resolve_path(raw, &self.home, &self.default_dir)
    }

    /// The user name of `uid`, or the number.
    pub fn user_name(&self, uid: u32) -> String {
        self.accounts
            .passwd
            .iter()
            .find(|e| e.uid == uid)
            .map_or_else(|| uid.to_string(), |e| e.name.clone())
    }

    /// The group name of `gid`, or the number.
    pub fn group_name(&self, gid: u32) -> String {
        self.accounts
            .group
            .iter()
            .find(|e| e.gid == gid)
            .map_or_else(|| gid.to_string(), |e| e.name.clone())
    }

    /// `mkdir -p` that chowns every directory it creates to the caller.
    /// Existing components may be symlinks to directories; a component that
    /// is something else is an `invalid_argument`.
    pub fn ensure_dirs(&self, dir: &Path) -> Result<(), FsError> {
        let mut current = PathBuf::new();
        for component in dir.components() {
            current.push(component);
            if matches!(component, Component::RootDir) {
                continue;
            }
            match std::fs::metadata(&current) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(FsError::new(
                        FsErrorKind::InvalidArgument,
                        format!("{} exists and is not a directory", current.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(FsError::io(format!("checking {}", current.display()), &e)),
            }
            match std::fs::DirBuilder::new().mode(0o755).create(&current) {
                Ok(()) => {}
                // Created concurrently: fine if it is a directory.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && current.is_dir() => continue,
                Err(e) => {
                    return Err(FsError::io(
                        format!("creating directory {}", current.display()),
                        &e,
                    ));
                }
            }
            std::os::unix::fs::lchown(&current, Some(self.uid), Some(self.gid)).map_err(|e| {
                FsError::io(format!("changing the owner of {}", current.display()), &e)
            })?;
        }
        Ok(())
    }

    /// The [`EntryInfo`] of `path` (not following a final symlink).
    pub fn entry_info(&self, path: &Path) -> Result<EntryInfo, FsError> {
        entry_info(path, self)
    }
}

/// See [`Caller::resolve`].
pub fn resolve_path(raw: &str, home: &str, default_dir: &str) -> Result<PathBuf, FsError> {
    let joined = if raw.is_empty() {
        PathBuf::from(default_dir)
    } else if let Some(rest) = raw.strip_prefix('~') {
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(FsError::new(
                FsErrorKind::InvalidArgument,
                format!(
                    "cannot expand {raw:?}: only `~` and `~/...` (the user's own home) are supported"
                ),
            ));
        }
        Path::new(home).join(rest.trim_start_matches('/'))
    } else if raw.starts_with('/') {
        PathBuf::from(raw)
    } else {
        Path::new(home).join(raw)
    };
    if joined.as_os_str().as_bytes().contains(&0) {
        return Err(FsError::new(
            FsErrorKind::InvalidArgument,
            format!("invalid path {raw:?}: paths cannot contain NUL bytes"),
        ));
    }
    // A home or default directory that is relative still lands under `/`.
    Ok(clean(&Path::new("/").join(joined)))
}

/// Lexical clean-up of an absolute path: drops `.`, resolves `..` against
/// the preceding component (never above `/`), removes duplicate slashes.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A path as a proto string.
pub fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The last component of `path` (`/` for the root), as E2B names entries.
pub fn base_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Builds the [`EntryInfo`] of `path` from `lstat`.
///
/// * `type`: `FILE_TYPE_SYMLINK` for a symlink (with `symlink_target`, the
///   fully resolved absolute target), else file or directory; other kinds
///   (sockets, devices, FIFOs) are `FILE_TYPE_UNSPECIFIED`.
/// * `mode`: the permission bits (`st_mode & 0o777`), of the target for a
///   symlink whose target exists — what E2B reports.
/// * `permissions`: Go's `FileMode.String()` of the entry itself, as E2B
///   sends it: `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx` for a symlink,
///   `dtrwxrwxrwx` for a sticky directory.
/// * `owner`/`group`: names from the sandbox's `/etc/passwd` and
///   `/etc/group`, the number when there is none.
/// * `metadata`: the `user.e2b.*` xattrs, prefix removed.
fn entry_info(path: &Path, caller: &Caller) -> Result<EntryInfo, FsError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        FsError::io(
            format!("{} does not exist or cannot be read", path.display()),
            &e,
        )
    })?;
    let file_type = meta.file_type();
    let mut mode = meta.mode() & 0o777;
    let (kind, symlink_target) = if file_type.is_symlink() {
        let target = match std::fs::canonicalize(path) {
            Ok(t) => {
                if let Ok(m) = std::fs::metadata(&t) {
                    mode = m.mode() & 0o777;
                }
                t
            }
            // Dangling or looping: the link's text, made absolute.
            Err(_) => match std::fs::read_link(path) {
                Ok(t) => clean(&path.parent().unwrap_or(Path::new("/")).join(t)),
                Err(_) => path.to_path_buf(),
            },
        };
        (FileType::FILE_TYPE_SYMLINK, Some(path_string(&target)))
    } else if file_type.is_dir() {
        (FileType::FILE_TYPE_DIRECTORY, None)
    } else if file_type.is_file() {
        (FileType::FILE_TYPE_FILE, None)
    } else {
        (FileType::FILE_TYPE_UNSPECIFIED, None)
    };
    let modified = meta.modified().ok().and_then(|t| {
        let (seconds, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i32));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                (s, n)
            }
        };
        (seconds != 0 || nanos != 0).then(|| buffa_types::google::protobuf::Timestamp {
            seconds,
            nanos,
            ..Default::default()
        })
    });
    Ok(EntryInfo {
        name: base_name(path),
        r#type: kind.into(),
        path: path_string(path),
        size: meta.size() as i64,
        mode,
        permissions: go_mode_string(meta.mode()),
        owner: caller.user_name(meta.uid()),
        group: caller.group_name(meta.gid()),
        modified_time: modified.map_or_else(MessageField::none, MessageField::some),
        symlink_target,
        metadata: read_metadata(path).into_iter().collect(),
        ..Default::default()
    })
}

/// Go's `os.FileMode.String()` for a Linux `st_mode`: type and special-bit
/// letters (`d`, `L`, `D`, `p`, `S`, `u`, `g`, `c`, `t`; `-` when none),
/// then `rwxrwxrwx` with `-` for bits not set.
pub fn go_mode_string(st_mode: u32) -> String {
    let mut out = String::with_capacity(12);
    match st_mode & libc::S_IFMT {
        libc::S_IFDIR => out.push('d'),
        libc::S_IFLNK => out.push('L'),
        libc::S_IFBLK => out.push('D'),
        libc::S_IFCHR => out.push('D'),
        libc::S_IFIFO => out.push('p'),
        libc::S_IFSOCK => out.push('S'),
        _ => {}
    }
    if st_mode & libc::S_ISUID != 0 {
        out.push('u');
    }
    if st_mode & libc::S_ISGID != 0 {
        out.push('g');
    }
    if st_mode & libc::S_IFMT == libc::S_IFCHR {
        out.push('c');
    }
    if st_mode & libc::S_ISVTX != 0 {
        out.push('t');
    }
    if out.is_empty() {
        out.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        out.push(if st_mode & (1 << (8 - i)) != 0 {
            c
        } else {
            '-'
        });
    }
    out
}

fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

/// The file's `user.e2b.*` xattrs as `(key, value)`, key without the
/// prefix, following symlinks. Best effort: a filesystem without xattrs,
/// a vanished file or a value that is not UTF-8 yields nothing for it.
pub fn read_metadata(path: &Path) -> Vec<(String, String)> {
    let Some(cpath) = c_path(path) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: `cpath` is NUL-terminated and `names` is a writable
        // buffer of the given length.
        let n = unsafe { libc::listxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && names.len() < 1 << 20
        {
            names.resize(names.len() * 4, 0);
            continue;
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0) {
        let Some(key) = name.strip_prefix(METADATA_XATTR_PREFIX.as_bytes()) else {
            continue;
        };
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 256];
        let got = loop {
            // SAFETY: both strings are NUL-terminated; `value` is a
            // writable buffer of the given length.
            let n = unsafe {
                libc::getxattr(
                    cpath.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            if n >= 0 {
                break Some(n as usize);
            }
            if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
                && value.len() < 1 << 20
            {
                value.resize(value.len() * 4, 0);
                continue;
            }
            break None;
        };
        if let Some(n) = got
            && let Ok(v) = String::from_utf8(value[..n].to_vec())
        {
            out.push((key.to_owned(), v));
        }
    }
    out.sort();
    out
}

/// Stores `metadata` as `user.e2b.<key>` xattrs on an open file.
pub fn write_metadata(
    fd: std::os::fd::BorrowedFd<'_>,
    metadata: &[(String, String)],
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    for (key, value) in metadata {
        let name = CString::new(format!("{METADATA_XATTR_PREFIX}{key}"))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `fd` is an open descriptor; `name` is NUL-terminated and
        // `value` is a readable buffer of the given length.
        let rc = unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Checks a metadata set as E2B does: keys non-empty, at most
/// [`MAX_METADATA_KEY_LEN`] bytes, keys and values printable ASCII, the
/// whole set at most [`MAX_METADATA_TOTAL_LEN`] bytes.
pub fn validate_metadata(metadata: &[(String, String)]) -> Result<(), String> {
    let printable = |s: &str| s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let mut total = 0;
    for (key, value) in metadata {
        if key.is_empty() {
            return Err("metadata key must not be empty".into());
        }
        if key.len() > MAX_METADATA_KEY_LEN {
            return Err(format!(
                "metadata key {key:?} exceeds {MAX_METADATA_KEY_LEN} bytes"
            ));
        }
        if !printable(key) {
            return Err(format!("metadata key {key:?} must be printable ASCII"));
        }
        if !printable(value) {
            return Err(format!(
                "metadata value for key {key:?} must be printable ASCII"
            ));
        }
        total += METADATA_XATTR_PREFIX.len() + key.len() + value.len();
    }
    if total > MAX_METADATA_TOTAL_LEN {
        return Err(format!(
            "total metadata size {total} exceeds {MAX_METADATA_TOTAL_LEN} bytes"
        ));
    }
    Ok(())
}

/// Whether a name is one of the temporary files uploads write before
/// renaming them into place (watchers leave them out).
pub fn is_upload_temp(name: &OsStr) -> bool {
    name.as_bytes().starts_with(UPLOAD_TEMP_PREFIX.as_bytes())
}

/// Name prefix of the temporary files of uploads.
pub const UPLOAD_TEMP_PREFIX: &str = ".hutch-upload-";

/// 64 random bits, for names nobody can predict.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is a writable buffer of the given length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return u64::from_ne_bytes(buf);
    }
    // No getrandom(2): time and a counter are unique enough for names.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_as_e2b_does() {
        let r = |p: &str| resolve_path(p, "/home/user", "/work").map(|p| path_string(&p));
        assert_eq!(r("").unwrap(), "/work");
        assert_eq!(r("~").unwrap(), "/home/user");
        assert_eq!(r("~/").unwrap(), "/home/user");
        assert_eq!(r("~/a/b").unwrap(), "/home/user/a/b");
        assert_eq!(r("a.txt").unwrap(), "/home/user/a.txt");
        assert_eq!(r("./a/../b").unwrap(), "/home/user/b");
        assert_eq!(r("../../../x").unwrap(), "/x");
        assert_eq!(r("/abs//p/./q/..").unwrap(), "/abs/p");
        assert_eq!(r("/").unwrap(), "/");
        assert_eq!(
            r("~other/x").unwrap_err().kind,
            FsErrorKind::InvalidArgument
        );
        assert_eq!(r("a\0b").unwrap_err().kind, FsErrorKind::InvalidArgument);
        // A relative home still gives absolute paths.
        assert_eq!(
            path_string(&resolve_path("x", "home", "home").unwrap()),
            "/home/x"
        );
    }

    #[test]
    fn mode_strings_match_go() {
        assert_eq!(go_mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(go_mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(go_mode_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(go_mode_string(libc::S_IFDIR | 0o1777), "dtrwxrwxrwx");
        assert_eq!(go_mode_string(libc::S_IFREG | 0o4755), "urwxr-xr-x");
        assert_eq!(go_mode_string(libc::S_IFCHR | 0o666), "Dcrw-rw-rw-");
        assert_eq!(go_mode_string(libc::S_IFIFO | 0o600), "prw-------");
        assert_eq!(go_mode_string(libc::S_IFSOCK | 0o755), "Srwxr-xr-x");
        assert_eq!(go_mode_string(libc::S_IFREG), "----------");
    }

    #[test]
    fn metadata_is_validated() {
        let m = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(validate_metadata(&m("author", "me")).is_ok());
        assert!(validate_metadata(&[]).is_ok());
        assert!(validate_metadata(&m("", "x")).is_err());
        assert!(validate_metadata(&m("k", "caf\u{e9}")).is_err());
        assert!(validate_metadata(&m("k", "a\nb")).is_err());
        assert!(validate_metadata(&m(&"k".repeat(MAX_METADATA_KEY_LEN + 1), "")).is_err());
        assert!(validate_metadata(&m("k", &"v".repeat(MAX_METADATA_TOTAL_LEN))).is_err());
    }

    #[test]
    fn upload_temps_are_recognised() {
        assert!(is_upload_temp(OsStr::new(".hutch-upload-0123456789abcdef")));
        assert!(!is_upload_temp(OsStr::new("hutch-upload-x")));
        assert!(!is_upload_temp(OsStr::new("file.txt")));
    }
}
