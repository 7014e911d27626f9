//! Memory: large bodies stream through without growing the process.

use super::*;

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_through_without_growing_the_process() {
    const SIZE: usize = 64 << 20;
    let up = Upstream::start().await;
    let mut ragscope = Proxy::builder()
        .upstream(&up)
        .env("RAGSCOPE_MAX_REQUEST_BODY", "128MiB")
        .spawn();
    let (proxy, _) = ragscope.wait_serving().await;
    let client = Client::http1();

    // Warm up: pools, buffers and the allocator's arenas exist before the baseline.
    for _ in 0..2 {
        let reply = client
            .request(
                request(Method::POST, &format!("http://{proxy}/upload"))
                    .body(Full::new(Bytes::from(vec![1u8; 1 << 20])))
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.json()["bytes"], 1 << 20);
        assert_eq!(
            client.get(format!("http://{proxy}/large")).await.body.len(),
            1 << 20
        );
    }
    let baseline = ragscope.rss_kib();
    let sampler = RssSampler::start(ragscope.pid());

    let reply = client
        .request(
            request(Method::POST, &format!("http://{proxy}/upload"))
                .body(Full::new(Bytes::from(vec![42u8; SIZE])))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["bytes"],
        SIZE as u64,
        "the whole upload arrived"
    );

    let res = client
        .get_streaming(format!("http://{proxy}/large?bytes={SIZE}"))
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("download frame").data_ref() {
            received += data.len();
        }
    }
    assert_eq!(received, SIZE, "the whole download arrived");

    let peak = sampler.stop().max(ragscope.rss_kib());
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 24 * 1024,
        "RSS grew {growth} KiB (baseline {baseline} KiB, peak {peak} KiB) moving 2 x 64 MiB: bodies are buffered"
    );
    ragscope.signal("TERM");
    let status = ragscope
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
}

/// Samples a process's resident memory every 10 ms on its own thread and keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = vm_rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                // The sampling period, not a synchronisation: the peak is what is measured.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { stop, peak, thread }
    }

    /// Stops sampling and returns the peak in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}
