//! One berth, two merchants of an ERP vendor: tokens scoped to shops (`shops =
//! ["acme-*"]`, `["globex"]`). Each tenant leases only its shops' orders, from its own
//! queue partitions — a backlog of hundreds of the other's orders is not in its way —
//! and both, leasing at once, get every one of their orders exactly once. Every call
//! naming a shop outside the scope answers 404 and changes nothing; whole-host views are
//! refused; a scoped operator pauses only its shops.

use berth_tests::{api_call, get_json_as, poll_until, run_berth, Berth};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ACME: &str = "erp-token-tenant-acme-01";
const GLOBEX: &str = "erp-token-tenant-globex1";
const ACME_OPS: &str = "ops-token-tenant-acme-01";
const ADMIN: &str = "admin-token-tenants-0001";
const DEADLINE: Duration = Duration::from_secs(120);

fn shop(name: &str, base: &str) -> String {
    format!("[shops.{name}]\nconnector = \"shopify\"\npoll_interval_secs = 1\nsettings = {{ base_url = \"{base}/shopify/{name}\", page_size = \"100\" }}\nsecrets = {{ access_token = \"tok\" }}\n")
}

async fn post(berth: &Berth, path: &str, token: &str, body: Value) -> (u16, Value) {
    api_call(Method::POST, berth.url(path), Some(token), None, Some(body)).await
}

