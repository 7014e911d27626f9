//! Who the client is, by address: the socket peer, or — only when the peer is a trusted
//! proxy — the right-most address of the forwarding chain (`X-Forwarded-For`, or `Forwarded`
//! per RFC 7239) that is not itself a trusted proxy.
//!
//! Walking from the right matters: each proxy appends the address it saw, so everything left
//! of the first untrusted hop was written by the client and can be forged. For the same reason
//! only ONE header is read, the one the operator's proxies write (`RAGSCOPE_FORWARDED_HEADER`):
//! a proxy that appends to `X-Forwarded-For` passes a client's own `Forwarded` line through
//! untouched, and reading that would believe the client.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;

/// Which header trusted proxies record the chain in (`RAGSCOPE_FORWARDED_HEADER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default; what most proxies write).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1;proto=https` (RFC 7239).
    Forwarded,
}

/// Resolves the client address of a request.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

impl ClientIp {
    /// With the peers whose forwarding header is believed, and which header that is.
    pub fn new(trusted: Vec<IpNet>, header: ForwardedHeader) -> Self {
        ClientIp { trusted, header }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            // Anyone else's X-Forwarded-For is ignored: it is whatever the client wrote.
            return peer;
        }
        let mut client = peer;
        // Several lines of either header form one list, in order (RFC 9110 5.3). `None` is a hop
        // that names no address we can use (garbage, `unknown`, an obfuscated identifier).
        let lines = headers
            .get_all(match self.header {
                ForwardedHeader::XForwardedFor => "x-forwarded-for",
                ForwardedHeader::Forwarded => "forwarded",
            })
            .iter()
            .filter_map(|v| v.to_str().ok());
        let hops: Vec<Option<IpAddr>> = match self.header {
            ForwardedHeader::XForwardedFor => {
                lines.flat_map(|v| v.split(',')).map(parse_hop).collect()
            }
            ForwardedHeader::Forwarded => lines
                .flat_map(forwarded_elements)
                .map(forwarded_for)
                .collect(),
        };
        for hop in hops.iter().rev() {
            let Some(ip) = *hop else {
                // Garbage in the chain: nothing left of it can be believed; the last good hop
                // (a trusted proxy) is the best we know.
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// `203.0.113.9`, `2001:db8::1`, `203.0.113.9:4711`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// The elements of one `Forwarded` line: split at commas outside quoted strings.
fn forwarded_elements(line: &str) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut escaped = false;
    line.split(move |c: char| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => return true,
            _ => {}
        }
        false
    })
}

/// The address in an element's `for=` parameter (RFC 7239 6: `192.0.2.43`, `192.0.2.43:47011`,
/// `"[2001:db8:cafe::17]"`, `"[2001:db8:cafe::17]:4711"`). `None` for `unknown`, obfuscated
/// identifiers (`_hidden`), a missing `for=` or anything unparsable: they end the walk.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    // A quoted string may carry backslash escapes; an address never needs one.
    let node = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    if node.contains('\\') {
        return None;
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, port) = rest.split_once(']')?;
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (host, port) = match node.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (node, None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// RFC 7239's node-port: a port number, or an obfuscated one (`_abc`) we accept and ignore.
fn valid_port(port: &str) -> bool {
    port.parse::<u16>().is_ok()
        || port.strip_prefix('_').is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        })
}

