//! End to end: the real `berth` binary, the simulator on loopback, and the real Shopify
//! and Taobao connectors built from plugins/. Every seeded order must arrive exactly
//! once with the right fields, across pages, throttling, injected faults, a SIGKILL and
//! restart, and later updates.

use berth_sim::data::SimOrder;
use berth_sim::faults::FaultKind;
use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{poll_until, Berth};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// The production connectors; fixtures are tested elsewhere (startup_errors uses every
/// component build.rs makes, under deny(dead_code)).
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(180);

fn sim_config() -> SimConfig {
    let mut cfg = SimConfig { seed: 7, history_hours: 70, timeout_hold_ms: 4_000, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "shpat_acme".into(), orders: 130 }];
    // Small bucket: paging at full speed overflows it, so 429s are certain.
    cfg.shopify.bucket_size = 3;
    cfg.shopify.leak_per_sec = 4.0;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "2100001".into(), secret: "top-secret-1".into() }];
    cfg.taobao.shops = vec![
        TaobaoShop { nick: "tmall-a".into(), app_key: "2100001".into(), session: "sess-a".into(), orders: 150 },
        TaobaoShop { nick: "tmall-b".into(), app_key: "2100001".into(), session: "sess-b".into(), orders: 60 },
    ];
    // Both shops share one app key, hence one quota: code 7 bans are certain.
    cfg.taobao.calls_per_window = 4;
    cfg.taobao.window_ms = 1000;
    cfg.taobao.ban_secs = 1;
    cfg
}

