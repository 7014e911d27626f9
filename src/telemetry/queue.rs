//! The hand-off between the data path and telemetry: a finished [`Record`] is pushed into a
//! bounded queue (a full queue drops it and counts it, it never waits), and one telemetry thread
//! drains the queue on a short timer, turning each record into spans, metrics, the access-log
//! line and the `/traces` entry there, off the I/O threads.
//!
//! The drain thread is never woken per record: pushing into a queue whose reader is not blocked
//! costs an atomic write, no system call. It sleeps [`DRAIN_INTERVAL`] between drains, and is
//! woken early only by shutdown, which drains whatever is left before the exporters flush.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::observe::Record;

/// How long finished records wait at most before telemetry handles them. Short enough that a
/// span or log line is never noticeably late, long enough that a busy proxy hands over
/// hundreds of records per wake-up.
pub(super) const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// Records waiting for the telemetry thread. At 100k requests/s a drain interval brings
/// ~2,500; the headroom covers a telemetry thread starved of CPU for a while.
pub(super) const CAPACITY: usize = 32 * 1024;

/// The bounded queue of finished records and the thread that drains it.
#[derive(Debug)]
pub(super) struct Queue {
    tx: SyncSender<Record>,
    /// Locked by the drain thread once per drain, and by shutdown: never on the data path.
    rx: Mutex<Receiver<Record>>,
    /// Set by shutdown: from then on records are handled where they finish.
    stopped: AtomicBool,
    drainer: OnceLock<Mutex<Option<JoinHandle<()>>>>,
}

/// Why a record was not queued.
pub(super) enum Refused {
    /// The queue was full: the record is dropped (the caller counts it).
    Full(Record),
    /// Shutdown has drained the queue: the caller handles the record itself.
    Stopped(Record),
}

/// Something the drain thread hands records to.
pub(super) trait Drain: Send + Sync + 'static {
    /// Handles one drained batch, in arrival order.
    fn handle(&self, records: &mut dyn Iterator<Item = Record>);
    /// The queue, to drain.
    fn queue(&self) -> &Queue;
}

impl Queue {
    pub(super) fn new() -> Queue {
        let (tx, rx) = sync_channel(CAPACITY);
        Queue {
            tx,
            rx: Mutex::new(rx),
            stopped: AtomicBool::new(false),
            drainer: OnceLock::new(),
        }
    }

    /// Starts the drain thread for `owner`. It holds only a weak reference, so dropping the
    /// pipeline ends the thread at its next tick.
    pub(super) fn start<D: Drain>(owner: &Arc<D>) -> std::io::Result<()> {
        let weak: Weak<D> = Arc::downgrade(owner);
        let handle = thread::Builder::new()
            .name("ragscope-telemetry".to_owned())
            .spawn(move || {
                loop {
                    thread::park_timeout(DRAIN_INTERVAL);
                    let Some(owner) = weak.upgrade() else { return };
                    drain(&*owner);
                    if owner.queue().stopped.load(Ordering::SeqCst) {
                        return;
                    }
                }
            })?;
        let _ = owner.queue().drainer.set(Mutex::new(Some(handle)));
        Ok(())
    }

    /// Queues `record` without waiting.
    // The refused record comes back by value: boxing it would cost an allocation per request
    // on the data path, for the rare refusal.
    #[allow(clippy::result_large_err)]
    pub(super) fn push(&self, record: Record) -> Result<(), Refused> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Refused::Stopped(record));
        }
        match self.tx.try_send(record) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(record)) => Err(Refused::Full(record)),
            // The receiver lives as long as the queue.
            Err(TrySendError::Disconnected(record)) => Err(Refused::Stopped(record)),
        }
    }

    /// Handles records where they finish from now on (the drain thread could not start).
    pub(super) fn run_inline(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown raced with a push that just succeeded: then the pusher drains, so the
    /// record cannot be stranded behind the final drain.
    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops the drain thread after its last drain and waits for it. Blocking: call it off the
    /// runtime's workers.
    pub(super) fn stop<D: Drain + ?Sized>(owner: &D) {
        let queue = owner.queue();
        queue.stopped.store(true, Ordering::SeqCst);
        let handle = queue
            .drainer
            .get()
            .and_then(|h| h.lock().ok().and_then(|mut h| h.take()));
        if let Some(handle) = handle {
            handle.thread().unpark();
            let _ = handle.join();
        }
        // Whatever was pushed while the thread was finishing.
        drain(owner);
    }
}

/// Hands everything queued to `owner`, as one batch.
pub(super) fn drain<D: Drain + ?Sized>(owner: &D) {
    let Ok(rx) = owner.queue().rx.lock() else {
        return;
    };
    // Bounded, so a drain under sustained load ends and the log batch is written.
    let mut records = rx.try_iter().take(CAPACITY);
    let mut first = records.next();
    if first.is_none() {
        return;
    }
    let mut batch = std::iter::from_fn(|| first.take().or_else(|| records.next()));
    owner.handle(&mut batch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Collects the paths of handled records and says when a batch arrives.
    struct Collect {
        queue: Queue,
        seen: Mutex<Vec<String>>,
        batches: Mutex<mpsc::Sender<usize>>,
    }

    impl Drain for Collect {
        fn handle(&self, records: &mut dyn Iterator<Item = Record>) {
            let paths: Vec<String> = records.map(|r| r.http.path).collect();
            let n = paths.len();
            self.seen.lock().expect("seen").extend(paths);
            let _ = self.batches.lock().expect("tx").send(n);
        }
        fn queue(&self) -> &Queue {
            &self.queue
        }
    }

    fn record(path: &str) -> Record {
        let http = crate::observe::HttpFacts::from_request(
            &http::Method::GET,
            &path.parse().expect("uri"),
            http::Version::HTTP_11,
            &http::HeaderMap::new(),
            "127.0.0.1:1".parse().expect("addr"),
            "http",
        );
        Record::new(None, http)
    }

    fn collector() -> (Arc<Collect>, mpsc::Receiver<usize>) {
        let (tx, rx) = mpsc::channel();
        let c = Arc::new(Collect {
            queue: Queue::new(),
            seen: Mutex::new(Vec::new()),
            batches: Mutex::new(tx),
        });
        (c, rx)
    }

    #[test]
    fn records_are_drained_by_the_thread_in_order() {
        let (c, batches) = collector();
        Queue::start(&c).expect("thread");
        for i in 0..3 {
            assert!(c.queue.push(record(&format!("/{i}"))).is_ok());
        }
        let mut total = 0;
        while total < 3 {
            total += batches
                .recv_timeout(Duration::from_secs(10))
                .expect("a drain within the deadline");
        }
        assert_eq!(*c.seen.lock().expect("seen"), ["/0", "/1", "/2"]);
    }

    #[test]
    fn a_full_queue_refuses_and_stop_drains_everything() {
        // No thread: nothing drains until stop.
        let (c, _batches) = collector();
        for i in 0..CAPACITY {
            assert!(c.queue.push(record(&format!("/{i}"))).is_ok());
        }
        assert!(matches!(
            c.queue.push(record("/over")),
            Err(Refused::Full(_))
        ));
        Queue::stop(&*c);
        assert_eq!(c.seen.lock().expect("seen").len(), CAPACITY);
        assert!(matches!(
            c.queue.push(record("/late")),
            Err(Refused::Stopped(_))
        ));
    }
}
