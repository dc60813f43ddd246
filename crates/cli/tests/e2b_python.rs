//! The official E2B Python SDK, at pinned versions, unmodified, against a
//! real Hutch server: one release that checks the API key's shape, one from before the `/v2/sandboxes` route
//! change and one from after. The scripts live in `tests/sdk/`.

use hutch_test_support::{
    E2B_PYTHON_KEY_CHECK, E2B_PYTHON_NEW, E2B_PYTHON_OLD, FakeInternet, TestServer,
    run_e2b_python_script,
};

fn run_script(version: &str, script: &str) {
    run_script_on(version, script, &TestServer::start());
}

/// Runs `script` of the SDK at `version` against `server`.
fn run_script_on(version: &str, script: &str, server: &TestServer) {
    run_script_with(version, script, server, &[]);
}

/// [`run_script_on`], with more environment variables.
fn run_script_with(version: &str, script: &str, server: &TestServer, env: &[(&str, &str)]) {
    run_e2b_python_script(version, script, server, env);
}

/// A release that validates the key's shape client-side: Hutch's keys
/// pass with the check on.
#[test]
fn python_sdk_with_key_check_commands() {
    run_script(E2B_PYTHON_KEY_CHECK, "commands.py");
}

#[test]
fn python_sdk_with_key_check_files() {
    run_script(E2B_PYTHON_KEY_CHECK, "files.py");
}

#[test]
fn python_sdk_new_commands() {
    run_script(E2B_PYTHON_NEW, "commands.py");
}

#[test]
fn python_sdk_old_commands() {
    run_script(E2B_PYTHON_OLD, "commands.py");
}

#[test]
fn python_sdk_new_files() {
    run_script(E2B_PYTHON_NEW, "files.py");
}

#[test]
fn python_sdk_old_files() {
    run_script(E2B_PYTHON_OLD, "files.py");
}

#[test]
fn python_sdk_new_lifecycle() {
    run_script(E2B_PYTHON_NEW, "lifecycle.py");
}

#[test]
fn python_sdk_old_lifecycle() {
    run_script(E2B_PYTHON_OLD, "lifecycle.py");
}

#[test]
fn python_sdk_new_pause() {
    run_script(E2B_PYTHON_NEW, "pause.py");
}

#[test]
fn python_sdk_old_pause() {
    run_script(E2B_PYTHON_OLD, "pause.py");
}

#[test]
fn python_sdk_new_snapshots() {
    run_script(E2B_PYTHON_NEW, "snapshots.py");
}

#[test]
fn python_sdk_old_snapshots() {
    run_script(E2B_PYTHON_OLD, "snapshots.py");
}

/// Volumes: created, listed, mounted into two sandboxes at once, their quota,
/// kept after the sandboxes end, deleted (the data goes once no sandbox uses
/// it).
fn run_volumes(version: &str) {
    let server = TestServer::start_with_args(&["--volume-size-mb", "32"]);
    run_script_on(version, "volumes.py", &server);
    let volumes = server.data_dir().join("volumes");
    let mut left = Vec::new();
    for _ in 0..100 {
        left = std::fs::read_dir(&volumes)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        left.is_empty(),
        "deleted volumes left on the host: {left:?}"
    );
}

#[test]
fn python_sdk_new_volumes() {
    run_volumes(E2B_PYTHON_NEW);
}

#[test]
fn python_sdk_old_volumes() {
    run_volumes(E2B_PYTHON_OLD);
}

/// Two teams: the second team's key (made with `hutch team create`) finds
/// none of the first team's sandboxes, snapshots, volumes or templates.
fn run_teams(version: &str) {
    let server = TestServer::start();
    let made: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["team", "create", "other", "--json"])).unwrap();
    let other = made["apiKey"].as_str().unwrap().to_owned();
    run_script_with(
        version,
        "teams.py",
        &server,
        &[("HUTCH_OTHER_KEY", other.as_str())],
    );
}

#[test]
fn python_sdk_new_teams() {
    run_teams(E2B_PYTHON_NEW);
}

#[test]
fn python_sdk_old_teams() {
    run_teams(E2B_PYTHON_OLD);
}

/// Domain names in egress rules (`allow_out` with `ALL_TRAFFIC` denied,
/// `update_network`): the sandboxes resolve names with a nameserver beyond
/// the host (`hutch serve --dns`), which the egress proxy uses too.
fn run_network_names(version: &str) {
    let net = FakeInternet::with_dns(&["allowed.test", "other.test"], &[]);
    let dns = net.addr.to_string();
    let server = TestServer::start_with_args(&["--dns", &dns]);
    run_script_with(
        version,
        "network_names.py",
        &server,
        &[
            ("HUTCH_ALLOWED_NAME", "allowed.test"),
            ("HUTCH_OTHER_NAME", "other.test"),
        ],
    );
}

#[test]
fn python_sdk_new_network_names() {
    run_network_names(E2B_PYTHON_NEW);
}

#[test]
fn python_sdk_old_network_names() {
    run_network_names(E2B_PYTHON_OLD);
}
