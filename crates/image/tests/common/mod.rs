//! Helpers that build real test images with real tools (umoci, skopeo) or, where a tool cannot
//! produce the wanted shape, by writing OCI layouts by hand.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The mtime given to every file of the base rootfs (2021-01-01T00:00:00Z).
pub const BASE_MTIME: i64 = 1_609_459_200;

/// The environment the test image's config declares, in order.
pub const IMAGE_ENV: [&str; 3] = ["EMPTY_VAR=", "TRICKY=a=b c  d", "PATH=/bin:/usr/bin"];

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Sets a path's mtime (not following symlinks).
pub fn set_mtime(path: &Path, secs: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A small busybox root filesystem:
///
/// ```text
/// bin/busybox            copy of /bin/busybox
/// bin/sh, bin/ls         symlinks -> busybox
/// bin/busybox-hard       hard link to bin/busybox
/// bin/suid               mode 4755, owner 1000:1000
/// etc/conf/a             "old conf", xattr user.hutch=yes
/// data/gone              "bye" (deleted by a later layer)
/// tmp/                   mode 1777
/// ```
/// Everything has mtime [`BASE_MTIME`].
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc/conf", "data", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    symlink("busybox", root.join("bin/ls")).unwrap();
    fs::hard_link(root.join("bin/busybox"), root.join("bin/busybox-hard")).unwrap();
    fs::write(root.join("bin/suid"), b"#!/bin/sh\necho suid\n").unwrap();
    rustix::fs::chown(
        root.join("bin/suid"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .unwrap();
    fs::set_permissions(root.join("bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(root.join("etc/conf/a"), b"old conf\n").unwrap();
    rustix::fs::lsetxattr(
        root.join("etc/conf/a"),
        "user.hutch",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(root.join("data/gone"), b"bye\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    for p in [
        "bin/busybox",
        "bin/sh",
        "bin/ls",
        "bin/suid",
        "etc/conf/a",
        "data/gone",
        "tmp",
        "etc/conf",
        "etc",
        "data",
        "bin",
    ] {
        set_mtime(&root.join(p), BASE_MTIME);
    }
    root
}

/// Builds an OCI layout at `dir/layout` with umoci, tag `latest`:
///
/// 1. the [`busybox_rootfs`],
/// 2. `/etc/conf` replaced by a directory holding only `b` (an opaque directory),
/// 3. `/data/gone` deleted (a whiteout),
///
/// and a config with [`IMAGE_ENV`], working dir `/data`, user `1000:1000`, cmd `sh`.
pub fn umoci_image(dir: &Path) -> PathBuf {
    let rootfs = busybox_rootfs(dir);
    let layout = dir.join("layout");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&rootfs)
        .arg("/"));
    let mut config = Command::new("umoci");
    config.args(["config", "--image", &image]);
    for env in IMAGE_ENV {
        config.arg("--config.env").arg(env);
    }
    config.args([
        "--config.workingdir",
        "/data",
        "--config.user",
        "1000:1000",
        "--config.cmd",
        "sh",
    ]);
    run(&mut config);
    let newconf = dir.join("newconf");
    fs::create_dir_all(&newconf).unwrap();
    fs::write(newconf.join("b"), b"new conf\n").unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &image, "--opaque"])
        .arg(&newconf)
        .arg("/etc/conf"));
    run(Command::new("umoci").args(["insert", "--image", &image, "--whiteout", "/data/gone"]));
    layout
}

/// Adds one more layer (a file at `/extra/<name>`) to `layout:latest`, saved as tag `tag`.
pub fn umoci_add_file(layout: &Path, dir: &Path, name: &str, tag: &str) {
    let src = dir.join(format!("extra-{name}"));
    fs::write(&src, name.as_bytes()).unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .args(["--tag", tag])
        .arg(&src)
        .arg(format!("/extra/{name}")));
}

/// `skopeo copy SRC DST` with extra arguments.
pub fn skopeo_copy(extra: &[&str], src: &str, dst: &str) {
    run(Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .args(extra)
        .arg(src)
        .arg(dst));
}

pub fn oci_ref(layout: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", layout.display())
}

/// Parsed JSON of a file.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The blob path of a digest in a layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The manifest (parsed) and its digest for the first entry of a layout's index.json.
pub fn first_manifest(layout: &Path) -> (String, serde_json::Value) {
    let index = read_json(&layout.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = read_json(&blob_path(layout, &digest));
    (digest, manifest)
}

/// Copies a directory tree (plain files and directories only, as layouts have).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes a blob into a layout and returns its descriptor JSON.
pub fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hex), bytes).unwrap();
    serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": bytes.len(),
    })
}

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Writes a manifest (with config and layers) into a hand-built layout and returns its
/// descriptor. `layers` are (blob bytes, diff id).
pub fn put_image(
    layout: &Path,
    config: serde_json::Value,
    layers: &[(Vec<u8>, String)],
) -> serde_json::Value {
    let mut config = config;
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
    });
    let config_desc = put_blob(layout, MT_CONFIG, config.to_string().as_bytes());
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(bytes, _)| put_blob(layout, MT_LAYER_GZIP, bytes))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    });
    put_blob(layout, MT_MANIFEST, manifest.to_string().as_bytes())
}

/// Writes `oci-layout` and `index.json` listing `manifests`.
pub fn write_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": manifests,
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

/// A minimal config for hand-built images.
pub fn config_json(env: &[&str], arch: &str) -> serde_json::Value {
    serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": env },
    })
}

/// A layer tar built with the `tar` crate: entries are (path, contents); returns
/// (gzip blob, diff id).
pub fn simple_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(BASE_MTIME as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let diff_id = sha256(&tar);
    (gzip(&tar), diff_id)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// Names in a store's `sha256/` and `tmp/` directories.
pub fn store_contents(root: &Path) -> (Vec<String>, Vec<String>) {
    let list = |d: PathBuf| {
        let mut v: Vec<String> = fs::read_dir(d)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (list(root.join("sha256")), list(root.join("tmp")))
}

/// Writes tar entries with exactly the names given (including `..` and absolute paths, which
/// `tar::Builder` refuses), for testing how hostile layers are confined.
#[derive(Default)]
pub struct RawTar {
    bytes: Vec<u8>,
}

impl RawTar {
    pub fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
        mode: u32,
    ) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(BASE_MTIME as u64);
        let (major, minor) = if kind == tar::EntryType::Char {
            (1, 3)
        } else {
            (0, 0)
        };
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, data, None, 0o644)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, b"", None, mode)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, b"", Some(target), 0o777)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, b"", Some(target), 0o644)
    }

    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

/// Reads an xattr without following symlinks.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}
