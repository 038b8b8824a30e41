//! The store: one fjall database, one writer thread.
//!
//! Every mutation is a closure sent to the writer. The writer takes everything waiting
//! (up to [`MAX_BATCH`]), checks the disk has room, runs the closures one after another
//! in one write transaction (each sees what the ones before it wrote), commits, syncs
//! the journal once (`fdatasync`) and only then answers each caller. That is group
//! commit by construction: no lock is shared with readers, nothing retries, and no
//! caller's thread ever touches the disk for a write — an async caller awaits a oneshot.
//!
//! Readers read the committed state directly (the engine's reads never wait on the
//! writer). A read may see a batch a moment before its sync returns; anything a caller
//! must not see before it is durable (the order feed) is gated by the writer's own
//! published watermark.

use crate::space::SpaceGuard;
use crate::StoreError;
use fjall::{PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace, SingleWriterWriteTx};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// The most operations one batch takes: bounds the time one batch holds callers.
pub const MAX_BATCH: usize = 4096;

/// The journal's bound: past it the engine flushes memtables so the journal can go.
/// It is also what a start after a crash replays at most.
pub(crate) const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// When the writer has been idle this long and has written [`FLUSH_AFTER_BYTES`] since
/// the last flush, it asks the engine to flush its memtables: their memory is freed,
/// sealed journals can go, and a restart has less to replay. (The active journal file
/// stays until it reaches 64 MB: the engine rotates it then.)
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
const FLUSH_AFTER_BYTES: u64 = 16 * 1024 * 1024;
/// How often a store that keeps refusing writes says so in the log.
const REFUSAL_LOG_EVERY_MS: i64 = 60_000;
/// The store's own keyspace: a marker written after a compaction, whose flush has the
/// engine delete the files the compaction replaced (it does so at a memtable flush).
const MAINTENANCE: &str = "store_maintenance";

/// Ops-chosen settings of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Free bytes left untouched on the data dir's filesystem (see `space`).
    pub reserve_bytes: u64,
    /// The engine's block cache.
    pub cache_bytes: u64,
    /// Removals in a keyspace after which an idle writer has it compacted whole, on a
    /// thread of its own: what acks and deletes removed stops taking disk, so an emptied
    /// queue gives its space back while berth runs. Only churned keyspaces get there —
    /// queues, the ledger — whose live data is small next to what went through them.
    pub compact_after_removals: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { reserve_bytes: crate::space::DEFAULT_RESERVE_BYTES, cache_bytes: 64 * 1024 * 1024, compact_after_removals: 100_000 }
    }
}

/// A keyspace of the store: its own sorted map (writes to several are atomic together).
/// Reads here see committed batches and never wait on the writer.
#[derive(Clone)]
pub struct Keyspace(SingleWriterTxKeyspace, Arc<AtomicU64>);

/// A key and its value, as read.
pub type Entry = (Vec<u8>, Vec<u8>);

fn entry(item: fjall::Guard) -> Result<Entry, StoreError> {
    let (k, v) = item.into_inner().map_err(StoreError::read)?;
    Ok((k.to_vec(), v.to_vec()))
}

impl Keyspace {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).map_err(StoreError::read)?.map(|v| v.to_vec()))
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8]) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        self.0.inner().prefix(prefix).map(entry)
    }

    /// Entries with keys in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, range: R) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<K, R> {
        self.0.inner().range(range).map(entry)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        self.0.inner().iter().map(entry)
    }

    pub fn first(&self) -> Result<Option<Entry>, StoreError> {
        self.0.first_key_value().map(entry).transpose()
    }

    pub fn last(&self) -> Result<Option<Entry>, StoreError> {
        self.0.last_key_value().map(entry).transpose()
    }
}

/// What an operation does inside the writer's batch.
pub struct WriteCtx<'a> {
    tx: SingleWriterWriteTx<'a>,
    /// Writes by the operation running now.
    writes: usize,
    /// Bytes of keys and values written in this batch.
    bytes: u64,
}

