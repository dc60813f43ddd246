//! The egress proxy: how a sandbox reaches an allowed *name* whose address
//! its rules deny (E2B's domain entries in `allowOut`).
//!
//! For a sandbox whose policy [inspects](super::EgressPolicy::inspects),
//! the firewall redirects TCP connections to port 80 or 443 of a denied
//! address (not one of the host's, not one every sandbox is denied) to this
//! proxy's port on the host (`inspect` map, `prerouting`). The proxy
//!
//! 1. knows the sandbox by the connection's source address (the firewall
//!    accepts only a sandbox's own address on its interface), and the
//!    original destination from conntrack (`SO_ORIGINAL_DST`);
//! 2. reads the connection's first bytes, up to 16 KiB and 10 s: the
//!    `Host` of an HTTP request (port 80) or the server name of a TLS
//!    ClientHello (port 443) — TLS is never terminated;
//! 3. when no allowed pattern matches that name, closes the connection;
//! 4. else resolves the name itself, with the sandbox's nameservers (never
//!    trusting the address the sandbox chose: a sandbox cannot reach an
//!    arbitrary address by naming an allowed host), drops every address
//!    no sandbox may reach (private, loopback, link-local, multicast, the
//!    host's own, the sandbox pool), connects to the first that answers
//!    on the original port, replays the bytes read, and copies both ways.
//!
//! Connections to allowed or undenied addresses never come here: the
//! firewall forwards them as for any sandbox.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::domains::{MAX_PEEK, Peeked, http_host, tls_server_name};
use super::{Cidr, EgressPolicy};

/// How long a connection may take to say which name it is for.
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to one resolved address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses the proxy never connects to, whatever a name resolves to
/// (E2B's list): private, shared, loopback, link-local ranges, and what no
/// sandbox reaches anyway.
const NEVER: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
    "255.255.255.255/32",
];

/// What the proxy knows of one sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Its policy (the names it may reach).
    pub policy: EgressPolicy,
    /// Its nameservers: names are resolved as the sandbox resolves them.
    pub nameservers: Vec<IpAddr>,
}

/// The proxy of one runtime: its port, and the sandboxes it serves.
#[derive(Debug)]
pub(crate) struct EgressProxy {
    port: u16,
    routes: Arc<RwLock<HashMap<Ipv4Addr, Route>>>,
}

impl EgressProxy {
    /// Binds the proxy's port — `preferred` when it is free (the port a
    /// previous run of the server used, which its sandboxes' redirects
    /// still name), else any — on every address (the firewall redirects a
    /// sandbox's connections to its gateway address), and serves it on
    /// `handle`'s runtime. `pool` is the sandboxes' address pool, never
    /// connected to.
    pub fn start(
        handle: &tokio::runtime::Handle,
        pool: Cidr,
        preferred: Option<u16>,
    ) -> std::io::Result<EgressProxy> {
        let std_listener = match preferred
            .and_then(|p| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).ok())
        {
            Some(l) => l,
            None => std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?,
        };
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let routes: Arc<RwLock<HashMap<Ipv4Addr, Route>>> = Arc::default();
        let serving = routes.clone();
        handle.spawn(async move {
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("egress proxy: cannot listen: {e}");
                    return;
                }
            };
            let resolvers = Arc::new(Resolvers::default());
            loop {
                let (conn, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("egress proxy: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let route = match peer.ip() {
                    IpAddr::V4(ip) => serving
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&ip)
                        .cloned(),
                    IpAddr::V6(_) => None,
                };
                // Not a sandbox this proxy serves: nothing to say to it.
                let Some(route) = route else { continue };
                let resolvers = resolvers.clone();
                tokio::spawn(async move {
                    if let Err(why) = relay(conn, &route, pool, &resolvers).await {
                        tracing::debug!(sandbox = %peer.ip(), "egress proxy: {why}");
                    }
                });
            }
        });
        tracing::debug!(port, "egress proxy listening");
        Ok(EgressProxy { port, routes })
    }

    /// The port the firewall redirects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves the sandbox at `address` with `route`, or no more.
    pub fn set(&self, address: Ipv4Addr, route: Option<Route>) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        match route {
            Some(r) => routes.insert(address, r),
            None => routes.remove(&address),
        };
    }
}

