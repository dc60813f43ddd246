//! `hutch template pull` end to end: a real registry (images pushed with skopeo), a real
//! server, real sandboxes; the pulled image's config must reach the processes.

use std::io::Write;
use std::process::{Output, Stdio};

use hutch_test_support::{
    IMAGE_ENV, REGISTRY_PASSWORD, REGISTRY_USERNAME, Registry, RegistryAuthMode, TestServer,
    busybox_image,
};

fn run(server: &TestServer, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = server
        .hutch()
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the hutch CLI");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("waiting for the hutch CLI")
}

fn ok(server: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(server, args, stdin);
    assert!(
        out.status.success(),
        "hutch {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&server.log()),
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a command that must fail; returns its stderr.
fn fails(server: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(server, args, stdin);
    assert!(
        !out.status.success(),
        "hutch {args:?} succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf-8 output")
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn pulled_template_runs_with_the_image_environment() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    registry.push(&busybox_image(), "hutch/busybox:1");
    let server = TestServer::start_with_args(&[
        "--warm-pool",
        "0",
        "--insecure-registry",
        "registry.invalid:5000",
    ]);
    let reference = registry.reference("hutch/busybox:1");

    let out = ok(
        &server,
        &["template", "pull", &reference, "--name", "bb"],
        None,
    );
    assert!(
        out.starts_with("pulled template bb (id "),
        "unexpected output: {out}"
    );
    let list = ok(&server, &["template", "list", "--json"], None);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let bb = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bb")
        .expect("template bb is listed");
    assert_eq!(bb["source"]["kind"], "image");
    assert_eq!(bb["source"]["pathOrRef"], reference.as_str());
    assert_eq!(bb["image"]["env"], serde_json::json!(IMAGE_ENV));
    assert_eq!(bb["layers"].as_array().unwrap().len(), 2);

    let out = ok(
        &server,
        &[
            "run",
            "bb",
            "--",
            "sh",
            "-c",
            "echo $MY_APP_CONFIG; printenv TRICKY; echo ${EMPTY_VAR+set}; pwd; mytool",
        ],
        None,
    );
    assert_eq!(out, "/etc/myapp/config.json\na=b c  d\nset\n/app\nmytool\n");

    let err = fails(
        &server,
        &["template", "pull", &reference, "--name", "bb"],
        None,
    );
    assert!(err.contains("template 'bb' already exists"), "{err}");
    let missing = registry.reference("hutch/busybox:nope");
    let err = fails(
        &server,
        &["template", "pull", &missing, "--name", "nope"],
        None,
    );
    assert!(
        err.contains(&format!(
            "image '{missing}' not found in registry '{}'",
            registry.host()
        )),
        "{err}"
    );
}

#[test]
fn pull_with_credentials_from_stdin() {
    let registry = Registry::start(RegistryAuthMode::Basic);
    registry.push(&busybox_image(), "private/busybox:1");
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    let reference = registry.reference("private/busybox:1");

    let err = fails(
        &server,
        &["template", "pull", &reference, "--name", "p1"],
        None,
    );
    assert!(
        err.contains("refused access") && err.contains("--password-stdin"),
        "{err}"
    );
    let args = [
        "template",
        "pull",
        &reference,
        "--name",
        "p1",
        "--username",
        REGISTRY_USERNAME,
        "--password-stdin",
    ];
    let err = fails(&server, &args, Some("wrong\n"));
    assert!(
        err.contains("refused access") && err.contains("check the username and password"),
        "{err}"
    );
    let out = ok(&server, &args, Some(&format!("{REGISTRY_PASSWORD}\n")));
    assert!(out.starts_with("pulled template p1 "), "{out}");
    let out = ok(
        &server,
        &["run", "p1", "--", "printenv", "MY_APP_CONFIG"],
        None,
    );
    assert_eq!(out, "/etc/myapp/config.json\n");
}

/// The HTTP API: a plain JSON answer (201) without `Accept: application/x-ndjson`, and the
/// event stream with it.
#[test]
fn pull_api_answers_json_or_streams_ndjson() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    registry.push(&busybox_image(), "hutch/busybox:1");
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    let reference = registry.reference("hutch/busybox:1");
    let url = format!("{}/hutch/v1/templates/pull", server.url());
    let key = server.api_key();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let resp = http
            .post(&url)
            .header("X-API-Key", &key)
            .json(&serde_json::json!({"name": "plain", "reference": reference}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let template: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(template["name"], "plain");
        let layers = template["layers"].clone();

        let resp = http
            .post(&url)
            .header("X-API-Key", &key)
            .header("Accept", "application/x-ndjson")
            .json(&serde_json::json!({"name": "streamed", "reference": reference}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/x-ndjson"
        );
        let text = resp.text().await.unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(events[0]["event"], "resolved", "{text}");
        assert_eq!(events[0]["layers"], 2, "{text}");
        // The layers are in the store already: both are reported reused.
        let layer_events: Vec<_> = events.iter().filter(|e| e["event"] == "layer").collect();
        assert_eq!(layer_events.len(), 2, "{text}");
        assert!(
            layer_events
                .iter()
                .all(|e| e["reused"] == true && e["complete"] == true && e["done"] == e["total"]),
            "{text}"
        );
        let last = events.last().unwrap();
        assert_eq!(last["event"], "done", "{text}");
        assert_eq!(last["template"]["name"], "streamed");
        assert_eq!(last["template"]["layers"], layers);

        let resp = http
            .post(&url)
            .header("X-API-Key", &key)
            .header("Accept", "application/x-ndjson")
            .json(&serde_json::json!({
                "name": "gone",
                "reference": registry.reference("hutch/gone:1"),
            }))
            .send()
            .await
            .unwrap();
        let text = resp.text().await.unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["event"], "error", "{text}");
        assert_eq!(last["code"], 404, "{text}");
        assert!(
            last["message"]
                .as_str()
                .unwrap()
                .contains("not found in registry"),
            "{text}"
        );
    });
}
