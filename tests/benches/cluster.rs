//! Cluster mode end to end: real `berth` processes (release) against the simulator, on
//! the embedded store and in cluster mode with 1, 2 and 3 nodes over a 3-server NATS
//! cluster (`sync_interval: always`), on the same work; then failover times.
//!
//! Run: `cargo build --release -p berth-host && cargo bench -p berth-tests --bench cluster`
//! (`-- ROUNDS`, default 2: the four set-ups run in turn, ROUNDS times, so machine drift
//! hits them alike; `CLUSTER_BENCH_KILLS`, default 20, for the failover part).
//!
//! Rows, per set-up and round:
//! - orders/s: 12 shops (8 Shopify, 4 Taobao) with `ORDERS` orders each in their
//!   history; from the nodes listening until an ERP (4 clients, spread over the nodes,
//!   leasing 500 and acking them in one call) has acked every order.
//! - stock submits/s and settled/s: 8 clients post `STOCK_POSTS` updates of 5 SKUs each
//!   (rising quantities) over the nodes; submits/s is the posts' rate, settled/s the
//!   updates over the time until every shop's platform shows the newest quantities.
//! - failover (3 nodes, lease TTL 4 s): kill -9 the node running the most shops after a
//!   new order was created on each of its shops; per shop, the time from the kill to the
//!   order in the feed (its next successful pull, on another node); the node is started
//!   again and the shops settle before the next kill. p50 and max over every shop of
//!   every kill.
//!
//! Every process shares this machine's two cores: the three NATS servers, the berth
//! nodes, the simulator and the ERP clients. More nodes add no cores here; the curve
//! shows what cluster mode costs per node, not how it scales on more machines.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
#[allow(dead_code)]
mod nats;
#[path = "../tests/cluster_common/mod.rs"]
mod cluster_common;

use berth_tests::{poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ORDERS: usize = 400;
const STOCK_POSTS: usize = 2_000;

#[derive(Clone, Copy, Debug)]
enum Setup {
    Embedded,
    Cluster(usize),
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Embedded => "embedded, 1 node".into(),
            Setup::Cluster(n) => format!("cluster, {n} node{}", if n == 1 { "" } else { "s" }),
        }
    }
}

struct Figures {
    orders_per_s: f64,
    submits_per_s: f64,
    settled_per_s: f64,
}

async fn start_nodes(setup: Setup, dir: &std::path::Path, sim: &berth_sim::SimHandle, nats: Option<&NatsCluster>, shops: &[(berth_sim::Platform, String)]) -> Vec<Berth> {
    let n = match setup {
        Setup::Embedded => 1,
        Setup::Cluster(n) => n,
    };
    let mut nodes = Vec::new();
    for i in 0..n {
        let config = node_config(dir, &format!("b{}", i + 1), &sim.base_url(), nats, shops, 4, berth_tests::NO_MANIFEST_RATES);
        nodes.push(tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap());
    }
    nodes
}

