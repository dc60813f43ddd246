//! TestServer's process management and cleanup, against a stand-in for `hutch serve`
//! (busybox httpd serving `/health`), with a real runc container and a real mount left
//! behind in the data directory.
//!
//! One test function only: it points `HUTCH_BIN`/`HUTCH_ENVD_BIN` at the stand-in, and
//! environment changes must not race with other threads.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hutch_test_support::{TestDir, TestServer, busybox_image, mounts_under, wait_until};

const FAKE_HUTCH: &str = r#"#!/bin/sh
# Stand-in for `hutch`: `serve --listen ADDR --data-dir DIR` serves GET /health with busybox
# httpd; anything else prints its arguments and the client environment.
if [ "$1" != serve ]; then
    echo "client $HUTCH_SERVER $HUTCH_API_KEY $*"
    exit 0
fi
[ "$2" = --listen ] && [ "$4" = --data-dir ] || { echo "bad args: $*"; exit 2; }
listen=$3
data=$5
if [ -e "$data/fail" ]; then
    echo "boom: refusing to start"
    exit 3
fi
mkdir -p "$data/www"
echo ok > "$data/www/health"
echo fake-key > "$data/api-key"
echo "fake serve on $listen with HUTCH_ENVD=${HUTCH_ENVD-unset}: $*"
if [ -e "$data/exit-on-term" ]; then
    # Shut down cleanly on SIGTERM, as `hutch serve` does.
    /bin/busybox httpd -f -p "$listen" -h "$data/www" &
    httpd=$!
    trap 'kill $httpd; wait $httpd; exit 0' TERM
    wait $httpd
    exit 4
fi
exec /bin/busybox httpd -f -p "$listen" -h "$data/www"
"#;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn runc_ids(data: &Path) -> Vec<String> {
    let root = data.join("runc");
    if !root.exists() {
        return Vec::new();
    }
    sh(Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"]))
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Starts a real runc container (busybox, `sleep 600`) under `<data>/runc`, and mounts a
/// tmpfs at `<data>/mnt`, as a server would leave them. Returns the container's host pid.
fn leave_a_container_and_a_mount(data: &Path) -> u32 {
    let bundle = data.join("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", busybox_image().display()))
        .arg(&bundle));
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/sleep", "600"]);
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    sh(Command::new("runc")
        .arg("--root")
        .arg(data.join("runc"))
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg("leftover")
        .stdout(Stdio::null())
        .stderr(Stdio::null()));
    let state: serde_json::Value = serde_json::from_str(&sh(Command::new("runc")
        .arg("--root")
        .arg(data.join("runc"))
        .args(["state", "leftover"])))
    .unwrap();

    fs::create_dir(data.join("mnt")).unwrap();
    sh(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(data.join("mnt")));
    state["pid"].as_u64().unwrap() as u32
}

