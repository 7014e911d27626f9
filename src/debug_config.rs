//! `/debug/config`: the effective configuration as JSON, after defaults and parsing, with
//! secrets masked: OTLP header values (collector API keys), key-like resource attributes, and
//! credentials in URLs. Listed field by field on purpose: a setting added later stays out of
//! this page until someone decides how it is shown, so nothing leaks by default.

use serde_json::{Value, json};

use crate::limit::{ForwardedHeader, RateKeyKind, RateMode};
use crate::settings::Config;
use crate::telemetry::{
    ExporterKind, LogFormat, OtlpProtocol, OtlpSignal, ParentRoot, SamplerConfig,
};

/// What a masked value is shown as.
pub const MASK: &str = "***";

/// The effective configuration, secrets masked.
pub fn render(config: &Config) -> Value {
    let mut all = core(config);
    for part in [guard(config), genai(config), canary(config)] {
        if let (Some(all), Value::Object(part)) = (all.as_object_mut(), part) {
            all.extend(part);
        }
    }
    all
}

/// Listener, proxy, operations and telemetry settings.
fn core(config: &Config) -> Value {
    let t = &config.telemetry;
    json!({
        "RAGSCOPE_LISTEN": config.listen.to_string(),
        "RAGSCOPE_UPSTREAM": config.upstream.display(),
        "RAGSCOPE_UPSTREAM_PROTOCOL": config.upstream_protocol.as_str(),
        "RAGSCOPE_ADMIN_LISTEN": config.admin_listen.map_or("off".to_owned(), |a| a.to_string()),
        // The token is a secret; only whether it is set is shown.
        "RAGSCOPE_ADMIN_TOKEN": config.admin.token.as_ref().map(|_| MASK),
        "RAGSCOPE_LOG": config.log,
        "RAGSCOPE_LOG_FORMAT": match config.log_format { LogFormat::Json => "json", LogFormat::Text => "text" },
        "RAGSCOPE_CONNECT_TIMEOUT": duration(config.connect_timeout),
        "RAGSCOPE_RESPONSE_TIMEOUT": duration(config.response_timeout),
        "RAGSCOPE_IDLE_TIMEOUT": duration(config.idle_timeout),
        "RAGSCOPE_REQUEST_BODY_TIMEOUT": duration(config.request_body_timeout),
        "RAGSCOPE_MAX_REQUEST_BODY": config.max_request_body,
        "RAGSCOPE_DRAIN_TIMEOUT": duration(config.drain_timeout),
        "RAGSCOPE_HEADER_READ_TIMEOUT": duration(config.header_read_timeout),
        "RAGSCOPE_MAX_CONNECTIONS": config.max_connections,
        "RAGSCOPE_WORKERS": config.workers,
        "RAGSCOPE_MAX_HEADER_BYTES": config.max_header_bytes,
        "RAGSCOPE_MAX_HEADERS": config.max_headers,
        "RAGSCOPE_H2_MAX_CONCURRENT_STREAMS": config.h2_max_concurrent_streams,
        "RAGSCOPE_RECENT_TRACES": config.ops.recent_traces,
        "RAGSCOPE_TAIL_SAMPLING": t.tail_sampling.as_ref().map_or("off".to_owned(), |r| r.to_string()),
        "RAGSCOPE_HEALTH_PATH": config.ops.health.as_ref().map_or("off".to_owned(), |h| h.path.to_string()),
        "RAGSCOPE_HEALTH_INTERVAL": config.ops.health.as_ref().map(|h| duration(h.interval)),
        "RAGSCOPE_HEALTH_TIMEOUT": config.ops.health.as_ref().map(|h| duration(h.timeout)),
        "RAGSCOPE_HEALTH_UNHEALTHY_THRESHOLD": config.ops.health.as_ref().map(|h| h.unhealthy_threshold),
        "RAGSCOPE_HEALTH_HEALTHY_THRESHOLD": config.ops.health.as_ref().map(|h| h.healthy_threshold),
        "OTEL_SDK_DISABLED": t.sdk_disabled,
        "OTEL_TRACES_EXPORTER": exporter(t.traces_exporter),
        "OTEL_METRICS_EXPORTER": exporter(t.metrics_exporter),
        "OTEL_LOGS_EXPORTER": exporter(t.logs_exporter),
        "traces": signal(&t.traces),
        "metrics": signal(&t.metrics),
        "logs": signal(&t.logs),
        "OTEL_SERVICE_NAME": t.service_name,
        "OTEL_RESOURCE_ATTRIBUTES": t.resource_attributes.iter()
            .map(|(k, v)| (k.clone(), Value::String(if key_like(k) { MASK.to_owned() } else { v.clone() })))
            .collect::<serde_json::Map<_, _>>(),
        "OTEL_TRACES_SAMPLER": sampler(&t.sampler),
        "OTEL_PROPAGATORS": {
            "tracecontext": t.propagators.trace_context,
            "baggage": t.propagators.baggage,
        },
        "OTEL_BSP_MAX_QUEUE_SIZE": t.bsp_max_queue_size,
        "OTEL_BSP_SCHEDULE_DELAY": duration(t.bsp_schedule_delay),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": t.bsp_max_export_batch_size,
        "OTEL_METRIC_EXPORT_INTERVAL": duration(t.metric_export_interval),
        "OTEL_METRIC_EXPORT_TIMEOUT": duration(t.metric_export_timeout),
        "warnings": config.warnings,
    })
}

