//! admit, token and spend budgets: a recognised LLM request's body is read up to the parse
//! bound ([`super::buffered`]), its cost estimated once and reserved in each budget (tokens,
//! then spend); the reservations travel in the record and are settled where the record is
//! concluded. Requests that are not LLM requests, and every request when no budget is set,
//! pass without their body being touched.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Request};
use hyper::body::Incoming;

use super::buffered::{self, Buffered};
use super::{Exchange, Proxy, declared_length};
use crate::error::ProxyError;
use crate::genai::api::Recognised;
use crate::limit::tokens::{BudgetDecision, BudgetLimiter, Unit};

/// The budget decisions whose headers go on the response.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Budgets {
    tokens: Option<BudgetDecision>,
    cost: Option<BudgetDecision>,
}

impl Budgets {
    /// Each budget's `x-ratelimit-*-tokens` / `-cost` headers.
    pub(super) fn add_headers(&self, headers: &mut HeaderMap) {
        for decision in [self.tokens, self.cost].into_iter().flatten() {
            decision.add_headers(headers);
        }
    }
}

impl Proxy {
    /// Reserves the request's estimated cost in each budget and notes the accounts in the
    /// record; refuses when a budget cannot cover it (unless in shadow mode), the token budget
    /// first (a spend budget is then not asked). Returns the decisions and the body's head read
    /// for the estimate.
    pub(super) async fn token_budget(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        exchange: &mut Exchange,
    ) -> Result<(Budgets, Option<Buffered>), ProxyError> {
        let limiters = [&self.token_limiter, &self.cost_limiter];
        let Some(limiter) = limiters.into_iter().flatten().next() else {
            return Ok((Budgets::default(), None));
        };
        let Some(recognised) = Recognised::from_request(req.method(), req.uri().path()) else {
            return Ok((Budgets::default(), None));
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
        let mut budgets = Budgets::default();
        for limiter in limiters.into_iter().flatten() {
            let account = limiter
                .reserve(req.headers(), req.extensions(), peer.ip(), &estimate)
                .await;
            let decision = *account.decision();
            if let Some(record) = exchange.record() {
                record_account(record, limiter, account);
            }
            if let Some(refusal) = decision.refusal() {
                return Err(refusal);
            }
            match limiter.unit() {
                Unit::Tokens => budgets.tokens = Some(decision),
                Unit::Cost => budgets.cost = Some(decision),
            }
        }
        Ok((budgets, head))
    }
}

fn record_account(
    record: &mut crate::observe::Record,
    limiter: &Arc<BudgetLimiter>,
    account: crate::limit::tokens::BudgetAccount,
) {
    match limiter.unit() {
        Unit::Tokens => record.tokens = Some(account),
        Unit::Cost => record.cost = Some(account),
    }
}
