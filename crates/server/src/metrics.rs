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
//! Every running sandbox is sampled every [`SAMPLE_INTERVAL`] for its whole
//! life ([`History`], filled by [`spawn_sampler`]); `GET
//! /sandboxes/{id}/metrics` returns the samples between `start` and `end`.
//! A sandbox keeps at most [`KEPT_SAMPLES`]: when that many are kept, the
//! older half is thinned to every other sample, so the series covers the
//! whole life, at a coarser step the older it is. Paused sandboxes are not
//! sampled. The history lives in the server's memory: a restart starts it
//! afresh, and it goes with the sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::node::{Node, NodeError, Usage};
use crate::state::AppState;

/// How often every running sandbox is sampled (E2B's step).
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept per sandbox, at most.
pub(crate) const KEPT_SAMPLES: usize = 720;

/// How far apart the two CPU readings are.
pub(crate) const CPU_WINDOW: Duration = Duration::from_millis(100);

/// One sample, as E2B's `SandboxMetric`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// One sample, as kept.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// Unix ms.
    at_ms: i64,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_cache: u64,
    disk_used: u64,
}

/// A sandbox's samples and what they are computed from.
#[derive(Debug, Clone)]
struct Series {
    points: Vec<Point>,
    /// The last reading: when, and the CPU time then.
    last: (Instant, u64),
    cpu_count: u32,
    mem_total: u64,
    disk_total: u64,
}

impl Series {
    fn metric(&self, p: &Point) -> SandboxMetric {
        SandboxMetric {
            timestamp: crate::time::rfc3339(p.at_ms),
            timestamp_unix: p.at_ms.div_euclid(1000),
            cpu_count: self.cpu_count,
            cpu_used_pct: p.cpu_used_pct,
            mem_used: p.mem_used,
            mem_total: self.mem_total,
            mem_cache: p.mem_cache,
            disk_used: p.disk_used,
            disk_total: self.disk_total,
        }
    }
}

/// The samples of every sandbox.
#[derive(Debug, Default)]
pub(crate) struct History {
    series: Mutex<HashMap<String, Series>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Series>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a reading of sandbox `id` (allowed `cpu_count` CPUs) taken at
    /// `at` (`now_ms` on the wall clock). The first reading of a sandbox is
    /// the base its first sample's CPU share is computed from.
    fn record(&self, id: &str, cpu_count: u32, usage: &Usage, at: Instant, now_ms: i64) {
        let mut all = self.lock();
        let Some(series) = all.get_mut(id) else {
            all.insert(
                id.to_owned(),
                Series {
                    points: Vec::new(),
                    last: (at, usage.cgroup.cpu_ns),
                    cpu_count,
                    mem_total: mem_total(usage),
                    disk_total: usage.disk_total,
                },
            );
            return;
        };
        let (then, cpu_then) = series.last;
        series.last = (at, usage.cgroup.cpu_ns);
        series.mem_total = mem_total(usage);
        series.disk_total = usage.disk_total;
        if series.points.len() >= KEPT_SAMPLES {
            thin(&mut series.points);
        }
        series.points.push(Point {
            at_ms: now_ms,
            cpu_used_pct: cpu_percent(
                usage.cgroup.cpu_ns.saturating_sub(cpu_then),
                at.saturating_duration_since(then),
                cpu_count,
            ),
            mem_used: usage.cgroup.memory.saturating_sub(usage.cgroup.cache),
            mem_cache: usage.cgroup.cache,
            disk_used: usage.disk_used,
        });
    }

    /// The samples of sandbox `id` from `start` to `end` (Unix seconds,
    /// both included; open when `None`), oldest first.
    pub(crate) fn range(
        &self,
        id: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Vec<SandboxMetric> {
        let all = self.lock();
        let Some(series) = all.get(id) else {
            return Vec::new();
        };
        series
            .points
            .iter()
            .filter(|p| {
                let s = p.at_ms.div_euclid(1000);
                start.is_none_or(|t| s >= t) && end.is_none_or(|t| s <= t)
            })
            .map(|p| series.metric(p))
            .collect()
    }

    /// The latest sample of sandbox `id`.
    pub(crate) fn latest(&self, id: &str) -> Option<SandboxMetric> {
        let all = self.lock();
        let series = all.get(id)?;
        series.points.last().map(|p| series.metric(p))
    }

    /// The CPU count recorded for sandbox `id`, once it has a series.
    fn cpu_count(&self, id: &str) -> Option<u32> {
        self.lock().get(id).map(|s| s.cpu_count)
    }

    /// Forgets every sandbox but those of `keep`.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }
}

/// Halves the resolution of the older half of `points`.
fn thin(points: &mut Vec<Point>) {
    let half = points.len() / 2;
    let older: Vec<Point> = points[..half].iter().step_by(2).copied().collect();
    points.splice(..half, older);
}

fn mem_total(usage: &Usage) -> u64 {
    usage
        .cgroup
        .memory_limit
        .min(host_memory().unwrap_or(u64::MAX))
}

/// Samples every running sandbox every [`SAMPLE_INTERVAL`] into
/// `st.metrics`, until the server stops.
pub(crate) fn spawn_sampler(st: Arc<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = st.reaper_stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            sample_all(&st).await;
        }
    });
}

