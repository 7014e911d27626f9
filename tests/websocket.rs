//! WebSocket (and any `Upgrade`) passthrough, issue 12: the real `websockets` Python package
//! (pinned in tests/install-deps.sh) is both the client and the upstream server
//! (tests/websocket_peer.py). Echo of text and binary frames, both close directions, many
//! sessions at once, one SERVER span per session with its bytes and ending, the session metrics,
//! access control before the upgrade, the idle timeout, the drain, the TLS listener, and a
//! non-101 answer that stays an ordinary response.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const WAIT: Duration = Duration::from_secs(15);
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/websocket_peer.py");
const HINT: &str = "python3 with the websockets package (tests/install-deps.sh)";

/// The `websockets` server upstream; it stops when dropped.
struct WsServer {
    addr: SocketAddr,
    _child: Child,
    _stdin: ChildStdin,
}

impl WsServer {
    async fn start() -> WsServer {
        let mut child = Command::new("python3")
            .args([PEER, "server"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect(HINT);
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the server prints its port in time")
            .expect("reads")
            .unwrap_or_else(|| panic!("the websocket server did not start: {HINT}"));
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        WsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
            _stdin: stdin,
        }
    }
}

/// A `websockets` client running `scenario`; `lines` yields what it prints.
fn ws_client(url: &str, scenario: &str, args: &[&str], ca: Option<&str>) -> Child {
    let mut command = Command::new("python3");
    command
        .args([PEER, "client", url, scenario])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ca) = ca {
        command.env("WS_CA", ca);
    }
    command.spawn().expect(HINT)
}

/// Runs a client scenario to its end and returns the JSON it printed last.
async fn run_client(url: &str, scenario: &str, args: &[&str]) -> Json {
    run_client_with(url, scenario, args, None).await
}

