//! Connecting to the NATS cluster, creating berth's buckets, and checking that the
//! cluster keeps what it acknowledges.

use crate::config::{ClusterConfig, Durability};
use crate::error::ClusterError;
use async_nats::jetstream::{self, kv, stream::StorageType};
use std::collections::BTreeSet;
use std::time::Duration;

/// The buckets berth keeps its cluster state in.
#[derive(Debug, Clone)]
pub struct BucketNames {
    /// One key per live node, expiring `lease_ttl` after its last heartbeat.
    pub nodes: String,
    /// `owner.<shop>` leases, and the state a shop's owner writes under its fence.
    pub shops: String,
    /// Connector versions and what is active, canary, shadow or paused.
    pub registry: String,
    /// Component bytes by digest (an object store).
    pub components: String,
}

impl BucketNames {
    pub fn new(prefix: &str) -> BucketNames {
        BucketNames {
            nodes: format!("{prefix}_nodes"),
            shops: format!("{prefix}_shops"),
            registry: format!("{prefix}_registry"),
            components: format!("{prefix}_components"),
        }
    }
}

/// A connection to the cluster with berth's buckets in place.
#[derive(Clone)]
pub struct Connection {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub nodes: kv::Store,
    pub shops: kv::Store,
    pub names: BucketNames,
    /// Copies of every bucket berth creates (`[cluster] replicas`).
    pub replicas: usize,
    /// This node's name: every fenced write carries it (`Berth-Node`), so the stream
    /// shows who wrote what under which lease.
    pub node: String,
    nodes_stream: jetstream::stream::Stream,
    shops_stream: jetstream::stream::Stream,
}

/// A key's newest value as the stream's leader has it.
#[derive(Debug, Clone)]
pub struct Latest {
    pub revision: u64,
    /// None: the key was deleted or purged.
    pub value: Option<bytes::Bytes>,
}

impl Connection {
    /// Read `key` of the nodes bucket from the stream leader. KV reads are answered by
    /// any replica (direct get) and a lagging one can miss a fresh heartbeat or lease;
    /// deciding that a node is dead, or that this node still holds a lease, must not.
    pub async fn latest_node(&self, key: &str) -> Result<Option<Latest>, ClusterError> {
        latest(&self.nodes_stream, &self.names.nodes, key).await
    }

    /// The shops bucket's stream (feed reads, the ERP's consumer).
    pub fn shops_stream(&self) -> &jetstream::stream::Stream {
        &self.shops_stream
    }

    /// Read `key` of the shops bucket from the stream leader.
    pub async fn latest_shop_key(&self, key: &str) -> Result<Option<Latest>, ClusterError> {
        latest(&self.shops_stream, &self.names.shops, key).await
    }
}

async fn latest(stream: &jetstream::stream::Stream, bucket: &str, key: &str) -> Result<Option<Latest>, ClusterError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(&format!("$KV.{bucket}.{key}")).await {
        Ok(msg) => {
            let op = msg.headers.get("KV-Operation").map(|v| v.as_str().to_string());
            let deleted = matches!(op.as_deref(), Some("DEL") | Some("PURGE"));
            Ok(Some(Latest { revision: msg.sequence, value: (!deleted).then_some(msg.payload) }))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(ClusterError::nats(e)),
    }
}

