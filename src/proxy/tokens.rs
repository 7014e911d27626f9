//! admit, token budget: a recognised LLM request's body is read up to the parse bound
//! ([`super::buffered`]), its cost estimated and reserved; the reservation travels in the
//! record and is settled where the record is concluded. Requests that are not LLM requests,
//! and every request when no token limit is set, pass without their body being touched.

use std::net::SocketAddr;

use http::Request;
use hyper::body::Incoming;

use super::buffered::{self, Buffered};
use super::{Exchange, Proxy, declared_length};
use crate::error::ProxyError;
use crate::genai::api::Recognised;
use crate::limit::tokens::TokenDecision;

impl Proxy {
    /// Reserves the request's estimated cost and notes the account in the record; refuses
    /// when the budget cannot cover it (unless in shadow mode). Returns the decision and the
    /// body's head read for the estimate.
    pub(super) async fn token_budget(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<(Option<TokenDecision>, Option<Buffered>), ProxyError> {
        let Some(limiter) = &self.token_limiter else {
            return Ok((None, None));
        };
        let Some(recognised) = Recognised::from_request(req.method(), req.uri().path()) else {
            return Ok((None, None));
        };
        let max_body = self.config.max_request_body;
        let bound = self
            .genai
            .config()
            .parse_max_bytes
            .min(usize::try_from(max_body).unwrap_or(usize::MAX));
        let declared = declared_length(req)?;
        let (estimate, head) = match declared {
            // Known to be over the bound: not read at all.
            Some(len) if len > bound as u64 => (limiter.estimate_length(&recognised, len), None),
            _ => {
                let head = buffered::read_bounded(
                    req.body_mut(),
                    bound,
                    self.genai.budget(),
                    self.config.request_body_timeout,
                )
                .await?;
                if head.len() as u64 > max_body {
                    return Err(ProxyError::BodyTooLarge { limit: max_body });
                }
                let estimate = if head.is_complete() {
                    limiter.estimate_body(&recognised, head.bytes())
                } else {
                    let len = declared.unwrap_or(head.len() as u64);
                    limiter.estimate_length(&recognised, len)
                };
                (estimate, Some(head))
            }
        };
        let account = limiter
            .reserve(req.headers(), req.extensions(), peer.ip(), estimate)
            .await;
        let decision = *account.decision();
        if let Some(record) = exchange.record() {
            record.tokens = Some(account);
        }
        match decision.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok((Some(decision), head)),
        }
    }
}
