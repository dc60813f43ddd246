//! Per-sandbox resource limits: where a sandbox's CPU, memory, disk and
//! pids limits come from, and the server's maxima.
//!
//! A sandbox's limits are, field by field, the first of:
//!
//! 1. what its create asks for (`cpuCount`, `memoryMB`, `diskSizeMB`,
//!    `hutchPids`), each checked against the server's maximum
//!    ([`LimitMaxima`], `hutch serve --max-*`) and the runtime's minimum —
//!    a value outside them is a 400 naming the field, the value and the
//!    bound;
//! 2. the template's `limits` ([`hutch_image::TemplateLimits`]), if it sets
//!    the field (a template value above the maximum is a 400 too);
//! 3. Hutch's default ([`hutch_runtime::spec::Limits::default`]: 2 CPUs,
//!    512 MiB, 2 GiB of disk, 1024 pids), lowered to the maximum if the
//!    server's maximum is below it (e.g. `--max-cpus` on a one-CPU host).
//!
//! Steps 2 and 3 give the template's *default limits*: what its warm-pool
//! sandboxes are booted with. A create whose limits differ from them boots
//! a sandbox of its own instead of claiming one from the pool.

use hutch_image::TemplateLimits;
pub use hutch_runtime::spec::Limits;
use hutch_runtime::spec::{MIN_DISK_MB, MIN_MEMORY_BYTES, MIN_PIDS};

/// Default `--max-memory-mb`: 8 GiB.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 8 * 1024;

/// Default `--max-disk-mb`: 20 GiB.
pub const DEFAULT_MAX_DISK_MB: u64 = 20 * 1024;

/// Default `--max-pids`.
pub const DEFAULT_MAX_PIDS: u64 = 32_768;

const MIB: u64 = 1024 * 1024;

/// The largest limits a create (or a template) may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitMaxima {
    /// CPUs (`--max-cpus`; default: the host's CPUs).
    pub cpus: u32,
    /// Memory, MiB (`--max-memory-mb`; default [`DEFAULT_MAX_MEMORY_MB`]).
    pub memory_mb: u64,
    /// Disk, MiB (`--max-disk-mb`; default [`DEFAULT_MAX_DISK_MB`]).
    pub disk_mb: u64,
    /// Processes and threads (`--max-pids`; default [`DEFAULT_MAX_PIDS`]).
    pub pids: u64,
}

impl LimitMaxima {
    /// The defaults: every CPU of the host, 8 GiB, 20 GiB, 32768 pids.
    pub fn for_host() -> LimitMaxima {
        LimitMaxima {
            cpus: host_cpus(),
            memory_mb: DEFAULT_MAX_MEMORY_MB,
            disk_mb: DEFAULT_MAX_DISK_MB,
            pids: DEFAULT_MAX_PIDS,
        }
    }

    /// Checks that each maximum allows at least the runtime's minimum (a
    /// lower one would make every create fail).
    pub fn validate(&self) -> Result<(), String> {
        for (flag, value, min) in [
            ("--max-cpus", u64::from(self.cpus), 1),
            ("--max-memory-mb", self.memory_mb, min_memory_mb()),
            ("--max-disk-mb", self.disk_mb, MIN_DISK_MB),
            ("--max-pids", self.pids, min_pids()),
        ] {
            if value < min {
                return Err(format!("{flag} {value} is below the minimum of {min}"));
            }
        }
        Ok(())
    }
}

impl Default for LimitMaxima {
    fn default() -> Self {
        LimitMaxima::for_host()
    }
}

/// The host's CPUs (at least 1).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

fn min_memory_mb() -> u64 {
    u64::try_from(MIN_MEMORY_BYTES).unwrap_or(0) / MIB
}

fn min_pids() -> u64 {
    u64::try_from(MIN_PIDS).unwrap_or(0)
}

/// The limits a create asks for; `None` keeps the template's default.
/// Signed, so that a negative value is a clear 400 rather than a
/// deserialization error.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Requested {
    /// `cpuCount`.
    pub cpu_count: Option<i64>,
    /// `memoryMB`.
    pub memory_mb: Option<i64>,
    /// `diskSizeMB`.
    pub disk_size_mb: Option<i64>,
    /// `hutchPids`.
    pub pids: Option<i64>,
}

/// One limit's bounds, for messages.
struct Field {
    name: &'static str,
    min: u64,
    max: u64,
    flag: &'static str,
}

