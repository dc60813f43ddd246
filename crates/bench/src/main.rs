//! `hutch-bench`: Hutch's latency and memory, side by side with plain runc
//! doing the same work on the same root filesystem, in the same run.
//!
//! ```text
//! cargo run --release -p hutch-bench -- [--iterations N]
//! ```
//!
//! Needs root and runc. Starts two Hutch servers in-process on free ports
//! with temporary data directories — one with a warm pool of one sandbox
//! per template, one without (`--warm-pool 0`) — imports the busybox test
//! image into both, and measures:
//!
//! * **create** — `POST /v2/sandboxes` until the 201 (the sandbox's agent is
//!   up and has its environment), against `runc run --detach` of a
//!   long-running process returning. *Warm pool*: the create claims a
//!   pre-booted sandbox (the bench waits for the pool to be refilled before
//!   each warm create, and before the cold and runc runs so that no refill
//!   runs behind them); *cold*: the create boots the sandbox.
//! * **create → first output** — `POST /v2/sandboxes` then `Start echo hi`
//!   until the first output byte, against `runc run` of `echo hi` until its
//!   first output byte; warm pool and cold, as above.
//! * **exec round-trip** — on a live sandbox, `Start /bin/true` until its
//!   `end` event (through the server's front door over HTTP/1.1, and straight
//!   to the agent's socket), against `runc exec <id> /bin/true`.
//! * **idle memory** — an idle sandbox's agent RSS and its memory cgroup's
//!   usage, for a claimed sandbox and an unclaimed one in the pool (what
//!   the pool costs per sandbox), against a runc container running `sleep`.
//! * **template build** — a small Dockerfile built with every step run
//!   (`noCache`) and unchanged (every layer from the cache).
//!
//! `--density N` runs the density benchmark instead (`density.rs`): N idle
//! sandboxes of a Debian image on one server, create latency at the first,
//! middle and last 50, host memory per sandbox, and a teardown that must
//! leave nothing on the host.
//!
//! `--docker` runs the comparison with Docker Engine instead (`docker.rs`):
//! the same operations on the same Debian image through each one's official
//! Python SDK, with a private `dockerd` (Debian's `docker.io`).
//!
//! `--remote-node` compares a server alone with a control plane driving a
//! node through the node API, templates through a registry (`remote.rs`).
//!
//! `--load N [--rounds R]` runs the load test instead (`load.rs`): N
//! concurrent clients of one server through the official Python SDK, each
//! creating a sandbox, running commands, writing, reading and listing files
//! and killing it, R times; latencies, throughput and errors per operation,
//! then a teardown that must leave nothing on the host.

mod density;
mod docker;
mod host;
mod load;
mod placement;
mod remote;

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
    /// Run the density benchmark instead: this many idle sandboxes on one
    /// server (see `density.rs`).
    #[arg(long, value_name = "N")]
    density: Option<usize>,
    /// The image of the density benchmark's sandboxes: `debian` (Debian 12
    /// with bash and python3, like the `base` template) or `busybox`.
    #[arg(long, default_value = "debian")]
    density_image: String,
    /// Run the load test instead: this many concurrent clients of one
    /// server through the official Python SDK (see `load.rs`).
    #[arg(long, value_name = "N")]
    load: Option<usize>,
    /// With `--load`: sandboxes each client creates, uses and kills, one
    /// after another.
    #[arg(long, value_name = "R", default_value_t = 3, requires = "load")]
    rounds: usize,
    /// Run the comparison with Docker Engine instead (see `docker.rs`).
    #[arg(long)]
    docker: bool,
    /// Compare a server alone with a control plane whose sandboxes run on
    /// a `hutch node` instead (see `remote.rs`).
    #[arg(long)]
    remote_node: bool,
    /// Measure the control plane alone with 1 and then 100 simulated nodes
    /// (see `placement.rs`).
    #[arg(long)]
    placement: bool,
    /// With `--docker`: sandboxes (and containers) killed at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// With `--docker`: idle sandboxes (and containers) during the last
    /// creates.
    #[arg(long, default_value_t = 100)]
    docker_density: usize,
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

