//! The inbound order queue: every new order version is enqueued durably for the ERP,
//! which leases and acks it (`POST /v1/orders/lease`, `POST /v1/orders/ack`). A lease
//! the ERP does not ack in time comes back; acks from an expired lease are refused.
//!
//! Orders are enqueued before the page is committed to the store, with an idempotency
//! key of shop + order id + updated time + content digest: a crash between the two
//! re-pulls the page and the repeated enqueue is a no-op, so an order is neither lost nor
//! queued twice.

use crate::queue::{DeadLetter, Enqueued, LeaseQueue, LeaseToken, NewMessage, QueueError, QueueStats, StoreQueues};
use crate::store::{OrderData, OrderStore, PageSource, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub mod cluster;

pub const ORDERS_QUEUE: &str = "orders";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueuedOrder {
    pub shop: String,
    pub platform: String,
    pub connector_version: String,
    pub order: OrderData,
}

impl QueuedOrder {
    /// The versions among `orders` the store has not seen, as they are queued for the ERP.
    pub async fn new_versions(src: &PageSource<'_>, orders: &[OrderData], store: &OrderStore) -> Result<Vec<QueuedOrder>, StoreError> {
        let mut fresh = Vec::new();
        let new = store.fresh(src.shop, orders).await?;
        for (o, new) in orders.iter().zip(new) {
            if new {
                fresh.push(QueuedOrder {
                    shop: src.shop.to_string(),
                    platform: src.platform.to_string(),
                    connector_version: src.connector_version.to_string(),
                    order: o.clone(),
                });
            }
        }
        Ok(fresh)
    }
}

#[derive(Debug, Serialize)]
pub struct LeasedOrder {
    pub token: LeaseToken,
    pub expires_at_ms: i64,
    #[serde(flatten)]
    pub order: QueuedOrder,
}

/// A leased order as the lease answer's JSON, in chunks that share the payload's
/// memory: `{"token":..,"expires_at_ms":..,` and the queued order's own fields — the
/// same document [`LeasedOrder`] serializes to.
pub fn lease_json(comma: bool, lease: crate::queue::Leased) -> Vec<bytes::Bytes> {
    let head = format!(
        "{}{{\"token\":{},\"expires_at_ms\":{},",
        if comma { "," } else { "" },
        serde_json::to_string(&lease.token).unwrap_or_default(),
        lease.expires_at_ms
    );
    let payload = bytes::Bytes::from(lease.payload);
    // A queued order is a JSON object with fields: its fields follow the head.
    if payload.len() > 2 && payload.starts_with(b"{") && !payload.starts_with(b"{}") {
        vec![bytes::Bytes::from(head), payload.slice(1..)]
    } else {
        vec![bytes::Bytes::from(format!("{head}\"order\":null}}"))]
    }
}

/// The order queue's counts per shop, and what they mean where they are not exact.
#[derive(Debug, Clone, Default)]
pub struct ShopCounts {
    pub shops: std::collections::BTreeMap<String, QueueStats>,
    pub note: Option<String>,
}

/// The ERP's order queue: the embedded store's lease queue, or (cluster mode) a durable
/// consumer of the cluster's order feed ([`cluster`]).
#[derive(Clone)]
pub struct OrderInbox {
    queue: Arc<StoreQueues>,
    cluster: Option<Arc<cluster::ClusterInbox>>,
}

impl OrderInbox {
    pub fn new(queue: Arc<StoreQueues>) -> Self {
        OrderInbox { queue, cluster: None }
    }

    /// Cluster mode: leases, acks and dead letters on `queue` (a consumer of the feed);
    /// `local` is the node's embedded queues, which hold no orders then.
    pub fn cluster(local: Arc<StoreQueues>, queue: berth_cluster::queues::OrderQueues) -> Self {
        OrderInbox { queue: local, cluster: Some(cluster::ClusterInbox::start(queue)) }
    }

    /// Enqueue orders durably in one transaction and one fsync. Returns how many were new.
    /// In cluster mode the feed is the queue: committing the page queues its new
    /// versions, and this does nothing.
    pub async fn deliver(&self, orders: Vec<QueuedOrder>) -> Result<usize, QueueError> {
        if self.cluster.is_some() {
            return Ok(orders.len());
        }
        let msgs = orders
            .iter()
            .map(|o| NewMessage {
                partition: o.shop.clone(),
                payload: serde_json::to_vec(o).expect("order serializes"),
                // A version: the order at its updated time with this content.
                idempotency_key: Some(format!("{}/{}/{}/{}", o.shop, o.order.order_id, o.order.updated_at_ms, hex::encode(&o.order.version_digest()[..8]))),
            })
            .collect();
        let enqueued = self.queue.enqueue_many(ORDERS_QUEUE, msgs).await?;
        Ok(enqueued.iter().filter(|e| matches!(e, Enqueued::New(_))).count())
    }

    pub async fn lease(&self, max: usize, visibility: Duration) -> Result<Vec<LeasedOrder>, QueueError> {
        self.lease_within(max, usize::MAX, visibility).await
    }

    /// Lease at most `max` orders and `max_bytes` of them (at least one).
    pub async fn lease_within(&self, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<LeasedOrder>, QueueError> {
        self.lease_raw(max, max_bytes, visibility)
            .await?
            .into_iter()
            .map(|l| {
                let order = serde_json::from_slice(&l.payload)
                    .map_err(|e| QueueError::Corrupt { id: l.token.id, why: e.to_string() })?;
                Ok(LeasedOrder { token: l.token, expires_at_ms: l.expires_at_ms, order })
            })
            .collect()
    }

    /// Lease orders as queued (each payload a [`QueuedOrder`]'s JSON, not parsed), at
    /// most `max` and `max_bytes` of them (at least one).
    pub async fn lease_raw(&self, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<crate::queue::Leased>, QueueError> {
        if let Some(c) = &self.cluster {
            return c.lease(None, max, max_bytes, visibility).await;
        }
        self.queue.lease_within(ORDERS_QUEUE, max, max_bytes, visibility).await
    }

    /// A tenant's lease: `lease_raw` from the shops a token scope sees — on one node
    /// `shops`' partitions ([`StoreQueues::lease_partitions`]), in cluster mode the
    /// classes of the feed scope `scope` (its key) sees.
    pub async fn lease_raw_scoped(&self, scope: &str, shops: &[String], max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<crate::queue::Leased>, QueueError> {
        if let Some(c) = &self.cluster {
            return c.lease(Some(scope), max, max_bytes, visibility).await;
        }
        self.queue.lease_partitions(ORDERS_QUEUE, shops, max, max_bytes, visibility).await
    }

    /// Whether a token of scope `scope` (its key; `sees` tells its shops) may settle the
    /// lease `token`: its order is of a shop the scope sees (on one node; `false` when the
    /// order is not queued), of a class the scope sees (cluster mode).
    pub fn may_settle(&self, token: &LeaseToken, scope: &str, sees: impl Fn(&str) -> bool) -> Result<bool, QueueError> {
        if let Some(c) = &self.cluster {
            return Ok(c.sees(token, scope));
        }
        Ok(self.queue.partition_of(ORDERS_QUEUE, token.id)?.is_some_and(|shop| sees(&shop)))
    }

    /// The shop of each dead-lettered order (`None` when there is no such dead letter).
    pub async fn dead_shops_of(&self, ids: &[u64]) -> Result<std::collections::HashMap<u64, Option<String>>, QueueError> {
        if let Some(c) = &self.cluster {
            return c.dead_shops_of(ids).await;
        }
        ids.iter().map(|&id| Ok((id, self.queue.dead_partition_of(ORDERS_QUEUE, id)?))).collect()
    }

    pub async fn ack(&self, token: &LeaseToken) -> Result<(), QueueError> {
        if let Some(c) = &self.cluster {
            return c.ack(token).await;
        }
        self.queue.ack(ORDERS_QUEUE, token).await
    }

    /// Ack a batch with one wait for durability (see [`LeaseQueue::ack_many`]).
    pub async fn ack_many(&self, tokens: &[LeaseToken]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        if let Some(c) = &self.cluster {
            return Ok(c.ack_many(tokens).await);
        }
        self.queue.ack_many(ORDERS_QUEUE, tokens).await
    }

    /// Keep a lease `visibility` more from now; the new expiry.
    pub async fn extend(&self, token: &LeaseToken, visibility: Duration) -> Result<i64, QueueError> {
        if let Some(c) = &self.cluster {
            return c.extend(token, visibility).await;
        }
        self.queue.extend(ORDERS_QUEUE, token, visibility).await
    }

    pub async fn nack(&self, token: &LeaseToken, delay: Duration, reason: &str) -> Result<(), QueueError> {
        if let Some(c) = &self.cluster {
            return c.nack(token, delay, reason).await;
        }
        self.queue.nack(ORDERS_QUEUE, token, delay, reason).await
    }

    /// Cluster mode: the leases this node keeps a timer for (their visibility differs
    /// from the queue's ack wait); `None` on one node.
    pub fn timed_leases(&self) -> Option<usize> {
        self.cluster.as_ref().map(|c| c.timed_leases())
    }

    /// Cluster mode: the counts of the orders a token of scope `scope` (its key) leases
    /// from; `None` on one node (where per-shop counts are kept: `partition_stats`).
    pub fn scoped_stats(&self, scope: &str) -> Option<Result<QueueStats, QueueError>> {
        self.cluster.as_ref().map(|c| c.scoped_stats(scope))
    }

    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        if let Some(c) = &self.cluster {
            return c.stats();
        }
        self.queue.stats(ORDERS_QUEUE)
    }

    pub async fn replay(&self, ids: &[u64]) -> Result<usize, QueueError> {
        if let Some(c) = &self.cluster {
            return c.replay(ids).await;
        }
        self.queue.replay(ORDERS_QUEUE, ids).await
    }

    pub async fn purge(&self, ids: &[u64]) -> Result<usize, QueueError> {
        if let Some(c) = &self.cluster {
            return c.purge(ids).await;
        }
        self.queue.purge(ORDERS_QUEUE, ids).await
    }

    /// The queue's counts per shop (cluster mode: read from the stream, see
    /// [`cluster::ClusterInbox::partition_stats`]).
    pub async fn partition_stats(&self) -> Result<ShopCounts, QueueError> {
        if let Some(c) = &self.cluster {
            return c.partition_stats().await;
        }
        Ok(ShopCounts { shops: self.queue.partition_stats(ORDERS_QUEUE)?, note: None })
    }

    /// Forget idempotency keys older than `ttl` (the order store still drops versions it
    /// has seen, so an old page re-read later is not queued again).
    pub async fn expire_keys(&self, ttl: Duration) -> Result<usize, QueueError> {
        // Cluster mode keys versions by the feed's `latest.*` records, not by keys that
        // expire: nothing to forget.
        if self.cluster.is_some() {
            return Ok(0);
        }
        self.queue.expire_idempotency_keys(ORDERS_QUEUE, ttl).await
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if let Some(c) = &self.cluster {
            return Ok(c.dead_letters(limit));
        }
        self.queue.dead_letters(ORDERS_QUEUE, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_written_in_chunks_is_the_document_leased_order_serializes_to() {
        let order = QueuedOrder {
            shop: "acme".into(),
            platform: "shopify".into(),
            connector_version: "1.0.0".into(),
            order: crate::store::OrderData {
                order_id: "1001".into(),
                status: berth_types::connector::OrderStatus::Paid,
                platform_status: "paid".into(),
                created_at_ms: 1,
                updated_at_ms: 2,
                currency: "USD".into(),
                total_minor: 500,
                lines: Vec::new(),
                buyer_name_masked: "J***".into(),
                buyer_phone_masked: String::new(),
                raw: serde_json::json!({"id": 1001, "note": "é\\n"}),
            },
        };
        let token = LeaseToken::issue(7, 1);
        let leased = crate::queue::Leased { token: token.clone(), partition: "acme".into(), payload: serde_json::to_vec(&order).unwrap(), enqueued_at_ms: 0, expires_at_ms: 99 };
        let chunks = lease_json(true, leased);
        let text: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let parsed: serde_json::Value = serde_json::from_slice(&text[1..]).expect("valid JSON after the comma");
        assert_eq!(text[0], b',');
        let expected = serde_json::to_value(LeasedOrder { token, expires_at_ms: 99, order }).unwrap();
        assert_eq!(parsed, expected);
    }
}
