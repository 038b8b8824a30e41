//! A shop's listings read from its platform through the connector's `listings` export
//! (berth:connector 0.4.0), with the real binary against the simulator: the Rust Shopify
//! (REST, `products.json` paged by `page_info`) and Taobao (`items.onsale.get` +
//! `items.seller.list.get`) connectors list every SKU once, with the quantity, price and
//! ids the platform holds, as JSON and as CSV, through injected 5xx and garbled pages. A
//! connector built for an older world is refused by name (and `/v1/connectors` says the
//! feature is absent), and only the ERP role (or admin) may spend platform quota on it.

use berth_sim::faults::FaultKind;
use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{api_call, get_json_as, Berth};
use reqwest::Method;
use serde_json::{json, Value};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ERP: &str = "erp-token-listings-00001";
const VIEWER: &str = "viewer-token-listings-01";
const OPERATOR: &str = "operator-token-listing-1";

async fn listings(berth: &Berth, shop: &str) -> (u16, Value) {
    api_call(Method::GET, berth.url(&format!("/v1/shops/{shop}/listings")), Some(ERP), None, None).await
}

/// Every SKU of the simulated shop listed once, as the platform holds it.
fn assert_matches_platform(sim: &berth_sim::SimHandle, platform: Platform, shop: &str, body: &Value) {
    let listed = body["listings"].as_array().unwrap_or_else(|| panic!("{body}"));
    let items = sim.state.stock(platform, shop);
    assert_eq!(listed.len(), items.len(), "{body}");
    for item in &items {
        let found: Vec<&Value> = listed.iter().filter(|l| l["sku"] == item.sku.as_str()).collect();
        assert_eq!(found.len(), 1, "{}: {body}", item.sku);
        let l = found[0];
        assert_eq!(l["quantity"], i64::from(item.quantity), "{l}");
        assert_eq!(l["price_minor"], item.price_minor, "{l}");
        assert_eq!(l["currency"], platform.currency(), "{l}");
        assert_eq!(l["item_id"], item.product_id.to_string(), "{l}");
        assert_eq!(l["variant_id"], item.variant_id.to_string(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_read_from_the_platform_page_by_page() {
    let mut cfg = SimConfig { seed: 77, history_hours: 1, ..SimConfig::default() };
    cfg.shopify.shops = vec![
        ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 2 },
        ShopifyShop { name: "old".into(), access_token: "tok2".into(), orders: 2 },
    ];
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tb".into(), app_key: "k".into(), session: "sess".into(), orders: 2 }];
    cfg.taobao.calls_per_window = 10_000;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{sync}[admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"eyes\", token = \"{VIEWER}\", role = \"viewer\" }}, {{ name = \"ops\", token = \"{OPERATOR}\", role = \"operator\" }}]\n{connectors}\
             [connectors.shopify-old]\nplatform = \"shopify\"\ncomponent = {old:?}\nextra_hosts = [\"127.0.0.1\"]\n\
             [shops.acme]\nconnector = \"shopify\"\nsettings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n\
             [shops.old]\nconnector = \"shopify-old\"\nsettings = {{ base_url = \"{base}/shopify/old\" }}\nsecrets = {{ access_token = \"tok2\" }}\n\
             [shops.tb]\nconnector = \"taobao\"\nsettings = {{ gateway = \"{base}/taobao/router/rest\", app_key = \"k\" }}\nsecrets = {{ app_secret = \"s\", session = \"sess\" }}\n",
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
            old = plugins::SHOPIFY_WIT_0_1,
        ),
    );
    let berth = Berth::start(&config);

    // Quantities the platforms hold, set by the ERP through berth.
    for (shop, platform) in [("acme", Platform::Shopify), ("tb", Platform::Taobao)] {
        let updates: Vec<Value> = sim.state.stock(platform, shop).iter().step_by(3).enumerate().map(|(i, s)| json!({"sku": s.sku, "quantity": 5 + i})).collect();
        let n = updates.len();
        let (status, body) = api_call(Method::POST, berth.url(&format!("/v1/shops/{shop}/stock")), Some(ERP), None, Some(json!({ "updates": updates }))).await;
        assert_eq!(status, 202, "{body}");
        berth_tests::poll_until(std::time::Duration::from_secs(60), || async {
            (sim.state.stock(platform, shop).iter().filter(|s| s.quantity > 0).count() == n).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{shop}: the stock did not land\n{}", berth.log()));
    }

    // Shopify: 8 products of 3 variants, one page of products (250 asked) at a time.
    let (status, body) = listings(&berth, "acme").await;
    assert_eq!(status, 200, "{body}");
    assert_matches_platform(&sim, Platform::Shopify, "acme", &body);
    assert_eq!((body["connector"].as_str(), body["pages"].as_u64()), (Some("shopify"), Some(1)), "{body}");

    // Taobao: 20 items a page, two calls each; through a 503 and a garbled answer. The
    // shop is paused first, so its own pulls and probes take none of the faults (a
    // listing asked for still runs on a paused shop).
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/shops/tb/pause"), Some(OPERATOR), None, None).await;
    assert_eq!(status, 200, "{body}");
    sim.state.inject(Platform::Taobao, FaultKind::Http503, 1);
    sim.state.inject(Platform::Taobao, FaultKind::Garbage, 1);
    let (status, body) = listings(&berth, "tb").await;
    assert_eq!(status, 200, "{body}");
    assert_matches_platform(&sim, Platform::Taobao, "tb", &body);
    assert!(body["retries"].as_u64().is_some_and(|r| r >= 2), "the faults were not retried: {body}");

    // CSV: a header and a row per listing, quoted where a title needs it.
    let resp = berth_tests::client_as(ERP).get(berth.url("/v1/shops/acme/listings?format=csv")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = resp.text().await.unwrap();
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("sku,item_id,variant_id,title,quantity,price_minor,currency"));
    let first = sim.state.stock(Platform::Shopify, "acme").into_iter().find(|s| s.sku == "SKU-000-S").unwrap();
    let row = format!("SKU-000-S,{},{},Tea Cup (S),{},{},USD", first.product_id, first.variant_id, first.quantity, first.price_minor);
    assert!(text.lines().any(|l| l == row), "{row} not in\n{text}");
    assert_eq!(rows.count(), 24, "{text}");

    // An older world: refused by name, and said so in /v1/connectors.
    let (status, body) = listings(&berth, "old").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("built for berth:connector 0.1.0") && body["error"].as_str().unwrap().contains("new in 0.4.0"), "{body}");
    let connectors = get_json_as(ERP, berth.url("/v1/connectors")).await;
    let features = |name: &str| connectors.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["features"].clone();
    assert_eq!(features("shopify")["listings"], true, "{connectors}");
    assert_eq!(features("shopify-old")["listings"], false, "{connectors}");

    // Who may ask, and for what.
    let (status, _) = api_call(Method::GET, berth.url("/v1/shops/acme/listings"), Some(VIEWER), None, None).await;
    assert_eq!(status, 403);
    let (status, body) = listings(&berth, "nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api_call(Method::GET, berth.url("/v1/shops/acme/listings?format=xml"), Some(ERP), None, None).await;
    assert!(status == 400 && body["error"].as_str().unwrap().contains("json or csv"), "{body}");
}