/// TLS, access control and rate limiting.
fn guard(config: &Config) -> Value {
    let vars = json!({
        // Paths of key and certificate files are not secret; their contents are never shown.
        "RAGSCOPE_TLS_CERT": config.tls.files.as_ref().map(|f| f.cert.display().to_string()),
        "RAGSCOPE_TLS_KEY": config.tls.files.as_ref().map(|f| f.key.display().to_string()),
        "RAGSCOPE_TLS_CLIENT_CA": config.tls.client_ca.as_ref().map(|p| p.display().to_string()),
        "RAGSCOPE_TLS_HANDSHAKE_TIMEOUT": duration(config.tls.handshake_timeout),
        "RAGSCOPE_UPSTREAM_CA": config.upstream_ca.as_ref().map(|p| p.display().to_string()),
        "RAGSCOPE_API_KEYS_FILE": config.api_keys_file.as_ref().map(|p| p.display().to_string()),
        "RAGSCOPE_API_KEYS_FORWARD": config.api_keys_forward,
        "RAGSCOPE_RATE_LIMIT": config.rate_limit.limit.map_or("off".to_owned(), |l| {
            let unit = match l.period.as_secs() {
                1 => "s",
                60 => "m",
                _ => "h",
            };
            format!("{}/{unit}", l.count)
        }),
        "RAGSCOPE_RATE_BURST": config.rate_limit.burst,
        "RAGSCOPE_RATE_KEY": key_name(&config.rate_limit.key),
        "RAGSCOPE_TRUSTED_PROXIES": config.rate_limit.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "RAGSCOPE_FORWARDED_HEADER": match config.rate_limit.forwarded_header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        },
        "RAGSCOPE_RATE_MAX_KEYS": config.rate_limit.max_keys,
        "RAGSCOPE_RATE_MODE": match config.rate_limit.mode { RateMode::Enforce => "enforce", RateMode::Shadow => "shadow" },
        // A Redis URL may carry a password.
        "RAGSCOPE_RATE_LIMIT_REDIS": config.rate_limit.redis.as_deref().map(mask_userinfo),
        "RAGSCOPE_RATE_LIMIT_REDIS_TIMEOUT": duration(config.rate_limit.redis_timeout),
    });
    let tokens = &config.rate_limit.tokens;
    let token_vars = json!({
        "RAGSCOPE_TOKEN_LIMIT": tokens.limit.map_or("off".to_owned(), |l| {
            format!("{}/{}", l.tokens, period(l.period))
        }),
        "RAGSCOPE_TOKEN_KEY": key_name(&tokens.key),
        "RAGSCOPE_TOKEN_MODE": match tokens.mode { RateMode::Enforce => "enforce", RateMode::Shadow => "shadow" },
        "RAGSCOPE_TOKEN_DEFAULT_MAX_OUTPUT": tokens.default_max_output,
        "RAGSCOPE_TOKEN_RESERVATION_TTL": duration(tokens.reservation_ttl),
        "RAGSCOPE_COST_LIMIT": tokens.cost.map_or("off".to_owned(), |l| {
            format!("{}/{}", crate::limit::tokens::amount(l.micros), period(l.period))
        }),
        "RAGSCOPE_COST_MODE": match tokens.cost_mode { RateMode::Enforce => "enforce", RateMode::Shadow => "shadow" },
    });
    merge(vars, token_vars)
}

/// A budget's period as its value writes it.
fn period(d: std::time::Duration) -> &'static str {
    match d.as_secs() {
        60 => "m",
        3600 => "h",
        _ => "d",
    }
}

fn key_name(key: &RateKeyKind) -> String {
    match key {
        RateKeyKind::Ip => "ip".to_owned(),
        RateKeyKind::ApiKey => "api-key".to_owned(),
        RateKeyKind::Header(name) => format!("header:{name}"),
    }
}

