//! A cluster on one machine: a control plane on PostgreSQL, a real OCI
//! registry, and three `hutch node --join` processes — each with its own
//! data directory, runc state and sandbox address pool — driven with the
//! official Python SDK, unmodified. Sandboxes spread over the nodes; a node
//! killed with SIGKILL is reported lost while creates go on elsewhere, and
//! its sandboxes are re-adopted when it comes back; a control plane killed
//! with SIGKILL comes back with every sandbox; the host is clean after.

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

/// Sandbox `id` as `GET /sandboxes/{id}` describes it.
fn info(control: &TestServer, id: &str) -> serde_json::Value {
    let (status, body) = http(
        control,
        reqwest::Method::GET,
        &format!("/sandboxes/{id}"),
        &[],
        None,
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
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
        let node = info(control, id)["hutchNode"]
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
fn a_control_plane_spreads_sandboxes_over_its_nodes_and_survives_their_loss() {
    let postgres = Postgres::start();
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let cluster = ClusterSecret::new();
    let mut args = cluster.control_args(&format!("127.0.0.1:{}/hutch/cluster", registry.port()));
    args.extend(["--database-url".to_owned(), postgres.url()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let control = TestServer::start_control(&args);
    let mut nodes: Vec<TestNode> = NODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            TestNode::join(
                &control.url(),
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
    control.import(&debian_image(), "deb", &["--allow-privilege-escalation"]);

    // 15 sandboxes at once through the SDK: each answers a command with
    // the image's environment and its own, and a file round trip; they
    // spread over the three nodes.
    let out = e2b_python_run(
        E2B_PYTHON_NEW,
        "cluster.py",
        &["create", "deb", "15"],
        &control,
        &[],
    );
    let ids = created(&out);
    assert_eq!(ids.len(), 15);
    let spread = placement(&control, &nodes, &ids);
    assert_eq!(
        spread.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES,
        "{spread:?}"
    );
    // The store's allocations count them.
    let allocated: u64 = control
        .nodes()
        .iter()
        .map(|n| n["sandboxes"].as_u64().unwrap())
        .sum();
    assert!(allocated >= 15, "{:?}", control.nodes());

    // SIGKILL n2: it is reported lost within its lease, and so are its
    // sandboxes; a command on one fails naming the loss; creates go on, on
    // the others.
    let on_n2 = spread["n2"].clone();
    nodes[1].kill9();
    wait_until("n2 to be lost", Duration::from_secs(15), || {
        control.nodes_in("lost") == ["n2"]
    });
    assert_eq!(info(&control, &on_n2[0])["hutchNodeState"], "lost");
    assert_eq!(info(&control, &spread["n1"][0])["hutchNodeState"], "alive");
    e2b_python_run(
        E2B_PYTHON_NEW,
        "cluster.py",
        &["lost", &on_n2[0]],
        &control,
        &[],
    );
    let out = e2b_python_run(
        E2B_PYTHON_NEW,
        "cluster.py",
        &["create", "deb", "4"],
        &control,
        &[],
    );
    let more = created(&out);
    let more_spread = placement(&control, &nodes, &more);
    assert!(!more_spread.contains_key("n2"), "{more_spread:?}");

    // n2 comes back: its sandboxes, still running, are re-adopted.
    nodes[1].start_again();
    control.wait_nodes_alive(3);
    let mut exec = vec!["exec"];
    exec.extend(on_n2.iter().map(String::as_str));
    e2b_python_run(E2B_PYTHON_NEW, "cluster.py", &exec, &control, &[]);
    assert_eq!(info(&control, &on_n2[0])["hutchNodeState"], "alive");

    // SIGKILL the control plane, start it again: every sandbox is still
    // there and answers (the nodes kept them; the store kept placements).
    let url = control.url();
    let dir = control.kill9();
    let control = TestServer::restart_control(dir, &url, &args);
    control.wait_nodes_alive(3);
    let all: Vec<String> = ids.iter().chain(&more).cloned().collect();
    let mut exec = vec!["exec"];
    exec.extend(all.iter().map(String::as_str));
    e2b_python_run(E2B_PYTHON_NEW, "cluster.py", &exec, &control, &[]);

    // Killed through the SDK, they leave every node empty, and every
    // allocation is given back.
    let mut kill = vec!["kill"];
    kill.extend(all.iter().map(String::as_str));
    e2b_python_run(E2B_PYTHON_NEW, "cluster.py", &kill, &control, &[]);
    for node in &nodes {
        for id in &all {
            wait_torn_down(node.data_dir(), id);
        }
    }
    wait_until(
        "every allocation given back",
        Duration::from_secs(20),
        || {
            control
                .nodes()
                .iter()
                .all(|n| n["sandboxes"] == 0 && n["cpus"] == 0 && n["memoryMB"] == 0)
        },
    );
    let names: BTreeSet<String> = control.nodes_in("alive").into_iter().collect();
    assert_eq!(names.len(), 3);
}
