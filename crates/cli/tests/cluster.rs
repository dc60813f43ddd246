//! A cluster on one machine: two control plane replicas on one PostgreSQL,
//! a real OCI registry, and three `hutch node --join` processes — each with
//! its own data directory, runc state and sandbox address pool — driven
//! with the official Python SDK, unmodified. Sandboxes made through one
//! replica are served by the other and spread over the nodes; a node
//! killed with SIGKILL is reported lost while creates go on elsewhere, and
//! its sandboxes are re-adopted when it comes back; with one replica
//! killed with SIGKILL everything goes on through the other (which takes
//! over expiry, agent watches and reconciliation), and the replica comes
//! back serving every sandbox; the host is clean after.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hutch_test_support::{
    ClusterSecret, E2B_PYTHON_NEW, Postgres, Registry, RegistryAuthMode, TestNode, TestServer,
    debian_image, e2b_python_run, http, wait_torn_down, wait_until,
};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The ids a `cluster.py create` printed.
fn created(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("SANDBOX "))
        .map(str::to_owned)
        .collect()
}

/// Which node each sandbox runs on, by its info — checked against the
/// nodes' disks.
fn placement(
    control: &TestServer,
    nodes: &[TestNode],
    ids: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in ids {
        let node = control.sandbox_info(id)["hutchNode"]
            .as_str()
            .unwrap_or_else(|| panic!("sandbox {id} has no node"))
            .to_owned();
        let i = NODES.iter().position(|n| *n == node).unwrap();
        assert!(
            nodes[i].data_dir().join("sandboxes").join(id).is_dir(),
            "sandbox {id} is not on {node}'s disk"
        );
        by_node.entry(node).or_default().push(id.clone());
    }
    by_node
}