impl WriteCtx<'_> {
    /// Read through the batch: sees what earlier operations of this batch wrote.
    pub fn get(&self, ks: &Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tx.get(&ks.0, key).map_err(StoreError::read)?.map(|v| v.to_vec()))
    }

    pub fn insert(&mut self, ks: &Keyspace, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.writes += 1;
        self.bytes += (key.len() + value.len()) as u64;
        self.tx.insert(&ks.0, key, value);
    }

    pub fn remove(&mut self, ks: &Keyspace, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.writes += 1;
        ks.1.fetch_add(1, Ordering::Relaxed);
        self.bytes += key.len() as u64;
        self.tx.remove(&ks.0, key);
    }

    /// Entries under `prefix`, through the batch, in key order.
    pub fn prefix(&self, ks: &Keyspace, prefix: &[u8]) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<> {
        self.tx.prefix(&ks.0, prefix).map(entry)
    }

    /// Entries with keys in `range`, through the batch, in key order.
    pub fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, ks: &Keyspace, range: R) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + use<K, R> {
        self.tx.range(&ks.0, range).map(entry)
    }
}

type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// An operation, run with the batch's context (or with the reason the batch is refused,
/// which it answers at once): `Ok(done)` once it has staged its writes (`done` answers
/// the caller after the sync), `Err` when it failed after writing part of its work (the
/// batch cannot be committed).
type Job = Box<dyn for<'c, 'd> FnOnce(Result<&'c mut WriteCtx<'d>, StoreError>) -> Result<Done, String> + Send>;

/// What the writer has done, for metrics and readiness.
#[derive(Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub operations: AtomicU64,
    pub syncs: AtomicU64,
    /// Batches refused whole because the disk was full or read-only.
    pub refused_batches: AtomicU64,
    /// Why writes are being refused right now (`None` when the last batch went through).
    refusing: Mutex<Option<StoreError>>,
    /// When the running batch began (Unix ms), 0 while the writer waits for work.
    batch_started_ms: std::sync::atomic::AtomicI64,
}