/// One round of [`spawn_sampler`].
pub(crate) async fn sample_all(st: &AppState) {
    let running: Vec<String> = st
        .live()
        .iter()
        .filter(|(_, s)| s.paused.is_none() && s.agent_pid.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    for id in running {
        // Read from the store once per sandbox, not at every round.
        let cpu_count = match st.metrics.cpu_count(&id) {
            Some(c) => c,
            None => match st.db.get_sandbox(id.clone()).await {
                Ok(Some(row)) => row.cpu_count,
                _ => continue,
            },
        };
        // A sandbox killed meanwhile fails here, and is forgotten below.
        if let Ok(usage) = st.node.usage(&id).await {
            st.metrics.record(
                &id,
                cpu_count,
                &usage,
                Instant::now(),
                crate::time::now_ms(),
            );
        }
    }
    let live = st.live();
    st.metrics.retain(|id| live.contains_key(id));
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
        mem_total: mem_total(&after),
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

    fn usage(cpu_ns: u64, memory: u64) -> Usage {
        Usage {
            cgroup: hutch_runtime::CgroupUsage {
                cpu_ns,
                memory,
                memory_limit: 1 << 30,
                cache: 10,
            },
            disk_used: 7,
            disk_total: 100,
        }
    }

    #[test]
    fn a_history_is_a_series_over_a_range() {
        let h = History::default();
        let t0 = Instant::now();
        h.record("s", 2, &usage(0, 100), t0, 1_000_000);
        assert!(
            h.range("s", None, None).is_empty(),
            "the first reading is a base"
        );
        h.record(
            "s",
            2,
            &usage(1_000_000_000, 200),
            t0 + Duration::from_secs(1),
            1_001_000,
        );
        h.record(
            "s",
            2,
            &usage(1_000_000_000, 300),
            t0 + Duration::from_secs(2),
            1_002_000,
        );
        let all = h.range("s", None, None);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].cpu_used_pct, all[0].mem_used), (50.0, 190));
        assert_eq!((all[1].cpu_used_pct, all[1].mem_used), (0.0, 290));
        assert_eq!(
            (all[1].disk_used, all[1].disk_total, all[1].cpu_count),
            (7, 100, 2)
        );
        assert_eq!(all[1].timestamp_unix, 1002);
        assert_eq!(h.range("s", Some(1002), None).len(), 1);
        assert_eq!(h.range("s", None, Some(1001)).len(), 1);
        assert_eq!(h.range("s", Some(1003), None).len(), 0);
        assert_eq!(h.latest("s").unwrap().mem_used, 290);
        assert!(h.range("other", None, None).is_empty());
        h.retain(|_| false);
        assert!(h.latest("s").is_none());
    }

    #[test]
    fn a_long_history_is_thinned_from_its_old_end() {
        let h = History::default();
        let t0 = Instant::now();
        let n = KEPT_SAMPLES as i64 * 3;
        for i in 0..=n {
            let at = t0 + Duration::from_secs(i as u64);
            h.record("s", 1, &usage(0, 100), at, i * 1000);
        }
        let all = h.range("s", None, None);
        assert!(all.len() <= KEPT_SAMPLES, "{}", all.len());
        assert_eq!(
            all.first().unwrap().timestamp_unix,
            1,
            "the whole life is covered"
        );
        assert_eq!(all.last().unwrap().timestamp_unix, n);
        assert!(
            all.windows(2)
                .all(|w| w[0].timestamp_unix < w[1].timestamp_unix)
        );
        // The newest samples keep their full resolution.
        let tail: Vec<i64> = all[all.len() - 3..]
            .iter()
            .map(|m| m.timestamp_unix)
            .collect();
        assert_eq!(tail, [n - 2, n - 1, n]);
    }
}
