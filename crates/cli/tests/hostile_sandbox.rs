//! A hostile root inside a real sandbox, beyond what `isolation.rs`,
//! `host_boundary.rs` and `limits.rs` already try: the escape paths of
//! Docker's and runc's own security history, each attempted from inside as
//! root (the template's default user) through `hutch exec`.
//!
//! One server, two sandboxes of the Debian test image: `a` runs every
//! single-sandbox attempt (one Python program, so the checks cost one
//! exec), then floods `b`, whose liveness and own network are checked while
//! the flood runs. Each check is a function below; `docs/security.md`
//! ("Compared with Docker's defaults") lists them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hutch_test_support::{FAKE_INTERNET_BODY, FakeInternet, TestDir, TestServer, debian_image};

/// Longest any single command in a sandbox may take, flood or not.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// How long sandbox `a` floods sandbox `b`, seconds (bounded by count too).
const FLOOD_SECONDS: u32 = 5;

/// Ports `b` listens on during the flood.
const B_TCP_PORT: u16 = 9000;
const B_UDP_PORT: u16 = 9001;

/// Runs `hutch ARGS`; panics if it has not finished within
/// [`COMMAND_DEADLINE`] (a hung sandbox is a failure, not a wait).
fn cli_within(server: &TestServer, args: &[&str]) -> Output {
    let mut cmd = server.hutch();
    cmd.args(args);
    run_within(cmd, &format!("hutch {args:?}"))
}

