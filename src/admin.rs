//! The admin listener: `/healthz` (the process serves) and `/readyz` (the upstream is
//! reachable and we are not draining), for Kubernetes probes and load balancers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::Upstream;
use crate::proxy::Proxy;

/// Serves the admin endpoints until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    upstream: Upstream,
    probe_timeout: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5));
    let builder = Arc::new(builder);
    let upstream = Arc::new(upstream);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (builder, proxy, upstream) = (builder.clone(), proxy.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (proxy, upstream) = (proxy.clone(), upstream.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        route(req, &proxy, &upstream, probe_timeout).await,
                    )
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    proxy: &Proxy,
    upstream: &Upstream,
    probe_timeout: Duration,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"type":"method_not_allowed","message":"use GET"}}"#,
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" => {
            if proxy.is_draining() {
                return json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#);
            }
            let connect = tokio::net::TcpStream::connect((upstream.host.as_str(), upstream.port));
            match tokio::time::timeout(probe_timeout, connect).await {
                Ok(Ok(_)) => json(StatusCode::OK, r#"{"status":"ready"}"#),
                _ => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"upstream_unreachable"}"#,
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"type":"not_found","message":"try /healthz or /readyz"}}"#,
        ),
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}
