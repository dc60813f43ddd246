//! The OCI runtime spec (`config.json`) Hutch gives runc for a sandbox.
//!
//! [`build`] is a pure function of a [`SpecInput`]; everything host-specific
//! (paths, the cgroup path, whether the login-PATH script is installed) is
//! decided by the caller. The choices follow Docker's defaults for an
//! unprivileged container unless a comment says otherwise:
//!
//! * **Root**: the sandbox's overlay mountpoint, writable (writes land in the
//!   sandbox's private upper directory; template layers are never touched).
//! * **Process**: the agent, `/run/hutch/bin/hutch-envd --boot
//!   /run/hutch/boot.json`, as root (uid 0, gid 0) in `/`, with only a
//!   default `PATH` in its environment: the agent builds every child's
//!   environment itself from the boot config and `/init` (runc adds
//!   `HOME` from the rootfs's `/etc/passwd`, `/` if absent). No terminal;
//!   `noNewPrivileges` set, so setuid binaries and file capabilities cannot
//!   raise privileges inside the sandbox. Capabilities: Docker's default set
//!   minus `NET_RAW` ([`DEFAULT_CAPABILITIES`]) in the bounding, effective
//!   and permitted sets; inheritable and ambient empty, so non-root children
//!   of the agent get no capabilities. No rlimits: the sandbox inherits
//!   runc's (the server's) limits; raising one above the current hard limit
//!   would need `CAP_SYS_RESOURCE`, which Hutch may not have. `oomScoreAdj`
//!   unset (inherited; the agent raises it for the processes it starts, so
//!   that the OOM killer spares the agent).
//! * **Namespaces**: new pid, mount, ipc, uts, network and cgroup namespaces.
//!   The network namespace is empty: runc brings up `lo` and nothing else.
//!   The cgroup namespace is used on cgroup v1 too: runc 1.1 supports it
//!   there (verified on a v1 hybrid host with runc 1.1.5; the sandbox sees
//!   its own cgroup as `/`). No user namespace: root in the sandbox is root
//!   on the host, confined by the reduced capability set, `noNewPrivileges`,
//!   masked paths and the seccomp filter.
//! * **Mounts**: Docker's defaults (`/proc`, `/dev` tmpfs, `/dev/pts`,
//!   `/dev/shm`, `/dev/mqueue`, read-only `/sys` and `/sys/fs/cgroup`), then
//!   Hutch's own bind mounts: the agent binary and `boot.json` read-only,
//!   the socket directory read-write, and optionally the login-PATH script
//!   at [`PROFILE_SCRIPT_PATH`].
//! * **Linux**: Docker's masked and read-only paths (plus `/sys/fs/cgroup`
//!   read-only, see [`CGROUP_MOUNT`]); cgroup device access
//!   denied except Docker's standard allow list; CPU (CFS quota), memory
//!   (swap included, where the host accounts swap) and `pids` limits from
//!   [`Limits`]; the seccomp filter of [`crate::seccomp`]
//!   ([`SpecInput::seccomp`]); `net.ipv4.ping_group_range` opened to every
//!   group, so `ping` works through ICMP datagram sockets without
//!   `NET_RAW`; rootfs propagation left to runc (it makes the container's
//!   mounts private/slave, so nothing leaks back to the host).
//!
//! The disk limit of [`Limits`] is not part of the spec: the runtime puts
//! the sandbox's upper directory on a file system of that size (see
//! `disk.rs`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hutch_protocol::boot::{AGENT_BINARY, AGENT_LISTEN_FD, BOOT_CONFIG, ENVIRONMENT_SOCKET};
use oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources, LinuxSeccomp,
    Mount, Process, Root, Spec, User,
};

/// OCI runtime-spec version written into `config.json`; the version runc
/// 1.1 implements.
pub const OCI_VERSION: &str = "1.0.2-dev";

/// The `PATH` the agent starts with. The agent computes each child's
/// environment itself; this only has to let the agent find helpers.
pub const AGENT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the login-PATH script is bind-mounted inside the sandbox. `00-` so
/// it runs before other `/etc/profile.d` scripts, which may extend `PATH`.
pub const PROFILE_SCRIPT_PATH: &str = "/etc/profile.d/00-hutch-path.sh";

