//! Cluster soak: three `berth serve` nodes on a 3-server NATS cluster under ERP load
//! (stock posts with rising quantities, leases and acks on every node), a random node
//! SIGKILLed at a random moment and started again, fifty times (`BERTH_CLUSTER_KILLS`
//! sets more, never fewer). Afterwards the crash loop's checks: every order version on
//! the platforms was leased or acked, none came back after its ack was answered, the
//! feed holds each version once, every SKU the ERP got a 202 for ends at its newest
//! quantity and the platform never saw an older one after a newer one; and the stream's
//! audit: every fenced write lies in a lease epoch of its writer.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_tests::{poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// orders_e2e.rs enforces that every plugin is used.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

fn kills() -> usize {
    std::env::var("BERTH_CLUSTER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50).max(50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_nodes_killed_fifty_times_lose_nothing() {
    let nats = NatsCluster::start(3, true).await;
    let shops = shops(8, 4);
    let sim = sim(&shops, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["b1", "b2", "b3"];
    let configs: BTreeMap<&str, std::path::PathBuf> = names.iter().map(|n| (*n, node_config(dir.path(), n, &sim.base_url(), Some(&nats), &shops, 3, ""))).collect();
    let mut berths: BTreeMap<&str, Berth> = BTreeMap::new();
    for n in names {
        let config = configs[n].clone();
        berths.insert(n, tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let skus: BTreeMap<String, Vec<String>> = shops.iter().map(|(p, s)| (s.clone(), sim.state.stock(*p, s).into_iter().map(|i| i.sku).take(5).collect())).collect();
    let erp = Arc::new(Mutex::new(ErpLedger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let bases = Arc::new(Mutex::new(berths.values().map(|b| b.base_url.clone()).collect::<Vec<_>>()));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("cluster soak seed {seed}");
    // Leases of 8 s against the queue's ack wait of 5 s: renewed by the node that leased
    // them, and ended by the server when a kill took that node.
    let load = tokio::spawn(erp_load(bases.clone(), skus, erp.clone(), stop.clone(), Rng(seed), 8));
    let mut rng = Rng(seed ^ 0x9E37_79B9);
    let mut logs: Vec<(String, String)> = Vec::new();

    let kills = kills();
    let started = Instant::now();
    for round in 0..kills {
        for (platform, shop) in &shops {
            sim.state.create(*platform, shop).unwrap();
            let list = sim.state.orders(*platform, shop);
            sim.state.touch(*platform, shop, list[rng.below(list.len() as u64) as usize].id).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
        let victim = names[rng.below(3) as usize];
        let gone = berths.remove(victim).unwrap();
        bases.lock().unwrap().retain(|b| *b != gone.base_url);
        gone.kill();
        logs.push((victim.to_string(), std::fs::read_to_string(configs[victim].with_extension("stderr.log")).unwrap_or_default()));
        let config = configs[victim].clone();
        let back = tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap();
        bases.lock().unwrap().push(back.base_url.clone());
        berths.insert(victim, back);
        assert!(started.elapsed() < Duration::from_secs(60 + 20 * kills as u64), "soak too slow at round {round}");
    }
    // The cluster settles: every shop owned by a live node.
    let b1 = berths["b1"].base_url.clone();
    let settled = poll_until(Duration::from_secs(60), || async {
        let view = cluster_view(&client, &b1).await?;
        (owners(&view)?.len() == shops.len() && live(&view).len() == 3).then_some(())
    })
    .await;
    assert!(settled.is_some(), "the cluster did not settle after the soak: {:?}", cluster_view(&client, &b1).await);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let erp = Arc::try_unwrap(erp).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "{kills} kills in {:?}: ERP got 202 for {} stock posts, leased {} orders, acked {} ({} acks in doubt), refused {:?}",
        started.elapsed(),
        erp.stock_posts,
        erp.leases,
        erp.acked_orders.len(),
        erp.acks_in_doubt.len(),
        erp.refused
    );
    assert!(erp.stock_posts > 0 && !erp.acked_orders.is_empty(), "the ERP load never got through");

    let taken = check_orders(&client, &b1, &sim, &shops, &erp, seed).await.unwrap_or_else(|e| panic!("after {kills} kills: {e}\n{}", berths["b1"].log()));
    eprintln!("{taken} orders taken at the end, none lost or delivered after its ack");

    let checked = check_stock(&client, &b1, &sim, &erp, seed).await.unwrap_or_else(|e| panic!("{e}\n{}", berths["b1"].log()));
    eprintln!("{checked} SKUs at their newest quantity on the platforms");

    logs.extend(berths.iter().map(|(n, b)| (n.to_string(), b.full_log())));
    let epochs = lease_epochs(&logs);
    let conn = nats::connect(&nats, "audit").await;
    let fenced = nats::audit_fenced_writes(&conn, &epochs).await.unwrap_or_else(|e| panic!("a stale owner's write landed (seed {seed}): {e}"));
    eprintln!("{fenced} fenced writes, each inside a lease epoch of its writer ({} epochs)", epochs.values().map(Vec::len).sum::<usize>());
}
