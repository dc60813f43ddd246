//! Counting, from the host, what the sandboxes of one Hutch data directory
//! hold — and removing the network objects a test server leaves behind.
//!
//! Everything is read from the kernel and the file system, never from
//! Hutch's own bookkeeping: mounts under the data directory (overlays,
//! network namespaces, disks), host interfaces, nftables set elements,
//! address claims, cgroup directories, runc state, sandbox state
//! directories and loop devices. Host-side network objects carry the data
//! directory's instance tag ([`hutch_runtime::network::instance_tag`]), so
//! servers of parallel tests never count each other's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hutch_runtime::network::{DEFAULT_RUN_DIR, INTERFACE_PREFIX, TABLE, instance_tag};

use crate::mounts::mounts_under;

/// What one data directory's sandboxes hold on the host, by kind; each list
/// names the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostResources {
    /// Mount points below `<data>/sandboxes` (overlays, disks, network
    /// namespaces; not the directory's own mount point).
    pub mounts: Vec<String>,
    /// Of those, network namespace bind mounts.
    pub netns: Vec<String>,
    /// Host-side sandbox interfaces (`hv<tag>…`).
    pub interfaces: Vec<String>,
    /// Elements of the firewall's sets keyed by this data directory's
    /// interfaces (`<set> <interface> . <address>`).
    pub nft_elements: Vec<String>,
    /// Address claims in the host-wide registry.
    pub address_claims: Vec<String>,
    /// Cgroup directories `<hierarchy>/hutch/<id>` of the ids asked about.
    pub cgroups: Vec<String>,
    /// Containers in `<data>/runc`.
    pub runc_state: Vec<String>,
    /// Directories in `<data>/sandboxes`.
    pub state_dirs: Vec<String>,
    /// Loop devices backed by files under the data directory.
    pub loop_devices: Vec<String>,
}

impl HostResources {
    /// Measures the data directory `data_dir`; cgroups are looked up for
    /// `ids` (sandbox ids cannot be told from other servers' otherwise).
    pub fn measure(data_dir: &Path, ids: &[String]) -> HostResources {
        let state_dir = state_dir(data_dir);
        let tag = instance_tag(&state_dir);
        let iface_prefix = format!("{INTERFACE_PREFIX}{tag}");

        // The state directory's own mount point is the server's, not a
        // sandbox's (see `hutch_runtime::Runtime::release_host_mounts`).
        let mounts: Vec<PathBuf> = if state_dir.exists() {
            let own = state_dir
                .canonicalize()
                .unwrap_or_else(|_| state_dir.clone());
            mounts_under(&state_dir)
                .into_iter()
                .filter(|m| *m != own)
                .collect()
        } else {
            Vec::new()
        };
        let netns = mounts
            .iter()
            .filter(|m| m.file_name().is_some_and(|n| n == "netns"))
            .map(|m| m.display().to_string())
            .collect();

        let interfaces = names_in(Path::new("/sys/class/net"))
            .into_iter()
            .filter(|n| n.starts_with(&iface_prefix))
            .collect();

        let nft_elements = nft_elements_of(&iface_prefix);

        let address_claims = claims_of(&tag)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();

        let mut cgroups = Vec::new();
        for hierarchy in cgroup_mountpoints() {
            for id in ids {
                let dir = hierarchy.join("hutch").join(id);
                if dir.exists() {
                    cgroups.push(dir.display().to_string());
                }
            }
        }

        let data = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let mut loop_devices = Vec::new();
        for dev in names_in(Path::new("/sys/block")) {
            if let Ok(backing) = std::fs::read_to_string(
                Path::new("/sys/block").join(&dev).join("loop/backing_file"),
            ) && Path::new(backing.trim()).starts_with(&data)
            {
                loop_devices.push(format!("{dev} ({})", backing.trim()));
            }
        }

        HostResources {
            mounts: mounts.iter().map(|m| m.display().to_string()).collect(),
            netns,
            interfaces,
            nft_elements,
            address_claims,
            cgroups,
            runc_state: names_in(&data_dir.join("runc")),
            state_dirs: names_in(&state_dir),
            loop_devices,
        }
    }

    /// How many objects of every kind (network namespaces counted once, as
    /// mounts).
    pub fn total(&self) -> usize {
        self.kinds().iter().map(|(_, v)| v.len()).sum::<usize>() - self.netns.len()
    }

    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    fn kinds(&self) -> [(&'static str, &Vec<String>); 9] {
        [
            ("mounts", &self.mounts),
            ("network namespaces", &self.netns),
            ("interfaces", &self.interfaces),
            ("nft set elements", &self.nft_elements),
            ("address claims", &self.address_claims),
            ("cgroups", &self.cgroups),
            ("runc containers", &self.runc_state),
            ("state dirs", &self.state_dirs),
            ("loop devices", &self.loop_devices),
        ]
    }
}

impl fmt::Display for HostResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing");
        }
        for (kind, list) in self.kinds() {
            if !list.is_empty() {
                writeln!(f, "{} {kind}: {}", list.len(), list.join(", "))?;
            }
        }
        Ok(())
    }
}

