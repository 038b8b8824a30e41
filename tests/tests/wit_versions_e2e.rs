//! Versioned WIT: the host serves berth:connector 0.4.0, 0.3.0, 0.2.0 and 0.1.0. A
//! Shopify connector built against 0.1.0 (a fixture from the same source, SDK feature
//! `wit-0-1`) runs beside the 0.4.0 Taobao connector in one host — orders in, stock out —
//! and a deploy swaps it for its 0.4.0 build and back under the same shops. The exports
//! new in 0.3.0 (credentials, OAuth) are called in 0.4.0 and 0.3.0 components and refused,
//! naming the world, for a 0.2.0 (C) and a 0.1.0 one; the one new in 0.4.0 (listings) is
//! refused the same way for 0.3.0, 0.2.0 and 0.1.0 builds.

use berth_sim::{Platform, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop};
use berth_tests::{get_json_as, poll_until, Berth};
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const TOKEN: &str = "deployer-token-0000001";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-wit-versions-0001";

async fn entries(berth: &Berth) -> u64 {
    get_json_as(ERP, berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0)
}

fn wit_of(connectors: &Value, name: &str) -> String {
    connectors.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["wit_version"].as_str().unwrap().to_string()
}

async fn stock_lands(berth: &Berth, sim: &berth_sim::SimHandle, platform: Platform, shop: &str, quantity: u32) {
    let skus: Vec<String> = sim.state.stock(platform, shop).into_iter().take(5).map(|i| i.sku).collect();
    let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": quantity})).collect();
    let r = berth_tests::client_as(ERP).post(berth.url(&format!("/v1/shops/{shop}/stock"))).json(&json!({ "updates": updates })).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    poll_until(DEADLINE, || async {
        let items = sim.state.stock(platform, shop);
        skus.iter().all(|s| items.iter().any(|i| &i.sku == s && i.quantity == quantity)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{shop}: stock {quantity} never landed\n{}", berth.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_built_for_0_1_runs_beside_0_4_and_swaps_across_versions() {
    let mut cfg = SimConfig { seed: 41, history_hours: 6, ..SimConfig::default() };
    cfg.shopify.shops = vec![ShopifyShop { name: "acme".into(), access_token: "tok".into(), orders: 25 }];
    cfg.shopify.bucket_size = 1000;
    cfg.shopify.leak_per_sec = 100.0;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k".into(), secret: "s".into() }];
    cfg.taobao.shops = vec![TaobaoShop { nick: "tb".into(), app_key: "k".into(), session: "sess".into(), orders: 25 }];
    cfg.taobao.calls_per_window = 1000;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 8\nsettle_secs = 1\n\
             [admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"ci\", token = \"{TOKEN}\", role = \"deployer\" }}]\n{}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/acme\", page_size = \"10\" }}\nsecrets = {{ access_token = \"tok\" }}\n\
             [shops.tb]\nconnector = \"taobao\"\npoll_interval_secs = 1\n\
             settings = {{ gateway = \"{base}/taobao/router/rest\", app_key = \"k\" }}\nsecrets = {{ app_secret = \"s\", session = \"sess\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_WIT_0_1), ("taobao", plugins::TAOBAO)]),
        ),
    );
    let berth = Berth::start(&config);
    let connectors = get_json_as(ERP, berth.url("/v1/connectors")).await;
    assert_eq!((wit_of(&connectors, "shopify").as_str(), wit_of(&connectors, "taobao").as_str()), ("0.1.0", "0.4.0"), "{connectors}");
    // What the older world lacks is said.
    let old = connectors.as_array().unwrap().iter().find(|c| c["name"] == "shopify").unwrap();
    assert_eq!((old["features"]["listings"].as_bool(), old["features"]["credentials"].as_bool()), (Some(false), Some(false)), "{old}");
    assert!(old["features"]["absent"].to_string().contains("listings: built for berth:connector 0.1.0"), "{old}");

    // Both worlds do their whole job side by side.
    poll_until(DEADLINE, || async { (entries(&berth).await >= 50).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("orders missing\n{}", berth.log()));
    stock_lands(&berth, &sim, Platform::Shopify, "acme", 11).await;
    stock_lands(&berth, &sim, Platform::Taobao, "tb", 12).await;

    // Swap the 0.1.0 build for the 0.4.0 one and back, under the same shops.
    let client = reqwest::Client::new();
    let upgrade = client
        .post(berth.url("/v1/admin/connectors/shopify/versions"))
        .bearer_auth(TOKEN)
        .body(std::fs::read(plugins::SHOPIFY_REST).unwrap())
        .send()
        .await
        .unwrap();
    let status = upgrade.status().as_u16();
    let body: Value = upgrade.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"]["wit_version"], "0.4.0", "{body}");
    assert_eq!(body["version"]["capabilities"], serde_json::json!(["orders", "inventory", "webhooks", "products"]), "{body}");
    assert_eq!(wit_of(&get_json_as(ERP, berth.url("/v1/connectors")).await, "shopify"), "0.4.0");
    sim.state.create(Platform::Shopify, "acme").unwrap();
    poll_until(DEADLINE, || async { (entries(&berth).await >= 51).then_some(()) }).await.expect("order after the upgrade");
    stock_lands(&berth, &sim, Platform::Shopify, "acme", 21).await;

    let back = client.post(berth.url("/v1/admin/connectors/shopify/rollback")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(back.status().as_u16(), 200);
    assert_eq!(wit_of(&get_json_as(ERP, berth.url("/v1/connectors")).await, "shopify"), "0.1.0");
    sim.state.create(Platform::Shopify, "acme").unwrap();
    poll_until(DEADLINE, || async { (entries(&berth).await >= 52).then_some(()) }).await.expect("order after the rollback");
    stock_lands(&berth, &sim, Platform::Shopify, "acme", 31).await;
    let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
    assert!(shops.as_array().unwrap().iter().all(|s| s["errors"] == 0), "{shops}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_exports_are_called_in_their_worlds_and_refused_by_name_before() {
    use berth_runtime::credential_calls::AuthSupport;
    use berth_runtime::CallError;
    use berth_types::credentials::{Credentials, RefreshError};
    let host = berth_kit::ScratchHost::new().unwrap();
    let load = |name: &'static str, path: &'static str| {
        let runtime = host.runtime.clone();
        let options = host.options(&[]);
        async move { runtime.load(name, std::path::Path::new(path), &options).await.unwrap_or_else(|e| panic!("{name}: {e}")) }
    };
    let cfg = std::sync::Arc::new(berth_types::shop::ShopConfig {
        connector: "any".into(),
        tier: berth_types::shop::Tier::B,
        poll_interval_secs: None,
        settings: Default::default(),
        secrets: Default::default(),
    });
    let creds = Credentials::lasting(berth_types::Secret::new("access-1"));

    // 0.4.0 has 0.3.0's calls: they reach the guest (the SDK's defaults answer for a
    // connector with static credentials, as Taobao's is today).
    let taobao = load("taobao", plugins::TAOBAO).await;
    assert_eq!(taobao.auth_support().await.unwrap(), AuthSupport::NONE);
    let refreshed = taobao.refresh_credentials("tb", cfg.clone(), &creds).await.unwrap();
    assert_eq!(refreshed, Err(RefreshError::Revoked("this connector does not refresh credentials".into())));
    let consent = taobao.consent_url("tb", cfg.clone(), "state-1", "https://berth.example/cb").await.unwrap();
    assert!(matches!(consent, Err(berth_types::connector::ConnectorError::Permanent(ref why)) if why.contains("OAuth")), "{consent:?}");

    // 0.2.0 and 0.1.0: no such exports; nothing is called, the error names the world.
    let taobao_0_3 = load("taobao-0-3", plugins::TAOBAO_WIT_0_3).await;
    assert_eq!(taobao_0_3.auth_support().await.unwrap(), AuthSupport::NONE);
    let refreshed = taobao_0_3.refresh_credentials("tb", cfg.clone(), &creds).await.unwrap();
    assert_eq!(refreshed, Err(RefreshError::Revoked("this connector does not refresh credentials".into())));
    for (name, path, world) in [("woo-c", plugins::WOO_C_WIT_0_2, "0.2.0"), ("shopify", plugins::SHOPIFY_WIT_0_1, "0.1.0")] {
        let old = load(name, path).await;
        assert_eq!(old.auth_support().await.unwrap(), AuthSupport::NONE, "{name}");
        let err = old.refresh_credentials("s", cfg.clone(), &creds).await.unwrap_err();
        assert!(matches!(&err, CallError::NotExported { call: "refresh-credentials", wit_version, .. } if wit_version == world), "{name}: {err:?}");
        assert!(err.to_string().contains(&format!("built for berth:connector {world}")), "{err}");
    }

    // Listings: new in 0.4.0; older worlds' components have no such export.
    assert!(taobao.has_listings());
    for (name, path, world) in [("taobao-0-3", plugins::TAOBAO_WIT_0_3, "0.3.0"), ("woo-c", plugins::WOO_C_WIT_0_2, "0.2.0"), ("shopify", plugins::SHOPIFY_WIT_0_1, "0.1.0")] {
        let old = load(name, path).await;
        assert!(!old.has_listings(), "{name}");
        let err = old.listings("s", cfg.clone(), None, 50).await.unwrap_err();
        assert!(matches!(&err, CallError::NotExported { call: "listings", wit_version, since: "0.4.0" } if wit_version == world), "{name}: {err:?}");
        assert!(err.to_string().contains("new in 0.4.0"), "{err}");
    }
}
