//! What the cluster end-to-end tests share: the simulator's shops, a node's config, the
//! ERP's load against several nodes, and reading `GET /v1/cluster`. Each test file
//! includes it next to the NATS harness (`mod nats`).
#![allow(dead_code)]

use crate::nats::NatsCluster;
use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub use berth_tests::erp::*;

/// `shopify` Shopify shops `s00…` and `taobao` Taobao shops `t00…`.
pub fn shops(shopify: usize, taobao: usize) -> Vec<(Platform, String)> {
    (0..shopify).map(|i| (Platform::Shopify, format!("s{i:02}"))).chain((0..taobao).map(|i| (Platform::Taobao, format!("t{i:02}")))).collect()
}

pub fn platform_of(shop: &str) -> Platform {
    if shop.starts_with('s') {
        Platform::Shopify
    } else {
        Platform::Taobao
    }
}

/// The simulator with `shops`, `orders` each, quotas out of the way.
pub async fn sim(shops: &[(Platform, String)], orders: usize) -> berth_sim::SimHandle {
    let mut cfg = SimConfig { seed: 25, history_hours: 24, ..SimConfig::default() };
    for (p, s) in shops {
        match p {
            Platform::Shopify => cfg.shopify.shops.push(ShopifyShop { name: s.clone(), access_token: "tok".into(), orders }),
            _ => cfg.taobao.shops.push(TaobaoShop { nick: s.clone(), app_key: "k".into(), session: format!("sess-{s}"), orders }),
        }
    }
    cfg.shopify.bucket_size = 100_000;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.calls_per_window = 1_000_000;
    berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// One node's config: the same cluster and shops for every node, its own name and data
/// dir (`dir/<node>/`). `extra` goes at the end (more sections). Without `nats`, a
/// single-node berth on its embedded store doing the same work.
pub fn node_config(dir: &Path, node: &str, sim: &str, nats: Option<&NatsCluster>, shops: &[(Platform, String)], ttl_secs: u64, extra: &str) -> PathBuf {
    let quote = |v: Vec<String>| v.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let mut shop_sections = String::new();
    for (platform, shop) in shops {
        shop_sections += &match platform {
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
{cluster}
{connectors}
{shop_sections}
{extra}"#,
            cluster = nats.map_or(String::new(), |nats| format!(
                "[cluster]\nnats = [{}]\nmonitor = [{}]\nnode = \"{node}\"\nlease_ttl_secs = {ttl_secs}\nerp_lease_secs = 5\n",
                quote(nats.urls()),
                quote(nats.monitors())
            )),
            connectors = berth_tests::local_connectors(&[("shopify", crate::plugins::SHOPIFY_REST), ("taobao", crate::plugins::TAOBAO)]),
        ),
    )
    .unwrap();
    path
}

/// Start `berth serve --config config` off the async runtime (it waits until the node
/// listens).
pub async fn start_node(config: PathBuf) -> berth_tests::Berth {
    tokio::task::spawn_blocking(move || berth_tests::Berth::start(&config)).await.unwrap()
}

/// Start one node per name ([`node_config`] each), one after another.
pub async fn start_nodes(dir: &Path, names: &[&str], sim: &str, nats: &NatsCluster, shops: &[(Platform, String)], ttl_secs: u64, extra: &str) -> Vec<berth_tests::Berth> {
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(start_node(node_config(dir, n, sim, Some(nats), shops, ttl_secs, extra)).await);
    }
    nodes
}

pub async fn cluster_view(client: &reqwest::Client, base: &str) -> Option<Value> {
    client.get(format!("{base}/v1/cluster")).send().await.ok()?.json().await.ok()
}

