//! What a connector returns and logs is held to the contract, beside a real Shopify shop:
//! guest log lines with newlines and carriage returns stay one line of berth's log —
//! escaped, with the connector, version and shop as fields — in text and in
//! `--log-format json`; orders with times before 2000 or a day ahead refuse the page as
//! the connector's fault (nothing stored, no version blocked); orders updated outside
//! the window asked for are dropped and counted; the shop's secret in raw JSON or a
//! buyer field is scrubbed from what berth stores and serves.

use berth_sim::Platform;
use berth_tests::{get_json, hostile_shop, poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "contract-secret-value-5517";

fn shop<'a>(shops: &'a Value, name: &str) -> &'a Value {
    shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == name)).unwrap_or(&Value::Null)
}

fn config(dir: &std::path::Path, base: &str) -> std::path::PathBuf {
    let times = [("h-time-max", i64::MAX), ("h-time-min", i64::MIN), ("h-time-neg", -1), ("h-time-10000", 253_402_300_800_000)]
        .iter()
        .map(|(s, t)| hostile_shop(s, &format!("mode = \"bad-times\", updated = \"{t}\"")))
        .collect::<String>();
    let text = [
        berth_tests::QUICK_SYNC.to_string(),
        berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        berth_tests::hostile_connector(plugins::HOSTILE, ""),
        berth_tests::shopify_neighbour(base),
        hostile_shop("h-forge", "mode = \"log-forge\""),
        hostile_shop("h-window", "mode = \"outside-window\""),
        hostile_shop("h-secret", "mode = \"raw-secret\"") + &format!("secrets = {{ api_secret = \"{SECRET}\" }}\n"),
        times,
    ]
    .concat();
    berth_tests::write_config(dir, &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_connector_returns_and_logs_keeps_to_the_contract() {
    let sim = berth_sim::start(berth_tests::shopify_sim(24, 2, &[("acme", 10)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim.base_url());
    let berth = Berth::start(&cfg);

    // Times out of sane bounds: the page is refused, naming the order and the field.
    let shops = poll_until(DEADLINE, || async {
        let shops = get_json(berth.url("/v1/shops")).await;
        let all = ["h-time-max", "h-time-min", "h-time-neg", "h-time-10000"]
            .iter()
            .all(|s| shop(&shops, s)["last_error"].as_str().is_some_and(|e| e.contains("answered what the host does not take")));
        all.then_some(shops)
    })
    .await;
    let Some(shops) = shops else {
        panic!("bad times were not refused: {}", get_json(berth.url("/v1/shops")).await);
    };
    for (s, why) in [("h-time-max", "more than a day ahead"), ("h-time-min", "before 2000-01-01"), ("h-time-neg", "before 2000-01-01"), ("h-time-10000", "more than a day ahead")] {
        let e = shop(&shops, s)["last_error"].as_str().unwrap();
        assert!(e.contains("order `T-1`: updated_at_ms") && e.contains(why), "{s}: {e}");
        let stored = get_json(berth.url(&format!("/v1/orders?limit=10&shop={s}"))).await;
        assert_eq!(stored["orders"].as_array().unwrap().len(), 0, "{s} stored {stored}");
    }

    // Outside the window: dropped and counted; the order inside it is stored once.
    let window = poll_until(DEADLINE, || async {
        let shops = get_json(berth.url("/v1/shops")).await;
        (shop(&shops, "h-window")["outside_window"].as_u64()? >= 4).then(|| shop(&shops, "h-window").clone())
    })
    .await
    .expect("outside-window orders are counted");
    let stored = get_json(berth.url("/v1/orders?limit=10&shop=h-window")).await;
    let ids: Vec<&str> = stored["orders"].as_array().unwrap().iter().map(|o| o["order"]["order_id"].as_str().unwrap()).collect();
    // (W-in comes updated at each window's end: each is a new version of it.)
    assert!(!ids.is_empty() && ids.iter().all(|id| *id == "W-in"), "{ids:?} {window}");

    // The shop's secret: scrubbed from the stored order, its raw JSON and its lease.
    let stored = poll_until(DEADLINE, || async {
        let v = get_json(berth.url("/v1/orders?limit=10&shop=h-secret")).await;
        (!v["orders"].as_array()?.is_empty()).then_some(v)
    })
    .await
    .expect("h-secret's order");
    let text = stored.to_string();
    assert!(!text.contains(SECRET), "the secret was served: {text}");
    assert_eq!(stored["orders"][0]["order"]["raw"]["token"], "<secret:api_secret>", "{text}");
    assert_eq!(stored["orders"][0]["order"]["buyer_name_masked"], "<secret:api_secret>");
    let lease = reqwest::Client::new().post(berth.url("/v1/orders/lease")).json(&serde_json::json!({"max": 1000})).send().await.unwrap().text().await.unwrap();
    assert!(lease.contains("<secret:api_secret>") && !lease.contains(SECRET), "the lease is scrubbed too");

    // Forged log lines: every line naming the forged event is a guest record with its
    // connector, version and shop; none starts a line of its own.
    let forged = "admin token accepted name=\"root\" role=admin";
    poll_until(DEADLINE, || async { berth.full_log().contains("admin token accepted").then_some(()) }).await.expect("the forger logged");
    let log = berth.full_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("admin token accepted")).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for l in &lines {
        assert!(
            l.contains("guest: ") && l.contains("connector=\"hostile\"") && l.contains("version=\"6.6.6\"") && l.contains("shop=\"h-forge\""),
            "a guest line without its fields: {l}"
        );
        assert!(!l.starts_with("2026-12-03T03:15:5"), "a forged line of its own: {l}");
        assert!(l.contains("\\n2026-12-03") || l.contains("\\r2026-12-03"), "the break is escaped: {l}");
    }
    assert!(!log.lines().any(|l| l.contains(forged) && !l.contains("guest: ")), "a forged host line");

    // The neighbour: every order, then a new one.
    let acme = || async { get_json(berth.url("/v1/orders?limit=1000&shop=acme")).await["orders"].as_array().map_or(0, Vec::len) };
    poll_until(DEADLINE, || async { (acme().await >= 10).then_some(()) }).await.expect("the neighbour's orders");
    sim.state.create(Platform::Shopify, "acme").unwrap();
    poll_until(DEADLINE, || async { (acme().await >= 11).then_some(()) }).await.expect("the neighbour's new order");
    assert!(berth_tests::stock_reaches(&sim, &berth, None, Platform::Shopify, "acme", 31, DEADLINE).await, "the neighbour's stock");
    let metrics = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(berth_tests::metric_sum(&metrics, "berth_connector_calls_total{connector=\"hostile\",version=\"6.6.6\",call=\"pull-orders\",outcome=\"bad_output\"") >= 4.0);
    assert!(berth_tests::metric_sum(&metrics, "berth_connector_limit_hits_total{connector=\"hostile\",limit=\"outside_window\"}") >= 4.0);
    drop(berth);

    // The same in JSON: one object a line, the forged text inside the record's fields.
    let berth = Berth::start_with(&cfg, &["--log-format", "json"]);
    poll_until(DEADLINE, || async { berth.full_log().contains("admin token accepted").then_some(()) }).await.expect("the forger logged");
    let log = berth.full_log();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}"));
        if l.contains("admin token accepted") {
            assert_eq!(v["fields"]["connector"], "hostile", "{l}");
            assert_eq!(v["fields"]["shop"], "h-forge", "{l}");
            assert!(v["fields"]["message"].as_str().unwrap().starts_with("guest: "), "{l}");
        }
    }
}
