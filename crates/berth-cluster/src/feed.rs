//! The order feed and the ERP's order queue, in the shops stream.
//!
//! A shop's owner appends each new order version as its own key,
//! `feed.<class>.<shop>.<order>.<updated>.<digest>`, together with `latest.<shop>.<order>` (what
//! decides that a version is new) and the shop's pull position, as one fenced atomic
//! batch ([`crate::fenced::put_all`]): a page and its position land together, under the
//! lease, or not at all. The stream's sequence numbers are the feed's order: a batch is
//! visible whole or not at all, so a reader never skips an entry.
//!
//! The ERP's lease/ack queue is a durable JetStream consumer per class of shops
//! ([`crate::classes`]: the shops the same token scopes see), on `feed.<class>.>`: a
//! lease is a fetch, an ack acks, a nack is a delayed NAK, an extension is a progress
//! ack; an order delivered `max_attempts` times and not acked becomes a dead letter
//! (`dead.<seq>`) and is terminated. Any node serves any of these: the token carries the
//! delivery's ack subject, checked to be this consumer's before it is used, and the node
//! keeping the lease's own visibility ([`crate::visibility`]).

use crate::connect::Connection;
use crate::error::ClusterError;
use crate::fenced;
use crate::lease::Fence;
use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;
use crate::visibility::{Token, Visibility};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One version of an order, as the owner found it on the platform.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub order_id: String,
    pub updated_at_ms: i64,
    /// A digest of the normalized order: an equal updated time with another digest is a
    /// new version (platforms stamp whole seconds).
    pub digest: [u8; 32],
    /// The record the ERP reads, as stored.
    pub record: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Appended {
    pub added: usize,
    pub duplicates: usize,
    /// The stream sequence of the batch's last write.
    pub last_seq: Option<u64>,
}

