//! The host firewall's nftables table: its fixed layout, and the set
//! elements that carry each sandbox's address and egress policy.
//!
//! Per-sandbox state is nothing but **set elements** keyed by the sandbox's
//! host interface — no chain, no rule per sandbox. Adding or removing a
//! sandbox is then a transaction of a few `add element` / `delete element`
//! commands, whose cost does not depend on how many sandboxes exist (a chain
//! per sandbox made `nft` load every chain and rule of the table on each
//! change: 3 ms with none, 37 ms with a thousand).
//!
//! The sets (all keyed `ifname . ipv4_addr`):
//! - `sources`: the one address each sandbox interface may send from.
//!   Anything else — a spoofed source, an interface Hutch did not set up —
//!   is dropped.
//! - `allow` (intervals): destinations a sandbox's `allowOut` accepts.
//! - `deny` (intervals): destinations its `denyOut` rejects (`0.0.0.0/0`
//!   when it has no internet access).
//! - `resolvers`: the nameservers of sandboxes whose policy allows domain names:
//!   DNS (port 53) to them is accepted, so that they can resolve the names.
//! - `inspect` (a map to a port): sandboxes whose policy allows domain
//!   names; their TCP connections to port 80 or 443 of an address `deny`
//!   covers and `allow` does not are redirected to that port, the egress
//!   proxy's ([`super::egress_proxy`]), instead of being rejected.
//!
//! Then everything else is accepted. See the parent module for the base
//! chains around them. The one host port a sandbox reaches is its egress
//! proxy's, and only through the redirect (a connection from its own
//! address, destination-NATed, first sent to port 80 or 443).

use std::collections::BTreeSet;

use super::{Cidr, EgressPolicy, INTERFACE_PREFIX, TABLE};

/// Destinations no sandbox may reach, whatever its policy: "this network",
/// loopback, link-local (cloud metadata services live there), multicast,
/// reserved and broadcast.
const ALWAYS_DENIED: &str = "0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3";

/// How nftables rejects what a policy denies.
const REJECT: &str = "reject with icmpx type admin-prohibited";

/// A set present only in the current layout of the table; a table without
/// it was made by an older Hutch and is replaced.
pub(crate) const LAYOUT_MARKER_SET: &str = "resolvers";

/// The sets holding per-sandbox elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Set {
    /// The sandbox's own address.
    Sources,
    /// Destinations its policy accepts.
    Allow,
    /// Destinations its policy rejects.
    Deny,
    /// The port its inspected connections are redirected to (a map).
    Inspect,
    /// Its nameservers, when it inspects (DNS to them is accepted).
    Dns,
}

impl Set {
    const ALL: [Set; 5] = [Set::Sources, Set::Allow, Set::Deny, Set::Inspect, Set::Dns];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Set::Sources => "sources",
            Set::Allow => "allow",
            Set::Deny => "deny",
            Set::Inspect => "inspect",
            Set::Dns => "resolvers",
        }
    }

    fn from_name(name: &str) -> Option<Set> {
        Set::ALL.into_iter().find(|s| s.name() == name)
    }

    fn interval(self) -> bool {
        matches!(self, Set::Allow | Set::Deny)
    }
}

/// One element of one of the sets: `"<interface>" . <value>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Element {
    pub set: Set,
    pub interface: String,
    /// The address part as nftables writes it: an address in `sources`, a
    /// block `a.b.c.d/len` in the interval sets (a range `a-b` if some other
    /// tool put one there).
    pub value: String,
}

impl Element {
    fn source(interface: &str, address: std::net::Ipv4Addr) -> Element {
        Element {
            set: Set::Sources,
            interface: interface.to_owned(),
            value: address.to_string(),
        }
    }

    fn block(set: Set, interface: &str, block: &Cidr) -> Element {
        Element {
            set,
            interface: interface.to_owned(),
            value: block.to_string(),
        }
    }

