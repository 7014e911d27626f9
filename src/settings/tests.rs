//! The assembled configuration: defaults, every concern through one source, error lines.

use std::path::PathBuf;

use super::*;
use crate::telemetry::{ExporterKind, OtlpProtocol, ParentRoot, Propagators, SamplerConfig};

fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_source(vars)
}

#[test]
fn ops_defaults_and_forms() {
    let c = parse(&[]).expect("defaults");
    assert_eq!(c.ops.recent_traces, 1000);
    assert_eq!(c.ops.health, None);
    let c = parse(&[
        ("RAGSCOPE_HEALTH_PATH", "/health?deep=1"),
        ("RAGSCOPE_HEALTH_INTERVAL", "1s"),
        ("RAGSCOPE_HEALTH_TIMEOUT", "5s"),
        ("RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD", "3"),
        ("RAGSCOPE_RECENT_TRACES", "0"),
    ])
    .expect("valid");
    let h = c.ops.health.expect("health checks on");
    assert_eq!(h.path.as_str(), "/health?deep=1");
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_secs(1), "capped at the interval");
    assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
    assert_eq!(c.ops.recent_traces, 0);
    for (var, value) in [
        ("RAGSCOPE_HEALTH_PATH", "health"),
        ("RAGSCOPE_HEALTH_INTERVAL", "10ms"),
        ("RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD", "0"),
        ("RAGSCOPE_HEALTH_HEALTHY_THRESHOLD", "11"),
        ("RAGSCOPE_RECENT_TRACES", "lots"),
    ] {
        let e = parse(&[(var, value)]).expect_err(var);
        assert_eq!((e.var, e.value.as_str()), (var, value));
    }
}

