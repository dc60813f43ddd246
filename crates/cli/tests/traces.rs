//! Traces over OTLP: `hutch serve --otlp-endpoint` sends the spans of a
//! create (and of the requests its front door relays) to a collector. The
//! collector here is a plain HTTP server that keeps what it receives
//! (OTLP/HTTP with JSON encoding, as the OpenTelemetry Collector accepts).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use hutch_test_support::{
    ClusterSecret, Registry, RegistryAuthMode, TestNode, TestServer, busybox_image,
};
use serde_json::Value;

/// Request bodies received, with their paths.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP/HTTP exports on a free loopback port; every request body
/// received, by path.
struct Collector {
    url: String,
    received: Received,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received: Received = Arc::default();
        let store = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let store = store.clone();
                std::thread::spawn(move || serve(conn, &store));
            }
        });
        Collector { url, received }
    }

    /// Every span received: `(name, traceId, spanId, parentSpanId)`, and
    /// the resource attributes they came with.
    fn spans(&self) -> (Vec<[String; 4]>, Vec<Value>) {
        let mut spans = Vec::new();
        let mut resources = Vec::new();
        for (path, body) in self.received.lock().unwrap().iter() {
            assert_eq!(path, "/v1/traces");
            let export: Value = serde_json::from_slice(body).unwrap();
            for rs in export["resourceSpans"].as_array().unwrap() {
                resources.push(rs["resource"].clone());
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for s in ss["spans"].as_array().unwrap() {
                        let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                        spans.push([
                            field("name"),
                            field("traceId"),
                            field("spanId"),
                            field("parentSpanId"),
                        ]);
                    }
                }
            }
        }
        (spans, resources)
    }
}

/// Serves one connection's requests: reads each body, answers 200.
fn serve(conn: std::net::TcpStream, store: &Mutex<Vec<(String, Vec<u8>)>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        store.lock().unwrap().push((path, body));
        let answer = b"{}";
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        let _ = conn.write_all(answer);
    }
}

#[test]
fn a_create_and_an_exec_are_traced_over_otlp() {
    let collector = Collector::start();
    let server = TestServer::start_with_args(&[
        "--warm-pool",
        "0",
        "--otlp-endpoint",
        &collector.url,
        "--otlp-protocol",
        "http/json",
    ]);
    server.import(&busybox_image(), "bb", &[]);
    let id = server.create_sandbox("bb", &[]);
    server.cli_ok(&["exec", &id, "--", "true"]);
    // A stop flushes what is batched.
    let _dir = server.stop_ok();

    let (spans, resources) = collector.spans();
    let by_name: HashMap<&str, &[String; 4]> = spans.iter().map(|s| (s[0].as_str(), s)).collect();
    for name in [
        "sandbox.create",
        "template.image",
        "boot.queue",
        "node.create",
        "runtime.create",
        "sandbox.rootfs",
        "sandbox.network",
        "sandbox.runc",
        "sandbox.agent_ready",
        "agent.init",
        "frontdoor.relay",
    ] {
        assert!(by_name.contains_key(name), "no {name} span in {spans:?}");
    }
    // The steps of the create are one trace, nested as they ran.
    let create = by_name["sandbox.create"];
    let parent_of = |name: &str| {
        let span = by_name[name];
        assert_eq!(span[1], create[1], "{name} is in the create's trace");
        spans
            .iter()
            .find(|s| s[2] == span[3])
            .map(|s| s[0].clone())
            .unwrap_or_default()
    };
    assert_eq!(parent_of("node.create"), "sandbox.create");
    assert_eq!(parent_of("runtime.create"), "node.create");
    assert_eq!(parent_of("sandbox.runc"), "runtime.create");
    assert_eq!(parent_of("agent.init"), "sandbox.create");
    let resource = resources[0].to_string();
    assert!(
        resource.contains("service.name") && resource.contains("\"hutch\""),
        "{resource}"
    );
}

/// With a control plane and a node, the node's part of a create is in the
/// control plane's trace: `runtime.create` under the node's `node.api`
/// span, under the control plane's `node.create`.
#[test]
fn a_create_on_a_node_is_one_trace_across_the_node_api() {
    let collector = Collector::start();
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let cluster = ClusterSecret::new();
    let mut args = cluster.control_args(&format!("127.0.0.1:{}/hutch/templates", registry.port()));
    args.extend(
        [
            "--otlp-endpoint",
            &collector.url,
            "--otlp-protocol",
            "http/json",
        ]
        .map(String::from),
    );
    let control = TestServer::start_control(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let node = TestNode::join(
        &control.url(),
        &cluster,
        "n1",
        &[
            "--otlp-endpoint",
            &collector.url,
            "--otlp-protocol",
            "http/json",
        ],
    );
    control.wait_nodes_alive(1);
    control.import(&busybox_image(), "bb", &[]);
    control.create_sandbox("bb", &[]);
    // Stops flush what is batched.
    let _dir = control.stop_ok();
    drop(node);

    let (spans, _) = collector.spans();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s[0] == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let parent = |span: &[String; 4]| find_by_id(&spans, &span[3]);
    let create = find("sandbox.create");
    let runtime = find("runtime.create");
    assert_eq!(runtime[1], create[1], "one trace");
    let api = parent(runtime).expect("runtime.create has a parent");
    assert_eq!(api[0], "node.api");
    assert_eq!(
        parent(api).expect("node.api has a parent")[0],
        "node.create"
    );
}

fn find_by_id<'a>(spans: &'a [[String; 4]], id: &str) -> Option<&'a [String; 4]> {
    spans.iter().find(|s| s[2] == id)
}
