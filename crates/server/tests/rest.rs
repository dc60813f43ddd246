//! The REST API without running sandboxes: health, authentication, error
//! bodies, templates, validation, the front door for unknown sandboxes, and
//! startup errors. Against `hutch serve` processes that start no sandbox
//! ([`TestServer::start_without_sandboxes`]), except for the startup errors
//! of `Server::bind` itself.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{busybox_oci_archive, error_body, import};
use hutch_server::{Server, ServerError};
use hutch_test_support::{Postgres, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn health_needs_no_key() {
    let s = TestServer::start_without_sandboxes(&[]);
    let resp = reqwest::get(format!("{}/health", s.url())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    s.stop_ok();
}

#[tokio::test]
async fn api_key_is_generated_private_and_required() {
    let s = TestServer::start_without_sandboxes(&[]);
    let key = s.api_key();
    let file = s.data_dir().join("api-key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(key.starts_with("e2b_") && key.len() == 44, "{key}");
    // Only the hash is stored.
    let db = std::fs::read(s.data_dir().join("hutch.db")).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()));

    let client = reqwest::Client::new();
    let msg = error_body(
        client
            .get(format!("{}/sandboxes", s.url()))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert!(msg.contains("X-API-Key"), "{msg}");
    let wrong = client
        .get(format!("{}/hutch/v1/templates", s.url()))
        .header("X-API-Key", "e2b_0000000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    error_body(wrong, 401).await;
    for header in ["X-API-Key", "x-api-key", "X-API-KEY"] {
        let resp = client
            .get(format!("{}/sandboxes", s.url()))
            .header(header, &key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{header}");
        assert_eq!(resp.json::<Value>().await.unwrap(), json!([]));
    }
    s.stop_ok();
}

#[tokio::test]
async fn api_key_survives_a_restart() {
    let s = TestServer::start_without_sandboxes(&[]);
    let key = s.api_key();
    let s = TestServer::restart_without_sandboxes(s.stop_ok(), &[]);
    assert_eq!(s.api_key(), key);
    let resp = s.request(Method::GET, "/sandboxes").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    s.stop_ok();
}

/// With the state in PostgreSQL: the key, the templates and the keys made
/// through the API are there after a restart, and nothing is in SQLite.
#[tokio::test]
async fn the_state_survives_a_restart_on_postgres() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let database = ["--database-url", &pg.url()];
    let s = TestServer::start_without_sandboxes(&database);
    let data = s.data_dir().to_path_buf();
    let key = s.api_key();
    let resp = s
        .request(Method::POST, "/hutch/v1/api-keys")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let second: Value = resp.json().await.unwrap();
    let dir = s.stop_ok();
    assert!(!data.join("hutch.db").exists());
    // The key file goes: the key is found in the database (and the file is
    // not written again, so the server is told the key).
    std::fs::remove_file(data.join("api-key")).unwrap();
    let s = TestServer::restart_without_sandboxes(dir, &database).with_api_key(key);
    let keys = s
        .request(Method::GET, "/hutch/v1/api-keys")
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{keys:?}");
    assert_eq!(ids[1], second["id"].as_str().unwrap());
    let resp = reqwest::Client::new()
        .get(format!("{}/sandboxes", s.url()))
        .header("X-API-Key", second["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        pg.psql("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"),
        "2"
    );
    s.stop_ok();
}

#[tokio::test]
async fn api_keys_are_created_listed_and_revoked() {
    let s = TestServer::start_without_sandboxes(&[]);
    let list = || async {
        let resp = s
            .request(Method::GET, "/hutch/v1/api-keys")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Vec<Value>>().await.unwrap()
    };
    let keys = list().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let first_id = keys[0]["id"].as_str().unwrap().to_string();
    let key = s.api_key();
    assert_eq!(keys[0]["prefix"], key[..10]);
    assert!(keys[0]["revokedAt"].is_null());
    assert!(keys[0].get("key").is_none(), "no secrets listed");

    // The only key cannot be revoked.
    let msg = error_body(
        s.request(Method::DELETE, &format!("/hutch/v1/api-keys/{first_id}"))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
    assert!(msg.contains("last"), "{msg}");

    let resp = s
        .request(Method::POST, "/hutch/v1/api-keys")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    let new_key = created["key"].as_str().unwrap().to_string();
    let new_id = created["id"].as_str().unwrap().to_string();
    assert!(
        new_key.starts_with("e2b_") && new_key.len() == 44,
        "{new_key}"
    );
    assert_eq!(created["prefix"], new_key[..10]);
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    let db = std::fs::read(s.data_dir().join("hutch.db")).unwrap();
    assert!(
        !db.windows(new_key.len()).any(|w| w == new_key.as_bytes()),
        "only the hash is stored"
    );
    let listed = list().await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.get("key").is_none()));

    // The new key works; it revokes the first one, which then fails.
    let client = reqwest::Client::new();
    let with = |key: &str, method: Method, path: &str| {
        client
            .request(method, format!("{}{path}", s.url()))
            .header("X-API-Key", key.to_string())
    };
    let resp = with(&new_key, Method::GET, "/sandboxes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = with(
        &new_key,
        Method::DELETE,
        &format!("/hutch/v1/api-keys/{first_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 204);
    error_body(
        with(&key, Method::GET, "/sandboxes").send().await.unwrap(),
        401,
    )
    .await;
    let listed: Vec<Value> = with(&new_key, Method::GET, "/hutch/v1/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = listed
        .iter()
        .find(|k| k["id"] == first_id.as_str())
        .unwrap();
    assert!(first["revokedAt"].as_str().is_some());

    // Revoked or unknown: 404; the last valid key (the one in use): 409.
    for id in [first_id.as_str(), "999", "nope"] {
        error_body(
            with(
                &new_key,
                Method::DELETE,
                &format!("/hutch/v1/api-keys/{id}"),
            )
            .send()
            .await
            .unwrap(),
            404,
        )
        .await;
    }
    error_body(
        with(
            &new_key,
            Method::DELETE,
            &format!("/hutch/v1/api-keys/{new_id}"),
        )
        .send()
        .await
        .unwrap(),
        409,
    )
    .await;
    s.stop_ok();
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let s = TestServer::start_without_sandboxes(&[]);
    let msg = error_body(s.request(Method::GET, "/nope").send().await.unwrap(), 404).await;
    assert!(msg.contains("/nope"), "{msg}");
    error_body(
        s.request(Method::PUT, "/sandboxes").send().await.unwrap(),
        405,
    )
    .await;
    s.stop_ok();
}

#[tokio::test]
async fn template_import_list_duplicate_and_remove() {
    let s = TestServer::start_without_sandboxes(&[]);

    let resp = import(&s, "base", busybox_oci_archive("one")).await;
    let status = resp.status();
    let meta: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{meta}");
    assert_eq!(meta["name"], "base");
    assert_eq!(meta["schemaVersion"], 1);
    let id = meta["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20);
    assert_eq!(meta["workdir"], "/app");
    assert_eq!(meta["user"], Value::Null, "an empty image User is no user");
    assert_eq!(meta["source"]["kind"], "image");
    assert_eq!(meta["source"]["pathOrRef"], "test-image");
    let env = meta["env"].as_array().unwrap();
    assert!(env.contains(&json!(["TRICKY", "a=b c  d"])), "{env:?}");
    assert!(env.contains(&json!(["EMPTY_VAR", ""])), "{env:?}");
    let layers: Vec<String> = meta["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), 1);
    let layer_dir = s
        .data_dir()
        .join("images/sha256")
        .join(layers[0].trim_start_matches("sha256:"));
    assert!(
        layer_dir.join("bin/busybox").is_file(),
        "{}",
        layer_dir.display()
    );

    // The same name again: 409 with the way out.
    let msg = error_body(import(&s, "base", busybox_oci_archive("one")).await, 409).await;
    assert_eq!(
        msg,
        "template 'base' already exists; remove it first with `hutch template rm base`"
    );

    // A second template sharing nothing with the first.
    assert_eq!(
        import(&s, "other", busybox_oci_archive("two"))
            .await
            .status(),
        201
    );

    let list: Value = s
        .request(Method::GET, "/hutch/v1/templates")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "other"]);

    // Remove by name: its layer goes, the other template's stays.
    let resp = s
        .request(Method::DELETE, "/hutch/v1/templates/base")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!layer_dir.exists(), "unreferenced layer removed");
    let msg = error_body(
        s.request(Method::DELETE, "/hutch/v1/templates/base")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(msg, "template 'base' not found");
    let list: Value = s
        .request(Method::GET, "/hutch/v1/templates")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The name is free again.
    assert_eq!(
        import(&s, "base", busybox_oci_archive("one"))
            .await
            .status(),
        201
    );
    s.stop_ok();
}

#[tokio::test]
async fn template_import_rejects_bad_names_and_bad_images() {
    let s = TestServer::start_without_sandboxes(&[]);
    for name in ["Base", "-x", "a%20b", ""] {
        let msg = error_body(import(&s, name, busybox_oci_archive("x")).await, 400).await;
        assert!(msg.contains("name"), "{name}: {msg}");
    }
    let msg = error_body(
        import(&s, "junk", b"not a tar at all".repeat(100)).await,
        400,
    )
    .await;
    assert!(msg.contains("cannot import template 'junk'"), "{msg}");
    // A failed import leaves no template behind.
    let list: Value = s
        .request(Method::GET, "/hutch/v1/templates")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
    s.stop_ok();
}

#[tokio::test]
async fn create_with_unknown_template_is_404() {
    let s = TestServer::start_without_sandboxes(&[]);
    for path in ["/sandboxes", "/v2/sandboxes"] {
        let resp = s
            .request(Method::POST, path)
            .json(&json!({"templateID": "nope", "timeout": 60, "secure": true, "autoPause": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"code": 404, "message": "template 'nope' not found"})
        );
    }
    s.stop_ok();
}

#[tokio::test]
async fn create_validates_its_input() {
    let s = TestServer::start_without_sandboxes(&[]);
    let post = |body: Value| s.request(Method::POST, "/sandboxes").json(&body).send();

    let msg = error_body(
        post(json!({"templateID": "base", "timeout": 86401}))
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(msg.contains("86400"), "{msg}");
    let msg = error_body(
        post(json!({"templateID": "base", "envVars": {"E2B_SANDBOX_ID": "x"}}))
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(msg.contains("E2B_SANDBOX_ID"), "{msg}");
    let msg = error_body(
        post(json!({"templateID": "base", "envVars": {"A=B": "x"}}))
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(msg.contains("A=B"), "{msg}");
    let msg = error_body(post(json!({"timeout": 5})).await.unwrap(), 400).await;
    assert!(msg.contains("templateID"), "{msg}");
    let resp = s
        .request(Method::POST, "/sandboxes")
        .body("{not json")
        .send()
        .await
        .unwrap();
    error_body(resp, 400).await;
    s.stop_ok();
}

#[tokio::test]
async fn unknown_sandboxes_are_404() {
    let s = TestServer::start_without_sandboxes(&[]);
    let id = "doesnotexist";
    for (method, path, body) in [
        (Method::GET, format!("/sandboxes/{id}"), None),
        (Method::DELETE, format!("/sandboxes/{id}"), None),
        (
            Method::POST,
            format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout": 30})),
        ),
        (
            Method::POST,
            format!("/sandboxes/{id}/refreshes"),
            Some(json!({"duration": 30})),
        ),
        (Method::POST, format!("/sandboxes/{id}/refreshes"), None),
        (
            Method::POST,
            format!("/sandboxes/{id}/connect"),
            Some(json!({"timeout": 30})),
        ),
        (Method::POST, format!("/v2/sandboxes/{id}/connect"), None),
        (Method::POST, format!("/sandboxes/{id}/pause"), None),
        (
            Method::POST,
            format!("/sandboxes/{id}/pause"),
            Some(json!({"memory": true})),
        ),
        (Method::GET, format!("/sandboxes/{id}/metrics"), None),
        (
            Method::GET,
            format!("/sandboxes/{id}/metrics?start=1&end=2"),
            None,
        ),
    ] {
        let mut req = s.request(method.clone(), &path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let msg = error_body(req.send().await.unwrap(), 404).await;
        assert!(msg.contains(id), "{method} {path}: {msg}");
    }
    let resp = s
        .request(Method::GET, "/v2/sandboxes?state=running&limit=10")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-next-token").is_none());
    assert_eq!(resp.json::<Value>().await.unwrap(), json!([]));
    for filter in ["paused", "running,paused", ""] {
        let resp = s
            .request(Method::GET, &format!("/v2/sandboxes?state={filter}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "state={filter}");
    }
    let msg = error_body(
        s.request(Method::GET, "/v2/sandboxes?state=killed")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(msg.contains("killed"), "{msg}");
    let resp = s
        .request(Method::GET, "/sandboxes?metadata=user%3Dme%26app%3Dx")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!([]));
    s.stop_ok();
}

#[tokio::test]
async fn front_door_answers_502_for_unknown_sandboxes() {
    let s = TestServer::start_without_sandboxes(&[]);
    let client = reqwest::Client::new();
    // By headers (E2B_SANDBOX_URL pointing here), no API key needed.
    let resp = client
        .post(format!("{}/process.Process/Start", s.url()))
        .header("E2b-Sandbox-Id", "nosuchsandbox")
        .header("E2b-Sandbox-Port", "49983")
        .header("Content-Type", "application/connect+json")
        .body("x")
        .send()
        .await
        .unwrap();
    let msg = error_body(resp, 502).await;
    assert_eq!(msg, "The sandbox nosuchsandbox was not found");
    // By host name: <port>-<id>.<domain>.
    let resp = client
        .get(format!("{}/health", s.url()))
        .header("Host", "49983-nosuchsandbox.hutch.local")
        .send()
        .await
        .unwrap();
    let msg = error_body(resp, 502).await;
    assert!(msg.contains("was not found"), "{msg}");
    // The front door is checked before the REST routes.
    let resp = client
        .get(format!("{}/sandboxes", s.url()))
        .header("X-API-Key", s.api_key())
        .header("E2b-Sandbox-Id", "gone")
        .send()
        .await
        .unwrap();
    error_body(resp, 502).await;
    s.stop_ok();
}

#[tokio::test]
async fn startup_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_without_sandboxes(&[]);

    // The same data dir is locked by the running server.
    let mut cfg = common::config(s.data_dir());
    let err = Server::bind(cfg.clone())
        .await
        .err()
        .expect("second server refused");
    assert!(matches!(err, ServerError::DataDirLocked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another hutch server"),
        "{err}"
    );

    // The same port.
    cfg.listen = s.addr();
    cfg.data_dir = tmp.path().join("other");
    let err = Server::bind(cfg.clone()).await.err().expect("port in use");
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {}: address in use", s.addr())
    );

    // A data dir that cannot be a directory.
    std::fs::write(tmp.path().join("file"), b"").unwrap();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = tmp.path().join("file/data");
    let err = Server::bind(cfg.clone()).await.err().expect("bad data dir");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "data dir {} is not writable: ",
            cfg.data_dir.display()
        )),
        "{text}"
    );

    // A missing agent binary.
    cfg.data_dir = tmp.path().join("third");
    cfg.envd = tmp.path().join("no-such-envd");
    let err = Server::bind(cfg.clone()).await.err().expect("missing envd");
    assert!(err.to_string().contains("no-such-envd"), "{err}");

    // A database URL of another kind, and a PostgreSQL server that is not
    // there: named, without the password.
    cfg = common::config(&tmp.path().join("fourth"));
    cfg.database_url = Some("mysql://me:pw@127.0.0.1/hutch".into());
    let err = Server::bind(cfg.clone()).await.err().expect("bad URL");
    let text = err.to_string();
    assert!(text.contains("only postgres://"), "{text}");
    assert!(!text.contains("pw"), "{text}");
    let closed = hutch_test_support::free_port();
    cfg.database_url = Some(format!("postgres://me:pw@127.0.0.1:{closed}/hutch"));
    let err = Server::bind(cfg).await.err().expect("no database");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot open the database postgres://me:***@127.0.0.1:{closed}/hutch: "
        )),
        "{text}"
    );
    s.stop_ok();
}