impl WriterStats {
    /// Why writes are refused now, if they are.
    pub fn refusing(&self) -> Option<StoreError> {
        self.refusing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How long the running batch (its operations, commit and sync) has taken so far;
    /// `None` while the writer is idle. A watchdog's view of a stuck disk.
    pub fn batch_running_for_ms(&self, now_ms: i64) -> Option<i64> {
        match self.batch_started_ms.load(Ordering::SeqCst) {
            0 => None,
            started => Some(now_ms - started),
        }
    }
}

/// The keyspaces opened so far, with their removals since they were last compacted (the
/// writer flushes and compacts them when idle).
type Opened = Arc<Mutex<Vec<(SingleWriterTxKeyspace, Arc<AtomicU64>)>>>;

struct Inner {
    db: SingleWriterTxDatabase,
    opened: Opened,
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<WriterStats>,
    guard: SpaceGuard,
}

/// A handle that does not keep the store open (for watchers that should stop with it).
#[derive(Clone)]
pub struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

/// A handle on the store; clones share it. The writer stops, and the data dir is let go,
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Open (or create) the store in `path`. Refused before anything is written when the
    /// filesystem is full or read-only, so a start on a full disk changes nothing.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let guard = SpaceGuard::new(path, config.reserve_bytes);
        guard.check()?;
        std::fs::create_dir_all(path).map_err(|e| open_error(path, &e.to_string()))?;
        let db = SingleWriterTxDatabase::builder(path)
            .manual_journal_persist(true)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .cache_size(config.cache_bytes)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => open_error(path, "another process (another berth?) has it open; stop it first"),
                e => open_error(path, &e.to_string()),
            })?;
        let stats = Arc::new(WriterStats::default());
        let opened: Opened = Arc::default();
        let maintenance = db.keyspace(MAINTENANCE, fjall::KeyspaceCreateOptions::default).map_err(|e| open_error(path, &e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let writer = {
            let (db, stats, guard, opened, every) = (db.clone(), stats.clone(), guard.clone(), opened.clone(), config.compact_after_removals);
            std::thread::Builder::new()
                .name("berth-store-writer".into())
                .spawn(move || write_loop(&db, &rx, &stats, &guard, (&opened, &maintenance, every)))
                .map_err(|e| open_error(path, &format!("cannot start the writer thread: {e}")))?
        };
        Ok(Store {
            inner: Arc::new(Inner { db, opened, path: path.to_path_buf(), jobs: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), stats, guard }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }

    /// Open (or create) a keyspace.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, StoreError> {
        let ks = self
            .inner
            .db
            .keyspace(name, fjall::KeyspaceCreateOptions::default)
            .map_err(|e| open_error(&self.inner.path, &format!("keyspace {name}: {e}")))?;
        let mut opened = self.inner.opened.lock().unwrap_or_else(|e| e.into_inner());
        let removed = match opened.iter().find(|(k, _)| k.inner().name() == ks.inner().name()) {
            Some((_, removed)) => removed.clone(),
            None => {
                let removed = Arc::new(AtomicU64::new(0));
                opened.push((ks.clone(), removed.clone()));
                removed
            }
        };
        Ok(Keyspace(ks, removed))
    }

    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    pub fn space_guard(&self) -> &SpaceGuard {
        &self.inner.guard
    }

    /// Run `op` in the writer's next batch and wait until that batch is on disk.
    ///
    /// `op` must decide before it writes: an error it returns after writing anything
    /// fails the whole batch (and stops the store, as a write failure does), since the
    /// engine cannot take back part of a batch.
    pub async fn write<R, E>(&self, op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + std::fmt::Display + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(op, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| E::from(StoreError::Closed))?
    }

    /// Wait until everything committed before this call is on disk: an empty operation
    /// in the next batch, which is synced after every batch before it.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.write(|_ctx: &mut WriteCtx<'_>| Ok::<_, StoreError>(())).await
    }

    /// Queue `op` for the next batch without waiting for it (records that may lose their
    /// last seconds in a crash: probe history, alert logs). A refusal is logged.
    pub fn write_detached(&self, what: &'static str, op: impl FnOnce(&mut WriteCtx<'_>) -> Result<(), StoreError> + Send + 'static) {
        let sent = self.submit(op, move |r: Result<(), StoreError>| {
            if let Err(e) = r {
                tracing::debug!(what, error = %e, "a detached write was not stored");
            }
        });
        if let Err(e) = sent {
            tracing::debug!(what, error = %e, "a detached write was not stored");
        }
    }

    /// Wait until everything a read has seen is on disk. A batch is visible from its
    /// commit and answered after its sync, so while the writer is between batches there
    /// is nothing to wait for (the common case: no batch, no sync); otherwise this waits
    /// for the next batch like [`Store::barrier`]. (Not for operations still queued:
    /// those need `barrier`.)
    pub async fn synced(&self) -> Result<(), StoreError> {
        let stats = &self.inner.stats;
        if stats.batch_started_ms.load(Ordering::SeqCst) == 0 {
            return match stats.refusing() {
                Some(e @ StoreError::Failed(_)) => Err(e),
                _ => Ok(()),
            };
        }
        self.barrier().await
    }

    /// [`Store::write`] for a caller outside async code (it blocks this thread).
    pub fn write_blocking<R, E>(&self, op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + std::fmt::Display + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(op, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| E::from(StoreError::Closed))?
    }

    fn submit<R, E>(
        &self,
        op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static,
        answer: impl FnOnce(Result<R, E>) + Send + 'static,
    ) -> Result<(), E>
    where
        R: Send + 'static,
        E: From<StoreError> + std::fmt::Display + Send + 'static,
    {
        let job: Job = Box::new(move |ctx: Result<&mut WriteCtx<'_>, StoreError>| {
            let ctx = match ctx {
                Ok(ctx) => ctx,
                Err(refused) => {
                    answer(Err(E::from(refused)));
                    return Ok(Box::new(|_| {}) as Done);
                }
            };
            ctx.writes = 0;
            match op(ctx) {
                Ok(r) => Ok(Box::new(move |synced: Result<(), StoreError>| answer(synced.map(|()| r).map_err(E::from))) as Done),
                Err(e) if ctx.writes == 0 => {
                    answer(Err(e));
                    Ok(Box::new(|_| {}) as Done)
                }
                Err(e) => {
                    let why = format!("an operation failed after writing part of its work: {e}");
                    answer(Err(e));
                    Err(why)
                }
            }
        });
        let jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.as_ref().ok_or(StoreError::Closed)?.send(job).map_err(|_| E::from(StoreError::Closed))
    }
}

