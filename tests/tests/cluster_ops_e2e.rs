//! Cluster mode, what ops see across real processes: three `berth serve` nodes on a
//! 3-server NATS cluster, one alert receiver.
//!
//! - Alerts are the cluster's: orders waiting (the queue every node shares) fires once;
//!   the platform going down fires each shop's probe alert once (from the node running
//!   the shop) and the connector's success-rate alert once (however many nodes see it).
//!   The node running one of those shops is SIGKILLed while it is down: the shop moves,
//!   its alert is neither resolved nor sent again, and its health on the new owner goes
//!   on from the cluster's record (same `down_since`). When the platform and the queue
//!   recover, each alert resolves once (a shop removed from the cluster meanwhile: at its
//!   removal). Every node answers the same firing set and log.
//! - Health: every node shows every shop, probed by whichever node runs it.
//! - Audit: a pause on node 1 and a resume on node 2 are in the audit log read on node 3,
//!   each naming its node; a node's entries written before a restart stay there once.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_tests::recorder::Recorder;
use berth_tests::{api_call, poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

// orders_e2e.rs enforces that every plugin is used.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "cluster-ops-admin-token-01";
const WAIT: Duration = Duration::from_secs(90);

/// `STATUS rule subject` of every notification the receiver took.
fn notices(rec: &Recorder) -> Vec<String> {
    rec.taken("/json")
        .iter()
        .map(|r| {
            let v = r.json();
            format!("{} {} {}", v["status"].as_str().unwrap_or("?"), v["rule"].as_str().unwrap_or("?"), v["subject"].as_str().unwrap_or("?"))
        })
        .collect()
}

fn count(rec: &Recorder, line: &str) -> usize {
    notices(rec).iter().filter(|n| *n == line).count()
}

async fn received(rec: &Recorder, lines: &[String], nodes: &[Berth]) {
    let got = poll_until(WAIT, || async { lines.iter().all(|l| count(rec, l) >= 1).then_some(()) }).await;
    if got.is_none() {
        for (i, n) in nodes.iter().enumerate() {
            eprintln!("--- node {} log tail:\n{}", i + 1, n.log());
        }
        panic!("not every notification of {lines:?} arrived; the receiver has {:?}", notices(rec));
    }
}

async fn health(client: &reqwest::Client, base: &str) -> Option<BTreeMap<String, Value>> {
    let h: Value = client.get(format!("{base}/v1/health")).send().await.ok()?.json().await.ok()?;
    Some(h["shops"].as_array()?.iter().filter_map(|s| Some((s["shop"].as_str()?.to_string(), s.clone()))).collect())
}

async fn owners_now(client: &reqwest::Client, base: &str) -> Option<BTreeMap<String, String>> {
    owners(&cluster_view(client, base).await?)
}

async fn audit(base: &str) -> Vec<Value> {
    let (status, body) = api_call(reqwest::Method::GET, format!("{base}/v1/admin/audit?limit=1000"), Some(ADMIN), None, None).await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_health_and_audit_are_the_clusters() {
    let nats = NatsCluster::start(3, true).await;
    let shops = shops(6, 0);
    let sim = sim(&shops, 4).await;
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"[admin]
tokens = [{{ name = "root", token = "{ADMIN}", role = "admin" }}]
[health.A]
probe_secs = 1
[health.B]
probe_secs = 1
[health.C]
probe_secs = 1
[alerts]
evaluate_secs = 1
source = "berth-cluster-e2e"
[alerts.receivers.ops]
url = "{url}"
[[alerts.rules]]
name = "orders-waiting"
kind = "queue-age"
queue = "orders"
above_secs = 3
[[alerts.rules]]
name = "shop-down"
kind = "probe-failing"
failures = 3
[[alerts.rules]]
name = "calls-failing"
kind = "success-rate"
below_percent = 90.0
window_secs = 8
min_calls = 3
"#,
        url = rec.url("/json")
    );
    let names = ["o1", "o2", "o3"];
    let configs: Vec<_> = names.iter().map(|n| node_config(dir.path(), n, &sim.base_url(), Some(&nats), &shops, 4, &extra)).collect();
    let mut nodes = Vec::new();
    for c in &configs {
        let c = c.clone();
        nodes.push(tokio::task::spawn_blocking(move || Berth::start(&c)).await.unwrap());
    }
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    // Every read below is authenticated: with [admin] tokens, reads need a token too.
    let client = berth_tests::client_as(ADMIN);
    let all: BTreeSet<String> = shops.iter().map(|(_, s)| s.clone()).collect();

    // Every shop runs somewhere, and every node shows every shop's probes.
    let spread = poll_until(WAIT, || async {
        let view = cluster_view(&client, &urls[0]).await?;
        let o = owners(&view)?;
        (o.keys().cloned().collect::<BTreeSet<_>>() == all && live(&view).len() == 3).then_some(o)
    })
    .await
    .unwrap_or_else(|| {
        for (i, n) in nodes.iter().enumerate() {
            eprintln!("--- node {} log tail:\n{}", i + 1, n.log());
        }
        panic!("the shops never all ran with three nodes up")
    });
    eprintln!("owners: {spread:?}");
    for u in &urls {
        let shown = poll_until(WAIT, || async {
            let h = health(&client, u).await?;
            (h.keys().cloned().collect::<BTreeSet<_>>() == all && h.values().all(|s| s["availability"]["probes"].as_u64().unwrap_or(0) >= 2)).then_some(h)
        })
        .await;
        assert!(shown.is_some(), "{u} does not show every shop probed: {:?}", health(&client, u).await);
    }

    // The orders wait in the queue: one alert for the cluster.
    let waiting = "firing orders-waiting orders".to_string();
    received(&rec, std::slice::from_ref(&waiting), &nodes).await;

    // Audit: a pause on node 1, a resume on node 2, read on node 3.
    for (i, action) in [(0, "pause"), (1, "resume")] {
        let (status, body) = api_call(reqwest::Method::POST, format!("{}/v1/admin/shops/s05/{action}", urls[i]), Some(ADMIN), None, None).await;
        assert_eq!(status, 200, "{body}");
    }
    let seen = poll_until(WAIT, || async {
        let entries = audit(&urls[2]).await;
        let ours: Vec<(String, String)> = entries
            .iter()
            .filter(|e| e["target"] == "shop:s05")
            .map(|e| (e["action"].as_str().unwrap_or("").to_string(), e["node"].as_str().unwrap_or("").to_string()))
            .collect();
        (ours == [("pause".to_string(), "o1".to_string()), ("resume".to_string(), "o2".to_string())]).then_some(())
    })
    .await;
    assert!(seen.is_some(), "node 3's audit log does not show node 1's pause and node 2's resume: {:?}", audit(&urls[2]).await);

    // The platform goes down: each shop's probe alert once, the connector's once.
    sim.state.set_channel_down(0, true);
    let mut down: Vec<String> = all.iter().map(|s| format!("firing shop-down {s}")).collect();
    down.push("firing calls-failing shopify".into());
    received(&rec, &down, &nodes).await;
    // The record the next owner starts from: s00 as another node shows it (from the
    // cluster), once its owner has written the failures the alert counted.
    let victim = names.iter().position(|n| *n == spread["s00"]).unwrap();
    let before = poll_until(WAIT, || async {
        let s = health(&client, &urls[(victim + 1) % 3]).await?.remove("s00")?;
        (s["consecutive_failures"].as_u64()? >= 3).then_some(s)
    })
    .await
    .expect("the failures of s00 never reached the cluster's record");
    let down_since = before["down_since_ms"].as_i64().unwrap_or_else(|| panic!("s00 is not down: {before}"));

    // Kill the node running s00 while the shop is down.
    nodes.remove(victim).kill();
    let others: Vec<String> = urls.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, u)| u.clone()).collect();
    let new_owner = poll_until(WAIT, || async {
        let o = owners_now(&client, &others[0]).await?;
        let owner = o.get("s00")?.clone();
        (owner != names[victim]).then_some(owner)
    })
    .await
    .expect("nobody took s00 over");
    let owner_url = &urls[names.iter().position(|n| *n == new_owner).unwrap()];
    // The new owner goes on from the cluster's record: same outage, more failures.
    let carried = poll_until(WAIT, || async {
        let s = health(&client, owner_url).await?.remove("s00")?;
        (s["consecutive_failures"].as_u64()? > before["consecutive_failures"].as_u64()? + 3).then_some(s)
    })
    .await
    .expect("the new owner does not probe s00");
    assert_eq!(carried["down_since_ms"].as_i64(), Some(down_since), "the outage's start moved with the shop: before {before}, after {carried}");
    assert_eq!(carried["state"], "down", "{carried}");
    assert!(
        carried["availability"]["probes"].as_u64() >= before["availability"]["probes"].as_u64(),
        "the new owner lost the shop's probe history: before {before}, after {carried}"
    );
    // The dead node comes back while the platform is still down.
    let victim_config = configs[victim].clone();
    nodes.insert(victim, tokio::task::spawn_blocking(move || Berth::start(&victim_config)).await.unwrap());
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    poll_until(WAIT, || async { (live(&cluster_view(&client, &urls[victim]).await?).len() == 3).then_some(()) })
        .await
        .expect("the restarted node did not rejoin");
    for line in &down {
        assert_eq!(count(&rec, line), 1, "`{line}` was sent again across the kill: {:?}", notices(&rec));
    }
    let resolved_early: Vec<String> = notices(&rec).into_iter().filter(|n| n.starts_with("resolved") && !n.contains("orders-waiting")).collect();
    assert!(resolved_early.is_empty(), "alerts resolved while the platform was still down: {resolved_early:?}");

    // Every node answers the same firing set.
    let firing = |v: &Value| -> BTreeSet<String> { v["firing"].as_array().into_iter().flatten().filter_map(|a| a["fingerprint"].as_str().map(String::from)).collect() };
    let mut sets = Vec::new();
    for u in &urls {
        sets.push(firing(&client.get(format!("{u}/v1/alerts")).send().await.unwrap().json::<Value>().await.unwrap()));
    }
    assert!(sets.iter().all(|s| *s == sets[0]) && sets[0].len() >= 7, "the nodes disagree on what fires: {sets:?}");

    // Shop s05 leaves the cluster (every node's config, reloaded) while still down: its
    // alert is resolved (by the duty node: no node runs it any more).
    let kept: Vec<_> = shops.iter().filter(|(_, s)| s != "s05").cloned().collect();
    for n in names {
        node_config(dir.path(), n, &sim.base_url(), Some(&nats), &kept, 4, &extra);
    }
    received(&rec, &["resolved shop-down s05".to_string()], &nodes).await;
    assert!(count(&rec, "resolved shop-down s04") == 0, "another shop's alert resolved with s05's: {:?}", notices(&rec));

    // The platform comes back and the ERP takes the orders: everything resolves once.
    sim.state.set_channel_down(0, false);
    let mut resolved: Vec<String> = down.iter().map(|l| l.replacen("firing", "resolved", 1)).collect();
    resolved.push("resolved orders-waiting orders".into());
    let drained = poll_until(Duration::from_secs(120), || async {
        let r: Value = client.post(format!("{}/v1/orders/lease", urls[0])).json(&json!({"max": 200, "visibility_secs": 60})).send().await.ok()?.json().await.ok()?;
        let tokens: Vec<Value> = r["leases"].as_array()?.iter().map(|l| l["token"].clone()).collect();
        if !tokens.is_empty() {
            client.post(format!("{}/v1/orders/ack", urls[0])).json(&json!({ "tokens": tokens })).send().await.ok()?;
        }
        resolved.iter().all(|l| count(&rec, l) >= 1).then_some(())
    })
    .await;
    if drained.is_none() {
        received(&rec, &resolved, &nodes).await;
    }
    // Every node has evaluated since the last notification (its log shows them all)
    // and shows nothing firing: then nothing was sent twice.
    let all_notices = notices(&rec);
    for u in &urls {
        let settled = poll_until(WAIT, || async {
            let a: Value = client.get(format!("{u}/v1/alerts")).send().await.ok()?.json().await.ok()?;
            let logged = a["recent"].as_array()?.len();
            (firing(&a).is_empty() && logged >= all_notices.len()).then_some(())
        })
        .await;
        let a: Value = client.get(format!("{u}/v1/alerts")).send().await.unwrap().json().await.unwrap();
        assert!(settled.is_some(), "{u} does not show the cluster's {} notifications with nothing firing: {a}", all_notices.len());
    }
    let all_notices = notices(&rec);
    for line in down.iter().chain(&resolved).chain(std::iter::once(&waiting)) {
        assert_eq!(count(&rec, line), 1, "`{line}` sent {} times: {all_notices:?}", count(&rec, line));
    }

    // The audit entries survived node 1's and 2's lives once each.
    let entries = audit(&urls[2]).await;
    let s05: Vec<&Value> = entries.iter().filter(|e| e["target"] == "shop:s05").collect();
    assert_eq!(s05.len(), 2, "each audited call once in the cluster's log: {s05:?}");
}
