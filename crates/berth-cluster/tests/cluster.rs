//! Cluster mode's foundations against real nats-server processes (a 3-server JetStream
//! cluster on loopback): what berth requires of the cluster, fenced writes, and shop
//! leases moving between nodes that join, leave, die or are cut off.

mod common;

use berth_cluster::lease::owner_key;
use berth_cluster::{fenced, ClusterConfig, ClusterError, Durability, Fence, Leases, ShopWorkers};
use common::{wait_for, NatsCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

fn config(cluster: &NatsCluster, node: &str, durability: Durability) -> ClusterConfig {
    ClusterConfig { durability, ..common::cluster_config(cluster, node, 5) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_checks_what_the_cluster_keeps() {
    let lax = NatsCluster::start(3, false).await;
    let err = berth_cluster::connect(&config(&lax, "a", Durability::SyncAlways)).await.err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, ClusterError::Durability(_)), "{msg}");
    assert!(msg.contains("sync_interval: always") && msg.contains("durability = \"replicated\""), "{msg}");
    berth_cluster::connect(&config(&lax, "a", Durability::Replicated)).await.expect("replicated is enough when asked for");

    let strict = NatsCluster::start(3, true).await;
    let conn = berth_cluster::connect(&config(&strict, "a", Durability::SyncAlways)).await.expect("a synced cluster passes");
    let info = conn.js.get_stream("KV_berth_shops").await.expect("stream").info().await.expect("info").clone();
    assert_eq!(info.config.num_replicas, 3);
    // One server left out of `monitor`: its sync setting is unknown, and it holds a copy.
    let mut partial = config(&strict, "a", Durability::SyncAlways);
    partial.monitor.pop();
    let msg = berth_cluster::connect(&partial).await.err().expect("refused").to_string();
    assert!(msg.contains("n3") && msg.contains("monitor"), "{msg}");
    // A bucket with fewer copies than configured is refused with the command that fixes it.
    let mut five = config(&strict, "a", Durability::SyncAlways);
    five.replicas = 5;
    let msg = berth_cluster::connect(&five).await.err().expect("refused").to_string();
    assert!(msg.contains("--replicas 5"), "{msg}");
    let mut unreachable = config(&strict, "a", Durability::Replicated);
    unreachable.nats = vec!["nats://127.0.0.1:1".into()];
    assert!(matches!(berth_cluster::connect(&unreachable).await, Err(ClusterError::Connect { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_a_lost_lease_is_refused() {
    let nats = NatsCluster::start(3, true).await;
    let conn = berth_cluster::connect(&config(&nats, "a", Durability::SyncAlways)).await.expect("connect");
    let a = common::claim(&conn, "shop-1", "a").await;
    let first = a.revision;
    fenced::put(&conn, &a, "cursor", "10".into()).await.expect("the holder writes");
    fenced::put(&conn, &a, "cursor", "11".into()).await.expect("and writes again");

    let b = common::claim(&conn, "shop-1", "b").await;
    let second = b.revision;
    let refused = fenced::put(&conn, &a, "cursor", "12".into()).await;
    assert!(matches!(refused, Err(ClusterError::Fenced { revision, .. }) if revision == first), "{refused:?}");
    assert_eq!(fenced::get(&conn, "shop-1", "cursor").await.expect("read").expect("value").value, "11", "the stale write did not land");
    fenced::put(&conn, &b, "cursor", "20".into()).await.expect("the new holder writes");
    // Another shop's lease is another fence.
    let other = Fence { shop: "shop-2".into(), revision: second };
    assert!(matches!(fenced::put(&conn, &other, "cursor", "1".into()).await, Err(ClusterError::Fenced { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_and_its_position_land_together_or_not_at_all() {
    let nats = NatsCluster::start(3, true).await;
    let conn = berth_cluster::connect(&config(&nats, "a", Durability::SyncAlways)).await.expect("connect");
    let a = common::claim(&conn, "shop-9", "a").await;
    let first = a.revision;
    let page = |n: usize, tag: &str| -> Vec<(String, bytes::Bytes)> {
        let mut items: Vec<(String, bytes::Bytes)> = (0..n).map(|i| (format!("feed.all.shop-9.{tag}-{i}"), format!("order {tag}-{i}").into())).collect();
        items.push(("state.shop-9.cursor".into(), tag.to_string().into()));
        items
    };
    let seq = fenced::put_all(&conn, &a, page(3, "p1")).await.expect("the holder's page lands");
    assert!(seq > first);
    assert_eq!(fenced::get(&conn, "shop-9", "cursor").await.expect("read").expect("cursor").value, "p1");
    for i in 0..3 {
        assert!(conn.shops.get(format!("feed.all.shop-9.p1-{i}")).await.expect("read").is_some());
    }
    // A page of 200 in one batch (publishes between the first request and the commit).
    fenced::put_all(&conn, &a, page(200, "p2")).await.expect("a long page lands");
    assert!(conn.shops.get("feed.all.shop-9.p2-199").await.expect("read").is_some());

    common::claim(&conn, "shop-9", "b").await;
    let refused = fenced::put_all(&conn, &a, page(5, "p3")).await;
    assert!(matches!(refused, Err(ClusterError::Fenced { .. })), "{refused:?}");
    for i in 0..5 {
        assert!(conn.shops.get(format!("feed.all.shop-9.p3-{i}")).await.expect("read").is_none(), "p3-{i} landed under a lost lease");
    }
    assert_eq!(fenced::get(&conn, "shop-9", "cursor").await.expect("read").expect("cursor").value, "p2");
    // A key of another shop never rides on this shop's fence.
    let foreign = fenced::put_all(&conn, &a, vec![("feed.all.shop-1.x".into(), "x".into())]).await;
    assert!(matches!(foreign, Err(ClusterError::Nats(m)) if m.contains("not one of shop shop-9")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_compare_and_set_at_once_and_scan_back() {
    use berth_cluster::fenced::{Expect, Write};
    let nats = NatsCluster::start(3, true).await;
    let (a, b) = (
        berth_cluster::connect(&config(&nats, "a", Durability::SyncAlways)).await.expect("connect a"),
        berth_cluster::connect(&config(&nats, "b", Durability::SyncAlways)).await.expect("connect b"),
    );
    let w = |k: &str, v: &str, expect| Write { key: k.into(), value: v.to_string().into(), expect };
    let first = fenced::write_all(&a, None, vec![w("stock.s1.x", "1", Expect::Absent), w("stock.s1.y", "1", Expect::Absent)]).await.expect("create both");
    let scanned = fenced::scan(&a, "stock.s1.").await.expect("scan");
    assert_eq!(scanned.iter().map(|s| (s.key.as_str(), s.value.as_ref())).collect::<Vec<_>>(), vec![("stock.s1.x", &b"1"[..]), ("stock.s1.y", &b"1"[..])]);
    let (rx, ry) = (scanned[0].revision, scanned[1].revision);
    assert_eq!(ry, first);
    // Two nodes compare-and-set the same key from the same read: exactly one lands.
    let (ra, rb) = tokio::join!(
        fenced::write_all(&a, None, vec![w("stock.s1.x", "a", Expect::Revision(rx))]),
        fenced::write_all(&b, None, vec![w("stock.s1.x", "b", Expect::Revision(rx))]),
    );
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    assert!(matches!(ra.as_ref().err().or(rb.as_ref().err()), Some(ClusterError::Conflict(_))), "{ra:?} {rb:?}");
    // One stale expectation refuses the whole batch: y keeps its value.
    let stale = fenced::write_all(&a, None, vec![w("stock.s1.y", "2", Expect::Revision(ry)), w("stock.s1.x", "2", Expect::Revision(rx))]).await;
    assert!(matches!(stale, Err(ClusterError::Conflict(_))), "{stale:?}");
    assert_eq!(a.shops.get("stock.s1.y").await.expect("read").expect("y"), "1");
    assert!(matches!(fenced::write_all(&a, None, vec![w("stock.s1.y", "3", Expect::Absent)]).await, Err(ClusterError::Conflict(_))));
    // Deleted keys are not scanned; other prefixes are not either.
    a.shops.delete("stock.s1.y").await.expect("delete");
    fenced::write_all(&a, None, vec![w("stock.s10.z", "1", Expect::Any)]).await.expect("other shop");
    let keys: Vec<String> = fenced::scan(&a, "stock.s1.").await.expect("scan").into_iter().map(|s| s.key).collect();
    assert_eq!(keys, vec!["stock.s1.x"]);
    assert!(fenced::scan(&a, "stock.nobody.").await.expect("scan").is_empty());

    // With a fence: the lease and every expectation, together.
    let fence = common::claim(&a, "s1", "a").await;
    let x = fenced::scan(&a, "stock.s1.").await.expect("scan")[0].revision;
    fenced::write_all(&a, Some(&fence), vec![w("stock.s1.x", "fenced", Expect::Revision(x))]).await.expect("fenced cas");
    let conflict = fenced::write_all(&a, Some(&fence), vec![w("stock.s1.x", "again", Expect::Revision(x))]).await;
    assert!(matches!(conflict, Err(ClusterError::Conflict(_))), "{conflict:?}");
    common::claim(&a, "s1", "b").await;
    let x = fenced::scan(&a, "stock.s1.").await.expect("scan")[0].revision;
    let fenced_out = fenced::write_all(&a, Some(&fence), vec![w("stock.s1.x", "stale", Expect::Revision(x))]).await;
    assert!(matches!(fenced_out, Err(ClusterError::Fenced { .. })), "{fenced_out:?}");
    assert_eq!(a.shops.get("stock.s1.x").await.expect("read").expect("x"), "fenced");
}

/// Records which node runs which shop, and fails the test if two ever run one at once.
#[derive(Default)]
struct Running {
    by_shop: Mutex<BTreeMap<String, (String, u64)>>,
    overlaps: Mutex<Vec<String>>,
    starts: Mutex<usize>,
}

struct Workers {
    node: String,
    running: Arc<Running>,
}

impl ShopWorkers for Workers {
    async fn start(&self, fence: Fence) {
        let mut by_shop = self.running.by_shop.lock().unwrap();
        if let Some((other, _)) = by_shop.get(&fence.shop) {
            self.running.overlaps.lock().unwrap().push(format!("{} started on {} while running on {other}", fence.shop, self.node));
        }
        by_shop.insert(fence.shop, (self.node.clone(), fence.revision));
        *self.running.starts.lock().unwrap() += 1;
    }
    async fn stop(&self, shop: &str) {
        let mut by_shop = self.running.by_shop.lock().unwrap();
        if by_shop.get(shop).is_some_and(|(n, _)| *n == self.node) {
            by_shop.remove(shop);
        }
    }
}

struct Node {
    leases: Arc<Leases>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn node(nats: &NatsCluster, name: &str, shops: &watch::Sender<BTreeSet<String>>, running: &Arc<Running>) -> Node {
    let cfg = config(nats, name, Durability::SyncAlways);
    let conn = berth_cluster::connect(&cfg).await.expect("connect");
    let leases = Leases::new(conn, name.into(), cfg.lease_ttl(), shops.subscribe());
    let (shutdown, rx) = watch::channel(false);
    let workers = Arc::new(Workers { node: name.into(), running: running.clone() });
    let task = tokio::spawn(leases.clone().run(workers, rx));
    Node { leases, shutdown, task }
}

/// Every shop of `shops` runs on its rendezvous owner among `nodes`, and nothing else runs.
fn placed(running: &Running, shops: &BTreeSet<String>, nodes: &[&str]) -> bool {
    let by_shop = running.by_shop.lock().unwrap();
    by_shop.len() == shops.len()
        && shops.iter().all(|s| by_shop.get(s).map(|(n, _)| n.as_str()) == berth_cluster::rendezvous::owner(s, nodes.iter().copied()))
}

fn holders(running: &Running) -> BTreeMap<String, usize> {
    running.by_shop.lock().unwrap().values().fold(BTreeMap::new(), |mut m, (n, _)| {
        *m.entry(n.clone()).or_insert(0) += 1;
        m
    })
}

fn shops_on(running: &Running, node: &str) -> BTreeSet<String> {
    running.by_shop.lock().unwrap().iter().filter(|(_, (n, _))| n == node).map(|(s, _)| s.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shops_spread_over_nodes_and_move_when_one_leaves_dies_or_is_cut_off() {
    let mut nats = NatsCluster::start(3, true).await;
    let shops: BTreeSet<String> = (0..30).map(|i| format!("shop-{i}")).collect();
    let (shop_tx, _) = watch::channel(shops.clone());
    let running = Arc::new(Running::default());
    let a = node(&nats, "node-a", &shop_tx, &running).await;
    let b = node(&nats, "node-b", &shop_tx, &running).await;
    let c = node(&nats, "node-c", &shop_tx, &running).await;

    wait_for("every shop running where rendezvous hashing puts it", 30, || placed(&running, &shops, &["node-a", "node-b", "node-c"])).await;
    for (n, count) in holders(&running) {
        assert!((4..=18).contains(&count), "{n} runs {count} of 30: {:?}", holders(&running));
    }
    assert_eq!(a.leases.view().live_nodes.len(), 3);

    // A clean shutdown hands over at once: its shops run elsewhere well before its
    // heartbeat (5 s lease) could expire.
    let a_shops = shops_on(&running, "node-a");
    let before = std::time::Instant::now();
    a.shutdown.send(true).expect("shutdown");
    a.task.await.expect("node a ends");
    wait_for("node a's shops running on b and c", 30, || placed(&running, &shops, &["node-b", "node-c"])).await;
    let handover = before.elapsed();
    assert!(a_shops.iter().all(|s| !shops_on(&running, "node-a").contains(s)));
    println!("clean handover of {} shops took {handover:?}", a_shops.len());

    // A crash (the task gone, no release): its leases are taken once its heartbeat
    // expires, and the new holders' fences are newer revisions.
    let b_fences: BTreeMap<String, u64> = running.by_shop.lock().unwrap().iter().filter(|(_, (n, _))| n == "node-b").map(|(s, (_, r))| (s.clone(), *r)).collect();
    b.task.abort();
    running.by_shop.lock().unwrap().retain(|_, (n, _)| n != "node-b");
    wait_for("node b's shops running on c within 2 x the lease", 30, || shops_on(&running, "node-c").len() == 30).await;
    for (shop, old) in &b_fences {
        let (_, new) = running.by_shop.lock().unwrap()[shop].clone();
        assert!(new > *old, "{shop}: fence {new} after {old}");
        let stale = Fence { shop: shop.clone(), revision: *old };
        assert!(matches!(fenced::put(&b.leases_conn(), &stale, "x", "stale".into()).await, Err(ClusterError::Fenced { .. })));
    }

    // Cut off: the NATS servers stop answering (SIGSTOP). Node c stops its shops before
    // its lease could expire; when they answer again it takes them back.
    for i in 0..3 {
        nats.stop(i);
    }
    wait_for("node c stopping its shops and saying it is cut off", 30, || holders(&running).is_empty() && c.leases.view().fenced_off).await;
    assert!(!c.leases.fresh(), "a cut-off node's leases are not fresh");
    for i in 0..3 {
        nats.cont(i);
    }
    wait_for("node c running every shop again", 60, || shops_on(&running, "node-c").len() == 30).await;
    assert!(c.leases.fresh());

    // One NATS server killed: the cluster keeps a quorum, nodes keep their leases and a
    // node joining still gets its share; restarted, the server catches up.
    nats.kill(1);
    let d = node(&nats, "node-d", &shop_tx, &running).await;
    wait_for("node d taking its share with one NATS server down", 30, || placed(&running, &shops, &["node-c", "node-d"])).await;
    nats.restart(1).await;
    let conn = d.leases_conn();
    let mut caught_up = false;
    for _ in 0..200 {
        let info = conn.js.get_stream("KV_berth_shops").await.expect("stream").info().await.expect("info").clone();
        let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
        if replicas.len() == 2 && replicas.iter().all(|p| p.current && !p.offline) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the restarted NATS server did not catch up within 20 s");

    // The shop list shrinking releases what is no longer served.
    let fewer: BTreeSet<String> = shops.iter().take(10).cloned().collect();
    shop_tx.send_replace(fewer.clone());
    wait_for("only the 10 remaining shops running", 30, || placed(&running, &fewer, &["node-c", "node-d"])).await;
    assert!(running.overlaps.lock().unwrap().is_empty(), "{:?}", running.overlaps.lock().unwrap());
    let _ = (c.shutdown.send(true), d.shutdown.send(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_an_earlier_run_of_a_live_node_is_freed() {
    let nats = NatsCluster::start(3, true).await;
    let shops: BTreeSet<String> = (0..12).map(|i| format!("shop-{i}")).collect();
    // An earlier process of node-a died holding every lease; node-a comes back at once
    // (its name is alive again) beside node-b, so the leases name a live node.
    let conn = berth_cluster::connect(&config(&nats, "setup", Durability::SyncAlways)).await.expect("connect");
    for shop in &shops {
        conn.shops.create(owner_key(shop), common::lease_record("node-a")).await.expect("stale lease");
    }
    let (shop_tx, _) = watch::channel(shops.clone());
    let running = Arc::new(Running::default());
    let _a = node(&nats, "node-a", &shop_tx, &running).await;
    let _b = node(&nats, "node-b", &shop_tx, &running).await;
    wait_for("every shop running where rendezvous puts it", 30, || placed(&running, &shops, &["node-a", "node-b"])).await;
    assert!(!shops_on(&running, "node-b").is_empty());
}

impl Node {
    fn leases_conn(&self) -> berth_cluster::Connection {
        self.leases.connection().clone()
    }
}
