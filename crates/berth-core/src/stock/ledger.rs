//! The stock ledger: one [`SkuStock`] per shop + SKU, changed by read–decide–write,
//! durable when the call returns. Single node, on the storage core: `stock_sku`
//! (shop \0 sku -> record), each change one operation of the writer's batch. In
//! cluster mode ([`StockLedger::open_cluster`]), in the cluster's shops bucket, each
//! change a compare-and-set batch from any node ([`super::cluster`]).
//!
//! Every change reads the SKUs it touches, decides in memory, then writes — so a
//! change that fails (a corrupt record) has written nothing. Per shop, the due index
//! (pending SKUs by due time), counts by state and the oldest pending SKU are kept in
//! memory beside the writes, rebuilt from the records at open: the pusher finds what
//! is due without scanning past the tombstones an on-disk index of ever-moving due
//! times collects, and a status page or scrape costs the same at any number of SKUs.

use super::cluster::{ClusterStock, Writer};
use super::guard::{Check, Flagged};
use super::{check_sku, PushOutcome, SkuState, SkuStock, StockError, StockRequest, StockStats, SubmitResult, Submitted};
use berth_types::clock::now_ms;
use berth_storage::store::Keyspace;
use berth_storage::{Store, WriteCtx};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use berth_types::retry::RetryPolicy;

/// `stock_meta` key of the next version number.
const NEXT_VERSION: &[u8] = b"next_version";

#[derive(Clone)]
struct Spaces {
    skus: Keyspace,
    meta: Keyspace,
}

/// One shop's counts by state, and its SKUs not yet on the platform by age.
#[derive(Default)]
pub(super) struct ShopCounts {
    pending: u64,
    pushed: u64,
    rejected: u64,
    dead: u64,
    exported: u64,
    held: u64,
    waiting: BTreeSet<(i64, String)>,
    /// SKUs with a due time (pending), by it.
    due: BTreeSet<(i64, String)>,
}

impl ShopCounts {
    pub(super) fn count(&mut self, rec: &SkuStock, add: bool) {
        let n = match rec.state {
            SkuState::Pending => &mut self.pending,
            SkuState::Pushed => &mut self.pushed,
            SkuState::Rejected => &mut self.rejected,
            SkuState::Dead => &mut self.dead,
            SkuState::Exported => &mut self.exported,
            SkuState::Held => &mut self.held,
        };
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
        if matches!(rec.state, SkuState::Pending | SkuState::Exported) {
            let key = (rec.received_at_ms, rec.sku.clone());
            if add {
                self.waiting.insert(key);
            } else {
                self.waiting.remove(&key);
            }
        }
        if let Some(at) = rec.due_at_ms {
            let key = (at, rec.sku.clone());
            if add {
                self.due.insert(key);
            } else {
                self.due.remove(&key);
            }
        }
    }
}

pub(super) type Counts = Arc<Mutex<HashMap<String, ShopCounts>>>;

pub struct StockLedger {
    backend: Backend,
    counts: Counts,
    policy: RetryPolicy,
}

enum Backend {
    Embedded { store: Store, ks: Spaces, next_version: Arc<AtomicU64> },
    Cluster(ClusterStock),
}

fn sku_key(shop: &str, sku: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(shop.len() + sku.len() + 1);
    k.extend_from_slice(shop.as_bytes());
    k.push(0);
    k.extend_from_slice(sku.as_bytes());
    k
}

fn shop_prefix(shop: &str) -> Vec<u8> {
    sku_key(shop, "")
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<SkuStock, StockError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StockError::Corrupt { key: String::from_utf8_lossy(key).replace('\0', "/"), why: e.to_string() })
}

pub(super) fn lock(counts: &Counts) -> std::sync::MutexGuard<'_, HashMap<String, ShopCounts>> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// The SKUs a change reads, as the change leaves them (`None`: no record).
pub(super) type Working = HashMap<String, Option<SkuStock>>;

/// What a judged submission did.
#[derive(Debug)]
pub struct Submission {
    pub results: Vec<SubmitResult>,
    /// Its changes the guard flags (for the shop's window).
    pub flagged: Vec<Flagged>,
    /// The hold it went into, and why.
    pub held: Option<(String, String)>,
}

