//! Writing the layers build steps produce, as OCI layer tars (uncompressed),
//! which the layer store then hashes and extracts like any imported layer.
//!
//! * [`export_upper`]: a `RUN` step's changes — the overlayfs upper
//!   directory of the build sandbox — with overlayfs whiteouts (character
//!   devices 0:0) turned into `.wh.<name>` entries and opaque directories
//!   into `.wh..wh..opq` entries, as the OCI image spec defines them.
//!   Mountpoints Hutch itself put into the sandbox are left out.
//! * [`LayerWriter`]: layers Hutch writes itself (`COPY`, `USER`,
//!   `WORKDIR`). Parent directories that already exist below are written
//!   with the metadata they have there, so adding a file to `/etc` does not
//!   change `/etc`'s owner or mode.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use hutch_image::LayerStore;

use crate::BuildError;
use crate::rootfs::{LayerStack, components, is_opaque, is_whiteout};

/// Paths inside a build sandbox that are mountpoints the runtime adds (the
/// agent's files, generated `/etc` files); never part of a layer.
const RUNTIME_MOUNTPOINTS: [&str; 5] = [
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/profile.d/00-hutch-path.sh",
    "run/hutch",
];

/// Writes the changes in `upper` as a layer tar to `out`. Returns whether
/// the layer changes anything (`false`: only directories that already
/// existed below, unchanged, e.g. the parents of runtime mountpoints).
pub fn export_upper(
    upper: &Path,
    lower: &LayerStack,
    out: &mut dyn Write,
) -> Result<bool, BuildError> {
    let mut tar = TarOut::new(out);
    let mut meaningful = false;
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack: Vec<String> = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| io_err("list", &dir, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| io_err("list", &dir, e))?;
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for entry in entries {
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| BuildError::Layer(format!("non-UTF-8 file name under /{rel}")))?;
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if RUNTIME_MOUNTPOINTS.contains(&path.as_str()) {
                continue;
            }
            let host = entry.path();
            let meta = std::fs::symlink_metadata(&host).map_err(|e| io_err("stat", &host, e))?;
            check_no_overlay_features(&host)?;
            if is_whiteout(&meta) {
                let wh = match path.rsplit_once('/') {
                    Some((parent, n)) => format!("{parent}/.wh.{n}"),
                    None => format!(".wh.{path}"),
                };
                tar.empty_file(&wh, 0o644, 0, 0, meta.mtime())?;
                meaningful = true;
                continue;
            }
            let xattrs = user_xattrs(&host)?;
            if meta.is_dir() {
                let existed = lower.lookup(&format!("/{path}")).is_some_and(|f| {
                    f.meta.is_dir()
                        && f.meta.mode() == meta.mode()
                        && f.meta.uid() == meta.uid()
                        && f.meta.gid() == meta.gid()
                });
                tar.dir(
                    &path,
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime(),
                    &xattrs,
                )?;
                if is_opaque(&host) {
                    tar.empty_file(&format!("{path}/.wh..wh..opq"), 0o644, 0, 0, meta.mtime())?;
                    meaningful = true;
                } else if !existed {
                    meaningful = true;
                }
                stack.push(path);
                continue;
            }
            meaningful = true;
            if meta.nlink() > 1 && !meta.is_dir() {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    tar.hard_link(&path, first, &meta)?;
                    continue;
                }
                links.insert(key, path.clone());
            }
            tar.node(&path, &host, &meta, &xattrs)?;
        }
    }
    tar.finish()?;
    Ok(meaningful)
}

/// Refuses upper directories using overlayfs features whose meaning cannot
/// be expressed in an OCI layer (redirected directories, metadata-only
/// copies). Hutch mounts with them off; this guards against a kernel
/// default changing under it.
/// Writes a layer tar with `write` into a temporary file under `scratch`
/// and, when `write` says it changes anything, adds it to `store`: its diff
/// id, or `None`. Blocking. Template builds store their steps' layers this
/// way, and the server its snapshots'.
pub fn store_layer(
    store: &LayerStore,
    scratch: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<bool, BuildError>,
) -> Result<Option<String>, BuildError> {
    let tmp = tempfile::NamedTempFile::new_in(scratch)
        .map_err(|e| BuildError::Io(format!("cannot create a temporary file: {e}")))?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    let changed = write(&mut out)?;
    out.flush()
        .map_err(|e| BuildError::Io(format!("cannot write the layer: {e}")))?;
    drop(out);
    if !changed {
        return Ok(None);
    }
    let mut file = tmp
        .reopen()
        .map_err(|e| BuildError::Io(format!("cannot reopen the layer: {e}")))?;
    store
        .add_layer_tar(&mut file)
        .map(Some)
        .map_err(|e| BuildError::Io(format!("cannot store the layer: {e}")))
}

