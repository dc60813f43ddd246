//! The seccomp filter every sandbox runs under.
//!
//! [`profile`] builds it for the capability set the sandbox holds. It is an
//! allow list: any system call it does not name fails with `EPERM`. The
//! list is what ordinary Linux programs need — language runtimes, shells,
//! package managers, compilers, servers, `sudo`, PTYs, inotify, System V
//! and POSIX IPC — and leaves out the calls that reach kernel state no
//! namespace isolates, or that are a large attack surface for little
//! legitimate use in a sandbox:
//!
//! * **kernel keyrings** (`keyctl`, `add_key`, `request_key`): keyrings are
//!   not namespaced;
//! * **kernel modules, kexec, reboot, swap, accounting, clock setting**;
//! * **new namespaces** (`unshare`, `setns`, namespace flags of `clone`,
//!   all of `clone3`): a user namespace would hand root-in-namespace
//!   powers to any process; `clone3` answers `ENOSYS` rather than `EPERM`
//!   so that C libraries fall back to `clone`, whose flags the filter can
//!   inspect (it cannot read `clone3`'s argument structure);
//! * **mounting** (`mount`, `umount2`, `pivot_root`, the new mount API);
//! * **`bpf`, `perf_event_open`, `userfaultfd`, `io_uring`**: frequent
//!   sources of kernel exploits;
//! * **`open_by_handle_at`**: opens files by handle, bypassing the mount
//!   namespace;
//! * **`personality`** except the harmless personas (Linux, 32-bit Linux,
//!   the `uname26` compatibility flag, and the query);
//! * **`AF_VSOCK` sockets**: vsock is not network-namespaced; on a virtual
//!   machine it reaches the hypervisor's services;
//! * **`AF_ALG` sockets**: the kernel's crypto API, a source of kernel
//!   exploits that programs do not need (Docker refuses it too);
//!   `socket` is allowed per family, comparing only the 32 bits the kernel
//!   reads of its first argument, so that bits above them cannot carry a
//!   refused family past the filter;
//! * **`socketcall`**, the 32-bit x86 multiplexer whose arguments the
//!   filter cannot inspect (modern 32-bit C libraries call `socket` and
//!   friends directly);
//! * **device nodes** other than FIFOs, sockets, overlay whiteouts (0:0)
//!   and the standard devices (majors 1, 5 and 136: `null`, `zero`,
//!   `full`, `random`, `urandom`, `tty`, `ptmx`, terminals): runc's device
//!   cgroup lets every sandbox open `/dev/net/tun` (10:200), which Hutch
//!   does not grant, so such nodes cannot be made in the first place;
//! * **`modify_ldt`**, NUMA placement (`mbind`, `set_mempolicy`, …),
//!   `kcmp`, `pidfd_getfd`, `process_madvise`: they need capabilities a
//!   sandbox does not have.
//!
//! Calls that need a capability are allowed only when the sandbox's
//! capability set ([`crate::spec::DEFAULT_CAPABILITIES`]) holds it, so the
//! filter and the capability set tell the same story; with Hutch's default
//! set none of the privileged groups except `chroot` are open.
//!
//! `ptrace`, `process_vm_readv` and `process_vm_writev` are allowed: since
//! Linux 4.8 a seccomp filter cannot be bypassed through `ptrace`, and
//! without `CAP_SYS_PTRACE` a process can only trace processes of its own
//! user, all of which are inside the sandbox's PID namespace. Debuggers and
//! `strace` work.
//!
//! Syscall names the host's libseccomp does not know (calls newer than it)
//! are skipped by runc, and runc makes calls newer than its libseccomp
//! answer `ENOSYS`, so that programs fall back to older calls.
//!
//! The filter applies to the x86-64 ABI and to the 32-bit (`x86`) and
//! `x32` ABIs, so that a 32-bit binary meets the same rules.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// `EPERM`: what a call outside the allow list returns.
pub const EPERM: u32 = 1;

/// `ENOSYS`: what `clone3` returns without `CAP_SYS_ADMIN`.
pub const ENOSYS: u32 = 38;

/// The `clone` flags that create namespaces (`CLONE_NEWNS`,
/// `CLONE_NEWCGROUP`, `CLONE_NEWUTS`, `CLONE_NEWIPC`, `CLONE_NEWUSER`,
/// `CLONE_NEWPID`, `CLONE_NEWNET`).
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// `AF_ALG`, a socket family [`profile`] refuses.
pub const AF_ALG: u64 = 38;

/// `AF_VSOCK`, a socket family [`profile`] refuses.
pub const AF_VSOCK: u64 = 40;

