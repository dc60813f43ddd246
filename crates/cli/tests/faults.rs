//! Faults around the server: `runc` failing or missing, the server killed
//! with `kill -9` in the middle of a create, a template build, a file upload
//! and a snapshot, the data directory's disk full, the database locked by
//! another process, and PostgreSQL restarted under a running server. Each time the caller gets a clear error, nothing half-made is
//! listed afterwards, nothing is leaked on the host, and what had completed
//! before the fault is intact.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hutch_test_support::{
    HostResources, Postgres, TestDir, TestServer, busybox_image, http, wait_until,
};
use serde_json::{Value, json};

/// A `runc` that runs the real one, except where a file in its control
/// directory says otherwise: `fail-<command>` makes `runc <command>` fail
/// with a message, `hold-<command>` makes it wait (after touching
/// `held-<command>`) until the file is removed.
struct FaultyRunc {
    dir: PathBuf,
}

impl FaultyRunc {
    fn install(dir: &Path) -> FaultyRunc {
        let real = which("runc");
        let ctl = dir.join("runc-faults");
        std::fs::create_dir_all(&ctl).unwrap();
        let script = format!(
            r#"#!/bin/sh
sub=
for a in "$@"; do
    case "$a" in
        --version|run|create|start|exec|kill|delete|state|list|pause|resume|update|events|ps) sub="$a"; break ;;
    esac
done
if [ -n "$sub" ] && [ -e "{ctl}/fail-$sub" ]; then
    echo "runc $sub: injected failure: the container runtime is broken" >&2
    exit 1
fi
if [ -n "$sub" ] && [ -e "{ctl}/hold-$sub" ]; then
    touch "{ctl}/held-$sub"
    while [ -e "{ctl}/hold-$sub" ]; do sleep 0.05; done
fi
exec {real} "$@"
"#,
            ctl = ctl.display(),
            real = real.display(),
        );
        let path = ctl.join("runc");
        std::fs::write(&path, script).unwrap();
        let status = Command::new("chmod")
            .arg("755")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        FaultyRunc { dir: ctl }
    }

    fn path(&self) -> String {
        self.dir.join("runc").display().to_string()
    }

    fn set(&self, what: &str, command: &str) {
        std::fs::write(self.dir.join(format!("{what}-{command}")), b"").unwrap();
    }

    fn clear(&self, what: &str, command: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{what}-{command}")));
    }

    fn wait_held(&self, command: &str) {
        let marker = self.dir.join(format!("held-{command}"));
        wait_until(
            &format!("runc {command} to be called"),
            Duration::from_secs(60),
            || marker.exists(),
        );
        std::fs::remove_file(marker).unwrap();
    }
}

fn which(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} is not installed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn import_bb(server: &TestServer) {
    server.import(&busybox_image(), "bb", &[]);
}

