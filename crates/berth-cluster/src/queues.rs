//! The ERP's order queue over every class of the feed: one [`OrderQueue`] (a durable
//! consumer) per class ([`crate::classes`]), opened as classes appear. A lease takes
//! from the classes the caller's scope leases from, starting at a different one each
//! time so that no class waits behind another's backlog; an ack, nack or extension goes
//! to the class its token names; dead letters, counts and replays are the queue's.

use crate::classes::{Classes, ALL};
use crate::connect::Connection;
use crate::error::ClusterError;
use crate::feed::{DeadRecord, LeasedRecord, OrderQueue, QueueSettings, QueueToken};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One class's counts, as the server has them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Depth {
    pub ready: u64,
    pub in_flight: u64,
    pub oldest_ms: Option<i64>,
}

impl Depth {
    /// The counts of `self` and `other` together.
    pub fn plus(self, other: Depth) -> Depth {
        let oldest_ms = match (self.oldest_ms, other.oldest_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Depth { ready: self.ready + other.ready, in_flight: self.in_flight + other.in_flight, oldest_ms }
    }
}

pub struct OrderQueues {
    conn: Connection,
    name: String,
    settings: QueueSettings,
    classes: Arc<Classes>,
    open: RwLock<HashMap<String, Arc<OrderQueue>>>,
    /// Opening a class's consumer, one at a time.
    opening: tokio::sync::Mutex<()>,
    turn: AtomicUsize,
}

impl OrderQueues {
    /// Queue `name` (its class [`ALL`] opened at once).
    pub async fn open(conn: &Connection, name: &str, settings: QueueSettings, classes: Arc<Classes>) -> Result<OrderQueues, ClusterError> {
        let all = Arc::new(OrderQueue::open(conn, name, ALL, settings.clone()).await?);
        Ok(OrderQueues {
            conn: conn.clone(),
            name: name.to_string(),
            settings,
            classes,
            open: RwLock::new(HashMap::from([(ALL.to_string(), all)])),
            opening: tokio::sync::Mutex::new(()),
            turn: AtomicUsize::new(0),
        })
    }

    pub fn classes(&self) -> &Arc<Classes> {
        &self.classes
    }

