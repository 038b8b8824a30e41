//! Cluster mode, the credential book across real processes: three `berth serve` nodes on
//! a 3-server NATS cluster, two Shopee shops whose platform hands out a new refresh token
//! on every refresh and kills the old one (access tokens last 6 s).
//!
//! Only the node running a shop renews it, from the cluster's record; the other nodes
//! take order pushes for it all along (each a call with the shop's credentials) and use
//! the tokens the cluster has, never renewing them themselves. The node running
//! one shop is SIGKILLed; the node running the other is SIGSTOPped past its lease and
//! resumed (its calls and refreshes must not use what it held before). Through it all the
//! platform never sees a spent refresh token, neither shop needs the merchant again, the
//! refreshes go on, and orders keep coming in from both shops.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_sim::{Platform, ShopeePartner, ShopeeShop, SimConfig};
use berth_sim::shopee_auth::ShopeeTokens;
use berth_tests::{poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const KEY: [u8; 32] = [0x3c; 32];
const SHOPS: [(&str, u64); 2] = [("sga", 880101), ("sgb", 880102)];
const TTL: u64 = 4;
const WAIT: Duration = Duration::from_secs(120);

fn stats(sim: &berth_sim::SimHandle) -> berth_sim::PlatformStats {
    sim.state.stats().get(&Platform::Shopee).cloned().unwrap_or_default()
}

fn platform_refreshes(sim: &berth_sim::SimHandle, id: u64) -> u64 {
    sim.state.shopee_token_state(id).map_or(0, |t| t.refreshes)
}

fn config(dir: &std::path::Path, node: &str, sim: &str, nats: &NatsCluster) -> std::path::PathBuf {
    let quote = |v: Vec<String>| v.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let dir = dir.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("credentials.key"), hex::encode(KEY)).unwrap();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[http]\nallow_private_addresses = true\ntimeout_ms = 2000\n\
         [sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\nerror_pause_secs = 1\n\
         [credentials]\nkey_file = \"credentials.key\"\nrefresh_margin_secs = 1\n\
         [cluster]\nnats = [{}]\nmonitor = [{}]\nnode = \"{node}\"\nlease_ttl_secs = {TTL}\n{}",
        quote(nats.urls()),
        quote(nats.monitors()),
        berth_tests::local_connectors(&[("shopee", crate::plugins::SHOPEE_PY)]),
    );
    for (name, id) in SHOPS {
        text += &format!(
            "[shops.{name}]\nconnector = \"shopee\"\ntier = \"A\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{sim}/shopee\", partner_id = \"9001\", shop_id = \"{id}\", page_size = \"25\", webhook_url = \"{callback}\" }}\n\
             secrets = {{ partner_key = \"sp-partner-key\", access_token = \"sp-token\", refresh_token = \"refresh-{id}-0\" }}\n",
            callback = berth_sim::profiles::SHOPEE_CALLBACK_URL,
        );
    }
    let path = dir.join("berth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The shop's credential state on the node running it.
async fn held(client: &reqwest::Client, base: &str, shop: &str) -> Option<Value> {
    let shops: Value = client.get(format!("{base}/v1/shops")).send().await.ok()?.json().await.ok()?;
    shops.as_array()?.iter().find(|s| s["shop"] == shop).map(|s| s["credentials"].clone())
}

/// Wait until the node running `shop` has stored a refresh the platform answered after
/// `after` refreshes (so no refresh of it is in flight right now: the next one is ~5 s
/// away), and return that node's index.
async fn settled_after(client: &reqwest::Client, urls: &[String], names: &[&str], shop: &str, id: u64, sim: &berth_sim::SimHandle, after: u64) -> usize {
    poll_until(WAIT, || async {
        let owner = owners(&cluster_view(client, &urls[0]).await?)?.get(shop)?.clone();
        let i = names.iter().position(|n| *n == owner)?;
        let state = held(client, &urls[i], shop).await?;
        let refreshes = platform_refreshes(sim, id);
        (refreshes > after && state["generation"].as_u64()? == 1 + refreshes && state["needs_authorization"].is_null()).then_some(i)
    })
    .await
    .unwrap_or_else(|| panic!("{shop}: no refresh after {after} stored by the node running it ({} at the platform)", platform_refreshes(sim, id)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_node_running_a_shop_renews_it_and_no_refresh_token_is_spent_twice() {
    let nats = NatsCluster::start(3, true).await;
    let mut cfg = SimConfig { seed: 8, history_hours: 2, ..SimConfig::default() };
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = SHOPS.iter().map(|(_, id)| ShopeeShop { shop_id: *id, partner_id: 9001, access_token: "sp-token".into(), orders: 10 }).collect();
    cfg.shopee.calls_per_window = 100_000;
    cfg.shopee.tokens = Some(ShopeeTokens { access_secs: 6, refresh_secs: 3600, answer_delay_ms: 0 });
    let sim = berth_sim::start(cfg.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = ["c1", "c2", "c3"];
    let configs: Vec<_> = names.iter().map(|n| config(dir.path(), n, &sim.base_url(), &nats)).collect();
    let mut nodes = Vec::new();
    for c in &configs {
        let c = c.clone();
        nodes.push(tokio::task::spawn_blocking(move || Berth::start(&c)).await.unwrap());
    }
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();
    let client = reqwest::Client::new();
    let (a, b) = (SHOPS[0], SHOPS[1]);
    // Order pushes for both shops to every node, all along: most land on a node that does
    // not run the shop, each a call with the shop's credentials.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushes = {
        let (stop, urls, cfg, state) = (stop.clone(), urls.clone(), cfg.clone(), sim.state.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut taken = 0u64;
            for n in 0usize.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (shop, id) = SHOPS[n % 2];
                let order = state.orders(Platform::Shopee, &id.to_string())[n % 5].clone();
                let (headers, body) = berth_sim::profiles::signed_push(&cfg, Platform::Shopee, &order).unwrap();
                let mut req = client.post(format!("{}/v1/webhooks/{shop}", urls[n % urls.len()])).body(body);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                // A node killed or stopped meanwhile does not answer.
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), req.send()).await {
                    taken += r.is_ok_and(|r| r.status().is_success()) as u64;
                }
                // The pushes' rate (~10/s), not a wait for anything.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            taken
        })
    };

    // Both shops renew on their nodes.
    for (shop, id) in SHOPS {
        settled_after(&client, &urls, &names, shop, id, &sim, 2).await;
    }

    // SIGKILL the node running shop a, between two of its refreshes.
    let before = platform_refreshes(&sim, a.1);
    let victim = settled_after(&client, &urls, &names, a.0, a.1, &sim, before).await;
    signal(nodes[victim].pid(), libc::SIGKILL);
    let moved = platform_refreshes(&sim, a.1);
    let next = settled_after(&client, &urls, &names, a.0, a.1, &sim, moved + 2).await;
    assert_ne!(next, victim, "shop a is renewed by another node after the kill");
    eprintln!("shop a: renewed on {} after {} was killed", names[next], names[victim]);
    let c = configs[victim].clone();
    nodes[victim] = tokio::task::spawn_blocking(move || Berth::start(&c)).await.unwrap();
    let urls: Vec<String> = nodes.iter().map(|b| b.base_url.clone()).collect();

    // SIGSTOP the node running shop b until another node has taken the shop and renewed
    // its tokens twice (the stopped node's are two generations old), then resume it.
    let before = platform_refreshes(&sim, b.1);
    let stalled = settled_after(&client, &urls, &names, b.0, b.1, &sim, before).await;
    let pid = nodes[stalled].pid();
    signal(pid, libc::SIGSTOP);
    let during = platform_refreshes(&sim, b.1);
    let others: Vec<String> = urls.iter().enumerate().filter(|(i, _)| *i != stalled).map(|(_, u)| u.clone()).collect();
    let new_owner = poll_until(WAIT, || async {
        let o = owners(&cluster_view(&client, &others[0]).await?)?;
        let owner = o.get(b.0)?.clone();
        (owner != names[stalled] && platform_refreshes(&sim, b.1) > during).then_some(owner)
    })
    .await;
    let renewed_twice = poll_until(WAIT, || async { (platform_refreshes(&sim, b.1) > during + 1).then_some(()) }).await;
    signal(pid, libc::SIGCONT);
    assert!(renewed_twice.is_some(), "shop b was renewed only once while its node was stopped");
    let new_owner = new_owner.expect("nobody renewed shop b while its node was stopped");
    eprintln!("shop b: renewed on {new_owner} while {} was stopped", names[stalled]);
    // A few more refreshes of both with every node up.
    for (shop, id) in SHOPS {
        let now = platform_refreshes(&sim, id);
        settled_after(&client, &urls, &names, shop, id, &sim, now + 2).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let taken = pushes.await.unwrap();
    assert!(taken >= 50, "the nodes took only {taken} order pushes");
    let s = stats(&sim);
    eprintln!("{taken} order pushes taken; ");
    eprintln!("{} refreshes at the platform, {} spent tokens tried, {} calls with an expired token", s.refreshes, s.spent_refresh_tokens, s.expired_token_calls);
    assert_eq!(s.spent_refresh_tokens, 0, "a refresh token was used after a refresh had spent it");
    // Orders keep coming in from both shops, through it all.
    let mut feed_before = BTreeMap::new();
    for (shop, id) in SHOPS {
        sim.state.create(Platform::Shopee, &id.to_string()).unwrap();
        feed_before.insert(shop, sim.state.orders(Platform::Shopee, &id.to_string()).len());
    }
    let all_in = poll_until(WAIT, || async {
        let feed = whole_feed(&client, &urls[0]).await;
        SHOPS.iter().all(|(shop, _)| feed.iter().filter(|(v, _)| v.0 == *shop).map(|(v, _)| &v.1).collect::<std::collections::BTreeSet<_>>().len() >= feed_before[shop]).then_some(())
    })
    .await;
    assert!(all_in.is_some(), "orders of a shop are missing from the feed");
}
