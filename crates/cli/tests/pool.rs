//! The warm pool against a real server with real sandboxes: creates are
//! served from it with the right identity and environment, it refills,
//! it stays invisible, and nothing of it leaks through a template removal,
//! a shutdown or a `kill -9` of the server.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use hutch_test_support::{TestServer, busybox_image, wait_torn_down, wait_until};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn import(server: &TestServer) {
    server.cli_ok(&[
        "template",
        "import",
        busybox_image().to_str().unwrap(),
        "--name",
        "bb",
    ]);
}

fn listed(server: &TestServer) -> BTreeSet<String> {
    let json: Value = serde_json::from_str(&server.cli_ok(&["sandbox", "list", "--json"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /hutch/v1/pool`.
fn pool_status(server: &TestServer) -> Value {
    let url = format!("{}/hutch/v1/pool", server.url());
    let key = server.api_key();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let resp = reqwest::Client::new()
                .get(url)
                .header("X-API-Key", key)
                .send()
                .await
                .expect("GET /hutch/v1/pool");
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        })
}

/// The pool entry of template `bb`: (ready, claimed, cold).
fn bb_pool(server: &TestServer) -> (u64, u64, u64) {
    let status = pool_status(server);
    let t = status["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["alias"] == "bb")
        .unwrap_or_else(|| panic!("no pool entry for bb in {status}"));
    let n = |k: &str| t[k].as_u64().unwrap();
    (n("ready"), n("claimed"), n("cold"))
}

fn wait_ready(server: &TestServer, n: u64) {
    wait_until(
        &format!("{n} pooled sandbox(es) ready"),
        Duration::from_secs(30),
        || bb_pool(server).0 == n,
    );
}

/// Ids of the runc containers under the server's runc root.
fn runc_containers(data: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc list: {}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

/// Names of the sandbox directories.
fn sandbox_dirs(data: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(data.join("sandboxes")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn mounted(id: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(id)
}

/// Asserts that the host holds exactly `ids`: runc containers and sandbox
/// directories.
fn assert_host_holds(data: &Path, ids: &BTreeSet<String>) {
    assert_eq!(&runc_containers(data), ids, "runc containers");
    assert_eq!(&sandbox_dirs(data), ids, "sandbox directories");
}

#[test]
fn creates_come_from_the_pool_with_their_own_identity_and_env() {
    let server = TestServer::start_with_args(&["--warm-pool", "1"]);
    import(&server);
    wait_ready(&server, 1);
    assert!(
        listed(&server).is_empty(),
        "pooled sandboxes are not listed"
    );

    let id = server.create_sandbox("bb", &["--env", "X=1"]);
    assert_eq!(bb_pool(&server).1, 1, "served from the pool");
    assert!(
        server.log().contains("from the warm pool"),
        "the log says so"
    );
    let out = server.cli_ok(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo $X; echo $HOSTNAME; hostname; echo $E2B_SANDBOX_ID",
    ]);
    assert_eq!(out, format!("1\n{id}\n{id}\n{id}\n"));
    // Every later process gets the sandbox layer too, and a process layer
    // still overrides it.
    assert_eq!(
        server.cli_ok(&["exec", &id, "--env", "X=2", "--", "sh", "-c", "echo $X"]),
        "2\n"
    );
    assert_eq!(
        server.cli_ok(&["exec", &id, "--", "sh", "-c", "echo $X"]),
        "1\n"
    );

    // The pool refills; the next sandbox has no trace of the first's env.
    wait_ready(&server, 1);
    let second = server.create_sandbox("bb", &[]);
    assert_ne!(second, id);
    assert_eq!(bb_pool(&server).1, 2);
    assert_eq!(
        server.cli_ok(&["exec", &second, "--", "sh", "-c", "echo ${X-unset}"]),
        "unset\n"
    );
    assert_eq!(
        listed(&server),
        BTreeSet::from([id.clone(), second.clone()]),
        "only claimed sandboxes are listed"
    );

    // Claimed sandboxes behave as any: killed, they leave nothing behind.
    server.cli_ok(&["sandbox", "kill", &id]);
    wait_torn_down(server.data_dir(), &id);
    assert!(!mounted(&id));
    wait_ready(&server, 1);
    let pooled: BTreeSet<String> = sandbox_dirs(server.data_dir())
        .into_iter()
        .filter(|d| *d != second)
        .collect();
    assert_eq!(pooled.len(), 1, "one pooled sandbox: {pooled:?}");
    let mut expected = pooled;
    expected.insert(second);
    assert_host_holds(server.data_dir(), &expected);
}

#[test]
fn expiry_counts_from_the_claim() {
    let server = TestServer::start_with_args(&["--warm-pool", "1"]);
    import(&server);
    wait_ready(&server, 1);
    // The pooled sandbox has been up for a while before it is claimed.
    std::thread::sleep(Duration::from_secs(3));
    let claimed_at = Instant::now();
    let id = server.create_sandbox("bb", &["--timeout", "3"]);
    assert_eq!(bb_pool(&server).1, 1, "served from the pool");
    let dir = server.data_dir().join("sandboxes").join(&id);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        dir.exists(),
        "expired {:?} after its claim, before its timeout",
        claimed_at.elapsed()
    );
    server.cli_ok(&["exec", &id, "--", "true"]);
    wait_until("the sandbox expires", Duration::from_secs(30), || {
        !dir.exists()
    });
    assert!(claimed_at.elapsed() >= Duration::from_secs(3));
}

#[test]
fn two_quick_creates_both_work() {
    let server = TestServer::start_with_args(&["--warm-pool", "1"]);
    import(&server);
    wait_ready(&server, 1);
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ["A", "B"]
            .into_iter()
            .map(|v| {
                let server = &server;
                s.spawn(move || {
                    let id = server.create_sandbox("bb", &["--env", &format!("V={v}")]);
                    let out = server.cli_ok(&["exec", &id, "--", "sh", "-c", "echo $V $HOSTNAME"]);
                    assert_eq!(out, format!("{v} {id}\n"));
                    id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(ids[0], ids[1]);
    let (_, claimed, cold) = bb_pool(&server);
    eprintln!("two quick creates: {claimed} from the pool, {cold} booted");
    assert_eq!(claimed + cold, 2);
    assert!(claimed >= 1, "at least one came from the pool");
    assert_eq!(listed(&server), ids.iter().cloned().collect());
    wait_ready(&server, 1);
}

#[test]
fn a_dead_pooled_sandbox_is_replaced_by_a_fresh_one() {
    let server = TestServer::start_with_args(&["--warm-pool", "1"]);
    import(&server);
    wait_ready(&server, 1);
    let dead = sandbox_dirs(server.data_dir())
        .into_iter()
        .next()
        .expect("the pooled sandbox");
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(server.data_dir().join("runc"))
        .args(["kill", &dead, "KILL"])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc kill: {}", stderr(&out));

    let id = server.create_sandbox("bb", &["--env", "X=fresh"]);
    assert_ne!(id, dead);
    assert_eq!(
        server.cli_ok(&["exec", &id, "--", "sh", "-c", "echo $X $HOSTNAME"]),
        format!("fresh {id}\n")
    );
    wait_until(
        "the dead pooled sandbox is destroyed",
        Duration::from_secs(30),
        || !sandbox_dirs(server.data_dir()).contains(&dead),
    );
    assert!(!runc_containers(server.data_dir()).contains(&dead));
    assert!(!mounted(&dead));
}

#[test]
fn template_rm_with_a_warm_pool() {
    let server = TestServer::start_with_args(&["--warm-pool", "2"]);
    import(&server);
    wait_ready(&server, 2);

    // A user's sandbox blocks the removal; the pooled ones do not count.
    let id = server.create_sandbox("bb", &[]);
    let out = server.cli(&["template", "rm", "bb"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("1 running sandbox;"),
        "{}",
        stderr(&out)
    );
    server.cli_ok(&["sandbox", "kill", &id]);
    // Its teardown finishes behind the kill's answer.
    wait_torn_down(server.data_dir(), &id);
    wait_ready(&server, 2);

    server.cli_ok(&["template", "rm", "bb"]);
    assert_host_holds(server.data_dir(), &BTreeSet::new());
    let status = pool_status(&server);
    assert_eq!(status["templates"], serde_json::json!([]), "{status}");
    let layers = std::fs::read_dir(server.data_dir().join("images/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(layers, 0, "the template's layers are removed");

    // Importing it again fills its pool again.
    import(&server);
    wait_ready(&server, 2);
    let id = server.create_sandbox("bb", &[]);
    server.cli_ok(&["exec", &id, "--", "true"]);
}

#[test]
fn killed_server_leaks_no_pooled_sandbox() {
    let server = TestServer::start_with_args(&["--warm-pool", "2"]);
    import(&server);
    wait_ready(&server, 2);
    let user = server.create_sandbox("bb", &["--env", "KEEP=yes"]);
    wait_ready(&server, 2);
    let old_pool: BTreeSet<String> = sandbox_dirs(server.data_dir())
        .into_iter()
        .filter(|d| *d != user)
        .collect();
    assert_eq!(old_pool.len(), 2, "{old_pool:?}");

    let dir = server.kill9();
    let server = TestServer::restart_with_args(dir, &["--warm-pool", "2"]);
    wait_ready(&server, 2);
    for id in &old_pool {
        assert!(!mounted(id), "{id} still mounted");
    }
    let on_host = sandbox_dirs(server.data_dir());
    assert!(
        on_host.is_disjoint(&old_pool),
        "the old pool is gone: {on_host:?} vs {old_pool:?}"
    );
    assert!(on_host.contains(&user));
    assert_eq!(on_host.len(), 3, "the user's sandbox and a new pool of 2");
    assert_host_holds(server.data_dir(), &on_host);
    assert_eq!(listed(&server), BTreeSet::from([user.clone()]));
    assert_eq!(
        server.cli_ok(&["exec", &user, "--", "sh", "-c", "echo $KEEP"]),
        "yes\n",
        "the re-adopted sandbox keeps its env"
    );
}

#[test]
fn stopped_server_destroys_its_pool_and_keeps_sandboxes() {
    let server = TestServer::start_with_args(&["--warm-pool", "1"]);
    import(&server);
    wait_ready(&server, 1);
    let user = server.create_sandbox("bb", &[]);
    wait_ready(&server, 1);
    let dir = server.stop();
    assert_host_holds(dir.path(), &BTreeSet::from([user.clone()]));
    let server = TestServer::restart_with_args(dir, &["--warm-pool", "0"]);
    assert_eq!(listed(&server), BTreeSet::from([user.clone()]));
    server.cli_ok(&["exec", &user, "--", "true"]);
    assert_host_holds(server.data_dir(), &BTreeSet::from([user]));
}

#[test]
fn warm_pool_zero_boots_every_sandbox() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    import(&server);
    let status = pool_status(&server);
    assert_eq!(status["size"], 0, "{status}");
    let id = server.create_sandbox("bb", &["--env", "X=1"]);
    assert_eq!(
        server.cli_ok(&["exec", &id, "--", "sh", "-c", "echo $X $HOSTNAME"]),
        format!("1 {id}\n")
    );
    assert_eq!(bb_pool(&server), (0, 0, 1));
    assert_host_holds(server.data_dir(), &BTreeSet::from([id.clone()]));
    let out = server.cli(&["run", "bb", "--", "echo", "hi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n");
    assert_eq!(listed(&server), BTreeSet::from([id]));
}
