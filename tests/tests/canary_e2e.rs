//! Canary: a share of shops runs a candidate version. A regressed candidate (the
//! `regressed` fixture fails every call) crosses its failure threshold and is rolled back
//! by berth on its own, with an alert and an audit entry, and its shops lose no order; a
//! healthy candidate is promoted to every shop.

use berth_sim::Platform;
use berth_tests::{component_variant, get_json_as, poll_until, Berth};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const TOKEN: &str = "deployer-token-0000001";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-canary-0001";
const ADMIN: &str = "admin-token-00000000001";
const SHOPS: [&str; 4] = ["s1", "s2", "s3", "s4"];

async fn admin(berth: &Berth, method: reqwest::Method, path: &str, token: &str, body: Option<Vec<u8>>, json: Option<Value>) -> (u16, Value) {
    berth_tests::api_call(method, berth.url(path), Some(token), body, json).await
}

async fn entries(berth: &Berth) -> u64 {
    get_json_as(ERP, berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_rolls_back_by_itself_and_a_healthy_one_is_promoted() {
    let shops: Vec<(&str, usize)> = SHOPS.iter().map(|s| (*s, 10)).collect();
    let cfg = berth_tests::shopify_sim(51, 4, &shops);
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let shops: String = SHOPS
        .iter()
        .map(|s| {
            format!(
                "[shops.{s}]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
                 settings = {{ base_url = \"{base}/shopify/{s}\" }}\nsecrets = {{ access_token = \"tok\" }}\n"
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let receiver = berth_tests::recorder::Recorder::start().await;
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 6\nsettle_secs = 1\nretry_base_ms = 200\nretry_max_ms = 1000\n\
             [alerts]\nevaluate_secs = 1\n[alerts.receivers.ops]\nurl = \"{}\"\n\
             [admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"ci\", token = \"{TOKEN}\", role = \"deployer\" }}, {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n{}{shops}",
            receiver.url("/alerts"),
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    let berth = Berth::start(&config);
    poll_until(DEADLINE, || async { (entries(&berth).await >= 40).then_some(()) }).await.expect("initial orders");
    let active = get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"].as_str().unwrap().to_string();

    // A regressed build, stored but not active, goes to half the shops.
    let (status, bad) = admin(
        &berth,
        reqwest::Method::POST,
        "/v1/admin/connectors/shopify/versions?activate=false",
        TOKEN,
        Some(std::fs::read(plugins::REGRESSED).unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 201, "{bad}");
    let bad_digest = bad["version"]["digest"].as_str().unwrap().to_string();
    let plan = json!({"digest": bad_digest, "share_percent": 50, "max_failure_rate": 0.2, "window_secs": 30, "min_calls": 3});
    let (status, started) = admin(&berth, reqwest::Method::POST, "/v1/admin/connectors/shopify/canary", TOKEN, None, Some(plan)).await;
    assert_eq!(status, 201, "{started}");
    let canary_shops: Vec<String> = started["shops"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    assert_eq!(canary_shops.len(), 2, "{started}");
    let t0 = Instant::now();
    let view = poll_until(DEADLINE, || async {
        let (_, v) = admin(&berth, reqwest::Method::GET, "/v1/admin/connectors/shopify", TOKEN, None, None).await;
        (v["last_canary"]["outcome"] == "rolled-back").then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("the failing canary was never rolled back\n{}", berth.log()));
    eprintln!("rolled back {:?} after the canary started: {}", t0.elapsed(), view["last_canary"]);
    assert!(view["canary"].is_null(), "{view}");
    assert!(view["last_canary"]["reason"].as_str().unwrap().contains("calls failed"), "{view}");
    assert_eq!(view["active"]["digest"], active.as_str(), "the active version stays");
    // The default canary-rollback rule (critical) tells the receiver, with the reason.
    let alert = poll_until(DEADLINE, || async {
        receiver.taken("/alerts").into_iter().map(|r| r.json()).find(|a| a["fingerprint"] == "canary-rollback/shopify")
    })
    .await
    .unwrap_or_else(|| panic!("no canary-rollback alert reached the receiver: {:?}", receiver.received()));
    assert_eq!((alert["status"].as_str(), alert["severity"].as_str()), (Some("firing"), Some("critical")), "{alert}");
    assert!(alert["summary"].as_str().unwrap().contains("calls failed"), "{alert}");
    let (_, audit) = admin(&berth, reqwest::Method::GET, "/v1/admin/audit", ADMIN, None, None).await;
    let rollback = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == "canary-rollback").cloned();
    let rollback = rollback.unwrap_or_else(|| panic!("no audit entry: {audit}"));
    assert_eq!((rollback["who"].as_str(), rollback["digest"].as_str()), (Some("berth"), Some(bad_digest.as_str())));

    // The canary's shops are back on the good version: new orders of every shop arrive.
    for s in SHOPS {
        sim.state.create(Platform::Shopify, s).unwrap();
    }
    poll_until(DEADLINE, || async { (entries(&berth).await >= 44).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("orders lost after the rollback\n{}", berth.log()));

    // A healthy candidate on one shop: no failures, promoted to all.
    let good = component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "next");
    let (status, body) = admin(&berth, reqwest::Method::POST, "/v1/admin/connectors/shopify/versions?activate=false", TOKEN, Some(good), None).await;
    assert_eq!(status, 201, "{body}");
    let good_digest = body["version"]["digest"].as_str().unwrap().to_string();
    let plan = json!({"digest": good_digest, "shops": ["s3"], "max_failure_rate": 0.2, "window_secs": 30, "min_calls": 3});
    let (status, body) = admin(&berth, reqwest::Method::POST, "/v1/admin/connectors/shopify/canary", TOKEN, None, Some(plan)).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = admin(&berth, reqwest::Method::POST, "/v1/admin/connectors/shopify/canary", TOKEN, None, Some(json!({"digest": good_digest, "shops": ["s1"]}))).await;
    assert_eq!(status, 409, "one canary at a time");
    let tally = poll_until(DEADLINE, || async {
        let (_, v) = admin(&berth, reqwest::Method::GET, "/v1/admin/connectors/shopify", TOKEN, None, None).await;
        (v["canary"]["tally"]["calls"].as_u64()? >= 5).then(|| v["canary"]["tally"].clone())
    })
    .await
    .expect("the candidate made no calls");
    assert_eq!(tally["failures"], 0, "{tally}");
    let (status, end) = admin(&berth, reqwest::Method::POST, "/v1/admin/connectors/shopify/promote", TOKEN, None, None).await;
    assert_eq!((status, end["outcome"].as_str()), (200, Some("promoted")), "{end}");
    assert_eq!(get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"], good_digest.as_str());
    let (status, _) = admin(&berth, reqwest::Method::POST, "/v1/admin/connectors/shopify/promote", TOKEN, None, None).await;
    assert_eq!(status, 409, "nothing left to promote");
}
