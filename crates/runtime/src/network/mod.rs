//! Per-sandbox networking: a network namespace, an address, a default route
//! through the host, DNS, and an egress policy enforced by the host.
//!
//! # Design
//!
//! * **Namespace**: before `runc run`, the runtime creates a network
//!   namespace for the sandbox (`unshare(CLONE_NEWNET)` in a short-lived
//!   thread) and bind-mounts it on `state_dir/<id>/netns`; the spec joins
//!   it by path. The namespace is fully configured before the agent starts,
//!   so the sandbox's first process already runs under its policy. The
//!   bind mount lives in the sandbox directory, so the teardown that
//!   unmounts the overlay unmounts it too, and a directory left by a crash
//!   is found and cleaned like any other.
//! * **Link**: a veth pair, `hv<tag><slot>` on the host and `eth0` in the
//!   sandbox. Every sandbox has its own routed /30 from the pool
//!   ([`NetworkConfig::pool`], default [`DEFAULT_POOL`]): the host end holds
//!   `.1`, the sandbox `.2` with a default route via `.1`. There is no
//!   bridge: every packet between two sandboxes, or between a sandbox and
//!   the host, crosses the host's IP layer, where the rules below see it.
//! * **Addresses** are claimed host-wide in a registry of files under
//!   [`NetworkConfig::run_dir`] (one file per /30, created with `O_EXCL`), so
//!   several Hutch servers with different data directories can share a host
//!   and a pool. The registry lives in `/run` (tmpfs): it disappears with
//!   the interfaces it describes at reboot.
//! * **Names**: `<tag>` is six hex digits derived from the state directory
//!   ([`instance_tag`]), so each server's interfaces and rule elements are
//!   recognisable and nothing of another server is ever touched.
//! * **Rules** live in one nftables table, `inet hutch` ([`TABLE`]), shared by
//!   every server on the host; nothing outside it is changed except
//!   `net.ipv4.ip_forward`, which is switched on (as every container
//!   runtime does). Its base chains:
//!   - `input` (hook input): every packet from a sandbox interface to the
//!     host itself is rejected — no host service, not even the sandbox's own
//!     gateway address, is reachable, whatever it listens on.
//!   - `forward`: traffic from a sandbox goes through `from_sandbox`; traffic
//!     to a sandbox is accepted only as part of a connection the sandbox
//!     opened (nothing from outside can connect in).
//!   - `from_sandbox`: IPv6 is dropped (sandboxes have IPv4 only); a packet
//!     whose interface and source address are not a pair of the set
//!     `sources` is dropped (no spoofing; no interface Hutch did not set
//!     up); anything routed to another sandbox interface is rejected
//!     (sandboxes cannot reach each other); loopback, link-local (cloud
//!     metadata services), multicast and broadcast destinations are
//!     rejected; then the sandbox's policy: destinations in its elements of
//!     the set `allow` (`allowOut`) are accepted, then those in `deny`
//!     (`denyOut`, or everything without internet access) rejected, then
//!     everything else is accepted.
//!   - `postrouting` (nat): traffic from sandbox interfaces leaving through
//!     any other interface is masqueraded.
//!   - `prerouting` (nat): for sandboxes whose policy allows domain names
//!     (an element of the map `inspect`), TCP connections to port 80 or 443
//!     of an address the policy denies are redirected to the egress proxy
//!     ([`egress_proxy`]), which `input` lets them reach (from the
//!     sandbox's own address, through the redirect only).
//!
//!   A sandbox has no chain or rule of its own, only set elements keyed by
//!   its interface (`network/firewall.rs`): adding, changing or removing one costs
//!   the same whatever the number of sandboxes.
//!
//!   The rules are evaluated for every packet a sandbox sends, not only for
//!   new connections, so replacing a sandbox's elements (a policy applied
//!   when a pooled sandbox is claimed) takes effect at once. Rejections use ICMP
//!   "administratively prohibited", so a denied connection fails at once
//!   instead of timing out.
//! * **Why this is safe**: the rules live on the host, outside the sandbox's
//!   namespace, and the sandbox has no `CAP_NET_ADMIN` in any case. Its only
//!   way out is its veth, whose every packet crosses `input` or `forward`.
//! * **DNS**: the sandbox gets a generated `/etc/resolv.conf` naming the
//!   host's nameservers, except those it cannot reach (loopback ones such as
//!   systemd-resolved's `127.0.0.53`, other addresses of the host itself,
//!   IPv6 ones); when none is left, [`NetworkConfig::fallback_nameservers`].
//!   DNS is ordinary egress: a sandbox without internet access has none
//!   (unless its policy allows names: then DNS to its nameservers is).
//!   [`NetworkConfig::nameservers`] replaces the host's.
//!
//! # Crash safety
//!
//! Every kernel object is named after its sandbox's slot, and the slot and
//! names are written to `network.json` in the sandbox directory right
//! after the slot is claimed and before anything is created. A teardown
//! reads that record and removes what it names, each step idempotent.
//! `Network::reconcile` (run when the server lists the host's sandboxes at
//! start) removes whatever of this server's objects no recorded sandbox owns:
//! interfaces, set elements and registry files, and restores the elements of
//! recorded sandboxes that lost them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

mod domains;
pub mod egress_proxy;
mod firewall;

pub use domains::{DomainError, DomainPattern};

/// Default address pool: one /30 per sandbox.
pub const DEFAULT_POOL: &str = "10.200.0.0/16";

/// Default host-wide registry of claimed addresses.
pub const DEFAULT_RUN_DIR: &str = "/run/hutch/network";

/// Nameservers a sandbox gets when the host has none it can reach.
pub const DEFAULT_FALLBACK_NAMESERVERS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
];

