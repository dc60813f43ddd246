//! The `hutch-envd` binary as the host runs it: PID 1 of a new PID
//! namespace, configured by a boot file, reaping orphans, stopping cleanly
//! on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use connectrpc::client::{ClientConfig, Http2Connection, SharedHttp2Connection};
use hutch_protocol::boot::BOOT_SCHEMA_VERSION;
use hutch_protocol::envd::process::ProcessClient;

const BIN: &str = env!("CARGO_BIN_EXE_hutch-envd");

fn unix_client(socket: &Path) -> ProcessClient<SharedHttp2Connection> {
    let uri: http::Uri = "http://localhost".parse().unwrap();
    let conn = Http2Connection::lazy_unix(socket.to_path_buf(), uri.clone()).shared(16);
    ProcessClient::new(conn, ClientConfig::new(uri))
}

fn write_boot(dir: &Path, workdir: &Path) -> PathBuf {
    let mut boot = boot();
    boot.template_workdir = Some(workdir.to_str().unwrap().into());
    let path = dir.join("boot.json");
    std::fs::write(&path, serde_json::to_vec(&boot).unwrap()).unwrap();
    path
}

/// Child pids of `pid` (all its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// `(comm, state)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let state = text[close + 2..].chars().next()?;
    Some((comm, state))
}

#[tokio::test]
async fn pid1_reaps_orphans_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("app").join("work");
    let boot = write_boot(dir.path(), &workdir);
    let socket = dir.path().join("sock").join("envd.sock");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", BIN, "--boot"])
        .arg(&boot)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .spawn()
        .expect("running unshare (util-linux) as root");
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()).await,
        "agent did not create its socket"
    );
    let agent_pid = children(unshare.id())[0];

    // Startup: workdir created (root, 0755), socket dir 0700.
    let meta = std::fs::metadata(&workdir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    let sock_dir = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(sock_dir.permissions().mode() & 0o777, 0o700);

    let client = unix_client(&socket);
    // Processes are children of PID 1 and start in the template workdir.
    let out = run(&client, start_request(sh("echo $$ $PPID; pwd"))).await;
    let text = out.stdout_str();
    let mut parts = text.split_whitespace();
    let _own = parts.next().unwrap();
    assert_eq!(parts.next(), Some("1"), "{text}");
    assert_eq!(parts.next(), Some(workdir.to_str().unwrap()));

    // An orphan: the shell exits at once, its background `sleep` is
    // re-parented to the agent, which must reap it when it ends.
    let out = run(
        &client,
        start_request(sh("sleep 3 >/dev/null 2>&1 </dev/null & echo started")),
    )
    .await;
    assert_eq!(out.stdout_str(), "started\n");
    let adopted = wait_until(Duration::from_secs(2), || {
        children(agent_pid)
            .into_iter()
            .any(|p| stat(p).is_some_and(|(comm, _)| comm == "sleep"))
    })
    .await;
    assert!(adopted, "the orphan was not re-parented to the agent");
    let reaped = wait_until(Duration::from_secs(15), || {
        children(agent_pid)
            .into_iter()
            .all(|p| stat(p).is_none_or(|(comm, _)| comm != "sleep"))
    })
    .await;
    assert!(
        reaped,
        "orphan left behind: {:?}",
        children(agent_pid)
            .into_iter()
            .map(stat)
            .collect::<Vec<_>>()
    );
    for p in children(agent_pid) {
        assert_ne!(stat(p).map(|s| s.1), Some('Z'), "zombie child {p}");
    }

    // SIGTERM: running processes are stopped and the agent exits 0.
    let mut request = start_request(cmd("sleep", &["30"]));
    request.tag = Some("long".into());
    let mut stream = client.start(request).await.unwrap();
    stream.message().await.unwrap();
    // SAFETY: plain syscall.
    assert_eq!(unsafe { libc::kill(agent_pid as i32, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || unshare.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "agent exited with {status:?}");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn bad_boot_configuration_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--boot", "/no/such/boot.json", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/no/such/boot.json"), "{stderr}");

    let path = dir.path().join("boot.json");
    let mut boot = serde_json::to_value(boot()).unwrap();
    boot["schemaVersion"] = 99.into();
    std::fs::write(&path, boot.to_string()).unwrap();
    let out = Command::new(BIN)
        .arg("--boot")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schema version 99"), "{stderr}");

    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    // The inherited socket must be there, and be a listening unix socket.
    boot["schemaVersion"] = BOOT_SCHEMA_VERSION.into();
    std::fs::write(&path, boot.to_string()).unwrap();
    for (fd, needle) in [("2", "above 2"), ("9", "descriptor 9")] {
        let out = Command::new(BIN)
            .arg("--boot")
            .arg(&path)
            .args(["--listen-fd", fd])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "--listen-fd {fd}: {stderr}");
    }
}