fn sh(server: &TestServer, id: &str, script: &str) -> (bool, String) {
    let out = server.cli(&["exec", id, "--", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn sh_ok(server: &TestServer, id: &str, script: &str) -> String {
    let (ok, out) = sh(server, id, script);
    assert!(ok, "{script:?} failed in {id}: {out}");
    out
}

/// The ids of the sandboxes the server lists (running and paused).
fn listed(server: &TestServer) -> Vec<String> {
    let out = server.cli_ok(&["sandbox", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<String> = list
        .iter()
        .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn create(server: &TestServer) -> (u16, Value) {
    let (status, body) = http(
        server,
        reqwest::Method::POST,
        "/sandboxes",
        &[],
        Some(json!({"templateID": "bb"})),
    );
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("create answered {status} with no JSON ({e}): {body}"));
    (status, value)
}

/// Asserts that exactly the sandboxes `live` hold state directories and
/// runc containers, that every mount and loop device under the data
/// directory is one of theirs, and that the network elements match.
fn assert_host_holds(server: &TestServer, live: &[String]) {
    let mut want = live.to_vec();
    want.sort();
    let check = |r: &HostResources| -> Result<(), String> {
        if r.state_dirs != want {
            return Err(format!("state dirs {:?}, want {want:?}", r.state_dirs));
        }
        if r.runc_state != want {
            return Err(format!("runc containers {:?}, want {want:?}", r.runc_state));
        }
        for (kind, n) in r.network_counts() {
            if n != want.len() {
                return Err(format!("{kind}: {n}, want {}", want.len()));
            }
        }
        let sandboxes = server.data_dir().join("sandboxes");
        for m in r.mounts.iter().chain(&r.loop_devices) {
            let theirs = want
                .iter()
                .any(|id| m.contains(&sandboxes.join(id).display().to_string()));
            // Template layers and volumes are mounted by no sandbox.
            if !theirs && m.contains(&sandboxes.display().to_string()) {
                return Err(format!("{m} belongs to no live sandbox"));
            }
        }
        Ok(())
    };
    let (r, _) = HostResources::settle(server.data_dir(), &want, |r| check(r).is_ok());
    if let Err(e) = check(&r) {
        panic!("{e}\n{r}");
    }
}

#[test]
fn a_failing_or_missing_runc_gives_clear_errors_and_leaves_nothing() {
    // Missing: the server refuses to start and says how to fix it.
    let dir = TestDir::new();
    let out = Command::new(hutch_test_support::hutch_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--runc",
            "/nonexistent/runc",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("runc not found: install it with `apt install runc`"),
        "{stderr}"
    );

    // Failing: every create is a clear 500, nothing is kept, and the next
    // create after the fault works.
    let dir = TestDir::new();
    let runc = FaultyRunc::install(dir.path());
    let runc_path = runc.path();
    let server = TestServer::restart_with_args(dir, &["--warm-pool", "0", "--runc", &runc_path]);
    import_bb(&server);
    let kept = server.create_sandbox("bb", &[]);
    sh_ok(&server, &kept, "echo kept > /root/kept");

    runc.set("fail", "run");
    for _ in 0..3 {
        let (status, body) = create(&server);
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["code"], 500, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("injected failure: the container runtime is broken"),
            "the error names runc's own words: {message}"
        );
    }
    assert_eq!(listed(&server), vec![kept.clone()]);
    assert_host_holds(&server, std::slice::from_ref(&kept));
    runc.clear("fail", "run");

    let fresh = server.create_sandbox("bb", &[]);
    assert_eq!(sh_ok(&server, &kept, "cat /root/kept").trim(), "kept");
    sh_ok(&server, &fresh, "true");
    for id in [&kept, &fresh] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_host_holds(&server, &[]);
}

/// Runs `hutch ARGS` against `server`, kills the server with `kill -9`
/// while that command's `runc run` is under way, lets runc go on (it
/// starts its container after the crash), and returns the data directory
/// for a restart. The command must have failed.
fn kill9_while_runc_runs(server: TestServer, runc: &FaultyRunc, args: &[&str]) -> TestDir {
    runc.set("hold", "run");
    let command: Child = server
        .hutch()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    runc.wait_held("run");
    let dir = server.kill9();
    runc.clear("hold", "run");
    let out = command.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "hutch {args:?} cannot have succeeded"
    );
    dir
}

/// Sends the head and the first MiB of a 16 MiB upload to `path` in
/// sandbox `id` and leaves the connection open, the rest never sent.
fn start_upload(server: &TestServer, id: &str, path: &str) -> TcpStream {
    let mut conn = TcpStream::connect(server.addr()).unwrap();
    let head = format!(
        "POST /files?path={path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\n\
         E2b-Sandbox-Id: {id}\r\nE2b-Sandbox-Port: 49983\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        server.addr(),
        server.api_key(),
        16 << 20
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&vec![7u8; 1 << 20]).unwrap();
    conn.flush().unwrap();
    conn
}

#[test]
fn kill9_during_a_create_a_build_an_upload_and_a_snapshot_loses_nothing_finished() {
    let dir = TestDir::new();
    let runc = FaultyRunc::install(dir.path());
    let runc_path = runc.path();
    let args = ["--warm-pool", "0", "--runc", runc_path.as_str()];
    let server = TestServer::restart_with_args(dir, &args);
    import_bb(&server);
    let kept = server.create_sandbox("bb", &[]);
    sh_ok(&server, &kept, "echo before > /root/done");

    // 1. A create whose `runc run` is under way when the server dies. runc
    //    goes on after the crash and starts the container: the restarted
    //    server must find it belongs to nothing and remove it.
    let dir = kill9_while_runc_runs(server, &runc, &["sandbox", "create", "bb"]);
    let server = TestServer::restart_with_args(dir, &args);
    assert_eq!(listed(&server), vec![kept.clone()]);
    assert_host_holds(&server, std::slice::from_ref(&kept));
    assert_eq!(sh_ok(&server, &kept, "cat /root/done").trim(), "before");

    // 2. A template build whose RUN step's build sandbox is starting when
    //    the server dies: afterwards no half-built template is listed,
    //    nothing of the build is left, and the same build then succeeds.
    let ctx = TestDir::new();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM bb\nRUN echo built > /built.txt\n",
    )
    .unwrap();
    let context = ctx.path().to_str().unwrap();
    let dir = kill9_while_runc_runs(
        server,
        &runc,
        &["template", "build", "--name", "half", context],
    );
    let server = TestServer::restart_with_args(dir, &args);
    let templates = server.cli_ok(&["template", "list"]);
    assert!(!templates.contains("half"), "{templates}");
    assert_eq!(listed(&server), vec![kept.clone()]);
    assert_host_holds(&server, std::slice::from_ref(&kept));
    server.cli_ok(&[
        "template",
        "build",
        "--name",
        "half",
        ctx.path().to_str().unwrap(),
    ]);
    let from_build = server.create_sandbox("half", &[]);
    assert_eq!(
        sh_ok(&server, &from_build, "cat /built.txt").trim(),
        "built"
    );
    server.cli_ok(&["sandbox", "kill", &from_build]);

    // 3. An upload cut off by the crash: the file never appears, not even
    //    in part; what was there stays.
    sh_ok(&server, &kept, "echo old > /root/upload.bin");
    let conn = start_upload(&server, &kept, "/root/upload.bin");
    // The body has started to flow to the agent.
    std::thread::sleep(Duration::from_millis(300));
    let dir = server.kill9();
    drop(conn);
    let server = TestServer::restart_with_args(dir, &args);
    assert_eq!(listed(&server), vec![kept.clone()]);
    assert_eq!(
        sh_ok(&server, &kept, "cat /root/upload.bin").trim(),
        "old",
        "a cut-off upload must leave the old file whole"
    );
    let (_, names) = sh(&server, &kept, "ls -a /root");
    assert!(
        names.lines().all(|l| !l.contains("upload.bin.")),
        "no partial file is left: {names}"
    );

    // 4. A snapshot under way (copying 64 MiB of the sandbox's files) when
    //    the server dies: afterwards the snapshot is either listed and whole
    //    or not listed at all, and the sandbox is in the state the server
    //    reports and usable.
    sh_ok(
        &server,
        &kept,
        "dd if=/dev/urandom of=/root/big bs=1M count=64 2>/dev/null && md5sum /root/big > /root/big.md5",
    );
    let snapshotting = Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", &format!("X-API-Key: {}", server.api_key())])
        .args(["-d", r#"{"name": "mid-crash"}"#])
        .arg(format!("{}/sandboxes/{kept}/snapshots", server.url()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let dir = server.kill9();
    snapshotting.wait_with_output().unwrap();
    let server = TestServer::restart_with_args(dir, &args);
    assert_eq!(listed(&server), vec![kept.clone()]);
    let (status, body) = http(&server, reqwest::Method::GET, "/snapshots", &[], None);
    assert_eq!(status, 200, "{body}");
    let snapshots: Vec<Value> = serde_json::from_str(&body).unwrap();
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        &format!("/sandboxes/{kept}"),
        &[],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    if info["state"] == "paused" {
        server.cli_ok(&["sandbox", "resume", &kept]);
    } else {
        assert_eq!(info["state"], "running", "{info}");
    }
    sh_ok(&server, &kept, "md5sum -c /root/big.md5 && cat /root/done");
    let mut live = vec![kept.clone()];
    if let Some(snapshot) = snapshots.first() {
        // Listed: then whole. A sandbox from it has every file.
        let name = snapshot["snapshotID"].as_str().unwrap().to_owned();
        let from = server.create_sandbox(&name, &[]);
        sh_ok(&server, &from, "md5sum -c /root/big.md5 && cat /root/done");
        live.push(from);
    }
    assert_host_holds(&server, &live);
    for id in &live {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_host_holds(&server, &[]);
    // Nothing of a half-made snapshot is left among the layers being made.
    let staging: Vec<String> = walk_names(&server.data_dir().join("images"))
        .into_iter()
        .filter(|n| n.contains("tmp") || n.contains("staging") || n.contains("partial"))
        .collect();
    assert!(
        staging.iter().all(|n| !n.contains("snapshot")),
        "{staging:?}"
    );
}

/// Names of everything under `dir`, two levels deep.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        names.push(entry.file_name().to_string_lossy().into_owned());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            for inner in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                names.push(format!(
                    "{}/{}",
                    entry.file_name().to_string_lossy(),
                    inner.file_name().to_string_lossy()
                ));
            }
        }
    }
    names
}

/// Fills the file system of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("No space left on device"), "{said}");
    filler
}

