//! Cluster mode, a shadow run across real processes: three `berth serve` nodes on a
//! 3-server NATS cluster, shops spread over them. A shadow started on node 1 is the
//! cluster's (the run is in the registry's state): every node runs it on the calls of
//! its own shops, shares its report, and every node answers the sum. Promotion on any
//! node is refused while any node found a difference; a node killed and started again
//! goes on with it; a stop on another node ends it everywhere; a matching run started on node 3 is promoted from node 1.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_tests::{api_call, poll_until};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

// orders_e2e.rs enforces that every plugin is used.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "cluster-admin-token-0001";
const DEADLINE: Duration = Duration::from_secs(60);

async fn call(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    api_call(method, format!("{base}{path}"), Some(ADMIN), None, body).await
}

/// `{running, last}` as node `base` answers it.
async fn shadow(base: &str) -> Value {
    call(base, reqwest::Method::GET, "/v1/admin/connectors/shopify/shadow", None).await.1
}

async fn deploy(base: &str, bytes: Vec<u8>) -> String {
    let (status, body) =
        api_call(reqwest::Method::POST, format!("{base}/v1/admin/connectors/shopify/versions?activate=false"), Some(ADMIN), Some(bytes), None).await;
    assert_eq!(status, 201, "{body}");
    body["version"]["digest"].as_str().unwrap().to_string()
}

