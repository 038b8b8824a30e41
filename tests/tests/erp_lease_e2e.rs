//! The ERP side of inbound orders, end to end: orders pulled by the real binary land in
//! the durable queue; the ERP leases and acks them over HTTP; unacked leases come back
//! after their visibility timeout, across a SIGKILL; stale, made-up and spent tokens are
//! refused; a lease can be extended; two changes within one second are two versions.

use berth_sim::{Platform, ShopifyShop, SimConfig};
use berth_tests::{poll_until, Berth};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

// orders_e2e.rs enforces that every plugin is used; this test needs only Shopify.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);

async fn post(client: &reqwest::Client, berth: &Berth, path: &str, body: Value) -> Value {
    let resp = client.post(berth.url(path)).json(&body).send().await.expect("POST");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.expect("JSON")
}

async fn queue(client: &reqwest::Client, berth: &Berth) -> Value {
    client.get(berth.url("/v1/orders/queue")).send().await.unwrap().json().await.unwrap()
}

/// Lease until `n` orders are held (or the deadline passes).
async fn lease_n(client: &reqwest::Client, berth: &Berth, n: usize, visibility_secs: u64) -> Vec<Value> {
    let held = std::sync::Mutex::new(Vec::new());
    let found = poll_until(DEADLINE, || async {
        let r = post(client, berth, "/v1/orders/lease", json!({"max": 50, "visibility_secs": visibility_secs})).await;
        let mut got = held.lock().unwrap();
        got.extend(r["leases"].as_array().unwrap().iter().cloned());
        (got.len() >= n).then_some(())
    })
    .await;
    let held = held.into_inner().unwrap();
    assert!(found.is_some(), "leased only {} of {n}; queue: {}", held.len(), queue(client, berth).await);
    held
}

