//! Helpers for the server's integration tests, which run against
//! [`hutch_test_support::TestServer`]: E2B error bodies, a small test image
//! and its import, and the configuration for checks of `Server::bind` itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use hutch_server::ServerConfig;
use hutch_test_support::{STAND_IN_ENVD, TestServer};
use sha2::{Digest, Sha256};

/// A configuration for `Server::bind` on a free port over `data_dir`, with
/// the stand-in agent of servers that start no sandbox.
pub fn config(data_dir: &Path) -> ServerConfig {
    ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.to_path_buf(),
        PathBuf::from(STAND_IN_ENVD),
    )
}

/// Imports `tar` (an OCI archive) into `server` as template `name`, from
/// source `test-image`; returns the response.
pub async fn import(server: &TestServer, name: &str, tar: Vec<u8>) -> reqwest::Response {
    server
        .request(
            reqwest::Method::POST,
            &format!("/hutch/v1/templates?name={name}&source=test-image"),
        )
        .body(tar)
        .send()
        .await
        .unwrap()
}

/// Asserts an E2B-style error body: `{"code": status, "message": ...}`;
/// returns the message.
pub async fn error_body(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["code"], status, "{body}");
    body["message"].as_str().expect("message").to_string()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn tar_file(builder: &mut tar::Builder<&mut Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, path, data).unwrap();
}

fn tar_dir(builder: &mut tar::Builder<&mut Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Directory);
    builder.append_data(&mut h, path, &[][..]).unwrap();
}

fn tar_symlink(builder: &mut tar::Builder<&mut Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Symlink);
    builder.append_link(&mut h, path, target).unwrap();
}

/// The image config's `Env` of [`busybox_oci_archive`].
pub const IMAGE_ENV: &[&str] = &[
    "PATH=/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "MY_APP_CONFIG=/etc/myapp/config.json",
    "EMPTY_VAR=",
    "TRICKY=a=b c  d",
    "OVERRIDE=image",
];

/// An OCI archive (a tarred OCI image layout) of a one-layer image holding
/// the host's `/bin/busybox` as `/bin/busybox` and `/bin/sh`, with
/// [`IMAGE_ENV`], `WorkingDir=/app` and an empty `User`. `tag` varies the
/// layer's content (and so its digest).
pub fn busybox_oci_archive(tag: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt install busybox)");
    let mut layer = Vec::new();
    {
        let mut b = tar::Builder::new(&mut layer);
        tar_dir(&mut b, "bin");
        tar_file(&mut b, "bin/busybox", 0o755, &busybox);
        tar_symlink(&mut b, "bin/sh", "busybox");
        tar_dir(&mut b, "app");
        tar_dir(&mut b, "etc");
        tar_file(&mut b, "etc/image-tag", 0o644, tag.as_bytes());
        b.finish().unwrap();
    }
    let layer_digest = sha256(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": IMAGE_ENV, "WorkingDir": "/app", "User": ""},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    }))
    .unwrap();

    let mut archive = Vec::new();
    {
        let mut b = tar::Builder::new(&mut archive);
        tar_file(
            &mut b,
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        tar_file(&mut b, "index.json", 0o644, &index);
        tar_dir(&mut b, "blobs");
        tar_dir(&mut b, "blobs/sha256");
        for (digest, blob) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            let hex = digest.trim_start_matches("sha256:");
            tar_file(&mut b, &format!("blobs/sha256/{hex}"), 0o644, blob);
        }
        b.finish().unwrap();
    }
    archive
}