/// Lease and ack until `want` orders were acked; the shops each came from, by order id.
async fn drain(berth: &Berth, token: &str, max: usize, want: usize) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let started = std::time::Instant::now();
    while seen.len() < want {
        assert!(started.elapsed() < DEADLINE, "{token}: {} of {want} orders after {DEADLINE:?}", seen.len());
        let (status, body) = post(berth, "/v1/orders/lease", token, json!({"max": max, "visibility_secs": 300})).await;
        assert_eq!(status, 200, "{body}");
        let leases = body["leases"].as_array().cloned().unwrap_or_default();
        if leases.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for l in &leases {
            let id = format!("{}/{}", l["shop"].as_str().unwrap(), l["order"]["order_id"]);
            assert!(seen.insert(id.clone(), l["shop"].as_str().unwrap().to_string()).is_none(), "{token} got {id} twice");
        }
        let tokens: Vec<Value> = leases.iter().map(|l| l["token"].clone()).collect();
        let (status, body) = post(berth, "/v1/orders/ack", token, json!({ "tokens": tokens })).await;
        assert_eq!((status, body["done"].as_u64()), (200, Some(leases.len() as u64)), "{body}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_lease_their_own_orders_at_once_and_see_nothing_else() {
    let sim = berth_sim::start(berth_tests::shopify_sim(71, 2, &[("acme-a", 3), ("acme-b", 2), ("globex", 300)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let count = |s: &str| sim.state.orders(berth_sim::Platform::Shopify, s).len();
    let (acme_total, globex_total) = (count("acme-a") + count("acme-b"), count("globex"));
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{sync}[admin]\ntokens = [\n\
               {{ name = \"acme-erp\", token = \"{ACME}\", role = \"erp\", shops = [\"acme-*\"] }},\n\
               {{ name = \"globex-erp\", token = \"{GLOBEX}\", role = \"erp\", shops = [\"globex\"] }},\n\
               {{ name = \"acme-ops\", token = \"{ACME_OPS}\", role = \"operator\", shops = [\"acme-*\"] }},\n\
               {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }},\n]\n{connectors}{}{}{}",
            shop("acme-a", &base),
            shop("acme-b", &base),
            shop("globex", &base),
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    let berth = Berth::start(&config);
    let total = (acme_total + globex_total) as u64;
    let queued = poll_until(DEADLINE, || async { (get_json_as(ADMIN, berth.url("/v1/orders/queue")).await["ready"].as_u64() == Some(total)).then_some(()) }).await;
    assert!(queued.is_some(), "not every order was queued: {}", get_json_as(ADMIN, berth.url("/v1/orders/queue")).await);

    // What each tenant sees: its shops only.
    let shops: Vec<String> = get_json_as(ACME, berth.url("/v1/shops")).await.as_array().unwrap().iter().map(|s| s["shop"].as_str().unwrap().to_string()).collect();
    assert_eq!(shops, ["acme-a", "acme-b"]);
    let queue = get_json_as(ACME, berth.url("/v1/orders/queue")).await;
    assert_eq!(queue["ready"].as_u64(), Some(acme_total as u64), "{queue}");
    assert_eq!(queue["partitions"].as_object().unwrap().keys().collect::<Vec<_>>(), ["acme-a", "acme-b"], "{queue}");
    let feed = get_json_as(ACME, berth.url("/v1/orders?limit=1000")).await;
    let feed_shops: BTreeSet<&str> = feed["orders"].as_array().unwrap().iter().map(|o| o["shop"].as_str().unwrap()).collect();
    assert_eq!(feed_shops, BTreeSet::from(["acme-a", "acme-b"]), "the feed shows only acme's orders");
    assert_eq!(feed["orders"].as_array().unwrap().len(), acme_total);

    // A shop outside the scope is not there: 404 for every call naming it, nothing changes.
    for (method, path, body) in [
        (Method::GET, "/v1/orders?shop=globex", None),
        (Method::GET, "/v1/shops/globex/stock", None),
        (Method::GET, "/v1/shops/globex/stock/G-1", None),
        (Method::POST, "/v1/shops/globex/stock", Some(json!({"updates": [{"sku": "G-1", "quantity": 1}]}))),
    ] {
        let (status, body) = api_call(method.clone(), berth.url(path), Some(ACME), None, body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(body["error"].as_str().unwrap_or_default().ends_with("shops: acme-a, acme-b"), "the answer lists only the tenant's shops: {body}");
    }
    let globex_stock = get_json_as(ADMIN, berth.url("/v1/shops/globex/stock")).await;
    assert_eq!(globex_stock["skus"].as_array().map(Vec::len), Some(0), "{globex_stock}");
    // Whole-host views are not for a scoped token.
    for path in ["/v1/health", "/v1/status", "/v1/alerts", "/metrics", "/v1/platforms", "/v1/connectors", "/v1/orders/feed"] {
        let (status, body) = api_call(Method::GET, berth.url(path), Some(ACME), None, None).await;
        assert_eq!(status, 403, "{path}: {body}");
    }

    // The first lease of acme takes all of acme's orders though globex's 300 are due too.
    let (status, first) = post(&berth, "/v1/orders/lease", ACME, json!({"max": 100, "visibility_secs": 300})).await;
    assert_eq!(status, 200);
    let first = first["leases"].as_array().unwrap().clone();
    assert_eq!(first.len(), acme_total, "acme's lease is not behind globex's backlog");
    assert!(first.iter().all(|l| l["shop"].as_str().unwrap().starts_with("acme-")));
    // A globex lease, and acme trying to settle it: refused, and globex still holds it.
    let (_, g) = post(&berth, "/v1/orders/lease", GLOBEX, json!({"max": 1, "visibility_secs": 300})).await;
    let g = g["leases"][0].clone();
    assert_eq!(g["shop"], "globex");
    for path in ["/v1/orders/ack", "/v1/orders/nack", "/v1/orders/extend"] {
        let body = if path.ends_with("extend") { json!({"tokens": [g["token"]], "visibility_secs": 60}) } else { json!({"tokens": [g["token"]]}) };
        let (status, answer) = post(&berth, path, ACME, body).await;
        assert_eq!(status, 409, "{path}: {answer}");
        assert_eq!(answer["done"], 0, "{answer}");
    }
    let (status, answer) = post(&berth, "/v1/orders/ack", GLOBEX, json!({"tokens": [g["token"]]})).await;
    assert_eq!((status, &answer["done"]), (200, &json!(1)), "globex's lease was untouched: {answer}");
    let tokens: Vec<Value> = first.iter().map(|l| l["token"].clone()).collect();
    let (status, _) = post(&berth, "/v1/orders/ack", ACME, json!({ "tokens": tokens })).await;
    assert_eq!(status, 200);

    // New orders on both sides, and both tenants leasing at once: each gets all of its own.
    for s in ["acme-a", "acme-b"] {
        sim.state.create(berth_sim::Platform::Shopify, s).unwrap();
    }
    for _ in 0..20 {
        sim.state.create(berth_sim::Platform::Shopify, "globex").unwrap();
    }
    let (acme, globex) = tokio::join!(drain(&berth, ACME, 3, 2), drain(&berth, GLOBEX, 25, globex_total - 1 + 20));
    assert!(acme.values().all(|s| s.starts_with("acme-")), "{acme:?}");
    assert!(globex.values().all(|s| s == "globex"), "a globex lease held another shop's order");
    let left = get_json_as(ADMIN, berth.url("/v1/orders/queue")).await;
    assert_eq!((left["ready"].as_u64(), left["in_flight"].as_u64()), (Some(0), Some(0)), "{left}");

    // A scoped operator: its shops only, nothing connector- or platform-wide.
    let (status, _) = api_call(Method::POST, berth.url("/v1/admin/shops/globex/pause"), Some(ACME_OPS), None, None).await;
    assert_eq!(status, 404);
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/shops/acme-a/pause"), Some(ACME_OPS), None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/connectors/shopify/pause"), Some(ACME_OPS), None, None).await;
    assert_eq!(status, 403, "{body}");
    let paused = get_json_as(ADMIN, berth.url("/v1/admin/connectors/shopify")).await;
    assert_eq!((paused["paused"].as_bool(), paused["paused_shops"].clone()), (Some(false), json!(["acme-a"])), "{paused}");
}

#[test]
fn a_scoped_token_cannot_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[admin]\ntokens = [{ name = \"ci\", token = \"deployer-token-scoped-1\", role = \"deployer\", shops = [\"acme-*\"] }]\n",
    )
    .unwrap();
    let (code, _, err) = run_berth(&["serve", "--config", path.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a token scoped to shops may have role erp, viewer or operator"), "{err}");
}
