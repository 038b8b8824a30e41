//! Connectors that try to fill the host's disk and memory, beside a real Shopify shop:
//! rewriting max-size state values without end (kv-churn), pages of new orders with
//! oversized raw JSON behind a cursor that never ends (raw-flood), webhooks answering a
//! thousand orders each (webhook-orders). Each is held by a bound ops set: writes of
//! state per shop per minute, raw JSON per order, pages per window, events per webhook,
//! new orders per shop per hour (past which the shop's intake is held, the shop shows
//! `held` and the `order-flood` alert names it until an operator resumes it). What is
//! measured: bytes on disk, orders queued for the ERP, the host's peak memory, the
//! neighbour's orders.

use berth_sim::Platform;
use berth_tests::{api_call, get_json_as, hostile_shop, metric_sum, poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const PER_HOUR: u64 = 1500;
const OPERATOR: &str = "operator-token-disk-0001";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-isolation-disk-0001";

fn shop<'a>(shops: &'a Value, name: &str) -> &'a Value {
    shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == name)).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_orders_and_webhooks_are_bounded_per_shop() {
    let sim = berth_sim::start(berth_tests::shopify_sim(23, 2, &[("acme", 10)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let hostile = [
        berth_tests::hostile_connector(
            plugins::HOSTILE,
            &format!("max_orders_per_shop_per_hour = {PER_HOUR}\nmax_kv_write_bytes_per_minute = 1048576\n"),
        ),
        hostile_shop("h-kv", "mode = \"kv-churn\""),
        hostile_shop("h-raw", "mode = \"raw-flood\", orders = \"5\", raw_bytes = \"300000\""),
        hostile_shop("h-flood", "mode = \"raw-flood\", orders = \"500\", raw_bytes = \"200\""),
        hostile_shop("h-hook", "mode = \"webhook-orders\", orders = \"1000\""),
        hostile_shop("h-hook100", "mode = \"webhook-orders\", orders = \"100\""),
    ]
    .concat();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{sync}max_pages_per_window = 4\nerror_pause_secs = 2\n\
             [admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"ops\", token = \"{OPERATOR}\", role = \"operator\" }}]\n\
             [alerts]\nevaluate_secs = 1\n{connectors}{neighbour}{hostile}",
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            neighbour = berth_tests::shopify_neighbour(&base),
        ),
    );
    let berth = Berth::start(&config);
    let data = dir.path().join("data");
    let started_bytes = berth_tests::dir_bytes(&data);
    let client = reqwest::Client::new();

    // Webhooks of a thousand orders: refused whole (max_events_per_webhook = 100), 422 —
    // not to be sent again; nothing stored.
    for _ in 0..5 {
        let r = client.post(berth.url("/v1/webhooks/h-hook")).body("{}").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 422);
        assert!(r.text().await.unwrap().contains("more than max_events_per_webhook (100)"));
    }
    // Webhooks of a hundred: taken until the shop's hour is full, then 429 with Retry-After.
    let mut answers = Vec::new();
    for _ in 0..(PER_HOUR / 100 + 5) {
        let r = client.post(berth.url("/v1/webhooks/h-hook100")).body("{}").send().await.unwrap();
        let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        answers.push((r.status().as_u16(), retry));
    }
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count() as u64, PER_HOUR / 100, "{answers:?}");
    assert!(answers.iter().filter(|(s, _)| *s == 429).all(|(_, retry)| retry.is_some_and(|r| r >= 1)), "{answers:?}");

    // The order flood fills its hour, then its intake is held, visibly.
    let held = poll_until(DEADLINE, || async {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        shop(&shops, "h-flood")["held"].as_str().map(str::to_string)
    })
    .await;
    let Some(held) = held else {
        panic!("h-flood's intake was never held: {}", get_json_as(ERP, berth.url("/v1/shops")).await);
    };
    assert!(held.contains("max_orders_per_shop_per_hour (1500)"), "{held}");
    let alert = poll_until(DEADLINE, || async {
        let a = get_json_as(ERP, berth.url("/v1/alerts")).await;
        a["firing"].as_array()?.iter().find(|f| f["rule"] == "order-flood" && f["subject"] == "h-flood").cloned()
    })
    .await
    .expect("the order-flood alert names h-flood");
    assert!(alert["summary"].as_str().unwrap().contains("shop h-flood (hostile)"), "{alert}");
    let health = get_json_as(ERP, berth.url("/v1/health")).await;
    let h = health["shops"].as_array().unwrap().iter().find(|s| s["shop"] == "h-flood").unwrap().clone();
    assert_eq!(h["state"], "held", "{h}");

    // Let every flood run against its bounds for a while.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let queue = get_json_as(ERP, berth.url("/v1/orders/queue")).await;
    for s in ["h-flood", "h-raw", "h-hook100"] {
        let queued = queue["partitions"][s]["ready"].as_u64().unwrap_or(0);
        assert!(queued <= PER_HOUR, "{s}: {queued} orders queued, over its hour's {PER_HOUR}");
        assert!(queued > 0, "{s} queued nothing: {queue}");
    }
    assert_eq!(queue["partitions"]["h-hook"]["ready"].as_u64().unwrap_or(0), 0);
    // Stored raw JSON past max_raw_json_bytes is a note of its size; the order is kept.
    let page = get_json_as(ERP, berth.url("/v1/orders?limit=5&shop=h-raw")).await;
    let raw = &page["orders"][0]["order"]["raw"];
    assert_eq!(raw["berth_raw_json_dropped"]["bytes"], 300000, "{raw}");
    // The endless cursor failed its window by the page bound, not by running on forever.
    let log = berth.full_log();
    assert!(log.contains("without its cursor ending (sync.max_pages_per_window = 4)"), "the page bound never tripped");
    // The state churn met the per-minute write bound.
    let metrics = berth_tests::client_as(ERP).get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric_sum(&metrics, "berth_connector_limit_hits_total{connector=\"hostile\",limit=\"kv_rate\"}") >= 1.0, "kv writes were never bounded");
    assert!(metric_sum(&metrics, "berth_connector_limit_hits_total{connector=\"hostile\",limit=\"raw_json_dropped\"}") >= 100.0);
    assert!(metric_sum(&metrics, "berth_connector_limit_hits_total{connector=\"hostile\",limit=\"order_budget\"}") >= 1.0);

    // What it all cost: disk and memory stay small (before the bounds: 2.6 GB of disk a
    // minute from the state churn alone, 3.0 GB and a 3.8 GB memory peak from the flood).
    let grown = berth_tests::dir_bytes(&data).saturating_sub(started_bytes);
    let (_, peak) = berth.memory();
    eprintln!("disk grew {} MB; peak RSS {} MB", grown >> 20, peak >> 20);
    assert!(grown < 64 << 20, "the data dir grew {} MB", grown >> 20);
    assert!(peak < 512 << 20, "berth's memory peaked at {} MB", peak >> 20);

    // The neighbour kept working: all its orders, and a new one.
    let acme = || async { get_json_as(ERP, berth.url("/v1/orders?limit=1000&shop=acme")).await["orders"].as_array().map_or(0, Vec::len) };
    poll_until(DEADLINE, || async { (acme().await >= 10).then_some(()) }).await.expect("the neighbour's orders");
    sim.state.create(Platform::Shopify, "acme").unwrap();
    poll_until(DEADLINE, || async { (acme().await >= 11).then_some(()) }).await.expect("the neighbour's new order");
    assert!(berth_tests::stock_reaches(&sim, &berth, Some(ERP), Platform::Shopify, "acme", 29, DEADLINE).await, "the neighbour's stock");

    // An operator resuming the shop lifts the hold: its intake starts afresh.
    let (code, body) = api_call(reqwest::Method::POST, berth.url("/v1/admin/shops/h-hook100/resume"), Some(OPERATOR), None, None).await;
    assert_eq!((code, &body["intake_released"]), (200, &Value::Bool(true)), "{body}");
    let r = client.post(berth.url("/v1/webhooks/h-hook100")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "taken again after the release");
}
