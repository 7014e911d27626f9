//! One upstream as the proxy holds it ([`Target`]: its settings, address and pooled client),
//! held once for stable and once for the canary, and the send that chooses between them.
//!
//! Failover is the one retry there is, and it is always safe: a request for the canary whose
//! connection could not be made (refused, connect timeout) goes to stable, because nothing of
//! it was sent. The proof is the body: the canary's client gets it in a [`Reclaim`] slot, and
//! only a body still in its slot (never polled: no byte of it left) can be given to stable.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::{Exchange, Proxy, RequestBody};
use crate::canary::{Arm, Canary, Route};
use crate::observe::{UpstreamAddress, UpstreamCall, redacted_url};
use crate::settings::Upstream as Target;
use crate::upstream::Wire;

/// The canary's side of the proxy: the rollout's state and the canary upstream.
#[derive(Debug)]
pub struct CanaryRoute {
    /// Assignment, figures and verdict.
    pub canary: Arc<Canary>,
    /// The canary upstream; its body is a [`Reclaim`], so a request it could not connect for
    /// can still go to stable.
    pub target: crate::upstream::Upstream<Reclaim<RequestBody>>,
}

impl Proxy {
    /// The route of a request (admission is over), noted in the record; `None` without canary.
    pub(super) fn route(
        &self,
        req: &Request<Incoming>,
        peer: std::net::SocketAddr,
        exchange: &mut Exchange,
    ) -> Option<Route> {
        let canary = &self.canary.as_ref()?.canary;
        let route = canary.route(req.headers(), req.extensions(), peer.ip());
        if let Some(record) = exchange.record() {
            record.route = Some(route.clone());
        }
        Some(route)
    }

    /// Where the upstream `route` goes to is, how telemetry names it, and what it speaks.
    pub(super) fn target_of(&self, route: Option<&Route>) -> (&Target, &UpstreamAddress, Wire) {
        match (route.map(|r| r.arm), &self.canary) {
            (Some(Arm::Canary), Some(c)) => {
                (c.target.target(), c.target.address(), c.target.wire())
            }
            _ => (
                self.upstream.target(),
                self.upstream.address(),
                self.upstream.wire(),
            ),
        }
    }

    /// Sends the request where `route` says; a canary that cannot be connected to hands the
    /// untouched request to stable, noted in the record.
    pub(super) async fn send(
        &self,
        request: Request<RequestBody>,
        route: Option<&Route>,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let (Some(route), Some(canary)) = (route, &self.canary) else {
            return self.upstream.send(request).await;
        };
        if route.arm != Arm::Canary {
            return self.upstream.send(request).await;
        }
        let (parts, body) = request.into_parts();
        let (method, version, headers) =
            (parts.method.clone(), parts.version, parts.headers.clone());
        let path = parts.uri.path_and_query().cloned();
        let slot = Arc::new(Mutex::new(Some(body)));
        let body = Reclaim {
            slot: slot.clone(),
            body: None,
        };
        let error = match canary.target.send(Request::from_parts(parts, body)).await {
            Ok(response) => return Ok(response),
            Err(e) => e,
        };
        let untouched = error
            .is_connect()
            .then(|| slot.lock().unwrap_or_else(PoisonError::into_inner).take())
            .flatten();
        let (Some(body), Ok(uri)) = (untouched, self.upstream.uri_for(path.as_ref())) else {
            return Err(error);
        };
        tracing::debug!(error = %error, "canary unreachable; the request goes to stable");
        if let Some(record) = exchange.record() {
            record.route = Some(canary.canary.failover(route));
            record.upstream = Some(UpstreamCall {
                url: redacted_url(&uri),
                status: None,
                version: None,
                address: self.upstream.address().clone(),
            });
        }
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        self.upstream.send(request).await
    }
}

/// A body that can be taken back while nobody has polled it: it stays in a shared slot until
/// its first poll.
#[derive(Debug)]
pub struct Reclaim<B> {
    slot: Arc<Mutex<Option<B>>>,
    body: Option<B>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Reclaim<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match &mut this.body {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|b| b.size_hint())
                .unwrap_or_else(|| SizeHint::with_exact(0)),
        }
    }
}
