//! Teams against a real server: a key of one team finds nothing of another
//! team's — on every route that names a sandbox, template, build, snapshot,
//! volume or key (the routes are the server's router's, so a new route
//! must be added here), and in every listing — and changes nothing of
//! it. A public template is the exception: other teams start sandboxes from
//! it, and still cannot manage it. Teams are made with `hutch team`.

use std::collections::BTreeSet;

use hutch_test_support::{TestServer, debian_image};
use reqwest::Method;
use serde_json::{Value, json};

/// `method path` with `body`, with `key`: the status and the JSON answer.
fn call(
    server: &TestServer,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url()))
            .header("X-API-Key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
}

/// Every route the server serves, as its router records them.
fn declared_routes() -> BTreeSet<String> {
    let routes: BTreeSet<String> = hutch_server::api::served_routes()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert!(routes.len() > 40, "routes found: {routes:?}");
    routes
}

/// Routes that need no API key: their own token, or none.
const NOT_KEYED: [&str; 9] = [
    "/health",
    "/openapi.json",
    "/hutch/v1/cli-login/api/cli",
    "/hutch/v1/oauth/token",
    "/hutch/v1/oauth/revoke",
    "/hutch/v1/build-files/{hash}",
    "/volumecontent/{id}/dir",
    "/volumecontent/{id}/path",
    "/volumecontent/{id}/file",
];