/// Order ids are the platform's: any bytes. Keys carry them base64url-encoded.
fn key_part(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

fn latest_key(shop: &str, order: &str) -> String {
    format!("latest.{shop}.{}", key_part(order))
}

fn version_key(class: &str, shop: &str, e: &FeedEntry) -> String {
    format!("feed.{class}.{shop}.{}.{}.{}", key_part(&e.order_id), e.updated_at_ms.max(0), hex::encode(&e.digest[..8]))
}

/// `latest.*` value: the newest version's updated time and digest.
fn latest_value(updated: i64, digest: &[u8; 32]) -> Bytes {
    let mut v = updated.to_be_bytes().to_vec();
    v.extend_from_slice(digest);
    v.into()
}

fn is_newer(stored: Option<&[u8]>, updated: i64, digest: &[u8; 32]) -> bool {
    match stored {
        Some(v) if v.len() == 40 => {
            let at = i64::from_be_bytes(v[..8].try_into().unwrap_or_default());
            updated > at || (updated == at && v[8..] != digest[..])
        }
        _ => true,
    }
}

/// Append the new versions among `entries` (under the shop's `class`) and (if given)
/// the shop's pull position, as one fenced atomic batch. Versions the feed has (or that
/// repeat within the page) are counted as duplicates and not written.
pub async fn append_page(conn: &Connection, fence: &Fence, class: &str, entries: &[FeedEntry], position: Option<Bytes>) -> Result<Appended, ClusterError> {
    append(conn, class, &fence.shop, Some(fence), entries, position).await
}

/// Append the new versions among `entries` from a node that does not run `shop` (a
/// webhook may arrive at any node): not fenced, and no position. Every version is
/// decided on the `latest.*` keys as read and written only if none of them changed
/// since (compare-and-set), so two nodes taking the same version at once queue it once.
pub async fn append_pushed(conn: &Connection, class: &str, shop: &str, entries: &[FeedEntry]) -> Result<Appended, ClusterError> {
    append(conn, class, shop, None, entries, None).await
}

/// Times a page is decided again after another node wrote one of its orders first.
const APPEND_ATTEMPTS: usize = 10;

async fn append(conn: &Connection, class: &str, shop: &str, fence: Option<&Fence>, entries: &[FeedEntry], position: Option<Bytes>) -> Result<Appended, ClusterError> {
    if entries.len() * 2 + 2 > fenced::MAX_BATCH {
        return Err(ClusterError::Nats(format!("a page of {} orders is more than one atomic batch holds ({})", entries.len(), (fenced::MAX_BATCH - 2) / 2)));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stored = stored_latest(conn, shop, entries.iter().map(|e| e.order_id.as_str())).await?;
        let stored_by_order: HashMap<&str, &(u64, Option<Bytes>)> = stored.iter().map(|(o, v)| (*o, v)).collect();
        let (writes, out) = decide(class, shop, entries, &stored_by_order, position.clone());
        if writes.is_empty() {
            return Ok(out);
        }
        match fenced::write_all(conn, fence, writes).await {
            Ok(last) => return Ok(Appended { last_seq: Some(last), ..out }),
            Err(ClusterError::Conflict(_)) if attempt < APPEND_ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What the feed holds for each of `orders` (its `latest.*` revision and value),
/// read from the stream leader — this node's own last page must count — all at once.
async fn stored_latest<'a>(conn: &Connection, shop: &str, orders: impl Iterator<Item = &'a str>) -> Result<Vec<(&'a str, (u64, Option<Bytes>))>, ClusterError> {
    let mut orders: Vec<&str> = orders.collect();
    orders.sort_unstable();
    orders.dedup();
    let keys: Vec<String> = orders.iter().map(|o| latest_key(shop, o)).collect();
    let stored = crate::mirror::read_latest(conn, &keys).await?;
    Ok(orders.into_iter().zip(stored).collect())
}

/// The writes that add the new versions of a page: each version's `feed.*` key, and
/// each order's `latest.*` key expecting the revision it was decided on.
fn decide(class: &str, shop: &str, entries: &[FeedEntry], stored: &HashMap<&str, &(u64, Option<Bytes>)>, position: Option<Bytes>) -> (Vec<fenced::Write>, Appended) {
    use fenced::{Expect, Write};
    let mut newest: HashMap<&str, (i64, [u8; 32])> = HashMap::new();
    let mut writes = Vec::new();
    let mut out = Appended::default();
    for e in entries {
        let known = match newest.get(e.order_id.as_str()) {
            Some((at, d)) => Some(latest_value(*at, d)),
            None => stored.get(e.order_id.as_str()).and_then(|(_, v)| v.clone()),
        };
        if !is_newer(known.as_deref(), e.updated_at_ms, &e.digest) {
            out.duplicates += 1;
            continue;
        }
        newest.insert(&e.order_id, (e.updated_at_ms, e.digest));
        writes.push(Write::put(version_key(class, shop, e), e.record.clone()));
        out.added += 1;
    }
    // One write per order's `latest.*` key (the newest version of the page), expecting
    // the revision read: a batch may not write a key twice with expectations.
    for (order, (at, digest)) in newest {
        let revision = stored.get(order).map_or(0, |(r, _)| *r);
        let expect = if revision == 0 { Expect::Absent } else { Expect::Revision(revision) };
        writes.push(Write { key: latest_key(shop, order), value: latest_value(at, &digest), expect });
    }
    if let Some(position) = position {
        writes.push(Write::put(fenced::state_key(shop, "position"), position));
    }
    (writes, out)
}

/// Which of `entries` are versions the feed does not hold for `shop` (read from the
/// leader; a repeat within `entries` counts once).
pub async fn fresh(conn: &Connection, shop: &str, entries: &[(&str, i64, [u8; 32])]) -> Result<Vec<bool>, ClusterError> {
    let stored = stored_latest(conn, shop, entries.iter().map(|e| e.0)).await?;
    let mut known: HashMap<&str, Option<Bytes>> = stored.into_iter().map(|(o, (_, v))| (o, v)).collect();
    Ok(entries
        .iter()
        .map(|(order, at, digest)| {
            let slot = known.entry(order).or_default();
            let new = is_newer(slot.as_deref(), *at, digest);
            if new {
                *slot = Some(latest_value(*at, digest));
            }
            new
        })
        .collect())
}

/// The newest sequence of the shops stream (every write, not only the feed's).
pub async fn last_sequence(conn: &Connection) -> Result<u64, ClusterError> {
    let mut stream = conn.shops_stream().clone();
    Ok(stream.info().await.map_err(ClusterError::nats)?.state.last_sequence)
}

/// The shop's pull position as last appended.
pub async fn position(conn: &Connection, shop: &str) -> Result<Option<Bytes>, ClusterError> {
    Ok(conn.latest_shop_key(&fenced::state_key(shop, "position")).await?.and_then(|l| l.value))
}

/// A feed entry as read back: its stream sequence and record.
#[derive(Debug, Clone)]
pub struct FeedRecord {
    pub seq: u64,
    pub shop: String,
    pub record: Bytes,
}

/// Pages up to this many entries are read one direct get at a time; longer ones through
/// one ordered consumer (BENCHMARKS.md section 12: a consumer costs a round trip to
/// create, then delivers without one per entry).
pub const DIRECT_UP_TO: usize = 32;

/// Up to `limit` feed entries after `after` (a stream sequence), oldest first, for one
/// shop or all.
pub async fn list(conn: &Connection, after: u64, limit: usize, shop: Option<&str>) -> Result<Vec<FeedRecord>, ClusterError> {
    if limit <= DIRECT_UP_TO {
        list_direct(conn, after, limit, shop).await
    } else {
        list_streamed(conn, after, limit, shop).await
    }
}

fn feed_filter(conn: &Connection, shop: Option<&str>) -> String {
    match shop {
        Some(shop) => format!("$KV.{}.feed.*.{shop}.>", conn.names.shops),
        None => format!("$KV.{}.feed.>", conn.names.shops),
    }
}

/// [`list`] through one ordered consumer starting after `after` ([`crate::run`]).
pub async fn list_streamed(conn: &Connection, after: u64, limit: usize, shop: Option<&str>) -> Result<Vec<FeedRecord>, ClusterError> {
    let run = crate::run::read(conn.shops_stream(), Some(feed_filter(conn, shop)), after + 1, limit, "the feed").await?;
    let mut out: Vec<FeedRecord> = run.messages.into_iter().map(|m| FeedRecord { shop: shop_of(&m.subject), seq: m.seq, record: m.payload }).collect();
    if run.cut {
        // The rest one direct get at a time.
        let from = out.last().map_or(after, |r| r.seq);
        out.extend(list_direct(conn, from, limit - out.len(), shop).await?);
    }
    Ok(out)
}

/// The shop of a `$KV.<bucket>.feed.<class>.<shop>.…` subject of the shops bucket.
pub(crate) fn shop_of(subject: &str) -> String {
    subject.split('.').nth(4).unwrap_or_default().to_string()
}

/// [`list`] one direct get (answered by any replica) per entry.
pub async fn list_direct(conn: &Connection, after: u64, limit: usize, shop: Option<&str>) -> Result<Vec<FeedRecord>, ClusterError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    let filter = feed_filter(conn, shop);
    let stream = conn.shops_stream();
    let mut out = Vec::new();
    let mut next = after + 1;
    while out.len() < limit {
        match stream.direct_get_next_for_subject(filter.as_str(), Some(next)).await {
            Ok(msg) => {
                next = msg.sequence + 1;
                out.push(FeedRecord { seq: msg.sequence, shop: shop_of(&msg.subject), record: msg.payload });
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(ClusterError::nats(e)),
        }
    }
    Ok(out)
}

/// How the ERP's queue behaves.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The consumer's ack wait: how long a lease asked with no visibility of its own
    /// lasts, and the longest a lease outlives the node that leased it.
    pub visibility: Duration,
    /// Deliveries before an order becomes a dead letter.
    pub max_attempts: u32,
}

/// A leased order: the token the ERP acks with, and the record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueToken {
    /// The feed sequence (stable across deliveries).
    pub id: u64,
    /// The delivery's ack subject, base64url, then `.` and the node keeping its timer.
    pub ack: String,
}

#[derive(Debug, Clone)]
pub struct LeasedRecord {
    pub token: QueueToken,
    pub attempt: u32,
    pub record: Bytes,
}

/// A dead letter: an order delivered `max_attempts` times without an ack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadRecord {
    pub seq: u64,
    /// The order's shop.
    #[serde(default)]
    pub shop: String,
    pub attempts: u32,
    pub reason: String,
    pub at_ms: i64,
}