fn berth_config(dir: &Path, sim: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "data"

[runtime]
call_timeout_ms = 10000

[http]
timeout_ms = 2000
allow_private_addresses = true

# This test is about answering 429s: keep the host from steering clear of them.
[platforms.shopify]
call_limit_header = false
[sync]
initial_lookback_hours = 72
overlap_secs = 60
settle_secs = 1
retry_base_ms = 100
retry_max_ms = 1000
error_pause_secs = 1

{connectors}

[shops.acme]
connector = "shopify"
tier = "A"
poll_interval_secs = 1
settings = {{ base_url = "{sim}/shopify/acme", page_size = "20" }}
secrets = {{ access_token = "shpat_acme" }}

[shops.tmall-a]
connector = "taobao"
tier = "A"
poll_interval_secs = 1
settings = {{ gateway = "{sim}/taobao/router/rest", app_key = "2100001", sign_method = "hmac", page_size = "25" }}
secrets = {{ app_secret = "top-secret-1", session = "sess-a" }}

[shops.tmall-b]
connector = "taobao"
tier = "B"
poll_interval_secs = 1
settings = {{ gateway = "{sim}/taobao/router/rest", app_key = "2100001", page_size = "20" }}
secrets = {{ app_secret = "top-secret-1", session = "sess-b" }}
"#,
        connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
    );
    let path = dir.join("berth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every order the host has, read through the ERP API page by page.
async fn all_orders(client: &reqwest::Client, berth: &Berth) -> Vec<Value> {
    let mut after = 0u64;
    let mut out = Vec::new();
    loop {
        let page: Value = client
            .get(berth.url(&format!("/v1/orders?after={after}&limit=97")))
            .send()
            .await
            .expect("GET /v1/orders")
            .json()
            .await
            .expect("orders JSON");
        let orders = page["orders"].as_array().expect("orders array").clone();
        if orders.is_empty() {
            return out;
        }
        after = page["next_after"].as_u64().expect("next_after");
        out.extend(orders);
    }
}

type Version = (String, String, i64); // shop, order id, updated ms

fn versions(orders: &[Value]) -> Vec<Version> {
    orders
        .iter()
        .map(|o| {
            (
                o["shop"].as_str().unwrap().to_string(),
                o["order"]["order_id"].as_str().unwrap().to_string(),
                o["order"]["updated_at_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

struct Expected {
    platform: Platform,
    shop: &'static str,
}

const SHOPS: [Expected; 3] = [
    Expected { platform: Platform::Shopify, shop: "acme" },
    Expected { platform: Platform::Taobao, shop: "tmall-a" },
    Expected { platform: Platform::Taobao, shop: "tmall-b" },
];

fn sim_versions(orders: &BTreeMap<&'static str, Vec<SimOrder>>) -> BTreeSet<Version> {
    orders
        .iter()
        .flat_map(|(shop, list)| list.iter().map(move |o| (shop.to_string(), o.id.to_string(), o.updated_s * 1000)))
        .collect()
}

fn snapshot(sim: &berth_sim::SimHandle) -> BTreeMap<&'static str, Vec<SimOrder>> {
    SHOPS.iter().map(|e| (e.shop, sim.state.orders(e.platform, e.shop))).collect()
}

/// Check one received order against the simulator's record of it, field by field.
fn check_fields(got: &Value, platform: Platform, want: &SimOrder) {
    let o = &got["order"];
    let ctx = format!("order {} of {}", want.id, want.shop);
    assert_eq!(got["platform"], platform.name(), "{ctx}");
    let status = berth_sim::profiles::normalized_status(platform, want);
    assert_eq!(o["status"], status, "{ctx}: status");
    assert_eq!(o["created_at_ms"].as_i64(), Some(want.created_s * 1000), "{ctx}: created");
    assert_eq!(o["currency"], want.currency.as_str(), "{ctx}: currency");
    assert_eq!(o["total_minor"].as_i64(), Some(want.total_minor()), "{ctx}: total");
    let lines = o["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), want.lines.len(), "{ctx}: line count");
    for (g, w) in lines.iter().zip(&want.lines) {
        assert_eq!(g["sku"], w.sku.as_str(), "{ctx}: sku");
        assert_eq!(g["title"], w.title.as_str(), "{ctx}: title");
        assert_eq!(g["quantity"].as_u64(), Some(w.quantity as u64), "{ctx}: quantity");
        assert_eq!(g["unit_price_minor"].as_i64(), Some(w.unit_price_minor), "{ctx}: price");
        assert_eq!(g["line_id"], w.line_id.to_string().as_str(), "{ctx}: line id");
    }
    let masked = o["buyer_name_masked"].as_str().unwrap();
    assert!(masked.starts_with(&want.buyer_name[..1]) && !masked.contains(&want.buyer_name[1..]), "{ctx}: name not masked: {masked}");
    let phone = o["buyer_phone_masked"].as_str().unwrap();
    assert!(phone.ends_with(&want.buyer_phone[want.buyer_phone.len() - 4..]) && phone.starts_with('*'), "{ctx}: phone {phone}");
    assert!(o["raw"].is_object(), "{ctx}: raw platform JSON carried along");
}

async fn shops_status(client: &reqwest::Client, berth: &Berth) -> Vec<Value> {
    client.get(berth.url("/v1/shops")).send().await.unwrap().json::<Vec<Value>>().await.unwrap()
}

async fn windows_completed(client: &reqwest::Client, berth: &Berth) -> BTreeMap<String, u64> {
    shops_status(client, berth)
        .await
        .iter()
        .map(|s| (s["shop"].as_str().unwrap().to_string(), s["windows_completed"].as_u64().unwrap()))
        .collect()
}

/// Wait until every shop has finished `n` more windows: overlapping re-reads happened.
async fn wait_more_windows(client: &reqwest::Client, berth: &Berth, n: u64) {
    let base = windows_completed(client, berth).await;
    let done = poll_until(DEADLINE, || async {
        let now = windows_completed(client, berth).await;
        base.iter().all(|(shop, b)| now.get(shop).is_some_and(|v| *v >= b + n)).then_some(())
    })
    .await;
    if done.is_none() {
        fail(client, berth, "every shop to complete more windows").await;
    }
}

async fn wait_for_versions(client: &reqwest::Client, berth: &Berth, want: &BTreeSet<Version>, what: &str) -> Vec<Value> {
    let found = poll_until(DEADLINE, || async {
        let orders = all_orders(client, berth).await;
        let got: BTreeSet<Version> = versions(&orders).into_iter().collect();
        want.is_subset(&got).then_some(orders)
    })
    .await;
    match found {
        Some(orders) => orders,
        None => {
            let raw = all_orders(client, berth).await;
            let got: BTreeSet<Version> = versions(&raw).into_iter().collect();
            let feed: Value = client.get(berth.url("/v1/orders/feed")).send().await.unwrap().json().await.unwrap();
            let missing: Vec<_> = want.difference(&got).take(10).collect();
            let extra: Vec<_> = got.difference(want).take(10).collect();
            fail(client, berth, &format!("{what}; {} received ({} entries, feed {feed}); first missing: {missing:?}; unexpected: {extra:?}", got.len(), raw.len())).await
        }
    }
}

async fn fail(client: &reqwest::Client, berth: &Berth, what: &str) -> ! {
    let status = shops_status(client, berth).await;
    panic!("timed out waiting for {what}\nshops: {status:#?}\nberth log:\n{}", berth.log());
}

fn assert_exactly(orders: &[Value], want: &BTreeSet<Version>) {
    let got = versions(orders);
    let unique: BTreeSet<Version> = got.iter().cloned().collect();
    assert_eq!(got.len(), unique.len(), "an order version arrived more than once");
    let extra: Vec<_> = unique.difference(want).collect();
    let missing: Vec<_> = want.difference(&unique).collect();
    assert!(extra.is_empty() && missing.is_empty(), "extra: {extra:?}\nmissing: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seeded_order_arrives_exactly_once() {
    let sim = berth_sim::start(sim_config(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    // Faults the host must ride out: 5xx, garbage bodies, a request that hangs.
    sim.state.inject(Platform::Shopify, FaultKind::Http500, 2);
    sim.state.inject(Platform::Shopify, FaultKind::Garbage, 1);
    sim.state.inject(Platform::Taobao, FaultKind::Http503, 1);
    sim.state.inject(Platform::Taobao, FaultKind::Garbage, 1);
    sim.state.inject(Platform::Taobao, FaultKind::Timeout, 1);

    let dir = tempfile::tempdir().unwrap();
    let config = berth_config(dir.path(), &sim.base_url());
    let client = reqwest::Client::new();
    let seeded = snapshot(&sim);
    for e in &SHOPS {
        assert!(!seeded[e.shop].is_empty());
    }
    let seeded_versions = sim_versions(&seeded);

    // A crash mid-pull: SIGKILL once some orders are in but windows are still being
    // paged, then restart on the same data dir. The pull resumes where it was.
    let first = Berth::start(&config);
    let partial = poll_until(DEADLINE, || async {
        let n = all_orders(&client, &first).await.len();
        (n >= 40).then_some(n)
    })
    .await
    .unwrap_or_else(|| panic!("no orders arrived before the crash; log:\n{}", first.log()));
    assert!(partial < seeded_versions.len(), "everything arrived before the crash; the test would prove nothing");
    first.kill();

    let berth = Berth::start(&config);
    let orders = wait_for_versions(&client, &berth, &seeded_versions, "every seeded order").await;
    assert_exactly(&orders, &seeded_versions);

    // Fields, order by order.
    for e in &SHOPS {
        for want in &seeded[e.shop] {
            let got = orders
                .iter()
                .find(|o| o["shop"] == e.shop && o["order"]["order_id"] == want.id.to_string().as_str())
                .expect("order present");
            check_fields(got, e.platform, want);
        }
    }

    // Shopify needed several pages per window (130 orders, 20 a page): counted at the
    // platform, across both processes (a per-process count depends on how far the first
    // one got before the kill).
    let served = sim.state.stats()[&Platform::Shopify].ok;
    assert!(served >= 7, "the Shopify simulator answered {served} requests");

    // The platforms did throttle, and berth rode it out: every order arrived above. (Not
    // the shops' own `throttled` counts: they are per process, and the throttling may all
    // have fallen to the process that was killed.)
    let stats = sim.state.stats();
    assert!(stats[&Platform::Shopify].throttled > 0, "no 429 was served: {stats:?}");
    assert!(stats[&Platform::Taobao].throttled > 0, "no code 7 was served: {stats:?}");
    // Every injected fault was served, and no request was refused for a bad signature,
    // token or parameter.
    assert_eq!(stats[&Platform::Shopify].faults, 3, "{stats:?}");
    assert_eq!(stats[&Platform::Taobao].faults, 3, "{stats:?}");
    assert_eq!(stats[&Platform::Shopify].rejected, 0, "{stats:?}");
    assert_eq!(stats[&Platform::Taobao].rejected, 0, "{stats:?}");

    // Overlapping windows re-read orders; none may arrive twice.
    wait_more_windows(&client, &berth, 2).await;
    assert_exactly(&all_orders(&client, &berth).await, &seeded_versions);

    // Another crash when caught up: nothing is delivered again.
    berth.kill();
    let berth = Berth::start(&config);
    wait_more_windows(&client, &berth, 2).await;
    assert_exactly(&all_orders(&client, &berth).await, &seeded_versions);

    // Later changes on the platform: updated orders arrive as new versions, new orders
    // arrive, each exactly once.
    for e in &SHOPS {
        for o in seeded[e.shop].iter().take(3) {
            sim.state.touch(e.platform, e.shop, o.id).expect("touch");
        }
        sim.state.create(e.platform, e.shop).expect("create");
    }
    let latest = snapshot(&sim);
    let want: BTreeSet<Version> = seeded_versions.union(&sim_versions(&latest)).cloned().collect();
    assert_eq!(want.len(), seeded_versions.len() + 3 * 4);
    wait_for_versions(&client, &berth, &want, "updated and new orders").await;
    wait_more_windows(&client, &berth, 2).await;
    let orders = all_orders(&client, &berth).await;
    assert_exactly(&orders, &want);
    for e in &SHOPS {
        for want in &latest[e.shop] {
            let newest = orders
                .iter()
                .filter(|o| o["shop"] == e.shop && o["order"]["order_id"] == want.id.to_string().as_str())
                .max_by_key(|o| o["seq"].as_u64())
                .expect("order present");
            check_fields(newest, e.platform, want);
        }
    }
    // The durable ERP queue holds every version exactly once too (nobody leased yet).
    let q: Value = client.get(berth.url("/v1/orders/queue")).send().await.unwrap().json().await.unwrap();
    assert_eq!(q["ready"].as_u64(), Some(want.len() as u64), "{q}");
    // Whatever happened, no secret reached the log.
    let log = berth.log();
    for secret in ["top-secret-1", "shpat_acme", "sess-a", "sess-b"] {
        assert!(!log.contains(secret), "secret {secret} appears in the berth log");
    }
}
