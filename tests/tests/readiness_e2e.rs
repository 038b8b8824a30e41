//! `/healthz` and `/readyz` of the real binary: alive from the start; ready only once a
//! connector is loaded (here by a config reload) and storage confirms a durable write.

use berth_tests::{poll_until, Berth};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

async fn get(url: String) -> (u16, serde_json::Value) {
    let r = reqwest::get(url).await.expect("berth answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_connectors_loaded_and_storage_writable() {
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), "");
    let berth = Berth::start(&config);

    let (status, body) = get(berth.url("/healthz")).await;
    assert_eq!((status, body.as_str()), (200, Some("ok\n")));
    let (status, body) = get(berth.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["connectors"], "no connectors loaded");
    assert!(body["storage"].as_str().unwrap().starts_with("a durable write took"), "storage itself is fine: {body}");

    // A connector added to the running config: ready without a restart.
    berth_tests::write_config(dir.path(), &berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]));
    let ready = poll_until(Duration::from_secs(60), || async {
        let (status, body) = get(berth.url("/readyz")).await;
        (status == 200).then_some(body)
    })
    .await;
    let body = ready.unwrap_or_else(|| panic!("not ready after the connector was added; log:\n{}", berth.log()));
    assert_eq!((body["ready"].as_bool(), body["connectors"].as_str()), (Some(true), Some("1 loaded")), "{body}");
}
