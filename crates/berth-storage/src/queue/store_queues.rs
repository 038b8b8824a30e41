//! The embedded queue backend on the store.
//!
//! Four keyspaces shared by every queue, each key starting with the queue's name and a
//! zero byte: `queue_msg` (id -> record: header + payload), `queue_dead` (the same for
//! dead letters), `queue_idem` (idempotency key -> id + when first seen) and
//! `queue_meta` (the next id). The schedule, leases and counters live in memory
//! ([`QueueIndex`]), rebuilt from `queue_msg` at open.
//!
//! Every operation runs on the writer in three steps: decide from the index (which only
//! the writer changes), read what it needs from the batch, then write and update the
//! index — so an operation that fails has changed nothing, on disk or in memory.

use super::index::{Indexes, Meta, QueueIndex};
use super::record::{self, Header};
use super::{
    fresh_lease, later, DeadLetter, Enqueued, LeaseQueue, LeaseToken, Leased, NewMessage, QueueError, QueuePolicy, QueueStats,
};
use crate::store::{Keyspace, Store, WriteCtx};
use crate::now_ms;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const NEXT_ID: &[u8] = b"next_id";
/// Idempotency keys a round of expiry removes at most (one writer batch).
const EXPIRE_ROUND: usize = 10_000;

#[derive(Default)]
struct State {
    queues: Indexes,
    next_id: u64,
}

#[derive(Clone)]
struct Spaces {
    msg: Keyspace,
    dead: Keyspace,
    idem: Keyspace,
    meta: Keyspace,
}

pub struct StoreQueues {
    store: Store,
    ks: Spaces,
    state: Arc<Mutex<State>>,
    policy: QueuePolicy,
}

fn check_name(queue: &str) -> Result<(), QueueError> {
    if queue.is_empty()
        || queue.len() > 64
        || !queue.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(QueueError::BadName(queue.to_string()));
    }
    Ok(())
}

fn prefix(queue: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(queue.len() + 9);
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k
}

fn msg_key(queue: &str, id: u64) -> Vec<u8> {
    let mut k = prefix(queue);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn idem_key(queue: &str, key: &str) -> Vec<u8> {
    let mut k = prefix(queue);
    k.extend_from_slice(key.as_bytes());
    k
}

/// (queue, id) of a `queue_msg`/`queue_dead` key.
fn split_key(k: &[u8]) -> Option<(&str, u64)> {
    let zero = k.iter().position(|&b| b == 0)?;
    let id = u64::from_be_bytes(k.get(zero + 1..)?.try_into().ok()?);
    Some((std::str::from_utf8(&k[..zero]).ok()?, id))
}

/// An `idem` value: the message id, then when the key was first seen.
fn idem_value(id: u64, at_ms: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&id.to_be_bytes());
    v[8..].copy_from_slice(&at_ms.to_be_bytes());
    v
}

fn idem_parts(v: &[u8]) -> (u64, i64) {
    let id = v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
    let at = v.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, i64::from_be_bytes);
    (id, at)
}

impl StoreQueues {
    /// The queues in `store`, their indexes rebuilt from what is stored.
    pub fn open(store: &Store, policy: QueuePolicy) -> Result<StoreQueues, QueueError> {
        let ks = Spaces {
            msg: store.keyspace("queue_msg")?,
            dead: store.keyspace("queue_dead")?,
            idem: store.keyspace("queue_idem")?,
            meta: store.keyspace("queue_meta")?,
        };
        let mut state = State::default();
        let now = now_ms();
        let mut max_id = 0u64;
        for item in ks.msg.iter() {
            let (k, v) = item?;
            let (queue, id) = split_key(&k).ok_or_else(|| QueueError::Corrupt { id: 0, why: "a queue key without a queue name and id".into() })?;
            let (h, at) = record::decode_header(id, &v)?;
            let idx = state.queues.entry(queue.to_string()).or_default();
            let meta = Meta {
                partition: idx.intern(&h.partition),
                attempts: h.attempts,
                enqueued_at_ms: h.enqueued_at_ms,
                visible_at_ms: h.visible_at_ms,
                lease: h.lease,
                payload_len: (v.len() - at) as u32,
            };
            idx.insert(id, meta, now);
            max_id = max_id.max(id);
        }
        for item in ks.dead.iter() {
            let (k, v) = item?;
            let (queue, id) = split_key(&k).ok_or_else(|| QueueError::Corrupt { id: 0, why: "a dead-letter key without a queue name and id".into() })?;
            let (h, _) = record::decode_header(id, &v)?;
            let idx = state.queues.entry(queue.to_string()).or_default();
            let p = idx.intern(&h.partition);
            idx.add_dead(&p, 1);
            max_id = max_id.max(id);
        }
        let stored_next = ks.meta.get(NEXT_ID)?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
        state.next_id = stored_next.max(max_id + 1);
        Ok(StoreQueues { store: store.clone(), ks, state: Arc::new(Mutex::new(state)), policy })
    }

