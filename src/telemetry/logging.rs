//! Process logging: `RAGSCOPE_LOG` filter, JSON or text lines on stdout through a non-blocking
//! writer, so a slow log consumer can never stall a request (lines are dropped instead).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use super::LogFormat;

/// Installs the global subscriber. Keep the guard alive until exit: it flushes buffered lines.
pub fn init(filter: &str, format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        // The writer thread drains every queued line into this buffer and flushes once the
        // queue is empty: one write(2) per burst, not one per access-log line.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    super::access_log::install(writer.clone(), format);
    // The filter was validated when the configuration was parsed.
    let filter = EnvFilter::builder().parse_lossy(filter);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(
            sdk_warnings_throttled,
        ))
        // ragscope's warnings as OTLP log records once the pipeline has started, when
        // OTEL_LOGS_EXPORTER asks for it (a no-op otherwise).
        .with(super::WarningsLayer);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // Colour only on a terminal: piped into journald, Docker or Kubernetes,
                    // escape codes would land verbatim in every log store.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                    .with_writer(writer),
            )
            .init(),
    }
    guard
}

/// How often one kind of OpenTelemetry SDK warning or error is logged.
const SDK_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The SDK logs every failed export, one line per batch every few seconds while a collector is
/// down or refuses our certificate. The first of each kind (the event's name, e.g.
/// `BatchSpanProcessor.ExportError`) is logged, then at most one per minute: every failure is
/// still counted in `ragscope.telemetry.spans.dropped`, and a log full of repeats hides the rest.
fn sdk_warnings_throttled(meta: &Metadata<'_>) -> bool {
    static THROTTLE: Mutex<Throttle> = Mutex::new(Throttle { seen: Vec::new() });
    if !meta.is_event()
        || !meta.target().starts_with("opentelemetry")
        || *meta.level() > Level::WARN
    {
        return true;
    }
    THROTTLE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allow(meta.name(), Instant::now())
}

/// When each kind was last let through. The SDK has a handful of event names, so a short list.
struct Throttle {
    seen: Vec<(&'static str, Instant)>,
}

impl Throttle {
    fn allow(&mut self, name: &'static str, now: Instant) -> bool {
        if let Some((_, last)) = self.seen.iter_mut().find(|(n, _)| *n == name) {
            if now.duration_since(*last) < SDK_WARNING_EVERY {
                return false;
            }
            *last = now;
            return true;
        }
        // Bounded anyway, should a future SDK name its events by something unbounded.
        if self.seen.len() >= 64 {
            return false;
        }
        self.seen.push((name, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_kind_then_one_a_minute() {
        let mut t = Throttle { seen: Vec::new() };
        let start = Instant::now();
        assert!(t.allow("BatchSpanProcessor.ExportError", start));
        assert!(t.allow("PeriodicReader.ExportError", start));
        for s in 1..60 {
            let later = start + Duration::from_secs(s);
            assert!(!t.allow("BatchSpanProcessor.ExportError", later));
        }
        assert!(t.allow("BatchSpanProcessor.ExportError", start + SDK_WARNING_EVERY));
        assert!(!t.allow(
            "PeriodicReader.ExportError",
            start + Duration::from_secs(59)
        ));
    }
}