fn open_error(path: &Path, why: &str) -> StoreError {
    StoreError::Open { path: path.to_path_buf(), why: why.to_string() }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer after the batches already sent.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            // The last handle may be dropped by an answer running on the writer itself.
            if w.thread().id() != std::thread::current().id() {
                let _ = w.join();
            }
        }
    }
}

/// What the idle writer keeps up: the keyspaces, the maintenance keyspace, and after how
/// many removals a keyspace is compacted.
type Upkeep<'a> = (&'a Opened, &'a SingleWriterTxKeyspace, u64);

fn write_loop(db: &SingleWriterTxDatabase, rx: &mpsc::Receiver<Job>, stats: &WriterStats, guard: &SpaceGuard, (opened, maintenance, every): Upkeep<'_>) {
    // Set once a write or sync failed: the engine refuses writes from then on.
    let mut failed: Option<String> = None;
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut unflushed = 0u64;
    let mut last_refusal_log = i64::MIN / 2;
    // 0: no compaction; 1: one running; 2: one finished, its old files still to drop.
    let compaction = Arc::new(std::sync::atomic::AtomicU8::new(0));
    loop {
        let first = match rx.recv_timeout(IDLE) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if failed.is_none() {
                    if unflushed >= FLUSH_AFTER_BYTES {
                        unflushed = 0;
                        flush_memtables(opened);
                    }
                    maintain(db, (opened, maintenance, every), &compaction, guard);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let refusal = match &failed {
            Some(why) => Some(StoreError::Failed(why.clone())),
            None => guard.check().err(),
        };
        if let Some(err) = refusal {
            if err.is_no_space() {
                let refused = stats.refused_batches.fetch_add(1, Ordering::Relaxed) + 1;
                // Once when it starts, then once a minute: clients retrying against a full
                // disk must not fill the log as well.
                let now = crate::now_ms();
                if now - last_refusal_log >= REFUSAL_LOG_EVERY_MS {
                    last_refusal_log = now;
                    tracing::warn!(error = %err, refused_batches = refused, "store refusing writes");
                }
            }
            *stats.refusing.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.clone());
            refuse(&mut batch, &err);
            continue;
        }
        let count = batch.len() as u64;
        stats.batch_started_ms.store(crate::now_ms(), Ordering::SeqCst);
        let ran = run_batch(db, &mut batch);
        stats.batch_started_ms.store(0, Ordering::SeqCst);
        match ran {
            Ok((done, bytes)) => {
                unflushed += bytes;
                if stats.refusing().is_some() {
                    tracing::info!("store writing again");
                    last_refusal_log = i64::MIN / 2;
                }
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.operations.fetch_add(count, Ordering::Relaxed);
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                *stats.refusing.lock().unwrap_or_else(|e| e.into_inner()) = None;
                for d in done {
                    d(Ok(()));
                }
            }
            Err((why, done)) => {
                tracing::error!(error = %why, "store write failed; refusing writes until restart");
                let err = StoreError::Failed(why.clone());
                *stats.refusing.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.clone());
                failed = Some(why);
                for d in done {
                    d(Err(err.clone()));
                }
            }
        }
    }
}

/// Answer every job of a batch that will not run.
fn refuse(batch: &mut Vec<Job>, err: &StoreError) {
    for job in batch.drain(..) {
        let _ = job(Err(err.clone()));
    }
}

type Failure = (String, Vec<Done>);

/// Ask the engine to flush every keyspace's memtable (in the background).
fn flush_memtables(opened: &Opened) {
    let opened = opened.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (ks, _) in opened {
        if let Err(e) = ks.inner().rotate_memtable() {
            tracing::warn!(error = %e, "could not flush a memtable");
        }
    }
}