/// The nftables table (family `inet`) holding every Hutch rule.
pub const TABLE: &str = "hutch";

/// Prefix of every host-side sandbox interface.
pub const INTERFACE_PREFIX: &str = "hv";

/// The sandbox's interface name inside its namespace.
pub const SANDBOX_INTERFACE: &str = "eth0";

/// Where a sandbox's namespace is bind-mounted, relative to its directory.
pub const NETNS_FILE: &str = "netns";

/// A sandbox's network record, relative to its directory.
pub const RECORD_FILE: &str = "network.json";

/// An IPv4 or IPv6 address block (`10.0.0.0/8`, `1.1.1.1`), with the host
/// bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl Cidr {
    /// Every IPv4 address (`0.0.0.0/0`).
    pub const ALL_IPV4: Cidr = Cidr {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        prefix: 0,
    };

    /// `addr/prefix`, host bits cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError(format!(
                "prefix length /{prefix} is too long for {addr} (at most /{max})"
            )));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix))),
            IpAddr::V6(a) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix))
                };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// The first address of the block.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & v4_mask(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(_), IpAddr::V6(ip)) => {
                Cidr::new(IpAddr::V6(ip), self.prefix).is_ok_and(|c| c.addr == self.addr)
            }
            _ => false,
        }
    }

    /// Whether every address of `other` lies in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    fn v4(&self) -> Option<(Ipv4Addr, u8)> {
        match self.addr {
            IpAddr::V4(a) => Some((a, self.prefix)),
            IpAddr::V6(_) => None,
        }
    }
}

fn v4_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let t = s.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| {
            CidrError(format!(
                "'{s}' is not an IP address or CIDR block (e.g. 10.0.0.0/8, 1.1.1.1)"
            ))
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| CidrError(format!("'{s}' has an invalid prefix length '/{p}'")))?,
        };
        Cidr::new(ip, prefix).map_err(|e| CidrError(format!("'{s}': {e}")))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a sandbox with a network may reach, with E2B's semantics:
/// `deny_out` blocks, `allow_out` re-allows (it wins over `deny_out`), and
/// no internet access is the same as denying `0.0.0.0/0`. Everything not
/// denied is allowed. Whatever the policy, a sandbox never reaches the host,
/// another sandbox, or link-local, loopback and multicast addresses.
///
/// `allow_domains` re-allow by name what the address rules deny: a TCP
/// connection to port 80 or 443 of a denied address goes through the
/// [egress proxy](egress_proxy), which reads the name it is for (the HTTP
/// `Host`, the TLS SNI) and, when a pattern matches, connects to that name
/// itself (resolved by the sandbox's nameservers, never to an internal
/// address); otherwise the connection is closed.
///
/// Sandboxes have IPv4 only: IPv6 blocks are accepted and have no effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicy {
    /// Internet access (E2B's `allow_internet_access`, default on).
    pub allow_internet_access: bool,
    /// Destinations allowed even when denied (`network.allowOut`).
    #[serde(default)]
    pub allow_out: Vec<Cidr>,
    /// Destinations denied (`network.denyOut`).
    #[serde(default)]
    pub deny_out: Vec<Cidr>,
    /// Names allowed even when their addresses are denied (the domain
    /// entries of `network.allowOut`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_domains: Vec<DomainPattern>,
}

impl Default for EgressPolicy {
    /// Internet access, no lists.
    fn default() -> Self {
        EgressPolicy {
            allow_internet_access: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            allow_domains: Vec::new(),
        }
    }
}

/// Why an entry of an egress policy's lists is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl EgressPolicy {
    /// The policy E2B's fields describe: `allow_out` entries are IP
    /// addresses, CIDR blocks or domain patterns ([`DomainPattern`]);
    /// `deny_out` entries addresses or blocks only. Domains are allowed only
    /// where everything else is denied (`0.0.0.0/0` in `deny_out`, or no
    /// internet access), as E2B requires.
    pub fn from_lists(
        allow_internet_access: bool,
        allow_out: &[String],
        deny_out: &[String],
    ) -> Result<EgressPolicy, PolicyError> {
        let mut policy = EgressPolicy {
            allow_internet_access,
            ..EgressPolicy::default()
        };
        for (i, entry) in deny_out.iter().enumerate() {
            let cidr = entry.parse::<Cidr>().map_err(|e| {
                if entry.parse::<DomainPattern>().is_ok() {
                    PolicyError(format!(
                        "network.denyOut[{i}]: '{entry}' is a domain name; denyOut takes IP addresses and CIDR blocks only (to reach only some names, put them in allowOut and 0.0.0.0/0 in denyOut)"
                    ))
                } else {
                    PolicyError(format!("network.denyOut[{i}]: {e}"))
                }
            })?;
            policy.deny_out.push(cidr);
        }
        for (i, entry) in allow_out.iter().enumerate() {
            match (entry.parse::<Cidr>(), entry.parse::<DomainPattern>()) {
                (Ok(cidr), _) => policy.allow_out.push(cidr),
                (_, Ok(domain)) => policy.allow_domains.push(domain),
                (Err(_), Err(_)) => {
                    return Err(PolicyError(format!(
                        "network.allowOut[{i}]: '{entry}' is not an IP address, CIDR block or domain name (e.g. 10.0.0.0/8, 1.1.1.1, api.example.com, *.example.com)"
                    )));
                }
            }
        }
        let denies_all = !allow_internet_access || policy.deny_out.contains(&Cidr::ALL_IPV4);
        if !policy.allow_domains.is_empty() && !denies_all {
            return Err(PolicyError(
                "network.allowOut holds domain names, so network.denyOut must hold 0.0.0.0/0 (E2B's ALL_TRAFFIC): domains re-allow what is denied"
                    .to_owned(),
            ));
        }
        Ok(policy)
    }

    /// `allow_out` as E2B's field lists it: the blocks, then the domains.
    pub fn allow_list(&self) -> Vec<String> {
        self.allow_out
            .iter()
            .map(Cidr::to_string)
            .chain(self.allow_domains.iter().map(DomainPattern::to_string))
            .collect()
    }

    /// Whether connections to denied addresses go through the egress
    /// proxy: the policy allows domains, and denies something.
    pub fn inspects(&self) -> bool {
        !self.allow_domains.is_empty() && !self.denied_blocks().is_empty()
    }

    /// Whether a connection for `name` is allowed by name.
    pub fn allows_name(&self, name: &str) -> bool {
        self.allow_domains.iter().any(|d| d.matches(name))
    }
    /// Whether this is the default policy (the one pooled sandboxes boot
    /// with).
    pub fn is_default(&self) -> bool {
        *self == EgressPolicy::default()
    }

    /// Whether the policy lets the sandbox reach `ip` (before the rules that
    /// hold for every sandbox).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let allow = self.allowed_blocks();
        let deny = self.denied_blocks();
        allow.iter().any(|c| c.contains(ip)) || !deny.iter().any(|c| c.contains(ip))
    }

    /// The IPv4 blocks denied, minimal (no block inside another).
    fn denied_blocks(&self) -> Vec<Cidr> {
        let mut deny: Vec<Cidr> = self.deny_out.clone();
        if !self.allow_internet_access {
            deny.push(Cidr::ALL_IPV4);
        }
        minimal_v4(deny)
    }

    /// The IPv4 blocks re-allowed; empty when nothing is denied.
    fn allowed_blocks(&self) -> Vec<Cidr> {
        if self.denied_blocks().is_empty() {
            return Vec::new();
        }
        minimal_v4(self.allow_out.clone())
    }
}