/// `a`'s members with `b`'s added.
fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// GenAI and RAG observation.
fn genai(config: &Config) -> Value {
    json!({
        "RAGSCOPE_GENAI": config.genai.enabled,
        "RAGSCOPE_GENAI_PROVIDER": config.genai.provider.as_deref().unwrap_or("auto"),
        "RAGSCOPE_PARSE_MAX_BYTES": config.genai.parse_max_bytes,
        "RAGSCOPE_PARSE_BUDGET": config.genai.parse_budget,
        "RAGSCOPE_EXTRACT": config.genai.extract.iter().map(extract_rule).collect::<Vec<_>>(),
        "RAGSCOPE_VERSION_HEADER": config.genai.version_header.as_ref().map(|h| h.to_string()),
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": format!("{:?}", config.genai.capture),
        "RAGSCOPE_CAPTURE_MAX_BYTES": config.genai.capture_max_bytes,
        "RAGSCOPE_FEEDBACK_PATH": config.genai.feedback_path,
        "RAGSCOPE_CONVERSATION_HEADER": config.genai.conversation_header.as_ref().map(|h| h.to_string()),
        "RAGSCOPE_PRICES": config.genai.prices.as_ref().map(|p| p.path().display().to_string()),
        "RAGSCOPE_STREAM_USAGE": if config.genai.inject_stream_usage { "inject" } else { "off" },
    })
}

/// The canary rollout; only `RAGSCOPE_UPSTREAM_CANARY` (`off`) when there is none.
fn canary(config: &Config) -> Value {
    let Some(c) = &config.canary else {
        return json!({"RAGSCOPE_UPSTREAM_CANARY": "off"});
    };
    let r = &c.rules;
    json!({
        "RAGSCOPE_UPSTREAM_CANARY": format!("{}://{}", c.upstream.scheme, c.upstream.authority),
        "RAGSCOPE_CANARY_WEIGHT": crate::canary::settings::show_weight(c.weight),
        "RAGSCOPE_UPSTREAM_VERSION": c.stable_version,
        "RAGSCOPE_CANARY_VERSION": c.canary_version,
        "RAGSCOPE_CANARY_HEADER": c.header.as_ref().map_or("off".to_owned(), |h| h.to_string()),
        "RAGSCOPE_CANARY_AUTO_ROLLBACK": r.auto_rollback,
        "RAGSCOPE_CANARY_WINDOW": duration(r.window),
        "RAGSCOPE_CANARY_MIN_SAMPLES": r.min_samples,
        "RAGSCOPE_CANARY_MAX_ERROR_RATE_INCREASE": r.error_rate_increase,
        "RAGSCOPE_CANARY_MAX_LATENCY_RATIO": r.latency_ratio,
        "RAGSCOPE_CANARY_LATENCY_SLACK": duration(r.latency_slack),
        "RAGSCOPE_CANARY_MIN_FEEDBACK": r.min_feedback,
        "RAGSCOPE_CANARY_MAX_SCORE_DROP": r.score_drop,
        // The Redis URL in use (its own, or the rate limit's), password masked.
        "RAGSCOPE_SHARED_REDIS": c.redis.as_deref().map(mask_userinfo),
    })
}

/// One `RAGSCOPE_EXTRACT` rule as parsed: what it fills, from which body, where.
fn extract_rule(rule: &crate::genai::extract::Rule) -> Value {
    use crate::genai::extract::{Side, Target};
    let target = match &rule.target {
        Target::Attribute(name, _) => json!(name),
        Target::Documents { id, score } => json!({"documents": {"id": id, "score": score}}),
    };
    let side = match rule.side {
        Side::Request => "request",
        Side::Response => "response",
    };
    json!({"target": target, "side": side, "pointer": rule.pointer})
}

fn signal(s: &OtlpSignal) -> Value {
    json!({
        "protocol": match s.protocol { OtlpProtocol::Grpc => "grpc", OtlpProtocol::HttpProtobuf => "http/protobuf" },
        "endpoint": mask_userinfo(&s.endpoint),
        "timeout": duration(s.timeout),
        // Header names help debugging; their values are credentials.
        "headers": s.headers.iter()
            .map(|(k, _)| (k.clone(), Value::String(MASK.to_owned())))
            .collect::<serde_json::Map<_, _>>(),
        // Paths only (the variable that set each): never the files' contents.
        "tls": {
            "certificate": tls_file(&s.tls.certificate),
            "client_certificate": tls_file(&s.tls.client_certificate),
            "client_key": tls_file(&s.tls.client_key),
        },
    })
}

fn tls_file(file: &Option<(String, std::path::PathBuf)>) -> Value {
    match file {
        None => Value::Null,
        Some((var, path)) => json!({ "variable": var, "path": path.display().to_string() }),
    }
}

fn exporter(e: ExporterKind) -> &'static str {
    match e {
        ExporterKind::Otlp => "otlp",
        ExporterKind::Console => "console",
        ExporterKind::None => "none",
    }
}

