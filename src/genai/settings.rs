//! GenAI and RAG observation settings (`RAGSCOPE_GENAI*`, `RAGSCOPE_PARSE_MAX_BYTES`,
//! `RAGSCOPE_EXTRACT`, `RAGSCOPE_REDACT_PATTERNS`, content capture...), parsed and compiled once:
//! extraction rules and redaction patterns are checked here so a bad one stops start-up.

use std::sync::Arc;

use http::HeaderName;

use super::extract::{self, Rule};
use super::prices::Prices;
use super::redact::Redactor;
use crate::config::{ConfigError, Reader, Source};

/// The variable that switches content capture on, named by the OpenTelemetry GenAI conventions.
const CAPTURE_VAR: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// Content capture (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// `NO_CONTENT` or unset: no message content anywhere (the default).
    Off,
    /// `true` or `SPAN_ONLY`: content as span attributes.
    Span,
    /// `EVENT_ONLY`: content on a span event only.
    Event,
    /// `SPAN_AND_EVENT`: both.
    SpanAndEvent,
}

/// GenAI and RAG observation settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `RAGSCOPE_GENAI` (`on`/`off`): observe GenAI and RAG traffic at all.
    pub enabled: bool,
    /// `RAGSCOPE_GENAI_PROVIDER`: `gen_ai.provider.name` for every API; `None` (the default)
    /// names the provider of the API recognised.
    pub provider: Option<String>,
    /// `RAGSCOPE_PARSE_MAX_BYTES`: the bounded copy of one body (or one SSE event).
    pub parse_max_bytes: usize,
    /// `RAGSCOPE_PARSE_BUDGET`: bytes all body copies together may hold ([`super::budget`]).
    pub parse_budget: usize,
    /// `RAGSCOPE_EXTRACT`: JSON-pointer rules for other APIs.
    pub extract: Vec<Rule>,
    /// `RAGSCOPE_VERSION_HEADER`: response header carrying the model version; `None` when off.
    pub version_header: Option<HeaderName>,
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`.
    pub capture: CaptureMode,
    /// `RAGSCOPE_CAPTURE_MAX_BYTES`: captured content per attribute.
    pub capture_max_bytes: usize,
    /// The built-in redaction patterns plus `RAGSCOPE_REDACT_PATTERNS`, compiled.
    pub redactor: Redactor,
    /// `RAGSCOPE_FEEDBACK_PATH`: the feedback endpoint; `None` when off.
    pub feedback_path: Option<String>,
    /// `RAGSCOPE_CONVERSATION_HEADER`: request header whose value becomes
    /// `gen_ai.conversation.id`; `None` (the default) when off.
    pub conversation_header: Option<HeaderName>,
    /// `RAGSCOPE_PRICES`: the price file, read (and checked) here; `None` when unset.
    pub prices: Option<Arc<Prices>>,
    /// `RAGSCOPE_STREAM_USAGE=inject`: ask OpenAI streams for usage and take it out of the
    /// client's stream again (`off`, the default, changes no body).
    pub inject_stream_usage: bool,
}

impl Settings {
    /// Reads the GenAI settings. The capture switch is an `OTEL_*` variable, so a bad value
    /// there is a warning on `r`; a bad `RAGSCOPE_*` value is an error.
    pub fn from_reader<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<Settings, ConfigError> {
        let capture = match r.get(CAPTURE_VAR) {
            None => CaptureMode::Off,
            Some(v) => match v.to_ascii_uppercase().as_str() {
                "TRUE" | "SPAN_ONLY" => CaptureMode::Span,
                "EVENT_ONLY" => CaptureMode::Event,
                "SPAN_AND_EVENT" => CaptureMode::SpanAndEvent,
                "FALSE" | "NO_CONTENT" => CaptureMode::Off,
                _ => {
                    r.warn(
                        CAPTURE_VAR,
                        &v,
                        "true, NO_CONTENT, SPAN_ONLY, EVENT_ONLY or SPAN_AND_EVENT",
                    );
                    CaptureMode::Off
                }
            },
        };
        let patterns = r.get("RAGSCOPE_REDACT_PATTERNS").unwrap_or_default();
        let extra: Vec<String> = patterns
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let redactor = Redactor::new(&extra).map_err(|why| {
            ConfigError::new(
                "RAGSCOPE_REDACT_PATTERNS",
                patterns.as_str(),
                format!("regular expressions separated by ';' ({why})"),
            )
        })?;
        let extract_spec = r.get("RAGSCOPE_EXTRACT").unwrap_or_default();
        let extract = extract::parse_rules(&extract_spec).map_err(|why| {
            ConfigError::new(
                "RAGSCOPE_EXTRACT",
                extract_spec.as_str(),
                format!("{} ({why})", extract::FORM),
            )
        })?;
        let parse_max_bytes = r.size_in("RAGSCOPE_PARSE_MAX_BYTES", 1 << 20, 1024..=64 << 20)?;
        let prices = match r.path("RAGSCOPE_PRICES") {
            None => None,
            Some(path) => Some(Arc::new(Prices::load(&path).map_err(|why| {
                ConfigError::new(
                    "RAGSCOPE_PRICES",
                    path.display().to_string(),
                    format!("a price file of lines `MODEL INPUT OUTPUT CACHE_READ CACHE_WRITE CURRENCY` ({why})"),
                )
            })?)),
        };
        if let Some(prices) = &prices
            && r.get("RAGSCOPE_COST_LIMIT")
                .is_some_and(|v| !v.trim().eq_ignore_ascii_case("off"))
        {
            prices.hold_currency().map_err(|why| {
                ConfigError::new(
                    "RAGSCOPE_PRICES",
                    prices.path().display().to_string(),
                    format!("a price file in one currency under RAGSCOPE_COST_LIMIT ({why})"),
                )
            })?;
        }
        Ok(Settings {
            inject_stream_usage: r.one_of(
                "RAGSCOPE_STREAM_USAGE",
                "off",
                &[("off", false), ("inject", true)],
            )?,
            prices,
            conversation_header: r.optional(
                "RAGSCOPE_CONVERSATION_HEADER",
                "off",
                "a header name like x-conversation-id, or off",
                |v| HeaderName::from_bytes(v.as_bytes()).ok(),
            )?,
            enabled: r.on_off("RAGSCOPE_GENAI", true)?,
            provider: r.parse(
                "RAGSCOPE_GENAI_PROVIDER",
                "auto",
                "auto, or a provider name like openai, anthropic, gcp.gemini or vllm (at most 64 bytes)",
                |v| match v {
                    _ if v.eq_ignore_ascii_case("auto") => Some(None),
                    _ if v.len() <= 64 => Some(Some(v.to_owned())),
                    _ => None,
                },
            )?,
            parse_max_bytes,
            // Room for 32 exchanges copying both directions in full by default (real chat
            // bodies are kilobytes, so thousands of them); never less than one full copy.
            parse_budget: r.size_in(
                "RAGSCOPE_PARSE_BUDGET",
                64 * parse_max_bytes,
                parse_max_bytes..=1 << 40,
            )?,
            extract,
            version_header: r.optional(
                "RAGSCOPE_VERSION_HEADER",
                "x-model-version",
                "a header name like x-model-version, or off",
                |v| HeaderName::from_bytes(v.as_bytes()).ok(),
            )?,
            capture,
            capture_max_bytes: r.size_in("RAGSCOPE_CAPTURE_MAX_BYTES", 8 << 10, 16..=1 << 20)?,
            redactor,
            feedback_path: r.optional(
                "RAGSCOPE_FEEDBACK_PATH",
                "/ragscope/feedback",
                "a path starting with '/', like /ragscope/feedback, or off",
                |v| (v.starts_with('/') && !v.contains(['?', '#', ' '])).then(|| v.to_owned()),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> (Result<Settings, ConfigError>, Vec<String>) {
        let r = Reader::new(vars);
        let s = Settings::from_reader(&r);
        (s, r.into_warnings())
    }

    #[test]
    fn defaults_and_forms() {
        let (s, warnings) = parse(&[]);
        let s = s.expect("defaults");
        assert!(s.enabled && warnings.is_empty());
        assert_eq!((s.parse_max_bytes, s.capture_max_bytes), (1 << 20, 8 << 10));
        assert_eq!(s.capture, CaptureMode::Off);
        assert_eq!(s.feedback_path.as_deref(), Some("/ragscope/feedback"));
        let (s, _) = parse(&[
            ("RAGSCOPE_GENAI", "off"),
            ("RAGSCOPE_VERSION_HEADER", "off"),
            (CAPTURE_VAR, "span_and_event"),
            ("RAGSCOPE_FEEDBACK_PATH", "OFF"),
        ]);
        let s = s.expect("valid");
        assert!(!s.enabled && s.version_header.is_none() && s.feedback_path.is_none());
        assert_eq!(s.capture, CaptureMode::SpanAndEvent);
    }

    #[test]
    fn bad_values_stop_or_warn() {
        for (var, bad) in [
            ("RAGSCOPE_GENAI", "maybe"),
            ("RAGSCOPE_PARSE_MAX_BYTES", "100"),
            ("RAGSCOPE_CAPTURE_MAX_BYTES", "2MiB"),
            ("RAGSCOPE_FEEDBACK_PATH", "feedback"),
            ("RAGSCOPE_VERSION_HEADER", "bad header"),
            ("RAGSCOPE_CONVERSATION_HEADER", "bad header"),
            ("RAGSCOPE_PRICES", "/nonexistent/prices.txt"),
            ("RAGSCOPE_REDACT_PATTERNS", "(unclosed"),
        ] {
            let e = parse(&[(var, bad)]).0.expect_err(var);
            assert_eq!((e.var, e.value.as_str()), (var, bad));
        }
        let e = parse(&[("RAGSCOPE_PARSE_MAX_BYTES", "100")])
            .0
            .expect_err("small");
        assert_eq!(e.expected, "a size between 1KiB and 64MiB, like 1MiB");
        let (s, warnings) = parse(&[(CAPTURE_VAR, "everything")]);
        assert_eq!(s.expect("only a warning").capture, CaptureMode::Off);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
