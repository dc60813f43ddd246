//! Sandbox networking through a real server: each sandbox has an address of
//! its own; egress follows `allow_internet_access` and `network.allowOut` /
//! `denyOut`; sandboxes reach neither each other nor the host; user ports
//! are reached through the front door whatever the policy.
//!
//! Nothing here needs the internet: "the internet" is [`FakeInternet`], an
//! HTTP server in a network namespace beyond the host.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::OnceLock;
use std::time::Duration;

use hutch_test_support::{
    FAKE_INTERNET_BODY, FakeInternet, HostResources, TestServer, busybox_image, wait_until,
};
use serde_json::{Value, json};

fn server(args: &[&str]) -> TestServer {
    let server = TestServer::start_with_args(args);
    let image = busybox_image();
    server.cli_ok(&[
        "template",
        "import",
        image.to_str().unwrap(),
        "--name",
        "bb",
    ]);
    server
}

fn create(server: &TestServer, extra: &[&str]) -> String {
    let mut args = vec!["sandbox", "create", "bb"];
    args.extend_from_slice(extra);
    server.cli_ok(&args).trim().to_owned()
}

/// Runs a shell command in a sandbox: (exit code, stdout + stderr).
fn sh(server: &TestServer, id: &str, script: &str) -> (i32, String) {
    let out = server.cli(&["exec", id, "--", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Whether the sandbox gets `body` from `url` (busybox wget, 4 s timeout).
fn fetches(server: &TestServer, id: &str, url: &str, body: &str) -> bool {
    let (code, out) = sh(server, id, &format!("timeout 5 wget -q -O - {url}"));
    code == 0 && out.contains(body)
}

fn address(server: &TestServer, id: &str) -> Ipv4Addr {
    let (code, out) = sh(server, id, "ip -4 -o addr show dev eth0");
    assert_eq!(code, 0, "{out}");
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address: {out}"));
    cidr.split('/').next().unwrap().parse().unwrap()
}

/// A plain HTTP server on every host address; answers `body`.
struct HostServer {
    port: u16,
}

const HOST_BODY: &str = "hello from a host-only service\n";

impl HostServer {
    fn start() -> HostServer {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{HOST_BODY}",
                        HOST_BODY.len()
                    )
                    .as_bytes(),
                );
            }
        });
        HostServer { port }
    }
}

/// The host's own main IPv4 address (the first global one that is not a
/// sandbox's or a test link's).
fn host_address() -> Ipv4Addr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let dev = l.split_whitespace().nth(1).unwrap_or("");
            !dev.starts_with("hv") && !dev.starts_with("hxfake")
        })
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "inet")?;
            w.get(i + 1)?.split('/').next()?.parse().ok()
        })
        .expect("the host has a global IPv4 address")
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn http(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, String) {
    rt().block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url()))
            .header("X-API-Key", server.api_key());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("sending a request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    })
}

#[test]
fn each_sandbox_has_its_own_address_dns_and_egress() {
    let net = FakeInternet::start();
    let server = server(&["--warm-pool", "0"]);
    let a = create(&server, &[]);
    let b = create(&server, &[]);
    let (addr_a, addr_b) = (address(&server, &a), address(&server, &b));
    assert_ne!(addr_a, addr_b);
    for addr in [addr_a, addr_b] {
        assert_eq!(addr.octets()[..2], [10, 200], "from the default pool");
    }
    let (code, route) = sh(&server, &a, "ip route show default");
    assert_eq!(code, 0, "{route}");
    assert!(route.starts_with("default via 10.200."), "{route}");
    let (code, resolv) = sh(&server, &a, "cat /etc/resolv.conf");
    assert_eq!(code, 0, "{resolv}");
    assert!(resolv.contains("Generated by Hutch"), "{resolv}");
    assert!(resolv.contains("nameserver "), "{resolv}");
    assert!(!resolv.contains("nameserver 127."), "{resolv}");

    assert!(
        fetches(&server, &a, &net.url(), FAKE_INTERNET_BODY),
        "a sandbox with the default policy reaches the internet"
    );

    let ids = vec![a.clone(), b.clone()];
    server.cli_ok(&["sandbox", "kill", &a]);
    server.cli_ok(&["sandbox", "kill", &b]);
    let left = HostResources::measure(server.data_dir(), &ids);
    assert!(left.is_empty(), "leaked:\n{left}");
}

