//! The store at size: start-up with many stored orders and queued messages, what a
//! scrape costs at any size, and the disk after a long churn.
//!
//! Run: `cargo bench -p berth-host --bench storage` (optionally `-- ORDERS`, default
//! 1,000,000; 100,000 queued messages beside them).
//!
//! 1. Start-up: a data dir with ORDERS feed entries and 100,000 queued orders, written
//!    through the store's own API; then the real `berth` binary is started on it and
//!    timed to "listening" (three starts), beside a data dir with 10 orders.
//! 2. Scrapes: `GET /metrics` and `GET /v1/status` on both running berths, 200 each,
//!    alternating: p50 and p99.
//! 3. Churn: 1,000,000 messages enqueued and acked in batches; the store's size on disk
//!    with 100,000 live, at the end of the churn, and once compaction caught up —
//!    bytes per live message.

use berth_core::queue::{LeaseQueue, NewMessage, QueuePolicy, StoreQueues};
use berth_core::store::{OrderData, OrderStore, PageSource, SyncState};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{count_arg, ms, percentile};

fn order(i: u64) -> OrderData {
    OrderData {
        order_id: format!("{}", 10_000_000 + i),
        status: berth_types::connector::OrderStatus::Paid,
        platform_status: "PAID".into(),
        created_at_ms: 1_790_000_000_000,
        updated_at_ms: 1_790_000_000_000 + i as i64,
        currency: "USD".into(),
        total_minor: 1999,
        lines: vec![berth_core::store::OrderLineRecord { line_id: "1".into(), sku: format!("SKU-{}", i % 1000), title: "Tee".into(), quantity: 1, unit_price_minor: 1999 }],
        buyer_name_masked: "J***".into(),
        buyer_phone_masked: String::new(),
        raw: serde_json::json!({"id": 10_000_000 + i, "financial_status": "paid"}),
    }
}

/// A data dir with `orders` feed entries and `queued` orders waiting in the queue.
async fn fill(data: &Path, orders: u64, queued: u64) {
    let storage = berth_storage::Store::open(&data.join("store"), berth_storage::StoreConfig::default()).expect("store");
    let store = Arc::new(OrderStore::on(&storage).expect("orders"));
    let queue = Arc::new(StoreQueues::open(&storage, QueuePolicy::default()).expect("queue"));
    let page = 1000u64;
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, queue) = (store.clone(), queue.clone());
            tokio::spawn(async move {
                let mut p = w;
                while p * page < orders {
                    let batch: Vec<OrderData> = (p * page..((p + 1) * page).min(orders)).map(order).collect();
                    let shop = format!("shop{}", p % 50);
                    let src = PageSource { shop: &shop, platform: "shopify", connector_version: "1.0.0" };
                    if p * page < queued {
                        let msgs = batch
                            .iter()
                            .map(|o| NewMessage { partition: shop.clone(), payload: serde_json::to_vec(o).expect("json"), idempotency_key: Some(format!("{shop}/{}", o.order_id)) })
                            .collect();
                        queue.enqueue_many("orders", msgs).await.expect("enqueue");
                    }
                    store.commit_page(&src, &batch, &SyncState::default()).await.expect("commit");
                    p += 4;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(store.feed_len() as u64, orders);
}

/// A running `berth serve` on `data`, and how long it took to say it listens.
struct Running {
    child: std::process::Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> (Running, Duration) {
    let config = dir.join("berth.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n").expect("config");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn berth");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("berth exited before listening").expect("read stdout");
        if let Some(addr) = line.strip_prefix("berth listening on ") {
            break addr.trim().to_string();
        }
    };
    let took = started.elapsed();
    std::thread::spawn(move || lines.for_each(drop));
    (Running { child, url }, took)
}

/// Bytes the files under `dir` take on disk (blocks: the journal is preallocated sparse).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn scrape(client: &reqwest::Client, url: &str) -> Duration {
    let t = Instant::now();
    let r = client.get(url).send().await.expect("scrape");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.bytes().await.expect("body");
    t.elapsed()
}

async fn churn(dir: &Path) {
    let storage = berth_storage::Store::open(dir, berth_storage::StoreConfig::default()).expect("store");
    let queue = StoreQueues::open(&storage, QueuePolicy::default()).expect("queue");
    let msg = |i: u64| NewMessage { partition: format!("shop{}", i % 50), payload: vec![b'x'; 512], idempotency_key: None };
    let live = 100_000u64;
    for b in 0..live / 1000 {
        queue.enqueue_many("churn", (b * 1000..(b + 1) * 1000).map(msg).collect()).await.expect("enqueue");
    }
    let with_live = dir_bytes(dir);
    println!("| {live} live messages (512-byte payloads) | {} MB | {} bytes per live message |", with_live / 1_000_000, with_live / live);
    let total = 1_000_000u64;
    let started = Instant::now();
    let mut peak = with_live;
    for b in 0..total / 1000 {
        queue.enqueue_many("churn", (b * 1000..(b + 1) * 1000).map(msg).collect()).await.expect("enqueue");
        let leased = queue.lease("churn", 1000, Duration::from_secs(60)).await.expect("lease");
        let tokens: Vec<_> = leased.into_iter().map(|l| l.token).collect();
        queue.ack_many("churn", &tokens).await.expect("ack");
        if b % 100 == 0 {
            peak = peak.max(dir_bytes(dir));
        }
    }
    let leased = queue.lease("churn", 1_000_000, Duration::from_secs(60)).await.expect("lease");
    let tokens: Vec<_> = leased.into_iter().map(|l| l.token).collect();
    for chunk in tokens.chunks(1000) {
        queue.ack_many("churn", chunk).await.expect("ack");
    }
    assert_eq!(queue.stats("churn").expect("stats").ready, 0);
    let after = dir_bytes(dir);
    println!("| {total} more enqueued, leased and acked in batches of 1000 ({:.0} s), then all acked | peak {} MB | {} MB at the end |", started.elapsed().as_secs_f64(), peak / 1_000_000, after / 1_000_000);
    // Idle, the writer has the engine flush its memtables and the journal goes.
    let settle = Instant::now();
    let mut last = after;
    while settle.elapsed() < Duration::from_secs(60) && last > 16 * 1_000_000 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = dir_bytes(dir);
    }
    println!("| idle {:.1} s later, nothing live | | {} MB |", settle.elapsed().as_secs_f64(), last / 1_000_000);
    drop((queue, storage));
    println!("| the store closed | | {} MB |", dir_bytes(dir) / 1_000_000);
}

