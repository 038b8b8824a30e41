//! Durable queue benchmark: enqueue (returns after fsync) and ack (returns after fsync)
//! through `SledQueue` on a real disk, at 1, 16 and 256 concurrent producers.
//!
//! Run: `cargo bench -p berth-host --bench queue` (optionally `-- MESSAGES`).
//! Prints one row per producer count: messages/s from first enqueue to last ack, and
//! p50/p99 latency of enqueue and of ack.

use berth_host::queue::{LeaseQueue, NewMessage, QueuePolicy, SledQueue};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{count_arg, ms, percentile};

async fn run(producers: usize, messages: usize) -> (f64, Vec<Duration>, Vec<Duration>, u64) {
    // On the project's disk, not a tmpfs: the point is real fsync.
    let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("temp dir");
    let q = Arc::new(SledQueue::new(sled::open(dir.path()).expect("open sled"), QueuePolicy::default()));
    let payload = vec![b'x'; 512];
    let per = messages / producers;
    let total = per * producers;
    let start = Instant::now();

    let prod: Vec<_> = (0..producers)
        .map(|p| {
            let (q, payload) = (q.clone(), payload.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let m = NewMessage { partition: format!("shop{}/sku{i}", p % 32), payload: payload.clone(), idempotency_key: Some(format!("{p}-{i}")) };
                    let t = Instant::now();
                    q.enqueue("bench", m).await.expect("enqueue");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();

    // Consumers ack concurrently, as many as producers up to 16.
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cons: Vec<_> = (0..producers.min(16))
        .map(|_| {
            let (q, acked) = (q.clone(), acked.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while acked.load(std::sync::atomic::Ordering::SeqCst) < total {
                    let leased = q.lease("bench", 32, Duration::from_secs(60)).await.expect("lease");
                    if leased.is_empty() {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let acks: Vec<_> = leased
                        .into_iter()
                        .map(|l| {
                            let q = q.clone();
                            tokio::spawn(async move {
                                let t = Instant::now();
                                q.ack("bench", &l.token).await.expect("ack");
                                t.elapsed()
                            })
                        })
                        .collect();
                    for a in acks {
                        lat.push(a.await.expect("ack task"));
                        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                lat
            })
        })
        .collect();

    let mut enq = Vec::new();
    for p in prod {
        enq.extend(p.await.expect("producer"));
    }
    let mut ack = Vec::new();
    for c in cons {
        ack.extend(c.await.expect("consumer"));
    }
    let elapsed = start.elapsed();
    enq.sort();
    ack.sort();
    (total as f64 / elapsed.as_secs_f64(), enq, ack, q.flush_count())
}

fn main() {
    let messages = count_arg(4096);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("durable enqueue+ack, 512-byte payloads, {messages} messages per row, fsync on every ack");
    println!("{:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}", "producers", "msgs/s", "enq p50", "enq p99", "ack p50", "ack p99", "fsyncs");
    for producers in [1, 16, 256] {
        let (rate, enq, ack, flushes) = rt.block_on(run(producers, messages));
        println!(
            "{:>9} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>8}",
            producers,
            rate,
            ms(percentile(&enq, 0.5)),
            ms(percentile(&enq, 0.99)),
            ms(percentile(&ack, 0.5)),
            ms(percentile(&ack, 0.99)),
            flushes
        );
    }
    println!("(latencies in ms)");
}
