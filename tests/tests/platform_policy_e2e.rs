//! Calling each platform on its own terms, against the simulator:
//! - Shopify's call-limit header keeps a store's bucket from overflowing (no 429 at all);
//! - with no rate in config, each shop is held to the rate the connector's manifest
//!   declares, shown in `/v1/platforms`; ops turn it off or set their own;
//! - quota usage shows in `/v1/platforms`, the gauge and the status page, and a
//!   `quota-usage` rule fires while a quota stays busy, before the platform throttles;
//! - an endpoint class (Taobao stock writes) has its own rate while other calls run faster;
//! - retry policies per platform (attempts, which errors retry) and their reload;
//! - a throttle suspends a platform's quota for the configured time;
//! - a hot-standby channel takes over while the primary fails, and hands back.

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{get_json, poll_until, post_json, rate_of, Berth};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);

fn shopify_sim(orders: usize, bucket: u32, leak: f64) -> SimConfig {
    let mut cfg = SimConfig { seed: 21, history_hours: 10, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders }];
    cfg.shopify.bucket_size = bucket;
    cfg.shopify.leak_per_sec = leak;
    cfg.taobao.shops.clear();
    cfg
}

fn taobao_sim(orders: usize, calls_per_window: u32) -> SimConfig {
    let mut cfg = SimConfig { seed: 22, history_hours: 10, ..SimConfig::default() };
    cfg.shopify.shops.clear();
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tb".into(), app_key: "k".into(), session: "sess".into(), orders }];
    cfg.taobao.calls_per_window = calls_per_window;
    cfg.taobao.window_ms = 1000;
    cfg.taobao.ban_secs = 1;
    cfg
}

fn shopify_shop(name: &str, base: &str, extra: &str) -> String {
    format!(
        "[shops.{name}]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{base}/shopify/acme\", page_size = \"4\"{extra} }}\nsecrets = {{ access_token = \"tok\" }}\n"
    )
}