/// The socket families [`profile`] refuses.
pub const REFUSED_SOCKET_FAMILIES: [u64; 2] = [AF_ALG, AF_VSOCK];

/// The highest socket family Linux knows (`AF_MCTP`; `AF_MAX` is 46).
/// `socket` is allowed for the families up to it but the refused ones;
/// a family above it fails with `EPERM` instead of `EAFNOSUPPORT`.
pub const MAX_SOCKET_FAMILY: u64 = 45;

/// The bits of a system call argument the kernel reads as an `int`.
pub const INT_BITS: u64 = 0xffff_ffff;

/// The `personality` values a sandbox may set: `PER_LINUX`, `UNAME26`,
/// `PER_LINUX32`, `PER_LINUX32 | UNAME26`, and `0xffffffff` (query).
pub const ALLOWED_PERSONAS: [u64; 5] = [0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// System calls allowed to every sandbox, whatever its capabilities.
/// Grouped by what they are for; the kernel's own permission checks still
/// apply to each.
pub const ALLOWED: &[&str] = &[
    // Reading and writing file descriptors.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "_llseek",
    "sendfile",
    "sendfile64",
    "copy_file_range",
    "splice",
    "tee",
    "vmsplice",
    "readahead",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "cachestat",
    // Opening, closing and duplicating descriptors.
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "fcntl",
    "fcntl64",
    "ioctl",
    "flock",
    "memfd_create",
    "name_to_handle_at",
    // File metadata and the directory tree.
    "stat",
    "stat64",
    "lstat",
    "lstat64",
    "fstat",
    "fstat64",
    "newfstatat",
    "fstatat64",
    "statx",
    "statfs",
    "statfs64",
    "fstatfs",
    "fstatfs64",
    "access",
    "faccessat",
    "faccessat2",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "chown32",
    "fchown",
    "fchown32",
    "fchownat",
    "lchown",
    "lchown32",
    "umask",
    "utime",
    "utimes",
    "utimensat",
    "utimensat_time64",
    "futimesat",
    "truncate",
    "truncate64",
    "ftruncate",
    "ftruncate64",
    "readlink",
    "readlinkat",
    "getdents",
    "getdents64",
    "getcwd",
    "chdir",
    "fchdir",
    "mkdir",
    "mkdirat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "symlink",
    "symlinkat",
    // Device nodes (`mknod`, `mknodat`) are conditional: see
    // CREATABLE_DEVICE_MAJORS.
    // Extended attributes.
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "getxattrat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "setxattrat",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "listxattrat",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "removexattrat",
    // Waiting for events.
    "select",
    "_newselect",
    "pselect6",
    "pselect6_time64",
    "poll",
    "ppoll",
    "ppoll_time64",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_wait",
    "epoll_wait_old",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_settime64",
    "timerfd_gettime",
    "timerfd_gettime64",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "fanotify_mark",
    // Asynchronous I/O (the classic interface; not io_uring).
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_cancel",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    // Memory.
    "brk",
    "mmap",
    "mmap2",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "msync",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "remap_file_pages",
    "membarrier",
    "memfd_secret",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "map_shadow_stack",
    "mseal",
    // Processes and threads (`clone` is allowed separately, with its
    // namespace flags masked).
    "fork",
    "vfork",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "waitpid",
    "kill",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "process_mrelease",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "get_thread_area",
    "set_thread_area",
    "arch_prctl",
    "rseq",
    "prctl",
    "seccomp",
    "restart_syscall",
    "pause",
    "capget",
    "capset",
    "getpriority",
    "setpriority",
    "ioprio_get",
    "ioprio_set",
    "getrlimit",
    "setrlimit",
    "ugetrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "uname",
    "sysinfo",
    "getcpu",
    "getrandom",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    // Debugging processes of the same user, inside the sandbox.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    // User and group ids.
    "getuid",
    "getuid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getegid",
    "getegid32",
    "getresuid",
    "getresuid32",
    "getresgid",
    "getresgid32",
    "getgroups",
    "getgroups32",
    "setuid",
    "setuid32",
    "setgid",
    "setgid32",
    "setreuid",
    "setreuid32",
    "setregid",
    "setregid32",
    "setresuid",
    "setresuid32",
    "setresgid",
    "setresgid32",
    "setfsuid",
    "setfsuid32",
    "setfsgid",
    "setfsgid32",
    "setgroups",
    "setgroups32",
    // Signals and interval timers.
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "sigreturn",
    "sigprocmask",
    "alarm",
    "getitimer",
    "setitimer",
    // Scheduling.
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getattr",
    "sched_setattr",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    // Clocks and timers (setting the clock needs CAP_SYS_TIME; reading
    // through adjtimex does not).
    "time",
    "gettimeofday",
    "clock_gettime",
    "clock_gettime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "nanosleep",
    "timer_create",
    "timer_delete",
    "timer_settime",
    "timer_settime64",
    "timer_gettime",
    "timer_gettime64",
    "timer_getoverrun",
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
    // Futexes.
    "futex",
    "futex_time64",
    "futex_waitv",
    "futex_wait",
    "futex_wake",
    "futex_requeue",
    // Sockets (`socket` itself is allowed separately, per family).
    "socketpair",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "send",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "recvmmsg_time64",
    "shutdown",
    // System V and POSIX IPC (private to the sandbox's IPC namespace).
    "ipc",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "semctl",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_notify",
    "mq_getsetattr",
    // Mount introspection of the sandbox's own mount namespace.
    "statmount",
    "listmount",
    // Return from a uretprobe trampoline (the kernel's own).
    "uretprobe",
];

/// System calls allowed only to a sandbox whose capability set holds the
/// capability (the kernel checks it as well; without it the filter closes
/// the call entirely).
pub const CAPABILITY_GATED: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["init_module", "finit_module", "delete_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
];

/// Calls no sandbox may make, whatever its capabilities: they are in no
/// allow rule. Listed for the documentation and the tests; the filter
/// needs no rule for them (its default action refuses them).
pub const NEVER_ALLOWED: &[&str] = &[
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "pivot_root",
    "swapon",
    "swapoff",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "modify_ldt",
    "socketcall",
    "move_pages",
    "migrate_pages",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vm86",
    "vm86old",
    "create_module",
    "get_kernel_syms",
    "query_module",
];

/// Device majors `mknod` and `mknodat` may create: 0 (FIFOs, sockets,
/// regular files, overlay whiteouts), 1 (`null`, `zero`, `full`, `random`,
/// `urandom`), 5 (`tty`, `console`, `ptmx`) and 136 (terminals). Anything
/// else, the misc major 10 of `/dev/net/tun`, `fuse` and `kvm` among them,
/// fails with `EPERM`.
pub const CREATABLE_DEVICE_MAJORS: [u64; 4] = [0, 1, 5, 136];

/// Where the kernel reads a device major from the `dev` argument of
/// `mknod` (bits 8–19 of its 32-bit `new_encode_dev` form).
const DEV_MAJOR_MASK: u64 = 0xfff00;

/// One rule.
fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names.iter().map(|n| (*n).to_owned()).collect())
        .set_action(action)
        .set_errno_ret(errno)
        .set_args((!args.is_empty()).then_some(args));
    r
}

