//! Five connectors in four languages side by side in one host: Rust Shopify and Taobao,
//! Python Shopee, JavaScript and C WooCommerce. Every seeded order of every shop arrives
//! exactly once with its fields, stock reaches each platform per SKU, and signed pushes
//! through each webhook connector bring in the order they name.

use berth_sim::profiles::{self, SHOPEE_CALLBACK_URL, WEBHOOK_SECRET};
use berth_sim::{Platform, ShopeePartner, ShopeeShop, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop, WooSite};
use berth_tests::{poll_until, Berth};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(180);

/// (berth shop name, platform, the simulator's shop key)
const SHOPS: &[(&str, Platform, &str)] = &[
    ("acme", Platform::Shopify, "acme"),
    ("tmall", Platform::Taobao, "tmall"),
    ("sg", Platform::Shopee, "880001"),
    ("site-js", Platform::Woo, "site-js"),
    ("site-c", Platform::Woo, "site-c"),
];

fn sim_config() -> SimConfig {
    let mut cfg = SimConfig { seed: 21, history_hours: 30, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "shp-acme".into(), orders: 45 }];
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k1".into(), secret: "tb-secret".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tmall".into(), app_key: "k1".into(), session: "s1".into(), orders: 45 }];
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = vec![ShopeeShop { shop_id: 880001, partner_id: 9001, access_token: "sp-token".into(), orders: 70 }];
    cfg.woo.sites = vec![
        WooSite { name: "site-js".into(), consumer_key: "ck_js".into(), consumer_secret: "cs_js".into(), orders: 60 },
        WooSite { name: "site-c".into(), consumer_key: "ck_c".into(), consumer_secret: "cs_c".into(), orders: 60 },
    ];
    cfg
}

