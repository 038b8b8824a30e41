//! Shop leases across real processes: three `lease_node` processes (examples/) share 12
//! shops over a real 3-server JetStream cluster; one is SIGSTOPped past its lease and
//! resumed, one is SIGKILLed. Every write each node makes under a shop's fence is a key
//! of its own, so afterwards the stream shows who wrote what, in order: each write must
//! fall in an epoch of the shop's lease held by its writer — a stale owner lands nothing.

mod common;

use berth_cluster::fenced;
use common::NatsCluster;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TTL: u64 = 4;
const SHOPS: usize = 12;

fn example(name: &str) -> PathBuf {
    // target/debug/deps/processes-HASH -> target/debug/examples/NAME
    let exe = std::env::current_exe().expect("test binary");
    exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join(name)
}

/// One line a node printed, when the test read it.
#[derive(Clone, Debug)]
struct Line {
    node: String,
    at: Instant,
    words: Vec<String>,
}

/// Killed when dropped, so a failing test leaves no process behind.
struct Node {
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(nats: &NatsCluster, name: &str, lines: &Arc<Mutex<Vec<Line>>>) -> Node {
    let mut child = Command::new(example("lease_node"))
        .args([name, &TTL.to_string(), &SHOPS.to_string(), &nats.urls().join(","), &nats.monitors().join(",")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start lease_node (built by cargo test from examples/)");
    let out = child.stdout.take().expect("stdout");
    let (lines, node) = (lines.clone(), name.to_string());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let words = line.split_whitespace().map(String::from).collect();
            lines.lock().unwrap().push(Line { node: node.clone(), at: Instant::now(), words });
        }
    });
    Node { child }
}

fn signal(node: &Node, sig: &str) {
    assert!(Command::new("kill").arg(format!("-{sig}")).arg(node.child.id().to_string()).status().expect("kill").success());
}

/// The node currently running each shop, from the start/stop lines.
fn running(lines: &[Line]) -> BTreeMap<String, String> {
    let mut by_shop = BTreeMap::new();
    for l in lines {
        match l.words.first().map(String::as_str) {
            Some("start") => {
                by_shop.insert(l.words[1].clone(), l.node.clone());
            }
            Some("stop") | Some("fenced") => {
                if by_shop.get(&l.words[1]) == Some(&l.node) {
                    by_shop.remove(&l.words[1]);
                }
            }
            _ => {}
        }
    }
    by_shop
}

/// Every shop running, spread over all three nodes.
fn spread(lines: &[Line]) -> bool {
    let r = running(lines);
    r.len() == SHOPS && r.values().collect::<std::collections::BTreeSet<_>>().len() == 3
}

fn shops_of(lines: &Arc<Mutex<Vec<Line>>>, node: &str) -> Vec<String> {
    running(&lines.lock().unwrap()).into_iter().filter(|(_, n)| n == node).map(|(s, _)| s).collect()
}

/// For each of `shops`, how long after `since` another node than `node` started it;
/// None until every one was.
fn started_elsewhere(lines: &[Line], shops: &[String], node: &str, since: Instant) -> Option<Vec<Duration>> {
    shops
        .iter()
        .map(|s| lines.iter().find(|x| x.at > since && x.node != node && x.words[0] == "start" && x.words[1] == *s).map(|x| x.at - since))
        .collect()
}

