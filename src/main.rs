//! The `ragscope` binary: parse the configuration, start, serve until SIGTERM/SIGINT, drain.
//! `ragscope demo` and `ragscope demo-upstream` dispatch to [`ragscope::demo`];
//! `ragscope hash-key NAME` prints the API-key file line for a key.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use ragscope::{Config, Env, Server};

/// A proxy allocates and frees small buffers on every request; mimalloc's thread-local free
/// lists do that markedly cheaper than glibc's malloc under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keep_transparent_huge_pages_off();
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("demo") => return ragscope::demo::main(),
        Some("demo-upstream") => return ragscope::demo::upstream_main(),
        Some("hash-key") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            return ragscope::auth::hash_key_command(&args);
        }
        Some("--version" | "-V") => {
            println!("ragscope {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "ragscope: unknown argument {other:?}\n\
                 usage: ragscope               run the proxy (configured by RAGSCOPE_* and OTEL_* variables)\n\
                 \x20      ragscope demo          a demo RAG server with ragscope in front of it\n\
                 \x20      ragscope demo-upstream the demo RAG server alone\n\
                 \x20      ragscope hash-key NAME the API-key file line for a key read on stdin"
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_source(&Env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ragscope: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = ragscope::telemetry::logging::init(&config.log, config.log_format);
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

/// mimalloc asks the kernel for transparent huge pages on its arenas (`MADV_HUGEPAGE`), so the
/// resident set moves in 2 MiB steps as khugepaged collapses pages: with them, the same build
/// measured 15 to 56 KiB per idle keep-alive connection from run to run (benches/README.md). A
/// sidecar's heap is small and its memory should be predictable, so the process turns them off
/// first thing, before its arenas grow. An operator who sets `MIMALLOC_ALLOW_THP` (mimalloc's
/// own switch) decides instead: `1` keeps huge pages on. Best effort: a kernel without the
/// prctl only costs memory, not worth refusing to start for.
fn keep_transparent_huge_pages_off() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
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
