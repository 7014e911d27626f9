//! The upstream server (`RAGSCOPE_UPSTREAM`): an http or https origin without a path.

use http::Uri;

/// The accepted form of `RAGSCOPE_UPSTREAM`.
pub const UPSTREAM_FORM: &str = "an http:// or https:// URL with a host and optional port and no path, like http://127.0.0.1:8000";

/// The upstream server, from `RAGSCOPE_UPSTREAM`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port` as given.
    pub authority: http::uri::Authority,
    /// The host name or address.
    pub host: String,
    /// The port, defaulted from the scheme.
    pub port: u16,
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
}

/// `http://host:port`, `https://host` (port from the scheme); no userinfo, no path.
pub fn parse_upstream(v: &str) -> Option<Upstream> {
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
    })
}