/// A server without sandboxes (before `envd_bin()` is first called, with `HUTCH_ENVD_BIN`
/// naming no file): the agent is neither built nor passed; its arguments, `addr`,
/// `with_api_key`, `request`; `stop_ok` on a clean and an unclean shutdown.
fn without_sandboxes() {
    let server = TestServer::start_without_sandboxes(&["--header-read-timeout", "5"]);
    let data = server.data_dir().to_path_buf();
    // What the fake logs when started by `server`.
    let started = |server: &TestServer| {
        format!(
            "fake serve on {} with HUTCH_ENVD=unset: serve --listen {0} --data-dir {} \
             --no-base-template --envd /bin/busybox --warm-pool 0",
            server.addr(),
            data.display()
        )
    };
    assert!(
        server
            .log()
            .contains(&format!("{} --header-read-timeout 5\n", started(&server))),
        "{}",
        server.log()
    );
    assert_eq!(server.url(), format!("http://{}", server.addr()));

    // A key given to the server replaces the file's for every client.
    assert_eq!(server.api_key(), "fake-key");
    let server = server.with_api_key("given-key");
    assert_eq!(server.api_key(), "given-key");
    let out = sh(server.hutch().args(["sandbox", "list"]));
    assert_eq!(
        out,
        format!("client {} given-key sandbox list\n", server.url())
    );
    let req = server
        .request(reqwest::Method::DELETE, "/sandboxes/x?y=1")
        .build()
        .unwrap();
    assert_eq!(req.method(), reqwest::Method::DELETE);
    assert_eq!(
        req.url().as_str(),
        format!("{}/sandboxes/x?y=1", server.url())
    );
    assert_eq!(req.headers()["x-api-key"], "given-key");

    // A server that exits 0 on SIGTERM stops cleanly; one killed by it does not.
    fs::write(data.join("exit-on-term"), "").unwrap();
    let server = TestServer::restart_without_sandboxes(server.stop(), &[]);
    assert!(
        server.log().contains(&format!("{}\n", started(&server))),
        "{}",
        server.log()
    );
    let guard = server.stop_ok();
    fs::remove_file(data.join("exit-on-term")).unwrap();
    let server = TestServer::restart_without_sandboxes(guard, &[]);
    let panic =
        catch_unwind(AssertUnwindSafe(|| server.stop_ok())).expect_err("stop_ok should panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("did not shut down cleanly"), "{message}");
    assert!(message.contains("signal: 15"), "{message}");
    assert!(message.contains("fake serve on"), "{message}");
    assert!(!data.exists(), "{} was not removed", data.display());
}

fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its reaper has exited too.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn test_server_lifecycle_against_a_stand_in() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (runc, mount)");
        return;
    }
    let bin_dir = TestDir::new();
    let fake = bin_dir.join("hutch");
    fs::write(&fake, FAKE_HUTCH).unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: this binary has a single test and sets these while no other thread runs.
    unsafe {
        std::env::set_var("HUTCH_BIN", &fake);
        // envd_bin() panics on a path that is not a file.
        std::env::set_var("HUTCH_ENVD_BIN", "/nonexistent/hutch-envd");
    }
    without_sandboxes();
    // SAFETY: as above.
    unsafe {
        std::env::set_var("HUTCH_ENVD_BIN", "/bin/true");
    }

    // Start: healthy, api key, client command, log.
    let server = TestServer::start();
    assert!(server.url().starts_with("http://127.0.0.1:"));
    assert_eq!(server.api_key(), "fake-key");
    let out = sh(server.hutch().args(["sandbox", "list"]));
    assert_eq!(
        out,
        format!("client {} fake-key sandbox list\n", server.url())
    );
    assert!(
        server.log().contains("with HUTCH_ENVD=/bin/true"),
        "{}",
        server.log()
    );
    let data = server.data_dir().to_path_buf();
    assert!(data.as_os_str().len() <= 64);

    // kill9 leaves everything in place.
    let container_pid = leave_a_container_and_a_mount(&data);
    let server_pid = server.pid();
    let guard = server.kill9();
    assert!(process_gone(server_pid));
    assert_eq!(guard.path(), data);
    assert_eq!(runc_ids(&data), ["leftover"]);
    assert_eq!(mounts_under(&data).len(), 1);

    // Restart on the same data dir; graceful stop also leaves things alone.
    let server = TestServer::restart(guard);
    assert_eq!(server.data_dir(), data);
    assert_eq!(server.log().matches("fake serve on").count(), 2);
    let guard = server.stop();
    assert_eq!(runc_ids(&data), ["leftover"]);

    // start_in with a borrowed dir, then drop: force-clean, directory kept for its owner.
    let server = TestServer::start_in(&guard);
    drop(server);
    assert!(runc_ids(&data).is_empty());
    assert!(mounts_under(&data).is_empty());
    wait_until(
        "the container's process to die",
        Duration::from_secs(10),
        || process_gone(container_pid),
    );
    assert!(data.join("server.log").is_file());

    // A server that fails to start: the panic names it and quotes its log.
    fs::write(data.join("fail"), "").unwrap();
    let panic = catch_unwind(AssertUnwindSafe(|| TestServer::start_in(&guard)))
        .err()
        .expect("start_in should panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("exited during startup"), "{message}");
    assert!(message.contains("boom: refusing to start"), "{message}");
    fs::remove_file(data.join("fail")).unwrap();

    // Dropping the owning guard removes the directory.
    let server = TestServer::restart(guard);
    drop(server);
    assert!(!data.exists(), "{} was not removed", data.display());
}
