//! Which node runs which shop: heartbeats, rendezvous assignment and per-shop leases.
//!
//! A node is alive while its key in the nodes bucket exists: it re-writes the key every
//! quarter of `lease_ttl`, and the bucket's `max_age` (= `lease_ttl`) drops a key that
//! was not re-written in time. Every node computes the wanted owner of each shop from the
//! live nodes alone ([`crate::rendezvous`]). A shop's lease is its `owner.<shop>` key in
//! the shops bucket, taken and given up only by compare-and-set on the key's revision:
//! a node claims a shop it is wanted for when the key is absent, released, or names a
//! node that is no longer alive; a node that is no longer wanted stops the shop's
//! workers, then releases the key. The revision at which a node took the lease is the
//! shop's fence ([`Fence`]): every durable write of its workers carries it, and the
//! stream refuses the write once anyone else has taken the lease ([`crate::fenced`]).
//! A round reads the leases from this node's watched copy of the `owner.*` keys, not
//! from the stream leader one shop at a time: a stale copy only loses a compare-and-set.
//!
//! A node cut off from the cluster (a partition, SIGSTOP, a long pause) stops its own
//! shops once its last acknowledged heartbeat is older than `lease_ttl` less a margin,
//! counted from when that heartbeat was sent — before the others can see its key
//! expire. A paused process that wakes and gets a heartbeat through before its loop
//! runs stops every shop all the same (the heartbeat came after the deadline), then
//! claims again those still leased to it, with new fences. Writes already in flight
//! when it wakes are refused by the fence; [`Leases::fresh`] tells a worker, before a
//! platform call, whether its leases are sound right now.

use crate::connect::Connection;
use crate::error::ClusterError;
use crate::rendezvous;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The proof a node holds a shop's lease: the revision of `owner.<shop>` it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub shop: String,
    pub revision: u64,
}

/// Where a shop's workers find the fence their durable writes carry.
pub trait FenceSource: Send + Sync + 'static {
    /// This node's fence for `shop`; `None` when it does not hold the shop's lease.
    fn fence(&self, shop: &str) -> Option<Fence>;
}

impl FenceSource for Leases {
    fn fence(&self, shop: &str) -> Option<Fence> {
        Leases::fence(self, shop)
    }
}

/// A live node as it describes itself in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub node: String,
    pub started_ms: i64,
    /// Shops it runs, as of its last heartbeat.
    pub shops: usize,
}

/// The value of `owner.<shop>`: who holds the lease (None: released, free to claim).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnerRecord {
    pub node: Option<String>,
    pub since_ms: i64,
}

/// What the lease loop starts and stops: a shop's sync worker and stock pusher.
pub trait ShopWorkers: Send + Sync + 'static {
    /// This node now holds `fence.shop`'s lease: start its workers, writing under `fence`.
    fn start(&self, fence: Fence) -> impl Future<Output = ()> + Send;
    /// This node no longer holds (or is giving up) `shop`: return once nothing of the
    /// shop runs here any more.
    fn stop(&self, shop: &str) -> impl Future<Output = ()> + Send;
}

/// A shop this node runs, for `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeldLease {
    pub shop: String,
    pub revision: u64,
}

/// This node's view, for `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LeaseView {
    pub node: String,
    pub live_nodes: Vec<NodeRecord>,
    pub held: Vec<HeldLease>,
    /// Milliseconds since this node's last acknowledged heartbeat was sent.
    pub heartbeat_age_ms: Option<u64>,
    /// True while this node is cut off and has stopped its shops.
    pub fenced_off: bool,
    /// How long this node's last lease round took (reading the live nodes, checking
    /// its leases, claiming): a round slower than the tick delays handovers.
    pub last_round_ms: Option<u64>,
}

/// Claims and releases a node has in flight at once.
const CLAIMS_IN_FLIGHT: usize = 32;

pub fn owner_key(shop: &str) -> String {
    format!("owner.{shop}")
}

/// The leases as this node's copy holds them (`owner.*`, kept by a watch): a round reads
/// them there instead of asking the stream leader once per shop. Every claim and release
/// is a compare-and-set on the revision read, so a stale copy can only lose a race, and
/// this node's own writes go into the copy at once.
struct OwnerCodec;

