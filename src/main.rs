//! The `ragscope` binary: parse the configuration, start, serve until SIGTERM/SIGINT, drain.
//! `ragscope hash-key NAME` prints the API-key file line for a key instead.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use ragscope::{Config, Env, Server};

/// A proxy allocates and frees small buffers on every request; mimalloc's thread-local free
/// lists do that markedly cheaper than glibc's malloc under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hash-key") {
        return ragscope::auth::hash_key_command(&args[1..]);
    }
    let config = match Config::from_source(&Env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ragscope: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = ragscope::telemetry::logging::init(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // Multi-thread on purpose: the OTLP exporters' flush deadlocks on a current-thread runtime.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ragscope: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("ragscope: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        server.shutdown();
        server.wait().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    });
    // Dropping the runtime would wait for every blocking task, including an exporter flush
    // still stuck on a dead collector that the bounded shutdown already gave up on.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can still be stopped by ctrl-c's default path.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
