//! What a budget belongs to: the key a request is counted under, shared by the request and
//! token limits so both name a client the same way (address group, header value, API key name).

use std::hash::BuildHasher;
use std::net::IpAddr;

use http::{Extensions, HeaderMap};

use super::KeyType;
use super::client_ip::{self, ClientIp};
use super::redis;
use super::settings::RateKeyKind;
use crate::identity::ApiKeyName;

/// The local store's key: an address group, or a digest of a header value or key name (the
/// raw value is never kept, and a fixed-size key keeps memory per key fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum LocalKey {
    Ip(IpAddr),
    Header(u64),
    ApiKey(u64),
}

/// What a key is, in a form that is the same in every process (for the Redis key).
#[derive(Debug, Clone, Copy)]
pub(super) enum Stable<'a> {
    Ip(IpAddr),
    Header(&'a [u8]),
    ApiKey(&'a str),
}

/// Turns a request into its key.
#[derive(Debug)]
pub(super) struct Keyer {
    pub(super) kind: RateKeyKind,
    client_ip: ClientIp,
    /// Seeded per process: local digests of header values cannot be aimed at a collision.
    hasher: std::hash::RandomState,
}

impl Keyer {
    pub(super) fn new(kind: RateKeyKind, client_ip: ClientIp) -> Keyer {
        Keyer {
            kind,
            client_ip,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// What the key is made from: the header's value or the API key's name when the request
    /// has one, else the client's address (behind trusted proxies, IPv6 by /64).
    pub(super) fn stable_for<'a>(
        &self,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
        peer: IpAddr,
    ) -> Stable<'a> {
        match &self.kind {
            RateKeyKind::Header(name) => {
                if let Some(value) = headers.get(name).filter(|v| !v.is_empty()) {
                    return Stable::Header(value.as_bytes());
                }
            }
            RateKeyKind::ApiKey => {
                if let Some(name) = extensions.get::<ApiKeyName>() {
                    return Stable::ApiKey(name.as_str());
                }
            }
            RateKeyKind::Ip => {}
        }
        // The key is missing (or the key is the address): the client's address decides.
        Stable::Ip(client_ip::group(self.client_ip.resolve(peer, headers)))
    }

    /// The local key, its type, and what the Redis key is made from.
    pub(super) fn key_for<'a>(
        &self,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
        peer: IpAddr,
    ) -> (LocalKey, KeyType, Stable<'a>) {
        let stable = self.stable_for(headers, extensions, peer);
        let (local, key_type) = match stable {
            Stable::Header(bytes) => (
                LocalKey::Header(self.hasher.hash_one(bytes)),
                KeyType::Header,
            ),
            Stable::ApiKey(name) => (
                LocalKey::ApiKey(self.hasher.hash_one(name)),
                KeyType::ApiKey,
            ),
            Stable::Ip(ip) => (LocalKey::Ip(ip), KeyType::Ip),
        };
        (local, key_type, stable)
    }

    /// The Redis key under `prefix`: a digest of the key's kind and value, never the value.
    pub(super) fn redis_key(&self, prefix: &str, stable: &Stable<'_>) -> String {
        match (stable, &self.kind) {
            (Stable::Ip(ip), _) => redis::redis_key(prefix, &[b"ip|", ip.to_string().as_bytes()]),
            (Stable::Header(value), RateKeyKind::Header(name)) => {
                redis::redis_key(prefix, &[b"h|", name.as_str().as_bytes(), b"|", value])
            }
            (Stable::Header(value), _) => redis::redis_key(prefix, &[b"h||", value]),
            (Stable::ApiKey(name), _) => redis::redis_key(prefix, &[b"k|", name.as_bytes()]),
        }
    }
}
