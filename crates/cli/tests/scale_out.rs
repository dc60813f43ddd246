//! A control plane and a node apart: `hutch serve --node` keeps the API,
//! the database and the templates; `hutch node` (its own data directory,
//! runc state and process) runs the sandboxes; templates reach the node
//! through a real OCI registry. Driven with the official SDK and the CLI,
//! as users would.

use std::time::Duration;

use hutch_test_support::{
    E2B_PYTHON_NEW, Registry, RegistryAuthMode, TestNode, TestServer, busybox_image,
    run_e2b_python_script, wait_torn_down, wait_until,
};

/// The arguments of a control plane driving `node`, pushing its templates
/// to `registry`.
fn control_args(node: &TestNode, registry: &Registry) -> Vec<String> {
    node.control_args(&format!("127.0.0.1:{}/hutch/templates", registry.port()))
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A control plane driving `node`, pushing its templates to `registry`.
fn control(node: &TestNode, registry: &Registry) -> TestServer {
    TestServer::start_without_sandboxes(&strs(&control_args(node, registry)))
}

#[test]
fn sandboxes_run_on_the_node_and_templates_travel_through_the_registry() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let mut node = TestNode::start();
    let control = control(&node, &registry);
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
    let dir = control.stop_ok();
    let control =
        TestServer::restart_without_sandboxes(dir, &strs(&control_args(&node, &registry)));
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
    let node = TestNode::start();
    // Each script imports the Debian image; its push starts at the import,
    // and the first create waits for it. The second control plane finds
    // it in the registry already, and the node has its layers.
    for script in ["commands.py", "files.py"] {
        let control = control(&node, &registry);
        run_e2b_python_script(E2B_PYTHON_NEW, script, &control, &[]);
    }
}

#[test]
fn a_control_plane_refuses_a_node_it_cannot_use() {
    let node = TestNode::start();
    // The wrong secret: the control plane does not start, and says why.
    let dir = hutch_test_support::TestDir::new();
    let wrong = dir.path().join("secret");
    std::fs::write(&wrong, "x".repeat(40)).unwrap();
    let out = std::process::Command::new(hutch_test_support::hutch_bin())
        .args(["control", "--listen", "127.0.0.1:0", "--no-base-template"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--node", &node.url(), "--node-secret-file"])
        .arg(&wrong)
        .args(["--template-registry", "127.0.0.1:1/hutch/templates"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node secret"), "{stderr}");

    // `hutch control` without a node says what it needs.
    let out = std::process::Command::new(hutch_test_support::hutch_bin())
        .args(["control", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data3"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node http://HOST:PORT"), "{stderr}");

    // A node that is not there.
    let out = std::process::Command::new(hutch_test_support::hutch_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--no-base-template"])
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .args([
            "--node",
            &format!("http://127.0.0.1:{}", hutch_test_support::free_port()),
            "--node-secret-file",
        ])
        .arg(node.secret_file())
        .args(["--template-registry", "127.0.0.1:1/hutch/templates"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer"), "{stderr}");

    // A template registry that is not there: creates fail with the reason,
    // and nothing is left on the node.
    let unreachable = format!("127.0.0.1:{}", hutch_test_support::free_port());
    let args = node.control_args(&format!("{unreachable}/hutch/templates"));
    let control = TestServer::start_without_sandboxes(&strs(&args));
    control.import(&busybox_image(), "bb", &[]);
    let out = control.cli(&["sandbox", "create", "bb"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&unreachable), "{stderr}");
    wait_until("the node to hold nothing", Duration::from_secs(10), || {
        std::fs::read_dir(node.data_dir().join("sandboxes"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
}