/// Owner of each shop as the view shows it, when every shop has a live owner.
pub fn owners(view: &Value) -> Option<BTreeMap<String, String>> {
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

/// The live nodes' names as the view shows them.
pub fn live(view: &Value) -> BTreeSet<String> {
    view["nodes"].as_array().into_iter().flatten().filter_map(|n| n["node"].as_str().map(String::from)).collect()
}

/// Send `sig` (libc's number) to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this test started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Every order version on the platforms for `shops`.
pub fn platform_versions(sim: &berth_sim::SimHandle, shops: &[(Platform, String)]) -> BTreeSet<Version> {
    shops.iter().flat_map(|(p, s)| sim.state.orders(*p, s).into_iter().map(move |o| (s.to_string(), o.id.to_string(), o.updated_s * 1000))).collect()
}

/// Take (lease and ack at once, on `base`) every order the queue gives until `want` is
/// covered by what was taken here and what the ERP acked (or may have acked) before.
/// Returns what was taken here; `None` when `want` was not covered in time.
pub async fn drain_orders(client: &reqwest::Client, base: &str, want: &BTreeSet<Version>, erp: &ErpLedger) -> (Vec<Version>, bool) {
    let drained = Mutex::new(Vec::<Version>::new());
    let done = berth_tests::poll_until(Duration::from_secs(180), || async {
        let r: Value = client.post(format!("{base}/v1/orders/lease")).json(&json!({"max": 200, "visibility_secs": 60})).send().await.ok()?.json().await.ok()?;
        let leases = r["leases"].as_array()?.clone();
        if !leases.is_empty() {
            let tokens: Vec<&Value> = leases.iter().map(|l| &l["token"]).collect();
            let a: Value = client.post(format!("{base}/v1/orders/ack")).json(&json!({ "tokens": tokens })).send().await.ok()?.json().await.ok()?;
            assert_eq!(a["done"].as_u64(), Some(leases.len() as u64), "drain acks refused: {a}");
        }
        let mut drained = drained.lock().unwrap();
        drained.extend(leases.iter().map(version));
        let got: BTreeSet<Version> = drained.iter().cloned().chain(erp.acked_orders.iter().cloned()).chain(erp.acks_in_doubt.iter().cloned()).collect();
        want.is_subset(&got).then_some(())
    })
    .await;
    (drained.into_inner().unwrap(), done.is_some())
}

/// Every feed entry from `base`, oldest first: (version, status).
pub async fn whole_feed(client: &reqwest::Client, base: &str) -> Vec<(Version, String)> {
    let mut feed = Vec::new();
    let mut after = 0u64;
    loop {
        let page: Value = client.get(format!("{base}/v1/orders?after={after}&limit=1000")).send().await.unwrap().json().await.unwrap();
        let orders = page["orders"].as_array().unwrap();
        feed.extend(orders.iter().map(|o| (version(o), o["order"]["status"].as_str().unwrap_or_default().to_string())));
        let next = page["next_after"].as_u64().unwrap();
        if orders.is_empty() || next == after {
            return feed;
        }
        after = next;
    }
}

/// The stock checks after a run: everything pushed, each acknowledged SKU at its newest
/// desired quantity on the platform, never an older quantity after a newer one.
pub async fn check_stock(client: &reqwest::Client, base: &str, sim: &berth_sim::SimHandle, erp: &ErpLedger, seed: u64) -> Result<usize, String> {
    let drained = berth_tests::poll_until(Duration::from_secs(180), || async {
        let q: Value = client.get(format!("{base}/v1/stock/queue")).send().await.ok()?.json().await.ok()?;
        q.as_object()?.values().all(|s| s["pending"] == 0).then_some(())
    })
    .await;
    if drained.is_none() {
        return Err(format!("stock still pending (seed {seed})"));
    }
    for ((shop, sku), acked) in &erp.acked_quantity {
        let item = sim.state.stock(platform_of(shop), shop).into_iter().find(|i| &i.sku == sku).unwrap();
        if !item.history.windows(2).all(|w| w[0] <= w[1]) {
            return Err(format!("{shop}/{sku}: a stale quantity was pushed after a newer one (seed {seed}): {:?}", item.history));
        }
        let rec: Value = client.get(format!("{base}/v1/shops/{shop}/stock/{sku}")).send().await.unwrap().json().await.unwrap();
        if rec["state"] != "pushed" {
            return Err(format!("{shop}/{sku}: {rec}"));
        }
        let desired = rec["quantity"].as_u64().unwrap() as u32;
        if desired < *acked {
            return Err(format!("{shop}/{sku}: acknowledged quantity {acked} lost, berth wants {desired} (seed {seed})"));
        }
        if item.quantity != desired {
            return Err(format!("{shop}/{sku}: platform has {}, berth wants {desired} (seed {seed})", item.quantity));
        }
    }
    Ok(erp.acked_quantity.len())
}

/// Per shop, the revisions at which nodes took its lease, from the nodes' logs ("this
/// node took the shop's lease … shop=S revision=R").
pub fn lease_epochs(logs: &[(String, String)]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (node, log) in logs {
        for line in log.lines().filter(|l| l.contains("took the shop's lease")) {
            let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).map(|v| v.trim_matches('"').to_string());
            if let (Some(shop), Some(rev)) = (field("shop="), field("revision=").and_then(|r| r.parse().ok())) {
                out.entry(shop).or_default().push((rev, node.clone()));
            }
        }
    }
    out
}

/// The order checks after a run, from `base`: every version on the platforms was
/// delivered (taken now, or acked — or maybe acked — before), none came back after its
/// ack was answered, and the feed holds each version once. How many were taken now.
pub async fn check_orders(client: &reqwest::Client, base: &str, sim: &berth_sim::SimHandle, shops: &[(Platform, String)], erp: &ErpLedger, seed: u64) -> Result<usize, String> {
    let want = platform_versions(sim, shops);
    let (drained, all) = drain_orders(client, base, &want, erp).await;
    let unique: BTreeSet<Version> = drained.iter().cloned().collect();
    let got: BTreeSet<Version> = unique.iter().chain(&erp.acked_orders).chain(&erp.acks_in_doubt).cloned().collect();
    if !all {
        let missing: Vec<_> = want.difference(&got).take(10).collect();
        return Err(format!("orders lost (seed {seed}): {missing:?}"));
    }
    if drained.len() != unique.len() {
        return Err(format!("an order version was delivered twice after its ack (seed {seed})"));
    }
    let back: Vec<_> = unique.intersection(&erp.acked_orders).take(5).collect();
    if !back.is_empty() {
        return Err(format!("acked orders came back (seed {seed}): {back:?}"));
    }
    let feed = whole_feed(client, base).await;
    let distinct: BTreeSet<&(Version, String)> = feed.iter().collect();
    if distinct.len() != feed.len() {
        return Err(format!("the feed holds a version twice (seed {seed})"));
    }
    if let Some(v) = want.iter().find(|v| !feed.iter().any(|(f, _)| f == *v)) {
        return Err(format!("a platform version is missing from the feed: {v:?} (seed {seed})"));
    }
    Ok(drained.len())
}