    /// How many batches the store has synced (to see batching at work).
    pub fn flush_count(&self) -> u64 {
        self.store.stats().syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Lease like `lease_within`, from `partitions` only: each partition's own schedule
    /// is read, so another partition's backlog is never read past (a tenant's lease does
    /// not wait behind another tenant's orders). Oldest due first across them.
    pub async fn lease_partitions(&self, queue: &str, partitions: &[String], max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        self.lease_from(queue, Some(partitions.to_vec()), max, max_bytes, visibility).await
    }

    /// The partition of a live message (`None` when it is not in the queue).
    pub fn partition_of(&self, queue: &str, id: u64) -> Result<Option<String>, QueueError> {
        check_name(queue)?;
        Ok(self.state().queues.get(queue).and_then(|q| q.get(id)).map(|m| m.partition.to_string()))
    }

    /// The partition of a dead letter (`None` when there is no such dead letter).
    pub fn dead_partition_of(&self, queue: &str, id: u64) -> Result<Option<String>, QueueError> {
        check_name(queue)?;
        match self.ks.dead.get(&msg_key(queue, id))? {
            Some(v) => Ok(Some(record::decode_header(id, &v)?.0.partition)),
            None => Ok(None),
        }
    }

    /// Forget idempotency keys first seen more than `ttl` ago: a repeat of such a key is
    /// a new message again. Returns how many were dropped. Read in rounds off the
    /// writer; each round's removals are one batch.
    pub async fn expire_idempotency_keys(&self, queue: &str, ttl: Duration) -> Result<usize, QueueError> {
        check_name(queue)?;
        let cutoff = now_ms().saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut dropped = 0;
        let mut from = prefix(queue);
        loop {
            let mut old: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut scanned_to = None;
            for item in self.ks.idem.range(from.clone()..) {
                let (k, v) = item?;
                if !k.starts_with(&prefix(queue)) {
                    break;
                }
                scanned_to = Some(k.clone());
                if idem_parts(&v).1 < cutoff {
                    old.push((k, v));
                    if old.len() >= EXPIRE_ROUND {
                        break;
                    }
                }
            }
            let full_round = old.len() >= EXPIRE_ROUND;
            let idem = self.ks.idem.clone();
            dropped += self
                .store
                .write(move |ctx: &mut WriteCtx<'_>| {
                    // Only keys unchanged since they were read: one written again meanwhile stays.
                    let mut still = Vec::with_capacity(old.len());
                    for (k, v) in old {
                        if ctx.get(&idem, &k)?.is_some_and(|now| now == v) {
                            still.push(k);
                        }
                    }
                    let n = still.len();
                    for k in still {
                        ctx.remove(&idem, k);
                    }
                    Ok::<_, QueueError>(n)
                })
                .await?;
            match scanned_to {
                Some(mut last) if full_round => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(dropped),
            }
        }
    }

    async fn lease_from(&self, queue: &str, partitions: Option<Vec<String>>, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        check_name(queue)?;
        let (state, ks, queue, max_attempts) = (self.state.clone(), self.ks.clone(), queue.to_string(), self.policy.max_attempts);
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let now = now_ms();
                let expires = later(now, visibility);
                // Decide: which due messages are leased, which have run out of attempts.
                let (to_lease, to_bury) = {
                    let st = lock(&state);
                    let Some(idx) = st.queues.get(&queue) else { return Ok(Vec::new()) };
                    let (mut lease, mut bury, mut bytes) = (Vec::new(), Vec::new(), 0usize);
                    for id in idx.due(now, max, partitions.as_deref()) {
                        let Some(m) = idx.get(id) else { continue };
                        if m.attempts >= max_attempts {
                            bury.push(id);
                            continue;
                        }
                        // Stop before a message that would pass the byte bound (a first one always goes).
                        if !lease.is_empty() && bytes.saturating_add(m.payload_len as usize) > max_bytes {
                            break;
                        }
                        bytes += m.payload_len as usize;
                        lease.push(id);
                    }
                    (lease, bury)
                };
                // Read.
                let mut leased_records = Vec::with_capacity(to_lease.len());
                for id in to_lease {
                    let bytes = ctx.get(&ks.msg, &msg_key(&queue, id))?.ok_or_else(|| missing(id))?;
                    leased_records.push((id, record::decode(id, &bytes)?));
                }
                let mut buried_records = Vec::with_capacity(to_bury.len());
                for id in to_bury {
                    let bytes = ctx.get(&ks.msg, &msg_key(&queue, id))?.ok_or_else(|| missing(id))?;
                    buried_records.push((id, record::decode(id, &bytes)?));
                }
                // Write, and apply to the index.
                let mut st = lock(&state);
                let idx = st.queues.entry(queue.clone()).or_default();
                for (id, (h, payload)) in buried_records {
                    let reason = format!(
                        "lease expired {} times without an ack; last error: {}",
                        h.attempts,
                        h.last_error.as_deref().unwrap_or("none")
                    );
                    bury(ctx, &ks, idx, &queue, id, h, &payload, reason, now);
                }
                let mut out = Vec::with_capacity(leased_records.len());
                for (id, (mut h, payload)) in leased_records {
                    h.attempts += 1;
                    h.visible_at_ms = expires;
                    h.lease = fresh_lease();
                    ctx.insert(&ks.msg, msg_key(&queue, id), record::encode(&h, &payload));
                    idx.update(id, expires, h.attempts, h.lease, now);
                    out.push(Leased {
                        token: LeaseToken::with_bits(id, h.attempts, h.lease),
                        partition: h.partition,
                        payload,
                        enqueued_at_ms: h.enqueued_at_ms,
                        expires_at_ms: expires,
                    });
                }
                Ok(out)
            })
            .await
    }

    /// Check `tokens` against the index: each one's outcome (a token given twice holds
    /// only once).
    fn check_leases(state: &Mutex<State>, queue: &str, tokens: &[LeaseToken]) -> Vec<Result<(), QueueError>> {
        let st = lock(state);
        let idx = st.queues.get(queue);
        let mut seen = HashSet::new();
        tokens
            .iter()
            .map(|t| {
                let holds = idx.and_then(|q| q.get(t.id)).is_some_and(|m| t.holds(m.attempts, m.lease));
                if holds && seen.insert(t.id) {
                    Ok(())
                } else {
                    Err(QueueError::LeaseLost { id: t.id })
                }
            })
            .collect()
    }

    /// A leased message's stored record, after its token is checked.
    fn leased_record(ctx: &WriteCtx<'_>, state: &Mutex<State>, ks: &Spaces, queue: &str, token: &LeaseToken) -> Result<(Header, Vec<u8>), QueueError> {
        Self::check_leases(state, queue, std::slice::from_ref(token)).pop().unwrap_or(Err(QueueError::LeaseLost { id: token.id }))?;
        let bytes = ctx.get(&ks.msg, &msg_key(queue, token.id))?.ok_or_else(|| missing(token.id))?;
        record::decode(token.id, &bytes)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The index has a message the disk does not: a bug, reported as corruption.
fn missing(id: u64) -> QueueError {
    QueueError::Corrupt { id, why: "indexed but not stored".into() }
}

/// The dead letters among `ids` (each once), as stored.
fn dead_records(ctx: &WriteCtx<'_>, ks: &Spaces, queue: &str, ids: Vec<u64>) -> Result<Vec<(u64, (Header, Vec<u8>))>, QueueError> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        if let Some(bytes) = ctx.get(&ks.dead, &msg_key(queue, id))? {
            found.push((id, record::decode(id, &bytes)?));
        }
    }
    Ok(found)
}

