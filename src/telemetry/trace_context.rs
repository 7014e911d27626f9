//! W3C Trace Context, strictly: only a well-formed `traceparent` from the caller is continued.
//!
//! The SDK's propagator is lenient (it accepts short or `+`-prefixed ids and one-digit versions),
//! so incoming headers are checked here first and an invalid one starts a new trace, as the W3C
//! rules say. `tracestate` is only read alongside a valid `traceparent` and only up to 32 members.

use http::HeaderMap;
use opentelemetry::propagation::Extractor;

/// Reads propagation headers from a request, hiding an invalid `traceparent`/`tracestate`.
pub struct StrictExtractor<'a> {
    headers: &'a HeaderMap,
    traceparent_ok: bool,
}

impl<'a> StrictExtractor<'a> {
    /// Wraps a request's headers.
    pub fn new(headers: &'a HeaderMap) -> Self {
        let mut values = headers.get_all("traceparent").iter();
        let traceparent_ok = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().is_ok_and(valid_traceparent),
            _ => false,
        };
        StrictExtractor {
            headers,
            traceparent_ok,
        }
    }
}

impl Extractor for StrictExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" if !self.traceparent_ok => None,
            "tracestate" if !self.traceparent_ok => None,
            "tracestate" => {
                let v = self.headers.get(key)?.to_str().ok()?;
                (v.split(',').filter(|m| !m.trim().is_empty()).count() <= 32).then_some(v)
            }
            _ => self.headers.get(key)?.to_str().ok(),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys().map(|k| k.as_str()).collect()
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `version-traceid-parentid-flags` per W3C Trace Context level 1, with future versions'
/// extra fields allowed after the fourth.
pub fn valid_traceparent(v: &str) -> bool {
    let v = v.trim_matches([' ', '\t']);
    let mut parts = v.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest_ok = match version {
        "00" => parts.next().is_none(),
        "ff" => false,
        _ => true,
    };
    rest_ok
        && lower_hex(version, 2)
        && lower_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && lower_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && lower_hex(flags, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_well_formed() {
        assert!(valid_traceparent(GOOD));
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
    }

    #[test]
    fn rejects_per_w3c_rules() {
        for bad in [
            "",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn tracestate_only_with_valid_parent_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "garbage".parse().expect("value"));
        h.insert("tracestate", "a=1".parse().expect("value"));
        let e = StrictExtractor::new(&h);
        assert_eq!(e.get("traceparent"), None);
        assert_eq!(e.get("tracestate"), None);

        h.insert("traceparent", GOOD.parse().expect("value"));
        let e = StrictExtractor::new(&h);
        assert_eq!(e.get("traceparent"), Some(GOOD));
        assert_eq!(e.get("tracestate"), Some("a=1"));

        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        h.insert("tracestate", many.join(",").parse().expect("value"));
        assert_eq!(StrictExtractor::new(&h).get("tracestate"), None);

        h.append("traceparent", GOOD.parse().expect("value"));
        assert_eq!(
            StrictExtractor::new(&h).get("traceparent"),
            None,
            "two traceparents are invalid"
        );
    }
}
