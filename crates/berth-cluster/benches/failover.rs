//! Failover time of the lease layer across real processes: three `lease_node` processes
//! (examples/; a fenced write per shop every 50 ms) share 12 shops over a real 3-server
//! JetStream cluster; KILLS times (20 by default) the bench SIGKILLs the node holding
//! shop-0 and measures, per shop it held, the time from the kill to another node's first
//! write to that shop; then starts the killed node again. Prints p50 and max per kill
//! and overall. `cargo build -p berth-cluster --examples && cargo bench -p berth-cluster
//! --bench failover` (TTL=secs, default 4; the debug build of the example is used when no
//! release one exists).

#[path = "../tests/common/mod.rs"]
mod common;

use common::NatsCluster;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Lines = Arc<Mutex<Vec<(String, Instant, Vec<String>)>>>;

fn spawn(nats: &NatsCluster, name: &str, ttl: u64, lines: &Lines) -> Node {
    // The example as this profile built it, else the debug build (its timing is the
    // lease's, not the code's).
    let exe = std::env::current_exe().expect("bench binary");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = [profile_dir.join("examples/lease_node"), profile_dir.with_file_name("debug").join("examples/lease_node")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| profile_dir.join("examples/lease_node"));
    let mut child = Command::new(&bin)
        .args([name, &ttl.to_string(), "12", &nats.urls().join(","), &nats.monitors().join(",")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build -p berth-cluster --examples)", bin.display()));
    let out = child.stdout.take().expect("stdout");
    let (lines, node) = (lines.clone(), name.to_string());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            lines.lock().unwrap().push((node.clone(), Instant::now(), line.split_whitespace().map(String::from).collect()));
        }
    });
    Node(child)
}

/// Who last started each shop (from the start lines).
fn owners(lines: &Lines) -> BTreeMap<String, String> {
    let mut by_shop = BTreeMap::new();
    for (node, _, w) in lines.lock().unwrap().iter() {
        if w[0] == "start" {
            by_shop.insert(w[1].clone(), node.clone());
        }
    }
    by_shop
}

async fn wait(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kills: usize = std::env::var("KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(20);
    let ttl: u64 = std::env::var("TTL").ok().and_then(|k| k.parse().ok()).unwrap_or(4);
    let nats = NatsCluster::start(3, true).await;
    let lines: Lines = Arc::default();
    let mut nodes: BTreeMap<String, Node> = ["n1", "n2", "n3"].iter().map(|n| (n.to_string(), spawn(&nats, n, ttl, &lines))).collect();
    wait("12 shops on 3 nodes", || {
        let o = owners(&lines);
        o.len() == 12 && o.values().collect::<std::collections::BTreeSet<_>>().len() == 3
    })
    .await;
    println!("3 lease_node processes, 12 shops, lease TTL {ttl} s, 3 x nats-server 2.15 R3 sync always");
    println!("| kill | node | shops | p50 ms | max ms |");
    println!("|---|---|---|---|---|");
    let mut all = Vec::new();
    for k in 0..kills {
        let victim = owners(&lines)["shop-0"].clone();
        let theirs: Vec<String> = owners(&lines).into_iter().filter(|(_, n)| *n == victim).map(|(s, _)| s).collect();
        let killed_at = Instant::now();
        drop(nodes.remove(&victim));
        let firsts = || -> Option<Vec<Duration>> {
            let l = lines.lock().unwrap();
            theirs
                .iter()
                .map(|s| l.iter().find(|(n, at, w)| *at > killed_at && *n != victim && w[0] == "wrote" && w[1] == *s).map(|(_, at, _)| *at - killed_at))
                .collect()
        };
        wait("the killed node's shops written elsewhere", || firsts().is_some()).await;
        let mut times = firsts().expect("all taken");
        times.sort();
        println!("| {k} | {victim} | {} | {:.0} | {:.0} |", times.len(), ms(&times[times.len() / 2]), ms(times.last().expect("one")));
        all.extend(times);
        // Back again, and settled where rendezvous puts the shops, before the next kill.
        let before = lines.lock().unwrap().len();
        nodes.insert(victim.clone(), spawn(&nats, &victim, ttl, &lines));
        wait("the restarted node running shops again", || lines.lock().unwrap()[before..].iter().any(|(n, _, w)| *n == victim && w[0] == "wrote")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all.sort();
    println!(
        "all {} shops over {kills} kills: p50 {:.0} ms, max {:.0} ms (lease TTL {} ms)",
        all.len(),
        ms(&all[all.len() / 2]),
        ms(all.last().expect("one")),
        ttl * 1000
    );
}
