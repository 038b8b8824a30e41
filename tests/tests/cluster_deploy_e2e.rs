//! Cluster mode, the registry across real processes: three `berth serve` nodes on a
//! 3-server NATS cluster. A version deployed through node 1's admin API is compiled
//! ahead on nodes 2 and 3; its activation on node 1 is in force on nodes 2 and 3 within
//! a second (their `GET /v1/connectors` answers with it); a pause made on node 2 and a
//! rollback made on node 3 are in force everywhere; a node started later takes the
//! cluster's state.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_tests::{api_call, poll_until};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// orders_e2e.rs enforces that every plugin is used.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "cluster-admin-token-0001";

async fn active(client: &reqwest::Client, base: &str) -> Option<String> {
    let list: Value = client.get(format!("{base}/v1/connectors")).bearer_auth(ADMIN).send().await.ok()?.json().await.ok()?;
    list.as_array()?.iter().find(|c| c["name"] == "shopify").and_then(|c| c["digest"].as_str().map(String::from))
}

async fn view(base: &str) -> Value {
    api_call(reqwest::Method::GET, format!("{base}/v1/admin/connectors/shopify"), Some(ADMIN), None, None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_one_node_is_in_force_on_the_others_within_a_second() {
    let nats = NatsCluster::start(3, true).await;
    let shops = shops(4, 0);
    let sim = sim(&shops, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("[admin]\ntokens = [{{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n");
    let nodes = start_nodes(dir.path(), &["b1", "b2", "b3"], &sim.base_url(), &nats, &shops, 4, &admin).await;
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    let client = reqwest::Client::new();
    let first = active(&client, &urls[0]).await.expect("the configured version is active");
    for u in &urls[1..] {
        assert_eq!(active(&client, u).await.as_deref(), Some(first.as_str()), "one version everywhere at start");
    }

    // Deployed on node 1, not activated: nodes 2 and 3 compile it ahead.
    let variant = berth_tests::component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "cluster-v2");
    let (status, deployed) =
        api_call(reqwest::Method::POST, format!("{}/v1/admin/connectors/shopify/versions?activate=false", urls[0]), Some(ADMIN), Some(variant), None).await;
    assert_eq!(status, 201, "{deployed}");
    let digest = deployed["version"]["digest"].as_str().unwrap().to_string();
    let prepared = poll_until(Duration::from_secs(120), || async {
        for u in &urls[1..] {
            let v = view(u).await;
            if !v["prepared_here"].as_array()?.iter().any(|d| d.as_str() == Some(digest.as_str())) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(prepared.is_some(), "nodes 2 and 3 did not compile the new version ahead: {}", view(&urls[1]).await);

    // Activated on node 1: in force on nodes 2 and 3 within a second.
    let (status, body) =
        api_call(reqwest::Method::POST, format!("{}/v1/admin/connectors/shopify/activate", urls[0]), Some(ADMIN), None, Some(json!({ "digest": digest }))).await;
    assert_eq!(status, 200, "{body}");
    let t0 = Instant::now();
    let everywhere = poll_until(Duration::from_secs(30), || async {
        for u in &urls[1..] {
            if active(&client, u).await.as_deref() != Some(digest.as_str()) {
                return None;
            }
        }
        Some(t0.elapsed())
    })
    .await
    .expect("the activation never reached nodes 2 and 3");
    eprintln!("activation on node 1 in force on nodes 2 and 3 after {everywhere:?}");
    assert!(everywhere < Duration::from_secs(1), "the activation took {everywhere:?} to reach nodes 2 and 3");

    // A pause on node 2 and a rollback on node 3 are the cluster's.
    let (status, body) = api_call(reqwest::Method::POST, format!("{}/v1/admin/connectors/shopify/pause", urls[1]), Some(ADMIN), None, None).await;
    assert_eq!(status, 200, "{body}");
    let paused = poll_until(Duration::from_secs(10), || async {
        for u in &urls {
            if view(u).await["paused"] != true {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(paused.is_some(), "the pause made on node 2 is not in force everywhere: {}", view(&urls[0]).await);
    let (status, body) = api_call(reqwest::Method::POST, format!("{}/v1/admin/connectors/shopify/resume", urls[2]), Some(ADMIN), None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_call(reqwest::Method::POST, format!("{}/v1/admin/connectors/shopify/rollback", urls[2]), Some(ADMIN), None, None).await;
    assert_eq!(status, 200, "{body}");
    let rolled = poll_until(Duration::from_secs(10), || async {
        for u in &urls {
            if active(&client, u).await.as_deref() != Some(first.as_str()) || view(u).await["paused"] != false {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(rolled.is_some(), "the resume and rollback made on node 3 are not in force everywhere: {}", view(&urls[0]).await);

    // A node started now takes the cluster's state.
    let late = start_node(node_config(dir.path(), "b4", &sim.base_url(), Some(&nats), &shops, 4, &admin)).await;
    let v = view(&late.base_url).await;
    assert_eq!(v["active"]["digest"].as_str(), Some(first.as_str()), "{v}");
    assert!(v["versions"].as_array().unwrap().iter().any(|x| x["digest"].as_str() == Some(digest.as_str())), "{v}");
}
