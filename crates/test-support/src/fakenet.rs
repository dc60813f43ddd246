//! A stand-in for "the internet": an HTTP server in a network namespace of
//! its own, reached from the host through a veth pair, so that tests can
//! check what sandboxes may reach without any real egress.
//!
//! The namespace holds `198.51.100.<4n+2>` (TEST-NET-2, never routed on the
//! internet); the host end of the link holds `.<4n+1>`. To a sandbox it is
//! an ordinary destination beyond the host: its traffic is forwarded and
//! masqueraded exactly as traffic to the internet would be.
//!
//! The server answers on ports 8080, 80 and 443 (on 443 too it reads what
//! comes — a TLS ClientHello, say — and answers the same HTTP bytes: enough
//! to tell a connection got there), with an `X-Served-By` header naming its
//! address. [`FakeInternet::with_dns`] also runs a nameserver (Debian's
//! `dnsmasq`) in the namespace that resolves given names.

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
    /// The nameserver of [`FakeInternet::with_dns`].
    dns: Option<std::process::Child>,
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
                let listeners: Vec<TcpListener> = [FAKE_INTERNET_PORT, 80, 443]
                    .into_iter()
                    .map(|port| {
                        let l = TcpListener::bind(("0.0.0.0", port))
                            .unwrap_or_else(|e| panic!("FakeInternet: bind {port}: {e}"));
                        l.set_nonblocking(true).unwrap();
                        l
                    })
                    .collect();
                let _ = ready_tx.send(());
                serve(&listeners, addr, &stop);
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("FakeInternet: the server did not start");
        FakeInternet {
            netns,
            dns: None,
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

    /// [`FakeInternet::start`], with a nameserver on `addr:53` that
    /// resolves each of `own` (and its subdomains) to the server's address,
    /// each `(name, address)` of `others` to that address, and nothing
    /// else.
    pub fn with_dns(own: &[&str], others: &[(&str, Ipv4Addr)]) -> FakeInternet {
        let mut net = FakeInternet::start();
        let records: Vec<(&str, Ipv4Addr)> = own
            .iter()
            .map(|n| (*n, net.addr))
            .chain(others.iter().copied())
            .collect();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &net.netns,
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .args([
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
        ])
        .arg(format!("--listen-address={}", net.addr))
        .arg("--conf-file=/dev/null")
        .arg("--user=root");
        for (name, address) in &records {
            cmd.arg(format!("--address=/{name}/{address}"));
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("FakeInternet: cannot run dnsmasq (apt install dnsmasq-base): {e}")
            });
        net.dns = Some(child);
        // Ready once it answers on its port.
        let ready = (0..200).any(|_| {
            let probe = Command::new("ip")
                .args(["netns", "exec", &net.netns, "ss", "-Hlun"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(":53 "))
                .unwrap_or(false);
            if !probe {
                std::thread::sleep(Duration::from_millis(50));
            }
            probe
        });
        if !ready {
            let mut said = String::new();
            if let Some(mut dns) = net.dns.take() {
                let _ = dns.kill();
                if let Some(mut err) = dns.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                let _ = dns.wait();
            }
            panic!("FakeInternet: dnsmasq did not start: {said}");
        }
        net
    }
}

fn serve(listeners: &[TcpListener], addr: Ipv4Addr, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let mut idle = true;
        for listener in listeners {
            idle &= !answer_one(listener, addr);
        }
        if idle {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Answers one waiting connection of `listener`; whether there was one.
fn answer_one(listener: &TcpListener, addr: Ipv4Addr) -> bool {
    {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nX-Served-By: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{FAKE_INTERNET_BODY}",
                        FAKE_INTERNET_BODY.len()
                    )
                    .as_bytes(),
                );
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        if let Some(mut dns) = self.dns.take() {
            let _ = dns.kill();
            let _ = dns.wait();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}
