//! Canary rollouts: a second upstream (`RAGSCOPE_UPSTREAM_CANARY`) gets a sticky, weighted
//! share of clients ([`assign`]); each version's outcomes are counted over a sliding window, a
//! timer compares the canary against stable ([`verdict`]) and rolls the canary back to weight 0
//! when it is worse; an operator reads and sets the state on the admin listener ([`admin`]);
//! with a shared Redis the figures are pooled and the state is one for the fleet (`shared.rs`).
//!
//! Cost on the data path: [`Canary::route`] reads one atomic weight and, while the weight is
//! strictly between 0 and 100, hashes the client key; nothing else. Outcomes are fed from the
//! telemetry thread ([`Canary::observe`], off the I/O path, into per-version windows locked only
//! there and by the once-a-second evaluator), and the verdict runs on its own task.

pub mod admin;
pub mod assign;
mod control;
pub mod settings;
mod shared;
pub mod verdict;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Extensions, HeaderMap};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge};

use crate::limit::ClientKeys;
use crate::overview::window::Window;

pub use assign::{Arm, Reason, Route};
pub use control::{Action, ActionError};
pub use settings::{CanarySettings, Rules};
use verdict::{Figures, Judgement};

/// The span and metric attribute naming the version that served a request.
pub const VERSION_ATTRIBUTE: &str = "ragscope.upstream.version";

/// How often the verdict is evaluated (and, with Redis, figures and state exchanged).
pub const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// Traces remembered with their version, so late feedback counts for the version it is about.
const TRACE_CAPACITY: usize = 65_536;

/// Recent traces and the version that answered each, oldest first in the queue.
type TraceArms = (HashMap<[u8; 16], Arm>, VecDeque<[u8; 16]>);

/// One finished exchange that was routed, as the canary counts it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The route it took.
    pub route: Route,
    /// When it ended.
    pub end: SystemTime,
    /// Its duration (request to last byte).
    pub duration: Duration,
    /// A 5xx or an upstream failure.
    pub error: bool,
    /// Time to first token of a streamed answer.
    pub ttft: Option<Duration>,
    /// Its trace, when traces are on (joins later feedback).
    pub trace_id: Option<[u8; 16]>,
    /// The client went away first: not counted (its duration says nothing of the version).
    pub cancelled: bool,
}

/// The canary: assignment state, per-version windows, the verdict and its instruments.
pub struct Canary {
    settings: CanarySettings,
    versions: [Arc<str>; 2],
    keys: ClientKeys,
    /// What requests read: hundredths of a percent, 0 while rolled back.
    weight: AtomicU32,
    control: Mutex<control::Control>,
    windows: [Mutex<Window>; 2],
    traces: Mutex<TraceArms>,
    canary_down: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    shared: Option<shared::Shared>,
    /// The last evaluation: pooled figures per version and the judgement.
    last: Mutex<([Figures; 2], Judgement)>,
    rollbacks: Counter<u64>,
    gauges: OnceLock<Vec<ObservableGauge<f64>>>,
}