impl StockLedger {
    /// A store of its own in `dir` (tests and tools; berth shares one [`Store`]).
    pub fn open_dir(dir: &std::path::Path, policy: RetryPolicy) -> Result<Self, StockError> {
        let store = Store::open(dir, berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() })?;
        Self::open(&store, policy)
    }

    /// The ledger in `store`; counts rebuilt from the stored SKUs.
    pub fn open(store: &Store, policy: RetryPolicy) -> Result<Self, StockError> {
        let ks = Spaces { skus: store.keyspace("stock_sku")?, meta: store.keyspace("stock_meta")? };
        let mut counts: HashMap<String, ShopCounts> = HashMap::new();
        let mut max_version = 0;
        for item in ks.skus.iter() {
            let (k, v) = item?;
            let rec = decode(&k, &v)?;
            let shop = String::from_utf8_lossy(&k[..k.iter().position(|&b| b == 0).unwrap_or(k.len())]).into_owned();
            counts.entry(shop).or_default().count(&rec, true);
            max_version = max_version.max(rec.version);
        }
        let stored = ks.meta.get(NEXT_VERSION)?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
        let next_version = Arc::new(AtomicU64::new(stored.max(max_version + 1)));
        Ok(StockLedger { backend: Backend::Embedded { store: store.clone(), ks, next_version }, counts: Arc::new(Mutex::new(counts)), policy })
    }

    /// The ledger in the cluster's shops bucket: this node's copy loaded and watched.
    /// Pushes settle under the shop's lease from `fences` (this node's [`berth_cluster::Leases`]).
    pub async fn open_cluster(
        conn: &berth_cluster::Connection,
        policy: RetryPolicy,
        fences: Arc<dyn berth_cluster::lease::FenceSource>,
    ) -> Result<Self, StockError> {
        let counts: Counts = Arc::new(Mutex::new(HashMap::new()));
        let cluster = ClusterStock::open(conn, counts.clone(), fences).await?;
        Ok(StockLedger { backend: Backend::Cluster(cluster), counts, policy })
    }

    /// Cluster mode: bring this node's copy of `shop`'s records up to the cluster's
    /// before the shop's pusher runs here (see [`ClusterStock::catch_up_shop`]); how
    /// many records were newer. Nothing to do on the embedded store.
    pub async fn catch_up_shop(&self, shop: &str) -> Result<usize, StockError> {
        match &self.backend {
            Backend::Cluster(c) => c.catch_up_shop(shop).await,
            Backend::Embedded { .. } => Ok(0),
        }
    }

    /// The cluster copy, in cluster mode (tests wait on it).
    pub fn cluster(&self) -> Option<&ClusterStock> {
        match &self.backend {
            Backend::Cluster(c) => Some(c),
            Backend::Embedded { .. } => None,
        }
    }

    /// Read `skus` of `shop`, let `decide` change them, write what it changed; durable
    /// on return. `decide` may run more than once in cluster mode (another node changed
    /// one of the SKUs meanwhile: read again, decide again).
    async fn change<R: Send + 'static>(
        &self,
        shop: &str,
        by: Writer,
        skus: Vec<String>,
        decide: impl Fn(&mut Working, &dyn Fn() -> u64) -> R + Send + Sync + 'static,
    ) -> Result<R, StockError> {
        let (store, ks, next_version) = match &self.backend {
            Backend::Embedded { store, ks, next_version } => (store, ks.clone(), next_version.clone()),
            Backend::Cluster(c) => return c.change(shop, by, skus, decide).await,
        };
        let (counts, shop) = (self.counts.clone(), shop.to_string());
        store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let mut work: Working = HashMap::with_capacity(skus.len());
                for sku in skus {
                    if work.contains_key(&sku) {
                        continue;
                    }
                    let key = sku_key(&shop, &sku);
                    let rec = ctx.get(&ks.skus, &key)?.map(|b| decode(&key, &b)).transpose()?;
                    work.insert(sku, rec);
                }
                let before = work.clone();
                let versions_from = next_version.load(Ordering::SeqCst);
                let taken = AtomicU64::new(versions_from);
                let out = decide(&mut work, &|| taken.fetch_add(1, Ordering::SeqCst));
                let taken = taken.load(Ordering::SeqCst);
                if taken != versions_from {
                    next_version.store(taken, Ordering::SeqCst);
                    ctx.insert(&ks.meta, NEXT_VERSION, taken.to_be_bytes());
                }
                let mut all = lock(&counts);
                let shop_counts = all.entry(shop.clone()).or_default();
                for (sku, new) in &work {
                    let old = before.get(sku).and_then(Option::as_ref);
                    if old == new.as_ref() {
                        continue;
                    }
                    if let Some(o) = old {
                        shop_counts.count(o, false);
                    }
                    match new {
                        Some(rec) => {
                            ctx.insert(&ks.skus, sku_key(&shop, sku), serde_json::to_vec(rec).map_err(|e| StockError::Corrupt { key: sku.clone(), why: e.to_string() })?);
                            shop_counts.count(rec, true);
                        }
                        None => ctx.remove(&ks.skus, sku_key(&shop, sku)),
                    }
                }
                Ok::<_, StockError>(out)
            })
            .await
    }

    /// Record the ERP's desired quantities; returns once they are on disk. Within one
    /// call a later update for the same SKU wins.
    pub async fn submit(&self, shop: &str, updates: &[StockRequest]) -> Result<Vec<SubmitResult>, StockError> {
        Ok(self.submit_checked(shop, updates, None).await?.results)
    }

    /// [`StockLedger::submit`] judged by a write guard (see [`super::guard`]): the
    /// changes it flags are returned for the shop's window, and when they, with the
    /// window's, trip its limits every SKU the submission queues is held in
    /// `check.hold_id` instead. A SKU held already stays in its hold with the newer
    /// quantity.
    pub async fn submit_checked(&self, shop: &str, updates: &[StockRequest], check: Option<Check>) -> Result<Submission, StockError> {
        for u in updates {
            check_sku(&u.sku)?;
        }
        let now = now_ms();
        let updates = updates.to_vec();
        let skus = updates.iter().map(|u| u.sku.clone()).collect();
        self.change(shop, Writer::Anyone, skus, move |work, next_version| {
            let mut out = Vec::with_capacity(updates.len());
            // By SKU: a later update of a SKU within the call replaces an earlier one.
            let mut flagged: std::collections::BTreeMap<String, Flagged> = std::collections::BTreeMap::new();
            let mut new_skus = 0u64;
            for u in &updates {
                let existing = work.get(&u.sku).cloned().flatten();
                if let (Some(rec), Some(seq)) = (&existing, u.seq) {
                    if rec.seq.is_some_and(|s| s >= seq) {
                        out.push(SubmitResult { sku: u.sku.clone(), outcome: Submitted::Stale, version: rec.version });
                        continue;
                    }
                }
                if let Some(rec) = existing.as_ref().filter(|r| {
                    r.quantity == u.quantity && matches!(r.state, SkuState::Pending | SkuState::Pushed | SkuState::Exported | SkuState::Held)
                }) {
                    let mut rec = rec.clone();
                    rec.seq = u.seq.or(rec.seq);
                    let outcome = if rec.state == SkuState::Held { Submitted::Held } else { Submitted::Unchanged };
                    out.push(SubmitResult { sku: u.sku.clone(), outcome, version: rec.version });
                    work.insert(u.sku.clone(), Some(rec));
                    continue;
                }
                let version = next_version();
                let held = existing.as_ref().filter(|r| r.state == SkuState::Held);
                let rec = SkuStock {
                    sku: u.sku.clone(),
                    quantity: u.quantity,
                    seq: u.seq.or(existing.as_ref().and_then(|r| r.seq)),
                    version,
                    received_at_ms: now,
                    // A held SKU stays in its hold with the newer quantity.
                    state: if held.is_some() { SkuState::Held } else { SkuState::Pending },
                    attempts: 0,
                    due_at_ms: if held.is_some() { None } else { Some(now) },
                    last_error: held.and_then(|r| r.last_error.clone()),
                    pushed_quantity: existing.as_ref().and_then(|r| r.pushed_quantity),
                    pushed_version: existing.as_ref().and_then(|r| r.pushed_version),
                    pushed_at_ms: existing.as_ref().and_then(|r| r.pushed_at_ms),
                    export_batch: None,
                    hold: held.and_then(|r| r.hold.clone()),
                };
                new_skus += u64::from(existing.is_none());
                flagged.remove(&rec.sku);
                if let (Some(c), None) = (&check, held) {
                    let flags = c.limits.flags(rec.pushed_quantity, rec.quantity);
                    if flags.zero || flags.big {
                        flagged.insert(rec.sku.clone(), Flagged { at_ms: now, sku: rec.sku.clone(), version, flags });
                    }
                }
                let outcome = if held.is_some() { Submitted::Held } else { Submitted::Queued };
                out.push(SubmitResult { sku: u.sku.clone(), outcome, version });
                work.insert(u.sku.clone(), Some(rec));
            }
            let flagged: Vec<Flagged> = flagged.into_values().collect();
            let tripped = check.as_ref().and_then(|c| {
                // The window's changes of SKUs this call changes again count once, as now.
                let again: std::collections::HashSet<&str> = updates.iter().map(|u| u.sku.as_str()).collect();
                let all = || flagged.iter().chain(c.window.iter().filter(|f| !again.contains(f.sku.as_str())));
                let zeroed = all().filter(|f| f.flags.zero).count() as u64;
                let changed = all().filter(|f| f.flags.big).count() as u64;
                c.limits.tripped(zeroed, changed, c.skus + new_skus).map(|why| (c.hold_id.clone(), why))
            });
            if let Some((id, why)) = &tripped {
                let reason = format!("held by a write guard: {why}");
                for r in out.iter_mut().filter(|r| r.outcome == Submitted::Queued) {
                    if let Some(Some(rec)) = work.get_mut(&r.sku) {
                        rec.state = SkuState::Held;
                        rec.due_at_ms = None;
                        rec.hold = Some(id.clone());
                        rec.last_error = Some(reason.clone());
                        r.outcome = Submitted::Held;
                    }
                }
            }
            Submission { results: out, flagged, held: tripped }
        })
        .await
    }

    /// Put pending SKUs of `shop` into hold `id` — the ones still at the version the
    /// window saw. Returns how many were held.
    pub async fn hold_pending(&self, shop: &str, skus: &[(String, u64)], id: &str, reason: &str) -> Result<usize, StockError> {
        let mut held = 0;
        for chunk in skus.chunks(self.max_change().min(10_000)) {
            let (chunk, id, reason) = (chunk.to_vec(), id.to_string(), format!("held by a write guard: {reason}"));
            held += self
                .change(shop, Writer::Anyone, chunk.iter().map(|(s, _)| s.clone()).collect(), move |work, _| {
                    let mut held = 0;
                    for (sku, version) in &chunk {
                        let Some(Some(rec)) = work.get_mut(sku) else { continue };
                        if rec.state != SkuState::Pending || rec.version != *version {
                            continue;
                        }
                        rec.state = SkuState::Held;
                        rec.due_at_ms = None;
                        rec.hold = Some(id.clone());
                        rec.last_error = Some(reason.clone());
                        held += 1;
                    }
                    held
                })
                .await?;
        }
        Ok(held)
    }

    /// The SKUs of `shop` held by write guards.
    pub fn held(&self, shop: &str) -> Result<Vec<SkuStock>, StockError> {
        if lock(&self.counts).get(shop).is_none_or(|c| c.held == 0) {
            return Ok(Vec::new());
        }
        self.records(shop, |r| r.state == SkuState::Held)
    }

    /// End hold `id` of `shop`: `release` hands its SKUs to the pusher with their newest
    /// quantities; otherwise they go back to what the platform was last given (a SKU
    /// never pushed is forgotten). Returns how many SKUs the hold held.
    pub async fn end_hold(&self, shop: &str, id: &str, release: bool) -> Result<usize, StockError> {
        let held: Vec<String> = self.held(shop)?.into_iter().filter(|r| r.hold.as_deref() == Some(id)).map(|r| r.sku).collect();
        if held.is_empty() {
            return Err(StockError::UnknownHold { shop: shop.to_string(), hold: id.to_string() });
        }
        let now = now_ms();
        let mut ended = 0;
        for chunk in held.chunks(self.max_change()) {
            let (chunk, id) = (chunk.to_vec(), id.to_string());
            ended += self
                .change(shop, Writer::Anyone, chunk.clone(), move |work, next_version| {
                    let mut ended = 0;
                    for sku in &chunk {
                        let Some(slot) = work.get_mut(sku) else { continue };
                        let Some(rec) = slot.as_mut().filter(|r| r.state == SkuState::Held && r.hold.as_deref() == Some(id.as_str())) else {
                            continue;
                        };
                        ended += 1;
                        rec.hold = None;
                        rec.last_error = None;
                        if release {
                            rec.state = SkuState::Pending;
                            rec.due_at_ms = Some(now);
                            continue;
                        }
                        match rec.pushed_quantity {
                            Some(q) => {
                                let version = next_version();
                                rec.quantity = q;
                                rec.version = version;
                                rec.pushed_version = Some(version);
                                rec.state = SkuState::Pushed;
                                rec.received_at_ms = now;
                            }
                            None => *slot = None,
                        }
                    }
                    ended
                })
                .await?;
        }
        Ok(ended)
    }

    /// Pending SKUs of a shop due by `now`, oldest due first, at most `max`.
    pub fn due(&self, shop: &str, now: i64, max: usize) -> Result<Vec<SkuStock>, StockError> {
        let skus: Vec<String> = {
            let all = lock(&self.counts);
            let Some(c) = all.get(shop) else { return Ok(Vec::new()) };
            c.due.iter().take_while(|(at, _)| *at <= now).take(max).map(|(_, sku)| sku.clone()).collect()
        };
        let mut out = Vec::with_capacity(skus.len());
        for sku in skus {
            if let Some(rec) = self.get(shop, &sku)? {
                if rec.state == SkuState::Pending {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// When the shop's next pending SKU falls due.
    pub fn next_due(&self, shop: &str) -> Result<Option<i64>, StockError> {
        Ok(lock(&self.counts).get(shop).and_then(|c| c.due.first()).map(|(at, _)| *at))
    }

    /// Wait until everything read so far is on disk: the pusher calls this before it
    /// sends, so a quantity it pushes can never be lost by a crash afterwards.
    pub async fn durable(&self) -> Result<(), StockError> {
        match &self.backend {
            Backend::Embedded { store, .. } => Ok(store.synced().await?),
            // Every change returned after the stream acknowledged it.
            Backend::Cluster(_) => Ok(()),
        }
    }

    /// Record how pushes of `(sku, version, quantity)` ended, under the ledger's default
    /// retry policy.
    pub async fn settle(&self, shop: &str, results: &[(String, u64, u32, PushOutcome)]) -> Result<(), StockError> {
        self.settle_with(shop, results, &self.policy.clone()).await
    }

    /// Record how pushes ended; failures back off and die by `policy`. A result for a
    /// version no longer desired keeps the SKU pending for its newer quantity.
    pub async fn settle_with(
        &self,
        shop: &str,
        results: &[(String, u64, u32, PushOutcome)],
        policy: &RetryPolicy,
    ) -> Result<(), StockError> {
        let now = now_ms();
        let (results, policy) = (results.to_vec(), policy.clone());
        let skus = results.iter().map(|r| r.0.clone()).collect();
        self.change(shop, Writer::Owner, skus, move |work, _| {
            let backoff = |attempts: u32| policy.delay(attempts).as_millis() as i64;
            for (sku, version, quantity, outcome) in &results {
                let (version, quantity) = (*version, *quantity);
                let Some(Some(mut rec)) = work.get(sku).cloned() else { continue };
                let current = rec.version == version;
                match outcome.clone() {
                    PushOutcome::Accepted => {
                        rec.pushed_quantity = Some(quantity);
                        rec.pushed_version = Some(version);
                        rec.pushed_at_ms = Some(now);
                        if current {
                            rec.state = SkuState::Pushed;
                            rec.due_at_ms = None;
                            rec.last_error = None;
                        }
                    }
                    PushOutcome::Rejected(why) if current => {
                        rec.state = SkuState::Rejected;
                        rec.due_at_ms = None;
                        rec.last_error = Some(why);
                    }
                    PushOutcome::Failed(why) if current => {
                        rec.attempts += 1;
                        rec.last_error = Some(why);
                        if rec.attempts >= policy.max_attempts {
                            rec.state = SkuState::Dead;
                            rec.due_at_ms = None;
                        } else {
                            rec.due_at_ms = Some(now + backoff(rec.attempts));
                        }
                    }
                    PushOutcome::GaveUp(why) if current => {
                        rec.attempts += 1;
                        rec.last_error = Some(why);
                        rec.state = SkuState::Dead;
                        rec.due_at_ms = None;
                    }
                    // A failure of a version no longer wanted: the newer one is pending.
                    PushOutcome::Rejected(_) | PushOutcome::Failed(_) | PushOutcome::GaveUp(_) => continue,
                }
                work.insert(sku.clone(), Some(rec));
            }
        })
        .await
    }

    pub fn get(&self, shop: &str, sku: &str) -> Result<Option<SkuStock>, StockError> {
        let ks = match &self.backend {
            Backend::Embedded { ks, .. } => ks,
            Backend::Cluster(c) => return Ok(c.get(shop, sku)),
        };
        let key = sku_key(shop, sku);
        match ks.skus.get(&key)? {
            None => Ok(None),
            Some(b) => decode(&key, &b).map(Some),
        }
    }

    /// A shop's SKUs in SKU order after `after`, optionally only those in `state`.
    pub fn list(&self, shop: &str, state: Option<SkuState>, after: Option<&str>, limit: usize) -> Result<Vec<SkuStock>, StockError> {
        let mut out = Vec::new();
        let ks = match &self.backend {
            Backend::Embedded { ks, .. } => ks,
            Backend::Cluster(c) => {
                c.walk(shop, after, |rec| {
                    if state.is_none_or(|s| s == rec.state) {
                        out.push(rec.clone());
                    }
                    out.len() < limit
                });
                return Ok(out);
            }
        };
        let prefix = shop_prefix(shop);
        let start = match after {
            Some(a) => {
                let mut k = sku_key(shop, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        for item in ks.skus.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let rec = decode(&k, &v)?;
            if state.is_none_or(|s| s == rec.state) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Put rejected or dead SKUs back to pending with their attempts reset.
    pub async fn replay(&self, shop: &str, skus_to_retry: &[String]) -> Result<usize, StockError> {
        self.back_to_pending(shop, skus_to_retry, |s| matches!(s, SkuState::Rejected | SkuState::Dead)).await
    }

    /// Push SKUs the platform already took again, with their newest desired quantity
    /// (reconciliation's repair: the platform drifted from it). Only `pushed` SKUs move
    /// back to pending; one changed meanwhile is pending already and keeps its turn.
    pub async fn repush(&self, shop: &str, skus_to_push: &[String]) -> Result<usize, StockError> {
        self.back_to_pending(shop, skus_to_push, |s| s == SkuState::Pushed).await
    }

    /// Move the SKUs whose state `from` takes back to pending, due now, attempts reset.
    async fn back_to_pending(&self, shop: &str, skus: &[String], from: fn(SkuState) -> bool) -> Result<usize, StockError> {
        let now = now_ms();
        let mut moved = 0;
        for chunk in skus.chunks(self.max_change()) {
            let skus = chunk.to_vec();
            moved += self
                .change(shop, Writer::Anyone, skus.clone(), move |work, _| {
                    let mut moved = 0;
                    for sku in &skus {
                        let Some(Some(rec)) = work.get_mut(sku) else { continue };
                        if !from(rec.state) {
                            continue;
                        }
                        rec.state = SkuState::Pending;
                        rec.attempts = 0;
                        rec.due_at_ms = Some(now);
                        moved += 1;
                    }
                    moved
                })
                .await?;
        }
        Ok(moved)
    }

    /// Every record of `shop`, in SKU order.
    pub fn all(&self, shop: &str) -> Result<Vec<SkuStock>, StockError> {
        self.records(shop, |_| true)
    }

    /// Forget rejected or dead SKUs (their record goes; a later update starts afresh).
    pub async fn purge(&self, shop: &str, skus_to_drop: &[String]) -> Result<usize, StockError> {
        let skus = skus_to_drop.to_vec();
        self.change(shop, Writer::Anyone, skus.clone(), move |work, _| {
            let mut dropped = 0;
            for sku in &skus {
                if let Some(slot) = work.get_mut(sku) {
                    if slot.as_ref().is_some_and(|r| matches!(r.state, SkuState::Rejected | SkuState::Dead)) {
                        *slot = None;
                        dropped += 1;
                    }
                }
            }
            dropped
        })
        .await
    }

    /// Hold every pending SKU of `shop` in a new export batch (for a manual upload) and
    /// return the batch's name and its SKUs. The pusher skips them from now on.
    pub async fn export(&self, shop: &str) -> Result<(String, Vec<SkuStock>), StockError> {
        let pending: Vec<String> = self.records(shop, |r| r.state == SkuState::Pending)?.into_iter().map(|r| r.sku).collect();
        let batch = format!("exp-{}-{:08x}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"), rand::random::<u32>());
        let mut held = Vec::new();
        for chunk in pending.chunks(self.max_change()) {
            let (chunk, batch) = (chunk.to_vec(), batch.clone());
            held.extend(
                self.change(shop, Writer::Anyone, chunk.clone(), move |work, _| {
                    let mut held = Vec::new();
                    for sku in &chunk {
                        let Some(Some(rec)) = work.get_mut(sku) else { continue };
                        if rec.state != SkuState::Pending {
                            continue;
                        }
                        rec.state = SkuState::Exported;
                        rec.due_at_ms = None;
                        rec.export_batch = Some(batch.clone());
                        held.push(rec.clone());
                    }
                    held
                })
                .await?,
            );
        }
        Ok((batch, held))
    }

    /// The SKUs an export batch still holds.
    pub fn export_batch(&self, shop: &str, batch: &str) -> Result<Vec<SkuStock>, StockError> {
        self.records(shop, |r| r.state == SkuState::Exported && r.export_batch.as_deref() == Some(batch))
    }

    /// Every record of `shop` that `keep` wants, in SKU order.
    fn records(&self, shop: &str, mut keep: impl FnMut(&SkuStock) -> bool) -> Result<Vec<SkuStock>, StockError> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Embedded { ks, .. } => {
                for item in ks.skus.prefix(&shop_prefix(shop)) {
                    let (k, v) = item?;
                    let rec = decode(&k, &v)?;
                    if keep(&rec) {
                        out.push(rec);
                    }
                }
            }
            Backend::Cluster(c) => c.walk(shop, None, |rec| {
                if keep(rec) {
                    out.push(rec.clone());
                }
                true
            }),
        }
        Ok(out)
    }

    /// How many SKUs one change may touch (cluster: one atomic batch).
    fn max_change(&self) -> usize {
        match &self.backend {
            Backend::Embedded { .. } => usize::MAX,
            Backend::Cluster(_) => super::cluster::MAX_SKUS_PER_CHANGE,
        }
    }

    /// End an export batch: `uploaded` marks its SKUs pushed (ops put the quantities on
    /// the platform by hand), otherwise they are pending again for the pusher. SKUs
    /// the ERP changed since the export are pending with their newer quantity already
    /// and are left alone. Returns how many SKUs the batch still held.
    pub async fn end_export(&self, shop: &str, batch: &str, uploaded: bool) -> Result<usize, StockError> {
        let held = self.export_batch(shop, batch)?;
        if held.is_empty() {
            return Err(StockError::UnknownBatch { shop: shop.to_string(), batch: batch.to_string() });
        }
        let now = now_ms();
        let mut ended = 0;
        for chunk in held.chunks(self.max_change()) {
            let (chunk, batch) = (chunk.to_vec(), batch.to_string());
            ended += self
                .change(shop, Writer::Anyone, chunk.iter().map(|h| h.sku.clone()).collect(), move |work, _| {
                    let mut ended = 0;
                    for h in &chunk {
                        let Some(Some(rec)) = work.get_mut(&h.sku) else { continue };
                        if rec.state != SkuState::Exported || rec.export_batch.as_deref() != Some(batch.as_str()) || rec.version != h.version {
                            continue;
                        }
                        rec.export_batch = None;
                        if uploaded {
                            rec.state = SkuState::Pushed;
                            rec.pushed_quantity = Some(rec.quantity);
                            rec.pushed_version = Some(rec.version);
                            rec.pushed_at_ms = Some(now);
                            rec.last_error = None;
                        } else {
                            rec.state = SkuState::Pending;
                            rec.due_at_ms = Some(now);
                        }
                        ended += 1;
                    }
                    ended
                })
                .await?;
        }
        Ok(ended)
    }

    /// Counts by state and the oldest pending age (counters: no scan).
    pub fn stats(&self, shop: &str) -> Result<StockStats, StockError> {
        let now = now_ms();
        let all = lock(&self.counts);
        let Some(c) = all.get(shop) else { return Ok(StockStats::default()) };
        Ok(StockStats {
            pending: c.pending,
            pushed: c.pushed,
            rejected: c.rejected,
            dead: c.dead,
            exported: c.exported,
            held: c.held,
            oldest_pending_age_ms: c.waiting.first().map(|(at, _)| now - at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(sku: &str, quantity: u32, seq: Option<u64>) -> StockRequest {
        StockRequest { sku: sku.into(), quantity, seq }
    }

    fn open(dir: &std::path::Path, max_attempts: u32) -> StockLedger {
        StockLedger::open_dir(dir, RetryPolicy::new(1, 2, max_attempts)).unwrap()
    }

    #[tokio::test]
    async fn newest_wins_and_stale_sequences_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), 3);
        let r = l.submit("s", &[req("A", 5, Some(1)), req("A", 7, Some(2)), req("B", 1, None)]).await.unwrap();
        assert_eq!(r.iter().map(|r| r.outcome).collect::<Vec<_>>(), [Submitted::Queued, Submitted::Queued, Submitted::Queued]);
        let stale = l.submit("s", &[req("A", 6, Some(2))]).await.unwrap();
        assert_eq!(stale[0].outcome, Submitted::Stale);
        let same = l.submit("s", &[req("A", 7, Some(3))]).await.unwrap();
        assert_eq!(same[0].outcome, Submitted::Unchanged);
        let due = l.due("s", now_ms(), 10).unwrap();
        assert_eq!(due.len(), 2, "A coalesced into one pending record");
        let a = due.iter().find(|r| r.sku == "A").unwrap();
        assert_eq!((a.quantity, a.seq), (7, Some(3)));
        assert!(l.due("other", now_ms(), 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_result_for_an_older_version_keeps_the_newer_pending() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), 3);
        l.submit("s", &[req("A", 5, None)]).await.unwrap();
        let taken = l.due("s", now_ms(), 10).unwrap().remove(0);
        // A newer quantity arrives while the push of 5 is in flight.
        l.submit("s", &[req("A", 9, None)]).await.unwrap();
        l.settle("s", &[("A".into(), taken.version, 5, PushOutcome::Accepted)]).await.unwrap();
        let rec = l.get("s", "A").unwrap().unwrap();
        assert_eq!((rec.state, rec.quantity, rec.pushed_quantity), (SkuState::Pending, 9, Some(5)));
        let again = l.due("s", now_ms(), 10).unwrap();
        assert_eq!(again.len(), 1);
        l.settle("s", &[("A".into(), again[0].version, 9, PushOutcome::Accepted)]).await.unwrap();
        let rec = l.get("s", "A").unwrap().unwrap();
        assert_eq!((rec.state, rec.pushed_quantity), (SkuState::Pushed, Some(9)));
        assert!(l.due("s", i64::MAX - 1, 10).unwrap().is_empty());
        assert_eq!(l.next_due("s").unwrap(), None);
    }

    #[tokio::test]
    async fn failures_back_off_then_die_and_replay_revives() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), 2);
        l.submit("s", &[req("A", 5, None), req("B", 1, None)]).await.unwrap();
        let v = l.get("s", "A").unwrap().unwrap().version;
        l.settle("s", &[("A".into(), v, 5, PushOutcome::Failed("503".into()))]).await.unwrap();
        let rec = l.get("s", "A").unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts), (SkuState::Pending, 1));
        l.settle("s", &[("A".into(), v, 5, PushOutcome::Failed("503 again".into()))]).await.unwrap();
        let rec = l.get("s", "A").unwrap().unwrap();
        assert_eq!((rec.state, rec.last_error.as_deref()), (SkuState::Dead, Some("503 again")));
        let vb = l.get("s", "B").unwrap().unwrap().version;
        l.settle("s", &[("B".into(), vb, 1, PushOutcome::Rejected("unknown SKU".into()))]).await.unwrap();
        // An error the policy does not retry dies at once.
        l.submit("s", &[req("C", 3, None)]).await.unwrap();
        let vc = l.get("s", "C").unwrap().unwrap().version;
        l.settle_with("s", &[("C".into(), vc, 3, PushOutcome::GaveUp("no location".into()))], &RetryPolicy::new(1, 2, 10)).await.unwrap();
        let rec = l.get("s", "C").unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts, rec.last_error.as_deref()), (SkuState::Dead, 1, Some("no location")));
        assert_eq!(l.purge("s", &["C".into()]).await.unwrap(), 1);
        let st = l.stats("s").unwrap();
        assert_eq!((st.pending, st.dead, st.rejected), (0, 1, 1));
        assert_eq!(l.list("s", Some(SkuState::Dead), None, 10).unwrap().len(), 1);
        assert_eq!(l.purge("s", &["B".into()]).await.unwrap(), 1);
        assert_eq!(l.get("s", "B").unwrap(), None);
        l.submit("s", &[req("B", 1, None)]).await.unwrap();
        let vb = l.get("s", "B").unwrap().unwrap().version;
        l.settle("s", &[("B".into(), vb, 1, PushOutcome::Rejected("unknown SKU".into()))]).await.unwrap();
        assert_eq!(l.purge("s", &["A".into()]).await.unwrap(), 1, "dead A purged");
        l.submit("s", &[req("A", 5, None)]).await.unwrap();
        l.settle("s", &[("A".into(), l.get("s", "A").unwrap().unwrap().version, 5, PushOutcome::Failed("x".into()))]).await.unwrap();
        let va = l.get("s", "A").unwrap().unwrap().version;
        l.settle("s", &[("A".into(), va, 5, PushOutcome::Failed("x".into()))]).await.unwrap();
        assert_eq!(l.get("s", "A").unwrap().unwrap().state, SkuState::Dead);
        assert_eq!(l.purge("s", &["nope".into()]).await.unwrap(), 0);
        assert_eq!(l.replay("s", &["A".into(), "B".into(), "nope".into()]).await.unwrap(), 2);
        assert_eq!(l.due("s", now_ms(), 10).unwrap().len(), 2);
        // A new quantity for a dead SKU is queued even when it equals the old one.
        l.settle("s", &[("A".into(), va, 5, PushOutcome::Failed("x".into()))]).await.unwrap();
        l.settle("s", &[("A".into(), va, 5, PushOutcome::Failed("x".into()))]).await.unwrap();
        assert_eq!(l.get("s", "A").unwrap().unwrap().state, SkuState::Dead);
        assert_eq!(l.submit("s", &[req("A", 5, None)]).await.unwrap()[0].outcome, Submitted::Queued);
    }

    #[tokio::test]
    async fn an_export_holds_pending_skus_until_confirmed_or_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), 3);
        l.submit("s", &[req("A", 5, None), req("B", 2, None), req("C", 7, None)]).await.unwrap();
        let vc = l.get("s", "C").unwrap().unwrap().version;
        l.settle("s", &[("C".into(), vc, 7, PushOutcome::Accepted)]).await.unwrap();
        let (batch, held) = l.export("s").await.unwrap();
        assert_eq!(held.iter().map(|r| (r.sku.as_str(), r.quantity)).collect::<Vec<_>>(), [("A", 5), ("B", 2)], "pending only");
        assert!(l.due("s", now_ms(), 10).unwrap().is_empty(), "the pusher leaves exported SKUs alone");
        assert_eq!(l.stats("s").unwrap().exported, 2);
        let (second, none) = l.export("s").await.unwrap();
        assert!(none.is_empty() && second != batch, "nothing is exported twice");
        // The ERP changes B after the export: B is pending again with its new quantity; the same A stays held.
        assert_eq!(l.submit("s", &[req("A", 5, None), req("B", 3, None)]).await.unwrap()[0].outcome, Submitted::Unchanged);
        assert_eq!(l.export_batch("s", &batch).unwrap().len(), 1);
        assert_eq!(l.end_export("s", &batch, true).await.unwrap(), 1);
        let a = l.get("s", "A").unwrap().unwrap();
        assert_eq!((a.state, a.pushed_quantity, a.export_batch), (SkuState::Pushed, Some(5), None));
        let b = l.get("s", "B").unwrap().unwrap();
        assert_eq!((b.state, b.quantity), (SkuState::Pending, 3), "the newer quantity still goes out");
        assert!(matches!(l.end_export("s", &batch, true).await, Err(StockError::UnknownBatch { .. })), "a batch ends once");
        // A cancelled batch goes back to the pusher.
        let (batch, held) = l.export("s").await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(l.end_export("s", &batch, false).await.unwrap(), 1);
        assert_eq!(l.due("s", now_ms(), 10).unwrap().iter().map(|r| r.sku.as_str()).collect::<Vec<_>>(), ["B"]);
    }

    /// Every SKU of `skus` pushed at quantity 10.
    async fn pushed(l: &StockLedger, skus: &[&str]) {
        let reqs: Vec<StockRequest> = skus.iter().map(|s| req(s, 10, None)).collect();
        l.submit("s", &reqs).await.unwrap();
        for r in l.due("s", now_ms(), 100).unwrap() {
            l.settle("s", &[(r.sku.clone(), r.version, r.quantity, PushOutcome::Accepted)]).await.unwrap();
        }
    }

    fn check(window: Vec<Flagged>, skus: u64) -> Check {
        let limits = crate::stock::guard::Limits { max_zero_percent: 20.0, min_zeroed: 2, max_changed_skus: 3, max_change_percent: 15.0, window_ms: 60_000 };
        Check { limits, window, skus, hold_id: "hold-t".into() }
    }

    #[tokio::test]
    async fn a_guard_holds_a_submission_until_released_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), 3);
        pushed(&l, &["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]).await;
        // One zero of ten SKUs, two small changes: flagged, not held.
        let sub = l.submit_checked("s", &[req("A", 0, None), req("B", 11, None), req("C", 9, None)], Some(check(Vec::new(), 10))).await.unwrap();
        assert!(sub.held.is_none());
        assert_eq!(sub.flagged.iter().map(|f| (f.sku.as_str(), f.flags.zero)).collect::<Vec<_>>(), [("A", true)]);
        // A second zero, with the first in the window: 2 of 10 is 20%, not more. A
        // third is: the whole submission is held, naming why.
        let sub = l.submit_checked("s", &[req("D", 0, None)], Some(check(sub.flagged, 10))).await.unwrap();
        assert!(sub.held.is_none());
        let window = [l.submit_checked("s", &[req("Z", 3, None)], None).await.unwrap().flagged, sub.flagged].concat();
        assert!(window.len() == 1, "an unguarded submission flags nothing; the window holds D");
        let sub = l
            .submit_checked("s", &[req("E", 0, None), req("F", 0, None), req("NEW", 4, None)], Some(check(vec![window[0].clone()], 11)))
            .await
            .unwrap();
        let (id, why) = sub.held.clone().expect("held");
        assert!(why.contains("3 of the shop's 12 SKUs would go to 0"), "{why}");
        assert!(sub.results.iter().all(|r| r.outcome == Submitted::Held), "{:?}", sub.results);
        assert_eq!(l.hold_pending("s", &[("D".into(), window[0].version)], &id, &why).await.unwrap(), 1);
        assert!(l.due("s", now_ms(), 100).unwrap().iter().all(|r| !["D", "E", "F", "NEW"].contains(&r.sku.as_str())), "held SKUs are not pushed");
        assert_eq!(l.stats("s").unwrap().held, 4);
        // A newer quantity for a held SKU stays in the hold.
        let again = l.submit("s", &[req("E", 1, None)]).await.unwrap();
        assert_eq!(again[0].outcome, Submitted::Held);
        let views = crate::stock::guard::hold_views(&l.held("s").unwrap());
        assert_eq!((views.len(), views[0].skus, views[0].zeroed), (1, 4, 2));
        assert!(views[0].reason.contains("would go to 0"), "{:?}", views[0]);
        // Discarded: the platform keeps what it was given; a SKU never pushed is forgotten.
        assert_eq!(l.end_hold("s", &id, false).await.unwrap(), 4);
        let e = l.get("s", "E").unwrap().unwrap();
        assert_eq!((e.state, e.quantity, e.pushed_quantity, e.hold), (SkuState::Pushed, 10, Some(10), None));
        assert_eq!(l.get("s", "NEW").unwrap(), None);
        assert!(matches!(l.end_hold("s", &id, false).await, Err(StockError::UnknownHold { .. })));
        // Released: pushed with the newest quantities.
        let sub = l.submit_checked("s", &[req("G", 0, None), req("H", 0, None), req("I", 0, None)], Some(check(Vec::new(), 11))).await.unwrap();
        let (id, _) = sub.held.expect("held");
        assert_eq!(l.end_hold("s", &id, true).await.unwrap(), 3);
        let due: Vec<(String, u32)> = l.due("s", now_ms(), 100).unwrap().into_iter().map(|r| (r.sku, r.quantity)).collect();
        assert!(due.contains(&("G".to_string(), 0)) && due.contains(&("I".to_string(), 0)), "{due:?}");
        assert_eq!(l.stats("s").unwrap().held, 0);
    }

    #[tokio::test]
    async fn survives_reopen_and_lists_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = open(dir.path(), 3);
            l.submit("s", &[req("B", 2, Some(10)), req("A", 1, None), req("C", 3, None)]).await.unwrap();
            assert!(l.submit("s", &[req("bad\0sku", 1, None)]).await.is_err());
        }
        let l = open(dir.path(), 3);
        let all = l.list("s", None, None, 10).unwrap();
        assert_eq!(all.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>(), ["A", "B", "C"]);
        let after = l.list("s", None, Some("A"), 1).unwrap();
        assert_eq!(after[0].sku, "B");
        assert_eq!(after[0].seq, Some(10));
        assert_eq!(l.submit("s", &[req("B", 1, Some(9))]).await.unwrap()[0].outcome, Submitted::Stale);
    }
}