/// An argument comparison.
fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    b.build().expect("every field of a seccomp argument is set")
}

/// The sandbox seccomp filter for a process holding `caps` (its bounding
/// set): default action `ERRNO(EPERM)`, the x86-64, x86 and x32 ABIs, and
/// allow rules as the module docs describe.
pub fn profile(caps: &[Capability]) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpMaskedEq as MaskedEq};

    let has = |c: Capability| caps.contains(&c);
    let mut rules = vec![rule(ALLOWED, Allow, None, Vec::new())];

    // Capability-gated groups, in table order, each name once.
    let mut gated: Vec<&str> = Vec::new();
    for (cap, names) in CAPABILITY_GATED {
        if has(*cap) {
            for name in *names {
                if !gated.contains(name) {
                    gated.push(name);
                }
            }
        }
    }
    if !gated.is_empty() {
        rules.push(rule(&gated, Allow, None, Vec::new()));
    }

    if has(Capability::SysAdmin) {
        rules.push(rule(&["clone"], Allow, None, Vec::new()));
    } else {
        // clone without namespace flags only. The flags are the first
        // argument on x86.
        rules.push(rule(
            &["clone"],
            Allow,
            None,
            vec![arg(0, MaskedEq, CLONE_NAMESPACE_FLAGS, Some(0))],
        ));
        // clone3 passes its flags in memory the filter cannot read: make
        // C libraries fall back to clone.
        rules.push(rule(&["clone3"], Errno, Some(ENOSYS), Vec::new()));
    }

    // One rule per value: the comparisons of one rule are ANDed.
    for persona in ALLOWED_PERSONAS {
        rules.push(rule(
            &["personality"],
            Allow,
            None,
            vec![arg(0, Eq, persona, None)],
        ));
    }

    // One rule per family, on the low 32 bits only: the kernel reads the
    // family as an `int`, so a comparison of the whole 64-bit register
    // (`!= AF_VSOCK`, `> AF_VSOCK`) lets `(1 << 32) | AF_VSOCK` through.
    for family in 0..=MAX_SOCKET_FAMILY {
        if !REFUSED_SOCKET_FAMILIES.contains(&family) {
            rules.push(rule(
                &["socket"],
                Allow,
                None,
                vec![arg(0, MaskedEq, INT_BITS, Some(family))],
            ));
        }
    }

    // `dev` is the third argument of mknod, the fourth of mknodat.
    for major in CREATABLE_DEVICE_MAJORS {
        for (name, index) in [("mknod", 2), ("mknodat", 3)] {
            rules.push(rule(
                &[name],
                Allow,
                None,
                vec![arg(index, MaskedEq, DEV_MAJOR_MASK, Some(major << 8))],
            ));
        }
    }

    let mut seccomp = LinuxSeccomp::default();
    seccomp
        .set_default_action(Errno)
        .set_default_errno_ret(Some(EPERM))
        .set_architectures(Some(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ]))
        .set_flags(None)
        .set_syscalls(Some(rules));
    seccomp
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::spec::DEFAULT_CAPABILITIES;

    fn default_profile() -> LinuxSeccomp {
        profile(&DEFAULT_CAPABILITIES)
    }

    /// Names with an unconditional allow rule.
    fn allowed(p: &LinuxSeccomp) -> HashSet<String> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
            .flat_map(|r| r.names().iter().cloned())
            .collect()
    }

    /// Every rule naming `name`.
    fn rules_for<'a>(p: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_action_and_architectures() {
        let p = default_profile();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert!(p.flags().is_none());
        assert!(p.listener_path().is_none());
    }

    #[test]
    fn no_name_is_listed_twice_and_lists_are_disjoint() {
        let mut seen = HashSet::new();
        for name in ALLOWED {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(
                !NEVER_ALLOWED.contains(name),
                "{name} both allowed and denied"
            );
        }
        for (_, names) in CAPABILITY_GATED {
            for name in *names {
                assert!(!ALLOWED.contains(name), "{name} is gated and allowed");
                assert!(!NEVER_ALLOWED.contains(name), "{name} is gated and denied");
            }
        }
        for conditional in ["clone", "clone3", "personality", "socket"] {
            assert!(!ALLOWED.contains(&conditional), "{conditional}");
        }
    }

    #[test]
    fn what_programs_need_is_allowed() {
        let allowed = allowed(&default_profile());
        // The agent (tokio, inotify, PTYs, its reaper), shells, Python,
        // apt/dpkg and sudo.
        for name in [
            "read",
            "write",
            "openat",
            "close",
            "execve",
            "wait4",
            "waitid",
            "epoll_wait",
            "epoll_pwait",
            "epoll_ctl",
            "eventfd2",
            "futex",
            "inotify_init1",
            "inotify_add_watch",
            "ioctl",
            "setsid",
            "setgroups",
            "setuid",
            "setgid",
            "setresuid",
            "prctl",
            "arch_prctl",
            "rseq",
            "set_robust_list",
            "getrandom",
            "statx",
            "newfstatat",
            "fchownat",
            "fsetxattr",
            "renameat2",
            "mmap",
            "mprotect",
            "accept4",
            "sendmsg",
            "recvmsg",
            "pipe2",
            "dup3",
            "fsync",
            "sync_file_range",
            "capget",
            "capset",
            "prlimit64",
            "ptrace",
            "chroot",
            "memfd_create",
            "shmget",
            "mq_open",
            "kill",
        ] {
            assert!(allowed.contains(name), "{name} must be allowed");
        }
    }

    #[test]
    fn dangerous_calls_are_refused() {
        let p = default_profile();
        for name in NEVER_ALLOWED.iter().copied().chain([
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "perf_event_open",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "reboot",
            "acct",
            "settimeofday",
            "clock_settime",
            "syslog",
            "kcmp",
            "pidfd_getfd",
            "mbind",
            "fsopen",
            "open_tree",
            "sethostname",
            "iopl",
        ]) {
            let rules = rules_for(&p, name);
            assert!(
                rules
                    .iter()
                    .all(|r| r.action() != LinuxSeccompAction::ScmpActAllow),
                "{name} must not be allowed"
            );
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_and_clone3_says_enosys() {
        let p = default_profile();
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        let args = clone[0].args().as_ref().expect("clone is conditional");
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].index(), 0);
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(args[0].value(), 0x7E02_0000);
        assert_eq!(args[0].value_two(), Some(0));

        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn personality_and_socket_are_conditional() {
        let p = default_profile();
        let personas: Vec<u64> = rules_for(&p, "personality")
            .iter()
            .map(|r| {
                let args = r.args().as_ref().unwrap();
                assert_eq!(args.len(), 1);
                assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpEq);
                args[0].value()
            })
            .collect();
        assert_eq!(personas, ALLOWED_PERSONAS);

        // Whether some allow rule of socket admits `family` (the whole
        // 64-bit register) the way the kernel's filter compares it.
        let socket = rules_for(&p, "socket");
        let allows = |family: u64| {
            socket.iter().any(|r| {
                r.action() == LinuxSeccompAction::ScmpActAllow
                    && r.args().as_ref().is_some_and(|args| {
                        args.iter().all(|a| {
                            assert_eq!(a.index(), 0);
                            assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                            assert_eq!(a.value(), INT_BITS);
                            family & a.value() == a.value_two().unwrap()
                        })
                    })
            })
        };
        // AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET (NET_RAW
        // decides), AF_NFC, AF_MCTP.
        for family in [1, 2, 10, 16, 17, 39, 45] {
            assert!(allows(family), "family {family}");
        }
        for family in [AF_ALG, AF_VSOCK, 46, u64::MAX] {
            assert!(!allows(family), "family {family}");
        }
        // The filter decides on what the kernel reads: the low 32 bits.
        for high in [1u64 << 32, 0xffff_ffff_0000_0000] {
            assert!(!allows(high | AF_VSOCK) && !allows(high | AF_ALG));
            assert!(allows(high | 2), "AF_INET with high bits {high:#x}");
        }
        assert_eq!(socket.len(), 44);
    }

    #[test]
    fn mknod_makes_standard_devices_only() {
        let p = default_profile();
        // The kernel's 32-bit encoding of major:minor.
        let dev = |major: u64, minor: u64| (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        // Whether some allow rule of `name` matches `dev` at its index.
        let allows = |name: &str, dev: u64| {
            rules_for(&p, name).iter().any(|r| {
                r.action() == LinuxSeccompAction::ScmpActAllow
                    && r.args().as_ref().is_some_and(|args| {
                        args.iter().all(|a| {
                            assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
                            assert_eq!(a.index(), if name == "mknod" { 2 } else { 3 });
                            dev & a.value() == a.value_two().unwrap()
                        })
                    })
            })
        };
        for name in ["mknod", "mknodat"] {
            assert!(!allowed(&p).contains(name), "{name} must be conditional");
            for (major, minor) in [(0, 0), (1, 3), (1, 9), (5, 0), (5, 2), (136, 4)] {
                assert!(allows(name, dev(major, minor)), "{name} {major}:{minor}");
            }
            // tun, fuse, kvm, loop-control, a disk, a high minor of misc.
            for (major, minor) in [
                (10, 200),
                (10, 229),
                (10, 232),
                (10, 237),
                (8, 0),
                (10, 4000),
            ] {
                assert!(!allows(name, dev(major, minor)), "{name} {major}:{minor}");
                // Bits above the 32 the kernel reads change nothing.
                assert!(
                    !allows(name, dev(major, minor) | (1 << 40)),
                    "{name} {major}:{minor}"
                );
            }
        }
    }

    #[test]
    fn capabilities_open_their_groups() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.extend([Capability::SysAdmin, Capability::SysPtrace]);
        let p = profile(&caps);
        let allowed = allowed(&p);
        for name in ["mount", "unshare", "setns", "clone3", "kcmp", "clone"] {
            assert!(allowed.contains(name), "{name} with SYS_ADMIN/SYS_PTRACE");
        }
        assert!(!allowed.contains("init_module"), "SYS_MODULE not given");
        // No conditional clone rules are left next to the plain one.
        assert_eq!(rules_for(&p, "clone").len(), 1);
        assert_eq!(rules_for(&p, "clone3").len(), 1);
        // Names shared by two groups appear once.
        let both = profile(&[Capability::SysAdmin, Capability::Syslog]);
        let syslog = rules_for(&both, "syslog");
        assert_eq!(syslog.len(), 1);
        assert_eq!(
            syslog[0].names().iter().filter(|n| *n == "syslog").count(),
            1
        );
    }

    #[test]
    fn serializes_as_runc_expects() {
        let json = serde_json::to_value(default_profile()).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let rules = json["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(clone["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            clone["args"],
            serde_json::json!([{
                "index": 0,
                "value": 2_114_060_288u64,
                "valueTwo": 0,
                "op": "SCMP_CMP_MASKED_EQ"
            }])
        );
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone3"]))
            .unwrap();
        assert_eq!(clone3["errnoRet"], 38);
        assert!(rules[0].get("args").is_none());
    }
}