#[test]
fn another_teams_key_finds_nothing_and_changes_nothing() {
    let server = TestServer::start();
    server.import(&debian_image(), "deb", &[]);
    let a = server.api_key();
    let hash = "0".repeat(64);

    // Team beta, made by a key of the default team; beta's key cannot
    // make teams.
    let made: Value =
        serde_json::from_str(&server.cli_ok(&["team", "create", "beta", "--json"])).unwrap();
    let b = made["apiKey"].as_str().unwrap().to_owned();
    assert!(b.starts_with("e2b_"), "{made}");
    let (status, body) = call(
        &server,
        &b,
        Method::POST,
        "/hutch/v1/teams",
        Some(json!({"name": "gamma"})),
    );
    assert_eq!(status, 403, "{body}");
    // Nor see the cluster's nodes (the operator's).
    let (status, body) = call(&server, &b, Method::GET, "/hutch/v1/nodes", None);
    assert_eq!(status, 403, "{body}");
    // Nor read the server's metrics (the operator's, across teams).
    let (status, body) = call(&server, &b, Method::GET, "/metrics", None);
    assert_eq!(status, 403, "{body}");
    let listed = server.cli_ok(&["team", "list"]);
    assert!(
        listed.contains("beta") && listed.contains("default"),
        "{listed}"
    );

    // The default team's things.
    let (status, sbx) = call(
        &server,
        &a,
        Method::POST,
        "/sandboxes",
        Some(json!({"templateID": "deb", "timeout": 600})),
    );
    assert_eq!(status, 201, "{sbx}\n{}", server.log_tail(30));
    let id = sbx["sandboxID"].as_str().unwrap().to_owned();
    let (status, snap) = call(
        &server,
        &a,
        Method::POST,
        &format!("/sandboxes/{id}/snapshots"),
        Some(json!({"name": "snap-a"})),
    );
    assert_eq!(status, 201, "{snap}");
    let (status, vol) = call(
        &server,
        &a,
        Method::POST,
        "/volumes",
        Some(json!({"name": "vol-a"})),
    );
    assert_eq!(status, 201, "{vol}");
    let vol_id = vol["volumeID"].as_str().unwrap().to_owned();
    let (status, tagged) = call(
        &server,
        &a,
        Method::POST,
        "/templates/tags",
        Some(json!({"target": "deb", "tags": ["v1"]})),
    );
    assert_eq!(status, 201, "{tagged}");
    let (status, build) = call(
        &server,
        &a,
        Method::POST,
        "/v3/templates",
        Some(json!({"name": "pending-a"})),
    );
    assert_eq!(status, 202, "{build}");
    let (tid, bid) = (
        build["templateID"].as_str().unwrap().to_owned(),
        build["buildID"].as_str().unwrap().to_owned(),
    );
    let (status, key) = call(
        &server,
        &a,
        Method::POST,
        "/api-keys",
        Some(json!({"name": "second"})),
    );
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (status, token) = call(
        &server,
        &a,
        Method::POST,
        "/access-tokens",
        Some(json!({"name": "cli"})),
    );
    assert_eq!(status, 201, "{token}");
    let token_id = token["id"].as_str().unwrap().to_owned();

    // Every route naming one of them answers beta's key 404, as if absent.
    let no_body = None::<Value>;
    let named: Vec<(Method, &str, String, Option<Value>)> = vec![
        (
            Method::GET,
            "/sandboxes/{id}",
            format!("/sandboxes/{id}"),
            no_body.clone(),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/timeout",
            format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout": 60})),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/refreshes",
            format!("/sandboxes/{id}/refreshes"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/connect",
            format!("/sandboxes/{id}/connect"),
            Some(json!({"timeout": 60})),
        ),
        (
            Method::POST,
            "/v2/sandboxes/{id}/connect",
            format!("/v2/sandboxes/{id}/connect"),
            Some(json!({"timeout": 60})),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/pause",
            format!("/sandboxes/{id}/pause"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/resume",
            format!("/sandboxes/{id}/resume"),
            Some(json!({})),
        ),
        (
            Method::GET,
            "/sandboxes/{id}/metrics",
            format!("/sandboxes/{id}/metrics"),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/sandboxes/{id}/logs",
            format!("/sandboxes/{id}/logs"),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/v2/sandboxes/{id}/logs",
            format!("/v2/sandboxes/{id}/logs"),
            no_body.clone(),
        ),
        (
            Method::PUT,
            "/sandboxes/{id}/network",
            format!("/sandboxes/{id}/network"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/snapshots",
            format!("/sandboxes/{id}/snapshots"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/sandboxes/{id}/fork",
            format!("/sandboxes/{id}/fork"),
            Some(json!({})),
        ),
        (
            Method::DELETE,
            "/sandboxes/{id}",
            format!("/sandboxes/{id}"),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/templates/{template_id}",
            "/templates/deb".into(),
            no_body.clone(),
        ),
        (
            Method::PATCH,
            "/templates/{template_id}",
            "/templates/deb".into(),
            Some(json!({"public": true})),
        ),
        (
            Method::PATCH,
            "/v2/templates/{template_id}",
            "/v2/templates/deb".into(),
            Some(json!({"public": true})),
        ),
        (
            Method::GET,
            "/templates/{template_id}/tags",
            "/templates/deb/tags".into(),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/templates/aliases/{alias}",
            "/templates/aliases/deb".into(),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/templates/{template_id}/files/{hash}",
            format!("/templates/{tid}/files/{hash}"),
            no_body.clone(),
        ),
        (
            Method::POST,
            "/v2/templates/{template_id}/builds/{build_id}",
            format!("/v2/templates/{tid}/builds/{bid}"),
            Some(json!({"fromImage": "debian"})),
        ),
        (
            Method::GET,
            "/templates/{template_id}/builds/{build_id}/status",
            format!("/templates/{tid}/builds/{bid}/status"),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/templates/{template_id}/builds/{build_id}/logs",
            format!("/templates/{tid}/builds/{bid}/logs"),
            no_body.clone(),
        ),
        (
            Method::DELETE,
            "/templates/{template_id}",
            "/templates/snap-a".into(),
            no_body.clone(),
        ),
        (
            Method::DELETE,
            "/templates/{template_id}",
            "/templates/deb".into(),
            no_body.clone(),
        ),
        (
            Method::DELETE,
            "/hutch/v1/templates/{name}",
            "/hutch/v1/templates/deb".into(),
            no_body.clone(),
        ),
        (
            Method::GET,
            "/volumes/{id}",
            format!("/volumes/{vol_id}"),
            no_body.clone(),
        ),
        (
            Method::DELETE,
            "/volumes/{id}",
            format!("/volumes/{vol_id}"),
            no_body.clone(),
        ),
        (
            Method::PATCH,
            "/api-keys/{id}",
            format!("/api-keys/{key_id}"),
            Some(json!({"name": "mine"})),
        ),
        (
            Method::DELETE,
            "/api-keys/{id}",
            format!("/api-keys/{key_id}"),
            no_body.clone(),
        ),
        (
            Method::DELETE,
            "/access-tokens/{id}",
            format!("/access-tokens/{token_id}"),
            no_body.clone(),
        ),
        (
            Method::DELETE,
            "/hutch/v1/api-keys/{id}",
            format!("/hutch/v1/api-keys/{key_id}"),
            no_body.clone(),
        ),
        // Routes without an id, naming the default team's things in their
        // body.
        (
            Method::POST,
            "/sandboxes",
            "/sandboxes".into(),
            Some(json!({"templateID": "deb"})),
        ),
        (
            Method::POST,
            "/v2/sandboxes",
            "/v2/sandboxes".into(),
            Some(json!({"templateID": "snap-a"})),
        ),
        (
            Method::POST,
            "/templates/tags",
            "/templates/tags".into(),
            Some(json!({"target": "deb", "tags": ["v2"]})),
        ),
        (
            Method::DELETE,
            "/templates/tags",
            "/templates/tags".into(),
            Some(json!({"name": "deb", "tags": ["v1"]})),
        ),
    ];
    for (method, _, path, body) in &named {
        let (status, answer) = call(&server, &b, method.clone(), path, body.clone());
        assert_eq!(
            status, 404,
            "{method} {path} with another team's key: {answer}"
        );
        assert!(
            answer["message"].is_string(),
            "{method} {path}: E2B's error shape: {answer}"
        );
    }
    // A mount of another team's volume is refused as unknown.
    let (status, answer) = call(
        &server,
        &b,
        Method::POST,
        "/sandboxes",
        Some(json!({"templateID": "deb", "volumeMounts": [{"name": "vol-a", "path": "/v"}]})),
    );
    assert!(status == 400 || status == 404, "{status} {answer}");
    // Its name is taken, whoever asks.
    let (status, answer) = call(
        &server,
        &b,
        Method::POST,
        "/v3/templates",
        Some(json!({"name": "deb"})),
    );
    assert_eq!(status, 409, "{answer}");

    // Every keyed route is either in the table above or a listing below.
    let listings = [
        "/sandboxes",
        "/v2/sandboxes",
        "/sandboxes/metrics",
        "/snapshots",
        "/templates",
        "/v2/templates",
        "/volumes",
        "/hutch/v1/templates",
        "/hutch/v1/api-keys",
        "/api-keys",
        "/teams",
        "/hutch/v1/pool",
        "/hutch/v1/teams",
        // Creations: what they make is the caller's team's.
        "/access-tokens",
        "/v3/templates",
        "/hutch/v1/builds",
        "/hutch/v1/templates/pull",
    ];
    let tested: BTreeSet<&str> = named
        .iter()
        .map(|(_, route, _, _)| *route)
        .chain(listings)
        .chain(NOT_KEYED)
        // Tried above: 403 for another team's key.
        .chain(["/metrics", "/hutch/v1/nodes"])
        .collect();
    let untested: Vec<String> = declared_routes()
        .into_iter()
        .filter(|r| !tested.contains(r.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "routes this test does not try with another team's key: {untested:?}"
    );

    // Listings show beta none of the default team's things.
    for path in [
        "/sandboxes".to_owned(),
        "/v2/sandboxes".into(),
        format!("/sandboxes/metrics?sandbox_ids={id}"),
        "/snapshots".into(),
        "/templates".into(),
        "/v2/templates".into(),
        "/volumes".into(),
        "/hutch/v1/templates".into(),
        "/hutch/v1/api-keys".into(),
        "/api-keys".into(),
        "/hutch/v1/pool".into(),
        "/hutch/v1/teams".into(),
        "/teams".into(),
    ] {
        let (status, answer) = call(&server, &b, Method::GET, &path, None);
        assert_eq!(status, 200, "{path}: {answer}");
        let text = answer.to_string();
        for theirs in [
            id.as_str(),
            "snap-a",
            "vol-a",
            "\"deb\"",
            "pending-a",
            &key_id,
            &token_id,
            "\"default\"",
        ] {
            assert!(!text.contains(theirs), "{path} shows beta {theirs}: {text}");
        }
    }
    let (_, teams) = call(&server, &b, Method::GET, "/teams", None);
    assert_eq!(teams[0]["name"], "beta", "{teams}");
    assert_eq!(teams[0]["apiKey"].as_str(), Some(b.as_str()), "{teams}");
    let (_, keys) = call(&server, &b, Method::GET, "/api-keys", None);
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(1),
        "beta's first key only: {keys}"
    );

    // Nothing of the default team's changed.
    let (status, answer) = call(&server, &a, Method::GET, &format!("/sandboxes/{id}"), None);
    assert_eq!(
        (status, answer["state"].as_str()),
        (200, Some("running")),
        "{answer}"
    );
    let (status, tags) = call(&server, &a, Method::GET, "/templates/deb/tags", None);
    assert_eq!(status, 200);
    assert!(tags.to_string().contains("\"v1\""), "{tags}");
    assert_eq!(
        call(
            &server,
            &a,
            Method::GET,
            &format!("/volumes/{vol_id}"),
            None
        )
        .0,
        200
    );
    let (_, keys) = call(&server, &a, Method::GET, "/api-keys", None);
    assert!(keys.to_string().contains(&key_id), "{keys}");
    let (_, details) = call(&server, &a, Method::GET, "/templates/deb", None);
    assert_eq!(details["public"], false, "{details}");
    let out = server.cli_ok(&["exec", &id, "--", "echo", "still here"]);
    assert_eq!(out.trim(), "still here");

    // Public: beta starts sandboxes from it, and still cannot manage it.
    let (status, answer) = call(
        &server,
        &a,
        Method::PATCH,
        "/templates/deb",
        Some(json!({"public": true})),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, theirs) = call(
        &server,
        &b,
        Method::POST,
        "/sandboxes",
        Some(json!({"templateID": "deb", "timeout": 60})),
    );
    assert_eq!(status, 201, "{theirs}");
    let their_id = theirs["sandboxID"].as_str().unwrap().to_owned();
    let (status, alias) = call(&server, &b, Method::GET, "/templates/aliases/deb", None);
    assert_eq!((status, &alias["public"]), (200, &json!(true)), "{alias}");
    assert_eq!(
        call(&server, &b, Method::DELETE, "/templates/deb", None).0,
        404
    );
    assert_eq!(
        call(
            &server,
            &b,
            Method::PATCH,
            "/templates/deb",
            Some(json!({"public": false}))
        )
        .0,
        404
    );
    // Each team sees its own sandbox only.
    let (_, mine) = call(&server, &a, Method::GET, "/v2/sandboxes", None);
    let (_, theirs) = call(&server, &b, Method::GET, "/v2/sandboxes", None);
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&mine), std::slice::from_ref(&id));
    assert_eq!(ids(&theirs), std::slice::from_ref(&their_id));
    // The default team's key cannot touch beta's sandbox either.
    assert_eq!(
        call(
            &server,
            &a,
            Method::DELETE,
            &format!("/sandboxes/{their_id}"),
            None
        )
        .0,
        404
    );
    assert_eq!(
        call(
            &server,
            &b,
            Method::DELETE,
            &format!("/sandboxes/{their_id}"),
            None
        )
        .0,
        204
    );
    assert_eq!(
        call(
            &server,
            &a,
            Method::DELETE,
            &format!("/sandboxes/{id}"),
            None
        )
        .0,
        204
    );
}
