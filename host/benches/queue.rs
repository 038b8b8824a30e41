//! Durable queue benchmark: enqueue (returns after fsync) and ack (returns after fsync)
//! on a real disk, at 1, 16 and 256 concurrent producers, through berth-storage's
//! `StoreQueues` (one writer thread, fjall) and the `SledQueue` it replaces — and, in the
//! same run, the same work through NATS JetStream (file storage on the same disk) for
//! every `nats-server` found (see `nats::binaries`). `BENCH_QUEUES=store` skips sled.
//!
//! Run: `cargo bench -p berth-host --bench queue` (optionally `-- MESSAGES`).
//! Prints one row per system and producer count: messages/s from first enqueue to last
//! ack, p50/p99 latency of enqueue and of ack.

use berth_host::queue::{LeaseQueue, NewMessage, QueuePolicy, SledQueue};
use berth_storage::queue::StoreQueues;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[path = "common/nats.rs"]
mod nats;

use common::{count_arg, ms, percentile};

/// The three calls the bench makes, on either backend (each with its own trait).
trait BenchQueue: Send + Sync + 'static {
    fn enqueue(&self, m: NewMessage) -> impl std::future::Future<Output = ()> + Send;
    fn lease(&self, max: usize) -> impl std::future::Future<Output = Vec<Token>> + Send;
    fn ack(&self, t: &Token) -> impl std::future::Future<Output = ()> + Send;
    fn syncs(&self) -> u64;
}

type Token = berth_host::queue::LeaseToken;

impl BenchQueue for SledQueue {
    async fn enqueue(&self, m: NewMessage) {
        LeaseQueue::enqueue(self, "bench", m).await.expect("enqueue");
    }
    async fn lease(&self, max: usize) -> Vec<Token> {
        LeaseQueue::lease(self, "bench", max, Duration::from_secs(60)).await.expect("lease").into_iter().map(|l| l.token).collect()
    }
    async fn ack(&self, t: &Token) {
        LeaseQueue::ack(self, "bench", t).await.expect("ack");
    }
    fn syncs(&self) -> u64 {
        self.flush_count()
    }
}

impl BenchQueue for StoreQueues {
    async fn enqueue(&self, m: NewMessage) {
        let m = berth_storage::queue::NewMessage { partition: m.partition, payload: m.payload, idempotency_key: m.idempotency_key };
        berth_storage::queue::LeaseQueue::enqueue(self, "bench", m).await.expect("enqueue");
    }
    async fn lease(&self, max: usize) -> Vec<Token> {
        let leased = berth_storage::queue::LeaseQueue::lease(self, "bench", max, Duration::from_secs(60)).await.expect("lease");
        leased.into_iter().map(|l| Token { id: l.token.id, attempt: l.token.attempt, lease: l.token.lease }).collect()
    }
    async fn ack(&self, t: &Token) {
        let t = berth_storage::queue::LeaseToken { id: t.id, attempt: t.attempt, lease: t.lease.clone() };
        berth_storage::queue::LeaseQueue::ack(self, "bench", &t).await.expect("ack");
    }
    fn syncs(&self) -> u64 {
        self.flush_count()
    }
}

async fn run<Q: BenchQueue>(q: Q, producers: usize, messages: usize) -> (f64, Vec<Duration>, Vec<Duration>, u64) {
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
                    q.enqueue(m).await;
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
                    let leased = q.lease(32).await;
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
                                q.ack(&l).await;
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
    (total as f64 / start.elapsed().as_secs_f64(), enq, ack, q.syncs())
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
        println!("no nats-server found (scripts/toolchains installs them; NATS_SERVER=path picks one): sled rows only");
    }
    println!("| system | producers | msgs/s | enqueue p50 | enqueue p99 | ack p50 | ack p99 | fsyncs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let payload = vec![b'x'; 512];
    let with_sled = std::env::var("BENCH_QUEUES").map_or(true, |v| v != "store");
    for producers in [1, 16, 256] {
        // On the project's disk, not a tmpfs: the point is real fsync.
        let dir = tempfile::tempdir_in(&disk).expect("temp dir");
        let store = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig::default()).expect("open store");
        let q = StoreQueues::open(&store, berth_storage::queue::QueuePolicy::default()).expect("open queues");
        let (rate, enq, ack, syncs) = rt.block_on(run(q, producers, messages));
        row("berth StoreQueues (fjall)", producers, rate, &enq, &ack, &syncs.to_string());
        if with_sled {
            let dir = tempfile::tempdir_in(&disk).expect("temp dir");
            let q = rt.block_on(async { SledQueue::new(sled::open(dir.path()).expect("open sled"), QueuePolicy::default()) });
            let (rate, enq, ack, flushes) = rt.block_on(run(q, producers, messages));
            row("berth SledQueue", producers, rate, &enq, &ack, &flushes.to_string());
        }
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
