//! The density benchmark: many idle sandboxes on one server.
//!
//! Creates `n` sandboxes one after another (cold creates: no warm pool),
//! reports the create latency of the first, middle and last 50, the host
//! memory each idle sandbox costs (from `/proc/meminfo` and from the
//! sandboxes' memory cgroups), then kills them all and checks, from the
//! kernel and the file system, that nothing is left on the host (mounts,
//! loop devices, network namespaces, interfaces, nftables set
//! entries, address claims, cgroups, runc state, sandbox directories, disk
//! under the data directory: see `host.rs`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::host::HostCheck;
use crate::{Target, ms, percentile};

/// Sandboxes in each reported bucket.
const BUCKET: usize = 50;

/// `MemAvailable` of `/proc/meminfo`, bytes.
fn mem_available() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable in /proc/meminfo")?;
    Ok(kib * 1024)
}

/// Memory charged to a sandbox's memory cgroup (v1 or v2), bytes.
fn cgroup_memory(id: &str) -> u64 {
    [
        format!("/sys/fs/cgroup/memory/hutch/{id}/memory.usage_in_bytes"),
        format!("/sys/fs/cgroup/hutch/{id}/memory.current"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or(0)
}

fn drop_caches() {
    // Only the clean page cache goes: the difference then shows memory
    // sandboxes hold, not files the creates happened to read.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Runs the benchmark with `n` sandboxes of template `bench` on `target`
/// (a server without a warm pool).
pub(crate) async fn run(target: &Target, n: usize) -> anyhow::Result<()> {
    if n < 2 * BUCKET {
        bail!("--density needs at least {} sandboxes", 2 * BUCKET);
    }
    let host = HostCheck::before(&target.data_dir);
    drop_caches();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mem_available()?;
    let mut ids = Vec::with_capacity(n);
    let mut creates = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let id = target
            .api
            .create()
            .await
            .with_context(|| format!("create #{}", i + 1))?;
        creates.push(t.elapsed());
        ids.push(id);
        if (i + 1) % 100 == 0 {
            eprintln!(
                "density: {} sandboxes after {:.0?} (last create {} ms)",
                i + 1,
                started.elapsed(),
                ms(creates[i])
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop_caches();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = mem_available()?;
    let cgroups: u64 = ids.iter().map(|id| cgroup_memory(id)).sum();

    let mid = n / 2;
    let buckets = [(1, BUCKET), (mid - BUCKET + 1, mid), (n - BUCKET + 1, n)];
    println!("\nDensity: {n} idle sandboxes, created one after another (no warm pool)\n");
    println!(
        "{:<24} {:>10} {:>10} {:>10}",
        "creates", "p50 ms", "p95 ms", "p99 ms"
    );
    let mut p50s = Vec::new();
    for (from, to) in buckets {
        let slice = &creates[from - 1..to];
        let p50 = percentile(slice, 50.0);
        p50s.push(p50);
        println!(
            "{:<24} {:>10} {:>10} {:>10}",
            format!("#{from}–#{to}"),
            ms(p50),
            ms(percentile(slice, 95.0)),
            ms(percentile(slice, 99.0))
        );
    }
    println!(
        "\nlast bucket p50 / first bucket p50: {:.2}",
        p50s[2].as_secs_f64() / p50s[0].as_secs_f64()
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "host memory per idle sandbox: {:.2} MiB (MemAvailable {:.0} → {:.0} MiB); charged to its memory cgroup: {:.2} MiB",
        mib(before.saturating_sub(after)) / n as f64,
        mib(before),
        mib(after),
        mib(cgroups) / n as f64
    );

    let per_sandbox = cgroups / n as u64;

    let t = Instant::now();
    let mut kills = Vec::with_capacity(n);
    for id in &ids {
        let k = Instant::now();
        target.api.kill(id).await?;
        kills.push(k.elapsed());
    }
    println!(
        "teardown: {n} kills in {:.1?} (p50 {} ms, p99 {} ms)",
        t.elapsed(),
        ms(percentile(&kills, 50.0)),
        ms(percentile(&kills, 99.0))
    );
    host.leftovers(&ids).await?;
    if per_sandbox > MEMORY_BUDGET {
        bail!(
            "an idle sandbox is charged {:.2} MiB, over the budget of {:.0} MiB",
            mib(per_sandbox),
            mib(MEMORY_BUDGET)
        );
    }
    Ok(())
}

/// Host memory an idle sandbox may cost (charged to its cgroup).
const MEMORY_BUDGET: u64 = 8 * 1024 * 1024;
