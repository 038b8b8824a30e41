//! The durable order store on sled.
//!
//! Pulled orders go into an append-only feed keyed by a sequence number, which the ERP
//! reads with `GET /v1/orders?after=SEQ`. A version of an order enters the feed once:
//! `latest` remembers per shop + order the newest updated time and a digest of the
//! normalized order at that time. A version is new when its updated time is newer, or
//! equal with different content — platforms stamp whole seconds, and paid → shipped
//! within one second must reach the ERP as two versions; an exact repeat (overlapping
//! windows, re-read pages) is a duplicate. A page's
//! orders and the shop's sync position are written in one transaction and flushed to disk
//! before the worker moves on, so a crash can neither lose a page nor skip past it.
//!
//! Readers must never skip an entry: sequence numbers are assigned and committed under
//! one lock, so they become visible in order, and `list` shows only entries up to the
//! last flushed sequence, so an ERP never reads an order a crash could still take back.

use crate::clock::now_ms;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};
use std::path::Path;
use crate::queue::group_commit::GroupCommit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the data store at {path}: {source}; check the path is writable and no other berth uses it")]
    Open { path: String, source: sled::Error },
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Flush(#[from] crate::queue::group_commit::FlushError),
}

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
    /// One of: unpaid, paid, partially-shipped, shipped, delivered, completed, cancelled, refunded, other.
    pub status: String,
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

