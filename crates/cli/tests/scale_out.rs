//! A control plane and a node apart: `hutch control` keeps the API, the
//! database and the templates; `hutch node --join` (its own data
//! directory, runc state and process) runs the sandboxes; templates reach
//! the node through a real OCI registry. Driven with the official SDK and
//! the CLI, as users would.

use std::time::Duration;

use hutch_test_support::{
    ClusterSecret, E2B_PYTHON_NEW, Registry, RegistryAuthMode, TestNode, TestServer, busybox_image,
    e2b_python_run, run_e2b_python_script, wait_torn_down, wait_until,
};

/// The arguments of a control plane of `cluster` pushing its templates to
/// `registry`.
fn control_args(cluster: &ClusterSecret, registry: &Registry) -> Vec<String> {
    cluster.control_args(&format!("127.0.0.1:{}/hutch/templates", registry.port()))
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A control plane of `cluster`, pushing its templates to `registry`.
fn control(cluster: &ClusterSecret, registry: &Registry) -> TestServer {
    TestServer::start_control(&strs(&control_args(cluster, registry)))
}

#[test]
fn sandboxes_run_on_the_node_and_templates_travel_through_the_registry() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let cluster = ClusterSecret::new();
    let control = control(&cluster, &registry);
    let mut node = TestNode::join(&control.url(), &cluster, "n1", &[]);
    control.wait_nodes_alive(1);
    control.import(&busybox_image(), "bb", &[]);

    let id = control.create_sandbox("bb", &["--env", "FROM_SANDBOX=yes"]);
    // The image's environment and the sandbox's, through the control
    // plane's front door and the node's tunnel to the agent.
    let out = control.cli_ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo $MY_APP_CONFIG $FROM_SANDBOX; pwd",
    ]);
    assert_eq!(out, "/etc/myapp/config.json yes\n/app\n");
    // It runs on the node, not on the control plane's machine.
    assert!(node.data_dir().join("sandboxes").join(&id).is_dir());
    assert!(!control.data_dir().join("sandboxes").join(&id).exists());
    // The node pulled the template's layers from the registry.
    let tags: Vec<String> = std::fs::read_dir(
        registry
            .storage_dir()
            .join("docker/registry/v2/repositories/hutch/templates/_manifests/tags"),
    )
    .unwrap()
    .map(|e| e.unwrap().file_name().into_string().unwrap())
    .collect();
    assert!(
        tags.len() == 1 && tags[0].starts_with("layers-"),
        "{tags:?}"
    );
    assert!(
        std::fs::read_dir(node.data_dir().join("images/sha256"))
            .unwrap()
            .count()
            > 0
    );

    // A node restart leaves its sandboxes running and reachable.
    node.restart();
    let out = control.cli_ok(&["exec", &id, "--", "echo", "still here"]);
    assert_eq!(out, "still here\n");

    // So does a control plane restart: it re-adopts them through the node.
    let url = control.url();
    let dir = control.stop_ok();
    let control = TestServer::restart_control(dir, &url, &strs(&control_args(&cluster, &registry)));
    let out = control.cli_ok(&["exec", &id, "--", "echo", "adopted"]);
    assert_eq!(out, "adopted\n");

    // A kill through the control plane empties the node.
    control.cli_ok(&["sandbox", "kill", &id]);
    wait_torn_down(node.data_dir(), &id);

    // A second sandbox of the same template: no second push or pull.
    let pushes = |log: &str| log.matches("template layers pushed").count();
    let before = pushes(&control.log());
    let second = control.create_sandbox("bb", &[]);
    assert_eq!(pushes(&control.log()), before);
    control.cli_ok(&["sandbox", "kill", &second]);
    wait_torn_down(node.data_dir(), &second);
}

#[test]
fn the_sdk_works_through_a_control_plane_and_its_node() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let cluster = ClusterSecret::new();
    // Each script imports the Debian image; its push starts at the import,
    // and the first create waits for it.
    let control = control(&cluster, &registry);
    let _node = TestNode::join(&control.url(), &cluster, "n1", &[]);
    control.wait_nodes_alive(1);
    run_e2b_python_script(E2B_PYTHON_NEW, "commands.py", &control, &[]);
    e2b_python_run(E2B_PYTHON_NEW, "files.py", &["deb"], &control, &[]);
}

#[test]
fn refusals_say_what_is_wrong() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let cluster = ClusterSecret::new();
    let control = control(&cluster, &registry);
    control.import(&busybox_image(), "bb", &[]);

    // No node yet: a create says so (503, nothing to wait for in silence).
    let out = control.cli(&["sandbox", "create", "bb"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no node has joined"), "{stderr}");

    // A node with the wrong secret does not start, and says why.
    let dir = hutch_test_support::TestDir::new();
    let wrong = dir.path().join("secret");
    std::fs::write(&wrong, "x".repeat(40)).unwrap();
    let out = std::process::Command::new(hutch_test_support::hutch_bin())
        .args(["node", "--listen", "127.0.0.1:0", "--name", "intruder"])
        .args(["--join", &control.url()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--node-secret-file")
        .arg(&wrong)
        .env("HUTCH_ENVD", "/bin/busybox")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused this node") && stderr.contains("node secret"),
        "{stderr}"
    );
    assert!(control.nodes().is_empty());

    // `hutch control` without its cluster's settings says what it needs.
    let out = std::process::Command::new(hutch_test_support::hutch_bin())
        .args(["control", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data3"))
        .env_remove("HUTCH_NODE_SECRET_FILE")
        .env_remove("HUTCH_TEMPLATE_REGISTRY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--node-secret-file") && stderr.contains("--template-registry"),
        "{stderr}"
    );

    // A node whose control plane is not there yet starts, and keeps trying.
    let unreachable = format!("127.0.0.1:{}", hutch_test_support::free_port());
    let early = TestNode::join(&format!("http://{unreachable}"), &cluster, "early", &[]);
    wait_until(
        "the node to say it keeps trying",
        Duration::from_secs(10),
        || early.log().contains("cannot join the control plane yet"),
    );
    drop(early);

    // With a template registry that is not there, a create fails naming
    // it, and nothing is left on the node.
    drop(control);
    let control = TestServer::start_control(&strs(
        &cluster.control_args(&format!("{unreachable}/hutch/templates")),
    ));
    control.import(&busybox_image(), "bb", &[]);
    let node = TestNode::join(&control.url(), &cluster, "n1", &[]);
    control.wait_nodes_alive(1);
    let out = control.cli(&["sandbox", "create", "bb"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&unreachable), "{stderr}");
    wait_until("the node to hold nothing", Duration::from_secs(10), || {
        std::fs::read_dir(node.data_dir().join("sandboxes"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
    // Its placement was given back.
    let nodes = control.nodes();
    assert_eq!(nodes[0]["sandboxes"], 0, "{nodes:?}");
}
