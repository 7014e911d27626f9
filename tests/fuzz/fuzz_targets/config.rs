//! The `RAGSCOPE_*` and `OTEL_*` value parsers, through `Config::from_source` as start-up calls
//! them: any values give a configuration or one `ConfigError` naming a `RAGSCOPE_*` variable in
//! one line (what `ragscope` prints before exiting 2), never a panic. `OTEL_*` values are never
//! fatal (the OpenTelemetry rules: warn and ignore).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ragscope::Config;

/// Every variable `Config::from_source` reads.
const VARS: &[&str] = &[
    "RAGSCOPE_ADMIN_LISTEN",
    "RAGSCOPE_API_KEYS_FILE",
    "RAGSCOPE_API_KEYS_FORWARD",
    "RAGSCOPE_CAPTURE_MAX_BYTES",
    "RAGSCOPE_CONNECT_TIMEOUT",
    "RAGSCOPE_CONVERSATION_HEADER",
    "RAGSCOPE_DRAIN_TIMEOUT",
    "RAGSCOPE_EXTRACT",
    "RAGSCOPE_FEEDBACK_PATH",
    "RAGSCOPE_GENAI",
    "RAGSCOPE_GENAI_PROVIDER",
    "RAGSCOPE_H2_MAX_CONCURRENT_STREAMS",
    "RAGSCOPE_HEADER_READ_TIMEOUT",
    "RAGSCOPE_HEALTH_HEALTHY_THRESHOLD",
    "RAGSCOPE_HEALTH_INTERVAL",
    "RAGSCOPE_HEALTH_PATH",
    "RAGSCOPE_HEALTH_TIMEOUT",
    "RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD",
    "RAGSCOPE_IDLE_TIMEOUT",
    "RAGSCOPE_LISTEN",
    "RAGSCOPE_LOG",
    "RAGSCOPE_LOG_FORMAT",
    "RAGSCOPE_MAX_CONNECTIONS",
    "RAGSCOPE_WORKERS",
    "RAGSCOPE_MAX_HEADERS",
    "RAGSCOPE_MAX_HEADER_BYTES",
    "RAGSCOPE_MAX_REQUEST_BODY",
    "RAGSCOPE_PARSE_BUDGET",
    "RAGSCOPE_PARSE_MAX_BYTES",
    "RAGSCOPE_PRICES",
    "RAGSCOPE_RATE_BURST",
    "RAGSCOPE_RATE_KEY",
    "RAGSCOPE_RATE_LIMIT",
    "RAGSCOPE_RATE_LIMIT_REDIS",
    "RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT",
    "RAGSCOPE_RATE_MAX_KEYS",
    "RAGSCOPE_RATE_MODE",
    "RAGSCOPE_RECENT_TRACES",
    "RAGSCOPE_REDACT_PATTERNS",
    "RAGSCOPE_REQUEST_BODY_TIMEOUT",
    "RAGSCOPE_RESPONSE_TIMEOUT",
    "RAGSCOPE_TLS_CERT",
    "RAGSCOPE_TLS_CLIENT_CA",
    "RAGSCOPE_TLS_HANDSHAKE_TIMEOUT",
    "RAGSCOPE_TLS_KEY",
    "RAGSCOPE_TRUSTED_PROXIES",
    "RAGSCOPE_FORWARDED_HEADER",
    "RAGSCOPE_UPSTREAM",
    "RAGSCOPE_UPSTREAM_CA",
    "RAGSCOPE_VERSION_HEADER",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_PROPAGATORS",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The environment only holds text: ragscope reads a non-UTF-8 value as unset.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // A selector naming a variable sets that one alone (every parser is reached, not only the
    // first that fails); any other gives the lines of the input to every variable in turn.
    let source: Vec<(&str, &str)> = match VARS.get(usize::from(selector)) {
        Some(&var) => vec![(var, text)],
        None => VARS.iter().copied().zip(text.split('\n')).collect(),
    };
    let only_otel = source.iter().all(|(var, _)| var.starts_with("OTEL_"));
    match Config::from_source(source.as_slice()) {
        Ok(config) => {
            for w in &config.warnings {
                assert!(!w.contains('\n'), "a warning is one line: {w:?}");
            }
        }
        Err(e) => {
            assert!(!only_otel, "an OTEL_* value stopped start-up: {e}");
            assert!(e.var.starts_with("RAGSCOPE_"), "{e}");
            let line = e.to_string();
            assert!(
                !line.contains('\n'),
                "the start-up error is one line: {line:?}"
            );
            assert!(line.contains(e.var), "{line}");
        }
    }
});