/// The login-PATH script: restores, in login shells, the `PATH` the shell
/// was executed with after Debian's `/etc/profile` overwrote it.
pub const PROFILE_SCRIPT: &str = include_str!("../assets/00-hutch-path.sh");

/// Default maximum number of tasks (processes and threads) in a sandbox:
/// enough for builds and language servers, small enough that a fork bomb
/// cannot exhaust the host's pid space.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Default memory limit of a sandbox (512 MiB). Where the host accounts
/// swap per cgroup, it covers swap too (memory + swap = this limit, so a
/// sandbox never swaps); otherwise it limits RAM.
pub const DEFAULT_MEMORY_LIMIT: i64 = 512 * 1024 * 1024;

/// Default number of CPUs a sandbox may use at once (its CFS quota is this
/// many [`CPU_PERIOD_US`] periods per period).
pub const DEFAULT_CPUS: u32 = 2;

/// Default size of a sandbox's disk (its writable layer), in MiB: 2 GiB.
pub const DEFAULT_DISK_MB: u64 = 2048;

/// The CFS period of every sandbox, in microseconds (the kernel's
/// default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Size of a sandbox's `/dev/shm` (a tmpfs of its own, charged to its
/// memory limit), in KiB: 64 MiB, as Docker.
pub const SHM_SIZE_KIB: u64 = 65_536;

/// Most files (and POSIX semaphores and shared memory objects) in a
/// sandbox's `/dev/shm`.
pub const SHM_INODES: u32 = 16384;

/// Docker's default capability set (moby `oci/caps.DefaultCapabilities`)
/// without `NET_RAW`: raw and packet sockets would let a sandbox forge
/// packets on whatever network it is attached to, and `ping` works without
/// it (see the module docs). Notably absent as with Docker: `SYS_ADMIN`,
/// `NET_ADMIN`, `SYS_PTRACE`, `SYS_MODULE`, `DAC_READ_SEARCH`,
/// `SYS_RESOURCE`.
pub const DEFAULT_CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's default masked paths: hidden behind `/dev/null` (files) or an
/// empty read-only tmpfs (directories), because they leak host information
/// or expose kernel interfaces. `/proc/interrupts` (the host's per-CPU
/// interrupt counts, a side channel) is masked as Docker does;
/// Docker's per-CPU `/sys/devices/system/cpu/cpu*/thermal_throttle`
/// directories, which depend on the host, are not listed.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's default read-only paths: kernel tunables a container must not
/// change.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the cgroup filesystem is mounted inside the sandbox. Besides the
/// `ro` mount option it is also listed in `readonlyPaths` (a Hutch addition
/// to Docker's list): on cgroup v1 hosts runc 1.1 mounts the hierarchies
/// read-only but leaves the tmpfs holding them writable; the extra
/// read-only remount closes that. On cgroup v2 it changes nothing.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// A sandbox's resource limits: CPU, memory and pids through its cgroup,
/// disk through the size of its writable layer's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// CPUs it may use at once: a CFS quota of `cpus` ×
    /// [`CPU_PERIOD_US`] per period (`cpu.cfs_quota_us` / `cpu.max`). It
    /// still sees every host CPU (`nproc`), but cannot use more time than
    /// this.
    pub cpus: u32,
    /// Memory limit in bytes (`memory.limit_in_bytes` / `memory.max`);
    /// swap included where the host accounts it.
    pub memory_bytes: i64,
    /// Maximum number of tasks (`pids.max`).
    pub pids: i64,
    /// Size of its writable layer, MiB: what it can write to its root file
    /// system (including `/tmp`) in total.
    pub disk_mb: u64,
}

impl Default for Limits {
    /// [`DEFAULT_CPUS`], [`DEFAULT_MEMORY_LIMIT`], [`DEFAULT_PIDS_LIMIT`]
    /// and [`DEFAULT_DISK_MB`].
    fn default() -> Self {
        Limits {
            cpus: DEFAULT_CPUS,
            memory_bytes: DEFAULT_MEMORY_LIMIT,
            pids: DEFAULT_PIDS_LIMIT,
            disk_mb: DEFAULT_DISK_MB,
        }
    }
}

