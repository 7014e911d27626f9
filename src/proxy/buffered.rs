//! The bounded read of a request body's head, for admission steps that must see the body
//! before forwarding (the token budget's estimate; later a rewrite of the body). It reads up
//! to a bound, reserving what it holds from the process-wide parse budget, and hands back
//! what it read to be forwarded unchanged ahead of the rest, which still streams. Nothing is
//! ever buffered past the bound: a longer body (or one the parse budget has no room for) comes
//! back incomplete, its head read, its rest untouched in the connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::genai::ParseBudget;

/// The head of a request body, read before forwarding.
#[derive(Debug)]
pub struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    len: usize,
    complete: bool,
    lease: Lease,
}

impl Buffered {
    /// The bytes read (the whole body when [`Buffered::is_complete`]).
    pub fn bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }

    /// The number of bytes read.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the whole body is here (else the rest is still in the connection).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Replaces the bytes read with `data` (a rewrite of the whole body, when
    /// [`Buffered::is_complete`]).
    pub fn replace(&mut self, data: Bytes) {
        self.len = data.len();
        self.data = Some(data);
    }

    /// The next frame to forward: the bytes read, then trailers if the body had them.
    /// The parse budget is given back once the bytes are handed on.
    pub fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
            return Some(Frame::data(data));
        }
        self.lease.release();
        self.trailers.take().map(Frame::trailers)
    }

    /// Whether every frame has been handed on.
    pub fn is_drained(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty) && self.trailers.is_none()
    }
}

/// Bytes reserved from the parse budget, given back once.
#[derive(Debug)]
struct Lease {
    budget: Arc<ParseBudget>,
    bytes: usize,
}

impl Lease {
    fn release(&mut self) {
        self.budget.release(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// Reads `body` until its end, or until more than `bound` bytes have come or `budget` has no
/// room for more (then the result is incomplete). A client silent for `idle_timeout` gets
/// 408; a client whose body breaks off, 400.
pub async fn read_bounded(
    body: &mut Incoming,
    bound: usize,
    budget: &Arc<ParseBudget>,
    idle_timeout: Duration,
) -> Result<Buffered, ProxyError> {
    let mut buf = BytesMut::new();
    let mut lease = Lease {
        budget: budget.clone(),
        bytes: 0,
    };
    let mut trailers = None;
    let mut complete = http_body::Body::is_end_stream(body);
    while !complete && buf.len() <= bound {
        let frame = match tokio::time::timeout(idle_timeout, body.frame()).await {
            Err(_) => return Err(ProxyError::RequestBodyTimeout(idle_timeout)),
            Ok(None) => {
                complete = true;
                break;
            }
            Ok(Some(Err(e))) => {
                return Err(ProxyError::ClientBody {
                    detail: e.to_string(),
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                // What is read is held either way; the budget decides whether to read on.
                let reserved = budget.try_reserve(data.len());
                if reserved {
                    lease.bytes += data.len();
                }
                buf.extend_from_slice(&data);
                complete = http_body::Body::is_end_stream(body);
                if !reserved {
                    budget.note_skipped();
                    break;
                }
            }
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                complete = true;
            }
        }
    }
    let len = buf.len();
    Ok(Buffered {
        data: Some(buf.freeze()),
        trailers,
        len,
        complete: complete && len <= bound,
        lease,
    })
}
