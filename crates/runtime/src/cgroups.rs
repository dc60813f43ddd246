//! The host's cgroups, as the runtime finds them once at start: which
//! version, where each hierarchy is mounted, whether swap is accounted —
//! and what a sandbox's cgroup says about its CPU and memory.

use std::path::{Path, PathBuf};

/// How the host's cgroups are mounted (detected once, at
/// [`crate::Runtime::new`]).
#[derive(Debug, Clone)]
pub(crate) struct CgroupLayout {
    /// The root the hierarchies are under (`/sys/fs/cgroup`).
    root: PathBuf,
    /// cgroup v2 (the unified hierarchy at `root`), else v1 (one hierarchy
    /// per controller below `root`).
    v2: bool,
    /// Every cgroup hierarchy's mount point.
    pub mountpoints: Vec<PathBuf>,
    /// Whether the host accounts swap per memory cgroup
    /// (`memory.memsw.*` on v1, `memory.swap.max` on v2): only then can a
    /// spec limit swap.
    pub swap_accounting: bool,
}

/// How long a freeze or thaw may take before it counts as failed.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a sandbox's cgroup reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupUsage {
    /// CPU time used so far, ns.
    pub cpu_ns: u64,
    /// Memory charged, page cache included, bytes.
    pub memory: u64,
    /// Its memory limit, bytes (`u64::MAX`: none).
    pub memory_limit: u64,
    /// Page cache charged, bytes.
    pub cache: u64,
}

impl CgroupLayout {
    /// The host's layout.
    pub fn detect() -> CgroupLayout {
        CgroupLayout::at(
            Path::new("/sys/fs/cgroup"),
            crate::mounts::cgroup_mountpoints(),
        )
    }

