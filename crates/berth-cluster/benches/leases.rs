//! What a lease round costs with many shops: three nodes (in this process, each with its
//! own connection) share SHOPS shops on a real 3-server JetStream cluster (R3, every
//! write synced). Measured: start → every shop held by the node rendezvous hashing
//! wants; a settled node's lease round (what each node spends every TTL/4 to keep its
//! leases: `LeaseView::last_round_ms`, sampled over 6 s); then one node leaves cleanly →
//! the other two hold all of its shops. Run:
//! `cargo bench -p berth-cluster --bench leases` (SHOPS=N, default 3000; ROUNDS=N,
//! default 2).

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use berth_cluster::lease::{Fence, Leases, ShopWorkers};
use berth_cluster::rendezvous;
use common::NatsCluster;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Workers that only note which shops run here.
#[derive(Default)]
struct Running(Mutex<BTreeSet<String>>);

impl ShopWorkers for Running {
    async fn start(&self, fence: Fence) {
        self.0.lock().unwrap().insert(fence.shop);
    }
    async fn stop(&self, shop: &str) {
        self.0.lock().unwrap().remove(shop);
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether every shop runs on exactly the node rendezvous hashing picks among `nodes`.
fn settled(shops: &BTreeSet<String>, nodes: &[(&str, &Running)]) -> bool {
    let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
    let total: usize = nodes.iter().map(|(_, r)| r.0.lock().unwrap().len()).sum();
    total == shops.len()
        && shops.iter().all(|s| {
            let want = rendezvous::owner(s, names.iter().copied()).expect("a node");
            nodes.iter().find(|(n, _)| *n == want).is_some_and(|(_, r)| r.0.lock().unwrap().contains(s))
        })
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(600), "{what}: not within 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn round(n_shops: usize) -> (Duration, Vec<u64>, Duration) {
    let nats = NatsCluster::start(3, true).await;
    let shops: BTreeSet<String> = (0..n_shops).map(|i| format!("shop-{i}")).collect();
    let (_tx, rx) = watch::channel(shops.clone());
    let names = ["node-a", "node-b", "node-c"];
    let mut running = Vec::new();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    // All three connected and heartbeating before the clock starts, so the first
    // claims already spread (what is measured is claiming, not joining).
    let mut leases = Vec::new();
    for name in names {
        let conn = berth_cluster::connect(&common::cluster_config(&nats, name, 6)).await.expect("connect");
        leases.push(Leases::new(conn, name.to_string(), Duration::from_secs(6), rx.clone()));
    }
    let started = Instant::now();
    for l in &leases {
        let workers = Arc::new(Running::default());
        let (stop, stopped) = watch::channel(false);
        tasks.push(tokio::spawn(l.clone().run(workers.clone(), stopped)));
        running.push(workers);
        stops.push(stop);
    }
    let all = [(names[0], &*running[0]), (names[1], &*running[1]), (names[2], &*running[2])];
    wait("every shop on its node", || settled(&shops, &all)).await;
    let spread = started.elapsed();
    // Settled: what a round costs each node now (two ticks for the first full rounds).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rounds = Vec::new();
    for _ in 0..30 {
        rounds.extend(leases.iter().filter_map(|l| l.view().last_round_ms));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rounds.sort();
    // node-a leaves cleanly: it releases its shops, the others claim them.
    let left = Instant::now();
    stops[0].send(true).expect("stop");
    let rest = [(names[1], &*running[1]), (names[2], &*running[2])];
    wait("node-a's shops on the others", || settled(&shops, &rest)).await;
    let handover = left.elapsed();
    for s in &stops {
        let _ = s.send(true);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    (spread, rounds, handover)
}

fn main() {
    let (n_shops, rounds) = (env("SHOPS", 3000), env("ROUNDS", 2));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("leases: {n_shops} shops, 3 nodes, 6 s lease, 3-server cluster (sync always)");
    println!("{:>5} {:>22} {:>26} {:>30}", "round", "start -> all spread ms", "settled round ms p50/max", "one node leaves -> handed ms");
    for r in 0..rounds {
        let (spread, settled, handover) = rt.block_on(round(n_shops));
        let p50 = settled.get(settled.len() / 2).copied().unwrap_or(0);
        let max = settled.last().copied().unwrap_or(0);
        println!("{:>5} {:>22} {:>26} {:>30}", r, spread.as_millis(), format!("{p50}/{max}"), handover.as_millis());
    }
}
