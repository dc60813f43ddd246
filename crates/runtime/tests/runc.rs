//! End-to-end tests with the real runc and real overlayfs.
//!
//! They need root, runc and the host's static busybox (`scripts/test.sh`
//! installs them); without them they fail, naming what is missing. The
//! test rootfs is built from busybox. The agent is either a stand-in, a
//! `#!/bin/sh` script that records what it sees inside the sandbox into a
//! file of the sandbox's root (read from the host through the rootfs
//! mount) and then sleeps, or (for the health/`/init` path) the real
//! `hutch-envd`, serving on the socket the runtime hands it.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hutch_protocol::boot::{BOOT_SCHEMA_VERSION, BootConfig, InitRequest};
use hutch_runtime::{Runtime, RuntimeConfig, RuntimeError, SandboxSpec};

const BUSYBOX: &str = "/bin/busybox";
const CGROUP_PARENT: &str = "hutch-test";

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    match Command::new("runc").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("runc is not installed (apt install runc)".into()),
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("{BUSYBOX} missing (apt install busybox-static)"));
    }
    None
}

macro_rules! require_runc {
    () => {
        if let Some(reason) = skip_reason() {
            panic!("cannot run the runtime tests: {reason}");
        }
    };
}

/// The evidence-writing stand-in agent.
const RECORDING_AGENT: &str = r#"#!/bin/sh
echo "stand-in agent started: $0 $*"
# One file per boot of the same disk: /evidence.1, /evidence.2, ...
n=$(( $(cat /boots 2>/dev/null || echo 0) + 1 ))
echo $n > /boots
out=/evidence.$n
{
  echo "uid=$(id -u)"
  echo "hostname=$(hostname)"
  echo "pid=$$"
  echo "args=$*"
  grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t'
  echo "kcore_bytes=$(cat /proc/kcore | wc -c)"
  echo "layer=$(cat /etc/layer)"
  echo "base_only=$(cat /base-only)"
  echo "top_only=$(cat /top-only)"
  echo "root_fstype=$(awk '$5 == "/" { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i+1); exit } }' /proc/self/mountinfo)"
  echo "boot_id=$(sed -n 's/.*"sandboxId": *"\([^"]*\)".*/\1/p' /run/hutch/boot.json)"
  echo "boot_writable=$( (echo x >> /run/hutch/boot.json) 2>/dev/null && echo yes || echo no)"
  echo "envd_writable=$( (echo x >> /run/hutch/bin/hutch-envd) 2>/dev/null && echo yes || echo no)"
  echo "login_path=$(env -i PATH=/custom:/bin /bin/sh -c 'PATH=/other; . /etc/profile.d/00-hutch-path.sh; echo "$PATH"')"
  echo "root_write=$(echo from-sandbox > /written-in-sandbox && echo ok)"
  echo "layer_write=$(echo changed > /etc/layer && echo ok)"
  echo "sys_write=$(mkdir /sys/fs/cgroup/x 2>/dev/null && echo yes || echo no)"
  echo "cgroup_write=$(mkdir /sys/fs/cgroup/memory/x /sys/fs/cgroup/x 2>/dev/null && echo yes || echo no)"
  echo "net=$(ls /sys/class/net | tr '\n' ' ')"
  echo "cgroup_memory=$(grep ':memory:' /proc/self/cgroup)"
  echo "env=$(env | grep -v '^PWD=' | grep -v '^SHLVL=' | grep -v '^_=' | tr '\n' ' ')"
} > $out.tmp 2>&1
mv $out.tmp $out
exec sleep 1000
"#;

/// A stand-in agent that starts and then just sleeps.
const SLEEPING_AGENT: &str = "#!/bin/sh\necho \"stand-in agent started\"\nexec sleep 1000\n";

struct Fixture {
    tmp: tempfile::TempDir,
    rt: Runtime,
    base: PathBuf,
    top: PathBuf,
}

impl Fixture {
    /// A runtime in a fresh temporary data dir whose "agent" is `agent`,
    /// plus two layers: `base` (busybox, /etc/layer = base) and `top`
    /// (/etc/layer = top, /etc/profile.d).
    fn new(agent: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("hutch-runtime-test")
            .tempdir()
            .unwrap();
        let base = tmp.path().join("layers/base");
        let top = tmp.path().join("layers/top");
        for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(base.join("etc/layer"), "base\n").unwrap();
        // The real agent, for the stand-ins that hand over to it.
        std::fs::copy(hutch_test_support::envd_bin(), base.join("bin/hutch-envd")).unwrap();
        std::fs::write(base.join("base-only"), "base\n").unwrap();
        std::fs::create_dir_all(top.join("etc/profile.d")).unwrap();
        std::fs::write(top.join("etc/layer"), "top\n").unwrap();
        std::fs::write(top.join("top-only"), "top\n").unwrap();

        let envd = tmp.path().join("envd");
        std::fs::write(&envd, agent).unwrap();
        std::fs::set_permissions(&envd, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut cfg = RuntimeConfig::new(&tmp.path().join("data"), envd);
        cfg.cgroup_parent = CGROUP_PARENT.to_owned();
        let rt = Runtime::new(cfg).unwrap();
        Fixture { tmp, rt, base, top }
    }

    fn spec(&self, id: &str, wait_for_agent: bool) -> SandboxSpec {
        let mut spec = SandboxSpec::new(vec![self.base.clone(), self.top.clone()], boot(id));
        spec.wait_for_agent = wait_for_agent;
        // Networking has its own tests (tests/network.rs).
        spec.network = hutch_runtime::NetworkPolicy::Loopback;
        spec
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.rt.config().state_dir.join(id)
    }

    /// Host path of a file the stand-in agent writes at `/<name>`.
    fn in_root(&self, id: &str, name: &str) -> PathBuf {
        self.state_dir(id).join("rootfs").join(name)
    }

    /// Asserts nothing of sandbox `id` is left on the host.
    fn assert_gone(&self, id: &str) {
        let state = runc_state(&self.rt, id);
        assert!(state.is_none(), "runc still knows {id}: {state:?}");
        assert!(!self.rt.config().runc_root.join(id).exists());
        assert!(!self.state_dir(id).exists(), "state dir left behind");
        let dir = self.state_dir(id);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo.contains(dir.to_str().unwrap()),
            "mount left behind: {mountinfo}"
        );
        for c in ["memory", "pids", "devices", "freezer"] {
            for root in [format!("/sys/fs/cgroup/{c}"), "/sys/fs/cgroup".to_owned()] {
                let p = Path::new(&root).join(CGROUP_PARENT).join(id);
                assert!(!p.exists(), "cgroup {} left behind", p.display());
            }
        }
        // No loop device is left bound to the sandbox's disk image.
        for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
            if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
                assert!(
                    !backing.starts_with(dir.to_str().unwrap()),
                    "{:?} still bound to {backing}",
                    entry.file_name()
                );
            }
        }
        // The layers are intact.
        assert_eq!(read(&self.base.join("etc/layer")), "base\n");
        assert_eq!(read(&self.top.join("etc/layer")), "top\n");
    }
}