    fn opened(&self) -> Vec<Arc<OrderQueue>> {
        self.open.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Class `class`'s queue, opened (its consumer created) when first needed.
    async fn class(&self, class: &str) -> Result<Arc<OrderQueue>, ClusterError> {
        if let Some(q) = self.open.read().unwrap_or_else(|p| p.into_inner()).get(class) {
            return Ok(q.clone());
        }
        let _one = self.opening.lock().await;
        if let Some(q) = self.open.read().unwrap_or_else(|p| p.into_inner()).get(class) {
            return Ok(q.clone());
        }
        let q = Arc::new(OrderQueue::open(&self.conn, &self.name, class, self.settings.clone()).await?);
        self.open.write().unwrap_or_else(|p| p.into_inner()).insert(class.to_string(), q.clone());
        Ok(q)
    }

    /// The class whose consumer a token names (`None`: not one of this queue's).
    fn class_of(&self, token: &QueueToken) -> Option<String> {
        let consumer = crate::visibility::consumer_of(&token.ack)?;
        consumer.strip_prefix(&format!("{}_", self.name)).map(String::from)
    }

    /// The queue a token's lease came from.
    async fn of(&self, token: &QueueToken) -> Result<Arc<OrderQueue>, ClusterError> {
        let bad = || ClusterError::Nats("not a lease token of this queue".into());
        let class = self.class_of(token).ok_or_else(bad)?;
        // A token names a class the cluster has: a forged one opens no consumer.
        if !self.classes.exists(&class).await? {
            return Err(bad());
        }
        self.class(&class).await
    }

    /// Up to `max` orders for `visibility` from the classes scope `scope` leases from
    /// (`None`: every class), each class's waiting at most `wait` for its first.
    pub async fn lease(&self, scope: Option<&str>, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<LeasedRecord>, ClusterError> {
        let classes = self.classes.leasable(scope);
        if classes.is_empty() {
            return Ok(Vec::new());
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % classes.len();
        let mut out = Vec::new();
        for class in classes.iter().cycle().skip(start).take(classes.len()) {
            if out.len() >= max {
                break;
            }
            out.extend(self.class(class).await?.lease(max - out.len(), wait, visibility).await?);
        }
        Ok(out)
    }

    /// Whether a token of scope `scope` may settle this lease (its class is one the
    /// scope sees). `false` for a token that is not this queue's.
    pub fn sees(&self, token: &QueueToken, scope: Option<&str>) -> bool {
        self.class_of(token).is_some_and(|class| self.classes.sees(&class, scope))
    }

    pub async fn ack(&self, token: &QueueToken) -> Result<(), ClusterError> {
        self.of(token).await?.ack(token).await
    }

    pub async fn ack_many(&self, tokens: &[QueueToken]) -> Vec<Result<(), ClusterError>> {
        futures_util::future::join_all(tokens.iter().map(|t| self.ack(t))).await
    }

    pub async fn nack(&self, token: &QueueToken, delay: Duration, reason: &str) -> Result<(), ClusterError> {
        self.of(token).await?.nack(token, delay, reason).await
    }

    pub async fn extend(&self, token: &QueueToken, visibility: Duration) -> Result<i64, ClusterError> {
        self.of(token).await?.extend(token, visibility).await
    }

    fn any(&self) -> Arc<OrderQueue> {
        self.open.read().unwrap_or_else(|p| p.into_inner())[ALL].clone()
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadRecord>, ClusterError> {
        self.any().dead_letters(limit).await
    }

    pub async fn replay(&self, ids: &[u64]) -> Result<usize, ClusterError> {
        self.any().replay(ids).await
    }

    pub async fn purge(&self, ids: &[u64]) -> Result<usize, ClusterError> {
        self.any().purge(ids).await
    }

    /// Waiting, leased and the oldest not acked (ms since the epoch) of each class the
    /// cluster knows.
    pub async fn depth_by_class(&self) -> Result<Vec<(String, Depth)>, ClusterError> {
        let mut out = Vec::new();
        for class in self.classes.leasable(None) {
            let (ready, in_flight, oldest_ms) = self.class(&class).await?.depth().await?;
            out.push((class, Depth { ready, in_flight, oldest_ms }));
        }
        Ok(out)
    }

    /// Each shop's counts over every class ([`crate::feed::OrderQueue::depth_by_shop`],
    /// at most `limit` orders read per class), and whether a class's read stopped at it.
    pub async fn depth_by_shop(&self, limit: usize) -> Result<(BTreeMap<String, Depth>, bool), ClusterError> {
        let mut out: BTreeMap<String, Depth> = BTreeMap::new();
        let mut capped = false;
        for class in self.classes.leasable(None) {
            let (shops, cut) = self.class(&class).await?.depth_by_shop(limit).await?;
            capped |= cut;
            for (shop, d) in shops {
                let held = out.entry(shop).or_default();
                *held = held.plus(d);
            }
        }
        Ok((out, capped))
    }

    pub fn timed_leases(&self) -> usize {
        self.opened().iter().map(|q| q.timed_leases()).sum()
    }

    pub fn ack_wait(&self) -> Duration {
        self.settings.visibility
    }

    /// The shop of each dead letter by its sequence (`None`: no such dead letter).
    pub async fn dead_shops_of(&self, ids: &[u64]) -> Result<HashMap<u64, Option<String>>, ClusterError> {
        let mut out = HashMap::with_capacity(ids.len());
        for &id in ids {
            let found = self.conn.latest_shop_key(&format!("dead.{}.{id}", self.name)).await?.and_then(|l| l.value);
            let shop = found.and_then(|v| serde_json::from_slice::<DeadRecord>(&v).ok()).map(|d| d.shop);
            out.insert(id, shop);
        }
        Ok(out)
    }

    /// The shop of each order in the feed by its sequence (`None`: not a feed entry).
    pub async fn shops_of(&self, ids: &[u64]) -> Result<HashMap<u64, Option<String>>, ClusterError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let mut out = HashMap::with_capacity(ids.len());
        for &id in ids {
            let shop = match self.conn.shops_stream().get_raw_message(id).await {
                Ok(msg) if msg.subject.starts_with(&format!("$KV.{}.feed.", self.conn.names.shops)) => Some(crate::feed::shop_of(&msg.subject)),
                Ok(_) => None,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => None,
                Err(e) => return Err(ClusterError::nats(e)),
            };
            out.insert(id, shop);
        }
        Ok(out)
    }
}
