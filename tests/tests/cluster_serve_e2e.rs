//! Cluster mode end to end: a 3-server NATS cluster (`sync_interval: always`), three
//! real `berth serve` processes on one config (each its own node name and data dir), the
//! simulator with 60 shops on two platforms, and an ERP working against all three nodes
//! at once (stock posts with rising quantities, leases and acks). One node is killed with
//! SIGKILL mid-load. Afterwards, from what the system did:
//! - every shop has one live owner, the dead node's shops are owned by the others, and
//!   they pull (a new order on each reaches the feed) and push (a new quantity reaches
//!   the platform) there;
//! - no order version is lost: each one on the platforms was leased or acked;
//! - none came back after its ack was answered, and the feed holds each version once;
//! - every SKU the ERP got a 202 for ends on the platform at its newest quantity, and the
//!   platform never saw an older quantity after a newer one.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{poll_until, Berth};
use nats::NatsCluster;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// orders_e2e.rs enforces that every plugin is used.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const SHOPIFY_SHOPS: usize = 40;
const TAOBAO_SHOPS: usize = 20;
const LEASE_TTL_SECS: u64 = 4;

fn shops() -> Vec<(Platform, String)> {
    (0..SHOPIFY_SHOPS)
        .map(|i| (Platform::Shopify, format!("s{i:02}")))
        .chain((0..TAOBAO_SHOPS).map(|i| (Platform::Taobao, format!("t{i:02}"))))
        .collect()
}

fn platform_of(shop: &str) -> Platform {
    if shop.starts_with('s') {
        Platform::Shopify
    } else {
        Platform::Taobao
    }
}

