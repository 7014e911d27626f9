//! The canary tests' stand-ins: upstreams that name themselves, a ragscope splitting between
//! them by client header, clients, and the `/canary` and `/metrics` reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::{Client, HasUrl, Proxy, ProxyBuilder, Reply, Upstream, canned};

/// The header every stand-in upstream answers with: which one served.
pub const SERVED_BY: &str = "x-served-by";

/// An upstream that names itself on every answer, and answers 500 while `failing` is set.
pub async fn versioned(name: &'static str, failing: Arc<AtomicBool>) -> Upstream {
    Upstream::scripted(move |req| {
        if req.path() == "/upload" {
            return None;
        }
        let status = if failing.load(Ordering::SeqCst) {
            500
        } else {
            200
        };
        Some(canned(status, &[(SERVED_BY, name)], "{}"))
    })
    .await
}

/// A failing switch, off.
pub fn healthy() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// A stable upstream and a canary that fails while `failing` is set.
pub async fn upstreams(failing: Arc<AtomicBool>) -> (Upstream, Upstream) {
    (
        versioned("stable", healthy()).await,
        versioned("canary", failing).await,
    )
}

/// A ragscope splitting between `stable` and `canary` by the `x-client` header.
pub fn builder(stable: &impl HasUrl, canary: &impl HasUrl, weight: &str) -> ProxyBuilder {
    Proxy::builder()
        .upstream(stable)
        .env("RAGSCOPE_UPSTREAM_CANARY", canary.base_url())
        .env("RAGSCOPE_CANARY_WEIGHT", weight)
        .env("RAGSCOPE_RATE_KEY", "header:x-client")
}

/// GETs `/json` as client `id` through the proxy at `addr`: (status, who served).
pub async fn as_client(client: &Client, addr: SocketAddr, id: usize) -> (u16, String) {
    let id = id.to_string();
    let reply = client
        .get_with(format!("http://{addr}/json"), &[("x-client", id.as_str())])
        .await;
    let by = reply.header(SERVED_BY).unwrap_or_default().to_owned();
    (reply.status.as_u16(), by)
}

/// Clients `ids` (each once), 16 at a time: who served each.
pub async fn spread(addr: SocketAddr, ids: std::ops::Range<usize>) -> HashMap<usize, String> {
    let ids: Vec<usize> = ids.collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let client = Client::http1();
            let mut out = Vec::with_capacity(chunk.len());
            for id in chunk {
                out.push((id, as_client(&client, addr, id).await.1));
            }
            out
        });
    }
    let mut all = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("client task"));
    }
    all
}

/// `GET /canary` on the admin listener at `admin`.
pub async fn canary_state(admin: SocketAddr) -> Value {
    Client::http1()
        .get(format!("http://{admin}/canary"))
        .await
        .json()
}

/// `POST /canary` with `body`.
pub async fn post_canary(admin: SocketAddr, body: Value) -> Reply {
    Client::http1()
        .post_json(format!("http://{admin}/canary"), &body)
        .await
}

/// The admin listener's `/metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    let reply = Client::http1().get(format!("http://{admin}/metrics")).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The value of the first sample line of `name` whose text contains `contains`.
pub fn sample(text: &str, name: &str, contains: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(contains))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
