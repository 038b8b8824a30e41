//! Host-side rate limits: two Taobao shops on one app key share the app's quota. With
//! `[platforms.taobao] requests_per_second = 6, quota_key = "app_key"` the simulator (which
//! bans an app above 10 calls/s) sees about 6 calls/s in steady state and no throttling;
//! every order still arrives.

use berth_sim::{Platform, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{observed_rate, poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const RATE: f64 = 6.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shops_sharing_an_app_key_share_its_rate() {
    let mut cfg = SimConfig { seed: 9, history_hours: 20, ..SimConfig::default() };
    cfg.shopify.shops.clear();
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = ["t1", "t2"]
        .iter()
        .map(|n| TaobaoShop { nick: n.to_string(), app_key: "k".into(), session: format!("sess-{n}"), orders: 300 })
        .collect();
    cfg.taobao.calls_per_window = 10;
    cfg.taobao.window_ms = 1000;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut text = format!(
        "[sync]\ninitial_lookback_hours = 24\nsettle_secs = 1\n\
         [platforms.taobao]\nrequests_per_second = {RATE}\nburst = 2\nquota_key = \"app_key\"\n{}",
        berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)])
    );
    for n in ["t1", "t2"] {
        text.push_str(&format!(
            "[shops.{n}]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
             settings = {{ gateway = \"{}/taobao/router/rest\", app_key = \"k\", page_size = \"5\" }}\n\
             secrets = {{ app_secret = \"s\", session = \"sess-{n}\" }}\n",
            sim.base_url()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &text);
    let berth = Berth::start(&config);
    let requests = || sim.state.stats().get(&Platform::Taobao).map(|s| s.requests).unwrap_or(0);

    // Steady state: past the first calls and the burst.
    poll_until(Duration::from_secs(60), || async { (requests() >= 10).then_some(()) }).await.expect("no calls");
    let rate = observed_rate(&sim, Platform::Taobao, 48).await;
    eprintln!("observed {rate:.2} calls/s against a limit of {RATE}");
    assert!((RATE * 0.9..=RATE * 1.1).contains(&rate), "observed {rate:.2} calls/s, limit {RATE}");
    let throttled = sim.state.stats()[&Platform::Taobao].throttled;
    assert_eq!(throttled, 0, "the platform throttled calls the host should have held back");

    // And the work completes: every order of both shops arrives.
    let done = poll_until(Duration::from_secs(120), || async {
        let v: Value = reqwest::get(berth.url("/v1/orders/feed")).await.ok()?.json().await.ok()?;
        (v["entries"].as_u64()? >= 600).then_some(())
    })
    .await;
    assert!(done.is_some(), "orders missing\n{}", berth.log());
    assert_eq!(sim.state.stats()[&Platform::Taobao].throttled, 0);
}
