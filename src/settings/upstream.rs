//! The upstream server (`RAGSCOPE_UPSTREAM`): an http or https origin without a path, or a Unix
//! domain socket (`unix:/path`); and the protocol spoken to it (`RAGSCOPE_UPSTREAM_PROTOCOL`).

use std::path::PathBuf;

use http::Uri;

use crate::config::{ConfigError, Reader};

/// The accepted form of `RAGSCOPE_UPSTREAM`.
pub const UPSTREAM_FORM: &str = "an http:// or https:// URL with a host and optional port and no path, like http://127.0.0.1:8000, or unix:/absolute/path/of/a/socket (also unix:///absolute/path)";

/// The Host (and HTTP/2 `:authority`) sent to an upstream on a Unix socket: it has no name of
/// its own, and `localhost` is what curl's `--unix-socket` and the servers that bind one expect.
const UNIX_AUTHORITY: &str = "localhost";

/// The upstream server, from `RAGSCOPE_UPSTREAM`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https` (`http` for a Unix socket).
    pub scheme: http::uri::Scheme,
    /// `host:port` as given (`localhost` for a Unix socket): the Host the upstream sees.
    pub authority: http::uri::Authority,
    /// The host name or address (`localhost` for a Unix socket).
    pub host: String,
    /// The port, defaulted from the scheme (unused for a Unix socket).
    pub port: u16,
    /// The Unix domain socket connections go to instead of `host:port`.
    pub socket: Option<PathBuf>,
}

impl Upstream {
    /// The upstream URL for a request's path and query.
    pub fn uri_for(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Ok(Uri::from_parts(parts)?)
    }

    /// The upstream as configured: `http://host:port` or `unix:/path`.
    pub fn display(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("{}://{}", self.scheme, self.authority),
        }
    }

    /// Whether connections are TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }
}

/// `http://host:port`, `https://host` (port from the scheme); no userinfo, no path. Or
/// `unix:/path`: an absolute path (a relative one would depend on the directory ragscope was
/// started in).
pub fn parse_upstream(v: &str) -> Option<Upstream> {
    if let Some(path) = v.strip_prefix("unix:") {
        // `unix:///run/app.sock` (the URL form Docker and others write) is the same socket;
        // `unix://name` would be a host, which a socket has not.
        let path = match path.strip_prefix("//") {
            Some(rest) if rest.starts_with('/') => rest,
            Some(_) => return None,
            None => path,
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() || path.file_name().is_none() {
            return None;
        }
        return Some(Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static(UNIX_AUTHORITY),
            host: UNIX_AUTHORITY.to_owned(),
            port: 80,
            socket: Some(path),
        });
    }
    let uri: Uri = v.parse().ok()?;
    let scheme = uri.scheme()?.clone();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        return None;
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return None;
    }
    Some(Upstream {
        port: authority.port_u16().unwrap_or(default_port),
        scheme,
        authority,
        host,
        socket: None,
    })
}

/// `RAGSCOPE_UPSTREAM_PROTOCOL`: what is spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 only (the default: what every server speaks).
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (gRPC servers without TLS).
    H2c,
    /// HTTP/2 over TLS, agreed by ALPN; an upstream that does not agree fails the call.
    H2,
    /// HTTP/2 or HTTP/1.1 as ALPN agrees for https; HTTP/1.1 for http and Unix sockets.
    Auto,
}

impl Protocol {
    /// The value as written in `RAGSCOPE_UPSTREAM_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
            Protocol::Auto => "auto",
        }
    }

    /// Reads `RAGSCOPE_UPSTREAM_PROTOCOL` and checks it fits `upstream`: `h2` needs TLS,
    /// `h2c` needs cleartext.
    pub fn from_reader(
        r: &Reader<'_, impl crate::config::Source + ?Sized>,
        upstream: &Upstream,
    ) -> Result<Protocol, ConfigError> {
        const VAR: &str = "RAGSCOPE_UPSTREAM_PROTOCOL";
        let protocol = r.one_of(
            VAR,
            "http1",
            &[
                ("http1", Protocol::Http1),
                ("h2c", Protocol::H2c),
                ("h2", Protocol::H2),
                ("auto", Protocol::Auto),
            ],
        )?;
        let refuse = |expected: String| Err(ConfigError::new(VAR, protocol.as_str(), expected));
        match protocol {
            Protocol::H2 if !upstream.is_https() => refuse(format!(
                "h2 runs over TLS and needs an https:// RAGSCOPE_UPSTREAM (it is {}); use h2c for HTTP/2 in cleartext",
                upstream.display()
            )),
            Protocol::H2c if upstream.is_https() => refuse(format!(
                "h2c is HTTP/2 in cleartext and needs an http:// or unix: RAGSCOPE_UPSTREAM (it is {}); use h2 or auto for HTTP/2 over TLS",
                upstream.display()
            )),
            protocol => Ok(protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Config;

    fn protocol(vars: &[(&str, &str)]) -> Result<Protocol, ConfigError> {
        Config::from_source(vars).map(|c| c.upstream_protocol)
    }

    #[test]
    fn protocols_and_the_upstreams_they_fit() {
        assert_eq!(protocol(&[]), Ok(Protocol::Http1));
        let https = ("RAGSCOPE_UPSTREAM", "https://rag.internal");
        let unix = ("RAGSCOPE_UPSTREAM", "unix:/run/app.sock");
        for (upstream, value, want) in [
            (None, "H2C", Protocol::H2c),
            (Some(unix), "h2c", Protocol::H2c),
            (Some(https), "h2", Protocol::H2),
            (Some(https), "auto", Protocol::Auto),
            (None, "auto", Protocol::Auto),
        ] {
            let mut vars = vec![("RAGSCOPE_UPSTREAM_PROTOCOL", value)];
            vars.extend(upstream);
            assert_eq!(protocol(&vars), Ok(want), "{value} {upstream:?}");
        }
        for (upstream, value, says) in [
            (None, "http2", "http1, h2c, h2 or auto"),
            (None, "h2", "needs an https://"),
            (Some(unix), "h2", "needs an https://"),
            (Some(https), "h2c", "needs an http:// or unix:"),
        ] {
            let mut vars = vec![("RAGSCOPE_UPSTREAM_PROTOCOL", value)];
            vars.extend(upstream);
            let e = protocol(&vars).expect_err(value);
            assert_eq!(e.var, "RAGSCOPE_UPSTREAM_PROTOCOL");
            assert!(e.expected.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn unix_sockets_need_an_absolute_path() {
        let u = parse_upstream("unix:/run/rag/app.sock").expect("parses");
        assert_eq!(
            u.socket.as_deref(),
            Some(std::path::Path::new("/run/rag/app.sock"))
        );
        assert_eq!(u.authority.as_str(), "localhost");
        assert_eq!(u.display(), "unix:/run/rag/app.sock");
        let u = parse_upstream("unix:///run/rag/app.sock").expect("the URL form");
        assert_eq!(u.display(), "unix:/run/rag/app.sock");
        for bad in ["unix:", "unix:relative.sock", "unix:/", "unix://x"] {
            assert!(parse_upstream(bad).is_none(), "{bad}");
        }
    }
}