impl Drop for Fixture {
    /// Destroys whatever a failed test left running, so that a failure does
    /// not leak containers, mounts or cgroups into later runs.
    fn drop(&mut self) {
        let rt = self.rt.clone();
        let cleanup = std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio.block_on(async {
                for id in rt.list_host_sandboxes().await.unwrap_or_default() {
                    if let Err(e) = rt.destroy(&id).await {
                        eprintln!("cleanup of {id} failed: {e}");
                    }
                }
            });
            rt.release_host_mounts();
        });
        let _ = cleanup.join();
    }
}

fn boot(id: &str) -> BootConfig {
    BootConfig {
        schema_version: BOOT_SCHEMA_VERSION,
        sandbox_id: id.to_owned(),
        template_id: "tpl-1".to_owned(),
        template_name: "test".to_owned(),
        template_env: vec![("FOO".to_owned(), "bar".to_owned())],
        template_user: None,
        template_workdir: None,
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `runc state` as JSON, `None` if runc does not know the container.
fn runc_state(rt: &Runtime, id: &str) -> Option<serde_json::Value> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(&rt.config().runc_root)
        .arg("state")
        .arg(id)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits for a file the stand-in agent writes.
async fn wait_for_file(p: &Path, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared; container log:\n{}",
            p.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn parse_evidence(s: &str) -> HashMap<String, String> {
    s.lines()
        .filter_map(|l| {
            l.split_once(['=', ':'])
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn boots_an_isolated_sandbox_and_destroys_it() {
    require_runc!();
    let fx = Fixture::new(RECORDING_AGENT);
    let id = unique("rt-boot");
    let sandbox = fx.rt.create(fx.spec(&id, false)).await.unwrap();
    assert_eq!(sandbox.id, id);
    assert_eq!(sandbox.rootfs, fx.state_dir(&id).join("rootfs"));
    assert_eq!(sandbox.socket, fx.rt.agent_socket(&id));
    assert_eq!(sandbox.socket, fx.state_dir(&id).join("hutch/envd.sock"));

    let state = runc_state(&fx.rt, &id).expect("runc knows the container");
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], sandbox.init_pid);

    let evidence_path = fx.in_root(&id, "evidence.1");
    let raw = wait_for_file(&evidence_path, &fx.rt.console_log(&id)).await;
    let ev = parse_evidence(&raw);
    let get = |k: &str| {
        ev.get(k)
            .unwrap_or_else(|| panic!("{k} missing from evidence:\n{raw}"))
            .as_str()
    };
    assert_eq!(get("uid"), "0");
    assert_eq!(get("hostname"), id, "hostname is the sandbox id");
    assert_eq!(
        get("pid"),
        "1",
        "the agent is pid 1 of its own pid namespace"
    );
    assert_eq!(
        get("args"),
        "--boot /run/hutch/boot.json --environment-socket /run/hutch/environment.sock --listen-fd 3"
    );
    // Docker's default capability set without NET_RAW, nothing
    // inheritable or ambient.
    assert_eq!(get("CapBnd"), "00000000a80405fb");
    assert_eq!(get("CapEff"), "00000000a80405fb");
    assert_eq!(get("CapPrm"), "00000000a80405fb");
    assert_eq!(get("CapInh"), "0000000000000000");
    assert_eq!(get("CapAmb"), "0000000000000000");
    assert_eq!(get("NoNewPrivs"), "1");
    assert_eq!(get("Seccomp"), "2", "a seccomp filter is installed");
    assert_eq!(get("kcore_bytes").trim(), "0", "/proc/kcore is masked");
    // The top layer wins: the caller's base-first order was reversed.
    assert_eq!(get("layer"), "top");
    assert_eq!(get("base_only"), "base");
    assert_eq!(get("top_only"), "top");
    assert_eq!(get("root_fstype"), "overlay");
    assert_eq!(get("boot_id"), id);
    assert_eq!(get("boot_writable"), "no");
    assert_eq!(get("envd_writable"), "no");
    // The top layer has /etc/profile.d, so the login-PATH script is there.
    assert_eq!(get("login_path"), "/custom:/bin");
    assert_eq!(get("root_write"), "ok");
    assert_eq!(get("layer_write"), "ok");
    assert_eq!(get("sys_write"), "no", "/sys/fs/cgroup is read-only");
    assert_eq!(
        get("cgroup_write"),
        "no",
        "cgroup hierarchies are read-only"
    );
    assert_eq!(get("net").trim(), "lo", "empty network namespace");
    assert!(
        get("cgroup_memory").ends_with(":/"),
        "cgroup namespace: {}",
        get("cgroup_memory")
    );
    // Only PATH, plus the HOME runc adds when the spec sets none.
    assert_eq!(
        get("env").trim(),
        "HOME=/ PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );

    // Writes went to the upper directory, not to the layers.
    let upper = fx.rt.upper_dir(&id);
    assert_eq!(upper, fx.state_dir(&id).join("disk/upper"));
    assert_eq!(read(&upper.join("written-in-sandbox")), "from-sandbox\n");
    assert_eq!(read(&upper.join("etc/layer")), "changed\n");
    assert_eq!(read(&sandbox.rootfs.join("etc/layer")), "changed\n");
    assert_eq!(read(&fx.base.join("etc/layer")), "base\n");
    assert_eq!(read(&fx.top.join("etc/layer")), "top\n");
    assert!(!fx.base.join("written-in-sandbox").exists());
    assert!(!fx.top.join("written-in-sandbox").exists());
    // runc created the mountpoints for Hutch's files in the upper directory.
    assert!(upper.join("run/hutch/bin/hutch-envd").exists());
    assert!(upper.join("etc/profile.d/00-hutch-path.sh").exists());
    for layer in [&fx.base, &fx.top] {
        assert!(!layer.join("run").exists());
        assert!(!layer.join("etc/profile.d/00-hutch-path.sh").exists());
    }

    // The cgroup with its limits, under the configured parent.
    let mem = Path::new("/sys/fs/cgroup/memory")
        .join(CGROUP_PARENT)
        .join(&id);
    if mem.exists() {
        assert_eq!(read(&mem.join("memory.limit_in_bytes")).trim(), "536870912");
        let pids = Path::new("/sys/fs/cgroup/pids")
            .join(CGROUP_PARENT)
            .join(&id);
        assert_eq!(read(&pids.join("pids.max")).trim(), "1024");
    } else {
        let v2 = Path::new("/sys/fs/cgroup").join(CGROUP_PARENT).join(&id);
        assert_eq!(read(&v2.join("memory.max")).trim(), "536870912");
        assert_eq!(read(&v2.join("pids.max")).trim(), "1024");
    }

    // Listed for restart recovery.
    assert!(fx.rt.list_host_sandboxes().await.unwrap().contains(&id));

    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
    assert!(!fx.rt.list_host_sandboxes().await.unwrap().contains(&id));
    // Idempotent.
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
}

#[tokio::test]
async fn refuses_an_existing_id_without_touching_it() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);
    let id = unique("rt-dup");
    let first = fx.rt.create(fx.spec(&id, false)).await.unwrap();
    let err = fx.rt.create(fx.spec(&id, false)).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::AlreadyExists(ref x) if *x == id),
        "{err}"
    );
    // The first sandbox is untouched.
    let state = runc_state(&fx.rt, &id).unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], first.init_pid);
    assert!(first.rootfs.join("bin/busybox").exists());
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
}

