//! Real nats-server processes on loopback for the cluster tests: a JetStream cluster of
//! N servers, each killable and restartable on its own store.

#![allow(dead_code)]

use berth_cluster::lease::{owner_key, OwnerRecord};
use berth_cluster::{ClusterConfig, Connection, Fence};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `NATS_SERVER`, else the one `scripts/toolchains` installs (2.15: it can sync every write).
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    // The workspace root, from whichever package includes this file.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = here.ancestors().find(|d| d.join("scripts/toolchains").exists()).unwrap_or(here);
    let bin = workspace.join(".toolchains/venv/bin/nats-server");
    assert!(bin.exists(), "{} is missing: run scripts/toolchains (or set NATS_SERVER)", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub http_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }
    pub fn monitor(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.conf.with_extension("log")).expect("log file");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill").success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl NatsCluster {
    /// `n` servers forming one JetStream cluster; `sync_always` sets `sync_interval:
    /// always`. Returns once every server says it is healthy (JetStream meta leader
    /// elected). Ports are picked free and then bound by the servers, so another test
    /// can take one in between: a cluster that does not come up is started again on
    /// fresh ports (each cluster has a name of its own, so servers of two tests never
    /// join each other through a reused port).
    pub async fn start(n: usize, sync_always: bool) -> NatsCluster {
        for attempt in 1..=3 {
            let cluster = Self::spawn_all(n, sync_always);
            let mut healthy = true;
            for i in 0..n {
                if let Err(why) = cluster.healthy_within(i, Duration::from_secs(30)).await {
                    eprintln!("nats cluster start {attempt}/3 failed: {why}");
                    healthy = false;
                    break;
                }
            }
            if healthy {
                return cluster;
            }
        }
        panic!("no {n}-server nats cluster came up in 3 starts (logs above)");
    }

    fn spawn_all(n: usize, sync_always: bool) -> NatsCluster {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("nats dir");
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_list = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(", ");
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let cluster_name = format!("berth-test-{}-{}", std::process::id(), STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (client_port, http_port) = (free_port(), free_port());
            let store = dir.path().join(&name);
            let sync = if sync_always { "  sync_interval: always\n" } else { "" };
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{http_port}\n\
                     jetstream {{\n  store_dir: {store:?}\n{sync}}}\n\
                     cluster {{\n  name: {cluster_name}\n  listen: 127.0.0.1:{route}\n  routes: [{route_list}]\n}}\n"
                ),
            )
            .expect("nats config");
            let mut node = NatsNode { name, client_port, http_port, conf, child: None };
            node.spawn();
            nodes.push(node);
        }
        NatsCluster { nodes, _dir: dir }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::url).collect()
    }

    pub fn monitors(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::monitor).collect()
    }

    /// Until `/healthz` answers 200: the server listens and its JetStream is current.
    pub async fn wait_healthy(&self, i: usize) {
        if let Err(why) = self.healthy_within(i, Duration::from_secs(60)).await {
            panic!("{why}");
        }
    }

    async fn healthy_within(&self, i: usize, within: Duration) -> Result<(), String> {
        let url = format!("{}/healthz", self.nodes[i].monitor());
        let deadline = Instant::now() + within;
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.nodes[i].conf.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                return Err(format!(
                    "nats server {} not healthy within {} s; its log ends:\n{}",
                    self.nodes[i].name,
                    within.as_secs(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].signal("KILL");
        let mut c = self.nodes[i].child.take().expect("running");
        let _ = c.wait();
    }

    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_healthy(i).await;
    }

    pub fn stop(&self, i: usize) {
        self.nodes[i].signal("STOP");
    }

    pub fn cont(&self, i: usize) {
        self.nodes[i].signal("CONT");
    }
}

/// Poll `cond` until it holds or `secs` pass.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, secs: u64, mut cond: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `node`'s config for `nats`: every server monitored (sync-always is checked), a
/// `ttl`-second lease.
pub fn cluster_config(nats: &NatsCluster, node: &str, ttl: u64) -> ClusterConfig {
    ClusterConfig { monitor: nats.monitors(), lease_ttl_secs: ttl, ..ClusterConfig::new(nats.urls(), node) }
}

pub async fn connect(nats: &NatsCluster, node: &str) -> Connection {
    berth_cluster::connect(&cluster_config(nats, node, 5)).await.expect("connect")
}

/// The JSON of a lease held by `node`.
pub fn lease_record(node: &str) -> bytes::Bytes {
    serde_json::to_vec(&OwnerRecord { node: Some(node.into()), since_ms: 0 }).expect("json").into()
}

/// Take `shop`'s lease for `node` whoever holds it (tests that write as one node). A
/// fresh cluster may answer "no responders" for a moment (the bucket's stream not yet
/// known to this client's server): tried again for up to 20 s.
pub async fn claim(conn: &Connection, shop: &str, node: &str) -> Fence {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            match conn.latest_shop_key(&owner_key(shop)).await.map_err(|e| e.to_string())? {
                None => conn.shops.create(owner_key(shop), lease_record(node)).await.map_err(|e| e.to_string()),
                Some(l) => conn.shops.update(owner_key(shop), lease_record(node), l.revision).await.map_err(|e| e.to_string()),
            }
        };
        match attempt.await {
            Ok(revision) => return Fence { shop: shop.into(), revision },
            Err(e) if Instant::now() < deadline => {
                eprintln!("claiming {shop} for {node}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("claiming {shop} for {node}: {e}"),
        }
    }
}

/// Read the whole shops stream in order and check that every fenced write (one that
/// names its node, `Berth-Node`) landed in a lease epoch of that node: `epochs` lists,
/// per shop, the revisions at which nodes took its lease (from what they said when they
/// did: the bucket keeps only each key's newest value, so the stream no longer has the
/// older leases), and the newest one below the write's sequence must be the writer's.
/// Returns how many fenced writes were checked; a violation is an `Err` naming it.
#[allow(dead_code)]
pub async fn audit_fenced_writes(conn: &Connection, epochs: &std::collections::BTreeMap<String, Vec<(u64, String)>>) -> Result<usize, String> {
    use berth_cluster::async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    use futures_util::StreamExt;
    let mut stream = conn.shops_stream().clone();
    let last = stream.info().await.map_err(|e| e.to_string())?.state.last_sequence;
    let consumer = stream
        .create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let prefix = format!("$KV.{}.", conn.names.shops);
    let mut fenced = 0;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), messages.next()).await.map_err(|_| "the stream stopped arriving".to_string())? {
        let msg = msg.map_err(|e| e.to_string())?;
        let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
        let key = msg.subject.as_str().strip_prefix(&prefix).unwrap_or_default().to_string();
        if let Some(writer) = msg.headers.as_ref().and_then(|h| h.get(berth_cluster::fenced::WRITER_HEADER)).map(|v| v.as_str().to_string()) {
            fenced += 1;
            let shop = berth_cluster::fenced::shop_of_key(&key).unwrap_or_default();
            let epoch = epochs.get(shop).and_then(|e| e.iter().filter(|(rev, _)| *rev < seq).max_by_key(|(rev, _)| *rev));
            match epoch {
                Some((_, holder)) if *holder == writer => {}
                other => return Err(format!("{key} (stream seq {seq}) written by {writer} inside the lease epoch {other:?}")),
            }
        }
        if seq >= last {
            break;
        }
    }
    Ok(fenced)
}
