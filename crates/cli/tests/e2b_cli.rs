//! The official E2B CLI (npm `@e2b/cli` 2.19.0, pinned in
//! `tests/sdk/cli/package-lock.json`), unmodified, against a real Hutch
//! server: sandboxes created, listed, run in, measured, logged and killed;
//! templates built from a Dockerfile, listed and deleted; a terminal into a
//! sandbox; `e2b auth login` through Hutch's login page, and `e2b auth
//! logout`.

use std::path::{Path, PathBuf};
use std::process::Output;

use hutch_test_support::{TestDir, TestServer, debian_image, e2b_js};

/// Runs `e2b ARGS` against `server`, with a home of its own (no
/// `~/.e2b/config.json`) and no update check.
fn e2b(server: &TestServer, cli: &Path, home: &Path, args: &[&str]) -> Output {
    e2b_with(
        server,
        cli,
        home,
        args,
        &[("E2B_API_KEY", &server.api_key())],
    )
}

/// [`e2b`] with `env` (and no `E2B_API_KEY` unless `env` has it).
fn e2b_with(
    server: &TestServer,
    cli: &Path,
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    std::process::Command::new(cli.join("node_modules/.bin/e2b"))
        .args(args)
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env_remove("E2B_API_KEY")
        .envs(env.iter().copied())
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

/// `e2b template create` builds a Dockerfile (its `COPY` files uploaded,
/// `ENV` kept) into a template sandboxes start from; `e2b sandbox connect`
/// opens a terminal into a sandbox (under a pseudo-terminal, as a person's
/// shell gives it).
#[test]
fn the_e2b_cli_builds_a_template_and_opens_a_terminal() {
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
    let context = home.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "copied by the e2b cli\n").unwrap();
    std::fs::write(
        context.join("e2b.Dockerfile"),
        "FROM deb\nENV GREETING=from-the-e2b-cli\nCOPY hello.txt /opt/hello.txt\nRUN cp /opt/hello.txt /opt/copied.txt\n",
    )
    .unwrap();
    let out = run(&[
        "template",
        "create",
        "clitpl",
        "-p",
        context.to_str().unwrap(),
    ]);
    assert!(out.contains("Building sandbox template"), "{out}");
    let id = run(&["sandbox", "create", "clitpl", "--detach"])
        .trim()
        .to_owned();
    let id = id.lines().last().unwrap_or_default().trim().to_owned();
    let out = run(&["sandbox", "exec", &id, "cat", "/opt/copied.txt"]);
    assert!(out.contains("copied by the e2b cli"), "{out}");
    let out = run(&["sandbox", "exec", &id, "printenv", "GREETING"]);
    assert!(out.contains("from-the-e2b-cli"), "{out}");

    // A terminal: keys typed go to a shell in the sandbox, its output
    // comes back; `exit` ends it and the CLI.
    let mut child = std::process::Command::new("script")
        .args(["-qfec"])
        .arg(format!(
            "{} sandbox connect {id}",
            cli.join("node_modules/.bin/e2b").display()
        ))
        .arg("/dev/null")
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_API_KEY", server.api_key())
        .env("HOME", home.path())
        .env("NO_UPDATE_NOTIFIER", "1")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let typing = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(std::time::Duration::from_secs(4));
        let _ = stdin.write_all(b"echo pty-$((6*7)) in $(pwd)\r");
        std::thread::sleep(std::time::Duration::from_secs(2));
        let _ = stdin.write_all(b"exit\r");
        std::thread::sleep(std::time::Duration::from_secs(10));
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let _ = typing.join();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("pty-42 in /"),
        "terminal output:\n{screen}\nstderr:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_tail(30)
    );
    run(&["sandbox", "kill", &id]);
}

/// What stands in for the user's browser: fetches the login page the CLI
/// opens, checks it asks for a key, submits the key in `HUTCH_LOGIN_KEY`
/// as a person would, and follows the redirects (to the CLI's callback,
/// then back to the page), writing the last page to `HUTCH_BROWSER_LOG`.
const BROWSER: &str = r#"#!/usr/bin/env python3
import os, sys, urllib.parse, urllib.request
url = sys.argv[1]
page = urllib.request.urlopen(url).read().decode()
assert 'name="key"' in page, page
nxt = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["next"][0]
form = urllib.parse.urlencode({"key": os.environ["HUTCH_LOGIN_KEY"], "next": nxt}).encode()
final = urllib.request.urlopen(urllib.request.Request(url, data=form)).read().decode()
with open(os.environ["HUTCH_BROWSER_LOG"], "w") as f:
    f.write(final)
"#;

#[test]
fn the_e2b_cli_logs_in_through_the_login_page_and_out() {
    use std::os::unix::fs::PermissionsExt;
    let cli = cli_dir();
    let home = TestDir::new();
    let server = TestServer::start_without_sandboxes(&[]);
    // Logged in as another team than the first key's.
    let made: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["team", "create", "beta", "--json"])).unwrap();
    let beta_key = made["apiKey"].as_str().unwrap().to_owned();
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let browser = bin.join("xdg-open");
    std::fs::write(&browser, BROWSER).unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let browser_log = home.path().join("browser.html");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docs = format!("{}/hutch/v1/cli-login", server.url());
    let env = [
        ("PATH", path.as_str()),
        ("E2B_DOCS_BASE", docs.as_str()),
        ("HUTCH_LOGIN_KEY", beta_key.as_str()),
        ("HUTCH_BROWSER_LOG", browser_log.to_str().unwrap()),
    ];
    let run = |args: &[&str]| {
        ok(
            e2b_with(&server, &cli, home.path(), args, &env),
            &args.join(" "),
            &server,
        )
    };

    let out = run(&["auth", "login"]);
    assert!(out.contains("Logged in as beta@hutch"), "{out}");
    assert!(out.contains("beta"), "{out}");
    let page = std::fs::read_to_string(&browser_log).unwrap();
    assert!(
        page.contains("logged in to Hutch as <b>beta@hutch</b>"),
        "{page}"
    );
    let info = run(&["auth", "info"]);
    assert!(info.contains("beta@hutch"), "{info}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.path().join(".e2b/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["projectName"], "beta", "{config}");
    let token = config["projectApiKey"].as_str().unwrap().to_owned();

    // The CLI works with what it saved (no E2B_API_KEY), as team beta.
    let listed = run(&["sandbox", "list", "-f", "json"]);
    assert_eq!(listed.trim(), "[]", "{listed}");
    let teams = |key: &str| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{}/teams", server.url()))
                .header("X-API-Key", key)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (status, body) = teams(&token);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"beta\""), "{body}");

    // A refresh (what `e2b auth configure` does with an expired token)
    // answers the same token.
    let refreshed = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new()
            .post(config["oauth"]["token_endpoint"].as_str().unwrap())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=refresh_token&refresh_token={token}&client_id=hutch"
            ))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    assert_eq!(refreshed["access_token"].as_str(), Some(token.as_str()));

    // Logging out revokes the token.
    run(&["auth", "logout"]);
    assert_eq!(teams(&token).0, 401);
    let info = run(&["auth", "info"]);
    assert!(info.contains("Not logged in"), "{info}");
}