#[tokio::test]
async fn missing_layer_leaves_nothing_behind() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);
    let id = unique("rt-nolayer");
    let mut spec = fx.spec(&id, false);
    spec.layers.push(fx.tmp.path().join("no-such-layer"));
    let err = fx.rt.create(spec).await.unwrap_err();
    eprintln!("expected error: {err}");
    assert!(matches!(err, RuntimeError::Layer { .. }), "{err}");
    fx.assert_gone(&id);
}

#[tokio::test]
async fn runc_failure_leaves_nothing_behind() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);
    let id = unique("rt-runcfail");
    // A directory where the boot configuration file must be mounted: runc
    // cannot set up the container.
    let bad = fx.tmp.path().join("layers/bad");
    std::fs::create_dir_all(bad.join("run/hutch/boot.json/x")).unwrap();
    let mut spec = fx.spec(&id, true);
    spec.layers.push(bad);
    let err = fx.rt.create(spec).await.unwrap_err();
    eprintln!("expected error: {err}");
    match &err {
        RuntimeError::Runc {
            command, output, ..
        } => {
            assert_eq!(*command, "run");
            assert!(output.contains("/run/hutch/boot.json"), "{output}");
        }
        other => panic!("unexpected error: {other}"),
    }
    fx.assert_gone(&id);
}

