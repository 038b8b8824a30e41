//! Fault drills with the real binary against the simulator: each scenario — platform
//! 5xx, a throttle storm, timeouts, the primary channel down, connector traps — is
//! injected into one shop for a few seconds by `berth drill` (or the API), and its record
//! says what berth did: the faults injected, the alerts that fired and when, the quota
//! held, the standby taking over, the breaker opening, the time to recover, and no loss —
//! the stock change and the order made during each drill reach their side afterwards.
//! Records are listed newest first, the last three on the status page; only an admin
//! may start one, and every start is audited.

use berth_sim::Platform;
use berth_tests::{api_call, berth_admin, get_json_as, poll_until, post_json, Berth};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const ERP: &str = "erp-token-drills-000001";
const OPERATOR: &str = "operator-token-drills-1";
const ADMIN: &str = "admin-token-drills-0001";

async fn feed_entries(berth: &Berth) -> u64 {
    get_json_as(ERP, berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0)
}

/// A drill's record once it is done.
async fn done(berth: &Berth, id: &str) -> Value {
    poll_until(DEADLINE, || async {
        let r = get_json_as(ERP, berth.url(&format!("/v1/drills/{id}"))).await;
        (r["state"] == "done").then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("drill {id} did not end\n{}", berth.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_drill_scenario_is_recorded_with_real_figures_and_no_loss() {
    let mut sim = berth_sim::start(berth_tests::shopify_sim(61, 2, &[("acme", 5)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (backup_index, backup) = sim.open_channel("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            r#"
{sync}[stock]
max_attempts = 1000
retry_base_ms = 100
retry_max_ms = 300
[health.A]
probe_secs = 1
[alerts]
evaluate_secs = 1
[platforms.shopify.standby]
primary = "{base}"
backup = "http://{backup}"
health_path = "/health"
check_interval_ms = 300
fail_after = 2
recover_after = 2
[admin]
tokens = [{{ name = "erp", token = "{ERP}", role = "erp" }}, {{ name = "ops", token = "{OPERATOR}", role = "operator" }}, {{ name = "root", token = "{ADMIN}", role = "admin" }}]
{connectors}[connectors.shopify.limits]
breaker_min_calls = 3
breaker_failure_percent = 50
breaker_window_secs = 2
breaker_open_secs = 1
[shops.acme]
connector = "shopify"
tier = "A"
poll_interval_secs = 1
settings = {{ base_url = "{base}/shopify/acme" }}
secrets = {{ access_token = "tok" }}
"#,
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    let berth = Berth::start(&config);
    let mut orders = sim.state.orders(Platform::Shopify, "acme").len() as u64;
    poll_until(DEADLINE, || async { (feed_entries(&berth).await >= orders).then_some(()) }).await.expect("the seeded orders");
    let sku = sim.state.stock(Platform::Shopify, "acme")[0].sku.clone();

    // Refused: another role, an unknown scenario, no duration.
    let start = |token: &'static str, body: Value| {
        let url = berth.url("/v1/admin/shops/acme/drills");
        async move { api_call(Method::POST, url, Some(token), None, Some(body)).await }
    };
    assert_eq!(start(OPERATOR, json!({"scenario": "timeouts"})).await.0, 403);
    let (status, body) = start(ADMIN, json!({"scenario": "meteor"})).await;
    assert!(status == 400 && body.to_string().contains("platform-5xx, throttle-storm"), "{body}");
    assert_eq!(start(ADMIN, json!({"scenario": "timeouts", "duration_secs": 0})).await.0, 400);

    let scenarios = ["platform-5xx", "throttle-storm", "timeouts", "primary-down", "connector-traps"];
    for (i, scenario) in scenarios.iter().enumerate() {
        // What the ERP and the platform do meanwhile: a stock change, a new order.
        let quantity = 100 + i as u64;
        post_json(&berth_tests::client_as(ERP), berth.url("/v1/shops/acme/stock"), json!({"updates": [{"sku": sku, "quantity": quantity}]})).await;
        sim.state.create(Platform::Shopify, "acme").unwrap();
        orders += 1;
        let rec = if *scenario == "connector-traps" {
            // By the API: one drill at a time per shop.
            let (status, first) = start(ADMIN, json!({"scenario": scenario, "duration_secs": 3})).await;
            assert_eq!(status, 202, "{first}");
            let (status, again) = start(ADMIN, json!({"scenario": "timeouts", "duration_secs": 3})).await;
            assert!(status == 409 && again.to_string().contains("drill runs on shop `acme` already"), "{again}");
            done(&berth, first["id"].as_str().unwrap()).await
        } else {
            let (code, out, err) = berth_admin(&berth.base_url, ADMIN, &["drill", scenario, "--shop", "acme", "--duration", "3s"]);
            assert_eq!(code, Some(0), "{out}{err}\n{}", berth.log());
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        };
        eprintln!("{scenario}: {rec}");
        assert_eq!(rec["scenario"], *scenario, "{rec}");
        assert_eq!(rec["verdict"], "passed", "{rec}\n{}", berth.log());
        assert!(rec["injected"].as_u64().is_some_and(|n| n > 0), "nothing injected: {rec}");
        assert!(rec["recovered_after_ms"].as_i64().is_some(), "{rec}");
        assert_eq!(rec["loss"]["lost"], false, "{rec}");
        let alerts: Vec<&str> = rec["alerts"].as_array().unwrap().iter().filter_map(|a| a["fingerprint"].as_str()).collect();
        match *scenario {
            // The probes fail: the tier-A probe alert fires, and the record times it.
            "platform-5xx" | "timeouts" | "connector-traps" => {
                assert!(alerts.contains(&"probe-failing-tier-a/acme"), "{rec}");
                assert!(rec["detected_after_ms"].as_i64().is_some_and(|ms| ms >= 0), "{rec}");
            }
            "throttle-storm" => assert_eq!(rec["seen"]["quota_held"], true, "{rec}"),
            "primary-down" => assert_eq!(rec["seen"]["standby_switched"], true, "{rec}"),
            _ => unreachable!(),
        }
        if *scenario == "connector-traps" {
            assert_eq!(rec["seen"]["breaker_opened"], true, "{rec}");
        }
        // Nothing lost: the change and the order made during the drill arrive.
        let arrived = poll_until(DEADLINE, || async {
            let at_platform = sim.state.stock(Platform::Shopify, "acme").iter().any(|s| s.sku == sku && u64::from(s.quantity) == quantity);
            (at_platform && feed_entries(&berth).await >= orders).then_some(())
        })
        .await;
        assert!(arrived.is_some(), "after {scenario}: the stock change or the order did not arrive\n{}", berth.log());
    }
    assert!(sim.state.channel_stats()[backup_index].requests > 0, "nothing went through the standby channel");

    // Kept newest first; the last three on the status page; each start audited.
    let list = get_json_as(ERP, berth.url("/v1/drills")).await;
    let kept: Vec<&str> = list["drills"].as_array().unwrap().iter().filter_map(|d| d["scenario"].as_str()).collect();
    assert_eq!(kept, scenarios.iter().rev().copied().collect::<Vec<_>>(), "{list}");
    let status = get_json_as(ERP, berth.url("/v1/status")).await;
    assert_eq!(status["drills"].as_array().map(Vec::len), Some(3), "{status}");
    let (_, audit) = api_call(Method::GET, berth.url("/v1/admin/audit?limit=100"), Some(ADMIN), None, None).await;
    let drills: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "drill")
        .map(|e| (e["who"].as_str().unwrap_or(""), e["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(drills.iter().filter(|d| **d == ("root", "ok")).count(), 5, "{drills:?}");
    assert!(drills.contains(&("ops", "forbidden")) && drills.contains(&("root", "refused")), "{drills:?}");
}
