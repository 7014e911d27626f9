//! The metric instruments ragscope records, named and bucketed per the OpenTelemetry HTTP
//! semantic conventions, plus our own `ragscope.*` counters for what has no request span.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundHistogram, BoundUpDownCounter, Counter, Histogram, Meter, UpDownCounter,
};
use opentelemetry_semantic_conventions::attribute as semconv_attr;
use opentelemetry_semantic_conventions::metric as semconv;

/// Advised buckets for `http.*.request.duration`, seconds.
pub(super) const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Upgraded-session durations, seconds: from a probe that closes at once to a UI tab left
/// open for hours.
const SESSION_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// Body-size buckets, bytes: from a short JSON answer to a large document upload.
const SIZE_BUCKETS: [f64; 12] = [
    0.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
];

/// Every instrument, created once and shared by all requests.
#[derive(Debug, Clone)]
pub struct Instruments {
    /// `http.server.request.duration` (s).
    pub server_duration: Histogram<f64>,
    /// `http.server.active_requests` ({request}).
    pub server_active: UpDownCounter<i64>,
    /// `http.server.request.body.size` (By).
    pub server_request_size: Histogram<u64>,
    /// `http.server.response.body.size` (By).
    pub server_response_size: Histogram<u64>,
    /// `http.client.request.duration` (s): the upstream call.
    pub client_duration: Histogram<f64>,
    /// `ragscope.telemetry.spans.dropped` ({span}): by `reason` (`queue_full`, `export_failed`).
    pub spans_dropped: Counter<u64>,
    /// `ragscope.telemetry.records.dropped` ({record}): finished exchanges dropped because the
    /// queue to the telemetry thread was full (no span, log line or metric of theirs).
    pub records_dropped: Counter<u64>,
    /// `ragscope.connection.errors` ({error}): connection-level failures with no request span.
    pub connection_errors: Counter<u64>,
    /// `ragscope.connections.active` ({connection}): open client connections.
    pub connections_active: UpDownCounter<i64>,
    /// `ragscope.upgrade.sessions.active` ({session}): upgraded sessions (WebSocket) open.
    pub upgrade_sessions_active: UpDownCounter<i64>,
    /// `ragscope.upgrade.session.duration` (s): upgraded sessions from the request to the
    /// close, by protocol and how they ended; its count is the number of sessions.
    pub upgrade_session_duration: Histogram<f64>,
}