fn berth_config(dir: &std::path::Path, sim: &str) -> std::path::PathBuf {
    berth_tests::write_config(
        dir,
        &format!(
            r#"
[sync]
initial_lookback_hours = 32
retry_base_ms = 100
retry_max_ms = 1000
[stock]
retry_base_ms = 100
retry_max_ms = 1000
{connectors}
[shops.acme]
connector = "shopify"
poll_interval_secs = 3600
settings = {{ base_url = "{sim}/shopify/acme", page_size = "20" }}
secrets = {{ access_token = "shp-acme", webhook_secret = "{secret}" }}
[shops.tmall]
connector = "taobao"
poll_interval_secs = 3600
settings = {{ gateway = "{sim}/taobao/router/rest", app_key = "k1", sign_method = "hmac-sha256", page_size = "20" }}
secrets = {{ app_secret = "tb-secret", session = "s1" }}
[shops.sg]
connector = "shopee"
poll_interval_secs = 3600
settings = {{ base_url = "{sim}/shopee", partner_id = "9001", shop_id = "880001", page_size = "25", webhook_url = "{callback}" }}
secrets = {{ partner_key = "sp-partner-key", access_token = "sp-token" }}
[shops.site-js]
connector = "woo-js"
poll_interval_secs = 3600
settings = {{ base_url = "{sim}/woo/site-js", page_size = "25" }}
secrets = {{ consumer_key = "ck_js", consumer_secret = "cs_js", webhook_secret = "{secret}" }}
[shops.site-c]
connector = "woo-c"
poll_interval_secs = 3600
settings = {{ base_url = "{sim}/woo/site-c", page_size = "25" }}
secrets = {{ consumer_key = "ck_c", consumer_secret = "cs_c", webhook_secret = "{secret}" }}
"#,
            connectors = berth_tests::local_connectors(&[
                ("shopify", plugins::SHOPIFY_REST),
                ("taobao", plugins::TAOBAO),
                ("shopee", plugins::SHOPEE_PY),
                ("woo-js", plugins::WOO_JS),
                ("woo-c", plugins::WOO_C),
            ]),
            secret = WEBHOOK_SECRET,
            callback = SHOPEE_CALLBACK_URL,
        ),
    )
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Every (shop, order id) -> versions (updated ms) the host has, read through the ERP API.
async fn held(client: &reqwest::Client, berth: &Berth) -> BTreeMap<(String, String), Vec<i64>> {
    let mut after = 0u64;
    let mut out: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    loop {
        let page = get(client, berth.url(&format!("/v1/orders?after={after}&limit=200"))).await;
        let orders = page["orders"].as_array().expect("orders").clone();
        if orders.is_empty() {
            return out;
        }
        after = page["next_after"].as_u64().unwrap();
        for o in orders {
            let key = (o["shop"].as_str().unwrap().to_string(), o["order"]["order_id"].as_str().unwrap().to_string());
            out.entry(key).or_default().push(o["order"]["updated_at_ms"].as_i64().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_connectors_in_four_languages_serve_side_by_side() {
    let cfg = sim_config();
    let sim = berth_sim::start(cfg.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&berth_config(dir.path(), &sim.base_url()));
    let client = reqwest::Client::new();

    // Every seeded order of every shop, once.
    let expected: usize = SHOPS.iter().map(|(_, p, key)| sim.state.orders(*p, key).len()).sum();
    let all = poll_until(DEADLINE, || async {
        let h = held(&client, &berth).await;
        (h.len() >= expected).then_some(h)
    })
    .await
    .unwrap_or_else(|| panic!("not every order arrived\n{}", berth.log()));
    assert_eq!(all.len(), expected);
    for (shop, platform, key) in SHOPS {
        for o in sim.state.orders(*platform, key) {
            let id = profiles::order_id(*platform, &o);
            let versions = all.get(&(shop.to_string(), id.clone())).unwrap_or_else(|| panic!("{shop}: order {id} missing"));
            assert_eq!(versions, &vec![o.updated_s * 1000], "{shop} {id}: delivered {versions:?}");
        }
    }
    let listed = get(&client, berth.url("/v1/connectors")).await;
    eprintln!("connectors: {listed}");

    // Stock: three SKUs and one unknown one per shop, each to its platform.
    for (shop, platform, key) in SHOPS {
        let skus: Vec<String> = sim.state.stock(*platform, key).into_iter().step_by(7).take(3).map(|i| i.sku).collect();
        let mut updates: Vec<Value> = skus.iter().enumerate().map(|(i, s)| json!({"sku": s, "quantity": 40 + i})).collect();
        updates.push(json!({"sku": "NOPE-9", "quantity": 1}));
        let resp = client.post(berth.url(&format!("/v1/shops/{shop}/stock"))).json(&json!({ "updates": updates })).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 202, "{shop}");
    }
    let queue = poll_until(DEADLINE, || async {
        let q = get(&client, berth.url("/v1/stock/queue")).await;
        SHOPS.iter().all(|(shop, _, _)| q[shop]["pending"] == 0 && q[shop]["pushed"] == 3).then_some(q)
    })
    .await
    .unwrap_or_else(|| panic!("stock did not reach every platform\n{}", berth.log()));
    for (shop, platform, key) in SHOPS {
        assert_eq!(queue[shop]["rejected"], 1, "{shop}: {queue}");
        let stock = sim.state.stock(*platform, key);
        for (i, item) in stock.iter().step_by(7).take(3).enumerate() {
            assert_eq!(item.quantity, 40 + i as u32, "{shop} {}", item.sku);
        }
    }

    // Pushes: each webhook connector verifies its platform's signature and the order
    // the push names reaches the feed in its new version.
    for (shop, platform, key) in SHOPS.iter().filter(|(_, p, _)| *p != Platform::Taobao) {
        let first = sim.state.orders(*platform, key)[0].id;
        // A new version one second on, so it differs from the pulled one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let order = sim.state.touch(*platform, key, first).unwrap();
        let (headers, body) = profiles::signed_push(&cfg, *platform, &order).unwrap();
        let mut forged = client.post(berth.url(&format!("/v1/webhooks/{shop}"))).body(body.clone());
        let mut req = client.post(berth.url(&format!("/v1/webhooks/{shop}"))).body(body.clone());
        for (k, v) in &headers {
            req = req.header(k, v);
            forged = forged.header(k, if k.contains("sign") || k.contains("hmac") || k == "authorization" { "Zm9yZ2Vk" } else { v });
        }
        let refused = forged.send().await.unwrap();
        assert_eq!(refused.status().as_u16(), 401, "{shop}: a forged push was not refused");
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        assert!((200..300).contains(&status), "{shop}: {status} {}", resp.text().await.unwrap_or_default());
        let id = profiles::order_id(*platform, &order);
        let want = order.updated_s * 1000;
        poll_until(DEADLINE, || async {
            let h = held(&client, &berth).await;
            h.get(&(shop.to_string(), id.clone())).is_some_and(|v| v.contains(&want)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{shop}: the pushed order {id} never arrived in version {want}\n{}", berth.log()));
    }
    berth.kill();
}
