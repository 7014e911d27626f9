//! Who the client is, by address: the socket peer, or — only when the peer is a trusted
//! proxy — the right-most `X-Forwarded-For` address that is not itself a trusted proxy.
//!
//! Walking from the right matters: each proxy appends the address it saw, so everything left
//! of the first untrusted hop was written by the client and can be forged.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client address of a request.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    /// With the peers whose `X-Forwarded-For` is believed.
    pub fn new(trusted: Vec<IpNet>) -> Self {
        ClientIp { trusted }
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
        // Several X-Forwarded-For lines form one list, in order (RFC 9110 5.3).
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
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
        ClientIp::new(nets.iter().map(|n| n.parse().expect("cidr")).collect())
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