#[tokio::test]
async fn unexecutable_agent_leaves_nothing_behind() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);
    let id = unique("rt-noshell");
    // A layer without /bin/sh: the agent script cannot be executed.
    let empty = fx.tmp.path().join("layers/empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut spec = SandboxSpec::new(vec![empty], boot(&id));
    spec.wait_for_agent = true;
    let err = fx.rt.create(spec).await.unwrap_err();
    eprintln!("expected error: {err}");
    assert!(
        matches!(
            err,
            RuntimeError::Runc { .. } | RuntimeError::AgentExited { .. }
        ),
        "{err}"
    );
    fx.assert_gone(&id);
}

#[tokio::test]
async fn silent_agent_times_out_with_log_tail_and_cleans_up() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);
    let id = unique("rt-silent");
    let started = Instant::now();
    let err = fx.rt.create(fx.spec(&id, true)).await.unwrap_err();
    eprintln!("expected error: {err}");
    assert!(started.elapsed() >= hutch_runtime::AGENT_BOOT_TIMEOUT);
    match &err {
        RuntimeError::AgentBootTimeout { log_tail, .. } => {
            assert!(log_tail.contains("stand-in agent started"), "{log_tail}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("stand-in agent started"));
    fx.assert_gone(&id);
}

/// A stand-in that hands over to the real agent (in the base layer) with
/// the arguments and the inherited socket the runtime gave it.
const REAL_AGENT: &str = "#!/bin/sh\nexec /bin/hutch-envd \"$@\"\n";

/// The same after a second, keeping the boot busy.
const SLOW_REAL_AGENT: &str = "#!/bin/sh\nsleep 1\nexec /bin/hutch-envd \"$@\"\n";

/// Runs `script` with `sh -c` in the sandbox behind `socket`; its stdout.
async fn sh(socket: &Path, script: &str) -> String {
    let mut out = Vec::new();
    let cmd = hutch_runtime::Command::shell(&[], script);
    let exit = hutch_runtime::run_command(
        &hutch_runtime::AgentLink::unix(socket.to_owned()),
        &cmd,
        &mut |_, bytes| out.extend_from_slice(bytes),
    )
    .await
    .unwrap();
    assert!(exit.success(), "{script}: {}", exit.status);
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn waits_for_health_then_init_adopt_and_destroy() {
    require_runc!();
    let fx = Fixture::new(REAL_AGENT);
    let id = unique("rt-health");

    let sandbox = fx.rt.create(fx.spec(&id, true)).await.unwrap();
    sandbox.agent().health().await.unwrap();
    let req = InitRequest {
        env_vars: Some([("A".to_owned(), "from-init".to_owned())].into()),
        ..Default::default()
    };
    sandbox.agent().init(&req).await.unwrap();
    assert_eq!(sh(&sandbox.socket, "echo $A $FOO").await, "from-init bar\n");
    // The agent holds the socket the host bound; no process it starts
    // inherits it (only the standard descriptors are open in a command).
    let fds = sh(&sandbox.socket, "ls /proc/self/fd").await;
    let above_stdio = fds
        .split_whitespace()
        .filter(|fd| fd.parse::<u32>().unwrap() > 2)
        .count();
    assert_eq!(above_stdio, 1, "only ls's own directory is open: {fds}");

    // A new server process would find and re-adopt it.
    assert_eq!(fx.rt.list_host_sandboxes().await.unwrap(), vec![id.clone()]);
    let adopted = fx.rt.adopt(&id).await.unwrap().expect("adoptable");
    assert_eq!(adopted, sandbox);

    // Without an answering agent (stopped by a signal, so runc still says
    // running) it is not adopted.
    let stop = |signal: &str| {
        let status = Command::new("kill")
            .arg(signal)
            .arg(sandbox.init_pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    };
    stop("-STOP");
    assert!(fx.rt.adopt(&id).await.unwrap().is_none());
    let silent = sandbox
        .agent()
        .with_timeout(Duration::from_millis(500))
        .health()
        .await;
    assert!(silent.is_err(), "{silent:?}");
    stop("-CONT");
    // Killed, it is unreachable at once: nothing holds its socket any more.
    stop("-KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = sandbox
            .agent()
            .with_timeout(Duration::from_millis(500))
            .health()
            .await;
        if matches!(gone, Err(RuntimeError::AgentUnreachable { .. })) {
            break;
        }
        assert!(Instant::now() < deadline, "still reachable: {gone:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process_alive(sandbox.init_pid));
    // Nor when it is not known to runc.
    assert!(fx.rt.adopt("rt-unknown").await.unwrap().is_none());

    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
}

#[tokio::test]
async fn stopped_sandbox_is_not_adopted() {
    require_runc!();
    let fx = Fixture::new("#!/bin/sh\necho bye\n");
    let id = unique("rt-stopped");
    // The agent exits at once; without waiting, create still succeeds.
    fx.rt.create(fx.spec(&id, false)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while runc_state(&fx.rt, &id).unwrap()["status"] != "stopped" {
        assert!(Instant::now() < deadline, "container never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fx.rt.adopt(&id).await.unwrap().is_none());
    assert!(read(&fx.rt.console_log(&id)).contains("bye"));
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
}

#[tokio::test]
async fn exiting_agent_fails_fast() {
    require_runc!();
    let fx = Fixture::new("#!/bin/sh\necho 'agent: fatal: bad boot config' >&2\nexit 3\n");
    let id = unique("rt-exit");
    let started = Instant::now();
    let err = fx.rt.create(fx.spec(&id, true)).await.unwrap_err();
    eprintln!("expected error: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not fail fast"
    );
    match &err {
        RuntimeError::AgentExited { log_tail, .. } => {
            assert!(log_tail.contains("bad boot config"), "{log_tail}")
        }
        other => panic!("unexpected error: {other}"),
    }
    fx.assert_gone(&id);
}

#[tokio::test]
async fn rejects_bad_ids_and_mismatched_boot() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);
    let mut spec = fx.spec("ok-id", false);
    spec.id = "../escape".to_owned();
    assert!(matches!(
        fx.rt.create(spec).await,
        Err(RuntimeError::InvalidId { .. })
    ));
    let mut spec = fx.spec("one", false);
    spec.id = "two".to_owned();
    assert!(matches!(
        fx.rt.create(spec).await,
        Err(RuntimeError::InvalidSpec { .. })
    ));
    assert!(matches!(
        fx.rt.destroy("a/b").await,
        Err(RuntimeError::InvalidId { .. })
    ));
    assert!(!fx.rt.config().state_dir.join("two").exists());
}

#[test]
fn new_reports_missing_runc_and_envd() {
    let tmp = tempfile::tempdir().unwrap();
    let envd = tmp.path().join("envd");
    std::fs::write(&envd, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&envd, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut cfg = RuntimeConfig::new(tmp.path(), envd.clone());
    cfg.runc = PathBuf::from("/nonexistent/runc");
    let err = Runtime::new(cfg).unwrap_err();
    assert!(
        err.to_string()
            .contains("runc not found: install it with `apt install runc`"),
        "{err}"
    );

    let cfg = RuntimeConfig::new(tmp.path(), tmp.path().join("missing-envd"));
    let err = Runtime::new(cfg).unwrap_err();
    assert!(matches!(err, RuntimeError::EnvdNotFound { .. }), "{err}");
}

/// Layer paths overlayfs cannot take verbatim (`,` and `:`), and more
/// layers than fit in one page of mount options: both are mounted through
/// `/proc/self/fd` names, with the same stacking order.
#[tokio::test]
async fn awkward_and_many_layers() {
    require_runc!();
    let fx = Fixture::new(SLEEPING_AGENT);

    let odd = fx.tmp.path().join("layers/odd,name:with colon");
    std::fs::create_dir_all(odd.join("etc")).unwrap();
    std::fs::write(odd.join("etc/layer"), "odd\n").unwrap();
    let id = unique("rt-odd");
    let mut spec = fx.spec(&id, false);
    spec.layers.push(odd);
    let sandbox = fx.rt.create(spec).await.unwrap();
    assert_eq!(read(&sandbox.rootfs.join("etc/layer")), "odd\n");
    assert_eq!(read(&sandbox.rootfs.join("top-only")), "top\n");
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);

    // 60 layers with long names: far more than 4 KiB of lowerdir paths.
    let id = unique("rt-many");
    let mut layers = vec![fx.base.clone()];
    for i in 0..60 {
        let l = fx
            .tmp
            .path()
            .join(format!("layers/{}-{i:02}", "x".repeat(100)));
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(l.join("etc/layer"), format!("layer {i}\n")).unwrap();
        std::fs::write(l.join(format!("only-{i}")), "").unwrap();
        layers.push(l);
    }
    let mut spec = SandboxSpec::new(layers, boot(&id));
    spec.wait_for_agent = false;
    let sandbox = fx.rt.create(spec).await.unwrap();
    assert_eq!(read(&sandbox.rootfs.join("etc/layer")), "layer 59\n");
    for i in 0..60 {
        assert!(sandbox.rootfs.join(format!("only-{i}")).exists(), "{i}");
    }
    assert!(sandbox.rootfs.join("bin/busybox").exists());
    let state = runc_state(&fx.rt, &id).unwrap();
    assert_eq!(state["status"], "running");
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
}

/// A destroy issued while the sandbox is still booting waits for the boot
/// and then removes the sandbox.
#[tokio::test]
async fn destroy_during_boot_waits_then_destroys() {
    require_runc!();
    // The agent answers only after a second, keeping the boot busy.
    let fx = Fixture::new(SLOW_REAL_AGENT);
    let id = unique("rt-race");
    let create = tokio::spawn({
        let rt = fx.rt.clone();
        let spec = fx.spec(&id, true);
        async move { rt.create(spec).await }
    });
    let dir = fx.state_dir(&id);
    while !dir.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fx.rt.destroy(&id).await.unwrap();
    let sandbox = create.await.unwrap().expect("the boot itself succeeded");
    assert_eq!(sandbox.id, id);
    fx.assert_gone(&id);
}

#[tokio::test]
async fn pause_freezes_every_process_and_resume_thaws_them() {
    require_runc!();
    // The stand-in agent counts, one line every 20 ms, into a file of its
    // root, so progress is visible from the host.
    let fx = Fixture::new(
        "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo $i > /count; sleep 0.02; done\n",
    );
    let id = unique("rt-pause");
    fx.rt.create(fx.spec(&id, false)).await.unwrap();
    let count = fx.in_root(&id, "count");
    let read_count = || -> u64 {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_count() < 3 {
        assert!(Instant::now() < deadline, "the counter never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fx.rt.status(&id).await.unwrap(),
        Some(hutch_runtime::SandboxStatus::Running)
    );

    fx.rt.pause(&id).await.unwrap();
    fx.rt.pause(&id).await.unwrap(); // idempotent
    assert_eq!(
        fx.rt.status(&id).await.unwrap(),
        Some(hutch_runtime::SandboxStatus::Paused)
    );
    let frozen = read_count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read_count(), frozen, "a paused sandbox makes no progress");

    fx.rt.resume(&id).await.unwrap();
    fx.rt.resume(&id).await.unwrap(); // idempotent
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_count() <= frozen {
        assert!(Instant::now() < deadline, "the counter did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A paused sandbox can be destroyed.
    fx.rt.pause(&id).await.unwrap();
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);
    assert!(matches!(
        fx.rt.pause(&id).await,
        Err(hutch_runtime::RuntimeError::NotFound { .. })
    ));
}

/// Names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn stop_keep_disk_keeps_the_files_and_a_resume_boots_on_them() {
    require_runc!();
    let fx = Fixture::new(RECORDING_AGENT);
    let id = unique("rt-keep");
    let first = fx.rt.create(fx.spec(&id, false)).await.unwrap();
    let evidence = fx.in_root(&id, "evidence.1");
    let ev = parse_evidence(&wait_for_file(&evidence, &fx.rt.console_log(&id)).await);
    // The stand-in agent read the template's /etc/layer, then wrote its own.
    assert_eq!(ev["layer"], "top");
    assert_eq!(ev["layer_write"], "ok");

    // A resume needs a stopped sandbox.
    let mut resume = fx.spec(&id, false);
    resume.resume_from_disk = true;
    assert!(matches!(
        fx.rt.create(resume.clone()).await,
        Err(RuntimeError::AlreadyExists(_))
    ));

    fx.rt.stop_keep_disk(&id).await.unwrap();
    assert!(!process_alive(first.init_pid));
    assert!(runc_state(&fx.rt, &id).is_none());
    assert!(!fx.rt.config().runc_root.join(&id).exists());
    assert_eq!(names_in(&fx.state_dir(&id)), ["disk.img"]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(fx.state_dir(&id).to_str().unwrap()));
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            assert!(!backing.starts_with(fx.state_dir(&id).to_str().unwrap()));
        }
    }
    for c in ["memory", "pids", "freezer"] {
        let p = Path::new("/sys/fs/cgroup")
            .join(c)
            .join(CGROUP_PARENT)
            .join(&id);
        assert!(!p.exists(), "{} left behind", p.display());
    }
    // Still listed: the disk is the sandbox's.
    assert!(fx.rt.list_host_sandboxes().await.unwrap().contains(&id));
    // Idempotent; a fresh create cannot take the id.
    fx.rt.stop_keep_disk(&id).await.unwrap();
    assert!(matches!(
        fx.rt.create(fx.spec(&id, false)).await,
        Err(RuntimeError::AlreadyExists(_))
    ));

    // A resume that fails (a layer is missing) keeps the disk.
    let mut broken = resume.clone();
    broken.layers.push(fx.tmp.path().join("layers/missing"));
    assert!(matches!(
        fx.rt.create(broken).await,
        Err(RuntimeError::Layer { .. })
    ));
    assert_eq!(names_in(&fx.state_dir(&id)), ["disk.img"]);

    // Booted again on its files: what it wrote before is there.
    let second = fx.rt.create(resume).await.unwrap();
    assert_ne!(second.init_pid, first.init_pid);
    let evidence = fx.in_root(&id, "evidence.2");
    let ev = parse_evidence(&wait_for_file(&evidence, &fx.rt.console_log(&id)).await);
    assert_eq!(ev["layer"], "changed");
    assert_eq!(ev["hostname"], id);
    assert_eq!(ev["pid"], "1");
    assert_eq!(
        read(&fx.rt.upper_dir(&id).join("written-in-sandbox")),
        "from-sandbox\n"
    );
    assert_eq!(read(&fx.top.join("etc/layer")), "top\n");

    // Destroying it removes the disk too.
    fx.rt.destroy(&id).await.unwrap();
    fx.assert_gone(&id);

    // No disk, no resume.
    let none = unique("rt-nodisk");
    assert!(matches!(
        fx.rt.stop_keep_disk(&none).await,
        Err(RuntimeError::NoKeptDisk { .. })
    ));
    let mut spec = fx.spec(&none, false);
    spec.resume_from_disk = true;
    assert!(matches!(
        fx.rt.create(spec).await,
        Err(RuntimeError::NoKeptDisk { .. })
    ));
    assert!(!fx.state_dir(&none).exists());
}

/// Whether `pid` is a live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X")
    })
}
