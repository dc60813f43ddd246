//! Hostile and malformed HTTP: every error a client can cause is a 4xx with
//! E2B's JSON error body (`{"code": N, "message": "..."}`), slow and idle
//! clients are cut off, a connection flood is bounded, and the server keeps
//! serving throughout. Raw sockets are used where a well-behaved client
//! library would refuse to send the request. Against `hutch serve`
//! processes that start no sandbox.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hutch_test_support::TestServer;

/// Sends `request` as raw bytes; returns the status and the body of the
/// answer (read until the server closes or `Content-Length` is met).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(request).unwrap();
    read_response(&mut conn)
}

fn read_response(conn: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if buf.is_empty() => panic!("no response: {e}"),
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Asserts an E2B-shaped JSON error with `status`; returns its message.
fn json_error(status: u16, body: &str, want: u16) -> String {
    assert_eq!(status, want, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert_eq!(v["code"], want, "{v}");
    v["message"].as_str().expect("a message").to_owned()
}

fn get(path: &str, key: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {key}\r\n{extra}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_json_4xx() {
    let s = TestServer::start_without_sandboxes(&[]);
    tokio::task::spawn_blocking({
        let key = s.api_key();
        let addr = s.addr();
        move || {
            // A path segment that is not UTF-8.
            let (code, body) = raw(addr, &get("/sandboxes/%FF%FE", &key, ""));
            json_error(code, &body, 400);
            // Path traversal in a template name.
            let (code, body) = raw(
                addr,
                &format!(
                    "DELETE /hutch/v1/templates/..%2F..%2Fetc HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
                )
                .into_bytes(),
            );
            assert!((400..500).contains(&code), "{code} {body}");
            json_error(code, &body, code);
            // A junk sandbox port: the client's error, for any sandbox.
            for port in ["junk", "0", "70000", "-1", ""] {
                let (code, body) = raw(
                    addr,
                    &get(
                        "/health",
                        &key,
                        &format!("E2b-Sandbox-Id: nosuchsandbox\r\nE2b-Sandbox-Port: {port}\r\n"),
                    ),
                );
                let msg = json_error(code, &body, 400);
                assert!(msg.contains("not a port"), "{msg}");
            }
            // A port header that is not even text.
            let mut req = b"GET /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: abc\r\nE2b-Sandbox-Port: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec();
            let (code, body) = raw(addr, &req);
            json_error(code, &body, 400);
            // Oversized headers: one huge, and many.
            let big = "a".repeat(100 * 1024);
            let (code, body) = raw(addr, &get("/sandboxes", &key, &format!("X-Big: {big}\r\n")));
            json_error(code, &body, 431);
            let many: String = (0..900).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(80))).collect();
            let (code, body) = raw(addr, &get("/sandboxes", &key, &many));
            json_error(code, &body, 431);
            // Deeply nested JSON and a body that is not JSON at all.
            let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            for body in [deep.as_str(), "{\"templateID\": \"\u{0}\"", "\u{feff}garbage"] {
                req = format!(
                    "POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes();
                let (code, text) = raw(addr, &req);
                json_error(code, &text, 400);
            }
            // Invalid UTF-8 in a JSON body.
            let mut req = format!(
                "POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            req.extend_from_slice(b"{\"templateID\":\"\xff\xfe\"}\n\n\n");
            let (code, text) = raw(addr, &req);
            json_error(code, &text, 400);
            // A body far over the limit.
            let len = 64 * 1024 * 1024;
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            conn.write_all(
                format!(
                    "POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
            // The server may answer before reading it all; write what it takes.
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..64 {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
            let (code, text) = read_response(&mut conn);
            assert!(code == 400 || code == 413, "{code} {text}");
            json_error(code, &text, code);
        }
    })
    .await
    .unwrap();
    assert_still_serving(&s).await;
    s.stop_ok();
}

async fn assert_still_serving(s: &TestServer) {
    let resp = s
        .request(reqwest::Method::GET, "/sandboxes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_cut_off() {
    let timeout = Duration::from_secs(2);
    let s = TestServer::start_without_sandboxes(&[
        "--header-read-timeout",
        &timeout.as_secs().to_string(),
    ]);
    let addr = s.addr();
    tokio::task::spawn_blocking(move || {
        // Headers sent one byte at a time, forever.
        let mut slow = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let mut closed = false;
        for b in b"GET /health HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if slow.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            if started.elapsed() > timeout * 10 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(closed, "a client trickling its headers was never cut off");

        // A connection that never sends anything is closed (possibly after
        // a 408): reading it ends, rather than timing out.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(timeout * 10)).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match idle.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("an idle connection was kept open for {:?}", timeout * 10)
                }
                Err(_) => break, // reset
            }
        }
    })
    .await
    .unwrap();
    assert_still_serving(&s).await;
    s.stop_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_is_bounded_and_the_server_recovers() {
    let per_client = 16;
    let s = TestServer::start_without_sandboxes(&[
        "--max-connections-per-client",
        &per_client.to_string(),
    ]);
    let addr = s.addr();
    let key = s.api_key();
    tokio::task::spawn_blocking(move || {
        // Held connections, each having made one request (so each is
        // admitted and served before the next is opened).
        let mut held = Vec::new();
        for _ in 0..per_client {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let (code, _) = read_response(&mut c);
            assert_eq!(code, 200);
            held.push(c);
        }
        // One more from the same address is refused, in JSON.
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let (code, body) = read_response(&mut extra);
        let msg = json_error(code, &body, 429);
        assert!(msg.contains("too many open connections"), "{msg}");

        // Once they are closed, the address is served again.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, _) = raw(addr, &get("/sandboxes", &key, ""));
            if code == 200 {
                break;
            }
            assert_eq!(code, 429);
            assert!(Instant::now() < deadline, "never served again");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    s.stop_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_sockets_have_tcp_nodelay() {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    // Find the server's end of a connection among the server process's
    // descriptors, take a duplicate of it (pidfd_getfd: the same socket) and
    // read the option there.
    let s = TestServer::start_without_sandboxes(&[]);
    let pid = Pid::from_raw(i32::try_from(s.pid()).unwrap()).expect("the server's pid");
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open on the server");
    let client = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let mut found = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while found.is_none() {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid())).unwrap();
        for entry in fds.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            // A descriptor closed meanwhile is skipped.
            let Ok(fd) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else {
                continue;
            };
            let ends = (rustix::net::getsockname(&fd), rustix::net::getpeername(&fd));
            if let (Ok(local), Ok(Some(peer))) = ends
                && SocketAddr::try_from(local).ok() == Some(s.addr())
                && SocketAddr::try_from(peer).ok() == Some(client_addr)
            {
                found = Some(rustix::net::sockopt::tcp_nodelay(&fd).unwrap());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server's socket was not found"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        found,
        Some(true),
        "TCP_NODELAY is off on the accepted socket"
    );
    drop(client);
    s.stop_ok();
}
