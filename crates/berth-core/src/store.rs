//! The durable order store, on the storage core's single writer.
//!
//! Pulled orders go into an append-only feed keyed by a sequence number, which the ERP
//! reads with `GET /v1/orders?after=SEQ`. A version of an order enters the feed once:
//! `latest` remembers per shop + order the newest updated time and a digest of the
//! normalized order at that time. A version is new when its updated time is newer, or
//! equal with different content — platforms stamp whole seconds, and paid → shipped
//! within one second must reach the ERP as two versions; an exact repeat (overlapping
//! windows, re-read pages) is a duplicate. A page's orders and the shop's sync position
//! are one operation of the writer's batch, so a crash can neither lose a page nor skip
//! past it, and the call returns once the batch is synced.
//!
//! Readers must never skip an entry: sequence numbers are given by the writer, one batch
//! after another, and `list` shows only entries up to the last synced sequence, so an ERP
//! never reads an order a crash could still take back. The feed's length is a counter
//! kept in the same batches (no scan).

use berth_types::clock::now_ms;
use berth_storage::store::Keyspace;
pub use berth_storage::StoreError;
use berth_storage::{Store, WriteCtx};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub mod cluster;

/// `orders_meta` keys: the feed's entry count and the next sequence number.
const FEED_LEN: &[u8] = b"feed_len";
const PROBE: &[u8] = b"probe";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderLineRecord {
    pub line_id: String,
    pub sku: String,
    pub title: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// A normalized order as the ERP receives it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderData {
    pub order_id: String,
    /// Stored and answered by its name: unpaid, paid, partially-shipped, shipped,
    /// delivered, completed, cancelled, refunded, other.
    pub status: berth_types::connector::OrderStatus,
    pub platform_status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub currency: String,
    pub total_minor: i64,
    pub lines: Vec<OrderLineRecord>,
    pub buyer_name_masked: String,
    pub buyer_phone_masked: String,
    /// The platform's own JSON for the order.
    pub raw: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderRecord {
    pub seq: u64,
    pub shop: String,
    pub platform: String,
    pub connector_version: String,
    pub received_at_ms: i64,
    pub order: OrderData,
}

/// Where a shop's order pull stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncState {
    /// End of the last fully read window.
    pub watermark_ms: Option<i64>,
    /// A window being read, with the connector's page cursor.
    pub current: Option<WindowProgress>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowProgress {
    pub start_ms: i64,
    pub end_ms: i64,
    pub cursor: Option<String>,
    /// Pages read in this window so far (see `sync.max_pages_per_window`).
    #[serde(default)]
    pub pages: u32,
}

#[derive(Debug, Default, PartialEq)]
pub struct PageOutcome {
    pub added: usize,
    pub duplicates: usize,
    /// Highest sequence number given to this page's orders.
    pub max_seq: Option<u64>,
}

/// Who delivered a page.
pub struct PageSource<'a> {
    pub shop: &'a str,
    pub platform: &'a str,
    pub connector_version: &'a str,
}

/// The order store on the embedded storage core.
pub struct EmbeddedOrders {
    store: Store,
    latest: Keyspace,
    feed: Keyspace,
    sync: Keyspace,
    meta: Keyspace,
    /// Highest sequence given (the writer's; visible in the store, maybe not yet synced).
    committed_seq: Arc<AtomicU64>,
    /// Highest sequence known to be on disk; readers see up to here.
    durable_seq: AtomicU64,
    /// Entries in the feed (kept with every batch that adds some).
    feed_len: Arc<AtomicU64>,
}

fn latest_key(shop: &str, order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(shop.len() + order_id.len() + 1);
    k.extend_from_slice(shop.as_bytes());
    k.push(0);
    k.extend_from_slice(order_id.as_bytes());
    k
}

/// Whether `order` is a version the stored latest one (`None`: never seen) is not: newer,
/// or as new with other content. (An entry stored before digests were kept has only the
/// time: a version as new as it is then a repeat, as it was judged then.)
fn is_newer(stored: Option<&[u8]>, updated_at_ms: i64, digest: &[u8; 32]) -> bool {
    let Some(v) = stored else { return true };
    let at = i64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
    updated_at_ms > at || (updated_at_ms == at && v.get(8..40).is_some_and(|d| d != digest))
}