/// How long a killed sandbox's teardown, which finishes after the kill
/// has answered, may take before what it left counts as leaked.
pub const TEARDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl HostResources {
    /// Measures until `ok` holds of the measurement or
    /// [`TEARDOWN_TIMEOUT`] has passed; the last measurement, and whether
    /// `ok` held of it.
    pub fn settle(
        data_dir: &Path,
        ids: &[String],
        ok: impl Fn(&HostResources) -> bool,
    ) -> (HostResources, bool) {
        let deadline = std::time::Instant::now() + TEARDOWN_TIMEOUT;
        loop {
            let r = HostResources::measure(data_dir, ids);
            if ok(&r) {
                return (r, true);
            }
            if std::time::Instant::now() >= deadline {
                return (r, false);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Panics, listing what is left, unless sandbox `id` of the data directory
/// holds nothing on the host (its directory, mounts, cgroups, container,
/// loop devices) once its teardown, which finishes after its kill has
/// answered, has had time to finish. Other sandboxes may hold anything.
pub fn wait_torn_down(data_dir: &Path, id: &str) {
    let ids = [id.to_owned()];
    let (r, gone) = HostResources::settle(data_dir, &ids, |r| !r.names(id));
    assert!(gone, "sandbox {id} left on the host:\n{r}");
}

impl HostResources {
    /// How many network objects of each kind there are (one of each per
    /// sandbox with a network): host interfaces, `sources` set elements,
    /// address claims, network namespaces.
    pub fn network_counts(&self) -> [(&'static str, usize); 4] {
        [
            ("interfaces", self.interfaces.len()),
            (
                "nft source elements",
                self.nft_elements
                    .iter()
                    .filter(|e| e.starts_with("sources "))
                    .count(),
            ),
            ("address claims", self.address_claims.len()),
            ("network namespaces", self.netns.len()),
        ]
    }

    /// Whether any object listed names `id` (its path or name has it).
    pub fn names(&self, id: &str) -> bool {
        [
            &self.mounts,
            &self.cgroups,
            &self.runc_state,
            &self.state_dirs,
            &self.loop_devices,
        ]
        .iter()
        .any(|list| list.iter().any(|o| o.contains(id)))
    }
}

/// Panics, listing them, unless the data directory's sandboxes hold nothing
/// on the host once the teardowns of those just killed have had time to
/// finish.
pub fn assert_no_leaks(data_dir: &Path, ids: &[String]) {
    let (r, empty) = HostResources::settle(data_dir, ids, HostResources::is_empty);
    assert!(empty, "leaked on the host:\n{r}");
}

/// Removes every host-side network object of the data directory's
/// sandboxes (interfaces, nftables set elements, address claims).
/// Test cleanup: a test server stopped or killed leaves its sandboxes, and
/// their network, for the next start, which a test never makes.
pub fn network_force_clean(data_dir: &Path) {
    let state_dir = state_dir(data_dir);
    let tag = instance_tag(&state_dir);
    let r = HostResources::measure(data_dir, &[]);
    for iface in &r.interfaces {
        let _ = Command::new("ip").args(["link", "del", iface]).output();
    }
    let mut script = String::new();
    for e in &r.nft_elements {
        if let Some((set, element)) = e.split_once(' ') {
            script += &format!("delete element inet {TABLE} {set} {{ {element} }}\n");
        }
    }
    if !script.is_empty() {
        use std::io::Write;
        if let Ok(mut child) = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(script.as_bytes());
            }
            let _ = child.wait();
        }
    }
    for claim in claims_of(&tag) {
        let _ = std::fs::remove_file(claim);
    }
}

/// Elements of the firewall table's sets whose interface starts with
/// `iface_prefix`, as `<set> "<interface>" . <address or block>`.
fn nft_elements_of(iface_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(listing) = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .output()
    else {
        return out;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&listing.stdout) else {
        return out;
    };
    for item in json["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item["set"]["name"].as_str() else {
            continue;
        };
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let (iface, value) = (&e["concat"][0], &e["concat"][1]);
            let Some(iface) = iface.as_str().filter(|i| i.starts_with(iface_prefix)) else {
                continue;
            };
            let value = match (value.as_str(), &value["prefix"]) {
                (Some(addr), _) => addr.to_owned(),
                (None, p) => format!("{}/{}", p["addr"].as_str().unwrap_or("?"), p["len"]),
            };
            out.push(format!("{set} \"{iface}\" . {value}"));
        }
    }
    out.sort();
    out
}

/// The runtime's state directory, absolute as the runtime makes it.
fn state_dir(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join("sandboxes");
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Address-claim files of instance `tag`.
fn claims_of(tag: &str) -> Vec<PathBuf> {
    let slots = Path::new(DEFAULT_RUN_DIR).join("slots");
    names_in(&slots)
        .into_iter()
        .map(|n| slots.join(n))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|s| s.lines().next() == Some(tag)))
        .collect()
}

/// Names in a directory, sorted; none if it does not exist.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Mount points of every cgroup hierarchy (v1 and v2).
fn cgroup_mountpoints() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let mountpoint = line.split(' ').nth(4)?;
            let (_, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}