impl Limits {
    /// The CFS quota, in microseconds per [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> i64 {
        i64::from(self.cpus).saturating_mul(CPU_PERIOD_US as i64)
    }

    /// Checks that every limit can be applied: at least one CPU, 4 MiB of
    /// memory (runc's own minimum is lower, but nothing runs in less),
    /// 16 pids (the agent and a shell), and a disk within the runtime's
    /// bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.cpus == 0 {
            return Err("cpus must be at least 1".to_owned());
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "memory limit of {} bytes is below the minimum of {MIN_MEMORY_BYTES}",
                self.memory_bytes
            ));
        }
        if self.pids < MIN_PIDS {
            return Err(format!(
                "pids limit of {} is below the minimum of {MIN_PIDS}",
                self.pids
            ));
        }
        crate::disk::check_size(self.disk_mb)
    }
}

/// Smallest memory limit [`Limits::validate`] accepts: 4 MiB.
pub const MIN_MEMORY_BYTES: i64 = 4 * 1024 * 1024;

/// Smallest pids limit [`Limits::validate`] accepts.
pub const MIN_PIDS: i64 = 16;

/// Smallest disk [`Limits::validate`] accepts, MiB.
pub const MIN_DISK_MB: u64 = crate::disk::MIN_DISK_MB;

/// The contents of a sandbox's `/etc/hosts`: loopback names and the
/// sandbox's own hostname, so tools such as `sudo` can resolve it.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Everything host-specific that goes into a sandbox's spec. All paths are
/// absolute host paths.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// Sandbox id; also the hostname.
    pub id: &'a str,
    /// The overlay mountpoint used as the container's root.
    pub rootfs: &'a Path,
    /// The static `hutch-envd` binary, bound to [`AGENT_BINARY`].
    pub envd: &'a Path,
    /// The sandbox's `boot.json`, bound to [`BOOT_CONFIG`].
    pub boot_json: &'a Path,
    /// The login-PATH script, bound to [`PROFILE_SCRIPT_PATH`]; `None` when
    /// the rootfs has no `/etc/profile.d` directory.
    pub profile_script: Option<&'a Path>,
    /// The container's cgroup path, e.g. `/hutch/<id>`. Absolute, so it is
    /// resolved from the root of each hierarchy (cgroup v1) or of the
    /// unified hierarchy (v2), not from the server's own cgroup.
    pub cgroups_path: &'a str,
    /// Resource limits (the cgroup ones; `disk_mb` is applied by the
    /// caller).
    pub limits: Limits,
    /// Limit memory + swap to the memory limit (`memory.swap`): only when
    /// the host accounts swap per cgroup, or runc would fail.
    pub limit_swap: bool,
    /// Seccomp filter; `None` for none. The runtime always passes
    /// [`crate::seccomp::profile`] of [`DEFAULT_CAPABILITIES`].
    pub seccomp: Option<LinuxSeccomp>,
    /// `process.noNewPrivileges`; see [`crate::SandboxSpec::no_new_privileges`].
    pub no_new_privileges: bool,
    /// The network namespace to join (a bind mount made by
    /// [`crate::network`]); `None` for a new one with only loopback.
    pub network_ns: Option<&'a Path>,
    /// Volumes: (host directory as runc sees it, path in the sandbox),
    /// bound read-write, `nosuid,nodev`, after Hutch's own mounts.
    pub volumes: &'a [(PathBuf, String)],
}

/// Builds the sandbox's `config.json` (see the module docs for the choices).
pub fn build(input: &SpecInput<'_>) -> Spec {
    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned())
        .set_root(Some(root(input.rootfs)))
        .set_hostname(Some(input.id.to_owned()))
        .set_domainname(None)
        .set_annotations(None)
        .set_hooks(None)
        .set_process(Some(process(input.no_new_privileges)))
        .set_mounts(Some(mounts(input)))
        .set_linux(Some(linux(input)));
    spec
}

fn root(rootfs: &Path) -> Root {
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf())
        .set_readonly(Some(false));
    root
}

