//! The admin listener: `/healthz` (the process serves), `/readyz` (the upstream is healthy and
//! we are not draining), `/metrics` (Prometheus), `/traces` and `/traces.json` (recent requests),
//! `/debug/config` (the effective configuration, secrets masked), and the operator's view:
//! `/` and `/overview` (charts of the last 15 minutes, per-model table), `/feedback`, each with a
//! `.json` twin; `/canary` (GET and POST: the canary rollout, [`crate::canary::admin`]).
//!
//! It listens on loopback by default: the recent-requests view shows paths and client addresses,
//! as spans do, so exposing it is an operator's decision; off loopback, the pages with request
//! data need `RAGSCOPE_ADMIN_TOKEN` ([`crate::admin_auth`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::admin_auth::{AdminGuard, Denied};
use crate::health::{UpstreamHealth, UpstreamState};
use crate::proxy::Proxy;
use crate::settings::Config;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminContext {
    /// The proxy (draining flag, telemetry).
    pub proxy: Arc<Proxy>,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The active health checks' conclusion, when `RAGSCOPE_HEALTH_PATH` is set.
    pub health: Option<Arc<UpstreamHealth>>,
    /// Limit of the TCP probe `/readyz` makes when there are no active checks.
    pub probe_timeout: Duration,
    /// The canary, when `RAGSCOPE_UPSTREAM_CANARY` is set (`/canary`).
    pub canary: Option<Arc<crate::canary::Canary>>,
}

/// Serves the admin endpoints until the task is aborted.
pub async fn serve(listener: TcpListener, context: AdminContext) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5));
    let builder = Arc::new(builder);
    // Who may read the pages that show request data, decided once from the bind; an unknown
    // bind is treated as exposed.
    let bind = listener
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let guard = AdminGuard::new(context.config.admin.token.clone(), bind);
    if let Some(warning) = guard.startup_warning() {
        tracing::warn!("{warning}");
    }
    let context = Arc::new((context, guard));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (builder, context) = (builder.clone(), context.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let context = context.clone();
                async move {
                    let (context, guard) = &*context;
                    if let Err(denied) = guard.check(req.uri().path(), req.headers()) {
                        return Ok::<_, std::convert::Infallible>(refused(denied));
                    }
                    Ok(route(req, context).await)
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(req: Request<Incoming>, cx: &AdminContext) -> Response<Full<Bytes>> {
    if req.uri().path() == "/canary" {
        let method = req.method().clone();
        let canary = cx.canary.as_deref();
        let (status, body) = crate::canary::admin::handle(&method, req.into_body(), canary).await;
        return respond(status, "application/json", body.to_string().into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"type":"method_not_allowed","message":"use GET"}}"#,
        );
    }
    let path = req.uri().path();
    let telemetry = cx.proxy.telemetry();
    match path {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" => readiness(cx).await,
        "/metrics" => match telemetry.prometheus().map(|p| p.render()) {
            Some(Ok(text)) => respond(
                StatusCode::OK,
                crate::telemetry::prometheus::CONTENT_TYPE,
                text.into(),
            ),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "a /metrics scrape failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "scrape_failed",
                    &e.to_string(),
                )
            }
            None => error(
                StatusCode::NOT_FOUND,
                "metrics_off",
                "metrics are off (OTEL_SDK_DISABLED=true)",
            ),
        },
        "/debug/config" => respond(
            StatusCode::OK,
            "application/json",
            crate::debug_config::render(&cx.config).to_string().into(),
        ),
        "/" | "/overview" | "/overview.json" => {
            let data = telemetry.overview().json(std::time::SystemTime::now());
            if path == "/overview.json" {
                respond(StatusCode::OK, "application/json", data.to_string().into())
            } else {
                html(crate::overview::page::overview(&data))
            }
        }
        "/feedback" | "/feedback.json" => {
            let (lowest_first, limit) = feedback_query(req.uri().query());
            let data = telemetry.overview().feedback_json(lowest_first, limit);
            if path == "/feedback.json" {
                respond(StatusCode::OK, "application/json", data.to_string().into())
            } else {
                html(crate::overview::page::feedback(&data))
            }
        }
        "/traces" | "/traces/" | "/traces.json" => {
            let Some(ring) = telemetry.recent_traces() else {
                return traces_off();
            };
            if path == "/traces.json" {
                let filter = crate::trace_view::filter_from_query(req.uri().query());
                let mut data = crate::trace_view::json(ring, &filter);
                // The twin of a trace's page carries its feedback too.
                if let Some(id) = filter
                    .trace_id
                    .as_deref()
                    .and_then(crate::overview::parse_trace_id)
                {
                    let feedback = telemetry.overview().feedback(false, Some(id));
                    data["feedback"] = feedback.iter().map(crate::overview::entry_json).collect();
                }
                respond(StatusCode::OK, "application/json", data.to_string().into())
            } else {
                html(crate::trace_view::list_page(ring))
            }
        }
        _ => {
            if let Some(id) = path.strip_prefix("/traces/") {
                let Some(ring) = telemetry.recent_traces() else {
                    return traces_off();
                };
                if crate::trace_view::is_trace_id(id) {
                    // The feedback given about this trace, joined in.
                    let feedback = crate::overview::parse_trace_id(id)
                        .map(|t| telemetry.overview().feedback(false, Some(t)))
                        .unwrap_or_default();
                    return html(crate::trace_view::trace_page(ring, id, &feedback));
                }
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "a trace id is 32 lowercase hex digits",
                );
            }
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "try /healthz, /readyz, /metrics, /overview, /traces, /feedback (each page also as .json), /canary or /debug/config",
            )
        }
    }
}

/// With active checks, their conclusion; without, a TCP connect per probe.
async fn readiness(cx: &AdminContext) -> Response<Full<Bytes>> {
    if cx.proxy.is_draining() {
        return json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#);
    }
    if let Some(health) = &cx.health {
        return match health.state() {
            UpstreamState::Up => json(StatusCode::OK, r#"{"status":"ready"}"#),
            UpstreamState::Down => json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"upstream_down"}"#,
            ),
            UpstreamState::Unknown => json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"upstream_not_checked_yet"}"#,
            ),
        };
    }
    match crate::upstream::probe(&cx.config.upstream, cx.probe_timeout).await {
        true => json(StatusCode::OK, r#"{"status":"ready"}"#),
        false => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"upstream_unreachable"}"#,
        ),
    }
}

/// `sort=score` (lowest first) and `limit=N` of `/feedback` and `/feedback.json`.
fn feedback_query(query: Option<&str>) -> (bool, Option<usize>) {
    let (mut lowest_first, mut limit) = (false, None);
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sort", v) => lowest_first = v == "score",
            ("limit", v) => limit = v.parse().ok(),
            _ => {}
        }
    }
    (lowest_first, limit)
}

/// A protected page without the right token: 401 with a challenge, or 403 when no token is
/// configured on an exposed listener.
fn refused(denied: Denied) -> Response<Full<Bytes>> {
    let mut r = error(denied.status(), denied.error_type(), &denied.to_string());
    if denied.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ragscope admin\""),
        );
    }
    r
}

fn traces_off() -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        "traces_off",
        "the recent-requests view is off (RAGSCOPE_RECENT_TRACES=0 or OTEL_SDK_DISABLED=true)",
    )
}

fn html(page: String) -> Response<Full<Bytes>> {
    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", page.into());
    // The page is self-contained: nothing may be loaded from elsewhere, and it runs only its own
    // inline script.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"type": kind, "message": message}});
    respond(status, "application/json", body.to_string().into())
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        Bytes::from_static(body.as_bytes()),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
