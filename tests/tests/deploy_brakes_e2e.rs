//! The brakes never wait behind a compile: while berth compiles a deployed 18 MB
//! (Python) component, pause, abort-canary and rollback of another connector — and a
//! pause of a shop — are answered at once; the deploy then completes. Two deploys of one
//! component at once are both answered, and the compile cache they share loads cleanly
//! after a restart.

use berth_tests::{api_call, component_variant, get_json_as, poll_until, Berth};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEPLOYER: &str = "deployer-token-brakes-01";
const ADMIN: &str = "admin-token-brakes-00001";
const DEADLINE: Duration = Duration::from_secs(300);

fn config(dir: &std::path::Path, base: &str, connectors: &[(&str, &str)]) -> std::path::PathBuf {
    berth_tests::write_config(
        dir,
        &format!(
            "{sync}[admin]\ntokens = [{{ name = \"ci\", token = \"{DEPLOYER}\", role = \"deployer\" }}, {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n\
             {connectors}[shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(connectors),
        ),
    )
}

async fn admin(berth: &Berth, path: &str, token: &str, body: Option<Vec<u8>>, json: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    api_call(Method::POST, berth.url(path), Some(token), body, json).await
}

fn short(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))[..12].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_abort_canary_and_rollback_answer_while_a_large_component_compiles() {
    let sim = berth_sim::start(berth_tests::shopify_sim(41, 1, &[("acme", 3)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), &[("shopify", plugins::SHOPIFY_REST), ("shopee", plugins::SHOPEE_PY)]));

    // shopify: v2 active over v1 (so there is something to roll back to), v3 on canary.
    let shopify = std::fs::read(plugins::SHOPIFY_REST).unwrap();
    let (v2, v3) = (component_variant(&shopify, "v2"), component_variant(&shopify, "v3"));
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/versions", DEPLOYER, Some(v2), None).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/versions?activate=false", DEPLOYER, Some(v3.clone()), None).await;
    assert_eq!(status, 201, "{body}");
    let v3_digest = body["version"]["digest"].as_str().unwrap().to_string();
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/canary", DEPLOYER, None, Some(json!({"digest": v3_digest, "shops": ["acme"]}))).await;
    assert_eq!(status, 201, "{body}");

    // A new build of the Python connector: 18 MB that no cache has seen.
    let big = component_variant(&std::fs::read(plugins::SHOPEE_PY).unwrap(), "brakes");
    assert!(big.len() > 15 << 20);
    let compiling = format!("digest={}", short(&big));
    let deploy = {
        let url = berth.url("/v1/admin/connectors/shopee/versions");
        tokio::spawn(async move { api_call(Method::POST, url, Some(DEPLOYER), Some(big), None).await })
    };
    poll_until(DEADLINE, || async { berth.full_log().lines().any(|l| l.contains("compiling component") && l.contains(&compiling)).then_some(()) })
        .await
        .expect("berth never started compiling the upload");

    // The brakes, while that compile runs.
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/canary/abort", DEPLOYER, None, None).await;
    assert_eq!(status, 200, "abort-canary: {body}");
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/rollback", DEPLOYER, None, None).await;
    assert_eq!(status, 200, "rollback: {body}");
    let (status, body) = admin(&berth, "/v1/admin/connectors/shopify/pause", DEPLOYER, None, None).await;
    assert_eq!(status, 200, "pause: {body}");
    let (status, body) = admin(&berth, "/v1/admin/shops/acme/pause", DEPLOYER, None, None).await;
    assert_eq!(status, 200, "pause a shop: {body}");
    let compiled = berth.full_log().lines().any(|l| l.contains("component compiled") && l.contains(&compiling));
    assert!(!deploy.is_finished() && !compiled, "all four were answered before the compile finished");

    // The deploy completes on its own.
    let (status, body) = tokio::time::timeout(DEADLINE, deploy).await.expect("the deploy finishes").unwrap();
    assert_eq!(status, 201, "{body}");
    let view = get_json_as(ADMIN, berth.url("/v1/admin/connectors/shopify")).await;
    assert_eq!(view["paused"], true, "{view}");
    assert!(view["canary"].is_null() && view["last_canary"]["outcome"] == "aborted", "{view}");
    // The audit log shows the order things happened in: the brakes before the deploy.
    let (_, audit) = api_call(Method::GET, berth.url("/v1/admin/audit?limit=100"), Some(ADMIN), None, None).await;
    let at = |action: &str, target: &str| {
        audit["entries"].as_array().unwrap().iter().rev().find(|e| e["action"] == action && e["target"] == target).map(|e| e["at_ms"].as_i64().unwrap())
    };
    let deployed = at("deploy", "shopee").expect("the deploy is audited");
    for (action, target) in [("canary-abort", "shopify"), ("rollback", "shopify"), ("pause", "shopify"), ("pause", "shop:acme")] {
        assert!(at(action, target).expect(action) <= deployed, "{action} {target} was answered after the deploy: {audit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deploys_of_one_component_at_once_are_safe() {
    let sim = berth_sim::start(berth_tests::shopify_sim(42, 1, &[("acme", 2)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &sim.base_url(), &[("shopify", plugins::SHOPIFY_REST)]);
    let berth = Berth::start(&path);
    let v2 = component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "twice");
    let (a, b) = tokio::join!(
        admin(&berth, "/v1/admin/connectors/shopify/versions", DEPLOYER, Some(v2.clone()), None),
        admin(&berth, "/v1/admin/connectors/shopify/versions", DEPLOYER, Some(v2.clone()), None),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert!(statuses == [200, 201] || statuses == [201, 201], "one stores it, the other finds it (or both raced to store the same): {a:?} {b:?}");
    assert_eq!(a.1["version"]["digest"], b.1["version"]["digest"]);
    let digest = a.1["version"]["digest"].as_str().unwrap().to_string();
    let view = get_json_as(ADMIN, berth.url("/v1/admin/connectors/shopify")).await;
    assert_eq!(view["versions"].as_array().unwrap().len(), 2, "stored once: {view}");
    assert_eq!(view["active"]["digest"], digest.as_str());
    // The cache entry both compiles wrote is whole: after a restart the active version
    // comes from it, no compile and no warning about a bad entry.
    berth.kill();
    let berth = Berth::start(&path);
    let log = berth.full_log();
    let cached = format!("digest={}", &digest[..12]);
    assert!(log.lines().any(|l| l.contains("component loaded from the compile cache") && l.contains(&cached)), "{log}");
    assert!(!log.contains("ignoring a compiled cache entry"), "{log}");
    assert!(!log.lines().any(|l| l.contains("compiling component") && l.contains(&cached)), "{log}");
    let view = get_json_as(ADMIN, berth.url("/v1/admin/connectors/shopify")).await;
    assert_eq!(view["active"]["digest"], digest.as_str());
}
