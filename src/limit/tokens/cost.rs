//! Spend budgets (`RAGSCOPE_COST_LIMIT`): the token estimate and the token charge, priced by
//! `RAGSCOPE_PRICES` with the function that computes `ragscope.genai.cost`
//! ([`crate::genai::prices::Price::cost`]), in micro-units of the file's one currency.
//!
//! * Reservation: estimated input tokens × the input price plus the output cap (times the
//!   choices) × the output price, at the price of the request's model in service at admission.
//!   A model without a price reserves nothing and is admitted (`unpriced`).
//! * Charge: the tokens the token budget would charge (reported usage, else the estimate of
//!   what was streamed), with the reported cache reads and writes, at the price in service when
//!   the exchange ends, looked up as for `ragscope.genai.cost` (response model, then request
//!   model). So a reservation taken before a price reload settles at the new prices: the
//!   reservation is only a hold, the charge is what the span says the inference cost.

use crate::genai::prices::{PriceTable, Usage as Tokens};

use super::estimate::{self, Estimate, Outcome, Usage};
use super::unit::micros;

/// The reservation for `estimate` at `table`'s price of its model; `None` when the model has
/// no price (or the request names none).
pub fn reservation(table: &PriceTable, estimate: &Estimate) -> Option<u64> {
    let price = table.find(estimate.model.as_deref())?;
    let cost = price.cost(Tokens {
        input: as_i64(estimate.input),
        output: as_i64(estimate.output),
        ..Tokens::default()
    });
    Some(micros(cost.amount))
}

/// What the exchange cost, in micro-units, at the price of the first of `models` with one;
/// `None` when none has a price.
pub fn charge(
    table: &PriceTable,
    models: &[&str],
    input_estimate: u64,
    outcome: &Outcome,
) -> (Option<u64>, Usage) {
    let (input, output, usage) = estimate::charge_parts(input_estimate, outcome);
    let Some(price) = table.find(models.iter().copied()) else {
        return (None, usage);
    };
    let cost = price.cost(Tokens {
        input: as_i64(input),
        output: as_i64(output),
        cache_read: outcome.cache_read_tokens,
        cache_write: outcome.cache_write_tokens,
    });
    (Some(micros(cost.amount)), usage)
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        crate::genai::prices::parse(b"gpt-4o-mini* 0.15 0.60 0.075 - USD\nbig 3 15 - - USD\n")
            .expect("prices")
    }

    #[test]
    fn the_reservation_prices_input_and_output_apart() {
        let e = Estimate {
            input: 1000,
            output: 500,
            model: Some("big".into()),
        };
        // 1000 × 3 + 500 × 15 per million.
        assert_eq!(reservation(&table(), &e), Some(10_500));
        let unpriced = Estimate {
            model: Some("llama".into()),
            ..e.clone()
        };
        assert_eq!(reservation(&table(), &unpriced), None);
        assert_eq!(reservation(&table(), &Estimate::default()), None);
    }

    #[test]
    fn the_charge_is_the_reported_usage_priced_like_the_span() {
        let o = Outcome {
            input_tokens: Some(1000),
            output_tokens: Some(100),
            cache_read_tokens: 800,
            success: true,
            ..Outcome::default()
        };
        let (charged, usage) = charge(&table(), &["gpt-4o-mini-2024", "x"], 5, &o);
        let expected = crate::genai::prices::parse(b"* 0.15 0.60 0.075 - USD")
            .expect("p")
            .find(["m"])
            .expect("p")
            .cost(Tokens {
                input: 1000,
                output: 100,
                cache_read: 800,
                cache_write: 0,
            });
        assert_eq!(charged, Some(micros(expected.amount)));
        assert_eq!(usage, Usage::Reported);
        // The response model first, then the request model.
        assert_eq!(charge(&table(), &["nope", "big"], 5, &o).0, Some(4500));
        assert_eq!(charge(&table(), &["nope"], 5, &o).0, None);
        // Without usage: the token estimate, priced.
        let streamed = Outcome {
            streamed: true,
            content_events: 10,
            success: true,
            ..Outcome::default()
        };
        assert_eq!(
            charge(&table(), &["big"], 100, &streamed),
            (Some(300 + 150), Usage::Estimated)
        );
    }
}
