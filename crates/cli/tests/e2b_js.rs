//! The official E2B JavaScript SDK (npm `e2b` 2.51.0, pinned in
//! `tests/sdk/js/package-lock.json`), unmodified, against
//! a real Hutch server. The scripts live in `tests/sdk/`.

use std::path::Path;

use hutch_test_support::{TestServer, assert_script_ok, debian_image, e2b_js};

/// Runs `tests/sdk/SCRIPT` with Node against a fresh server holding the
/// Debian test image as `deb`.
fn run_script(script: &str) {
    // npm `e2b`, pinned with its dependencies by tests/sdk/js/package-lock.json.
    let sdk_dir = e2b_js(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/js"));
    let server = TestServer::start();
    server.import(&debian_image(), "deb", &["--allow-privilege-escalation"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg("deb")
        .env("E2B_SDK_DIR", &sdk_dir)
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_VOLUME_API_URL", server.url())
        .env("E2B_API_KEY", server.api_key())
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .expect("running node");
    assert_script_ok(&out, &format!("e2b (npm) {}", script.display()), &server);
}

#[test]
fn js_sdk_commands() {
    run_script("commands.mjs");
}

#[test]
fn js_sdk_snapshots_forks_and_network() {
    run_script("snapshots.mjs");
}

#[test]
fn js_sdk_volumes() {
    run_script("volumes.mjs");
}
