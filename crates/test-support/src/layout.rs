//! Writing OCI image layouts by hand: gzip'd tar layers, config, manifest, index.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::paths::run;

/// Timestamp used for generated files and image metadata; file times are clamped to it.
pub(crate) const EPOCH: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z
const CREATED: &str = "2024-01-01T00:00:00Z";

pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Where a layer's tar stream goes: an uncompressed file, which `gzip` and `sha256sum` then
/// process (far faster than doing it in-process in an unoptimised test build).
pub(crate) type LayerTar = tar::Builder<BufWriter<File>>;

struct Layer {
    digest: String,
    size: u64,
    diff_id: String,
    created_by: String,
}

/// What goes into the image config's `config` object.
pub(crate) struct ImageConfig<'a> {
    pub env: &'a [&'a str],
    pub working_dir: &'a str,
    pub cmd: &'a [&'a str],
}

/// Builds an OCI image layout directory with a single image tagged `tag`.
pub(crate) struct LayoutBuilder {
    dir: PathBuf,
    layers: Vec<Layer>,
}

impl LayoutBuilder {
    pub(crate) fn new(dir: &Path) -> Result<LayoutBuilder> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}/blobs/sha256", dir.display()))?;
        Ok(LayoutBuilder {
            dir: dir.to_path_buf(),
            layers: Vec::new(),
        })
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    /// Adds a gzip'd tar layer whose entries `fill` appends.
    pub(crate) fn add_layer(
        &mut self,
        created_by: &str,
        fill: impl FnOnce(&mut LayerTar) -> Result<()>,
    ) -> Result<()> {
        let tar_path = self.dir.join(".layer.tar");
        let gz_path = self.dir.join(".layer.tar.gz");
        let file =
            File::create(&tar_path).with_context(|| format!("creating {}", tar_path.display()))?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        fill(&mut tar).with_context(|| format!("writing layer `{created_by}`"))?;
        tar.into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", tar_path.display()))?;
        let diff_id = sha256_file(&tar_path)?;
        let gz =
            File::create(&gz_path).with_context(|| format!("creating {}", gz_path.display()))?;
        run(Command::new("gzip")
            .args(["-1", "--no-name", "--stdout"])
            .arg(&tar_path)
            .stdout(gz))?;
        fs::remove_file(&tar_path)?;
        let digest = sha256_file(&gz_path)?;
        let size = fs::metadata(&gz_path)?.len();
        fs::rename(&gz_path, self.blobs().join(hex_of(&digest)))?;
        self.layers.push(Layer {
            digest,
            size,
            diff_id,
            created_by: created_by.to_owned(),
        });
        Ok(())
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = self.blobs().join(hex_of(&digest));
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok((digest, bytes.len() as u64))
    }

    /// Writes config, manifest, `index.json` (one manifest, ref name `tag`) and `oci-layout`.
    pub(crate) fn finish(self, config: &ImageConfig<'_>, tag: &str) -> Result<()> {
        let config = json!({
            "created": CREATED,
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Env": config.env,
                "Cmd": config.cmd,
                "WorkingDir": config.working_dir,
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|l| json!({
                "created": CREATED,
                "created_by": l.created_by,
            })).collect::<Vec<_>>(),
        });
        let (config_digest, config_size) = self.write_blob(&serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": config_digest,
                "size": config_size,
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": MEDIA_LAYER_GZIP,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let (manifest_digest, manifest_size) = self.write_blob(&serde_json::to_vec(&manifest)?)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        fs::write(
            self.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(())
    }
}

/// `sha256:<hex>` of a file, by `sha256sum`.
fn sha256_file(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path).stdout(Stdio::piped()))?;
    let out = String::from_utf8_lossy(&out.stdout);
    match out.split_whitespace().next() {
        Some(hex) if hex.len() == 64 => Ok(format!("sha256:{hex}")),
        _ => bail!("unexpected sha256sum output {out:?}"),
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Appending synthetic entries (no files on disk needed; owner, mode and time are explicit).
pub(crate) struct Entries<'a> {
    pub tar: &'a mut LayerTar,
}

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(EPOCH);
    h.set_size(0);
    h
}

impl Entries<'_> {
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.dir_owned(path, mode, 0, 0)
    }

    pub(crate) fn dir_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Result<()> {
        let mut h = header(EntryType::Directory, mode, uid, gid);
        self.tar
            .append_data(&mut h, path, io::empty())
            .with_context(|| format!("tar: {path}/"))
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut h = header(EntryType::Regular, mode, 0, 0);
        h.set_size(data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .with_context(|| format!("tar: {path}"))
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = header(EntryType::Symlink, 0o777, 0, 0);
        self.tar
            .append_link(&mut h, path, target)
            .with_context(|| format!("tar: {path} -> {target}"))
    }
}

/// Appends the tree under `root` (not `root` itself) to `tar` with paths relative to `root`,
/// preserving owners, modes (incl. setuid/sticky), symlinks, hard links, devices and fifos;
/// sockets are skipped, and so is everything below the top-level `dev`, `proc` and `sys`.
/// Modification times are clamped to [`EPOCH`].
pub(crate) fn append_tree(tar: &mut LayerTar, root: &Path) -> Result<()> {
    let mut links = HashMap::new();
    walk(tar, root, Path::new(""), &mut links)
}

fn walk(
    tar: &mut LayerTar,
    root: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let full = root.join(&rel);
        let md = fs::symlink_metadata(&full).with_context(|| format!("stat {}", full.display()))?;
        let ft = md.file_type();
        let mut h = Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0).min(EPOCH));
        h.set_size(0);
        let what = || format!("tar: {}", full.display());
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            tar.append_data(&mut h, &rel, io::empty())
                .with_context(what)?;
            let skip_contents = rel.parent() == Some(Path::new(""))
                && matches!(name.to_str(), Some("dev" | "proc" | "sys"));
            if !skip_contents {
                walk(tar, root, &rel, links)?;
            }
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(&full).with_context(what)?;
            tar.append_link(&mut h, &rel, target).with_context(what)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    h.set_entry_type(EntryType::Link);
                    tar.append_link(&mut h, &rel, first).with_context(what)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), rel.clone());
            }
            h.set_entry_type(EntryType::Regular);
            h.set_size(md.len());
            let file = File::open(&full).with_context(what)?;
            tar.append_data(&mut h, &rel, file).with_context(what)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            h.set_device_major(rustix::fs::major(md.rdev()))?;
            h.set_device_minor(rustix::fs::minor(md.rdev()))?;
            tar.append_data(&mut h, &rel, io::empty())
                .with_context(what)?;
        } else if ft.is_fifo() {
            h.set_entry_type(EntryType::Fifo);
            tar.append_data(&mut h, &rel, io::empty())
                .with_context(what)?;
        }
        // Sockets are not archivable; skip them.
    }
    Ok(())
}