/// One in-process server under measurement.
struct Target {
    api: Api,
    data_dir: PathBuf,
    /// A process client through the server's front door.
    front: ProcessClient<HttpClient>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), hutch_server::ServerError>>,
}

impl Target {
    /// A server on `data_dir` keeping `warm_pool` sandboxes per template.
    async fn start(data_dir: PathBuf, envd: PathBuf, warm_pool: usize) -> anyhow::Result<Target> {
        Target::start_config(
            ServerConfig::new("127.0.0.1:0".parse()?, data_dir, envd),
            warm_pool,
        )
        .await
    }

    /// A server with `cfg` keeping `warm_pool` sandboxes per template.
    async fn start_config(cfg: ServerConfig, warm_pool: usize) -> anyhow::Result<Target> {
        let data_dir = cfg.data_dir.clone();
        let mut server = Server::bind(cfg).await?;
        server.set_warm_pool(warm_pool);
        let base = format!("http://{}", server.local_addr());
        let key = std::fs::read_to_string(server.api_key_file())?
            .trim()
            .to_owned();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async {
            let _ = stop_rx.await;
        }));
        let front = ProcessClient::new(HttpClient::plaintext(), ClientConfig::new(base.parse()?));
        Ok(Target {
            api: Api {
                http: reqwest::Client::new(),
                base,
                key,
            },
            data_dir,
            front,
            stop,
            task,
        })
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let envd = args
        .envd
        .clone()
        .unwrap_or_else(hutch_test_support::envd_bin);
    if let Some(n) = args.density {
        let image = match args.density_image.as_str() {
            "debian" => hutch_test_support::debian_image(),
            "busybox" => hutch_test_support::busybox_image(),
            other => bail!("--density-image {other:?}: expected debian or busybox"),
        };
        let tmp = tempfile::Builder::new()
            .prefix("hb")
            .tempdir_in("/var/tmp")?;
        let target = Target::start(tmp.path().join("d"), envd, 0).await?;
        let result = async {
            target.api.import(&image).await?;
            density::run(&target, n).await
        }
        .await;
        target.shutdown().await;
        return result;
    }
    if let Some(n) = args.load {
        if n == 0 {
            bail!("--load 0: the load test needs at least one client");
        }
        if args.rounds == 0 {
            bail!("--rounds 0: each client needs at least one round");
        }
        let tmp = tempfile::Builder::new()
            .prefix("hb")
            .tempdir_in("/var/tmp")?;
        // A server as `hutch serve` starts by default (see `load.rs`).
        let target =
            Target::start(tmp.path().join("l"), envd, hutch_server::DEFAULT_WARM_POOL).await?;
        if let Err(e) = target
            .api
            .import_as(&hutch_test_support::debian_image(), load::TEMPLATE)
            .await
        {
            target.shutdown().await;
            return Err(e);
        }
        return load::run(target, n, args.rounds).await;
    }
    if args.placement {
        let tmp = tempfile::Builder::new()
            .prefix("hb")
            .tempdir_in("/var/tmp")?;
        return placement::run(&args, tmp.path(), envd).await;
    }
    if args.remote_node {
        let tmp = tempfile::Builder::new()
            .prefix("hb")
            .tempdir_in("/var/tmp")?;
        return remote::run(&args, tmp.path(), envd).await;
    }
    if args.docker {
        let tmp = tempfile::Builder::new()
            .prefix("hb")
            .tempdir_in("/var/tmp")?;
        // A server as `hutch serve` starts by default: a warm pool of one.
        let target = Target::start(tmp.path().join("h"), envd, 1).await?;
        let result = docker::run(&args, tmp.path(), &target).await;
        target.shutdown().await;
        return result;
    }
    let image = hutch_test_support::busybox_image();
    let tmp = tempfile::Builder::new()
        .prefix("hb")
        .tempdir_in("/var/tmp")?;
    // The same image on two servers: one with a warm pool of one sandbox,
    // one without.
    let warm = Target::start(tmp.path().join("w"), envd.clone(), 1).await?;
    let cold = Target::start(tmp.path().join("c"), envd, 0).await?;
    // The servers stop (and destroy their pooled sandboxes) also when a
    // scenario fails.
    let result = scenarios(&args, &image, tmp.path(), &warm, &cold).await;
    warm.shutdown().await;
    cold.shutdown().await;
    result
}

