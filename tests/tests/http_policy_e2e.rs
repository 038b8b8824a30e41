//! Outbound policy with a real connector: shops whose platform URL points at a host ops
//! did not grant, at loopback, at the cloud metadata address, or at a name that resolves
//! to loopback are all refused before a byte leaves, and the refusals are counted.

use berth_sim::SimConfig;
use berth_tests::{poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_cannot_reach_ungranted_or_private_addresses() {
    // A simulator on loopback that must see no request at all.
    let sim = berth_sim::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = sim.addr.port();
    let shops = [
        ("ungranted", "http://api.evil.example/shopify/x".to_string(), "not in the connector's allowed hosts"),
        ("loopback", format!("http://127.0.0.1:{port}/shopify/demo-shop"), "not a public address"),
        ("metadata", "http://169.254.169.254/latest".to_string(), "not a public address"),
        ("rebind", format!("http://localhost:{port}/shopify/demo-shop"), "resolves only to non-public addresses"),
    ];
    let mut text = String::from(
        "[sync]\nretry_base_ms = 200\nretry_max_ms = 500\nerror_pause_secs = 1\n\
         [connectors.shopify]\n",
    );
    text.push_str(&format!(
        "component = {:?}\ngrant_hosts = [\"*.myshopify.com\"]\nextra_hosts = [\"127.0.0.1\", \"169.254.169.254\", \"localhost\"]\n",
        plugins::SHOPIFY_REST
    ));
    for (name, url, _) in &shops {
        text.push_str(&format!(
            "[shops.{name}]\nconnector = \"shopify\"\npoll_interval_secs = 1\nsettings = {{ base_url = \"{url}\" }}\nsecrets = {{ access_token = \"t\" }}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    // write_config allows private addresses for simulator tests; this one must not.
    let config = berth_tests::write_config(dir.path(), &text);
    // The simulator's port is granted so that the refusals are about addresses, not ports.
    let http = format!("allow_private_addresses = false\nallowed_ports = [{port}]");
    let body = std::fs::read_to_string(&config).unwrap().replacen("allow_private_addresses = true", &http, 1);
    std::fs::write(&config, body).unwrap();

    let berth = Berth::start(&config);
    let client = reqwest::Client::new();
    let statuses = poll_until(Duration::from_secs(60), || async {
        let v: Value = client.get(berth.url("/v1/shops")).send().await.ok()?.json().await.ok()?;
        let all_failed = v.as_array()?.iter().all(|s| s["last_error"].is_string());
        all_failed.then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("shops never reported their refusals\n{}", berth.log()));
    for (name, _, why) in &shops {
        let s = statuses.as_array().unwrap().iter().find(|s| s["shop"] == *name).unwrap();
        let err = s["last_error"].as_str().unwrap();
        assert!(err.contains("host refused the request") && err.contains(why), "{name}: {err}");
    }
    let connectors: Value = client.get(berth.url("/v1/connectors")).send().await.unwrap().json().await.unwrap();
    assert!(connectors[0]["http_refusals"].as_u64().unwrap() >= shops.len() as u64, "{connectors}");
    let seen: u64 = sim.state.stats().values().map(|p| p.requests).sum();
    assert_eq!(seen, 0, "a refused request reached the simulator");
    assert!(berth.log().contains("http request refused by policy"));
}
