//! The official E2B CLI (npm `@e2b/cli` 2.19.0, pinned in
//! `tests/sdk/cli/package-lock.json`), unmodified, against a real Hutch
//! server: sandboxes created, listed, run in, measured, logged and killed;
//! templates listed and deleted.

use std::path::{Path, PathBuf};
use std::process::Output;

use hutch_test_support::{TestDir, TestServer, debian_image, e2b_js};

/// Runs `e2b ARGS` against `server`, with a home of its own (no
/// `~/.e2b/config.json`) and no update check.
fn e2b(server: &TestServer, cli: &Path, home: &Path, args: &[&str]) -> Output {
    std::process::Command::new(cli.join("node_modules/.bin/e2b"))
        .args(args)
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_API_KEY", server.api_key())
        .env("HOME", home)
        .env("NO_UPDATE_NOTIFIER", "1")
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_ACCESS_TOKEN")
        .output()
        .expect("running e2b")
}

fn ok(out: Output, what: &str, server: &TestServer) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "e2b {what}: {}\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log_tail(40)
    );
    stdout
}

fn cli_dir() -> PathBuf {
    e2b_js(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/cli"))
}

#[test]
fn the_e2b_cli_drives_sandboxes_and_templates() {
    let cli = cli_dir();
    let home = TestDir::new();
    let server = TestServer::start();
    server.import(&debian_image(), "deb", &[]);
    let run = |args: &[&str]| {
        ok(
            e2b(&server, &cli, home.path(), args),
            &args.join(" "),
            &server,
        )
    };

    run(&["sandbox", "create", "deb", "--detach"]);
    let listed: serde_json::Value =
        serde_json::from_str(&run(&["sandbox", "list", "-f", "json"])).expect("JSON list");
    let sandboxes = listed.as_array().expect("an array");
    assert_eq!(sandboxes.len(), 1, "{listed}");
    let id = sandboxes[0]["sandboxId"]
        .as_str()
        .unwrap_or_else(|| panic!("no sandboxId in {listed}"))
        .to_owned();

    let out = run(&["sandbox", "exec", &id, "echo", "hello-from-the-e2b-cli"]);
    assert!(out.contains("hello-from-the-e2b-cli"), "{out}");

    let metrics = run(&["sandbox", "metrics", &id, "--format", "json"]);
    let first: serde_json::Value = serde_json::from_str(
        metrics
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("no metrics line in:\n{metrics}")),
    )
    .unwrap();
    assert!(first["cpuCount"].as_u64().is_some(), "{metrics}");

    let logs = run(&["sandbox", "logs", &id, "--format", "json"]);
    assert!(
        logs.contains("sandbox started from template 'deb'"),
        "{logs}"
    );

    let templates: serde_json::Value =
        serde_json::from_str(&run(&["template", "list", "-f", "json"])).expect("JSON list");
    assert!(
        templates
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["aliases"] == serde_json::json!(["deb"])),
        "{templates}"
    );

    run(&["sandbox", "kill", &id]);
    let again = e2b(&server, &cli, home.path(), &["sandbox", "kill", &id]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(said.contains("wasn't found"), "{said}");
    let listed = run(&["sandbox", "list", "-f", "json"]);
    assert!(!listed.contains(&id), "{listed}");

    run(&["template", "delete", "deb", "-y"]);
    let templates = run(&["template", "list", "-f", "json"]);
    assert!(!templates.contains("\"deb\""), "{templates}");
}