fn check_no_overlay_features(path: &Path) -> Result<(), BuildError> {
    for name in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let mut buf = [0u8; 1];
        match rustix::fs::lgetxattr(path, name, &mut buf) {
            Ok(_) | Err(rustix::io::Errno::RANGE) => {
                return Err(BuildError::Layer(format!(
                    "{} uses overlayfs feature `{name}`, which a layer cannot express",
                    path.display()
                )));
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// The xattrs of `path` worth keeping in a layer: all but overlayfs's own.
fn user_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list xattrs of", path, e.into())),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value)
            .map_err(|e| io_err("read xattr of", path, e.into()))?;
        value.truncate(len);
        out.push((name, value));
    }
    Ok(out)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> BuildError {
    BuildError::Layer(format!("cannot {what} {}: {e}", path.display()))
}

/// A tar being written: the low-level entry writers both kinds of layers use.
struct TarOut<'a> {
    builder: tar::Builder<&'a mut dyn Write>,
}

impl<'a> TarOut<'a> {
    fn new(out: &'a mut dyn Write) -> TarOut<'a> {
        TarOut {
            builder: tar::Builder::new(out),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    fn pax(&mut self, xattrs: &[(String, Vec<u8>)]) -> Result<(), BuildError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (name, value) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            data.extend(pax_record(&key, value));
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeader").map_err(tar_err)?;
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, data.as_slice()).map_err(tar_err)
    }

    fn dir(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), BuildError> {
        self.pax(xattrs)?;
        let mut h = Self::header(tar::EntryType::Directory, mode, uid, gid, mtime);
        self.builder
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(tar_err)
    }

    fn empty_file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
    ) -> Result<(), BuildError> {
        self.file(path, mode, uid, gid, mtime, &[], &[][..])
    }

    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        xattrs: &[(String, Vec<u8>)],
        content: impl Read,
    ) -> Result<(), BuildError> {
        self.file_sized(path, mode, uid, gid, mtime, xattrs, None, content)
    }

    #[allow(clippy::too_many_arguments)]
    fn file_sized(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        xattrs: &[(String, Vec<u8>)],
        size: Option<u64>,
        mut content: impl Read,
    ) -> Result<(), BuildError> {
        self.pax(xattrs)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid, mtime);
        match size {
            Some(size) => {
                h.set_size(size);
                self.builder
                    .append_data(&mut h, path, content.take(size))
                    .map_err(tar_err)
            }
            None => {
                let mut buf = Vec::new();
                content.read_to_end(&mut buf).map_err(|e| {
                    BuildError::Layer(format!("cannot read content of {path}: {e}"))
                })?;
                h.set_size(buf.len() as u64);
                self.builder
                    .append_data(&mut h, path, buf.as_slice())
                    .map_err(tar_err)
            }
        }
    }

    fn symlink(
        &mut self,
        path: &str,
        target: &OsStr,
        uid: u32,
        gid: u32,
        mtime: i64,
    ) -> Result<(), BuildError> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, uid, gid, mtime);
        self.builder
            .append_link(&mut h, path, Path::new(target))
            .map_err(tar_err)
    }

    fn hard_link(
        &mut self,
        path: &str,
        target: &str,
        meta: &std::fs::Metadata,
    ) -> Result<(), BuildError> {
        let mut h = Self::header(
            tar::EntryType::Link,
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
        );
        self.builder
            .append_link(&mut h, path, target)
            .map_err(tar_err)
    }

    /// Any non-directory from the host: file, symlink, device, fifo, socket.
    fn node(
        &mut self,
        path: &str,
        host: &Path,
        meta: &std::fs::Metadata,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), BuildError> {
        let ft = meta.file_type();
        let (mode, uid, gid, mtime) = (meta.mode(), meta.uid(), meta.gid(), meta.mtime());
        if ft.is_file() {
            let f = std::fs::File::open(host).map_err(|e| io_err("open", host, e))?;
            return self.file_sized(path, mode, uid, gid, mtime, xattrs, Some(meta.len()), f);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(host).map_err(|e| io_err("read link", host, e))?;
            return self.symlink(path, target.as_os_str(), uid, gid, mtime);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets cannot be stored in a tar; like Docker, skip them.
            return Ok(());
        };
        self.pax(xattrs)?;
        let mut h = Self::header(kind, mode, uid, gid, mtime);
        let rdev = meta.rdev();
        h.set_device_major(rustix::fs::major(rdev))
            .map_err(tar_err)?;
        h.set_device_minor(rustix::fs::minor(rdev))
            .map_err(tar_err)?;
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .map_err(tar_err)
    }

    fn finish(self) -> Result<(), BuildError> {
        let out = self.builder.into_inner().map_err(tar_err)?;
        out.flush().map_err(tar_err)
    }
}