/// The IPv4 blocks of `blocks`, without duplicates or blocks covered by
/// another (nftables rejects overlapping intervals in one set).
fn minimal_v4(mut blocks: Vec<Cidr>) -> Vec<Cidr> {
    blocks.retain(|c| c.addr.is_ipv4());
    blocks.sort_by_key(|c| c.prefix);
    let mut out: Vec<Cidr> = Vec::new();
    for b in blocks {
        if !out.iter().any(|o| o.covers(&b)) {
            out.push(b);
        }
    }
    out.sort();
    out
}

/// A sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// Only a loopback interface in a namespace of its own: no address, no
    /// egress, no DNS, no host-side objects. For tests and benchmarks.
    Loopback,
    /// An address, a route through the host, and this egress policy.
    Egress(EgressPolicy),
}

impl Default for NetworkPolicy {
    /// [`NetworkPolicy::Egress`] with internet access.
    fn default() -> Self {
        NetworkPolicy::Egress(EgressPolicy::default())
    }
}

/// How the runtime networks sandboxes.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// IPv4 pool the sandboxes' /30s come from (a prefix between /8 and
    /// /28). Must not overlap the host's own networks.
    pub pool: Cidr,
    /// Host-wide registry of claimed addresses (shared by every Hutch
    /// server on the host; tmpfs).
    pub run_dir: PathBuf,
    /// The `ip` binary (iproute2); a bare name is looked up in `PATH`.
    pub ip: PathBuf,
    /// The `nft` binary (nftables).
    pub nft: PathBuf,
    /// The host's resolver configuration, read at every sandbox boot.
    pub resolv_conf: PathBuf,
    /// Nameservers for sandboxes when the host has none they can reach.
    pub fallback_nameservers: Vec<IpAddr>,
    /// Nameservers every sandbox gets instead of the host's (none: the
    /// host's).
    pub nameservers: Vec<IpAddr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            pool: DEFAULT_POOL.parse().expect("valid default pool"),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            ip: PathBuf::from("ip"),
            nft: PathBuf::from("nft"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            fallback_nameservers: DEFAULT_FALLBACK_NAMESERVERS.to_vec(),
            nameservers: Vec::new(),
        }
    }
}

/// Six hex digits naming a Hutch instance (its state directory) in host-side
/// object names: interfaces `hv<tag>…` (and so their firewall elements).
pub fn instance_tag(state_dir: &Path) -> String {
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:06x}", (h ^ (h >> 24) ^ (h >> 48)) & 0xff_ffff)
}

/// What [`Network::setup`] made, recorded in `network.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Index of the sandbox's /30 in the pool.
    pub slot: u32,
    /// Host-side interface.
    pub interface: String,
    /// The sandbox's address.
    pub address: Ipv4Addr,
    /// The host side's address: the sandbox's default gateway.
    pub gateway: Ipv4Addr,
    /// The policy in force.
    pub policy: EgressPolicy,
    /// The nameservers of its `/etc/resolv.conf` (reachable when its
    /// policy allows names; absent in records from before they were kept).
    #[serde(default)]
    pub nameservers: Vec<Ipv4Addr>,
}

impl Record {
    /// The firewall elements this sandbox has, with the egress proxy on
    /// `proxy_port`.
    fn elements(&self, proxy_port: Option<u16>) -> BTreeSet<firewall::Element> {
        let inspection = firewall::Inspection {
            nameservers: &self.nameservers,
            proxy_port,
        };
        firewall::sandbox_elements(&self.interface, self.address, &self.policy, inspection)
    }

    /// What the egress proxy needs to serve this sandbox, if it inspects.
    fn route(&self) -> Option<egress_proxy::Route> {
        self.policy.inspects().then(|| egress_proxy::Route {
            policy: self.policy.clone(),
            nameservers: self.nameservers.iter().map(|n| IpAddr::V4(*n)).collect(),
        })
    }
}

