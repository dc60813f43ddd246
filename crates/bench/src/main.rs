//! `hutch-bench`: Hutch's latency and memory, side by side with plain runc
//! doing the same work on the same root filesystem, in the same run.
//!
//! ```text
//! cargo run --release -p hutch-bench -- [--iterations N]
//! ```
//!
//! Needs root and runc. Starts a Hutch server in-process on a free port
//! with a temporary data directory, imports the busybox test image, and
//! measures:
//!
//! * **create** — `POST /v2/sandboxes` until the 201 (the sandbox's agent is
//!   up and has its environment), against `runc run --detach` of a
//!   long-running process returning.
//! * **create → first output** — `POST /v2/sandboxes` then `Start echo hi`
//!   until the first output byte, against `runc run` of `echo hi` until its
//!   first output byte.
//! * **exec round-trip** — on a live sandbox, `Start /bin/true` until its
//!   `end` event (through the server's front door over HTTP/1.1, and straight
//!   to the agent's socket), against `runc exec <id> /bin/true`.
//! * **idle memory** — an idle sandbox's agent RSS and its memory cgroup's
//!   usage, against a runc container running `sleep`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use connectrpc::client::{ClientConfig, ClientTransport, Http2Connection, HttpClient};
use hutch_protocol::envd::process::process_event::Event;
use hutch_protocol::envd::process::{ProcessClient, ProcessConfig, StartRequest};
use hutch_server::{Server, ServerConfig};

#[derive(Parser)]
#[command(about = "Measure Hutch against plain runc on this machine")]
struct Args {
    /// Measured iterations per scenario.
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    /// Unmeasured warm-up iterations per scenario.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The static agent binary (default: built on demand).
    #[arg(long, env = "HUTCH_ENVD_BIN")]
    envd: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if rustix::process::geteuid().as_raw() != 0 {
        bail!("hutch-bench needs root (it runs runc and mounts overlayfs)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

struct Samples {
    name: &'static str,
    hutch: Vec<Duration>,
    runc: Vec<Duration>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let envd = args
        .envd
        .clone()
        .unwrap_or_else(hutch_test_support::envd_bin);
    let image = hutch_test_support::busybox_image();
    let tmp = tempfile::Builder::new()
        .prefix("hb")
        .tempdir_in("/var/tmp")?;
    let data_dir = tmp.path().join("d");
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        envd,
        runc: PathBuf::from("runc"),
    })
    .await?;
    let base = format!("http://{}", server.local_addr());
    let key = std::fs::read_to_string(server.api_key_file())?
        .trim()
        .to_owned();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run_until(async {
        let _ = stop_rx.await;
    }));

    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
        key,
    };
    let template = api.import(&image).await?;
    let layers: Vec<PathBuf> = template["layers"]
        .as_array()
        .ok_or_else(|| anyhow!("template has no layers"))?
        .iter()
        .map(|d| {
            let hex = d.as_str().unwrap_or_default().trim_start_matches("sha256:");
            data_dir.join("images").join("sha256").join(hex)
        })
        .collect();
    let baseline = RuncBaseline::new(tmp.path().join("runc"), &layers)?;

    let n = args.iterations;
    let w = args.warmup;
    let mut results = Vec::new();

    // Create.
    let mut s = Samples::new("sandbox create");
    for i in 0..n + w {
        let t = Instant::now();
        let id = api.create().await?;
        let d = t.elapsed();
        api.kill(&id).await?;
        let (r, id) = baseline.run_detached(i)?;
        baseline.delete(&id)?;
        if i >= w {
            s.hutch.push(d);
            s.runc.push(r);
        }
    }
    results.push(s);

    // Create → first output.
    let front = ProcessClient::new(HttpClient::plaintext(), ClientConfig::new(base.parse()?));
    let mut s = Samples::new("create → first output");
    for i in 0..n + w {
        let t = Instant::now();
        let id = api.create().await?;
        first_output(&front, Some(&id), &["echo", "hi"]).await?;
        let d = t.elapsed();
        api.kill(&id).await?;
        let r = baseline.run_first_output(i)?;
        if i >= w {
            s.hutch.push(d);
            s.runc.push(r);
        }
    }
    results.push(s);

    // Exec round-trip on a live sandbox.
    let id = api.create().await?;
    let (_, runc_id) = baseline.run_detached(10_000)?;
    let socket = data_dir
        .join("sandboxes")
        .join(&id)
        .join("sock")
        .join(hutch_protocol::boot::AGENT_SOCKET_NAME);
    let uri: http::Uri = "http://envd".parse()?;
    let direct = ProcessClient::new(
        Http2Connection::lazy_unix(&socket, uri.clone()).shared(64),
        ClientConfig::new(uri),
    );
    let mut front_s = Samples::new("exec round-trip (front door)");
    let mut direct_s = Samples::new("exec round-trip (agent socket)");
    for i in 0..n + w {
        let t = Instant::now();
        round_trip(&front, Some(&id), &["/bin/true"]).await?;
        let d_front = t.elapsed();
        let t = Instant::now();
        round_trip(&direct, None, &["/bin/true"]).await?;
        let d_direct = t.elapsed();
        let r = baseline.exec(&runc_id, &["/bin/true"])?;
        if i >= w {
            front_s.hutch.push(d_front);
            front_s.runc.push(r);
            direct_s.hutch.push(d_direct);
            direct_s.runc.push(r);
        }
    }
    results.push(front_s);
    results.push(direct_s);

    // Idle memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hutch_mem = Memory::of_sandbox(&data_dir, &id)?;
    let runc_mem = Memory::of_container(&baseline.root, &runc_id, &runc_id)?;
    baseline.delete(&runc_id)?;
    api.kill(&id).await?;

    print_report(&results, n, &hutch_mem, &runc_mem);

    let _ = stop_tx.send(());
    let _ = server_task.await;
    drop(baseline);
    Ok(())
}

