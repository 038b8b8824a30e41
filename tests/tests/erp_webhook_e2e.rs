//! Orders pushed to the ERP's webhook: the real binary posts signed batches to a local
//! receiver, retries through its outage, dead-letters orders when it keeps failing, and
//! delivers them after a replay. Every order arrives, none twice, signatures verify.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use berth_sim::{Platform, ShopifyShop, SimConfig};
use berth_tests::{poll_until, post_json, Berth};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const SECRET: &str = "erp-hook-secret-123";
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Receiver {
    /// Answer with this status while > 0 requests remain to fail (u32::MAX: forever).
    fail_next: u32,
    failed: u32,
    bad_signatures: u32,
    /// order id -> times received in an accepted batch
    received: BTreeMap<String, u32>,
}

async fn hook(State(r): State<Arc<Mutex<Receiver>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = r.lock().unwrap();
    let ts = headers.get("x-berth-timestamp").and_then(|v| v.to_str().ok()).unwrap_or("");
    let sig = headers.get("x-berth-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&body);
    if sig != format!("sha256={}", hex::encode(mac.finalize().into_bytes())) {
        r.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if r.fail_next > 0 {
        r.fail_next = r.fail_next.saturating_sub(if r.fail_next == u32::MAX { 0 } else { 1 });
        r.failed += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    for o in v["orders"].as_array().unwrap() {
        assert!(o["token"]["id"].is_u64(), "{o}");
        *r.received.entry(o["order"]["order_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reach_the_erp_webhook_through_outages() {
    let mut cfg = SimConfig { seed: 21, history_hours: 12, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 40 }];
    cfg.taobao.shops.clear();
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();

    let receiver = Arc::new(Mutex::new(Receiver { fail_next: 3, ..Default::default() }));
    let app = axum::Router::new().route("/hook", post(hook)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[erp]\nmax_attempts = 4\nwebhook_url = \"http://{hook_addr}/hook\"\nwebhook_secret = \"{SECRET}\"\n\
             webhook_batch = 15\nwebhook_retry_base_ms = 50\nwebhook_retry_max_ms = 200\n\
             [sync]\ninitial_lookback_hours = 20\nsettle_secs = 1\n{}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            sim.base_url()
        ),
    );
    let client = reqwest::Client::new();
    let berth = Berth::start(&config);
    let seeded: Vec<String> = sim.state.orders(Platform::Shopify, "acme").iter().map(|o| o.id.to_string()).collect();

    // Through three failed deliveries, every order arrives exactly once.
    let all_in = poll_until(DEADLINE, || async {
        let r = receiver.lock().unwrap();
        seeded.iter().all(|id| r.received.contains_key(id)).then_some(())
    })
    .await;
    {
        let r = receiver.lock().unwrap();
        assert!(all_in.is_some(), "received {} of {}\n{}", r.received.len(), seeded.len(), berth.log());
        assert_eq!(r.failed, 3);
        assert_eq!(r.bad_signatures, 0);
        assert!(r.received.values().all(|n| *n == 1), "an order was delivered twice: {:?}", r.received);
    }
    // berth acks after the receiver's answer: wait for its books to close.
    let q = poll_until(DEADLINE, || async {
        let q: Value = client.get(berth.url("/v1/orders/queue")).send().await.ok()?.json().await.ok()?;
        (q["webhook"]["orders_delivered"] == 40 && q["ready"] == 0 && q["in_flight"] == 0).then_some(q)
    })
    .await
    .unwrap_or_else(|| panic!("deliveries never all acked\n{}", berth.log()));
    assert_eq!(q["webhook"]["failures"], 3, "{q}");

    // The ERP goes down for good: new orders end in the dead letters after 4 attempts (three failures above cannot have killed any).
    receiver.lock().unwrap().fail_next = u32::MAX;
    let fresh: Vec<String> = (0..3).map(|_| sim.state.create(Platform::Shopify, "acme").unwrap().id.to_string()).collect();
    let dead = poll_until(DEADLINE, || async {
        let q: Value = client.get(berth.url("/v1/orders/queue")).send().await.ok()?.json().await.ok()?;
        (q["dead_letters"].as_array()?.len() == 3).then_some(q)
    })
    .await
    .unwrap_or_else(|| panic!("orders never reached the dead letters\n{}", berth.log()));
    assert!(dead["dead_letters"][0]["reason"].as_str().unwrap().contains("503"), "{dead}");
    assert_eq!(dead["partitions"]["acme"]["dead"], 3, "{dead}");
    assert!(fresh.iter().all(|id| !receiver.lock().unwrap().received.contains_key(id)));

    // Back up: replayed dead letters are delivered.
    receiver.lock().unwrap().fail_next = 0;
    let ids: Vec<u64> = dead["dead_letters"].as_array().unwrap().iter().map(|d| d["id"].as_u64().unwrap()).collect();
    let replayed: Value =
        post_json(&client, berth.url("/v1/orders/dead-letters/replay"), json!({ "ids": ids })).await;
    assert_eq!(replayed["count"], 3);
    let delivered = poll_until(DEADLINE, || async {
        let r = receiver.lock().unwrap();
        fresh.iter().all(|id| r.received.get(id) == Some(&1)).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "replayed orders never arrived\n{}", berth.log());
    assert!(!berth.log().contains(SECRET), "the webhook secret reached the log");
}
