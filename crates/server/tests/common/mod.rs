//! Helpers for the server's integration tests: a server on a free port
//! with a temporary data directory, and a small test image.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hutch_server::{Server, ServerConfig};
use sha2::{Digest, Sha256};

/// A running server; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub key: String,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// Any static executable serves as the agent binary for tests that start
/// no sandbox (the server refuses a dynamically linked one).
pub fn fake_envd() -> PathBuf {
    PathBuf::from("/bin/busybox")
}

pub fn config(data_dir: &Path) -> ServerConfig {
    ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.to_path_buf(),
        fake_envd(),
    )
}

impl TestServer {
    /// A server on a fresh data directory.
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut s = TestServer::start_in(&data_dir).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server on a fresh data directory, its configuration changed by
    /// `tune` first.
    pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(&tmp.path().join("data"));
        tune(&mut cfg);
        let mut s = TestServer::start_cfg(cfg).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server on `data_dir` (which may hold a previous server's state).
    pub async fn start_in(data_dir: &Path) -> TestServer {
        TestServer::start_cfg(config(data_dir)).await
    }

    /// A server over `cfg`, whose API key is `key` (its data directory may
    /// have no key file).
    pub async fn start_cfg_with_key(cfg: ServerConfig, key: &str) -> TestServer {
        TestServer::launch(cfg, Some(key.to_string())).await
    }

    /// A server over `cfg`, whose API key is in its data directory.
    pub async fn start_cfg(cfg: ServerConfig) -> TestServer {
        TestServer::launch(cfg, None).await
    }

    async fn launch(cfg: ServerConfig, key: Option<String>) -> TestServer {
        let data_dir = cfg.data_dir.clone();
        let data_dir = data_dir.as_path();
        let mut server = Server::bind(cfg).await.expect("server starts");
        // The fake agent cannot run a sandbox: no warm pool.
        server.set_warm_pool(0);
        let addr = server.local_addr();
        let key = key.unwrap_or_else(|| {
            std::fs::read_to_string(server.api_key_file())
                .expect("api key file")
                .trim()
                .to_string()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        TestServer {
            addr,
            key,
            data_dir: data_dir.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
        }
    }

    /// Stops the server and waits until it has released the data dir.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the API key.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, self.url(path))
            .header("X-API-Key", &self.key)
    }

    /// Imports `tar` as template `name`; returns the response.
    pub async fn import(&self, name: &str, tar: Vec<u8>) -> reqwest::Response {
        self.req(
            reqwest::Method::POST,
            &format!("/hutch/v1/templates?name={name}&source=test-image"),
        )
        .body(tar)
        .send()
        .await
        .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
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