impl Samples {
    fn new(name: &'static str) -> Samples {
        Samples {
            name,
            hutch: Vec::new(),
            runc: Vec::new(),
        }
    }
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort_unstable();
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn print_report(results: &[Samples], n: usize, hutch: &Memory, runc: &Memory) {
    println!("Hutch vs plain runc, {n} iterations each (milliseconds)\n");
    println!(
        "{:<32} {:>12} {:>10} {:>12} {:>10} {:>8}",
        "scenario", "hutch p50", "hutch p95", "runc p50", "runc p95", "ratio"
    );
    for s in results {
        let (h50, r50) = (percentile(&s.hutch, 50.0), percentile(&s.runc, 50.0));
        println!(
            "{:<32} {:>12} {:>10} {:>12} {:>10} {:>8.2}",
            s.name,
            ms(h50),
            ms(percentile(&s.hutch, 95.0)),
            ms(r50),
            ms(percentile(&s.runc, 95.0)),
            h50.as_secs_f64() / r50.as_secs_f64(),
        );
    }
    println!("\nIdle memory (KiB)\n");
    println!(
        "{:<32} {:>12} {:>16} {:>16}",
        "", "init RSS", "cgroup rss+kmem", "cgroup usage"
    );
    for (name, m) in [
        ("hutch sandbox (agent as init)", hutch),
        ("runc container (sleep)", runc),
    ] {
        println!(
            "{:<32} {:>12} {:>16} {:>16}",
            name,
            m.init_rss_kib,
            m.cgroup_rss_kib + m.cgroup_kmem_kib,
            m.cgroup_usage_kib
        );
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn import(&self, layout: &Path) -> anyhow::Result<serde_json::Value> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.append_dir_all(".", layout)?;
        let body = builder.into_inner()?;
        let resp = self
            .http
            .post(format!("{}/hutch/v1/templates?name=bench", self.base))
            .header("x-api-key", &self.key)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let json: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("importing the bench image: {status} {json}");
        }
        Ok(json)
    }

    async fn create(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(format!("{}/v2/sandboxes", self.base))
            .header("x-api-key", &self.key)
            .json(&serde_json::json!({"templateID": "bench", "timeout": 600}))
            .send()
            .await?;
        let status = resp.status();
        let json: serde_json::Value = resp.json().await?;
        if status.as_u16() != 201 {
            bail!("create: {status} {json}");
        }
        Ok(json["sandboxID"]
            .as_str()
            .ok_or_else(|| anyhow!("no sandboxID in {json}"))?
            .to_owned())
    }

    async fn kill(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(format!("{}/sandboxes/{id}", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await?;
        if resp.status().as_u16() != 204 {
            bail!("kill {id}: {}", resp.status());
        }
        Ok(())
    }
}

fn start_request(cmd: &[&str]) -> StartRequest {
    StartRequest {
        process: buffa::MessageField::some(ProcessConfig {
            cmd: cmd[0].to_owned(),
            args: cmd[1..].iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    }
}

fn options(sandbox: Option<&str>) -> connectrpc::client::CallOptions {
    let options = connectrpc::client::CallOptions::default();
    match sandbox {
        Some(id) => options
            .with_header("e2b-sandbox-id", id.to_owned())
            .with_header("e2b-sandbox-port", "49983"),
        None => options,
    }
}

/// Starts `cmd` and returns once its first output byte arrives.
async fn first_output<T>(
    client: &ProcessClient<T>,
    sandbox: Option<&str>,
    cmd: &[&str],
) -> anyhow::Result<()>
where
    T: ClientTransport,
    T::ResponseBody: Unpin,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    let mut stream = client
        .start_with_options(start_request(cmd), options(sandbox))
        .await?;
    while let Some(msg) = stream.message().await? {
        if let Some(Event::Data(_)) = msg
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            return Ok(());
        }
    }
    bail!("no output from {cmd:?}")
}

/// Starts `cmd` and returns once its `end` event arrives.
async fn round_trip<T>(
    client: &ProcessClient<T>,
    sandbox: Option<&str>,
    cmd: &[&str],
) -> anyhow::Result<()>
where
    T: ClientTransport,
    T::ResponseBody: Unpin,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    let mut stream = client
        .start_with_options(start_request(cmd), options(sandbox))
        .await?;
    while let Some(msg) = stream.message().await? {
        if let Some(Event::End(end)) = msg
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            if end.exit_code != 0 {
                bail!("{cmd:?} exited {}", end.exit_code);
            }
            return Ok(());
        }
    }
    bail!("no end event for {cmd:?}")
}

