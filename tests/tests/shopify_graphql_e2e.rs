//! The Shopify GraphQL connector in the berth binary against the simulator's GraphQL
//! Admin API: query costs against a bucket of points, `THROTTLED` answers, and tokens
//! from the client credentials grant that live three seconds.
//!
//! What is asserted is what the platform saw: while berth's view of a shop's bucket is
//! right (it follows the `throttleStatus` the connector reports) no query is answered
//! `THROTTLED`, however many are due; when another app spends the points behind berth's
//! back, the one `THROTTLED` answer parks the shop (no retry spent) until the points are
//! back; every order and stock update still arrives.

use berth_sim::shopify_graphql::{GraphqlLimits, ShopifyApp};
use berth_sim::{Platform, ShopifyShop, SimConfig};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(180);

fn stats(sim: &berth_sim::SimHandle) -> berth_sim::PlatformStats {
    sim.state.stats().get(&Platform::Shopify).cloned().unwrap_or_default()
}

async fn orders_of(berth: &berth_tests::Berth, shop: &str) -> usize {
    let page = berth_tests::get_json(berth.url(&format!("/v1/orders?shop={shop}&limit=1000"))).await;
    page["orders"].as_array().map_or(0, Vec::len)
}

fn shop_status(shops: &serde_json::Value, shop: &str) -> serde_json::Value {
    shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == shop)).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_holds_the_points_bucket_and_mints_expiring_tokens() {
    let mut cfg = SimConfig { seed: 31, history_hours: 2, ..SimConfig::default() };
    cfg.shopify.shops = vec![
        ShopifyShop { name: "gq".into(), access_token: "shpat_static_gq".into(), orders: 150 },
        ShopifyShop { name: "cc".into(), access_token: "shpat_never_given".into(), orders: 20 },
    ];
    // A small bucket restored slowly: 150 orders at 132 points a page need it refilled
    // several times over.
    cfg.shopify.graphql = GraphqlLimits { maximum: 600.0, restore_per_second: 100.0, max_query_cost: 600.0 };
    cfg.shopify.apps = vec![ShopifyApp { client_id: "cid-1".into(), client_secret: "csecret-1".into() }];
    cfg.shopify.token_secs = 3;
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.key"), "7a".repeat(32)).unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\nerror_pause_secs = 1\n\
             [credentials]\nkey_file = \"credentials.key\"\nrefresh_margin_secs = 1\n\
             [connectors.shopify]\ncomponent = {component:?}\nextra_hosts = [\"127.0.0.1\"]\nallow_private_addresses = true\n\
             [shops.gq]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/gq\", page_size = \"10\", line_items = \"10\" }}\n\
             secrets = {{ access_token = \"shpat_static_gq\" }}\n\
             [shops.cc]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/cc\", client_id = \"cid-1\" }}\n\
             secrets = {{ client_secret = \"csecret-1\" }}\n",
            component = plugins::SHOPIFY_GRAPHQL,
        ),
    );
    let berth = berth_tests::Berth::start(&config);

    // Every order of both shops arrives; the bucket ran low, and berth waited for points
    // instead of being told THROTTLED.
    for (shop, want) in [("gq", 150), ("cc", 20)] {
        berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, shop).await >= want).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{shop}: the orders never all arrived\n{}", berth.log()));
    }
    assert!(berth_tests::stock_reaches(&sim, &berth, None, Platform::Shopify, "gq", 17, DEADLINE).await, "gq's stock");
    let s = stats(&sim);
    assert_eq!(s.throttled, 0, "a query was answered THROTTLED while berth followed the bucket: {s:?}");
    let metrics = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    let waited = berth_tests::metric_sum(&metrics, "berth_ratelimit_wait_seconds_total{platform=\"shopify\"}");
    assert!(waited > 1.0, "berth never waited for points ({waited} s): the bucket was never the limit\n{metrics}");
    eprintln!("simulated Shopify answered {} requests, {} THROTTLED; berth waited {waited:.1} s for points", s.ok, s.throttled);
    let platforms = berth_tests::get_json(berth.url("/v1/platforms")).await.to_string();
    assert!(platforms.contains("\"source\":\"reported\"") && platforms.contains("\"name\":\"graphql\""), "{platforms}");

    // The client-credentials shop's three-second tokens were minted again and again, each
    // expiry costing at most one refused call.
    berth_tests::poll_until(DEADLINE, || async { (stats(&sim).refreshes >= 3).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("tokens were not renewed: {:?}\n{}", stats(&sim), berth.log()));
    let s = stats(&sim);
    assert!(s.expired_token_calls <= s.refreshes, "more calls with an expired token than expiries: {s:?}");
    sim.state.create(Platform::Shopify, "cc").unwrap();
    berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, "cc").await > 20).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("cc: a new order never arrived\n{}", berth.log()));

    // The listings, by productVariants through the points bucket and the three-second
    // tokens: every variant as the platform holds it, in the shop's currency.
    let listed = berth_tests::get_json(berth.url("/v1/shops/cc/listings")).await;
    let rows = listed["listings"].as_array().unwrap_or_else(|| panic!("{listed}\n{}", berth.log()));
    let platform = sim.state.stock(Platform::Shopify, "cc");
    assert_eq!(rows.len(), platform.len(), "{listed}");
    for item in &platform {
        let row = rows.iter().find(|r| r["sku"] == item.sku.as_str()).unwrap_or_else(|| panic!("{} not listed: {listed}", item.sku));
        assert_eq!(
            (row["quantity"].as_i64(), row["price_minor"].as_i64(), row["currency"].as_str()),
            (Some(i64::from(item.quantity)), Some(item.price_minor), Some("USD")),
            "{row}"
        );
        assert_eq!((row["item_id"].as_str(), row["variant_id"].as_str()), (Some(item.product_id.to_string().as_str()), Some(item.variant_id.to_string().as_str())), "{row}");
    }

    // Another app spends gq's points behind berth's back: the next query is THROTTLED
    // once, the shop parks without spending a retry, and its next order still arrives.
    let errors_before = shop_status(&berth_tests::get_json(berth.url("/v1/shops")).await, "gq")["errors"].as_u64().unwrap_or(0);
    let throttled_before = stats(&sim).throttled;
    sim.state.spend_shopify_points("gq", 600.0);
    sim.state.create(Platform::Shopify, "gq").unwrap();
    berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, "gq").await > 150).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("gq: the order after the drain never arrived\n{}", berth.log()));
    let s = stats(&sim);
    assert!(s.throttled > throttled_before, "the drained bucket was never met: {s:?}");
    assert!(s.throttled - throttled_before <= 3, "berth kept meeting THROTTLED after it was told the bucket's state: {s:?}");
    eprintln!("after the drain: {} THROTTLED; tokens minted {}, calls with an expired token {}", s.throttled - throttled_before, s.refreshes, s.expired_token_calls);
    let gq = shop_status(&berth_tests::get_json(berth.url("/v1/shops")).await, "gq");
    assert!(gq["throttled"].as_u64().unwrap_or(0) >= 1, "the throttle was not seen as one: {gq}");
    assert_eq!(gq["errors"].as_u64().unwrap_or(0), errors_before, "a throttle spent a retry: {gq}");
}
