//! Per-sandbox resource limits, from inside real sandboxes: CPU, memory,
//! pids and disk limits set with `hutch sandbox create` reach the cgroup
//! and the sandbox's disk, are reported, are checked against the server's
//! maxima; bombs stay inside their sandbox while a neighbour keeps
//! answering; a full disk is ENOSPC inside and 507 on upload; nothing is
//! left on the host, not even after a crash.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use hutch_test_support::{TestServer, busybox_image, wait_torn_down, wait_until};
use serde_json::{Value, json};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn server_with_bb(args: &[&str]) -> TestServer {
    let server = TestServer::start_with_args(args);
    server.cli_ok(&[
        "template",
        "import",
        busybox_image().to_str().unwrap(),
        "--name",
        "bb",
    ]);
    server
}

fn sh(server: &TestServer, id: &str, script: &str) -> Output {
    server.cli(&["exec", id, "--", "sh", "-c", script])
}

fn sh_ok(server: &TestServer, id: &str, script: &str) -> String {
    server.cli_ok(&["exec", id, "--", "sh", "-c", script])
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A request to the server with its API key: `(status, body)`.
fn http(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<reqwest::Body>,
) -> (u16, String) {
    rt().block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url()))
            .header("X-API-Key", server.api_key());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.expect("sending a request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    })
}

fn post_json(server: &TestServer, path: &str, body: Value) -> (u16, String) {
    http(
        server,
        reqwest::Method::POST,
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().into()),
    )
}

fn get_json(server: &TestServer, path: &str) -> Value {
    let (status, body) = http(server, reqwest::Method::GET, path, &[], None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Host path of a sandbox's cgroup in one v1 controller.
fn cgroup(controller: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("hutch")
        .join(id)
}

/// Loop devices bound to files under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
            && backing.starts_with(dir.to_str().unwrap())
        {
            found.push(format!("{:?} -> {}", entry.file_name(), backing.trim()));
        }
    }
    found
}

/// Nothing of sandbox `id` is left on the host.
fn assert_gone(server: &TestServer, id: &str) {
    wait_torn_down(server.data_dir(), id);
    let dir = server.data_dir().join("sandboxes").join(id);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(id), "a mount of {id} left behind");
    for c in ["memory", "pids", "cpu"] {
        assert!(!cgroup(c, id).exists(), "{c} cgroup of {id} left behind");
    }
    let loops = loops_under(&dir);
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}