/// Plain runc on an overlay of the same template layers.
struct RuncBaseline {
    dir: PathBuf,
    root: PathBuf,
    rootfs: PathBuf,
}

impl RuncBaseline {
    fn new(dir: PathBuf, layers: &[PathBuf]) -> anyhow::Result<RuncBaseline> {
        let rootfs = dir.join("rootfs");
        let root = dir.join("state");
        for d in [&rootfs, &root, &dir.join("upper"), &dir.join("work")] {
            std::fs::create_dir_all(d)?;
        }
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        check(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&rootfs),
            "mounting the baseline overlay",
        )?;
        Ok(RuncBaseline { dir, root, rootfs })
    }

    /// Writes a bundle running `args` (runc's default spec otherwise).
    fn bundle(&self, name: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
        let bundle = self.dir.join(format!("b-{name}"));
        std::fs::create_dir_all(&bundle)?;
        if !bundle.join("config.json").exists() {
            check(
                Command::new("runc")
                    .arg("spec")
                    .arg("--bundle")
                    .arg(&bundle),
                "runc spec",
            )?;
        }
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["root"]["path"] = self.rootfs.display().to_string().into();
        spec["root"]["readonly"] = false.into();
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = args.iter().map(|s| serde_json::Value::from(*s)).collect();
        std::fs::write(&path, serde_json::to_vec(&spec)?)?;
        Ok(bundle)
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    /// `runc run --detach` of a sleeping container; the time until runc returns.
    fn run_detached(&self, i: usize) -> anyhow::Result<(Duration, String)> {
        let bundle = self.bundle("sleep", &["sleep", "100000"])?;
        let id = format!("bench-d{i}");
        let t = Instant::now();
        check(
            self.runc()
                .args(["run", "--detach", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "runc run --detach",
        )?;
        Ok((t.elapsed(), id))
    }

    /// `runc run` of `echo hi`; the time until its first output byte.
    fn run_first_output(&self, i: usize) -> anyhow::Result<Duration> {
        let bundle = self.bundle("echo", &["echo", "hi"])?;
        let id = format!("bench-e{i}");
        let t = Instant::now();
        let mut child = self
            .runc()
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("runc run")?;
        let mut byte = [0u8; 1];
        let got = child.stdout.as_mut().expect("piped").read(&mut byte)?;
        let d = t.elapsed();
        let status = child.wait()?;
        if got != 1 || !status.success() {
            bail!("runc run echo: {status}, {got} bytes");
        }
        Ok(d)
    }

    /// `runc exec` of `args` in a running container, until it exits.
    fn exec(&self, id: &str, args: &[&str]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        check(
            self.runc()
                .arg("exec")
                .arg(id)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "runc exec",
        )?;
        Ok(t.elapsed())
    }

    fn delete(&self, id: &str) -> anyhow::Result<()> {
        check(
            self.runc()
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "runc delete",
        )
    }
}

impl Drop for RuncBaseline {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.rootfs).status();
    }
}

fn check(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

struct Memory {
    init_rss_kib: u64,
    cgroup_rss_kib: u64,
    cgroup_kmem_kib: u64,
    cgroup_usage_kib: u64,
}

impl Memory {
    fn of_sandbox(data_dir: &Path, id: &str) -> anyhow::Result<Memory> {
        Memory::of_container(&data_dir.join("runc"), id, &format!("hutch/{id}"))
    }

    fn of_container(runc_root: &Path, id: &str, cgroup: &str) -> anyhow::Result<Memory> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(runc_root)
            .args(["state", id])
            .output()?;
        let state: serde_json::Value =
            serde_json::from_slice(&out.stdout).with_context(|| format!("runc state {id}"))?;
        let pid = state["pid"]
            .as_u64()
            .ok_or_else(|| anyhow!("no pid for {id}"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let init_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let cg = Path::new("/sys/fs/cgroup/memory").join(cgroup);
        let read_u64 = |f: &str| -> u64 {
            std::fs::read_to_string(cg.join(f))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(cg.join("memory.stat")).unwrap_or_default();
        let stat_of = |k: &str| -> u64 {
            stat.lines()
                .find_map(|l| l.strip_prefix(&format!("{k} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            init_rss_kib,
            cgroup_rss_kib: stat_of("total_rss") / 1024,
            cgroup_kmem_kib: read_u64("memory.kmem.usage_in_bytes") / 1024,
            cgroup_usage_kib: read_u64("memory.usage_in_bytes") / 1024,
        })
    }
}