pub struct OrderStore {
    db: sled::Db,
    /// The database's one group committer, shared with the queues and the stock ledger
    /// so a page and the orders it queued share fsyncs.
    commit: Arc<GroupCommit>,
    latest: Tree,
    feed: Tree,
    sync: Tree,
    /// Held while a page gets its sequence numbers and commits.
    commit_lock: std::sync::Mutex<()>,
    /// Highest sequence committed (visible in sled, maybe not yet on disk).
    committed_seq: AtomicU64,
    /// Highest sequence known to be on disk; readers see up to here.
    durable_seq: AtomicU64,
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

impl OrderStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Self::from_db(db)
    }

    /// Must be called inside a tokio runtime (starts the group committer).
    pub fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let feed = db.open_tree("orders_feed")?;
        let last = match feed.last()? {
            Some((k, _)) => u64::from_be_bytes(
                k.as_ref().try_into().map_err(|_| StoreError::Corrupt("order feed key is not a sequence".into()))?,
            ),
            None => 0,
        };
        Ok(OrderStore {
            latest: db.open_tree("orders_latest")?,
            sync: db.open_tree("sync_state")?,
            feed,
            commit: GroupCommit::start(db.clone()),
            db,
            commit_lock: std::sync::Mutex::new(()),
            committed_seq: AtomicU64::new(last),
            durable_seq: AtomicU64::new(last),
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn commit(&self) -> Arc<GroupCommit> {
        self.commit.clone()
    }

    pub fn sync_state(&self, shop: &str) -> Result<SyncState, StoreError> {
        match self.sync.get(shop.as_bytes())? {
            None => Ok(SyncState::default()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("sync state of {shop}: {e}"))),
        }
    }

    /// Whether this version of an order is newer than any stored for the shop.
    pub fn is_new(&self, shop: &str, order: &OrderData) -> Result<bool, StoreError> {
        let stored = self.latest.get(latest_key(shop, &order.order_id))?;
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
        let guard = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = (&self.latest, &self.feed, &self.sync).transaction(|(latest, feed, sync)| {
            let mut outcome = PageOutcome { max_seq: None, ..PageOutcome::default() };
            for order in orders {
                let key = latest_key(src.shop, &order.order_id);
                let digest = order.version_digest();
                if !is_newer(latest.get(&key)?.as_deref(), order.updated_at_ms, &digest) {
                    outcome.duplicates += 1;
                    continue;
                }
                // Sequences start at 1 so `after=0` means "from the beginning".
                let seq = feed.generate_id()? + 1;
                let record = OrderRecord {
                    seq,
                    shop: src.shop.to_string(),
                    platform: src.platform.to_string(),
                    connector_version: src.connector_version.to_string(),
                    received_at_ms: received,
                    order: order.clone(),
                };
                let bytes = serde_json::to_vec(&record)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                feed.insert(&seq.to_be_bytes(), bytes)?;
                latest.insert(key, &latest_value(order.updated_at_ms, &digest)[..])?;
                outcome.added += 1;
                outcome.max_seq = Some(seq);
            }
            if let Some(state) = &state_json {
                sync.insert(src.shop.as_bytes(), state.as_slice())?;
            }
            Ok(outcome)
        });
        let outcome = result.map_err(|e| match e {
            TransactionError::Abort(msg) => StoreError::Corrupt(msg),
            TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        if let Some(seq) = outcome.max_seq {
            self.committed_seq.fetch_max(seq, Ordering::SeqCst);
        }
        drop(guard);
        // Everything committed before this call is on disk when it returns.
        let covered = self.committed_seq.load(Ordering::SeqCst);
        self.commit.durable().await?;
        self.durable_seq.fetch_max(covered, Ordering::SeqCst);
        Ok(outcome)
    }

    /// Feed entries after `after`, oldest first, optionally for one shop.
    pub fn list(&self, after: u64, limit: usize, shop: Option<&str>) -> Result<Vec<OrderRecord>, StoreError> {
        let durable = self.durable_seq.load(Ordering::SeqCst);
        if after >= durable {
            return Ok(Vec::new());
        }
        let start = after.saturating_add(1).to_be_bytes();
        let end = durable.to_be_bytes();
        let mut out = Vec::new();
        for item in self.feed.range(start..=end) {
            let (_, v) = item?;
            let rec: OrderRecord =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("order feed entry: {e}")))?;
            if shop.is_none_or(|s| s == rec.shop) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
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
        mut each: impl FnMut(sled::IVec) -> bool,
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
            let seq = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Corrupt("order feed key is not a sequence".into()))?);
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

    pub fn feed_len(&self) -> usize {
        self.feed.len()
    }

    /// (committed, durable) sequence numbers.
    pub fn sequences(&self) -> (u64, u64) {
        (self.committed_seq.load(Ordering::SeqCst), self.durable_seq.load(Ordering::SeqCst))
    }

    /// Write and flush a probe, for readiness checks.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        self.sync.insert(b"\0probe", &now_ms().to_be_bytes())?;
        self.commit.durable().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, updated: i64) -> OrderData {
        OrderData {
            order_id: id.into(),
            status: "paid".into(),
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
        assert_eq!(store.sync_state("acme").unwrap(), st);
    }

    #[tokio::test]
    async fn two_changes_within_one_second_are_two_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = OrderStore::open(dir.path()).unwrap();
        let st = SyncState::default();
        let paid = order("1", 1_000);
        let shipped = OrderData { status: "shipped".into(), ..paid.clone() };
        let out = store.commit_page(&SRC, std::slice::from_ref(&paid), &st).await.unwrap();
        assert_eq!(out.added, 1);
        assert!(store.is_new("acme", &shipped).unwrap(), "same second, other content: a new version");
        let out = store.commit_page(&SRC, &[shipped.clone(), paid.clone()], &st).await.unwrap();
        assert_eq!((out.added, out.duplicates), (2, 0), "shipped, then paid again (it differs from shipped)");
        let out = store.commit_page(&SRC, std::slice::from_ref(&paid), &st).await.unwrap();
        assert_eq!((out.added, out.duplicates), (0, 1), "an exact repeat of the latest is a duplicate");
        let re_read = OrderData { raw: serde_json::json!({"id": "1", "fetched_at": 7}), ..paid.clone() };
        assert!(!store.is_new("acme", &re_read).unwrap(), "the raw JSON alone does not make a version");
        let statuses: Vec<String> = store.list(0, 10, None).unwrap().into_iter().map(|r| r.order.status).collect();
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
        assert_eq!(store.sync_state("acme").unwrap().watermark_ms, Some(42));
        let out = store.commit_page(&SRC, &[order("7", 1)], &SyncState::default()).await.unwrap();
        assert_eq!(out.duplicates, 1);
    }
}
