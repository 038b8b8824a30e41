//! A node's copy of every key under one prefix of the shops bucket, kept current by a
//! KV watch, and the compare-and-set writes that change them from any node.
//!
//! A record kind every node reads often and any node may change (a stock SKU: the ERP
//! posts to any node, the owner settles pushes) is read from the mirror — no round trip
//! — and written by [`write_cas`]: each write expects the revision the writer decided
//! on, so a decision made on a stale copy is refused whole ([`ClusterError::Conflict`])
//! and made again on the leader's values ([`read_latest`]). The mirror is an
//! optimisation of reads and a cache for the first attempt, never the authority.
//!
//! One ordered consumer fills the copy and then keeps it: it delivers the newest value
//! of every key under the prefix, then every write after, in stream order. (A scan and
//! then a separate watch from the stream's last sequence could miss a write: the scan's
//! consumer may sit on a replica that has not applied a write the leader already
//! acknowledged, and the watch would start after it.) If the consumer fails, a watch
//! takes over from the last sequence applied. A revision not above the one held is
//! ignored, so the node's own writes applied at once and the consumer's echo of them
//! agree.

use crate::connect::{Connection, Latest};
use crate::error::ClusterError;
use crate::fenced::{newest, write_all, Expect, KeyWrite, Write};
use crate::lease::Fence;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Turns a stored value into a record (`None`: the key holds a tombstone) and back.
pub trait Codec: Send + Sync + 'static {
    type Record: Clone + Send + Sync + 'static;
    fn decode(key: &str, bytes: &[u8]) -> Result<Option<Self::Record>, String>;
    fn encode(record: Option<&Self::Record>) -> Bytes;
}

/// Records kept as JSON, a tombstone as an empty value.
pub struct Json<T>(std::marker::PhantomData<T>);

impl<T> Codec for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Record = T;

    fn decode(_key: &str, bytes: &[u8]) -> Result<Option<T>, String> {
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(bytes).map(Some).map_err(|e| e.to_string())
    }

    fn encode(record: Option<&T>) -> Bytes {
        record.map_or_else(Bytes::new, |r| Bytes::from(serde_json::to_vec(r).unwrap_or_default()))
    }
}

/// Told of every change the mirror applies, with the record before and after (in
/// revision order per key; `None`: absent). Runs under the mirror's write lock: keep it
/// short and never call back into the mirror.
pub type OnChange<R> = Box<dyn Fn(&str, Option<&R>, Option<&R>) + Send + Sync>;

/// A key's value as this node's copy has it.
#[derive(Debug, Clone)]
pub struct Held<R> {
    /// Stream sequence of the key's last write (0: never written).
    pub revision: u64,
    pub record: Option<R>,
}

struct Shared<C: Codec> {
    map: RwLock<BTreeMap<String, Held<C::Record>>>,
    on_change: OnChange<C::Record>,
    /// The highest stream sequence the consumer has delivered (where a watch taking
    /// over after a failure starts).
    applied: AtomicU64,
}

impl<C: Codec> Shared<C> {
    fn apply(&self, key: &str, revision: u64, record: Option<C::Record>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let slot = map.entry(key.to_string()).or_insert(Held { revision: 0, record: None });
        if revision <= slot.revision {
            return;
        }
        (self.on_change)(key, slot.record.as_ref(), record.as_ref());
        *slot = Held { revision, record };
    }

    /// A write the consumer (or the watch after it) delivered.
    fn delivered(&self, key: &str, revision: u64, bytes: Option<&[u8]>) {
        self.apply_bytes(key, revision, bytes);
        self.applied.fetch_max(revision, Ordering::SeqCst);
    }

    fn apply_bytes(&self, key: &str, revision: u64, bytes: Option<&[u8]>) {
        let record = match bytes.map(|b| C::decode(key, b)).transpose() {
            Ok(r) => r.flatten(),
            Err(why) => {
                // Not applied: reads keep the last good copy, and a write decided on it
                // is refused by revision and decided again on the leader's value, which
                // then fails as corrupt for the caller to see.
                tracing::error!(key, why, "a record in the cluster cannot be read; left as it was in this node's copy");
                return;
            }
        };
        self.apply(key, revision, record);
    }
}

/// This node's copy of the keys under a prefix (ending in `.`) of the shops bucket.
pub struct Mirror<C: Codec> {
    shared: Arc<Shared<C>>,
    task: tokio::task::JoinHandle<()>,
}