/// Connect with the configured credentials and TLS, create (or open) the buckets with
/// `replicas` copies, and check the durability berth requires.
pub async fn connect(config: &ClusterConfig) -> Result<Connection, ClusterError> {
    config.validate().map_err(ClusterError::Durability)?;
    let urls = config.nats.join(", ");
    let connect_err = |reason: String| ClusterError::Connect { urls: urls.clone(), reason };
    let mut options = match &config.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| connect_err(format!("reading creds_file {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let options = options
        .name(format!("berth/{}", config.node))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        // A server restarting must not end the node: the client reconnects for ever and
        // the lease logic stops this node's shops if it is cut off for too long.
        .max_reconnects(None);
    let addrs: Vec<async_nats::ServerAddr> =
        config.nats.iter().map(|u| u.parse()).collect::<Result<_, _>>().map_err(|e| connect_err(format!("{e}")))?;
    let client = options.connect(addrs).await.map_err(|e| connect_err(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let names = BucketNames::new(&config.prefix);
    // The buckets, and their streams: the handles for leader reads.
    let (nodes, nodes_stream) = bucket_retrying(&js, config.replicas, &names.nodes, config.lease_ttl(), 1).await?;
    let (shops, shops_stream) = bucket_retrying(&js, config.replicas, &names.shops, Duration::ZERO, 1).await?;
    let conn = Connection { client, js, nodes, shops, names, replicas: config.replicas, node: config.node.clone(), nodes_stream, shops_stream };
    check_durability(&conn, config).await?;
    Ok(conn)
}

/// Why opening a bucket failed: worth another try (a request timed out while the
/// cluster elects a leader, a server restarts) or not (the bucket has the wrong shape).
pub(crate) enum Open {
    Retry(ClusterError),
    Fatal(ClusterError),
}

/// Run `open` until it succeeds, fails for good, or 30 s of failures that may pass.
pub(crate) async fn retrying<T, F, Fut>(name: &str, mut open: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Open>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(Open::Fatal(e)) => return Err(e),
            Err(Open::Retry(e)) if std::time::Instant::now() >= deadline => return Err(e),
            Err(Open::Retry(e)) => {
                tracing::warn!(bucket = name, error = %e, "opening a cluster bucket failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// [`bucket`], tried again for up to 30 s while the failure may pass.
pub(crate) async fn bucket_retrying(
    js: &jetstream::Context,
    replicas: usize,
    name: &str,
    max_age: Duration,
    history: i64,
) -> Result<(kv::Store, jetstream::stream::Stream), ClusterError> {
    retrying(name, || bucket(js, replicas, name, max_age, history)).await
}

/// Open `name`, creating it when absent, with its stream; an existing bucket with fewer
/// copies than configured is an error (growing it is an operator's decision: `nats kv
/// edit`).
async fn bucket(js: &jetstream::Context, replicas: usize, name: &str, max_age: Duration, history: i64) -> Result<(kv::Store, jetstream::stream::Stream), Open> {
    let err = |reason: String| Open::Retry(ClusterError::Bucket { bucket: name.to_string(), reason });
    let fatal = |reason: String| Open::Fatal(ClusterError::Bucket { bucket: name.to_string(), reason });
    let store = match js.get_key_value(name).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.to_string(),
                history,
                max_age,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                let hint = if e.to_string().contains("insufficient resources") {
                    " (a cluster needs at least as many JetStream servers as replicas, each with room)"
                } else {
                    ""
                };
                err(format!("cannot create it with {replicas} replicas: {e}{hint}"))
            })?,
    };
    let mut stream = js.get_stream(format!("KV_{name}")).await.map_err(|e| err(e.to_string()))?;
    let info = stream.info().await.map_err(|e| err(e.to_string()))?;
    if info.config.num_replicas < replicas {
        return Err(fatal(format!(
            "has {} replica(s) and [cluster] replicas = {}: raise it (`nats stream edit KV_{name} --replicas {}`) or lower the setting",
            info.config.num_replicas, replicas, replicas
        )));
    }
    if info.config.storage != StorageType::File {
        return Err(fatal("is kept in memory; berth's state must be on disk: recreate it with file storage".into()));
    }
    // A page of orders and the position after it are written as one atomic batch
    // (nats-server 2.12+); KV buckets are created without it.
    if !info.config.allow_atomic_publish {
        let mut config = info.config.clone();
        config.allow_atomic_publish = true;
        // Several nodes starting at once all try this; a timeout while the cluster
        // applies another's change is worth another try.
        let updated = js.update_stream(config).await.map_err(|e| err(format!("cannot allow atomic batches on it: {e}")))?;
        if !updated.config.allow_atomic_publish {
            return Err(fatal("the server does not keep `allow_atomic` on it: berth needs nats-server 2.12 or later".into()));
        }
        // The change moves the stream's Raft group; writes right after it can find no
        // leader ("no responders"). Wait until one answers for the stream again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let leader = stream.info().await.ok().and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()));
            // A single copy on a lone server has no Raft group to wait for.
            if leader.is_some() || replicas == 1 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(err("no leader answers for it after allowing atomic batches".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((store, stream))
}

/// The servers holding berth's buckets, by server name.
async fn bucket_servers(conn: &Connection) -> Result<BTreeSet<String>, ClusterError> {
    let mut servers = BTreeSet::new();
    for stream in [&conn.nodes_stream, &conn.shops_stream] {
        // Fresh info (the handle caches what it was opened with): leaders move.
        let info = stream.clone().info().await.map_err(ClusterError::nats)?.clone();
        if let Some(cluster) = &info.cluster {
            servers.extend(cluster.leader.iter().cloned());
            servers.extend(cluster.replicas.iter().map(|p| p.name.clone()));
        }
    }
    Ok(servers)
}

/// `sync-always`: every server that holds a copy of berth's buckets must say, on its
/// monitoring endpoint, that it syncs each write (`jetstream.config.sync_always`).
/// `replicated`: the buckets' copies are all the durability there is; their count was
/// checked when they were opened.
async fn check_durability(conn: &Connection, config: &ClusterConfig) -> Result<(), ClusterError> {
    if config.durability == Durability::Replicated {
        tracing::warn!(replicas = config.replicas, "[cluster] durability = \"replicated\": an acknowledged write is kept by a majority of replicas, not necessarily on disk");
        return Ok(());
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(ClusterError::nats)?;
    let mut synced = BTreeSet::new();
    let mut unreachable = Vec::new();
    for url in &config.monitor {
        let varz = format!("{}/varz", url.trim_end_matches('/'));
        let body = match http.get(&varz).send().await.and_then(|r| r.error_for_status()) {
            Ok(r) => r.bytes().await.map_err(|e| ClusterError::Durability(format!("reading {varz}: {e}")))?,
            // A server that is down cannot be asked; the others may still prove a majority.
            Err(e) => {
                tracing::warn!(url = %varz, error = %e, "cannot read a NATS server's monitoring endpoint; checking the others");
                unreachable.push(url.clone());
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ClusterError::Durability(format!("{varz} is not a NATS /varz answer: {e}")))?;
        let name = v["server_name"].as_str().unwrap_or("?").to_string();
        let js = &v["jetstream"]["config"];
        if js.is_null() {
            return Err(ClusterError::Durability(format!("server {name} ({url}) runs without JetStream")));
        }
        if js["sync_always"].as_bool() != Some(true) {
            let every = js["sync_interval"].as_u64().map(|ns| format!("every {} s", ns / 1_000_000_000)).unwrap_or_else(|| "on a timer".into());
            return Err(ClusterError::Durability(format!(
                "server {name} ({url}) acknowledges writes before they are on disk (it syncs {every}): set `jetstream {{ sync_interval: always }}` \
                 on every server and restart them one by one, or set [cluster] durability = \"replicated\" to rely on {} replicas instead",
                config.replicas
            )));
        }
        synced.insert(name);
    }
    let holders = retrying("berth's buckets", || async { bucket_servers(conn).await.map_err(Open::Retry) }).await?;
    let unchecked: Vec<&String> = holders.iter().filter(|s| !synced.contains(*s)).collect();
    if unreachable.is_empty() && !unchecked.is_empty() {
        return Err(ClusterError::Durability(format!(
            "berth's buckets have copies on {unchecked:?}, whose monitoring endpoints are not in [cluster] monitor, so their sync setting \
             is unknown: list every server's monitoring URL"
        )));
    }
    // With a server down, start if a majority of the copies is on servers seen syncing.
    let checked = holders.iter().filter(|s| synced.contains(*s)).count();
    if checked * 2 <= holders.len().max(config.replicas) {
        return Err(ClusterError::Durability(format!(
            "only {checked} of the servers holding berth's buckets ({holders:?}) could be checked for sync_interval: always \
             (unreachable: {unreachable:?}); a majority must be: bring the servers back or fix [cluster] monitor"
        )));
    }
    tracing::info!(servers = ?synced, replicas = config.replicas, "NATS cluster checked: every server holding berth's state syncs each write");
    Ok(())
}

/// How long a step keeps trying through what a cluster answers while it settles (a
/// bucket created a moment ago on another server: "no stream found", no responders, a
/// timeout) before the caller is told.
const SETTLING: Duration = Duration::from_secs(10);

/// Run `op` again while it fails the way a settling cluster fails, for up to
/// [`SETTLING`]. Only for steps that are safe to repeat (reads, creating a consumer,
/// puts of content-addressed or write-once records).
pub async fn patiently<T, E, F, Fut>(what: &str, mut op: F) -> Result<T, ClusterError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let until = std::time::Instant::now() + SETTLING;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let why = e.to_string();
                let settling = ["no stream found", "no responders", "timed out", "timeout"].iter().any(|s| why.contains(s));
                if !settling || std::time::Instant::now() >= until {
                    return Err(ClusterError::Nats(why));
                }
                tracing::warn!(what, error = %why, "the cluster did not take this yet; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
