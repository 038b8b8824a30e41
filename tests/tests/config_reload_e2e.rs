//! berth.toml reloads while berth runs: a new rate limit applies to the next calls
//! (measured at the simulator), and an invalid file is refused with its line while the
//! running limit stays in force.

use berth_sim::{Platform, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{observed_rate, poll_until, Berth};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

fn config_text(sim: &str, rate: f64) -> String {
    format!(
        "[sync]\ninitial_lookback_hours = 24\nsettle_secs = 1\n\
         [platforms.taobao]\nrequests_per_second = {rate}\nburst = 1\n{}\
         [shops.t1]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
         settings = {{ gateway = \"{sim}/taobao/router/rest\", app_key = \"k\", page_size = \"5\" }}\n\
         secrets = {{ app_secret = \"s\", session = \"sess\" }}\n",
        berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_reload_and_bad_files_are_refused() {
    let mut cfg = SimConfig { seed: 4, history_hours: 20, ..SimConfig::default() };
    cfg.shopify.shops.clear();
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "t1".into(), app_key: "k".into(), session: "sess".into(), orders: 600 }];
    cfg.taobao.calls_per_window = 100;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &config_text(&sim.base_url(), 2.0));
    let berth = Berth::start(&config);
    poll_until(Duration::from_secs(60), || async {
        (sim.state.stats().get(&Platform::Taobao).map(|s| s.requests).unwrap_or(0) >= 3).then_some(())
    })
    .await
    .expect("no calls");

    let slow = observed_rate(&sim, Platform::Taobao, 8).await;
    assert!((1.8..=2.2).contains(&slow), "at 2/s the simulator saw {slow:.2}/s");

    berth_tests::write_config(dir.path(), &config_text(&sim.base_url(), 6.0));
    poll_until(Duration::from_secs(20), || async { berth.log().contains("config reloaded").then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the new config was not picked up\n{}", berth.log()));
    let fast = observed_rate(&sim, Platform::Taobao, 24).await;
    assert!((5.4..=6.6).contains(&fast), "after reloading 6/s the simulator saw {fast:.2}/s");

    // A broken file: refused, with the line, and 6/s stays.
    std::fs::write(&config, "[platforms.taobao]\nrequests_per_second = \n").unwrap();
    poll_until(Duration::from_secs(20), || async { berth.log().contains("config reload refused").then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the broken config was not reported\n{}", berth.log()));
    let log = berth.log();
    let line = log.lines().find(|l| l.contains("config reload refused")).unwrap();
    assert!(line.contains("line 2"), "{line}");
    let still = observed_rate(&sim, Platform::Taobao, 24).await;
    assert!((5.4..=6.6).contains(&still), "after a refused reload the simulator saw {still:.2}/s");
}