async fn scenarios(
    args: &Args,
    image: &Path,
    tmp: &Path,
    warm: &Target,
    cold: &Target,
) -> anyhow::Result<()> {
    let template = warm.api.import(image).await?;
    cold.api.import(image).await?;
    let baseline = RuncBaseline::new(tmp.join("runc"), &layer_dirs(&warm.data_dir, &template)?)?;

    let n = args.iterations;
    let w = args.warmup;
    let mut results = Vec::new();
    let claimed_before = warm.api.pool_claimed().await?;

    // Create. Each scenario starts with the warm pool full and nothing
    // booting in the background.
    let mut s_warm = Samples::new("sandbox create (warm pool)");
    let mut s_cold = Samples::new("sandbox create (cold)");
    for i in 0..n + w {
        warm.api.wait_pool_ready().await?;
        let t = Instant::now();
        let id = warm.api.create().await?;
        let d_warm = t.elapsed();
        warm.api.kill(&id).await?;
        warm.api.wait_pool_ready().await?;

        let t = Instant::now();
        let id = cold.api.create().await?;
        let d_cold = t.elapsed();
        cold.api.kill(&id).await?;

        let (r, id) = baseline.run_detached(i)?;
        baseline.delete(&id)?;
        if i >= w {
            s_warm.push(d_warm, r);
            s_cold.push(d_cold, r);
        }
    }
    results.push(s_warm);
    results.push(s_cold);

    // Create → first output.
    let mut s_warm = Samples::new("create → first output (warm pool)");
    let mut s_cold = Samples::new("create → first output (cold)");
    for i in 0..n + w {
        warm.api.wait_pool_ready().await?;
        let t = Instant::now();
        let id = warm.api.create().await?;
        first_output(&warm.front, Some(&id), &["echo", "hi"]).await?;
        let d_warm = t.elapsed();
        warm.api.kill(&id).await?;
        warm.api.wait_pool_ready().await?;

        let t = Instant::now();
        let id = cold.api.create().await?;
        first_output(&cold.front, Some(&id), &["echo", "hi"]).await?;
        let d_cold = t.elapsed();
        cold.api.kill(&id).await?;

        let r = baseline.run_first_output(i)?;
        if i >= w {
            s_warm.push(d_warm, r);
            s_cold.push(d_cold, r);
        }
    }
    results.push(s_warm);
    results.push(s_cold);
    let claims = warm.api.pool_claimed().await? - claimed_before;
    let warm_creates = 2 * (n + w);

    // Exec round-trip on a live sandbox.
    warm.api.wait_pool_ready().await?;
    let id = warm.api.create().await?;
    let (_, runc_id) = baseline.run_detached(10_000)?;
    let socket = warm
        .data_dir
        .join("sandboxes")
        .join(&id)
        .join("hutch")
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
        round_trip(&warm.front, Some(&id), &["/bin/true"]).await?;
        let d_front = t.elapsed();
        let t = Instant::now();
        round_trip(&direct, None, &["/bin/true"]).await?;
        let d_direct = t.elapsed();
        let r = baseline.exec(&runc_id, &["/bin/true"])?;
        if i >= w {
            front_s.push(d_front, r);
            direct_s.push(d_direct, r);
        }
    }
    results.push(front_s);
    results.push(direct_s);

    // Idle memory: a claimed sandbox, a pooled one, a runc container.
    warm.api.wait_pool_ready().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hutch_mem = Memory::of_sandbox(&warm.data_dir, &id)?;
    let pooled = std::fs::read_dir(warm.data_dir.join("sandboxes"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| *name != id)
        .ok_or_else(|| anyhow!("no pooled sandbox found"))?;
    let pooled_mem = Memory::of_sandbox(&warm.data_dir, &pooled)?;
    let runc_mem = Memory::of_container(&baseline.root, &runc_id, &runc_id)?;
    baseline.delete(&runc_id)?;
    warm.api.kill(&id).await?;

    print_report(
        &results,
        n,
        &[
            ("hutch sandbox (agent as init)", &hutch_mem),
            ("hutch pooled sandbox (unclaimed)", &pooled_mem),
            ("runc container (sleep)", &runc_mem),
        ],
    );
    println!("\nWarm-pool creates served from the pool: {claims} of {warm_creates}");

    // Template builds: the same Dockerfile with every step run
    // (`--no-cache`) and unchanged (every layer from the cache).
    let builds = n.clamp(3, 10);
    let context = build_context()?;
    let mut uncached = Vec::new();
    let mut cached = Vec::new();
    cold.api.build(BENCH_DOCKERFILE, &context, true).await?;
    for _ in 0..builds {
        uncached.push(cold.api.build(BENCH_DOCKERFILE, &context, true).await?);
        cached.push(cold.api.build(BENCH_DOCKERFILE, &context, false).await?);
    }
    println!(
        "\nTemplate build ({builds} runs each; Dockerfile: {} steps, {} RUN)",
        BENCH_DOCKERFILE.lines().count() - 1,
        BENCH_DOCKERFILE.matches("RUN").count()
    );
    println!("{:<34} {:>10} {:>10}", "", "p50 ms", "p95 ms");
    for (name, v) in [
        ("every step run (--no-cache)", &uncached),
        ("unchanged rebuild (cached)", &cached),
    ] {
        println!(
            "{name:<34} {:>10} {:>10}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 95.0))
        );
    }

    drop(baseline);
    sdk_scenarios(args, tmp, warm).await
}

