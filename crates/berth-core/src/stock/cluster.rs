//! The stock ledger in cluster mode: one key per shop + SKU in the cluster's shops
//! bucket (`stock.<shop>.<hex of the SKU>`: hex keeps SKU order and any SKU's bytes
//! subject-safe), read from this node's [`Mirror`], changed by compare-and-set.
//!
//! Any node takes the ERP's stock posts (replay, purge and exports too): a change is
//! decided on this node's copy and written with the revisions it was decided on, so two
//! nodes changing one SKU at once cannot both land on the same record — the loser reads
//! the leader's values and decides again. Push results are written only by the shop's
//! owner, fenced by its lease, so a node that lost the shop while paused cannot settle
//! a push the new owner has superseded.
//!
//! Versions only have to grow per SKU (a push result settles the record only when its
//! version is still the record's): each change numbers from above both this node's
//! counter and the newest version among the SKUs it read.

use super::ledger::{lock, Counts, Working};
use super::{SkuStock, StockError};
use berth_cluster::lease::FenceSource;
use berth_cluster::mirror::{read_latest, write_cas, Codec, Json, Mirror};
use berth_cluster::{ClusterError, Connection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// SKUs one change may touch: one atomic batch (the server takes 1,000 writes; a fenced
/// batch may need one more for its fence).
pub const MAX_SKUS_PER_CHANGE: usize = 999;

/// How often a change is decided again after losing a compare-and-set race before the
/// caller is told to retry.
const ATTEMPTS: u32 = 30;

/// How long a change keeps trying through the cluster's transient failures before the
/// caller is told (the API answers 503 with `Retry-After`).
const TRANSIENT: Duration = Duration::from_secs(3);

/// Who may make a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Any node (the ERP's posts and ops' actions): compare-and-set only.
    Anyone,
    /// Only the shop's lease holder (push results): fenced as well.
    Owner,
}

/// Stored SKU records: JSON, an empty value for a purged SKU.
pub type SkuCodec = Json<SkuStock>;

pub fn shop_prefix(shop: &str) -> String {
    format!("stock.{shop}.")
}

pub fn sku_key(shop: &str, sku: &str) -> String {
    format!("stock.{shop}.{}", hex::encode(sku))
}

/// Told the shop of every change that reaches this node's copy (its own and other
/// nodes'): the shop's pusher, if it runs here, has work.
pub type ChangeHook = Arc<std::sync::RwLock<Option<Arc<dyn Fn(&str) + Send + Sync>>>>;

pub struct ClusterStock {
    conn: Connection,
    hook: ChangeHook,
    mirror: Mirror<SkuCodec>,
    fences: Arc<dyn FenceSource>,
    next_version: AtomicU64,
    /// Changes decided again after a lost compare-and-set (a gauge of contention).
    retries: AtomicU64,
}

impl ClusterStock {
    pub(super) async fn open(conn: &Connection, counts: Counts, fences: Arc<dyn FenceSource>) -> Result<ClusterStock, StockError> {
        let hook: ChangeHook = Arc::default();
        let told = hook.clone();
        let on_change = Box::new(move |key: &str, old: Option<&SkuStock>, new: Option<&SkuStock>| {
            let Some(shop) = key.split('.').nth(1) else { return };
            {
                let mut all = lock(&counts);
                let shop_counts = all.entry(shop.to_string()).or_default();
                if let Some(o) = old {
                    shop_counts.count(o, false);
                }
                if let Some(n) = new {
                    shop_counts.count(n, true);
                }
            }
            let hook = told.read().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(hook) = hook {
                hook(shop);
            }
        });
        let mirror = Mirror::<SkuCodec>::open(conn, "stock.", on_change).await?;
        let mut newest = 0;
        mirror.walk("stock.", "stock.", |_, rec| {
            newest = newest.max(rec.version);
            true
        });
        Ok(ClusterStock { conn: conn.clone(), hook, mirror, fences, next_version: AtomicU64::new(newest + 1), retries: AtomicU64::new(0) })
    }

    pub(super) fn get(&self, shop: &str, sku: &str) -> Option<SkuStock> {
        self.mirror.get(&sku_key(shop, sku)).record
    }

    /// The shop's records in SKU order, after `after` if given, while `take` says so.
    pub(super) fn walk(&self, shop: &str, after: Option<&str>, mut take: impl FnMut(&SkuStock) -> bool) {
        let within = shop_prefix(shop);
        let from = after.map_or_else(|| within.clone(), |a| sku_key(shop, a));
        let skip = after.map(|a| sku_key(shop, a));
        self.mirror.walk(&within, &from, |key, rec| skip.as_deref() == Some(key) || take(rec));
    }

