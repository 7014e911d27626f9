//! The upstream call: sending, the wait for the answer with the response timeout, which starts only once the
//! request body has been sent, and what a failed call was (whose fault, which error).

use http::{Request, Response};
use hyper::body::Incoming;

use super::{Exchange, Proxy, RequestBody, Upload};
use crate::canary::Route;
use crate::error::ProxyError;
use crate::upstream::Wire;

impl Proxy {
    /// Sends `req` to the upstream `route` chose (speaking `wire`) and waits for its response
    /// head; a failure becomes the error it stands for.
    pub(super) async fn call(
        &self,
        mut req: Request<RequestBody>,
        upload: &Upload,
        grpc: bool,
        wire: Wire,
        route: Option<&Route>,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        // Only where ALPN decides can a gRPC call meet an HTTP/1.1 connection: then which one
        // it met is kept, to say so if the client refuses it.
        let connection = (grpc && wire == Wire::Negotiated)
            .then(|| hyper_util::client::legacy::connect::capture_connection(&mut req));
        let upstream = self.send(req, route, exchange);
        match self.await_response(upstream, upload).await {
            Err(e) => Err(e),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                let met_http1 = connection.is_some_and(|c| {
                    c.connection_metadata()
                        .as_ref()
                        .is_some_and(|c| !c.is_negotiated_h2())
                });
                Err(if met_http1 {
                    ProxyError::GrpcNeedsHttp2
                } else {
                    self.classify(e, upload)
                })
            }
        }
    }

    /// Waits for the upstream's response head. `RAGSCOPE_RESPONSE_TIMEOUT` runs from the
    /// moment the request body has been sent: a client still uploading is not the upstream's
    /// fault (its silence is bounded by `RAGSCOPE_REQUEST_BODY_TIMEOUT` in the body wrapper).
    /// While the body is on its way, an upstream that takes none of it for the response
    /// timeout (and the client is not the one being waited for) times out as well.
    async fn await_response<F>(&self, upstream: F, upload: &Upload) -> Result<F::Output, ProxyError>
    where
        F: std::future::Future,
    {
        let timeout = self.config.response_timeout;
        let mut upstream = std::pin::pin!(upstream);
        while !upload.sent() {
            let progress = upload.progress();
            tokio::select! {
                response = &mut upstream => return Ok(response),
                _ = upload.wait_sent() => {}
                _ = tokio::time::sleep(timeout) => {
                    if upload.progress() == progress && !upload.waiting_on_client() {
                        return Err(ProxyError::UpstreamTimeout(timeout));
                    }
                }
            }
        }
        tokio::time::timeout(timeout, upstream)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout(timeout))
    }

    fn classify(&self, e: hyper_util::client::legacy::Error, upload: &Upload) -> ProxyError {
        if upload.client_stalled() {
            return ProxyError::RequestBodyTimeout(self.config.request_body_timeout);
        }
        if upload.too_large() {
            return ProxyError::BodyTooLarge {
                limit: self.config.max_request_body,
            };
        }
        if upload.client_failed() {
            return ProxyError::ClientBody { detail: chain(&e) };
        }
        if e.is_connect() {
            let timed_out = std::iter::successors(std::error::Error::source(&e), |e| e.source())
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::TimedOut);
            if timed_out {
                return ProxyError::UpstreamConnectTimeout(self.config.connect_timeout);
            }
            return ProxyError::UpstreamUnreachable { detail: chain(&e) };
        }
        ProxyError::UpstreamReset { detail: chain(&e) }
    }
}

/// An error and its sources on one line, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
