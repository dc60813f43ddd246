//! Pause and resume in both modes — frozen in memory, and stopped with only
//! the files kept — auto-pause at the timeout, auto-resume through the front
//! door, and paused sandboxes across a `kill -9` of the server, against a
//! real server with real sandboxes.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use hutch_test_support::{
    HostResources, TestServer, assert_no_leaks, busybox_image, http, wait_until,
};
use serde_json::{Value, json};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server with the busybox template `bb`; `warm_pool` sandboxes ready.
fn server(warm_pool: u32) -> TestServer {
    let server = TestServer::start_with_args(&["--warm-pool", &warm_pool.to_string()]);
    server.import(&busybox_image(), "bb", &[]);
    server
}

/// `hutch exec ID -- sh -c SCRIPT`, which must succeed; its output.
fn sh(server: &TestServer, id: &str, script: &str) -> String {
    server.cli_ok(&["exec", id, "--", "sh", "-c", script])
}

fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(server, reqwest::Method::POST, path, &[], Some(body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn state_dir(server: &TestServer, id: &str) -> PathBuf {
    server.data_dir().join("sandboxes").join(id)
}

/// A number the sandbox wrote, read on the host from its writable layer
/// (while its disk is mounted); 0 if absent.
fn number_in_upper(server: &TestServer, id: &str, path: &str) -> u64 {
    std::fs::read_to_string(
        state_dir(server, id)
            .join("disk/upper")
            .join(path.trim_start_matches('/')),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Starts a background loop counting into `/tmp/counter` every 100 ms
/// (replaced whole, so it is never read half-written).
const COUNTER: &str = "(i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; \
     mv /tmp/c.new /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &";

/// Pids of the counter's loop (the pattern does not match the shell
/// running pgrep).
const COUNTER_PIDS: &str = "ps -o pid,args | grep '[w]hile :' | awk '{print $1}'";

/// Names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What a sandbox stopped with its files kept holds on the host: its
/// directory with its disk image, nothing else — no mount, cgroup, loop
/// device, runc container, and no network objects (every other sandbox's
/// directory records one set: so many are left, no more).
fn assert_only_the_disk_is_left(server: &TestServer, id: &str) {
    assert_eq!(names_in(&state_dir(server, id)), ["disk.img"]);
    let held = HostResources::measure(server.data_dir(), &[id.to_owned()]);
    let dir = state_dir(server, id).display().to_string();
    let dir = std::path::absolute(&dir).unwrap().display().to_string();
    let mine = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|s| s.contains(&dir) || s.as_str() == id)
            .cloned()
            .collect()
    };
    assert!(mine(&held.mounts).is_empty(), "{held}");
    assert!(mine(&held.loop_devices).is_empty(), "{held}");
    assert!(mine(&held.runc_state).is_empty(), "{held}");
    assert!(held.cgroups.is_empty(), "{held}");
    // Other sandboxes killed just before may still be being torn down:
    // wait for the counts to agree.
    let networked = || {
        names_in(&server.data_dir().join("sandboxes"))
            .iter()
            .filter(|s| {
                server
                    .data_dir()
                    .join("sandboxes")
                    .join(s)
                    .join("network.json")
                    .exists()
            })
            .count()
    };
    // Interfaces, `sources` elements and address claims (the first three
    // network counts).
    let counts = |r: &HostResources| r.network_counts()[..3].to_vec();
    let (held, _) = HostResources::settle(server.data_dir(), &[id.to_owned()], |r| {
        let n = networked();
        counts(r).iter().all(|(_, c)| *c == n)
    });
    let n = networked();
    for (kind, count) in counts(&held) {
        assert_eq!(count, n, "{kind}:\n{held}");
    }
}

#[test]
fn memory_pause_freezes_a_counter_outlives_the_timeout_and_resumes_it() {
    let server = server(0);
    let id = server.create_sandbox("bb", &["--timeout", "3"]);
    let created = Instant::now();
    sh(&server, &id, COUNTER);
    wait_until("the counter runs", Duration::from_secs(10), || {
        number_in_upper(&server, &id, "/tmp/counter") >= 3
    });
    let pid_before = sh(&server, &id, COUNTER_PIDS);
    assert_eq!(pid_before.lines().count(), 1, "{pid_before}");

    server.cli_ok(&["sandbox", "pause", &id]);
    let info_paused = server.sandbox_info(&id);
    assert_eq!(info_paused["state"], "paused");
    assert_eq!(info_paused["pauseMode"], "full");
    let frozen = number_in_upper(&server, &id, "/tmp/counter");
    // Paused past its 3 s timeout: it neither advances nor expires.
    while created.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(number_in_upper(&server, &id, "/tmp/counter"), frozen);
    }
    assert_eq!(server.sandbox_info(&id)["state"], "paused");

    let (status, body) = post(&server, &format!("/sandboxes/{id}/connect"), json!({}));
    assert_eq!(status, 201, "{body}");
    wait_until("the counter continues", Duration::from_secs(10), || {
        number_in_upper(&server, &id, "/tmp/counter") > frozen
    });
    // The same process, counting on from where it was.
    let now = number_in_upper(&server, &id, "/tmp/counter");
    assert!(now > frozen && now < frozen + 30, "{frozen} then {now}");
    assert_eq!(sh(&server, &id, COUNTER_PIDS), pid_before);
    server.cli_ok(&["sandbox", "kill", &id]);
    assert_no_leaks(server.data_dir(), &[id]);
}

#[test]
fn filesystem_pause_keeps_files_env_and_policy_but_no_process() {
    let server = server(0);
    let (status, created) = post(
        &server,
        "/sandboxes",
        json!({
            "templateID": "bb",
            "timeout": 120,
            "envVars": {"FROM_CREATE": "create-value"},
            "secure": true,
            "allow_internet_access": false,
            "memoryMB": 256,
            "hutchPids": 300,
        }),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    let token = created["envdAccessToken"].as_str().unwrap().to_owned();

    let probe = "echo \"user=$(id -un) cwd=$(pwd) host=$(hostname)\"; \
                 env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' -e '^OLDPWD=' | sort";
    let before = sh(&server, &id, probe);
    assert!(before.contains("FROM_CREATE=create-value"), "{before}");
    sh(
        &server,
        &id,
        "echo kept > /root/kept.txt && mkdir -p /data && echo deep > /data/file && \
         (sleep 1000 >/dev/null 2>&1 &)",
    );
    assert!(sh(&server, &id, "ps -o args").contains("sleep 1000"));

    // Pausing twice: 409, as for a memory pause.
    server.cli_ok(&["sandbox", "pause", "--filesystem", &id]);
    let (status, _) = post(
        &server,
        &format!("/sandboxes/{id}/pause"),
        json!({"memory": false}),
    );
    assert_eq!(status, 409);
    let paused = server.sandbox_info(&id);
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["pauseMode"], "filesystem");
    assert_eq!(paused["envdAccessToken"], token.as_str());
    let table = server.cli_ok(&["sandbox", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&id) && l.contains("paused-fs")),
        "{table}"
    );
    // Every process stopped, its memory, cgroups, address, mounts and loop
    // device released: only the disk image is left.
    assert_only_the_disk_is_left(&server, &id);
    let (status, metrics) = http(
        &server,
        reqwest::Method::GET,
        &format!("/sandboxes/{id}/metrics"),
        &[],
        None,
    );
    assert_eq!((status, metrics.as_str()), (200, "[]"));
    // Not resumed by a request; the answer names connect.
    let out = server.cli(&["exec", &id, "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("paused"), "{}", stderr(&out));
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/health",
        &[("E2b-Sandbox-Id", &id)],
        None,
    );
    assert_eq!(status, 502);
    assert!(body.contains("connect"), "{body}");

    // connect boots it again on its files: 201, the same token.
    let (status, body) = post(&server, &format!("/sandboxes/{id}/connect"), json!({}));
    assert_eq!(status, 201, "{body}\n{}", server.log_tail(30));
    assert_eq!(body["envdAccessToken"], token.as_str());
    assert_eq!(server.sandbox_info(&id)["state"], "running");
    assert!(server.sandbox_info(&id).get("pauseMode").is_none());
    let (status, _) = post(&server, &format!("/sandboxes/{id}/connect"), json!({}));
    assert_eq!(status, 200);

    // Its files are there; its processes are not (a fresh agent).
    assert_eq!(
        sh(&server, &id, "cat /root/kept.txt /data/file"),
        "kept\ndeep\n"
    );
    assert!(!sh(&server, &id, "ps -o args").contains("sleep 1000"));
    // Environment, user, working directory and hostname unchanged.
    assert_eq!(sh(&server, &id, probe), before);
    // The same access token is required.
    for (token, expected) in [(token.as_str(), 200), ("wrong", 401)] {
        let (status, body) = http(
            &server,
            reqwest::Method::GET,
            "/envs",
            &[("E2b-Sandbox-Id", &id), ("X-Access-Token", token)],
            None,
        );
        assert_eq!(status, expected, "{body}");
    }
    // The same limits and network policy.
    let cgroup = |controller: &str, file: &str| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("hutch")
                .join(&id)
                .join(file),
        )
        .ok()
        .map(|s| s.trim().to_owned())
    };
    if let Some(limit) = cgroup("memory", "memory.limit_in_bytes") {
        assert_eq!(limit, (256u64 << 20).to_string());
        assert_eq!(cgroup("pids", "pids.max").as_deref(), Some("300"));
    }
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(state_dir(&server, &id).join("network.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["policy"]["allowInternetAccess"], false, "{record}");

    // A filesystem-paused sandbox killed leaves nothing at all.
    server.cli_ok(&["sandbox", "pause", "--filesystem", &id]);
    assert_only_the_disk_is_left(&server, &id);
    server.cli_ok(&["sandbox", "kill", &id]);
    assert_no_leaks(server.data_dir(), std::slice::from_ref(&id));
    let (status, _) = post(&server, &format!("/sandboxes/{id}/connect"), json!({}));
    assert_eq!(status, 404);
}

#[test]
fn paused_sandboxes_survive_a_kill_9_and_connect_resumes_them() {
    // From the warm pool: claimed sandboxes resume like cold ones.
    let server = server(1);
    let stopped = server.create_sandbox("bb", &[]);
    sh(&server, &stopped, "echo before-crash > /root/note");
    server.cli_ok(&["sandbox", "pause", "--filesystem", &stopped]);
    // A memory-paused one, rebooted from its files by `memory: false`.
    let frozen = server.create_sandbox("bb", &[]);
    sh(
        &server,
        &frozen,
        &format!("echo frozen > /root/note; {COUNTER}"),
    );
    server.cli_ok(&["sandbox", "pause", &frozen]);

    // No pool after the restart, so that nothing but these two is left.
    let server = TestServer::restart_with_args(server.kill9(), &["--warm-pool", "0"]);
    assert_eq!(
        server.sandbox_info(&stopped)["pauseMode"],
        "filesystem",
        "log:\n{}",
        server.log()
    );
    assert_eq!(server.sandbox_info(&frozen)["pauseMode"], "full");
    assert_only_the_disk_is_left(&server, &stopped);

    server.cli_ok(&["sandbox", "resume", &stopped]);
    assert_eq!(server.sandbox_info(&stopped)["state"], "running");
    assert_eq!(sh(&server, &stopped, "cat /root/note"), "before-crash\n");

    let (status, body) = post(
        &server,
        &format!("/v2/sandboxes/{frozen}/connect"),
        json!({"memory": false, "timeout": 60}),
    );
    assert_eq!(status, 201, "{body}\n{}", server.log_tail(30));
    assert_eq!(sh(&server, &frozen, "cat /root/note"), "frozen\n");
    assert_eq!(
        sh(&server, &frozen, &format!("{COUNTER_PIDS} | wc -l")).trim(),
        "0",
        "rebooted: the counter is gone"
    );

    for id in [&stopped, &frozen] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_no_leaks(server.data_dir(), &[stopped, frozen]);
}

#[test]
fn auto_pause_at_the_timeout_then_connect_resumes() {
    let server = server(0);
    // In memory: the counter is frozen at the timeout and goes on after.
    let mem = server.create_sandbox("bb", &["--timeout", "4", "--auto-pause"]);
    sh(&server, &mem, COUNTER);
    let lifecycle = &server.sandbox_info(&mem)["lifecycle"];
    assert_eq!(lifecycle["onTimeout"], "pause");
    assert_eq!(lifecycle["autoResume"], false);
    // Filesystem only: stopped at the timeout, its files kept.
    let fs = server.create_sandbox("bb", &["--timeout", "4", "--auto-pause-filesystem"]);
    sh(&server, &fs, "echo written > /root/f");
    // Neither: killed.
    let plain = server.create_sandbox("bb", &["--timeout", "4"]);
    assert_eq!(
        server.sandbox_info(&plain)["lifecycle"]["onTimeout"],
        "kill"
    );

    // The row says paused from the moment the pause starts; a filesystem
    // pause has finished once only the disk is left.
    wait_until("both auto-paused", Duration::from_secs(20), || {
        server.sandbox_info(&mem)["state"] == "paused"
            && server.sandbox_info(&fs)["state"] == "paused"
            && names_in(&state_dir(&server, &fs)) == ["disk.img"]
    });
    assert_eq!(server.sandbox_info(&mem)["pauseMode"], "full");
    assert_eq!(server.sandbox_info(&fs)["pauseMode"], "filesystem");
    // Counted once the plain one's teardown (which runs at the same moment)
    // is over.
    wait_until("the plain one killed", Duration::from_secs(20), || {
        !state_dir(&server, &plain).exists()
    });
    assert_only_the_disk_is_left(&server, &fs);
    let frozen = number_in_upper(&server, &mem, "/tmp/counter");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(number_in_upper(&server, &mem, "/tmp/counter"), frozen);

    // Resumed with the default lifetime (nothing was left of its own).
    for id in [&mem, &fs] {
        let (status, body) = post(&server, &format!("/sandboxes/{id}/connect"), json!({}));
        assert_eq!(status, 201, "{body}");
    }
    wait_until("the counter continues", Duration::from_secs(10), || {
        number_in_upper(&server, &mem, "/tmp/counter") > frozen
    });
    assert_eq!(sh(&server, &fs, "cat /root/f"), "written\n");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.sandbox_info(&mem)["state"], "running");
    assert_eq!(server.sandbox_info(&fs)["state"], "running");

    // Honoured after a restart: the new server pauses it at its timeout.
    let later = server.create_sandbox("bb", &["--timeout", "4", "--auto-pause"]);
    let server = TestServer::restart_with_args(server.kill9(), &["--warm-pool", "0"]);
    wait_until(
        "auto-paused after the restart",
        Duration::from_secs(20),
        || server.sandbox_info(&later)["state"] == "paused",
    );
    for id in [&mem, &fs, &later] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_no_leaks(server.data_dir(), &[mem, fs, plain, later]);
}

