//! Cluster mode end to end: a 3-server NATS cluster (`sync_interval: always`), three
//! real `berth serve` processes on one config (each its own node name and data dir), the
//! simulator with 60 shops on two platforms, and an ERP working against the nodes at
//! once (stock posts with rising quantities, leases and acks). Mid-load, in turn: one
//! node is killed with SIGKILL (and later started again), one is SIGSTOPped past its
//! lease and resumed, one NATS server is killed with SIGKILL and restarted. Afterwards,
//! from what the system did:
//! - the killed node's shops were owned by the others and pulled there (a new order on
//!   each reached the feed); the stopped node's shops likewise, and once resumed each
//!   shop has one live owner;
//! - no write of a stale owner landed: reading the whole shops stream, every fenced
//!   write lies in a lease epoch of the node that made it;
//! - the ERP kept working while a NATS server was down;
//! - no order version is lost (each one on the platforms was leased or acked), none came
//!   back after its ack was answered, and the feed holds each version once;
//! - every SKU the ERP got a 202 for ends on the platform at its newest quantity, and the
//!   platform never saw an older quantity after a newer one.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;
mod cluster_common;

use berth_tests::{poll_until, Berth};
use cluster_common::*;
use nats::NatsCluster;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// orders_e2e.rs enforces that every plugin is used.
#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const SHOPIFY_SHOPS: usize = 40;
const TAOBAO_SHOPS: usize = 20;
const ALL: usize = SHOPIFY_SHOPS + TAOBAO_SHOPS;
const LEASE_TTL_SECS: u64 = 4;

/// Wait until every shop has a live owner, as `base` sees it, and `cond` holds.
async fn settled(client: &reqwest::Client, base: &str, secs: u64, cond: impl Fn(&BTreeSet<String>, &BTreeMap<String, String>) -> bool) -> Option<BTreeMap<String, String>> {
    poll_until(Duration::from_secs(secs), || async {
        let view = cluster_view(client, base).await?;
        let owners = owners(&view)?;
        (owners.len() == ALL && cond(&live(&view), &owners)).then_some(owners)
    })
    .await
}

/// Wait until the ERP got `n` more stock posts and `m` more acks through.
async fn progress(erp: &Mutex<ErpLedger>, n: usize, m: usize, secs: u64) -> bool {
    let (posts, acks) = {
        let erp = erp.lock().unwrap();
        (erp.stock_posts, erp.acked_orders.len())
    };
    poll_until(Duration::from_secs(secs), || async {
        let erp = erp.lock().unwrap();
        (erp.stock_posts >= posts + n && erp.acked_orders.len() >= acks + m).then_some(())
    })
    .await
    .is_some()
}

