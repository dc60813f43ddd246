//! Reading files out of an image source: a directory, or an (uncompressed) tar archive read in
//! place through an index of its entries.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// An opened file of a source and its size in bytes.
pub(crate) type Opened<'a> = (Box<dyn Read + 'a>, u64);

/// Where the files of an image come from.
pub(crate) enum Source {
    Dir { root: PathBuf, canonical: PathBuf },
    Tar(TarIndex),
}

/// The regular files of a tar archive, by normalized path, with their data's position.
pub(crate) struct TarIndex {
    path: PathBuf,
    len: u64,
    /// Prefix (with trailing '/') under which the image files sit, if the archive wraps them
    /// in one top-level directory.
    prefix: String,
    files: HashMap<String, (u64, u64)>,
    /// Symlinks and hard links: path -> target, both normalized archive paths.
    links: HashMap<String, String>,
    /// No end-of-archive marker was found: the archive may have been cut short.
    unterminated: bool,
}

/// Joins a base directory and a (possibly relative, possibly `..`-laden) path, lexically, in
/// archive terms. Returns `None` if the result would climb above the archive root.
pub(crate) fn normalize_rel(base: &str, rel: &str) -> Option<String> {
    let mut out: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out.join("/"))
}

impl Source {
    /// A directory source.
    pub(crate) fn dir(root: &Path) -> Result<Source, ImageError> {
        let canonical = root
            .canonicalize()
            .map_err(|e| ImageError::io("resolve", root, e))?;
        Ok(Source::Dir {
            root: root.to_owned(),
            canonical,
        })
    }

    /// Indexes an uncompressed tar file. `display` names it in errors.
    pub(crate) fn tar(path: &Path, display: &str) -> Result<Source, ImageError> {
        TarIndex::build(path, display).map(Source::Tar)
    }

    /// True if the image file `rel` (an archive-relative path) exists.
    pub(crate) fn exists(&self, rel: &str) -> bool {
        match self {
            Source::Dir { .. } => self.dir_path(rel).is_some_and(|p| p.is_file()),
            Source::Tar(t) => t.resolve(rel).is_some(),
        }
    }

    /// Opens the image file `rel`, returning a reader and its size.
    ///
    /// Errors: `Ok(None)` if it does not exist; `Err` for I/O problems and truncation.
    pub(crate) fn open(&self, rel: &str, image: &str) -> Result<Option<Opened<'_>>, ImageError> {
        match self {
            Source::Dir { .. } => {
                let Some(path) = self.dir_path(rel) else {
                    return Ok(None);
                };
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(ImageError::io("open", path, e)),
                };
                let meta = file
                    .metadata()
                    .map_err(|e| ImageError::io("inspect", &path, e))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((Box::new(file), meta.len())))
            }
            Source::Tar(t) => {
                let Some((offset, size)) = t.resolve(rel) else {
                    return Ok(None);
                };
                if offset.saturating_add(size) > t.len {
                    return Err(ImageError::Archive {
                        archive: image.to_owned(),
                        detail: format!(
                            "{rel} needs {} bytes but the archive ends after {} (it was cut short)",
                            offset + size,
                            t.len
                        ),
                    });
                }
                let mut file =
                    File::open(&t.path).map_err(|e| ImageError::io("open", &t.path, e))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| ImageError::io("seek in", &t.path, e))?;
                Ok(Some((Box::new(file.take(size)), size)))
            }
        }
    }

    /// Reads the whole of a small file, refusing anything above `limit` bytes.
    pub(crate) fn read_small(
        &self,
        rel: &str,
        image: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, ImageError> {
        let Some((reader, size)) = self.open(rel, image)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(ImageError::TooLarge {
                what: rel.to_owned(),
                image: image.to_owned(),
                limit,
                detail: format!(
                    "it is {size} bytes, more than the {limit} allowed for a manifest, index or \
                     config; it was not read"
                ),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        reader
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.read_error(rel, image, e))?;
        // A file that grew after it was measured.
        if buf.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: rel.to_owned(),
                image: image.to_owned(),
                limit,
                detail: format!(
                    "it holds more than the {limit} bytes allowed for a manifest, index or config"
                ),
            });
        }
        Ok(Some(buf))
    }

    /// Maps an error that occurred while reading `rel` through [`Source::open`].
    pub(crate) fn read_error(&self, rel: &str, image: &str, e: io::Error) -> ImageError {
        match self {
            Source::Dir { root, .. } => ImageError::io("read", root.join(rel), e),
            Source::Tar(_) => ImageError::Archive {
                archive: image.to_owned(),
                detail: format!("reading {rel}: {e}"),
            },
        }
    }

    /// A hint to add to "missing" errors.
    pub(crate) fn missing_hint(&self) -> &'static str {
        match self {
            Source::Tar(t) if t.unterminated => {
                " (the archive has no end-of-archive marker: it was probably cut short)"
            }
            _ => "",
        }
    }

    /// True for a tar archive that ends without an end-of-archive marker.
    pub(crate) fn unterminated(&self) -> bool {
        matches!(self, Source::Tar(t) if t.unterminated)
    }

    /// A directory source's real path for `rel`, if it stays inside the directory.
    fn dir_path(&self, rel: &str) -> Option<PathBuf> {
        let Source::Dir { root, canonical } = self else {
            return None;
        };
        let rel = normalize_rel("", rel)?;
        let path = root.join(&rel);
        // Symlinks (docker save's duplicated layer.tar files are symlinks) may be followed,
        // but only to somewhere inside the source directory.
        match path.canonicalize() {
            Ok(real) if real.starts_with(canonical) => Some(real),
            Ok(_) => None,
            Err(_) => Some(path),
        }
    }
}

