//! Durable lease queues: what keeps "no order and no stock update is ever lost".
//!
//! A message is enqueued durably (the call returns only after the writer's batch is
//! synced), leased with a visibility timeout, and either acked (gone), nacked with a
//! delay (back later), or, after `max_attempts` leases, moved to the dead letters, from
//! which it can be replayed or purged. An idempotency key makes a repeated enqueue a
//! no-op.
//!
//! [`LeaseQueue`] is the small trait the rest of the host uses; [`StoreQueues`] is the
//! embedded backend on the store. A NATS JetStream backend can plug in behind the trait.

mod index;
pub(crate) mod record;
mod store_queues;

pub use store_queues::StoreQueues;

use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("message {id} is not leased by this token (its lease expired and it was leased again, it was acked, or the token was never issued); nothing changed")]
    LeaseLost { id: u64 },
    #[error("queue name `{0}` may only use a-z, 0-9, `-`, `_` and `.`")]
    BadName(String),
    #[error("stored message {id} is corrupt: {why}")]
    Corrupt { id: u64, why: String },
}

/// A message to enqueue.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Ordering and coalescing domain, e.g. `shop/sku`; free-form.
    pub partition: String,
    pub payload: Vec<u8>,
    /// A second enqueue with the same key is a no-op that returns the first id.
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    New(u64),
    Duplicate(u64),
}

impl Enqueued {
    pub fn id(&self) -> u64 {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => *id,
        }
    }
}

/// What a consumer holds while it works on a message. Ack, nack and extend take it back
/// whole: the lease id is random (128 bits) and stored with the message, so a token
/// cannot be guessed from the message id, and one from an earlier lease is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseToken {
    pub id: u64,
    /// Which lease of the message this is.
    pub attempt: u32,
    /// This lease's random id (hex).
    #[serde(default)]
    pub lease: String,
}

impl LeaseToken {
    /// A new lease of message `id`, its `attempt`-th, with a fresh random id.
    pub fn issue(id: u64, attempt: u32) -> LeaseToken {
        Self::with_bits(id, attempt, fresh_lease())
    }

    pub(crate) fn with_bits(id: u64, attempt: u32, lease: u128) -> LeaseToken {
        LeaseToken { id, attempt, lease: format!("{lease:032x}") }
    }

    /// Whether this token is the lease `stored` (0: none) of a message at `attempt`
    /// (compared in constant time).
    pub fn holds(&self, attempt: u32, stored: u128) -> bool {
        use subtle::ConstantTimeEq;
        let Some(mine) = self.bits() else { return false };
        stored != 0 && self.attempt == attempt && bool::from(mine.to_be_bytes().ct_eq(&stored.to_be_bytes()))
    }

    /// The lease id as a number (`None` when the token's is not 32 hex digits).
    pub fn bits(&self) -> Option<u128> {
        (self.lease.len() == 32).then(|| u128::from_str_radix(&self.lease, 16).ok()).flatten()
    }
}

/// A random lease id, never 0 (which stands for "not leased").
pub(crate) fn fresh_lease() -> u128 {
    rand::random::<u128>().max(1)
}

/// The longest delay a nack may ask for, and the longest lease: a week.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `now + d` in ms, saturating (a huge duration cannot wrap a schedule into the past).
pub fn later(now_ms: i64, d: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Clone, Debug)]
pub struct Leased {
    pub token: LeaseToken,
    pub partition: String,
    pub payload: Vec<u8>,
    pub enqueued_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub id: u64,
    pub partition: String,
    pub attempts: u32,
    pub reason: String,
    pub enqueued_at_ms: i64,
    pub died_at_ms: i64,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QueueStats {
    /// Waiting to be leased now.
    pub ready: u64,
    /// Leased and not yet acked, or nacked and waiting for their delay.
    pub in_flight: u64,
    pub dead: u64,
    /// Age of the oldest message not yet acked, in ms.
    pub oldest_age_ms: Option<i64>,
}

/// Policy of one queue.
#[derive(Clone, Copy, Debug)]
pub struct QueuePolicy {
    pub max_attempts: u32,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy { max_attempts: 10 }
    }
}

/// The queue operations the host needs. Every mutating call returns only once its
/// effect is durable.
#[allow(async_fn_in_trait)]
pub trait LeaseQueue: Send + Sync {
    async fn enqueue(&self, queue: &str, msg: NewMessage) -> Result<Enqueued, QueueError>;
    /// Enqueue a batch all or nothing, with one wait for durability: each message's
    /// outcome in order (a key seen before, or earlier in the batch, is a `Duplicate`).
    async fn enqueue_many(&self, queue: &str, msgs: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError>;
    async fn lease(&self, queue: &str, max: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        self.lease_within(queue, max, usize::MAX, visibility).await
    }
    /// Lease at most `max` messages whose payloads add up to at most `max_bytes` — at
    /// least one, however large, when any is due.
    async fn lease_within(&self, queue: &str, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError>;
    async fn ack(&self, queue: &str, token: &LeaseToken) -> Result<(), QueueError>;
    /// Ack a batch with one wait for durability: each token's own outcome in order (a
    /// lost lease fails alone); `Err` when the batch could not be made durable.
    async fn ack_many(&self, queue: &str, tokens: &[LeaseToken]) -> Result<Vec<Result<(), QueueError>>, QueueError>;
    /// Give a message back, visible again after `delay`; `reason` is kept for the
    /// dead-letter record if this was the last attempt.
    async fn nack(&self, queue: &str, token: &LeaseToken, delay: Duration, reason: &str) -> Result<(), QueueError>;
    /// Keep a lease for `visibility` more from now (long ERP work); the expiry.
    async fn extend(&self, queue: &str, token: &LeaseToken, visibility: Duration) -> Result<i64, QueueError>;
    fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Move dead letters back to ready with their attempts reset.
    async fn replay(&self, queue: &str, ids: &[u64]) -> Result<usize, QueueError>;
    async fn purge(&self, queue: &str, ids: &[u64]) -> Result<usize, QueueError>;
    fn stats(&self, queue: &str) -> Result<QueueStats, QueueError>;
    /// The same figures per partition (counters kept per partition: costs the number of
    /// partitions, not of messages).
    fn partition_stats(&self, queue: &str) -> Result<std::collections::BTreeMap<String, QueueStats>, QueueError>;
}