    fn inspect(interface: &str, port: u16) -> Element {
        Element {
            set: Set::Inspect,
            interface: interface.to_owned(),
            value: port.to_string(),
        }
    }

    fn command(&self, verb: &str) -> String {
        let (set, iface, value) = (self.set.name(), &self.interface, &self.value);
        match (self.set, verb) {
            // A map's element is deleted by its key.
            (Set::Inspect, "delete") => {
                format!("delete element inet {TABLE} {set} {{ \"{iface}\" }}\n")
            }
            (Set::Inspect, _) => {
                format!("{verb} element inet {TABLE} {set} {{ \"{iface}\" : {value} }}\n")
            }
            _ => format!("{verb} element inet {TABLE} {set} {{ \"{iface}\" . {value} }}\n"),
        }
    }
}

/// How a sandbox's connections reach names its policy allows: the
/// nameservers it resolves them with (allowed, so that it can), and the
/// egress proxy's port (`None` without a proxy: then they stay denied).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inspection<'a> {
    pub nameservers: &'a [std::net::Ipv4Addr],
    pub proxy_port: Option<u16>,
}

/// The elements a sandbox with host interface `interface`, address
/// `address` and `policy` has.
pub(crate) fn sandbox_elements(
    interface: &str,
    address: std::net::Ipv4Addr,
    policy: &EgressPolicy,
    inspection: Inspection<'_>,
) -> BTreeSet<Element> {
    let mut out = policy_elements(interface, policy, inspection);
    out.insert(Element::source(interface, address));
    out
}

/// The `allow`, `deny` and `inspect` elements of `policy` for `interface`.
pub(crate) fn policy_elements(
    interface: &str,
    policy: &EgressPolicy,
    inspection: Inspection<'_>,
) -> BTreeSet<Element> {
    let allow = policy.allowed_blocks();
    let deny = policy.denied_blocks();
    let mut out = BTreeSet::new();
    if policy.inspects() {
        out.extend(inspection.nameservers.iter().map(|ns| Element {
            set: Set::Dns,
            interface: interface.to_owned(),
            value: ns.to_string(),
        }));
        if let Some(port) = inspection.proxy_port {
            out.insert(Element::inspect(interface, port));
        }
    }
    out.extend(
        allow
            .iter()
            .map(|b| Element::block(Set::Allow, interface, b)),
    );
    out.extend(deny.iter().map(|b| Element::block(Set::Deny, interface, b)));
    out
}

/// Creates the table with its sets and base chains, replacing whatever
/// table of that name exists (one transaction).
pub(crate) fn base_rules() -> String {
    let hv = format!("\"{INTERFACE_PREFIX}*\"");
    let key = "type ifname . ipv4_addr ;";
    format!(
        "add table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         add table inet {TABLE}\n\
         add set inet {TABLE} sources {{ {key} }}\n\
         add set inet {TABLE} allow {{ {key} flags interval ; }}\n\
         add set inet {TABLE} deny {{ {key} flags interval ; }}\n\
         add map inet {TABLE} inspect {{ type ifname : inet_service ; }}\n\
         add set inet {TABLE} resolvers {{ {key} }}\n\
         add chain inet {TABLE} input {{ type filter hook input priority -10 ; policy accept ; }}\n\
         add chain inet {TABLE} forward {{ type filter hook forward priority -10 ; policy accept ; }}\n\
         add chain inet {TABLE} postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}\n\
         add chain inet {TABLE} prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}\n\
         add chain inet {TABLE} from_sandbox\n\
         add rule inet {TABLE} prerouting iifname {hv} meta nfproto ipv4 tcp dport {{ 80, 443 }} ip daddr != {{ {ALWAYS_DENIED} }} fib daddr type != local iifname . ip daddr != @allow iifname . ip daddr @deny redirect to : iifname map @inspect\n\
         add rule inet {TABLE} input iifname {hv} iifname . ip saddr @sources meta l4proto tcp ct status dnat ct original proto-dst {{ 80, 443 }} accept\n\
         add rule inet {TABLE} input iifname {hv} {REJECT}\n\
         add rule inet {TABLE} forward iifname {hv} jump from_sandbox\n\
         add rule inet {TABLE} forward oifname {hv} ct state established,related accept\n\
         add rule inet {TABLE} forward oifname {hv} drop\n\
         add rule inet {TABLE} from_sandbox meta nfproto ipv6 drop\n\
         add rule inet {TABLE} from_sandbox iifname . ip saddr != @sources drop\n\
         add rule inet {TABLE} from_sandbox oifname {hv} {REJECT}\n\
         add rule inet {TABLE} from_sandbox ip daddr {{ {ALWAYS_DENIED} }} {REJECT}\n\
         add rule inet {TABLE} from_sandbox iifname . ip daddr @resolvers meta l4proto {{ tcp, udp }} th dport 53 accept\n\
         add rule inet {TABLE} from_sandbox iifname . ip daddr @allow accept\n\
         add rule inet {TABLE} from_sandbox iifname . ip daddr @deny {REJECT}\n\
         add rule inet {TABLE} from_sandbox accept\n\
         add rule inet {TABLE} postrouting iifname {hv} oifname != {hv} masquerade\n"
    )
}