    /// Call `hook` with the shop of every change reaching this node's copy.
    pub fn on_change(&self, hook: Arc<dyn Fn(&str) + Send + Sync>) {
        *self.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Bring this node's copy of `shop`'s records up to the stream leader's: read every
    /// SKU the copy has from the leader and take what is newer. A node that has just
    /// taken a shop's lease calls it before the shop's pusher runs: its copy follows the
    /// stream a moment behind, and the previous owner's last push results may not have
    /// reached it — pushing a quantity the copy still shows as due, after the previous
    /// owner pushed a newer one, would set the platform back. (A SKU the copy does not
    /// have yet is pushed once it arrives: nothing older can be pushed for it.)
    pub async fn catch_up_shop(&self, shop: &str) -> Result<usize, StockError> {
        let within = shop_prefix(shop);
        let mut keys = Vec::new();
        self.mirror.walk(&within, &within, |key, _| {
            keys.push(key.to_string());
            true
        });
        let mut newer = 0;
        for chunk in keys.chunks(256) {
            let latest = read_latest(&self.conn, chunk).await?;
            let written: Vec<(String, u64, Option<SkuStock>)> = chunk
                .iter()
                .zip(latest)
                .filter(|(key, (revision, _))| *revision > self.mirror.get(key).revision)
                .filter_map(|(key, (revision, bytes))| {
                    let record = SkuCodec::decode(key, bytes.as_deref().unwrap_or_default()).ok()?;
                    Some((key.clone(), revision, record))
                })
                .collect();
            newer += written.len();
            self.mirror.applied_writes(&written);
        }
        Ok(newer)
    }

    /// This node's copy of the records (tests wait for it to catch up).
    pub fn mirror(&self) -> &Mirror<SkuCodec> {
        &self.mirror
    }

    /// Changes decided again because another node changed a SKU first.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Read–decide–write by compare-and-set: the first decision on this node's copy,
    /// any further one on the leader's values after a lost race.
    pub(super) async fn change<R: Send>(
        &self,
        shop: &str,
        by: Writer,
        mut skus: Vec<String>,
        decide: impl Fn(&mut Working, &dyn Fn() -> u64) -> R + Send + Sync,
    ) -> Result<R, StockError> {
        let mut seen = std::collections::HashSet::new();
        skus.retain(|s| seen.insert(s.clone()));
        if skus.len() > MAX_SKUS_PER_CHANGE {
            return Err(StockError::TooManySkus { count: skus.len(), max: MAX_SKUS_PER_CHANGE });
        }
        let fence = match by {
            Writer::Anyone => None,
            Writer::Owner => Some(self.fences.fence(shop).ok_or_else(|| StockError::NotOwner { shop: shop.to_string() })?),
        };
        let keys: Vec<String> = skus.iter().map(|s| sku_key(shop, s)).collect();
        let mut current: Vec<(u64, Option<SkuStock>)> = keys.iter().map(|k| self.mirror.get(k)).map(|h| (h.revision, h.record)).collect();
        let mut from_copy = true;
        let mut attempt = 0;
        let started = std::time::Instant::now();
        loop {
            attempt += 1;
            let mut work: Working = skus.iter().cloned().zip(current.iter().map(|c| c.1.clone())).collect();
            let floor = current.iter().filter_map(|c| c.1.as_ref()).map(|r| r.version + 1).max().unwrap_or(0);
            let from = self.next_version.load(Ordering::SeqCst).max(floor);
            let taken = AtomicU64::new(from);
            let out = decide(&mut work, &|| taken.fetch_add(1, Ordering::SeqCst));
            self.next_version.fetch_max(taken.load(Ordering::SeqCst), Ordering::SeqCst);
            let mut changed = Vec::new();
            for (i, sku) in skus.iter().enumerate() {
                let new = work.remove(sku).flatten();
                if new != current[i].1 {
                    changed.push((keys[i].clone(), current[i].0, new));
                }
            }
            // A SKU the decision leaves alone is not covered by a compare-and-set: that
            // "nothing to do" (same quantity, a stale sequence) must hold for the
            // leader's value, not only for this node's copy, or a post could be lost
            // to a newer one made elsewhere a moment before.
            if from_copy && changed.len() < skus.len() {
                from_copy = false;
                let latest = self.latest(&keys).await?;
                if latest.iter().zip(&current).any(|(l, c)| l.0 != c.0) {
                    current = latest;
                    continue;
                }
            }
            if changed.is_empty() {
                return Ok(out);
            }
            let writes = changed.iter().map(|(k, rev, rec)| (k.clone(), SkuCodec::encode(rec.as_ref()), *rev)).collect();
            match write_cas(&self.conn, fence.as_ref(), writes).await {
                Ok(revisions) => {
                    let applied: Vec<_> = changed.into_iter().zip(revisions).map(|((k, _, rec), rev)| (k, rev, rec)).collect();
                    self.mirror.applied_writes(&applied);
                    return Ok(out);
                }
                Err(ClusterError::Conflict(_)) if attempt < ATTEMPTS => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % (u64::from(attempt) * 2).min(50))).await;
                    from_copy = false;
                    current = self.latest(&keys).await?;
                }
                // No stream answered (a leader moving, interest not yet spread to this
                // client's server) or the request timed out: nothing, or the whole
                // batch, landed. Read again and decide again, for a few seconds.
                Err(ClusterError::Nats(why)) if attempt < ATTEMPTS && started.elapsed() < TRANSIENT => {
                    tracing::debug!(shop, why, "stock change not taken by the cluster; trying again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(10)))).await;
                    from_copy = false;
                    current = self.latest(&keys).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The SKUs' records from the stream leader, also put in this node's copy (a node
    /// that decided on them reads them back, even when it wrote nothing).
    async fn latest(&self, keys: &[String]) -> Result<Vec<(u64, Option<SkuStock>)>, StockError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut seen = Vec::with_capacity(keys.len());
        let started = std::time::Instant::now();
        let read = loop {
            match read_latest(&self.conn, keys).await {
                Err(ClusterError::Nats(why)) if started.elapsed() < TRANSIENT => {
                    tracing::debug!(why, "reading stock records from the cluster; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        for ((revision, bytes), key) in read.into_iter().zip(keys) {
            let rec = bytes.map(|b| SkuCodec::decode(key, &b)).transpose().map_err(|why| StockError::Corrupt { key: key.clone(), why })?.flatten();
            if revision > 0 {
                seen.push((key.clone(), revision, rec.clone()));
            }
            out.push((revision, rec));
        }
        self.mirror.applied_writes(&seen);
        Ok(out)
    }
}
