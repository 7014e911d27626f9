//! ragscope: an observability sidecar proxy for RAG and LLM servers.
//!
//! A request's path through the crate, in order:
//! [`config`] (parsed once) → [`listener`] (accept, HTTP/1.1 + HTTP/2, limits) →
//! [`proxy`] (admit — with [`limit`] for rate limits —, forward, respond) → [`telemetry`] (spans, metrics, access log, recorded
//! when the response body ends). [`admin`] serves health endpoints; [`server`] wires it all and
//! drains on shutdown; [`error`] is where a failure becomes a response.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod error;
pub mod identity;
pub mod limit;
pub mod listener;
pub mod proxy;
pub mod server;
pub mod telemetry;

pub use config::{Config, ConfigError, Env, Source};
pub use server::{Server, StartError};
