//! Process logging: `RAGSCOPE_LOG` filter, JSON or text lines on stdout through a non-blocking
//! writer, so a slow log consumer can never stall a request (lines are dropped instead).

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
    let registry = tracing_subscriber::registry().with(filter);
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
