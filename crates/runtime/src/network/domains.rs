//! Domain names in egress rules: the patterns `allowOut` may hold, and
//! reading the name a connection is for — the `Host` of an HTTP request,
//! the server name (SNI) of a TLS ClientHello — from its first bytes.
//!
//! The readers are written for this one job (they look at one field of a
//! client's first message, never terminate TLS or serve HTTP) and bounded:
//! they say "more bytes needed" up to [`MAX_PEEK`], then "no name".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most bytes read from a connection to find its name.
pub const MAX_PEEK: usize = 16 * 1024;

/// A domain pattern of `allowOut`: a name (`api.example.com`, matched
/// exactly), `*.` and a name (`*.example.com`: its subdomains, not the name
/// itself), or `*` (every name). Case-insensitive; stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern(String);

/// Why a string is not a domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a domain name or pattern (e.g. api.example.com, *.example.com)")]
pub struct DomainError(String);

impl DomainPattern {
    /// Whether `host` (a name from a request, any case, a trailing dot
    /// allowed) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if !valid_name(&host) {
            return false;
        }
        match self.0.strip_prefix("*.") {
            _ if self.0 == "*" => true,
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => host == self.0,
        }
    }
}

impl FromStr for DomainPattern {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<DomainPattern, DomainError> {
        let t = s.trim().to_ascii_lowercase();
        if t == "*" {
            return Ok(DomainPattern(t));
        }
        let t = t.strip_suffix('.').unwrap_or(&t);
        if valid_name(t.strip_prefix("*.").unwrap_or(t)) {
            Ok(DomainPattern(t.to_owned()))
        } else {
            Err(DomainError(s.to_owned()))
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DomainPattern, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whether `name` (lowercase, no trailing dot) is a DNS name: labels of 1
/// to 63 characters from `a-z0-9-_`, not starting or ending with `-`, 253
/// characters at most, not all digits and dots (an address is not a name).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// What the first bytes of a connection say about the name it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not enough bytes yet to tell.
    More,
    /// The name.
    Name(String),
    /// The connection names none (not HTTP or TLS, no `Host`, no SNI, or
    /// more than [`MAX_PEEK`] bytes before it).
    Nameless,
}

/// The `Host` of the HTTP/1 request that `buf` starts with (its port
/// removed).
pub fn http_host(buf: &[u8]) -> Peeked {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_PEEK => Peeked::More,
        Ok(httparse::Status::Complete(_)) => req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| strip_port(v.trim()))
            .filter(|h| !h.is_empty())
            .map_or(Peeked::Nameless, |h| Peeked::Name(h.to_owned())),
        _ => Peeked::Nameless,
    }
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets' content).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// The server name (SNI, RFC 6066) of the TLS ClientHello that `buf`
/// starts with: the first `host_name` of its `server_name` extension. A
/// ClientHello split across several TLS records is read across them.
pub fn tls_server_name(buf: &[u8]) -> Peeked {
    // The handshake messages carried by the leading handshake records.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return more_or_nameless(buf);
        }
        // ContentType handshake (22), version 3.x.
        if rest[0] != 22 || rest[1] != 3 {
            return Peeked::Nameless;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + len {
            return more_or_nameless(buf);
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            let body = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
            if handshake.len() >= 4 + body {
                break;
            }
        }
    }
    // HandshakeType client_hello (1).
    if handshake[0] != 1 {
        return Peeked::Nameless;
    }
    client_hello_name(&handshake[4..]).map_or(Peeked::Nameless, Peeked::Name)
}

fn more_or_nameless(buf: &[u8]) -> Peeked {
    if buf.len() < MAX_PEEK {
        Peeked::More
    } else {
        Peeked::Nameless
    }
}

/// The server name in a ClientHello's body.
fn client_hello_name(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.skip(2 + 32)?; // client_version, random
    let session = r.u8()?;
    r.skip(usize::from(session))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        // server_name: a list of (name_type, name).
        let mut names = Reader(data);
        let mut list = Reader(names.vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
        }
        return None;
    }
    None
}

/// Reads big-endian fields off a byte slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A field with a 16-bit length before it.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_parse_and_match_as_e2b_matches_them() {
        assert_eq!(p("API.Example.com.").to_string(), "api.example.com");
        assert!(p("api.example.com").matches("API.example.COM"));
        assert!(p("api.example.com").matches("api.example.com."));
        assert!(!p("api.example.com").matches("x.api.example.com"));
        assert!(p("*.example.com").matches("a.example.com"));
        assert!(p("*.example.com").matches("a.b.example.com"));
        assert!(
            !p("*.example.com").matches("example.com"),
            "not the name itself"
        );
        assert!(!p("*.example.com").matches("badexample.com"));
        assert!(p("*").matches("anything.test"));
        assert!(p("localhost").matches("localhost"));
        for bad in [
            "", "*.", "**.a.com", "a..com", "-a.com", "a.com/x", "1.2.3.4", "a b.com", "*a.com",
            "a.*.com",
        ] {
            assert!(bad.parse::<DomainPattern>().is_err(), "{bad:?}");
        }
        for not_a_name in ["", "1.2.3.4", "a..b", "-x.com"] {
            assert!(!p("*").matches(not_a_name), "{not_a_name:?}");
        }
    }

    #[test]
    fn the_host_of_an_http_request() {
        let req = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: Api.Example.com:8080\r\n\r\n";
        assert_eq!(http_host(req), Peeked::Name("Api.Example.com".into()));
        assert_eq!(http_host(&req[..20]), Peeked::More);
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Peeked::Nameless);
        assert_eq!(http_host(b"\x16\x03\x01garbage"), Peeked::Nameless);
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Peeked::Name("::1".into())
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_PEEK + 10, b'a');
        assert_eq!(http_host(&huge), Peeked::Nameless);
    }

    /// A ClientHello for `name` (TLS 1.2 layout, as every client sends it).
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        let n = name.as_bytes();
        sni.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(n.len() as u16).to_be_bytes());
        sni.extend_from_slice(n);
        let mut ext = Vec::new();
        // Another extension first (supported_groups), then server_name.
        ext.extend_from_slice(&[0, 10, 0, 4, 0, 2, 0, 29]);
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[32]);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0, 0, 0];
        hs[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    fn records(handshake: &[u8], split: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(split) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn the_server_name_of_a_client_hello() {
        let hello = records(&client_hello("api.example.com"), 10_000);
        assert_eq!(
            tls_server_name(&hello),
            Peeked::Name("api.example.com".into())
        );
        // Split across records, and arriving in pieces.
        let split = records(&client_hello("a.test"), 40);
        assert_eq!(tls_server_name(&split), Peeked::Name("a.test".into()));
        for cut in [0, 3, 5, 30, split.len() - 1] {
            assert_eq!(tls_server_name(&split[..cut]), Peeked::More, "{cut}");
        }
        assert_eq!(tls_server_name(b"GET / HTTP/1.1\r\n"), Peeked::Nameless);
        // Truncated inside: lengths that run past the message.
        let mut bad = client_hello("a.test");
        let len = bad.len();
        bad[len - 8] = 0xff;
        assert_eq!(tls_server_name(&records(&bad, 10_000)), Peeked::Nameless);
    }
}