#[test]
fn limits_from_the_cli_reach_the_sandbox_and_are_reported() {
    let server = server_with_bb(&[
        "--max-cpus",
        "2",
        "--max-memory-mb",
        "1024",
        "--max-disk-mb",
        "512",
        "--max-pids",
        "500",
    ]);
    let id = server.create_sandbox(
        "bb",
        &[
            "--cpus", "1", "--memory", "128", "--disk", "64", "--pids", "100",
        ],
    );
    // In the sandbox's own cgroups (its cgroup namespace shows them at the
    // root of each hierarchy).
    let read = |file: &str| {
        sh_ok(&server, &id, &format!("cat {file}"))
            .trim()
            .to_owned()
    };
    assert_eq!(read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), "100000");
    assert_eq!(read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
            (128u64 << 20).to_string(),
            "no swap beyond the memory limit"
        );
    }
    assert_eq!(read("/sys/fs/cgroup/pids/pids.max"), "100");
    // The CPU limit is a quota: the sandbox still sees every CPU.
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(sh_ok(&server, &id, "nproc").trim(), host_cpus.to_string());
    // Its root file system is its 64 MiB disk.
    let df = sh_ok(&server, &id, "df -k / | tail -n 1");
    let total_kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (48 * 1024..=64 * 1024).contains(&total_kib),
        "a 64 MiB disk: {df}"
    );

    // Reported by info and list (JSON and table).
    let info = get_json(&server, &format!("/sandboxes/{id}"));
    assert_eq!(
        (
            &info["cpuCount"],
            &info["memoryMB"],
            &info["diskSizeMB"],
            &info["hutchPids"]
        ),
        (&json!(1), &json!(128), &json!(64), &json!(100)),
        "{info}"
    );
    let listed: Value =
        serde_json::from_str(&server.cli_ok(&["sandbox", "list", "--json"])).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandboxID"] == id.as_str())
        .unwrap();
    assert_eq!(entry["memoryMB"], 128);
    assert_eq!(entry["hutchPids"], 100);
    let table = server.cli_ok(&["sandbox", "list"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap()
        .split_whitespace()
        .collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(
        (col("CPUS"), col("MEM_MB"), col("DISK_MB"), col("PIDS")),
        ("1", "128", "64", "100"),
        "{table}"
    );

    // The defaults, lowered to this server's pids maximum.
    let plain = server.create_sandbox("bb", &[]);
    let info = get_json(&server, &format!("/sandboxes/{plain}"));
    assert_eq!(
        (
            &info["cpuCount"],
            &info["memoryMB"],
            &info["diskSizeMB"],
            &info["hutchPids"]
        ),
        (&json!(2), &json!(512), &json!(512), &json!(500)),
        "{info}"
    );
    assert_eq!(
        sh_ok(&server, &plain, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us").trim(),
        "200000"
    );
    assert_eq!(
        std::fs::read_to_string(cgroup("pids", &plain).join("pids.max"))
            .unwrap()
            .trim(),
        "500"
    );
}

#[test]
fn limits_outside_the_maxima_are_refused_with_the_reason() {
    let server = server_with_bb(&[
        "--max-cpus",
        "2",
        "--max-memory-mb",
        "1024",
        "--max-disk-mb",
        "512",
        "--max-pids",
        "500",
        "--warm-pool",
        "0",
    ]);
    for (flag, value, message) in [
        (
            "--cpus",
            "3",
            "cpuCount 3 is above the maximum of 2 on this server (hutch serve --max-cpus)",
        ),
        (
            "--memory",
            "2048",
            "memoryMB 2048 is above the maximum of 1024",
        ),
        (
            "--disk",
            "1024",
            "diskSizeMB 1024 is above the maximum of 512",
        ),
        (
            "--pids",
            "1000",
            "hutchPids 1000 is above the maximum of 500",
        ),
        (
            "--cpus",
            "0",
            "cpuCount 0 is invalid: it must be at least 1",
        ),
        (
            "--disk",
            "1",
            "diskSizeMB 1 is invalid: it must be at least 16",
        ),
    ] {
        let out = server.cli(&["sandbox", "create", "bb", flag, value]);
        assert!(!out.status.success(), "{flag} {value} must be refused");
        let err = stderr(&out);
        assert!(err.contains(message), "{flag} {value}: {err:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    }
    // The API answers 400, on both create routes, negative values included.
    for (path, body, message) in [
        (
            "/sandboxes",
            json!({"templateID": "bb", "memoryMB": -1}),
            "memoryMB -1 is invalid",
        ),
        (
            "/v2/sandboxes",
            json!({"templateID": "bb", "cpuCount": 5}),
            "cpuCount 5 is above the maximum of 2",
        ),
        (
            "/v2/sandboxes",
            json!({"templateID": "bb", "hutchPids": 0}),
            "hutchPids 0 is invalid",
        ),
    ] {
        let (status, text) = post_json(&server, path, body);
        assert_eq!(status, 400, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["message"].as_str().unwrap().contains(message),
            "{message:?} not in {text}"
        );
    }
    // Nothing was created.
    let listed: Value =
        serde_json::from_str(&server.cli_ok(&["sandbox", "list", "--json"])).unwrap();
    assert_eq!(listed, json!([]));
    assert_eq!(
        std::fs::read_dir(server.data_dir().join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
}

/// `(ready, claimed, cold)` of template `bb` in `GET /hutch/v1/pool`.
fn bb_pool(server: &TestServer) -> (u64, u64, u64) {
    let status = get_json(server, "/hutch/v1/pool");
    let t = status["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["alias"] == "bb")
        .cloned()
        .unwrap_or(json!({"ready": 0, "claimed": 0, "cold": 0}));
    (
        t["ready"].as_u64().unwrap(),
        t["claimed"].as_u64().unwrap(),
        t["cold"].as_u64().unwrap(),
    )
}

#[test]
fn only_creates_with_the_default_limits_come_from_the_warm_pool() {
    let server = server_with_bb(&["--warm-pool", "1"]);
    let ready = || bb_pool(&server).0 == 1;
    wait_until("a pooled sandbox", Duration::from_secs(30), ready);
    let pooled = server.create_sandbox("bb", &[]);
    assert_eq!(bb_pool(&server).1, 1, "the default limits: from the pool");
    wait_until("the pool refills", Duration::from_secs(30), ready);
    let custom = server.create_sandbox("bb", &["--memory", "256"]);
    let (_, claimed, cold) = bb_pool(&server);
    assert_eq!((claimed, cold), (1, 1), "other limits: booted cold");
    assert_eq!(
        sh_ok(
            &server,
            &custom,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        )
        .trim(),
        (256u64 << 20).to_string()
    );
    assert_eq!(
        sh_ok(
            &server,
            &pooled,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        )
        .trim(),
        (512u64 << 20).to_string()
    );
    // Asking explicitly for the defaults is the same as asking for nothing.
    wait_until("the pool is ready", Duration::from_secs(30), ready);
    server.create_sandbox(
        "bb",
        &[
            "--cpus", "2", "--memory", "512", "--disk", "2048", "--pids", "1024",
        ],
    );
    assert_eq!(bb_pool(&server).1, 2);
}

/// `oom_kill` count of a sandbox's memory cgroup (v1).
fn oom_kills(id: &str) -> u64 {
    std::fs::read_to_string(cgroup("memory", id).join("memory.oom_control"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn a_memory_bomb_is_confined_and_its_agent_survives() {
    let server = server_with_bb(&["--warm-pool", "0"]);
    let bomb = server.create_sandbox("bb", &["--memory", "64"]);
    let neighbour = server.create_sandbox("bb", &[]);
    // Its processes are the OOM killer's first choice, ahead of the agent.
    let agent_adj: i32 = sh_ok(&server, &bomb, "cat /proc/1/oom_score_adj")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        sh_ok(&server, &bomb, "cat /proc/self/oom_score_adj").trim(),
        (agent_adj + 500).min(1000).to_string()
    );

    // One process growing without end: the kernel kills it, inside the
    // sandbox's memory cgroup.
    let out = sh(
        &server,
        &bomb,
        "x=$(head -c 300000000 /dev/zero | tr '\\0' x); echo survived",
    );
    assert!(!out.status.success(), "the bomb must be killed");
    assert!(!stdout(&out).contains("survived"));
    assert!(oom_kills(&bomb) >= 1, "killed by the memory cgroup");
    assert_eq!(
        sh_ok(&server, &bomb, "echo alive"),
        "alive\n",
        "the agent lives"
    );
    assert_eq!(sh_ok(&server, &neighbour, "echo fine"), "fine\n");

    // Many processes of about 1 MiB each, none bigger than the agent: the
    // kernel still picks them, not the agent.
    // (The shell starting them may be killed too: it is a user process.)
    let before = oom_kills(&bomb);
    let _ = sh(
        &server,
        &bomb,
        "for i in $(seq 100); do \
           (x=$(head -c 1000000 /dev/zero | tr '\\0' x); sleep 1000) >/dev/null 2>&1 & \
         done",
    );
    wait_until(
        "the swarm meets the OOM killer",
        Duration::from_secs(60),
        || oom_kills(&bomb) > before,
    );
    // While the swarm holds the cgroup at its limit, a new command is a
    // user process too and may itself be the OOM killer's pick (after it
    // printed, even): the agent answering is what counts, and it does once
    // the swarm has settled.
    let mut comm = String::new();
    wait_until("the agent answers", Duration::from_secs(60), || {
        let out = sh(&server, &bomb, "cat /proc/1/comm");
        comm = stdout(&out);
        out.status.success()
    });
    assert_eq!(comm, "hutch-envd\n", "the same agent is PID 1");
    assert_eq!(sh_ok(&server, &neighbour, "echo fine"), "fine\n");

    // Killable, and leaves nothing.
    server.cli_ok(&["sandbox", "kill", &bomb]);
    assert_gone(&server, &bomb);
    assert_eq!(sh_ok(&server, &neighbour, "echo fine"), "fine\n");
}

#[test]
fn a_fork_bomb_is_confined_to_its_pids_limit() {
    let server = server_with_bb(&["--warm-pool", "0"]);
    let bomb = server.create_sandbox("bb", &["--pids", "64", "--cpus", "1"]);
    let neighbour = server.create_sandbox("bb", &[]);

    // Every process starts copies of itself, forever. (A busybox shell whose
    // fork fails exits, so the bomb may burn out after filling the limit:
    // what counts is that the limit was hit, and held.)
    let _ = sh(
        &server,
        &bomb,
        "f() { while :; do f & done; }; f >/dev/null 2>&1 &",
    );
    let dir = cgroup("pids", &bomb);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let refused = || -> u64 {
        read("pids.events")
            .strip_prefix("max ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until(
        "the bomb fills its pids limit",
        Duration::from_secs(30),
        || refused() > 0,
    );
    let current: u64 = read("pids.current").trim().parse().unwrap();
    assert!(current <= 64, "never above the limit: {current}");
    // The neighbour keeps answering, again and again.
    for i in 0..5 {
        assert_eq!(
            sh_ok(&server, &neighbour, &format!("echo {i}")),
            format!("{i}\n")
        );
    }
    // The bomb's sandbox can still be killed, and leaves nothing.
    server.cli_ok(&["sandbox", "kill", &bomb]);
    assert_gone(&server, &bomb);
    assert_eq!(sh_ok(&server, &neighbour, "echo fine"), "fine\n");
}

#[test]
fn a_full_disk_is_enospc_inside_and_507_on_upload() {
    let server = server_with_bb(&["--warm-pool", "0"]);
    let id = server.create_sandbox("bb", &["--disk", "64"]);
    let image = server
        .data_dir()
        .join("sandboxes")
        .join(&id)
        .join("disk.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);

    // Fill it.
    let out = sh(&server, &id, "dd if=/dev/zero of=/tmp/fill bs=1M count=100");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    let df = sh_ok(&server, &id, "df -k / | tail -n 1");
    let available_kib: u64 = df.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(available_kib < 1024, "full: {df}");
    // The host holds no more than the image's size for it.
    let allocated = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(
        allocated <= 64 << 20,
        "the image uses {allocated} bytes on the host"
    );

    // An upload through the front door: 507 Insufficient Storage.
    let upload = |size: usize| {
        http(
            &server,
            reqwest::Method::POST,
            "/files?path=/root/upload.bin",
            &[
                ("E2b-Sandbox-Id", &id),
                ("E2b-Sandbox-Port", "49983"),
                ("Content-Type", "application/octet-stream"),
            ],
            Some(vec![1u8; size].into()),
        )
    };
    let (status, body) = upload(4 << 20);
    assert_eq!(status, 507, "{body}");
    // Room again once the sandbox frees some.
    sh_ok(&server, &id, "rm /tmp/fill");
    let (status, body) = upload(4 << 20);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sh_ok(&server, &id, "wc -c < /root/upload.bin").trim(),
        (4 << 20).to_string()
    );

    server.cli_ok(&["sandbox", "kill", &id]);
    assert_gone(&server, &id);
}

#[test]
fn no_disk_or_loop_device_outlives_a_crash() {
    let server = server_with_bb(&["--warm-pool", "1"]);
    let keep = server.create_sandbox("bb", &["--disk", "64"]);
    wait_until("a pooled sandbox", Duration::from_secs(30), || {
        bb_pool(&server).0 == 1
    });
    sh_ok(&server, &keep, "echo kept > /tmp/state");
    let sandboxes = server.data_dir().join("sandboxes");
    assert_eq!(
        loops_under(&sandboxes).len(),
        2,
        "{:?}",
        loops_under(&sandboxes)
    );

    // Killed: the new server re-adopts `keep` (disk and all) and destroys
    // the orphaned pooled sandbox, disk and loop device included.
    let server = TestServer::restart(server.kill9());
    assert_eq!(sh_ok(&server, &keep, "cat /tmp/state"), "kept\n");
    wait_until("a new pooled sandbox", Duration::from_secs(30), || {
        bb_pool(&server).0 == 1
    });
    let images: BTreeMap<String, u64> = std::fs::read_dir(&sandboxes)
        .unwrap()
        .flatten()
        .map(|e| {
            let size = std::fs::metadata(e.path().join("disk.img"))
                .map(|m| m.len())
                .unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert_eq!(images[&keep], 64 << 20);
    assert_eq!(
        loops_under(&sandboxes).len(),
        2,
        "{:?}",
        loops_under(&sandboxes)
    );

    server.cli_ok(&["sandbox", "kill", &keep]);
    assert_gone(&server, &keep);
    // A clean stop destroys the pool: nothing is left.
    let dir = server.stop();
    assert!(
        loops_under(dir.path()).is_empty(),
        "{:?}",
        loops_under(dir.path())
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
}
