//! The agent's plain HTTP endpoints, the access token, and the Connect wire
//! format byte for byte as the official E2B Python SDK produces and reads
//! it (HTTP/1.1, JSON codec).

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const CONNECT_JSON: &str = "application/connect+json";

/// `POST /process.Process/Start` with the given JSON message, as the SDK
/// sends it; returns status, content type and the decoded envelopes.
async fn sdk_start(
    t: &TestAgent,
    message: &Value,
    extra: &[(&str, &str)],
) -> (u16, String, Vec<(u8, Value)>) {
    let mut headers = vec![
        ("content-type", CONNECT_JSON),
        ("connect-protocol-version", "1"),
        ("e2b-sandbox-id", "sbx-test"),
        ("e2b-sandbox-port", "49983"),
        ("user-agent", "e2b-python-sdk/1.0.0"),
    ];
    headers.extend_from_slice(extra);
    let (status, resp_headers, body) = raw(
        "POST",
        &format!("{}/process.Process/Start", t.url()),
        &headers,
        envelope(0, message.to_string().as_bytes()),
    )
    .await;
    let content_type = resp_headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let envelopes = if status == 200 {
        envelopes(&body)
            .into_iter()
            .map(|(flag, payload)| (flag, serde_json::from_slice(&payload).unwrap()))
            .collect()
    } else {
        Vec::new()
    };
    (status, content_type, envelopes)
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn sdk_commands_run_request() {
    let t = TestAgent::start().await;
    let message = json!({
        "process": {
            "cmd": "/bin/bash",
            "args": ["-l", "-c", "echo hi"],
            "envs": {"A": "b"},
            "cwd": "/tmp"
        },
        "stdin": false
    });
    let (status, content_type, envs) = sdk_start(&t, &message, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, CONNECT_JSON);
    // start, data, end, then the end-of-stream envelope.
    assert_eq!(envs.len(), 4, "{envs:?}");
    let (flag, start) = &envs[0];
    assert_eq!(*flag, 0);
    assert!(start["event"]["start"]["pid"].as_u64().unwrap() > 0);
    let (flag, data) = &envs[1];
    assert_eq!(*flag, 0);
    assert_eq!(b64(&data["event"]["data"]["stdout"]), b"hi\n");
    let (flag, end) = &envs[2];
    assert_eq!(*flag, 0);
    let end = &end["event"]["end"];
    // proto3 JSON: exitCode 0 may be omitted; `exited` and `status` are set.
    assert_eq!(end["exitCode"].as_i64().unwrap_or(0), 0);
    assert_eq!(end["exited"], true);
    assert_eq!(end["status"], "exit status 0");
    let (flag, trailer) = &envs[3];
    assert_eq!(*flag, 0x02);
    assert_eq!(trailer, &json!({}));
}

#[tokio::test]
async fn sdk_request_sees_env_cwd_and_exit_code() {
    let t = TestAgent::start().await;
    let message = json!({
        "process": {
            "cmd": "/bin/bash",
            "args": ["-l", "-c", "echo $A $TEMPLATE_ONLY; pwd; echo oops >&2; exit 5"],
            "envs": {"A": "b"},
            "cwd": "/tmp"
        },
        "stdin": false
    });
    let (status, _, envs) = sdk_start(&t, &message, &[]).await;
    assert_eq!(status, 200);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut end = None;
    for (flag, msg) in &envs {
        if *flag == 0x02 {
            assert_eq!(msg, &json!({}));
            continue;
        }
        let event = &msg["event"];
        if let Some(data) = event.get("data") {
            if let Some(s) = data.get("stdout") {
                stdout.extend(b64(s));
            }
            if let Some(s) = data.get("stderr") {
                stderr.extend(b64(s));
            }
        }
        if let Some(e) = event.get("end") {
            end = Some(e.clone());
        }
    }
    assert_eq!(
        String::from_utf8(stdout).unwrap(),
        "b from-template\n/tmp\n"
    );
    assert_eq!(String::from_utf8(stderr).unwrap(), "oops\n");
    let end = end.expect("no end event");
    assert_eq!(end["exitCode"], 5);
    assert_eq!(end["exited"], true);
    assert_eq!(end["status"], "exit status 5");
    assert_eq!(end["error"], "exit status 5");
}

#[tokio::test]
async fn sdk_error_is_an_end_of_stream_envelope() {
    let t = TestAgent::start().await;
    let message = json!({"process": {"cmd": "/bin/true", "cwd": "/no/such/dir"}, "stdin": false});
    let (status, _, envs) = sdk_start(&t, &message, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(envs.len(), 1, "{envs:?}");
    let (flag, msg) = &envs[0];
    assert_eq!(*flag, 0x02);
    assert_eq!(msg["error"]["code"], "not_found");
    assert!(
        msg["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/dir")
    );
}

#[tokio::test]
async fn sdk_unary_json_calls() {
    let t = TestAgent::start().await;
    let (status, headers, body) = raw(
        "POST",
        &format!("{}/process.Process/List", t.url()),
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
        ],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        list.get("processes")
            .is_none_or(|p| p.as_array().unwrap().is_empty())
    );

    let (status, _, body) = raw(
        "POST",
        &format!("{}/process.Process/SendSignal", t.url()),
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
        ],
        json!({"process": {"pid": 4000000}, "signal": "SIGNAL_SIGKILL"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "not_found");
}

#[tokio::test]
async fn health_is_204() {
    let t = TestAgent::start().await;
    let (status, _, body) = raw("GET", &format!("{}/health", t.url()), &[], Vec::new()).await;
    assert_eq!(status, 204);
    assert!(body.is_empty());
}

#[tokio::test]
async fn init_replaces_the_sandbox_env() {
    let t = TestAgent::start().await;
    let envs = || async {
        let (status, _, body) = raw("GET", &format!("{}/envs", t.url()), &[], Vec::new()).await;
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    assert_eq!(envs().await, json!({}));
    assert_eq!(
        t.init(json!({"envVars": {"A": "1", "B": "2"}, "timestamp": "2024-01-01T00:00:00Z"}))
            .await,
        204
    );
    assert_eq!(envs().await, json!({"A": "1", "B": "2"}));
    assert_eq!(t.init(json!({"envVars": {"C": "3"}})).await, 204);
    assert_eq!(envs().await, json!({"C": "3"}));

    let out = run(&t.tcp_client(), start_request(cmd("env", &[]))).await;
    let env = out.env();
    assert_eq!(env["C"], "3");
    assert!(!env.contains_key("A"));

    // Reserved names are refused at /init too.
    assert_eq!(
        t.init(json!({"envVars": {"E2B_SANDBOX_ID": "x"}})).await,
        400
    );
    assert_eq!(envs().await, json!({"C": "3"}));
    // A body that is not JSON is a 400.
    let (status, _, _) = raw(
        "POST",
        &format!("{}/init", t.url()),
        &[("content-type", "application/json")],
        b"nope".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn access_token_is_enforced() {
    let t = TestAgent::start().await;
    assert_eq!(
        t.init(json!({"accessToken": "s3cret", "envVars": {"X": "y"}}))
            .await,
        204
    );
    let url = t.url();

    for headers in [&[][..], &[("x-access-token", "wrong")][..]] {
        let (status, _, body) = raw("GET", &format!("{url}/envs"), headers, Vec::new()).await;
        assert_eq!(status, 401);
        let err: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(err["code"], 401);
        assert!(err["message"].as_str().unwrap().contains("X-Access-Token"));
    }
    let (status, _, body) = raw(
        "GET",
        &format!("{url}/envs"),
        &[("x-access-token", "s3cret")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"X": "y"})
    );

    // Health stays open.
    let (status, _, _) = raw("GET", &format!("{url}/health"), &[], Vec::new()).await;
    assert_eq!(status, 204);

    // Connect calls need it too.
    let message = json!({"process": {"cmd": "/bin/echo", "args": ["ok"]}, "stdin": false});
    let (status, _, _) = sdk_start(&t, &message, &[]).await;
    assert_eq!(status, 401);
    let (status, _, envs) = sdk_start(&t, &message, &[("x-access-token", "s3cret")]).await;
    assert_eq!(status, 200);
    assert_eq!(b64(&envs[1].1["event"]["data"]["stdout"]), b"ok\n");

    let err = start_err(&t.tcp_client(), start_request(cmd("true", &[]))).await;
    assert_eq!(err.code, connectrpc::ErrorCode::Unauthenticated, "{err:?}");

    // A repeated /init needs the token as well.
    assert_eq!(t.init(json!({"envVars": {}})).await, 401);
}

/// One HTTP/1.1 request over a unix socket: status and body.
async fn over_unix(socket: &std::path::Path, method: &str, path: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_environment_socket_answers_what_a_process_would_get_and_nothing_else() {
    let t = TestAgent::start().await;
    // A token is set: the socket needs none, the agent's API still does.
    assert_eq!(
        t.init(json!({"envVars": {"OVERRIDE": "sandbox", "SBX": "1"}, "accessToken": "tok"}))
            .await,
        204
    );
    let socket = t.dir.path().join("run").join("environment.sock");
    let listener = hutch_envd::bind_environment_socket(&socket).unwrap();
    let agent = t.agent.clone();
    tokio::spawn(async move { agent.serve_environment(listener).await });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "every user in the sandbox may ask");

    let (status, plain) = over_unix(&socket, "POST", "/environment", "{}").await;
    assert_eq!(status, 200, "{plain}");
    let envs = &plain["envs"];
    assert_eq!(envs["TEMPLATE_ONLY"], "from-template");
    assert_eq!(envs["OVERRIDE"], "sandbox");
    assert_eq!(envs["TRICKY"], "a=b c  d");
    assert_eq!(envs["EMPTY_VAR"], "");
    assert_eq!(envs["E2B_SANDBOX_ID"], "sbx-test");
    assert_eq!(plain["uid"], 0);
    assert_eq!(plain["cwd"], "/root");

    // The process layer goes on top, for that answer only.
    let (status, call) = over_unix(
        &socket,
        "POST",
        "/environment",
        r#"{"envs": {"OVERRIDE": "process", "CALL": "c"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["envs"]["OVERRIDE"], "process");
    assert_eq!(call["envs"]["CALL"], "c");
    assert_eq!(call["envs"]["SBX"], "1");
    let (_, again) = over_unix(&socket, "POST", "/environment", "").await;
    assert_eq!(again, plain);

    // Exactly what a process started through the agent gets.
    let message = json!({"process": {"cmd": "env", "args": ["-0"]}, "stdin": false});
    let (status, _, envs) = sdk_start(&t, &message, &[("x-access-token", "tok")]).await;
    assert_eq!(status, 200);
    let stdout: Vec<u8> = envs
        .iter()
        .filter_map(|(_, e)| {
            e["event"]["data"]["stdout"]
                .as_str()
                .map(|_| b64(&e["event"]["data"]["stdout"]))
        })
        .flatten()
        .collect();
    let started: std::collections::HashMap<String, String> = String::from_utf8(stdout)
        .unwrap()
        .split('\0')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let answered: std::collections::HashMap<String, String> =
        serde_json::from_value(plain["envs"].clone()).unwrap();
    assert_eq!(started, answered);

    // Reserved names are refused as at a process start; nothing else is served.
    let (status, refused) = over_unix(
        &socket,
        "POST",
        "/environment",
        r#"{"envs": {"E2B_SANDBOX_ID": "x"}}"#,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    for (method, path) in [
        ("GET", "/envs"),
        ("POST", "/init"),
        ("POST", "/process.Process/Start"),
    ] {
        let (status, _) = over_unix(&socket, method, path, "{}").await;
        assert_eq!(status, 404, "{method} {path}");
    }
}
