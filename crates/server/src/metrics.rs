//! A sandbox's resource usage (`GET /sandboxes/{id}/metrics`), read from
//! its cgroups and its disk's file system.
//!
//! The figures come from the sandbox's node ([`Node::usage`]), which knows
//! the host's cgroup layout and where the sandbox's disk is.
//!
//! * **CPU**: the cgroup's CPU time (`cpuacct.usage` on cgroup v1,
//!   `usage_usec` of `cpu.stat` on v2) read twice [`CPU_WINDOW`] apart;
//!   `cpuUsedPct` is the share of all `cpuCount` CPUs it used meanwhile
//!   (0–100).
//! * **Memory**: `memUsed` is the cgroup's usage without its page cache
//!   (`memory.usage_in_bytes` − `cache` of `memory.stat` on v1,
//!   `memory.current` − `file` on v2), `memCache` that cache, `memTotal` the
//!   cgroup's limit (or the host's memory when lower).
//! * **Disk**: `diskUsed` is what the sandbox wrote: the blocks in use on
//!   its own disk (its writable layer and its console log), from one
//!   `statvfs` of the disk's file system (`Runtime::disk_usage`: nothing in
//!   the sandbox's tree is walked); `diskTotal` that file system's size,
//!   the sandbox's `diskSizeMB` limit.
//!
//! E2B returns a series of samples taken every few seconds; Hutch keeps no
//! history and returns one sample, taken when asked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::node::{Node, NodeError};

/// How far apart the two CPU readings are.
pub(crate) const CPU_WINDOW: Duration = Duration::from_millis(100);

/// One sample, as E2B's `SandboxMetric`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// RFC 3339.
    pub timestamp: String,
    /// Unix seconds.
    pub timestamp_unix: i64,
    /// CPUs the sandbox may use.
    pub cpu_count: u32,
    /// Share of those CPUs used, 0–100.
    pub cpu_used_pct: f64,
    /// Memory used, without page cache, bytes.
    pub mem_used: u64,
    /// Memory the sandbox may use, bytes.
    pub mem_total: u64,
    /// Page cache charged to the sandbox, bytes.
    pub mem_cache: u64,
    /// Bytes the sandbox wrote to its root file system.
    pub disk_used: u64,
    /// Size of the file system holding it, bytes.
    pub disk_total: u64,
}

/// Where one sandbox's figures are read.
#[derive(Clone)]
pub(crate) struct Sources {
    /// The node running it.
    pub node: Arc<dyn Node>,
    /// The sandbox.
    pub id: String,
    /// Reported `cpuCount`.
    pub cpu_count: u32,
}

/// Takes one sample (about [`CPU_WINDOW`]), or says why it cannot.
pub(crate) async fn sample(src: Sources) -> Result<SandboxMetric, String> {
    let failed = |e: NodeError| format!("cannot measure sandbox {}: {e}", src.id);
    let before = src.node.usage(&src.id).await.map_err(failed)?;
    let started = Instant::now();
    tokio::time::sleep(CPU_WINDOW).await;
    let after = src.node.usage(&src.id).await.map_err(failed)?;
    let elapsed = started.elapsed();
    let now = crate::time::now_ms();
    Ok(SandboxMetric {
        timestamp: crate::time::rfc3339(now),
        timestamp_unix: now.div_euclid(1000),
        cpu_count: src.cpu_count,
        cpu_used_pct: cpu_percent(
            after.cgroup.cpu_ns.saturating_sub(before.cgroup.cpu_ns),
            elapsed,
            src.cpu_count,
        ),
        mem_used: after.cgroup.memory.saturating_sub(after.cgroup.cache),
        mem_total: after
            .cgroup
            .memory_limit
            .min(host_memory().unwrap_or(u64::MAX)),
        mem_cache: after.cgroup.cache,
        disk_used: after.disk_used,
        disk_total: after.disk_total,
    })
}

/// CPU time `used_ns` over `elapsed` on `cpus` CPUs, as a percentage of
/// all of them (two decimals, at most 100).
fn cpu_percent(used_ns: u64, elapsed: Duration, cpus: u32) -> f64 {
    let capacity = elapsed.as_nanos() as f64 * f64::from(cpus.max(1));
    if capacity <= 0.0 {
        return 0.0;
    }
    let pct = (used_ns as f64 / capacity * 100.0).clamp(0.0, 100.0);
    (pct * 100.0).round() / 100.0
}

/// The host's memory, bytes.
fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_a_share_of_all_cpus() {
        let window = Duration::from_millis(100);
        assert_eq!(cpu_percent(0, window, 2), 0.0);
        assert_eq!(cpu_percent(100_000_000, window, 2), 50.0);
        assert_eq!(cpu_percent(50_000_000, window, 1), 50.0);
        assert_eq!(cpu_percent(900_000_000, window, 2), 100.0);
        assert_eq!(cpu_percent(1, Duration::ZERO, 2), 0.0);
    }
}