/// The ERP's order queue over one class of the feed: the durable consumer
/// `<name>_<class>` on `feed.<class>.>`. Dead letters are the queue's (`dead.<name>.*`),
/// whichever class they came from.
pub struct OrderQueue {
    conn: Connection,
    consumer: consumer::Consumer<pull::Config>,
    name: String,
    class: String,
    settings: QueueSettings,
    timers: Arc<Visibility>,
}

/// The durable consumer of queue `name`'s class `class`.
pub fn consumer_name(name: &str, class: &str) -> String {
    format!("{name}_{class}")
}

/// How a fetch failed: the consumer has no leader yet (try again), or anything else.
enum Fetch {
    NoLeader(String),
    Failed(ClusterError),
}

impl Fetch {
    /// The pull's status: 503 (no responders: no consumer leader) or 409 "Leadership
    /// Change". async-nats reports it only as text.
    fn is_no_leader(error: &str) -> bool {
        error.contains("stream: 503,") || error.contains("Leadership Change")
    }
}

impl OrderQueue {
    /// Open (or create) queue `name`'s consumer of the feed's class `class`.
    pub async fn open(conn: &Connection, name: &str, class: &str, settings: QueueSettings) -> Result<OrderQueue, ClusterError> {
        let stream = conn.shops_stream();
        let durable = consumer_name(name, class);
        // Created, or updated to these settings (a node started with another
        // `erp_lease_secs` sets it for all).
        let consumer = crate::connect::patiently(&durable, || {
            stream.create_consumer(
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: format!("$KV.{}.feed.{class}.>", conn.names.shops),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: settings.visibility,
                    // Attempts are counted here, so a dead letter is recorded with its
                    // reason rather than left undelivered by the server.
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    num_replicas: 0,
                    ..Default::default()
                },
            )
        })
        .await?;
        let timers = Visibility::start(conn, &durable, settings.visibility).await?;
        Ok(OrderQueue { conn: conn.clone(), consumer, name: name.to_string(), class: class.to_string(), settings, timers })
    }

    /// Lease up to `max` orders for `visibility`; waits at most `wait` for the first.
    /// A consumer whose leader is being elected (just created, or its server died) answers
    /// a fetch with 503 or 409: fetched again until `wait` has passed, then nothing.
    pub async fn lease(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<LeasedRecord>, ClusterError> {
        let until = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.fetch(max, left, visibility).await {
                Err(Fetch::NoLeader(e)) => {
                    if tokio::time::Instant::now() + pause >= until {
                        tracing::debug!(consumer = %consumer_name(&self.name, &self.class), error = %e, "no consumer leader within the lease's wait");
                        return Ok(Vec::new());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(Fetch::Failed(e)) => return Err(e),
                Ok(out) => return Ok(out),
            }
        }
    }

    async fn fetch(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<LeasedRecord>, Fetch> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait.max(Duration::from_millis(100)))
            .messages()
            .await
            .map_err(|e| Fetch::Failed(ClusterError::nats(e)))?;
        let mut out = Vec::new();
        while let Some(msg) = batch.next().await {
            let msg = match msg {
                Ok(msg) => msg,
                // What was delivered before the status stays leased: hand it out.
                Err(e) if out.is_empty() && Fetch::is_no_leader(&e.to_string()) => return Err(Fetch::NoLeader(e.to_string())),
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(Fetch::Failed(ClusterError::nats(e))),
            };
            let (seq, delivered) = {
                let info = msg.info().map_err(|e| Fetch::Failed(ClusterError::nats(e)))?;
                (info.stream_sequence, info.delivered.max(1) as u32)
            };
            if delivered > self.settings.max_attempts {
                // Its last lease ran out without an ack or a nack.
                self.bury(seq, shop_of(&msg.subject), delivered - 1, "the lease expired without an ack").await.map_err(Fetch::Failed)?;
                msg.ack_with(AckKind::Term).await.map_err(|e| Fetch::Failed(ClusterError::nats(e)))?;
                continue;
            }
            let reply = msg.reply.as_ref().map(|r| r.to_string()).unwrap_or_default();
            self.timers.leased(seq, &reply, visibility);
            let token = QueueToken { id: seq, ack: self.timers.token(&reply) };
            out.push(LeasedRecord { token, attempt: delivered, record: msg.payload.clone() });
        }
        Ok(out)
    }

    fn token(&self, token: &QueueToken) -> Result<Token, ClusterError> {
        self.timers.parse(token.id, &token.ack)
    }

    pub async fn ack(&self, token: &QueueToken) -> Result<(), ClusterError> {
        let parsed = self.token(token)?;
        // A request: the server answers once the ack is applied (replicated).
        self.timers.send(&parsed.subject, AckKind::Ack).await?;
        self.timers.settled(token.id, &parsed).await;
        Ok(())
    }

    /// Ack a batch, the acks in flight together: each token's own outcome, in order.
    pub async fn ack_many(&self, tokens: &[QueueToken]) -> Vec<Result<(), ClusterError>> {
        futures_util::future::join_all(tokens.iter().map(|t| self.ack(t))).await
    }

    /// Give an order back, delivered again after `delay`; on its last attempt it becomes a
    /// dead letter with `reason`.
    pub async fn nack(&self, token: &QueueToken, delay: Duration, reason: &str) -> Result<(), ClusterError> {
        let parsed = self.token(token)?;
        if parsed.delivered >= self.settings.max_attempts {
            let msg = self.conn.shops_stream().get_raw_message(token.id).await.map_err(ClusterError::nats)?;
            self.bury(token.id, shop_of(&msg.subject), parsed.delivered, reason).await?;
            self.timers.send(&parsed.subject, AckKind::Term).await?;
        } else {
            self.timers.send(&parsed.subject, AckKind::Nak(Some(delay))).await?;
        }
        self.timers.settled(token.id, &parsed).await;
        Ok(())
    }

    /// Keep a lease `visibility` more from now (on whichever node keeps its timer); its
    /// new expiry, ms since the epoch. When that node is gone the lease is renewed for
    /// the ack wait, and the expiry says so.
    pub async fn extend(&self, token: &QueueToken, visibility: Duration) -> Result<i64, ClusterError> {
        let parsed = self.token(token)?;
        self.timers.extend(token.id, &parsed, visibility).await
    }

    /// Leases whose visibility this node keeps (those not as long as the ack wait).
    pub fn timed_leases(&self) -> usize {
        self.timers.timed()
    }

    async fn bury(&self, seq: u64, shop: String, attempts: u32, reason: &str) -> Result<(), ClusterError> {
        let record = DeadRecord { seq, shop, attempts, reason: reason.chars().take(500).collect(), at_ms: berth_types::clock::now_ms() };
        let key = format!("dead.{}.{seq}", self.name);
        // Two nodes may see the same expiry: the first record stands.
        match self.conn.shops.create(&key, serde_json::to_vec(&record).unwrap_or_default().into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(ClusterError::nats(e)),
        }
    }

    /// The queue's dead letters, oldest first, at most `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadRecord>, ClusterError> {
        let mut out: Vec<DeadRecord> = fenced::scan(&self.conn, &format!("dead.{}.", self.name))
            .await?
            .into_iter()
            .filter_map(|d| serde_json::from_slice(&d.value).ok())
            .collect();
        out.sort_by_key(|d| d.seq);
        out.truncate(limit);
        Ok(out)
    }

    /// The consumer's ack wait.
    pub fn ack_wait(&self) -> Duration {
        self.timers.ack_wait()
    }

    /// Put dead letters back in the queue: each dead order's record is appended again
    /// under its version's key with `.r<seq>` (a new message of the feed, delivered like
    /// any other), then the dead letter is dropped. Returns how many were replayed (ids
    /// that are not dead letters are skipped).
    pub async fn replay(&self, ids: &[u64]) -> Result<usize, ClusterError> {
        let mut done = 0;
        for &seq in ids {
            let Some(key) = self.dead_key(seq).await? else { continue };
            let msg = self.conn.shops_stream().get_raw_message(seq).await.map_err(ClusterError::nats)?;
            let base = msg.subject.split('.').take(8).collect::<Vec<_>>().join(".");
            self.conn.js.publish(format!("{base}.r{seq}"), msg.payload).await.map_err(ClusterError::nats)?.await.map_err(ClusterError::nats)?;
            self.conn.shops.delete(&key).await.map_err(ClusterError::nats)?;
            done += 1;
        }
        Ok(done)
    }

    /// The key of dead letter `seq`, when there is one (the leader's newest value).
    async fn dead_key(&self, seq: u64) -> Result<Option<String>, ClusterError> {
        let key = format!("dead.{}.{seq}", self.name);
        let value = self.conn.latest_shop_key(&key).await?.and_then(|l| l.value);
        Ok(value.is_some_and(|v| !v.is_empty()).then_some(key))
    }

    /// Drop dead letters for good. Returns how many there were.
    pub async fn purge(&self, ids: &[u64]) -> Result<usize, ClusterError> {
        let mut done = 0;
        for &seq in ids {
            let Some(key) = self.dead_key(seq).await? else { continue };
            self.conn.shops.delete(&key).await.map_err(ClusterError::nats)?;
            done += 1;
        }
        Ok(done)
    }

    /// Per shop: orders not yet delivered (`ready`, exact), orders delivered and not
    /// yet under the consumer's ack floor (`in_flight`: an upper bound, as an order acked
    /// out of turn stays above the floor until the ones before it are settled; the server
    /// keeps no per-subject count of its pending acks), and the oldest of them. Read from
    /// the stream from the ack floor on, without bodies, at most `limit` orders; whether
    /// the read stopped at `limit` (the counts are then of the oldest `limit` only).
    pub async fn depth_by_shop(&self, limit: usize) -> Result<(BTreeMap<String, crate::queues::Depth>, bool), ClusterError> {
        let mut consumer = self.consumer.clone();
        let info = consumer.info().await.map_err(ClusterError::nats)?.clone();
        let mut out: BTreeMap<String, crate::queues::Depth> = BTreeMap::new();
        let unsettled = info.num_pending + info.num_ack_pending as u64;
        if unsettled == 0 {
            return Ok((out, false));
        }
        let (floor, delivered) = (info.ack_floor.stream_sequence, info.delivered.stream_sequence);
        let filter = format!("$KV.{}.feed.{}.>", self.conn.names.shops, self.class);
        let run = crate::run::read_headers(self.conn.shops_stream(), Some(filter), floor + 1, limit, "the queue's orders").await?;
        let capped = run.cut || (run.messages.len() == limit && unsettled > limit as u64);
        for m in &run.messages {
            let d = out.entry(shop_of(&m.subject)).or_default();
            if m.seq > delivered {
                d.ready += 1;
            } else {
                d.in_flight += 1;
            }
            d.oldest_ms = Some(d.oldest_ms.map_or(m.time_ms, |t| t.min(m.time_ms)));
        }
        Ok((out, capped))
    }

    /// Orders waiting and orders leased, as the server counts them, and when the oldest
    /// of them (the first not acked) was appended to the feed (ms since the epoch; none
    /// when nothing waits).
    pub async fn depth(&self) -> Result<(u64, u64, Option<i64>), ClusterError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let mut consumer = self.consumer.clone();
        let info = consumer.info().await.map_err(ClusterError::nats)?.clone();
        let (ready, in_flight) = (info.num_pending, info.num_ack_pending as u64);
        if ready + in_flight == 0 {
            return Ok((ready, in_flight, None));
        }
        // Every message up to the ack floor is acked; the next one under the filter is not.
        let filter = format!("$KV.{}.feed.{}.>", self.conn.names.shops, self.class);
        let oldest = match self.conn.shops_stream().direct_get_next_for_subject(filter.as_str(), Some(info.ack_floor.stream_sequence + 1)).await {
            Ok(msg) => Some((msg.time.unix_timestamp_nanos() / 1_000_000) as i64),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
            Err(e) => return Err(ClusterError::nats(e)),
        };
        Ok((ready, in_flight, oldest))
    }
}

#[cfg(test)]
mod tests {
    use super::Fetch;

    #[test]
    fn a_pull_without_a_consumer_leader_is_told_from_other_failures() {
        // As async-nats 0.51 words the statuses of a pull.
        assert!(Fetch::is_no_leader("error while processing messages from the stream: 503, None"));
        assert!(Fetch::is_no_leader("error while processing messages from the stream: 409, Some(\"Leadership Change\")"));
        assert!(!Fetch::is_no_leader("error while processing messages from the stream: 409, Some(\"Consumer Deleted\")"));
        assert!(!Fetch::is_no_leader("error while processing messages from the stream: 400, Some(\"Bad Request\")"));
    }
}