impl Field {
    fn cpus(max: &LimitMaxima) -> Field {
        Field {
            name: "cpuCount",
            min: 1,
            max: u64::from(max.cpus),
            flag: "--max-cpus",
        }
    }
    fn memory(max: &LimitMaxima) -> Field {
        Field {
            name: "memoryMB",
            min: min_memory_mb(),
            max: max.memory_mb,
            flag: "--max-memory-mb",
        }
    }
    fn disk(max: &LimitMaxima) -> Field {
        Field {
            name: "diskSizeMB",
            min: MIN_DISK_MB,
            max: max.disk_mb,
            flag: "--max-disk-mb",
        }
    }
    fn pids(max: &LimitMaxima) -> Field {
        Field {
            name: "hutchPids",
            min: min_pids(),
            max: max.pids,
            flag: "--max-pids",
        }
    }

    /// `value` if within bounds, else why not (`whose` names where the value
    /// came from, e.g. "template 'x': ").
    fn check(&self, whose: &str, value: i64) -> Result<u64, String> {
        let Ok(v) = u64::try_from(value) else {
            return Err(format!(
                "{whose}{} {value} is invalid: it must be at least {}",
                self.name, self.min
            ));
        };
        if v < self.min {
            return Err(format!(
                "{whose}{} {v} is invalid: it must be at least {}",
                self.name, self.min
            ));
        }
        if v > self.max {
            return Err(format!(
                "{whose}{} {v} is above the maximum of {} on this server (hutch serve {})",
                self.name, self.max, self.flag
            ));
        }
        Ok(v)
    }
}

/// Hutch's default limits, each lowered to the server's maximum.
pub(crate) fn server_defaults(max: &LimitMaxima) -> Limits {
    let d = Limits::default();
    let max_memory = i64::try_from(max.memory_mb.saturating_mul(MIB)).unwrap_or(i64::MAX);
    Limits {
        cpus: d.cpus.min(max.cpus),
        memory_bytes: d.memory_bytes.min(max_memory),
        pids: d.pids.min(i64::try_from(max.pids).unwrap_or(i64::MAX)),
        disk_mb: d.disk_mb.min(max.disk_mb),
    }
}

/// A template's default limits: [`server_defaults`] overridden by the
/// template's own. `Err` (a message naming the template) when the template
/// sets a value outside the server's bounds.
pub(crate) fn template_defaults(
    template_name: &str,
    template: Option<&TemplateLimits>,
    max: &LimitMaxima,
) -> Result<Limits, String> {
    let mut limits = server_defaults(max);
    let Some(t) = template else {
        return Ok(limits);
    };
    let whose = format!("template '{template_name}': ");
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(v) = t.cpu_count {
        limits.cpus = clamp_u32(Field::cpus(max).check(&whose, i64::from(v))?);
    }
    if let Some(v) = t.memory_mb {
        let mb = Field::memory(max).check(&whose, signed(v))?;
        limits.memory_bytes = signed(mb.saturating_mul(MIB));
    }
    if let Some(v) = t.disk_size_mb {
        limits.disk_mb = Field::disk(max).check(&whose, signed(v))?;
    }
    if let Some(v) = t.pids {
        limits.pids = signed(Field::pids(max).check(&whose, signed(v))?);
    }
    Ok(limits)
}

/// A create's limits: `defaults` (the template's) with what the request
/// sets; an error naming the field when a value is out of bounds.
pub(crate) fn resolve(
    defaults: Limits,
    req: &Requested,
    max: &LimitMaxima,
) -> Result<Limits, String> {
    let mut limits = defaults;
    if let Some(v) = req.cpu_count {
        limits.cpus = clamp_u32(Field::cpus(max).check("", v)?);
    }
    if let Some(v) = req.memory_mb {
        let mb = Field::memory(max).check("", v)?;
        limits.memory_bytes = i64::try_from(mb.saturating_mul(MIB)).unwrap_or(i64::MAX);
    }
    if let Some(v) = req.disk_size_mb {
        limits.disk_mb = Field::disk(max).check("", v)?;
    }
    if let Some(v) = req.pids {
        let pids = Field::pids(max).check("", v)?;
        limits.pids = i64::try_from(pids).unwrap_or(i64::MAX);
    }
    Ok(limits)
}

/// Memory limit in MiB, as reported (`memoryMB`).
pub(crate) fn memory_mb(limits: &Limits) -> u64 {
    u64::try_from(limits.memory_bytes).unwrap_or(0) / MIB
}

