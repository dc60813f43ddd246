//! The sandbox boundary seen from the host's side: attacks made as root
//! inside real sandboxes against what the host does with paths, files and
//! devices, each asserting that the host is untouched. See the "Host side"
//! section of `docs/security.md`.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hutch_test_support::{TestDir, TestServer, busybox_image, http, wait_torn_down};

/// `sh -c SCRIPT` in the sandbox as root; must succeed; its stdout.
fn sh(server: &TestServer, id: &str, script: &str) -> String {
    server.cli_ok(&["exec", id, "--", "sh", "-c", script])
}

/// `sh -c SCRIPT` in the sandbox; (exit success, stdout + stderr).
fn try_sh(server: &TestServer, id: &str, script: &str) -> (bool, String) {
    let out = server.cli(&["exec", id, "--", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A unix socket on the host that counts the connections and bytes it gets.
struct Victim {
    path: PathBuf,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Victim {
    fn listen(dir: &Path) -> Victim {
        let path = dir.join("victim.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Victim {
            path,
            connections,
            bytes,
        }
    }

    fn assert_untouched(&self, when: &str) {
        assert_eq!(
            (
                self.connections.load(Ordering::SeqCst),
                self.bytes.load(Ordering::SeqCst)
            ),
            (0, 0),
            "{when}: the host socket {} was reached",
            self.path.display()
        );
    }
}

/// Every place a sandbox could hope the host looks for the agent's socket,
/// made a symlink to `target`; also the socket directory of older Hutch
/// versions, and the sandbox's own /etc files.
fn plant_symlinks(server: &TestServer, id: &str, target: &Path) {
    let t = target.display();
    sh(
        server,
        id,
        &format!(
            "mkdir -p /run/hutch/sock && \
             for p in /run/hutch/sock/envd.sock /run/hutch/envd.sock /envd.sock /run/hutch/sock/x; do \
               rm -rf $p; ln -s {t} $p; done; \
             for f in hosts hostname resolv.conf; do rm -f /etc/$f; ln -s {t} /etc/$f; done"
        ),
    );
}

#[test]
fn the_agent_channel_cannot_be_redirected_to_a_host_socket() {
    let host = TestDir::new();
    let victim = Victim::listen(host.path());
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    server.import(&busybox_image(), "bb", &[]);
    let id = server.create_sandbox("bb", &[]);

    // Nothing of the host's is writable here: the agent's socket is not in
    // the sandbox's file system at all. The environment socket is one the
    // agent binds inside the sandbox (it serves only `/environment`).
    assert_eq!(
        sh(&server, &id, "ls -A /run/hutch | tr '\\n' ' '"),
        "bin boot.json environment.sock "
    );
    assert_eq!(
        sh(&server, &id, "grep -c ' /run/hutch' /proc/self/mountinfo"),
        "2\n",
        "only the agent binary and boot.json are bound in"
    );
    let (ok, out) = try_sh(&server, &id, "echo x >> /run/hutch/boot.json");
    assert!(!ok, "boot.json is writable: {out}");

    plant_symlinks(&server, &id, &victim.path);
    // Commands, a user port, pause/resume and a server restart all reach
    // the sandbox's agent, never the victim.
    assert_eq!(sh(&server, &id, "echo still here"), "still here\n");
    let (code, body) = http(
        &server,
        reqwest::Method::GET,
        "/",
        &[
            ("E2b-Sandbox-Id", id.as_str()),
            ("E2b-Sandbox-Port", "8080"),
        ],
        None,
    );
    assert_eq!(code, 502, "{body}");
    server.cli_ok(&["sandbox", "pause", &id]);
    server.cli_ok(&["sandbox", "resume", &id]);
    assert_eq!(sh(&server, &id, "echo after resume"), "after resume\n");
    let server = TestServer::restart_with_args(server.kill9(), &["--warm-pool", "0"]);
    assert_eq!(sh(&server, &id, "echo after restart"), "after restart\n");
    // A filesystem pause keeps the disk; the resume boots on it and leaves
    // the sandbox's /etc files as it made them.
    server.cli_ok(&["sandbox", "pause", "--filesystem", &id]);
    server.cli_ok(&["sandbox", "resume", &id]);
    assert_eq!(
        sh(&server, &id, "readlink /etc/hosts"),
        format!("{}\n", victim.path.display())
    );
    victim.assert_untouched("after commands, ports, pauses and a restart");
    server.cli_ok(&["sandbox", "kill", &id]);
    victim.assert_untouched("after the kill");
}

/// Bytes the host's file system holds for the sandbox's directory: its
/// disk image and whatever else is there, not crossing into the mounted
/// disk and root file system (their contents are in the image).
fn host_footprint(dir: &Path) -> (u64, u64) {
    let out = Command::new("du")
        .args(["-s", "-x", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = Command::new("find").arg(dir).arg("-xdev").output().unwrap();
    let inodes = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    (bytes, inodes)
}

#[test]
fn writes_and_inode_floods_stay_inside_the_sandbox_quota() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    server.import(&busybox_image(), "bb", &[]);
    let disk_mb = 64;
    let id = server.create_sandbox("bb", &["--disk", &disk_mb.to_string()]);
    let dir = server.data_dir().join("sandboxes").join(&id);
    let (_, inodes_before) = host_footprint(&dir);

    // Inode floods on every writable file system of the sandbox.
    for dir in ["/tmp/flood", "/dev/flood", "/dev/shm/flood", "/run/flood"] {
        let (_, out) = try_sh(
            &server,
            &id,
            &format!(
                "mkdir -p {dir}; i=0; while [ $i -lt 30000 ] && {{ true > {dir}/$i; }} 2>/dev/null; do i=$((i+1)); done; echo made $i"
            ),
        );
        let made: u64 = out
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{dir}: {out}"));
        assert!(made < 30000, "{dir}: {made} files, no bound");
    }

    // Every file the sandbox might share with the host, the agent's
    // output, and its own files: 100 MiB each, on a 64 MiB disk.
    for target in [
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/proc/1/fd/1",
        "/proc/1/fd/2",
        "/tmp/big",
    ] {
        let (_, out) = try_sh(
            &server,
            &id,
            &format!("head -c 104857600 /dev/zero >> {target}; echo done"),
        );
        assert!(out.contains("done"), "{target}: {out}");
    }
    let (bytes, inodes) = host_footprint(&dir);
    assert!(
        bytes <= (disk_mb + 1) << 20,
        "the sandbox holds {bytes} bytes of the host's file system, over its {disk_mb} MiB disk"
    );
    assert_eq!(
        inodes, inodes_before,
        "the floods made files on the host's file system"
    );
    // The sandbox still answers, and its disk is full, not the host's.
    let (_, df) = try_sh(&server, &id, "df -k / | tail -n 1");
    assert!(
        df.contains("100%") || df.contains(" 0 "),
        "{df}\n{}",
        server.log_tail(30)
    );
    server.cli_ok(&["sandbox", "kill", &id]);
    wait_torn_down(server.data_dir(), &id);
    assert!(!dir.exists());
}

#[test]
fn only_standard_devices_can_be_made_and_opened() {
    let server = TestServer::start_with_args(&["--warm-pool", "0"]);
    server.import(&busybox_image(), "bb", &[]);
    let id = server.create_sandbox("bb", &[]);
    assert_eq!(
        sh(
            &server,
            &id,
            "test -e /dev/net/tun && echo present || echo absent"
        ),
        "absent\n"
    );
    // tun (allowed by runc's default device rules), fuse, kvm, a disk.
    for (name, kind, major, minor) in [
        ("tun", "c", 10, 200),
        ("fuse", "c", 10, 229),
        ("kvm", "c", 10, 232),
        ("sda", "b", 8, 0),
    ] {
        let (ok, out) = try_sh(
            &server,
            &id,
            &format!("mknod /tmp/{name} {kind} {major} {minor}"),
        );
        assert!(!ok, "{name} was made: {out}");
        assert!(
            out.to_lowercase().contains("not permitted"),
            "{name}: {out}"
        );
    }
    // FIFOs and the standard devices still work.
    assert_eq!(
        sh(
            &server,
            &id,
            "mkfifo /tmp/fifo && mknod /tmp/null c 1 3 && echo x > /tmp/null && echo ok"
        ),
        "ok\n"
    );
    server.cli_ok(&["sandbox", "kill", &id]);
}

/// The idle timeout that cuts off silent clients never cuts a request in
/// flight: a command that prints nothing for longer than the timeout still
/// streams its output and exit code through the front door.
#[test]
fn quiet_commands_outlive_the_idle_timeout() {
    let server = TestServer::start_with_args(&["--warm-pool", "0", "--header-read-timeout", "1"]);
    server.import(&busybox_image(), "bb", &[]);
    let id = server.create_sandbox("bb", &[]);
    assert_eq!(sh(&server, &id, "sleep 4; echo awake"), "awake\n");
    server.cli_ok(&["sandbox", "kill", &id]);
}
