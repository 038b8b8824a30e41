//! A 429 storm: a Shopify store with a tiny leaky bucket throttles most calls. berth
//! must wait as long as each `Retry-After` says (the simulator counts any request that
//! comes earlier) and still bring in every order. Reading the call-limit header is
//! turned off here, so the storm is answered by `Retry-After` alone; `platform_policy_e2e`
//! shows the same store with it on.

use berth_sim::{Platform, ShopifyShop, SimConfig};
use berth_tests::{poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backs_off_as_told_and_completes() {
    let mut cfg = SimConfig { seed: 13, history_hours: 10, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 80 }];
    cfg.shopify.bucket_size = 2;
    cfg.shopify.leak_per_sec = 2.0;
    cfg.taobao.shops.clear();
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[platforms.shopify]\ncall_limit_header = false\n[sync]\ninitial_lookback_hours = 12\nsettle_secs = 1\n{}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{}/shopify/acme\", page_size = \"4\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            sim.base_url()
        ),
    );
    let berth = Berth::start(&config);
    let all = poll_until(Duration::from_secs(120), || async {
        let v: Value = reqwest::get(berth.url("/v1/orders/feed")).await.ok()?.json().await.ok()?;
        (v["entries"].as_u64()? >= 80).then_some(())
    })
    .await;
    assert!(all.is_some(), "orders missing after the storm\n{}", berth.log());
    let stats = sim.state.stats()[&Platform::Shopify].clone();
    eprintln!("{stats:?}");
    assert!(stats.throttled >= 3, "the storm never happened: {stats:?}");
    assert_eq!(stats.early_after_throttle, 0, "berth came back before Retry-After had passed: {stats:?}");
    assert!(stats.throttled <= stats.ok, "berth kept hammering a throttled store: {stats:?}");
}
