//! Crash safety: `kill -9` of the server with sandboxes running and paused,
//! and `kill -9` of a sandbox's agent. Afterwards every sandbox is either
//! re-adopted (running or paused as before, reachable, its network and
//! policy intact) or cleaned up and reported killed, and nothing else is
//! left on the host — counted from the kernel and the file system.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use hutch_test_support::{
    FAKE_INTERNET_BODY, FakeInternet, HostResources, Postgres, TestServer, busybox_image,
    wait_until,
};

fn server(args: &[&str]) -> TestServer {
    let server = TestServer::start_with_args(args);
    let image = busybox_image();
    server.cli_ok(&[
        "template",
        "import",
        image.to_str().unwrap(),
        "--name",
        "bb",
    ]);
    server
}

fn sh(server: &TestServer, id: &str, script: &str) -> (i32, String) {
    let out = server.cli(&["exec", id, "--", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn fetches(server: &TestServer, id: &str, url: &str) -> bool {
    let (code, out) = sh(server, id, &format!("timeout 5 wget -q -O - {url}"));
    code == 0 && out.contains(FAKE_INTERNET_BODY)
}

fn address(server: &TestServer, id: &str) -> String {
    let (code, out) = sh(server, id, "ip -4 -o addr show dev eth0");
    assert_eq!(code, 0, "{out}");
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address: {out}"))
        .to_owned()
}

/// `(id, state)` of every listed sandbox.
fn listed(server: &TestServer) -> BTreeSet<(String, String)> {
    let out = server.cli_ok(&["sandbox", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["sandboxID"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap_or("running").to_owned(),
            )
        })
        .collect()
}

fn state(server: &TestServer, id: &str) -> Option<String> {
    listed(server)
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
}

/// Host pid of a sandbox's agent, from runc's state.
fn agent_pid(server: &TestServer, id: &str) -> i32 {
    let out = Command::new("runc")
        .arg("--root")
        .arg(server.data_dir().join("runc"))
        .args(["state", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc state {id}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

fn kill9(pid: i32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

/// Asserts that exactly the sandboxes `live` hold resources on the host:
/// one state directory, runc container, interface, chain, map entry,
/// address claim and network namespace each, mounts only under their
/// directories, and no cgroup of any of `gone`.
fn assert_holds_exactly(server: &TestServer, live: &[&str], gone: &[String]) {
    let mut all: Vec<String> = live.iter().map(|s| (*s).to_owned()).collect();
    all.extend(gone.iter().cloned());
    // Killed sandboxes are torn down after their kill answers: wait for
    // what they held to go (and fail on what stays).
    let (r, _) = HostResources::settle(server.data_dir(), &all, |r| {
        holds_exactly(server, live, gone, r).is_ok()
    });
    if let Err(e) = holds_exactly(server, live, gone, &r) {
        panic!("{e}\n{r}");
    }
}

/// Whether `r` is exactly what the sandboxes `live` hold (see
/// [`assert_holds_exactly`]); what differs if not.
fn holds_exactly(
    server: &TestServer,
    live: &[&str],
    gone: &[String],
    r: &HostResources,
) -> Result<(), String> {
    let mut want: Vec<String> = live.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    if r.state_dirs != want {
        return Err(format!("state dirs: {:?}, want {want:?}", r.state_dirs));
    }
    if r.runc_state != want {
        return Err(format!(
            "runc containers: {:?}, want {want:?}",
            r.runc_state
        ));
    }
    for (kind, n) in r.network_counts() {
        if n != live.len() {
            return Err(format!("{kind}: {n}, want {}", live.len()));
        }
    }
    // Policy elements only of live interfaces.
    for e in &r.nft_elements {
        if !r.interfaces.iter().any(|i| e.contains(&format!("\"{i}\""))) {
            return Err(format!("{e} belongs to no live sandbox"));
        }
    }
    let sandboxes = server.data_dir().join("sandboxes");
    for m in r.mounts.iter().chain(&r.loop_devices) {
        if !live
            .iter()
            .any(|id| m.contains(&sandboxes.join(id).display().to_string()))
        {
            return Err(format!("{m} belongs to no live sandbox"));
        }
    }
    for id in gone {
        if r.cgroups.iter().any(|c| c.ends_with(&format!("/{id}"))) {
            return Err(format!("a cgroup of {id} is left"));
        }
    }
    Ok(())
}

#[test]
fn server_kill9_readopts_running_and_paused_sandboxes_with_their_network() {
    let net = FakeInternet::start();
    let url = net.url();
    // A pooled sandbox is left unclaimed by the crash too.
    let server = server(&["--warm-pool", "1"]);
    let open = server.create_sandbox("bb", &[]);
    let closed = server.create_sandbox("bb", &["--no-internet"]);
    let paused = server.create_sandbox("bb", &[]);
    assert!(fetches(&server, &open, &url));
    assert!(!fetches(&server, &closed, &url));
    let addresses = [
        address(&server, &open),
        address(&server, &closed),
        address(&server, &paused),
    ];
    server.cli_ok(&["sandbox", "pause", &paused]);
    // A process that keeps running across the crash.
    let (code, out) = sh(&server, &open, "(sleep 1000 > /dev/null 2>&1 &)");
    assert_eq!(code, 0, "{out}");

    let dir = server.kill9();
    let server = TestServer::restart_with_args(dir, &["--warm-pool", "0"]);

    assert_eq!(state(&server, &open).as_deref(), Some("running"));
    assert_eq!(state(&server, &closed).as_deref(), Some("running"));
    assert_eq!(state(&server, &paused).as_deref(), Some("paused"));
    assert_eq!(listed(&server).len(), 3, "{:?}", listed(&server));
    // Only the three: the orphaned pooled sandbox is gone.
    assert_holds_exactly(&server, &[&open, &closed, &paused], &[]);

    // Network and policy intact.
    assert_eq!(address(&server, &open), addresses[0]);
    assert_eq!(address(&server, &closed), addresses[1]);
    assert!(fetches(&server, &open, &url));
    assert!(!fetches(&server, &closed, &url));
    let (code, out) = sh(&server, &open, "ps | grep -v grep | grep 'sleep 1000'");
    assert_eq!(code, 0, "the process survived: {out}");

    server.cli_ok(&["sandbox", "resume", &paused]);
    assert_eq!(address(&server, &paused), addresses[2]);
    assert!(fetches(&server, &paused, &url));

    // Templates are intact: a new sandbox boots.
    let fresh = server.create_sandbox("bb", &[]);
    assert!(fetches(&server, &fresh, &url));

    let ids = [open, closed, paused, fresh];
    for id in &ids {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_holds_exactly(&server, &[], &ids);
}

/// The same with the server's state in PostgreSQL: the restarted server
/// finds its sandboxes, templates and key there, and the data directory
/// holds no database.
#[test]
fn server_kill9_on_postgres_readopts_running_and_paused_sandboxes() {
    let pg = Postgres::start();
    let url = pg.url();
    let args = ["--warm-pool", "0", "--database-url", url.as_str()];
    let server = server(&args);
    let running = server.create_sandbox("bb", &[]);
    let paused = server.create_sandbox("bb", &[]);
    server.cli_ok(&["sandbox", "pause", &paused]);
    let (code, out) = sh(&server, &running, "echo kept > /tmp/mark");
    assert_eq!(code, 0, "{out}");
    assert!(!server.data_dir().join("hutch.db").exists());
    assert_eq!(
        pg.psql("SELECT count(*) FROM sandboxes WHERE state IN ('running', 'paused')"),
        "2"
    );

    let dir = server.kill9();
    let server = TestServer::restart_with_args(dir, &args);
    assert_eq!(state(&server, &running).as_deref(), Some("running"));
    assert_eq!(state(&server, &paused).as_deref(), Some("paused"));
    let (code, out) = sh(&server, &running, "cat /tmp/mark");
    assert_eq!((code, out.trim()), (0, "kept"));
    server.cli_ok(&["sandbox", "resume", &paused]);
    let fresh = server.create_sandbox("bb", &[]);
    let ids = [running, paused, fresh];
    for id in &ids {
        let (code, out) = sh(&server, id, "true");
        assert_eq!(code, 0, "{id}: {out}");
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_holds_exactly(&server, &[], &ids);
    assert_eq!(
        pg.psql("SELECT count(*) FROM sandboxes WHERE state != 'killed'"),
        "0"
    );
}

#[test]
fn sandboxes_whose_agent_died_while_the_server_was_down_are_cleaned_up() {
    let server = server(&["--warm-pool", "0"]);
    let dead = server.create_sandbox("bb", &[]);
    let alive = server.create_sandbox("bb", &["--deny-out", "198.51.100.0/24"]);
    let pid = agent_pid(&server, &dead);
    let dir = server.kill9();
    kill9(pid);
    let server = TestServer::restart_with_args(dir, &["--warm-pool", "0"]);

    assert_eq!(state(&server, &dead), None, "reported killed");
    let out = server.cli(&["exec", &dead, "--", "true"]);
    assert!(!out.status.success());
    assert_eq!(state(&server, &alive).as_deref(), Some("running"));
    assert_holds_exactly(&server, &[&alive], std::slice::from_ref(&dead));
    assert!(server.log().contains(&dead));

    server.cli_ok(&["sandbox", "kill", &alive]);
    assert_holds_exactly(&server, &[], &[dead, alive]);
}

#[test]
fn killing_an_agent_kills_its_sandbox() {
    let server = server(&["--warm-pool", "0"]);
    let victim = server.create_sandbox("bb", &[]);
    let bystander = server.create_sandbox("bb", &[]);
    let paused = server.create_sandbox("bb", &[]);
    server.cli_ok(&["sandbox", "pause", &paused]);

    kill9(agent_pid(&server, &victim));
    wait_until("the server notices", Duration::from_secs(10), || {
        state(&server, &victim).is_none()
    });
    wait_until("the sandbox is cleaned up", Duration::from_secs(10), || {
        !server.data_dir().join("sandboxes").join(&victim).exists()
    });
    assert!(
        server.log().contains("agent exited"),
        "the log says why:\n{}",
        server.log()
    );
    assert_eq!(state(&server, &bystander).as_deref(), Some("running"));
    assert_eq!(state(&server, &paused).as_deref(), Some("paused"));
    assert_holds_exactly(
        &server,
        &[&bystander, &paused],
        std::slice::from_ref(&victim),
    );

    server.cli_ok(&["sandbox", "kill", &paused]);
    server.cli_ok(&["sandbox", "kill", &bystander]);
    assert_holds_exactly(&server, &[], &[victim, bystander, paused]);
}