fn tar_err(e: std::io::Error) -> BuildError {
    BuildError::Layer(format!("cannot write the layer: {e}"))
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the
/// whole record including its own digits.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// Owner of new files and directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// `root:root`.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// A layer Hutch writes itself, on top of `lower`.
pub struct LayerWriter<'a> {
    tar: TarOut<'a>,
    lower: &'a LayerStack,
    written_dirs: HashSet<String>,
    mtime: i64,
}

impl<'a> LayerWriter<'a> {
    /// Starts a layer written to `out`.
    pub fn new(lower: &'a LayerStack, out: &'a mut dyn Write) -> LayerWriter<'a> {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        LayerWriter {
            tar: TarOut::new(out),
            lower,
            written_dirs: HashSet::new(),
            mtime,
        }
    }

    /// Writes the directories above `path` (absolute, already resolved):
    /// as they are below if they exist, else new, owned by `owner`, 0755.
    pub fn parents(&mut self, path: &str, owner: Owner) -> Result<(), BuildError> {
        let parts = components(path);
        let mut cur = String::new();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            self.ensure_dir(&cur, owner, 0o755)?;
        }
        Ok(())
    }

    /// Writes directory `rel` (relative to the root) unless written already:
    /// with its existing metadata, else new with `owner` and `mode`.
    fn ensure_dir(&mut self, rel: &str, owner: Owner, mode: u32) -> Result<(), BuildError> {
        if self.written_dirs.contains(rel) {
            return Ok(());
        }
        match self.lower.lookup(&format!("/{rel}")) {
            Some(found) if found.meta.is_dir() => {
                let m = &found.meta;
                self.tar
                    .dir(rel, m.mode(), m.uid(), m.gid(), m.mtime(), &[])?;
            }
            Some(found) => {
                return Err(BuildError::Layer(format!(
                    "/{rel} exists and is not a directory ({})",
                    describe_type(&found.meta)
                )));
            }
            None => self
                .tar
                .dir(rel, mode, owner.uid, owner.gid, self.mtime, &[])?,
        }
        self.written_dirs.insert(rel.to_owned());
        Ok(())
    }

    /// Writes directory `path` (absolute): new with `owner`/`mode`, or, if it
    /// exists, with `owner`/`mode` only when `replace_meta`.
    pub fn dir(
        &mut self,
        path: &str,
        owner: Owner,
        mode: u32,
        replace_meta: bool,
    ) -> Result<(), BuildError> {
        let rel = rel_of(path);
        if rel.is_empty() {
            return Ok(());
        }
        self.parents(path, owner)?;
        if replace_meta {
            self.tar
                .dir(&rel, mode, owner.uid, owner.gid, self.mtime, &[])?;
            self.written_dirs.insert(rel);
            Ok(())
        } else {
            self.ensure_dir(&rel, owner, mode)
        }
    }

    /// Writes a regular file with `content` at `path` (absolute).
    pub fn file(
        &mut self,
        path: &str,
        owner: Owner,
        mode: u32,
        content: &[u8],
    ) -> Result<(), BuildError> {
        self.parents(path, Owner::ROOT)?;
        self.tar.file(
            &rel_of(path),
            mode,
            owner.uid,
            owner.gid,
            self.mtime,
            &[],
            content,
        )
    }

    /// Copies the host file, symlink or directory entry `host` to `path`
    /// (absolute), with `owner` and, if given, `mode`; keeps the mtime.
    pub fn copy_node(
        &mut self,
        path: &str,
        host: &Path,
        owner: Owner,
        mode: Option<u32>,
    ) -> Result<(), BuildError> {
        let meta = std::fs::symlink_metadata(host).map_err(|e| io_err("stat", host, e))?;
        let rel = rel_of(path);
        let perm = mode.unwrap_or(meta.mode() & 0o7777);
        let ft = meta.file_type();
        if ft.is_dir() {
            if !rel.is_empty() {
                self.tar
                    .dir(&rel, perm, owner.uid, owner.gid, meta.mtime(), &[])?;
                self.written_dirs.insert(rel);
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(host).map_err(|e| io_err("read link", host, e))?;
            self.tar
                .symlink(&rel, target.as_os_str(), owner.uid, owner.gid, meta.mtime())?;
        } else if ft.is_file() {
            // Not following a symlink put in the file's place since the
            // stat: only the context's own files are read.
            let f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(host)
                    .map_err(|e| io_err("open", host, e))?
            };
            self.tar.file_sized(
                &rel,
                perm,
                owner.uid,
                owner.gid,
                meta.mtime(),
                &[],
                Some(meta.len()),
                f,
            )?;
        }
        // Devices, fifos and sockets in a build context are not copied.
        Ok(())
    }

    /// Finishes the tar.
    pub fn finish(self) -> Result<(), BuildError> {
        self.tar.finish()
    }
}