/// Host-side networking of one runtime.
#[derive(Debug)]
pub(crate) struct Network {
    cfg: NetworkConfig,
    state_dir: PathBuf,
    tag: String,
    pool_base: u32,
    slots: u32,
    /// Shared by per-sandbox operations, exclusive for `Network::reconcile`.
    ops: RwLock<()>,
    /// The base table and registry exist.
    base_ready: Mutex<bool>,
    /// Where the next slot search starts.
    cursor: AtomicU32,
    /// The egress proxy, started with the base table when there is a tokio
    /// runtime to run it on (without one, names stay denied).
    proxy: Mutex<Option<egress_proxy::EgressProxy>>,
}

impl Network {
    pub fn new(cfg: NetworkConfig, state_dir: &Path) -> Result<Network, RuntimeError> {
        let Some((base, prefix)) = cfg.pool.v4() else {
            return Err(RuntimeError::InvalidConfig(format!(
                "network pool {} must be an IPv4 block",
                cfg.pool
            )));
        };
        if !(8..=28).contains(&prefix) {
            return Err(RuntimeError::InvalidConfig(format!(
                "network pool {} must be between /8 and /28",
                cfg.pool
            )));
        }
        Ok(Network {
            tag: instance_tag(state_dir),
            state_dir: state_dir.to_path_buf(),
            pool_base: u32::from(base),
            slots: 1 << (30 - u32::from(prefix)),
            cfg,
            ops: RwLock::new(()),
            base_ready: Mutex::new(false),
            cursor: AtomicU32::new(0),
            proxy: Mutex::new(None),
        })
    }

    fn interface(&self, slot: u32) -> String {
        format!("{INTERFACE_PREFIX}{}{slot:x}", self.tag)
    }

    fn slot_net(&self, slot: u32) -> u32 {
        self.pool_base + slot * 4
    }

    fn slot_file(&self, slot: u32) -> PathBuf {
        self.cfg
            .run_dir
            .join("slots")
            .join(Ipv4Addr::from(self.slot_net(slot)).to_string())
    }

    /// Slot of a registry file name, if it is in this pool.
    fn slot_of_file(&self, name: &str) -> Option<u32> {
        let net = u32::from(name.parse::<Ipv4Addr>().ok()?);
        let off = net.checked_sub(self.pool_base)?;
        (off % 4 == 0 && off / 4 < self.slots).then_some(off / 4)
    }

    /// Path of a sandbox's record.
    pub fn record_path(dir: &Path) -> PathBuf {
        dir.join(RECORD_FILE)
    }