async fn run_client_with(url: &str, scenario: &str, args: &[&str], ca: Option<&str>) -> Json {
    let child = ws_client(url, scenario, args, ca);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the client finishes in time")
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{scenario}: {stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"))
}

/// A `websockets` server, a collector, and ragscope (in process, with `extra` variables) in
/// front of the one, exporting to the other.
async fn setup(extra: &[(&str, &str)]) -> (WsServer, OtlpReceiver, Proxy) {
    let ws = WsServer::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = proxy(&ws, &otlp, extra).await;
    (ws, otlp, proxy)
}

/// ragscope (in process) in front of `ws`, exporting to `otlp`.
async fn proxy(ws: &WsServer, otlp: &OtlpReceiver, extra: &[(&str, &str)]) -> Proxy {
    let mut builder = Proxy::builder().upstream(&ws.addr).otlp(otlp);
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    builder.run().await
}

fn ws_url(proxy: &Proxy, path: &str) -> String {
    format!("ws://{}{path}", proxy.addr())
}

/// Echoes through `url` (with `args`, verified against `ca` for wss) and returns the session's
/// span.
async fn echo_session(
    otlp: &OtlpReceiver,
    url: &str,
    args: &[&str],
    ca: Option<&str>,
) -> CollectedSpan {
    let out = run_client_with(url, "echo", args, ca).await;
    assert_eq!(out["binary_ok"], true, "{out}");
    session_spans(otlp, "client_close", 1).await.remove(0)
}

/// The session spans that ended as `ending`.
async fn session_spans(otlp: &OtlpReceiver, ending: &str, n: usize) -> Vec<CollectedSpan> {
    otlp.wait_for_spans(
        |s| s.kind == SpanKind::Server && s.str_attr("ragscope.upgrade.ending") == Some(ending),
        n,
        WAIT,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn text_and_binary_frames_echo_through_and_the_session_is_one_span_with_its_bytes() {
    let (_ws, otlp, proxy) = setup(&[]).await;

    let out = run_client(&ws_url(&proxy, "/echo"), "echo", &[]).await;
    assert_eq!(out["text"], "hello", "{out}");
    assert_eq!(out["binary_ok"], true, "every byte value comes back: {out}");
    assert_eq!(
        out["code"], 1000,
        "the closing handshake went through: {out}"
    );

    // The client started the closing handshake (though the server closed TCP first).
    let span = session_spans(&otlp, "client_close", 1).await.remove(0);
    assert_eq!(span.name, "GET");
    assert_eq!(span.int_attr("http.response.status_code"), Some(101));
    assert_eq!(
        span.str_attr("ragscope.upgrade.protocol"),
        Some("websocket")
    );
    assert_eq!(span.str_attr("url.path"), Some("/echo"));
    assert_eq!(span.status_code, SpanStatusCode::Unset);
    let payload = 5 + 128 * 1024;
    // Frames carry headers (and the client's a mask): a little more than the payloads.
    for key in [
        "ragscope.upgrade.bytes.client_to_upstream",
        "ragscope.upgrade.bytes.upstream_to_client",
    ] {
        let bytes = span
            .int_attr(key)
            .unwrap_or_else(|| panic!("{key} on {span:?}"));
        assert!(bytes > payload && bytes < payload + 200, "{key}: {bytes}");
    }
    // The CLIENT span of the upgrade request is there too, under the session.
    otlp.wait_for_spans(
        |s| s.kind == SpanKind::Client && s.trace_id == span.trace_id,
        1,
        WAIT,
    )
    .await;

    // Metrics: the session counted with its ending; none open any more.
    let duration = otlp
        .wait_for_metric_where(
            "ragscope.upgrade.session.duration",
            |m| {
                m.histogram_points().iter().any(|p| {
                    p.count >= 1
                        && p.attr("ragscope.upgrade.ending").and_then(|v| v.as_str())
                            == Some("client_close")
                })
            },
            WAIT,
        )
        .await;
    let point = &duration.histogram_points()[0];
    assert_eq!(
        point
            .attr("ragscope.upgrade.protocol")
            .and_then(|v| v.as_str()),
        Some("websocket")
    );
    otlp.wait_for_metric_where(
        "ragscope.upgrade.sessions.active",
        |m| m.number_points().iter().all(|p| p.as_i64() == Some(0)),
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn either_side_can_end_the_session_and_the_span_says_which() {
    let (_ws, otlp, proxy) = setup(&[]).await;

    // The server closes (1000 "bye"): the client sees the close, the span says upstream.
    let out = run_client(&ws_url(&proxy, "/server-close"), "server-close", &[]).await;
    assert_eq!(out["first"], "x");
    assert_eq!(out["ended"], "closed", "{out}");
    assert_eq!(
        (out["code"].as_i64(), out["reason"].as_str()),
        (Some(1000), Some("bye"))
    );
    session_spans(&otlp, "upstream_close", 1).await;

    // The client's TCP connection goes away without a closing handshake.
    let out = run_client(&ws_url(&proxy, "/echo"), "client-abort", &[]).await;
    assert_eq!(out["first"], "x");
    session_spans(&otlp, "client_close", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn many_sessions_at_once_each_get_their_own_echo_and_span() {
    let (_ws, otlp, proxy) = setup(&[("RAGSCOPE_WORKERS", "2")]).await;

    let out = run_client(&ws_url(&proxy, "/echo"), "concurrent", &["64"]).await;
    assert_eq!(
        (out["ok"].as_i64(), out["n"].as_i64()),
        (Some(64), Some(64)),
        "{out}"
    );
    let spans = session_spans(&otlp, "client_close", 64).await;
    let mut traces: Vec<_> = spans.iter().map(|s| s.trace_id.clone()).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 64, "one trace per session");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_control_refuses_before_the_upgrade() {
    let ws = WsServer::start().await;
    let otlp = OtlpReceiver::start().await;
    let keys = tempfile::NamedTempFile::new().expect("key file");
    let digest = {
        use std::fmt::Write as _;
        let d = ring::digest::digest(&ring::digest::SHA256, b"rsk_ws_0123456789");
        d.as_ref().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    std::fs::write(keys.path(), format!("ui sha256:{digest}\n")).expect("write keys");
    let path = keys.path().display().to_string();
    let proxy = proxy(&ws, &otlp, &[("RAGSCOPE_API_KEYS_FILE", &path)]).await;

    let out = run_client(&ws_url(&proxy, "/echo"), "refused", &[]).await;
    assert_eq!(out["status"], 401, "{out}");
    let refused = otlp
        .wait_for_spans(
            |s| s.kind == SpanKind::Server && s.str_attr("error.type") == Some("missing_api_key"),
            1,
            WAIT,
        )
        .await;
    assert!(!refused[0].has_attr("ragscope.upgrade.ending"));

    let url = ws_url(&proxy, "/echo");
    let span = echo_session(&otlp, &url, &["X-Api-Key=rsk_ws_0123456789"], None).await;
    assert_eq!(span.str_attr("ragscope.api_key.name"), Some("ui"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_session_is_closed_at_the_idle_timeout() {
    let (_ws, otlp, proxy) = setup(&[("RAGSCOPE_IDLE_TIMEOUT", "1s")]).await;

    let out = run_client(&ws_url(&proxy, "/hold"), "hold", &[]).await;
    assert_eq!(out["ended"], "closed", "{out}");
    let seconds = out["seconds"].as_f64().expect("seconds");
    assert!((0.9..10.0).contains(&seconds), "{seconds}");
    let span = session_spans(&otlp, "idle_timeout", 1).await.remove(0);
    assert_eq!(
        span.status_code,
        SpanStatusCode::Unset,
        "a policy close, not an error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_lets_sessions_run_until_the_drain_timeout_then_closes_them() {
    let ws = WsServer::start().await;
    let otlp = OtlpReceiver::start().await;
    let mut ragscope = Proxy::builder()
        .upstream(&ws.addr)
        .otlp(&otlp)
        .env("RAGSCOPE_DRAIN_TIMEOUT", "2s")
        .spawn();
    let (addr, _) = ragscope.wait_serving().await;

    let mut client = ws_client(&format!("ws://{addr}/hold"), "hold", &[], None);
    let mut lines = BufReader::new(client.stdout.take().expect("stdout")).lines();
    let open = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("opens in time");
    assert_eq!(open.expect("reads").as_deref(), Some(r#"{"open": true}"#));

    let signalled = Instant::now();
    ragscope.signal("TERM");
    let last = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the session is closed in time")
        .expect("reads")
        .expect("a result line");
    let took = signalled.elapsed();
    let out: Json = serde_json::from_str(&last).expect("json");
    assert_eq!(out["ended"], "closed", "{out}");
    assert!(
        took >= Duration::from_millis(1900),
        "ran on until the drain timeout: {took:?}"
    );
    let status = ragscope.wait_exit(WAIT).await.expect("exits");
    assert!(status.success(), "{status}");
    let span = session_spans(&otlp, "drain", 1).await.remove(0);
    assert_eq!(span.status_code, SpanStatusCode::Unset);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_run_over_the_tls_listener_too() {
    let ws = WsServer::start().await;
    let otlp = OtlpReceiver::start().await;
    let ca = Ca::new("ragscope websocket CA");
    let files = CertFiles::new(&ca.server_cert(&["localhost"]));
    let ca_file = files.write("ca.pem", &ca.pem);
    let (cert, key) = (
        files.cert().display().to_string(),
        files.key().display().to_string(),
    );
    let proxy = proxy(
        &ws,
        &otlp,
        &[("RAGSCOPE_TLS_CERT", &cert), ("RAGSCOPE_TLS_KEY", &key)],
    )
    .await;

    let url = format!("wss://localhost:{}/echo", proxy.addr().port());
    let ca_path = ca_file.display().to_string();
    let span = echo_session(&otlp, &url, &[], Some(&ca_path)).await;
    assert_eq!(span.str_attr("url.scheme"), Some("https"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_answered_without_101_is_an_ordinary_response_with_the_headers_forwarded() {
    // A plain HTTP upstream that does not speak WebSocket answers 200.
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let request = "GET /json HTTP/1.1\r\nHost: rag.example\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // The connection stays an HTTP connection: a second request on it is answered too.
    let two =
        format!("{request}GET /json HTTP/1.1\r\nHost: rag.example\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(proxy.addr(), two.as_bytes(), WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.requests().remove(0);
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("connection"), Some("upgrade"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
}
