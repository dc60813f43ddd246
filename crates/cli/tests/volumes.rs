//! Volumes across server restarts: a volume stays mounted on the host when
//! the server stops (a clean stop or `kill -9`), sandboxes re-adopted after
//! the restart keep using it, new ones mount it, and deleting it removes its
//! data once the last sandbox using it is gone. Managed with `hutch
//! volume`.

use std::time::Duration;

use hutch_test_support::{TestServer, debian_image};
use serde_json::{Value, json};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// `method path` with `body` on `server`: the status and the JSON answer.
fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    rt().block_on(async {
        let mut req = server.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
}

/// A sandbox of `deb` with `volume` at `path`; its id.
fn sandbox_with(server: &TestServer, volume: &str, path: &str) -> String {
    let (status, body) = call(
        server,
        reqwest::Method::POST,
        "/sandboxes",
        Some(json!({"templateID": "deb", "timeout": 600,
                    "volumeMounts": [{"name": volume, "path": path}]})),
    );
    assert_eq!(status, 201, "{body}\n{}", server.log_tail(30));
    body["sandboxID"].as_str().unwrap().to_owned()
}

fn sh(server: &TestServer, id: &str, script: &str) -> String {
    server.cli_ok(&["exec", id, "--", "sh", "-c", script])
}

#[test]
fn volumes_survive_server_restarts_and_go_when_deleted() {
    let server = TestServer::start_with_args(&["--volume-size-mb", "32"]);
    server.import(&debian_image(), "deb", &[]);
    // `hutch volume` is a client of the same routes.
    let vol_id = server
        .cli_ok(&["volume", "create", "kept"])
        .trim()
        .to_owned();
    let listed = server.cli_ok(&["volume", "list"]);
    assert!(
        listed.contains(&vol_id) && listed.contains("kept"),
        "{listed}"
    );
    let (status, again) = call(
        &server,
        reqwest::Method::POST,
        "/volumes",
        Some(json!({"name": "kept"})),
    );
    assert_eq!(status, 400, "{again}");
    assert_eq!(
        call(&server, reqwest::Method::GET, "/volumes/not-a-uuid", None).0,
        400
    );
    let a = sandbox_with(&server, "kept", "/kept");
    sh(&server, &a, "echo before > /kept/before.txt");

    // A clean stop, then a kill -9: the volume is there after each.
    let server = TestServer::restart_with_args(server.stop_ok(), &["--volume-size-mb", "32"]);
    assert_eq!(sh(&server, &a, "cat /kept/before.txt"), "before\n");
    sh(&server, &a, "echo after-restart > /kept/after.txt");
    let server = TestServer::restart_with_args(server.kill9(), &["--volume-size-mb", "32"]);
    let b = sandbox_with(&server, &vol_id, "/v");
    assert_eq!(
        sh(&server, &b, "cat /v/before.txt /v/after.txt"),
        "before\nafter-restart\n"
    );
    assert_eq!(sh(&server, &a, "ls /kept | wc -l"), "2\n");

    // Deleted (by name) while used: the data stays until the last user is
    // gone.
    server.cli_ok(&["volume", "rm", "kept"]);
    let out = server.cli(&["volume", "rm", "kept"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("volume 'kept' not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.cli_ok(&["volume", "list", "--json"]).trim(), "[]");
    assert_eq!(
        call(
            &server,
            reqwest::Method::GET,
            &format!("/volumes/{vol_id}"),
            None
        )
        .0,
        404
    );
    let image = server.data_dir().join("volumes").join(&vol_id);
    server.cli_ok(&["sandbox", "kill", &a]);
    assert_eq!(sh(&server, &b, "cat /v/before.txt"), "before\n");
    assert!(image.exists(), "removed while a sandbox uses it");
    server.cli_ok(&["sandbox", "kill", &b]);
    for _ in 0..100 {
        if !image.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!image.exists(), "{}", server.log_tail(30));
}
