//! The inbound order queue: every new order version is enqueued durably for the ERP,
//! which leases and acks it (`POST /v1/orders/lease`, `POST /v1/orders/ack`). A lease
//! the ERP does not ack in time comes back; acks from an expired lease are refused.
//!
//! Orders are enqueued before the page is committed to the store, with an idempotency
//! key of shop + order id + updated time: a crash between the two re-pulls the page and
//! the repeated enqueue is a no-op, so an order is neither lost nor queued twice.

use crate::queue::{DeadLetter, Enqueued, LeaseQueue, LeaseToken, NewMessage, QueueError, QueueStats, SledQueue};
use crate::store::{OrderData, OrderStore, PageSource, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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
    pub fn new_versions(src: &PageSource<'_>, orders: &[OrderData], store: &OrderStore) -> Result<Vec<QueuedOrder>, StoreError> {
        let mut fresh = Vec::new();
        for o in orders {
            if store.is_new(src.shop, o)? {
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

#[derive(Clone)]
pub struct OrderInbox {
    queue: Arc<SledQueue>,
}

impl OrderInbox {
    pub fn new(queue: Arc<SledQueue>) -> Self {
        OrderInbox { queue }
    }

    /// Enqueue orders durably in one transaction and one fsync. Returns how many were new.
    pub async fn deliver(&self, orders: Vec<QueuedOrder>) -> Result<usize, QueueError> {
        let msgs = orders
            .iter()
            .map(|o| NewMessage {
                partition: o.shop.clone(),
                payload: serde_json::to_vec(o).expect("order serializes"),
                idempotency_key: Some(format!("{}/{}/{}", o.shop, o.order.order_id, o.order.updated_at_ms)),
            })
            .collect();
        let enqueued = self.queue.enqueue_many(ORDERS_QUEUE, msgs).await?;
        Ok(enqueued.iter().filter(|e| matches!(e, Enqueued::New(_))).count())
    }

    pub async fn lease(&self, max: usize, visibility: Duration) -> Result<Vec<LeasedOrder>, QueueError> {
        self.queue
            .lease(ORDERS_QUEUE, max, visibility)
            .await?
            .into_iter()
            .map(|l| {
                let order = serde_json::from_slice(&l.payload)
                    .map_err(|e| QueueError::Corrupt { id: l.token.id, why: e.to_string() })?;
                Ok(LeasedOrder { token: l.token, expires_at_ms: l.expires_at_ms, order })
            })
            .collect()
    }

    pub async fn ack(&self, token: &LeaseToken) -> Result<(), QueueError> {
        self.queue.ack(ORDERS_QUEUE, token).await
    }

    /// Ack a batch with one wait for durability (see [`LeaseQueue::ack_many`]).
    pub async fn ack_many(&self, tokens: &[LeaseToken]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        self.queue.ack_many(ORDERS_QUEUE, tokens).await
    }

    pub async fn nack(&self, token: &LeaseToken, delay: Duration, reason: &str) -> Result<(), QueueError> {
        self.queue.nack(ORDERS_QUEUE, token, delay, reason).await
    }

    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        self.queue.stats(ORDERS_QUEUE)
    }

    pub async fn replay(&self, ids: &[u64]) -> Result<usize, QueueError> {
        self.queue.replay(ORDERS_QUEUE, ids).await
    }

    pub async fn purge(&self, ids: &[u64]) -> Result<usize, QueueError> {
        self.queue.purge(ORDERS_QUEUE, ids).await
    }

    pub fn partition_stats(&self) -> Result<std::collections::BTreeMap<String, QueueStats>, QueueError> {
        self.queue.partition_stats(ORDERS_QUEUE)
    }

    /// Forget idempotency keys older than `ttl` (the order store still drops versions it
    /// has seen, so an old page re-read later is not queued again).
    pub fn expire_keys(&self, ttl: Duration) -> Result<usize, QueueError> {
        self.queue.expire_idempotency_keys(ORDERS_QUEUE, ttl)
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.queue.dead_letters(ORDERS_QUEUE, limit)
    }
}
