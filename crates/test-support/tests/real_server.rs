//! The workspace binaries and a real `hutch serve`. Ignored by default because they build
//! the whole server and agent; run with `cargo test -p hutch-test-support -- --ignored`.

use std::process::Command;

use hutch_test_support::{TestServer, envd_bin, hutch_bin, mounts_under};

#[test]
#[ignore = "builds hutch-cli"]
fn hutch_bin_builds_and_runs() {
    let bin = hutch_bin();
    assert!(bin.ends_with("debug/hutch"), "{}", bin.display());
    let out = Command::new(&bin).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Cached for the rest of the process.
    assert_eq!(hutch_bin(), bin);
}

#[test]
#[ignore = "builds hutch-envd with the agent profile"]
fn envd_bin_is_a_static_binary() {
    let bin = envd_bin();
    assert!(
        bin.ends_with("x86_64-unknown-linux-musl/agent/hutch-envd"),
        "{}",
        bin.display()
    );
    let file = Command::new("file").arg(&bin).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie"),
        "{file}"
    );
}

#[test]
#[ignore = "builds and starts the real server"]
fn real_server_starts_restarts_and_cleans_up() {
    let server = TestServer::start();
    assert!(!server.api_key().is_empty());
    let data = server.data_dir().to_path_buf();
    let server = TestServer::restart(server.kill9());
    assert!(!server.api_key().is_empty());
    drop(server);
    assert!(mounts_under(&data).is_empty());
    assert!(!data.exists());
}