impl TarIndex {
    fn build(path: &Path, display: &str) -> Result<TarIndex, ImageError> {
        let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ImageError::io("inspect", path, e))?
            .len();
        let not_tar = |reason: String| ImageError::NotAnImage {
            path: PathBuf::from(display),
            reason,
        };
        let damaged = |detail: String| ImageError::Archive {
            archive: display.to_owned(),
            detail,
        };
        if len < 512 {
            return Err(not_tar(format!(
                "it is {len} bytes, too short to be a tar archive"
            )));
        }

        let mut archive = tar::Archive::new(&file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| not_tar(format!("it is not a tar archive ({e})")))?;
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let mut dirs = HashSet::new();
        let mut end_of_data = 0u64;
        for (i, entry) in entries.enumerate() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if i == 0 => return Err(not_tar(format!("it is not a tar archive ({e})"))),
                Err(e) => {
                    return Err(damaged(format!(
                        "reading the tar header after entry {i} failed ({e}); the archive was \
                         probably cut short"
                    )));
                }
            };
            let Some(name) = normalize_rel("", &String::from_utf8_lossy(&entry.path_bytes()))
            else {
                continue;
            };
            let kind = entry.header().entry_type();
            let start = entry.raw_file_position();
            let size = entry.size();
            end_of_data = end_of_data.max(start + size.div_ceil(512) * 512);
            if name.is_empty() {
                continue;
            }
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    files.insert(name, (start, size));
                }
                tar::EntryType::Directory => {
                    dirs.insert(name);
                }
                tar::EntryType::Symlink => {
                    if let Some(target) = entry.link_name_bytes() {
                        let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
                        if let Some(t) = normalize_rel(parent, &String::from_utf8_lossy(&target)) {
                            links.insert(name, t);
                        }
                    }
                }
                tar::EntryType::Link => {
                    if let Some(target) = entry.link_name_bytes()
                        && let Some(t) = normalize_rel("", &String::from_utf8_lossy(&target))
                    {
                        links.insert(name, t);
                    }
                }
                _ => {}
            }
        }
        // Two zero blocks end a tar; writers always put them there.
        let unterminated = end_of_data + 1024 > len;

        let mut index = TarIndex {
            path: path.to_owned(),
            len,
            prefix: String::new(),
            files,
            links,
            unterminated,
        };
        if index.files.is_empty() && index.links.is_empty() {
            if unterminated {
                return Err(damaged("it holds no complete file".to_owned()));
            }
            return Err(not_tar("the tar archive holds no files".to_owned()));
        }
        index.prefix = index.detect_prefix(&dirs);
        Ok(index)
    }

    /// A tarred layout may sit in one top-level directory (`tar cf x.tar mylayout/`).
    fn detect_prefix(&self, dirs: &HashSet<String>) -> String {
        let known = ["index.json", "manifest.json", "oci-layout"];
        if known.iter().any(|k| self.files.contains_key(*k)) {
            return String::new();
        }
        let mut tops: HashSet<&str> = HashSet::new();
        for name in self
            .files
            .keys()
            .chain(self.links.keys())
            .chain(dirs.iter())
        {
            tops.insert(name.split('/').next().unwrap_or(""));
        }
        if tops.len() == 1 {
            let top = tops.into_iter().next().unwrap_or("");
            if known
                .iter()
                .any(|k| self.files.contains_key(&format!("{top}/{k}")))
            {
                return format!("{top}/");
            }
        }
        String::new()
    }

    /// Finds the data of `rel`, following links (at most 16 hops).
    fn resolve(&self, rel: &str) -> Option<(u64, u64)> {
        let mut name = normalize_rel("", rel)?;
        if !self.prefix.is_empty() {
            name = format!("{}{name}", self.prefix);
        }
        for _ in 0..16 {
            if let Some(found) = self.files.get(&name) {
                return Some(*found);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }
}
