//! Who may read the admin pages that show request data (`RAGSCOPE_ADMIN_TOKEN`).
//!
//! `/healthz`, `/readyz` and `/metrics` are always open: probes and scrapers need them and they
//! hold no request data. Every other path (`/overview`, `/traces`, `/feedback`, `/debug/config`
//! and their JSON twins) is protected:
//! - with a token set, it needs `Authorization: Bearer <token>`, wherever the listener binds;
//! - without one, it is served on a loopback bind only. On any other bind (`0.0.0.0`, a pod
//!   IP) it answers 403 naming the variable, and start-up logs a warning: the shipped
//!   deployments bind the admin listener to `0.0.0.0` for probes and scrapes, so refusing to
//!   start would take those down for a page nobody asked to expose.
//!
//! The token is compared in constant time and never logged or shown.

use std::net::SocketAddr;

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::settings::AdminToken;

/// Paths that stay open whatever the bind and token.
pub fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Why a protected page was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Non-loopback bind and no token configured.
    #[error(
        "this admin listener is bound to {0}, which is not loopback: set RAGSCOPE_ADMIN_TOKEN to serve pages that show request data (/healthz, /readyz and /metrics stay open)"
    )]
    TokenUnset(SocketAddr),
    /// No `Authorization: Bearer` header.
    #[error("this page needs Authorization: Bearer <RAGSCOPE_ADMIN_TOKEN>")]
    Missing,
    /// A bearer token that is not the configured one.
    #[error("the bearer token is not RAGSCOPE_ADMIN_TOKEN")]
    Wrong,
}

impl Denied {
    /// The `error.type` of the JSON error.
    pub fn error_type(&self) -> &'static str {
        match self {
            Denied::TokenUnset(_) => "admin_token_unset",
            Denied::Missing => "admin_token_missing",
            Denied::Wrong => "admin_token_invalid",
        }
    }

    /// 403 when no token could ever pass, else 401 (send one).
    pub fn status(&self) -> http::StatusCode {
        match self {
            Denied::TokenUnset(_) => http::StatusCode::FORBIDDEN,
            Denied::Missing | Denied::Wrong => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// The admin listener's access rule, decided once from its bind address and the token.
#[derive(Debug, Clone)]
pub struct AdminGuard {
    token: Option<AdminToken>,
    bind: SocketAddr,
}

impl AdminGuard {
    /// The rule for a listener bound to `bind`.
    pub fn new(token: Option<AdminToken>, bind: SocketAddr) -> AdminGuard {
        AdminGuard { token, bind }
    }

    /// Whether the bind address is loopback (`127.0.0.0/8`, `::1`, or IPv4-mapped loopback).
    pub fn loopback(&self) -> bool {
        self.bind.ip().to_canonical().is_loopback()
    }

    /// A warning for the log when protected pages cannot be served at all.
    pub fn startup_warning(&self) -> Option<String> {
        (self.token.is_none() && !self.loopback())
            .then(|| Denied::TokenUnset(self.bind).to_string())
    }

    /// Whether a request for `path` with these headers may be served.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Denied> {
        if is_open(path) {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return if self.loopback() {
                Ok(())
            } else {
                Err(Denied::TokenUnset(self.bind))
            };
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or(Denied::Missing)?;
        // ct_eq is constant-time for equal lengths; a length mismatch fails at once, which only
        // tells an attacker the length.
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Config;

    fn token() -> AdminToken {
        let c = Config::from_source(&[("RAGSCOPE_ADMIN_TOKEN", "0123456789abcdef")][..])
            .expect("config");
        c.admin.token.expect("token")
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().expect("header"));
        }
        h
    }

    #[test]
    fn loopback_without_token_is_open() {
        for bind in ["127.0.0.1:9901", "[::1]:9901", "[::ffff:127.0.0.1]:9901"] {
            let g = AdminGuard::new(None, bind.parse().expect("addr"));
            assert!(g.loopback(), "{bind}");
            assert_eq!(g.check("/traces", &headers(None)), Ok(()));
            assert_eq!(g.startup_warning(), None);
        }
    }

    #[test]
    fn non_loopback_without_token_serves_only_the_open_endpoints() {
        let g = AdminGuard::new(None, "0.0.0.0:9901".parse().expect("addr"));
        for open in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(g.check(open, &headers(None)), Ok(()));
        }
        let denied = g.check("/debug/config", &headers(Some("Bearer x")));
        assert!(matches!(denied, Err(Denied::TokenUnset(_))));
        assert!(
            g.startup_warning()
                .is_some_and(|w| w.contains("RAGSCOPE_ADMIN_TOKEN"))
        );
    }

    #[test]
    fn a_token_is_required_when_set() {
        let g = AdminGuard::new(Some(token()), "127.0.0.1:9901".parse().expect("addr"));
        assert_eq!(g.check("/overview", &headers(None)), Err(Denied::Missing));
        assert_eq!(
            g.check("/overview", &headers(Some("Basic abc"))),
            Err(Denied::Missing)
        );
        assert_eq!(
            g.check("/overview", &headers(Some("Bearer 0123456789abcdeX"))),
            Err(Denied::Wrong)
        );
        assert_eq!(
            g.check("/overview", &headers(Some("Bearer 0123"))),
            Err(Denied::Wrong)
        );
        assert_eq!(
            g.check("/overview", &headers(Some("bearer  0123456789abcdef "))),
            Ok(())
        );
        assert_eq!(g.check("/metrics", &headers(None)), Ok(()));
    }
}
