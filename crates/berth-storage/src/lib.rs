//! berth-storage: every byte berth keeps, behind one writer.
//!
//! One fjall database in the data dir. A dedicated thread owns every mutation: callers
//! hand it operations, it applies everything waiting as one atomic batch, syncs once and
//! answers each caller ([`Store`]); reads never wait on it. Disk space is checked before
//! each batch, so a full or read-only disk refuses writes with a reason and recovers by
//! itself instead of poisoning the engine ([`space`]). On top: the durable lease queues
//! ([`queue`]). sled, which berth used before, is read only to migrate an old data dir
//! ([`migrate`]). This crate depends on no other berth crate.

pub mod error;
pub mod files;
pub mod migrate;
pub mod queue;
pub mod space;
pub mod store;

pub use error::StoreError;
pub use store::{Store, StoreConfig, WriteCtx};

/// Wall-clock Unix milliseconds, UTC, as the store stamps records (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
