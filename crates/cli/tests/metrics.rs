//! `GET /metrics`: a Prometheus scrape of a real server, before and after
//! sandboxes are created, used, paused, resumed and killed and a template
//! is built; the figures move, and only the operator may read them.

use std::time::{Duration, Instant};

use hutch_test_support::{TestServer, busybox_image, http};

/// The value of the sample `series` (its exact name and labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn scrape(server: &TestServer) -> String {
    let (status, text) = http(server, reqwest::Method::GET, "/metrics", &[], None);
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn metrics_count_what_the_server_does() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    server.import(&busybox_image(), "bb", &[]);
    let before = scrape(&server);
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text: {before}");
    let creates = r#"hutch_sandbox_operations_total{operation="create",outcome="ok"}"#;
    assert_eq!(sample(&before, creates), None, "{before}");

    let id = server.create_sandbox("bb", &[]);
    server.cli_ok(&["exec", &id, "--", "sh", "-c", "echo hi"]);
    let during = scrape(&server);
    assert_eq!(sample(&during, creates), Some(1.0), "{during}");
    assert_eq!(
        sample(&during, r#"hutch_sandboxes{state="running",template="bb"}"#),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        sample(&during, r#"hutch_pool_creates_total{source="boot"}"#),
        Some(1.0),
        "{during}"
    );
    assert!(
        sample(
            &during,
            r#"hutch_http_requests_total{route="/sandboxes",method="POST",status="201"}"#
        )
        .is_some(),
        "{during}"
    );
    // Route templates, never ids.
    assert!(!during.contains(&id), "{during}");
    assert!(
        during.contains(
            r#"hutch_sandbox_operation_duration_seconds_bucket{le="+Inf",operation="create"} 1"#
        ) || during.contains(
            r#"hutch_sandbox_operation_duration_seconds_bucket{operation="create",le="+Inf"} 1"#
        ),
        "{during}"
    );
    // The sampler's figures, once it has sampled the sandbox (every 5 s).
    let start = Instant::now();
    loop {
        let text = scrape(&server);
        if sample(&text, r#"hutch_sandbox_memory_bytes{template="bb"}"#).is_some_and(|m| m > 0.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no memory sample:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    server.cli_ok(&["sandbox", "pause", &id]);
    let paused = scrape(&server);
    assert_eq!(
        sample(&paused, r#"hutch_sandboxes{state="paused",template="bb"}"#),
        Some(1.0),
        "{paused}"
    );
    assert_eq!(
        sample(
            &paused,
            r#"hutch_sandbox_operations_total{operation="pause",outcome="ok"}"#
        ),
        Some(1.0),
        "{paused}"
    );
    server.cli_ok(&["sandbox", "resume", &id]);
    server.cli_ok(&["sandbox", "kill", &id]);
    let after = scrape(&server);
    assert_eq!(
        sample(
            &after,
            r#"hutch_sandbox_operations_total{operation="kill",outcome="ok"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"hutch_sandbox_operations_total{operation="resume",outcome="ok"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert!(!after.contains("hutch_sandboxes{"), "{after}");

    // A create that fails is counted as one.
    let (status, _) = http(
        &server,
        reqwest::Method::POST,
        "/sandboxes",
        &[],
        Some(serde_json::json!({ "templateID": "no-such-template" })),
    );
    assert_eq!(status, 404);
    let failed = scrape(&server);
    assert_eq!(
        sample(
            &failed,
            r#"hutch_sandbox_operations_total{operation="create",outcome="error"}"#
        ),
        Some(1.0),
        "{failed}"
    );

    // A build.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM bb\nRUN echo built > /built\n",
    )
    .unwrap();
    server.cli_ok(&[
        "template",
        "build",
        "--name",
        "bb2",
        dir.path().to_str().unwrap(),
    ]);
    let built = scrape(&server);
    assert_eq!(
        sample(&built, r#"hutch_builds_total{outcome="ready"}"#),
        Some(1.0),
        "{built}"
    );
    assert_eq!(
        sample(&built, "hutch_build_duration_seconds_count"),
        Some(1.0),
        "{built}"
    );

    // Without a key: 401, like every keyed route.
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/metrics", server.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