#[test]
fn auto_resume_through_the_front_door() {
    let server = server(0);
    let id = server.create_sandbox("bb", &["--auto-resume"]);
    assert_eq!(server.sandbox_info(&id)["lifecycle"]["autoResume"], true);
    sh(&server, &id, COUNTER);

    // `hutch exec` on the paused sandbox resumes it and runs.
    server.cli_ok(&["sandbox", "pause", &id]);
    assert_eq!(server.cli_ok(&["exec", &id, "--", "echo", "hi"]), "hi\n");
    assert_eq!(server.sandbox_info(&id)["state"], "running");
    let frozen = number_in_upper(&server, &id, "/tmp/counter");
    wait_until("the counter continues", Duration::from_secs(10), || {
        number_in_upper(&server, &id, "/tmp/counter") > frozen
    });

    // A plain request to the agent, addressed by headers.
    server.cli_ok(&["sandbox", "pause", &id]);
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/health",
        &[("E2b-Sandbox-Id", &id), ("E2b-Sandbox-Port", "49983")],
        None,
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(server.sandbox_info(&id)["state"], "running");

    // A user port, addressed by host name.
    sh(
        &server,
        &id,
        "mkdir -p /srv && echo served > /srv/index.html && \
         (httpd -f -p 127.0.0.1:8080 -h /srv >/dev/null 2>&1 &)",
    );
    wait_until("httpd", Duration::from_secs(10), || {
        http(
            &server,
            reqwest::Method::GET,
            "/index.html",
            &[("Host", &format!("8080-{id}.hutch.local"))],
            None,
        )
        .0 == 200
    });
    server.cli_ok(&["sandbox", "pause", &id]);
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/index.html",
        &[("Host", &format!("8080-{id}.hutch.local"))],
        None,
    );
    assert_eq!((status, body.as_str()), (200, "served\n"));
    assert_eq!(server.sandbox_info(&id)["state"], "running");

    // Paused filesystem-only, it is not resumed by a request.
    server.cli_ok(&["sandbox", "pause", "--filesystem", &id]);
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/health",
        &[("E2b-Sandbox-Id", &id)],
        None,
    );
    assert_eq!(status, 502);
    assert!(body.contains("connect"), "{body}");

    // Without autoResume: 502 naming connect.
    let other = server.create_sandbox("bb", &[]);
    server.cli_ok(&["sandbox", "pause", &other]);
    let (status, body) = http(
        &server,
        reqwest::Method::GET,
        "/health",
        &[("E2b-Sandbox-Id", &other)],
        None,
    );
    assert_eq!(status, 502);
    assert!(body.contains("connect"), "{body}");
    assert_eq!(server.sandbox_info(&other)["state"], "paused");

    // A filesystem auto-pause cannot auto-resume.
    let out = server.cli(&[
        "sandbox",
        "create",
        "bb",
        "--auto-pause-filesystem",
        "--auto-resume",
    ]);
    assert!(!out.status.success());
    let (status, body) = post(
        &server,
        "/sandboxes",
        json!({"templateID": "bb", "autoPause": true, "autoPauseMemory": false,
               "autoResume": {"enabled": true}}),
    );
    assert_eq!(status, 400, "{body}");

    for id in [&id, &other] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
    assert_no_leaks(server.data_dir(), &[id, other]);
}

/// `POST /sandboxes/{id}/resume`, E2B's older resume: 409 while running,
/// 201 with the sandbox after resuming a paused one, 404 for none.
#[test]
fn the_older_resume_route_resumes_paused_sandboxes_only() {
    let server = server(0);
    let id = server.create_sandbox("bb", &[]);
    let (status, body) = post(&server, &format!("/sandboxes/{id}/resume"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already running"),
        "{body}"
    );
    server.cli_ok(&["sandbox", "pause", &id]);
    let (status, body) = post(
        &server,
        &format!("/sandboxes/{id}/resume"),
        json!({"timeout": 30, "autoPause": false}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["sandboxID"], id.as_str());
    assert_eq!(server.sandbox_info(&id)["state"], "running");
    assert_eq!(sh(&server, &id, "echo up").trim(), "up");
    let (status, _) = post(&server, "/sandboxes/nope/resume", json!({}));
    assert_eq!(status, 404);
    server.cli_ok(&["sandbox", "kill", &id]);
}