/// The `latest` value of a version: its updated time, then its digest.
fn latest_value(updated_at_ms: i64, digest: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&updated_at_ms.to_be_bytes());
    v[8..].copy_from_slice(digest);
    v
}

impl OrderData {
    /// A digest of what a change of an order changes for the ERP: its normalized status,
    /// currency, total and lines (SKU, quantity, unit price). Not the platform's raw JSON
    /// (volatile fields would make every re-read a "change"), nor the fields one source
    /// has and another lacks (buyer fields, the platform's own status text, titles and
    /// line ids: a CSV import of the platform's export carries fewer than a pull), so a
    /// version read twice, by pull, webhook or import, is one version.
    pub fn version_digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let lines: Vec<(&str, u32, i64)> = self.lines.iter().map(|l| (l.sku.as_str(), l.quantity, l.unit_price_minor)).collect();
        let fields = serde_json::json!([self.order_id, self.status, self.currency, self.total_minor, lines]);
        Sha256::digest(fields.to_string().as_bytes()).into()
    }
}

impl EmbeddedOrders {
    /// A store of its own in `path` (tests and tools; berth shares one [`Store`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Store::open(path, berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() })?;
        Self::on(&store)
    }

    pub fn on(store: &Store) -> Result<Self, StoreError> {
        let feed = store.keyspace("orders_feed")?;
        let meta = store.keyspace("orders_meta")?;
        let last = match feed.last()? {
            Some((k, _)) => seq_of(&k)?,
            None => 0,
        };
        let feed_len = meta.get(FEED_LEN)?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
        Ok(EmbeddedOrders {
            store: store.clone(),
            latest: store.keyspace("orders_latest")?,
            sync: store.keyspace("sync_state")?,
            feed,
            meta,
            committed_seq: Arc::new(AtomicU64::new(last)),
            durable_seq: AtomicU64::new(last),
            feed_len: Arc::new(AtomicU64::new(feed_len)),
        })
    }

    /// The storage core this store writes through.
    pub fn storage(&self) -> &Store {
        &self.store
    }

    pub fn sync_state(&self, shop: &str) -> Result<SyncState, StoreError> {
        match self.sync.get(shop.as_bytes())? {
            None => Ok(SyncState::default()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("sync state of {shop}: {e}"))),
        }
    }

    /// Whether this version of an order is newer than any stored for the shop.
    pub fn is_new(&self, shop: &str, order: &OrderData) -> Result<bool, StoreError> {
        let stored = self.latest.get(&latest_key(shop, &order.order_id))?;
        Ok(is_newer(stored.as_deref(), order.updated_at_ms, &order.version_digest()))
    }

    /// Record a page of orders and the shop's new sync position atomically, durably.
    pub async fn commit_page(
        &self,
        src: &PageSource<'_>,
        orders: &[OrderData],
        next: &SyncState,
    ) -> Result<PageOutcome, StoreError> {
        self.write_orders(src, orders, Some(next)).await
    }

    /// Record orders a platform pushed (webhooks): the sync position stays as it is.
    pub async fn commit_pushed(&self, src: &PageSource<'_>, orders: &[OrderData]) -> Result<PageOutcome, StoreError> {
        self.write_orders(src, orders, None).await
    }

    async fn write_orders(
        &self,
        src: &PageSource<'_>,
        orders: &[OrderData],
        next: Option<&SyncState>,
    ) -> Result<PageOutcome, StoreError> {
        let received = now_ms();
        let state_json = next
            .map(|n| serde_json::to_vec(n).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?;
        // Serialized here, off the writer; the sequence number is the writer's to give.
        let staged: Vec<(Vec<u8>, [u8; 32], i64, OrderRecord)> = orders
            .iter()
            .map(|o| {
                let rec = src.record(o, received);
                (latest_key(src.shop, &o.order_id), o.version_digest(), o.updated_at_ms, rec)
            })
            .collect();
        let shop = src.shop.as_bytes().to_vec();
        let (latest, feed, sync, meta) = (self.latest.clone(), self.feed.clone(), self.sync.clone(), self.meta.clone());
        let (committed, feed_len) = (self.committed_seq.clone(), self.feed_len.clone());
        let outcome = self
            .store
            .write(move |ctx: &mut WriteCtx<'_>| {
                // Decide (reads through the batch: a page before this one in the batch counts).
                let mut fresh = vec![false; staged.len()];
                let mut seen: std::collections::HashMap<&[u8], (i64, [u8; 32])> = std::collections::HashMap::new();
                for (i, (key, digest, updated, _)) in staged.iter().enumerate() {
                    let stored = match seen.get(key.as_slice()) {
                        Some((at, d)) => Some(latest_value(*at, d).to_vec()),
                        None => ctx.get(&latest, key)?,
                    };
                    if is_newer(stored.as_deref(), *updated, digest) {
                        seen.insert(key, (*updated, *digest));
                        fresh[i] = true;
                    }
                }
                drop(seen);
                // Write (the records are moved, not copied, on the writer's thread).
                let mut outcome = PageOutcome { duplicates: fresh.iter().filter(|f| !**f).count(), ..PageOutcome::default() };
                let mut seq = committed.load(Ordering::SeqCst);
                for ((key, digest, updated, mut rec), _) in staged.into_iter().zip(fresh).filter(|(_, f)| *f) {
                    // Sequences start at 1 so `after=0` means "from the beginning".
                    seq += 1;
                    rec.seq = seq;
                    let bytes = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    ctx.insert(&feed, seq.to_be_bytes(), bytes);
                    ctx.insert(&latest, key, latest_value(updated, &digest));
                    outcome.added += 1;
                    outcome.max_seq = Some(seq);
                }
                if let Some(state) = &state_json {
                    ctx.insert(&sync, &shop, state);
                }
                if outcome.added > 0 {
                    committed.store(seq, Ordering::SeqCst);
                    let len = feed_len.fetch_add(outcome.added as u64, Ordering::SeqCst) + outcome.added as u64;
                    ctx.insert(&meta, FEED_LEN, len.to_be_bytes());
                }
                Ok::<_, StoreError>(outcome)
            })
            .await?;
        // Everything given a sequence before this batch was synced with it or before it.
        if let Some(seq) = outcome.max_seq {
            self.durable_seq.fetch_max(seq, Ordering::SeqCst);
        }
        Ok(outcome)
    }

    /// Walk feed entries after `after` as stored (each an [`OrderRecord`]'s JSON), oldest
    /// first, optionally for one shop, handing each to `each` until `limit` entries or
    /// `max_bytes` of them (at least one) — or `each` says stop. Returns where a reader
    /// goes on from: the last entry handed over, or the last one read when the feed
    /// ran out (entries of other shops need not be read again).
    pub fn scan(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
        shop: Option<&dyn Fn(&str) -> bool>,
        mut each: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            shop: std::borrow::Cow<'a, str>,
        }
        let durable = self.durable_seq.load(Ordering::SeqCst);
        if after >= durable {
            return Ok(after);
        }
        let (mut sent, mut bytes, mut next) = (0usize, 0usize, after);
        for item in self.feed.range(after.saturating_add(1).to_be_bytes()..=durable.to_be_bytes()) {
            let (k, v) = item?;
            let seq = seq_of(&k)?;
            if let Some(want) = shop {
                let head: Head<'_> = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("order feed entry {seq}: {e}")))?;
                if !want(&head.shop) {
                    next = seq;
                    continue;
                }
            }
            if sent > 0 && bytes.saturating_add(v.len()) > max_bytes {
                return Ok(next);
            }
            bytes += v.len();
            sent += 1;
            next = seq;
            if !each(v) || sent >= limit {
                return Ok(next);
            }
        }
        Ok(durable.max(next))
    }

    /// The sequence to read on from so that no entry received at or after `since_ms`
    /// is skipped: a binary search over the feed (sequences are given in receipt order,
    /// so an entry's `received_at_ms` grows with its sequence, give or take a clock step,
    /// which a margin in the caller's `since_ms` covers).
    pub fn seq_received_before(&self, since_ms: i64) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        struct At {
            received_at_ms: i64,
        }
        let durable = self.durable_seq.load(Ordering::SeqCst);
        // The first entry at or after `seq`: its sequence and receipt time.
        let at = |seq: u64| -> Result<Option<(u64, i64)>, StoreError> {
            match self.feed.range(seq.to_be_bytes()..=durable.to_be_bytes()).next() {
                None => Ok(None),
                Some(item) => {
                    let (k, v) = item?;
                    let at: At = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("order feed entry: {e}")))?;
                    Ok(Some((seq_of(&k)?, at.received_at_ms)))
                }
            }
        };
        // Invariant: every entry up to `lo` was received before `since_ms`.
        let (mut lo, mut hi) = (0u64, durable);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match at(mid)? {
                Some((seq, received)) if received < since_ms => lo = seq.max(mid),
                _ => hi = mid - 1,
            }
        }
        Ok(lo)
    }

    /// Entries in the feed (a counter: the same cost at any size).
    pub fn feed_len(&self) -> usize {
        self.feed_len.load(Ordering::SeqCst) as usize
    }

    /// (committed, durable) sequence numbers.
    pub fn sequences(&self) -> (u64, u64) {
        (self.committed_seq.load(Ordering::SeqCst), self.durable_seq.load(Ordering::SeqCst))
    }

    /// Write and sync a probe, for readiness checks.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        let meta = self.meta.clone();
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&meta, PROBE, now_ms().to_be_bytes());
                Ok::<_, StoreError>(())
            })
            .await
    }
}

