//! A sandbox's resource usage (`GET /sandboxes/{id}/metrics`), read from
//! its cgroups and its disk's file system.
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
//!   `statvfs` of the disk's file system; `diskTotal` that file system's
//!   size, the sandbox's `diskSizeMB` limit. Nothing inside the sandbox's
//!   tree is walked, so nothing the sandbox controls (symlinks swapped in
//!   while the host walks) is ever followed, and the cost does not grow
//!   with the number of files.
//!
//! E2B returns a series of samples taken every few seconds; Hutch keeps no
//! history and returns one sample, taken when asked.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ApiError;

/// How far apart the two CPU readings are.
pub(crate) const CPU_WINDOW: Duration = Duration::from_millis(100);

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

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
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// The cgroup, relative to each hierarchy's root (`hutch/<id>`).
    pub cgroup: String,
    /// The mountpoint of its disk.
    pub disk: PathBuf,
    /// Reported `cpuCount`.
    pub cpu_count: u32,
}

/// Takes one sample (about [`CPU_WINDOW`]).
pub(crate) async fn sample(src: Sources) -> Result<SandboxMetric, ApiError> {
    let layout = Layout::detect(Path::new(CGROUP_ROOT));
    let disk_dir = src.disk.clone();
    let disk = tokio::task::spawn_blocking(move || disk_usage(&disk_dir));
    let cpu_before = layout.cpu_usage_ns(&src.cgroup);
    let started = Instant::now();
    tokio::time::sleep(CPU_WINDOW).await;
    let cpu_after = layout.cpu_usage_ns(&src.cgroup);
    let elapsed = started.elapsed();
    let (cpu_before, cpu_after) = match (cpu_before, cpu_after) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Err(ApiError::internal(format!(
                "cannot read the CPU usage of cgroup {}: {e}",
                src.cgroup
            )));
        }
    };
    let memory = layout.memory(&src.cgroup).map_err(|e| {
        ApiError::internal(format!(
            "cannot read the memory usage of cgroup {}: {e}",
            src.cgroup
        ))
    })?;
    let (disk_used, disk_total) = disk
        .await
        .map_err(|e| ApiError::internal(format!("disk usage task failed: {e}")))?
        .map_err(|e| {
            ApiError::internal(format!(
                "cannot measure the disk usage of {}: {e}",
                src.disk.display()
            ))
        })?;
    let now = crate::time::now_ms();
    Ok(SandboxMetric {
        timestamp: crate::time::rfc3339(now),
        timestamp_unix: now.div_euclid(1000),
        cpu_count: src.cpu_count,
        cpu_used_pct: cpu_percent(cpu_after.saturating_sub(cpu_before), elapsed, src.cpu_count),
        mem_used: memory.usage.saturating_sub(memory.cache),
        mem_total: memory.limit.min(host_memory().unwrap_or(u64::MAX)),
        mem_cache: memory.cache,
        disk_used,
        disk_total,
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

/// How the host's cgroups are mounted.
#[derive(Debug, Clone)]
enum Layout {
    /// One hierarchy per controller (`ROOT/memory`, `ROOT/cpuacct`, …).
    V1(PathBuf),
    /// The unified hierarchy at `ROOT`.
    V2(PathBuf),
}

/// Memory figures, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    usage: u64,
    limit: u64,
    cache: u64,
}

impl Layout {
    fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::V2(root.to_path_buf())
        } else {
            Layout::V1(root.to_path_buf())
        }
    }

    /// CPU time used by the cgroup so far, ns.
    fn cpu_usage_ns(&self, cgroup: &str) -> std::io::Result<u64> {
        match self {
            Layout::V1(root) => {
                let dir = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                    .iter()
                    .map(|c| root.join(c).join(cgroup))
                    .find(|d| d.is_dir())
                    .unwrap_or_else(|| root.join("cpuacct").join(cgroup));
                read_u64(&dir.join("cpuacct.usage"))
            }
            Layout::V2(root) => {
                let stat = std::fs::read_to_string(root.join(cgroup).join("cpu.stat"))?;
                stat_field(&stat, "usage_usec")
                    .map(|us| us.saturating_mul(1000))
                    .ok_or_else(|| invalid("cpu.stat has no usage_usec"))
            }
        }
    }

    fn memory(&self, cgroup: &str) -> std::io::Result<Memory> {
        match self {
            Layout::V1(root) => {
                let dir = root.join("memory").join(cgroup);
                let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
                Ok(Memory {
                    usage: read_u64(&dir.join("memory.usage_in_bytes"))?,
                    limit: read_u64(&dir.join("memory.limit_in_bytes"))?,
                    cache: stat_field(&stat, "total_cache")
                        .or_else(|| stat_field(&stat, "cache"))
                        .unwrap_or(0),
                })
            }
            Layout::V2(root) => {
                let dir = root.join(cgroup);
                let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
                let limit = std::fs::read_to_string(dir.join("memory.max"))?;
                let limit = match limit.trim() {
                    "max" => u64::MAX,
                    n => n
                        .parse()
                        .map_err(|_| invalid("memory.max is not a number"))?,
                };
                Ok(Memory {
                    usage: read_u64(&dir.join("memory.current"))?,
                    limit,
                    cache: stat_field(&stat, "file").unwrap_or(0),
                })
            }
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn read_u64(path: &Path) -> std::io::Result<u64> {
    std::fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|_| invalid(&format!("{} is not a number", path.display())))
}

/// `name value` lines (`memory.stat`, `cpu.stat`) → the value of `name`.
fn stat_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
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

/// Bytes in use on the file system mounted at `mountpoint`, and its size.
fn disk_usage(mountpoint: &Path) -> std::io::Result<(u64, u64)> {
    let fs = rustix::fs::statvfs(mountpoint).map_err(std::io::Error::from)?;
    let used = fs.f_blocks.saturating_sub(fs.f_bfree);
    Ok((
        used.saturating_mul(fs.f_frsize),
        fs.f_blocks.saturating_mul(fs.f_frsize),
    ))
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

    #[test]
    fn reads_stat_fields() {
        let stat = "cache 4096\nrss 100\ntotal_cache 8192\n";
        assert_eq!(stat_field(stat, "cache"), Some(4096));
        assert_eq!(stat_field(stat, "total_cache"), Some(8192));
        assert_eq!(stat_field(stat, "file"), None);
    }

    #[test]
    fn reads_v1_and_v2_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 = tmp.path().join("v1");
        let mem = v1.join("memory/hutch/x");
        let cpu = v1.join("cpu,cpuacct/hutch/x");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "5000\n").unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "9000\n").unwrap();
        std::fs::write(mem.join("memory.stat"), "cache 1000\nrss 4000\n").unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "123456\n").unwrap();
        let layout = Layout::detect(&v1);
        assert!(matches!(layout, Layout::V1(_)));
        assert_eq!(layout.cpu_usage_ns("hutch/x").unwrap(), 123_456);
        assert_eq!(
            layout.memory("hutch/x").unwrap(),
            Memory {
                usage: 5000,
                limit: 9000,
                cache: 1000
            }
        );

        let v2 = tmp.path().join("v2");
        let dir = v2.join("hutch/x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 250\nuser_usec 200\n").unwrap();
        std::fs::write(dir.join("memory.current"), "7000\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 5000\nfile 2000\n").unwrap();
        let layout = Layout::detect(&v2);
        assert!(matches!(layout, Layout::V2(_)));
        assert_eq!(layout.cpu_usage_ns("hutch/x").unwrap(), 250_000);
        assert_eq!(
            layout.memory("hutch/x").unwrap(),
            Memory {
                usage: 7000,
                limit: u64::MAX,
                cache: 2000
            }
        );
        assert!(layout.memory("hutch/missing").is_err());
    }

    #[test]
    fn disk_usage_grows_with_what_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (before, total) = disk_usage(tmp.path()).unwrap();
        assert!(total > 0 && before <= total);
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![1u8; 8 << 20]).unwrap();
        std::fs::File::open(&big).unwrap().sync_all().unwrap();
        let (after, _) = disk_usage(tmp.path()).unwrap();
        // Other writers share this file system: allow them half of it.
        assert!(after >= before + (4 << 20), "{before} → {after}");
    }
}
