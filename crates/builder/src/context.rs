//! The build context: the directory `COPY` and `ADD` read from.
//!
//! * [`DockerIgnore`]: `.dockerignore` rules (`#` comments, `*`, `?`,
//!   `[...]`, `**`, `!` exceptions, last match wins; excluding a directory
//!   excludes what is under it). The CLI applies them when it packs the
//!   context ([`pack`]), so excluded files never leave the client.
//! * [`select`]: the files one `COPY` source names (literal path or
//!   pattern), confined to the context.
//! * [`digest`]: a content digest of a selection, part of the cache key of
//!   a `COPY`, so editing a copied file invalidates the step and everything
//!   after it.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher};
use sha2::{Digest, Sha256};

use crate::BuildError;

/// Parsed `.dockerignore` rules.
#[derive(Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<DockerIgnore, BuildError> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = glob(&pattern).map_err(|e| {
                BuildError::Context(format!(".dockerignore line {}: `{line}`: {e}", n + 1))
            })?;
            rules.push((glob.compile_matcher(), !negate));
        }
        Ok(DockerIgnore { rules })
    }

    /// Reads `dir/.dockerignore`; no file means no rules.
    pub fn load(dir: &Path) -> Result<DockerIgnore, BuildError> {
        match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(text) => DockerIgnore::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
            Err(e) => Err(BuildError::Context(format!(
                "cannot read {}: {e}",
                dir.join(".dockerignore").display()
            ))),
        }
    }

    /// Whether `rel` (relative to the context, `/`-separated) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (matcher, exclude) in &self.rules {
            // A rule matching a parent directory matches its contents too.
            let hit = ancestors_and_self(rel).any(|p| matcher.is_match(p));
            if hit {
                excluded = *exclude;
            }
        }
        excluded
    }
}

fn ancestors_and_self(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/')
        .map(move |(i, _)| &rel[..i])
        .chain(std::iter::once(rel))
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// A pattern or path made relative and normalized: no leading `/` or `./`,
/// no `.` components, `..` resolved (never above the root).
pub(crate) fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Packs `dir` as an uncompressed tar for the server, leaving out what
/// `.dockerignore` excludes (the `.dockerignore` and the Dockerfile
/// themselves are sent). Returns the number of files packed.
pub fn pack(dir: &Path, out: &mut dyn Write) -> Result<u64, BuildError> {
    let ignore = DockerIgnore::load(dir)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut count = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(|e| BuildError::Context(format!("cannot list {}: {e}", abs.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| BuildError::Context(format!("cannot list {}: {e}", abs.display())))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let rel = rel.join(entry.file_name());
            let rel_str = rel.to_string_lossy();
            let meta = entry
                .metadata()
                .map_err(|e| BuildError::Context(format!("cannot stat {}: {e}", rel.display())))?;
            if meta.is_dir() {
                // Walk excluded directories too: an exception may re-include
                // something below them. Their own entry is added only if
                // not excluded.
                if !ignore.excluded(&rel_str) {
                    builder
                        .append_path_with_name(entry.path(), &rel)
                        .map_err(|e| pack_err(&rel, e))?;
                }
                stack.push(rel);
                continue;
            }
            if ignore.excluded(&rel_str) {
                continue;
            }
            builder
                .append_path_with_name(entry.path(), &rel)
                .map_err(|e| pack_err(&rel, e))?;
            count += 1;
        }
    }
    builder
        .into_inner()
        .and_then(|w| w.flush())
        .map_err(|e| BuildError::Context(format!("cannot write the context: {e}")))?;
    Ok(count)
}

fn pack_err(rel: &Path, e: std::io::Error) -> BuildError {
    BuildError::Context(format!("cannot pack {}: {e}", rel.display()))
}

/// Unpacks a context tar (as [`pack`] writes it, or gzip-compressed, as
/// the E2B SDKs upload `COPY` file sets) into `dir`, which must exist and
/// be empty. Paths cannot escape `dir`. The (decompressed) tar may be no
/// larger than the space free on `dir`'s file system, so a small gzip body
/// that expands without end is refused rather than filling the disk.
pub fn unpack(reader: &mut dyn Read, dir: &Path) -> Result<(), BuildError> {
    let vfs = rustix::fs::statvfs(dir).map_err(|e| {
        BuildError::Context(format!(
            "cannot measure the free space of {}: {e}",
            dir.display()
        ))
    })?;
    unpack_limited(reader, dir, vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

/// [`unpack`] with an explicit bound on the size of the decompressed tar.
pub fn unpack_limited(reader: &mut dyn Read, dir: &Path, max_bytes: u64) -> Result<(), BuildError> {
    // Tell gzip from tar by the first two bytes (gzip's magic number).
    let mut head = [0u8; 2];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BuildError::Context(format!("cannot read the context: {e}"))),
        }
    }
    let mut whole = Read::chain(&head[..got], reader);
    let mut gz;
    let decompressed: &mut dyn Read = if head[..got] == [0x1f, 0x8b] {
        gz = flate2::read::GzDecoder::new(whole);
        &mut gz
    } else {
        &mut whole
    };
    let mut capped = Capped {
        inner: decompressed,
        left: max_bytes,
        hit: false,
    };
    let result = unpack_tar(&mut capped, dir);
    if capped.hit {
        return Err(BuildError::Context(format!(
            "the context expands to more than {max_bytes} bytes, more than there is room for; \
             send a smaller context (a small compressed context that expands this much is a \
             compression bomb)"
        )));
    }
    result
}