/// POSTs `mib` MiB of zeros to `path` in 1 MiB pieces with pauses between
/// them, as a slow client would, and returns the answer's status and text.
fn slow_upload(server: &TestServer, path: &str, mib: usize) -> (u16, String) {
    use std::io::Read;
    let mut conn = TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\n\
         Content-Type: application/x-tar\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        server.addr(),
        server.api_key(),
        mib << 20
    );
    conn.write_all(head.as_bytes()).unwrap();
    let piece = vec![0u8; 1 << 20];
    for i in 0..mib {
        if let Err(e) = conn.write_all(&piece) {
            panic!("the server closed the connection after {i} MiB: {e}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    (status, answer)
}

#[test]
fn a_full_data_disk_is_a_clear_507_and_nothing_is_lost() {
    // The data directory on a file system of its own, small enough to fill.
    let dir = TestDir::new();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=384m", "hutch-test-full"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount a tmpfs");
    let data = dir.path().to_path_buf();
    let args = ["--warm-pool", "0"];
    let server = TestServer::restart_with_args(dir, &args);
    import_bb(&server);
    let kept = server.create_sandbox("bb", &[]);
    sh_ok(&server, &kept, "echo kept > /root/kept");

    let filler = fill(&data);
    // A create: 507 with E2B's error body, saying what to do.
    let (status, body) = create(&server);
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["code"], 507, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("free some space"),
        "the error says what to do: {message}"
    );
    // An import: refused with the same reason, nothing registered.
    let image = busybox_image();
    let out = server.cli(&[
        "template",
        "import",
        image.to_str().unwrap(),
        "--name",
        "bb2",
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("free some space"), "{said}");
    // A client uploading slowly: the server refuses the image on its first
    // bytes and reads the rest before answering, so the client gets the
    // answer rather than a connection closed under it.
    let (status, answer) = slow_upload(&server, "/hutch/v1/templates?name=big", 16);
    assert_eq!(status, 507, "{answer}");
    assert!(answer.contains("free some space"), "{answer}");
    // The server still answers, lists what it had, and the sandbox that
    // was running still runs with its files.
    assert_eq!(listed(&server), vec![kept.clone()]);
    let templates = server.cli_ok(&["template", "list"]);
    assert!(
        templates.contains("bb") && !templates.contains("bb2"),
        "{templates}"
    );
    assert_eq!(sh_ok(&server, &kept, "cat /root/kept").trim(), "kept");
    assert_host_holds(&server, std::slice::from_ref(&kept));

    // Space again: everything works, also after a restart.
    std::fs::remove_file(filler).unwrap();
    let fresh = server.create_sandbox("bb", &[]);
    server.import(&busybox_image(), "bb2", &[]);
    let server = TestServer::restart_with_args(server.stop_ok(), &args);
    let mut both = vec![kept.clone(), fresh.clone()];
    both.sort();
    assert_eq!(listed(&server), both);
    assert_eq!(sh_ok(&server, &kept, "cat /root/kept").trim(), "kept");
    let again = server.create_sandbox("bb2", &[]);
    for id in [&kept, &fresh, &again] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_host_holds(&server, &[]);
}

#[test]
fn a_locked_database_is_a_clear_error_and_the_server_goes_on() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    import_bb(&server);
    let kept = server.create_sandbox("bb", &[]);
    let db = server.data_dir().join("hutch.db");
    // Another process takes the database's write lock and keeps it for
    // longer than the server waits for it.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(12)\n\
             c.execute('ROLLBACK')\n",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    std::io::Read::read_exact(holder.stdout.as_mut().unwrap(), &mut line).unwrap();
    assert_eq!(&line, b"locked");

    let (status, body) = create(&server);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("database is busy"), "{message}");
    // Reads go on (the database is in WAL mode), the sandbox runs.
    assert_eq!(listed(&server), vec![kept.clone()]);
    sh_ok(&server, &kept, "true");
    assert!(holder.wait().unwrap().success());

    // The lock is gone: writes work again, nothing half-made is listed.
    let fresh = server.create_sandbox("bb", &[]);
    let mut both = vec![kept.clone(), fresh.clone()];
    both.sort();
    assert_eq!(listed(&server), both);
    for id in [&kept, &fresh] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_host_holds(&server, &[]);
}

