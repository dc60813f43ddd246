//! The `hutch` binary against a server on a free port: template commands
//! (a directory tarred on the fly and an archive file), and the one-line
//! errors users meet. Sandbox commands need a real agent and are covered
//! elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hutch_server::{Server, ServerConfig};
use sha2::{Digest, Sha256};

struct TestServer {
    addr: SocketAddr,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> TestServer {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    // A static stand-in for the agent: these tests start no sandbox, so
    // there is no warm pool either.
    let mut server = Server::bind(ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.clone(),
        PathBuf::from("/bin/busybox"),
    ))
    .await
    .unwrap();
    server.set_warm_pool(0);
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        data_dir,
        _tmp: tmp,
        _stop: stop,
    }
}

/// Runs `hutch ARGS` against `server` / `data_dir`, without HUTCH_API_KEY.
async fn hutch(server: &str, data_dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hutch"));
    cmd.args(args)
        .env("HUTCH_SERVER", server)
        .env("HUTCH_DATA_DIR", data_dir)
        .env_remove("HUTCH_API_KEY");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

impl TestServer {
    async fn hutch(&self, args: &[&str]) -> Output {
        hutch(&format!("http://{}", self.addr), &self.data_dir, args).await
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with exit `code` and exactly one stderr line.
fn assert_error(o: &Output, code: i32, line: &str) {
    assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(o));
    assert_eq!(stderr(o), format!("{line}\n"));
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// Writes a one-layer OCI image layout (one small file) to `dir`.
fn write_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut layer = Vec::new();
    {
        let mut b = tar::Builder::new(&mut layer);
        let mut h = tar::Header::new_gnu();
        let data = b"hello\n";
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, "etc/hello", &data[..]).unwrap();
        b.finish().unwrap();
    }
    let (layer_digest, layer_size) = put_blob(dir, &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=hi"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put_blob(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Tars `dir`'s contents (an OCI archive when `dir` is a layout).
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            b.append_dir_all(entry.file_name(), entry.path()).unwrap();
        } else {
            b.append_path_with_name(entry.path(), entry.file_name())
                .unwrap();
        }
    }
    b.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_commands_round_trip() {
    let s = start().await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_layout(&layout);
    let archive = tmp.path().join("image.tar");
    tar_dir(&layout, &archive);

    // A directory is tarred on the fly; a file is sent as is.
    let o = s
        .hutch(&[
            "template",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "fromdir",
        ])
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("imported template fromdir (id "),
        "{}",
        stdout(&o)
    );
    let o = s
        .hutch(&[
            "template",
            "import",
            archive.to_str().unwrap(),
            "--name",
            "fromfile",
        ])
        .await;
    assert!(o.status.success(), "{}", stderr(&o));

    let o = s.hutch(&["template", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LAYERS"),
        "{out}"
    );
    assert!(lines[1].starts_with("fromdir "), "{out}");
    assert!(lines[2].starts_with("fromfile "), "{out}");

    let o = s.hutch(&["template", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        list[0]["env"],
        serde_json::json!([["PATH", "/bin"], ["GREETING", "hi"]])
    );
    assert_eq!(
        list[0]["source"]["pathOrRef"],
        layout.canonicalize().unwrap().to_str().unwrap()
    );

    let o = s
        .hutch(&[
            "template",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "fromdir",
        ])
        .await;
    assert_error(
        &o,
        1,
        "error: template 'fromdir' already exists; remove it first with `hutch template rm fromdir`",
    );
    let o = s.hutch(&["template", "rm", "fromdir"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.hutch(&["template", "rm", "fromdir"]).await;
    assert_error(&o, 1, "error: template 'fromdir' not found");
    let o = s
        .hutch(&["template", "import", "/no/such/image", "--name", "x"])
        .await;
    assert_error(
        &o,
        1,
        "error: cannot read /no/such/image: no such file or directory",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_one_line() {
    let s = start().await;
    let o = s.hutch(&["sandbox", "create", "nope"]).await;
    assert_error(&o, 1, "error: template 'nope' not found");
    let o = s
        .hutch(&["sandbox", "create", "nope", "--env", "FOO"])
        .await;
    assert_error(&o, 2, "error: invalid --env 'FOO': expected KEY=VALUE");
    let o = s.hutch(&["exec", "nosuchsandbox", "--", "true"]).await;
    assert_error(&o, 1, "error: sandbox 'nosuchsandbox' not found");
    let o = s.hutch(&["sandbox", "kill", "nosuchsandbox"]).await;
    assert_error(&o, 1, "error: sandbox 'nosuchsandbox' not found");
    let o = s.hutch(&["sandbox", "list"]).await;
    assert_eq!(
        stdout(&o),
        "ID  TEMPLATE  STATE  STARTED  ENDS  CPUS  MEM_MB  DISK_MB  PIDS  METADATA\n"
    );
    let o = s.hutch(&["exec", "abc"]).await;
    assert_eq!(o.status.code(), Some(2), "missing command is a usage error");

    // No key: neither HUTCH_API_KEY nor a readable key file.
    let empty = tempfile::tempdir().unwrap();
    let o = hutch(
        &format!("http://{}", s.addr),
        empty.path(),
        &["template", "list"],
    )
    .await;
    assert_error(
        &o,
        1,
        &format!(
            "error: no API key: set HUTCH_API_KEY or run on the server host where {}/api-key is readable",
            empty.path().display()
        ),
    );

    // Nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{free}");
    let o = hutch(&url, &s.data_dir, &["sandbox", "list"]).await;
    assert_error(
        &o,
        1,
        &format!(
            "error: cannot reach the Hutch server at {url}: connection refused — is `hutch serve` running?"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reports_a_busy_port() {
    let s = start().await;
    let other = tempfile::tempdir().unwrap();
    let o = s
        .hutch(&[
            "serve",
            "--listen",
            &s.addr.to_string(),
            "--data-dir",
            other.path().to_str().unwrap(),
            "--envd",
            "/bin/busybox",
        ])
        .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).ends_with(&format!(
            "error: cannot listen on {}: address in use\n",
            s.addr
        )),
        "{}",
        stderr(&o)
    );
}
