//! The content-addressed layer store.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;
use tempfile::TempDir;

use crate::digest::{Compression, Decoder, EofPad, HashReader, is_sha256_hex, sha256_hex};
use crate::extract::{self, ExtractError};
use crate::source::Source;
use crate::{ImageError, ImportProgress, ImportedImage, import};

/// Extracted layers, keyed by diff id, under one root directory:
///
/// ```text
/// ROOT/sha256/<hex>/   one extracted layer (an overlayfs lower directory)
/// ROOT/tmp/            staging; emptied by LayerStore::open
/// ```
///
/// What one layer may unpack to is bounded (see [`LayerStore::with_max_unpacked_size`]), so a
/// small compressed layer that expands without end (a compression bomb) is refused with
/// [`ImageError::TooLarge`] and its staging removed, instead of filling the disk.
#[derive(Clone, Debug)]
pub struct LayerStore {
    root: PathBuf,
    max_unpacked: Option<u64>,
}

/// Room left past the limit for a tar's end-of-archive blocks and record padding.
const TAR_TAIL_SLACK: u64 = 64 << 10;

/// A layer extracted into a staging directory and verified, not yet in the store.
pub(crate) struct StagedLayer {
    pub(crate) dir: TempDir,
    pub(crate) blob_digest: String,
    pub(crate) blob_size: u64,
    pub(crate) diff_id: String,
}