impl PageSource<'_> {
    /// `order` as the feed keeps it, from this source, received at `received_at_ms`
    /// (its sequence is given when it is stored).
    pub fn record(&self, order: &OrderData, received_at_ms: i64) -> OrderRecord {
        OrderRecord {
            seq: 0,
            shop: self.shop.to_string(),
            platform: self.platform.to_string(),
            connector_version: self.connector_version.to_string(),
            received_at_ms,
            order: order.clone(),
        }
    }
}

/// Where orders are kept: the embedded store, or (cluster mode) the shops stream of the
/// NATS cluster ([`cluster`]). Callers see the same rules either way.
pub enum OrderStore {
    Embedded(EmbeddedOrders),
    Cluster(cluster::ClusterOrders),
}

/// What the order feed holds, for `GET /v1/orders/feed`.
#[derive(Debug, Clone, Serialize)]
pub struct FeedInfo {
    /// Entries in the feed (`None` in cluster mode: the stream does not count one
    /// subject family for free).
    pub entries: Option<usize>,
    pub committed_seq: u64,
    /// Readers see entries up to here: flushed to disk (cluster: acknowledged by the
    /// stream).
    pub durable_seq: u64,
}

impl OrderStore {
    /// A store of its own in `path` (tests and tools; berth shares one [`Store`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        EmbeddedOrders::open(path).map(OrderStore::Embedded)
    }

    pub fn on(store: &Store) -> Result<Self, StoreError> {
        EmbeddedOrders::on(store).map(OrderStore::Embedded)
    }

    /// Cluster mode: orders in the cluster's shops stream, a shop's pages written under
    /// the lease `fences` holds for it, each shop's under its class in `classes`.
    pub fn open_cluster(conn: berth_cluster::Connection, fences: Arc<dyn berth_cluster::FenceSource>, classes: Arc<berth_cluster::classes::Classes>) -> Self {
        OrderStore::Cluster(cluster::ClusterOrders::new(conn, fences, classes))
    }

    /// The storage core this store writes through (`None` in cluster mode).
    pub fn storage(&self) -> Option<&Store> {
        match self {
            OrderStore::Embedded(e) => Some(e.storage()),
            OrderStore::Cluster(_) => None,
        }
    }

    pub async fn sync_state(&self, shop: &str) -> Result<SyncState, StoreError> {
        match self {
            OrderStore::Embedded(e) => e.sync_state(shop),
            OrderStore::Cluster(c) => c.sync_state(shop).await,
        }
    }

    /// Which of `orders` are versions the store has not seen for the shop.
    pub async fn fresh(&self, shop: &str, orders: &[OrderData]) -> Result<Vec<bool>, StoreError> {
        match self {
            OrderStore::Embedded(e) => orders.iter().map(|o| e.is_new(shop, o)).collect(),
            OrderStore::Cluster(c) => c.fresh(shop, orders).await,
        }
    }

    /// Whether this version of an order is newer than any stored for the shop.
    pub async fn is_new(&self, shop: &str, order: &OrderData) -> Result<bool, StoreError> {
        Ok(self.fresh(shop, std::slice::from_ref(order)).await?.first().copied().unwrap_or(false))
    }

    /// Record a page of orders and the shop's new sync position atomically, durably.
    pub async fn commit_page(&self, src: &PageSource<'_>, orders: &[OrderData], next: &SyncState) -> Result<PageOutcome, StoreError> {
        match self {
            OrderStore::Embedded(e) => e.commit_page(src, orders, next).await,
            OrderStore::Cluster(c) => c.commit(src, orders, Some(next)).await,
        }
    }

    /// Record orders a platform pushed (webhooks): the sync position stays as it is.
    pub async fn commit_pushed(&self, src: &PageSource<'_>, orders: &[OrderData]) -> Result<PageOutcome, StoreError> {
        match self {
            OrderStore::Embedded(e) => e.commit_pushed(src, orders).await,
            OrderStore::Cluster(c) => c.commit(src, orders, None).await,
        }
    }

    /// Feed entries after `after`, oldest first, optionally for one shop (embedded;
    /// in cluster mode from a blocking thread, as [`OrderStore::scan`]).
    pub fn list(&self, after: u64, limit: usize, shop: Option<&str>) -> Result<Vec<OrderRecord>, StoreError> {
        let mut out = Vec::new();
        let mut failed = None;
        let wanted = |s: &str| shop.is_none_or(|want| want == s);
        let filter: Option<&dyn Fn(&str) -> bool> = shop.is_some().then_some(&wanted);
        self.scan(after, limit, usize::MAX, filter, shop, |v| {
            match serde_json::from_slice::<OrderRecord>(&v) {
                Ok(rec) => out.push(rec),
                Err(e) => failed = Some(StoreError::Corrupt(format!("order feed entry: {e}"))),
            }
            failed.is_none()
        })?;
        failed.map_or(Ok(out), Err)
    }

    /// Walk feed entries after `after` as stored (each an [`OrderRecord`]'s JSON), oldest
    /// first, optionally for one shop, handing each to `each` until `limit` entries or
    /// `max_bytes` of them (at least one) — or `each` says stop. Returns where a reader
    /// goes on from. `one`: the single shop `shop` admits, when it admits one (the
    /// cluster reads that shop's entries only). Blocking: in cluster mode it waits for
    /// the cluster's answers, so call it from a blocking thread (`spawn_blocking`), never
    /// from async code.
    pub fn scan(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
        shop: Option<&dyn Fn(&str) -> bool>,
        one: Option<&str>,
        each: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, StoreError> {
        match self {
            OrderStore::Embedded(e) => e.scan(after, limit, max_bytes, shop, each),
            OrderStore::Cluster(c) => c.scan(after, limit, max_bytes, shop, one, each),
        }
    }

    /// The newest version of every order of `shop` updated at or after `since_ms`, by
    /// order id: at most `max` orders (`None` past it). Blocking, like [`OrderStore::scan`].
    pub fn updated_since(&self, shop: &str, since_ms: i64, max: usize) -> Result<Option<Vec<OrderRecord>>, StoreError> {
        // A version updated since then was received since then (an hour's margin for the
        // clock); the cluster's stream is read from its start, one shop's subjects.
        let from = match self {
            OrderStore::Embedded(e) => e.seq_received_before(since_ms.saturating_sub(3_600_000))?,
            OrderStore::Cluster(_) => 0,
        };
        let mut newest: std::collections::BTreeMap<String, OrderRecord> = std::collections::BTreeMap::new();
        let (mut failed, mut over) = (None, false);
        let wanted = |s: &str| s == shop;
        let mut after = from;
        loop {
            let before = after;
            after = self.scan(after, 10_000, usize::MAX, Some(&wanted), Some(shop), |v| {
                match serde_json::from_slice::<OrderRecord>(&v) {
                    Ok(rec) if rec.order.updated_at_ms >= since_ms => {
                        if newest.get(&rec.order.order_id).is_none_or(|old| old.order.updated_at_ms <= rec.order.updated_at_ms) {
                            newest.insert(rec.order.order_id.clone(), rec);
                        }
                        over = newest.len() > max;
                    }
                    Ok(_) => {}
                    Err(e) => failed = Some(StoreError::Corrupt(format!("order feed entry: {e}"))),
                }
                failed.is_none() && !over
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            if over {
                return Ok(None);
            }
            if after == before {
                return Ok(Some(newest.into_values().collect()));
            }
        }
    }

    /// Entries in the feed (embedded store: a counter, the same cost at any size; 0 in
    /// cluster mode, see [`OrderStore::feed_info`]).
    pub fn feed_len(&self) -> usize {
        match self {
            OrderStore::Embedded(e) => e.feed_len(),
            OrderStore::Cluster(_) => 0,
        }
    }

    pub async fn feed_info(&self) -> Result<FeedInfo, StoreError> {
        match self {
            OrderStore::Embedded(e) => {
                let (committed_seq, durable_seq) = e.sequences();
                Ok(FeedInfo { entries: Some(e.feed_len()), committed_seq, durable_seq })
            }
            OrderStore::Cluster(c) => c.feed_info().await,
        }
    }

    /// Write (and sync) a probe, for readiness checks.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        match self {
            OrderStore::Embedded(e) => e.probe_writable().await,
            OrderStore::Cluster(c) => c.probe_writable().await,
        }
    }
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| StoreError::Corrupt("order feed key is not a sequence".into()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, updated: i64) -> OrderData {
        OrderData {
            order_id: id.into(),
            status: berth_types::connector::OrderStatus::Paid,
            platform_status: "PAID".into(),
            created_at_ms: 1,
            updated_at_ms: updated,
            currency: "USD".into(),
            total_minor: 100,
            lines: vec![],
            buyer_name_masked: String::new(),
            buyer_phone_masked: String::new(),
            raw: serde_json::json!({"id": id}),
        }
    }

    const SRC: PageSource<'static> = PageSource { shop: "acme", platform: "shopify", connector_version: "0.1.0" };

    #[tokio::test]
    async fn dedupes_by_id_and_updated_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = OrderStore::open(dir.path()).unwrap();
        let st = SyncState { watermark_ms: Some(5), current: None };
        let out = store.commit_page(&SRC, &[order("1", 10), order("2", 10)], &st).await.unwrap();
        assert_eq!((out.added, out.duplicates), (2, 0));
        // Same versions again (overlap), an older one, and a newer version of 1.
        let out = store.commit_page(&SRC, &[order("1", 10), order("2", 9), order("1", 11)], &st).await.unwrap();
        assert_eq!((out.added, out.duplicates), (1, 2));
        let all = store.list(0, 100, None).unwrap();
        let versions: Vec<(String, i64)> = all.iter().map(|r| (r.order.order_id.clone(), r.order.updated_at_ms)).collect();
        assert_eq!(versions, vec![("1".into(), 10), ("2".into(), 10), ("1".into(), 11)]);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(store.list(all[1].seq, 100, None).unwrap().len(), 1);
        assert_eq!(store.list(0, 100, Some("other")).unwrap().len(), 0);
        assert_eq!(store.sync_state("acme").await.unwrap(), st);
    }

    #[tokio::test]
    async fn orders_updated_since_are_each_order_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = OrderStore::open(dir.path()).unwrap();
        let other = PageSource { shop: "other", ..SRC };
        let st = SyncState::default();
        let day = 86_400_000;
        let now = now_ms();
        store.commit_page(&SRC, &[order("old", now - 30 * day), order("1", now - 2 * day), order("2", now - day)], &st).await.unwrap();
        store.commit_page(&other, &[order("9", now)], &st).await.unwrap();
        store.commit_page(&SRC, &[order("1", now - 1000), order("old", now - 29 * day)], &st).await.unwrap();
        let got = store.updated_since("acme", now - 7 * day, 10).unwrap().unwrap();
        let ids: Vec<(&str, i64)> = got.iter().map(|r| (r.order.order_id.as_str(), r.order.updated_at_ms)).collect();
        assert_eq!(ids, vec![("1", now - 1000), ("2", now - day)]);
        assert!(store.updated_since("acme", now - 7 * day, 1).unwrap().is_none(), "past the bound");
        let OrderStore::Embedded(e) = &store else { unreachable!() };
        // Every entry was received now: none before an hour ago, all before an hour on.
        assert_eq!(e.seq_received_before(now - 3_600_000).unwrap(), 0);
        assert_eq!(e.seq_received_before(now + 3_600_000).unwrap(), 6);
    }

    #[tokio::test]
    async fn two_changes_within_one_second_are_two_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = OrderStore::open(dir.path()).unwrap();
        let st = SyncState::default();
        let paid = order("1", 1_000);
        let shipped = OrderData { status: berth_types::connector::OrderStatus::Shipped, ..paid.clone() };
        let out = store.commit_page(&SRC, std::slice::from_ref(&paid), &st).await.unwrap();
        assert_eq!(out.added, 1);
        assert!(store.is_new("acme", &shipped).await.unwrap(), "same second, other content: a new version");
        let out = store.commit_page(&SRC, &[shipped.clone(), paid.clone()], &st).await.unwrap();
        assert_eq!((out.added, out.duplicates), (2, 0), "shipped, then paid again (it differs from shipped)");
        let out = store.commit_page(&SRC, std::slice::from_ref(&paid), &st).await.unwrap();
        assert_eq!((out.added, out.duplicates), (0, 1), "an exact repeat of the latest is a duplicate");
        let re_read = OrderData { raw: serde_json::json!({"id": "1", "fetched_at": 7}), ..paid.clone() };
        assert!(!store.is_new("acme", &re_read).await.unwrap(), "the raw JSON alone does not make a version");
        let statuses: Vec<&str> = store.list(0, 10, None).unwrap().into_iter().map(|r| r.order.status.as_str()).collect();
        assert_eq!(statuses, ["paid", "shipped", "paid"], "in the order they came");
        // An entry from before digests were kept: as new as it is, a repeat (as then).
        assert!(!is_newer(Some(&1_000i64.to_be_bytes()), 1_000, &shipped.version_digest()));
        assert!(is_newer(Some(&1_000i64.to_be_bytes()), 1_001, &shipped.version_digest()));
    }

    /// A reader following the feed with `after` must see every entry even while many
    /// shops commit at once (sequence numbers must not become visible out of order).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_never_skip_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(OrderStore::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let shop = format!("shop{w}");
                    for i in 0..40 {
                        let src = PageSource { shop: &shop, platform: "p", connector_version: "1" };
                        let page = [order(&format!("{i}a"), 1), order(&format!("{i}b"), 1)];
                        store.commit_page(&src, &page, &SyncState::default()).await.unwrap();
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            let page = store.list(after, 7, None).unwrap();
            if let Some(last) = page.last() {
                after = last.seq;
            }
            seen.extend(page.into_iter().map(|r| r.seq));
            if done && store.list(after, 1, None).unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen.len(), 6 * 40 * 2, "the reader skipped entries");
        assert_eq!(store.feed_len(), seen.len());
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OrderStore::open(dir.path()).unwrap();
            let st = SyncState { watermark_ms: Some(42), current: None };
            store.commit_page(&SRC, &[order("7", 1)], &st).await.unwrap();
        }
        let store = OrderStore::open(dir.path()).unwrap();
        assert_eq!(store.list(0, 10, None).unwrap().len(), 1);
        assert_eq!(store.sync_state("acme").await.unwrap().watermark_ms, Some(42));
        let out = store.commit_page(&SRC, &[order("7", 1)], &SyncState::default()).await.unwrap();
        assert_eq!(out.duplicates, 1);
    }
}
