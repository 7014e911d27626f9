//! Ragscope under test: in-process ([`Proxy`]) or as the real binary ([`Binary`]), plus the
//! HTTP clients tests talk to it with.
//!
//! ```ignore
//! let up = Upstream::start().await;
//! let otlp = OtlpReceiver::start().await;
//! let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
//! let res = Client::http1().get(proxy.url("/json")).await;
//! ```

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Anything with a base URL the proxy can be pointed at.
pub trait HasUrl {
    /// `http://127.0.0.1:PORT`.
    fn base_url(&self) -> String;
}

impl HasUrl for super::Upstream {
    fn base_url(&self) -> String {
        self.url()
    }
}

impl HasUrl for super::BlackHole {
    fn base_url(&self) -> String {
        self.url()
    }
}

impl HasUrl for SocketAddr {
    fn base_url(&self) -> String {
        format!("http://{self}")
    }
}

/// Environment for one ragscope, as `(name, value)` pairs.
#[derive(Debug, Clone, Default)]
pub struct ProxyBuilder {
    vars: Vec<(String, String)>,
}

impl ProxyBuilder {
    fn new() -> Self {
        ProxyBuilder::default()
            .env("RAGSCOPE_LISTEN", "127.0.0.1:0")
            .env("RAGSCOPE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RAGSCOPE_DRAIN_TIMEOUT", "5s")
            // No collector unless a test asks for one.
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_METRICS_EXPORTER", "none")
    }

    /// Sets a variable (later values win).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.push((name.to_owned(), value.into()));
        self
    }

    /// The upstream to forward to.
    pub fn upstream(self, up: &impl HasUrl) -> Self {
        self.env("RAGSCOPE_UPSTREAM", up.base_url())
    }

    /// Export traces and metrics to `otlp` over OTLP/HTTP, flushing quickly.
    pub fn otlp(self, otlp: &super::OtlpReceiver) -> Self {
        self.otlp_endpoint(&otlp.endpoint(), "http/protobuf")
    }

    /// Export traces and metrics to `otlp` over OTLP/gRPC, flushing quickly.
    pub fn otlp_grpc(self, otlp: &super::OtlpReceiver) -> Self {
        self.otlp_endpoint(&otlp.endpoint(), "grpc")
    }

    /// Export to any endpoint with the given protocol, flushing quickly.
    pub fn otlp_endpoint(self, endpoint: &str, protocol: &str) -> Self {
        self.env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_METRICS_EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
    }

    /// Starts ragscope in this process.
    pub async fn run(self) -> Proxy {
        let pairs: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let config =
            ragscope::Config::from_source(pairs.as_slice()).expect("test configuration parses");
        let server = ragscope::Server::start(config)
            .await
            .expect("ragscope starts");
        Proxy {
            addr: server.proxy_addr(),
            admin: server.admin_addr(),
            server: Some(server),
        }
    }

    /// Starts the real `ragscope` binary with exactly these variables.
    pub fn spawn(self) -> Binary {
        Binary::spawn(&self.vars)
    }
}

/// Ragscope running in the test process.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    server: Option<ragscope::Server>,
}

impl Proxy {
    /// Starts describing a ragscope.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::new()
    }

    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin listener's bound address (`0.0.0.0:PORT` when bound to every interface).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener is on"))
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        if let Some(s) = &self.server {
            s.shutdown();
        }
    }

    /// Shuts down gracefully and waits until it is done.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.wait().await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.shutdown();
        }
    }
}

/// The real `ragscope` binary, its stdout lines collected.
#[derive(Debug)]
pub struct Binary {
    child: Child,
    lines: Arc<Lines>,
    stderr: Arc<Lines>,
}

/// One output stream of the binary, line by line, and whether it has reached its end.
#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    closed: AtomicBool,
}

