//! An upstream on a Unix domain socket (`RAGSCOPE_UPSTREAM=unix:/path`, as uvicorn or gunicorn
//! bind one): a real hyper server on the socket, HTTP/1.1 and h2c to it, the Host it sees, the
//! upstream call's span (`server.address` = the path, `network.transport` = `unix`), a missing
//! socket, and readiness with and without active health checks.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::*;
use tokio::net::UnixListener;
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(15);

/// What the socket server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    version: http::Version,
    /// Host (HTTP/1.1) or the URI's authority (HTTP/2).
    authority: Option<String>,
    forwarded_host: Option<String>,
}

/// A hyper server (HTTP/1.1 and h2c) on a Unix socket in a temporary directory. `/health`
/// answers 200; every other path a JSON echo of the path. Dropping it stops the server and
/// removes the socket.
struct UnixServer {
    dir: tempfile::TempDir,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl UnixServer {
    async fn start() -> UnixServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = UnixListener::bind(dir.path().join("app.sock")).expect("bind the socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| header("host"));
                    let path = req.uri().path().to_owned();
                    log.lock().expect("log").push(Seen {
                        path: path.clone(),
                        version: req.version(),
                        authority,
                        forwarded_host: header("x-forwarded-host"),
                    });
                    let body = serde_json::json!({ "path": path }).to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    }
                });
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        UnixServer { dir, seen, task }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("app.sock")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_url(path: &Path) -> String {
    format!("unix:{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_unix_socket_over_http1_and_h2c() {
    let server = UnixServer::start().await;
    for (protocol, version) in [
        ("http1", http::Version::HTTP_11),
        ("h2c", http::Version::HTTP_2),
    ] {
        let otlp = OtlpReceiver::start().await;
        let proxy = Proxy::builder()
            .env("RAGSCOPE_UPSTREAM", unix_url(&server.path()))
            .env("RAGSCOPE_UPSTREAM_PROTOCOL", protocol)
            .otlp(&otlp)
            .run()
            .await;
        let path = format!("/v1/{protocol}");
        let reply = Client::http1().get(proxy.url(&path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{protocol}");
        assert_eq!(reply.json()["path"], path.as_str());
        let seen = server
            .seen()
            .into_iter()
            .find(|s| s.path == path)
            .expect("the socket server saw the request");
        assert_eq!(seen.version, version, "{protocol}");
        // The socket has no name: the upstream sees `localhost`, the client's Host travels
        // as X-Forwarded-Host.
        assert_eq!(seen.authority.as_deref(), Some("localhost"), "{protocol}");
        assert_eq!(
            seen.forwarded_host,
            Some(proxy.addr().to_string()),
            "{protocol}"
        );

        let client = otlp
            .wait_for_spans(|s| s.kind == SpanKind::Client, 1, WAIT)
            .await
            .remove(0);
        let socket = server.path().display().to_string();
        assert_eq!(client.str_attr("server.address"), Some(socket.as_str()));
        assert_eq!(client.str_attr("network.transport"), Some("unix"));
        assert!(!client.has_attr("server.port"), "a socket has no port");
        assert_eq!(
            client.str_attr("url.full"),
            Some(format!("http://localhost{path}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_socket_is_unreachable_and_not_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = Proxy::builder()
        .env(
            "RAGSCOPE_UPSTREAM",
            unix_url(&dir.path().join("absent.sock")),
        )
        .run()
        .await;
    let reply = Client::http1().get(proxy.url("/x")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_type(), "upstream_unreachable");
    // Readiness without active checks connects to the socket.
    let ready = Client::http1().get(proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "upstream_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_connects_through_the_socket() {
    let server = UnixServer::start().await;
    let proxy = Proxy::builder()
        .env("RAGSCOPE_UPSTREAM", unix_url(&server.path()))
        .run()
        .await;
    let ready = Client::http1().get(proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_go_through_the_socket() {
    for protocol in ["http1", "h2c"] {
        let server = UnixServer::start().await;
        let socket = server.path();
        let proxy = Proxy::builder()
            .env("RAGSCOPE_UPSTREAM", unix_url(&socket))
            .env("RAGSCOPE_UPSTREAM_PROTOCOL", protocol)
            .env("RAGSCOPE_HEALTH_PATH", "/health")
            .env("RAGSCOPE_HEALTH_INTERVAL", "200ms")
            .env("RAGSCOPE_HEALTH_TIMEOUT", "150ms")
            .run()
            .await;
        let status = |proxy: &Proxy| {
            let url = proxy.admin_url("/readyz");
            async move { Client::http1().get(url).await.status }
        };
        assert!(
            wait_until_async(WAIT, || async { status(&proxy).await == StatusCode::OK }).await,
            "{protocol}: never became ready"
        );
        let check = server
            .seen()
            .into_iter()
            .find(|s| s.path == "/health")
            .expect("the check reached the socket");
        assert_eq!(check.authority.as_deref(), Some("localhost"));
        // The server goes away (and its socket with it): down.
        drop(server);
        assert!(
            wait_until_async(WAIT, || async {
                status(&proxy).await == StatusCode::SERVICE_UNAVAILABLE
            })
            .await,
            "{protocol}: never reported down"
        );
    }
}
