//! Pause and resume, metrics, user ports through the front door, and API
//! keys, against a real server with real sandboxes.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hutch_test_support::{TestServer, busybox_image, debian_image, http, wait_until};
use serde_json::Value;

fn run(server: &TestServer, args: &[&str]) -> Output {
    server.hutch().args(args).output().expect("running hutch")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(server: &TestServer, args: &[&str]) -> String {
    let out = run(server, args);
    assert!(
        out.status.success(),
        "hutch {args:?}: {}\nserver log:\n{}",
        stderr(&out),
        server.log()
    );
    stdout(&out)
}

fn server_with(image: PathBuf, name: &str) -> TestServer {
    let server = TestServer::start();
    ok(
        &server,
        &[
            "template",
            "import",
            image.to_str().unwrap(),
            "--name",
            name,
        ],
    );
    server
}

fn create(server: &TestServer, template: &str, extra: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", template];
    args.extend_from_slice(extra);
    ok(server, &args).trim().to_owned()
}

fn get_json(server: &TestServer, path: &str) -> Value {
    let (status, body) = http(server, reqwest::Method::GET, path, &[], None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn listed_ids(server: &TestServer, path: &str) -> Vec<String> {
    get_json(server, path)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
        .collect()
}

/// Lines in a file the sandbox wrote, read on the host from its overlay
/// upper directory.
fn lines_in_upper(server: &TestServer, id: &str, path: &str) -> usize {
    let file = server
        .data_dir()
        .join("sandboxes")
        .join(id)
        .join("disk/upper")
        .join(path.trim_start_matches('/'));
    std::fs::read_to_string(file)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn pause_freezes_processes_and_clock_and_resume_continues_their_output() {
    let server = server_with(busybox_image(), "bb");
    // A short lifetime: the pause must outlast it without expiring.
    let id = create(
        &server,
        "bb",
        &["--timeout", "6", "--metadata", "suite=pause"],
    );
    let created = Instant::now();

    // A process streaming 20 lines over ~2 s, read by `hutch exec`.
    let mut exec = server
        .hutch()
        .args([
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 20); do echo $i; echo $i >> /tmp/count; sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut exec_out = exec.stdout.take().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match exec_out.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        })
    };
    wait_until("a few lines", Duration::from_secs(20), || {
        lines_in_upper(&server, &id, "/tmp/count") >= 3
    });

    ok(&server, &["sandbox", "pause", &id]);
    let paused_at = Instant::now();
    let out = run(&server, &["sandbox", "pause", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already paused"), "{}", stderr(&out));
    let (status, body) = http(
        &server,
        reqwest::Method::POST,
        &format!("/sandboxes/{id}/pause"),
        &[],
        None,
    );
    assert_eq!(status, 409, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 409);

    // Frozen: the file stops growing.
    let frozen = lines_in_upper(&server, &id, "/tmp/count");
    assert!(frozen < 20, "{frozen}");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(lines_in_upper(&server, &id, "/tmp/count"), frozen);

    // Listed as paused; the state filter works; v1 lists running only.
    let info = get_json(&server, &format!("/sandboxes/{id}"));
    assert_eq!(info["state"], "paused");
    assert!(listed_ids(&server, "/v2/sandboxes?state=paused").contains(&id));
    assert!(listed_ids(&server, "/v2/sandboxes").contains(&id));
    assert!(!listed_ids(&server, "/v2/sandboxes?state=running").contains(&id));
    assert!(!listed_ids(&server, "/sandboxes").contains(&id));
    assert!(listed_ids(&server, "/v2/sandboxes?state=paused&metadata=suite%3Dpause").contains(&id));
    assert!(
        !listed_ids(&server, "/v2/sandboxes?state=paused&metadata=suite%3Dother").contains(&id)
    );
    let table = ok(&server, &["sandbox", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&id) && l.contains("paused")),
        "{table}"
    );

    // The front door does not route to it; its timeout cannot be moved.
    let out = run(&server, &["exec", &id, "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("paused"), "{}", stderr(&out));
    let (status, _) = http(
        &server,
        reqwest::Method::POST,
        &format!("/sandboxes/{id}/timeout"),
        &[],
        Some(serde_json::json!({"timeout": 30})),
    );
    assert_eq!(status, 409);

    // Metrics still answer.
    let metrics = get_json(&server, &format!("/sandboxes/{id}/metrics"));
    assert_eq!(metrics.as_array().unwrap().len(), 1);

    // Past its original end: still there, still paused.
    let original_end = created + Duration::from_secs(6);
    while Instant::now() < original_end + Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.data_dir().join("sandboxes").join(&id).exists());
    assert_eq!(
        get_json(&server, &format!("/sandboxes/{id}"))["state"],
        "paused"
    );
    assert_eq!(lines_in_upper(&server, &id, "/tmp/count"), frozen);

    // connect: 201 after resuming, then 200 while running.
    let remaining = Duration::from_secs(6).saturating_sub(paused_at - created);
    let (status, body) = http(
        &server,
        reqwest::Method::POST,
        &format!("/sandboxes/{id}/connect"),
        &[],
        Some(serde_json::json!({})),
    );
    assert_eq!(status, 201, "{body}");
    let resumed_at = Instant::now();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["sandboxID"], id.as_str());
    let (status, _) = http(
        &server,
        reqwest::Method::POST,
        &format!("/v2/sandboxes/{id}/connect"),
        &[],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        get_json(&server, &format!("/sandboxes/{id}"))["state"],
        "running"
    );

    // The process finishes and every line reaches the client.
    let status = exec.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success());
    let expected: String = (1..=20).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&received.lock().unwrap()), expected);

    // The lifetime it had left is re-armed: it expires about that long
    // after the resume.
    let dir = server.data_dir().join("sandboxes").join(&id);
    wait_until(
        "the resumed sandbox expires",
        Duration::from_secs(30),
        || !dir.exists(),
    );
    let lived = resumed_at.elapsed();
    assert!(
        lived + Duration::from_millis(1500) >= remaining,
        "expired {lived:?} after the resume, {remaining:?} were left"
    );
}