impl crate::mirror::Codec for OwnerCodec {
    type Record = OwnerRecord;

    fn decode(_key: &str, bytes: &[u8]) -> Result<Option<OwnerRecord>, String> {
        serde_json::from_slice(bytes).map(Some).map_err(|e| e.to_string())
    }

    fn encode(record: Option<&OwnerRecord>) -> bytes::Bytes {
        record.map(json).unwrap_or_default()
    }
}

type Owners = crate::mirror::Mirror<OwnerCodec>;

/// The lease loop of one node.
pub struct Leases {
    conn: Connection,
    node: String,
    ttl: Duration,
    started_ms: i64,
    shops: watch::Receiver<BTreeSet<String>>,
    held: Mutex<BTreeMap<String, u64>>,
    /// Leases this node stopped running but could not free yet (the release write
    /// failed): retried every round, or the shop would wait for a holder that is alive
    /// and no longer wants it.
    releasing: Mutex<BTreeMap<String, u64>>,
    /// This node's last acknowledged heartbeat, and whether it came after the node had
    /// already passed the point where it must give its shops up.
    beat: Mutex<Beat>,
    /// How long before its key can expire a node gives its shops up.
    margin: Duration,
    /// Rounds since the last sweep for leases naming this node that it does not run.
    rounds: std::sync::atomic::AtomicU32,
    view: Mutex<LeaseView>,
    wake: Notify,
    /// The watched copy of the leases, once the loop has loaded it.
    copy: std::sync::OnceLock<Arc<Owners>>,
}

