//! gRPC end to end: the real `grpcio` client and server (pinned in tests/install-deps.sh,
//! script in tests/python/grpc_echo.py) with ragscope between them. The client speaks h2c to
//! ragscope's plain listener; ragscope speaks h2c (prior knowledge) or h2 over TLS (ALPN) to
//! the server. Unary, server-streaming, client-streaming and bidi calls; statuses and trailing
//! metadata must arrive; spans (RPC conventions) and `rpc.server.call.duration` are checked at
//! the in-process OTLP receiver.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/grpc_echo.py");

/// The grpcio echo server, killed when dropped.
struct GrpcServer {
    port: u16,
    _child: tokio::process::Child,
}

impl GrpcServer {
    /// Starts it in cleartext, or with TLS from `tls` (certificate files for `localhost`).
    async fn start(tls: Option<&CertFiles>) -> GrpcServer {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(SCRIPT).arg("server");
        if let Some(files) = tls {
            cmd.arg("--tls").arg(files.cert()).arg(files.key());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (tests/install-deps.sh installs grpcio)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the gRPC server starts in time")
            .expect("reads its output")
            .expect("it prints its port (is grpcio installed? see tests/install-deps.sh)");
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        GrpcServer {
            port,
            _child: child,
        }
    }
}

/// Runs the grpcio client script (`mode`: `client` for every call, `unary` for one) against
/// ragscope and returns what it printed.
async fn grpc_client(mode: &str, proxy: &Proxy) -> Json {
    grpc_client_with(mode, proxy, &[]).await
}

/// [`grpc_client`] with more arguments for the script (`--tls CA NAME`).
async fn grpc_client_with(mode: &str, proxy: &Proxy, args: &[&str]) -> Json {
    let output = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .arg(mode)
        .arg(proxy.addr().to_string())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{mode}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("the script prints one JSON line")
}

/// What a client sees when the four calls went through intact: answers, statuses and
/// trailing metadata (including the request metadata the server saw).
fn assert_calls_intact(out: &Json) {
    for (call, trailer) in [
        ("unary", "Unary"),
        ("server_stream", "ServerStream"),
        ("client_stream", "ClientStream"),
        ("bidi", "Bidi"),
    ] {
        assert_eq!(out[call]["code"], "OK", "{call}: {out}");
        assert_eq!(out[call]["trailers"]["x-echo-trailer"], trailer, "{call}");
        assert_eq!(
            out[call]["trailers"]["x-echo-header-seen"], "hello",
            "{call}"
        );
    }
    assert_eq!(out["unary"]["answer"], "ping");
    assert_eq!(
        out["server_stream"]["answers"],
        serde_json::json!(["m0", "m1", "m2"])
    );
    assert_eq!(out["client_stream"]["answer"], "a+b+c");
    assert_eq!(
        out["bidi"]["answers"],
        serde_json::json!(["echo:x", "echo:y", "echo:z"])
    );
    assert_eq!(out["unary_error"]["code"], "NOT_FOUND");
    assert_eq!(out["unary_error"]["details"], "no such document");
    assert_eq!(out["unary_error"]["trailers"]["x-echo-trailer"], "failed");
    assert_eq!(out["unimplemented"]["code"], "UNIMPLEMENTED");
}

/// The SERVER span of the call to `method` that ended with status `code`.
async fn server_span(otlp: &OtlpReceiver, method: &str, code: i64) -> CollectedSpan {
    otlp.wait_for_spans(
        |s| {
            s.kind == SpanKind::Server
                && s.str_attr("rpc.method") == Some(method)
                && s.int_attr("rpc.grpc.status_code") == Some(code)
        },
        1,
        WAIT,
    )
    .await
    .remove(0)
}

/// The CLIENT span (the upstream call) under `server`.
async fn client_span(otlp: &OtlpReceiver, server: &CollectedSpan) -> CollectedSpan {
    otlp.wait_for_spans(
        |s| s.kind == SpanKind::Client && s.parent_span_id == server.span_id,
        1,
        WAIT,
    )
    .await
    .remove(0)
}

/// The proxy in front of the cleartext server at `port`.
fn to_port(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_an_h2c_upstream_with_rpc_spans_and_metrics() {
    let server = GrpcServer::start(None).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&to_port(server.port))
        .env("RAGSCOPE_UPSTREAM_PROTOCOL", "h2c")
        .otlp(&otlp)
        .run()
        .await;
    let out = grpc_client("client", &proxy).await;
    assert_calls_intact(&out);

    for method in ["Unary", "ServerStream", "ClientStream", "Bidi"] {
        let name = format!("ragscope.test.Echo/{method}");
        let span = server_span(&otlp, &name, 0).await;
        assert_eq!(span.name, name, "RPC spans are named after the method");
        assert_eq!(span.str_attr("rpc.system.name"), Some("grpc"));
        assert_eq!(span.str_attr("rpc.system"), Some("grpc"));
        assert_eq!(span.str_attr("rpc.service"), Some("ragscope.test.Echo"));
        assert_eq!(span.str_attr("rpc.response.status_code"), Some("OK"));
        assert_eq!(span.status_code, SpanStatusCode::Unset, "{method}");
        assert!(!span.has_attr("error.type"), "{method}");
        // The span ended at the trailers, not by the client going away.
        assert_eq!(span.bool_attr("ragscope.cancelled"), None, "{method}");
        assert_eq!(span.str_attr("network.protocol.version"), Some("2"));
        let client = client_span(&otlp, &span).await;
        assert_eq!(client.str_attr("network.protocol.version"), Some("2"));
        assert_eq!(client.str_attr("network.transport"), Some("tcp"));
        assert_eq!(client.str_attr("rpc.method"), Some(name.as_str()));
    }

    // NOT_FOUND is the client's problem: error.type on both spans, the CLIENT span failed,
    // the SERVER span not (per the gRPC conventions).
    let failed = server_span(&otlp, "ragscope.test.Echo/Unary", 5).await;
    assert_eq!(failed.str_attr("error.type"), Some("NOT_FOUND"));
    assert_eq!(
        failed.str_attr("rpc.response.status_code"),
        Some("NOT_FOUND")
    );
    assert_eq!(failed.status_code, SpanStatusCode::Unset);
    assert_eq!(failed.int_attr("http.response.status_code"), Some(200));
    let client = client_span(&otlp, &failed).await;
    assert_eq!(client.status_code, SpanStatusCode::Error);
    assert_eq!(client.str_attr("error.type"), Some("NOT_FOUND"));

    // UNIMPLEMENTED (a trailers-only answer) is the server's failure.
    let missing = server_span(&otlp, "ragscope.test.Missing/Nothing", 12).await;
    assert_eq!(missing.status_code, SpanStatusCode::Error);
    assert_eq!(missing.str_attr("error.type"), Some("UNIMPLEMENTED"));

    // The metric, by method and status; an unknown method never becomes a series of its own.
    let by = |method: &str, status: &str| {
        vec![
            ("rpc.system.name", Value::from("grpc")),
            ("rpc.method", Value::from(method)),
            ("rpc.response.status_code", Value::from(status)),
        ]
    };
    let metric = otlp
        .wait_for_metric_where(
            "rpc.server.call.duration",
            |m| {
                m.histogram_point_with(&by("ragscope.test.Echo/Unary", "NOT_FOUND"))
                    .is_some()
                    && m.histogram_point_with(&by("_OTHER", "UNIMPLEMENTED"))
                        .is_some()
                    && m.histogram_point_with(&by("ragscope.test.Echo/Bidi", "OK"))
                        .is_some()
            },
            WAIT,
        )
        .await;
    let ok = metric
        .histogram_point_with(&by("ragscope.test.Echo/Unary", "OK"))
        .expect("the OK unary series");
    assert_eq!(ok.count, 1);
    assert!(
        metric
            .histogram_points()
            .iter()
            .all(|p| p.attr("rpc.method").and_then(Value::as_str)
                != Some("ragscope.test.Missing/Nothing")),
        "unknown methods are _OTHER on metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_h2_over_tls_with_alpn() {
    let ca = Ca::new("grpc test CA");
    let files = CertFiles::new(&ca.server_cert(&["localhost"]));
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = GrpcServer::start(Some(&files)).await;
    for protocol in ["h2", "auto"] {
        let otlp = OtlpReceiver::start().await;
        let proxy = Proxy::builder()
            .env(
                "RAGSCOPE_UPSTREAM",
                format!("https://localhost:{}", server.port),
            )
            .env("RAGSCOPE_UPSTREAM_CA", ca_file.display().to_string())
            .env("RAGSCOPE_UPSTREAM_PROTOCOL", protocol)
            .otlp(&otlp)
            .run()
            .await;
        let out = grpc_client("client", &proxy).await;
        assert_calls_intact(&out);
        let span = server_span(&otlp, "ragscope.test.Echo/Bidi", 0).await;
        let client = client_span(&otlp, &span).await;
        assert_eq!(
            client.str_attr("network.protocol.version"),
            Some("2"),
            "{protocol}: ALPN agreed on h2"
        );
        assert_eq!(
            client
                .str_attr("url.full")
                .map(|u| u.starts_with("https://")),
            Some(true)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_to_an_http1_upstream_gets_a_clear_status() {
    let server = GrpcServer::start(None).await;
    let otlp = OtlpReceiver::start().await;
    // The default protocol is HTTP/1.1.
    let proxy = Proxy::builder()
        .upstream(&to_port(server.port))
        .otlp(&otlp)
        .run()
        .await;
    let out = grpc_client("unary", &proxy).await;
    assert_eq!(out["code"], "INTERNAL", "{out}");
    let details = out["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("RAGSCOPE_UPSTREAM_PROTOCOL=h2c"),
        "the fix is named: {details}"
    );
    let span = otlp
        .wait_for_spans(
            |s| s.kind == SpanKind::Server && s.str_attr("error.type") == Some("grpc_needs_http2"),
            1,
            WAIT,
        )
        .await
        .remove(0);
    assert_eq!(span.int_attr("rpc.grpc.status_code"), Some(13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_choosing_http1_for_a_grpc_call_gets_a_clear_status() {
    let ca = Ca::new("grpc test CA");
    let leaf = ca.server_cert(&["localhost"]);
    let files = CertFiles::new(&leaf);
    let ca_file = files.write("ca.pem", &ca.pem);
    // An https upstream that offers no h2 in ALPN.
    let up = TlsUpstream::start(&leaf).await;
    let proxy = Proxy::builder()
        .env(
            "RAGSCOPE_UPSTREAM",
            format!("https://localhost:{}", up.port()),
        )
        .env("RAGSCOPE_UPSTREAM_CA", ca_file.display().to_string())
        .env("RAGSCOPE_UPSTREAM_PROTOCOL", "auto")
        .run()
        .await;
    let out = grpc_client("unary", &proxy).await;
    assert_eq!(out["code"], "INTERNAL", "{out}");
    assert!(
        out["details"]
            .as_str()
            .is_some_and(|d| d.contains("gRPC needs HTTP/2")),
        "{out}"
    );
    assert_eq!(up.request_count(), 0, "nothing went out over HTTP/1.1");
    // Plain requests still go over the HTTP/1.1 connection ALPN chose.
    let reply = Client::http1().get(proxy.url("/plain")).await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_the_proxy_reach_grpc_clients_as_statuses() {
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&dead_addr())
        .env("RAGSCOPE_UPSTREAM_PROTOCOL", "h2c")
        .otlp(&otlp)
        .run()
        .await;
    let out = grpc_client("unary", &proxy).await;
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    assert_eq!(out["details"], "the upstream server could not be reached");
    let span = server_span(&otlp, "ragscope.test.Echo/Unary", 14).await;
    assert_eq!(span.str_attr("error.type"), Some("upstream_unreachable"));
    assert_eq!(span.status_code, SpanStatusCode::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_over_tls_reaches_an_h2c_upstream() {
    let ca = Ca::new("grpc listener CA");
    let files = CertFiles::new(&ca.server_cert(&["localhost"]));
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = GrpcServer::start(None).await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder()
        .upstream(&to_port(server.port))
        .env("RAGSCOPE_UPSTREAM_PROTOCOL", "h2c")
        .tls(&files)
        .otlp(&otlp)
        .run()
        .await;
    let ca_path = ca_file.display().to_string();
    let out = grpc_client_with("client", &proxy, &["--tls", &ca_path, "localhost"]).await;
    assert_calls_intact(&out);
    let span = server_span(&otlp, "ragscope.test.Echo/ServerStream", 0).await;
    assert_eq!(span.str_attr("url.scheme"), Some("https"));
    assert_eq!(span.str_attr("network.protocol.version"), Some("2"));
}
