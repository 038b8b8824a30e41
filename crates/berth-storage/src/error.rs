//! What can go wrong with the store, in terms a caller can act on.

use std::path::PathBuf;

/// A store failure. Write errors say whether anything may have been written: every
/// variant here means the operation was **not** made durable, and the caller should
/// retry later (or, for `Failed`, after a restart).
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir's filesystem has less free space than the store keeps in reserve.
    /// Nothing was written; writes resume by themselves once space is freed.
    #[error("the disk holding {path} is full: {free_bytes} bytes free, the store keeps {reserve_bytes} in reserve; free space on that filesystem (nothing was written, retry later)")]
    DiskFull { path: PathBuf, free_bytes: u64, reserve_bytes: u64 },
    /// The data dir's filesystem is mounted read-only.
    #[error("the filesystem holding {path} is read-only; remount it read-write (nothing was written, retry later)")]
    ReadOnly { path: PathBuf },
    /// A write or sync failed: the engine refuses further writes (a half-written batch
    /// cannot be trusted) until berth restarts and recovers from its journal.
    #[error("the store stopped accepting writes after a failed write ({0}); restart berth once the disk is healthy — everything acknowledged before is on disk")]
    Failed(String),
    /// The writer thread is gone (the store is closing).
    #[error("the store is closed")]
    Closed,
    /// The data dir cannot be opened.
    #[error("cannot open the data store at {path}: {why}")]
    Open { path: PathBuf, why: String },
    /// A record on disk does not decode.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A read failed.
    #[error("reading the store failed: {0}")]
    Read(String),
    /// Cluster mode: the NATS cluster did not take or answer the request now (no
    /// leader, a node cut off, a lost lease). Nothing was written; retry shortly.
    #[error("the cluster could not take this now ({0}); nothing was written, retry shortly")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the caller should retry later (the disk is full or read-only) as opposed
    /// to a failure that needs an operator.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. } | StoreError::ReadOnly { .. })
    }

    pub(crate) fn read(e: fjall::Error) -> StoreError {
        StoreError::Read(e.to_string())
    }
}
