//! The metrics a budget limiter records: decisions, amounts reserved, charged and refunded
//! (whole tokens, or currency for spend), Redis fallbacks and retried settles, tracked keys.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge};

use super::unit::{self, Unit};
use crate::limit::BoundedStore;
use crate::limit::key::LocalKey;

/// A counter of amounts: whole tokens, or currency (as `ragscope.genai.cost`) for spend.
pub(super) enum Amounts {
    Whole(Counter<u64>),
    Money(Counter<f64>),
}

impl Amounts {
    pub(super) fn add(&self, units: u64, attributes: &[KeyValue]) {
        match self {
            Amounts::Whole(c) => c.add(units, attributes),
            Amounts::Money(c) => c.add(unit::money(units), attributes),
        }
    }
}

/// The metrics one budget limiter records.
pub(super) struct Instruments {
    pub(super) decisions: Counter<u64>,
    pub(super) reserved: Amounts,
    pub(super) charged: Amounts,
    pub(super) refunded: Amounts,
    pub(super) fallbacks: Counter<u64>,
    pub(super) retries: Counter<u64>,
    _keys: ObservableGauge<u64>,
}

impl Instruments {
    pub(super) fn new(unit: Unit, meter: &Meter, store: BoundedStore<LocalKey>) -> Instruments {
        let names = unit.names();
        let what = match unit {
            Unit::Tokens => "Token-budget",
            Unit::Cost => "Spend-budget",
        };
        let amounts = |name: &'static str, description: String| match unit {
            Unit::Tokens => Amounts::Whole(
                meter
                    .u64_counter(name)
                    .with_unit(names.unit)
                    .with_description(description)
                    .build(),
            ),
            Unit::Cost => Amounts::Money(
                meter
                    .f64_counter(name)
                    .with_description(format!("{description} In the price file's currency."))
                    .build(),
            ),
        };
        let amount = match unit {
            Unit::Tokens => "Tokens",
            Unit::Cost => "Spend",
        };
        Instruments {
            decisions: meter
                .u64_counter(names.decisions_metric)
                .with_unit("{decision}")
                .with_description(format!(
                    "{what} decisions by outcome (allowed, limited, shadow_limited{}), key type and backend.",
                    if unit == Unit::Cost { ", unpriced" } else { "" }
                ))
                .build(),
            reserved: amounts(
                names.reserved_metric,
                format!("{amount} reserved at admission, by decision outcome."),
            ),
            charged: amounts(
                names.charged_metric,
                format!("{amount} charged when exchanges ended, by ending and usage (reported or estimated)."),
            ),
            refunded: amounts(
                names.refunded_metric,
                format!("{amount} reserved and returned when exchanges ended, by ending."),
            ),
            fallbacks: meter
                .u64_counter(names.fallbacks_metric)
                .with_unit("{operation}")
                .with_description(format!(
                    "{what} operations Redis did not take (slow or down), by operation and reason."
                ))
                .build(),
            retries: meter
                .u64_counter(names.retries_metric)
                .with_unit("{settle}")
                .with_description(format!(
                    "{what} settles Redis took only when retried, by outcome (applied, already_applied: the first try had run, given_up: charged locally)."
                ))
                .build(),
            _keys: meter
                .u64_observable_gauge(names.keys_metric)
                .with_unit("{key}")
                .with_description(format!("Keys the local {what} limiter tracks in memory."))
                .with_callback(move |o| o.observe(store.tracked() as u64, &[]))
                .build(),
        }
    }
}