/// Idle upkeep: compact keyspaces that removed much (on a thread of their own), and once
/// a compaction is done, write and flush a marker so the engine deletes the files the
/// compaction replaced. Skipped while the disk is short of space (a compaction writes).
fn maintain(db: &SingleWriterTxDatabase, (opened, maintenance, every): Upkeep<'_>, state: &Arc<std::sync::atomic::AtomicU8>, guard: &SpaceGuard) {
    match state.load(Ordering::SeqCst) {
        2 => {
            let mut tx = db.write_tx();
            tx.insert(maintenance, b"compacted_at_ms", crate::now_ms().to_be_bytes());
            let done = tx.commit().and_then(|()| db.persist(PersistMode::SyncData)).and_then(|()| maintenance.inner().rotate_memtable().map(drop));
            if let Err(e) = done {
                tracing::warn!(error = %e, "could not finish a compaction's clean-up");
            }
            state.store(0, Ordering::SeqCst);
        }
        0 => {
            let churned: Vec<SingleWriterTxKeyspace> = {
                let opened = opened.lock().unwrap_or_else(|e| e.into_inner());
                opened
                    .iter()
                    .filter(|(_, removed)| removed.load(Ordering::Relaxed) >= every)
                    .map(|(ks, removed)| {
                        removed.store(0, Ordering::Relaxed);
                        ks.clone()
                    })
                    .collect()
            };
            if churned.is_empty() || guard.check().is_err() {
                return;
            }
            state.store(1, Ordering::SeqCst);
            let finished = state.clone();
            let spawned = std::thread::Builder::new().name("berth-store-compact".into()).spawn(move || {
                for ks in churned {
                    let compacted = ks.inner().rotate_memtable_and_wait().and_then(|()| ks.inner().major_compact());
                    if let Err(e) = compacted {
                        tracing::warn!(error = %e, "could not compact a keyspace");
                    }
                }
                finished.store(2, Ordering::SeqCst);
            });
            if spawned.is_err() {
                state.store(0, Ordering::SeqCst);
            }
        }
        _ => {}
    }
}

