//! ragscope: an observability sidecar proxy for RAG and LLM servers.
//!
//! A request's path through the crate, in order:
//! [`settings`] (parsed once, per concern, with the readers in [`config`]) → [`listener`] (accept,
//! [`tls`], HTTP/1.1 + HTTP/2, limits) → [`proxy`] (admit with [`auth`] and [`limit`], forward,
//! respond, with [`canary`] choosing stable or the canary upstream) → [`observe`] (one plain record of facts per exchange, with what [`genai`] read of
//! GenAI/RAG traffic) → [`telemetry`] (spans, metrics, access log, built from the record when the
//! response ends). [`admin`] serves health, metrics and the recent-requests view
//! ([`trace_view`], [`debug_config`]), [`health`] checks the upstream actively; [`server`] wires
//! it all and drains on shutdown; [`error`] is where a failure becomes a response; [`reload`]
//! picks up changed certificate and key files.
#![forbid(unsafe_code)]
// `/debug/config` is one `json!` literal with a key per variable; past ~60 keys the macro needs
// more than the default recursion depth.
#![recursion_limit = "256"]

pub mod admin;
pub mod admin_auth;
pub mod auth;
pub mod canary;
pub mod config;
pub mod debug_config;
pub mod demo;
pub mod error;
pub mod genai;
pub mod grpc;
pub mod health;
pub mod identity;
pub mod limit;
pub mod listener;
pub mod observe;
pub mod overview;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod trace_view;
pub mod upstream;
pub mod workers;

pub use config::{ConfigError, Env, Source};
pub use server::{Server, StartError};
pub use settings::Config;
