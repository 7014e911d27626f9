//! Proxy worker threads: one current-thread tokio runtime per core, each accepting on its own
//! `SO_REUSEPORT` listener and forwarding over its own upstream pool.
//!
//! Why: with one multi-thread runtime, a request's tasks (the connection, the upstream
//! connection, the body) wake each other across cores: a profile of the proxy under load spent
//! 43% of its time in the kernel, mostly scheduler wake-ups and futexes. Here the kernel spreads
//! new connections over the workers' listeners, and a request is then read, forwarded and
//! answered on one thread, where a wake-up is a queue push. The admin listener, health checks,
//! signal handling and the OTLP exporters stay on the small multi-thread runtime that started
//! the server (the tonic exporter deadlocks on a current-thread runtime).

use std::cell::Cell;
use std::net::SocketAddr;

use tokio::net::TcpSocket;

thread_local! {
    /// The index of the worker this thread is, or `None` off the workers.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    /// Set once the drain timeout has passed on this worker: the exchanges dropped from here
    /// on are cancelled by shutdown, not by their clients. Thread-local because they are
    /// dropped on the worker that served them, so nothing per request has to carry it.
    static CLOSING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread's worker is closing its remaining connections at the drain timeout.
pub fn closing() -> bool {
    CLOSING.with(Cell::get)
}

/// Marks this thread's worker as closing its remaining connections (see [`closing`]).
pub(crate) fn start_closing() {
    CLOSING.with(|c| c.set(true));
}

/// The index of the worker thread running this code, `None` on any other thread.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// One value per worker plus one for every other thread (the control runtime: admin, health
/// checks), each used only by its own thread, so nothing in it is shared across cores.
#[derive(Debug)]
pub struct PerWorker<T> {
    items: Box<[T]>,
}

impl<T> PerWorker<T> {
    /// Builds `workers + 1` values with `make(index)`; the last one serves non-worker threads.
    pub fn new<E>(workers: usize, mut make: impl FnMut(usize) -> Result<T, E>) -> Result<Self, E> {
        let items = (0..=workers)
            .map(&mut make)
            .collect::<Result<Vec<T>, E>>()?;
        Ok(PerWorker {
            items: items.into_boxed_slice(),
        })
    }

    /// The calling thread's value.
    pub fn get(&self) -> &T {
        let last = self.items.len() - 1;
        let index = current().map_or(last, |i| i.min(last));
        &self.items[index]
    }
}

/// Binds `count` listeners on `addr` with `SO_REUSEPORT`, so the kernel spreads connections
/// over them. With port 0 the first picks the port and the others join it. They are returned
/// as std listeners so that each can be registered with its own worker's runtime.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        // A restarted sidecar must be able to bind while old connections sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        let listener = socket.listen(4096)?;
        at = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Starts worker `index` on its own thread: a current-thread runtime running `serve` to its
/// end. Returns a receiver that resolves when the worker has finished (or died).
pub fn spawn<F, Fut>(index: usize, serve: F) -> std::io::Result<tokio::sync::oneshot::Receiver<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("ragscope-worker-{index}"))
        .spawn(move || {
            WORKER.with(|w| w.set(Some(index)));
            runtime.block_on(serve());
            // Tasks the listener did not track (HTTP/2 stream bodies, upstream connections)
            // are dropped here, on this thread, still marked as closing: their exchanges are
            // recorded as cancelled by shutdown before the server flushes telemetry.
            drop(runtime);
            let _ = done.send(());
        })?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_gets_its_own_value() {
        let values = PerWorker::new(2, Ok::<_, ()>).expect("builds");
        assert_eq!(*values.get(), 2, "non-worker threads use the last value");
        WORKER.with(|w| w.set(Some(1)));
        assert_eq!(*values.get(), 1);
        WORKER.with(|w| w.set(None));
    }

    #[tokio::test]
    async fn port_zero_is_shared_by_every_listener() {
        let listeners = bind_reuseport("127.0.0.1:0".parse().expect("addr"), 3).expect("binds");
        let port = listeners[0].local_addr().expect("addr").port();
        assert_ne!(port, 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("addr").port(), port);
        }
    }
}
