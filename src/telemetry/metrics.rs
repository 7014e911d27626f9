//! The metric instruments ragscope records, named and bucketed per the OpenTelemetry HTTP
//! semantic conventions, plus our own `ragscope.*` counters for what has no request span.

use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
use opentelemetry_semantic_conventions::metric as semconv;

/// Advised buckets for `http.*.request.duration`, seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
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
        }
    }
}
