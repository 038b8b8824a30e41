//! Durable queue benchmark: enqueue (returns after fsync) and ack (returns after fsync)
//! on a real disk, at 1, 16 and 256 concurrent producers, through berth-storage's
//! `StoreQueues` (one writer thread, fjall) — and, in the same run, the same work through
//! NATS JetStream (file storage on the same disk) for every `nats-server` found (see
//! `nats::binaries`). The sled queue it replaced is in BENCHMARKS.md section 2.
//!
//! Run: `cargo bench -p berth-host --bench queue` (optionally `-- MESSAGES`;
//! `QUEUE_BENCH_PRODUCERS=16,256` for some rows only).
//! Prints one row per system and producer count: messages/s from first enqueue to last
//! ack, p50/p99 latency of enqueue and of ack.

use berth_storage::queue::{LeaseQueue, NewMessage, QueuePolicy, StoreQueues};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[path = "common/nats.rs"]
mod nats;

use common::{count_arg, ms, percentile};

async fn run(q: StoreQueues, producers: usize, messages: usize) -> (f64, Vec<Duration>, Vec<Duration>, u64) {
    let q = Arc::new(q);
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

    let (enq, ack) = latencies(prod, cons).await;
    (total as f64 / start.elapsed().as_secs_f64(), enq, ack, q.flush_count())
}

type Latencies = Vec<tokio::task::JoinHandle<Vec<Duration>>>;

/// Wait for the producers and consumers: their enqueue and ack latencies, sorted.
async fn latencies(producers: Latencies, consumers: Latencies) -> (Vec<Duration>, Vec<Duration>) {
    let mut sorted = Vec::new();
    for (tasks, what) in [(producers, "producer"), (consumers, "consumer")] {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_else(|e| panic!("{what}: {e}")));
        }
        all.sort();
        sorted.push(all);
    }
    let ack = sorted.pop().expect("two");
    (sorted.pop().expect("two"), ack)
}

fn row(system: &str, producers: usize, rate: f64, enq: &[Duration], ack: &[Duration], fsyncs: &str) {
    println!(
        "| {system} | {producers} | {rate:.0} | {} | {} | {} | {} | {fsyncs} |",
        ms(percentile(enq, 0.5)),
        ms(percentile(enq, 0.99)),
        ms(percentile(ack, 0.5)),
        ms(percentile(ack, 0.99)),
    );
}

fn main() {
    let messages = count_arg(4096);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let disk = std::env::current_dir().expect("cwd");
    let servers = nats::binaries(&workspace);
    println!("durable enqueue+ack, 512-byte payloads, {messages} messages per row, latencies in ms");
    for s in &servers {
        let sync = if s.sync_always { "sync_interval: always (fsync before every PubAck)" } else { "no per-message fsync (this version syncs on a timer)" };
        println!("NATS JetStream {} at {}: file storage, {sync}", s.version, s.path.display());
    }
    if servers.is_empty() {
        println!("no nats-server found (scripts/toolchains installs them; NATS_SERVER=path picks one): berth rows only");
    }
    println!("| system | producers | msgs/s | enqueue p50 | enqueue p99 | ack p50 | ack p99 | fsyncs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let payload = vec![b'x'; 512];
    // `QUEUE_BENCH_PRODUCERS=256` runs one row (scripts/queue-hang-check reruns it).
    let rows: Vec<usize> = match std::env::var("QUEUE_BENCH_PRODUCERS") {
        Ok(v) => v.split(',').map(|p| p.trim().parse().expect("QUEUE_BENCH_PRODUCERS: numbers")).collect(),
        Err(_) => vec![1, 16, 256],
    };
    for producers in rows {
        // On the project's disk, not a tmpfs: the point is real fsync.
        let dir = tempfile::tempdir_in(&disk).expect("temp dir");
        let store = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig::default()).expect("open store");
        let q = StoreQueues::open(&store, QueuePolicy::default()).expect("open queues");
        let (rate, enq, ack, syncs) = rt.block_on(run(q, producers, messages));
        row("berth StoreQueues (fjall)", producers, rate, &enq, &ack, &syncs.to_string());
        for s in &servers {
            let (rate, enq, ack) = rt.block_on(async {
                let server = nats::NatsServer::start(s, &disk).await;
                nats::run(&server, producers, messages, &payload).await
            });
            let name = format!("NATS JetStream {}{}", s.version, if s.sync_always { ", sync always" } else { ", timer sync" });
            row(&name, producers, rate, &enq, &ack, "");
        }
    }
}
