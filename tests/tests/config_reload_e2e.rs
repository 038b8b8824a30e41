//! berth.toml reloads while berth runs: a new rate limit applies to the next calls
//! (measured at the simulator), an invalid file is refused with its line while the
//! running limit stays in force, and connectors and shops come and go without a restart.

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{get_json, observed_rate, poll_until, Berth};
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

    // An emptied file (`: > berth.toml`) parses, but would stop every shop: refused too.
    std::fs::write(&config, "").unwrap();
    poll_until(Duration::from_secs(20), || async { berth.log().contains("an empty or truncated file?").then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the emptied config was not refused\n{}", berth.log()));
    let shops = berth_tests::get_json(berth.url("/v1/shops")).await;
    assert_eq!(shops.as_array().map(Vec::len), Some(1), "the shop kept running: {shops}");
    let still = observed_rate(&sim, Platform::Taobao, 24).await;
    assert!((5.4..=6.6).contains(&still), "after an emptied file the simulator saw {still:.2}/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_platform_and_its_shops_start_without_a_restart() {
    let mut cfg = SimConfig { seed: 8, history_hours: 6, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 10 }];
    cfg.shopify.bucket_size = 1000;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tb".into(), app_key: "k".into(), session: "sess".into(), orders: 15 }];
    cfg.taobao.calls_per_window = 1000;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let acme = format!(
        "[shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n"
    );
    let taobao = |page_size: u32| {
        format!(
            "[shops.tb]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
             settings = {{ gateway = \"{base}/taobao/router/rest\", app_key = \"k\", page_size = \"{page_size}\" }}\n\
             secrets = {{ app_secret = \"s\", session = \"sess\" }}\n"
        )
    };
    let sync = "[sync]\ninitial_lookback_hours = 8\nsettle_secs = 1\n";
    let shopify_only = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]);
    let both = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]);
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &format!("{sync}{shopify_only}{acme}"));
    let berth = Berth::start(&config);
    let entries = || async { get_json(berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0) };
    let shops = || async {
        let v = get_json(berth.url("/v1/shops")).await;
        let mut names: Vec<String> = v.as_array().map(|a| a.iter().filter_map(|s| s["shop"].as_str().map(String::from)).collect()).unwrap_or_default();
        names.sort();
        names
    };
    poll_until(Duration::from_secs(60), || async { (entries().await >= 10).then_some(()) }).await.expect("acme's orders");

    // A connector for a new platform and its shop, plus a shop missing a required key.
    let bad = "[shops.bad]\nconnector = \"taobao\"\nsettings = { gateway = \"http://127.0.0.1:9/x\", app_key = \"k\" }\n";
    berth_tests::write_config(dir.path(), &format!("{sync}{both}{acme}{}{bad}", taobao(5)));
    poll_until(Duration::from_secs(60), || async { (entries().await >= 25).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the new shop's orders never came\n{}", berth.log()));
    let log = berth.log();
    assert!(log.contains("connector `taobao` (taobao) loaded") && log.contains("shop `tb` added and started"), "{log}");
    assert!(log.contains("shop `bad`: connector `taobao` needs config key `app_secret`"), "{log}");
    assert_eq!(shops().await, ["acme", "tb"]);
    let connectors = get_json(berth.url("/v1/connectors")).await;
    assert_eq!(connectors.as_array().map(Vec::len), Some(2), "{connectors}");

    // Remove acme, change tb: acme stops, tb restarts with its new settings and keeps working.
    berth_tests::write_config(dir.path(), &format!("{sync}{both}{}", taobao(7)));
    poll_until(Duration::from_secs(30), || async { (shops().await == ["tb"]).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("acme was not removed\n{}", berth.log()));
    poll_until(Duration::from_secs(30), || async { berth.log().contains("shop `tb` restarted with its new settings").then_some(()) })
        .await
        .unwrap_or_else(|| panic!("tb was not restarted\n{}", berth.log()));
    let gone = reqwest::get(berth.url("/v1/shops/acme/stock")).await.unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    sim.state.create(Platform::Taobao, "tb").unwrap();
    poll_until(Duration::from_secs(60), || async { (entries().await >= 26).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("tb stopped working after its restart\n{}", berth.log()));
    assert!(!berth.log().contains("take effect only after a restart"), "{}", berth.log());
}