impl std::fmt::Debug for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canary")
            .field("versions", &self.versions)
            .field("weight", &self.weight)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// The canary could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    /// The shared Redis URL was refused.
    #[error("RAGSCOPE_SHARED_REDIS (or RAGSCOPE_RATE_LIMIT_REDIS) is not a usable Redis URL: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Canary {
    /// Builds the canary and starts its evaluator (inside the tokio runtime). `keys` names
    /// clients as the rate limit does.
    pub fn start(
        settings: CanarySettings,
        keys: ClientKeys,
        meter: &Meter,
    ) -> Result<Arc<Canary>, CanaryError> {
        let versions = [
            Arc::<str>::from(settings.stable_version.as_str()),
            Arc::<str>::from(settings.canary_version.as_str()),
        ];
        let shared = settings
            .redis
            .as_deref()
            .map(|url| shared::Shared::new(url, &versions))
            .transpose()?;
        let window = || Mutex::new(window_for(settings.rules.window));
        let canary = Arc::new(Canary {
            weight: AtomicU32::new(settings.weight),
            control: Mutex::new(control::Control::initial(settings.weight)),
            windows: [window(), window()],
            traces: Mutex::new((HashMap::new(), VecDeque::new())),
            canary_down: OnceLock::new(),
            shared,
            last: Mutex::new(Default::default()),
            rollbacks: meter
                .u64_counter("ragscope.canary.rollbacks")
                .with_unit("{rollback}")
                .with_description("Automatic canary rollbacks decided by this replica.")
                .build(),
            gauges: OnceLock::new(),
            keys,
            versions,
            settings,
        });
        let _ = canary.gauges.set(gauges(&canary, meter));
        tokio::spawn(control::evaluator(Arc::downgrade(&canary)));
        Ok(canary)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &CanarySettings {
        &self.settings
    }

    /// The version name of `arm`.
    pub fn version(&self, arm: Arm) -> &Arc<str> {
        &self.versions[arm.index()]
    }

    /// From now on, a canary that `down` says is down gets no traffic (its health checks).
    pub fn watch_health(&self, down: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.canary_down.set(Box::new(down));
    }

    /// admit: where this request goes. The version header wins (when configured and naming a
    /// version); else the client's bucket against the weight; a down canary sends it to stable.
    pub fn route(&self, headers: &HeaderMap, extensions: &Extensions, peer: IpAddr) -> Route {
        let forced = self
            .settings
            .header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|v| {
                let v = v.as_bytes();
                [Arm::Stable, Arm::Canary]
                    .into_iter()
                    .find(|arm| self.version(*arm).as_bytes() == v)
            });
        let (arm, reason) = match forced {
            Some(arm) => (arm, Reason::Forced),
            None => {
                let canary = match self.weight.load(Ordering::Relaxed) {
                    0 => false,
                    w if w >= 10_000 => true,
                    w => {
                        let key = self.keys.fleet_key(headers, extensions, peer);
                        assign::bucket(&self.settings.canary_version, &key) < w
                    }
                };
                match canary {
                    false => (Arm::Stable, Reason::Weight),
                    true if self.canary_down.get().is_some_and(|down| down()) => {
                        (Arm::Stable, Reason::CanaryDown)
                    }
                    true => (Arm::Canary, Reason::Weight),
                }
            }
        };
        Route {
            arm,
            version: self.version(arm).clone(),
            reason,
            failover: false,
        }
    }

    /// The route after a failover: stable serves a request the canary could not be connected to.
    pub fn failover(&self, route: &Route) -> Route {
        Route {
            arm: Arm::Stable,
            version: self.version(Arm::Stable).clone(),
            reason: route.reason,
            failover: true,
        }
    }

    /// record: counts a finished exchange into its version's window (telemetry thread).
    pub fn observe(&self, o: &Outcome) {
        if o.route.failover {
            // The canary refused the connection: an error of the canary's, though stable
            // answered (else a dead canary would hide behind the failover).
            let mut canary = lock(&self.windows[Arm::Canary.index()]);
            let bucket = canary.at(unix_secs(o.end));
            bucket.requests += 1;
            bucket.errors += 1;
        }
        if o.cancelled {
            return;
        }
        {
            let mut window = lock(&self.windows[o.route.arm.index()]);
            let bucket = window.at(unix_secs(o.end));
            bucket.requests += 1;
            bucket.errors += u64::from(o.error);
            bucket.latency.record(o.duration.as_secs_f64());
            if let Some(ttft) = o.ttft {
                bucket.ttft.record(ttft.as_secs_f64());
            }
        }
        if let Some(id) = o.trace_id {
            let mut traces = lock(&self.traces);
            let (map, order) = &mut *traces;
            if map.insert(id, o.route.arm).is_none() {
                order.push_back(id);
                if order.len() > TRACE_CAPACITY
                    && let Some(old) = order.pop_front()
                {
                    map.remove(&old);
                }
            }
        }
    }

    /// record: feedback about a trace counts for the version that answered it (when the trace
    /// is still remembered); telemetry thread.
    pub fn feedback(&self, trace_id: [u8; 16], score: f64, at: SystemTime) {
        if !score.is_finite() {
            return;
        }
        let Some(arm) = lock(&self.traces).0.get(&trace_id).copied() else {
            return;
        };
        let mut window = lock(&self.windows[arm.index()]);
        let bucket = window.at(unix_secs(at));
        bucket.feedback += 1;
        bucket.feedback_sum += score;
    }

    /// The weight requests see now, in hundredths of a percent.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// This replica's window totals per version, ending now.
    fn local_totals(&self) -> [crate::overview::window::Stats; 2] {
        let now = unix_secs(SystemTime::now());
        [
            lock(&self.windows[0]).total(now),
            lock(&self.windows[1]).total(now),
        ]
    }

    /// Forgets the window figures: a new state (weight set, promoted) starts a new comparison,
    /// so the figures that caused a rollback cannot cause another.
    fn reset_windows(&self) {
        for w in &self.windows {
            *lock(w) = window_for(self.settings.rules.window);
        }
    }
}

/// About twenty buckets over the window, whole seconds each.
fn window_for(window: Duration) -> Window {
    let secs = window.as_secs().max(1);
    let width = (secs / 20).max(1);
    Window::new(secs.div_ceil(width) as usize, width)
}

fn gauges(canary: &Arc<Canary>, meter: &Meter) -> Vec<ObservableGauge<f64>> {
    // Observed from the last evaluation and the state: never a lock the data path takes.
    let gauge = |name: &'static str,
                 description: &'static str,
                 observe: fn(&Canary, &mut dyn FnMut(f64, Arm))| {
        let weak = Arc::downgrade(canary);
        meter
            .f64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| {
                if let Some(c) = weak.upgrade() {
                    observe(&c, &mut |value, arm| {
                        o.observe(
                            value,
                            &[KeyValue::new(VERSION_ATTRIBUTE, c.version(arm).to_string())],
                        );
                    });
                }
            })
            .build()
    };
    vec![
        gauge(
            "ragscope.canary.weight",
            "Percent of clients the canary receives now (0 after a rollback).",
            |c, o| o(settings::show_weight(c.weight()), Arm::Canary),
        ),
        gauge(
            "ragscope.canary.rolled_back",
            "1 while the canary is rolled back (until an operator acts), else 0.",
            |c, o| o(f64::from(u8::from(c.rolled_back())), Arm::Canary),
        ),
        gauge(
            "ragscope.canary.worse",
            "Measures on which the canary is worse than stable beyond its threshold, with enough samples.",
            |c, o| o(lock(&c.last).1.worse.len() as f64, Arm::Canary),
        ),
        gauge(
            "ragscope.canary.window.error_rate",
            "Error rate per version over the canary window (pooled with Redis).",
            |c, o| {
                let figures = lock(&c.last).0;
                for arm in [Arm::Stable, Arm::Canary] {
                    o(figures[arm.index()].error_rate(), arm);
                }
            },
        ),
    ]
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
