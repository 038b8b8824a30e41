//! Shop health in cluster mode: each shop's probe history and standing are kept in the
//! shops bucket (`health.<shop>`), written by the node holding the shop's lease (fenced)
//! and copied to every node by a watch.
//!
//! The owner writes a shop's record at most every [`ROUND`] while it probes, at once when
//! the shop goes up or down, and last when it gives the shop up; the next owner starts
//! from it, so availability over the window, the failure count the alert rules read and
//! `down_since` carry over a failover (a crash loses at most the last round's probes).
//! The record keeps the last hour minute by minute and older minutes summed per hour,
//! so after a move the window's oldest hour counts whole until it leaves the window.

use super::{HealthBook, StoredHealth};
use berth_cluster::mirror::{self, Json, Mirror};
use berth_cluster::{ClusterError, Connection, FenceSource};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the probe counts of the shops this node runs are written.
pub const ROUND: Duration = Duration::from_secs(10);

fn key(shop: &str) -> String {
    format!("health.{shop}")
}

pub struct SharedHealth {
    conn: Connection,
    fences: Arc<dyn FenceSource>,
    copy: Mirror<Json<StoredHealth>>,
    /// Shops probed since their last write; `true`: their standing changed (write now).
    dirty: Mutex<BTreeMap<String, bool>>,
    /// Shops this node stopped running, with their last record, until written.
    leaving: Mutex<BTreeMap<String, StoredHealth>>,
    wake: tokio::sync::Notify,
    book: std::sync::OnceLock<Weak<HealthBook>>,
}

impl SharedHealth {
    /// Load every shop's record, keep watching them, and keep `book`'s shops in the
    /// cluster from now on (until `shutdown`).
    pub async fn attach(
        conn: &Connection,
        fences: Arc<dyn FenceSource>,
        book: &Arc<HealthBook>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
        let copy = Mirror::open(conn, "health.", Box::new(|_, _, _| {})).await?;
        let shared = Arc::new(SharedHealth {
            conn: conn.clone(),
            fences,
            copy,
            dirty: Mutex::default(),
            leaving: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            book: std::sync::OnceLock::new(),
        });
        let _ = shared.book.set(Arc::downgrade(book));
        let _ = book.shared.set(shared.clone());
        Ok(tokio::spawn(shared.run(shutdown)))
    }

    /// The shop's record as this node's copy has it.
    pub fn stored(&self, shop: &str) -> Option<StoredHealth> {
        self.copy.get(&key(shop)).record
    }

    /// A probe of a shop this node runs was counted.
    pub(super) fn changed(&self, shop: &str, standing: bool) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let urgent = dirty.entry(shop.to_string()).or_insert(false);
        *urgent |= standing;
        if standing {
            self.wake.notify_one();
        }
    }

    /// This node stopped running `shop`: its last record is written by [`Self::flush_leaving`]
    /// (while the lease is still held) or by the next round.
    pub(super) fn leaving(&self, shop: &str, record: StoredHealth) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).remove(shop);
        self.leaving.lock().unwrap_or_else(|p| p.into_inner()).insert(shop.to_string(), record);
    }

    /// Write the last record of a shop this node is giving up, before its lease goes.
    pub async fn flush_leaving(&self, shop: &str) {
        let record = self.leaving.lock().unwrap_or_else(|p| p.into_inner()).remove(shop);
        if let Some(record) = record {
            self.write(shop, &record).await;
        }
    }

    async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut next_round = tokio::time::Instant::now() + ROUND;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_round) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            let round = tokio::time::Instant::now() >= next_round;
            if round {
                next_round = tokio::time::Instant::now() + ROUND;
            }
            let due: BTreeSet<String> = {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                let due: BTreeSet<String> = dirty.iter().filter(|(_, urgent)| round || **urgent).map(|(s, _)| s.clone()).collect();
                dirty.retain(|s, _| !due.contains(s));
                due
            };
            let leaving = std::mem::take(&mut *self.leaving.lock().unwrap_or_else(|p| p.into_inner()));
            let Some(book) = self.book.get().and_then(Weak::upgrade) else { return };
            for shop in due {
                if let Some(record) = book.stored(&shop) {
                    self.write(&shop, &record).await;
                }
            }
            for (shop, record) in leaving {
                self.write(&shop, &record).await;
            }
        }
    }

    /// Write a shop's record under its lease; refused (and dropped) once this node no
    /// longer holds it: the new owner's record is the shop's.
    async fn write(&self, shop: &str, record: &StoredHealth) {
        let Some(fence) = self.fences.fence(shop) else { return };
        let value = <Json<StoredHealth> as mirror::Codec>::encode(Some(record));
        let k = key(shop);
        let write = berth_cluster::fenced::Write::put(k.clone(), value);
        match berth_cluster::fenced::write_all(&self.conn, Some(&fence), vec![write]).await {
            Ok(revision) => self.copy.applied_writes(&[(k, revision, Some(record.clone()))]),
            Err(ClusterError::Fenced { .. }) => tracing::debug!(shop, "the shop's lease moved on; its health record is the new owner's"),
            Err(e) => tracing::warn!(shop, error = %e, "cannot keep the shop's probe history in the cluster; written with the next round"),
        }
    }
}
