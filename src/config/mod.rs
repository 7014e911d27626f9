//! Configuration plumbing shared by every concern: where values come from ([`Source`]), the typed
//! readers that turn one variable into one value ([`Reader`]), and the start-up error
//! ([`ConfigError`]). This module knows no concern: each concern parses its own settings with
//! these readers, and [`crate::settings::Config`] assembles them.
//!
//! `RAGSCOPE_*` variables are ours: unset or empty means the default, and a bad value stops
//! start-up at the first such variable with one line naming it, the value and the accepted form.
//! `OTEL_*` variables follow the OpenTelemetry specification instead: an invalid value is warned
//! about and ignored (see [`Reader::warn`]).

mod error;
mod read;
mod source;
mod value;

pub use error::ConfigError;
pub use read::Reader;
pub use source::{Env, Source};
pub use value::{
    DURATION_FORM, SIZE_FORM, SOCKET_FORM, parse_duration, parse_size, parse_socket_addr,
    show_duration, show_size,
};