    /// The layout of hierarchies under `root`, mounted at `mountpoints`.
    fn at(root: &Path, mountpoints: Vec<PathBuf>) -> CgroupLayout {
        let v2 = root.join("cgroup.controllers").exists();
        let swap_accounting = if v2 {
            // The file exists in every non-root cgroup when swap accounting
            // is on.
            std::fs::read_dir(root).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().join("memory.swap.max").exists())
            })
        } else {
            root.join("memory/memory.memsw.limit_in_bytes").exists()
        };
        CgroupLayout {
            root: root.to_path_buf(),
            v2,
            mountpoints,
            swap_accounting,
        }
    }

    /// What cgroup `cgroup` (relative to each hierarchy's root, as
    /// `hutch/<id>`) reports.
    pub fn usage(&self, cgroup: &str) -> std::io::Result<CgroupUsage> {
        if self.v2 {
            let dir = self.root.join(cgroup);
            let cpu = std::fs::read_to_string(dir.join("cpu.stat"))?;
            let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
            let limit = std::fs::read_to_string(dir.join("memory.max"))?;
            let memory_limit = match limit.trim() {
                "max" => u64::MAX,
                n => n
                    .parse()
                    .map_err(|_| invalid("memory.max is not a number"))?,
            };
            Ok(CgroupUsage {
                cpu_ns: stat_field(&cpu, "usage_usec")
                    .ok_or_else(|| invalid("cpu.stat has no usage_usec"))?
                    .saturating_mul(1000),
                memory: read_u64(&dir.join("memory.current"))?,
                memory_limit,
                cache: stat_field(&stat, "file").unwrap_or(0),
            })
        } else {
            let cpu = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                .iter()
                .map(|c| self.root.join(c).join(cgroup))
                .find(|d| d.is_dir())
                .unwrap_or_else(|| self.root.join("cpuacct").join(cgroup));
            let mem = self.root.join("memory").join(cgroup);
            let stat = std::fs::read_to_string(mem.join("memory.stat"))?;
            Ok(CgroupUsage {
                cpu_ns: read_u64(&cpu.join("cpuacct.usage"))?,
                memory: read_u64(&mem.join("memory.usage_in_bytes"))?,
                memory_limit: read_u64(&mem.join("memory.limit_in_bytes"))?,
                cache: stat_field(&stat, "total_cache")
                    .or_else(|| stat_field(&stat, "cache"))
                    .unwrap_or(0),
            })
        }
    }

    /// Freezes (or thaws) every process of cgroup `cgroup` and waits until
    /// the kernel reports it so: `freezer.state` on v1 (`FROZEN` once every
    /// task is stopped; `FREEZING` meanwhile), `cgroup.freeze` and the
    /// `frozen` line of `cgroup.events` on v2. The same writes `runc pause`
    /// and `runc resume` make, without starting runc: runc reads the state
    /// back from the same files. `NotFound` if the cgroup does not exist.
    pub fn set_frozen(&self, cgroup: &str, frozen: bool) -> std::io::Result<()> {
        let rel = cgroup.trim_start_matches('/');
        let (file, value) = match (self.v2, frozen) {
            (true, true) => (self.root.join(rel).join("cgroup.freeze"), "1"),
            (true, false) => (self.root.join(rel).join("cgroup.freeze"), "0"),
            (false, true) => (
                self.root.join("freezer").join(rel).join("freezer.state"),
                "FROZEN",
            ),
            (false, false) => (
                self.root.join("freezer").join(rel).join("freezer.state"),
                "THAWED",
            ),
        };
        let reached = || -> std::io::Result<bool> {
            if self.v2 {
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                let events = std::fs::read_to_string(self.root.join(rel).join("cgroup.events"))?;
                Ok(events.lines().any(|l| l == want))
            } else {
                Ok(std::fs::read_to_string(&file)?.trim() == value)
            }
        };
        let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            // Written again on every round, as runc does: a task forking
            // while the freeze began can leave the cgroup `FREEZING`.
            write_existing(&file, value)?;
            if reached()? {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                if frozen {
                    // Not left half frozen.
                    let _ = write_existing(&file, if self.v2 { "0" } else { "THAWED" });
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} did not become {value} within {FREEZE_TIMEOUT:?}",
                        file.display()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(10));
        }
    }

    /// Removes cgroup `cgroup`'s directories that runc left behind
    /// (normally none: `runc delete` removes them). Best effort.
    pub fn remove(&self, cgroup: &str) {
        let rel = cgroup.trim_start_matches('/');
        for mountpoint in &self.mountpoints {
            let dir = mountpoint.join(rel);
            match std::fs::remove_dir(&dir) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "removed leftover cgroup"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove cgroup"),
            }
        }
    }
}

/// Writes `value` to the existing file `path` (a cgroup file: never
/// created).
fn write_existing(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let layout = CgroupLayout::at(&v1, Vec::new());
        assert!(!layout.v2 && !layout.swap_accounting);
        assert_eq!(
            layout.usage("hutch/x").unwrap(),
            CgroupUsage {
                cpu_ns: 123_456,
                memory: 5000,
                memory_limit: 9000,
                cache: 1000
            }
        );
        std::fs::write(v1.join("memory/memory.memsw.limit_in_bytes"), "1\n").unwrap();
        assert!(CgroupLayout::at(&v1, Vec::new()).swap_accounting);

        let v2 = tmp.path().join("v2");
        let dir = v2.join("hutch/x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 250\nuser_usec 200\n").unwrap();
        std::fs::write(dir.join("memory.current"), "7000\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 5000\nfile 2000\n").unwrap();
        let layout = CgroupLayout::at(&v2, Vec::new());
        assert!(layout.v2);
        assert_eq!(
            layout.usage("hutch/x").unwrap(),
            CgroupUsage {
                cpu_ns: 250_000,
                memory: 7000,
                memory_limit: u64::MAX,
                cache: 2000
            }
        );
        assert!(layout.usage("hutch/missing").is_err());
    }

    #[test]
    fn removes_leftover_cgroups_in_every_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("hutch/x")).unwrap();
        std::fs::create_dir_all(b.join("hutch")).unwrap();
        let layout = CgroupLayout::at(tmp.path(), vec![a.clone(), b.clone()]);
        layout.remove("/hutch/x");
        assert!(!a.join("hutch/x").exists());
        assert!(a.join("hutch").exists());
    }
}
