//! Group commit: many writers share one fsync.
//!
//! A writer makes its change in sled, then waits on [`GroupCommit::durable`]. One flusher
//! task runs `flush_async` (which fsyncs) for everyone who asked before the flush began,
//! so under load a single flush makes a whole batch durable instead of one per write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

#[derive(Clone, Debug, Default)]
struct Flushed {
    /// Every ticket up to here is on disk.
    done: u64,
    /// Tickets up to `.0` were in a flush that failed with `.1`.
    failed: Option<(u64, String)>,
}

pub struct GroupCommit {
    /// Owned here, not by the flusher task, so dropping this lets go of the database.
    db: sled::Db,
    requested: AtomicU64,
    wake: Arc<Notify>,
    flushed: watch::Sender<Flushed>,
    flushes: AtomicU64,
    /// When the running flush began (Unix ms), 0 while none runs.
    flush_started_ms: std::sync::atomic::AtomicI64,
}

#[derive(Debug, thiserror::Error)]
#[error("flushing to disk failed: {0}; the write may be lost, retry it")]
pub struct FlushError(pub String);

impl GroupCommit {
    /// Start the flusher for `db` on the current tokio runtime. It stops (and lets go of
    /// the database) when the `GroupCommit` is dropped.
    pub fn start(db: sled::Db) -> Arc<Self> {
        let (flushed, _) = watch::channel(Flushed::default());
        let wake = Arc::new(Notify::new());
        let gc = Arc::new(GroupCommit { db, requested: AtomicU64::new(0), wake: wake.clone(), flushed, flushes: AtomicU64::new(0), flush_started_ms: std::sync::atomic::AtomicI64::new(0) });
        let weak = Arc::downgrade(&gc);
        tokio::spawn(async move {
            loop {
                let notified = wake.notified();
                let work = {
                    let Some(gc) = weak.upgrade() else { break };
                    let target = gc.requested.load(Ordering::SeqCst);
                    let done = gc.flushed.borrow().done;
                    (target > done).then(|| (target, gc.db.clone()))
                };
                let Some((target, db)) = work else {
                    notified.await;
                    continue;
                };
                if let Some(gc) = weak.upgrade() {
                    gc.flush_started_ms.store(crate::clock::now_ms(), Ordering::SeqCst);
                }
                // Everything written before `target` was taken is covered by this flush.
                let result = db.flush_async().await;
                drop(db);
                let Some(gc) = weak.upgrade() else { break };
                gc.flushes.fetch_add(1, Ordering::Relaxed);
                gc.flush_started_ms.store(0, Ordering::SeqCst);
                gc.flushed.send_modify(|f| match result {
                    Ok(_) => f.done = f.done.max(target),
                    Err(e) => f.failed = Some((target, e.to_string())),
                });
            }
        });
        gc
    }

    /// Wait until every write this task made before the call is on disk.
    pub async fn durable(&self) -> Result<(), FlushError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flushed.subscribe();
        self.wake.notify_one();
        let state = rx
            .wait_for(|f| f.done >= ticket || f.failed.as_ref().is_some_and(|(upto, _)| *upto >= ticket))
            .await
            .map_err(|_| FlushError("the flusher stopped".into()))?;
        if state.done >= ticket {
            Ok(())
        } else {
            Err(FlushError(state.failed.as_ref().map(|(_, e)| e.clone()).unwrap_or_default()))
        }
    }

    /// How long the running flush has taken so far; `None` when none runs.
    pub fn flush_running_for_ms(&self, now_ms: i64) -> Option<i64> {
        match self.flush_started_ms.load(Ordering::SeqCst) {
            0 => None,
            started => Some(now_ms - started),
        }
    }

    /// How many fsyncs ran so far (to see batching at work).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Wake the flusher so it sees the owner is gone and exits.
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let gc = GroupCommit::start(db.clone());
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let (db, gc) = (db.clone(), gc.clone());
                tokio::spawn(async move {
                    db.insert(i.to_be_bytes(), b"v").unwrap();
                    gc.durable().await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(gc.flush_count() >= 1);
        assert!(gc.flush_count() < 64, "no batching: {} flushes for 64 writes", gc.flush_count());
        assert_eq!(db.len(), 64);
    }
}
