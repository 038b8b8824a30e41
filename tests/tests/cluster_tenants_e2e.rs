//! Cluster mode, ERP tokens scoped to some shops (one ERP vendor's merchants in a berth
//! serving many): two `berth serve` nodes on a 3-server NATS cluster, five shops.
//!
//! `acme` sees s00 and s01, `globex` sees t00, `erp` sees everything. Each scoped token
//! leases only its shops' orders, on either node, and cannot settle another's lease;
//! the unscoped token gets the rest; every order is leased once. Then a config reload
//! gives s02 to `acme` as well: s02's orders already in the feed stay with the unscoped
//! token, its new ones go to `acme`.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_sim::Platform;
use berth_tests::{client_as, poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ACME: &str = "acme-erp-token-000001";
const GLOBEX: &str = "globex-erp-token-0001";
const ERP: &str = "all-shops-erp-token-01";
const WAIT: Duration = Duration::from_secs(120);

fn tokens(acme: &str) -> String {
    format!(
        "[admin]\ntokens = [{{ name = \"acme\", token = \"{ACME}\", role = \"erp\", shops = [{acme}] }}, \
         {{ name = \"globex\", token = \"{GLOBEX}\", role = \"erp\", shops = [\"t00\"] }}, \
         {{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}]\n"
    )
}

/// Lease with `token` on `base` until nothing more comes: (shop, order id, token) each.
async fn lease_all(base: &str, token: &str) -> Vec<(String, String, Value)> {
    let client = client_as(token);
    let mut out = Vec::new();
    loop {
        let r: Value = client.post(format!("{base}/v1/orders/lease")).json(&json!({"max": 50, "visibility_secs": 120})).send().await.unwrap().json().await.unwrap();
        let leases = r["leases"].as_array().unwrap_or_else(|| panic!("{r}")).clone();
        if leases.is_empty() {
            return out;
        }
        out.extend(leases.iter().map(|l| (l["shop"].as_str().unwrap().to_string(), l["order"]["order_id"].as_str().unwrap().to_string(), l["token"].clone())));
    }
}

fn shops_of(leased: &[(String, String, Value)]) -> BTreeSet<String> {
    leased.iter().map(|(s, _, _)| s.clone()).collect()
}

async fn ack(base: &str, token: &str, leases: &[(String, String, Value)]) -> Value {
    let tokens: Vec<&Value> = leases.iter().map(|(_, _, t)| t).collect();
    client_as(token).post(format!("{base}/v1/orders/ack")).json(&json!({ "tokens": tokens })).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_erp_tokens_lease_their_shops_on_any_node() {
    let nats = NatsCluster::start(3, true).await;
    let shops = shops(3, 2);
    let sim = sim(&shops, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["t1", "t2"];
    let write = |acme: &str| names.map(|n| node_config(dir.path(), n, &sim.base_url(), Some(&nats), &shops, 4, &tokens(acme)));
    let configs = write("\"s00\", \"s01\"");
    let mut nodes = Vec::new();
    for c in &configs {
        let c = c.clone();
        nodes.push(tokio::task::spawn_blocking(move || Berth::start(&c)).await.unwrap());
    }
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    let everyone = client_as(ERP);

    // Every order of every shop is in the feed.
    let total = platform_versions(&sim, &shops).len();
    poll_until(WAIT, || async { (whole_feed(&everyone, &urls[0]).await.len() >= total).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the orders never all arrived\n{}", nodes[0].log()));

    // Each token's view of the queue counts its shops' orders (4 a shop).
    for (token, want) in [(ACME, 8), (GLOBEX, 4), (ERP, 20)] {
        let counted = poll_until(WAIT, || async {
            let q: Value = client_as(token).get(format!("{}/v1/orders/queue", urls[1])).send().await.ok()?.json().await.ok()?;
            (q["ready"].as_u64()? == want).then_some(())
        })
        .await;
        assert!(counted.is_some(), "a token's queue view never counted {want} orders");
    }
    // Per shop too: 4 ready orders for each of its shops, none of another's.
    for (token, seen) in [(ACME, vec!["s00", "s01"]), (GLOBEX, vec!["t00"]), (ERP, vec!["s00", "s01", "s02", "t00", "t01"])] {
        let q: Value = client_as(token).get(format!("{}/v1/orders/queue", urls[0])).send().await.unwrap().json().await.unwrap();
        let parts = q["partitions"].as_object().unwrap_or_else(|| panic!("{q}"));
        let counts: Vec<(&str, u64, u64)> = parts.iter().map(|(s, p)| (s.as_str(), p["ready"].as_u64().unwrap(), p["in_flight"].as_u64().unwrap())).collect();
        assert_eq!(counts, seen.iter().map(|s| (*s, 4, 0)).collect::<Vec<_>>(), "{q}");
        assert!(parts.values().all(|p| p["oldest_age_ms"].as_i64().is_some()), "{q}");
        assert!(q["partitions_note"].as_str().unwrap_or_default().contains("upper bound"), "{q}");
    }

    // Each token leases its shops' orders, on either node; each order once.
    let acme = lease_all(&urls[0], ACME).await;
    let globex = lease_all(&urls[1], GLOBEX).await;
    let rest = lease_all(&urls[1], ERP).await;
    assert_eq!(shops_of(&acme), BTreeSet::from(["s00".to_string(), "s01".to_string()]));
    assert_eq!(shops_of(&globex), BTreeSet::from(["t00".to_string()]));
    assert_eq!(shops_of(&rest), BTreeSet::from(["s02".to_string(), "t01".to_string()]));
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (shop, order, _) in acme.iter().chain(&globex).chain(&rest) {
        *seen.entry((shop.clone(), order.clone())).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "an order leased twice: {seen:?}");
    assert_eq!(seen.len(), 20, "5 shops x 4 orders");

    // globex cannot settle acme's lease (as if it did not hold it); acme can, on node 2.
    let refused = ack(&urls[1], GLOBEX, &acme[..1]).await;
    assert_eq!((refused["done"].as_u64(), refused["lease_lost"].as_array().map(Vec::len)), (Some(0), Some(1)), "{refused}");
    for (base, token, leases) in [(&urls[1], ACME, &acme), (&urls[0], GLOBEX, &globex), (&urls[0], ERP, &rest)] {
        let done = ack(base, token, leases).await;
        assert_eq!(done["done"].as_u64(), Some(leases.len() as u64), "{done}");
    }

    // A reload gives s02 to acme: s02's next order is acme's, not the unscoped token's.
    write("\"s00\", \"s01\", \"s02\"");
    for n in &nodes {
        poll_until(WAIT, || async { n.log().contains("config reloaded").then_some(()) }).await.unwrap_or_else(|| panic!("no reload\n{}", n.log()));
    }
    sim.state.create(Platform::Shopify, "s02").unwrap();
    let newest: BTreeSet<String> = sim.state.orders(Platform::Shopify, "s02").iter().map(|o| o.id.to_string()).collect();
    let taken = poll_until(WAIT, || async {
        let got = lease_all(&urls[1], ACME).await;
        (!got.is_empty()).then_some(got)
    })
    .await
    .unwrap_or_else(|| panic!("acme never leased s02's new order\n{}", nodes[1].log()));
    assert_eq!(shops_of(&taken), BTreeSet::from(["s02".to_string()]));
    assert!(taken.iter().all(|(_, order, _)| newest.contains(order)), "{taken:?}");
    assert!(lease_all(&urls[0], ERP).await.is_empty(), "the unscoped token leased an order acme's scope sees now");
    assert_eq!(ack(&urls[0], ACME, &taken).await["done"].as_u64(), Some(taken.len() as u64));
}
