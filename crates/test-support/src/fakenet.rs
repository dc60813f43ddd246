//! A stand-in for "the internet": an HTTP server in a network namespace of
//! its own, reached from the host through a veth pair, so that tests can
//! check what sandboxes may reach without any real egress.
//!
//! The namespace holds `198.51.100.<4n+2>` (TEST-NET-2, never routed on the
//! internet); the host end of the link holds `.<4n+1>`. To a sandbox it is
//! an ordinary destination beyond the host: its traffic is forwarded and
//! masqueraded exactly as traffic to the internet would be.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The port the fake internet's HTTP server listens on.
pub const FAKE_INTERNET_PORT: u16 = 8080;

/// What the fake internet's HTTP server answers.
pub const FAKE_INTERNET_BODY: &str = "hello from the fake internet\n";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// An HTTP server beyond the host (see the module docs). Removed on drop.
pub struct FakeInternet {
    netns: String,
    host_if: String,
    /// The host end of the link.
    pub gateway: Ipv4Addr,
    /// The server's address.
    pub addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("FakeInternet: cannot run ip: {e}"))
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "FakeInternet: ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeInternet {
    /// Creates the namespace and link and starts the server.
    pub fn start() -> FakeInternet {
        // Up to 64 per process; the pid spreads parallel test processes.
        let n = (NEXT.fetch_add(1, Ordering::SeqCst) + std::process::id() % 16 * 4) % 64;
        let netns = format!("hutch-fakenet-{n}");
        let host_if = format!("hxfake{n}");
        let gateway = Ipv4Addr::new(198, 51, 100, (4 * n + 1) as u8);
        let addr = Ipv4Addr::new(198, 51, 100, (4 * n + 2) as u8);
        // Left by an earlier run that crashed.
        let _ = ip(&["netns", "del", &netns]);
        let _ = ip(&["link", "del", &host_if]);
        ip_ok(&["netns", "add", &netns]);
        ip_ok(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip_ok(&["addr", "add", &format!("{gateway}/30"), "dev", &host_if]);
        ip_ok(&["link", "set", &host_if, "up"]);
        ip_ok(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ]);
        ip_ok(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip_ok(&["-n", &netns, "link", "set", "lo", "up"]);

        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let ns_path = format!("/run/netns/{netns}");
            std::thread::spawn(move || {
                let ns = std::fs::File::open(&ns_path)
                    .unwrap_or_else(|e| panic!("FakeInternet: open {ns_path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("FakeInternet: setns: {e}"));
                let listener = TcpListener::bind(("0.0.0.0", FAKE_INTERNET_PORT))
                    .unwrap_or_else(|e| panic!("FakeInternet: bind: {e}"));
                listener.set_nonblocking(true).unwrap();
                let _ = ready_tx.send(());
                serve(&listener, &stop);
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("FakeInternet: the server did not start");
        FakeInternet {
            netns,
            host_if,
            gateway,
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://<addr>:8080/`.
    pub fn url(&self) -> String {
        format!("http://{}:{FAKE_INTERNET_PORT}/", self.addr)
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{FAKE_INTERNET_BODY}",
                        FAKE_INTERNET_BODY.len()
                    )
                    .as_bytes(),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}
