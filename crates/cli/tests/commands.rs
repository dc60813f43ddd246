//! The `hutch` binary against a server on a free port: template commands
//! (a directory tarred on the fly and an archive file), and the one-line
//! errors users meet. Sandbox commands need a real agent and are covered
//! elsewhere.

use std::path::Path;
use std::process::{Command, Output};

use hutch_test_support::TestServer;
use sha2::{Digest, Sha256};

/// Runs `hutch ARGS` against `server` / `data_dir`, without HUTCH_API_KEY
/// (so the key comes from `data_dir`'s key file, as on the server host).
fn hutch_at(server: &str, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hutch"))
        .args(args)
        .env("HUTCH_SERVER", server)
        .env("HUTCH_DATA_DIR", data_dir)
        .env_remove("HUTCH_API_KEY")
        .output()
        .unwrap()
}

/// Runs `hutch ARGS` against `s`, on its host (see [`hutch_at`]).
fn hutch(s: &TestServer, args: &[&str]) -> Output {
    hutch_at(&s.url(), s.data_dir(), args)
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

#[test]
fn template_commands_round_trip() {
    let s = TestServer::start_without_sandboxes(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    write_layout(&layout);
    let archive = tmp.path().join("image.tar");
    tar_dir(&layout, &archive);

    // A directory is tarred on the fly; a file is sent as is.
    let o = hutch(
        &s,
        &[
            "template",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "fromdir",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("imported template fromdir (id "),
        "{}",
        stdout(&o)
    );
    let o = hutch(
        &s,
        &[
            "template",
            "import",
            archive.to_str().unwrap(),
            "--name",
            "fromfile",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = hutch(&s, &["template", "list"]);
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

    let o = hutch(&s, &["template", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        list[0]["env"],
        serde_json::json!([["PATH", "/bin"], ["GREETING", "hi"]])
    );
    assert_eq!(
        list[0]["source"]["pathOrRef"],
        layout.canonicalize().unwrap().to_str().unwrap()
    );

    let o = hutch(
        &s,
        &[
            "template",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "fromdir",
        ],
    );
    assert_error(
        &o,
        1,
        "error: template 'fromdir' already exists; remove it first with `hutch template rm fromdir`",
    );
    let o = hutch(&s, &["template", "rm", "fromdir"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = hutch(&s, &["template", "rm", "fromdir"]);
    assert_error(&o, 1, "error: template 'fromdir' not found");
    let o = hutch(&s, &["template", "import", "/no/such/image", "--name", "x"]);
    assert_error(
        &o,
        1,
        "error: cannot read /no/such/image: no such file or directory",
    );
}

#[test]
fn client_errors_are_one_line() {
    let s = TestServer::start_without_sandboxes(&[]);
    let o = hutch(&s, &["sandbox", "create", "nope"]);
    assert_error(&o, 1, "error: template 'nope' not found");
    let o = hutch(&s, &["sandbox", "create", "nope", "--env", "FOO"]);
    assert_error(&o, 2, "error: invalid --env 'FOO': expected KEY=VALUE");
    let o = hutch(&s, &["exec", "nosuchsandbox", "--", "true"]);
    assert_error(&o, 1, "error: sandbox 'nosuchsandbox' not found");
    let o = hutch(&s, &["sandbox", "kill", "nosuchsandbox"]);
    assert_error(&o, 1, "error: sandbox 'nosuchsandbox' not found");
    let o = hutch(&s, &["sandbox", "list"]);
    assert_eq!(
        stdout(&o),
        "ID  TEMPLATE  STATE  STARTED  ENDS  CPUS  MEM_MB  DISK_MB  PIDS  METADATA\n"
    );
    let o = hutch(&s, &["exec", "abc"]);
    assert_eq!(o.status.code(), Some(2), "missing command is a usage error");

    // No key: neither HUTCH_API_KEY nor a readable key file.
    let empty = tempfile::tempdir().unwrap();
    let o = hutch_at(&s.url(), empty.path(), &["template", "list"]);
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
    let o = hutch_at(&url, s.data_dir(), &["sandbox", "list"]);
    assert_error(
        &o,
        1,
        &format!(
            "error: cannot reach the Hutch server at {url}: connection refused — is `hutch serve` running?"
        ),
    );
}

#[test]
fn serve_reports_a_busy_port() {
    let s = TestServer::start_without_sandboxes(&[]);
    let other = tempfile::tempdir().unwrap();
    let o = hutch(
        &s,
        &[
            "serve",
            "--listen",
            &s.addr().to_string(),
            "--data-dir",
            other.path().to_str().unwrap(),
            "--envd",
            "/bin/busybox",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).ends_with(&format!(
            "error: cannot listen on {}: address in use\n",
            s.addr()
        )),
        "{}",
        stderr(&o)
    );
}
