//! Reading a template's root filesystem straight from its stored layers,
//! without mounting anything: what `COPY --chown`, `USER` and `WORKDIR`
//! steps need to know (accounts, whether a directory exists and with which
//! owner and mode).
//!
//! Layers are directories laid out for overlayfs (see `hutch_image`): a
//! whiteout is a character device 0:0, an opaque directory carries
//! `trusted.overlay.opaque=y`. A path is looked up from the top layer down,
//! as overlayfs does; symlinks in its directory part are resolved inside the
//! root, never on the host.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The xattr overlayfs uses to mark a directory opaque.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Most symlinks followed while resolving one path (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// A stack of layer directories, base first.
#[derive(Debug, Clone)]
pub struct LayerStack {
    dirs: Vec<PathBuf>,
}

/// A path found in the stack.
#[derive(Debug)]
pub struct Found {
    /// The host path of the topmost copy.
    pub host: PathBuf,
    /// Its metadata (not followed if it is a symlink).
    pub meta: Metadata,
}

impl LayerStack {
    /// The stack of `dirs`, base first.
    pub fn new(dirs: Vec<PathBuf>) -> LayerStack {
        LayerStack { dirs }
    }

    /// Looks `path` (absolute inside the root) up without following a final
    /// symlink; parents are resolved.
    pub fn lookup(&self, path: &str) -> Option<Found> {
        let resolved = self.resolve_parent(path)?;
        self.lookup_exact(&resolved)
    }

    /// Reads a regular file, following symlinks (inside the root).
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let resolved = self.resolve(path)?;
        let found = self.lookup_exact(&resolved)?;
        if !found.meta.is_file() {
            return None;
        }
        std::fs::read(&found.host).ok()
    }

    /// Resolves every symlink in `path`, inside the root. `None` if a loop
    /// or too many links.
    pub fn resolve(&self, path: &str) -> Option<String> {
        self.resolve_inner(path, true)
    }

    /// Resolves symlinks in the directory part of `path` only.
    pub fn resolve_parent(&self, path: &str) -> Option<String> {
        self.resolve_inner(path, false)
    }

    fn resolve_inner(&self, path: &str, follow_last: bool) -> Option<String> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let candidate = join_components(&done, &part);
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                done.push(part);
                break;
            }
            match self.lookup_exact(&candidate) {
                Some(found) if found.meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return None;
                    }
                    let target = std::fs::read_link(&found.host).ok()?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    for c in components(&target).into_iter().rev() {
                        pending.push(c);
                    }
                }
                _ => done.push(part),
            }
        }
        Some(format!("/{}", done.join("/")))
    }

    /// Looks up `path` exactly as written (no symlinks followed).
    fn lookup_exact(&self, path: &str) -> Option<Found> {
        let parts = components(path);
        for dir in self.dirs.iter().rev() {
            // Walk down this layer: a whiteout on the way hides the path in
            // every lower layer; an opaque directory on the way hides lower
            // layers' copies of everything below it.
            let mut host = dir.clone();
            let mut opaque = false;
            let mut missing = false;
            for (i, part) in parts.iter().enumerate() {
                host.push(part);
                let Ok(meta) = std::fs::symlink_metadata(&host) else {
                    missing = true;
                    break;
                };
                if is_whiteout(&meta) {
                    return None;
                }
                if i + 1 == parts.len() {
                    return Some(Found { host, meta });
                }
                if !meta.is_dir() {
                    // A non-directory hides whatever lower layers have below it.
                    return None;
                }
                if is_opaque(&host) {
                    opaque = true;
                }
            }
            if parts.is_empty() {
                let meta = std::fs::symlink_metadata(&host).ok()?;
                return Some(Found { host, meta });
            }
            if missing && opaque {
                return None;
            }
        }
        None
    }
}

/// Whether `meta` is an overlayfs whiteout (character device 0:0).
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether the directory at `path` is marked opaque.
pub(crate) fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 8];
    matches!(
        rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut buf),
        Ok(n) if &buf[..n] == b"y"
    )
}

/// The non-empty components of an absolute or relative path.
pub(crate) fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

fn join_components(done: &[String], part: &str) -> String {
    let mut s = String::from("/");
    for c in done {
        s.push_str(c);
        s.push('/');
    }
    s.push_str(part);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layer(root: &Path, files: &[(&str, &str)]) -> PathBuf {
        std::fs::create_dir_all(root).unwrap();
        for (path, content) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        root.to_owned()
    }

    #[test]
    fn upper_layers_win_and_whiteouts_hide() {
        let t = tempfile::tempdir().unwrap();
        let a = layer(
            &t.path().join("a"),
            &[("etc/passwd", "a"), ("etc/group", "a"), ("opt/x/f", "a")],
        );
        let b = layer(&t.path().join("b"), &[("etc/passwd", "b")]);
        // Whiteout for /etc/group in b.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            b.join("etc/group"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        let stack = LayerStack::new(vec![a, b]);
        assert_eq!(stack.read("/etc/passwd").unwrap(), b"b");
        assert!(stack.read("/etc/group").is_none());
        assert_eq!(stack.read("/opt/x/f").unwrap(), b"a");
        assert!(stack.lookup("/opt").unwrap().meta.is_dir());
        assert!(stack.lookup("/nope").is_none());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let a = layer(&t.path().join("a"), &[("usr/bin/tool", "t")]);
        symlink("usr/bin", a.join("bin")).unwrap();
        symlink("/../../../../usr/bin/tool", a.join("usr/bin/alias")).unwrap();
        let stack = LayerStack::new(vec![a]);
        assert_eq!(stack.resolve("/bin/tool").unwrap(), "/usr/bin/tool");
        assert_eq!(stack.read("/bin/alias").unwrap(), b"t");
        assert_eq!(stack.resolve_parent("/bin/new").unwrap(), "/usr/bin/new");
    }
}