#[test]
fn paused_sandboxes_stay_paused_across_a_restart() {
    let server = server_with(busybox_image(), "bb");
    let id = create(&server, "bb", &[]);
    ok(
        &server,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "(while :; do echo x >> /tmp/ticks; sleep 0.1; done) > /dev/null 2>&1 &",
        ],
    );
    wait_until("ticks", Duration::from_secs(10), || {
        lines_in_upper(&server, &id, "/tmp/ticks") >= 2
    });
    ok(&server, &["sandbox", "pause", &id]);
    let frozen = lines_in_upper(&server, &id, "/tmp/ticks");
    let server = TestServer::restart(server.kill9());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        get_json(&server, &format!("/sandboxes/{id}"))["state"],
        "paused",
        "log:\n{}",
        server.log()
    );
    assert_eq!(lines_in_upper(&server, &id, "/tmp/ticks"), frozen);
    ok(&server, &["sandbox", "resume", &id]);
    wait_until("ticks again", Duration::from_secs(10), || {
        lines_in_upper(&server, &id, "/tmp/ticks") > frozen
    });
    assert_eq!(ok(&server, &["exec", &id, "--", "echo", "back"]), "back\n");
}

#[test]
fn metrics_come_from_the_cgroup_and_the_upper_dir() {
    let server = server_with(busybox_image(), "bb");
    let id = create(&server, "bb", &[]);
    ok(
        &server,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null; \
             (while :; do :; done) > /dev/null 2>&1 &",
        ],
    );
    let sample = get_json(&server, &format!("/sandboxes/{id}/metrics?start=0"));
    let sample = &sample.as_array().unwrap()[0];
    // The sandbox's CPU limit (the default: 2).
    assert_eq!(sample["cpuCount"].as_u64(), Some(2));
    let pct = sample["cpuUsedPct"].as_f64().unwrap();
    assert!(pct > 5.0 && pct <= 100.0, "a busy loop: {pct}%");
    let mem_used = sample["memUsed"].as_u64().unwrap();
    let mem_total = sample["memTotal"].as_u64().unwrap();
    assert!(mem_used > 0 && mem_used < mem_total, "{sample}");
    assert!(sample["memCache"].as_u64().is_some());
    let disk_used = sample["diskUsed"].as_u64().unwrap();
    let disk_total = sample["diskTotal"].as_u64().unwrap();
    assert!(disk_used >= 8 << 20, "the 8 MiB file: {disk_used}");
    assert!(disk_total > disk_used);
    assert!(
        disk_total <= 2048 << 20,
        "the sandbox's own 2 GiB disk: {disk_total}"
    );
    let ts = sample["timestampUnix"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((ts - now).abs() < 10, "{ts} vs {now}");
    assert!(sample["timestamp"].as_str().unwrap().ends_with('Z'));
    let (status, _) = http(
        &server,
        reqwest::Method::GET,
        &format!("/sandboxes/{id}/metrics?start=10&end=5"),
        &[],
        None,
    );
    assert_eq!(status, 400);
}

/// A raw HTTP/1.1 exchange with the server: sends `request`, returns what
/// came back until `until` is seen (or the connection closed).
fn raw_exchange(stream: &mut std::net::TcpStream, request: &[u8], until: &[u8]) -> String {
    stream.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(until.len()).any(|w| w == until) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading: {e}; so far {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A server in the sandbox that answers an upgrade with 101 and then echoes
/// bytes back.
const UPGRADE_ECHO: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8090))
s.listen(4)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d.upper())
    c.close()
"#;