fn process(no_new_privileges: bool) -> Process {
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(Some(HashSet::new()))
        .set_ambient(Some(HashSet::new()));

    let mut user = User::default();
    user.set_uid(0).set_gid(0);

    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_user(user)
        .set_args(Some(vec![
            AGENT_BINARY.to_owned(),
            "--boot".to_owned(),
            BOOT_CONFIG.to_owned(),
            "--environment-socket".to_owned(),
            ENVIRONMENT_SOCKET.to_owned(),
            "--listen-fd".to_owned(),
            AGENT_LISTEN_FD.to_string(),
        ]))
        .set_env(Some(vec![AGENT_PATH_ENV.to_owned()]))
        .set_cwd(PathBuf::from("/"))
        .set_capabilities(Some(capabilities))
        .set_rlimits(None)
        .set_no_new_privileges(Some(no_new_privileges))
        .set_oom_score_adj(None);
    process
}

/// One mount entry.
fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_owned()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

fn mounts(input: &SpecInput<'_>) -> Vec<Mount> {
    let p = Path::new;
    let mut mounts = vec![
        // Docker's defaults, in Docker's order.
        mount("/proc", "proc", p("proc"), &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            p("tmpfs"),
            &[
                "nosuid",
                "strictatime",
                "mode=755",
                "size=65536k",
                // Inodes cost kernel memory whatever their size: bounded.
                "nr_inodes=4096",
            ],
        ),
        mount(
            "/dev/pts",
            "devpts",
            p("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            p("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            CGROUP_MOUNT,
            "cgroup",
            p("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            p("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        // Private to the sandbox, its pages charged to the sandbox's
        // memory cgroup.
        mount(
            "/dev/shm",
            "tmpfs",
            p("shm"),
            &[
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                &format!("size={SHM_SIZE_KIB}k"),
                &format!("nr_inodes={SHM_INODES}"),
            ],
        ),
        // Hutch's own files. runc creates the mountpoints (in the sandbox's
        // upper directory) when the template lacks them.
        //
        // The agent binary: a read-only file bind, so nothing in the sandbox
        // can replace the init process's executable.
        mount(
            AGENT_BINARY,
            "bind",
            input.envd,
            &["bind", "ro", "nosuid", "nodev"],
        ),
        // The boot configuration, read-only.
        mount(
            BOOT_CONFIG,
            "bind",
            input.boot_json,
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        ),
        // Nothing of the host is bound writable: the agent's socket is an
        // inherited descriptor, and /etc/hosts, /etc/hostname and
        // /etc/resolv.conf are files of the sandbox's own root.
    ];
    if let Some(script) = input.profile_script {
        // Only when the template has /etc/profile.d: see PROFILE_SCRIPT.
        mounts.push(mount(
            PROFILE_SCRIPT_PATH,
            "bind",
            script,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        ));
    }
    for (source, destination) in input.volumes {
        // Shared with other sandboxes: a setuid file or a device node one
        // of them writes must stay inert in the others.
        mounts.push(mount(
            destination,
            "bind",
            source,
            &["bind", "rw", "nosuid", "nodev"],
        ));
    }
    mounts
}

/// The network namespace: joined by path, or new (loopback only).
fn network_namespace(path: Option<&Path>) -> LinuxNamespace {
    let mut ns = namespace(LinuxNamespaceType::Network);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

fn namespace(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns
}

/// A device cgroup rule; `None` major/minor means any.
fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_owned()));
    rule
}

/// Docker's device cgroup policy: deny everything, then allow `mknod` of
/// any device (opening one still needs an allow rule) and read/write/mknod
/// of the standard pseudo-devices and terminals.
fn device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    vec![
        device_rule(false, A, None, None, "rwm"),
        device_rule(true, C, None, None, "m"),
        device_rule(true, B, None, None, "m"),
        device_rule(true, C, Some(1), Some(3), "rwm"), // /dev/null
        device_rule(true, C, Some(1), Some(5), "rwm"), // /dev/zero
        device_rule(true, C, Some(1), Some(7), "rwm"), // /dev/full
        device_rule(true, C, Some(1), Some(8), "rwm"), // /dev/random
        device_rule(true, C, Some(1), Some(9), "rwm"), // /dev/urandom
        device_rule(true, C, Some(5), Some(0), "rwm"), // /dev/tty
        device_rule(true, C, Some(5), Some(1), "rwm"), // /dev/console
        device_rule(true, C, Some(5), Some(2), "rwm"), // /dev/ptmx
        device_rule(true, C, Some(136), None, "rwm"),  // /dev/pts/*
    ]
}

