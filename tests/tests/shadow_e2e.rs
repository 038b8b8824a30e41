//! Shadow runs: a candidate version gets the active version's inputs and recorded
//! platform answers, sends nothing, and its outputs are compared field by field. An
//! identical build matches completely and is promoted; a regressed build's differences
//! are listed and block promotion unless forced.

use berth_sim::Platform;
use berth_tests::{component_variant, get_json_as, poll_until, Berth};
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const TOKEN: &str = "deployer-token-0000001";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-shadow-0001";

async fn admin(berth: &Berth, path: &str, body: Option<Vec<u8>>, json: Option<Value>) -> (u16, Value) {
    let method = if body.is_some() || json.is_some() || !path.ends_with("/shadow") { reqwest::Method::POST } else { reqwest::Method::GET };
    berth_tests::api_call(method, berth.url(path), Some(TOKEN), body, json).await
}

async fn report(berth: &Berth) -> Value {
    admin(berth, "/v1/admin/connectors/shopify/shadow", None, None).await.1
}

async fn stored(berth: &Berth, bytes: Vec<u8>) -> String {
    let (status, body) = admin(berth, "/v1/admin/connectors/shopify/versions?activate=false", Some(bytes), None).await;
    assert_eq!(status, 201, "{body}");
    body["version"]["digest"].as_str().unwrap().to_string()
}

async fn entries(berth: &Berth) -> u64 {
    get_json_as(ERP, berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_runs_compare_without_side_effects_and_gate_promotion() {
    let cfg = berth_tests::shopify_sim(61, 4, &[("acme", 20)]);
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 6\nsettle_secs = 1\n\
             [admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"ci\", token = \"{TOKEN}\", role = \"deployer\" }}]\n{}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{}/shopify/acme\", page_size = \"5\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            sim.base_url(),
        ),
    );
    let berth = Berth::start(&config);
    poll_until(DEADLINE, || async { (entries(&berth).await >= 20).then_some(()) }).await.expect("initial orders");

    // An identical build as the shadow, while orders come in and stock is pushed.
    let same = stored(&berth, component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "same")).await;
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/promote", None, None).await;
    assert_eq!(status, 409, "nothing to promote yet: {body}");
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/shadow", None, Some(json!({"digest": same}))).await;
    assert_eq!(status, 201, "{body}");
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().take(5).map(|i| i.sku).collect();
    let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": 77})).collect();
    let r = berth_tests::client_as(ERP).post(berth.url("/v1/shops/acme/stock")).json(&json!({ "updates": updates })).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    for _ in 0..3 {
        sim.state.create(Platform::Shopify, "acme").unwrap();
    }
    poll_until(DEADLINE, || async {
        let r = report(&berth).await;
        (r["running"]["compared"].as_u64()? >= 8).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("nothing compared\n{}", berth.log()));
    poll_until(DEADLINE, || async { (entries(&berth).await >= 23).then_some(()) }).await.expect("orders during the shadow");
    let r = report(&berth).await["running"].clone();
    assert_eq!((r["differing"].as_u64(), r["difference_count"].as_u64()), (Some(0), Some(0)), "an identical build differed: {r}");
    assert_eq!(r["matched"], r["compared"], "{r}");
    // The shadow pushed nothing: each SKU was written once, by the active version.
    let writes = sim.state.stats()[&Platform::Shopify].stock_writes;
    assert_eq!(writes, 5, "the shadow reached the platform");
    let (status, end) = admin(&berth, "/v1/admin/connectors/shopify/promote", None, None).await;
    assert_eq!((status, end["outcome"].as_str()), (200, Some("promoted")), "{end}");
    assert_eq!(get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"], same.as_str());

    // A regressed build: every call differs, listed field by field; promotion refused.
    let bad = stored(&berth, std::fs::read(plugins::REGRESSED).unwrap()).await;
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/shadow", None, Some(json!({"digest": bad}))).await;
    assert_eq!(status, 201, "{body}");
    let r = poll_until(DEADLINE, || async {
        let r = report(&berth).await["running"].clone();
        (r["differing"].as_u64()? >= 2).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("no difference found\n{}", berth.log()));
    let diffs = r["differences"].as_array().unwrap();
    let err = diffs.iter().find(|d| d["path"] == "Pull.Err").unwrap_or_else(|| panic!("{r}"));
    assert_eq!(err["active"], Value::Null, "{err}");
    assert!(err["candidate"]["Transient"].as_str().unwrap().contains("regression"), "{err}");
    assert!(diffs.iter().any(|d| d["path"] == "Pull.Ok" && d["candidate"].is_null()), "{r}");
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/promote", None, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not a complete match"), "{body}");
    // The active version kept working throughout.
    sim.state.create(Platform::Shopify, "acme").unwrap();
    poll_until(DEADLINE, || async { (entries(&berth).await >= 24).then_some(()) }).await.expect("orders during the bad shadow");
    assert_eq!(get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"], same.as_str());
    let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
    assert_eq!(shops[0]["errors"], 0, "the shadow's failures touched the shop: {shops}");
    // Forcing overrides the gate (and ends the shadow, keeping its report); roll back after.
    let (status, end) = admin(&berth, "/v1/admin/connectors/shopify/promote", None, Some(json!({"force": true}))).await;
    assert_eq!((status, end["reason"].as_str()), (200, Some("promoted by ops (forced)")), "{end}");
    assert_eq!(get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"], bad.as_str());
    let last = report(&berth).await;
    assert!(last["running"].is_null() && last["last"]["stopped_ms"].as_i64().is_some(), "{last}");
    let (status, _) = admin(&berth, "/v1/admin/connectors/shopify/rollback", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"], same.as_str());

    // A shadow run is in the registry's state: it goes on after a restart (its counts
    // start again) and still gates promotion.
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/shadow", None, Some(json!({"digest": bad}))).await;
    assert_eq!(status, 201, "{body}");
    berth.kill();
    let berth = Berth::start(&config);
    let r = report(&berth).await;
    assert_eq!(r["running"]["digest"], bad.as_str(), "{r}");
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/promote", None, None).await;
    assert_eq!(status, 409, "{body}");
    poll_until(DEADLINE, || async { (report(&berth).await["running"]["differing"].as_u64()? >= 1).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the shadow did not run after the restart\n{}", berth.log()));
}