fn main() {
    let orders = count_arg(1_000_000) as u64;
    let queued = 100_000u64.min(orders);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let disk = std::env::current_dir().expect("cwd");
    let big = tempfile::tempdir_in(&disk).expect("temp dir");
    let small = tempfile::tempdir_in(&disk).expect("temp dir");
    let t = Instant::now();
    rt.block_on(fill(&big.path().join("data"), orders, queued));
    println!("wrote {orders} orders and {queued} queued in {:.1} s ({} MB on disk)", t.elapsed().as_secs_f64(), dir_bytes(big.path()) / 1_000_000);
    rt.block_on(fill(&small.path().join("data"), 10, 10));

    println!("\n| data dir | start to listening (3 starts) |");
    println!("|---|---|");
    for (name, dir) in [(format!("{orders} orders, {queued} queued"), big.path()), ("10 orders, 10 queued".to_string(), small.path())] {
        let took: Vec<String> = (0..3).map(|_| ms(start(dir).1)).collect();
        println!("| {name} | {} ms |", took.join(" / "));
    }

    let (big_berth, _) = start(big.path());
    let (small_berth, _) = start(small.path());
    let client = reqwest::Client::new();
    println!("\n| request | {orders} orders: p50 / p99 | 10 orders: p50 / p99 |");
    println!("|---|---|---|");
    for path in ["/metrics", "/v1/status"] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for _ in 0..200 {
                a.push(scrape(&client, &format!("{}{path}", big_berth.url)).await);
                b.push(scrape(&client, &format!("{}{path}", small_berth.url)).await);
            }
        });
        a.sort();
        b.sort();
        println!("| GET {path} | {} / {} ms | {} / {} ms |", ms(percentile(&a, 0.5)), ms(percentile(&a, 0.99)), ms(percentile(&b, 0.5)), ms(percentile(&b, 0.99)));
    }
    drop((big_berth, small_berth));

    println!("\n| churn | store size | |");
    println!("|---|---|---|");
    let churn_dir = tempfile::tempdir_in(&disk).expect("temp dir");
    rt.block_on(churn(churn_dir.path()));
}