fn rel_of(path: &str) -> String {
    components(path).join("/")
}

fn describe_type(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_file() {
        "a file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for (k, v) in [
            (&b"a"[..], &b"b"[..]),
            (b"SCHILY.xattr.user.x", &[7u8; 95][..]),
        ] {
            let r = pax_record(k, v);
            let text = String::from_utf8_lossy(&r);
            let len: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, r.len());
        }
    }

    #[test]
    fn upper_whiteouts_and_opaque_dirs_become_oci_entries() {
        let t = tempfile::tempdir().unwrap();
        let lower_dir = t.path().join("lower");
        std::fs::create_dir_all(lower_dir.join("etc")).unwrap();
        std::fs::create_dir_all(lower_dir.join("run")).unwrap();
        std::fs::write(lower_dir.join("etc/old"), "x").unwrap();
        let lower = LayerStack::new(vec![lower_dir.clone()]);

        let upper = t.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("opq")).unwrap();
        std::fs::create_dir_all(upper.join("run/hutch/sock")).unwrap();
        std::fs::write(upper.join("etc/new"), "new").unwrap();
        std::fs::write(upper.join("etc/hosts"), "").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("etc/old"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        rustix::fs::lsetxattr(
            upper.join("opq"),
            crate::rootfs::OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::fs::hard_link(upper.join("etc/new"), upper.join("etc/new2")).unwrap();
        // Same metadata as below: not a change by itself.
        let m = std::fs::metadata(lower_dir.join("etc")).unwrap();
        std::fs::set_permissions(upper.join("etc"), m.permissions()).unwrap();

        let mut out = Vec::new();
        assert!(export_upper(&upper, &lower, &mut out).unwrap());
        let mut names = Vec::new();
        for e in tar::Archive::new(out.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            names.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().entry_type(),
            ));
        }
        let has = |n: &str| names.iter().any(|(p, _)| p.trim_end_matches('/') == n);
        assert!(has("etc/new"), "{names:?}");
        assert!(has("etc/.wh.old"), "{names:?}");
        assert!(has("opq/.wh..wh..opq"), "{names:?}");
        assert!(!has("etc/hosts"), "{names:?}");
        assert!(!has("run/hutch"), "{names:?}");
        assert!(
            names
                .iter()
                .any(|(p, t)| p == "etc/new2" && *t == tar::EntryType::Link)
                || names
                    .iter()
                    .any(|(p, t)| p == "etc/new" && *t == tar::EntryType::Link),
            "{names:?}"
        );

        // Only runtime mountpoints and unchanged parents: no layer.
        let upper2 = t.path().join("upper2");
        std::fs::create_dir_all(upper2.join("run/hutch")).unwrap();
        let m = std::fs::metadata(lower_dir.join("run")).unwrap();
        std::fs::set_permissions(upper2.join("run"), m.permissions()).unwrap();
        let mut out = Vec::new();
        assert!(!export_upper(&upper2, &lower, &mut out).unwrap());
    }
}
