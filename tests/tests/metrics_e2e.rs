//! `/metrics` of the real binary, scraped while connectors pull, push and get
//! throttled: the text passes `promtool check metrics` (Debian's prometheus package),
//! carries the series ops alert on, and no label holds a shop, an order id or a SKU.

use berth_sim::{Platform, SimConfig};
use berth_tests::{poll_until, Berth};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);

/// `promtool check metrics` on `text`: (success, what it printed).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package prometheus; scripts/toolchains installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_keep_labels_bounded() {
    let mut cfg = SimConfig { seed: 3, history_hours: 4, ..SimConfig::default() };
    // A small bucket: pages at full speed get 429s.
    cfg.shopify.bucket_size = 2;
    cfg.shopify.leak_per_sec = 4.0;
    let sim = berth_sim::start(cfg.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            r#"
[platforms.shopify]
call_limit_header = false
[platforms.woocommerce]
requests_per_second = 5.0
[sync]
initial_lookback_hours = 5
retry_base_ms = 100
retry_max_ms = 500
{connectors}
[shops.acme-store]
connector = "shopify"
poll_interval_secs = 3600
settings = {{ base_url = "{base}/shopify/demo-shop", page_size = "10" }}
secrets = {{ access_token = "shpat_demo_token" }}
[shops.corner-site]
connector = "woo-c"
poll_interval_secs = 3600
settings = {{ base_url = "{base}/woo/demo-woo", page_size = "20" }}
secrets = {{ consumer_key = "ck_demo", consumer_secret = "cs_demo" }}
"#,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("woo-c", plugins::WOO_C)]),
        ),
    );
    let berth = Berth::start(&config);
    let client = reqwest::Client::new();
    let expected = sim.state.orders(Platform::Shopify, "demo-shop").len() + sim.state.orders(Platform::Woo, "demo-woo").len();
    poll_until(DEADLINE, || async {
        let v: serde_json::Value = client.get(berth.url("/v1/orders?limit=1000")).send().await.ok()?.json().await.ok()?;
        (v["orders"].as_array()?.len() >= expected).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("orders did not arrive\n{}", berth.log()));
    let sku = sim.state.stock(Platform::Woo, "demo-woo")[0].sku.clone();
    let resp = client
        .post(berth.url("/v1/shops/corner-site/stock"))
        .json(&json!({"updates": [{"sku": sku, "quantity": 9}, {"sku": "NOPE-1", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    let text = poll_until(DEADLINE, || async {
        let resp = client.get(berth.url("/metrics")).send().await.ok()?;
        let text = resp.text().await.ok()?;
        (sample(&text, "berth_connector_calls_total{connector=\"woo-c\",version=\"0.1.0\",call=\"push-inventory\",outcome=\"ok\"}")? >= 1.0)
            .then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("no push counted\n{}", berth.log()));

    let (ok, problems) = promtool(&text);
    assert!(ok, "promtool check metrics failed:\n{problems}\n---\n{text}");
    assert!(problems.trim().is_empty(), "promtool found problems:\n{problems}");

    let pulls = sample(&text, "berth_connector_calls_total{connector=\"shopify\",version=\"0.1.0\",call=\"pull-orders\",outcome=\"ok\"}");
    assert!(pulls.is_some_and(|n| n >= 1.0), "{text}");
    let throttled = sample(&text, "berth_connector_calls_total{connector=\"shopify\",version=\"0.1.0\",call=\"pull-orders\",outcome=\"rate_limited\"}");
    let http_429 = sample(&text, "berth_http_requests_total{platform=\"shopify\",status=\"429\"}");
    assert_eq!(throttled.is_some(), http_429.is_some(), "a 429 must show as a rate-limited call and as an HTTP 429: {text}");
    assert!(sample(&text, "berth_http_requests_total{platform=\"woocommerce\",status=\"2xx\"}").is_some_and(|n| n >= 2.0), "{text}");
    assert!(sample(&text, "berth_connector_call_seconds_count{connector=\"woo-c\",version=\"0.1.0\",call=\"pull-orders\"}").is_some(), "{text}");
    // The manifest call made at load is counted under the version it answered.
    assert!(sample(&text, "berth_connector_calls_total{connector=\"woo-c\",version=\"0.1.0\",call=\"manifest\",outcome=\"ok\"}").is_some_and(|n| n >= 1.0), "{text}");
    let unknown: Vec<&str> = text.lines().filter(|l| l.contains("version=\"unknown\"")).collect();
    assert!(unknown.is_empty(), "series under an unknown version: {unknown:?}");
    assert!(sample(&text, "berth_instance_memory_bytes_count{connector=\"shopify\",version=\"0.1.0\"}").is_some_and(|n| n >= 1.0), "{text}");
    // Fuel burned per call: every call counted, and a pull of a page costs real work.
    let fuel_calls = sample(&text, "berth_connector_fuel_used_count{connector=\"woo-c\",version=\"0.1.0\"}").unwrap_or(0.0);
    let fuel = sample(&text, "berth_connector_fuel_used_sum{connector=\"woo-c\",version=\"0.1.0\"}").unwrap_or(0.0);
    assert!(fuel_calls >= 1.0 && fuel / fuel_calls > 1000.0, "fuel per call {fuel} / {fuel_calls}: {text}");
    assert!(sample(&text, "berth_ratelimit_wait_seconds_total{platform=\"woocommerce\"}").is_some(), "{text}");
    // The connectors' own counters, under the connector's name.
    let pulled = sample(&text, "berth_connector_metric_count_total{connector=\"woo-c\",metric=\"orders_pulled\"}");
    // At least every order once (overlapping windows pull some twice; the host dedupes).
    let seeded = sim.state.orders(Platform::Woo, "demo-woo").len() as f64;
    assert!(pulled.is_some_and(|n| n >= seeded), "{pulled:?} < {seeded}: {text}");
    assert!(sample(&text, "berth_connector_metric_count_total{connector=\"shopify\",metric=\"orders_pulled\"}").is_some(), "{text}");
    for queue in ["orders", "stock"] {
        for family in ["berth_queue_ready", "berth_queue_dead_letters", "berth_queue_oldest_age_seconds"] {
            assert!(sample(&text, &format!("{family}{{queue=\"{queue}\"}}")).is_some(), "{family} {queue}: {text}");
        }
    }
    // Bounded labels: no shop, order id, SKU or URL in any label value (sample values
    // are numbers and may hold any digits).
    let labels: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(set, _)| set))
        .collect();
    assert!(!labels.is_empty());
    let orders = sim.state.orders(Platform::Shopify, "demo-shop");
    for forbidden in ["acme-store", "corner-site", "demo-shop", "NOPE-1", sku.as_str(), "127.0.0.1", &orders[0].id.to_string()] {
        let found: Vec<&&str> = labels.iter().filter(|set| set.contains(forbidden)).collect();
        assert!(found.is_empty(), "`{forbidden}` appears in metric labels: {found:?}");
    }
    berth.kill();
}
