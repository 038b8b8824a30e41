//! The ERP's order queue in cluster mode: a durable consumer per class of the cluster's
//! order feed (`berth_cluster::queues::OrderQueues`), served by any node. A lease token
//! carries the delivery's ack subject (`lease`), checked to be this queue's before it is
//! used. A token scoped to some shops leases from the classes its scope sees, and
//! settles only leases of those classes.
//!
//! Differences from the embedded queue, said where they show: a lease's visibility is
//! kept by the node that leased it (`berth_cluster::visibility`), so a lease outlives
//! that node's death by at most the consumer's ack wait; the queue's counts are read
//! from the server every 2 seconds.

use super::QueuedOrder;
use crate::queue::{DeadLetter, LeaseToken, Leased, QueueError, QueueStats};
use crate::store::{OrderRecord, StoreError};
use berth_cluster::feed::QueueToken;
use berth_cluster::queues::OrderQueues;
use berth_cluster::ClusterError;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long a lease call waits for the first order when none is ready.
const LEASE_WAIT: Duration = Duration::from_millis(100);
/// How often the queue's counts are read from the server.
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Per-shop counts read the unsettled orders of each class, at most this many.
const SHOP_COUNTS_READ: usize = 20_000;

pub struct ClusterInbox {
    queue: OrderQueues,
    levels: Mutex<Levels>,
    /// The per-shop counts last read (when asked, at most every [`STATS_EVERY`]), and
    /// whether a read stopped at [`SHOP_COUNTS_READ`].
    by_shop: tokio::sync::Mutex<Option<(std::time::Instant, super::ShopCounts)>>,
}

#[derive(Default)]
struct Levels {
    stats: Option<QueueStats>,
    /// Each class's counts (what a scoped token's view sums).
    by_class: Vec<(String, berth_cluster::queues::Depth)>,
    dead: Vec<DeadLetter>,
}

fn unavailable(e: ClusterError) -> QueueError {
    QueueError::Store(StoreError::Unavailable(e.to_string()))
}

fn to_queue(token: &LeaseToken) -> QueueToken {
    QueueToken { id: token.id, ack: token.lease.clone() }
}

/// An ack, nack or extension failed: a token that is not one of this queue's deliveries
/// (or no longer pending) is a lost lease, anything else the cluster's failure.
fn settle_error(token: &LeaseToken, e: ClusterError) -> QueueError {
    match e {
        ClusterError::Nats(why) if why.contains("not a lease token") => QueueError::LeaseLost { id: token.id },
        e => unavailable(e),
    }
}

impl ClusterInbox {
    /// The queue, with its counts kept fresh by a task that ends with it.
    pub fn start(queue: OrderQueues) -> Arc<ClusterInbox> {
        let inbox = Arc::new(ClusterInbox { queue, levels: Mutex::new(Levels::default()), by_shop: Default::default() });
        let weak = Arc::downgrade(&inbox);
        tokio::spawn(refresh(weak));
        inbox
    }

    /// Lease from the classes `scope` (a token scope's key; `None`: unscoped) sees.
    pub async fn lease(&self, scope: Option<&str>, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        let leased = self.queue.lease(scope, max, LEASE_WAIT, visibility).await.map_err(unavailable)?;
        let expires_at_ms = berth_types::clock::now_ms() + visibility.as_millis() as i64;
        let mut out = Vec::with_capacity(leased.len());
        let mut bytes = 0usize;
        for l in leased {
            let rec: OrderRecord = serde_json::from_slice(&l.record).map_err(|e| QueueError::Corrupt { id: l.token.id, why: e.to_string() })?;
            let queued = QueuedOrder { shop: rec.shop, platform: rec.platform, connector_version: rec.connector_version, order: rec.order };
            let payload = serde_json::to_vec(&queued).map_err(|e| QueueError::Corrupt { id: l.token.id, why: e.to_string() })?;
            if !out.is_empty() && bytes.saturating_add(payload.len()) > max_bytes {
                // Over the answer's size: back to the queue at once, for the next lease.
                let token = LeaseToken { id: l.token.id, attempt: l.attempt, lease: l.token.ack };
                self.queue.nack(&to_queue(&token), Duration::ZERO, "").await.map_err(unavailable)?;
                continue;
            }
            bytes += payload.len();
            out.push(Leased {
                token: LeaseToken { id: l.token.id, attempt: l.attempt, lease: l.token.ack },
                partition: queued.shop,
                payload,
                enqueued_at_ms: rec.received_at_ms,
                expires_at_ms,
            });
        }
        Ok(out)
    }

    pub async fn ack(&self, token: &LeaseToken) -> Result<(), QueueError> {
        self.queue.ack(&to_queue(token)).await.map_err(|e| settle_error(token, e))
    }

    pub async fn ack_many(&self, tokens: &[LeaseToken]) -> Vec<Result<(), QueueError>> {
        let queue_tokens: Vec<QueueToken> = tokens.iter().map(to_queue).collect();
        self.queue.ack_many(&queue_tokens).await.into_iter().zip(tokens).map(|(r, t)| r.map_err(|e| settle_error(t, e))).collect()
    }

    /// The lease kept `visibility` from now; its new expiry.
    pub async fn extend(&self, token: &LeaseToken, visibility: Duration) -> Result<i64, QueueError> {
        self.queue.extend(&to_queue(token), visibility).await.map_err(|e| settle_error(token, e))
    }

    pub async fn nack(&self, token: &LeaseToken, delay: Duration, reason: &str) -> Result<(), QueueError> {
        self.queue.nack(&to_queue(token), delay, reason).await.map_err(|e| settle_error(token, e))
    }