impl<C: Codec> Drop for Mirror<C> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<C: Codec> Mirror<C> {
    /// Load every key under `prefix` and keep watching it. `on_change` sees the load as
    /// changes from absent.
    pub async fn open(conn: &Connection, prefix: &str, on_change: OnChange<C::Record>) -> Result<Mirror<C>, ClusterError> {
        let shared = Arc::new(Shared::<C> { map: RwLock::new(BTreeMap::new()), on_change, applied: AtomicU64::new(0) });
        let load = |w: KeyWrite| {
            shared.delivered(&w.key, w.revision, w.value.as_deref());
            Ok(())
        };
        let (bucket, mut messages) = newest(conn, prefix, load).await?;
        let (store, filter) = (conn.shops.clone(), format!("{prefix}>"));
        let follower = shared.clone();
        let task = tokio::spawn(async move {
            // The same consumer goes on with every write after the ones loaded.
            while let Some(msg) = messages.next().await {
                match msg.map_err(ClusterError::nats).and_then(|m| KeyWrite::of(&bucket, &m)) {
                    Ok(w) => follower.delivered(&w.key, w.revision, w.value.as_deref()),
                    Err(e) => {
                        tracing::warn!(filter, error = %e, "the cluster's records stopped arriving; watching again from the last one");
                        break;
                    }
                }
            }
            follow(store, filter, follower).await
        });
        Ok(Mirror { shared, task })
    }

    /// The key's value in this node's copy.
    pub fn get(&self, key: &str) -> Held<C::Record> {
        let map = self.shared.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned().unwrap_or(Held { revision: 0, record: None })
    }

    /// Present records with keys in `from..` that start with `within`, in key order,
    /// while `take` says so (it sees each; returning false stops the walk).
    pub fn walk(&self, within: &str, from: &str, mut take: impl FnMut(&str, &C::Record) -> bool) {
        let map = self.shared.map.read().unwrap_or_else(|e| e.into_inner());
        for (key, held) in map.range(from.to_string()..) {
            if !key.starts_with(within) {
                break;
            }
            if let Some(record) = &held.record {
                if !take(key, record) {
                    break;
                }
            }
        }
    }

    /// Apply writes this node made (their revisions from [`write_cas`]) before the
    /// watch brings them, so this node reads its own writes at once.
    pub fn applied_writes(&self, written: &[(String, u64, Option<C::Record>)]) {
        for (key, revision, record) in written {
            self.shared.apply(key, *revision, record.clone());
        }
    }
}

/// After the first consumer failed: keep applying the stream's writes under `filter`
/// from the first sequence not yet applied; a watch that ends or fails is opened again.
async fn follow<C: Codec>(store: kv::Store, filter: String, shared: Arc<Shared<C>>) {
    let mut failures = 0u32;
    loop {
        let from = shared.applied.load(Ordering::SeqCst) + 1;
        let mut entries = match store.watch_from_revision(&filter, from).await {
            Ok(w) => w,
            Err(e) => {
                failures += 1;
                tracing::warn!(filter, error = %e, "cannot watch the cluster's records; this node's copy waits");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20)))).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(filter, error = %e, "the watch of the cluster's records failed; opening it again");
                    break;
                }
            };
            failures = 0;
            let bytes = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
            shared.delivered(&entry.key, entry.revision, bytes);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key's newest value from the stream leader (revision 0: never written), read
/// together.
pub async fn read_latest(conn: &Connection, keys: &[String]) -> Result<Vec<(u64, Option<Bytes>)>, ClusterError> {
    let reads = keys.iter().map(|k| conn.latest_shop_key(k));
    let found: Vec<Option<Latest>> = futures_util::future::try_join_all(reads).await?;
    Ok(found.into_iter().map(|l| l.map_or((0, None), |l| (l.revision, l.value))).collect())
}

/// Write `(key, value, expected revision)` as one atomic batch, each write refused unless
/// its key is still at the revision read (0: never written), and with `fence`, the whole
/// batch refused unless the shop's lease is still the fence's. Returns each write's
/// revision, in order.
pub async fn write_cas(conn: &Connection, fence: Option<&Fence>, writes: Vec<(String, Bytes, u64)>) -> Result<Vec<u64>, ClusterError> {
    let n = writes.len() as u64;
    let batch = writes
        .into_iter()
        .map(|(key, value, revision)| Write { key, value, expect: if revision == 0 { Expect::Absent } else { Expect::Revision(revision) } })
        .collect();
    let last = write_all(conn, fence, batch).await?;
    // An atomic batch is stored as consecutive sequences ending at the commit.
    Ok((0..n).map(|i| last + 1 + i - n).collect())
}