/// The limits a sandbox's row records (to boot it again after a
/// filesystem pause): its own, or `defaults` (its template's) for a row from
/// before they were recorded (no pids limit; the other figures were the
/// host's then).
pub(crate) fn recorded(row: &crate::db::SandboxRow, defaults: Limits) -> Limits {
    let Some(pids) = row.pids else {
        return defaults;
    };
    Limits {
        cpus: row.cpu_count,
        memory_bytes: i64::try_from(row.memory_mb.saturating_mul(MIB)).unwrap_or(i64::MAX),
        pids: i64::try_from(pids).unwrap_or(i64::MAX),
        disk_mb: row.disk_size_mb,
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max() -> LimitMaxima {
        LimitMaxima {
            cpus: 4,
            memory_mb: 8192,
            disk_mb: 20480,
            pids: 32768,
        }
    }

    #[test]
    fn defaults_are_documented_and_capped_by_the_maxima() {
        let d = server_defaults(&max());
        assert_eq!(
            (d.cpus, memory_mb(&d), d.disk_mb, d.pids),
            (2, 512, 2048, 1024)
        );
        let small = LimitMaxima {
            cpus: 1,
            memory_mb: 256,
            disk_mb: 1024,
            pids: 100,
        };
        let d = server_defaults(&small);
        assert_eq!(
            (d.cpus, memory_mb(&d), d.disk_mb, d.pids),
            (1, 256, 1024, 100)
        );
        assert!(d.validate().is_ok());
        let host = LimitMaxima::for_host();
        assert_eq!(host.cpus, host_cpus());
        assert_eq!(
            (host.memory_mb, host.disk_mb, host.pids),
            (8192, 20480, 32768)
        );
        assert!(host.validate().is_ok());
        assert!(
            LimitMaxima { disk_mb: 8, ..host }
                .validate()
                .unwrap_err()
                .contains("--max-disk-mb 8")
        );
    }

    #[test]
    fn templates_set_defaults_within_the_maxima() {
        let t = TemplateLimits {
            cpu_count: Some(1),
            memory_mb: Some(1024),
            disk_size_mb: None,
            pids: Some(64),
        };
        let d = template_defaults("py", Some(&t), &max()).unwrap();
        assert_eq!(
            (d.cpus, memory_mb(&d), d.disk_mb, d.pids),
            (1, 1024, 2048, 64)
        );
        assert_eq!(
            template_defaults("py", None, &max()).unwrap(),
            server_defaults(&max())
        );
        let greedy = TemplateLimits {
            cpu_count: Some(16),
            ..TemplateLimits::default()
        };
        let e = template_defaults("big", Some(&greedy), &max()).unwrap_err();
        assert_eq!(
            e,
            "template 'big': cpuCount 16 is above the maximum of 4 on this server (hutch serve --max-cpus)"
        );
    }

    #[test]
    fn requests_override_field_by_field() {
        let defaults = server_defaults(&max());
        let req = Requested {
            cpu_count: Some(3),
            disk_size_mb: Some(64),
            ..Requested::default()
        };
        let l = resolve(defaults, &req, &max()).unwrap();
        assert_eq!(
            (l.cpus, memory_mb(&l), l.disk_mb, l.pids),
            (3, 512, 64, 1024)
        );
        assert_eq!(
            resolve(defaults, &Requested::default(), &max()).unwrap(),
            defaults
        );
        let l = resolve(
            defaults,
            &Requested {
                memory_mb: Some(8192),
                pids: Some(32768),
                ..Requested::default()
            },
            &max(),
        )
        .unwrap();
        assert_eq!((memory_mb(&l), l.pids), (8192, 32768));
    }

    #[test]
    fn out_of_bounds_requests_name_the_field_value_and_bound() {
        let defaults = server_defaults(&max());
        let cases = [
            (
                Requested {
                    cpu_count: Some(5),
                    ..Requested::default()
                },
                "cpuCount 5 is above the maximum of 4 on this server (hutch serve --max-cpus)",
            ),
            (
                Requested {
                    memory_mb: Some(9000),
                    ..Requested::default()
                },
                "memoryMB 9000 is above the maximum of 8192",
            ),
            (
                Requested {
                    disk_size_mb: Some(30000),
                    ..Requested::default()
                },
                "diskSizeMB 30000 is above the maximum of 20480",
            ),
            (
                Requested {
                    pids: Some(40000),
                    ..Requested::default()
                },
                "hutchPids 40000 is above the maximum of 32768",
            ),
            (
                Requested {
                    cpu_count: Some(0),
                    ..Requested::default()
                },
                "cpuCount 0 is invalid: it must be at least 1",
            ),
            (
                Requested {
                    memory_mb: Some(-5),
                    ..Requested::default()
                },
                "memoryMB -5 is invalid: it must be at least 4",
            ),
            (
                Requested {
                    disk_size_mb: Some(1),
                    ..Requested::default()
                },
                "diskSizeMB 1 is invalid: it must be at least 16",
            ),
            (
                Requested {
                    pids: Some(0),
                    ..Requested::default()
                },
                "hutchPids 0 is invalid: it must be at least 16",
            ),
        ];
        for (req, needle) in cases {
            let e = resolve(defaults, &req, &max()).unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }
}