fn count_by_node(owners: &BTreeMap<String, String>) -> BTreeMap<&String, usize> {
    owners.values().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n).or_default() += 1;
        m
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_stopped_and_a_nats_server_lost_lose_nothing() {
    let mut nats = NatsCluster::start(3, true).await;
    let shops = shops(SHOPIFY_SHOPS, TAOBAO_SHOPS);
    let sim = sim(&shops, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["b1", "b2", "b3"];
    let configs: BTreeMap<&str, std::path::PathBuf> = names.iter().map(|n| (*n, node_config(dir.path(), n, &sim.base_url(), Some(&nats), &shops, LEASE_TTL_SECS, ""))).collect();
    let mut berths: BTreeMap<&str, Berth> = BTreeMap::new();
    for n in names {
        let config = configs[n].clone();
        berths.insert(n, tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let b1 = berths["b1"].base_url.clone();

    // Spread: every shop owned, by three live nodes, each running some.
    let Some(before) = settled(&client, &b1, 90, |live, owners| live.len() == 3 && owners.values().collect::<BTreeSet<_>>().len() == 3).await else {
        panic!("the shops were not spread over three nodes: {:?}\n{}", cluster_view(&client, &b1).await, berths["b1"].log());
    };
    eprintln!("spread: {:?}", count_by_node(&before));

    let skus: BTreeMap<String, Vec<String>> = shops.iter().map(|(p, s)| (s.clone(), sim.state.stock(*p, s).into_iter().map(|i| i.sku).take(5).collect())).collect();
    let erp = Arc::new(Mutex::new(ErpLedger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let bases = Arc::new(Mutex::new(berths.values().map(|b| b.base_url.clone()).collect::<Vec<_>>()));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("cluster e2e seed {seed}");
    // Leases of 2 s against the queue's ack wait of 5 s: each is given back by the node
    // that leased it (or by the server, 5 s on, when that node was killed).
    let load = tokio::spawn(erp_load(bases.clone(), skus.clone(), erp.clone(), stop.clone(), Rng(seed), 2));

    // The platforms move on while the ERP works: new and changed orders everywhere.
    let mut rng = Rng(seed ^ 0x9E37_79B9);
    let mut platforms_move = |sim: &berth_sim::SimHandle| {
        for (platform, shop) in &shops {
            sim.state.create(*platform, shop).unwrap();
            let list = sim.state.orders(*platform, shop);
            sim.state.touch(*platform, shop, list[rng.below(list.len() as u64) as usize].id).unwrap();
        }
    };
    platforms_move(&sim);
    assert!(progress(&erp, 30, 30, 120).await, "the ERP load did not get going: {:?} refused\n{}", erp.lock().unwrap().refused, berths["b1"].log());

    // 1. SIGKILL one node mid-load: its shops move to the others and are pulled there.
    let victim = "b2";
    let victim_shops: Vec<String> = before.iter().filter(|(_, n)| n.as_str() == victim).map(|(s, _)| s.clone()).collect();
    let victim_url = berths[victim].base_url.clone();
    bases.lock().unwrap().retain(|b| *b != victim_url);
    let killed = Instant::now();
    berths.remove(victim).unwrap().kill();
    let Some(after) = settled(&client, &b1, 60, |live, _| !live.contains(victim)).await else {
        panic!("the killed node's shops were not taken over: {:?}\n{}", cluster_view(&client, &b1).await, berths["b1"].log());
    };
    eprintln!("{} shops of the killed node owned by the others after {:?} (lease TTL {LEASE_TTL_SECS} s)", victim_shops.len(), killed.elapsed());
    assert!(victim_shops.iter().all(|s| after[s] != victim));
    let fresh: Vec<(String, String)> = victim_shops.iter().map(|s| (s.clone(), sim.state.create(platform_of(s), s).unwrap().id.to_string())).collect();
    let pulled = poll_until(Duration::from_secs(120), || async {
        for (shop, id) in &fresh {
            let page: serde_json::Value = client.get(format!("{b1}/v1/orders?shop={shop}&limit=1000")).send().await.ok()?.json().await.ok()?;
            if !page["orders"].as_array()?.iter().any(|o| o["order"]["order_id"].as_str() == Some(id.as_str())) {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(pulled.is_some(), "the killed node's shops were not pulled by their new owners\n{}", berths["b1"].log());
    eprintln!("every shop of the killed node pulled a new order on its new owner {:?} after the kill", killed.elapsed());

    // The killed node comes back and takes its share again (its first run's log kept).
    let killed_log = dir.path().join("b2-first-run.log");
    std::fs::copy(configs[victim].with_extension("stderr.log"), &killed_log).unwrap();
    let config = configs[victim].clone();
    berths.insert(victim, tokio::task::spawn_blocking(move || Berth::start(&config)).await.unwrap());
    bases.lock().unwrap().push(berths[victim].base_url.clone());
    assert!(
        settled(&client, &b1, 60, |live, owners| live.len() == 3 && owners.values().any(|n| n == victim)).await.is_some(),
        "the restarted node took no shops: {:?}",
        cluster_view(&client, &b1).await
    );
    platforms_move(&sim);
    assert!(progress(&erp, 20, 10, 60).await, "the ERP load stopped getting through: {:?}", erp.lock().unwrap().refused);

    // 2. SIGSTOP one node past its lease: the others take its shops; resumed, it stops
    // them before anything else (its writes would be fenced), then takes its share again.
    let sleeper = "b3";
    let sleeper_url = berths[sleeper].base_url.clone();
    bases.lock().unwrap().retain(|b| *b != sleeper_url);
    signal(berths[sleeper].pid(), libc::SIGSTOP);
    let stopped = Instant::now();
    let taken = settled(&client, &b1, 60, |live, _| !live.contains(sleeper)).await;
    // Past twice the lease, so the resumed node finds its leases long gone.
    tokio::time::sleep(Duration::from_secs(2 * LEASE_TTL_SECS).saturating_sub(stopped.elapsed())).await;
    signal(berths[sleeper].pid(), libc::SIGCONT);
    assert!(taken.is_some(), "the stopped node's shops were not taken over: {:?}", cluster_view(&client, &b1).await);
    bases.lock().unwrap().push(sleeper_url);
    let Some(resumed) = settled(&client, &b1, 60, |live, owners| live.len() == 3 && owners.values().any(|n| n == sleeper)).await else {
        panic!("the resumed node did not take its share again: {:?}\n{}", cluster_view(&client, &b1).await, berths[sleeper].log());
    };
    eprintln!("after SIGSTOP/SIGCONT: {:?}", count_by_node(&resumed));
    let woke = berths[sleeper].full_log();
    assert!(woke.contains("cut off from the cluster"), "the resumed node did not stop its shops first\n{}", berths[sleeper].log());
    eprintln!("the resumed node's writes refused by their fence: {}", woke.matches("is no longer the shop's lease").count());
    platforms_move(&sim);
    assert!(progress(&erp, 20, 10, 60).await, "the ERP load stopped getting through after the resume: {:?}", erp.lock().unwrap().refused);

    // 3. SIGKILL one NATS server: the service goes on; restarted, it catches up.
    nats.kill(1);
    platforms_move(&sim);
    assert!(progress(&erp, 30, 10, 120).await, "the ERP load stopped with one NATS server down: {:?}", erp.lock().unwrap().refused);
    nats.restart(1).await;
    nats.wait_healthy(1).await;
    platforms_move(&sim);
    assert!(progress(&erp, 20, 10, 120).await, "the ERP load stopped after the NATS server came back: {:?}", erp.lock().unwrap().refused);

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let erp = Arc::try_unwrap(erp).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "ERP: 202 for {} stock posts, leased {} orders, acked {} ({} acks in doubt), refused {:?}",
        erp.stock_posts,
        erp.leases,
        erp.acked_orders.len(),
        erp.acks_in_doubt.len(),
        erp.refused
    );

    // Orders: everything not acked comes back and is taken now; nothing acked comes
    // back; the feed holds each version once.
    let b3 = berths["b3"].base_url.clone();
    let taken = check_orders(&client, &b3, &sim, &shops, &erp, seed).await.unwrap_or_else(|e| panic!("{e}\n{}", berths["b3"].log()));
    eprintln!("{taken} orders taken at the end, none lost or delivered after its ack");

    // Stock: every SKU drains to its newest quantity, and never went backwards.
    let checked = check_stock(&client, &b1, &sim, &erp, seed).await.unwrap_or_else(|e| panic!("{e}\n{}", berths["b1"].log()));
    eprintln!("{checked} SKUs at their newest quantity on the platforms");

    // The stream's record: no fenced write of a stale owner landed. The lease epochs
    // are what each node said when it took a lease (every log of every run).
    let mut logs: Vec<(String, String)> = berths.iter().map(|(n, b)| (n.to_string(), b.full_log())).collect();
    logs.push((victim.to_string(), std::fs::read_to_string(&killed_log).unwrap()));
    let epochs = lease_epochs(&logs);
    assert!(epochs.len() == ALL, "every shop's lease was taken: {} shops in the logs", epochs.len());
    let conn = nats::connect(&nats, "audit").await;
    let fenced = nats::audit_fenced_writes(&conn, &epochs).await.unwrap_or_else(|e| panic!("a stale owner's write landed: {e}"));
    assert!(fenced > 0, "the audit found no fenced write");
    eprintln!("{fenced} fenced writes, each inside a lease epoch of its writer ({} epochs)", epochs.values().map(Vec::len).sum::<usize>());
}
