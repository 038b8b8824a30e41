//! NATS JetStream as the queue bench's yardstick: a `nats-server` child process with
//! file storage on the project disk, and the same enqueue + ack work done through
//! async-nats. Publishes carry a `Nats-Msg-Id` (JetStream's idempotency key) and wait
//! for the server's PubAck; acks wait for the server's confirmation (`double_ack`).

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One `nats-server` binary the bench found, and how durable it can be made.
pub struct NatsBinary {
    pub path: PathBuf,
    pub version: String,
    /// `sync_interval: always` (2.10 and later): every write is fsynced before the
    /// PubAck. Older servers sync on a timer (every 2 minutes), not per message.
    pub sync_always: bool,
}

/// The servers to compare against: `NATS_SERVER` (one path), else Debian's
/// `/usr/sbin/nats-server` and the one `scripts/toolchains` installs.
pub fn binaries(workspace: &Path) -> Vec<NatsBinary> {
    let candidates: Vec<PathBuf> = match std::env::var_os("NATS_SERVER") {
        Some(p) => vec![p.into()],
        None => vec!["/usr/sbin/nats-server".into(), workspace.join(".toolchains/venv/bin/nats-server")],
    };
    candidates
        .into_iter()
        .filter_map(|path| {
            let out = Command::new(&path).arg("--version").output().ok()?;
            let version = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("nats-server: v").to_string();
            let (major, minor) = parse_version(&version)?;
            Some(NatsBinary { path, version, sync_always: (major, minor) >= (2, 10) })
        })
        .collect()
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A running server, killed when dropped.
pub struct NatsServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NatsServer {
    /// Start `bin` with JetStream on a fresh store directory under `disk`, and wait
    /// until it takes connections.
    pub async fn start(bin: &NatsBinary, disk: &Path) -> NatsServer {
        let dir = tempfile::tempdir_in(disk).expect("nats store dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let sync = if bin.sync_always { "  sync_interval: always\n" } else { "" };
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(&conf, format!("listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n{sync}}}\n")).expect("nats config");
        let child = Command::new(&bin.path).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start nats-server");
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "{} did not listen on {port} within 20 s", bin.path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        NatsServer { child, url, _dir: dir }
    }
}

/// Enqueue + ack `messages` through JetStream the way the berth row does it: `producers`
/// publishers, as many consumers as producers up to 16, each fetching 32 and acking each.
/// Returns msgs/s and the publish and ack latencies.
pub async fn run(server: &NatsServer, producers: usize, messages: usize, payload: &[u8]) -> (f64, Vec<Duration>, Vec<Duration>) {
    let client = async_nats::connect(&server.url).await.expect("connect to nats");
    let js = jetstream::new(client);
    let name = format!("BENCH{producers}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream");
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .expect("create consumer");
    let per = messages / producers;
    let total = per * producers;
    let payload = payload.to_vec();
    let start = Instant::now();

    let prod: Vec<_> = (0..producers)
        .map(|p| {
            let (js, payload, name) = (js.clone(), payload.clone(), name.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("{p}-{i}").as_str());
                    let t = Instant::now();
                    let ack = js.publish_with_headers(format!("{name}.shop{}.sku{i}", p % 32), headers, payload.clone().into()).await.expect("publish");
                    ack.await.expect("publish ack");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();

    let acked = Arc::new(AtomicUsize::new(0));
    let cons: Vec<_> = (0..producers.min(16))
        .map(|_| {
            let (consumer, acked) = (consumer.clone(), acked.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while acked.load(Ordering::SeqCst) < total {
                    let mut batch = consumer.fetch().max_messages(32).expires(Duration::from_millis(100)).messages().await.expect("fetch");
                    let mut acks = Vec::new();
                    while let Some(m) = batch.next().await {
                        let m = m.expect("message");
                        acks.push(tokio::spawn(async move {
                            let t = Instant::now();
                            m.double_ack().await.expect("ack");
                            t.elapsed()
                        }));
                    }
                    for a in acks {
                        lat.push(a.await.expect("ack task"));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
                lat
            })
        })
        .collect();

    let (enq, ack) = crate::latencies(prod, cons).await;
    (total as f64 / start.elapsed().as_secs_f64(), enq, ack)
}