fn taobao_shop(base: &str) -> String {
    format!(
        "[shops.tb]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
         settings = {{ gateway = \"{base}/taobao/router/rest\", app_key = \"k\", page_size = \"5\" }}\n\
         secrets = {{ app_secret = \"s\", session = \"sess\" }}\n"
    )
}

const SYNC: &str = "[sync]\ninitial_lookback_hours = 12\nsettle_secs = 1\n";

/// The one dead-lettered SKU of `shop`, once there is one.
async fn dead(berth: &Berth, shop: &str) -> Value {
    poll_until(DEADLINE, || async {
        let d = get_json(berth.url(&format!("/v1/shops/{shop}/stock?state=dead"))).await;
        (d["skus"].as_array()?.len() == 1).then_some(d["skus"][0].clone())
    })
    .await
    .unwrap_or_else(|| panic!("no dead letter for {shop}\n{}", berth.log()))
}

/// Taobao's limits in `/v1/platforms` once a reload has made them come from `from`.
async fn taobao_limits_from(berth: &Berth, from: &str) -> Value {
    poll_until(Duration::from_secs(20), || async {
        let l = get_json(berth.url("/v1/platforms")).await["taobao"]["limits"].clone();
        (l["limit_from"] == from).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("the reload did not make Taobao's limit come from {from}\n{}", berth.log()))
}

async fn feed_entries(berth: &Berth) -> u64 {
    get_json(berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0)
}

async fn all_orders(berth: &Berth, n: u64) {
    poll_until(DEADLINE, || async { (feed_entries(berth).await >= n).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("orders missing: wanted {n}\n{}", berth.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_limit_header_keeps_shopify_below_its_bucket() {
    // A bucket of 10 draining 2/s and 20 pages to read: at full speed it overflows.
    let sim = berth_sim::start(shopify_sim(80, 10, 2.0), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{SYNC}{}{}",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            shopify_shop("acme", &sim.base_url(), "")
        ),
    );
    let berth = Berth::start(&config);
    all_orders(&berth, 80).await;
    let stats = sim.state.stats()[&Platform::Shopify].clone();
    eprintln!("{stats:?}");
    assert!(stats.requests >= 20, "{stats:?}");
    assert_eq!(stats.throttled, 0, "berth let the bucket overflow: {stats:?}\n{}", berth.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_rate_holds_each_shop_when_ops_set_none() {
    // The Taobao connector declares 600 calls a minute with a burst of 10. The simulator
    // takes any rate, so only berth's own bucket can hold the calls back.
    let sim = berth_sim::start(taobao_sim(150, 10_000), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |platforms: &str| {
        berth_tests::write_config(
            dir.path(),
            &format!("{SYNC}{platforms}{}{}", berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]), taobao_shop(&sim.base_url())),
        )
    };
    let started = Instant::now();
    let berth = Berth::start(&write(""));
    let limits = get_json(berth.url("/v1/platforms")).await["taobao"]["limits"].clone();
    assert_eq!(limits["limit_from"], "manifest", "{limits}");
    assert_eq!(limits["declared_by"], "taobao", "{limits}");
    assert_eq!((limits["requests_per_second"].as_f64(), limits["burst"].as_u64()), (Some(10.0), Some(10)), "{limits}");
    // Every SKU pushed while 150 orders are pulled in pages of 5: far more calls than
    // the burst. At no moment has the simulator seen more than the bucket lets through
    // since berth started (a burst of 10, then 10 a second).
    let client = reqwest::Client::new();
    let skus: Vec<String> = sim.state.stock(Platform::Taobao, "tb").into_iter().map(|i| i.sku).collect();
    let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": 4})).collect();
    let r = post_json(&client, berth.url("/v1/shops/tb/stock"), json!({ "updates": updates })).await;
    assert_eq!(r["results"].as_array().map(Vec::len), Some(skus.len()), "{r}");
    let requests = || sim.state.stats().get(&Platform::Taobao).map_or(0, |s| s.requests);
    let pushed = || sim.state.stock(Platform::Taobao, "tb").iter().all(|i| i.quantity == 4);
    let done = poll_until(DEADLINE, || async {
        // The count is read before the clock, so the bound is never too tight.
        let (n, t) = (requests(), started.elapsed().as_secs_f64());
        let bound = 10.0 + 10.0 * t;
        assert!(n as f64 <= bound + 1.0, "{n} calls reached the platform in {t:.2} s: more than the declared rate allows\n{}", berth.log());
        (pushed() && feed_entries(&berth).await >= 150).then_some(())
    })
    .await;
    assert!(done.is_some(), "orders or stock missing\n{}", berth.log());
    let calls = requests();
    assert!(calls > 40, "too few calls to test the bucket: {calls}");

    // Ops turn the manifest's rate off: no host-side limit, said so.
    write("[platforms.taobao]\nuse_manifest_rate = false\n");
    let limits = taobao_limits_from(&berth, "none").await;
    assert!(limits["requests_per_second"].is_null() && limits.get("declared_by").is_none(), "{limits}");
    // Their own rate wins over the manifest's.
    write("[platforms.taobao]\nrequests_per_second = 2.5\nburst = 3\n");
    let limits = taobao_limits_from(&berth, "config").await;
    assert_eq!((limits["requests_per_second"].as_f64(), limits["burst"].as_u64()), (Some(2.5), Some(3)), "{limits}");
}

/// Taobao's `requests` quota as `/v1/platforms` shows it for shop `tb`, when in use.
async fn taobao_usage(berth: &Berth) -> Option<Value> {
    let p = get_json(berth.url("/v1/platforms")).await;
    p["taobao"]["quota_usage"].as_array()?.iter().find(|u| u["quota"] == "requests" && u["key"] == "shop:tb").cloned()
}

/// The gauge's value for Taobao's `requests` quota.
async fn taobao_gauge(berth: &Berth) -> Option<f64> {
    let text = reqwest::get(berth.url("/metrics")).await.ok()?.text().await.ok()?;
    let line = text.lines().find(|l| l.starts_with("berth_ratelimit_quota_used_ratio{") && l.contains("platform=\"taobao\"") && l.contains("quota=\"requests\""))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_usage_is_watched_and_alerted_before_the_platform_throttles() {
    // Berth's bucket: 4 calls a second, counted over 3 s (a capacity of 12). The
    // simulator takes any rate, so it never throttles: the alert comes from use alone.
    let sim = berth_sim::start(taobao_sim(200, 10_000), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{SYNC}[platforms.taobao]\nrequests_per_second = 4.0\nburst = 2\nusage_window_secs = 3\n\
             [alerts]\nevaluate_secs = 1\n[[alerts.rules]]\nname = \"taobao-busy\"\nkind = \"quota-usage\"\nabove_percent = 60\nfor_secs = 2\n{}{}",
            berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
            taobao_shop(&sim.base_url())
        ),
    );
    let berth = Berth::start(&config);
    assert_eq!(get_json(berth.url("/v1/platforms")).await["taobao"]["limits"]["usage_window_secs"], 3);
    // 200 orders in pages of 5 and every SKU pushed: more calls than the bucket lets
    // through for many seconds.
    let skus: Vec<String> = sim.state.stock(Platform::Taobao, "tb").into_iter().map(|i| i.sku).collect();
    let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": 9})).collect();
    let r = post_json(&reqwest::Client::new(), berth.url("/v1/shops/tb/stock"), json!({ "updates": updates })).await;
    assert_eq!(r["results"].as_array().map(Vec::len), Some(skus.len()), "{r}");

    // The alert fires while the quota is busy, naming the quota and its busiest key.
    let fired = poll_until(DEADLINE, || async {
        let a = get_json(berth.url("/v1/alerts")).await;
        a["firing"].as_array()?.iter().find(|f| f["fingerprint"] == "taobao-busy/taobao:requests").cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no quota-usage alert\n{}", berth.log()));
    let summary = fired["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("platform taobao quota requests") && summary.contains("used by shop:tb") && summary.contains("calls in 3 s"), "{fired}");
    assert!(fired["value"].as_f64().is_some_and(|v| v > 0.6), "{fired}");

    // Seen on the way: the API row, the gauge and the status page, each at what the
    // bucket allows (at most its rate over the window plus its burst).
    let busy = |r: f64| r > 0.3 && r <= (4.0 * 3.0 + 2.0 + 1.0) / 12.0;
    let row = poll_until(DEADLINE, || async { taobao_usage(&berth).await.filter(|u| u["ratio"].as_f64().is_some_and(busy)) })
        .await
        .unwrap_or_else(|| panic!("no busy usage row\n{}", berth.log()));
    assert_eq!((row["capacity"].as_f64(), row["source"].as_str(), row["window_secs"].as_u64()), (Some(12.0), Some("counted"), Some(3)), "{row}");
    let gauge = poll_until(DEADLINE, || async { taobao_gauge(&berth).await.filter(|r| busy(*r)) }).await;
    assert!(gauge.is_some(), "no busy quota gauge\n{}", berth.log());
    let status = get_json(berth.url("/v1/status")).await;
    let quotas = status["quotas"].as_array().cloned().unwrap_or_default();
    assert!(quotas.iter().any(|q| q["platform"] == "taobao" && q["quota"] == "requests"), "{status}");
    assert!(status["throttles"].as_array().is_some(), "{status}");

    // Every order and SKU arrives, and the platform never had to throttle.
    all_orders(&berth, 200).await;
    let pushed = poll_until(DEADLINE, || async { sim.state.stock(Platform::Taobao, "tb").iter().all(|i| i.quantity == 9).then_some(()) }).await;
    assert!(pushed.is_some(), "stock missing\n{}", berth.log());
    assert_eq!(sim.state.stats().get(&Platform::Taobao).map_or(u64::MAX, |s| s.throttled), 0);
    // Once the work is done the quota calms down and the alert resolves.
    let resolved = poll_until(DEADLINE, || async {
        let a = get_json(berth.url("/v1/alerts")).await;
        (!a["firing"].as_array()?.iter().any(|f| f["fingerprint"] == "taobao-busy/taobao:requests")).then_some(())
    })
    .await;
    assert!(resolved.is_some(), "the quota-usage alert did not resolve\n{}", berth.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_class_has_its_own_rate() {
    let sim = berth_sim::start(taobao_sim(150, 10_000), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{SYNC}[platforms.taobao]\nrequests_per_second = 50.0\nburst = 5\n\
             [platforms.taobao.endpoints.stock]\nmatch = [\"taobao.item.quantity.update\"]\nrequests_per_second = 3.0\n{}{}",
            berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
            taobao_shop(&sim.base_url())
        ),
    );
    let berth = Berth::start(&config);
    let skus: Vec<String> = sim.state.stock(Platform::Taobao, "tb").into_iter().map(|i| i.sku).collect();
    let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": 7})).collect();
    let client = reqwest::Client::new();
    let ok = poll_until(Duration::from_secs(30), || async {
        let r = post_json(&client, berth.url("/v1/shops/tb/stock"), json!({ "updates": updates })).await;
        (r["results"].as_array()?.len() == skus.len()).then_some(())
    })
    .await;
    assert!(ok.is_some(), "stock not accepted\n{}", berth.log());
    let writes = || sim.state.stats().get(&Platform::Taobao).map_or(0, |s| s.stock_writes);
    let requests = || sim.state.stats().get(&Platform::Taobao).map_or(0, |s| s.requests);
    let (r0, t0) = (requests(), Instant::now());
    let write_rate = rate_of(12, writes).await;
    let all_rate = (requests() - r0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("stock writes {write_rate:.2}/s, all Taobao calls {all_rate:.2}/s");
    assert!((2.7..=3.3).contains(&write_rate), "the stock class allows 3/s; the simulator saw {write_rate:.2}/s");
    assert!(all_rate > 4.5, "other calls were held to the stock class's rate: {all_rate:.2}/s");
    all_orders(&berth, 150).await;
    let platforms = get_json(berth.url("/v1/platforms")).await;
    assert_eq!(platforms["taobao"]["endpoint_classes"], json!(["stock"]), "{platforms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policies_are_per_platform_and_reload() {
    let sim = berth_sim::start(shopify_sim(3, 1000, 100.0), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |retry: &str| {
        berth_tests::write_config(
            dir.path(),
            &format!(
                "{SYNC}[stock]\nmax_attempts = 10\nretry_base_ms = 50\nretry_max_ms = 100\n\
                 [platforms.shopify.retry]\nbase_ms = 100\nmax_ms = 400\njitter = 0.0\n{retry}{}{}{}",
                berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
                shopify_shop("acme", &sim.base_url(), ""),
                shopify_shop("misconfigured", &sim.base_url(), ", location_id = \"main-store\""),
            ),
        )
    };
    let config = write("max_attempts = 3\n");
    let berth = Berth::start(&config);
    let client = reqwest::Client::new();
    let sku = sim.state.stock(Platform::Shopify, "acme")[0].sku.clone();
    // A failing platform: the platform's 3 attempts win over [stock]'s 10.
    sim.state.inject(Platform::Shopify, berth_sim::faults::FaultKind::Http500, 10_000);
    let r = post_json(&client, berth.url("/v1/shops/acme/stock"), json!({"updates": [{"sku": sku, "quantity": 5}]})).await;
    assert_eq!(r["results"][0]["outcome"], "queued", "{r}");
    let started = Instant::now();
    let rec = dead(&berth, "acme").await;
    let took = started.elapsed();
    assert_eq!(rec["attempts"], 3, "{rec}");
    // Backoff steps of exactly 100 and 200 ms between the three attempts.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    sim.state.clear_faults(Platform::Shopify);

    // A permanent error (a location id that is not a number) is not retried by default.
    let r = post_json(&client, berth.url("/v1/shops/misconfigured/stock"), json!({"updates": [{"sku": sku, "quantity": 9}]})).await;
    assert_eq!(r["results"][0]["outcome"], "queued", "{r}");
    let rec = dead(&berth, "misconfigured").await;
    assert_eq!(rec["attempts"], 1, "{rec}");
    let why = rec["last_error"].as_str().unwrap();
    assert!(why.contains("not retried") && why.contains("location_id `main-store`"), "{why}");

    // Reload: permanent errors are retried now, twice at most; the replayed SKU follows the new policy.
    let before = get_json(berth.url("/v1/platforms")).await;
    assert_eq!(before["shopify"]["retry_push"]["max_attempts"], 3, "{before}");
    write("max_attempts = 2\nretry_on = [\"transient\", \"permanent\"]\n");
    poll_until(Duration::from_secs(20), || async {
        (get_json(berth.url("/v1/platforms")).await["shopify"]["retry_push"]["max_attempts"] == 2).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the new policy was not applied\n{}", berth.log()));
    let replayed = post_json(&client, berth.url("/v1/shops/misconfigured/stock/dead-letters/replay"), json!({"skus": [sku]})).await;
    assert_eq!(replayed["count"], 1, "{replayed}");
    let rec = dead(&berth, "misconfigured").await;
    assert_eq!(rec["attempts"], 2, "retried once under the reloaded policy: {rec}");
    assert!(!rec["last_error"].as_str().unwrap().contains("not retried"), "{rec}");
    assert_eq!(sim.state.stats()[&Platform::Shopify].stock_writes, 0, "nothing could have been written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_suspends_the_quota_for_the_configured_time() {
    // Three calls a second, then a one-second ban; berth is told to stay away 6 s.
    let sim = berth_sim::start(taobao_sim(60, 3), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{SYNC}[platforms.taobao.retry]\nsuspend_after_throttle_secs = 6\n{}{}",
            berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
            taobao_shop(&sim.base_url())
        ),
    );
    let berth = Berth::start(&config);
    let stats = || sim.state.stats().get(&Platform::Taobao).cloned().unwrap_or_default();
    poll_until(DEADLINE, || async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        (stats().throttled >= 1).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("never throttled\n{}", berth.log()));
    let (at, requests) = (Instant::now(), stats().requests);
    let held = get_json(berth.url("/v1/platforms")).await;
    let remaining = held["taobao"]["held_quotas"][0]["remaining_ms"].as_u64().unwrap_or(0);
    assert!(remaining > 4_000, "the quota is not held for the suspension: {held}");
    poll_until(DEADLINE, || async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        (stats().requests > requests).then_some(())
    })
    .await
    .expect("berth never came back");
    let away = at.elapsed();
    assert!(away >= Duration::from_millis(5_500), "berth came back after {away:?}, before the 6 s suspension");
    all_orders(&berth, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_channel_takes_over_and_hands_back() {
    let mut sim = berth_sim::start(shopify_sim(20, 1000, 100.0), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (backup_index, backup) = sim.open_channel("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let primary = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{SYNC}[platforms.shopify.standby]\nprimary = \"{primary}\"\nbackup = \"http://{backup}\"\n\
             health_path = \"/health\"\ncheck_interval_ms = 300\nfail_after = 2\nrecover_after = 2\n{}{}",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            shopify_shop("acme", &primary, "")
        ),
    );
    let berth = Berth::start(&config);
    all_orders(&berth, 20).await;
    let channel = |i: usize| sim.state.channel_stats()[i].clone();
    assert_eq!(channel(backup_index).requests, 0, "calls went to the backup while the primary was healthy");
    let active = || async { get_json(berth.url("/v1/platforms")).await["shopify"]["standby"]["active"].as_str().map(String::from) };
    assert_eq!(active().await.as_deref(), Some("primary"));

    // The primary fails: calls move to the backup within a few probe intervals.
    sim.state.set_channel_down(0, true);
    let down_at = Instant::now();
    poll_until(Duration::from_secs(20), || async { (active().await.as_deref() == Some("backup")).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("never switched to the backup\n{}", berth.log()));
    let switch = down_at.elapsed();
    eprintln!("switched to the backup {switch:?} after the primary went down");
    assert!(switch < Duration::from_secs(3), "{switch:?}");
    for _ in 0..3 {
        sim.state.create(Platform::Shopify, "acme").unwrap();
    }
    all_orders(&berth, 23).await;
    assert!(channel(backup_index).requests > 0, "the new orders did not come through the backup");

    // The primary recovers: calls go back to it.
    sim.state.set_channel_down(0, false);
    let up_at = Instant::now();
    poll_until(Duration::from_secs(20), || async { (active().await.as_deref() == Some("primary")).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("never switched back\n{}", berth.log()));
    eprintln!("back on the primary {:?} after it recovered", up_at.elapsed());
    let primary_calls = channel(0).requests;
    poll_until(Duration::from_secs(20), || async { (channel(0).requests > primary_calls).then_some(()) })
        .await
        .expect("no call reached the recovered primary");
    let backup_calls = channel(backup_index).requests;
    for _ in 0..2 {
        sim.state.create(Platform::Shopify, "acme").unwrap();
    }
    all_orders(&berth, 25).await;
    assert_eq!(channel(backup_index).requests, backup_calls, "calls still went to the backup after the switch back");
    let platforms = get_json(berth.url("/v1/platforms")).await;
    assert_eq!(platforms["shopify"]["standby"]["switches"], 2, "{platforms}");
}
