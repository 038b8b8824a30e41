//! Stock updates end to end: the ERP posts absolute quantities to the real binary, the
//! Shopify and Taobao connectors push them to the simulator, and the results are
//! queryable per SKU. Covers coalescing (newest wins, never backwards), stale ERP
//! sequence numbers, throttling on both platforms, injected 5xx, an unknown SKU,
//! dead letters and their replay, bad requests, and results surviving a SIGKILL.

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{poll_until, post_json, Berth};
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);

fn config(dir: &std::path::Path, sim: &str) -> std::path::PathBuf {
    berth_tests::write_config(
        dir,
        &format!(
            r#"
# This test is about answering 429s: keep the host from steering clear of them (the
# call-limit header, and the rate the Taobao manifest declares, which would keep the
# pushes under TOP's small window here).
[platforms.shopify]
call_limit_header = false
[platforms.taobao]
use_manifest_rate = false
[sync]
initial_lookback_hours = 2
[stock]
max_attempts = 3
batch_size = 10
retry_base_ms = 50
retry_max_ms = 200
{connectors}
[shops.acme]
connector = "shopify"
poll_interval_secs = 3600
settings = {{ base_url = "{sim}/shopify/acme" }}
secrets = {{ access_token = "shp-token-xyz" }}
[shops.tmall]
connector = "taobao"
poll_interval_secs = 3600
settings = {{ gateway = "{sim}/taobao/router/rest", app_key = "k", sign_method = "hmac" }}
secrets = {{ app_secret = "tb-secret-xyz", session = "tb-session-xyz" }}
"#,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
        ),
    )
}

async fn submit(client: &reqwest::Client, berth: &Berth, shop: &str, updates: Value) -> (u16, Value) {
    let resp = client.post(berth.url(&format!("/v1/shops/{shop}/stock"))).json(&json!({ "updates": updates })).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, berth: &Berth, path: &str) -> Value {
    client.get(berth.url(path)).send().await.unwrap().json().await.unwrap()
}

/// Wait until no SKU of any shop is pending.
async fn drained(client: &reqwest::Client, berth: &Berth) -> Value {
    let q = poll_until(DEADLINE, || async {
        let q = get(client, berth, "/v1/stock/queue").await;
        q.as_object()?.values().all(|s| s["pending"] == 0).then_some(q)
    })
    .await;
    match q {
        Some(q) => q,
        None => panic!("stock still pending: {}\n{}", get(client, berth, "/v1/stock/queue").await, berth.log()),
    }
}