/// A template's layer directories in a server's layer store, lowest first.
fn layer_dirs(data_dir: &Path, template: &serde_json::Value) -> anyhow::Result<Vec<PathBuf>> {
    Ok(template["layers"]
        .as_array()
        .ok_or_else(|| anyhow!("template has no layers"))?
        .iter()
        .map(|d| {
            let hex = d.as_str().unwrap_or_default().trim_start_matches("sha256:");
            data_dir.join("images").join("sha256").join(hex)
        })
        .collect())
}

/// Through the official Python SDK (`sdk_bench.py`), on a Debian template
/// served from the warm pool, against runc running the same commands the
/// SDK runs (`/bin/bash -l -c …`) on the same root file system.
async fn sdk_scenarios(args: &Args, tmp: &Path, warm: &Target) -> anyhow::Result<()> {
    let image = hutch_test_support::debian_image();
    let template = warm.api.import_as(&image, "bench-deb").await?;
    let baseline = RuncBaseline::new(
        tmp.join("runc-deb"),
        &layer_dirs(&warm.data_dir, &template)?,
    )?;
    let python = hutch_test_support::e2b_python(hutch_test_support::E2B_PYTHON_NEW);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk_bench.py");
    let n = args.iterations;
    let w = args.warmup;
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([n.to_string(), w.to_string(), "bench-deb".to_owned()])
        .env("E2B_API_URL", &warm.api.base)
        .env("E2B_SANDBOX_URL", &warm.api.base)
        .env("E2B_API_KEY", &warm.api.key)
        .env_remove("E2B_VALIDATE_API_KEY")
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .output()
        .await
        .context("running the SDK benchmark")?;
    if !out.status.success() {
        bail!(
            "sdk_bench.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let samples: std::collections::HashMap<String, Vec<f64>> =
        serde_json::from_slice(&out.stdout).context("parsing sdk_bench.py's output")?;
    let durations = |name: &str| -> Vec<Duration> {
        samples
            .get(name)
            .map(|v| v.iter().map(|s| Duration::from_secs_f64(*s)).collect())
            .unwrap_or_default()
    };

    let (_, runc_id) = baseline.run_detached_args(20_000, &["sleep", "100000"])?;
    let mut runc_lifecycle = Vec::new();
    let mut runc_exec = Vec::new();
    for i in 0..n + w {
        let r = baseline.run_to_exit(30_000 + i, &["/bin/bash", "-l", "-c", "echo hi"])?;
        let e = baseline.exec(&runc_id, &["/bin/bash", "-l", "-c", "true"])?;
        if i >= w {
            runc_lifecycle.push(r);
            runc_exec.push(e);
        }
    }
    baseline.delete(&runc_id)?;

    let lifecycle = durations("create_run_kill");
    let run_true = durations("run_true");
    let raw = durations("raw_health");
    let raw_start = durations("raw_start");
    println!(
        "\nThrough the official Python SDK (e2b {}), Debian template, warm pool of 1 ({n} iterations)",
        hutch_test_support::E2B_PYTHON_NEW
    );
    println!(
        "{:<46} {:>8} {:>8} {:>8}   {:<34} {:>8} {:>7}",
        "hutch", "p50 ms", "p95 ms", "p99 ms", "baseline", "p50 ms", "ratio"
    );
    let row = |name: &str, h: &[Duration], base_name: &str, b: &[Duration]| {
        let hp = percentile(h, 50.0);
        let bp = percentile(b, 50.0);
        println!(
            "{name:<46} {:>8} {:>8} {:>8}   {base_name:<34} {:>8} {:>7.2}",
            ms(hp),
            ms(percentile(h, 95.0)),
            ms(percentile(h, 99.0)),
            ms(bp),
            hp.as_secs_f64() / bp.as_secs_f64()
        );
    };
    row(
        "create → commands.run(\"echo hi\") → kill",
        &lifecycle,
        "runc run bash -l -c 'echo hi' + delete",
        &runc_lifecycle,
    );
    row(
        "commands.run(\"true\") on a live sandbox",
        &run_true,
        "runc exec bash -l -c true",
        &runc_exec,
    );
    row(
        "commands.run(\"true\") on a live sandbox",
        &run_true,
        "the same Start request by hand",
        &raw_start,
    );
    let sdk_cost = percentile(&run_true, 50.0).saturating_sub(percentile(&raw_start, 50.0));
    println!(
        "  what the SDK adds to the request: {} ms (p50)",
        ms(sdk_cost)
    );
    for (name, samples) in [
        ("the same Start request by hand (keep-alive)", &raw_start),
        ("raw GET /health via the front door (keep-alive)", &raw),
    ] {
        println!(
            "{name:<46} {:>8} {:>8} {:>8}",
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 95.0)),
            ms(percentile(samples, 99.0))
        );
    }
    Ok(())
}

