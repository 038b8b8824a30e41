//! Crash loop: start the real `berth`, let it pull at full speed while the platforms keep
//! changing, SIGKILL it at a random moment, restart, fifty times. Afterwards every order's
//! latest version must be in the durable ERP queue, and no version may be there twice.

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{poll_until, Berth};
use serde_json::{json, Value};
use std::collections::BTreeSet;
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
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY), ("taobao", plugins::TAOBAO)]),
        ),
    )
    .unwrap();
    path
}

/// xorshift: kill points vary per run; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
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

    let started = Instant::now();
    let kills = kills();
    for round in 0..kills {
        let berth = Berth::start(&config);
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
        assert!(started.elapsed() < Duration::from_secs(60 + 20 * kills as u64), "crash loop too slow at round {round}");
    }

    let want: BTreeSet<(String, String, i64)> = shops
        .iter()
        .flat_map(|(p, s)| sim.state.orders(*p, s).into_iter().map(move |o| (s.to_string(), o.id.to_string(), o.updated_s * 1000)))
        .collect();
    let berth = Berth::start(&config);
    let client = reqwest::Client::new();
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
        let got: BTreeSet<(String, String, i64)> = leased.iter().map(version).collect();
        want.is_subset(&got).then_some(())
    })
    .await;
    let leased = leased.into_inner().unwrap();
    let got: Vec<(String, String, i64)> = leased.iter().map(version).collect();
    let unique: BTreeSet<_> = got.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&unique).take(10).collect();
    assert!(have_all.is_some(), "orders lost after {kills} SIGKILLs (seed {seed}): {missing:?}\n{}", berth.log());
    assert_eq!(got.len(), unique.len(), "an order version was queued twice (seed {seed})");
}

fn version(l: &Value) -> (String, String, i64) {
    (
        l["shop"].as_str().unwrap_or_default().to_string(),
        l["order"]["order_id"].as_str().unwrap_or_default().to_string(),
        l["order"]["updated_at_ms"].as_i64().unwrap_or_default(),
    )
}