async fn wait_until(what: &str, secs: u64, lines: &Arc<Mutex<Vec<Line>>>, cond: impl Fn(&[Line]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond(&lines.lock().unwrap()) {
            return;
        }
        if Instant::now() >= deadline {
            let l = lines.lock().unwrap().clone();
            let events: Vec<String> = l.iter().filter(|x| x.words[0] != "wrote").map(|x| format!("{} {}", x.node, x.words.join(" "))).collect();
            panic!("timed out after {secs} s waiting for {what}; running {:?}; events {events:?}", running(&l));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_owner_lands_nothing_after_its_lease_moves_and_a_killed_one_is_replaced() {
    let nats = NatsCluster::start(3, true).await;
    let lines: Arc<Mutex<Vec<Line>>> = Arc::default();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| spawn(&nats, n, &lines)).collect();
    wait_until("every shop running, on all three nodes", 60, &lines, spread).await;

    // SIGSTOP n1 past its lease: its shops are taken by n2 and n3.
    let n1_shops = shops_of(&lines, "n1");
    let stopped_at = Instant::now();
    signal(&nodes[0], "STOP");
    wait_until("n1's shops started on n2 or n3", 60, &lines, |l| started_elsewhere(l, &n1_shops, "n1", stopped_at).is_some()).await;
    println!("n1 stopped: its {} shops running elsewhere after {:?}", n1_shops.len(), stopped_at.elapsed());
    // Let the new owners write a while, then wake n1: it must stop those shops, and
    // whatever it had in flight is refused.
    let marks = lines.lock().unwrap().len();
    wait_until("the new owners writing", 30, &lines, |l| l[marks..].iter().filter(|x| x.words[0] == "wrote").count() > 20).await;
    let woke_at = Instant::now();
    signal(&nodes[0], "CONT");
    wait_until("n1 giving up its old shops after waking", 60, &lines, |l| {
        n1_shops.iter().all(|s| l.iter().any(|x| x.at > woke_at && x.node == "n1" && matches!(x.words[0].as_str(), "stop" | "fenced") && x.words[1] == *s))
    })
    .await;
    // n1 is alive again: rendezvous gives it its shops back, handed over cleanly.
    wait_until("every shop running, on all three nodes again", 60, &lines, spread).await;

    // SIGKILL n2: its shops are taken once its heartbeat expires.
    let n2_shops = shops_of(&lines, "n2");
    let killed_at = Instant::now();
    signal(&nodes[1], "KILL");
    let _ = nodes[1].child.wait();
    wait_until("n2's shops started elsewhere", 60, &lines, |l| started_elsewhere(l, &n2_shops, "n2", killed_at).is_some()).await;
    let failover = started_elsewhere(&lines.lock().unwrap(), &n2_shops, "n2", killed_at).expect("all started");
    println!("n2 killed: failover per shop {failover:?} (lease TTL {TTL} s)");

    // The stream's record: every write of every shop inside an epoch of its writer.
    let conn = berth_cluster::connect(&common::cluster_config(&nats, "checker", TTL)).await.expect("connect");
    let all = lines.lock().unwrap().clone();
    let mut checked = 0;
    for shop in (0..SHOPS).map(|i| format!("shop-{i}")) {
        // Epochs: each start line is a lease taken at a revision, in revision order.
        let mut epochs: Vec<(u64, String)> = all
            .iter()
            .filter(|x| x.words[0] == "start" && x.words[1] == shop)
            .map(|x| (x.words[2].parse().expect("revision"), x.node.clone()))
            .collect();
        epochs.sort();
        let writes = fenced::scan(&conn, &format!("state.{shop}.w.")).await.expect("scan");
        assert!(!writes.is_empty(), "{shop}: no writes");
        for w in &writes {
            let writer = w.key.split('.').nth(3).expect("node in key");
            let epoch = epochs.iter().rev().find(|(rev, _)| *rev < w.revision).unwrap_or_else(|| panic!("{shop}: write {} before any lease", w.key));
            assert_eq!(epoch.1, writer, "{shop}: {} landed at revision {} inside {}'s lease taken at {}", w.key, w.revision, epoch.1, epoch.0);
            checked += 1;
        }
    }
    println!("{checked} fenced writes checked against {} lease epochs", all.iter().filter(|x| x.words[0] == "start").count());
    let fenced_count = all.iter().filter(|x| x.node == "n1" && x.words[0] == "fenced").count();
    println!("n1 had {fenced_count} write(s) refused by the fence after waking");
    drop(nodes);
}
