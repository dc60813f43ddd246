//! What a sandbox may use, reported as `cpuCount`, `memoryMB` and
//! `diskSizeMB`: the runtime's memory limit (or the host's memory, if
//! smaller); the host's CPUs and the data directory's disk, which sandboxes
//! share without limits of their own.

use std::path::Path;

/// Host resources, measured once at startup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostInfo {
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_size_mb: u64,
}

impl HostInfo {
    /// Measures the host; `data_dir` is where sandbox files live.
    pub fn measure(data_dir: &Path) -> HostInfo {
        let cpu_count = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb / 1024)
            .unwrap_or(u64::MAX);
        let limit_mb = u64::try_from(hutch_runtime::spec::Limits::default().memory_bytes)
            .map(|b| b / (1024 * 1024))
            .unwrap_or(u64::MAX);
        let memory_mb = memory_mb.min(limit_mb);
        let disk_size_mb = rustix::fs::statvfs(data_dir)
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize) / (1024 * 1024))
            .unwrap_or(0);
        HostInfo {
            cpu_count,
            memory_mb,
            disk_size_mb,
        }
    }
}