fn linux(input: &SpecInput<'_>) -> Linux {
    let mut pids = LinuxPids::default();
    pids.set_limit(input.limits.pids);
    let mut memory = LinuxMemory::default();
    memory
        .set_limit(Some(input.limits.memory_bytes))
        // OCI's `swap` is memory + swap.
        .set_swap(input.limit_swap.then_some(input.limits.memory_bytes));
    let mut cpu = LinuxCpu::default();
    cpu.set_quota(Some(input.limits.cpu_quota_us()))
        .set_period(Some(CPU_PERIOD_US));

    let mut resources = LinuxResources::default();
    resources
        .set_devices(Some(device_rules()))
        .set_cpu(Some(cpu))
        .set_pids(Some(pids))
        .set_memory(Some(memory));

    let mut linux = Linux::default();
    linux
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(Some(HashMap::from([(
            "net.ipv4.ping_group_range".to_owned(),
            "0 2147483647".to_owned(),
        )])))
        .set_resources(Some(resources))
        .set_cgroups_path(Some(PathBuf::from(input.cgroups_path)))
        .set_namespaces(Some(vec![
            namespace(LinuxNamespaceType::Pid),
            namespace(LinuxNamespaceType::Mount),
            namespace(LinuxNamespaceType::Ipc),
            namespace(LinuxNamespaceType::Uts),
            network_namespace(input.network_ns),
            namespace(LinuxNamespaceType::Cgroup),
        ]))
        // runc creates the standard device nodes (null, zero, full, random,
        // urandom, tty, ptmx link) itself.
        .set_devices(None)
        .set_seccomp(input.seccomp.clone())
        .set_rootfs_propagation(None)
        .set_masked_paths(Some(MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect()))
        .set_readonly_paths(Some(
            READONLY_PATHS
                .iter()
                .chain(&[CGROUP_MOUNT])
                .map(|p| (*p).to_owned())
                .collect(),
        ));
    linux
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(profile: Option<&'a Path>) -> SpecInput<'a> {
        SpecInput {
            id: "sbx-1",
            rootfs: Path::new("/data/sandboxes/sbx-1/rootfs"),
            envd: Path::new("/usr/lib/hutch/hutch-envd"),
            boot_json: Path::new("/data/sandboxes/sbx-1/hutch/boot.json"),
            profile_script: profile,
            cgroups_path: "/hutch/sbx-1",
            limits: Limits::default(),
            limit_swap: false,
            seccomp: Some(crate::seccomp::profile(&DEFAULT_CAPABILITIES)),
            no_new_privileges: true,
            network_ns: None,
            volumes: &[],
        }
    }

    #[test]
    fn joins_a_network_namespace() {
        let mut i = input(None);
        let netns = Path::new("/data/sandboxes/sbx-1/netns");
        i.network_ns = Some(netns);
        let spec = build(&i);
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(net.path().as_deref(), Some(netns));
    }

    fn find<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .unwrap_or_else(|| panic!("no mount at {dest}"))
    }

    fn opts(m: &Mount) -> Vec<&str> {
        m.options()
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn root_hostname_and_process() {
        let spec = build(&input(None));
        assert_eq!(spec.version(), OCI_VERSION);
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/data/sandboxes/sbx-1/rootfs"));
        assert_eq!(root.readonly(), Some(false));
        assert_eq!(spec.hostname().as_deref(), Some("sbx-1"));

        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &[
                "/run/hutch/bin/hutch-envd".to_owned(),
                "--boot".to_owned(),
                "/run/hutch/boot.json".to_owned(),
                "--environment-socket".to_owned(),
                "/run/hutch/environment.sock".to_owned(),
                "--listen-fd".to_owned(),
                "3".to_owned()
            ]
        );
        assert_eq!(p.cwd(), Path::new("/"));
        assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()]
        );
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.no_new_privileges(), Some(true));
        let mut escalating = input(None);
        escalating.no_new_privileges = false;
        let spec = build(&escalating);
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(false)
        );
        assert!(p.rlimits().is_none());
        assert!(p.oom_score_adj().is_none());
    }

    #[test]
    fn capabilities_are_dockers_default_set() {
        let spec = build(&input(None));
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        let docker: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(docker.len(), 13);
        assert_eq!(caps.bounding().as_ref().unwrap(), &docker);
        assert_eq!(caps.effective().as_ref().unwrap(), &docker);
        assert_eq!(caps.permitted().as_ref().unwrap(), &docker);
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        for dangerous in [
            Capability::SysAdmin,
            Capability::NetAdmin,
            Capability::SysPtrace,
            Capability::SysModule,
            Capability::DacReadSearch,
            Capability::SysResource,
            Capability::NetRaw,
        ] {
            assert!(!docker.contains(&dangerous), "{dangerous:?}");
        }
    }

    #[test]
    fn namespaces() {
        let spec = build(&input(None));
        let ns: Vec<LinuxNamespaceType> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| {
                assert!(n.path().is_none(), "namespaces must be new, not joined");
                n.typ()
            })
            .collect();
        use LinuxNamespaceType::*;
        for t in [Pid, Mount, Ipc, Uts, Network, Cgroup] {
            assert!(ns.contains(&t), "{t:?} missing");
        }
        assert!(!ns.contains(&User));
        assert_eq!(ns.len(), 6);
    }

    #[test]
    fn masked_readonly_paths_cgroup_and_resources() {
        let spec = build(&input(None));
        let linux = spec.linux().as_ref().unwrap();
        let masked = linux.masked_paths().as_ref().unwrap();
        for p in ["/proc/kcore", "/proc/keys", "/sys/firmware", "/proc/scsi"] {
            assert!(masked.iter().any(|m| m == p), "{p}");
        }
        assert!(masked.iter().any(|m| m == "/proc/interrupts"));
        assert_eq!(masked.len(), 12);
        let ro = linux.readonly_paths().as_ref().unwrap();
        assert!(ro.iter().any(|p| p == "/proc/sys"));
        assert!(ro.iter().any(|p| p == "/proc/sysrq-trigger"));
        assert!(ro.iter().any(|p| p == "/sys/fs/cgroup"));
        assert_eq!(ro.len(), 6);
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/hutch/sbx-1"))
        );
        let seccomp = linux.seccomp().as_ref().expect("a seccomp filter");
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        assert!(linux.uid_mappings().is_none());
        assert_eq!(
            linux.sysctl().as_ref().unwrap()["net.ipv4.ping_group_range"],
            "0 2147483647"
        );

        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.pids().unwrap().limit(), 1024);
        assert_eq!(res.memory().unwrap().limit(), Some(512 * 1024 * 1024));
        assert_eq!(res.memory().unwrap().swap(), None, "swap not accounted");
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(200_000));
        assert_eq!(cpu.period(), Some(100_000));
        let devices = res.devices().as_ref().unwrap();
        assert!(!devices[0].allow(), "first rule denies everything");
        assert_eq!(devices[0].typ(), Some(LinuxDeviceType::A));
        let allowed: Vec<String> = devices[1..].iter().map(|d| d.to_string()).collect();
        assert!(allowed.contains(&"c 1:3 rwm".to_owned()), "{allowed:?}");
        assert!(allowed.contains(&"c 136:* rwm".to_owned()), "{allowed:?}");
        assert!(devices[1..].iter().all(|d| d.allow()));
    }

    #[test]
    fn limits_reach_the_cgroup_settings() {
        let mut i = input(None);
        i.limits = Limits {
            cpus: 1,
            memory_bytes: 64 << 20,
            pids: 100,
            disk_mb: 64,
        };
        i.limit_swap = true;
        let spec = build(&i);
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(100_000));
        assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.memory().unwrap().swap(), Some(64 << 20), "no swap");
        assert_eq!(res.pids().unwrap().limit(), 100);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 100_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(json["linux"]["resources"]["memory"]["swap"], 64 << 20);
    }

    #[test]
    fn limits_validate() {
        let ok = Limits::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.cpus, 2);
        assert_eq!(ok.memory_bytes, 512 << 20);
        assert_eq!(ok.pids, 1024);
        assert_eq!(ok.disk_mb, 2048);
        for bad in [
            Limits { cpus: 0, ..ok },
            Limits {
                memory_bytes: 1024,
                ..ok
            },
            Limits { pids: 1, ..ok },
            Limits { disk_mb: 1, ..ok },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn docker_default_mounts() {
        let spec = build(&input(None));
        assert_eq!(find(&spec, "/proc").typ().as_deref(), Some("proc"));
        let dev = find(&spec, "/dev");
        assert_eq!(dev.typ().as_deref(), Some("tmpfs"));
        assert!(opts(dev).contains(&"mode=755"));
        let pts = opts(find(&spec, "/dev/pts"));
        for o in ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] {
            assert!(pts.contains(&o), "{o}");
        }
        let shm = opts(find(&spec, "/dev/shm"));
        assert!(shm.contains(&"mode=1777") && shm.contains(&"size=65536k"));
        assert_eq!(find(&spec, "/dev/mqueue").typ().as_deref(), Some("mqueue"));
        assert!(opts(find(&spec, "/sys")).contains(&"ro"));
        let cg = find(&spec, "/sys/fs/cgroup");
        assert_eq!(cg.typ().as_deref(), Some("cgroup"));
        assert!(opts(cg).contains(&"ro"));
        // /dev comes before the mounts inside it.
        let order: Vec<&Path> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().as_path())
            .collect();
        let pos = |d: &str| order.iter().position(|p| *p == Path::new(d)).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    }

    #[test]
    fn hutch_mounts() {
        let spec = build(&input(None));
        let envd = find(&spec, "/run/hutch/bin/hutch-envd");
        assert_eq!(
            envd.source().as_deref(),
            Some(Path::new("/usr/lib/hutch/hutch-envd"))
        );
        let o = opts(envd);
        assert!(o.contains(&"bind") && o.contains(&"ro") && o.contains(&"nosuid"));
        let boot = find(&spec, "/run/hutch/boot.json");
        assert_eq!(
            boot.source().as_deref(),
            Some(Path::new("/data/sandboxes/sbx-1/hutch/boot.json"))
        );
        assert!(opts(boot).contains(&"ro"));
        // The agent's socket is inherited, not bound in.
        let args = spec.process().as_ref().unwrap().args().clone().unwrap();
        assert_eq!(args[args.len() - 2..], ["--listen-fd", "3"]);
        assert!(
            !spec
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.destination() == Path::new(PROFILE_SCRIPT_PATH))
        );

        let script = Path::new("/data/sandboxes/sbx-1/hutch/00-hutch-path.sh");
        let spec = build(&input(Some(script)));
        let m = find(&spec, PROFILE_SCRIPT_PATH);
        assert_eq!(m.source().as_deref(), Some(script));
        assert!(opts(m).contains(&"ro"));

        // No host path is bound writable into a sandbox but its volumes.
        for m in spec.mounts().as_ref().unwrap() {
            if m.typ().as_deref() == Some("bind") {
                assert!(opts(m).contains(&"ro"), "{:?} is writable", m.destination());
            }
        }
    }

    #[test]
    fn volumes_are_bound_last_without_setuid_or_devices() {
        let volumes = [
            (PathBuf::from("/stage/sbx-1/vol0"), "/data".to_owned()),
            (PathBuf::from("/stage/sbx-1/vol1"), "/mnt/shared".to_owned()),
        ];
        let mut i = input(None);
        i.volumes = &volumes;
        let spec = build(&i);
        let mounts = spec.mounts().as_ref().unwrap();
        let last: Vec<&Path> = mounts[mounts.len() - 2..]
            .iter()
            .map(|m| m.destination().as_path())
            .collect();
        assert_eq!(last, [Path::new("/data"), Path::new("/mnt/shared")]);
        let data = find(&spec, "/data");
        assert_eq!(
            data.source().as_deref(),
            Some(Path::new("/stage/sbx-1/vol0"))
        );
        let o = opts(data);
        for want in ["bind", "rw", "nosuid", "nodev"] {
            assert!(o.contains(&want), "{o:?}");
        }
        assert!(!o.contains(&"ro"), "{o:?}");
    }

    #[test]
    fn serializes_as_runc_expects() {
        let spec = build(&input(None));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["linux"]["cgroupsPath"], "/hutch/sbx-1");
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 1024);
        assert!(json["process"].get("rlimits").is_none());
        assert!(json["process"].get("oomScoreAdj").is_none());
        let bnd = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(bnd.iter().any(|c| c == "CAP_NET_BIND_SERVICE"));
    }

    #[test]
    fn profile_script_is_embedded() {
        assert!(PROFILE_SCRIPT.contains("/proc/$$/environ"));
        assert!(PROFILE_SCRIPT.contains("read -r -d ''"));
    }
}
