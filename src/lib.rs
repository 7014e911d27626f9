//! ragscope: an observability sidecar proxy for RAG and LLM servers.
//!
//! A request's path through the crate, in order:
//! [`config`] (parsed once) → [`listener`] (accept, HTTP/1.1 + HTTP/2, limits) →
//! [`proxy`] (admit, forward, respond) → [`telemetry`] (spans, metrics, access log, recorded
//! when the response body ends), with [`genai`] reading GenAI/RAG traffic on the way. [`admin`] serves health endpoints; [`server`] wires it all and
//! drains on shutdown; [`error`] is where a failure becomes a response.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod error;
pub mod genai;
pub mod identity;
pub mod listener;
pub mod proxy;
pub mod server;
pub mod telemetry;

pub use config::{Config, ConfigError, Env, Source};
pub use server::{Server, StartError};