/// Wait until node `base`'s report of the running shadow of `digest` has calls compared
/// on every node of `owners` and `ready` holds for it.
async fn summed(base: &str, digest: &str, owners: &BTreeSet<String>, ready: impl Fn(&Value) -> bool) -> Value {
    let r = poll_until(DEADLINE, || async {
        let r = shadow(base).await["running"].clone();
        let on_every_owner = owners.iter().all(|n| r["nodes"][n].as_u64().is_some_and(|c| c > 0));
        (r["digest"] == digest && on_every_owner && ready(&r)).then_some(r)
    })
    .await;
    match r {
        Some(r) => r,
        None => panic!("no summed report of {digest} on {base} from {owners:?}: {}", shadow(base).await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_run_is_the_clusters_its_report_sums_every_node_and_gates_promotion_everywhere() {
    let nats = NatsCluster::start(3, true).await;
    let shops = shops(6, 0);
    let sim = sim(&shops, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("[admin]\ntokens = [{{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n");
    let mut nodes = start_nodes(dir.path(), &["b1", "b2", "b3"], &sim.base_url(), &nats, &shops, 4, &admin).await;
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    // The nodes owning shops: each compares its own shops' calls.
    let owners: BTreeSet<String> = poll_until(DEADLINE, || async {
        let view = call(&urls[0], reqwest::Method::GET, "/v1/cluster", None).await.1;
        let owners = owners(&view)?;
        (owners.len() == shops.len()).then(|| owners.into_values().collect())
    })
    .await
    .expect("every shop owned");
    assert!(owners.len() >= 2, "the shops landed on one node: {owners:?}");

    // A regressed build as the shadow, started on node 1: every node runs it.
    let bad = deploy(&urls[0], std::fs::read(plugins::REGRESSED).unwrap()).await;
    let (status, body) = call(&urls[0], reqwest::Method::POST, "/v1/admin/connectors/shopify/shadow", Some(json!({ "digest": bad }))).await;
    assert_eq!(status, 201, "{body}");
    let t0 = Instant::now();
    let everywhere = poll_until(DEADLINE, || async {
        for u in &urls {
            if shadow(u).await["running"]["digest"] != bad.as_str() {
                return None;
            }
        }
        Some(t0.elapsed())
    })
    .await
    .expect("the shadow run never reached every node");
    eprintln!("a shadow started on node 1 ran on every node after {everywhere:?}");
    let (status, body) = call(&urls[1], reqwest::Method::POST, "/v1/admin/connectors/shopify/shadow", Some(json!({ "digest": bad }))).await;
    assert_eq!(status, 409, "a second run of the cluster's shadow: {body}");

    // Node 2 answers the sum of every owner's report; promotion is refused on any node.
    let r = summed(&urls[1], &bad, &owners, |r| r["differing"].as_u64().is_some_and(|d| d > 0)).await;
    let per_node: u64 = r["nodes"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(r["compared"].as_u64(), Some(per_node), "the run's count is the nodes' sum: {r}");
    for u in [&urls[0], &urls[2]] {
        let (status, body) = call(u, reqwest::Method::POST, "/v1/admin/connectors/shopify/promote", None).await;
        assert_eq!(status, 409, "{body}");
        assert!(body["error"].as_str().unwrap().contains("not a complete match"), "{body}");
    }

    // Node 3 killed and started again: it runs the cluster's shadow at once and goes on
    // from the report it shared.
    let before = poll_until(DEADLINE, || async { shadow(&urls[0]).await["running"]["nodes"]["b3"].as_u64().filter(|c| *c > 0) }).await;
    let before = before.expect("node 3 shared no report");
    nodes.pop().unwrap().kill();
    nodes.push(start_node(node_config(dir.path(), "b3", &sim.base_url(), Some(&nats), &shops, 4, &admin)).await);
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    let again = shadow(&urls[2]).await["running"].clone();
    assert_eq!(again["digest"], bad.as_str(), "the restarted node does not run the shadow: {again}");
    assert!(again["nodes"]["b3"].as_u64().is_some_and(|c| c >= before), "node 3 counted {before} calls before its restart: {again}");

    // Stopped on node 2: ended on every node, the last report summed and stopped.
    let (status, body) = call(&urls[1], reqwest::Method::POST, "/v1/admin/connectors/shopify/shadow/stop", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["digest"], bad.as_str(), "{body}");
    for u in &urls {
        let s = poll_until(DEADLINE, || async {
            let s = shadow(u).await;
            let last = &s["last"];
            let stopped = s["running"].is_null() && last["digest"] == bad.as_str() && last["stopped_ms"].as_i64().is_some();
            (stopped && owners.iter().all(|n| last["nodes"][n].as_u64().is_some_and(|c| c > 0))).then_some(s)
        })
        .await;
        let Some(s) = s else { panic!("the stop made on node 2 is not in force on {u}: {}", shadow(u).await) };
        assert!(s["last"]["differing"].as_u64().unwrap() > 0, "{s}");
    }

    // An identical build, started on node 3 and promoted from node 1 once every owner
    // compared calls and none differed.
    let same = deploy(&urls[2], berth_tests::component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "cluster-shadow")).await;
    let (status, body) = call(&urls[2], reqwest::Method::POST, "/v1/admin/connectors/shopify/shadow", Some(json!({ "digest": same }))).await;
    assert_eq!(status, 201, "{body}");
    let r = summed(&urls[0], &same, &owners, |r| r["compared"].as_u64().is_some_and(|c| c >= 6)).await;
    assert_eq!((r["differing"].as_u64(), r["matched"].clone()), (Some(0), r["compared"].clone()), "an identical build differed: {r}");
    let (status, end) = call(&urls[0], reqwest::Method::POST, "/v1/admin/connectors/shopify/promote", None).await;
    assert_eq!((status, end["outcome"].as_str()), (200, Some("promoted")), "{end}");
    for u in &urls {
        let done = poll_until(DEADLINE, || async {
            let v = call(u, reqwest::Method::GET, "/v1/admin/connectors/shopify", None).await.1;
            (v["active"]["digest"] == same.as_str() && v["shadow"].is_null() && v["last_shadow"]["digest"] == same.as_str()).then_some(())
        })
        .await;
        assert!(done.is_some(), "the promotion made on node 1 is not in force on {u}: {}", call(u, reqwest::Method::GET, "/v1/admin/connectors/shopify", None).await.1);
    }
}