fn sim_item(sim: &berth_sim::SimHandle, platform: Platform, shop: &str, sku: &str) -> berth_sim::inventory::StockItem {
    sim.state.stock(platform, shop).into_iter().find(|i| i.sku == sku).expect("SKU in the catalogue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_reaches_both_platforms_newest_first() {
    let mut cfg = SimConfig { seed: 5, history_hours: 1, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "shp-token-xyz".into(), orders: 5 }];
    // Small buckets so pushes get throttled on both platforms.
    cfg.shopify.bucket_size = 4;
    cfg.shopify.leak_per_sec = 10.0;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "tb-secret-xyz".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tmall".into(), app_key: "k".into(), session: "tb-session-xyz".into(), orders: 5 }];
    cfg.taobao.calls_per_window = 15;
    cfg.taobao.window_ms = 1000;
    cfg.taobao.ban_secs = 1;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.base_url());
    let client = reqwest::Client::new();
    let berth = Berth::start(&config);
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().map(|i| i.sku).collect();
    assert_eq!(skus.len(), 24);

    // Bad requests are refused with a reason and store nothing.
    let (status, body) = submit(&client, &berth, "nope", json!([{"sku": "A", "quantity": 1}])).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("acme"), "{body}");
    let (status, body) = submit(&client, &berth, "acme", json!([{"sku": "A", "quantity": -1}])).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("expected"), "{body}");
    let (status, body) = submit(&client, &berth, "acme", json!([{"sku": "x".repeat(200), "quantity": 1}])).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1..=128"), "{body}");
    let (status, _) = submit(&client, &berth, "acme", json!([])).await;
    assert_eq!(status, 400);
    let listed = get(&client, &berth, "/v1/shops/acme/stock").await;
    assert_eq!(listed["skus"].as_array().unwrap().len(), 0, "a refused request stored something: {listed}");

    // Every SKU on both shops, plus a SKU neither platform knows; TOP answers 503 a few times.
    sim.state.inject(Platform::Taobao, berth_sim::faults::FaultKind::Http503, 3);
    let mut all: Vec<Value> = skus.iter().enumerate().map(|(i, s)| json!({"sku": s, "quantity": 100 + i, "seq": 1})).collect();
    all.push(json!({"sku": "NOPE-1", "quantity": 5}));
    for shop in ["acme", "tmall"] {
        let (status, body) = submit(&client, &berth, shop, json!(all)).await;
        assert_eq!(status, 202, "{body}");
        assert!(body["results"].as_array().unwrap().iter().all(|r| r["outcome"] == "queued"), "{body}");
    }
    // One SKU changes 30 times while pushes are under way: the newest must win.
    let hot = &skus[0];
    for q in 1..=30u32 {
        let (status, body) = submit(&client, &berth, "acme", json!([{"sku": hot, "quantity": 1000 + q, "seq": 1 + q}])).await;
        assert_eq!(status, 202, "{body}");
    }
    // An update older than what the ERP already sent is ignored.
    let (_, body) = submit(&client, &berth, "acme", json!([{"sku": skus[1], "quantity": 7, "seq": 1}])).await;
    assert_eq!(body["results"][0]["outcome"], "stale", "{body}");

    let q = drained(&client, &berth).await;
    for (platform, shop) in [(Platform::Shopify, "acme"), (Platform::Taobao, "tmall")] {
        assert_eq!(q[shop]["pushed"], 24, "{q}");
        assert_eq!(q[shop]["rejected"], 1, "{q}");
        for (i, sku) in skus.iter().enumerate().skip(1) {
            let item = sim_item(&sim, platform, shop, sku);
            assert_eq!(item.quantity, 100 + i as u32, "{shop} {sku}");
        }
        let rejected = get(&client, &berth, &format!("/v1/shops/{shop}/stock?state=rejected")).await;
        let nope = &rejected["skus"][0];
        assert_eq!(nope["sku"], "NOPE-1", "{rejected}");
        assert!(nope["last_error"].as_str().unwrap().contains("SKU") || nope["last_error"].as_str().unwrap().contains("outer_id"), "{nope}");
    }
    let hot_item = sim_item(&sim, Platform::Shopify, "acme", hot);
    assert_eq!(hot_item.quantity, 1030);
    assert!(hot_item.history.windows(2).all(|w| w[0] <= w[1]), "an older quantity followed a newer one: {:?}", hot_item.history);
    assert!(hot_item.history.len() <= 31, "{:?}", hot_item.history);
    eprintln!("hot SKU: 31 submissions, {} platform writes: {:?}", hot_item.history.len(), hot_item.history);
    let rec = get(&client, &berth, &format!("/v1/shops/acme/stock/{hot}")).await;
    assert_eq!((rec["state"].as_str(), rec["quantity"].as_u64(), rec["pushed_quantity"].as_u64(), rec["seq"].as_u64()), (Some("pushed"), Some(1030), Some(1030), Some(31)), "{rec}");
    let stats = sim.state.stats();
    assert!(stats[&Platform::Shopify].throttled > 0 && stats[&Platform::Taobao].throttled > 0, "pushes were never throttled: {stats:?}");
    assert!(q["acme"]["pusher"]["throttled"].as_u64().unwrap() + q["tmall"]["pusher"]["throttled"].as_u64().unwrap() > 0, "{q}");

    // A platform that keeps failing: the SKU dies after max_attempts, then replays.
    sim.state.inject(Platform::Shopify, berth_sim::faults::FaultKind::Http500, 1000);
    let (status, _) = submit(&client, &berth, "acme", json!([{"sku": skus[2], "quantity": 77}])).await;
    assert_eq!(status, 202);
    let dead = poll_until(DEADLINE, || async {
        let d = get(&client, &berth, "/v1/shops/acme/stock?state=dead").await;
        (d["skus"].as_array()?.len() == 1).then_some(d)
    })
    .await
    .expect("the SKU never reached the dead letters");
    assert_eq!(dead["skus"][0]["attempts"], 3, "{dead}");
    assert!(dead["skus"][0]["last_error"].as_str().unwrap().contains("500"), "{dead}");
    assert_eq!(sim_item(&sim, Platform::Shopify, "acme", &skus[2]).quantity, 102);
    sim.state.clear_faults(Platform::Shopify);
    let replayed: Value = post_json(&client, berth.url("/v1/shops/acme/stock/dead-letters/replay"), json!({"skus": [skus[2]]})).await;
    assert_eq!(replayed["count"], 1);
    drained(&client, &berth).await;
    assert_eq!(sim_item(&sim, Platform::Shopify, "acme", &skus[2]).quantity, 77);

    // Results survive a crash.
    berth.kill();
    let berth = Berth::start(&config);
    let rec = get(&client, &berth, &format!("/v1/shops/acme/stock/{}", skus[2])).await;
    assert_eq!((rec["state"].as_str(), rec["pushed_quantity"].as_u64()), (Some("pushed"), Some(77)), "{rec}");
    let missing = client.get(berth.url("/v1/shops/acme/stock/NEVER")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    // A rejected SKU can be purged; a pushed one cannot.
    let purged: Value = post_json(&client, berth.url("/v1/shops/acme/stock/dead-letters/purge"), json!({"skus": ["NOPE-1", skus[2]]})).await;
    assert_eq!(purged["count"], 1, "{purged}");
    let gone = client.get(berth.url("/v1/shops/acme/stock/NOPE-1")).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let log = berth.log();
    assert!(["shp-token-xyz", "tb-secret-xyz", "tb-session-xyz"].iter().all(|s| !log.contains(s)), "a secret reached the log");
}
