//! The real `ragscope` binary as an operator meets it: start-up refuses bad configuration, every
//! request leaves one access-log line (never a secret), the admin probes tell the truth, SIGTERM
//! and SIGINT drain gracefully within a bound whatever the collector does, and large bodies
//! stream through without growing the process.
//!
//! The tests are in one module per concern: `startup` (configuration, the admin probes),
//! `logs`, `shutdown` and `memory`.

#[path = "../support/mod.rs"]
mod support;

mod logs;
mod memory;
mod shutdown;
mod startup;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