#[test]
fn postgres_restarting_under_the_server_is_a_clear_503_then_work_goes_on() {
    let pg = Postgres::start();
    let url = pg.url();
    let args = ["--warm-pool", "0", "--database-url", url.as_str()];
    let server = TestServer::start_with_args(&args);
    import_bb(&server);
    let kept = server.create_sandbox("bb", &[]);
    sh_ok(&server, &kept, "echo kept > /root/kept");

    pg.stop();
    // Requests that need the database: a clear 503, nothing changed.
    let (status, body) = create(&server);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("the database cannot be reached"),
        "{message}"
    );
    // The running sandbox goes on meanwhile: its agent answers through
    // the front door as the SDKs reach it.
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/files?path=/root/kept",
        &[("E2b-Sandbox-Id", &kept), ("E2b-Sandbox-Port", "49983")],
        None,
    );
    assert_eq!((status, body.trim()), (200, "kept"));

    pg.start_again();
    // The server connects again by itself, and holds the database again:
    // a second server on it is refused.
    wait_until(
        "the server to use the database again",
        Duration::from_secs(60),
        || create(&server).0 == 201,
    );
    wait_until(
        "the server to hold the database again",
        Duration::from_secs(30),
        || pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == "1",
    );
    let other = TestDir::new();
    let out = Command::new(hutch_test_support::hutch_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .arg("--data-dir")
        .arg(other.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another Hutch server is using this database"),
        "{stderr}"
    );

    let ids = listed(&server);
    assert_eq!(
        ids.len(),
        2,
        "the kept sandbox and the one made after: {ids:?}"
    );
    assert!(ids.contains(&kept));
    for id in &ids {
        sh_ok(&server, id, "true");
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_host_holds(&server, &[]);
}
