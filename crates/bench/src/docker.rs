//! `--docker`: Hutch and Docker Engine side by side on the same Debian
//! image, each driven through the official Python SDK its users call (`e2b`
//! for Hutch, `docker` for Docker), in one run (`docker_bench.py` measures;
//! this module sets up and reports).
//!
//! Docker is Debian's `docker.io` (`dockerd` with its own `containerd` and
//! `runc`), started here with a private data root, exec root and socket, so
//! that it touches no Docker installation of the host. Its containers get a
//! network like Hutch's sandboxes (a veth pair on a private bridge,
//! `hbench0`, made here and removed afterwards); `--iptables=false`, so
//! Docker leaves the host's firewall alone (its default would set the
//! `FORWARD` policy to drop, which cuts off every other workload's routed
//! traffic).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Args, Target, ms, percentile};

/// The bridge Docker's containers are plugged into.
const BRIDGE: &str = "hbench0";
/// Its address and the containers' network.
const BRIDGE_ADDR: &str = "172.31.0.1/16";
/// The Docker SDK release measured.
pub(crate) const DOCKER_PYTHON: &str = "7.1.0";

/// A private `dockerd`, stopped (and its bridge and state removed) on drop.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> anyhow::Result<Dockerd> {
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("dockerd not found: install Debian's docker.io (apt-get install docker.io)")?;
        std::fs::create_dir_all(dir)?;
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        for args in [
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["addr", "add", BRIDGE_ADDR, "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
        ] {
            crate::check(
                Command::new("ip").args(&args),
                &format!("ip {}", args.join(" ")),
            )?;
        }
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", BRIDGE, "--iptables=false", "--ip-masq=false"])
            .arg("--userland-proxy=false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let mut d = Dockerd {
            child,
            dir: dir.to_owned(),
            socket,
        };
        d.wait_ready()?;
        Ok(d)
    }

    /// Waits until the daemon answers `GET /_ping` on its socket.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("dockerd exited ({status}): see {}", self.log().display());
            }
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) {
                s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("dockerd not ready after 60 s: see {}", self.log().display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        // What a daemon that did not stop cleanly left mounted.
        let _ = hutch_test_support::unmount_all_under(&self.dir);
    }
}

/// Runs the comparison and prints its table.
pub(crate) async fn run(args: &Args, tmp: &Path, hutch: &Target) -> anyhow::Result<()> {
    let archive = hutch_test_support::as_docker_archive(&hutch_test_support::debian_image());
    let dockerd = Dockerd::start(&tmp.join("docker"))?;
    let python = hutch_test_support::python_with(
        &format!(
            "e2b-{}-docker-{DOCKER_PYTHON}",
            hutch_test_support::E2B_PYTHON_NEW
        ),
        &[
            &format!("e2b=={}", hutch_test_support::E2B_PYTHON_NEW),
            &format!("docker=={DOCKER_PYTHON}"),
        ],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker_bench.py");
    let config = serde_json::json!({
        "iterations": args.iterations,
        "warmup": args.warmup,
        "archive": archive,
        "template": "bench-deb",
        "concurrency": args.concurrency,
        "density": args.docker_density,
        "imports": 3,
    });
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(config.to_string())
        .env("E2B_API_URL", &hutch.api.base)
        .env("E2B_SANDBOX_URL", &hutch.api.base)
        .env("E2B_API_KEY", &hutch.api.key)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dockerd.socket.display()),
        )
        .env_remove("E2B_VALIDATE_API_KEY")
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .await
        .context("running docker_bench.py")?;
    drop(dockerd);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        bail!(
            "docker_bench.py failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let result: Report =
        serde_json::from_slice(&out.stdout).context("parsing docker_bench.py's output")?;
    result.print(args);
    let raw = concurrent_kills(hutch, args.concurrency).await?;
    println!(
        "{:<42} {:>8} {:>8} {:>8}   (DELETE by hand, {} tasks of one Rust client: the server's share)",
        format!("kill, {} at once, raw HTTP", args.concurrency),
        ms(percentile(&raw, 50.0)),
        ms(percentile(&raw, 95.0)),
        ms(percentile(&raw, 99.0)),
        args.concurrency
    );
    Ok(())
}

