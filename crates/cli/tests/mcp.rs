//! `hutch mcp` driven by the official MCP Python SDK (pinned, unmodified)
//! over stdio, against a real Hutch server: every tool, a command's exit
//! code and output, files in and out, and errors as tool errors. The
//! client script is `tests/sdk/mcp_client.py`.

use std::path::Path;

use hutch_test_support::{
    MCP_PYTHON, TestServer, assert_script_ok, busybox_image, hutch_bin, mcp_client, python_with,
};

/// The MCP Python SDK release the test pins.

#[test]
fn mcp_client_uses_every_tool() {
    let server = TestServer::start();
    server.cli_ok(&[
        "template",
        "import",
        busybox_image().to_str().unwrap(),
        "--name",
        "bb",
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mcp_client.py");
    let out = mcp_client(&server, &script, &["bb"]);
    println!("{}", out.stdout);
    let line = |name: &str| out.line(name);
    let stdout = &out.stdout;
    assert_eq!(line("server"), "hutch");
    assert_eq!(
        line("tools"),
        "create_sandbox,kill_sandbox,list_files,list_sandboxes,read_file,run_code,run_command,write_file"
    );
    let id = line("sandbox");
    assert_eq!(line("run"), "3 hi mcp from /tmp");
    assert_eq!(line("capped"), "yes");
    assert_eq!(
        line("timed out"),
        "the command did not finish within 1 s: it was killed"
    );
    assert_eq!(line("left running"), "0");
    assert_eq!(line("no interpreter"), "True");
    assert_eq!(
        line("zero timeout"),
        "timeout_seconds must be between 1 and 3600, not 0"
    );
    assert_eq!(line("read"), r#""line one\nligne deux \u00e9\n""#);
    assert_eq!(line("listed"), "notes.txt file 23");
    assert!(
        line("missing file").contains("/tmp/nope' does not exist"),
        "{stdout}"
    );
    assert!(
        line("unknown sandbox").contains("no-such-sandbox"),
        "{stdout}"
    );
    assert!(
        line("unknown template").contains("no-such-template"),
        "{stdout}"
    );
    assert_eq!(line("killed"), format!("killed sandbox {id}"));
    assert_eq!(line("gone"), "yes");
    assert!(line("kill again").contains(&id), "{stdout}");
}

/// `hutch mcp --http`: the streamable HTTP transport, with the API key
/// required on every request.
#[test]
fn mcp_over_streamable_http_needs_the_key() {
    let python = python_with("mcp-python-2.3.0", &[MCP_PYTHON]);
    let server = TestServer::start();
    server.cli_ok(&[
        "template",
        "import",
        busybox_image().to_str().unwrap(),
        "--name",
        "bb",
    ]);
    let port = hutch_test_support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut mcp = std::process::Command::new(hutch_bin())
        .args(["mcp", "--http", &addr])
        .env("HUTCH_SERVER", server.url())
        .env("HUTCH_API_KEY", server.api_key())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting hutch mcp --http");
    // It says where it listens once it does.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mcp.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(
        first.trim(),
        format!("hutch mcp: serving MCP at http://{addr}/mcp")
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/mcp_http_client.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(format!("http://{addr}/mcp"))
        .arg(server.api_key())
        .arg("bb")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running python");
    // SIGTERM: it stops at once.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &mcp.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = mcp.wait().unwrap();
    let stdout = assert_script_ok(&out, &script.display().to_string(), &server);
    assert!(status.success(), "hutch mcp --http ended with {status}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "refused: 401 401",
            "refused: 401 401",
            "server: hutch",
            "tools: create_sandbox,kill_sandbox,list_files,list_sandboxes,read_file,run_code,run_command,write_file",
            "run: hi over http",
            "OK",
        ]
    );
}