/// The address a budget belongs to: IPv4 as it is, IPv6 by its /64 (one subscriber's
/// allocation, which a client can otherwise rotate through freely).
pub fn group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn trusting(nets: &[&str]) -> ClientIp {
        ClientIp::new(
            nets.iter().map(|n| n.parse().expect("cidr")).collect(),
            ForwardedHeader::XForwardedFor,
        )
    }

    fn trusting_forwarded(nets: &[&str]) -> ClientIp {
        ClientIp::new(
            nets.iter().map(|n| n.parse().expect("cidr")).collect(),
            ForwardedHeader::Forwarded,
        )
    }

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in lines {
            h.append("forwarded", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn forwarded_is_walked_from_the_right_like_x_forwarded_for() {
        let c = trusting_forwarded(&["10.0.0.0/8"]);
        let h = forwarded(&[
            "for=6.6.6.6, for=203.0.113.9;proto=https;by=10.9.9.9",
            "For=\"10.1.1.1:8080\"",
        ]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let h = forwarded(&["for=\"[2001:db8:cafe::17]:4711\";proto=http, for=10.2.2.2"]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = forwarded(&["for=\"[2001:db8::1]\""]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("2001:db8::1"));
        // A quoted comma does not split an element.
        let h = forwarded(&["for=203.0.113.9;by=\"a,b\", for=10.3.3.3"]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_unknown_obfuscated_or_missing_for_ends_the_walk() {
        let c = trusting_forwarded(&["10.0.0.0/8"]);
        for line in [
            "for=203.0.113.9, for=unknown, for=10.4.4.4",
            "for=203.0.113.9, for=_hidden, for=10.4.4.4",
            "for=203.0.113.9, proto=https, for=10.4.4.4",
            "for=203.0.113.9, for=2001:db8::1, for=10.4.4.4",
            "for=203.0.113.9, for=\"10.0.0.\\9\", for=10.4.4.4",
        ] {
            assert_eq!(
                c.resolve(ip("10.0.0.1"), &forwarded(&[line])),
                ip("10.4.4.4"),
                "{line}"
            );
        }
        // Obfuscated ports are fine; the address still counts.
        let h = forwarded(&["for=\"203.0.113.9:_port\""]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        // Proxies that write X-Forwarded-For pass a client's own Forwarded line through: reading
        // it would believe the client.
        let mut h = headers(&["203.0.113.9"]);
        h.append("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        assert_eq!(
            trusting(&["10.0.0.0/8"]).resolve(ip("10.0.0.1"), &h),
            ip("203.0.113.9")
        );
        assert_eq!(
            trusting_forwarded(&["10.0.0.0/8"]).resolve(ip("10.0.0.1"), &h),
            ip("6.6.6.6")
        );
        // Untrusted peers are believed in neither.
        assert_eq!(
            trusting_forwarded(&["10.0.0.0/8"]).resolve(ip("198.51.100.1"), &h),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let c = trusting(&["10.0.0.0/8"]);
        assert_eq!(
            c.resolve(ip("198.51.100.1"), &headers(&["203.0.113.9"])),
            ip("198.51.100.1")
        );
        let none = ClientIp::default();
        assert_eq!(
            none.resolve(ip("127.0.0.1"), &headers(&["203.0.113.9"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn trusted_peer_yields_the_right_most_untrusted_hop() {
        let c = trusting(&["10.0.0.0/8", "192.0.2.7/32"]);
        let h = headers(&["6.6.6.6, 203.0.113.9, 10.1.1.1", "192.0.2.7"]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Ports and brackets are tolerated.
        let h = headers(&["[2001:db8::1]:4711, 10.2.2.2:80"]);
        assert_eq!(c.resolve(ip("10.0.0.1"), &h), ip("2001:db8::1"));
    }

    #[test]
    fn all_trusted_or_garbage_stops_at_the_last_good_hop() {
        let c = trusting(&["10.0.0.0/8"]);
        assert_eq!(
            c.resolve(ip("10.0.0.1"), &headers(&["10.3.3.3, 10.4.4.4"])),
            ip("10.3.3.3")
        );
        assert_eq!(
            c.resolve(
                ip("10.0.0.1"),
                &headers(&["203.0.113.9, nonsense, 10.4.4.4"])
            ),
            ip("10.4.4.4")
        );
        assert_eq!(c.resolve(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let c = trusting(&["10.0.0.0/8"]);
        assert_eq!(
            c.resolve(ip("::ffff:10.0.0.1"), &headers(&["::ffff:203.0.113.9"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            group(ip("2001:db8:1:2::9"))
        );
        assert_ne!(group(ip("2001:db8:1:3::1")), group(ip("2001:db8:1:2::1")));
        assert_eq!(group(ip("203.0.113.9")), ip("203.0.113.9"));
    }
}