#[test]
fn control_planes_spread_sandboxes_over_their_nodes_and_survive_losses() {
    let postgres = Postgres::start();
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let cluster = ClusterSecret::new();
    let mut args = cluster.control_args(&format!("127.0.0.1:{}/hutch/cluster", registry.port()));
    args.extend(["--database-url".to_owned(), postgres.url()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let control = TestServer::start_control(&args);
    // The second replica shares the database, and so the API keys.
    let other = TestServer::start_control(&args).with_api_key(control.api_key());
    let both = format!("{},{}", control.url(), other.url());
    let mut nodes: Vec<TestNode> = NODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            TestNode::join(
                &both,
                &cluster,
                name,
                &[
                    "--network-pool",
                    &format!("10.{}.0.0/20", 211 + i),
                    "--max-sandboxes",
                    "20",
                ],
            )
        })
        .collect();
    control.wait_nodes_alive(3);
    other.wait_nodes_alive(3);
    // A key made through one replica works through the other at once, and
    // stops working there once revoked through the first.
    let made: serde_json::Value =
        serde_json::from_str(&control.cli_ok(&["api-key", "create", "--json"])).unwrap();
    let key = made["key"].as_str().unwrap();
    let listing = |server: &TestServer| {
        server
            .hutch()
            .env("HUTCH_API_KEY", key)
            .args(["sandbox", "list"])
            .output()
            .unwrap()
    };
    let with_key = |server: &TestServer| listing(server).status.success();
    let out = listing(&other);
    assert!(
        out.status.success(),
        "a new key through the other replica: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    control.cli_ok(&["api-key", "revoke", made["id"].as_str().unwrap()]);
    wait_until(
        "the revoked key to be refused",
        Duration::from_secs(10),
        || !with_key(&other),
    );
    control.import(&debian_image(), "deb", &["--allow-privilege-escalation"]);

    // 15 sandboxes at once through the SDK and the first replica: each
    // answers a command with the image's environment and its own, and a
    // file round trip; they spread over the three nodes.
    let ids = created(&run(&control, &["create", "deb", "15"]));
    assert_eq!(ids.len(), 15);
    let spread = placement(&control, &nodes, &ids);
    assert_eq!(
        spread.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES,
        "{spread:?}"
    );
    // The other replica serves them all.
    run(&other, &with("exec", &ids));
    // The store's allocations count them.
    let allocated: u64 = other
        .nodes()
        .iter()
        .map(|n| n["sandboxes"].as_u64().unwrap())
        .sum();
    assert!(allocated >= 15, "{:?}", other.nodes());

    // SIGKILL n2: it is reported lost within its lease, and so are its
    // sandboxes; a command on one fails naming the loss; creates go on, on
    // the others.
    let on_n2 = spread["n2"].clone();
    nodes[1].kill9();
    wait_until("n2 to be lost", Duration::from_secs(15), || {
        control.nodes_in("lost") == ["n2"] && other.nodes_in("lost") == ["n2"]
    });
    assert_eq!(other.sandbox_info(&on_n2[0])["hutchNodeState"], "lost");
    assert_eq!(
        control.sandbox_info(&spread["n1"][0])["hutchNodeState"],
        "alive"
    );
    run(&other, &["lost", &on_n2[0]]);
    let more = created(&run(&other, &["create", "deb", "4"]));
    let more_spread = placement(&control, &nodes, &more);
    assert!(!more_spread.contains_key("n2"), "{more_spread:?}");

    // n2 comes back: its sandboxes, still running, are re-adopted.
    nodes[1].start_again();
    control.wait_nodes_alive(3);
    other.wait_nodes_alive(3);
    run(&control, &with("exec", &on_n2));
    assert_eq!(other.sandbox_info(&on_n2[0])["hutchNodeState"], "alive");

    // SIGKILL the first replica: the other serves everything, creates go
    // on there, and the nodes beat to it.
    let url = control.url();
    let dir = control.kill9();
    let mut all: Vec<String> = ids.iter().chain(&more).cloned().collect();
    run(&other, &with("exec", &all));
    let last = created(&run(&other, &["create", "deb", "2"]));
    std::thread::sleep(Duration::from_secs(4));
    other.wait_nodes_alive(3);
    // It took over expiry: a sandbox given a second to live goes.
    let (status, body) = http(
        &other,
        reqwest::Method::POST,
        &format!("/sandboxes/{}/timeout", last[1]),
        &[],
        Some(serde_json::json!({"timeout": 1})),
    );
    assert_eq!(status, 204, "{body}");
    wait_until("the sandbox to expire", Duration::from_secs(20), || {
        let (status, _) = http(
            &other,
            reqwest::Method::GET,
            &format!("/sandboxes/{}", last[1]),
            &[],
            None,
        );
        status == 404
    });

    // The first replica comes back, and serves every sandbox, old and new.
    let control = TestServer::restart_control(dir, &url, &args).with_api_key(other.api_key());
    control.wait_nodes_alive(3);
    all.push(last[0].clone());
    run(&control, &with("exec", &all));

    // PostgreSQL restarts under light load: while it is down, requests
    // that need it wait for it (up to the store's connection timeout) or
    // get a 503 saying to try again, and nothing else; once it is back,
    // both replicas serve, the nodes beat again, and the sandboxes answer.
    let watched = format!("/sandboxes/{}", all[0]);
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for server in [&control, &other] {
                    seen.push(http(server, reqwest::Method::GET, &watched, &[], None));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        postgres.stop();
        std::thread::sleep(Duration::from_secs(6));
        postgres.start_again();
        wait_until(
            "both replicas to read the store again",
            Duration::from_secs(30),
            || {
                [&control, &other]
                    .iter()
                    .all(|s| http(s, reqwest::Method::GET, &watched, &[], None).0 == 200)
            },
        );
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap()
    });
    assert!(!load.is_empty());
    for (status, body) in load.iter().filter(|(status, _)| *status != 200) {
        assert!(
            *status == 503 && body.contains("try again"),
            "{status} {body}"
        );
    }
    control.wait_nodes_alive(3);
    other.wait_nodes_alive(3);
    run(&other, &with("exec", &all));
    let after = created(&run(&control, &["create", "deb", "1"]));
    all.extend(after);

    // Killed through the SDK, they leave every node empty, and every
    // allocation is given back.
    run(&control, &with("kill", &all));
    for node in &nodes {
        for id in all.iter().chain(&last) {
            wait_torn_down(node.data_dir(), id);
        }
    }
    wait_until(
        "every allocation given back",
        Duration::from_secs(20),
        || {
            other
                .nodes()
                .iter()
                .all(|n| n["sandboxes"] == 0 && n["cpus"] == 0 && n["memoryMB"] == 0)
        },
    );
    let names: BTreeSet<String> = control.nodes_in("alive").into_iter().collect();
    assert_eq!(names.len(), 3);
}

/// `cluster.py ARGS` through `server`; its output.
fn run(server: &TestServer, args: &[&str]) -> String {
    e2b_python_run(E2B_PYTHON_NEW, "cluster.py", args, server, &[])
}

/// `[mode, ids...]`.
fn with<'a>(mode: &'a str, ids: &'a [String]) -> Vec<&'a str> {
    std::iter::once(mode)
        .chain(ids.iter().map(String::as_str))
        .collect()
}
