//! ragscope against a real OpenTelemetry collector: rotel (PyPI `rotel==0.0.1a15`), a Rust
//! OTLP collector, receiving over OTLP/gRPC in one test and OTLP/HTTP protobuf in the other and
//! printing what it decoded with its debug exporter. What rotel prints is what a collector
//! understood of our spans, independent of our own test receiver's decoding.
//!
//! The `rotel-agent` binary ships inside the Python package; it is found with
//! `python3 -c "import rotel ..."`, or taken from `ROTEL_AGENT`. If it cannot be found the tests
//! fail and say how to install it: a silently skipped interoperability test proves nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;

const INSTALL_HINT: &str = "install the collector with: python3 -m pip install rotel==0.0.1a15 \
                            (or point ROTEL_AGENT at a rotel-agent binary)";

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_real_collector_over_otlp_grpc() {
    let rotel = Rotel::start().await;
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp_endpoint(&format!("http://{}", rotel.grpc), "grpc")
        .run()
        .await;
    request_and_find_the_span_in_rotel(&proxy, &rotel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_real_collector_over_otlp_http_protobuf() {
    let rotel = Rotel::start().await;
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .otlp_endpoint(&format!("http://{}", rotel.http), "http/protobuf")
        .run()
        .await;
    request_and_find_the_span_in_rotel(&proxy, &rotel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_collector_behind_tls_over_grpc_with_a_private_ca() {
    let rotel = Rotel::start().await;
    let ca = Ca::new("collector CA");
    let front = TlsFront::start(rotel.grpc, &ca.server_cert(&["localhost"]), None).await;
    let files = CertFiles::new(&ca.server_cert(&["localhost"]));
    let ca_file = files.write("collector-ca.pem", &ca.pem);
    let up = Upstream::start().await;
    let proxy = through_tls(&up, &front, "grpc", &ca_file).run().await;
    request_and_find_the_span_in_rotel(&proxy, &rotel).await;
    assert!(front.handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_collector_that_requires_a_client_certificate_over_http() {
    let rotel = Rotel::start().await;
    let ca = Ca::new("collector CA");
    let front = TlsFront::start(rotel.http, &ca.server_cert(&["localhost"]), Some(&ca)).await;
    let files = CertFiles::new(&ca.client_cert("ragscope", "platform"));
    let ca_file = files.write("collector-ca.pem", &ca.pem);
    let up = Upstream::start().await;
    let proxy = through_tls(&up, &front, "http/protobuf", &ca_file)
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            files.cert().display().to_string(),
        )
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            files.key().display().to_string(),
        )
        .run()
        .await;
    request_and_find_the_span_in_rotel(&proxy, &rotel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_certificate_from_the_wrong_ca_fails_closed_and_traffic_goes_on() {
    let rotel = Rotel::start().await;
    let ca = Ca::new("collector CA");
    let other = Ca::new("some other CA");
    let front = TlsFront::start(rotel.grpc, &ca.server_cert(&["localhost"]), None).await;
    let files = CertFiles::new(&other.server_cert(&["localhost"]));
    let wrong_ca = files.write("wrong-ca.pem", &other.pem);
    let up = Upstream::start().await;
    let proxy = through_tls(&up, &front, "grpc", &wrong_ca)
        .env("OTEL_METRICS_EXPORTER", "none")
        .run()
        .await;
    let client = Client::http1();
    for _ in 0..5 {
        assert_eq!(
            client.get(proxy.url("/json")).await.status,
            200,
            "traffic is unaffected"
        );
    }
    // The spans are counted as failed exports once the exporter has tried (and refused the
    // collector's certificate); nothing reaches the collector.
    let counted = wait_for(Duration::from_secs(15), || async {
        let metrics = client.get(proxy.admin_url("/metrics")).await;
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .any(|l| {
                l.starts_with("ragscope_telemetry_spans_dropped")
                    && l.contains("reason=\"export_failed\"")
            })
            .then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "the failed exports are counted on /metrics"
    );
    assert!(
        front.failed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the handshake was refused by us"
    );
    assert_eq!(
        front.handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(
        parse_spans(&rotel.output()).is_empty(),
        "nothing may reach the collector: {:#?}",
        rotel.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_records_and_warnings_reach_a_real_collector_as_logs_with_their_trace() {
    let rotel = Rotel::start().await;
    // Nothing listens there: the request fails with a warning, and both records must say
    // which trace they belong to.
    let nowhere = free_addr();
    let bin = Proxy::builder()
        .env("RAGSCOPE_UPSTREAM", format!("http://{nowhere}"))
        .otlp_endpoint(&format!("http://{}", rotel.http), "http/protobuf")
        .env("OTEL_LOGS_EXPORTER", "otlp")
        .spawn();
    let (addr, _) = bin.wait_serving().await;
    let marker = unique_marker();
    let reply = Client::http1()
        .get(format!("http://{addr}/logs/{marker}?token=secret"))
        .await;
    assert_eq!(reply.status, 502);
    let trace_id = reply
        .header("traceresponse")
        .and_then(|t| t.split('-').nth(1))
        .expect("traceresponse")
        .to_owned();
    let access_body = format!("Str(GET /logs/{marker} 502)");
    let logs = wait_for(Duration::from_secs(10), || {
        let logs = parse_logs(&rotel.output());
        let found = logs.iter().any(|l| l.body == access_body)
            && logs
                .iter()
                .any(|l| l.body == "Str(the upstream server could not be reached)");
        std::future::ready(found.then_some(logs))
    })
    .await
    .unwrap_or_else(|| panic!("rotel printed no such logs:\n{}", rotel.output().join("\n")));
    let access = logs.iter().find(|l| l.body == access_body).expect("access");
    assert_eq!(access.trace_id, trace_id);
    assert!(
        access
            .lines
            .iter()
            .any(|l| l.contains("EventName: ragscope.access"))
    );
    assert!(
        access
            .lines
            .iter()
            .any(|l| l.contains("error.type: Str(upstream_unreachable)"))
    );
    assert!(
        !access.lines.iter().any(|l| l.contains("secret")),
        "query values never reach telemetry"
    );
    let warning = logs
        .iter()
        .find(|l| l.body == "Str(the upstream server could not be reached)")
        .expect("warning");
    assert_eq!(warning.trace_id, trace_id, "the warning joins its trace");
    assert!(
        warning
            .lines
            .iter()
            .any(|l| l.contains("SeverityText: WARN"))
    );
}

/// One log record as rotel printed it.
struct PrintedLog {
    body: String,
    trace_id: String,
    lines: Vec<String>,
}

fn parse_logs(lines: &[String]) -> Vec<PrintedLog> {
    let mut logs: Vec<PrintedLog> = Vec::new();
    let mut current: Option<PrintedLog> = None;
    for line in lines {
        let t = line.trim();
        if t.starts_with("LogRecord #")
            || t.starts_with("ResourceLog")
            || t.starts_with("ResourceSpans")
        {
            logs.extend(current.take());
            if t.starts_with("LogRecord #") {
                current = Some(PrintedLog {
                    body: String::new(),
                    trace_id: String::new(),
                    lines: Vec::new(),
                });
            }
            continue;
        }
        let Some(log) = current.as_mut() else {
            continue;
        };
        if let Some(body) = t.strip_prefix("Body: ") {
            log.body = body.to_owned();
        } else if let Some(id) = t.strip_prefix("Trace ID") {
            log.trace_id = id.trim_start_matches([' ', ':']).trim().to_owned();
        }
        log.lines.push(t.to_owned());
    }
    logs.extend(current);
    logs
}

/// ragscope in front of `up`, exporting through the TLS `front` with `ca` as the collector's CA.
fn through_tls(
    up: &Upstream,
    front: &TlsFront,
    protocol: &str,
    ca: &std::path::Path,
) -> ProxyBuilder {
    Proxy::builder()
        .upstream(up)
        .otlp_endpoint(
            &format!("https://localhost:{}", front.addr.port()),
            protocol,
        )
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.display().to_string())
}

/// One request with a unique marker in its path; rotel must print its SERVER span with the HTTP
/// attributes and our resource, and the CLIENT child for the upstream call in the same trace.
async fn request_and_find_the_span_in_rotel(proxy: &Proxy, rotel: &Rotel) {
    let marker = unique_marker();
    let path = format!("/echo/{marker}");
    let reply = Client::http1().get(proxy.url(&format!("{path}?x=1"))).await;
    assert_eq!(
        reply.status, 404,
        "the test upstream does not know the route, which is fine"
    );
    let traceresponse = reply
        .header("traceresponse")
        .expect("traceresponse header")
        .to_owned();
    let trace_id = traceresponse
        .split('-')
        .nth(1)
        .expect("trace id in traceresponse")
        .to_owned();

    let server = rotel
        .wait_span(
            |s| s.kind == "SPAN_KIND_SERVER" && s.attr("url.path") == Some(&format!("Str({path})")),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        server.trace_id, trace_id,
        "the trace the client was told about"
    );
    assert_eq!(server.name, "GET");
    assert_eq!(server.attr("http.request.method"), Some("Str(GET)"));
    assert_eq!(server.attr("url.scheme"), Some("Str(http)"));
    assert_eq!(server.attr("url.query"), Some("Str(x=REDACTED)"));
    assert_eq!(server.attr("http.response.status_code"), Some("Int(404)"));
    assert_eq!(server.resource_attr("service.name"), Some("Str(ragscope)"));
    assert!(server.parent_id.is_empty(), "a new trace: {server:#?}");

    let client = rotel
        .wait_span(
            |s| s.kind == "SPAN_KIND_CLIENT" && s.trace_id == trace_id,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        client.parent_id, server.span_id,
        "the upstream call nests under the request"
    );
    assert!(
        client.attr("url.full").is_some_and(|u| u.contains(&marker)),
        "{client:#?}"
    );
    assert_eq!(client.attr("http.response.status_code"), Some("Int(404)"));

    // Metrics travel the same way.
    assert!(
        wait_until(Duration::from_secs(10), || rotel
            .output()
            .iter()
            .any(|l| l.trim() == "-> Name: http.server.request.duration"))
        .await,
        "rotel printed no http.server.request.duration metric"
    );
}

fn unique_marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("rotel-{}-{nanos:x}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// rotel
// ---------------------------------------------------------------------------------------------

/// A `rotel-agent` process with the blackhole exporter and the debug log on, its stdout
/// collected. Killed when dropped.
struct Rotel {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    grpc: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
}

impl Rotel {
    /// Starts rotel on two free loopback ports and waits until both listen.
    async fn start() -> Rotel {
        let agent = rotel_agent();
        let (grpc, http) = (free_addr(), free_addr());
        let dir = std::env::temp_dir().join(format!(
            "ragscope-rotel-{}-{}",
            std::process::id(),
            grpc.port()
        ));
        std::fs::create_dir_all(&dir).expect("rotel scratch directory");
        let mut child = Command::new(&agent)
            .arg("start")
            .args(["--exporter", "blackhole"])
            .args([
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log",
                "logs",
            ])
            .args(["--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &grpc.to_string()])
            .args(["--otlp-http-endpoint", &http.to_string()])
            // Not the shared /tmp defaults: tests run side by side.
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .args(["--batch-timeout", "50ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", agent.display()));
        let output = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("stdout piped"), &output);
        collect(child.stderr.take().expect("stderr piped"), &output);
        let mut rotel = Rotel {
            child,
            output,
            grpc,
            http,
            dir,
        };

        let listening = wait_until_async(Duration::from_secs(10), || {
            if let Ok(Some(status)) = rotel.child.try_wait() {
                panic!(
                    "rotel exited ({status}) before listening: {:#?}",
                    rotel.output()
                );
            }
            async move {
                tokio::net::TcpStream::connect(grpc).await.is_ok()
                    && tokio::net::TcpStream::connect(http).await.is_ok()
            }
        })
        .await;
        assert!(
            listening,
            "rotel did not listen on {grpc} and {http}: {:#?}",
            rotel.output()
        );
        rotel
    }

    /// Everything rotel printed so far (stdout and stderr), line by line.
    fn output(&self) -> Vec<String> {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits until rotel has printed a span matching `pred` and returns it.
    async fn wait_span(
        &self,
        pred: impl Fn(&PrintedSpan) -> bool,
        timeout: Duration,
    ) -> PrintedSpan {
        wait_for(timeout, || {
            std::future::ready(parse_spans(&self.output()).into_iter().find(|s| pred(s)))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "rotel did not print the span within {timeout:?}; it printed:\n{}",
                self.output().join("\n")
            )
        })
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `rotel-agent` binary: `ROTEL_AGENT`, else the one inside the installed Python package.
fn rotel_agent() -> PathBuf {
    if let Some(path) = std::env::var_os("ROTEL_AGENT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ROTEL_AGENT={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let located = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .stderr(Stdio::null())
        .output();
    let path = match located {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        Ok(_) => panic!("the rotel Python package is not installed; {INSTALL_HINT}"),
        Err(e) => panic!("cannot run python3 to locate rotel ({e}); {INSTALL_HINT}"),
    };
    assert!(
        path.is_file(),
        "rotel-agent is not at {}; {INSTALL_HINT}",
        path.display()
    );
    path
}

/// A loopback address that was free a moment ago.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

fn collect(stream: impl std::io::Read + Send + 'static, sink: &Arc<Mutex<Vec<String>>>) {
    let sink = sink.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("output lock").push(line);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// rotel's debug output
// ---------------------------------------------------------------------------------------------

/// A span as rotel's detailed debug log prints it:
///
/// ```text
/// ResourceSpans #0
/// Resource attributes:
///      -> service.name: Str(ragscope)
/// ScopeSpans #0
/// Span #1
///     Trace ID       : eecd51dc51af6c00e3378fc18ce53e02
///     Parent ID      :
///     ID             : 7d8c826633df1708
///     Name           : GET
///     Kind           : SPAN_KIND_SERVER
/// Attributes:
///      -> url.path: Str(/echo/marker)
///      -> http.response.status_code: Int(404)
/// ```
///
/// Values are kept as printed (`Str(..)`, `Int(..)`).
#[derive(Debug, Clone, Default)]
struct PrintedSpan {
    trace_id: String,
    parent_id: String,
    span_id: String,
    name: String,
    kind: String,
    attributes: Vec<(String, String)>,
    resource: Vec<(String, String)>,
}

impl PrintedSpan {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn resource_attr(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_spans(lines: &[String]) -> Vec<PrintedSpan> {
    #[derive(PartialEq)]
    enum Section {
        Resource,
        Span,
        Other,
    }
    let mut spans: Vec<PrintedSpan> = Vec::new();
    let mut resource: Vec<(String, String)> = Vec::new();
    let mut in_span = false;
    let mut section = Section::Other;
    for line in lines {
        let trimmed = line.trim();
        if let Some(attr) = trimmed.strip_prefix("-> ") {
            let Some((key, value)) = attr.split_once(": ") else {
                continue;
            };
            let pair = (key.to_owned(), value.to_owned());
            match section {
                Section::Resource => resource.push(pair),
                Section::Span if in_span => {
                    spans.last_mut().expect("in a span").attributes.push(pair)
                }
                _ => {}
            }
            continue;
        }
        if trimmed.starts_with("ResourceSpans #") || trimmed.starts_with("ResourceMetrics #") {
            resource.clear();
            in_span = false;
            section = Section::Other;
        } else if trimmed == "Resource attributes:" {
            section = Section::Resource;
        } else if trimmed.starts_with("ScopeSpans #") || trimmed.starts_with("ScopeMetrics #") {
            in_span = false;
            section = Section::Other;
        } else if trimmed.starts_with("Span #") {
            spans.push(PrintedSpan {
                resource: resource.clone(),
                ..PrintedSpan::default()
            });
            in_span = true;
            section = Section::Other;
        } else if trimmed == "Attributes:" {
            section = Section::Span;
        } else {
            section = Section::Other;
            if in_span && let Some((field, value)) = trimmed.split_once(':') {
                let span = spans.last_mut().expect("in a span");
                let value = value.trim().to_owned();
                match field.trim() {
                    "Trace ID" => span.trace_id = value,
                    "Parent ID" => span.parent_id = value,
                    "ID" => span.span_id = value,
                    "Name" => span.name = value,
                    "Kind" => span.kind = value,
                    _ => {}
                }
            }
        }
    }
    spans
}
