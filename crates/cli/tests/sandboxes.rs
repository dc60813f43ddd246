//! The `hutch` CLI against a real server with real sandboxes: output
//! streams, exit codes, errors a user can meet, and sandbox lifecycle as
//! seen from the host.

use std::process::Output;
use std::time::Duration;

use hutch_test_support::{
    TestServer, busybox_image, free_port, hutch_bin, wait_torn_down, wait_until,
};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ready_server() -> TestServer {
    let server = TestServer::start();
    let out = server.cli(&[
        "template",
        "import",
        busybox_image().to_str().unwrap(),
        "--name",
        "bb",
    ]);
    assert!(out.status.success(), "import: {}", stderr(&out));
    server
}

fn create(server: &TestServer, extra: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", "bb"];
    args.extend_from_slice(extra);
    let out = server.cli(&args);
    assert!(out.status.success(), "create: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// One line on stderr, non-zero exit.
fn assert_clear_error(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        out.status
    );
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn exec_streams_stdout_and_stderr_and_exit_code() {
    let server = ready_server();
    let id = create(&server, &[]);
    let out = server.cli(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    // Large output arrives complete.
    let out = server.cli(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "head -c 5000000 /dev/zero | tr '\\0' x",
    ]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 5_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));

    // Killed by a signal: 128 + signal number, as a shell reports it.
    let out = server.cli(&["exec", &id, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137));

    // A background child that keeps stdout open does not hold the command.
    let out = server.cli(&["exec", &id, "--", "sh", "-c", "sleep 1000 & echo started"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "started\n");
}

#[test]
fn errors_are_one_clear_line() {
    let server = ready_server();
    assert_clear_error(&server.cli(&["sandbox", "create", "nope"]), "nope");
    assert_clear_error(
        &server.cli(&["sandbox", "create", "bb", "--env", "NOEQUALS"]),
        "NOEQUALS",
    );
    assert_clear_error(
        &server.cli(&["exec", "doesnotexist", "--", "true"]),
        "doesnotexist",
    );
    assert_clear_error(
        &server.cli(&["sandbox", "kill", "doesnotexist"]),
        "doesnotexist",
    );
    let id = create(&server, &[]);
    assert_clear_error(
        &server.cli(&["exec", &id, "--", "/no/such/binary"]),
        "/no/such/binary",
    );
    assert_clear_error(
        &server.cli(&["exec", &id, "--user", "ghost", "--", "true"]),
        "ghost",
    );

    // Nothing listening.
    let port = free_port();
    let out = std::process::Command::new(hutch_bin())
        .args(["sandbox", "list"])
        .env("HUTCH_SERVER", format!("http://127.0.0.1:{port}"))
        .env("HUTCH_API_KEY", "hutch_x")
        .output()
        .unwrap();
    assert_clear_error(&out, "cannot reach");

    // Wrong key.
    let out = server
        .hutch()
        .env("HUTCH_API_KEY", "hutch_wrong")
        .args(["sandbox", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn list_kill_and_nothing_left_on_the_host() {
    let server = ready_server();
    let id = create(&server, &["--metadata", "owner=me"]);
    let listed = stdout(&server.cli(&["sandbox", "list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("list --json is JSON");
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandboxID"] == id.as_str())
        .expect("new sandbox listed");
    assert_eq!(entry["metadata"]["owner"], "me");

    let sandbox_dir = server.data_dir().join("sandboxes").join(&id);
    assert!(sandbox_dir.exists());
    let out = server.cli(&["sandbox", "kill", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_torn_down(server.data_dir(), &id);
    assert!(!sandbox_dir.exists(), "sandbox directory removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "no mount left for {id}");
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(server.data_dir().join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(!stdout(&runc).contains(&id), "no runc container left");
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/hutch")
            .join(&id)
            .exists(),
        "no cgroup left"
    );
    let listed = stdout(&server.cli(&["sandbox", "list", "--json"]));
    assert!(!listed.contains(&id));
}

#[test]
fn sandboxes_expire_at_their_timeout() {
    let server = ready_server();
    let id = create(&server, &["--timeout", "2"]);
    let dir = server.data_dir().join("sandboxes").join(&id);
    assert!(dir.exists());
    wait_until("the sandbox expires", Duration::from_secs(30), || {
        !dir.exists()
    });
    assert_clear_error(&server.cli(&["exec", &id, "--", "true"]), &id);
}

#[test]
fn run_creates_runs_and_kills() {
    let server = ready_server();
    let out = server.cli(&[
        "run",
        "bb",
        "--env",
        "X=1",
        "--",
        "sh",
        "-c",
        "echo $X; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "1\n");
    let listed = stdout(&server.cli(&["sandbox", "list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 0, "run kills its sandbox");
}

#[test]
fn killed_server_restarts_without_leaks() {
    let server = ready_server();
    let keep = create(&server, &[]);
    let dir = server.kill9();
    // A sandbox directory the database never heard of (a crash mid-create).
    let stray = dir.join("sandboxes").join("strayxxxxxxxxxxxxxxx");
    std::fs::create_dir_all(stray.join("upper")).unwrap();
    let server = TestServer::restart(dir);
    assert!(
        !stray.exists(),
        "unknown sandbox directories are cleaned up"
    );
    let out = server.cli(&["exec", &keep, "--", "echo", "still here"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "still here\n");
    let templates = stdout(&server.cli(&["template", "list", "--json"]));
    assert!(
        templates.contains("\"bb\""),
        "templates intact: {templates}"
    );
}

#[test]
fn secure_sandboxes_require_their_access_token() {
    let server = ready_server();
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let key = format!("X-API-Key: {}", server.api_key());
    let created = curl(&[
        "-X",
        "POST",
        "-H",
        &key,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"templateID":"bb","secure":true}"#,
        &format!("{}/v2/sandboxes", server.url()),
    ]);
    let (body, status) = created.rsplit_once('\n').unwrap();
    assert_eq!(status, "201", "{body}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let id = json["sandboxID"].as_str().unwrap().to_owned();
    let token = json["envdAccessToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert_eq!(token.len(), 32);

    // The agent behind the front door refuses calls without the token...
    let list = |extra: &[&str]| {
        let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json", "-H"];
        let sid = format!("E2b-Sandbox-Id: {id}");
        args.push(&sid);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-d", "{}"]);
        let url = format!("{}/process.Process/List", server.url());
        args.push(&url);
        curl(&args)
    };
    assert!(list(&[]).ends_with("\n401"), "no token: refused");
    assert!(
        list(&["-H", "X-Access-Token: wrong"]).ends_with("\n401"),
        "wrong token: refused"
    );
    let auth = format!("X-Access-Token: {token}");
    assert!(
        list(&["-H", &auth]).ends_with("\n200"),
        "right token: served"
    );

    // ...and the CLI, which learns the token from the sandbox's info, works.
    let out = server.cli(&["exec", &id, "--", "echo", "secure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "secure\n");
    let info = curl(&["-H", &key, &format!("{}/sandboxes/{id}", server.url())]);
    assert!(info.contains(&token), "info carries the token: {info}");
}

#[test]
fn front_door_speaks_h2c_and_http1() {
    let server = ready_server();
    let id = create(&server, &[]);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", version, "-w", "\n%{http_version} %{http_code}"])
            .args(["-H", &format!("E2b-Sandbox-Id: {id}")])
            .args(["-H", "E2b-Sandbox-Port: 49983"])
            .args(["-H", "Content-Type: application/json", "-d", "{}"])
            .arg(format!("{}/process.Process/List", server.url()))
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let expected = if version == "--http1.1" {
            "1.1 200"
        } else {
            "2 200"
        };
        assert!(text.ends_with(expected), "{version}: {text}");
    }
}

/// `GET /v2/sandboxes` as E2B pages it: newest first by default (`order`),
/// `startedAfter`, `X-Next-Token` pages that go on where they stopped, and
/// `X-Total-Running`.
#[test]
fn listings_are_ordered_filtered_and_paged() {
    let server = ready_server();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let id = create(&server, &[]);
            std::thread::sleep(Duration::from_millis(20));
            id
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |path: &str| {
        rt.block_on(async {
            let r = server
                .request(reqwest::Method::GET, path)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let (next, total) = (header("x-next-token"), header("x-total-running"));
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body, next, total)
        })
    };
    let listed = |body: &serde_json::Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let (status, body, next, total) = get("/v2/sandboxes?limit=2");
    assert_eq!(status, 200);
    assert_eq!(listed(&body), newest_first[..2]);
    assert_eq!(total.as_deref(), Some("3"));
    let token = next.expect("a next page");
    let (_, body, next, _) = get(&format!("/v2/sandboxes?limit=2&nextToken={token}"));
    assert_eq!(listed(&body), newest_first[2..]);
    assert!(next.is_none());
    let (_, body, _, _) = get("/v2/sandboxes?order=asc");
    assert_eq!(listed(&body), ids);
    // A row gone meanwhile does not break the next page.
    server.cli_ok(&["sandbox", "kill", &ids[1]]);
    let (_, body, _, _) = get(&format!("/v2/sandboxes?limit=2&nextToken={token}"));
    assert_eq!(listed(&body), [ids[0].clone()]);
    let (_, body, _, _) = get("/v2/sandboxes?startedAfter=2999-01-01T00:00:00Z");
    assert_eq!(listed(&body), Vec::<String>::new());
    let (_, body, _, _) = get("/v2/sandboxes?startedAfter=2020-01-01T00:00:00%2B02:00");
    assert_eq!(listed(&body).len(), 2);
    for bad in ["order=up", "startedAfter=yesterday"] {
        let (status, body, _, _) = get(&format!("/v2/sandboxes?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    for id in [&ids[0], &ids[2]] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
}