    /// A sandbox's record, if it has one.
    pub fn read_record(dir: &Path) -> Option<Record> {
        let data = std::fs::read(Network::record_path(dir)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Creates the table and registry if needed and switches IPv4
    /// forwarding on. Once per runtime.
    fn ensure_base(&self) -> Result<(), RuntimeError> {
        let mut ready = self
            .base_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *ready {
            return Ok(());
        }
        let slots = self.cfg.run_dir.join("slots");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&slots)
            .map_err(|e| net_err(format!("create {}: {e}", slots.display())))?;
        // Serialises table creation between servers on the host.
        let lock_path = self.cfg.run_dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| net_err(format!("open {}: {e}", lock_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| net_err(format!("lock {}: {e}", lock_path.display())))?;
        let exists = Command::new(&self.cfg.nft)
            .args(["list", "set", "inet", TABLE, firewall::LAYOUT_MARKER_SET])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| tool_missing(&self.cfg.nft, "nftables", &e))?
            .success();
        if !exists {
            // Absent, or made by an older Hutch with another layout: (re)made
            // in one transaction. Sandboxes of other servers on the host lose
            // their rules until those servers reconcile (their traffic is
            // dropped meanwhile, never let through).
            self.nft(&firewall::base_rules(), "create the nftables table")?;
            tracing::info!(table = TABLE, "created the sandbox firewall table");
        }
        enable_forwarding()?;
        self.start_proxy()?;
        *ready = true;
        Ok(())
    }

    /// Starts the egress proxy unless it runs.
    fn start_proxy(&self) -> Result<(), RuntimeError> {
        let mut proxy = self.proxy.lock().unwrap_or_else(PoisonError::into_inner);
        if proxy.is_none()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            // The port of the previous run, which running sandboxes'
            // redirects name: kept when free, so that they stay served.
            let port_file = self.cfg.run_dir.join(format!("proxy-{}", self.tag));
            let preferred = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok());
            let started = egress_proxy::EgressProxy::start(&handle, self.cfg.pool, preferred)
                .map_err(|e| net_err(format!("start the egress proxy: {e}")))?;
            let tmp = port_file.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, started.port().to_string())
                .and_then(|()| std::fs::rename(&tmp, &port_file))
            {
                tracing::warn!("cannot record the egress proxy's port: {e}");
            }
            *proxy = Some(started);
        }
        Ok(())
    }

    /// The egress proxy's port, if it runs.
    fn proxy_port(&self) -> Option<u16> {
        self.proxy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(egress_proxy::EgressProxy::port)
    }

    /// Tells the egress proxy how to serve `record`'s sandbox (or that it
    /// no longer does).
    fn route(&self, record: &Record, gone: bool) {
        if let Some(p) = self
            .proxy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            p.set(record.address, if gone { None } else { record.route() });
        }
    }

    /// Gives sandbox `id` (directory `dir`) an address, a namespace at
    /// `dir/netns` wired to the host, and its policy's rules.
    pub fn setup(
        &self,
        id: &str,
        dir: &Path,
        policy: &EgressPolicy,
    ) -> Result<Record, RuntimeError> {
        let _ops = self.ops.read().unwrap_or_else(PoisonError::into_inner);
        self.ensure_base()?;
        let slot = self.claim_slot(id)?;
        let net = self.slot_net(slot);
        let record = Record {
            slot,
            interface: self.interface(slot),
            address: Ipv4Addr::from(net + 2),
            gateway: Ipv4Addr::from(net + 1),
            policy: policy.clone(),
            nameservers: self.nameservers(),
        };
        write_record(dir, &record)?;

        let netns = dir.join(NETNS_FILE);
        create_netns(&netns)?;
        // The rules first: the link comes up already governed by them.
        self.route(&record, false);
        let elements = record.elements(self.proxy_port());
        if let Err(e) = self.nft(&firewall::add(&elements), "install the sandbox's rules") {
            // The table may have been removed behind Hutch's back (a host
            // firewall reload that flushes the whole ruleset): recreate it
            // once.
            tracing::warn!(error = %e, "recreating the sandbox firewall table");
            *self
                .base_ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = false;
            self.ensure_base()?;
            self.nft(&firewall::add(&elements), "install the sandbox's rules")?;
        }
        let ns =
            File::open(&netns).map_err(|e| net_err(format!("open {}: {e}", netns.display())))?;
        let ns_path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
        self.ip(
            &format!(
                "link add {iface} type veth peer name {SANDBOX_INTERFACE} netns {ns_path}\n\
                 addr add {gw}/30 dev {iface}\n\
                 link set {iface} up\n",
                iface = record.interface,
                gw = record.gateway,
            ),
            None,
        )?;
        self.ip(
            &format!(
                "link set lo up\n\
                 addr add {addr}/30 dev {SANDBOX_INTERFACE}\n\
                 link set {SANDBOX_INTERFACE} up\n\
                 route add default via {gw}\n",
                addr = record.address,
                gw = record.gateway,
            ),
            Some(&ns),
        )?;
        Ok(record)
    }

    /// Replaces a set-up sandbox's policy (atomically: one nftables
    /// transaction).
    pub fn set_policy(&self, dir: &Path, policy: &EgressPolicy) -> Result<Record, RuntimeError> {
        let _ops = self.ops.read().unwrap_or_else(PoisonError::into_inner);
        let mut record = Network::read_record(dir)
            .ok_or_else(|| net_err("the sandbox has no network to apply a policy to".to_owned()))?;
        self.ensure_base()?;
        let port = self.proxy_port();
        let old = record.elements(port);
        record.policy = policy.clone();
        self.route(&record, false);
        self.nft(
            &firewall::replace(&old, &record.elements(port)),
            "replace the sandbox's rules",
        )?;
        std::fs::remove_file(Network::record_path(dir))
            .map_err(|e| net_err(format!("replace the network record: {e}")))?;
        write_record(dir, &record)?;
        Ok(record)
    }

    /// Removes what [`Network::setup`] made for `id`, as far as it got.
    /// Idempotent. The namespace's bind mount is left to the caller (it is
    /// unmounted with the rest of the sandbox directory).
    pub fn teardown(&self, id: &str, dir: &Path) -> Result<(), RuntimeError> {
        let _ops = self.ops.read().unwrap_or_else(PoisonError::into_inner);
        let Some(record) = Network::read_record(dir) else {
            // Crashed between claiming a slot and recording it?
            self.release_slots_of(id);
            return Ok(());
        };
        self.ensure_base()?;
        self.route(&record, true);
        self.nft(
            &firewall::remove(&record.elements(self.proxy_port())),
            "remove the sandbox's rules",
        )?;
        self.delete_interfaces(std::slice::from_ref(&record.interface))?;
        self.release_slot(record.slot, id);
        Ok(())
    }

    /// Removes this instance's host-side objects that no sandbox directory
    /// records: interfaces, firewall elements, registry files.
    pub fn reconcile(&self) -> Result<(), RuntimeError> {
        let _ops = self.ops.write().unwrap_or_else(PoisonError::into_inner);
        // slot -> id, from the records of existing sandbox directories.
        let mut live: BTreeMap<u32, String> = BTreeMap::new();
        let mut records = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.state_dir) {
            for entry in entries.flatten() {
                if let (Some(rec), Ok(id)) = (
                    Network::read_record(&entry.path()),
                    entry.file_name().into_string(),
                ) && rec.interface == self.interface(rec.slot)
                {
                    live.insert(rec.slot, id);
                    records.push(rec);
                }
            }
        }

        // Registry files.
        let mut stale_files = 0;
        if let Ok(entries) = std::fs::read_dir(self.cfg.run_dir.join("slots")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((tag, id)) = read_owner(&entry.path()) else {
                    continue;
                };
                if tag != self.tag {
                    continue;
                }
                let owned = self
                    .slot_of_file(&name)
                    .and_then(|s| live.get(&s))
                    .is_some_and(|live_id| *live_id == id);
                if !owned {
                    let _ = std::fs::remove_file(entry.path());
                    stale_files += 1;
                }
            }
        }

        // Interfaces.
        let prefix = format!("{INTERFACE_PREFIX}{}", self.tag);
        let mut stale_ifaces = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(&prefix) {
                    let owned = u32::from_str_radix(rest, 16)
                        .ok()
                        .is_some_and(|s| live.contains_key(&s) && self.interface(s) == name);
                    if !owned {
                        stale_ifaces.push(name);
                    }
                }
            }
        }
        self.delete_interfaces(&stale_ifaces)?;

        // Rules: every live sandbox's elements exactly as its record says
        // (restored if the host's firewall was reloaded with a flush of the
        // whole ruleset, or if a crash fell between a policy change and its
        // record), and none of this server's other elements.
        let mut listing = self.list_table()?;
        if listing.as_ref().is_none_or(|t| !t.current_layout) {
            *self
                .base_ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = false;
            self.ensure_base()?;
            listing = self.list_table()?;
        } else {
            // The egress proxy runs before the sandboxes' elements are
            // checked: theirs name its port.
            self.ensure_base()?;
        }
        let listing = listing.unwrap_or_default();
        let mut script = String::new();
        let mut restored = 0;
        let port = self.proxy_port();
        for r in &records {
            self.route(r, false);
            let want = r.elements(port);
            let have = listing.of(&r.interface);
            if want != have {
                let stale: BTreeSet<firewall::Element> = have.difference(&want).cloned().collect();
                script += &firewall::delete(&stale);
                script += &firewall::add(&want);
                restored += 1;
            }
        }
        let live_ifaces: BTreeSet<String> = live.keys().map(|s| self.interface(*s)).collect();
        let stale: BTreeSet<firewall::Element> = listing
            .elements
            .iter()
            .filter(|e| e.interface.starts_with(&prefix) && !live_ifaces.contains(&e.interface))
            .cloned()
            .collect();
        let stale_rules = stale.len();
        script += &firewall::delete(&stale);
        if !script.is_empty() {
            self.nft(&script, "reconcile the sandboxes' rules")?;
        }
        if restored > 0 {
            tracing::warn!(
                sandboxes = restored,
                "restored the firewall rules of running sandboxes"
            );
        }
        if stale_files + stale_ifaces.len() + stale_rules > 0 {
            tracing::info!(
                registry_files = stale_files,
                interfaces = stale_ifaces.len(),
                rules = stale_rules,
                "removed network objects of sandboxes that are gone"
            );
        }
        Ok(())
    }

    /// The table's per-sandbox elements; `None` if it does not exist.
    fn list_table(&self) -> Result<Option<firewall::Listing>, RuntimeError> {
        let out = Command::new(&self.cfg.nft)
            .args(["-j", "list", "table", "inet", TABLE])
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            // No nftables: no rules can exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(tool_missing(&self.cfg.nft, "nftables", &e)),
        };
        if !out.status.success() {
            return Ok(None);
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| net_err(format!("cannot parse `nft -j list table`: {e}")))?;
        Ok(Some(firewall::Listing::parse(&json)))
    }

    /// Claims a free /30 in the host-wide registry.
    fn claim_slot(&self, id: &str) -> Result<u32, RuntimeError> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots;
        for k in 0..self.slots {
            let slot = (start + k) % self.slots;
            let path = self.slot_file(slot);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(format!("{}\n{id}\n", self.tag).as_bytes())
                        .map_err(|e| net_err(format!("write {}: {e}", path.display())))?;
                    self.cursor.store(slot + 1, Ordering::Relaxed);
                    return Ok(slot);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(net_err(format!("create {}: {e}", path.display()))),
            }
        }
        Err(net_err(format!(
            "the address pool {} is exhausted ({} sandboxes)",
            self.cfg.pool, self.slots
        )))
    }

    /// Frees `slot` if `id` of this instance holds it.
    fn release_slot(&self, slot: u32, id: &str) {
        let path = self.slot_file(slot);
        if read_owner(&path).is_some_and(|(tag, owner)| tag == self.tag && owner == id) {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Frees every slot `id` of this instance holds.
    fn release_slots_of(&self, id: &str) {
        let Ok(entries) = std::fs::read_dir(self.cfg.run_dir.join("slots")) else {
            return;
        };
        for entry in entries.flatten() {
            if read_owner(&entry.path()).is_some_and(|(tag, owner)| tag == self.tag && owner == id)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Deletes host interfaces (and so their veth peers) that exist.
    fn delete_interfaces(&self, names: &[String]) -> Result<(), RuntimeError> {
        let script: String = names
            .iter()
            .filter(|n| Path::new("/sys/class/net").join(n).exists())
            .map(|n| format!("link del {n}\n"))
            .collect();
        if script.is_empty() {
            return Ok(());
        }
        match self.ip(&script, None) {
            Ok(()) => Ok(()),
            // Gone meanwhile (its namespace was destroyed).
            Err(_)
                if names
                    .iter()
                    .all(|n| !Path::new("/sys/class/net").join(n).exists()) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs an `nft` script as one transaction.
    fn nft(&self, script: &str, what: &str) -> Result<(), RuntimeError> {
        let mut cmd = Command::new(&self.cfg.nft);
        cmd.args(["-f", "-"]);
        run_script(cmd, script, what, &self.cfg.nft, "nftables")
    }

    /// Runs an `ip -batch` script, in the namespace `netns` if given.
    fn ip(&self, script: &str, netns: Option<&File>) -> Result<(), RuntimeError> {
        let mut cmd = Command::new(&self.cfg.ip);
        cmd.args(["-batch", "-"]);
        if let Some(ns) = netns {
            let fd = ns.as_raw_fd();
            // SAFETY: the closure only makes the setns(2) system call, which
            // is async-signal-safe, on a descriptor the parent keeps open
            // until the child has exited.
            unsafe {
                cmd.pre_exec(move || {
                    let ns = BorrowedFd::borrow_raw(fd);
                    rustix::thread::move_into_link_name_space(
                        ns,
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let what = if netns.is_some() {
            "configure the sandbox side of its network"
        } else {
            "configure the host side of the sandbox's network"
        };
        run_script(cmd, script, what, &self.cfg.ip, "iproute2")
    }

    /// The `/etc/resolv.conf` a sandbox gets: the configured nameservers,
    /// else the host's it can reach.
    pub fn resolv_conf(&self) -> String {
        if !self.cfg.nameservers.is_empty() {
            return self
                .cfg
                .nameservers
                .iter()
                .map(|ns| format!("nameserver {ns}\n"))
                .collect();
        }
        let host = std::fs::read_to_string(&self.cfg.resolv_conf).unwrap_or_default();
        sandbox_resolv_conf(&host, is_host_address, &self.cfg.fallback_nameservers)
    }

    /// The IPv4 nameservers of [`Network::resolv_conf`].
    fn nameservers(&self) -> Vec<Ipv4Addr> {
        self.resolv_conf()
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .filter_map(|ns| ns.trim().parse::<Ipv4Addr>().ok())
            .collect()
    }
}

fn write_record(dir: &Path, record: &Record) -> Result<(), RuntimeError> {
    let path = Network::record_path(dir);
    let json = serde_json::to_vec_pretty(record).map_err(|source| RuntimeError::Json {
        context: "serialize network.json".to_owned(),
        source,
    })?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| net_err(format!("create {}: {e}", path.display())))?;
    f.write_all(&json)
        .map_err(|e| net_err(format!("write {}: {e}", path.display())))
}

/// `(tag, id)` from a registry file.
fn read_owner(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    Some((lines.next()?.to_owned(), lines.next()?.to_owned()))
}

/// Creates a network namespace and bind-mounts it on `path` (a new file).
fn create_netns(path: &Path) -> Result<(), RuntimeError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| net_err(format!("create {}: {e}", path.display())))?;
    let target = path.to_path_buf();
    // unshare(2) changes only the calling thread; this one ends right after.
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: CLONE_NEWNET does not unshare the file descriptor table,
        // the only flag `unshare_unsafe` warns about.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .map_err(|_| net_err("the namespace thread panicked".to_owned()))?;
    made.map_err(|e| {
        let _ = std::fs::remove_file(path);
        net_err(format!(
            "create a network namespace at {}: {e}",
            path.display()
        ))
    })
}

/// Switches IPv4 forwarding on, if it is off.
fn enable_forwarding() -> Result<(), RuntimeError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let on = std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1");
    if !on {
        std::fs::write(PATH, b"1")
            .map_err(|e| net_err(format!("enable IPv4 forwarding ({PATH}): {e}")))?;
        tracing::info!("enabled IPv4 forwarding (net.ipv4.ip_forward=1) for sandbox egress");
    }
    Ok(())
}

fn run_script(
    mut cmd: Command,
    script: &str,
    what: &str,
    program: &Path,
    package: &str,
) -> Result<(), RuntimeError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| tool_missing(program, package, &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A tool that fails early closes its input; its status says why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| net_err(format!("wait for {}: {e}", program.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(net_err(format!(
            "cannot {what}: `{}` failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn net_err(detail: String) -> RuntimeError {
    RuntimeError::Network(detail)
}

fn tool_missing(program: &Path, package: &str, e: &std::io::Error) -> RuntimeError {
    if e.kind() == std::io::ErrorKind::NotFound {
        net_err(format!(
            "{} not found: sandbox networking needs {package} (`apt install {package}`)",
            program.display()
        ))
    } else {
        net_err(format!("cannot run {}: {e}", program.display()))
    }
}

/// Whether `ip` is an address of this host (binding to it succeeds).
fn is_host_address(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok()
}

/// A sandbox's `/etc/resolv.conf` from the host's: its `search` and
/// `options` lines, and the IPv4 nameservers that are not addresses of the
/// host itself (a sandbox cannot reach those); the fallback nameservers
/// when none is left.
pub fn sandbox_resolv_conf(
    host: &str,
    is_host: impl Fn(IpAddr) -> bool,
    fallback: &[IpAddr],
) -> String {
    let mut servers = Vec::new();
    let mut other = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
                    && ip.is_ipv4()
                    && !is_host(ip)
                    && !servers.contains(&ip)
                {
                    servers.push(ip);
                }
            }
            Some("search" | "domain" | "options") => other.push(line.trim().to_owned()),
            _ => {}
        }
    }
    if servers.is_empty() {
        servers = fallback.to_vec();
    }
    let mut out = String::from("# Generated by Hutch for this sandbox.\n");
    for s in servers {
        out += &format!("nameserver {s}\n");
    }
    for l in other {
        out += &l;
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_take_domains_where_e2b_takes_them() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = EgressPolicy::from_lists(
            true,
            &s(&["10.0.0.0/8", "API.example.com", "*.example.org"]),
            &s(&["0.0.0.0/0"]),
        )
        .unwrap();
        assert_eq!(p.allow_out, vec![c("10.0.0.0/8")]);
        assert_eq!(
            p.allow_list(),
            s(&["10.0.0.0/8", "api.example.com", "*.example.org"])
        );
        assert!(p.inspects());
        assert!(p.allows_name("api.example.com") && p.allows_name("a.example.org"));
        assert!(!p.allows_name("example.org") && !p.allows_name("evil.com"));
        // No internet access denies everything too.
        assert!(
            EgressPolicy::from_lists(false, &s(&["a.com"]), &[])
                .unwrap()
                .inspects()
        );
        for (allow, deny, needle) in [
            (s(&["a.com"]), s(&[]), "0.0.0.0/0"),
            (s(&["a.com"]), s(&["10.0.0.0/8"]), "0.0.0.0/0"),
            (
                s(&[]),
                s(&["a.com"]),
                "network.denyOut[0]: 'a.com' is a domain name",
            ),
            (
                s(&["bad name"]),
                s(&["0.0.0.0/0"]),
                "network.allowOut[0]: 'bad name' is not",
            ),
            (s(&[]), s(&["x"]), "network.denyOut[0]: 'x'"),
        ] {
            let e = EgressPolicy::from_lists(true, &allow, &deny).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        // Without domains nothing is inspected.
        assert!(
            !EgressPolicy::from_lists(false, &s(&["1.1.1.1"]), &[])
                .unwrap()
                .inspects()
        );
    }

    #[test]
    fn parses_addresses_and_blocks() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("1.1.1.1").to_string(), "1.1.1.1/32");
        assert_eq!(c(" 10.1.2.3/8 ").to_string(), "10.0.0.0/8");
        assert_eq!(c("0.0.0.0/0"), Cidr::ALL_IPV4);
        assert_eq!(c("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(c("::/0").to_string(), "::/0");
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "x", "1.2.3.4/-1", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let e = "example.com".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("not an IP address"), "{e}");
        let json = serde_json::to_string(&c("8.8.8.0/24")).unwrap();
        assert_eq!(json, "\"8.8.8.0/24\"");
        assert_eq!(
            serde_json::from_str::<Cidr>(&json).unwrap(),
            c("8.8.8.0/24")
        );
    }

    #[test]
    fn containment() {
        assert!(c("10.0.0.0/8").contains(ip("10.9.8.7")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(Cidr::ALL_IPV4.contains(ip("203.0.113.9")));
        assert!(!Cidr::ALL_IPV4.contains(ip("::1")));
        assert!(c("10.0.0.0/8").covers(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").covers(&c("10.0.0.0/8")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8::5")));
    }

    #[test]
    fn e2b_semantics() {
        let open = EgressPolicy::default();
        assert!(open.is_default());
        assert!(open.allows(ip("198.51.100.7")));

        let closed = EgressPolicy {
            allow_internet_access: false,
            ..EgressPolicy::default()
        };
        assert!(!closed.allows(ip("198.51.100.7")));

        let hole = EgressPolicy {
            allow_internet_access: false,
            allow_out: vec![c("198.51.100.7")],
            deny_out: vec![],
            allow_domains: vec![],
        };
        assert!(hole.allows(ip("198.51.100.7")));
        assert!(!hole.allows(ip("198.51.100.8")));

        let deny = EgressPolicy {
            allow_internet_access: true,
            allow_out: vec![c("198.51.100.0/25")],
            deny_out: vec![c("198.51.100.0/24")],
            allow_domains: vec![],
        };
        assert!(deny.allows(ip("198.51.100.7")));
        assert!(!deny.allows(ip("198.51.100.200")));
        assert!(deny.allows(ip("203.0.113.1")));

        // Allow alone changes nothing: everything is allowed anyway.
        let allow_only = EgressPolicy {
            allow_out: vec![c("1.1.1.1")],
            ..EgressPolicy::default()
        };
        assert!(allow_only.allowed_blocks().is_empty());
        assert!(allow_only.allows(ip("9.9.9.9")));
    }

    #[test]
    fn minimal_blocks_have_no_overlap() {
        let m = minimal_v4(vec![
            c("10.1.0.0/16"),
            c("10.0.0.0/8"),
            c("10.0.0.0/8"),
            c("192.168.1.1"),
            c("2001:db8::/32"),
        ]);
        assert_eq!(m, vec![c("10.0.0.0/8"), c("192.168.1.1")]);
    }

    #[test]
    fn names_fit_interface_limits() {
        let net = Network::new(
            NetworkConfig::default(),
            Path::new("/var/lib/hutch/sandboxes"),
        )
        .unwrap();
        assert_eq!(net.slots, 16384);
        assert!(net.interface(net.slots - 1).len() <= 15);
        let wide = Network::new(
            NetworkConfig {
                pool: c("10.0.0.0/8"),
                ..NetworkConfig::default()
            },
            Path::new("/x"),
        )
        .unwrap();
        assert!(wide.interface(wide.slots - 1).len() <= 15);
        assert_eq!(net.slot_of_file("10.200.0.8"), Some(2));
        assert_eq!(net.slot_of_file("10.200.0.9"), None);
        assert_eq!(net.slot_of_file("10.201.0.0"), None);
        assert_ne!(instance_tag(Path::new("/a")), instance_tag(Path::new("/b")));
        assert_eq!(instance_tag(Path::new("/a")).len(), 6);
        for bad in ["10.0.0.0/30", "10.0.0.0/7", "2001:db8::/64"] {
            let cfg = NetworkConfig {
                pool: c(bad),
                ..NetworkConfig::default()
            };
            assert!(Network::new(cfg, Path::new("/x")).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolv_conf_skips_unreachable_nameservers() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver 10.1.1.1\nnameserver fd00::1\nsearch example.internal\noptions edns0 trust-ad\n";
        let is_host =
            |ip: IpAddr| ip.is_loopback() || ip == "192.0.2.53".parse::<IpAddr>().unwrap();
        let out = sandbox_resolv_conf(host, is_host, &DEFAULT_FALLBACK_NAMESERVERS);
        assert!(out.contains("nameserver 10.1.1.1\n"), "{out}");
        assert!(!out.contains("127.0.0.53"), "{out}");
        assert!(!out.contains("192.0.2.53"), "{out}");
        assert!(!out.contains("fd00"), "{out}");
        assert!(!out.contains("1.1.1.1"), "{out}");
        assert!(out.contains("search example.internal\n"), "{out}");
        assert!(out.contains("options edns0 trust-ad\n"), "{out}");

        let out = sandbox_resolv_conf(
            "nameserver 127.0.0.53\n",
            is_host,
            &DEFAULT_FALLBACK_NAMESERVERS,
        );
        assert!(
            out.contains("nameserver 1.1.1.1\nnameserver 8.8.8.8\n"),
            "{out}"
        );
        assert!(is_host_address(ip("127.0.0.1")));
        assert!(!is_host_address(ip("198.51.100.77")));
    }
}