#[test]
fn defaults() {
    let c = parse(&[]).expect("defaults parse");
    assert_eq!(c.listen, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:8000");
    assert_eq!(
        c.admin_listen,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.response_timeout, Duration::from_secs(60));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.max_request_body, 16 << 20);
    assert_eq!(c.log_format, LogFormat::Json);
    let t = &c.telemetry;
    assert!(!t.sdk_disabled);
    assert_eq!(t.traces.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(t.traces.endpoint, "http://localhost:4318/v1/traces");
    assert_eq!(t.metrics.endpoint, "http://localhost:4318/v1/metrics");
    assert_eq!(t.sampler, SamplerConfig::ParentBased(ParentRoot::AlwaysOn));
    assert_eq!(
        t.propagators,
        Propagators {
            trace_context: true,
            baggage: true
        }
    );
    assert!(c.warnings.is_empty());
}

#[test]
fn bad_value_names_variable_value_and_form() {
    let err = parse(&[("RAGSCOPE_CONNECT_TIMEOUT", "5x")]).expect_err("must fail");
    assert_eq!(err.var, "RAGSCOPE_CONNECT_TIMEOUT");
    let line = err.to_string();
    assert!(line.contains("RAGSCOPE_CONNECT_TIMEOUT"), "{line}");
    assert!(line.contains("\"5x\""), "{line}");
    assert!(line.contains("250ms"), "{line}");
    for (var, bad) in [
        ("RAGSCOPE_LISTEN", "8080"),
        ("RAGSCOPE_UPSTREAM", "ftp://x"),
        ("RAGSCOPE_UPSTREAM", "http://x/prefix"),
        ("RAGSCOPE_UPSTREAM", "127.0.0.1:8000"),
        ("RAGSCOPE_ADMIN_LISTEN", "nope"),
        ("RAGSCOPE_LOG_FORMAT", "xml"),
        ("RAGSCOPE_LOG", "=="),
        ("RAGSCOPE_MAX_REQUEST_BODY", "lots"),
        ("RAGSCOPE_RESPONSE_TIMEOUT", "soon"),
        ("RAGSCOPE_IDLE_TIMEOUT", "-1s"),
        ("RAGSCOPE_DRAIN_TIMEOUT", "30 s s"),
        ("RAGSCOPE_MAX_CONNECTIONS", "0"),
        ("RAGSCOPE_WORKERS", "0"),
        ("RAGSCOPE_WORKERS", "1025"),
        ("RAGSCOPE_WORKERS", "many"),
    ] {
        let err = parse(&[(var, bad)]).expect_err(var);
        assert_eq!(err.var, var);
        assert_eq!(err.value, bad);
    }
}

#[test]
fn tls_and_access_control() {
    let c = parse(&[]).expect("defaults");
    assert!(c.tls.files.is_none() && c.api_keys_file.is_none() && !c.api_keys_forward);
    assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
    let c = parse(&[
        ("RAGSCOPE_TLS_CERT", "/tls/tls.crt"),
        ("RAGSCOPE_TLS_KEY", "/tls/tls.key"),
        ("RAGSCOPE_TLS_CLIENT_CA", "/tls/ca.crt"),
        ("RAGSCOPE_API_KEYS_FILE", "/keys/keys.txt"),
        ("RAGSCOPE_API_KEYS_FORWARD", "TRUE"),
    ])
    .expect("parse");
    let tls = c.tls.files.expect("tls on");
    assert_eq!(tls.cert, PathBuf::from("/tls/tls.crt"));
    assert_eq!(tls.key, PathBuf::from("/tls/tls.key"));
    assert_eq!(c.tls.client_ca, Some(PathBuf::from("/tls/ca.crt")));
    assert!(c.api_keys_forward);

    let err = parse(&[("RAGSCOPE_TLS_CERT", "/tls/tls.crt")]).expect_err("key missing");
    assert_eq!(err.var, "RAGSCOPE_TLS_KEY");
    assert!(err.to_string().contains("RAGSCOPE_TLS_CERT"), "{err}");
    let err = parse(&[("RAGSCOPE_TLS_KEY", "/k")]).expect_err("cert missing");
    assert_eq!(err.var, "RAGSCOPE_TLS_CERT");
    let err = parse(&[("RAGSCOPE_TLS_CLIENT_CA", "/ca")]).expect_err("mTLS without TLS");
    assert_eq!(err.var, "RAGSCOPE_TLS_CLIENT_CA");
    for (var, bad) in [
        ("RAGSCOPE_API_KEYS_FORWARD", "yes"),
        ("RAGSCOPE_TLS_HANDSHAKE_TIMEOUT", "0s"),
    ] {
        assert_eq!(parse(&[(var, bad)]).expect_err(var).var, var);
    }
}

#[test]
fn empty_means_default() {
    let c = parse(&[("RAGSCOPE_LISTEN", ""), ("OTEL_SERVICE_NAME", "")]).expect("parse");
    assert_eq!(c.listen.port(), 8080);
    assert_eq!(c.telemetry.service_name, None);
}

#[test]
fn upstream_forms() {
    let c = parse(&[("RAGSCOPE_UPSTREAM", "https://rag.internal")]).expect("parse");
    assert_eq!(c.upstream.port, 443);
    assert_eq!(c.upstream.host, "rag.internal");
    let c = parse(&[("RAGSCOPE_UPSTREAM", "http://[::1]:9000/")]).expect("parse");
    assert_eq!(c.upstream.port, 9000);
    assert_eq!(c.upstream.host, "::1");
    let c = parse(&[("RAGSCOPE_ADMIN_LISTEN", "off")]).expect("parse");
    assert_eq!(c.admin_listen, None);
}

#[test]
fn otlp_endpoints_follow_the_spec() {
    let c = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://m:9999/custom",
        ),
    ])
    .expect("parse");
    assert_eq!(
        c.telemetry.traces.endpoint,
        "http://collector:4318/v1/traces"
    );
    assert_eq!(c.telemetry.metrics.endpoint, "http://m:9999/custom");

    let c = parse(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect("parse");
    assert_eq!(c.telemetry.traces.protocol, OtlpProtocol::Grpc);
    assert_eq!(c.telemetry.traces.endpoint, "http://localhost:4317");

    let c = parse(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc%3D,x=1"),
    ])
    .expect("parse");
    assert_eq!(c.telemetry.traces.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(c.telemetry.metrics.protocol, OtlpProtocol::Grpc);
    assert_eq!(c.telemetry.traces.timeout, Duration::from_millis(2500));
    assert_eq!(
        c.telemetry.traces.headers,
        vec![
            ("api-key".to_owned(), "abc=".to_owned()),
            ("x".to_owned(), "1".to_owned())
        ]
    );
}