impl Lines {
    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Binary {
    fn spawn(vars: &[(String, String)]) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ragscope"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("ragscope binary starts");
        let lines = collect_lines(child.stdout.take().expect("stdout piped"));
        let stderr = collect_lines(child.stderr.take().expect("stderr piped"));
        Binary {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the "serving" line and returns the proxy's and admin's addresses.
    pub async fn wait_serving(&self) -> (SocketAddr, Option<SocketAddr>) {
        let timeout = Duration::from_secs(15);
        // Stop looking as soon as stdout ends: a process that exited will never serve.
        let line = super::wait_for(timeout, || {
            let line = self
                .lines()
                .into_iter()
                .find(|l| l.contains("ragscope is serving"));
            let gone = self.lines.closed();
            std::future::ready(line.map(Some).or(gone.then_some(None)))
        })
        .await
        .flatten()
        .unwrap_or_else(|| panic!("ragscope did not start; stderr: {:?}", self.stderr_lines()));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let listen = v["listen"]
            .as_str()
            .expect("listen field")
            .parse()
            .expect("address");
        let admin = v["admin"].as_str().and_then(|a| a.parse().ok());
        (listen, admin)
    }

    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.snapshot()
    }

    /// Waits until stdout and stderr are both read to their end, i.e. the process (and
    /// anything holding its pipes) is gone and every line it wrote is in [`Binary::lines`]
    /// and [`Binary::stderr_lines`].
    ///
    /// # Panics
    /// If the pipes are still open after `timeout`.
    pub async fn wait_output_closed(&self, timeout: Duration) {
        assert!(
            super::wait_until(timeout, || self.lines.closed() && self.stderr.closed()).await,
            "ragscope's output is still open after {timeout:?}; stdout: {:#?}",
            self.lines()
        );
    }

    /// Waits until an access-log record satisfies `pred` and returns it.
    ///
    /// # Panics
    /// If none does within `timeout`.
    pub async fn wait_access_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        super::wait_for(timeout, || {
            std::future::ready(self.access_log().into_iter().find(|l| pred(l)))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no matching access-log line within {timeout:?}; stdout: {:#?}",
                self.lines()
            )
        })
    }

    /// Waits until a stdout line contains `needle` and returns it.
    ///
    /// # Panics
    /// If none does within `timeout`.
    pub async fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        super::wait_for(timeout, || {
            std::future::ready(self.lines().into_iter().find(|l| l.contains(needle)))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no stdout line contains {needle:?} within {timeout:?}; stdout: {:#?}",
                self.lines()
            )
        })
    }

    /// Stdout lines that are access-log records, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "ragscope::access")
            .collect()
    }

    /// Stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`...) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for exit, up to `timeout`; `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = &mut self.child;
        super::wait_for(timeout, || {
            std::future::ready(child.try_wait().expect("try_wait"))
        })
        .await
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.child.id()).expect("VmRSS of a running ragscope")
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`), or `None`
/// when the process is gone or the line is missing.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stream: impl std::io::Read + Send + 'static) -> Arc<Lines> {
    let lines = Arc::new(Lines::default());
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lines.lock().expect("lines lock").push(line);
        }
        sink.closed.store(true, Ordering::SeqCst);
    });
    lines
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `{"error":{"type":..}}` type of a proxy error.
    pub fn error_type(&self) -> String {
        self.json()["error"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// A hyper client speaking HTTP/1.1 or HTTP/2 (prior knowledge).
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge.
    pub fn http2() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends `req` and returns the response head with its body still streaming.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> http::Response<hyper::body::Incoming> {
        self.inner
            .request(req)
            .await
            .expect("request reaches the proxy")
    }

    /// Sends `req` and reads the whole response.
    pub async fn request(&self, req: Request<Full<Bytes>>) -> Reply {
        let res = self.send(req).await;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body completes").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// GET `url`, or `None` when there is no complete answer (refused, reset): for polling
    /// a server that may not be up yet.
    pub async fn try_get(&self, url: impl AsRef<str>) -> Option<Reply> {
        let res = self.inner.request(get_with(url.as_ref(), &[])).await.ok()?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GET `url` and return the response head with its body still streaming.
    pub async fn get_streaming(
        &self,
        url: impl AsRef<str>,
    ) -> http::Response<hyper::body::Incoming> {
        self.send(get_with(url.as_ref(), &[])).await
    }

    /// GET `url`.
    pub async fn get(&self, url: impl AsRef<str>) -> Reply {
        self.get_with(url, &[]).await
    }

    /// GET `url` with extra request headers.
    pub async fn get_with(&self, url: impl AsRef<str>, headers: &[(&str, &str)]) -> Reply {
        self.request(get_with(url.as_ref(), headers)).await
    }

    /// `method` on `url` with `body` (no content type).
    pub async fn send_body(&self, method: Method, url: &str, body: impl Into<Bytes>) -> Reply {
        self.request(
            request(method, url)
                .body(Full::new(body.into()))
                .expect("request"),
        )
        .await
    }

    /// POST `body` as `application/json` to `url`.
    pub async fn post_json(&self, url: impl AsRef<str>, body: &serde_json::Value) -> Reply {
        self.request(
            request(Method::POST, url.as_ref())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request"),
        )
        .await
    }
}

/// A request builder for `url`.
pub fn request(method: Method, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

/// A body-less GET of `url` with extra request headers.
pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    headers
        .iter()
        .fold(request(Method::GET, url), |req, (name, value)| {
            req.header(*name, *value)
        })
        .body(Full::default())
        .expect("request")
}

/// Writes raw bytes to `addr` and reads the reply until the server closes or `timeout` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
