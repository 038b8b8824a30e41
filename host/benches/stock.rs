//! Stock ledger benchmark: durable submits from concurrent ERP clients, then the
//! pusher's side (take what is due, wait for disk, settle) without a connector, so the
//! figures are the ledger's own cost per SKU.
//!
//! Run: `cargo bench -p berth-host --bench stock` (optionally `-- UPDATES`).
//! Each submit carries one SKU out of 1000 (so many coalesce) and returns after fsync.
//! Each row runs twice, interleaved: on the embedded store, and in cluster mode on a
//! 3-server JetStream cluster with `sync_interval: always` on this machine
//! (`NATS_SERVER`, else the one `scripts/toolchains` installs), the same work.

use berth_cluster::lease::FenceSource;
use berth_cluster::Fence;
use berth_core::stock::ledger::RetryPolicy;
use berth_core::stock::{PushOutcome, StockLedger, StockRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[allow(dead_code)]
#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats_cluster;

use common::{count_arg, ms, percentile};

/// The bench's node holds the shop's lease (taken before the run).
struct Held(Fence);

impl FenceSource for Held {
    fn fence(&self, shop: &str) -> Option<Fence> {
        (shop == self.0.shop).then(|| self.0.clone())
    }
}

enum Backend {
    Embedded,
    Cluster,
}

struct Row {
    submits_per_s: f64,
    lat: Vec<Duration>,
    pushed: usize,
    settle_per_s: f64,
    flushes: u64,
}

async fn run(backend: Backend, clients: usize, updates: usize) -> Row {
    // On the project's disk, not a tmpfs: the point is real fsync.
    let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("temp dir");
    let store = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig::default()).expect("open store");
    let policy = RetryPolicy::new(1000, 60_000, 10);
    let mut _nats = None;
    let ledger = Arc::new(match backend {
        Backend::Embedded => StockLedger::open(&store, policy).expect("ledger"),
        Backend::Cluster => {
            let nats = nats_cluster::NatsCluster::start(3, true).await;
            let conn = nats_cluster::connect(&nats, "bench").await;
            let fence = nats_cluster::claim(&conn, "shop", "bench").await;
            let ledger = StockLedger::open_cluster(&conn, policy, Arc::new(Held(fence))).await.expect("cluster ledger");
            _nats = Some(nats);
            ledger
        }
    });
    let per = updates / clients;
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let sku = format!("SKU-{:04}", (c * 7919 + i * 104_729) % 1000);
                    let req = [StockRequest { sku, quantity: (i + 1) as u32, seq: None }];
                    let t = Instant::now();
                    ledger.submit("shop", &req).await.expect("submit");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client"));
    }
    let submits_per_s = (per * clients) as f64 / start.elapsed().as_secs_f64();
    lat.sort();

    // The pusher's side: batches of 50, durable before "sending", settled after.
    let start = Instant::now();
    let mut pushed = 0;
    let mut split = [Duration::ZERO; 3];
    loop {
        let t = Instant::now();
        let batch = ledger.due("shop", i64::MAX - 1, 50).expect("due");
        split[0] += t.elapsed();
        if batch.is_empty() {
            break;
        }
        let t = Instant::now();
        ledger.durable().await.expect("durable");
        split[1] += t.elapsed();
        let results: Vec<_> = batch.iter().map(|r| (r.sku.clone(), r.version, r.quantity, PushOutcome::Accepted)).collect();
        let t = Instant::now();
        ledger.settle("shop", &results).await.expect("settle");
        split[2] += t.elapsed();
        pushed += batch.len();
    }
    eprintln!("pusher side: due {:?}, durable {:?}, settle {:?}", split[0], split[1], split[2]);
    Row { submits_per_s, lat, pushed, settle_per_s: pushed as f64 / start.elapsed().as_secs_f64(), flushes: store.stats().syncs.load(std::sync::atomic::Ordering::Relaxed) }
}

fn main() {
    let updates = count_arg(4096);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("stock ledger: {updates} one-SKU submits over 1000 SKUs per row, each returning after fsync");
    println!("{:>8} {:>7} {:>10} {:>9} {:>9} {:>11} {:>12} {:>8}", "store", "clients", "submits/s", "p50", "p99", "SKUs pushed", "settled/s", "fsyncs");
    for clients in [1, 16, 256] {
        for (name, backend) in [("embedded", Backend::Embedded), ("cluster", Backend::Cluster)] {
        let r = rt.block_on(run(backend, clients, updates));
        println!(
            "{:>8} {:>7} {:>10.0} {:>9} {:>9} {:>11} {:>12.0} {:>8}",
            name,
            clients,
            r.submits_per_s,
            ms(percentile(&r.lat, 0.5)),
            ms(percentile(&r.lat, 0.99)),
            r.pushed,
            r.settle_per_s,
            r.flushes
        );
        }
    }
    println!("(latencies in ms; SKUs pushed < submits: updates to the same SKU coalesced; fsyncs: the embedded store's, 0 in cluster mode where the servers sync)");
}
