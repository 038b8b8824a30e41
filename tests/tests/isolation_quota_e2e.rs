//! A connector that claims a platform of its own ("hostile") but calls the Taobao-like
//! gateway with a Taobao app's credentials, as fast as the host lets it, beside two real
//! Taobao shops on that app key. The request's destination picks the bucket it spends
//! (`[platforms.taobao] hosts`), whoever sends it: the simulator sees the app's calls
//! held to the platform's rate, never the loop's speed, the app is never banned, and the
//! real shops' orders keep arriving and their stock reaches the platform. A shop of the platform without the quota setting is
//! refused at start, naming it.

use berth_sim::Platform;
use berth_tests::{get_json, observed_rate, poll_until, run_berth, taobao_shop, Berth};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const RATE: f64 = 6.0;
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_platforms_host_spends_that_platforms_bucket_whoever_calls_it() {
    // The platform bans the app above 10 calls a second.
    let cfg = berth_tests::taobao_sim(20, 3, &[("t1", 40), ("t2", 40)], 10);
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gateway = format!("{}/taobao/router/rest", sim.base_url());
    let port = sim.base_url().rsplit(':').next().unwrap().to_string();
    let mut text = format!(
        "[sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\n\
         [platforms.taobao]\nrequests_per_second = {RATE}\nburst = 2\nquota_key = \"app_key\"\n\
         hosts = [\"127.0.0.1:{port}/taobao\"]\n\
         {connectors}\
         [connectors.hostile]\ncomponent = {hostile:?}\nextra_hosts = [\"127.0.0.1\"]\n\
         [connectors.hostile.limits]\ncall_timeout_ms = 4000\n",
        connectors = berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
        hostile = plugins::HOSTILE,
    );
    text.push_str(&taobao_shop("t1", "taobao", &gateway, "sess-t1", ""));
    text.push_str(&taobao_shop("t2", "taobao", &gateway, "sess-t2", ""));
    text.push_str(&taobao_shop("evilmart", "hostile", &gateway, "sess-t1", &format!(", mode = \"foreign-quota\", target = \"{gateway}\"")));
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &text);

    // A Taobao shop without the app key its platform counts by: refused, by name.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&config).unwrap() + &format!(
        "[shops.t3]\nconnector = \"taobao\"\nsettings = {{ gateway = \"{gateway}\" }}\nsecrets = {{ app_secret = \"s\", session = \"x\" }}\n"
    ))
    .unwrap();
    let (code, _, err) = run_berth(&["check-config", "--config", bad.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("shop `t3`: platform `taobao` counts calls per `app_key` (its quota_key), and the shop has no `app_key`"), "{err}");

    let berth = Berth::start(&config);
    let requests = || sim.state.stats().get(&Platform::Taobao).map(|s| s.requests).unwrap_or(0);
    // The loop is on: the hostile shop's calls wait in Taobao's bucket.
    poll_until(DEADLINE, || async {
        let m = reqwest::get(berth.url("/metrics")).await.ok()?.text().await.ok()?;
        (berth_tests::metric_sum(&m, "berth_ratelimit_wait_seconds_total{platform=\"taobao\"") > 1.0 && requests() > 20).then_some(())
    })
    .await
    .expect("the hostile connector's requests wait in Taobao's bucket");
    // What reached the platform: the app's rate, not the loop's.
    let rate = observed_rate(&sim, Platform::Taobao, 36).await;
    eprintln!("the Taobao app saw {rate:.2} calls/s with the loop running (bucket {RATE}/s)");
    assert!(rate <= RATE * 1.15, "{rate:.2} calls/s reached the platform, over the {RATE}/s bucket");
    assert_eq!(sim.state.stats()[&Platform::Taobao].throttled, 0, "the platform never had to ban the app");

    // The real shops: every seeded order, then new ones, arrive while the loop runs.
    let count = |shop: &'static str| {
        let url = berth.url(&format!("/v1/orders?limit=1000&shop={shop}"));
        async move { get_json(url).await["orders"].as_array().map_or(0, Vec::len) }
    };
    poll_until(DEADLINE, || async { (count("t1").await >= 40 && count("t2").await >= 40).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the real shops' orders did not arrive\n{}", berth.log()));
    for shop in ["t1", "t2"] {
        let before = count(shop).await;
        sim.state.create(Platform::Taobao, shop).unwrap();
        poll_until(DEADLINE, || async { (count(shop).await > before).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{shop}'s new order did not arrive"));
    }
    assert!(berth_tests::stock_reaches(&sim, &berth, None, Platform::Taobao, "t2", 37, DEADLINE).await, "t2's stock update did not reach the platform");
    // The loop never stopped: it is still spending the bucket, not refused outright.
    let evil = get_json(berth.url("/v1/shops")).await;
    let evil = evil.as_array().unwrap().iter().find(|s| s["shop"] == "evilmart").unwrap().clone();
    assert!(evil["pages"].as_u64().unwrap_or(0) >= 1, "{evil}");
    let platforms = get_json(berth.url("/v1/platforms")).await;
    assert_eq!(platforms["taobao"]["limits"]["hosts"][0], format!("127.0.0.1:{port}/taobao"), "{platforms}");
    assert_eq!(platforms["taobao"]["limits"]["hosts_from"], "config");
}
