//! Crash loop: start the real `berth`, let it pull at full speed while the platforms keep
//! changing and an ERP keeps working against it (stock updates with rising quantities,
//! order leases and acks), SIGKILL it at a random moment, restart, fifty times.
//! Afterwards: every order's latest version was acked or is in the queue (leased but
//! unacked ones came back), no acked order comes back, no version is queued twice; every
//! SKU the ERP got an answer for ends on the platform at its newest quantity, and the
//! platform never saw an older quantity after a newer one.

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::erp::{erp_load, version, ErpLedger, Rng, Version};
use berth_tests::{poll_until, Berth};
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

/// Kills per run; a soak sets `BERTH_CRASH_KILLS` higher (never lower).
fn kills() -> usize {
    std::env::var("BERTH_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50).max(50)
}

fn config(dir: &std::path::Path, sim: &str) -> std::path::PathBuf {
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
{connectors}
[shops.acme]
connector = "shopify"
poll_interval_secs = 1
settings = {{ base_url = "{sim}/shopify/acme", page_size = "10" }}
secrets = {{ access_token = "tok" }}
[shops.tmall]
connector = "taobao"
poll_interval_secs = 1
settings = {{ gateway = "{sim}/taobao/router/rest", app_key = "k", page_size = "10" }}
secrets = {{ app_secret = "s", session = "sess" }}
"#,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_is_lost_or_queued_twice_across_repeated_sigkill() {
    let mut cfg = SimConfig { seed: 3, history_hours: 24, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 150 }];
    cfg.shopify.bucket_size = 1000;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tmall".into(), app_key: "k".into(), session: "sess".into(), orders: 150 }];
    cfg.taobao.calls_per_window = 1000;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.base_url());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash loop seed {seed}");
    let mut rng = Rng(seed);
    let shops = [(Platform::Shopify, "acme"), (Platform::Taobao, "tmall")];

    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().map(|i| i.sku).collect();
    let erp = Arc::new(Mutex::new(ErpLedger::default()));

    let started = Instant::now();
    let kills = kills();
    for round in 0..kills {
        let berth = Berth::start(&config);
        let stop = Arc::new(AtomicBool::new(false));
        let nodes = Arc::new(Mutex::new(vec![berth.base_url.clone()]));
        let skus = BTreeMap::from([("acme".to_string(), skus.clone()), ("tmall".to_string(), skus.clone())]);
        let load = tokio::spawn(erp_load(nodes, skus, erp.clone(), stop.clone(), Rng(seed ^ (round as u64 + 1) * 0x9E37_79B9), 1));
        // The platforms move on while berth runs: new orders, changed orders.
        for (platform, shop) in shops {
            sim.state.create(platform, shop).unwrap();
            let list = sim.state.orders(platform, shop);
            let pick = list[rng.below(list.len() as u64) as usize].id;
            sim.state.touch(platform, shop, pick).unwrap();
        }
        // The kill point: anywhere from right after start to well into the pull.
        tokio::time::sleep(Duration::from_millis(rng.below(700))).await;
        berth.kill();
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(60 + 20 * kills as u64), "crash loop too slow at round {round}");
    }

    let want: BTreeSet<Version> = shops
        .iter()
        .flat_map(|(p, s)| sim.state.orders(*p, s).into_iter().map(move |o| (s.to_string(), o.id.to_string(), o.updated_s * 1000)))
        .collect();
    let erp = Arc::try_unwrap(erp).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "{kills} kills: ERP got 202 for {} stock posts, leased {} orders, acked {} ({} more acks cut off by a kill)",
        erp.stock_posts,
        erp.leases,
        erp.acked_orders.len(),
        erp.acks_in_doubt.len()
    );
    assert!(erp.stock_posts > 0 && !erp.acked_orders.is_empty(), "the ERP load never got through");
    let berth = Berth::start(&config);
    let client = reqwest::Client::new();

    // Orders: what was not acked must all come back (leases left to expire included).
    let leased = std::sync::Mutex::new(Vec::<Value>::new());
    let have_all = poll_until(Duration::from_secs(180), || async {
        let r: Value = client
            .post(berth.url("/v1/orders/lease"))
            .json(&json!({"max": 1000, "visibility_secs": 3600}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let mut leased = leased.lock().unwrap();
        leased.extend(r["leases"].as_array()?.iter().cloned());
        let got: BTreeSet<Version> = leased
            .iter()
            .map(version)
            .chain(erp.acked_orders.iter().cloned())
            .chain(erp.acks_in_doubt.iter().cloned())
            .collect();
        want.is_subset(&got).then_some(())
    })
    .await;
    let leased = leased.into_inner().unwrap();
    let got: Vec<Version> = leased.iter().map(version).collect();
    let unique: BTreeSet<Version> = got.iter().cloned().collect();
    let delivered: BTreeSet<Version> =
        unique.iter().chain(&erp.acked_orders).chain(&erp.acks_in_doubt).cloned().collect();
    let missing: Vec<_> = want.difference(&delivered).take(10).collect();
    assert!(have_all.is_some(), "orders lost after {kills} SIGKILLs (seed {seed}): {missing:?}\n{}", berth.log());
    assert_eq!(got.len(), unique.len(), "an order version was queued twice (seed {seed})");
    let back: Vec<_> = unique.intersection(&erp.acked_orders).take(5).collect();
    assert!(back.is_empty(), "acked orders came back (seed {seed}): {back:?}");

    // Stock: every SKU drains to its newest quantity, and never went backwards.
    let drained = poll_until(Duration::from_secs(180), || async {
        let q: Value = client.get(berth.url("/v1/stock/queue")).send().await.ok()?.json().await.ok()?;
        q.as_object()?.values().all(|s| s["pending"] == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "stock still pending after the crash loop (seed {seed})\n{}", berth.log());
    for ((shop, sku), acked) in &erp.acked_quantity {
        let platform = if shop == "acme" { Platform::Shopify } else { Platform::Taobao };
        let item = sim.state.stock(platform, shop).into_iter().find(|i| &i.sku == sku).unwrap();
        assert!(
            item.history.windows(2).all(|w| w[0] <= w[1]),
            "{shop}/{sku}: a stale quantity was pushed after a newer one (seed {seed}): {:?}",
            item.history
        );
        let rec: Value = client.get(berth.url(&format!("/v1/shops/{shop}/stock/{sku}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(rec["state"], "pushed", "{shop}/{sku}: {rec}");
        let desired = rec["quantity"].as_u64().unwrap() as u32;
        assert!(desired >= *acked, "{shop}/{sku}: acknowledged quantity {acked} lost, berth wants {desired} (seed {seed})");
        assert_eq!(item.quantity, desired, "{shop}/{sku}: platform has {}, berth wants {desired} (seed {seed})", item.quantity);
    }
}