/// Counts the bytes read through it and fails once there are more than
/// `left`.
struct Capped<'a> {
    inner: &'a mut dyn Read,
    left: u64,
    hit: bool,
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit = true;
            return Err(std::io::Error::other("the context is too large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn unpack_tar(reader: &mut dyn Read, dir: &Path) -> Result<(), BuildError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    for entry in archive
        .entries()
        .map_err(|e| BuildError::Context(format!("cannot read the context: {e}")))?
    {
        let mut entry =
            entry.map_err(|e| BuildError::Context(format!("cannot read the context: {e}")))?;
        // `unpack_in` refuses to write anything outside `dir`: through a
        // symlink (an error), or at a path with `..` in it (skipped, and
        // refused here). Hard links must point inside `dir` too; device
        // nodes become empty regular files.
        let unpacked = entry
            .unpack_in(dir)
            .map_err(|e| BuildError::Context(format!("cannot unpack the context: {e}")))?;
        if !unpacked {
            return Err(BuildError::Context(format!(
                "the context holds `{}`, a path that leaves it; a context holds relative paths \
                 without `..` only",
                String::from_utf8_lossy(&entry.path_bytes())
            )));
        }
    }
    Ok(())
}

/// One path a `COPY` source selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Relative to the context.
    pub rel: PathBuf,
    /// Whether it is a directory (then its contents are copied).
    pub is_dir: bool,
    /// Whether the source was a pattern (then names are kept under the
    /// destination directory).
    pub from_pattern: bool,
}

/// The paths `source` names in the context at `root`.
pub fn select(root: &Path, source: &str) -> Result<Vec<Selected>, BuildError> {
    let cleaned = confined(source)?;
    let has_pattern = cleaned.contains(['*', '?', '[']);
    if !has_pattern {
        let rel = PathBuf::from(&cleaned);
        let abs = root.join(&rel);
        if !cleaned.is_empty() {
            inside(root, &abs, source)?;
        }
        let meta = std::fs::symlink_metadata(&abs).map_err(|_| {
            BuildError::Context(format!(
                "`{source}` not found in the build context (is it excluded by .dockerignore?)"
            ))
        })?;
        return Ok(vec![Selected {
            rel,
            is_dir: meta.is_dir(),
            from_pattern: false,
        }]);
    }
    let matcher = glob(&cleaned)
        .map_err(|e| BuildError::Context(format!("`{source}`: {e}")))?
        .compile_matcher();
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&abs)
            .map_err(|e| BuildError::Context(format!("cannot list {}: {e}", abs.display())))?
            .filter_map(Result::ok)
            .collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if matcher.is_match(&child) {
                out.push(Selected {
                    rel: child,
                    is_dir,
                    from_pattern: true,
                });
            } else if is_dir {
                stack.push(child);
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    if out.is_empty() {
        return Err(BuildError::Context(format!(
            "`{source}` matches nothing in the build context"
        )));
    }
    Ok(out)
}

/// `source` made relative to the context; an error if `..` climbs out.
fn confined(source: &str) -> Result<String, BuildError> {
    let mut depth: i64 = 0;
    for c in source.split('/') {
        match c {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(BuildError::Context(format!(
                "`{source}` is outside the build context"
            )));
        }
    }
    Ok(clean(source))
}

/// Checks that the directory holding `abs` is inside `root` once symlinks
/// are resolved: a symlink in the context must not lead a `COPY` to the
/// server's own files.
fn inside(root: &Path, abs: &Path, source: &str) -> Result<(), BuildError> {
    let root = root
        .canonicalize()
        .map_err(|e| BuildError::Context(format!("cannot resolve the context: {e}")))?;
    let parent = abs.parent().unwrap_or(abs);
    match parent.canonicalize() {
        Ok(p) if p.starts_with(&root) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BuildError::Context(format!(
            "`{source}` not found in the build context (is it excluded by .dockerignore?)"
        ))),
        _ => Err(BuildError::Context(format!(
            "`{source}` is outside the build context (through a symlink)"
        ))),
    }
}