impl LayerStore {
    /// Opens (creating if needed) the store rooted at `root`, with `root/sha256` for layers
    /// and `root/tmp` for staging. Leftover staging from an interrupted import is removed.
    pub fn open(root: &Path) -> Result<LayerStore, ImageError> {
        let store = LayerStore {
            root: root.to_owned(),
            max_unpacked: None,
        };
        for dir in [store.root.clone(), store.layers_root(), store.tmp_root()] {
            fs::create_dir_all(&dir).map_err(|e| ImageError::io("create directory", &dir, e))?;
        }
        let tmp = store.tmp_root();
        let entries = fs::read_dir(&tmp).map_err(|e| ImageError::io("list", &tmp, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("list", &tmp, e))?;
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let res = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("remove stale staging", path, e)),
            }
        }
        Ok(store)
    }

    /// Sets the most bytes one layer may unpack to (its uncompressed tar stream, and the file
    /// data it writes, sparse files counted at full size), and the most a compressed image
    /// archive may decompress to. Without it, the bound is the space free on the store's file
    /// system when the layer (or archive) starts; with it, the smaller of the two. Whatever
    /// goes past the bound fails with [`ImageError::TooLarge`] and leaves nothing behind.
    pub fn with_max_unpacked_size(mut self, bytes: u64) -> LayerStore {
        self.max_unpacked = Some(bytes);
        self
    }

    /// The limit set with [`LayerStore::with_max_unpacked_size`], if any.
    pub fn max_unpacked_size(&self) -> Option<u64> {
        self.max_unpacked
    }

    /// The bound on what the next layer or archive may unpack to, and where it comes from.
    fn unpack_limit(&self) -> Result<UnpackLimit, ImageError> {
        let tmp = self.tmp_root();
        let vfs = rustix::fs::statvfs(&tmp)
            .map_err(|e| ImageError::io("measure the free space of", &tmp, e.into()))?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        Ok(match self.max_unpacked {
            Some(max) if max <= free => UnpackLimit {
                bytes: max,
                why: "the store's limit on unpacked size; raise it if the image is genuine"
                    .to_owned(),
                free_space_of: None,
            },
            _ => UnpackLimit {
                bytes: free,
                why: format!(
                    "the space free on the store's file system ({}); free some space if the \
                     image is genuine",
                    tmp.display()
                ),
                free_space_of: Some(tmp),
            },
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the extracted layer with diff id `sha256:<hex>` (it exists only
    /// if [`LayerStore::has_layer`] says so). A malformed diff id maps to a path under
    /// `root/invalid/` that is never created.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        match sha256_hex(diff_id) {
            Ok(hex) => self.layers_root().join(hex),
            Err(_) => self.root.join("invalid").join(hex::encode(diff_id)),
        }
    }

    /// Whether the layer with this diff id is in the store.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        sha256_hex(diff_id).is_ok() && self.layer_dir(diff_id).is_dir()
    }

    /// The diff ids of every stored layer (whole ones: a layer being
    /// written or removed is elsewhere).
    pub fn layer_ids(&self) -> Result<Vec<String>, ImageError> {
        let layers = self.layers_root();
        let entries = match fs::read_dir(&layers) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("list", &layers, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("list", &layers, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str() else { continue };
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                ids.push(format!("sha256:{hex}"));
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Deletes every stored layer whose diff id is not in `keep`; returns how many were removed.
    ///
    /// Each layer is first renamed into `root/tmp`, so a layer is either wholly present under
    /// its id or absent, even if deletion is interrupted.
    pub fn remove_unreferenced(&self, keep: &HashSet<String>) -> Result<usize, ImageError> {
        let layers = self.layers_root();
        let entries = fs::read_dir(&layers).map_err(|e| ImageError::io("list", &layers, e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("list", &layers, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().filter(|n| is_sha256_hex(n)) else {
                continue;
            };
            if keep.contains(&format!("sha256:{hex}")) {
                continue;
            }
            let doomed = tempfile::Builder::new()
                .prefix("gc-")
                .tempdir_in(self.tmp_root())
                .map_err(|e| ImageError::io("create staging directory in", self.tmp_root(), e))?;
            let target = doomed.path().join(hex);
            match fs::rename(entry.path(), &target) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io("move out of the store", entry.path(), e)),
            }
            let path = doomed.path().to_owned();
            doomed
                .close()
                .map_err(|e| ImageError::io("remove layer", path, e))?;
        }
        Ok(removed)
    }

    /// Imports an image from an OCI image layout directory, an OCI archive, or a Docker archive
    /// (`docker save` output, old or new style), detected automatically. Archives may be gzip
    /// or zstd compressed.
    ///
    /// Where the source holds several images, `reference` picks one by its
    /// `org.opencontainers.image.ref.name` / `io.containerd.image.name` annotation or Docker
    /// `RepoTags` entry; `None` takes the only image, or the first one for this host's platform
    /// (linux/amd64 on x86-64).
    ///
    /// Everything read is verified against its digest and size. Layers already stored are
    /// reused without being read. Layers are moved into the store only after the whole image
    /// has been verified, so a failed import leaves no new layers and no staging behind.
    pub fn import(
        &self,
        source: &Path,
        reference: Option<&str>,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImportedImage, ImageError> {
        let display = source.display().to_string();
        let meta = fs::metadata(source).map_err(|e| ImageError::io("open", source, e))?;
        if meta.is_dir() {
            let src = Source::dir(source)?;
            return import::import_source(self, &src, &display, source, reference, progress);
        }
        if !meta.is_file() {
            return Err(ImageError::NotAnImage {
                path: source.to_owned(),
                reason: "it is neither a directory nor a regular file".to_owned(),
            });
        }
        let mut file = fs::File::open(source).map_err(|e| ImageError::io("open", source, e))?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut file, &mut head).map_err(|e| ImageError::io("read", source, e))?;
        if Compression::detect(&head[..n]) == Compression::None {
            let src = Source::tar(source, &display)?;
            return import::import_source(self, &src, &display, source, reference, progress);
        }
        drop(file);
        let mut file = fs::File::open(source).map_err(|e| ImageError::io("open", source, e))?;
        self.import_stream_as(&mut file, &display, source, reference, progress)
    }

    /// Imports an image from a tar stream (an OCI archive, a tarred OCI layout, or a Docker
    /// archive; optionally gzip or zstd compressed). The stream is staged under `root/tmp`
    /// first; the staged copy is removed afterwards whatever happens.
    pub fn import_tar_stream(
        &self,
        reader: &mut dyn Read,
        reference: Option<&str>,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImportedImage, ImageError> {
        let display = "the uploaded tar stream";
        self.import_stream_as(reader, display, Path::new(display), reference, progress)
    }

    fn import_stream_as(
        &self,
        reader: &mut dyn Read,
        display: &str,
        origin: &Path,
        reference: Option<&str>,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImportedImage, ImageError> {
        let mut staged = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".tar")
            .tempfile_in(self.tmp_root())
            .map_err(|e| ImageError::io("create staging file in", self.tmp_root(), e))?;
        let stream_err = |e: io::Error| ImageError::Archive {
            archive: display.to_owned(),
            detail: format!("reading it failed: {e}"),
        };
        let staged_path = staged.path().to_owned();
        let bound = self.unpack_limit()?;
        let limit = bound.bytes;
        let decoder = Decoder::new(reader).map_err(stream_err)?;
        let compressed = decoder.compression() != Compression::None;
        let mut capped = Capped::new(decoder, limit);
        let hit = capped.hit_flag();
        let copied = copy_split(&mut capped, staged.as_file_mut(), stream_err, |e| {
            ImageError::io("write", &staged_path, e)
        });
        if hit.load(Ordering::Relaxed) {
            let what = if compressed {
                "the decompressed archive"
            } else {
                "the archive"
            };
            return Err(bound.exceeded(
                what,
                display,
                format!(
                    "it holds more than {limit} bytes, the bound set by {}",
                    bound.why
                ),
            ));
        }
        copied?;
        drop(capped);
        let src = Source::tar(staged.path(), display)?;
        let result = import::import_source(self, &src, display, origin, reference, progress);
        drop(src);
        let closed = staged.close();
        let image = result?;
        closed.map_err(|e| ImageError::io("remove staging file", staged_path, e))?;
        Ok(image)
    }

    /// Stores one layer tar (uncompressed, gzip or zstd; detected from its first bytes) and
    /// returns its diff id. Nothing is verified against an expected digest: the diff id is
    /// computed from the content. If the layer is already stored, the stored copy is kept.
    pub fn add_layer_tar(&self, reader: &mut dyn Read) -> Result<String, ImageError> {
        let staged = self.stage_layer(reader, "layer", "the given layer tar", true, &mut |_| {})?;
        let diff_id = staged.diff_id.clone();
        self.commit(staged)?;
        Ok(diff_id)
    }

    pub(crate) fn layers_root(&self) -> PathBuf {
        self.root.join("sha256")
    }

    pub(crate) fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Extracts a layer stream into a new staging directory, hashing the raw stream (blob
    /// digest, size) and the decompressed stream (diff id) on the way. `what` and `image`
    /// name the layer and its source in errors. With `require_end`, a tar that stops without
    /// an end-of-archive marker is taken as truncated (imports check the diff id instead).
    pub(crate) fn stage_layer(
        &self,
        reader: &mut dyn Read,
        what: &str,
        image: &str,
        require_end: bool,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<StagedLayer, ImageError> {
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_root())
            .map_err(|e| ImageError::io("create staging directory in", self.tmp_root(), e))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io("set the mode of", dir.path(), e))?;

        let corrupt = |detail: String| ImageError::Corrupt {
            what: what.to_owned(),
            image: image.to_owned(),
            detail,
        };
        let bound = self.unpack_limit()?;
        let limit = bound.bytes;
        let too_large = || {
            bound.exceeded(
                what,
                image,
                format!(
                    "it unpacks to more than {limit} bytes, the bound set by {} (a small layer \
                     that expands this much is a compression bomb)",
                    bound.why
                ),
            )
        };
        let blob = HashReader::with_progress(reader, on_bytes);
        let decoder = Decoder::new(blob)
            .map_err(|e| corrupt(format!("its compressed stream is damaged: {e}")))?;
        let compression = decoder.compression();
        let capped = Capped::new(decoder, limit.saturating_add(TAR_TAIL_SLACK));
        let hit = capped.hit_flag();
        let uncompressed = EofPad::new(HashReader::new(capped));
        let (uncompressed, entries_end) = extract::unpack_layer(uncompressed, dir.path(), limit)
            .map_err(|e| match e {
                _ if hit.load(Ordering::Relaxed) => too_large(),
                ExtractError::TooLarge => too_large(),
                ExtractError::Read(e) => corrupt(match compression {
                    Compression::None => {
                        format!("it is not a valid tar archive or is truncated: {e}")
                    }
                    c => format!(
                        "it is not a valid {} compressed tar archive or is truncated: {e}",
                        if c == Compression::Gzip {
                            "gzip"
                        } else {
                            "zstd"
                        }
                    ),
                }),
                ExtractError::Bad(detail) => corrupt(detail),
                ExtractError::Write {
                    action,
                    path,
                    cause,
                } => ImageError::Extract {
                    layer: what.to_owned(),
                    image: image.to_owned(),
                    action,
                    path,
                    cause,
                },
            })?;
        let uncompressed = uncompressed.into_inner();
        // With an end-of-archive block, the tar reader consumed one real block past the last
        // entry; without, it got zeros from EofPad.
        if require_end && uncompressed.count() < entries_end + 512 {
            return Err(corrupt(
                "it ends without an end-of-archive marker: it is truncated or not a tar".to_owned(),
            ));
        }
        let (diff_id, _, capped) = uncompressed.finish().map_err(|e| {
            if hit.load(Ordering::Relaxed) {
                too_large()
            } else {
                corrupt(format!("its data after the end of the tar is damaged: {e}"))
            }
        })?;
        let (blob_digest, blob_size, _) = capped
            .into_inner()
            .into_inner()
            .finish()
            .map_err(|e| corrupt(format!("reading it failed: {e}")))?;
        Ok(StagedLayer {
            dir,
            blob_digest,
            blob_size,
            diff_id,
        })
    }

    /// Moves a staged layer into the store under its diff id. Returns false (and removes the
    /// staging) if the layer was already there, e.g. put there by a concurrent import.
    pub(crate) fn commit(&self, staged: StagedLayer) -> Result<bool, ImageError> {
        let dest = self.layer_dir(&staged.diff_id);
        if sha256_hex(&staged.diff_id).is_err() {
            return Err(ImageError::InvalidDigest {
                digest: staged.diff_id,
                detail: "not a sha256 diff id".to_owned(),
            });
        }
        match rustix::fs::renameat_with(CWD, staged.dir.path(), CWD, &dest, RenameFlags::NOREPLACE)
        {
            Ok(()) => {
                let _ = staged.dir.keep();
                Ok(true)
            }
            Err(Errno::EXIST | Errno::NOTEMPTY) => Ok(false),
            Err(Errno::INVAL | Errno::NOSYS) => {
                // The filesystem lacks RENAME_NOREPLACE; a plain rename onto a non-empty
                // directory fails the same way.
                if dest.exists() {
                    return Ok(false);
                }
                match fs::rename(staged.dir.path(), &dest) {
                    Ok(()) => {
                        let _ = staged.dir.keep();
                        Ok(true)
                    }
                    Err(_) if dest.is_dir() => Ok(false),
                    Err(e) => Err(ImageError::io("move into the store", dest, e)),
                }
            }
            Err(e) => Err(ImageError::io(
                "move into the store",
                dest,
                io::Error::from(e),
            )),
        }
    }
}

/// Passes at most `left` bytes through; reading more fails and raises a flag, so the caller
/// can tell "over the limit" from other read errors however they were wrapped on the way.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: Arc<AtomicBool>,
}

impl<R: Read> Capped<R> {
    fn new(inner: R, limit: u64) -> Self {
        Capped {
            inner,
            left: limit,
            hit: Arc::new(AtomicBool::new(false)),
        }
    }

    fn hit_flag(&self) -> Arc<AtomicBool> {
        self.hit.clone()
    }

    fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte more than allowed tells a stream that ends right at the limit from one
        // that goes on.
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.hit.store(true, Ordering::Relaxed);
            return Err(io::Error::other("the stream is larger than the limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `r` to `w`, mapping read and write failures differently.
fn copy_split<R: Read, W: io::Write>(
    r: &mut R,
    w: &mut W,
    read_err: impl Fn(io::Error) -> ImageError,
    write_err: impl Fn(io::Error) -> ImageError,
) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        w.write_all(&buf[..n]).map_err(&write_err)?;
        total += n as u64;
    }
}

/// How many unpacked bytes an import may write, and why.
struct UnpackLimit {
    bytes: u64,
    why: String,
    /// Set when the bound is the space free on this directory's file system.
    free_space_of: Option<PathBuf>,
}

impl UnpackLimit {
    /// The error for `what` of `image` going past the bound: the host
    /// running out of space (an I/O error of kind `StorageFull`, which the
    /// server answers with 507) when the bound is the free space, else
    /// [`ImageError::TooLarge`].
    fn exceeded(&self, what: &str, image: &str, detail: String) -> ImageError {
        match &self.free_space_of {
            Some(dir) => ImageError::io(
                "find room for the image in",
                dir.clone(),
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("{what} of {image} does not fit: {detail}"),
                ),
            ),
            None => ImageError::TooLarge {
                what: what.to_owned(),
                image: image.to_owned(),
                limit: self.bytes,
                detail,
            },
        }
    }
}
