//! A stand-in for a berth node's shop workers, for the process-level lease tests
//! (tests/processes.rs): joins the cluster, and for every shop it holds writes a new
//! key `state.<shop>.w.<node>.<n>` under the shop's fence every 50 ms, printing one
//! line per outcome: `wrote SHOP N REVISION`, `fenced SHOP N`, `start SHOP REVISION`,
//! `stop SHOP`. Killed or stopped by the test with real signals.
//!
//! `lease_node NODE TTL_SECS SHOPS NATS_URL,... MONITOR_URL,...`

use berth_cluster::{fenced, ClusterConfig, ClusterError, Fence, Leases, ShopWorkers};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

struct Writers {
    conn: berth_cluster::Connection,
    node: String,
    running: Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>,
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl ShopWorkers for Writers {
    async fn start(&self, fence: Fence) {
        say(format!("start {} {}", fence.shop, fence.revision));
        let (conn, node) = (self.conn.clone(), self.node.clone());
        let shop = fence.shop.clone();
        let task = tokio::spawn(async move {
            for n in 0u64.. {
                let name = format!("w.{node}.{n}");
                match fenced::put(&conn, &fence, &name, n.to_string().into()).await {
                    Ok(rev) => say(format!("wrote {} {n} {rev}", fence.shop)),
                    Err(ClusterError::Fenced { .. }) => {
                        say(format!("fenced {} {n}", fence.shop));
                        return;
                    }
                    Err(e) => say(format!("error {} {n} {e}", fence.shop)),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        self.running.lock().unwrap().insert(shop, task);
    }

    async fn stop(&self, shop: &str) {
        if let Some(task) = self.running.lock().unwrap().remove(shop) {
            task.abort();
        }
        say(format!("stop {shop}"));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("warn")).with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().collect();
    let [_, node, ttl, shops, nats, monitor] = &args[..] else {
        eprintln!("usage: lease_node NODE TTL_SECS SHOPS NATS_URL,... MONITOR_URL,...");
        std::process::exit(2);
    };
    let config = ClusterConfig {
        monitor: monitor.split(',').map(String::from).collect(),
        lease_ttl_secs: ttl.parse().expect("ttl"),
        ..ClusterConfig::new(nats.split(',').map(String::from).collect(), node.clone())
    };
    let conn = berth_cluster::connect(&config).await.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let shops: BTreeSet<String> = (0..shops.parse::<usize>().expect("shops")).map(|i| format!("shop-{i}")).collect();
    let (_shop_tx, shop_rx) = watch::channel(shops);
    let leases = Leases::new(conn.clone(), node.clone(), config.lease_ttl(), shop_rx);
    let workers = Arc::new(Writers { conn, node: node.clone(), running: Mutex::new(BTreeMap::new()) });
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        term.recv().await;
        let _ = shutdown.send(true);
    });
    say(format!("joined {node}"));
    leases.run(workers, shutdown_rx).await;
    say(format!("left {node}"));
}
