//! The credential book in cluster mode: each shop's sealed record under `cred.<shop>` in
//! the shops bucket, copied to every node by a watch, changed by compare-and-set.
//!
//! The rules of a rotating refresh token hold across nodes:
//! - **Only the node running the shop refreshes.** The note that a refresh is under way
//!   is written fenced by the shop's lease, so a node that lost the lease (or stalled
//!   past it) cannot start one; its HTTP calls are held too until its leases are sound
//!   (the gateway's gate). Other nodes use the current tokens and never refresh.
//! - **Decisions read the leader.** A refresh, a seed from config and every write read
//!   the record from the stream's leader and write expecting that revision: a node never
//!   refreshes from a copy that has not seen the last refresh.
//! - **An answer the platform gave is kept.** The refresh's result is written by
//!   compare-and-set without the fence, as long as no other refresh or new tokens landed
//!   since this one started: a lease that moved while the platform answered does not
//!   throw away the only valid tokens.

use berth_cluster::mirror::{Codec, Mirror};
use berth_cluster::{ClusterError, Connection, FenceSource};
use bytes::Bytes;
use std::sync::Arc;

/// A sealed record as stored (an empty value: none).
pub struct SealedCodec;

impl Codec for SealedCodec {
    type Record = Bytes;

    fn decode(_key: &str, bytes: &[u8]) -> Result<Option<Bytes>, String> {
        Ok((!bytes.is_empty()).then(|| Bytes::copy_from_slice(bytes)))
    }

    fn encode(record: Option<&Bytes>) -> Bytes {
        record.cloned().unwrap_or_default()
    }
}

pub fn key(shop: &str) -> String {
    format!("cred.{shop}")
}

/// The cluster's sealed records, as one node reads and writes them.
pub struct ClusterRecords {
    conn: Connection,
    fences: Arc<dyn FenceSource>,
    copy: Mirror<SealedCodec>,
}

/// Why a cluster write did not happen.
pub(super) enum WriteRefused {
    /// The record changed since it was read: read and decide again.
    Conflict,
    /// The write needed the shop's lease and this node does not hold it.
    NotOwner,
    Failed(ClusterError),
}

impl ClusterRecords {
    pub async fn open(conn: &Connection, fences: Arc<dyn FenceSource>) -> Result<ClusterRecords, ClusterError> {
        let copy = Mirror::open(conn, "cred.", Box::new(|_, _, _| {})).await?;
        Ok(ClusterRecords { conn: conn.clone(), fences, copy })
    }

    /// The shop's sealed record as this node's copy has it.
    pub(super) fn copy(&self, shop: &str) -> Option<Bytes> {
        self.copy.get(&key(shop)).record
    }

    /// Every shop in this node's copy, with its sealed record.
    pub(super) fn all(&self) -> Vec<(String, Bytes)> {
        let mut out = Vec::new();
        self.copy.walk("cred.", "cred.", |k, v| {
            out.push((k.trim_start_matches("cred.").to_string(), v.clone()));
            true
        });
        out
    }

    /// Whether this node holds the shop's lease (runs the shop).
    pub(super) fn owns(&self, shop: &str) -> bool {
        self.fences.fence(shop).is_some()
    }

    /// The shop's sealed record and its revision, from the stream's leader.
    pub(super) async fn latest(&self, shop: &str) -> Result<(u64, Option<Bytes>), ClusterError> {
        let found = self.conn.latest_shop_key(&key(shop)).await?;
        Ok(found.map_or((0, None), |l| (l.revision, l.value.filter(|v| !v.is_empty()))))
    }

    /// Bring this node's copy of the shop's record up to the stream leader's (a node
    /// taking a shop's lease: its copy may not have the last renewal or the record of a
    /// shop just onboarded elsewhere).
    pub(super) async fn catch_up(&self, shop: &str) -> Result<(), ClusterError> {
        let k = key(shop);
        if let Some(l) = self.conn.latest_shop_key(&k).await? {
            self.copy.applied_writes(&[(k, l.revision, l.value.filter(|v| !v.is_empty()))]);
        }
        Ok(())
    }

    /// Write `value` expecting `revision` (0: absent); `fenced`: only under this node's
    /// lease of the shop.
    pub(super) async fn write(&self, shop: &str, revision: u64, value: Bytes, fenced: bool) -> Result<(), WriteRefused> {
        let fence = match fenced {
            true => Some(self.fences.fence(shop).ok_or(WriteRefused::NotOwner)?),
            false => None,
        };
        let k = key(shop);
        match berth_cluster::mirror::write_cas(&self.conn, fence.as_ref(), vec![(k.clone(), value.clone(), revision)]).await {
            Ok(revs) => {
                self.copy.applied_writes(&[(k, revs[0], Some(value))]);
                Ok(())
            }
            Err(ClusterError::Conflict(_)) => Err(WriteRefused::Conflict),
            Err(ClusterError::Fenced { .. }) => Err(WriteRefused::NotOwner),
            Err(e) => Err(WriteRefused::Failed(e)),
        }
    }
}