fn ids(leases: &[Value]) -> BTreeSet<String> {
    leases.iter().map(|l| l["order"]["order_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erp_leases_and_acks_orders_durably() {
    let mut cfg = SimConfig { seed: 11, history_hours: 24, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 60 }];
    cfg.taobao.shops.clear();
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[erp]\nmax_attempts = 2\n[http]\nallow_private_addresses = true\n\
             [sync]\ninitial_lookback_hours = 30\nsettle_secs = 1\n\
             {}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{}/shopify/acme\", page_size = \"25\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            sim.base_url()
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let seeded: BTreeSet<String> = sim.state.orders(Platform::Shopify, "acme").iter().map(|o| o.id.to_string()).collect();

    let berth = Berth::start(&config);
    let leases = lease_n(&client, &berth, 60, 2).await;
    assert_eq!(leases.len(), 60, "an order was leased twice");
    assert_eq!(ids(&leases), seeded);
    assert!(leases.iter().all(|l| l["shop"] == "acme" && l["platform"] == "shopify" && l["token"]["attempt"] == 1));

    // Ack all but five.
    let (keep, done): (Vec<_>, Vec<_>) = leases.iter().enumerate().partition(|(i, _)| *i < 5);
    let tokens: Vec<Value> = done.iter().map(|(_, l)| l["token"].clone()).collect();
    let r = post(&client, &berth, "/v1/orders/ack", json!({ "tokens": tokens })).await;
    assert_eq!(r["done"], 55, "{r}");

    // A token made up from an id — never issued, or another lease's — is refused with
    // 409 and changes nothing.
    let kept_token = &keep[0].1["token"];
    for guess in [json!({"id": kept_token["id"], "attempt": 1}), json!({"id": kept_token["id"], "attempt": 1, "lease": "0".repeat(32)})] {
        let resp = client.post(berth.url("/v1/orders/ack")).json(&json!({ "tokens": [guess] })).send().await.unwrap();
        assert_eq!(resp.status(), 409);
        let r: Value = resp.json().await.unwrap();
        assert_eq!((r["done"].as_u64(), r["lease_lost"][0].as_u64()), (Some(0), kept_token["id"].as_u64()), "{r}");
        assert!(r["refused"][0]["reason"].as_str().unwrap().contains("never issued"), "{r}");
    }
    assert_eq!(queue(&client, &berth).await["in_flight"], 5, "the guesses acked nothing");

    // Crash, restart: the five unacked come back once their lease expires, and only they.
    berth.kill();
    let berth = Berth::start(&config);
    let back = lease_n(&client, &berth, 5, 30).await;
    let kept: Vec<Value> = keep.iter().map(|(_, l)| (*l).clone()).collect();
    assert_eq!(ids(&back), ids(&kept));
    assert!(back.iter().all(|l| l["token"]["attempt"].as_u64().unwrap() >= 2));
    // The first leases of those orders expired: their acks are refused and change nothing.
    let stale: Vec<Value> = kept.iter().map(|l| l["token"].clone()).collect();
    let resp = client.post(berth.url("/v1/orders/ack")).json(&json!({ "tokens": stale })).send().await.unwrap();
    assert_eq!(resp.status(), 409, "stale tokens are a conflict");
    let r: Value = resp.json().await.unwrap();
    assert_eq!((r["done"].as_u64(), r["lease_lost"].as_array().map(Vec::len)), (Some(0), Some(5)), "{r}");
    // One the ERP cannot take: its second and last attempt fails, so it is dead-lettered
    // with the reason, then replayed and delivered again.
    let poison = &back[0];
    let r = post(&client, &berth, "/v1/orders/nack", json!({ "tokens": [poison["token"]], "reason": "ERP rejected: unknown SKU" })).await;
    assert_eq!(r["done"], 1, "{r}");
    let q = queue(&client, &berth).await;
    let dead = q["dead_letters"].as_array().unwrap();
    assert_eq!((q["dead"].as_u64(), dead.len()), (Some(1), 1), "{q}");
    assert!(dead[0]["reason"].as_str().unwrap().contains("ERP rejected: unknown SKU"), "{q}");
    let r = post(&client, &berth, "/v1/orders/dead-letters/replay", json!({ "ids": [dead[0]["id"]] })).await;
    assert_eq!(r["count"], 1, "{r}");
    let replayed = lease_n(&client, &berth, 1, 30).await;
    assert_eq!(replayed[0]["order"]["order_id"], poison["order"]["order_id"]);
    let mut tokens: Vec<Value> = back[1..].iter().map(|l| l["token"].clone()).collect();
    tokens.push(replayed[0]["token"].clone());
    let r = post(&client, &berth, "/v1/orders/ack", json!({ "tokens": tokens })).await;
    assert_eq!(r["done"], 5, "{r}");
    let r = post(&client, &berth, "/v1/orders/dead-letters/purge", json!({ "ids": [dead[0]["id"]] })).await;
    assert_eq!(r["count"], 0, "replayed letters are no longer dead: {r}");
    let q = queue(&client, &berth).await;
    assert_eq!((q["ready"].as_u64(), q["in_flight"].as_u64()), (Some(0), Some(0)), "{q}");

    // A later change on the platform is queued once, as its new version.
    let first = seeded.iter().next().unwrap().parse::<u64>().unwrap();
    let touched = sim.state.touch(Platform::Shopify, "acme", first).unwrap();
    let again = lease_n(&client, &berth, 1, 30).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["order"]["order_id"], first.to_string().as_str());
    assert_eq!(again[0]["order"]["updated_at_ms"].as_i64(), Some(touched.updated_s * 1000));

    let r = post(&client, &berth, "/v1/orders/ack", json!({ "tokens": [again[0]["token"]] })).await;
    assert_eq!(r["done"], 1, "{r}");

    // Changed again within the same second (paid → shipped, one modification time): a
    // second version, after the first — not a "duplicate" the ERP never hears of.
    let within = sim.state.change_within_second(Platform::Shopify, "acme", first).unwrap();
    assert_eq!(within.updated_s, touched.updated_s);
    let second_version = lease_n(&client, &berth, 1, 30).await;
    assert_eq!(second_version[0]["order"]["order_id"], first.to_string().as_str());
    assert_eq!(second_version[0]["order"]["updated_at_ms"], again[0]["order"]["updated_at_ms"], "the same second");
    assert_ne!(second_version[0]["order"]["platform_status"], again[0]["order"]["platform_status"], "another status");
    assert!(second_version[0]["token"]["id"].as_u64() > again[0]["token"]["id"].as_u64(), "queued after the first");
    let feed: Value = client.get(berth.url("/v1/orders?limit=1000&shop=acme")).send().await.unwrap().json().await.unwrap();
    let versions: Vec<&Value> = feed["orders"].as_array().unwrap().iter().filter(|o| o["order"]["order_id"] == first.to_string().as_str()).collect();
    assert_eq!(versions.len(), 3, "seeded, touched, changed within its second: {versions:?}");
    assert_eq!(versions[2]["order"]["platform_status"], second_version[0]["order"]["platform_status"], "in order");
    let r = post(&client, &berth, "/v1/orders/ack", json!({ "tokens": [second_version[0]["token"]] })).await;
    assert_eq!(r["done"], 1, "{r}");

    // Long work: a lease of 1 s extended to 10 min does not come back after that second.
    let second = seeded.iter().nth(1).unwrap().parse::<u64>().unwrap();
    sim.state.touch(Platform::Shopify, "acme", second).unwrap();
    let slow = lease_n(&client, &berth, 1, 1).await.remove(0);
    let r = post(&client, &berth, "/v1/orders/extend", json!({ "tokens": [slow["token"]], "visibility_secs": 600 })).await;
    assert_eq!(r["done"], 1, "{r}");
    let until = r["expires_at_ms"][slow["token"]["id"].to_string()].as_i64().unwrap();
    assert!(until > slow["expires_at_ms"].as_i64().unwrap() + 500_000, "{r}");
    // Once the clock (berth's too) is past the lease's first expiry, the order is still not
    // offered again: the extension holds.
    let first_expiry = slow["expires_at_ms"].as_i64().unwrap();
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let past = poll_until(DEADLINE, || async { (now_ms() > first_expiry + 1000).then_some(()) }).await;
    assert!(past.is_some(), "the clock never passed the first expiry");
    let r = post(&client, &berth, "/v1/orders/lease", json!({"max": 10, "visibility_secs": 30})).await;
    assert_eq!(r["leases"].as_array().map(Vec::len), Some(0), "an extended lease was handed out again: {r}");
    let r = post(&client, &berth, "/v1/orders/ack", json!({ "tokens": [slow["token"]] })).await;
    assert_eq!(r["done"], 1, "{r}");

    // Bad requests are refused with a reason.
    let resp = client.post(berth.url("/v1/orders/nack")).json(&json!({"tokens": [], "delay_secs": 1_000_000_000u64})).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("delay_secs must be 0..=604800"));
    let resp = client.post(berth.url("/v1/orders/lease")).json(&json!({"max": 0})).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client.post(berth.url("/v1/orders/ack")).body("not json").header("content-type", "application/json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("expected"));
}