#[test]
fn otlp_tls_files_are_read_per_signal_with_the_generic_ones_as_fallback() {
    let c = parse(&[
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/etc/otel/traces-ca.pem",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
            "/etc/otel/client.pem",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            "/etc/otel/client.key",
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", ""),
    ])
    .expect("parse");
    let file = |var: &str, path: &str| Some((var.to_owned(), std::path::PathBuf::from(path)));
    let (t, m) = (&c.telemetry.traces.tls, &c.telemetry.metrics.tls);
    assert_eq!(
        t.certificate,
        file(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/etc/otel/traces-ca.pem"
        )
    );
    assert_eq!(
        m.certificate,
        file("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem")
    );
    assert_eq!(t.client_certificate, None);
    assert_eq!(t.client_key, None, "an empty value is unset");
    assert_eq!(
        m.client_certificate,
        file(
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
            "/etc/otel/client.pem"
        )
    );
    assert_eq!(
        m.client_key,
        file(
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            "/etc/otel/client.key"
        )
    );
}

#[test]
fn the_logs_signal_is_off_unless_asked_for_and_follows_the_endpoint_rules() {
    let c = parse(&[]).expect("parse");
    assert_eq!(c.telemetry.logs_exporter, ExporterKind::None);
    assert_eq!(c.telemetry.logs.endpoint, "http://localhost:4318/v1/logs");
    let c = parse(&[
        ("OTEL_LOGS_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
    ])
    .expect("parse");
    assert_eq!(c.telemetry.logs_exporter, ExporterKind::Otlp);
    assert_eq!(c.telemetry.logs.protocol, OtlpProtocol::Grpc);
    assert_eq!(c.telemetry.logs.endpoint, "http://logs:4317");
    assert_eq!(
        c.telemetry.traces.endpoint,
        "http://collector:4318/v1/traces"
    );
    let c = parse(&[("OTEL_LOGS_EXPORTER", "syslog")]).expect("a warning, not an error");
    assert_eq!(c.telemetry.logs_exporter, ExporterKind::None);
}

#[test]
fn otel_switches_and_invalid_values_are_warned_and_ignored() {
    let c = parse(&[
        ("OTEL_SDK_DISABLED", "TRUE"),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_METRICS_EXPORTER", "console"),
        ("OTEL_PROPAGATORS", "tracecontext,b3"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "many"),
    ])
    .expect("OTEL_* problems never stop start-up");
    let t = &c.telemetry;
    assert!(t.sdk_disabled);
    assert_eq!(t.traces_exporter, ExporterKind::None);
    assert_eq!(t.metrics_exporter, ExporterKind::Console);
    assert_eq!(
        t.propagators,
        Propagators {
            trace_context: true,
            baggage: false
        }
    );
    assert_eq!(
        t.sampler,
        SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.25))
    );
    assert_eq!(t.traces.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        t.bsp_max_queue_size,
        crate::telemetry::DEFAULT_BSP_MAX_QUEUE_SIZE
    );
    // One each, though the generic protocol is read for every signal.
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings.iter().any(|w| w.contains("OTEL_PROPAGATORS")));

    let c = parse(&[("OTEL_SDK_DISABLED", "1")]).expect("parse");
    assert!(!c.telemetry.sdk_disabled, "only 'true' is true");
}

#[test]
fn resource_attributes() {
    let c = parse(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=prod,team=rag%20ops,bad",
    )])
    .expect("parse");
    assert_eq!(
        c.telemetry.resource_attributes,
        vec![
            ("deployment.environment".to_owned(), "prod".to_owned()),
            ("team".to_owned(), "rag ops".to_owned())
        ]
    );
}

#[test]
fn workers_default_to_the_cores_and_take_a_count() {
    assert!(parse_workers("auto").is_some_and(|n| n >= 1));
    assert_eq!(parse_workers("AUTO"), parse_workers("auto"));
    assert_eq!(parse_workers("3"), Some(3));
    assert_eq!(parse_workers("1024"), Some(1024));
    for bad in ["0", "1025", "-1", "two", "1.5"] {
        assert_eq!(parse_workers(bad), None, "{bad}");
    }
}
