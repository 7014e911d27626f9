//! ragscope: an observability sidecar proxy for RAG and LLM servers.
//!
//! A request's path through the crate, in order:
//! [`config`] (parsed once) → [`listener`] (accept, [`tls`], HTTP/1.1 + HTTP/2, limits) →
//! [`proxy`] (admit with [`auth`] and [`limit`], forward, respond) → [`telemetry`] (spans,
//! metrics, access log, recorded when the response body ends), with [`genai`] reading GenAI/RAG
//! traffic on the way. [`admin`] serves health, metrics and the recent-requests view
//! ([`trace_view`], [`debug_config`]), [`health`] checks the upstream actively; [`server`] wires
//! it all and drains on shutdown; [`error`] is where a failure becomes a response; [`reload`]
//! picks up changed certificate and key files.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_auth;
pub mod auth;
pub mod config;
pub mod debug_config;
pub mod demo;
pub mod error;
pub mod genai;
pub mod health;
pub mod identity;
pub mod limit;
pub mod listener;
pub mod overview;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod trace_view;

pub use config::{Config, ConfigError, Env, Source};
pub use server::{Server, StartError};