/// Adds `elements` (adding one that exists is not an error).
pub(crate) fn add(elements: &BTreeSet<Element>) -> String {
    elements.iter().map(|e| e.command("add")).collect()
}

/// Removes `elements`, whether or not they exist: each is added first, so
/// the deletion cannot fail on a missing one.
pub(crate) fn remove(elements: &BTreeSet<Element>) -> String {
    let mut s = String::new();
    for e in elements {
        s += &e.command("add");
        s += &e.command("delete");
    }
    s
}

/// Deletes `elements`, which the kernel has just listed.
pub(crate) fn delete(elements: &BTreeSet<Element>) -> String {
    elements.iter().map(|e| e.command("delete")).collect()
}

/// Turns `old` into `new`: removes what is only in `old`, adds `new`.
pub(crate) fn replace(old: &BTreeSet<Element>, new: &BTreeSet<Element>) -> String {
    let gone: BTreeSet<Element> = old.difference(new).cloned().collect();
    remove(&gone) + &add(new)
}

/// What the table holds, as listed by `nft -j list table`.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Whether the table has the current layout.
    pub current_layout: bool,
    /// Every element of the per-sandbox sets.
    pub elements: BTreeSet<Element>,
}

impl Listing {
    pub(crate) fn parse(json: &serde_json::Value) -> Listing {
        let mut out = Listing::default();
        let items = json["nftables"].as_array().cloned().unwrap_or_default();
        for item in items {
            if item["set"]["name"].as_str() == Some(LAYOUT_MARKER_SET) {
                out.current_layout = true;
            }
            // The map's elements are `[key, value]` pairs.
            if item["map"]["name"].as_str() == Some(Set::Inspect.name()) {
                for pair in item["map"]["elem"].as_array().into_iter().flatten() {
                    if let (Some(interface), Some(port)) = (pair[0].as_str(), pair[1].as_u64()) {
                        out.elements.insert(Element {
                            set: Set::Inspect,
                            interface: interface.to_owned(),
                            value: port.to_string(),
                        });
                    }
                }
                continue;
            }
            let Some(set) = item["set"]["name"].as_str().and_then(Set::from_name) else {
                continue;
            };
            for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                // An element with options (a timeout, a comment) is wrapped.
                let elem = if elem["elem"].is_object() {
                    &elem["elem"]["val"]
                } else {
                    elem
                };
                let parts = &elem["concat"];
                let (Some(interface), Some(value)) =
                    (parts[0].as_str(), listed_value(set, &parts[1]))
                else {
                    continue;
                };
                out.elements.insert(Element {
                    set,
                    interface: interface.to_owned(),
                    value,
                });
            }
        }
        out
    }

    /// The elements of interface `interface`.
    pub(crate) fn of(&self, interface: &str) -> BTreeSet<Element> {
        self.elements
            .iter()
            .filter(|e| e.interface == interface)
            .cloned()
            .collect()
    }
}

