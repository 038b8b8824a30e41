//! What cluster mode's state costs on a real 3-server JetStream cluster (R3, every write
//! synced) on this machine: appending pages of orders (fenced atomic batches), leader
//! reads (what lease checks and dedupe cost), and the ERP queue (lease + ack). Inputs
//! to the capacity model in docs/cluster.md. Run:
//! `cargo bench -p berth-cluster --bench cluster` (ROUNDS=N, default 3, alternating).

#[path = "../tests/common/mod.rs"]
mod common;

use berth_cluster::classes::ALL;
use berth_cluster::feed::{self, FeedEntry, OrderQueue, QueueSettings};
use berth_cluster::lease::owner_key;
use berth_cluster::Connection;
use common::NatsCluster;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

fn page(round: usize, shop: usize, n: usize, size: usize) -> Vec<FeedEntry> {
    (0..n)
        .map(|i| {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&((round * 1_000_000 + shop * 10_000 + i) as u64).to_be_bytes());
            FeedEntry { order_id: format!("o-{round}-{shop}-{i}"), updated_at_ms: 1, digest, record: vec![b'x'; size].into() }
        })
        .collect()
}

/// `writers` shops appending `pages` pages of 50 orders each, concurrently.
async fn append(conn: &Connection, round: usize, writers: usize, pages: usize) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let fence = common::claim(&conn, &format!("bench-{w}"), "bench").await;
                let mut lat = Vec::new();
                for p in 0..pages {
                    let entries = page(round * 1000 + p, w, 50, 1200);
                    let t = Instant::now();
                    let out = feed::append_page(&conn, &fence, ALL, &entries, Some(format!("{p}").into())).await.expect("append");
                    assert_eq!(out.added, 50);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    ((writers * pages * 50) as f64 / start.elapsed().as_secs_f64(), lat)
}

async fn leader_reads(conn: &Connection, n: usize) -> Vec<Duration> {
    let mut lat = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        conn.latest_shop_key(&owner_key(&format!("bench-{}", i % 8))).await.expect("read");
        lat.push(t.elapsed());
    }
    lat
}

async fn drain(queue: &OrderQueue, total: usize, visibility: Duration) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let mut acks = Vec::new();
    let mut done = 0;
    while done < total {
        let leased = queue.lease(100, Duration::from_millis(500), visibility).await.expect("lease");
        let tokens: Vec<_> = leased.iter().map(|l| l.token.clone()).collect();
        let t = Instant::now();
        for r in queue.ack_many(&tokens).await {
            r.expect("ack");
        }
        if !tokens.is_empty() {
            acks.push(t.elapsed());
        }
        done += leased.len();
    }
    (done as f64 / start.elapsed().as_secs_f64(), acks)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let nats = NatsCluster::start(3, true).await;
    let conn = berth_cluster::connect(&common::cluster_config(&nats, "bench", 15)).await.expect("connect");
    let queue = OrderQueue::open(&conn, "erp", ALL, QueueSettings { visibility: Duration::from_secs(60), max_attempts: 5 }).await.expect("queue");
    println!("3 x nats-server 2.15 on loopback, R3, sync_interval: always; pages of 50 orders of 1.2 KB");
    println!("| round | what | orders/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for round in 0..rounds {
        // Alternate the order of the two append shapes between rounds (this machine drifts).
        let shapes: [usize; 2] = if round % 2 == 0 { [1, 8] } else { [8, 1] };
        for writers in shapes {
            let (rate, mut lat) = append(&conn, round * 10 + writers, writers, 160 / writers).await;
            println!("| {round} | append, {writers} shop(s) at once | {rate:.0} | {:.2} | {:.2} |", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        }
        let mut reads = leader_reads(&conn, 500).await;
        println!("| {round} | leader read (lease check, dedupe) | {:.0}/s | {:.2} | {:.2} |", 500.0 / reads.iter().map(|d| d.as_secs_f64()).sum::<f64>(), pct(&mut reads, 0.5), pct(&mut reads, 0.99));
        // Half the round's orders leased for the ack wait (no timer), half for 30 s (a
        // timer per lease on this node, dropped by the ack), in alternating order.
        let visibilities = if round % 2 == 0 { [60, 30] } else { [30, 60] };
        for secs in visibilities {
            let (rate, mut acks) = drain(&queue, 160 * 50, Duration::from_secs(secs)).await;
            let what = if secs == 60 { "ack wait, no timer" } else { "30 s, a timer each" };
            println!("| {round} | ERP lease 100 ({what}) + ack_many (p: per batch) | {rate:.0} | {:.2} | {:.2} |", pct(&mut acks, 0.5), pct(&mut acks, 0.99));
        }
    }
}