/// The batch's answers and the bytes it wrote.
fn run_batch(db: &SingleWriterTxDatabase, batch: &mut Vec<Job>) -> Result<(Vec<Done>, u64), Failure> {
    let mut ctx = WriteCtx { tx: db.write_tx(), writes: 0, bytes: 0 };
    let mut done = Vec::with_capacity(batch.len());
    let mut broken = None;
    for job in batch.drain(..) {
        match job(Ok(&mut ctx)) {
            Ok(d) => done.push(d),
            Err(why) => {
                broken = Some(why);
            }
        }
    }
    if let Some(why) = broken {
        ctx.tx.rollback();
        return Err((why, done));
    }
    if let Err(e) = ctx.tx.commit() {
        return Err((format!("commit: {e}"), done));
    }
    if let Err(e) = db.persist(PersistMode::SyncData) {
        return Err((format!("sync: {e}"), done));
    }
    Ok((done, ctx.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Store(#[from] StoreError),
        #[error("refused: {0}")]
        Refused(&'static str),
    }

    fn open(dir: &Path) -> (Store, Keyspace) {
        let store = Store::open(dir, StoreConfig { reserve_bytes: 0, ..StoreConfig::default() }).unwrap();
        let ks = store.keyspace("t").unwrap();
        (store, ks)
    }

    async fn put(store: &Store, ks: &Keyspace, k: &str, v: &str) -> Result<(), TestError> {
        let (ks, k, v) = (ks.clone(), k.to_string(), v.to_string());
        store.write(move |ctx: &mut WriteCtx<'_>| {
            ctx.insert(&ks, k.into_bytes(), v.into_bytes());
            Ok::<_, TestError>(())
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_syncs_and_see_each_other_in_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ks) = open(dir.path());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (store, ks) = (store.clone(), ks.clone());
                tokio::spawn(async move {
                    // Each writer bumps one shared counter: read-modify-write through the batch.
                    store
                        .write(move |ctx: &mut WriteCtx<'_>| {
                            let n = ctx.get(&ks, b"n")?.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                            ctx.insert(&ks, format!("k{i}").into_bytes(), b"v".to_vec());
                            ctx.insert(&ks, b"n".to_vec(), (n + 1).to_be_bytes().to_vec());
                            Ok::<_, TestError>(())
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let syncs = store.stats().syncs.load(Ordering::Relaxed);
        assert!(syncs < 200, "no batching: {syncs} syncs for 200 writes");
        let n = ks.get(b"n").unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(n.try_into().unwrap()), 200, "an increment was lost between batched writers");
        drop((store, ks));
        let (_, ks) = open(dir.path());
        assert_eq!(ks.iter().count(), 201, "every acknowledged write is there after reopening");
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ks) = open(dir.path());
        put(&store, &ks, "before", "1").await.unwrap();
        // As if the disk filled: the reserve is more than is free.
        store.space_guard().set_reserve_bytes(u64::MAX);
        let err = put(&store, &ks, "during", "2").await.unwrap_err();
        assert!(matches!(err, TestError::Store(StoreError::DiskFull { .. })), "{err}");
        assert!(err.to_string().contains("is full") && err.to_string().contains("nothing was written"), "{err}");
        assert!(store.stats().refusing().is_some_and(|e| e.is_no_space()));
        assert_eq!(store.stats().refused_batches.load(Ordering::Relaxed), 1);
        assert_eq!(ks.get(b"before").unwrap().as_deref(), Some(&b"1"[..]), "reads keep answering");
        assert_eq!(ks.get(b"during").unwrap(), None);
        // Space freed: the next write goes through, no restart needed.
        store.space_guard().set_reserve_bytes(0);
        put(&store, &ks, "after", "3").await.unwrap();
        assert!(store.stats().refusing().is_none());
    }

    #[tokio::test]
    async fn between_batches_everything_read_is_synced_already() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ks) = open(dir.path());
        put(&store, &ks, "a", "1").await.unwrap();
        let syncs = store.stats().syncs.load(Ordering::Relaxed);
        store.synced().await.unwrap();
        assert_eq!(store.stats().syncs.load(Ordering::Relaxed), syncs, "no batch, no sync");
        store.barrier().await.unwrap();
        assert_eq!(store.stats().syncs.load(Ordering::Relaxed), syncs + 1, "a barrier is a batch");
    }

    #[tokio::test]
    async fn opening_on_a_full_disk_says_so_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let err = Store::open(&path, StoreConfig { reserve_bytes: u64::MAX, ..StoreConfig::default() }).err().unwrap();
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
        assert!(!path.exists(), "a refused start wrote to the disk");
    }

    #[tokio::test]
    async fn an_operation_refused_before_writing_leaves_the_batch_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ks) = open(dir.path());
        let refused = store.write(|_ctx: &mut WriteCtx<'_>| Err::<(), _>(TestError::Refused("no"))).await;
        assert!(matches!(refused, Err(TestError::Refused("no"))));
        put(&store, &ks, "a", "1").await.unwrap();
        // One that fails halfway cannot be taken back: the store stops writing, says why.
        let ks2 = ks.clone();
        let broken = store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&ks2, b"half".to_vec(), b"x".to_vec());
                Err::<(), _>(TestError::Refused("after writing"))
            })
            .await;
        assert!(matches!(broken, Err(TestError::Refused(_))));
        let next = put(&store, &ks, "b", "2").await.unwrap_err();
        assert!(matches!(next, TestError::Store(StoreError::Failed(_))), "{next}");
        assert!(matches!(store.synced().await, Err(StoreError::Failed(_))), "what was read may not be on disk");
        assert_eq!(ks.get(b"half").unwrap(), None, "the half-written batch was not committed");
        assert_eq!(ks.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_blocking_caller_writes_too() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ks) = open(dir.path());
        let ks2 = ks.clone();
        let n = store
            .write_blocking(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&ks2, b"k".to_vec(), b"v".to_vec());
                Ok::<_, StoreError>(7)
            })
            .unwrap();
        assert_eq!(n, 7);
        assert!(ks.get(b"k").unwrap().is_some());
    }
}