impl Leases {
    /// `shops`: every shop the cluster serves (from config; a reload sends a new set).
    pub fn new(conn: Connection, node: String, ttl: Duration, shops: watch::Receiver<BTreeSet<String>>) -> Arc<Leases> {
        Arc::new(Leases {
            conn,
            view: Mutex::new(LeaseView { node: node.clone(), ..Default::default() }),
            node,
            ttl,
            started_ms: berth_types::clock::now_ms(),
            shops,
            held: Mutex::new(BTreeMap::new()),
            releasing: Mutex::new(BTreeMap::new()),
            rounds: std::sync::atomic::AtomicU32::new(0),
            beat: Mutex::new(Beat::default()),
            // Margin for the clock-rate difference between this node and the servers,
            // and for a stop that takes a moment.
            margin: (ttl / 5).max(Duration::from_millis(500)),
            wake: Notify::new(),
            copy: std::sync::OnceLock::new(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The fence this node holds for `shop`, if it holds the lease.
    pub fn fence(&self, shop: &str) -> Option<Fence> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(shop).map(|r| Fence { shop: shop.to_string(), revision: *r })
    }

    /// Whether this node's leases are sound right now: its last heartbeat is recent
    /// enough that no other node can have taken its shops. A worker asks before each
    /// call that changes a platform (fencing covers durable writes, not HTTP calls).
    pub fn fresh(&self) -> bool {
        let beat = self.beat.lock().unwrap_or_else(|p| p.into_inner());
        !beat.lapsed && beat.last_ack.is_some_and(|t| t + self.ttl > Instant::now() + self.margin)
    }

    /// Every shop's lease holder as this node's copy has it (`None`: released); empty
    /// until the loop has loaded the copy.
    pub fn owners(&self) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        if let Some(copy) = self.copy.get() {
            copy.walk("owner.", "owner.", |key, rec| {
                out.insert(key.trim_start_matches("owner.").to_string(), rec.node.clone());
                true
            });
        }
        out
    }

    /// Whether this node is the one, among the live nodes of its last round, that does
    /// the cluster-wide duty `duty` (e.g. raising the cluster's own alerts): every node
    /// computes the same answer from the same node list (rendezvous), so the duty is done
    /// once — by at most two nodes for a moment while the membership changes, by none
    /// while this node is cut off.
    pub fn leads(&self, duty: &str) -> bool {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        !view.fenced_off && crate::rendezvous::owner(duty, view.live_nodes.iter().map(|n| n.node.as_str())) == Some(self.node.as_str())
    }

    pub fn view(&self) -> LeaseView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Run until `shutdown` turns true, then hand every held shop over at once (stop its
    /// workers, release its lease) and leave the cluster.
    pub async fn run<W: ShopWorkers>(self: Arc<Self>, workers: Arc<W>, mut shutdown: watch::Receiver<bool>) {
        let tick = (self.ttl / 4).max(Duration::from_millis(250));
        // Heartbeats run on their own, so a slow rebalance never lets this node's key
        // expire. Both tasks end with this future, however it ends (a dropped or aborted
        // node must stop heartbeating, or the others would never take its shops).
        let _beats = AbortOnDrop(tokio::spawn(self.clone().heartbeat(tick)));
        let me = self.clone();
        let _waker = AbortOnDrop(tokio::spawn(async move { me.wake_on_changes().await }));
        let mut shops = self.shops.clone();
        let owners = loop {
            match Owners::open(&self.conn, "owner.", Box::new(|_, _, _| {})).await {
                Ok(owners) => break Arc::new(owners),
                Err(e) => tracing::warn!(node = %self.node, error = %e, "cannot read the cluster's leases yet; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        };
        let _ = self.copy.set(owners.clone());
        // The moment this node must have stopped its shops unless a heartbeat lands.
        let deadline = || self.beat.lock().unwrap_or_else(|p| p.into_inner()).last_ack.map(|t| t + self.ttl - self.margin);
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Cut off: past the deadline, or a heartbeat landed only after it (this
            // process was paused): the others may have taken the shops meanwhile, so
            // every one stops before anything else; those still leased here are
            // claimed again with new fences.
            let lapsed = self.beat.lock().unwrap_or_else(|p| p.into_inner()).lapsed;
            let cut_off = lapsed || deadline().is_none_or(|d| Instant::now() >= d);
            if cut_off {
                self.give_up_all(&*workers, &owners, false).await;
                if lapsed {
                    self.beat.lock().unwrap_or_else(|p| p.into_inner()).lapsed = false;
                }
            } else {
                let budget = deadline().map_or(tick, |d| d.saturating_duration_since(Instant::now()));
                let round = Instant::now();
                let outcome = tokio::time::timeout(budget, self.balance(&*workers, &owners)).await;
                self.view.lock().unwrap_or_else(|p| p.into_inner()).last_round_ms = Some(round.elapsed().as_millis() as u64);
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(node = %self.node, error = %e, "cluster rebalance failed; retrying next tick"),
                    Err(_) => tracing::warn!(node = %self.node, "cluster rebalance unanswered; retrying next tick"),
                }
            }
            let acked = self.beat.lock().unwrap_or_else(|p| p.into_inner()).last_ack;
            self.update_view(acked, cut_off);
            let nap = deadline().map_or(tick, |d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(20))).min(tick);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.wake.notified() => {}
                _ = shops.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
        drop((_beats, _waker));
        self.give_up_all(&*workers, &owners, true).await;
        if let Err(e) = self.conn.nodes.delete(&self.node).await {
            tracing::warn!(node = %self.node, error = %e, "leaving the cluster: could not remove the heartbeat; the others take over when it expires");
        }
        tracing::info!(node = %self.node, "left the cluster; shops handed over");
    }

    /// Re-write this node's key every `tick`; `last_ack` is when the newest
    /// acknowledged write was sent (the server's expiry counts from later than that).
    async fn heartbeat(self: Arc<Self>, tick: Duration) {
        loop {
            let sent = Instant::now();
            let record = NodeRecord { node: self.node.clone(), started_ms: self.started_ms, shops: self.held_count() };
            match tokio::time::timeout(tick, self.conn.nodes.put(&self.node, json(&record))).await {
                Ok(Ok(_)) => {
                    let mut beat = self.beat.lock().unwrap_or_else(|p| p.into_inner());
                    let first = beat.last_ack.is_none();
                    if beat.last_ack.is_some_and(|t| t + self.ttl <= Instant::now() + self.margin) {
                        beat.lapsed = true;
                    }
                    beat.last_ack = Some(sent);
                    drop(beat);
                    if first {
                        self.wake.notify_one();
                    }
                }
                Ok(Err(e)) => tracing::warn!(node = %self.node, error = %e, "cluster heartbeat failed"),
                Err(_) => tracing::warn!(node = %self.node, "cluster heartbeat unanswered"),
            }
            tokio::time::sleep(tick.saturating_sub(sent.elapsed())).await;
        }
    }

    fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Wake the loop when a node joins or leaves, or a lease is released, so handovers
    /// happen at once rather than on the next tick.
    async fn wake_on_changes(&self) {
        loop {
            let nodes = self.conn.nodes.watch_all().await;
            let owners = self.conn.shops.watch("owner.>").await;
            match (nodes, owners) {
                (Ok(nodes), Ok(owners)) => {
                    let mut both = futures_util::stream::select(nodes.map(|_| ()), owners.map(|_| ()));
                    while both.next().await.is_some() {
                        self.wake.notify_one();
                    }
                }
                (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "cluster watch failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn live_nodes(&self) -> Result<BTreeMap<String, NodeRecord>, ClusterError> {
        let mut keys = self.conn.nodes.keys().await.map_err(ClusterError::nats)?;
        let mut live = BTreeMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(ClusterError::nats)?;
            if let Some(value) = self.conn.nodes.get(&key).await.map_err(ClusterError::nats)? {
                if let Ok(record) = serde_json::from_slice::<NodeRecord>(&value) {
                    live.insert(key, record);
                }
            }
        }
        Ok(live)
    }

    async fn balance<W: ShopWorkers>(&self, workers: &W, owners: &Owners) -> Result<(), ClusterError> {
        let live = self.live_nodes().await?;
        self.view.lock().unwrap_or_else(|p| p.into_inner()).live_nodes = live.values().cloned().collect();
        let shops = self.shops.borrow().clone();
        let held: BTreeMap<String, u64> = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let wanted = |shop: &str| rendezvous::owner(shop, live.keys().map(String::as_str)) == Some(self.node.as_str());

        // Leases this node holds: still ours? still wanted here?
        let mut to_free = Vec::new();
        for (shop, revision) in &held {
            if owners.get(&owner_key(shop)).revision != *revision {
                tracing::warn!(node = %self.node, shop = %shop, revision, "lease taken by another node; stopping the shop here");
                self.forget(shop);
                workers.stop(shop).await;
            } else if !shops.contains(shop) || !wanted(shop) {
                // Stopped here first; freed below, many at a time.
                self.forget(shop);
                workers.stop(shop).await;
                to_free.push((shop.clone(), *revision));
            }
        }
        self.free_all(owners, to_free).await;
        // On the first round and every 30th: leases that name this node but that it
        // does not run (an earlier process of this node died holding them, and it no
        // longer wants them) would wait for it for ever; free them.
        if self.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 30 == 0 {
            self.free_orphans(owners).await;
        }
        // Releases that failed before: free them now (a shop wanted here again is
        // simply claimed again below).
        let retry: Vec<(String, u64)> = self.releasing.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(s, r)| (s.clone(), *r)).collect();
        self.free_all(owners, retry).await;
        // Shops wanted here that this node does not hold (read again: the checks above
        // may have dropped some).
        let held: BTreeMap<String, u64> = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let wanted_here: Vec<String> = shops.iter().filter(|s| !held.contains_key(*s) && wanted(s)).cloned().collect();
        // Claimed many at a time: each claim is a synced write, and a node taking over
        // a thousand shops one after another would keep them waiting for seconds.
        let claims = futures_util::stream::iter(wanted_here)
            .map(|shop| {
                let live = &live;
                async move { self.claim(&shop, owners, live).await }
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (shop, revision) in claims.into_iter().flatten() {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(shop.clone(), revision);
            workers.start(Fence { shop, revision }).await;
        }
        Ok(())
    }

    /// Take `shop`'s lease if it is free, or its holder is gone; the new revision.
    async fn claim(&self, shop: &str, owners: &Owners, live: &BTreeMap<String, NodeRecord>) -> Option<(String, u64)> {
        let record = OwnerRecord { node: Some(self.node.clone()), since_ms: berth_types::clock::now_ms() };
        let current = owners.get(&owner_key(shop));
        let claimed = match current.revision {
            0 => self.conn.shops.create(owner_key(shop), json(&record)).await.map_err(ClusterError::nats),
            revision => {
                let holder = current.record.and_then(|r| r.node);
                if let Some(other) = holder.filter(|h| *h != self.node) {
                    // Taken from a node only once the leader has no heartbeat of it:
                    // a list of live nodes read a moment ago may already be stale.
                    let alive = match live.contains_key(&other) {
                        true => Ok(true),
                        false => self.conn.latest_node(&other).await.map(|l| l.is_some_and(|l| l.value.is_some())),
                    };
                    match alive {
                        // Alive: it releases the shop once it sees this node.
                        Ok(true) => return None,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(node = %self.node, shop, error = %e, "cannot tell whether the shop's holder is alive; next round");
                            return None;
                        }
                    }
                }
                self.conn.shops.update(owner_key(shop), json(&record), revision).await.map_err(ClusterError::nats)
            }
        };
        match claimed {
            Ok(revision) => {
                tracing::info!(node = %self.node, shop, revision, "took the shop's lease");
                owners.applied_writes(&[(owner_key(shop), revision, Some(record))]);
                Some((shop.to_string(), revision))
            }
            // Another node was faster; the next round sees who.
            Err(e) => {
                tracing::debug!(node = %self.node, shop, error = %e, "claim lost a race");
                None
            }
        }
    }

    fn forget(&self, shop: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(shop);
    }

    /// Free leases whose shops this node has stopped, many at a time.
    async fn free_all(&self, owners: &Owners, leases: Vec<(String, u64)>) {
        futures_util::stream::iter(leases).for_each_concurrent(CLAIMS_IN_FLIGHT, |(shop, revision)| async move { self.free(owners, &shop, revision).await }).await;
    }

    async fn free_orphans(&self, owners: &Owners) {
        let held: BTreeMap<String, u64> = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut orphans = Vec::new();
        owners.walk("owner.", "owner.", |key, record| {
            let shop = key.strip_prefix("owner.").unwrap_or(key);
            if record.node.as_deref() == Some(self.node.as_str()) && !held.contains_key(shop) {
                orphans.push(shop.to_string());
            }
            true
        });
        let orphans = orphans
            .into_iter()
            .map(|shop| {
                tracing::info!(node = %self.node, shop, "freeing a lease an earlier run of this node left");
                let revision = owners.get(&owner_key(&shop)).revision;
                (shop, revision)
            })
            .collect();
        self.free_all(owners, orphans).await;
    }

    /// Write `owner.<shop>` released, if it is still this node's lease at `revision`;
    /// remembered and tried again next round when the write fails.
    async fn free(&self, owners: &Owners, shop: &str, revision: u64) {
        let record = OwnerRecord { node: None, since_ms: berth_types::clock::now_ms() };
        let outcome = self.conn.shops.update(owner_key(shop), json(&record), revision).await;
        let mut releasing = self.releasing.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(written) => {
                owners.applied_writes(&[(owner_key(shop), written, Some(record))]);
                releasing.remove(shop);
                tracing::info!(node = %self.node, shop = %shop, "released the shop's lease");
            }
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                // Someone else wrote the lease since: it is not this node's to free.
                releasing.remove(shop);
            }
            Err(e) => {
                tracing::warn!(node = %self.node, shop = %shop, error = %e, "could not release the lease; trying again next round");
                releasing.insert(shop.to_string(), revision);
            }
        }
    }

    /// Stop every shop; `release` frees their leases too (a clean shutdown). Cut off
    /// from the cluster, a node only stops: it cannot write, and others will claim.
    async fn give_up_all<W: ShopWorkers>(&self, workers: &W, owners: &Owners, release: bool) {
        let held: Vec<(String, u64)> = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        if !held.is_empty() && !release {
            tracing::error!(node = %self.node, shops = held.len(), "cut off from the cluster for most of the lease: stopping every shop here");
        }
        for (shop, _) in &held {
            workers.stop(shop).await;
        }
        if release {
            // Every shop stopped first, then the leases freed, so the others take over
            // at once.
            self.free_all(owners, held).await;
        }
    }

    /// What this round leaves for `GET /v1/cluster` (the live nodes are set by the
    /// round's own read of them, in `balance`).
    fn update_view(&self, last_ack: Option<Instant>, cut_off: bool) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(s, r)| HeldLease { shop: s.clone(), revision: *r }).collect();
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.held = held;
        view.heartbeat_age_ms = last_ack.map(|t| t.elapsed().as_millis() as u64);
        view.fenced_off = cut_off;
    }
}

#[derive(Default)]
struct Beat {
    last_ack: Option<Instant>,
    lapsed: bool,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn json<T: Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}
