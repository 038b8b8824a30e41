//! Platform webhooks into the real binary: a signed Shopify `orders/create` is verified
//! by the connector, queued for the ERP and stored before berth answers; a repeat is
//! recognized; forged, tampered and garbage requests are refused and change nothing.

use base64::Engine as _;
use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{poll_until, post_json, Berth};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const HOOK_SECRET: &str = "hook-secret-abc";

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn hook(client: &reqwest::Client, berth: &Berth, shop: &str, topic: &str, body: &[u8], signature: &str) -> (u16, Value) {
    let resp = client
        .post(berth.url(&format!("/v1/webhooks/{shop}")))
        .header("x-shopify-topic", topic)
        .header("x-shopify-hmac-sha256", signature)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn feed_len(client: &reqwest::Client, berth: &Berth) -> usize {
    let v: Value = client.get(berth.url("/v1/orders?limit=1000")).send().await.unwrap().json().await.unwrap();
    v["orders"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_queue_orders_once_and_forgeries_change_nothing() {
    // The platform reference's worked example keeps our signing honest.
    assert_eq!(sign("test_secret", br#"{"id":1}"#), "AsdkItclzjG20ZJ6IZQVt1E9shG3lPvXw9/GqURv0T4=");

    let mut cfg = SimConfig { seed: 8, history_hours: 6, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 10 }];
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tmall".into(), app_key: "k".into(), session: "sess".into(), orders: 3 }];
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 8\n{}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 3600\n\
             settings = {{ base_url = \"{sim}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\", webhook_secret = \"{HOOK_SECRET}\" }}\n\
             [shops.tmall]\nconnector = \"taobao\"\npoll_interval_secs = 3600\n\
             settings = {{ gateway = \"{sim}/taobao/router/rest\", app_key = \"k\" }}\nsecrets = {{ app_secret = \"s\", session = \"sess\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
            sim = sim.base_url()
        ),
    );
    let client = reqwest::Client::new();
    let berth = Berth::start(&config);
    poll_until(Duration::from_secs(120), || async { (feed_len(&client, &berth).await == 13).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("initial pull did not finish\n{}", berth.log()));

    // A new order the pull (hourly) will not see for a while arrives by webhook.
    let order = sim.state.create(Platform::Shopify, "acme").unwrap();
    let body = serde_json::to_vec(&berth_sim::shopify::render(&order)).unwrap();
    let good = sign(HOOK_SECRET, &body);
    let (status, r) = hook(&client, &berth, "acme", "orders/create", &body, &good).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["orders_new"], 1, "{r}");
    assert_eq!(feed_len(&client, &berth).await, 14);

    // The platform delivers again (it does, on timeouts): recognized, not queued twice.
    let (status, r) = hook(&client, &berth, "acme", "orders/create", &body, &good).await;
    assert_eq!((status, r["orders_new"].as_u64(), r["orders_known"].as_u64()), (200, Some(0), Some(1)), "{r}");

    // Forged and tampered requests, garbage, other topics, other shops.
    let (status, r) = hook(&client, &berth, "acme", "orders/create", &body, &sign("wrong-secret", &body)).await;
    assert_eq!(status, 401, "{r}");
    assert!(r["error"].as_str().unwrap().contains("does not match"), "{r}");
    let mut tampered = body.clone();
    let pos = tampered.iter().position(|b| b.is_ascii_digit()).unwrap();
    tampered[pos] = if tampered[pos] == b'9' { b'1' } else { tampered[pos] + 1 };
    let (status, _) = hook(&client, &berth, "acme", "orders/create", &tampered, &good).await;
    assert_eq!(status, 401);
    let garbage = b"<html>not an order</html>";
    let (status, r) = hook(&client, &berth, "acme", "orders/create", garbage, &sign(HOOK_SECRET, garbage)).await;
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("not JSON"), "{r}");
    let (status, r) = hook(&client, &berth, "acme", "products/update", b"{}", &sign(HOOK_SECRET, b"{}")).await;
    assert_eq!((status, r["orders_new"].as_u64()), (200, Some(0)), "{r}");
    let (status, r) = hook(&client, &berth, "tmall", "x", b"{}", "x").await;
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("does not take webhooks"), "{r}");
    let (status, _) = hook(&client, &berth, "nope", "orders/create", &body, &good).await;
    assert_eq!(status, 404);
    assert_eq!(feed_len(&client, &berth).await, 14, "a refused webhook stored something");

    // A signed order whose line title is 3,000 bytes (a platform allows what it allows):
    // taken, the title cut to its bound and marked — not a 503 the platform retries forever.
    let long = sim.state.create(Platform::Shopify, "acme").unwrap();
    let mut rendered = berth_sim::shopify::render(&long);
    rendered["line_items"][0]["title"] = json!("T".repeat(3000));
    let body3 = serde_json::to_vec(&rendered).unwrap();
    let (status, r) = hook(&client, &berth, "acme", "orders/create", &body3, &sign(HOOK_SECRET, &body3)).await;
    assert_eq!((status, r["orders_new"].as_u64()), (200, Some(1)), "{r}");
    let stored: Value = client.get(berth.url("/v1/orders?limit=1000&shop=acme")).send().await.unwrap().json().await.unwrap();
    let kept = stored["orders"].as_array().unwrap().iter().find(|o| o["order"]["order_id"] == long.id.to_string()).unwrap().clone();
    let title = kept["order"]["lines"][0]["title"].as_str().unwrap();
    assert!(title.len() <= 2048 && title.ends_with("…(cut)"), "{}", title.len());
    assert_eq!(feed_len(&client, &berth).await, 15);

    // An update of the same order is a new version.
    let touched = sim.state.touch(Platform::Shopify, "acme", order.id).unwrap();
    let body2 = serde_json::to_vec(&berth_sim::shopify::render(&touched)).unwrap();
    let (status, r) = hook(&client, &berth, "acme", "orders/updated", &body2, &sign(HOOK_SECRET, &body2)).await;
    assert_eq!((status, r["orders_new"].as_u64()), (200, Some(1)), "{r}");

    // The ERP's queue has each webhook version exactly once.
    let leased: Value = post_json(&client, berth.url("/v1/orders/lease"), json!({"max": 1000, "visibility_secs": 60})).await;
    let versions: Vec<i64> = leased["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["order"]["order_id"] == order.id.to_string())
        .map(|l| l["order"]["updated_at_ms"].as_i64().unwrap())
        .collect();
    let mut expected = vec![order.updated_s * 1000, touched.updated_s * 1000];
    expected.dedup();
    let mut got = versions.clone();
    got.sort();
    assert_eq!(got, expected, "webhook versions in the queue: {versions:?}");
    assert_eq!(leased["leases"].as_array().unwrap().len(), 13 + expected.len() + 1, "the pulled 13, the versions, the long-titled order");
    assert!(!berth.log().contains(HOOK_SECRET), "the webhook secret reached the log");
}
