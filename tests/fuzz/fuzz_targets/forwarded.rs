//! The client-address walk over `X-Forwarded-For` and `Forwarded` (RFC 7239) lines a client
//! controls: never a panic; a peer that is not trusted is the client whatever the lines say; a
//! trusted peer yields either itself or an address the lines actually spell out.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ragscope::limit::{ClientIp, ForwardedHeader};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in text.split('\n') {
        if let Ok(v) = HeaderValue::from_str(line) {
            headers.append("x-forwarded-for", v.clone());
            headers.append("forwarded", v);
        }
    }
    let trusted: IpAddr = "10.0.0.1".parse().expect("ip");
    let untrusted: IpAddr = "198.51.100.1".parse().expect("ip");
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let c = ClientIp::new(vec!["10.0.0.0/8".parse().expect("cidr")], header);
        assert_eq!(c.resolve(untrusted, &headers), untrusted);
        let client = c.resolve(trusted, &headers);
        // An IPv4 client is spelled out in the lines (IPv6 has many spellings, and an
        // IPv4-mapped IPv6 hop counts as IPv4, so those are not checked this way).
        if let IpAddr::V4(v4) = client
            && client != trusted
            && !text.to_ascii_lowercase().contains("ffff")
        {
            assert!(text.contains(&v4.to_string()), "{client} is not in {text:?}");
        }
    }
});
