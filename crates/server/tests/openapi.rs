//! The OpenAPI document at `GET /openapi.json`: a valid OpenAPI 3.1
//! document whose every `$ref` resolves, that the router and it agree both
//! ways (every route served is documented with its methods, every
//! documented operation is served), and that the security it declares is
//! enforced. Against one `hutch serve` that starts no sandbox.

use std::collections::{BTreeMap, BTreeSet};

use hutch_test_support::TestServer;
use reqwest::Method;
use serde_json::Value;

/// Fewer operations than this means routes went missing from the document.
const MIN_OPERATIONS: usize = 70;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` in `v`, with where it was found.
fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref"
                    && let Some(r) = v.as_str()
                {
                    out.push((at.clone(), r));
                } else {
                    refs(v, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The documented operations: (path, method in upper case) → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        let item = item.as_object().expect("a path item is an object");
        for (key, op) in item {
            assert!(
                METHODS.contains(&key.as_str()) || key == "parameters" || key == "summary",
                "{path}: unexpected key {key}"
            );
            if METHODS.contains(&key.as_str()) {
                ops.insert((path.clone(), key.to_uppercase()), op);
            }
        }
    }
    ops
}

/// `path` with each `{param}` replaced by a value no resource has.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("a closed parameter") + start;
        out.push_str(&rest[..start]);
        out.push_str("00000000-0000-4000-8000-00000000beef");
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether a response is the router's own fallback: no route for the path
/// (404 "no route for …") or not for the method (405).
async fn is_fallback(resp: reqwest::Response) -> Option<String> {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    let fallback = status == 405 || (status == 404 && message.starts_with("no route for"));
    fallback.then(|| format!("{status} {message}"))
}

#[tokio::test]
async fn the_document_describes_the_router() {
    let s = TestServer::start_without_sandboxes(&[]);
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/openapi.json", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET /openapi.json needs no key");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(
        doc,
        serde_json::to_value(hutch_server::api::document()).unwrap(),
        "the server serves the document the library builds"
    );

    // The structure of an OpenAPI 3.1 document.
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Hutch");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    for bearer in ["access_token", "volume_token"] {
        assert_eq!(schemes[bearer]["type"], "http", "{bearer}");
        assert_eq!(schemes[bearer]["scheme"], "bearer", "{bearer}");
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["properties"]["code"]["type"], "integer", "{error}");
    assert_eq!(error["properties"]["message"]["type"], "string", "{error}");
    assert!(doc["security"].as_array().is_some_and(|s| !s.is_empty()));

    // Every reference resolves.
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(found.len() > 50, "only {} references", found.len());
    for (at, r) in &found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }

    // Every operation: a unique operationId, answers, and an error answer.
    let ops = operations(&doc);
    assert!(
        ops.len() >= MIN_OPERATIONS,
        "{} operations documented",
        ops.len()
    );
    let mut ids = BTreeSet::new();
    for ((path, method), op) in &ops {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(ids.insert(id.to_owned()), "{method} {path}: id {id} twice");
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("default"), "{method} {path}");
        assert!(
            responses
                .keys()
                .any(|k| k.starts_with('2') || k.starts_with('3')),
            "{method} {path}: no success answer"
        );
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] == "path" {
                let name = p["name"].as_str().unwrap();
                assert!(path.contains(&format!("{{{name}}}")), "{path}: {name}");
            }
        }
    }

    // The router and the document agree, both ways.
    let served: BTreeSet<(String, String)> =
        hutch_server::api::served_routes().into_iter().collect();
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served, not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(unserved.is_empty(), "documented, not served: {unserved:?}");

    // Every documented operation is served by the running server: no
    // request to it gets the router's 404 or 405. Without credentials, the
    // operations that require some are refused with 401.
    let key = s.api_key();
    for ((path, method), op) in &ops {
        let url = format!("{}{}", s.url(), concrete(path));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = client
            .request(method.clone(), &url)
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        if let Some(fallback) = is_fallback(resp).await {
            panic!("{method} {path} is documented but not served: {fallback}");
        }
        let security = op.get("security").unwrap_or(&doc["security"]);
        let public = security
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_object().unwrap().is_empty());
        if !public {
            // (The volume content API checks its `path` first.)
            let resp = client
                .request(method.clone(), format!("{url}?path=/"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} without credentials");
            let body: Value = resp.json().await.unwrap();
            assert!(body["message"].is_string(), "{method} {path}: {body}");
        }
    }

    // The probe tells a route that is not served.
    let missing = client
        .get(format!("{}/no/such/route", s.url()))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert!(is_fallback(missing).await.is_some());
    let wrong_method = client
        .request(Method::PATCH, format!("{}/health", s.url()))
        .send()
        .await
        .unwrap();
    assert!(is_fallback(wrong_method).await.is_some());
    s.stop_ok();
}