impl Instruments {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Instruments {
        Instruments {
            server_duration: meter
                .f64_histogram(semconv::HTTP_SERVER_REQUEST_DURATION)
                .with_unit("s")
                .with_description("Duration of HTTP server requests, until the last response byte.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            server_active: meter
                .i64_up_down_counter(semconv::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests.")
                .build(),
            server_request_size: meter
                .u64_histogram(semconv::HTTP_SERVER_REQUEST_BODY_SIZE)
                .with_unit("By")
                .with_description("Size of HTTP server request bodies.")
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build(),
            server_response_size: meter
                .u64_histogram(semconv::HTTP_SERVER_RESPONSE_BODY_SIZE)
                .with_unit("By")
                .with_description("Size of HTTP server response bodies.")
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build(),
            client_duration: meter
                .f64_histogram(semconv::HTTP_CLIENT_REQUEST_DURATION)
                .with_unit("s")
                .with_description(
                    "Duration of HTTP requests to the upstream, until the last response byte.",
                )
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            spans_dropped: meter
                .u64_counter("ragscope.telemetry.spans.dropped")
                .with_unit("{span}")
                .with_description(
                    "Spans not delivered to the collector: export queue full or export failed.",
                )
                .build(),
            records_dropped: meter
                .u64_counter("ragscope.telemetry.records.dropped")
                .with_unit("{record}")
                .with_description(
                    "Finished requests not recorded: the queue to the telemetry thread was full.",
                )
                .build(),
            connection_errors: meter
                .u64_counter("ragscope.connection.errors")
                .with_unit("{error}")
                .with_description(
                    "Client connections that ended in an error before or between requests.",
                )
                .build(),
            connections_active: meter
                .i64_up_down_counter("ragscope.connections.active")
                .with_unit("{connection}")
                .with_description("Open client connections.")
                .build(),
            upgrade_sessions_active: meter
                .i64_up_down_counter("ragscope.upgrade.sessions.active")
                .with_unit("{session}")
                .with_description("Open upgraded sessions (WebSocket and other Upgrade protocols).")
                .build(),
            upgrade_session_duration: meter
                .f64_histogram("ragscope.upgrade.session.duration")
                .with_unit("s")
                .with_description(
                    "Duration of upgraded sessions, from the upgrade request to the close.",
                )
                .with_boundaries(SESSION_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// The semconv request methods, in the order of [`Series`]'s active-request table; anything
/// else is `_OTHER`, the last entry.
pub(super) const METHODS: [&str; 11] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    "_OTHER",
];
const SCHEMES: [&str; 2] = ["http", "https"];

/// Distinct attribute sets bound per instrument group, at most; the SDK's own cardinality
/// limit is 2,000 per stream, so past this the series would overflow there anyway. Beyond it
/// measurements are recorded unbound (hashed per call), never lost.
const MAX_BOUND: usize = 2048;

/// Metric series bound once to their attribute set, so recording skips hashing and sorting
/// the attributes (the SDK's bound instruments). The sets are bounded by design: methods,
/// schemes, protocol versions, status codes, error types, upstreams.
#[derive(Debug)]
pub(super) struct Series {
    /// `http.server.active_requests` by method and scheme, bound at start: the data path adds
    /// to these without building an attribute set.
    active: Vec<BoundUpDownCounter<i64>>,
    pub(super) server: Bound<ServerKey, ServerSeries>,
    pub(super) client: Bound<ClientKey, BoundHistogram<f64>>,
}

impl Series {
    pub(super) fn new(i: &Instruments) -> Series {
        let active = METHODS
            .iter()
            .flat_map(|m| {
                SCHEMES.iter().map(|s| {
                    i.server_active.bind(&[
                        KeyValue::new(semconv_attr::HTTP_REQUEST_METHOD, *m),
                        KeyValue::new(semconv_attr::URL_SCHEME, *s),
                    ])
                })
            })
            .collect();
        Series {
            active,
            server: Bound::default(),
            client: Bound::default(),
        }
    }

    /// The active-requests counter of `method` (a semconv method) and `scheme`; `None` for a
    /// scheme other than http/https, which the caller records unbound.
    pub(super) fn active(&self, method: &str, scheme: &str) -> Option<&BoundUpDownCounter<i64>> {
        let m = METHODS.iter().position(|x| *x == method)?;
        let s = SCHEMES.iter().position(|x| *x == scheme)?;
        self.active.get(m * SCHEMES.len() + s)
    }
}

/// The attribute set of the HTTP server series, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ServerKey {
    pub(super) method: &'static str,
    pub(super) scheme: &'static str,
    pub(super) version: &'static str,
    pub(super) status: Option<u16>,
    pub(super) error: Option<Cow<'static, str>>,
    /// `ragscope.upstream.version`, with a canary rollout (two values).
    pub(super) upstream_version: Option<Arc<str>>,
}

/// The attribute set of `http.client.request.duration`, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    pub(super) method: &'static str,
    pub(super) status: Option<u16>,
    pub(super) error: Option<Cow<'static, str>>,
    pub(super) upstream: Option<(Arc<str>, Option<u16>)>,
    /// `ragscope.upstream.version`, with a canary rollout (two values).
    pub(super) upstream_version: Option<Arc<str>>,
}

/// The three server histograms of one attribute set.
#[derive(Debug, Clone)]
pub(super) struct ServerSeries {
    pub(super) duration: BoundHistogram<f64>,
    pub(super) request_size: BoundHistogram<u64>,
    pub(super) response_size: BoundHistogram<u64>,
}

impl ServerSeries {
    pub(super) fn bind(i: &Instruments, attributes: &[KeyValue]) -> ServerSeries {
        ServerSeries {
            duration: i.server_duration.bind(attributes),
            request_size: i.server_request_size.bind(attributes),
            response_size: i.server_response_size.bind(attributes),
        }
    }
}

/// Bound series by key, up to [`MAX_BOUND`]. Used by the telemetry thread only, so the lock is
/// never contended.
#[derive(Debug)]
pub(super) struct Bound<K, V> {
    map: Mutex<HashMap<K, V>>,
}

impl<K, V> Default for Bound<K, V> {
    fn default() -> Self {
        Bound {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, V: Clone> Bound<K, V> {
    /// The series of `key`, bound by `bind` the first time; `None` once [`MAX_BOUND`] sets are
    /// bound (the caller records unbound).
    pub(super) fn get(&self, key: K, bind: impl FnOnce() -> V) -> Option<V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = map.get(&key) {
            return Some(v.clone());
        }
        if map.len() >= MAX_BOUND {
            return None;
        }
        let v = bind();
        map.insert(key, v.clone());
        Some(v)
    }
}
