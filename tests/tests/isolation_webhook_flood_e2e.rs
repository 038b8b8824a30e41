//! 40 + 40 concurrent webhooks to the shops of two connectors whose handler sleeps 9 s,
//! beside two real Taobao shops, in a host of 16 instance slots. Each connector has its
//! reserved share of the slots and webhooks never wait for one: `hostile-a` (its shop
//! may run 40 webhooks at once) gets no more than its share of the pool, `hostile-b`
//! no more than `max_webhook_calls_per_shop` (4); the rest are answered 429 at once. The
//! slow ones pass their 5 s deadline (503, so the platform sends them again) and count
//! against their circuit breaker, which opens. The real shops go on pulling — no pull
//! fails for want of an instance — and a new order arrives during the flood.

use berth_sim::Platform;
use berth_tests::{get_json, poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);

fn shop<'a>(shops: &'a Value, name: &str) -> &'a Value {
    shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == name)).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_flood_takes_no_slot_the_real_shops_need() {
    let cfg = berth_tests::taobao_sim(22, 2, &[("t1", 10), ("t2", 10)], 1000);
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gateway = format!("{}/taobao/router/rest", sim.base_url());
    let mut text = format!(
        "[sync]\ninitial_lookback_hours = 2\nsettle_secs = 1\nretry_base_ms = 200\nretry_max_ms = 1000\n\
         [runtime]\nmax_instances = 16\n\
         [platforms.taobao]\nrequests_per_second = 50.0\nburst = 5\nquota_key = \"app_key\"\n\
         {connectors}",
        connectors = berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
    );
    for (c, per_shop) in [("hostile-a", 40), ("hostile-b", 4)] {
        text.push_str(&format!(
            "[connectors.{c}]\nplatform = \"hostile\"\ncomponent = {:?}\n\
             [connectors.{c}.limits]\nmax_webhook_calls_per_shop = {per_shop}\n\
             [shops.{c}-shop]\nconnector = \"{c}\"\npoll_interval_secs = 3600\nsettings = {{ mode = \"slow-webhook\" }}\n",
            plugins::HOSTILE
        ));
    }
    for n in ["t1", "t2"] {
        text.push_str(&berth_tests::taobao_shop(n, "taobao", &gateway, &format!("sess-{n}"), ""));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &text);
    let berth = Berth::start(&config);
    let pages = |shops: &Value| shop(shops, "t1")["pages"].as_u64().unwrap_or(0) + shop(shops, "t2")["pages"].as_u64().unwrap_or(0);
    poll_until(DEADLINE, || async { (pages(&get_json(berth.url("/v1/shops")).await) >= 4).then_some(()) })
        .await
        .expect("the real shops pull");
    let connectors = get_json(berth.url("/v1/connectors")).await;
    let taobao = connectors.as_array().unwrap().iter().find(|c| c["name"] == "taobao").unwrap().clone();
    assert!(taobao["instances"]["reserved"].as_u64().unwrap() >= 5, "an even share of 16 slots over 3 connectors: {taobao}");

    // The flood: 40 webhooks to each hostile connector's shop at once.
    let before = get_json(berth.url("/v1/shops")).await;
    let client = reqwest::Client::new();
    let flood: Vec<_> = ["hostile-a-shop", "hostile-b-shop"]
        .iter()
        .flat_map(|s| std::iter::repeat_n(berth.url(&format!("/v1/webhooks/{s}")), 40))
        .map(|url| {
            let client = client.clone();
            tokio::spawn(async move { client.post(url).body("{}").send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    // While the slow ones hold their slots: the real shops' stock and new order go through.
    assert!(berth_tests::stock_reaches(&sim, &berth, None, Platform::Taobao, "t2", 41, DEADLINE).await, "t2's stock during the flood");
    sim.state.create(Platform::Taobao, "t1").unwrap();
    let count = || async { get_json(berth.url("/v1/orders?limit=1000&shop=t1")).await["orders"].as_array().map_or(0, Vec::len) };
    poll_until(DEADLINE, || async { (count().await >= 11).then_some(()) }).await.expect("t1's new order during the flood");
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap());
    }
    let tally = |code: u16| statuses.iter().filter(|s| **s == code).count();
    eprintln!("webhook answers: 429 × {}, 503 × {}, other {:?}", tally(429), tally(503), statuses.iter().filter(|s| **s != 429 && **s != 503).collect::<Vec<_>>());
    // hostile-a runs at most its share of the pool at once (5 reserved + the 1 shared
    // slot), hostile-b its shop's 4; the rest are told at once (a straggler arriving
    // after a slot freed may run too, so the bound is loose).
    assert!(tally(429) >= 60, "{statuses:?}");
    assert_eq!(tally(429) + tally(503), 80, "every webhook was refused or timed out: {statuses:?}");

    // The real shops kept pulling, and none of their pulls failed for want of a slot.
    let after = get_json(berth.url("/v1/shops")).await;
    assert!(pages(&after) > pages(&before), "no pull during the flood");
    for t in ["t1", "t2"] {
        let e = shop(&after, t)["last_error"].as_str().unwrap_or("").to_string();
        assert!(!e.contains("instance slot") && !e.contains("running (max_concurrent_calls)"), "{t}: {e}");
        assert_eq!(shop(&before, t)["errors"], shop(&after, t)["errors"], "{t} had pull errors during the flood: {}", shop(&after, t));
    }
    // The deadline hits opened the hostile connectors' breakers.
    let isolated = poll_until(DEADLINE, || async {
        let c = get_json(berth.url("/v1/connectors")).await;
        let open = |name: &str| c.as_array()?.iter().find(|x| x["name"] == name).map(|x| x["breaker"]["state"] == "open");
        (open("hostile-a")? && open("hostile-b")?).then_some(())
    })
    .await;
    assert!(isolated.is_some(), "the hostile breakers stayed closed: {}", get_json(berth.url("/v1/connectors")).await);
    let metrics = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    let busy = |c: &str| berth_tests::metric_sum(&metrics, &format!("berth_connector_limit_hits_total{{connector=\"{c}\",limit=\"webhook_busy\"}}"));
    assert!(busy("hostile-a") >= 25.0 && busy("hostile-b") >= 25.0, "the refusals are counted: {} {}", busy("hostile-a"), busy("hostile-b"));
    assert!(
        berth_tests::metric_sum(&metrics, "berth_connector_limit_hits_total{connector=\"hostile-a\",limit=\"instances\"}") >= 25.0,
        "hostile-a met the pool, not its shop's bound"
    );
}
