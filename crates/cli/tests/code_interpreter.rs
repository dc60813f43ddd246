//! The code interpreter: `code-interpreter-v1` built by the server itself
//! (at its first use here, from a `base`), then E2B's code interpreter SDK
//! (two Python releases and the npm one, unmodified) run against it:
//! `tests/sdk/code_interpreter.py` and `code_interpreter.mjs`;
//! then `hutch mcp`'s `run_code` through the MCP Python SDK:
//! `tests/sdk/mcp_run_code.py`.

use std::path::Path;
use std::time::{Duration, Instant};

use hutch_test_support::{
    TestServer, assert_script_ok, debian_image, e2b_js, http, mcp_client, python_with,
};

const TEMPLATE: &str = "code-interpreter-v1";

/// Releases of `e2b-code-interpreter` with the `e2b` release each runs on:
/// the newest, and the oldest that takes `E2B_SANDBOX_URL` (older ones reach
/// the service only at `https://49999-<id>.<domain>`).
const RELEASES: &[(&str, &str)] = &[("2.11.5", "2.63.0"), ("2.10.0", "2.50.0")];

/// Waits until the template is listed, failing at once with the server's
/// log if its build failed.
fn wait_built(server: &TestServer, within: Duration) {
    let start = Instant::now();
    loop {
        if server.cli_ok(&["template", "list"]).contains(TEMPLATE) {
            return;
        }
        let log = server.log();
        assert!(
            !log.contains(&format!("building the template '{TEMPLATE}' failed")),
            "the build failed:\n{log}"
        );
        assert!(
            start.elapsed() < within,
            "not built after {within:?}:\n{}",
            server.log_tail(60)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn the_code_interpreter_template_is_built_and_the_sdk_runs_code_in_it() {
    let server = TestServer::start();
    // Without `base` there is nothing to build it from: not found.
    let out = server.cli(&["sandbox", "create", TEMPLATE]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("not found"), "{said}");

    // The suite's Debian image stands in for `base` (with the variables
    // of environment.md in its config, and sudo as in the real one).
    server.import(&debian_image(), "base", &["--allow-privilege-escalation"]);
    // The first create starts the build and says so (E2B's error shape).
    let (status, body) = http(
        &server,
        reqwest::Method::POST,
        "/sandboxes",
        &[],
        Some(serde_json::json!({ "templateID": TEMPLATE })),
    );
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is still being built"),
        "{body}"
    );
    wait_built(&server, Duration::from_secs(900));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/code_interpreter.py");
    for (release, e2b) in RELEASES {
        let python = python_with(
            &format!("e2b-code-interpreter-{release}"),
            &[
                &format!("e2b=={e2b}"),
                &format!("e2b-code-interpreter=={release}"),
            ],
        );
        let out = std::process::Command::new(python)
            .arg(&script)
            .env("E2B_API_URL", server.url())
            .env("E2B_SANDBOX_URL", server.url())
            .env("E2B_API_KEY", server.api_key())
            .env_remove("E2B_VALIDATE_API_KEY")
            .env_remove("E2B_DEBUG")
            .env_remove("E2B_DOMAIN")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("running python");
        assert_script_ok(&out, &format!("e2b-code-interpreter {release}"), &server);
    }

    // The JavaScript SDK (npm, pinned by tests/sdk/js-code-interpreter).
    let sdk_dir =
        e2b_js(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/js-code-interpreter"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/code_interpreter.mjs");
    let out = std::process::Command::new("node")
        .arg(&script)
        .env("E2B_SDK_DIR", &sdk_dir)
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_API_KEY", server.api_key())
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .expect("running node");
    assert_script_ok(&out, "@e2b/code-interpreter", &server);

    // The MCP server's run_code, in the same template.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mcp_run_code.py");
    let out = mcp_client(&server, &script, &[]);
    let line = |name: &str| out.line(name);
    assert_eq!(line("value"), "42 hi None");
    assert_eq!(line("state"), "43");
    assert_eq!(line("env"), "('sandbox', 'c', '/etc/myapp/config.json')");
    let chart = line("chart");
    assert!(chart.starts_with("1 image/png ["), "{chart}");
    assert_eq!(line("error"), "ZeroDivisionError");
    assert_eq!(line("bash"), "sandbox");
    assert_eq!(
        line("timed out"),
        "the code did not finish within 2 s: it was interrupted"
    );
    assert_eq!(line("after"), "42");
}