    /// Whether a token scoped to `scope` may settle this lease (its class is one the
    /// scope sees).
    pub fn sees(&self, token: &LeaseToken, scope: &str) -> bool {
        self.queue.sees(&to_queue(token), Some(scope))
    }

    /// The shop of each dead letter (`None`: no such dead letter).
    pub async fn dead_shops_of(&self, ids: &[u64]) -> Result<std::collections::HashMap<u64, Option<String>>, QueueError> {
        self.queue.dead_shops_of(ids).await.map_err(unavailable)
    }

    /// Leases whose visibility this node keeps (given back or renewed by its timers).
    pub fn timed_leases(&self) -> usize {
        self.queue.timed_leases()
    }

    pub async fn replay(&self, ids: &[u64]) -> Result<usize, QueueError> {
        let n = self.queue.replay(ids).await.map_err(unavailable)?;
        self.refresh_now().await;
        Ok(n)
    }

    pub async fn purge(&self, ids: &[u64]) -> Result<usize, QueueError> {
        let n = self.queue.purge(ids).await.map_err(unavailable)?;
        self.refresh_now().await;
        Ok(n)
    }

    /// The counts of the classes scope `scope` leases from (its dead letters not
    /// counted: the caller counts those of its shops).
    pub fn scoped_stats(&self, scope: &str) -> Result<QueueStats, QueueError> {
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if levels.stats.is_none() {
            return Err(QueueError::Store(StoreError::Unavailable("the order queue's counts have not been read from the cluster yet".into())));
        }
        let classes = self.queue.classes();
        let total = levels.by_class.iter().filter(|(class, _)| classes.sees(class, Some(scope))).fold(berth_cluster::queues::Depth::default(), |t, (_, d)| t.plus(*d));
        Ok(QueueStats { ready: total.ready, in_flight: total.in_flight, dead: 0, oldest_age_ms: age(total.oldest_ms) })
    }

    /// Per shop: read from the stream when asked (one read at a time, kept 2 s). Orders
    /// not yet delivered and dead letters are exact; `in_flight` is an upper bound (see
    /// `OrderQueue::depth_by_shop`), said in the answer's note.
    pub async fn partition_stats(&self) -> Result<super::ShopCounts, QueueError> {
        let mut held = self.by_shop.lock().await;
        if let Some((_, counts)) = held.as_ref().filter(|(at, _)| at.elapsed() < STATS_EVERY) {
            return Ok(counts.clone());
        }
        let (depths, capped) = self.queue.depth_by_shop(SHOP_COUNTS_READ).await.map_err(unavailable)?;
        let mut shops: std::collections::BTreeMap<String, QueueStats> = depths
            .into_iter()
            .map(|(shop, d)| (shop, QueueStats { ready: d.ready, in_flight: d.in_flight, dead: 0, oldest_age_ms: age(d.oldest_ms) }))
            .collect();
        for d in &self.levels.lock().unwrap_or_else(|p| p.into_inner()).dead {
            shops.entry(d.partition.clone()).or_default().dead += 1;
        }
        let mut note = "cluster mode: per shop, in_flight counts the orders delivered and not yet under the queue's ack floor (an upper bound: an order acked out of turn stays counted until those before it are settled); ready and dead are exact".to_string();
        if capped {
            note += &format!("; only the oldest {SHOP_COUNTS_READ} unsettled orders of each class of shops were counted");
        }
        let counts = super::ShopCounts { shops, note: Some(note) };
        *held = Some((std::time::Instant::now(), counts.clone()));
        Ok(counts)
    }

    /// The counts as last read from the server (at most 2 s old).
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        levels.stats.clone().ok_or_else(|| QueueError::Store(StoreError::Unavailable("the order queue's counts have not been read from the cluster yet".into())))
    }

    pub fn dead_letters(&self, limit: usize) -> Vec<DeadLetter> {
        self.levels.lock().unwrap_or_else(|p| p.into_inner()).dead.iter().take(limit).cloned().collect()
    }

    async fn refresh_now(&self) {
        let read = async {
            let by_class = self.queue.depth_by_class().await?;
            let dead = self.queue.dead_letters(usize::MAX).await?;
            Ok::<_, ClusterError>((by_class, dead))
        };
        match read.await {
            Ok((by_class, dead)) => {
                let total = by_class.iter().fold(berth_cluster::queues::Depth::default(), |t, (_, d)| t.plus(*d));
                let stats = QueueStats { ready: total.ready, in_flight: total.in_flight, dead: dead.len() as u64, oldest_age_ms: age(total.oldest_ms) };
                let dead = dead
                    .into_iter()
                    .map(|d| DeadLetter {
                        id: d.seq,
                        partition: d.shop,
                        attempts: d.attempts,
                        reason: d.reason,
                        enqueued_at_ms: 0,
                        died_at_ms: d.at_ms,
                        payload: Vec::new(),
                    })
                    .collect();
                *self.levels.lock().unwrap_or_else(|p| p.into_inner()) = Levels { stats: Some(stats), by_class, dead };
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the order queue's counts from the cluster"),
        }
    }
}

/// How long ago `at_ms` was.
fn age(at_ms: Option<i64>) -> Option<i64> {
    at_ms.map(|at| (berth_types::clock::now_ms() - at).max(0))
}

async fn refresh(inbox: Weak<ClusterInbox>) {
    loop {
        let Some(inbox) = inbox.upgrade() else { return };
        inbox.refresh_now().await;
        drop(inbox);
        tokio::time::sleep(STATS_EVERY).await;
    }
}