/// One node's config: the same cluster and shops for all, its own name and data dir.
fn config(dir: &std::path::Path, node: &str, sim: &str, nats: &NatsCluster) -> std::path::PathBuf {
    let quote = |v: Vec<String>| v.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let mut shops = String::new();
    for (platform, shop) in self::shops() {
        shops += &match platform {
            Platform::Shopify => format!(
                "[shops.{shop}]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
                 settings = {{ base_url = \"{sim}/shopify/{shop}\", page_size = \"20\" }}\nsecrets = {{ access_token = \"tok\" }}\n"
            ),
            _ => format!(
                "[shops.{shop}]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
                 settings = {{ gateway = \"{sim}/taobao/router/rest\", app_key = \"k\", page_size = \"20\" }}\nsecrets = {{ app_secret = \"s\", session = \"sess-{shop}\" }}\n"
            ),
        };
    }
    let dir = dir.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("berth.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
data_dir = "data"
[http]
allow_private_addresses = true
timeout_ms = 2000
[sync]
initial_lookback_hours = 30
overlap_secs = 30
settle_secs = 1
retry_base_ms = 50
retry_max_ms = 500
[cluster]
nats = [{nats}]
monitor = [{monitor}]
node = "{node}"
lease_ttl_secs = {LEASE_TTL_SECS}
erp_lease_secs = 5
{connectors}
{shops}"#,
            nats = quote(nats.urls()),
            monitor = quote(nats.monitors()),
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
        ),
    )
    .unwrap();
    path
}

type Version = (String, String, i64);

fn version(l: &Value) -> Version {
    (
        l["shop"].as_str().unwrap_or_default().to_string(),
        l["order"]["order_id"].as_str().unwrap_or_default().to_string(),
        l["order"]["updated_at_ms"].as_i64().unwrap_or_default(),
    )
}

/// What the ERP was told, across the run.
#[derive(Default)]
struct ErpLedger {
    next_quantity: BTreeMap<(String, String), u32>,
    /// Highest quantity per (shop, SKU) whose POST got a 202.
    acked_quantity: BTreeMap<(String, String), u32>,
    /// Order versions whose ack berth confirmed.
    acked_orders: BTreeSet<Version>,
    /// Acks whose answer never came (the node was killed meanwhile).
    acks_in_doubt: BTreeSet<Version>,
    stock_posts: usize,
    leases: usize,
    /// Answers other than 2xx, by status (a node going away answers nothing at all).
    refused: BTreeMap<u16, usize>,
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The ERP at work against every node in turn until `stop`: stock updates for random
/// SKUs of random shops, leases, and acks of about half of what it leased.
async fn erp_load(nodes: Arc<Mutex<Vec<String>>>, skus: BTreeMap<String, Vec<String>>, erp: Arc<Mutex<ErpLedger>>, stop: Arc<AtomicBool>, mut rng: Rng) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let shops: Vec<&String> = skus.keys().collect();
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let base = {
            let nodes = nodes.lock().unwrap();
            turn += 1;
            nodes[turn % nodes.len()].clone()
        };
        let shop = shops[rng.below(shops.len() as u64) as usize].clone();
        let updates: Vec<(String, u32)> = {
            let mut erp = erp.lock().unwrap();
            let list = &skus[&shop];
            (0..3)
                .map(|_| {
                    let sku = list[rng.below(list.len() as u64) as usize].clone();
                    let q = erp.next_quantity.entry((shop.clone(), sku.clone())).or_insert(0);
                    *q += 1;
                    (sku, *q)
                })
                .collect()
        };
        let body = json!({ "updates": updates.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>() });
        if let Ok(r) = client.post(format!("{base}/v1/shops/{shop}/stock")).json(&body).send().await {
            let mut erp = erp.lock().unwrap();
            if r.status().as_u16() == 202 {
                erp.stock_posts += 1;
                for (sku, q) in updates {
                    let acked = erp.acked_quantity.entry((shop.clone(), sku)).or_insert(0);
                    *acked = (*acked).max(q);
                }
            } else {
                *erp.refused.entry(r.status().as_u16()).or_default() += 1;
            }
        }
        let leased: Option<Value> = async {
            let r = client.post(format!("{base}/v1/orders/lease")).json(&json!({"max": 20, "visibility_secs": 5})).send().await.ok()?;
            r.json().await.ok()
        }
        .await;
        for l in leased.iter().flat_map(|v| v["leases"].as_array().cloned().unwrap_or_default()) {
            erp.lock().unwrap().leases += 1;
            if rng.below(2) == 0 {
                continue;
            }
            let acked: Option<Value> = async {
                let r = client.post(format!("{base}/v1/orders/ack")).json(&json!({"tokens": [l["token"]]})).send().await.ok()?;
                r.json().await.ok()
            }
            .await;
            match acked {
                Some(a) if a["done"] == 1 => erp.lock().unwrap().acked_orders.insert(version(&l)),
                Some(_) => false,
                None => erp.lock().unwrap().acks_in_doubt.insert(version(&l)),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn cluster_view(client: &reqwest::Client, base: &str) -> Option<Value> {
    client.get(format!("{base}/v1/cluster")).send().await.ok()?.json().await.ok()
}

/// Owner of each shop as `base` sees it, when every shop has a live owner.
fn owners(view: &Value) -> Option<BTreeMap<String, String>> {
    if !view["unowned"].as_array()?.is_empty() {
        return None;
    }
    let mut out = BTreeMap::new();
    for n in view["nodes"].as_array()? {
        for s in n["shops"].as_array()? {
            out.insert(s.as_str()?.to_string(), n["node"].as_str()?.to_string());
        }
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_shops_and_one_killed_loses_nothing() {
    let nats = NatsCluster::start(3, true).await;
    let mut cfg = SimConfig { seed: 25, history_hours: 24, ..SimConfig::default() };
    cfg.shopify.shops = (0..SHOPIFY_SHOPS).map(|i| ShopifyShop { name: format!("s{i:02}"), access_token: "tok".into(), orders: 10 }).collect();
    cfg.shopify.bucket_size = 10_000;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = (0..TAOBAO_SHOPS)
        .map(|i| TaobaoShop { nick: format!("t{i:02}"), app_key: "k".into(), session: format!("sess-t{i:02}"), orders: 10 })
        .collect();
    cfg.taobao.calls_per_window = 100_000;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = ["b1", "b2", "b3"];
    let mut berths: BTreeMap<&str, Berth> = BTreeMap::new();
    for n in names {
        let config = config(dir.path(), n, &sim.base_url(), &nats);
        berths.insert(n, tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let b1 = berths["b1"].base_url.clone();

    // Spread: every shop owned, by three live nodes, each running some.
    let spread = poll_until(Duration::from_secs(90), || async {
        let view = cluster_view(&client, &b1).await?;
        let owners = owners(&view)?;
        let by: BTreeSet<&String> = owners.values().collect();
        (owners.len() == SHOPIFY_SHOPS + TAOBAO_SHOPS && by.len() == 3).then_some(owners)
    })
    .await;
    let Some(before) = spread else {
        panic!("the shops were not spread over three nodes: {:?}\n{}", cluster_view(&client, &b1).await, berths["b1"].log());
    };
    eprintln!("spread: {:?}", before.values().fold(BTreeMap::<&String, usize>::new(), |mut m, n| {
        *m.entry(n).or_default() += 1;
        m
    }));

    let skus: BTreeMap<String, Vec<String>> =
        shops().into_iter().map(|(p, s)| (s.clone(), sim.state.stock(p, &s).into_iter().map(|i| i.sku).take(5).collect())).collect();
    let erp = Arc::new(Mutex::new(ErpLedger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let bases = Arc::new(Mutex::new(berths.values().map(|b| b.base_url.clone()).collect::<Vec<_>>()));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("cluster e2e seed {seed}");
    let load = tokio::spawn(erp_load(bases.clone(), skus.clone(), erp.clone(), stop.clone(), Rng(seed)));

    // The platforms move on while the ERP works: new and changed orders everywhere.
    let mut rng = Rng(seed ^ 0x9E37_79B9);
    for (platform, shop) in shops() {
        sim.state.create(platform, &shop).unwrap();
        let list = sim.state.orders(platform, &shop);
        sim.state.touch(platform, &shop, list[rng.below(list.len() as u64) as usize].id).unwrap();
    }
    let working = poll_until(Duration::from_secs(120), || async {
        let erp = erp.lock().unwrap();
        (erp.acked_orders.len() >= 30 && erp.stock_posts >= 30).then_some(())
    })
    .await;
    assert!(working.is_some(), "the ERP load did not get going: {:?} refused\n{}", erp.lock().unwrap().refused, berths["b1"].log());

    // Kill one node mid-load.
    let victim = "b2";
    let victim_shops: Vec<String> = before.iter().filter(|(_, n)| n.as_str() == victim).map(|(s, _)| s.clone()).collect();
    assert!(!victim_shops.is_empty());
    let victim_url = berths[victim].base_url.clone();
    bases.lock().unwrap().retain(|b| *b != victim_url);
    let killed = Instant::now();
    berths.remove(victim).unwrap().kill();

    // Its shops move to the others.
    let moved = poll_until(Duration::from_secs(60), || async {
        let view = cluster_view(&client, &b1).await?;
        let owners = owners(&view)?;
        let live: BTreeSet<&str> = view["nodes"].as_array()?.iter().filter_map(|n| n["node"].as_str()).collect();
        (!live.contains(victim) && owners.len() == SHOPIFY_SHOPS + TAOBAO_SHOPS).then_some(owners)
    })
    .await;
    let Some(after) = moved else {
        panic!("the killed node's shops were not taken over: {:?}\n{}", cluster_view(&client, &b1).await, berths["b1"].log());
    };
    eprintln!("{} shops of the killed node owned by the others after {:?} (lease TTL {LEASE_TTL_SECS} s)", victim_shops.len(), killed.elapsed());
    for s in &victim_shops {
        assert_ne!(after[s], victim);
    }

    // ... and are pulled there: a new order on each reaches the feed.
    let fresh: Vec<(String, String)> = victim_shops
        .iter()
        .map(|s| (s.clone(), sim.state.create(platform_of(s), s).unwrap().id.to_string()))
        .collect();
    let pulled = poll_until(Duration::from_secs(120), || async {
        for (shop, id) in &fresh {
            let page: Value = client.get(format!("{b1}/v1/orders?shop={shop}&limit=1000")).send().await.ok()?.json().await.ok()?;
            if !page["orders"].as_array()?.iter().any(|o| o["order"]["order_id"].as_str() == Some(id.as_str())) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(pulled.is_some(), "the killed node's shops were not pulled by their new owners\n{}", berths["b1"].log());
    eprintln!("every shop of the killed node pulled a new order on its new owner {:?} after the kill", killed.elapsed());

    // Let the ERP work on the two survivors for a moment, then stop it.
    let posts = erp.lock().unwrap().stock_posts;
    let more = poll_until(Duration::from_secs(60), || async { (erp.lock().unwrap().stock_posts >= posts + 30).then_some(()) }).await;
    assert!(more.is_some(), "the ERP load stopped getting through after the kill: {:?}", erp.lock().unwrap().refused);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let erp = Arc::try_unwrap(erp).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "ERP: 202 for {} stock posts, leased {} orders, acked {} ({} acks in doubt), refused {:?}",
        erp.stock_posts,
        erp.leases,
        erp.acked_orders.len(),
        erp.acks_in_doubt.len(),
        erp.refused
    );

    // Orders: everything not acked comes back (leases left to expire included) and is
    // taken now; nothing acked comes back.
    let want: BTreeSet<Version> = shops()
        .iter()
        .flat_map(|(p, s)| sim.state.orders(*p, s).into_iter().map(move |o| (s.to_string(), o.id.to_string(), o.updated_s * 1000)))
        .collect();
    let drained = Mutex::new(Vec::<Version>::new());
    let b3 = berths["b3"].base_url.clone();
    let have_all = poll_until(Duration::from_secs(180), || async {
        let r: Value = client.post(format!("{b3}/v1/orders/lease")).json(&json!({"max": 200, "visibility_secs": 60})).send().await.ok()?.json().await.ok()?;
        let leases = r["leases"].as_array()?.clone();
        if !leases.is_empty() {
            let tokens: Vec<&Value> = leases.iter().map(|l| &l["token"]).collect();
            let a: Value = client.post(format!("{b3}/v1/orders/ack")).json(&json!({ "tokens": tokens })).send().await.ok()?.json().await.ok()?;
            assert_eq!(a["done"].as_u64(), Some(leases.len() as u64), "drain acks refused: {a}");
        }
        let mut drained = drained.lock().unwrap();
        drained.extend(leases.iter().map(version));
        let got: BTreeSet<Version> = drained.iter().cloned().chain(erp.acked_orders.iter().cloned()).chain(erp.acks_in_doubt.iter().cloned()).collect();
        want.is_subset(&got).then_some(())
    })
    .await;
    let drained = drained.into_inner().unwrap();
    let unique: BTreeSet<Version> = drained.iter().cloned().collect();
    let got: BTreeSet<Version> = unique.iter().chain(&erp.acked_orders).chain(&erp.acks_in_doubt).cloned().collect();
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    assert!(have_all.is_some(), "orders lost (seed {seed}): {missing:?}\n{}", berths["b3"].log());
    assert_eq!(drained.len(), unique.len(), "an order version was delivered twice after its ack (seed {seed})");
    let back: Vec<_> = unique.intersection(&erp.acked_orders).take(5).collect();
    assert!(back.is_empty(), "acked orders came back (seed {seed}): {back:?}");

    // The feed holds each version once.
    let mut feed: Vec<(Version, String)> = Vec::new();
    let mut after = 0u64;
    loop {
        let page: Value = client.get(format!("{b1}/v1/orders?after={after}&limit=1000")).send().await.unwrap().json().await.unwrap();
        let orders = page["orders"].as_array().unwrap();
        feed.extend(orders.iter().map(|o| (version(o), o["order"]["status"].as_str().unwrap_or_default().to_string())));
        let next = page["next_after"].as_u64().unwrap();
        if orders.is_empty() || next == after {
            break;
        }
        after = next;
    }
    let distinct: BTreeSet<&(Version, String)> = feed.iter().collect();
    assert_eq!(distinct.len(), feed.len(), "the feed holds a version twice");
    assert!(want.iter().all(|v| feed.iter().any(|(f, _)| f == v)), "a platform version is missing from the feed");

    // Stock: every SKU drains to its newest quantity, and never went backwards.
    let drained = poll_until(Duration::from_secs(180), || async {
        let q: Value = client.get(format!("{b1}/v1/stock/queue")).send().await.ok()?.json().await.ok()?;
        q.as_object()?.values().all(|s| s["pending"] == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "stock still pending (seed {seed})\n{}", berths["b1"].log());
    for ((shop, sku), acked) in &erp.acked_quantity {
        let item = sim.state.stock(platform_of(shop), shop).into_iter().find(|i| &i.sku == sku).unwrap();
        assert!(item.history.windows(2).all(|w| w[0] <= w[1]), "{shop}/{sku}: a stale quantity was pushed after a newer one (seed {seed}): {:?}", item.history);
        let rec: Value = client.get(format!("{b1}/v1/shops/{shop}/stock/{sku}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(rec["state"], "pushed", "{shop}/{sku}: {rec}");
        let desired = rec["quantity"].as_u64().unwrap() as u32;
        assert!(desired >= *acked, "{shop}/{sku}: acknowledged quantity {acked} lost, berth wants {desired} (seed {seed})");
        assert_eq!(item.quantity, desired, "{shop}/{sku}: platform has {}, berth wants {desired} (seed {seed})", item.quantity);
    }
}
