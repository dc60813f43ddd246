//! `--load N`: N concurrent clients of one server through the official
//! Python SDK, `e2b` at the release the SDK tests pin, with its checks as
//! they are by default (the API key's included).
//!
//! `load_bench.py` runs the clients; this module starts nothing of its own
//! but the Python process, watches the host, reports, and checks the host
//! afterwards. Each client, `--rounds` times: creates a sandbox of the
//! Debian test image (Debian 12, bash, python3), runs `echo`, a command
//! that exits 3 (an expected `CommandExitException`, its exit code and
//! stderr checked), `seq 1 12000` (about 60 KB of output, compared in
//! full), writes 16 KiB of random bytes to a file, reads it back and
//! compares, lists its directory, kills the sandbox. A wrong answer is an
//! error like an exception; the benchmark exits non-zero if any occurred.
//!
//! The clients are asyncio tasks of one Python process (`AsyncSandbox`):
//! that is how one program drives many sandboxes at once with this SDK,
//! and it keeps the client's own cost to one interpreter — N threads of
//! the synchronous SDK would add N stacks and contend for the interpreter
//! lock on this 2-core host, and N processes would each pay the SDK's
//! import and their own connection pools. Latencies are the client's view:
//! they include waiting for the event loop, which all clients share.
//!
//! The server is started as `hutch serve` starts by default (warm pool of
//! one sandbox per template); nothing else needs raising for N = 200,
//! because nothing in Hutch caps the sandboxes of a key or team. What does
//! bound concurrency on one server:
//!
//! * the listener's connection limits, 8,192 at once and 2,048 per client
//!   address (`http::Limits`; every client here is 127.0.0.1): the SDK
//!   uses one connection per request in flight and at most 200 per address
//!   and pool (`E2B_MAX_CONNECTIONS`, left at its default: past it a
//!   request waits for a connection), far below either;
//! * the sandbox address pool, 10.200.0.0/16 in /30s: 16,384 sandboxes;
//! * host memory: a sandbox's memory limit (512 MiB by default) is a cap,
//!   not a reservation, and an idle Debian sandbox costs about 1 MiB of
//!   host memory (`--density`), so 200 busy ones fit in a few GiB;
//! * CPU: every boot, command and teardown shares the host's cores with the
//!   server and the clients, which is what the latencies show. Boots run
//!   at most `2 × CPUs` (at least 4) at once; the others wait their turn
//!   before they start, so that a boot's agent has its 10 s
//!   (`AGENT_BOOT_TIMEOUT`) to answer with the host's attention, whatever
//!   the burst.
//!
//! Peak sandboxes are reported twice: as the clients saw them (created
//! and not yet killed), and as directories under the data directory's
//! `sandboxes/`, sampled every 100 ms (booting, pooled and tearing-down ones
//! included). After the clients finish the server stops (destroying its
//! warm pool, and waiting for the teardowns of the killed sandboxes), then
//! the host must hold nothing of any sandbox (`host.rs`, the check
//! `--density` uses).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::host::HostCheck;
use crate::{Target, ms, percentile};

/// The template the clients create sandboxes of.
pub(crate) const TEMPLATE: &str = "bench";

/// What `load_bench.py` prints.
#[derive(serde::Deserialize)]
struct Report {
    wall_seconds: f64,
    peak_live: usize,
    rounds_ok: usize,
    operations: Vec<Operation>,
    ids: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Operation {
    name: String,
    latencies: Vec<f64>,
    count: usize,
    first: Vec<String>,
}

/// Runs `clients` clients for `rounds` rounds each against `target` (whose
/// template [`TEMPLATE`] is imported), stops the server and checks the
/// host.
pub(crate) async fn run(target: Target, clients: usize, rounds: usize) -> anyhow::Result<()> {
    let python = hutch_test_support::e2b_python(hutch_test_support::E2B_PYTHON_NEW);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("load_bench.py");
    let host = HostCheck::before(&target.data_dir);

    let stop = Arc::new(AtomicBool::new(false));
    let peak_dirs = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn(sample_sandbox_dirs(
        target.data_dir.join("sandboxes"),
        stop.clone(),
        peak_dirs.clone(),
    ));

    let started = Instant::now();
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([clients.to_string(), rounds.to_string(), TEMPLATE.to_owned()])
        .env("E2B_API_URL", &target.api.base)
        .env("E2B_SANDBOX_URL", &target.api.base)
        .env("E2B_API_KEY", &target.api.key)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The SDK's checks as they are by default, whatever the caller's
        // shell says.
        .env_remove("E2B_VALIDATE_API_KEY")
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_MAX_CONNECTIONS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        // Progress lines, and any traceback, as they come.
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting load_bench.py");
    let out = match out {
        Ok(child) => child
            .wait_with_output()
            .await
            .context("running load_bench.py"),
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    target.shutdown().await;

    let out = out?;
    if !out.status.success() {
        bail!(
            "load_bench.py failed ({}) after {took:.1?}: see its output above",
            out.status
        );
    }
    let report: Report =
        serde_json::from_slice(&out.stdout).context("parsing load_bench.py's output")?;
    let errors = report.print(clients, rounds, peak_dirs.load(Ordering::SeqCst));
    host.leftovers(&report.ids).await?;
    if errors > 0 {
        bail!("{errors} errors under load (first messages above)");
    }
    Ok(())
}

/// Keeps in `peak` the most entries `dir` held at once, sampled every
/// 100 ms until `stop`.
async fn sample_sandbox_dirs(
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        peak.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Report {
    /// Prints the table; the number of errors.
    fn print(&self, clients: usize, rounds: usize, peak_dirs: usize) -> usize {
        println!(
            "\nLoad: {clients} concurrent clients × {rounds} rounds, official Python SDK (e2b {}, AsyncSandbox, one process), Debian template, warm pool of 1\n",
            hutch_test_support::E2B_PYTHON_NEW
        );
        println!(
            "{:<18} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "operation", "count", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
        );
        let wall = self.wall_seconds;
        let mut errors = 0;
        let mut total = 0;
        for op in &self.operations {
            let samples: Vec<Duration> = op
                .latencies
                .iter()
                .map(|s| Duration::from_secs_f64(*s))
                .collect();
            let p = |q: f64| {
                if samples.is_empty() {
                    "-".to_owned()
                } else {
                    ms(percentile(&samples, q))
                }
            };
            println!(
                "{:<18} {:>6} {:>8.1} {:>9} {:>9} {:>9} {:>9} {:>7}",
                op.name,
                samples.len(),
                samples.len() as f64 / wall,
                p(50.0),
                p(90.0),
                p(99.0),
                p(100.0),
                op.count
            );
            errors += op.count;
            total += samples.len();
        }
        println!(
            "{:<18} {:>6} {:>8.1} {:>47}",
            "all operations",
            total,
            total as f64 / wall,
            errors
        );
        println!(
            "\nwall time: {wall:.1} s; rounds without an error: {} of {}",
            self.rounds_ok,
            clients * rounds
        );
        println!(
            "peak sandboxes: {} live at once as the clients saw them (created, not yet killed); {peak_dirs} sandbox directories on the host (booting, pooled, tearing down included)",
            self.peak_live
        );
        println!("errors: {errors}");
        for op in self.operations.iter().filter(|o| o.count > 0) {
            println!("  {} ({}):", op.name, op.count);
            for m in &op.first {
                println!("    {}", m.replace('\n', "\n      "));
            }
        }
        errors
    }
}
