//! The order store in cluster mode: the feed in the cluster's shops stream
//! (`berth_cluster::feed`). A shop's pages and its pull position are written by the node
//! holding its lease, fenced; orders a platform pushed (a webhook reaches any node) are
//! written by any node, each order's newest version by compare-and-set. The stream's
//! sequence is the feed's: `GET /v1/orders?after=SEQ` reads it in order, and the ERP's
//! queue is a consumer of the same subjects (`crate::inbox`), so a committed page is
//! queued in the same write.

use super::{FeedInfo, OrderData, OrderRecord, PageOutcome, PageSource, StoreError, SyncState};
use berth_cluster::feed::{self, FeedEntry};
use berth_cluster::lease::FenceSource;
use berth_cluster::{ClusterError, Connection};
use std::sync::Arc;

/// Orders one atomic batch takes with their `latest.*` keys, the position and a fence.
const ORDERS_PER_BATCH: usize = 400;

pub struct ClusterOrders {
    conn: Connection,
    fences: Arc<dyn FenceSource>,
    /// Which class of the feed each shop's orders go to (`berth_cluster::classes`).
    classes: Arc<berth_cluster::classes::Classes>,
}

/// A cluster failure as the store's callers see it: nothing was written, retry.
pub(crate) fn unavailable(e: ClusterError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A feed record as stored has `seq` 0 (the stream gives the sequence when it appends):
/// the record as the ERP reads it carries the stream sequence.
pub(crate) fn with_seq(record: &[u8], seq: u64) -> Result<Vec<u8>, StoreError> {
    const STORED: &[u8] = b"{\"seq\":0,";
    if let Some(rest) = record.strip_prefix(STORED) {
        let mut out = format!("{{\"seq\":{seq},").into_bytes();
        out.extend_from_slice(rest);
        return Ok(out);
    }
    let mut rec: OrderRecord = serde_json::from_slice(record).map_err(|e| StoreError::Corrupt(format!("order feed entry {seq}: {e}")))?;
    rec.seq = seq;
    serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl ClusterOrders {
    pub fn new(conn: Connection, fences: Arc<dyn FenceSource>, classes: Arc<berth_cluster::classes::Classes>) -> Self {
        ClusterOrders { conn, fences, classes }
    }

    pub async fn sync_state(&self, shop: &str) -> Result<SyncState, StoreError> {
        match feed::position(&self.conn, shop).await.map_err(unavailable)? {
            None => Ok(SyncState::default()),
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("sync state of {shop}: {e}"))),
        }
    }

    pub async fn fresh(&self, shop: &str, orders: &[OrderData]) -> Result<Vec<bool>, StoreError> {
        let entries: Vec<(&str, i64, [u8; 32])> = orders.iter().map(|o| (o.order_id.as_str(), o.updated_at_ms, o.version_digest())).collect();
        feed::fresh(&self.conn, shop, &entries).await.map_err(unavailable)
    }

    /// Append a page (with the shop's next position: fenced by this node's lease) or
    /// pushed orders (no position: by compare-and-set from any node). A page larger
    /// than one batch goes in several, the position with the last.
    pub async fn commit(&self, src: &PageSource<'_>, orders: &[OrderData], next: Option<&SyncState>) -> Result<PageOutcome, StoreError> {
        let received_at_ms = berth_types::clock::now_ms();
        let entries = orders
            .iter()
            .map(|o| {
                let rec = src.record(o, received_at_ms);
                let record = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(FeedEntry { order_id: o.order_id.clone(), updated_at_ms: o.updated_at_ms, digest: o.version_digest(), record: record.into() })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let fence = match next {
            Some(_) => Some(self.fences.fence(src.shop).ok_or_else(|| {
                StoreError::Unavailable(format!("this node does not hold shop {}'s lease; its pulls run on the node that does", src.shop))
            })?),
            None => None,
        };
        let position = next.map(|n| serde_json::to_vec(n).map(bytes::Bytes::from)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut out = PageOutcome::default();
        let chunks: Vec<&[FeedEntry]> = if entries.is_empty() { vec![&[]] } else { entries.chunks(ORDERS_PER_BATCH).collect() };
        let last = chunks.len() - 1;
        let class = self.classes.class_of(src.shop);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let appended = match &fence {
                Some(fence) => feed::append_page(&self.conn, fence, &class, chunk, if i == last { position.clone() } else { None }).await,
                None => feed::append_pushed(&self.conn, &class, src.shop, chunk).await,
            }
            .map_err(unavailable)?;
            out.added += appended.added;
            out.duplicates += appended.duplicates;
            out.max_seq = appended.last_seq.or(out.max_seq);
        }
        Ok(out)
    }

    /// As the embedded store's `scan`, from the stream; waits for the cluster's answers
    /// on the calling (blocking) thread.
    pub fn scan(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
        shop: Option<&dyn Fn(&str) -> bool>,
        one: Option<&str>,
        mut each: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, StoreError> {
        // Entries are read from the cluster a chunk at a time (see feed::list).
        const CHUNK: usize = 1000;
        let chunk = limit.clamp(1, CHUNK);
        let handle = tokio::runtime::Handle::current();
        let (mut sent, mut bytes, mut next) = (0usize, 0usize, after);
        loop {
            let page = handle.block_on(feed::list(&self.conn, next, chunk, one)).map_err(unavailable)?;
            let ended = page.len() < chunk;
            for entry in page {
                if shop.is_some_and(|want| !want(&entry.shop)) {
                    next = entry.seq;
                    continue;
                }
                if sent > 0 && bytes.saturating_add(entry.record.len()) > max_bytes {
                    return Ok(next);
                }
                let record = with_seq(&entry.record, entry.seq)?;
                bytes += record.len();
                sent += 1;
                next = entry.seq;
                if !each(record) || sent >= limit {
                    return Ok(next);
                }
            }
            if ended {
                return Ok(next);
            }
        }
    }

    pub async fn feed_info(&self) -> Result<FeedInfo, StoreError> {
        let last = feed::last_sequence(&self.conn).await.map_err(unavailable)?;
        Ok(FeedInfo { entries: None, committed_seq: last, durable_seq: last })
    }

    /// A write the cluster must acknowledge (replicated, and synced where the servers
    /// sync every write).
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        let now = berth_types::clock::now_ms().to_string();
        self.conn.shops.put("probe", now.into()).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_is_read_with_its_stream_sequence() {
        let rec = OrderRecord {
            seq: 0,
            shop: "acme".into(),
            platform: "shopify".into(),
            connector_version: "1.0.0".into(),
            received_at_ms: 5,
            order: OrderData {
                order_id: "1".into(),
                status: berth_types::connector::OrderStatus::Paid,
                platform_status: "paid".into(),
                created_at_ms: 1,
                updated_at_ms: 2,
                currency: "USD".into(),
                total_minor: 100,
                lines: vec![],
                buyer_name_masked: String::new(),
                buyer_phone_masked: String::new(),
                raw: serde_json::json!({"id": 1}),
            },
        };
        let stored = serde_json::to_vec(&rec).unwrap();
        let read: OrderRecord = serde_json::from_slice(&with_seq(&stored, 42).unwrap()).unwrap();
        assert_eq!(read, OrderRecord { seq: 42, ..rec.clone() });
        // Another shape (no leading seq 0) is parsed and written again.
        let other = serde_json::to_vec(&OrderRecord { seq: 7, ..rec.clone() }).unwrap();
        let read: OrderRecord = serde_json::from_slice(&with_seq(&other, 43).unwrap()).unwrap();
        assert_eq!(read.seq, 43);
    }
}