/// Every file under the selection, in a stable order, with its relative path.
pub fn walk(root: &Path, selected: &[Selected]) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    for s in selected {
        out.push(s.rel.clone());
        if s.is_dir {
            let mut stack = vec![s.rel.clone()];
            while let Some(rel) = stack.pop() {
                let abs = root.join(&rel);
                let mut names: Vec<_> = std::fs::read_dir(&abs)
                    .map_err(|e| {
                        BuildError::Context(format!("cannot list {}: {e}", abs.display()))
                    })?
                    .filter_map(Result::ok)
                    .collect();
                names.sort_by_key(|e| e.file_name());
                for entry in names.into_iter().rev() {
                    let child = rel.join(entry.file_name());
                    out.push(child.clone());
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(child);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A digest of the selected files: names, types, modes, link targets and
/// contents (not owners or times, which the context does not carry
/// meaningfully).
pub fn digest(root: &Path, selected: &[Selected]) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    for rel in walk(root, selected)? {
        let abs = root.join(&rel);
        let meta = std::fs::symlink_metadata(&abs)
            .map_err(|e| BuildError::Context(format!("cannot stat {}: {e}", rel.display())))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.mode().to_le_bytes());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&abs).map_err(|e| {
                BuildError::Context(format!("cannot read link {}: {e}", rel.display()))
            })?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            let mut f = std::fs::File::open(&abs)
                .map_err(|e| BuildError::Context(format!("cannot open {}: {e}", rel.display())))?;
            h.update(meta.len().to_le_bytes());
            std::io::copy(&mut f, &mut h)
                .map_err(|e| BuildError::Context(format!("cannot read {}: {e}", rel.display())))?;
        }
        h.update([0xff]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = DockerIgnore::parse(
            "# comment\n*.log\n/build\nsecrets/**\n!secrets/public.txt\n**/node_modules\n./tmp/\n",
        )
        .unwrap();
        assert!(ig.excluded("a.log"));
        assert!(!ig.excluded("dir/a.log"), "`*` does not cross directories");
        assert!(ig.excluded("build"));
        assert!(ig.excluded("build/out/x"));
        assert!(ig.excluded("secrets/key"));
        assert!(!ig.excluded("secrets/public.txt"));
        assert!(ig.excluded("node_modules/x"));
        assert!(ig.excluded("a/b/node_modules/x"));
        assert!(ig.excluded("tmp/file"));
        assert!(!ig.excluded("src/main.rs"));
    }

    #[test]
    fn unpack_gzip() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f.txt"), "gz").unwrap();
        let mut tar = Vec::new();
        pack(&root, &mut tar).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(&mut gz.as_slice(), &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("d/f.txt")).unwrap(), "gz");
        // An empty body is an empty tar.
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        unpack(&mut [].as_slice(), &empty).unwrap();
    }

    #[test]
    fn pack_select_digest() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        std::fs::create_dir_all(root.join("src/sub")).unwrap();
        std::fs::create_dir_all(root.join("target")).unwrap();
        std::fs::write(root.join(".dockerignore"), "target\n*.tmp\n").unwrap();
        std::fs::write(root.join("src/a.py"), "a").unwrap();
        std::fs::write(root.join("src/sub/b.py"), "b").unwrap();
        std::fs::write(root.join("x.tmp"), "x").unwrap();
        std::fs::write(root.join("target/big"), "big").unwrap();

        let mut tar = Vec::new();
        pack(&root, &mut tar).unwrap();
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(&mut tar.as_slice(), &out).unwrap();
        assert!(out.join("src/sub/b.py").exists());
        assert!(out.join(".dockerignore").exists());
        assert!(!out.join("x.tmp").exists());
        assert!(!out.join("target").exists());

        let sel = select(&out, "src/*.py").unwrap();
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].rel, PathBuf::from("src/a.py"));
        let dir = select(&out, "./src/").unwrap();
        assert!(dir[0].is_dir);
        assert!(select(&out, "nope").is_err());
        assert!(select(&out, "*.none").is_err());

        let d1 = digest(&out, &dir).unwrap();
        std::fs::write(out.join("src/sub/b.py"), "changed").unwrap();
        let d2 = digest(&out, &dir).unwrap();
        assert_ne!(d1, d2);
        assert_eq!(d2, digest(&out, &dir).unwrap());
    }
}
