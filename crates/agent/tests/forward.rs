//! Requests the host forwards to a port in the sandbox
//! (`X-Hutch-Forward-Port`): relayed to `127.0.0.1:<port>`, the access
//! no agent token needed, Hutch's headers not passed on.

mod common;

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::HeaderMap;
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// A server on a free loopback port that answers with what it received.
async fn echo_server() -> u16 {
    async fn echo(req: Request) -> axum::Json<Value> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        axum::Json(json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(echo))
            .await
            .unwrap();
    });
    port
}

fn json_body(status: u16, headers: &HeaderMap, body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{status} {headers:?}: {e}: {}",
            String::from_utf8_lossy(body)
        )
    })
}

#[tokio::test]
async fn forwarded_requests_reach_the_port() {
    let t = TestAgent::start().await;
    let port = echo_server().await;
    let port_s = port.to_string();
    let (status, headers, body) = raw(
        "POST",
        &format!("{}/init?x=1", t.url()),
        &[
            ("x-hutch-forward-port", &port_s),
            ("host", "8080-abc.example.com"),
            ("x-custom", "kept"),
        ],
        b"payload".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let echoed = json_body(status, &headers, &body);
    // Not the agent's /init: the server on the port answered.
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["uri"], "/init?x=1");
    assert_eq!(echoed["body"], "payload");
    assert_eq!(echoed["headers"]["x-custom"], "kept");
    assert_eq!(echoed["headers"]["host"], "8080-abc.example.com");
    assert!(echoed["headers"].get("x-hutch-forward-port").is_none());
}

#[tokio::test]
async fn forwarding_needs_no_agent_token_and_does_not_pass_it_on() {
    let t = TestAgent::start().await;
    assert_eq!(t.init(json!({"accessToken": "s3cret"})).await, 204);
    let port = echo_server().await.to_string();
    // A user's server is not the agent's API: no token needed, whatever the
    // path, and the header never falls through to the agent's routes.
    for path in ["/health", "/files", "/init", "/process.Process/List"] {
        let (status, headers, body) = raw(
            "GET",
            &format!("{}{path}", t.url()),
            &[("x-hutch-forward-port", &port)],
            Vec::new(),
        )
        .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(json_body(status, &headers, &body)["uri"], path);
    }
    // The agent's own API still wants the token.
    let (status, _, _) = raw("GET", &format!("{}/envs", t.url()), &[], Vec::new()).await;
    assert_eq!(status, 401);
    let (status, headers, body) = raw(
        "GET",
        &format!("{}/anything", t.url()),
        &[
            ("x-hutch-forward-port", &port),
            ("x-access-token", "s3cret"),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    let echoed = json_body(status, &headers, &body);
    assert_eq!(echoed["uri"], "/anything");
    assert!(echoed["headers"].get("x-access-token").is_none());
}

#[tokio::test]
async fn nothing_listening_and_bad_ports_are_clear_errors() {
    let t = TestAgent::start().await;
    // A port nothing listens on: bind one, then free it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (status, headers, body) = raw(
        "GET",
        &format!("{}/", t.url()),
        &[("x-hutch-forward-port", &port.to_string())],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 502);
    let err = json_body(status, &headers, &body);
    assert_eq!(err["code"], 502);
    assert_eq!(
        err["message"],
        format!(
            "no server is listening on port {port} in sandbox {}",
            boot().sandbox_id
        )
    );
    for bad in ["nope", "0", "70000"] {
        let (status, _, _) = raw(
            "GET",
            &format!("{}/", t.url()),
            &[("x-hutch-forward-port", bad)],
            Vec::new(),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }
}