/// `n` sandboxes killed at once by `n` tasks of one HTTP client (no SDK):
/// each kill's latency.
async fn concurrent_kills(hutch: &Target, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(hutch.api.create_from("bench-deb").await?);
    }
    // Every request's connection is open before the clock starts.
    let clients: Vec<crate::Api> = ids
        .iter()
        .map(|_| crate::Api {
            http: reqwest::Client::new(),
            ..hutch.api.clone()
        })
        .collect();
    for c in &clients {
        c.http.get(format!("{}/health", c.base)).send().await?;
    }
    let start = tokio::sync::Barrier::new(n);
    let start = std::sync::Arc::new(start);
    let tasks: Vec<_> = ids
        .into_iter()
        .zip(clients)
        .map(|(id, api)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let t = Instant::now();
                api.kill(&id).await.map(|()| t.elapsed())
            })
        })
        .collect();
    let mut took = Vec::with_capacity(n);
    for t in tasks {
        took.push(t.await??);
    }
    Ok(took)
}

/// What `docker_bench.py` prints.
#[derive(serde::Deserialize)]
struct Report {
    hutch: HashMap<String, Vec<f64>>,
    docker: HashMap<String, Vec<f64>>,
    memory: HashMap<String, HashMap<String, u64>>,
}

impl Report {
    fn print(&self, args: &Args) {
        println!(
            "\nHutch (e2b {}) and Docker Engine 20.10 (docker {DOCKER_PYTHON}), Debian image, {} iterations",
            hutch_test_support::E2B_PYTHON_NEW,
            args.iterations
        );
        println!(
            "{:<42} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>6}",
            "p50 / p95 / p99 ms", "hutch", "", "", "docker", "", "", "ratio"
        );
        let rows = [
            ("import (image archive → template)", "import"),
            ("create → first command", "create_first_command"),
            ("command round-trip", "command"),
            ("write + read 64 KiB", "write_read_64k"),
            ("write + read 16 MiB", "write_read_16m"),
            ("pause + resume", "pause_resume"),
            ("snapshot (1 MiB written)", "snapshot"),
            ("fork → first command in the fork", "fork_first_command"),
            ("kill / remove", "kill"),
            ("kill, 100 at once (each)", "concurrent_kill"),
            ("create, nothing else running", "create_at_1"),
            ("create, N idle running", "create_at_n"),
        ];
        for (label, key) in rows {
            let h = durations(&self.hutch, key);
            let d = durations(&self.docker, key);
            if h.is_empty() || d.is_empty() {
                continue;
            }
            let label = label
                .replace("100", &args.concurrency.to_string())
                .replace(" N ", &format!(" {} ", args.docker_density));
            println!(
                "{label:<42} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>6.2}",
                ms(percentile(&h, 50.0)),
                ms(percentile(&h, 95.0)),
                ms(percentile(&h, 99.0)),
                ms(percentile(&d, 50.0)),
                ms(percentile(&d, 95.0)),
                ms(percentile(&d, 99.0)),
                percentile(&h, 50.0).as_secs_f64() / percentile(&d, 50.0).as_secs_f64(),
            );
        }
        let per_idle = |side: &str| {
            self.memory
                .get(side)
                .and_then(|m| m.get("per_idle_bytes"))
                .copied()
                .unwrap_or(0)
        };
        let (h, d) = (per_idle("hutch"), per_idle("docker"));
        println!(
            "{:<42} {:>8.1} MiB{:>21} {:>8.1} MiB{:>17} {:>6.2}",
            format!("host memory per idle one ({} idle)", args.docker_density),
            h as f64 / (1 << 20) as f64,
            "",
            d as f64 / (1 << 20) as f64,
            "",
            h as f64 / d.max(1) as f64
        );
    }
}

fn durations(samples: &HashMap<String, Vec<f64>>, key: &str) -> Vec<Duration> {
    samples
        .get(key)
        .map(|v| v.iter().map(|s| Duration::from_secs_f64(*s)).collect())
        .unwrap_or_default()
}