#[test]
fn allow_internet_access_and_allow_and_deny_lists() {
    let net = FakeInternet::start();
    let server = server(&["--warm-pool", "0"]);
    let fake = net.addr.to_string();
    let url = net.url();

    let closed = create(&server, &["--no-internet"]);
    assert!(!fetches(&server, &closed, &url, FAKE_INTERNET_BODY));
    // The failure is a rejection, not a timeout.
    let started = std::time::Instant::now();
    let (code, out) = sh(&server, &closed, &format!("timeout 5 wget -q -O - {url}"));
    assert_ne!(code, 0, "{out}");
    assert!(started.elapsed() < Duration::from_secs(4), "{out}");

    let hole = create(&server, &["--no-internet", "--allow-out", &fake]);
    assert!(fetches(&server, &hole, &url, FAKE_INTERNET_BODY));

    let denied = create(&server, &["--deny-out", &format!("{fake}/32")]);
    assert!(!fetches(&server, &denied, &url, FAKE_INTERNET_BODY));

    let punched = create(
        &server,
        &["--deny-out", "198.51.100.0/24", "--allow-out", &fake],
    );
    assert!(fetches(&server, &punched, &url, FAKE_INTERNET_BODY));

    let other = create(&server, &["--deny-out", "203.0.113.0/24"]);
    assert!(fetches(&server, &other, &url, FAKE_INTERNET_BODY));

    // E2B's body, straight to the API.
    let (status, body) = http(
        &server,
        reqwest::Method::POST,
        "/sandboxes",
        &[],
        Some(json!({
            "templateID": "bb",
            "allow_internet_access": false,
            "network": {"allowOut": [fake], "allowPublicTraffic": true},
        })),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["sandboxID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(fetches(&server, &id, &url, FAKE_INTERNET_BODY));
}

#[test]
fn invalid_lists_are_rejected() {
    let server = server(&["--warm-pool", "0"]);
    for (network, field) in [
        (
            json!({"denyOut": ["10.0.0.0/8", "nope"]}),
            "network.denyOut[1]",
        ),
        (json!({"allowOut": ["10.0.0.0/33"]}), "network.allowOut[0]"),
        (json!({"allowOut": ["example.com"]}), "domain name"),
    ] {
        let (status, body) = http(
            &server,
            reqwest::Method::POST,
            "/sandboxes",
            &[],
            Some(json!({"templateID": "bb", "network": network})),
        );
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(field), "{body}");
    }
    let out = server.cli(&["sandbox", "create", "bb", "--deny-out", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("network.denyOut[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sandboxes_reach_neither_each_other_nor_the_host() {
    let server = server(&["--warm-pool", "0"]);
    let host = HostServer::start();
    let a = create(&server, &[]);
    let b = create(&server, &[]);
    let addr_a = address(&server, &a);
    let (code, out) = sh(
        &server,
        &a,
        "mkdir -p /tmp/www && echo sandbox-a > /tmp/www/index.html && httpd -p 9000 -h /tmp/www",
    );
    assert_eq!(code, 0, "{out}");
    wait_until("a's server", Duration::from_secs(10), || {
        fetches(&server, &a, "http://127.0.0.1:9000/", "sandbox-a")
    });
    assert!(
        !fetches(&server, &b, &format!("http://{addr_a}:9000/"), "sandbox-a"),
        "b reaches a"
    );

    // The host's service answers the host itself...
    let main = host_address();
    let mut conn = std::net::TcpStream::connect((main, host.port)).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.contains(HOST_BODY));
    // ...but no sandbox: not on the host's main address, not on its own
    // gateway, not on another sandbox's gateway; 127.0.0.1 is the
    // sandbox's own loopback.
    let gw_a = Ipv4Addr::from(u32::from(addr_a) - 1);
    for target in [main, gw_a, Ipv4Addr::LOCALHOST] {
        assert!(
            !fetches(
                &server,
                &b,
                &format!("http://{target}:{}/", host.port),
                HOST_BODY
            ),
            "b reaches the host at {target}"
        );
    }
    assert!(!fetches(
        &server,
        &a,
        &format!("http://{main}:{}/", host.port),
        HOST_BODY
    ));
}

#[test]
fn user_ports_are_reached_through_the_front_door_without_internet() {
    let server = server(&["--warm-pool", "0"]);
    let id = create(&server, &["--no-internet"]);
    let (code, out) = sh(
        &server,
        &id,
        "mkdir -p /srv && echo hello from 8000 > /srv/index.html && httpd -p 8000 -h /srv",
    );
    assert_eq!(code, 0, "{out}");
    let by_header = || {
        http(
            &server,
            reqwest::Method::GET,
            "/index.html",
            &[("E2b-Sandbox-Id", &id), ("E2b-Sandbox-Port", "8000")],
            None,
        )
    };
    wait_until("the server on 8000", Duration::from_secs(20), || {
        by_header().0 == 200
    });
    assert_eq!(by_header(), (200, "hello from 8000\n".to_owned()));
    let host = format!("8000-{id}.hutch.local");
    assert_eq!(
        http(
            &server,
            reqwest::Method::GET,
            "/index.html",
            &[("Host", &host)],
            None
        ),
        (200, "hello from 8000\n".to_owned())
    );
}

#[test]
fn a_pooled_sandbox_takes_the_policy_of_the_create_that_claims_it() {
    let net = FakeInternet::start();
    let server = server(&["--warm-pool", "1"]);
    let pool_claims = |server: &TestServer| -> u64 {
        let (status, body) = http(server, reqwest::Method::GET, "/hutch/v1/pool", &[], None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .chain(v["templates"].as_array().into_iter().flatten())
            .map(|t| t["claimed"].as_u64().unwrap_or(0))
            .sum()
    };
    wait_until("a pooled sandbox", Duration::from_secs(30), || {
        let (_, body) = http(&server, reqwest::Method::GET, "/hutch/v1/pool", &[], None);
        body.contains("\"ready\":1")
    });
    let before = pool_claims(&server);
    let id = create(&server, &["--no-internet"]);
    assert_eq!(pool_claims(&server), before + 1, "served from the pool");
    assert!(!fetches(&server, &id, &net.url(), FAKE_INTERNET_BODY));
    let open = {
        wait_until("the pool refilled", Duration::from_secs(30), || {
            let (_, body) = http(&server, reqwest::Method::GET, "/hutch/v1/pool", &[], None);
            body.contains("\"ready\":1")
        });
        create(&server, &[])
    };
    assert!(fetches(&server, &open, &net.url(), FAKE_INTERNET_BODY));
}