fn sampler(s: &SamplerConfig) -> String {
    match s {
        SamplerConfig::AlwaysOn => "always_on".to_owned(),
        SamplerConfig::AlwaysOff => "always_off".to_owned(),
        SamplerConfig::TraceIdRatio(r) => format!("traceidratio {r}"),
        SamplerConfig::ParentBased(ParentRoot::AlwaysOn) => "parentbased_always_on".to_owned(),
        SamplerConfig::ParentBased(ParentRoot::AlwaysOff) => "parentbased_always_off".to_owned(),
        SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(r)) => {
            format!("parentbased_traceidratio {r}")
        }
    }
}

fn duration(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Names that usually hold a credential.
fn key_like(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "auth",
        "credential",
        "cookie",
        "session",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// `https://user:pass@host/x` → `https://***@host/x`.
fn mask_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{MASK}{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let config = Config::from_source(
            [
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-api-key=sk-123,x-tenant=acme",
                ),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://u:p@collector:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,vendor.api_token=tok",
                ),
            ]
            .as_slice(),
        )
        .expect("valid");
        let text = render(&config).to_string();
        for secret in ["sk-123", "acme", "u:p", "tok\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        let v = render(&config);
        assert_eq!(v["traces"]["headers"]["x-api-key"], MASK);
        assert_eq!(
            v["OTEL_RESOURCE_ATTRIBUTES"]["deployment.environment"],
            "prod"
        );
        assert_eq!(
            v["traces"]["endpoint"],
            "http://***@collector:4318/v1/traces"
        );
        assert_eq!(v["RAGSCOPE_RECENT_TRACES"], 1000);
    }

    #[test]
    fn guard_and_genai_settings_are_shown_with_the_redis_password_masked() {
        let config = Config::from_source(
            [
                ("RAGSCOPE_RATE_LIMIT", "50/s"),
                ("RAGSCOPE_RATE_KEY", "header:x-tenant"),
                ("RAGSCOPE_RATE_LIMIT_REDIS", "redis://:hunter2@redis:6379/0"),
                ("RAGSCOPE_API_KEYS_FORWARD", "true"),
            ]
            .as_slice(),
        )
        .expect("valid");
        let v = render(&config);
        assert!(!v.to_string().contains("hunter2"), "{v}");
        assert_eq!(v["RAGSCOPE_RATE_LIMIT_REDIS"], "redis://***@redis:6379/0");
        assert_eq!(v["RAGSCOPE_RATE_KEY"], "header:x-tenant");
        assert_eq!(v["RAGSCOPE_RATE_LIMIT"], "50/s");
        assert_eq!(v["RAGSCOPE_API_KEYS_FORWARD"], true);
        assert_eq!(v["RAGSCOPE_GENAI"], true);
        assert_eq!(v["RAGSCOPE_LISTEN"], "0.0.0.0:8080");
    }

    /// Records every variable the configuration asks for.
    struct Recording(std::cell::RefCell<std::collections::BTreeSet<String>>);

    impl crate::config::Source for Recording {
        fn get(&self, name: &str) -> Option<String> {
            self.0.borrow_mut().insert(name.to_owned());
            None
        }
    }

    #[test]
    fn every_name_shown_is_a_variable_the_configuration_reads() {
        let read = Recording(Default::default());
        let config = Config::from_source(&read).expect("defaults");
        let read = read.0.into_inner();
        let shown = render(&config);
        let shown = shown.as_object().expect("an object");
        // Grouping keys, not variables: the per-signal OTLP settings and the ignored values.
        let groups = ["traces", "metrics", "logs", "warnings"];
        for name in shown.keys().filter(|k| !groups.contains(&k.as_str())) {
            assert!(read.contains(name), "{name} is shown but never read");
        }
        // And every RAGSCOPE_* variable read is shown, except those left out on purpose.
        let hidden = ["RAGSCOPE_REDACT_PATTERNS"];
        for name in read.iter().filter(|n| n.starts_with("RAGSCOPE_")) {
            assert!(
                shown.contains_key(name) || hidden.contains(&name.as_str()),
                "{name} is read but not shown"
            );
        }
    }

    #[test]
    fn extract_rules_are_shown_under_their_variable() {
        let config = Config::from_source(
            [("RAGSCOPE_EXTRACT", "gen_ai.request.model=request:/model")].as_slice(),
        )
        .expect("valid");
        let v = render(&config);
        assert_eq!(v["RAGSCOPE_EXTRACT"][0]["target"], "gen_ai.request.model");
        assert_eq!(v["RAGSCOPE_EXTRACT"][0]["side"], "request");
        assert_eq!(v["RAGSCOPE_EXTRACT"][0]["pointer"], "/model");
        assert!(v.get("RAGSCOPE_EXTRACT_RULES").is_none());
    }

    #[test]
    fn userinfo() {
        assert_eq!(mask_userinfo("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(mask_userinfo("http://a@h"), "http://***@h");
        assert_eq!(mask_userinfo("nonsense"), "nonsense");
    }
}