/// The address part of a listed element, written as [`Element::value`].
fn listed_value(set: Set, v: &serde_json::Value) -> Option<String> {
    if let Some(addr) = v.as_str() {
        // nftables lists a /32 block as a bare address.
        return Some(if set.interval() {
            format!("{addr}/32")
        } else {
            addr.to_owned()
        });
    }
    if let (Some(addr), Some(len)) = (v["prefix"]["addr"].as_str(), v["prefix"]["len"].as_u64()) {
        return Some(format!("{addr}/{len}"));
    }
    if let (Some(a), Some(b)) = (v["range"][0].as_str(), v["range"][1].as_str()) {
        return Some(format!("{a}-{b}"));
    }
    None
}

/// A transaction script, for logs and tests.
#[cfg(test)]
fn lines(script: &str) -> Vec<&str> {
    script.lines().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    const NO_PROXY: Inspection<'static> = Inspection {
        nameservers: &[],
        proxy_port: None,
    };

    #[test]
    fn allowed_names_redirect_to_the_proxy_and_open_dns_to_the_nameservers() {
        let policy = EgressPolicy::from_lists(
            true,
            &["1.1.1.1".into(), "*.example.com".into()],
            &["0.0.0.0/0".into()],
        )
        .unwrap();
        let ns = ["1.1.1.1".parse().unwrap(), "9.9.9.9".parse().unwrap()];
        let inspection = Inspection {
            nameservers: &ns,
            proxy_port: Some(41234),
        };
        let e = policy_elements("hvx1", &policy, inspection);
        assert_eq!(
            lines(&add(&e)),
            vec![
                "add element inet hutch allow { \"hvx1\" . 1.1.1.1/32 }",
                "add element inet hutch deny { \"hvx1\" . 0.0.0.0/0 }",
                "add element inet hutch inspect { \"hvx1\" : 41234 }",
                "add element inet hutch resolvers { \"hvx1\" . 1.1.1.1 }",
                "add element inet hutch resolvers { \"hvx1\" . 9.9.9.9 }",
            ]
        );
        // A map's element goes by its key.
        assert!(remove(&e).contains("delete element inet hutch inspect { \"hvx1\" }\n"));
        // Without a proxy the names stay denied; without domains nothing
        // is inspected and the nameservers get nothing special (DNS to
        // them only, never all their ports).
        let no_proxy = policy_elements(
            "hvx1",
            &policy,
            Inspection {
                proxy_port: None,
                ..inspection
            },
        );
        assert!(no_proxy.iter().all(|e| e.set != Set::Inspect));
        let plain = EgressPolicy::from_lists(false, &["1.1.1.1".into()], &[]).unwrap();
        assert_eq!(policy_elements("hvx1", &plain, inspection).len(), 2);
    }

    #[test]
    fn default_policy_is_one_source_element() {
        let e = sandbox_elements(
            "hvabcdef5",
            "10.200.0.22".parse().unwrap(),
            &EgressPolicy::default(),
            NO_PROXY,
        );
        assert_eq!(
            lines(&add(&e)),
            vec!["add element inet hutch sources { \"hvabcdef5\" . 10.200.0.22 }"]
        );
    }

    #[test]
    fn policies_become_allow_and_deny_elements() {
        let policy = EgressPolicy {
            allow_internet_access: false,
            allow_out: vec![c("198.51.100.2")],
            deny_out: vec![c("10.0.0.0/8")],
            allow_domains: Vec::new(),
        };
        let e = policy_elements("hvx1", &policy, NO_PROXY);
        let script = add(&e);
        assert_eq!(
            lines(&script),
            vec![
                "add element inet hutch allow { \"hvx1\" . 198.51.100.2/32 }",
                // No internet access covers 10.0.0.0/8.
                "add element inet hutch deny { \"hvx1\" . 0.0.0.0/0 }",
            ]
        );
        let open = policy_elements("hvx1", &EgressPolicy::default(), NO_PROXY);
        let r = replace(&e, &open);
        assert_eq!(
            lines(&r),
            vec![
                "add element inet hutch allow { \"hvx1\" . 198.51.100.2/32 }",
                "delete element inet hutch allow { \"hvx1\" . 198.51.100.2/32 }",
                "add element inet hutch deny { \"hvx1\" . 0.0.0.0/0 }",
                "delete element inet hutch deny { \"hvx1\" . 0.0.0.0/0 }",
            ]
        );
    }

    #[test]
    fn base_rules_replace_the_table_and_check_sources_first() {
        let b = base_rules();
        assert!(b.starts_with("add table inet hutch\ndelete table inet hutch\n"));
        let spoof = b.find("ip saddr != @sources drop").unwrap();
        let allow = b.find("@allow accept").unwrap();
        let deny = b.find("@deny reject").unwrap();
        assert!(spoof < allow && allow < deny, "{b}");
        // The proxy's port is reached only through the redirect, from a
        // sandbox's own address; the rest of the host is rejected after.
        let proxy = b
            .find("iifname . ip saddr @sources meta l4proto tcp ct status dnat ct original proto-dst { 80, 443 } accept")
            .unwrap();
        let host = b.find("input iifname \"hv*\" reject").unwrap();
        assert!(proxy < host, "{b}");
    }

    #[test]
    fn parses_listings() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {}},
            {"table": {"family": "inet", "name": "hutch"}},
            {"set": {"name": "sources", "elem": [{"concat": ["hvabcdef1", "10.200.0.2"]}]}},
            {"set": {"name": "deny", "elem": [
                {"concat": ["hvabcdef1", {"prefix": {"addr": "0.0.0.0", "len": 0}}]},
                {"elem": {"val": {"concat": ["hvabcdef1", "1.1.1.1"]}, "comment": "x"}},
                {"concat": ["hvother", {"range": ["10.0.0.1", "10.0.0.9"]}]},
            ]}},
            {"set": {"name": "resolvers", "elem": [{"concat": ["hvabcdef1", "9.9.9.9"]}]}},
            {"map": {"name": "inspect", "type": "ifname", "map": "inet_service", "elem": [["hvabcdef1", 41234]]}},
            {"chain": {"name": "from_sandbox"}},
        ]});
        let t = Listing::parse(&json);
        assert!(t.current_layout);
        let values: Vec<(Set, &str, &str)> = t
            .elements
            .iter()
            .map(|e| (e.set, e.interface.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            values,
            vec![
                (Set::Sources, "hvabcdef1", "10.200.0.2"),
                (Set::Deny, "hvabcdef1", "0.0.0.0/0"),
                (Set::Deny, "hvabcdef1", "1.1.1.1/32"),
                (Set::Deny, "hvother", "10.0.0.1-10.0.0.9"),
                (Set::Inspect, "hvabcdef1", "41234"),
                (Set::Dns, "hvabcdef1", "9.9.9.9"),
            ]
        );
        assert_eq!(t.of("hvother").len(), 1);
        // A table from before the egress proxy has another layout.
        let before = serde_json::json!({"nftables": [
            {"set": {"name": "sources", "elem": []}},
        ]});
        assert!(!Listing::parse(&before).current_layout);
        let old = serde_json::json!({"nftables": [
            {"map": {"name": "sandboxes", "elem": [["hvabcdef1", {"jump": {"target": "sbx_abcdef_1"}}]]}},
        ]});
        assert!(!Listing::parse(&old).current_layout);
    }
}