async fn run(setup: Setup) -> Figures {
    let shops = shops(8, 4);
    let sim = sim(&shops, ORDERS).await;
    let nats = match setup {
        Setup::Embedded => None,
        Setup::Cluster(_) => Some(NatsCluster::start(3, true).await),
    };
    let dir = tempfile::tempdir().unwrap();
    let total = platform_versions(&sim, &shops).len();
    let t0 = Instant::now();
    let nodes = start_nodes(setup, dir.path(), &sim, nats.as_ref(), &shops).await;
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();

    // Orders: pulled, stored, leased and acked.
    let acked = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..4)
        .map(|c| {
            let (url, acked) = (urls[c % urls.len()].clone(), acked.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while acked.load(Ordering::Relaxed) < total {
                    let Ok(r) = client.post(format!("{url}/v1/orders/lease")).json(&json!({"max": 500, "visibility_secs": 60})).send().await else { continue };
                    let leased: Value = r.json().await.unwrap_or_default();
                    let tokens: Vec<Value> = leased["leases"].as_array().cloned().unwrap_or_default().into_iter().map(|l| l["token"].clone()).collect();
                    if tokens.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let a: Value = client.post(format!("{url}/v1/orders/ack")).json(&json!({ "tokens": tokens })).send().await.unwrap().json().await.unwrap();
                    acked.fetch_add(a["done"].as_u64().unwrap_or(0) as usize, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let done = poll_until(Duration::from_secs(600), || async { (acked.load(Ordering::Relaxed) >= total).then_some(()) }).await;
    assert!(done.is_some(), "{}: the ERP did not get all {total} orders", setup.label());
    let orders_per_s = total as f64 / t0.elapsed().as_secs_f64();
    for c in consumers {
        c.abort();
    }

    // Stock: posts over the nodes, then until the platforms show the newest quantities.
    let skus: BTreeMap<String, Vec<String>> = shops.iter().map(|(p, s)| (s.clone(), sim.state.stock(*p, s).into_iter().map(|i| i.sku).take(20).collect())).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let t1 = Instant::now();
    let posters: Vec<_> = (0..8)
        .map(|c| {
            let (urls, skus, next) = (urls.clone(), skus.clone(), next.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let shops: Vec<&String> = skus.keys().collect();
                let mut newest: BTreeMap<(String, String), u32> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= STOCK_POSTS {
                        return newest;
                    }
                    let shop = shops[(i * 7 + c) % shops.len()];
                    let list = &skus[shop];
                    let updates: Vec<Value> = (0..5)
                        .map(|k| {
                            let sku = &list[(i + k * 3) % list.len()];
                            // Rising over the run: the post number is the quantity and
                            // the ERP's sequence, so the highest one is the newest
                            // whichever post arrives last.
                            newest.insert((shop.clone(), sku.clone()), i as u32 + 1);
                            json!({"sku": sku, "quantity": i + 1, "seq": i + 1})
                        })
                        .collect();
                    let url = &urls[i % urls.len()];
                    loop {
                        let r = client.post(format!("{url}/v1/shops/{shop}/stock")).json(&json!({ "updates": updates })).send().await.unwrap();
                        if r.status().as_u16() == 202 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let mut newest: BTreeMap<(String, String), u32> = BTreeMap::new();
    for p in posters {
        for (k, q) in p.await.unwrap() {
            let e = newest.entry(k).or_default();
            *e = (*e).max(q);
        }
    }
    let submits_per_s = (STOCK_POSTS * 5) as f64 / t1.elapsed().as_secs_f64();
    let settled = poll_until(Duration::from_secs(600), || async {
        newest
            .iter()
            .all(|((shop, sku), q)| sim.state.stock(platform_of(shop), shop).iter().any(|i| &i.sku == sku && i.quantity == *q))
            .then_some(())
    })
    .await;
    assert!(settled.is_some(), "{}: the platforms did not reach the newest quantities", setup.label());
    let settled_per_s = (STOCK_POSTS * 5) as f64 / t1.elapsed().as_secs_f64();
    drop(nodes);
    Figures { orders_per_s, submits_per_s, settled_per_s }
}

/// Failover: kill the busiest node with a fresh order on each of its shops; per shop,
/// kill → that order in the feed.
async fn failover(kills: usize) -> Vec<Duration> {
    let nats = NatsCluster::start(3, true).await;
    let shops = shops(8, 4);
    let sim = sim(&shops, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(Setup::Cluster(3), dir.path(), &sim, Some(&nats), &shops).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let settled = |url: String| {
        let client = client.clone();
        let n = shops.len();
        async move {
            poll_until(Duration::from_secs(60), || async {
                let view = cluster_view(&client, &url).await?;
                let owners = owners(&view)?;
                (owners.len() == n && live(&view).len() == 3).then_some(owners)
            })
            .await
            .expect("the shops settle over three nodes")
        }
    };
    let mut times = Vec::new();
    for k in 0..kills {
        let owners = settled(nodes[0].base_url.clone()).await;
        let mut count: BTreeMap<&String, usize> = BTreeMap::new();
        for n in owners.values() {
            *count.entry(n).or_default() += 1;
        }
        let busiest = count.iter().max_by_key(|(_, c)| **c).map(|(n, _)| n.to_string()).unwrap();
        let index: usize = busiest.trim_start_matches('b').parse::<usize>().unwrap() - 1;
        let victims: Vec<(String, String)> = owners
            .iter()
            .filter(|(_, n)| **n == busiest)
            .map(|(s, _)| (s.clone(), sim.state.create(platform_of(s), s).unwrap().id.to_string()))
            .collect();
        let survivor = nodes[(index + 1) % 3].base_url.clone();
        let gone = nodes.remove(index);
        let killed = Instant::now();
        gone.kill();
        let mut pending: Vec<(String, String)> = victims;
        while !pending.is_empty() && killed.elapsed() < Duration::from_secs(120) {
            let mut left = Vec::new();
            for (shop, id) in pending {
                let page: Value = match client.get(format!("{survivor}/v1/orders?shop={shop}&limit=1000")).send().await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => Value::Null,
                };
                if page["orders"].as_array().is_some_and(|o| o.iter().any(|o| o["order"]["order_id"].as_str() == Some(id.as_str()))) {
                    times.push(killed.elapsed());
                } else {
                    left.push((shop, id));
                }
            }
            pending = left;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(pending.is_empty(), "kill {k}: shops never pulled again: {pending:?}");
        let config = dir.path().join(&busiest).join("berth.toml");
        let back = tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap();
        nodes.insert(index, back);
    }
    times
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2);
    let kills: usize = std::env::var("CLUSTER_BENCH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    println!("12 shops, {} orders; {STOCK_POSTS} stock posts of 5 SKUs; every process on this machine's cores", 12 * ORDERS);
    println!("{:<20} {:>6} {:>10} {:>12} {:>12}", "set-up", "round", "orders/s", "submits/s", "settled/s");
    for round in 1..=rounds {
        for setup in [Setup::Embedded, Setup::Cluster(1), Setup::Cluster(2), Setup::Cluster(3)] {
            let f = run(setup).await;
            println!("{:<20} {:>6} {:>10.0} {:>12.0} {:>12.0}", setup.label(), round, f.orders_per_s, f.submits_per_s, f.settled_per_s);
        }
    }
    if kills > 0 {
        let mut times = failover(kills).await;
        times.sort();
        println!(
            "failover over {kills} kills ({} shops moved; lease TTL 4 s, poll 1 s): p50 {:?}, max {:?}",
            times.len(),
            pct(&times, 0.5),
            times.last().unwrap()
        );
    }
}
