//! Cluster mode, onboarding a shop by OAuth across real processes: two `berth serve`
//! nodes on a 3-server NATS cluster, the Python Shopee connector and the simulator's
//! consent page and token endpoint.
//!
//! The admin starts the onboarding on node 1; the platform sends the merchant back to
//! the cluster's public address, node 2 here (a load balancer's choice). The new shop is
//! the cluster's: whichever node holds its lease runs it, every node lists it, its
//! orders arrive; a callback works once whichever node it reaches; the node running the
//! shop is SIGKILLed and the other takes it (the shop is not on any node's disk); the
//! killed node comes back knowing it; removed on one node, it stops everywhere. On the
//! way, an ERP lease taken on one node is extended and acked on the other: its timer on
//! the leasing node follows both.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_sim::shopee_auth::ShopeeTokens;
use berth_sim::{Platform, ShopeePartner, ShopeeShop, SimConfig};
use berth_tests::{client_as, poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "root-admin-token-0001";
const KEY: [u8; 32] = [0x5a; 32];
const TTL: u64 = 4;
const WAIT: Duration = Duration::from_secs(120);
const NEW: &str = "sg-new";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Node `node` listening on `port`; merchants come back to `public`.
fn config(dir: &std::path::Path, node: &str, port: u16, public: &str, sim: &str, nats: &NatsCluster) -> std::path::PathBuf {
    let quote = |v: Vec<String>| v.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let dir = dir.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("credentials.key"), hex::encode(KEY)).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\npublic_url = \"{public}\"\n\
         [http]\nallow_private_addresses = true\ntimeout_ms = 2000\n\
         [admin]\ntokens = [{{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n\
         [sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\nerror_pause_secs = 1\n\
         [credentials]\nkey_file = \"credentials.key\"\nrefresh_margin_secs = 1\n\
         [cluster]\nnats = [{}]\nmonitor = [{}]\nnode = \"{node}\"\nlease_ttl_secs = {TTL}\n{}\
         [connectors.shopee.onboarding]\ntier = \"A\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{sim}/shopee\", partner_id = \"9001\", page_size = \"25\" }}\n\
         secrets = {{ partner_key = \"sp-partner-key\" }}\n\
         [shops.sg]\nconnector = \"shopee\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{sim}/shopee\", partner_id = \"9001\", shop_id = \"880001\", page_size = \"25\" }}\n\
         secrets = {{ partner_key = \"sp-partner-key\", access_token = \"sp-token\", refresh_token = \"refresh-880001-0\" }}\n",
        quote(nats.urls()),
        quote(nats.monitors()),
        berth_tests::local_connectors(&[("shopee", crate::plugins::SHOPEE_PY)]),
    );
    let path = dir.join("berth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The order ids of `shop` in the cluster's feed, read on `base`, as the platform numbers
/// them (the connector prefixes Shopee's with `SP`).
async fn order_ids(client: &reqwest::Client, base: &str, shop: &str) -> Option<std::collections::BTreeSet<String>> {
    let page: Value = client.get(format!("{base}/v1/orders?shop={shop}&limit=1000")).send().await.ok()?.json().await.ok()?;
    Some(page["orders"].as_array()?.iter().filter_map(|o| o["order"]["order_id"].as_str().map(|id| id.trim_start_matches("SP").to_string())).collect())
}

async fn onboarded(client: &reqwest::Client, base: &str) -> Option<Vec<String>> {
    let v: Value = client.get(format!("{base}/v1/oauth/shops")).send().await.ok()?.json().await.ok()?;
    Some(v["shops"].as_object()?.keys().cloned().collect())
}

async fn runs(client: &reqwest::Client, base: &str, shop: &str) -> Option<bool> {
    let v: Value = client.get(format!("{base}/v1/shops")).send().await.ok()?.json().await.ok()?;
    Some(v.as_array()?.iter().any(|s| s["shop"] == shop))
}

/// The node (index) running `shop`, once every shop has an owner.
async fn owner_of(client: &reqwest::Client, urls: &[String], names: &[&str], shop: &str) -> usize {
    let owner = poll_until(WAIT, || async {
        for u in urls {
            if let Some(o) = cluster_view(client, u).await.as_ref().and_then(owners) {
                return o.get(shop).cloned();
            }
        }
        None
    })
    .await
    .unwrap_or_else(|| panic!("shop {shop} never had an owner"));
    names.iter().position(|n| *n == owner).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_onboarded_on_one_node_is_the_clusters() {
    let nats = NatsCluster::start(3, true).await;
    let mut cfg = SimConfig { seed: 29, history_hours: 2, ..SimConfig::default() };
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = vec![
        ShopeeShop { shop_id: 880001, partner_id: 9001, access_token: "sp-token".into(), orders: 3 },
        ShopeeShop { shop_id: 880002, partner_id: 9001, access_token: "never-configured".into(), orders: 15 },
    ];
    cfg.shopee.calls_per_window = 1000;
    cfg.shopee.tokens = Some(ShopeeTokens { access_secs: 3600, refresh_secs: 7200, answer_delay_ms: 0 });
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = ["o1", "o2"];
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    // Merchants come back to node 2, whichever node started their onboarding.
    let configs: Vec<_> = names.iter().zip(ports).map(|(n, p)| config(dir.path(), n, p, &urls[1], &sim.base_url(), &nats)).collect();
    let mut nodes = Vec::new();
    for c in &configs {
        let c = c.clone();
        nodes.push(tokio::task::spawn_blocking(move || Berth::start(&c)).await.unwrap());
    }
    let admin = client_as(ADMIN);

    // Started on node 1, authorized at the platform, called back on node 2.
    sim.state.shopee_login(880002);
    let done = admin.get(format!("{}/v1/oauth/shopee/start?shop={NEW}", urls[0])).send().await.unwrap();
    assert_eq!(done.status(), 200, "{}\n{}", nodes[0].log(), nodes[1].log());
    assert!(done.url().as_str().starts_with(&urls[1]), "the callback reached {}", done.url());
    let body: Value = done.json().await.unwrap();
    assert_eq!((body["authorized"].as_bool(), body["shop_is"].as_str()), (Some(true), Some("shared_in_cluster")), "{body}");

    // Every node lists it; one node runs it; all its orders arrive.
    for u in &urls {
        let listed = poll_until(WAIT, || async { onboarded(&admin, u).await.filter(|s| s.iter().any(|s| s == NEW)) }).await;
        assert!(listed.is_some(), "{u} does not list the onboarded shop");
    }
    let first = owner_of(&admin, &urls, &names, NEW).await;
    let want: std::collections::BTreeSet<String> = sim.state.orders(Platform::Shopee, "880002").iter().map(|o| o.id.to_string()).collect();
    if poll_until(WAIT, || async { order_ids(&admin, &urls[0], NEW).await.filter(|ids| ids.is_superset(&want)) }).await.is_none() {
        panic!("the onboarded shop's orders never arrived: want {want:?}, berth has {:?}", order_ids(&admin, &urls[0], NEW).await);
    }
    assert!(runs(&admin, &urls[first], NEW).await.unwrap(), "its owner does not run it");
    eprintln!("{NEW} onboarded on {}, called back on {}, runs on {}", names[0], names[1], names[first]);

    // An ERP lease of 10 minutes on node 1 (the queue's ack wait is 60 s): node 1 keeps
    // its timer; extended on node 2, the extension reaches node 1 (the answer is the
    // asked 15 minutes, not node 2's ack wait); acked on node 2, node 1 drops the timer.
    let timers = |u: String| {
        let admin = admin.clone();
        async move { cluster_view(&admin, &u).await?["erp_lease_timers"].as_u64() }
    };
    let leased: Value = admin.post(format!("{}/v1/orders/lease", urls[0])).json(&serde_json::json!({"max": 1, "visibility_secs": 600})).send().await.unwrap().json().await.unwrap();
    let token = leased["leases"][0]["token"].clone();
    assert!(token.is_object(), "{leased}");
    assert_eq!(timers(urls[0].clone()).await, Some(1));
    let asked = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 900_000;
    let extended: Value = admin.post(format!("{}/v1/orders/extend", urls[1])).json(&serde_json::json!({"tokens": [token], "visibility_secs": 900})).send().await.unwrap().json().await.unwrap();
    let until = extended["expires_at_ms"].as_object().and_then(|m| m.values().next()).and_then(Value::as_i64).unwrap_or_else(|| panic!("{extended}"));
    assert!((until - asked).abs() < 30_000, "extended to {until}, asked about {asked}: {extended}");
    let acked: Value = admin.post(format!("{}/v1/orders/ack", urls[1])).json(&serde_json::json!({"tokens": [token]})).send().await.unwrap().json().await.unwrap();
    assert_eq!(acked["done"], 1, "{acked}");
    poll_until(WAIT, || async { (timers(urls[0].clone()).await? == 0).then_some(()) })
        .await
        .expect("node 1 kept the timer of a lease acked on node 2");

    // Authorized again step by step: the callback works on node 1 (not where the platform
    // sent it), then once only — node 2 refuses the same link.
    let step = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let to_consent = step.get(format!("{}/v1/oauth/shopee/start?shop={NEW}", urls[1])).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(to_consent.status(), 303);
    let consent = to_consent.headers()["location"].to_str().unwrap().to_string();
    let back = step.get(&consent).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert!(callback.starts_with(&urls[1]), "{callback}");
    let on_node_1 = step.get(callback.replacen(&urls[1], &urls[0], 1)).send().await.unwrap();
    assert_eq!(on_node_1.status(), 200, "{}", on_node_1.text().await.unwrap());
    let again = step.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 400, "a used link worked again on the other node");

    // The node running it is killed: the other takes it, and its new orders arrive.
    signal(nodes[first].pid(), libc::SIGKILL);
    let other = 1 - first;
    poll_until(WAIT, || async {
        let o = owners(&cluster_view(&admin, &urls[other]).await?)?;
        (o.get(NEW)? == names[other]).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{} never took the onboarded shop\n{}", names[other], nodes[other].log()));
    sim.state.create(Platform::Shopee, "880002").unwrap();
    let newest = sim.state.orders(Platform::Shopee, "880002").iter().map(|o| o.id.to_string()).collect::<std::collections::BTreeSet<_>>();
    poll_until(WAIT, || async { order_ids(&admin, &urls[other], NEW).await.filter(|ids| ids.is_superset(&newest)) })
        .await
        .unwrap_or_else(|| panic!("after the kill the onboarded shop's new order never arrived\n{}", nodes[other].log()));
    // The killed node comes back and knows the shop (from the cluster, not its disk).
    let c = configs[first].clone();
    nodes[first] = tokio::task::spawn_blocking(move || Berth::start(&c)).await.unwrap();
    assert!(onboarded(&admin, &urls[first]).await.unwrap().iter().any(|s| s == NEW), "the restarted node does not list the onboarded shop");

    // Removed on one node: gone from the cluster's shops and run nowhere.
    let owner = owner_of(&admin, &urls, &names, NEW).await;
    let removed = admin.delete(format!("{}/v1/oauth/shops/{NEW}", urls[1 - owner])).send().await.unwrap();
    assert_eq!(removed.status(), 200, "{}", removed.text().await.unwrap());
    for u in &urls {
        poll_until(WAIT, || async {
            let view = cluster_view(&admin, u).await?;
            let named = view["nodes"].as_array()?.iter().flat_map(|n| n["shops"].as_array().cloned().unwrap_or_default()).any(|s| s == NEW);
            let listed = onboarded(&admin, u).await?.iter().any(|s| s == NEW);
            (!named && !listed && !runs(&admin, u, NEW).await?).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{u} still has the removed shop"));
    }
}