/// Move a live message to the dead letters (writes and index).
#[allow(clippy::too_many_arguments)]
fn bury(ctx: &mut WriteCtx<'_>, ks: &Spaces, idx: &mut QueueIndex, queue: &str, id: u64, mut h: Header, payload: &[u8], reason: String, now: i64) {
    let key = msg_key(queue, id);
    ctx.remove(&ks.msg, key.clone());
    h.last_error = Some(reason);
    h.visible_at_ms = now;
    h.lease = 0;
    ctx.insert(&ks.dead, key, record::encode(&h, payload));
    if let Some(meta) = idx.remove(id) {
        idx.add_dead(&meta.partition, 1);
    }
}

impl LeaseQueue for StoreQueues {
    async fn enqueue(&self, queue: &str, m: NewMessage) -> Result<Enqueued, QueueError> {
        let mut one = self.enqueue_many(queue, vec![m]).await?;
        one.pop().ok_or_else(|| QueueError::Corrupt { id: 0, why: "no outcome for an enqueued message".into() })
    }

    async fn enqueue_many(&self, queue: &str, msgs: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        check_name(queue)?;
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let (state, ks, queue) = (self.state.clone(), self.ks.clone(), queue.to_string());
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let now = now_ms();
                // Decide: a key stored before, or earlier in this call, is a duplicate.
                let mut earlier: HashMap<&str, usize> = HashMap::new();
                let mut known: Vec<Option<u64>> = Vec::with_capacity(msgs.len());
                let mut dup_of_earlier: Vec<Option<usize>> = Vec::with_capacity(msgs.len());
                for (i, m) in msgs.iter().enumerate() {
                    let (mut stored, mut same) = (None, None);
                    if let Some(key) = &m.idempotency_key {
                        if let Some(&first) = earlier.get(key.as_str()) {
                            same = Some(first);
                        } else if let Some(v) = ctx.get(&ks.idem, &idem_key(&queue, key))? {
                            stored = Some(idem_parts(&v).0);
                        } else {
                            earlier.insert(key, i);
                        }
                    }
                    known.push(stored);
                    dup_of_earlier.push(same);
                }
                // Write.
                let mut st = lock(&state);
                let mut next = st.next_id;
                let idx = st.queues.entry(queue.clone()).or_default();
                let mut out: Vec<Enqueued> = Vec::with_capacity(msgs.len());
                for (i, m) in msgs.into_iter().enumerate() {
                    if let Some(id) = known[i] {
                        out.push(Enqueued::Duplicate(id));
                        continue;
                    }
                    if let Some(first) = dup_of_earlier[i] {
                        out.push(Enqueued::Duplicate(out[first].id()));
                        continue;
                    }
                    let id = next;
                    next += 1;
                    if let Some(key) = &m.idempotency_key {
                        ctx.insert(&ks.idem, idem_key(&queue, key), idem_value(id, now).to_vec());
                    }
                    let h = Header { attempts: 0, enqueued_at_ms: now, visible_at_ms: now, lease: 0, partition: m.partition, idem: m.idempotency_key, last_error: None };
                    ctx.insert(&ks.msg, msg_key(&queue, id), record::encode(&h, &m.payload));
                    let meta = Meta { partition: idx.intern(&h.partition), attempts: 0, enqueued_at_ms: now, visible_at_ms: now, lease: 0, payload_len: m.payload.len() as u32 };
                    idx.insert(id, meta, now);
                    out.push(Enqueued::New(id));
                }
                if next != st.next_id {
                    st.next_id = next;
                    ctx.insert(&ks.meta, NEXT_ID, next.to_be_bytes().to_vec());
                }
                Ok(out)
            })
            .await
    }

    async fn lease_within(&self, queue: &str, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        self.lease_from(queue, None, max, max_bytes, visibility).await
    }

    async fn ack(&self, queue: &str, token: &LeaseToken) -> Result<(), QueueError> {
        self.ack_many(queue, std::slice::from_ref(token)).await?.pop().unwrap_or(Err(QueueError::LeaseLost { id: token.id }))
    }

    async fn ack_many(&self, queue: &str, tokens: &[LeaseToken]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        check_name(queue)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let (state, ks, queue, tokens) = (self.state.clone(), self.ks.clone(), queue.to_string(), tokens.to_vec());
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let done = Self::check_leases(&state, &queue, &tokens);
                let mut st = lock(&state);
                if let Some(idx) = st.queues.get_mut(&queue) {
                    for (t, r) in tokens.iter().zip(&done) {
                        if r.is_ok() {
                            ctx.remove(&ks.msg, msg_key(&queue, t.id));
                            idx.remove(t.id);
                        }
                    }
                }
                Ok::<_, QueueError>(done)
            })
            .await
    }

    async fn nack(&self, queue: &str, token: &LeaseToken, delay: Duration, reason: &str) -> Result<(), QueueError> {
        check_name(queue)?;
        let (state, ks, queue, token, reason, max_attempts) =
            (self.state.clone(), self.ks.clone(), queue.to_string(), token.clone(), reason.to_string(), self.policy.max_attempts);
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let (mut h, payload) = Self::leased_record(ctx, &state, &ks, &queue, &token)?;
                let now = now_ms();
                let mut st = lock(&state);
                let idx = st.queues.entry(queue.clone()).or_default();
                if h.attempts >= max_attempts {
                    let why = format!("failed {} attempts; last error: {reason}", h.attempts);
                    bury(ctx, &ks, idx, &queue, token.id, h, &payload, why, now);
                    return Ok(());
                }
                h.visible_at_ms = later(now, delay);
                h.last_error = Some(reason);
                h.lease = 0;
                ctx.insert(&ks.msg, msg_key(&queue, token.id), record::encode(&h, &payload));
                idx.update(token.id, h.visible_at_ms, h.attempts, 0, now);
                Ok::<_, QueueError>(())
            })
            .await
    }

    async fn extend(&self, queue: &str, token: &LeaseToken, visibility: Duration) -> Result<i64, QueueError> {
        check_name(queue)?;
        let (state, ks, queue, token) = (self.state.clone(), self.ks.clone(), queue.to_string(), token.clone());
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let (mut h, payload) = Self::leased_record(ctx, &state, &ks, &queue, &token)?;
                let now = now_ms();
                h.visible_at_ms = later(now, visibility);
                ctx.insert(&ks.msg, msg_key(&queue, token.id), record::encode(&h, &payload));
                let mut st = lock(&state);
                if let Some(idx) = st.queues.get_mut(&queue) {
                    idx.update(token.id, h.visible_at_ms, h.attempts, h.lease, now);
                }
                Ok::<_, QueueError>(h.visible_at_ms)
            })
            .await
    }

    fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        check_name(queue)?;
        let mut out = Vec::new();
        for item in self.ks.dead.prefix(&prefix(queue)).take(limit) {
            let (k, v) = item?;
            let (_, id) = split_key(&k).ok_or_else(|| QueueError::Corrupt { id: 0, why: "a dead-letter key without an id".into() })?;
            let (h, payload) = record::decode(id, &v)?;
            out.push(DeadLetter {
                id,
                partition: h.partition,
                attempts: h.attempts,
                reason: h.last_error.unwrap_or_default(),
                enqueued_at_ms: h.enqueued_at_ms,
                died_at_ms: h.visible_at_ms,
                payload,
            });
        }
        Ok(out)
    }

    async fn replay(&self, queue: &str, ids: &[u64]) -> Result<usize, QueueError> {
        check_name(queue)?;
        let (state, ks, queue, ids) = (self.state.clone(), self.ks.clone(), queue.to_string(), ids.to_vec());
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let mut found = dead_records(ctx, &ks, &queue, ids)?;
                let now = now_ms();
                let mut st = lock(&state);
                let idx = st.queues.entry(queue.clone()).or_default();
                for (id, (h, payload)) in found.iter_mut() {
                    let key = msg_key(&queue, *id);
                    ctx.remove(&ks.dead, key.clone());
                    h.attempts = 0;
                    h.lease = 0;
                    h.visible_at_ms = now;
                    ctx.insert(&ks.msg, key, record::encode(h, payload));
                    let partition = idx.intern(&h.partition);
                    idx.add_dead(&partition, -1);
                    let meta = Meta { partition, attempts: 0, enqueued_at_ms: h.enqueued_at_ms, visible_at_ms: now, lease: 0, payload_len: payload.len() as u32 };
                    idx.insert(*id, meta, now);
                }
                Ok::<_, QueueError>(found.len())
            })
            .await
    }

    async fn purge(&self, queue: &str, ids: &[u64]) -> Result<usize, QueueError> {
        check_name(queue)?;
        let (state, ks, queue, ids) = (self.state.clone(), self.ks.clone(), queue.to_string(), ids.to_vec());
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                let found = dead_records(ctx, &ks, &queue, ids)?;
                let mut st = lock(&state);
                let idx = st.queues.entry(queue.clone()).or_default();
                for (id, (h, _)) in &found {
                    ctx.remove(&ks.dead, msg_key(&queue, *id));
                    let p = idx.intern(&h.partition);
                    idx.add_dead(&p, -1);
                }
                Ok::<_, QueueError>(found.len())
            })
            .await
    }

    fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        check_name(queue)?;
        let now = now_ms();
        let mut st = self.state();
        let Some(idx) = st.queues.get_mut(queue) else { return Ok(QueueStats::default()) };
        let (ready, in_flight) = idx.total.ready_in_flight(now);
        let oldest = idx.total.oldest_id().and_then(|id| idx.enqueued_at(id));
        Ok(QueueStats { ready, in_flight, dead: idx.total.dead, oldest_age_ms: oldest.map(|at| now - at) })
    }

    fn partition_stats(&self, queue: &str) -> Result<BTreeMap<String, QueueStats>, QueueError> {
        check_name(queue)?;
        let now = now_ms();
        let mut st = self.state();
        let Some(idx) = st.queues.get_mut(queue) else { return Ok(BTreeMap::new()) };
        let mut out = BTreeMap::new();
        let mut oldest_ids = Vec::new();
        for (p, c) in idx.partition_counts() {
            let (ready, in_flight) = c.ready_in_flight(now);
            oldest_ids.push((p.to_string(), c.oldest_id()));
            out.insert(p.to_string(), QueueStats { ready, in_flight, dead: c.dead, oldest_age_ms: None });
        }
        for (p, id) in oldest_ids {
            if let (Some(s), Some(at)) = (out.get_mut(&p), id.and_then(|id| idx.enqueued_at(id))) {
                s.oldest_age_ms = Some(now - at);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use crate::now_ms;

    fn msg(partition: &str, payload: &str, key: Option<&str>) -> NewMessage {
        NewMessage { partition: partition.into(), payload: payload.as_bytes().to_vec(), idempotency_key: key.map(str::to_string) }
    }

    fn open(dir: &std::path::Path, max_attempts: u32) -> StoreQueues {
        let store = Store::open(dir, StoreConfig { reserve_bytes: 0, ..StoreConfig::default() }).unwrap();
        StoreQueues::open(&store, QueuePolicy { max_attempts }).unwrap()
    }

    #[tokio::test]
    async fn partitions_lease_their_own_messages_past_another_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        // An older backlog in `big`, then two messages of `small`.
        let big: Vec<NewMessage> = (0..500).map(|i| msg("big", &format!("b{i}"), None)).collect();
        q.enqueue_many("orders", big).await.unwrap();
        q.enqueue("orders", msg("small", "s1", None)).await.unwrap();
        q.enqueue("orders", msg("small-2", "s2", None)).await.unwrap();
        let v = Duration::from_secs(60);
        let mine = q.lease_partitions("orders", &["small".into(), "small-2".into()], 10, usize::MAX, v).await.unwrap();
        let got: Vec<&str> = mine.iter().map(|l| std::str::from_utf8(&l.payload).unwrap()).collect();
        assert_eq!(got, ["s1", "s2"], "both, though 500 older messages of another partition are due");
        assert!(q.lease_partitions("orders", &["small".into()], 10, usize::MAX, v).await.unwrap().is_empty(), "leased already");
        assert_eq!(q.partition_of("orders", mine[0].token.id).unwrap().as_deref(), Some("small"));
        // The global lease still sees everything due, oldest first; stats count each message once.
        let all = q.lease_within("orders", 1000, usize::MAX, v).await.unwrap();
        assert_eq!(all.len(), 500);
        let st = q.stats("orders").unwrap();
        assert_eq!((st.ready, st.in_flight), (0, 502));
        // A nack puts it back on its partition's schedule; an ack takes it off both.
        q.nack("orders", &mine[0].token, Duration::ZERO, "again").await.unwrap();
        let again = q.lease_partitions("orders", &["small".into()], 10, usize::MAX, v).await.unwrap();
        assert_eq!(again.len(), 1);
        q.ack("orders", &again[0].token).await.unwrap();
        assert_eq!(q.partition_of("orders", again[0].token.id).unwrap(), None);
    }

    #[tokio::test]
    async fn idempotency_keys_expire() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        let a = q.enqueue("orders", msg("s1", "a", Some("k1"))).await.unwrap();
        assert_eq!(q.expire_idempotency_keys("orders", Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(q.enqueue("orders", msg("s1", "a", Some("k1"))).await.unwrap(), Enqueued::Duplicate(a.id()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(q.expire_idempotency_keys("orders", Duration::from_millis(1)).await.unwrap(), 1);
        let again = q.enqueue("orders", msg("s1", "a", Some("k1"))).await.unwrap();
        assert!(matches!(again, Enqueued::New(id) if id != a.id()), "{again:?}");
    }

    #[tokio::test]
    async fn stats_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 1);
        for (p, m) in [("s1", "a"), ("s1", "b"), ("s2", "c")] {
            q.enqueue("orders", msg(p, m, None)).await.unwrap();
        }
        let leased = q.lease("orders", 1, Duration::from_secs(30)).await.unwrap();
        q.nack("orders", &leased[0].token, Duration::ZERO, "poison").await.unwrap();
        let per = q.partition_stats("orders").unwrap();
        assert_eq!((per["s1"].ready, per["s1"].dead, per["s2"].ready), (1, 1, 1));
        assert!(per["s2"].oldest_age_ms.is_some());
    }

    #[tokio::test]
    async fn lease_ack_and_idempotency() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        let a = q.enqueue("orders", msg("s1", "a", Some("k1"))).await.unwrap();
        assert!(matches!(a, Enqueued::New(_)));
        assert_eq!(q.enqueue("orders", msg("s1", "a again", Some("k1"))).await.unwrap(), Enqueued::Duplicate(a.id()));
        q.enqueue("orders", msg("s1", "b", None)).await.unwrap();
        assert_eq!(q.stats("orders").unwrap().ready, 2);

        let leased = q.lease("orders", 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(leased.iter().map(|l| l.payload.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
        // Leased messages are not handed out twice.
        assert!(q.lease("orders", 10, Duration::from_secs(30)).await.unwrap().is_empty());
        let st = q.stats("orders").unwrap();
        assert_eq!((st.ready, st.in_flight), (0, 2));
        q.ack("orders", &leased[0].token).await.unwrap();
        assert!(matches!(q.ack("orders", &leased[0].token).await, Err(QueueError::LeaseLost { .. })));
        assert_eq!(q.stats("orders").unwrap().in_flight, 1);
        // Other queues are separate.
        assert_eq!(q.stats("stock").unwrap(), QueueStats::default());
        assert!(matches!(q.stats("Bad Name"), Err(QueueError::BadName(_))));
    }

    #[tokio::test]
    async fn a_batch_of_acks_shares_one_fsync_and_a_lost_lease_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        for i in 0..20 {
            q.enqueue("orders", msg("s1", &format!("o{i}"), None)).await.unwrap();
        }
        let leased = q.lease("orders", 20, Duration::from_secs(30)).await.unwrap();
        q.ack("orders", &leased[3].token).await.unwrap();
        let tokens: Vec<LeaseToken> = leased.iter().map(|l| l.token.clone()).collect();
        let flushes = q.flush_count();
        let done = q.ack_many("orders", &tokens).await.unwrap();
        assert!(matches!(done[3], Err(QueueError::LeaseLost { .. })), "acked before: {:?}", done[3]);
        assert_eq!(done.iter().filter(|r| r.is_ok()).count(), 19);
        assert!(q.flush_count() - flushes <= 1, "one batch, at most one fsync: {}", q.flush_count() - flushes);
        assert_eq!(q.stats("orders").unwrap(), QueueStats::default());
        drop(q);
        // Durable: after reopening, nothing comes back.
        let q = open(dir.path(), 3);
        assert!(q.lease("orders", 20, Duration::from_secs(0)).await.unwrap().is_empty());
        assert!(q.ack_many("orders", &[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_enqueues_in_one_fsync_and_repeated_keys_are_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        let Enqueued::New(before) = q.enqueue("orders", msg("s1", "seen", Some("k0"))).await.unwrap() else { panic!("new") };
        let mut batch: Vec<NewMessage> = (1..=5).map(|i| msg("s1", &format!("o{i}"), Some(&format!("k{i}")))).collect();
        batch.push(msg("s1", "again", Some("k0")));
        batch.push(msg("s1", "twice", Some("k2")));
        batch.push(msg("s2", "keyless", None));
        let flushes = q.flush_count();
        let out = q.enqueue_many("orders", batch).await.unwrap();
        assert!(q.flush_count() - flushes <= 1, "one batch, at most one fsync: {}", q.flush_count() - flushes);
        assert_eq!(out.len(), 8, "{out:?}");
        assert_eq!(out[5], Enqueued::Duplicate(before), "a key queued before");
        assert_eq!(out[6], Enqueued::Duplicate(match &out[1] { Enqueued::New(id) => *id, d => panic!("{d:?}") }), "a key earlier in the batch");
        assert_eq!(out.iter().filter(|e| matches!(e, Enqueued::New(_))).count(), 6);
        assert!(q.enqueue_many("orders", Vec::new()).await.unwrap().is_empty());
        drop(q);
        // Durable and in order: after reopening, the seven messages lease back once each.
        let q = open(dir.path(), 3);
        let leased = q.lease("orders", 20, Duration::from_secs(30)).await.unwrap();
        let payloads: Vec<&[u8]> = leased.iter().map(|l| l.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"seen"[..], b"o1", b"o2", b"o3", b"o4", b"o5", b"keyless"]);
    }

    #[tokio::test]
    async fn expired_leases_come_back_and_stale_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 5);
        q.enqueue("q", msg("p", "x", None)).await.unwrap();
        let first = q.lease("q", 1, Duration::ZERO).await.unwrap().remove(0);
        let second = q.lease("q", 1, Duration::from_secs(60)).await.unwrap().remove(0);
        assert_eq!(first.token.id, second.token.id);
        assert_eq!(second.token.attempt, first.token.attempt + 1);
        assert!(matches!(q.ack("q", &first.token).await, Err(QueueError::LeaseLost { .. })));
        q.ack("q", &second.token).await.unwrap();
        assert_eq!(q.stats("q").unwrap(), QueueStats::default());
    }

    #[tokio::test]
    async fn nack_delays_then_dead_letters_then_replay() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 2);
        q.enqueue("q", msg("p", "poison", None)).await.unwrap();
        let l = q.lease("q", 1, Duration::from_secs(60)).await.unwrap().remove(0);
        q.nack("q", &l.token, Duration::from_millis(300), "platform said 500").await.unwrap();
        // Delayed: not leasable yet; the nack spent the token.
        assert!(q.lease("q", 1, Duration::from_secs(60)).await.unwrap().is_empty());
        assert_eq!(q.stats("q").unwrap().in_flight, 1);
        assert!(matches!(q.nack("q", &l.token, Duration::ZERO, "again").await, Err(QueueError::LeaseLost { .. })));
        let started = std::time::Instant::now();
        let l = loop {
            if let Some(l) = q.lease("q", 1, Duration::from_secs(60)).await.unwrap().pop() {
                break l;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the delayed message never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(l.token.attempt, 2);
        q.nack("q", &l.token, Duration::ZERO, "still 500").await.unwrap();
        let dead = q.dead_letters("q", 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("failed 2 attempts; last error: still 500"), "{}", dead[0].reason);
        assert_eq!(dead[0].payload, b"poison");
        assert_eq!(q.stats("q").unwrap(), QueueStats { dead: 1, ..QueueStats::default() });

        assert_eq!(q.replay("q", &[dead[0].id]).await.unwrap(), 1);
        let l = q.lease("q", 1, Duration::from_secs(60)).await.unwrap().remove(0);
        assert_eq!((l.token.attempt, l.payload.as_slice()), (1, &b"poison"[..]));
        q.ack("q", &l.token).await.unwrap();
        assert_eq!(q.purge("q", &[dead[0].id]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_lease_that_keeps_expiring_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 1);
        q.enqueue("q", msg("p", "x", None)).await.unwrap();
        assert_eq!(q.lease("q", 1, Duration::ZERO).await.unwrap().len(), 1);
        assert!(q.lease("q", 1, Duration::ZERO).await.unwrap().is_empty());
        let dead = q.dead_letters("q", 10).unwrap();
        assert!(dead[0].reason.contains("lease expired 1 times"), "{}", dead[0].reason);
        assert_eq!(q.purge("q", &[dead[0].id]).await.unwrap(), 1);
        assert!(q.dead_letters("q", 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn acknowledged_enqueues_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = open(dir.path(), 3);
            for i in 0..20 {
                q.enqueue("q", msg("p", &i.to_string(), Some(&format!("k{i}")))).await.unwrap();
            }
        }
        let q = open(dir.path(), 3);
        assert_eq!(q.stats("q").unwrap().ready, 20);
        assert!(matches!(q.enqueue("q", msg("p", "0", Some("k0"))).await.unwrap(), Enqueued::Duplicate(_)));
        let leased = q.lease("q", 100, Duration::from_secs(10)).await.unwrap();
        let got: Vec<String> = leased.iter().map(|l| String::from_utf8(l.payload.clone()).unwrap()).collect();
        assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_lease_stops_at_its_byte_bound_but_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        for (i, size) in [5000, 300, 300, 300].iter().enumerate() {
            q.enqueue("q", msg("p", &"x".repeat(*size), Some(&format!("k{i}")))).await.unwrap();
        }
        let first = q.lease_within("q", 10, 1000, Duration::from_secs(60)).await.unwrap();
        assert_eq!(first.len(), 1, "one message past the bound still goes alone");
        let rest = q.lease_within("q", 10, 700, Duration::from_secs(60)).await.unwrap();
        assert_eq!(rest.iter().map(|l| l.payload.len()).collect::<Vec<_>>(), [300, 300], "600 bytes fit 700, 900 do not");
        assert_eq!(q.lease_within("q", 10, 700, Duration::from_secs(60)).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_lease_is_its_random_token_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 5);
        q.enqueue("q", msg("p", "a", None)).await.unwrap();
        q.enqueue("q", msg("p", "b", None)).await.unwrap();
        // Nobody leased `a` (id 0): counting ids and attempts gets nowhere.
        for guess in [LeaseToken { id: 0, attempt: 0, lease: String::new() }, LeaseToken { id: 0, attempt: 1, lease: "0".repeat(32) }] {
            assert!(matches!(q.ack("q", &guess).await, Err(QueueError::LeaseLost { id: 0 })));
        }
        let leased = q.lease("q", 2, Duration::from_secs(60)).await.unwrap();
        assert_eq!(leased[0].token.lease.len(), 32);
        assert_ne!(leased[0].token.lease, leased[1].token.lease);
        // The right id and attempt with another lease's id: refused, nothing changes.
        let forged = LeaseToken { lease: leased[1].token.lease.clone(), ..leased[0].token.clone() };
        assert!(matches!(q.ack("q", &forged).await, Err(QueueError::LeaseLost { .. })));
        assert!(matches!(q.nack("q", &forged, Duration::ZERO, "x").await, Err(QueueError::LeaseLost { .. })));
        assert!(matches!(q.extend("q", &forged, Duration::from_secs(60)).await, Err(QueueError::LeaseLost { .. })));
        assert_eq!(q.stats("q").unwrap().in_flight, 2);
        // Its own token extends and acks it.
        let until = q.extend("q", &leased[0].token, Duration::from_secs(3600)).await.unwrap();
        assert!(until > now_ms() + 3_500_000);
        q.ack("q", &leased[0].token).await.unwrap();
        // A nack ends the lease: its token is spent, the next lease gets a new one.
        q.nack("q", &leased[1].token, Duration::ZERO, "later").await.unwrap();
        assert!(matches!(q.ack("q", &leased[1].token).await, Err(QueueError::LeaseLost { .. })));
        let again = q.lease("q", 1, Duration::from_secs(60)).await.unwrap();
        assert_ne!(again[0].token.lease, leased[1].token.lease);
        // A delay past any sane bound saturates instead of wrapping into the past.
        q.nack("q", &again[0].token, Duration::from_secs(u64::MAX), "never").await.unwrap();
        assert!(q.lease("q", 1, Duration::ZERO).await.unwrap().is_empty());
    }
}

/// Random operations against a model of the contract, with reopens in between: what the
/// index says (stats, leases, dead letters) must match what a recount of the model says,
/// also after the index is rebuilt from disk.
#[cfg(test)]
mod model {
    use super::*;
    use crate::store::StoreConfig;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    const MAX_ATTEMPTS: u32 = 3;
    const PARTS: [&str; 3] = ["a", "b", "c"];

    #[derive(Clone, Debug)]
    struct Msg {
        partition: &'static str,
        attempts: u32,
        /// Leased or delayed for an hour (else ready now).
        waiting: bool,
        token: Option<LeaseToken>,
        dead: bool,
    }

    fn open(dir: &std::path::Path) -> StoreQueues {
        let store = Store::open(dir, StoreConfig { reserve_bytes: 0, ..StoreConfig::default() }).unwrap();
        StoreQueues::open(&store, QueuePolicy { max_attempts: MAX_ATTEMPTS }).unwrap()
    }

    fn check(q: &StoreQueues, model: &BTreeMap<u64, Msg>, step: usize) {
        let mut want: BTreeMap<String, QueueStats> = BTreeMap::new();
        let mut total = QueueStats::default();
        for m in model.values() {
            let s = want.entry(m.partition.to_string()).or_default();
            let (r, f, d) = if m.dead { (0, 0, 1) } else if m.waiting { (0, 1, 0) } else { (1, 0, 0) };
            s.ready += r;
            s.in_flight += f;
            s.dead += d;
            total.ready += r;
            total.in_flight += f;
            total.dead += d;
        }
        let got = q.stats("q").unwrap();
        assert_eq!((got.ready, got.in_flight, got.dead), (total.ready, total.in_flight, total.dead), "step {step}: totals");
        assert_eq!(got.oldest_age_ms.is_some(), model.values().any(|m| !m.dead), "step {step}: oldest");
        let per: BTreeMap<String, (u64, u64, u64)> = q.partition_stats("q").unwrap().into_iter().map(|(p, s)| (p, (s.ready, s.in_flight, s.dead))).collect();
        let want: BTreeMap<String, (u64, u64, u64)> = want.into_iter().map(|(p, s)| (p, (s.ready, s.in_flight, s.dead))).collect();
        assert_eq!(per, want, "step {step}: per partition");
        let dead: Vec<u64> = q.dead_letters("q", usize::MAX).unwrap().into_iter().map(|d| d.id).collect();
        let want_dead: Vec<u64> = model.iter().filter(|(_, m)| m.dead).map(|(id, _)| *id).collect();
        assert_eq!(dead, want_dead, "step {step}: dead letters");
    }

    #[tokio::test]
    async fn random_operations_match_the_model_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = open(dir.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xbe27);
        let mut model: BTreeMap<u64, Msg> = BTreeMap::new();
        let mut keys: HashMap<String, u64> = HashMap::new();
        let hour = Duration::from_secs(3600);
        for step in 0..600 {
            match rng.gen_range(0..100) {
                0..=29 => {
                    let partition = PARTS[rng.gen_range(0..3)];
                    let key = rng.gen_bool(0.3).then(|| format!("k{}", rng.gen_range(0..20)));
                    let out = q.enqueue("q", NewMessage { partition: partition.into(), payload: vec![step as u8; 10], idempotency_key: key.clone() }).await.unwrap();
                    match (out, key) {
                        (Enqueued::New(id), key) => {
                            assert!(key.as_ref().is_none_or(|k| !keys.contains_key(k)), "step {step}: a key seen before made a new message");
                            if let Some(k) = key {
                                keys.insert(k, id);
                            }
                            model.insert(id, Msg { partition, attempts: 0, waiting: false, token: None, dead: false });
                        }
                        (Enqueued::Duplicate(id), Some(k)) => assert_eq!(keys.get(&k), Some(&id), "step {step}: duplicate of {k}"),
                        (d, None) => panic!("step {step}: {d:?} without a key"),
                    }
                }
                30..=54 => {
                    let max = rng.gen_range(1..5);
                    let visibility = if rng.gen_bool(0.5) { Duration::ZERO } else { hour };
                    let ready_before: Vec<u64> = model.iter().filter(|(_, m)| !m.dead && !m.waiting).map(|(id, _)| *id).collect();
                    let dead_before = model.values().filter(|m| m.dead).count();
                    let leased = q.lease("q", max, visibility).await.unwrap();
                    let dead_now: Vec<u64> = q.dead_letters("q", usize::MAX).unwrap().into_iter().map(|d| d.id).collect();
                    let buried: Vec<u64> = dead_now.iter().copied().filter(|id| !model[id].dead).collect();
                    assert_eq!(dead_now.len(), dead_before + buried.len(), "step {step}");
                    for id in &buried {
                        assert!(ready_before.contains(id) && model[id].attempts >= MAX_ATTEMPTS, "step {step}: buried {id} though it had attempts left or was not due");
                        let m = model.get_mut(id).unwrap();
                        (m.dead, m.token) = (true, None);
                    }
                    for l in &leased {
                        assert!(ready_before.contains(&l.token.id), "step {step}: leased {} which was not ready", l.token.id);
                        let m = model.get_mut(&l.token.id).unwrap();
                        m.attempts += 1;
                        assert_eq!(l.token.attempt, m.attempts, "step {step}");
                        m.waiting = visibility > Duration::ZERO;
                        m.token = Some(l.token.clone());
                    }
                    assert!(leased.len() + buried.len() <= max, "step {step}");
                    if leased.len() + buried.len() < max {
                        assert_eq!(leased.len() + buried.len(), ready_before.len(), "step {step}: ready messages left behind");
                    }
                }
                55..=69 => {
                    // Ack a token held (maybe stale: re-leased since, or acked).
                    let held: Vec<LeaseToken> = model.values().filter_map(|m| m.token.clone()).collect();
                    if let Some(t) = held.get(rng.gen_range(0..held.len().max(1))) {
                        let stale = LeaseToken { attempt: t.attempt + 1, ..t.clone() };
                        let t = if rng.gen_bool(0.2) { stale } else { t.clone() };
                        let ok = model.get(&t.id).and_then(|m| m.token.as_ref()) == Some(&t);
                        let got = q.ack("q", &t).await;
                        assert_eq!(got.is_ok(), ok, "step {step}: ack {t:?}: {got:?}");
                        if ok {
                            model.remove(&t.id);
                        }
                    }
                }
                70..=79 => {
                    let held: Vec<LeaseToken> = model.values().filter_map(|m| m.token.clone()).collect();
                    if let Some(t) = held.get(rng.gen_range(0..held.len().max(1))) {
                        let delay = if rng.gen_bool(0.5) { Duration::ZERO } else { hour };
                        q.nack("q", t, delay, "no").await.unwrap();
                        let m = model.get_mut(&t.id).unwrap();
                        m.token = None;
                        if m.attempts >= MAX_ATTEMPTS {
                            m.dead = true;
                        } else {
                            m.waiting = delay > Duration::ZERO;
                        }
                    }
                }
                80..=86 => {
                    let dead: Vec<u64> = model.iter().filter(|(_, m)| m.dead).map(|(id, _)| *id).take(2).collect();
                    let replayed = q.replay("q", &[dead.clone(), vec![u64::MAX]].concat()).await.unwrap();
                    assert_eq!(replayed, dead.len(), "step {step}");
                    for id in dead {
                        let m = model.get_mut(&id).unwrap();
                        (m.dead, m.attempts, m.waiting) = (false, 0, false);
                    }
                }
                87..=92 => {
                    let dead: Vec<u64> = model.iter().filter(|(_, m)| m.dead).map(|(id, _)| *id).take(1).collect();
                    assert_eq!(q.purge("q", &dead).await.unwrap(), dead.len(), "step {step}");
                    for id in dead {
                        model.remove(&id);
                    }
                }
                _ => {
                    drop(q);
                    q = open(dir.path());
                }
            }
            check(&q, &model, step);
        }
        // After a last reopen every held token still acks: leases are durable.
        drop(q);
        let q = open(dir.path());
        for (id, m) in &model {
            if let Some(t) = &m.token {
                q.ack("q", t).await.unwrap_or_else(|e| panic!("token of {id} lost in a reopen: {e}"));
            }
        }
    }
}

/// A long churn does not grow the data dir: the journal is bounded, and once the writer
/// is idle what was acked is compacted away — an emptied queue gives its disk back while
/// the store runs.
#[cfg(test)]
mod churn {
    use super::*;
    use crate::store::StoreConfig;

    /// Bytes on disk under `dir`; without the journal when `journal` is false. The store
    /// compacts in the background, so a file or folder can go between listing and stat:
    /// it counts as nothing.
    fn disk_bytes_of(dir: &std::path::Path, journal: bool) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|e| {
                let Ok(m) = e.metadata() else { return 0 };
                let is_journal = e.path().extension().is_some_and(|x| x == "jnl");
                if m.is_dir() {
                    disk_bytes_of(&e.path(), journal)
                } else if is_journal && !journal {
                    0
                } else {
                    m.blocks() * 512
                }
            })
            .sum()
    }

    fn disk_bytes(dir: &std::path::Path) -> u64 {
        disk_bytes_of(dir, true)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_churn_is_bounded_on_disk_and_given_back_when_idle() {
        let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let store = Store::open(dir.path(), StoreConfig { reserve_bytes: 0, compact_after_removals: 5_000, ..StoreConfig::default() }).unwrap();
        let q = StoreQueues::open(&store, QueuePolicy::default()).unwrap();
        // Random bytes: the engine compresses, and the point is bytes on disk.
        let mut x = rand::random::<u64>() | 1;
        let mut payload = move || {
            (0..1024)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect::<Vec<u8>>()
        };
        let mut written = 0u64;
        let mut peak = 0u64;
        for round in 0..24u64 {
            let msgs: Vec<NewMessage> = (0..500).map(|i| NewMessage { partition: format!("p{}", i % 7), payload: payload(), idempotency_key: Some(format!("{round}-{i}")) }).collect();
            // Each message is written twice: enqueued, then rewritten by its lease.
            written += 2 * msgs.iter().map(|m| m.payload.len() as u64).sum::<u64>();
            q.enqueue_many("q", msgs).await.unwrap();
            let leased = q.lease("q", 500, Duration::from_secs(60)).await.unwrap();
            let tokens: Vec<LeaseToken> = leased.into_iter().map(|l| l.token).collect();
            assert!(q.ack_many("q", &tokens).await.unwrap().iter().all(Result::is_ok));
            peak = peak.max(disk_bytes(dir.path()));
        }
        assert_eq!(q.stats("q").unwrap(), QueueStats::default());
        let bound = crate::store::MAX_JOURNAL_BYTES + 16 * 1024 * 1024;
        assert!(written > 2 * bound, "the churn wrote {written} bytes");
        let after = disk_bytes(dir.path());
        assert!(after <= bound, "{after} bytes on disk after a churn of {written} (peak {peak}); the bound is {bound}");
        assert!(peak <= bound + crate::store::MAX_JOURNAL_BYTES, "peak {peak} bytes during a churn of {written}");
        // Idle: the acked messages are compacted away and the replaced files deleted; the
        // journal stays until it is full (its bound, above).
        let started = std::time::Instant::now();
        let mut tables = disk_bytes_of(dir.path(), false);
        let before = tables;
        assert!(before > 6 * 1024 * 1024, "the churn left {before} bytes of tables");
        while tables + 3 * 1024 * 1024 > before {
            assert!(started.elapsed() < Duration::from_secs(60), "tables still take {tables} bytes a minute after the churn (from {before})");
            tokio::time::sleep(Duration::from_millis(200)).await;
            tables = disk_bytes_of(dir.path(), false);
        }
    }
}
