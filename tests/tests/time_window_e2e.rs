//! Allowed time windows: with `[platforms.taobao] windows` opening a few seconds from
//! now, no call reaches the platform before the window opens; then every order arrives.

use berth_sim::{Platform, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{poll_until, Berth};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// HH:MM:SS (UTC) of a Unix time in seconds.
fn hms(unix_s: u64) -> String {
    let s = unix_s % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_the_window_to_open() {
    let mut cfg = SimConfig { seed: 6, history_hours: 10, ..SimConfig::default() };
    cfg.shopify.shops.clear();
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "t1".into(), app_key: "k".into(), session: "sess".into(), orders: 30 }];
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // Far enough ahead for berth to start (a cold compile of the component) and pull for a while.
    let opens = now.as_secs() + 15;
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 12\nsettle_secs = 1\n\
             [platforms.taobao]\nwindows = [\"* {}-{}\"]\ntimezone = \"+00:00\"\n{}\
             [shops.t1]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
             settings = {{ gateway = \"{}/taobao/router/rest\", app_key = \"k\" }}\nsecrets = {{ app_secret = \"s\", session = \"sess\" }}\n",
            hms(opens),
            hms(opens + 3600),
            berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
            sim.base_url()
        ),
    );
    let berth = Berth::start(&config);
    // berth must have been up and pulling for a while before the window opens, or the
    // silence below would prove nothing.
    let up_for = (UNIX_EPOCH + Duration::from_secs(opens)).duration_since(SystemTime::now()).unwrap_or_default();
    assert!(up_for >= Duration::from_secs(2), "berth took too long to start for this test ({up_for:?} left)");
    let requests = || sim.state.stats().get(&Platform::Taobao).map(|s| s.requests).unwrap_or(0);
    // Until just before the window opens, the platform sees nothing.
    let until = UNIX_EPOCH + Duration::from_secs(opens) - Duration::from_millis(500);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(requests(), 0, "a call went out before the window opened\n{}", berth.log());
    let all = poll_until(Duration::from_secs(60), || async {
        let v: Value = reqwest::get(berth.url("/v1/orders/feed")).await.ok()?.json().await.ok()?;
        (v["entries"].as_u64()? >= 30).then_some(())
    })
    .await;
    assert!(all.is_some(), "orders missing after the window opened\n{}", berth.log());
}
