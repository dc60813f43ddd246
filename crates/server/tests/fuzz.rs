//! The REST API under schemathesis: requests generated from the server's
//! own `/openapi.json` (its examples, the coverage of each parameter's and
//! body's edges, random ones, and stateful sequences) against one live
//! `hutch serve` that starts no sandbox. No answer may be a 5xx, or differ
//! from the document (its status, content type or schema), and every error
//! must be E2B's body (`fuzz/e2b_errors.py`). Any finding fails the test
//! with schemathesis's report; the JUnit report is kept in
//! `target/schemathesis/`.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hutch_test_support::{TestServer, python_with, target_dir};

/// The schemathesis release the test runs.
const SCHEMATHESIS: &str = "4.32.5";

/// When the run is killed, whatever it is doing.
const HARD_LIMIT: Duration = Duration::from_secs(240);

/// Operations left out (by their `operationId`), and why.
const EXCLUDED: &[&str] = &[
    // `POST /hutch/v1/templates/pull` pulls images from a registry on the
    // internet.
    "postHutchV1TemplatesPull",
    // `POST /v2/templates/{template_id}/builds/{build_id}` starts a
    // requested template build, whose `fromImage` is pulled from a
    // registry on the internet.
    "postV2TemplatesTemplateIdBuildsBuildId",
    // Revoking keys: the stateful phase takes ids from the listings, the
    // key in use among them, and every request after it would be a 401.
    "deleteHutchV1ApiKeysId",
    "deleteApiKeysId",
    "deleteAccessTokensId",
];

#[test]
fn the_api_holds_under_schemathesis() {
    let python = python_with(
        &format!("schemathesis-{SCHEMATHESIS}"),
        &[&format!("schemathesis=={SCHEMATHESIS}")],
    );
    let st = python.with_file_name("st");
    let server = TestServer::start_without_sandboxes(&[]);

    let reports = target_dir().join("schemathesis");
    let _ = std::fs::remove_dir_all(&reports);
    std::fs::create_dir_all(&reports).unwrap();
    let junit = reports.join("junit.xml");
    let output_path = reports.join("output.txt");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");

    let mut cmd = Command::new(&st);
    cmd.arg("run")
        .arg(format!("{}/openapi.json", server.url()))
        .args(["--header", &format!("X-API-Key: {}", server.api_key())])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "15",
            "--seed",
            "20261207",
            "--workers",
            "2",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "junit",
        ])
        .arg("--report-junit-path")
        .arg(&junit);
    for id in EXCLUDED {
        cmd.args(["--exclude-operation-id", id]);
    }
    cmd.env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "e2b_errors")
        // Hypothesis keeps its example database in the working directory.
        .current_dir(&reports)
        .stdin(Stdio::null())
        .stdout(File::create(&output_path).unwrap())
        .stderr(File::create(reports.join("stderr.txt")).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HARD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis still ran after {HARD_LIMIT:?}: killed; its output so far is in {}",
                output_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&output_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(reports.join("stderr.txt")).unwrap_or_default();
    assert!(
        status.success(),
        "schemathesis found problems ({status}); JUnit report: {}\n{output}\n{stderr}",
        junit.display()
    );
    // It ran: every selected operation tested, none of them failing.
    assert!(output.contains("passed"), "{output}\n{stderr}");
    assert!(junit.exists(), "no JUnit report at {}", junit.display());
    server.stop_ok();
}
