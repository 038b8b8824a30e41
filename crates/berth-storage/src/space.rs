//! The space guard: checked before every batch and before the store opens.
//!
//! The engine treats a failed journal write as fatal (it refuses all later writes, as it
//! must: the journal's tail is unknown). Running out of space is not a hardware fault, so
//! the store never lets a write reach a full disk: below the reserve a batch is refused
//! whole, before anything is written, with an error saying so, and writes resume by
//! themselves once space is freed. One `statvfs` per batch (about a microsecond).

use crate::StoreError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Free space the store leaves untouched on its filesystem unless ops choose otherwise:
/// room for the engine's background flushes and compactions to finish.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Clones share the reserve, so ops can change it while berth runs.
#[derive(Clone, Debug)]
pub struct SpaceGuard {
    path: PathBuf,
    reserve_bytes: Arc<AtomicU64>,
}

/// What the filesystem holding the data dir reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub free_bytes: u64,
    pub read_only: bool,
}

impl SpaceGuard {
    pub fn new(path: &Path, reserve_bytes: u64) -> SpaceGuard {
        SpaceGuard { path: path.to_path_buf(), reserve_bytes: Arc::new(AtomicU64::new(reserve_bytes)) }
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes.load(Ordering::Relaxed)
    }

    pub fn set_reserve_bytes(&self, bytes: u64) {
        self.reserve_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Free space and mount mode of the data dir's filesystem (of its nearest existing
    /// ancestor, before the data dir is made).
    pub fn space(&self) -> Result<Space, StoreError> {
        let at = self.path.ancestors().find(|p| p.exists()).unwrap_or(&self.path);
        let st = rustix::fs::statvfs(at).map_err(|e| StoreError::Read(format!("statvfs {}: {e}", at.display())))?;
        Ok(Space {
            free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
            read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        })
    }

    /// `Ok` when a write may go ahead.
    pub fn check(&self) -> Result<(), StoreError> {
        let space = self.space()?;
        if space.read_only {
            return Err(StoreError::ReadOnly { path: self.path.clone() });
        }
        let reserve_bytes = self.reserve_bytes();
        if space.free_bytes < reserve_bytes {
            return Err(StoreError::DiskFull { path: self.path.clone(), free_bytes: space.free_bytes, reserve_bytes });
        }
        Ok(())
    }
}