/// Resolvers by nameserver list (sandboxes mostly share one).
#[derive(Default)]
struct Resolvers(tokio::sync::Mutex<HashMap<Vec<IpAddr>, TokioResolver>>);

impl Resolvers {
    async fn lookup(&self, nameservers: &[IpAddr], name: &str) -> Result<Vec<IpAddr>, String> {
        let resolver = {
            let mut all = self.0.lock().await;
            all.entry(nameservers.to_vec())
                .or_insert_with(|| resolver(nameservers))
                .clone()
        };
        let found = resolver
            .lookup_ip(name)
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?;
        Ok(found.iter().collect())
    }
}

fn resolver(nameservers: &[IpAddr]) -> TokioResolver {
    let mut cfg = ResolverConfig::new();
    for ns in nameservers {
        let addr = SocketAddr::new(*ns, 53);
        cfg.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
        cfg.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    TokioResolver::builder_with_config(cfg, TokioConnectionProvider::default())
        .with_options(opts)
        .build()
}

/// Whether the proxy may connect to `ip` for a sandbox of `pool`.
fn reachable(ip: IpAddr, pool: Cidr) -> bool {
    if !ip.is_ipv4() {
        // Sandboxes have IPv4 only; so does what they reach by name.
        return false;
    }
    !pool.contains(ip)
        && !super::is_host_address(ip)
        && !NEVER
            .iter()
            .filter_map(|b| b.parse::<Cidr>().ok())
            .any(|b| b.contains(ip))
}

/// Serves one redirected connection.
async fn relay(
    mut conn: TcpStream,
    route: &Route,
    pool: Cidr,
    resolvers: &Resolvers,
) -> Result<(), String> {
    let original = rustix::net::sockopt::ip_original_dst(&conn)
        .map_err(|e| format!("no original destination: {e}"))?;
    let port = original.port();
    let mut buf = Vec::with_capacity(2048);
    let name = tokio::time::timeout(PEEK_TIMEOUT, async {
        loop {
            let peeked = if port == 443 {
                tls_server_name(&buf)
            } else {
                http_host(&buf)
            };
            match peeked {
                Peeked::Name(name) => return Ok::<_, String>(Some(name)),
                Peeked::Nameless => return Ok(None),
                Peeked::More => {}
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n.min(MAX_PEEK - buf.len().min(MAX_PEEK))]);
        }
    })
    .await
    .map_err(|_| format!("{original}: no name within {PEEK_TIMEOUT:?}"))??;
    let Some(name) = name.filter(|n| route.policy.allows_name(n)) else {
        return Err(format!("{original}: denied (no allowed name)"));
    };
    let addresses = resolvers.lookup(&route.nameservers, &name).await?;
    let mut upstream = None;
    for ip in addresses.into_iter().filter(|ip| reachable(*ip, pool)) {
        let target = SocketAddr::new(ip, port);
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            upstream = Some(s);
            break;
        }
    }
    let mut upstream =
        upstream.ok_or_else(|| format!("{name}:{port}: no reachable address answered"))?;
    let _ = upstream.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    upstream
        .write_all(&buf)
        .await
        .map_err(|e| format!("{name}:{port}: {e}"))?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream)
        .await
        .map(|_| ())
        .map_err(|e| format!("{name}:{port}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_lead_inside() {
        let pool: Cidr = "10.200.0.0/16".parse().unwrap();
        for inside in [
            "10.200.0.2",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "::1",
        ] {
            assert!(!reachable(inside.parse().unwrap(), pool), "{inside}");
        }
        for outside in ["198.51.100.2", "1.1.1.1", "93.184.216.34"] {
            assert!(reachable(outside.parse().unwrap(), pool), "{outside}");
        }
        let public_pool: Cidr = "198.51.100.0/24".parse().unwrap();
        assert!(!reachable("198.51.100.2".parse().unwrap(), public_pool));
    }
}