#[test]
fn front_door_reaches_user_ports() {
    let server = server_with(debian_image(), "deb");
    let id = create(&server, "deb", &[]);
    ok(
        &server,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "mkdir -p /srv && cd /srv && echo hello from 8080 > index.html && \
             head -c 3000000 /dev/zero | tr '\\0' y > big && \
             (python3 -m http.server 8080 > /dev/null 2>&1 &)",
        ],
    );
    std::fs::write(
        server
            .data_dir()
            .join("sandboxes")
            .join(&id)
            .join("rootfs/srv/echo.py"),
        UPGRADE_ECHO,
    )
    .unwrap();
    ok(
        &server,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "(python3 /srv/echo.py > /dev/null 2>&1 &)",
        ],
    );

    let by_header = |path: &str, port: &str| {
        http(
            &server,
            reqwest::Method::GET,
            path,
            &[("E2b-Sandbox-Id", &id), ("E2b-Sandbox-Port", port)],
            None,
        )
    };
    wait_until("the server on 8080", Duration::from_secs(20), || {
        by_header("/index.html", "8080").0 == 200
    });
    assert_eq!(
        by_header("/index.html", "8080"),
        (200, "hello from 8080\n".to_string())
    );
    let (status, big) = by_header("/big", "8080");
    assert_eq!(status, 200);
    assert_eq!(big.len(), 3_000_000);
    assert!(big.bytes().all(|b| b == b'y'));
    let host = format!("8080-{id}.hutch.local");
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/index.html",
        &[("Host", &host)],
        None,
    );
    assert_eq!((status, body.as_str()), (200, "hello from 8080\n"));

    // Nothing listening.
    let (status, body) = by_header("/", "8081");
    assert_eq!(status, 502);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["message"],
        format!("no server is listening on port 8081 in sandbox {id}")
    );

    // An upgraded connection is tunnelled both ways.
    wait_until("the server on 8090", Duration::from_secs(20), || {
        by_header("/", "8090").0 != 502
    });
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = raw_exchange(
        &mut stream,
        format!(
            "GET /ws HTTP/1.1\r\nHost: 8090-{id}.hutch.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .as_bytes(),
        b"\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(raw_exchange(&mut stream, b"ping", b"PING"), "PING");
    assert_eq!(
        raw_exchange(&mut stream, b"and again", b"AND AGAIN"),
        "AND AGAIN"
    );
    drop(stream);

    // A paused sandbox's ports answer 502 until it is resumed.
    ok(&server, &["sandbox", "pause", &id]);
    let (status, body) = by_header("/index.html", "8080");
    assert_eq!(status, 502);
    assert!(body.contains("paused"), "{body}");
    ok(&server, &["sandbox", "resume", &id]);
    assert_eq!(by_header("/index.html", "8080").0, 200);
}

#[test]
fn api_keys_from_the_cli() {
    let server = TestServer::start();
    let key = ok(&server, &["api-key", "create"]).trim().to_owned();
    // E2B's shape: `e2b_` and 40 lowercase hex digits.
    assert!(key.starts_with("e2b_") && key.len() == 44, "{key}");
    assert!(
        key[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    let listed: Value = serde_json::from_str(&ok(&server, &["api-key", "list", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(!serde_json::to_string(listed).unwrap().contains(&key));
    let table = ok(&server, &["api-key", "list"]);
    assert!(table.contains(&key[..10]), "{table}");

    // The new key works on its own; the first one can then be revoked.
    let first = listed[0]["id"].as_str().unwrap().to_owned();
    let with_new = |args: &[&str]| {
        server
            .hutch()
            .env("HUTCH_API_KEY", &key)
            .args(args)
            .output()
            .unwrap()
    };
    let out = with_new(&["api-key", "revoke", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&server, &["sandbox", "list"]);
    assert!(!out.status.success(), "the revoked key is refused");
    let listed: Value =
        serde_json::from_str(&stdout(&with_new(&["api-key", "list", "--json"]))).unwrap();
    let new_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["revokedAt"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = with_new(&["api-key", "revoke", &new_id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("last"), "{}", stderr(&out));
    let out = with_new(&["api-key", "create", "--json"]);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(created["key"].as_str().unwrap().starts_with("e2b_"));
    assert!(created["createdAt"].is_string());

    // An access token, sent as `Authorization: Bearer` (E2B's CLI style).
    let out = with_new(&["api-key", "create", "--access-token"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("sk_e2b_") && token.len() == 47, "{token}");
    let status = |authorization: &str| {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        write!(
            conn,
            "GET /hutch/v1/templates HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).unwrap().to_owned()
    };
    assert_eq!(status(&format!("Bearer {token}")), "200");
    assert_eq!(status(&format!("Bearer {token}x")), "401");
    assert_eq!(status(&format!("Basic {token}")), "401");
}