/// The Dockerfile the build benchmark builds on the busybox image.
const BENCH_DOCKERFILE: &str = "FROM bench
ENV APP_HOME=/srv/app
RUN for i in $(seq 1 200); do echo $i > /tmp/file$i; done
COPY files/ /srv/app/
WORKDIR /srv/app
USER user
RUN ls > /tmp/listing.txt
";

/// A build context with 100 small files under `files/`.
fn build_context() -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..100 {
        let data = format!("file {i}\n").repeat(64);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("files/f{i}.txt"), data.as_bytes())?;
    }
    Ok(b.into_inner()?)
}

impl Samples {
    fn new(name: &'static str) -> Samples {
        Samples {
            name,
            hutch: Vec::new(),
            runc: Vec::new(),
        }
    }

    fn push(&mut self, hutch: Duration, runc: Duration) {
        self.hutch.push(hutch);
        self.runc.push(runc);
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

fn print_report(results: &[Samples], n: usize, memory: &[(&str, &Memory)]) {
    println!("Hutch vs plain runc, {n} iterations each (milliseconds)\n");
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "scenario", "hutch p50", "hutch p95", "runc p50", "runc p95", "ratio"
    );
    for s in results {
        let (h50, r50) = (percentile(&s.hutch, 50.0), percentile(&s.runc, 50.0));
        println!(
            "{:<36} {:>10} {:>10} {:>10} {:>10} {:>7.2}",
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
        "{:<36} {:>10} {:>16} {:>16}",
        "", "init RSS", "cgroup rss+kmem", "cgroup usage"
    );
    for (name, m) in memory {
        println!(
            "{:<36} {:>10} {:>16} {:>16}",
            name,
            m.init_rss_kib,
            m.cgroup_rss_kib + m.cgroup_kmem_kib,
            m.cgroup_usage_kib
        );
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// Waits until `n` nodes have joined the control plane (`GET
    /// /hutch/v1/nodes`).
    async fn wait_for_nodes(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes: Vec<serde_json::Value> = self
                .http
                .get(format!("{}/hutch/v1/nodes", self.base))
                .header("x-api-key", &self.key)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if nodes.iter().filter(|n| n["state"] == "alive").count() >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{n} node(s) did not join in 30 s: {nodes:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn import(&self, layout: &Path) -> anyhow::Result<serde_json::Value> {
        self.import_as(layout, "bench").await
    }

    async fn import_as(&self, layout: &Path, name: &str) -> anyhow::Result<serde_json::Value> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.append_dir_all(".", layout)?;
        let body = builder.into_inner()?;
        let resp = self
            .http
            .post(format!("{}/hutch/v1/templates?name={name}", self.base))
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

    /// Builds template `bench-build` from `dockerfile` and `context` (a
    /// tar); the time until the server reports it done.
    async fn build(
        &self,
        dockerfile: &str,
        context: &[u8],
        no_cache: bool,
    ) -> anyhow::Result<Duration> {
        let spec = serde_json::json!({
            "name": "bench-build",
            "dockerfile": dockerfile,
            "noCache": no_cache,
        });
        let t = Instant::now();
        let resp = self
            .http
            .post(format!("{}/hutch/v1/builds", self.base))
            .query(&[("spec", spec.to_string())])
            .header("x-api-key", &self.key)
            .body(context.to_vec())
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        let d = t.elapsed();
        if !status.is_success() {
            bail!("build: {status} {body}");
        }
        let last = body.lines().last().unwrap_or_default();
        let last: serde_json::Value = serde_json::from_str(last)?;
        if last["type"] != "done" {
            bail!("build failed: {last}");
        }
        Ok(d)
    }

    async fn create(&self) -> anyhow::Result<String> {
        self.create_from("bench").await
    }

    async fn create_from(&self, template: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(format!("{}/v2/sandboxes", self.base))
            .header("x-api-key", &self.key)
            .json(&serde_json::json!({"templateID": template, "timeout": 600}))
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

    /// `GET /hutch/v1/pool` of the `bench` template: (ready, claimed).
    async fn pool(&self) -> anyhow::Result<(u64, u64)> {
        let resp = self
            .http
            .get(format!("{}/hutch/v1/pool", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await?;
        let json: serde_json::Value = resp.json().await?;
        let t = json["templates"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["alias"] == "bench"))
            .ok_or_else(|| anyhow!("no pool entry for the bench template in {json}"))?;
        Ok((
            t["ready"].as_u64().unwrap_or(0),
            t["claimed"].as_u64().unwrap_or(0),
        ))
    }

    async fn pool_claimed(&self) -> anyhow::Result<usize> {
        Ok(usize::try_from(self.pool().await?.1)?)
    }

    /// Waits until a pooled sandbox is ready (so none is booting either).
    async fn wait_pool_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.pool().await?.0 == 0 {
            if Instant::now() > deadline {
                bail!("the warm pool did not fill in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
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
        self.run_detached_args(i, &["sleep", "100000"])
    }

    /// `runc run --detach` of `args`; the time until runc returns.
    fn run_detached_args(&self, i: usize, args: &[&str]) -> anyhow::Result<(Duration, String)> {
        let bundle = self.bundle(&args.join("-").replace('/', "_"), args)?;
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

    /// `runc run` of `args` until it exits, then `runc delete`: a container's
    /// whole life.
    fn run_to_exit(&self, i: usize, args: &[&str]) -> anyhow::Result<Duration> {
        let bundle = self.bundle(&format!("once-{}", args.len()), args)?;
        let id = format!("bench-x{i}");
        let t = Instant::now();
        check(
            self.runc()
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "runc run",
        )?;
        self.delete(&id)?;
        Ok(t.elapsed())
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
        // Where the init process really is (the host's view of its memory
        // cgroup), falling back to the expected path.
        let actual = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    controllers
                        .split(',')
                        .any(|c| c == "memory")
                        .then(|| path.trim_start_matches('/').to_owned())
                })
            })
            .filter(|p| !p.is_empty());
        let cg = Path::new("/sys/fs/cgroup/memory").join(actual.as_deref().unwrap_or(cgroup));
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
