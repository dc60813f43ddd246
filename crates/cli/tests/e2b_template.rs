//! E2B's template build API, driven by the official Python SDK's
//! `Template` builder (unmodified, at the pinned versions) against a real
//! Hutch server. The script is `tests/sdk/template.py`.

use std::path::Path;

use hutch_test_support::{
    E2B_PYTHON_NEW, E2B_PYTHON_OLD, TestServer, assert_script_ok, debian_image, e2b_python,
};

fn run_template_script(version: &str) {
    let python = e2b_python(version);
    let server = TestServer::start();
    server.import(&debian_image(), "debian", &["--allow-privilege-escalation"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/template.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("debian")
        .arg("sdk-built")
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_API_KEY", server.api_key())
        // No bytecode of the shared checks module in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .expect("running python");
    assert_script_ok(
        &out,
        &format!("e2b {version} {}", script.display()),
        &server,
    );
}

#[test]
fn python_sdk_new_template_build() {
    run_template_script(E2B_PYTHON_NEW);
}

#[test]
fn python_sdk_old_template_build() {
    run_template_script(E2B_PYTHON_OLD);
}
