//! Churn: hundreds of sandboxes created, used and killed through the server,
//! several at a time, then nothing left on the host — mounts, network
//! namespaces, interfaces, nftables chains and map entries, address claims,
//! cgroups, runc state, state directories, loop devices.
//!
//! Part of the normal `cargo test` run; sized to take a minute or two on a
//! two-core machine (`HUTCH_CHURN_SANDBOXES` and `HUTCH_CHURN_PARALLEL`
//! change the numbers).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hutch_test_support::{HostResources, TestServer, busybox_image};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn hundreds_of_sandboxes_leave_nothing_behind() {
    let total = env_usize("HUTCH_CHURN_SANDBOXES", 200);
    let parallel = env_usize("HUTCH_CHURN_PARALLEL", 8);
    let server = Arc::new(TestServer::start_with_args(&["--warm-pool", "1"]));
    let image = busybox_image();
    let out = server
        .hutch()
        .args([
            "template",
            "import",
            image.to_str().unwrap(),
            "--name",
            "bb",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let addresses = Arc::new(Mutex::new(BTreeSet::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (server, next, ids, addresses) =
                (server.clone(), next.clone(), ids.clone(), addresses.clone());
            std::thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        return;
                    }
                    let mut create = vec!["sandbox", "create", "bb", "--timeout", "120"];
                    // Every fourth one has a policy of its own.
                    if n % 4 == 3 {
                        create.extend(["--no-internet", "--allow-out", "198.51.100.0/24"]);
                    }
                    let out = server.hutch().args(&create).output().unwrap();
                    assert!(
                        out.status.success(),
                        "create #{n}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    ids.lock().unwrap().push(id.clone());

                    let out = server
                        .hutch()
                        .args(["exec", &id, "--", "sh", "-c", "ip -4 -o addr show dev eth0"])
                        .output()
                        .unwrap();
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    assert!(
                        out.status.success() && text.contains("inet 10."),
                        "exec in {id}: {text}"
                    );
                    addresses.lock().unwrap().insert(text);

                    let out = server
                        .hutch()
                        .args(["sandbox", "kill", &id])
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "kill {id}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a churn worker failed");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "churn: {total} sandboxes, {parallel} at a time, in {elapsed:?} ({:?} each)",
        elapsed / total as u32
    );
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), total);

    // The warm pool holds one sandbox; a graceful stop destroys it.
    let server = Arc::into_inner(server).expect("workers are done");
    let dir = server.stop();
    let left = HostResources::measure(dir.path(), &ids);
    assert!(left.is_empty(), "after {total} sandboxes, leaked:\n{left}");
    // Teardowns running side by side behind their kills each found their
    // disk's loop device released, and none failed.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    for trouble in [
        "loop device left bound",
        "cannot tear down",
        "cannot remove",
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(trouble)).collect();
        assert!(
            lines.is_empty(),
            "the server logged {trouble:?}:\n{}",
            lines.join("\n")
        );
    }
}
