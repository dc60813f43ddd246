//! What a sandbox cannot do, proven from inside real sandboxes: every
//! attempt below runs as root in the sandbox (the template's default user)
//! through `hutch exec`, and must fail — while ordinary programs (shells,
//! Python, `sudo`, `dpkg`, `apt`) keep working under the same filter.
//! See `docs/security.md` for the threat model.

use std::collections::BTreeMap;
use std::process::Output;

use hutch_test_support::{TestDir, TestServer, busybox_image, debian_image};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn import(server: &TestServer, image: &std::path::Path, name: &str, extra: &[&str]) {
    let mut args = vec![
        "template",
        "import",
        image.to_str().unwrap(),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    server.cli_ok(&args);
}

fn create(server: &TestServer, template: &str) -> String {
    server
        .cli_ok(&["sandbox", "create", template])
        .trim()
        .to_owned()
}

/// `sh -c SCRIPT` in the sandbox; its output, whatever its exit code.
fn sh(server: &TestServer, id: &str, script: &str) -> Output {
    server.cli(&["exec", id, "--", "sh", "-c", script])
}

/// `sh -c SCRIPT` in the sandbox, which must succeed; its stdout.
fn sh_ok(server: &TestServer, id: &str, script: &str) -> String {
    server.cli_ok(&["exec", id, "--", "sh", "-c", script])
}

/// `sh -c SCRIPT` must fail, and say `needle` on stderr.
fn refused(server: &TestServer, id: &str, script: &str, needle: &str) {
    let out = sh(server, id, script);
    assert!(
        !out.status.success(),
        "{script:?} must fail in the sandbox, but succeeded: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{script:?}: expected {needle:?} in {err:?}"
    );
}

/// Runs system calls from Python (ctypes, raw numbers for x86-64) and
/// sockets; prints `name result` lines, the result `ok` or an errno name.
const PROBE: &str = r#"
import ctypes, errno, os, socket, struct, time
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
buf = ctypes.create_string_buffer(b"none\0" + b"\0" * 64)
mnt = ctypes.create_string_buffer(b"/mnt\0")
tmpfs = ctypes.create_string_buffer(b"tmpfs\0")
results = {
    "mount": call(165, ctypes.addressof(tmpfs), ctypes.addressof(mnt), ctypes.addressof(tmpfs), 0, 0),
    "umount2": call(166, ctypes.addressof(mnt), 0),
    "pivot_root": call(155, ctypes.addressof(mnt), ctypes.addressof(mnt)),
    "init_module": call(175, ctypes.addressof(buf), 4, ctypes.addressof(buf)),
    "finit_module": call(313, 0, ctypes.addressof(buf), 0),
    "delete_module": call(176, ctypes.addressof(buf), 0),
    "kexec_load": call(246, 0, 0, 0, 0),
    "keyctl": call(250, 0, -3, 0),
    "add_key": call(248, ctypes.addressof(buf), ctypes.addressof(buf), 0, 0, -3),
    "request_key": call(249, ctypes.addressof(buf), ctypes.addressof(buf), 0, -3),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, ctypes.addressof(buf), 0, -1, -1, 0),
    "userfaultfd": call(323, 0),
    "open_by_handle_at": call(304, -100, ctypes.addressof(buf), 0),
    "unshare_user": call(272, 0x10000000),
    "unshare_net": call(272, 0x40000000),
    "unshare_mount": call(272, 0x00020000),
    "setns": call(308, 0, 0),
    "clone_newuser": call(56, 0x10000000 | 17, 0, 0, 0, 0),
    "clone3": call(435, ctypes.addressof(buf), 88),
    "io_uring_setup": call(425, 1, ctypes.addressof(buf)),
    "personality_query": call(135, 0xffffffff),
    "personality_exec": call(135, 0x0400000),
    "syslog": call(103, 3, ctypes.addressof(buf), 16),
    "reboot": call(169, 0, 0, 0, 0),
    "swapon": call(167, ctypes.addressof(buf), 0),
    "settimeofday": call(164, 0, 0),
    "acct": call(163, 0),
    "sethostname": call(170, ctypes.addressof(buf), 4),
}
def sock(name, family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        results[name] = "ok"
    except OSError as e:
        results[name] = errno.errorcode[e.errno]
sock("raw_socket", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock("packet_socket", 17, socket.SOCK_RAW, 0)
sock("vsock_socket", 40, socket.SOCK_STREAM, 0)
sock("tcp_socket", socket.AF_INET, socket.SOCK_STREAM, 0)
sock("unix_socket", socket.AF_UNIX, socket.SOCK_STREAM, 0)
# ping without NET_RAW: an ICMP datagram socket, echo to loopback.
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.settimeout(5)
    s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"hutch", ("127.0.0.1", 0))
    reply, _ = s.recvfrom(1024)
    results["icmp_echo"] = "ok" if reply[0] == 0 and reply.endswith(b"hutch") else "bad"
except OSError as e:
    results["icmp_echo"] = errno.errorcode[e.errno]
for k in sorted(results):
    print(k, results[k])
"#;

fn probe(server: &TestServer, id: &str) -> BTreeMap<String, String> {
    let out = server.cli_ok(&["exec", id, "--", "python3", "-c", PROBE]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn system_calls_outside_the_filter_fail_and_sockets_are_limited() {
    let server = TestServer::start();
    import(&server, &debian_image(), "deb", &[]);
    let id = create(&server, "deb");
    let got = probe(&server, &id);
    let expect = |name: &str, want: &str| {
        assert_eq!(
            got.get(name).map(String::as_str),
            Some(want),
            "{name}: all results: {got:#?}"
        );
    };
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "open_by_handle_at",
        "unshare_user",
        "unshare_net",
        "unshare_mount",
        "setns",
        "clone_newuser",
        "io_uring_setup",
        "personality_exec",
        "syslog",
        "reboot",
        "swapon",
        "settimeofday",
        "acct",
        "sethostname",
        "raw_socket",
        "packet_socket",
        "vsock_socket",
    ] {
        expect(name, "EPERM");
    }
    // clone3 says "not implemented", so that C libraries fall back to clone.
    expect("clone3", "ENOSYS");
    for name in [
        "personality_query",
        "tcp_socket",
        "unix_socket",
        "icmp_echo",
    ] {
        expect(name, "ok");
    }

    // The same refusals through the tools a user would reach for.
    refused(&server, &id, "mount -t tmpfs t /mnt", "permission denied");
    refused(
        &server,
        &id,
        "unshare --user true",
        "operation not permitted",
    );
    refused(
        &server,
        &id,
        "unshare --map-root-user true",
        "operation not permitted",
    );
    refused(&server, &id, "hostname evil", "must be root");
    refused(
        &server,
        &id,
        "echo 3 > /proc/sys/vm/drop_caches",
        "read-only file system",
    );
    refused(
        &server,
        &id,
        "echo 2 > /proc/sys/vm/overcommit_memory",
        "read-only file system",
    );
    // Root in the sandbox: Docker's capabilities without NET_RAW, no_new_privs,
    // a seccomp filter.
    let status = sh_ok(
        &server,
        &id,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    let status: BTreeMap<&str, &str> = status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    assert_eq!(status["CapEff"], "00000000a80405fb");
    assert_eq!(status["CapBnd"], "00000000a80405fb");
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    // A user other than root has no capabilities at all.
    let user = server.cli_ok(&[
        "exec",
        &id,
        "--user",
        "user",
        "--",
        "grep",
        "^CapEff:",
        "/proc/self/status",
    ]);
    assert_eq!(user.split_whitespace().nth(1), Some("0000000000000000"));
}

#[test]
fn ordinary_programs_work_under_the_filter() {
    let server = TestServer::start();
    import(
        &server,
        &debian_image(),
        "deb",
        &["--allow-privilege-escalation"],
    );
    let id = create(&server, "deb");
    let user =
        |script: &str| server.cli_ok(&["exec", &id, "--user", "user", "--", "bash", "-c", script]);

    // bash: pipes, subshells, job control in a script, process substitution.
    assert_eq!(
        user("set -e; x=$(echo a | tr a b); (sleep 0.1 &); wait; cat <(echo $x)"),
        "b\n"
    );
    // Python: threads, subprocesses (posix_spawn), multiprocessing.
    let py = r#"
import concurrent.futures, multiprocessing, subprocess, threading
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    assert sum(ex.map(lambda x: x * x, range(10))) == 285
assert subprocess.run(["true"]).returncode == 0
with multiprocessing.Pool(2) as p:
    assert p.map(abs, [-1, -2]) == [1, 2]
print("python ok")
"#;
    assert_eq!(
        server.cli_ok(&["exec", &id, "--user", "user", "--", "python3", "-c", py]),
        "python ok\n"
    );
    // sudo, in a template that allows privilege escalation.
    assert_eq!(user("sudo -n id -u"), "0\n");
    // ... which still gives no way out.
    let out = server.cli(&[
        "exec", &id, "--user", "user", "--", "sudo", "-n", "unshare", "--user", "true",
    ]);
    assert!(!out.status.success(), "sudo unshare must fail");
    // dpkg and apt install a package (built in the sandbox; no network
    // needed).
    let script = r#"set -e
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/local/bin
printf 'Package: hutch-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: probe\n' > /tmp/pkg/DEBIAN/control
printf '#!/bin/sh\necho probe-installed\n' > /tmp/pkg/usr/local/bin/hutch-probe
chmod 755 /tmp/pkg/usr/local/bin/hutch-probe
dpkg-deb --build /tmp/pkg /tmp/hutch-probe.deb >/dev/null
dpkg -i /tmp/hutch-probe.deb >/dev/null
hutch-probe
dpkg -r hutch-probe >/dev/null
apt-get install -y -q /tmp/hutch-probe.deb >/dev/null 2>&1
hutch-probe
dpkg -s hutch-probe | grep '^Status'
"#;
    assert_eq!(
        server.cli_ok(&["exec", &id, "--", "bash", "-c", script]),
        "probe-installed\nprobe-installed\nStatus: install ok installed\n"
    );
}

#[test]
fn a_sandbox_sees_only_itself() {
    let server = TestServer::start();
    import(&server, &busybox_image(), "bb", &[]);
    let id = create(&server, "bb");

    // Its own processes only: the agent is PID 1.
    assert_eq!(
        sh_ok(&server, &id, "tr '\\0' ' ' < /proc/1/cmdline"),
        "/run/hutch/bin/hutch-envd --boot /run/hutch/boot.json --environment-socket /run/hutch/environment.sock --listen-fd 3 "
    );
    let ps = sh_ok(&server, &id, "ps -o pid,comm");
    let procs: Vec<&str> = ps.lines().skip(1).collect();
    assert!(
        procs.len() <= 4,
        "only the agent and this command's processes: {ps}"
    );
    assert!(
        procs[0].split_whitespace().collect::<Vec<_>>() == ["1", "hutch-envd"],
        "{ps}"
    );
    // The host's processes do not exist here (the server's pid, for one).
    let server_pid = server.pid().to_string();
    refused(
        &server,
        &id,
        &format!("kill -0 {server_pid}"),
        "no such process",
    );
    assert_eq!(
        sh_ok(
            &server,
            &id,
            &format!("test -e /proc/{server_pid} && echo seen || echo unseen")
        ),
        "unseen\n"
    );

    // A host file is not visible.
    let dir = TestDir::new();
    let marker_name = format!("hutch-marker-{}", std::process::id());
    let marker = dir.path().join(&marker_name);
    std::fs::write(&marker, "host secret").unwrap();
    refused(
        &server,
        &id,
        &format!("cat {}", marker.display()),
        "no such file",
    );
    assert_eq!(
        sh_ok(&server, &id, &format!("find / -xdev -name {marker_name}")),
        ""
    );

    // Nothing to mount, no kernel log, no host name change, no writes to
    // kernel tunables or cgroups.
    refused(&server, &id, "mount -t tmpfs t /mnt", "denied");
    refused(&server, &id, "dmesg", "not permitted");
    refused(&server, &id, "hostname evil", "not permitted");
    refused(
        &server,
        &id,
        "echo 3 | tee /proc/sys/vm/drop_caches",
        "read-only",
    );
    refused(
        &server,
        &id,
        "echo 1 | tee /sys/fs/cgroup/pids/pids.max",
        "read-only",
    );
    refused(&server, &id, "cat /proc/kcore | head -c 1 | grep -q .", "");

    // Only the standard devices; a device node made here cannot be opened.
    let devices = sh_ok(
        &server,
        &id,
        "find /dev -xdev \\( -type c -o -type b \\) | sort | tr '\\n' ' '",
    );
    assert_eq!(
        devices,
        "/dev/full /dev/null /dev/random /dev/tty /dev/urandom /dev/zero "
    );
    // The terminal multiplexer is the sandbox's own devpts instance.
    assert_eq!(sh_ok(&server, &id, "readlink /dev/ptmx"), "pts/ptmx\n");
    refused(
        &server,
        &id,
        "mknod /tmp/disk b 7 0 && head -c 1 /tmp/disk",
        "not permitted",
    );
    refused(
        &server,
        &id,
        "mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem",
        "not permitted",
    );
}

#[test]
fn tmp_and_shm_are_private_to_each_sandbox() {
    let server = TestServer::start();
    import(&server, &busybox_image(), "bb", &[]);
    let a = create(&server, "bb");
    let b = create(&server, "bb");

    // A file on the host's /dev/shm.
    let host_shm = std::path::PathBuf::from(format!("/dev/shm/hutch-host-{}", std::process::id()));
    std::fs::write(&host_shm, "host").unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(host_shm.clone());

    sh_ok(&server, &a, "echo a > /tmp/mine && echo a > /dev/shm/mine");
    for (id, name) in [(&a, "a"), (&b, "b")] {
        let seen = sh_ok(
            &server,
            id,
            &format!(
                "cat /tmp/mine /dev/shm/mine 2>/dev/null; ls {} 2>/dev/null; echo end",
                host_shm.display()
            ),
        );
        let want = if name == "a" { "a\na\nend\n" } else { "end\n" };
        assert_eq!(seen, want, "sandbox {name}");
    }
    // /tmp is on the sandbox's writable layer, /dev/shm a 64 MiB tmpfs of its
    // own.
    let upper = server
        .data_dir()
        .join("sandboxes")
        .join(&a)
        .join("disk/upper/tmp/mine");
    assert_eq!(std::fs::read_to_string(upper).unwrap(), "a\n");
    let shm = sh_ok(&server, &a, "df -k /dev/shm | tail -n 1");
    let fields: Vec<&str> = shm.split_whitespace().collect();
    assert_eq!(fields[0], "shm", "{shm}");
    assert_eq!(fields[1], "65536", "{shm}");
    assert!(!sh_ok(&server, &b, "ls /dev/shm").contains("mine"));
}