fn run_within(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    loop {
        if child.try_wait().expect("wait for hutch").is_some() {
            return child.wait_with_output().expect("collect hutch output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect hutch output");
            panic!(
                "{what} did not finish within {COMMAND_DEADLINE:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok_stdout(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `python3 -c SCRIPT ARGS...` as root in the sandbox; must succeed.
fn python(server: &TestServer, id: &str, script: &str, args: &[&str]) -> String {
    let mut argv = vec!["exec", id, "--", "python3", "-c", script];
    argv.extend_from_slice(args);
    ok_stdout(&format!("python in {id}"), cli_within(server, &argv))
}

/// `sh -c SCRIPT` as root in the sandbox; its output, whatever its status.
fn sh(server: &TestServer, id: &str, script: &str) -> Output {
    cli_within(server, &["exec", id, "--", "sh", "-c", script])
}

/// `key value` lines as a map.
fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every single-sandbox attempt, in one program. Arguments: host pids
/// (comma-separated) and the path of a file that exists on the host only.
/// Prints `name result` lines; a result is `ok`, an errno name, or what the
/// attempt saw.
const HOSTILE: &str = r##"
import ctypes, errno, os, socket, stat, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
R = {}
KEEP = []
def put(k, v):
    R[k] = str(v).replace("\n", " ") or "-"
def ename(e):
    return errno.errorcode.get(e, str(e))
def raw(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
def call(nr, *args):
    r, e = raw(nr, *args)
    return "ok" if r >= 0 else ename(e)
def cstr(s):
    b = ctypes.create_string_buffer(s.encode() + b"\0")
    KEEP.append(b)
    return ctypes.addressof(b)
def buf(data):
    b = ctypes.create_string_buffer(data, len(data))
    KEEP.append(b)
    return b
def iov(addr, n):
    return ctypes.addressof(buf(struct.pack("QQ", addr, n)))
def opens(path, flags):
    try:
        os.close(os.open(path, flags))
        return "ok"
    except OSError as e:
        return ename(e.errno)
def readlen(path):
    try:
        with open(path, "rb") as f:
            return str(len(f.read(65536)))
    except FileNotFoundError:
        return "absent"
    except OSError as e:
        return ename(e.errno)

host_pids = [int(p) for p in sys.argv[1].split(",")]
host_marker = sys.argv[2]

# 1. ptrace and process_vm_* at host processes; at a child of our own.
local = ctypes.create_string_buffer(64)
for i, pid in enumerate(host_pids):
    put(f"host{i}_proc", "present" if os.path.exists(f"/proc/{pid}") else "absent")
    put(f"host{i}_attach", call(101, 16, pid, 0, 0))
    put(f"host{i}_seize", call(101, 0x4206, pid, 0, 0))
    put(f"host{i}_vm_readv", call(310, pid, iov(ctypes.addressof(local), 8), 1, iov(0x400000, 8), 1, 0))
    put(f"host{i}_vm_writev", call(311, pid, iov(ctypes.addressof(local), 8), 1, iov(0x400000, 8), 1, 0))
    put(f"host{i}_pidfd_open", call(434, pid, 0))
secret = ctypes.create_string_buffer(16)
r, w = os.pipe()
child = os.fork()
if child == 0:
    secret.value = b"child-secret"
    os.write(w, b"x")
    time.sleep(60)
    os._exit(0)
os.read(r, 1)
got = ctypes.create_string_buffer(16)
n, e = raw(310, child, iov(ctypes.addressof(got), 12), 1, iov(ctypes.addressof(secret), 12), 1, 0)
put("child_vm_readv", got.value.decode() if n == 12 else ename(e))
put("child_seize", call(101, 0x4206, child, 0, 0))
put("child_interrupt", call(101, 0x4207, child, 0, 0))
_, status = os.waitpid(child, 0)
put("child_stopped", "yes" if os.WIFSTOPPED(status) else status)
word = ctypes.c_ulong(0)
put("child_peek", call(101, 2, child, ctypes.addressof(secret), ctypes.addressof(word)))
put("child_peek_value", struct.pack("Q", word.value).decode(errors="replace"))
put("child_detach", call(101, 17, child, 0, 0))
os.kill(child, 9)
os.waitpid(child, 0)

# 2. cgroups: mounting a hierarchy, release_agent, any write.
os.makedirs("/tmp/cg", exist_ok=True)
put("mount_cgroup_v1", call(165, cstr("cgroup"), cstr("/tmp/cg"), cstr("cgroup"), 0, cstr("memory")))
put("mount_cgroup_v1_named", call(165, cstr("cgroup"), cstr("/tmp/cg"), cstr("cgroup"), 0, cstr("none,name=hutch")))
put("mount_cgroup2", call(165, cstr("cgroup2"), cstr("/tmp/cg"), cstr("cgroup2"), 0, 0))
release, checked, mkdirs, leaks = 0, 0, {}, []
for root, dirs, files in os.walk("/sys/fs/cgroup"):
    for f in files:
        p = os.path.join(root, f)
        try:
            st = os.stat(p)
        except OSError:
            continue
        special = f in ("release_agent", "notify_on_release")
        release += special
        if special or st.st_mode & 0o222:
            checked += 1
            res = opens(p, os.O_WRONLY)
            if res != "EROFS":
                leaks.append(f"{p}={res}")
    try:
        os.mkdir(os.path.join(root, "hutch-escape"))
        res = "ok"
    except OSError as e:
        res = ename(e.errno)
    mkdirs[res] = mkdirs.get(res, 0) + 1
put("cgroup_release_files", release)
put("cgroup_write_checked", checked)
put("cgroup_writable", ",".join(leaks))
put("cgroup_mkdir", ",".join(sorted(mkdirs)))
put("cgroup_release_agent_create", opens("/sys/fs/cgroup/release_agent", os.O_WRONLY | os.O_CREAT))
# The options of the mount on top at each mount point.
top = {}
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        top[fields[4]] = fields[5].split(",")
put("sys_mounts_writable", ",".join(p for p, o in top.items() if (p == "/sys" or p.startswith("/sys/")) and "ro" not in o))
put("sys_mounts", sum(1 for p in top if p == "/sys" or p.startswith("/sys/")))
put("agent_binary_mount", ",".join(o for o in top.get("/run/hutch/bin/hutch-envd", ["absent"]) if o in ("ro", "rw", "absent")))

# 3. /sys and /proc.
checked, leaks, named = 0, [], {}
for root, dirs, files in os.walk("/sys"):
    if root.startswith("/sys/fs/cgroup"):
        continue
    for f in files:
        p = os.path.join(root, f)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o222:
            checked += 1
            res = opens(p, os.O_WRONLY)
            if res not in ("EROFS", "EACCES"):
                leaks.append(f"{p}={res}")
put("sys_write_checked", checked)
put("sys_writable", ",".join(leaks[:20]))
for p in ["/sys/kernel/uevent_helper", "/sys/kernel/mm/transparent_hugepage/enabled",
          "/sys/class/net/lo/mtu", "/sys/class/net/eth0/mtu", "/sys/power/state"]:
    put("write" + p.replace("/", "_"), opens(p, os.O_WRONLY) if os.path.exists(p) else "absent")
params = [os.path.join(r, f) for r, _, fs in os.walk("/sys/module") for f in fs if r.endswith("/parameters")]
put("sys_module_parameters", len(params))
put("sys_module_parameters_writable", ",".join(p for p in params if opens(p, os.O_WRONLY) not in ("EROFS", "EACCES")))
for d in ["/sys/kernel/debug", "/sys/kernel/tracing", "/sys/kernel/security", "/sys/kernel/config",
          "/sys/fs/bpf", "/sys/fs/fuse/connections", "/sys/fs/pstore", "/sys/firmware"]:
    try:
        put("entries" + d.replace("/", "_"), len(os.listdir(d)))
    except FileNotFoundError:
        put("entries" + d.replace("/", "_"), 0)
    except OSError as e:
        put("entries" + d.replace("/", "_"), ename(e.errno))
for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats",
          "/proc/timer_stats", "/proc/interrupts"]:
    put("read" + p.replace("/", "_"), readlen(p))
for d in ["/proc/acpi", "/proc/scsi", "/proc/asound"]:
    put("entries" + d.replace("/", "_"), len(os.listdir(d)) if os.path.isdir(d) else 0)
put("read_proc_kmsg", opens("/proc/kmsg", os.O_RDONLY | os.O_NONBLOCK))
def nonzero_addresses(path, field):
    lines = open(path).read().splitlines()
    return len(lines), sum(1 for l in lines if int(l.split()[field].replace("0x", ""), 16) != 0)
lines, nonzero = nonzero_addresses("/proc/kallsyms", 0)
put("kallsyms_lines", lines)
put("kallsyms_nonzero", nonzero)
if os.path.exists("/proc/modules") and open("/proc/modules").read().strip():
    put("modules_nonzero", nonzero_addresses("/proc/modules", 5)[1])
else:
    put("modules_nonzero", 0)
for p in ["/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
          "/proc/sys/kernel/kptr_restrict", "/proc/sys/fs/binfmt_misc/register"]:
    put("write" + p.replace("/", "_"), opens(p, os.O_WRONLY) if os.path.exists(p) else "absent")

# 4. The clock.
ts = buf(struct.pack("qq", int(time.time()) + 3600, 0))
put("clock_settime", call(227, 0, ctypes.addressof(ts)))
tx = buf(b"\0" * 256)
put("adjtimex_read", call(159, ctypes.addressof(tx)))
struct.pack_into("I", tx, 0, 0x0004)  # ADJ_MAXERROR, current value kept
put("adjtimex_set", call(159, ctypes.addressof(tx)))
put("clock_adjtime_set", call(305, 0, ctypes.addressof(tx)))
tx = buf(b"\0" * 256)
struct.pack_into("I", tx, 0, 0x0100)  # ADJ_SETOFFSET by one hour
struct.pack_into("qq", tx, 72, 3600, 0)
put("clock_adjtime_offset", call(305, 0, ctypes.addressof(tx)))

# 5. Modules, kexec, raw I/O, the new mount API, keyrings and namespaces
# beyond the calls isolation.rs tries.
with open("/tmp/hutch-probe.ko", "wb") as f:
    f.write(b"\x7fELF\x02\x01\x01" + b"\0" * 57)
ko = os.open("/tmp/hutch-probe.ko", os.O_RDONLY)
put("finit_module_file", call(313, ko, cstr(""), 0))
put("kexec_file_load", call(320, ko, -1, 1, cstr(""), 4))
put("iopl", call(172, 3))
put("ioperm", call(173, 0x80, 1, 1))
put("fsopen", call(430, cstr("tmpfs"), 0))
put("fspick", call(433, -100, cstr("/"), 0))
put("open_tree", call(428, -100, cstr("/"), 1))
put("move_mount", call(429, -100, cstr("/tmp"), -100, cstr("/mnt"), 4))
put("fsmount", call(432, 0, 0, 0))
put("mount_setattr", call(442, -100, cstr("/"), 0, ctypes.addressof(buf(b"\0" * 32)), 32))
put("quotactl", call(179, 0x800002, cstr("/dev/null"), 0, 0))
put("lookup_dcookie", call(212, 0, 0, 0))
put("kcmp", call(312, os.getpid(), os.getpid(), 0, 0, 0))
put("pidfd_getfd", call(438, 0, 0, 0))
put("process_madvise", call(440, 0, 0, 0, 0, 0))
put("modify_ldt", call(154, 0, ctypes.addressof(buf(b"\0" * 16)), 16))
put("uselib", call(134, cstr("/tmp/hutch-probe.ko")))
put("ustat", call(136, 0, ctypes.addressof(buf(b"\0" * 64))))
put("sysfs_syscall", call(139, 3))
put("setdomainname", call(171, cstr("evil"), 4))
put("swapoff", call(168, cstr("/tmp/hutch-probe.ko")))
put("keyctl_join_session", call(250, 1, cstr("hutch")))
put("x32_mount", call(0x40000000 | 165, cstr("tmpfs"), cstr("/mnt"), cstr("tmpfs"), 0, 0))
put("x32_unshare_user", call(0x40000000 | 272, 0x10000000))
put("x32_keyctl", call(0x40000000 | 250, 0, -3, 0))
for flag_name, flag in [("ns", 0x20000), ("cgroup", 0x02000000), ("uts", 0x04000000),
                        ("ipc", 0x08000000), ("pid", 0x20000000), ("net", 0x40000000)]:
    r, e = raw(56, 17 | flag, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    put(f"clone_new{flag_name}", "ok" if r > 0 else ename(e))
for flag_name, flag in [("cgroup", 0x02000000), ("uts", 0x04000000), ("ipc", 0x08000000),
                        ("pid", 0x20000000), ("time", 0x80)]:
    put(f"unshare_{flag_name}", call(272, flag))
def sock(name, *args):
    try:
        socket.socket(*args).close()
        put(name, "ok")
    except OSError as e:
        put(name, ename(e.errno))
sock("socket_alg", 38, socket.SOCK_SEQPACKET, 0)
sock("socket_packet_dgram", 17, socket.SOCK_DGRAM, 0)
sock("socket_raw_ipproto_raw", socket.AF_INET, socket.SOCK_RAW, 255)
# The kernel reads the family as a 32-bit int: bits above it must not
# carry a refused family past the filter.
put("socket_vsock_high_bits", call(41, (1 << 32) | 40, socket.SOCK_STREAM, 0))
put("socket_alg_high_bits", call(41, (1 << 32) | 38, socket.SOCK_SEQPACKET, 0))

# 7. chroot leads nowhere outside; the agent's binary cannot be replaced
# (CVE-2019-5736); no descriptor of a host directory leaks in
# (CVE-2024-21626).
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.makedirs("/tmp/jail", exist_ok=True)
        top = os.open("/", os.O_RDONLY)
        os.chroot("/tmp/jail")
        os.fchdir(top)
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        seen = "host" if os.path.exists(host_marker) else "sandbox" if os.path.exists("/run/hutch/boot.json") else "other"
    except OSError as e:
        seen = ename(e.errno)
    os.write(w, seen.encode())
    os._exit(0)
os.close(w)
put("chroot_escape_lands_in", os.read(r, 64).decode())
os.waitpid(pid, 0)
put("host_marker", "seen" if os.path.exists(host_marker) else "unseen")
put("write_proc_1_exe", opens("/proc/1/exe", os.O_WRONLY))
put("write_agent_binary", opens("/run/hutch/bin/hutch-envd", os.O_WRONLY))
put("write_boot_json", opens("/run/hutch/boot.json", os.O_WRONLY))
def attempt(name, f):
    try:
        f()
        put(name, "ok")
    except OSError as e:
        put(name, ename(e.errno))
attempt("chmod_agent_binary", lambda: os.chmod("/run/hutch/bin/hutch-envd", 0o777))
attempt("unlink_agent_binary", lambda: os.unlink("/run/hutch/bin/hutch-envd"))
open("/tmp/evil", "w").write("#!/bin/sh\n")
attempt("rename_over_agent_binary", lambda: os.rename("/tmp/evil", "/run/hutch/bin/hutch-envd"))
dirfds = []
for p in ["1", "self"]:
    for fd in os.listdir(f"/proc/{p}/fd"):
        link = f"/proc/{p}/fd/{fd}"
        try:
            st, target = os.stat(link), os.readlink(link)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and not target.startswith("/proc/"):
            dirfds.append(f"{p}:{fd}:{target}")
put("directory_fds", ",".join(dirfds))
# Each root and working directory is the directory its path names in the
# sandbox (a host directory would not be reachable by its path).
for p in ["/proc/1/root", "/proc/1/cwd", "/proc/self/root", "/proc/self/cwd"]:
    st, there = os.stat(p), os.stat(os.readlink(p))
    put("reachable" + p.replace("/", "_"), (st.st_dev, st.st_ino) == (there.st_dev, there.st_ino))
put("agent_root_is_root", os.readlink("/proc/1/root") == "/")

for k in sorted(R):
    print(k, R[k])
"##;

/// What sandbox `a` sends at `b`: UDP datagrams and TCP connection
/// attempts (SYNs) as fast as one Python loop can, for `seconds` (at most
/// two million datagrams), then one blocking connection and one ICMP echo.
/// Arguments: `b`'s address, UDP port, TCP port, seconds, a file to create
/// once the flood starts.
const FLOOD: &str = r#"
import errno, os, socket, struct, sys, time
target, udp_port, tcp_port, seconds, started = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setblocking(False)
payload = b"flood" * 200
sent = send_errors = tcp_tries = tcp_connected = 0
open(started, "w").close()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and sent + send_errors < 2_000_000:
    for _ in range(256):
        try:
            udp.sendto(payload, (target, udp_port))
            sent += 1
        except OSError:
            send_errors += 1
    for _ in range(16):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        tcp_tries += 1
        if s.connect_ex((target, tcp_port)) == 0:
            tcp_connected += 1
        s.close()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect((target, tcp_port))
    final = "connected"
except socket.timeout:
    final = "timeout"
except OSError as e:
    final = errno.errorcode.get(e.errno, str(e.errno))
icmp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
icmp.settimeout(2)
try:
    icmp.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"hutch", (target, 0))
    icmp.recvfrom(1024)
    echo = "reply"
except socket.timeout:
    echo = "timeout"
except OSError as e:
    echo = errno.errorcode.get(e.errno, str(e.errno))
print("udp_sent", sent)
print("tcp_tries", tcp_tries)
print("tcp_connected", tcp_connected)
print("tcp_final", final)
print("icmp_echo", echo)
"#;

/// `b`'s listener: TCP and UDP on every address; answers each connection
/// and records `kind source count` lines in /tmp/seen.
const LISTEN: &str = r#"
import os, select, socket
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(os.environ["TCP_PORT"])))
t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", int(os.environ["UDP_PORT"])))
counts = {}
open("/tmp/listening", "w").close()
while True:
    ready, _, _ = select.select([t, u], [], [])
    for s in ready:
        if s is t:
            c, addr = t.accept()
            c.sendall(b"b-answers\n")
            c.close()
            key = "tcp " + addr[0]
        else:
            _, addr = u.recvfrom(4096)
            key = "udp " + addr[0]
        counts[key] = counts.get(key, 0) + 1
        with open("/tmp/seen.tmp", "w") as f:
            f.write("".join(f"{k} {v}\n" for k, v in sorted(counts.items())))
        os.replace("/tmp/seen.tmp", "/tmp/seen")
"#;

/// `b` checks its own network: its listener answers on its own address
/// and on loopback, and it reaches the fake internet. Arguments: its
/// address, the TCP port, the fake internet's URL.
const B_NETWORK: &str = r#"
import socket, sys, urllib.request
own, port, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for addr in (own, "127.0.0.1"):
    with socket.create_connection((addr, port), timeout=10) as s:
        assert s.recv(64) == b"b-answers\n", addr
print(urllib.request.urlopen(url, timeout=10).read().decode(), end="")
"#;

fn address(server: &TestServer, id: &str) -> String {
    let out = python(
        server,
        id,
        "import socket, fcntl, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         r = fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'eth0'))\n\
         print(socket.inet_ntoa(r[20:24]))",
        &[],
    );
    out.trim().to_owned()
}

/// The host pid of a sandbox's agent, from runc's state.
fn agent_host_pid(server: &TestServer, id: &str) -> u32 {
    let out = Command::new("runc")
        .arg("--root")
        .arg(server.data_dir().join("runc"))
        .args(["state", id])
        .output()
        .expect("run runc state");
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "runc state {id}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    state["pid"].as_u64().expect("runc state has a pid") as u32
}

fn expect(got: &BTreeMap<String, String>, name: &str, allowed: &[&str]) {
    let value = got.get(name).map(String::as_str);
    assert!(
        value.is_some_and(|v| allowed.contains(&v)),
        "{name}: got {value:?}, expected one of {allowed:?}; all results: {got:#?}"
    );
}

/// Check 1: No host process can be traced, read or written: ptrace
/// `PTRACE_ATTACH` / `PTRACE_SEIZE`, `process_vm_readv` / `writev` and
/// `pidfd_open` of host pids (the server, the test, another sandbox's
/// agent) find no such process, and `/proc/<pid>` does not exist. (PID 1 in
/// the sandbox is its own agent; the host's PID 1 has no name inside.)
/// Tracing a child of its own works: debuggers are allowed.
fn ptrace_reaches_no_host_process(got: &BTreeMap<String, String>, host_pids: usize) {
    for i in 0..host_pids {
        expect(got, &format!("host{i}_proc"), &["absent"]);
        for call in ["attach", "seize", "vm_readv", "vm_writev", "pidfd_open"] {
            expect(got, &format!("host{i}_{call}"), &["ESRCH"]);
        }
    }
    expect(got, "child_vm_readv", &["child-secret"]);
    for call in [
        "child_seize",
        "child_interrupt",
        "child_peek",
        "child_detach",
    ] {
        expect(got, call, &["ok"]);
    }
    expect(got, "child_stopped", &["yes"]);
    expect(got, "child_peek_value", &["child-se"]);
}

/// Check 2: The cgroup `release_agent` escape (CVE-2022-0492): no cgroup
/// hierarchy (v1, named v1, v2) can be mounted; every file under
/// `/sys/fs/cgroup` that has a write bit — `release_agent` and
/// `notify_on_release` included, wherever they are — fails to open for
/// writing with `EROFS`, and so does creating `release_agent` or a child
/// cgroup; every mount under `/sys` is read-only.
fn cgroup_release_agent_escape_is_closed(got: &BTreeMap<String, String>) {
    for m in ["mount_cgroup_v1", "mount_cgroup_v1_named", "mount_cgroup2"] {
        expect(got, m, &["EPERM"]);
    }
    let checked: u32 = got["cgroup_write_checked"].parse().unwrap();
    assert!(checked > 0, "no cgroup file found to try: {got:#?}");
    expect(got, "cgroup_writable", &["-"]);
    expect(got, "cgroup_mkdir", &["EROFS"]);
    expect(got, "cgroup_release_agent_create", &["EROFS"]);
    expect(got, "sys_mounts_writable", &["-"]);
    let sys_mounts: u32 = got["sys_mounts"].parse().unwrap();
    assert!(
        sys_mounts >= 2,
        "/sys and /sys/fs/cgroup are mounts: {got:#?}"
    );
}

/// Check 3: `/sys` cannot be written (every writable-looking file under it, the
/// kernel's, the network devices', module parameters), the kernel's
/// debug, tracing, security, config, bpf, fuse and pstore file systems are
/// not there, and the sensitive `/proc` files are masked or unreadable;
/// kernel addresses read as zero.
fn sys_and_proc_are_read_only_or_masked(got: &BTreeMap<String, String>) {
    let checked: u32 = got["sys_write_checked"].parse().unwrap();
    assert!(checked > 100, "too few /sys files tried: {got:#?}");
    expect(got, "sys_writable", &["-"]);
    expect(got, "sys_module_parameters_writable", &["-"]);
    let params: u32 = got["sys_module_parameters"].parse().unwrap();
    assert!(params > 0, "no module parameter found to try: {got:#?}");
    for p in [
        "write_sys_kernel_uevent_helper",
        "write_sys_kernel_mm_transparent_hugepage_enabled",
        "write_sys_class_net_lo_mtu",
        "write_sys_class_net_eth0_mtu",
        "write_sys_power_state",
    ] {
        expect(got, p, &["EROFS", "absent"]);
    }
    expect(got, "write_sys_class_net_lo_mtu", &["EROFS"]);
    for d in [
        "entries_sys_kernel_debug",
        "entries_sys_kernel_tracing",
        "entries_sys_kernel_security",
        "entries_sys_kernel_config",
        "entries_sys_fs_bpf",
        "entries_sys_fs_fuse_connections",
        "entries_sys_fs_pstore",
        "entries_sys_firmware",
        "entries_proc_acpi",
        "entries_proc_scsi",
        "entries_proc_asound",
    ] {
        expect(got, d, &["0"]);
    }
    for p in [
        "read_proc_kcore",
        "read_proc_keys",
        "read_proc_timer_list",
        "read_proc_sched_debug",
        "read_proc_latency_stats",
        "read_proc_timer_stats",
        "read_proc_interrupts",
    ] {
        expect(got, p, &["0", "absent"]);
    }
    expect(got, "read_proc_kmsg", &["EPERM"]);
    let lines: u32 = got["kallsyms_lines"].parse().unwrap();
    assert!(lines > 1000, "/proc/kallsyms lists the symbols: {got:#?}");
    expect(got, "kallsyms_nonzero", &["0"]);
    expect(got, "modules_nonzero", &["0"]);
    // sysrq and modprobe exist only in kernels built with them.
    for p in ["write_proc_sysrq-trigger", "write_proc_sys_kernel_modprobe"] {
        expect(got, p, &["EROFS", "absent"]);
    }
    for p in [
        "write_proc_sys_kernel_core_pattern",
        "write_proc_sys_kernel_kptr_restrict",
    ] {
        expect(got, p, &["EROFS"]);
    }
    expect(
        got,
        "write_proc_sys_fs_binfmt_misc_register",
        &["absent", "EROFS"],
    );
}

/// Check 4: The clock cannot be set or slewed: `clock_settime`, `adjtimex` and
/// `clock_adjtime` with a modification fail with `EPERM` (reading through
/// `adjtimex` works), `date -s` fails, and the host's clock did not move.
fn clock_cannot_be_changed(
    server: &TestServer,
    id: &str,
    got: &BTreeMap<String, String>,
    host_clock: &HostClock,
) {
    for call in [
        "clock_settime",
        "adjtimex_set",
        "clock_adjtime_set",
        "clock_adjtime_offset",
    ] {
        expect(got, call, &["EPERM"]);
    }
    expect(got, "adjtimex_read", &["ok"]);
    let out = sh(server, id, "date -s @$(( $(date +%s) + 3600 ))");
    assert!(!out.status.success(), "date -s succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    host_clock.assert_unchanged();
}

/// Check 5: Module loading from a file (what `insmod` does; `kmod` and
/// `keyutils` are not in the image, their system calls are tried
/// directly), `kexec_file_load`, port I/O, the new mount API, quotas,
/// `lookup_dcookie`, `kcmp`, `pidfd_getfd`, `process_madvise`,
/// `modify_ldt`, `uselib`, `ustat`, `sysfs`, `setdomainname`, `swapoff`,
/// joining a keyring, the x32 ABI's mount/unshare/keyctl, `clone` and
/// `unshare` with every other namespace flag, and `AF_ALG`, packet and
/// `IPPROTO_RAW` sockets, and `AF_VSOCK` and `AF_ALG` sockets asked for
/// with bits above the 32 the kernel reads: all refused.
fn more_kernel_interfaces_are_refused(got: &BTreeMap<String, String>) {
    for call in [
        "finit_module_file",
        "kexec_file_load",
        "iopl",
        "ioperm",
        "fsopen",
        "fspick",
        "open_tree",
        "move_mount",
        "fsmount",
        "mount_setattr",
        "quotactl",
        "lookup_dcookie",
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "modify_ldt",
        "uselib",
        "ustat",
        "sysfs_syscall",
        "setdomainname",
        "swapoff",
        "keyctl_join_session",
        "x32_mount",
        "x32_unshare_user",
        "x32_keyctl",
        "clone_newns",
        "clone_newcgroup",
        "clone_newuts",
        "clone_newipc",
        "clone_newpid",
        "clone_newnet",
        "unshare_cgroup",
        "unshare_uts",
        "unshare_ipc",
        "unshare_pid",
        "unshare_time",
        "socket_alg",
        "socket_packet_dgram",
        "socket_raw_ipproto_raw",
        "socket_vsock_high_bits",
        "socket_alg_high_bits",
    ] {
        expect(got, call, &["EPERM"]);
    }
}

/// Check 7: Escapes from runc's history: a `chroot` break-out (`SYS_CHROOT` is
/// kept, as in Docker) climbs only to the sandbox's own root; the agent's
/// executable cannot be overwritten, through `/proc/1/exe` or its path
/// (CVE-2019-5736: it is a read-only bind), nor replaced, removed or
/// `chmod`ed, and `boot.json` is read-only; no process holds a descriptor
/// of a directory (a leaked host directory would be CVE-2024-21626), and
/// every root and working directory (the agent's, this process's) is the
/// directory its path names inside the sandbox.
fn runc_escapes_are_closed(got: &BTreeMap<String, String>) {
    expect(got, "chroot_escape_lands_in", &["sandbox"]);
    expect(got, "host_marker", &["unseen"]);
    // The kernel refuses the write access of a running executable
    // (`ETXTBSY`) before it checks the mount; the mount is read-only.
    expect(got, "write_proc_1_exe", &["EROFS", "ETXTBSY"]);
    expect(got, "write_agent_binary", &["EROFS", "ETXTBSY"]);
    expect(got, "agent_binary_mount", &["ro"]);
    expect(got, "write_boot_json", &["EROFS"]);
    expect(got, "chmod_agent_binary", &["EROFS"]);
    expect(got, "unlink_agent_binary", &["EBUSY"]);
    expect(got, "rename_over_agent_binary", &["EBUSY"]);
    expect(got, "directory_fds", &["-"]);
    for p in [
        "reachable_proc_1_root",
        "reachable_proc_1_cwd",
        "reachable_proc_self_root",
        "reachable_proc_self_cwd",
        "agent_root_is_root",
    ] {
        expect(got, p, &["True"]);
    }
}

/// The host's wall clock against its monotonic clock.
struct HostClock {
    wall: SystemTime,
    mono: Instant,
}

impl HostClock {
    fn now() -> HostClock {
        HostClock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// Seconds the wall clock moved beyond the time that passed.
    fn drift(&self) -> f64 {
        let wall = SystemTime::now()
            .duration_since(self.wall)
            .map(|d| d.as_secs_f64())
            .unwrap_or_else(|e| -e.duration().as_secs_f64());
        wall - self.mono.elapsed().as_secs_f64()
    }

    /// The attempts above would move it by an hour; a second of slack
    /// absorbs NTP slewing.
    fn assert_unchanged(&self) {
        let drift = self.drift();
        assert!(
            drift.abs() < 1.0,
            "the host's clock moved by {drift:.1} s during the sandbox's attempts"
        );
    }
}

/// Check 6: A flood at a neighbour: `a` sends UDP datagrams and TCP SYNs at
/// `b`'s address for [`FLOOD_SECONDS`]. Sandboxes cannot reach each other
/// (docs/security.md, "Network"): nothing of it arrives at `b` (its
/// listener, which does receive `b`'s own datagrams and connections,
/// records no packet from `a`), `a`'s connections fail and its ICMP echo
/// gets no reply. Meanwhile every command sent to `b` through the API
/// succeeds, and `b`'s own network works: its listener answers on its
/// address and on loopback, and it reaches the (fake) internet.
fn a_flood_at_a_neighbour_neither_arrives_nor_stops_it(server: &TestServer, a: &str, b: &str) {
    let net = FakeInternet::start();
    let url = net.url();
    let addr_b = address(server, b);
    let ports = [B_TCP_PORT.to_string(), B_UDP_PORT.to_string()];
    let start = sh(
        server,
        b,
        &format!(
            "TCP_PORT={} UDP_PORT={} setsid python3 -c '{}' </dev/null >/tmp/listen.log 2>&1 &",
            ports[0],
            ports[1],
            LISTEN.replace('\'', "'\\''")
        ),
    );
    ok_stdout("start b's listener", start);
    let deadline = Instant::now() + COMMAND_DEADLINE;
    while !sh(server, b, "test -e /tmp/listening").status.success() {
        assert!(
            Instant::now() < deadline,
            "b's listener did not start: {}",
            String::from_utf8_lossy(&sh(server, b, "cat /tmp/listen.log").stdout)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let b_network = |when: &str| {
        let out = python(server, b, B_NETWORK, &[&addr_b, &ports[0], &url]);
        assert_eq!(out, FAKE_INTERNET_BODY, "b's network {when}");
    };
    // Before: b's listener hears b itself, over UDP too.
    b_network("before the flood");
    python(
        server,
        b,
        "import socket, sys\n\
         socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'self', (sys.argv[1], int(sys.argv[2])))",
        &[&addr_b, &ports[1]],
    );

    let mut flood = server.hutch();
    let seconds = FLOOD_SECONDS.to_string();
    flood.args([
        "exec",
        a,
        "--",
        "python3",
        "-c",
        FLOOD,
        &addr_b,
        &ports[1],
        &ports[0],
        &seconds,
        "/tmp/flood-started",
    ]);
    let flood = std::thread::spawn(move || run_within(flood, "the flood"));
    let deadline = Instant::now() + COMMAND_DEADLINE;
    while !sh(server, a, "test -e /tmp/flood-started").status.success() {
        assert!(
            Instant::now() < deadline && !flood.is_finished(),
            "the flood did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs: b answers every command and its network works.
    let mut during = 0;
    while !flood.is_finished() {
        let out = ok_stdout(
            "a command in b during the flood",
            cli_within(server, &["exec", b, "--", "cat", "/etc/hostname"]),
        );
        assert_eq!(out.trim(), b);
        b_network("during the flood");
        during += 1;
    }
    let flood = parse(&ok_stdout("the flood", flood.join().unwrap()));
    eprintln!("flood from a: {flood:?}, {during} rounds of checks in b meanwhile");
    assert!(during >= 1);
    let sent: u64 = flood["udp_sent"].parse().unwrap();
    let tries: u64 = flood["tcp_tries"].parse().unwrap();
    assert!(
        sent > 1000 && tries > 100,
        "the flood sent little: {flood:?}"
    );
    assert_eq!(flood["tcp_connected"], "0", "{flood:?}");
    assert!(
        ["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "timeout"]
            .contains(&flood["tcp_final"].as_str()),
        "a's connection to b: {flood:?}"
    );
    assert_ne!(flood["icmp_echo"], "reply", "{flood:?}");

    // After: b still works, and heard only itself.
    b_network("after the flood");
    let seen = ok_stdout("b's listener log", sh(server, b, "cat /tmp/seen"));
    // `kind source count` lines.
    let seen: BTreeMap<&str, &str> = seen.lines().filter_map(|l| l.rsplit_once(' ')).collect();
    assert!(
        seen.keys()
            .all(|k| k.ends_with(&format!(" {addr_b}")) || k.ends_with(" 127.0.0.1")),
        "b received traffic from elsewhere: {seen:?}"
    );
    assert_eq!(
        seen.get(format!("udp {addr_b}").as_str()).copied(),
        Some("1"),
        "{seen:?}"
    );
    assert!(
        seen.contains_key(format!("tcp {addr_b}").as_str()),
        "{seen:?}"
    );
}

/// A server in the sandbox that answers every GET with the request's
/// headers as JSON (names lower-cased).
const ECHO_HEADERS: &str = r#"
import http.server, json, os, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
if os.fork() == 0:
    os.setsid()
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"#;

/// The headers sandbox `id`'s echo server on `port` saw for a GET through
/// the front door carrying `headers` (and nothing else of the test's);
/// the whole answer while it is not a 200.
fn seen_by_the_sandbox(
    server: &TestServer,
    id: &str,
    port: u16,
    headers: &[(&str, &str)],
) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    let mut request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nE2b-Sandbox-Id: {id}\r\nE2b-Sandbox-Port: {port}\r\nConnection: close\r\n",
        server.addr()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(COMMAND_DEADLINE)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head[8..].starts_with(" 200") => {
            Ok(serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}")))
        }
        _ => Err(answer),
    }
}

/// A client that sends its Hutch key along to a sandbox (as `X-API-Key`
/// or as a bearer token) never hands it to the sandbox's code; an
/// application's own values of those headers pass.
fn control_plane_keys_never_enter_the_sandbox(server: &TestServer, id: &str) {
    const PORT: u16 = 8090;
    python(server, id, ECHO_HEADERS, &[&PORT.to_string()]);
    let key = server.api_key();
    let bearer = format!("Bearer {key}");
    let started = Instant::now();
    let seen = loop {
        let last = match seen_by_the_sandbox(server, id, PORT, &[("X-API-Key", &key)]) {
            Ok(seen) => break seen,
            Err(answer) => answer,
        };
        assert!(
            started.elapsed() < COMMAND_DEADLINE,
            "the echo server in {id} never answered: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        seen.get("x-api-key").is_none(),
        "the key reached the sandbox: {seen}"
    );
    let seen = seen_by_the_sandbox(server, id, PORT, &[("Authorization", &bearer)]).unwrap();
    assert!(
        seen.get("authorization").is_none(),
        "the key reached the sandbox: {seen}"
    );
    let own = [
        ("X-API-Key", "app-secret"),
        ("Authorization", "Bearer app-token"),
    ];
    let seen = seen_by_the_sandbox(server, id, PORT, &own).unwrap();
    assert_eq!(seen["x-api-key"], "app-secret", "{seen}");
    assert_eq!(seen["authorization"], "Bearer app-token", "{seen}");
}

#[test]
fn a_hostile_root_stays_inside_its_sandbox() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    server.import(&debian_image(), "deb", &[]);
    let a = server.create_sandbox("deb", &[]);
    let b = server.create_sandbox("deb", &[]);

    let dir = TestDir::new();
    let marker = dir
        .path()
        .join(format!("hutch-hostile-{}", std::process::id()));
    std::fs::write(&marker, "host only").unwrap();
    assert!(Path::new(&marker).exists());
    let host_pids = [
        server.pid(),
        std::process::id(),
        agent_host_pid(&server, &b),
    ];
    let pids = host_pids.map(|p| p.to_string()).join(",");

    let clock = HostClock::now();
    let got = parse(&python(
        &server,
        &a,
        HOSTILE,
        &[&pids, marker.to_str().unwrap()],
    ));
    eprintln!("results in a: {got:#?}");

    ptrace_reaches_no_host_process(&got, host_pids.len());
    cgroup_release_agent_escape_is_closed(&got);
    sys_and_proc_are_read_only_or_masked(&got);
    clock_cannot_be_changed(&server, &a, &got, &clock);
    more_kernel_interfaces_are_refused(&got);
    runc_escapes_are_closed(&got);
    a_flood_at_a_neighbour_neither_arrives_nor_stops_it(&server, &a, &b);
    control_plane_keys_never_enter_the_sandbox(&server, &a);

    for id in [&a, &b] {
        server.cli_ok(&["sandbox", "kill", id]);
    }
}
