//! Operations on the admin listener, over real sockets: `/metrics` in the Prometheus text format
//! (checked by `promtool` and scraped by a real Prometheus), the recent-requests view
//! (`/traces.json`, and `/traces` rendered in a real headless Chromium), active health checks
//! driving `/readyz` and `ragscope.upstream.up`, `/debug/config` with secrets masked, and
//! `ragscope demo`.
//!
//! `promtool`, `prometheus` and `chromium` come from Debian packages that `.ci/run` installs.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ::ragscope::demo::DemoUpstream;
use futures_util::FutureExt as _;
use serde_json::{Value, json};
use support::*;

/// Longest wait for anything asynchronous; only reached when something is wrong.
const WAIT: Duration = Duration::from_secs(20);

async fn admin_get(proxy: &Proxy, path: &str) -> Reply {
    Client::http1().get(proxy.admin_url(path)).await
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The value of the first sample line of `name` (with any labels) in exposition text.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// 1. /metrics

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_serves_every_instrument_valid_for_promtool() {
    let up = Upstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let proxy = Proxy::builder().upstream(&up).otlp(&otlp).run().await;
    let client = Client::http1();
    for _ in 0..3 {
        assert_eq!(client.get(proxy.url("/json")).await.status, 200);
    }
    assert_eq!(client.get(proxy.url("/status/503")).await.status, 503);

    let reply = admin_get(&proxy, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = text(&reply);
    // OTel names converted the Prometheus way: unit suffixes, _total, histogram series.
    for series in [
        "# TYPE http_server_request_duration_seconds histogram",
        "http_server_request_duration_seconds_bucket{",
        "http_server_request_duration_seconds_sum{",
        "http_server_request_duration_seconds_count{",
        "# TYPE http_server_active_requests gauge",
        "# TYPE http_server_request_body_size_bytes histogram",
        "# TYPE http_server_response_body_size_bytes histogram",
        "# TYPE http_client_request_duration_seconds histogram",
        "# TYPE ragscope_connections_active gauge",
        // Process metrics: CPU time, resident memory, open file descriptors.
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
    ] {
        assert!(body.contains(series), "{series} missing from:\n{body}");
    }
    let ok_count = body
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains("http_response_status_code=\"200\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(ok_count, Some(3.0), "{body}");
    assert!(body.contains("error_type=\"503\""), "{body}");
    assert!(sample(&body, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(sample(&body, "ragscope_connections_active").is_some_and(|v| v >= 1.0));
    // Metric labels stay low-cardinality: no paths, no client addresses.
    assert!(!body.contains("url_path") && !body.contains("client_address"));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; see .ci/run)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // OTLP push keeps flowing beside the pull endpoint.
    otlp.wait_for_metric("http.server.request.duration", WAIT)
        .await;
    proxy.shutdown().await;
}

// 2. The recent-requests view

#[tokio::test(flavor = "multi_thread")]
async fn traces_json_keeps_the_newest_requests_with_their_spans() {
    let up = Upstream::start().await;
    // No collector at all: the view works from memory.
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RECENT_TRACES", "3")
        .run()
        .await;
    let client = Client::http1();
    for path in [
        "/json?n=1",
        "/status/502",
        "/slow?delay_ms=300",
        "/json?secret=sk-1",
    ] {
        client.get(proxy.url(path)).await;
    }
    let all = admin_get(&proxy, "/traces.json").await.json();
    assert_eq!(all["capacity"], 3);
    let traces = all["traces"].as_array().expect("traces");
    let paths: Vec<&str> = traces
        .iter()
        .map(|t| t["path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        ["/json", "/slow", "/status/502"],
        "newest first, oldest evicted"
    );

    let failed = &traces[2];
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["error"], true);
    assert_eq!(failed["method"], "GET");
    assert!(failed["trace_id"].as_str().is_some_and(|id| id.len() == 32));
    let spans = failed["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0]["kind"], "server");
    assert_eq!(spans[1]["kind"], "client");
    assert_eq!(spans[1]["parent_span_id"], spans[0]["span_id"]);
    assert_eq!(spans[0]["attributes"]["url.path"], "/status/502");
    assert!(spans[1]["start_ms"].as_f64().is_some_and(|s| s >= 0.0));

    // Query values are redacted in the view as in spans.
    let newest = serde_json::to_string(&traces[0]).expect("json");
    assert!(
        !newest.contains("sk-1") && newest.contains("secret=REDACTED"),
        "{newest}"
    );

    let errors = admin_get(&proxy, "/traces.json?errors=1").await.json();
    assert_eq!(errors["traces"].as_array().map(Vec::len), Some(1));
    let slow = admin_get(&proxy, "/traces.json?slow_ms=250").await.json();
    assert_eq!(slow["traces"][0]["path"], "/slow");
    assert_eq!(slow["traces"].as_array().map(Vec::len), Some(1));
    let id = failed["trace_id"].as_str().expect("id");
    let one = admin_get(&proxy, &format!("/traces.json?trace_id={id}"))
        .await
        .json();
    assert_eq!(one["traces"][0]["path"], "/status/502");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_view_can_be_turned_off() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_RECENT_TRACES", "0")
        .run()
        .await;
    assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    let reply = admin_get(&proxy, "/traces.json").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_type(), "traces_off");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_page_renders_in_a_real_browser_with_filters_and_waterfall() {
    let demo = DemoUpstream::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("demo upstream");
    let proxy = Proxy::builder().upstream(&demo.addr()).run().await;
    let chat = Client::http1()
        .post_json(
            proxy.url("/v1/chat/completions"),
            &json!({"model": "demo-rag-1", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!(chat.status, 200);
    let missing = Client::http1()
        .post_json(proxy.url("/nowhere&amp;x"), &json!({}))
        .await;
    assert_eq!(missing.status, 404);

    let list = rendered_dom(proxy.admin_url("/traces")).await;
    assert!(list.contains("id=\"traces\""), "{list}");
    assert_eq!(list.matches("<tr class=\"trace").count(), 2, "{list}");
    let rows = table_body(&list);
    assert!(rows.contains(">/v1/chat/completions<"), "{rows}");
    assert!(rows.contains(">POST<") && rows.contains(">200<"), "{rows}");
    // A client-chosen path is shown as text, never parsed as markup.
    assert!(rows.contains(">/nowhere&amp;amp;x<"), "{rows}");
    assert!(list.contains("2 of 2 requests"), "{list}");

    // The slow filter, from the URL as a shared link would carry it.
    let slow = rendered_dom(proxy.admin_url("/traces?slow_ms=60000")).await;
    assert_eq!(slow.matches("<tr class=\"trace").count(), 0, "{slow}");
    assert!(slow.contains("0 of 2 requests"), "{slow}");

    let trace_id = chat
        .header("traceresponse")
        .and_then(|h| h.get(3..35))
        .expect("traceresponse carries the trace id")
        .to_owned();
    assert!(
        list.contains(&format!("href=\"/traces/{trace_id}\"")),
        "{list}"
    );
    let page = rendered_dom(proxy.admin_url(&format!("/traces/{trace_id}"))).await;
    assert_eq!(page.matches("class=\"wf-row span\"").count(), 2, "{page}");
    assert!(page.contains("class=\"bar server"), "{page}");
    assert!(page.contains("class=\"bar client"), "{page}");
    assert!(
        page.contains("url.path") && page.contains("http.response.status_code"),
        "{page}"
    );
    let missing_trace =
        rendered_dom(proxy.admin_url(&format!("/traces/{}", "0".repeat(31) + "1"))).await;
    assert!(
        missing_trace.contains("not among the recent requests"),
        "{missing_trace}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_page_shows_only_errors_when_filtered() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    let client = Client::http1();
    client.get(proxy.url("/json")).await;
    client.get(proxy.url("/status/500")).await;
    client.get(proxy.url("/status/404")).await;
    let dom = rendered_dom(proxy.admin_url("/traces?errors=1")).await;
    assert_eq!(dom.matches("<tr class=\"trace error\"").count(), 1, "{dom}");
    assert_eq!(dom.matches("<tr class=\"trace").count(), 1, "{dom}");
    let rows = table_body(&dom);
    assert!(
        rows.contains(">/status/500<") && !rows.contains("/status/404"),
        "{rows}"
    );
    assert!(dom.contains("1 of 3 requests"), "{dom}");
    proxy.shutdown().await;
}

// 3. Active health checks

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_report_down_and_recovery_within_three_intervals() {
    let demo = DemoUpstream::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("demo upstream");
    let addr: SocketAddr = demo.addr();
    let interval = Duration::from_millis(300);
    let proxy = Proxy::builder()
        .upstream(&addr)
        .env("RAGSCOPE_HEALTH_PATH", "/health")
        .env("RAGSCOPE_HEALTH_INTERVAL", "300ms")
        .env("RAGSCOPE_HEALTH_TIMEOUT", "250ms")
        .run()
        .await;
    let ready = |proxy: &Proxy| {
        let url = proxy.admin_url("/readyz");
        async move { Client::http1().get(url).await.status.as_u16() }
    };
    assert!(
        wait_until_async(WAIT, || ready(&proxy).map(|s| s == 200)).await,
        "never became ready"
    );
    let metrics = text(&admin_get(&proxy, "/metrics").await);
    assert_eq!(
        sample(&metrics, "ragscope_upstream_up"),
        Some(1.0),
        "{metrics}"
    );
    assert!(metrics.contains("ragscope_upstream_health_check_duration_seconds_bucket{"));

    // The upstream goes away: down within three intervals (plus scheduling slack on a busy CI).
    drop(demo);
    let went_down = Instant::now();
    assert!(
        wait_until_async(WAIT, || ready(&proxy).map(|s| s == 503)).await,
        "never reported down"
    );
    let took = went_down.elapsed();
    assert!(
        took <= interval * 3 + Duration::from_millis(700),
        "down after {took:?}"
    );
    assert_eq!(
        admin_get(&proxy, "/readyz").await.json()["status"],
        "upstream_down"
    );
    let metrics = text(&admin_get(&proxy, "/metrics").await);
    assert_eq!(
        sample(&metrics, "ragscope_upstream_up"),
        Some(0.0),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"failure\""));

    // It comes back on the same address: up again as quickly.
    let demo = DemoUpstream::start(addr)
        .await
        .expect("rebind the same port");
    let came_back = Instant::now();
    assert!(
        wait_until_async(WAIT, || ready(&proxy).map(|s| s == 200)).await,
        "never recovered"
    );
    let took = came_back.elapsed();
    assert!(
        took <= interval * 3 + Duration::from_millis(700),
        "up after {took:?}"
    );
    drop(demo);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_transitions_are_logged_by_the_binary() {
    let demo = DemoUpstream::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("demo upstream");
    let mut bin = Proxy::builder()
        .upstream(&demo.addr())
        .env("RAGSCOPE_HEALTH_PATH", "/health")
        .env("RAGSCOPE_HEALTH_INTERVAL", "200ms")
        .spawn();
    bin.wait_serving().await;
    let logged = |bin: &Binary, what: &str| bin.lines().iter().any(|l| l.contains(what));
    assert!(wait_until(WAIT, || logged(&bin, "upstream is UP")).await);
    drop(demo);
    assert!(
        wait_until(WAIT, || logged(&bin, "upstream is DOWN")).await,
        "{:?}",
        bin.lines()
    );
    bin.signal("TERM");
    bin.wait_exit(WAIT).await;
}

// 4. /debug/config

#[tokio::test(flavor = "multi_thread")]
async fn debug_config_shows_the_effective_configuration_with_secrets_masked() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder()
        .upstream(&up)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20sk-live-123,x-tenant=acme",
        )
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,vendor.api_key=k-999",
        )
        .env("RAGSCOPE_MAX_REQUEST_BODY", "1MiB")
        .run()
        .await;
    let reply = admin_get(&proxy, "/debug/config").await;
    assert_eq!(reply.status, 200);
    let raw = text(&reply);
    for secret in ["sk-live-123", "Bearer", "acme", "k-999"] {
        assert!(!raw.contains(secret), "{secret} leaked: {raw}");
    }
    let config = reply.json();
    assert_eq!(config["RAGSCOPE_MAX_REQUEST_BODY"], 1_048_576);
    assert_eq!(config["RAGSCOPE_UPSTREAM"], up.url());
    assert_eq!(config["traces"]["headers"]["authorization"], "***");
    assert_eq!(
        config["OTEL_RESOURCE_ATTRIBUTES"]["deployment.environment"],
        "prod"
    );
    assert_eq!(config["RAGSCOPE_HEALTH_PATH"], "off");
    proxy.shutdown().await;
}

// 5. ragscope demo

#[tokio::test(flavor = "multi_thread")]
async fn demo_command_prints_what_to_try_and_serves_it() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ragscope"))
        .arg("demo")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RAGSCOPE_LISTEN", "127.0.0.1:0")
        .env("RAGSCOPE_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ragscope demo starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    let deadline = Instant::now() + WAIT;
    while !banner.contains("Stop with Ctrl-C") {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no banner: {banner}"));
        banner.push_str(&line);
        banner.push('\n');
    }
    let url_after = |marker: &str| -> String {
        let start = banner
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {banner}"));
        banner[start..]
            .split_whitespace()
            .nth(if marker.starts_with("curl") { 2 } else { 0 })
            .expect("url")
            .trim_end_matches("/v1/chat/completions")
            .to_owned()
    };
    let proxy_base = url_after("curl -s http://");
    let admin_base = banner
        .lines()
        .find(|l| l.contains("/traces "))
        .and_then(|l| l.split_whitespace().next())
        .map(|u| u.trim_end_matches("/traces").to_owned())
        .unwrap_or_else(|| panic!("no /traces URL: {banner}"));

    let chat = Client::http1().post_json(
        format!("{proxy_base}/v1/chat/completions"),
        &json!({"model": "demo-rag-1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(chat.status, 200);
    assert_eq!(chat.header("content-type"), Some("text/event-stream"));
    let body = String::from_utf8_lossy(&chat.body);
    assert!(
        body.contains("\"usage\"") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    let query = Client::http1()
        .post_json(format!("{proxy_base}/query"), &json!({"query": "deploy"}))
        .await;
    assert_eq!(query.json()["sources"][0]["id"], "doc-1");

    let recent = Client::http1()
        .get(format!("{admin_base}/traces.json"))
        .await
        .json();
    let paths: Vec<&str> = recent["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .filter_map(|t| t["path"].as_str())
        .collect();
    assert_eq!(paths, ["/query", "/v1/chat/completions"]);
    let ready = Client::http1().get(format!("{admin_base}/readyz")).await;
    assert_eq!(ready.status, 200);

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

// 6. A real Prometheus scraping ragscope

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_ragscope() {
    let up = Upstream::start().await;
    let proxy = Proxy::builder().upstream(&up).run().await;
    assert_eq!(Client::http1().get(proxy.url("/json")).await.status, 200);
    let admin = proxy
        .admin_url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let dir =
        std::env::temp_dir().join(format!("ragscope-prom-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ragscope\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("config");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (Debian package prometheus; see .ci/run)");

    let api = format!("http://127.0.0.1:{port}/api/v1");
    let client = Client::http1();
    let query = format!("{api}/query?query=http_server_request_duration_seconds_count");
    // Until Prometheus is up and has scraped once: the answer holds a series.
    let scraped = wait_for(Duration::from_secs(60), || async {
        let reply = tokio::time::timeout(Duration::from_secs(5), client.try_get(&query))
            .await
            .ok()
            .flatten()
            .filter(|r| r.status == 200)?;
        let answer = reply.json();
        answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
            .then_some(answer)
    })
    .await;
    let (scraped, last) = (scraped.is_some(), scraped.unwrap_or(Value::Null));
    let targets = client.get(format!("{api}/targets")).await.json();
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        scraped,
        "no ragscope series in Prometheus: {last} targets: {targets}"
    );
    assert_eq!(
        targets["data"]["activeTargets"][0]["health"], "up",
        "{targets}"
    );
    let result = &last["data"]["result"][0];
    assert_eq!(result["metric"]["job"], "ragscope");
    assert_eq!(result["value"][1], "1");
    proxy.shutdown().await;
}
