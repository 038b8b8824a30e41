//! The embedded queue backend on sled.
//!
//! Per queue four trees: `msg` (id -> header + payload), `ready` (visible-at + id, the
//! schedule: both waiting and leased messages, a lease being a move into the future;
//! beside it, after every timestamp, the same schedule per partition — `0xFF`,
//! partition, `0`, visible-at, id — so one partition is leased without reading past
//! another's backlog),
//! `idem` (idempotency key -> id) and `dead`. Each operation is one sled transaction
//! across the trees it touches, then a group-committed flush before it returns.
//! Leasing is serialized in-process so a message is never handed to two consumers.

use super::group_commit::GroupCommit;
use super::{DeadLetter, Enqueued, LeaseQueue, LeaseToken, Leased, NewMessage, QueueError, QueuePolicy, QueueStats};
use crate::clock::now_ms;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    partition: String,
    attempts: u32,
    enqueued_at_ms: i64,
    /// When the message is (again) visible; for a dead letter, when it died.
    visible_at_ms: i64,
    idem: Option<String>,
    last_error: Option<String>,
    /// The current lease's random id (see `LeaseToken`), while leased.
    #[serde(default)]
    lease: Option<String>,
}

fn encode(h: &Header, payload: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(h).expect("header serializes");
    let mut out = Vec::with_capacity(4 + head.len() + payload.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out
}

/// How long a stored record's payload is, without decoding its header.
fn payload_len(bytes: &[u8]) -> usize {
    let header = bytes.get(..4).map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
    bytes.len().saturating_sub(4 + header)
}

fn decode(id: u64, bytes: &[u8]) -> Result<(Header, Vec<u8>), QueueError> {
    let corrupt = |why: String| QueueError::Corrupt { id, why };
    let len = bytes.get(..4).ok_or_else(|| corrupt("short record".into()))?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    let head = bytes.get(4..4 + len).ok_or_else(|| corrupt("short header".into()))?;
    let h: Header = serde_json::from_slice(head).map_err(|e| corrupt(e.to_string()))?;
    Ok((h, bytes[4 + len..].to_vec()))
}

fn sched_key(visible_at_ms: i64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(visible_at_ms.max(0) as u64).to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// A message id stored as 8 big-endian bytes (a `msg`/`dead` key or an `idem` value).
fn id_of(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]))
}

/// An `idem` value: the message id, then when the key was first seen (for expiry).
fn idem_value(id: u64, at_ms: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&id.to_be_bytes());
    v[8..].copy_from_slice(&at_ms.to_be_bytes());
    v
}

fn idem_created(v: &[u8]) -> i64 {
    v.get(8..16).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).unwrap_or(0)
}

fn id_of_sched(key: &[u8]) -> u64 {
    let tail = &key[key.len() - 16..];
    u64::from_be_bytes(tail[8..16].try_into().expect("16-byte schedule key"))
}

/// Partition schedule keys start here, after every timestamp a global key can hold.
const PARTITIONED: u8 = 0xFF;
/// Present in `ready` once the partition schedule has been built for this queue.
const PARTITIONED_MARK: &[u8] = b"\xFEpartition-schedule-v1";

fn psched_prefix(partition: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(partition.len() + 2 + 16);
    k.push(PARTITIONED);
    k.extend_from_slice(partition.as_bytes());
    k.push(0);
    k
}

fn psched_key(partition: &str, visible_at_ms: i64, id: u64) -> Vec<u8> {
    let mut k = psched_prefix(partition);
    k.extend_from_slice(&sched_key(visible_at_ms, id));
    k
}

/// Whether a `ready` key is the global schedule's (visible-at + id).
fn is_global_sched(key: &[u8]) -> bool {
    key.len() == 16 && key[0] < 0xFE
}

/// Put a message on both schedules.
fn sched_put(ready: &TransactionalTree, partition: &str, visible_at_ms: i64, id: u64) -> TxResult<()> {
    ready.insert(&sched_key(visible_at_ms, id), &[])?;
    ready.insert(psched_key(partition, visible_at_ms, id), &[])?;
    Ok(())
}

/// Take a message off both schedules.
fn sched_del(ready: &TransactionalTree, partition: &str, visible_at_ms: i64, id: u64) -> TxResult<()> {
    ready.remove(&sched_key(visible_at_ms, id))?;
    ready.remove(psched_key(partition, visible_at_ms, id))?;
    Ok(())
}

#[derive(Clone)]
struct QueueTrees {
    msg: Tree,
    ready: Tree,
    idem: Tree,
    dead: Tree,
}

pub struct SledQueue {
    db: sled::Db,
    commit: Arc<GroupCommit>,
    trees: Mutex<HashMap<String, QueueTrees>>,
    lease_lock: tokio::sync::Mutex<()>,
    policy: QueuePolicy,
}

type TxResult<T> = Result<T, ConflictableTransactionError<QueueError>>;

fn tx_err(e: TransactionError<QueueError>) -> QueueError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => QueueError::Storage(e),
    }
}

fn abort<T>(e: QueueError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Read a live message's header inside a transaction, checking the lease token.
fn leased_header(msg: &TransactionalTree, token: &LeaseToken) -> TxResult<(Header, Vec<u8>)> {
    let Some(bytes) = msg.get(token.id.to_be_bytes())? else {
        return abort(QueueError::LeaseLost { id: token.id });
    };
    let (h, payload) = decode(token.id, &bytes).map_err(ConflictableTransactionError::Abort)?;
    if !token.holds(h.attempts, h.lease.as_deref()) {
        return abort(QueueError::LeaseLost { id: token.id });
    }
    Ok((h, payload))
}

impl SledQueue {
    /// Queues in `db`; must be called inside a tokio runtime (starts the flusher).
    pub fn new(db: sled::Db, policy: QueuePolicy) -> Self {
        let commit = GroupCommit::start(db.clone());
        Self::with_commit(db, commit, policy)
    }

    /// Queues sharing `commit` (the database's one group committer) with other writers.
    pub fn with_commit(db: sled::Db, commit: Arc<GroupCommit>, policy: QueuePolicy) -> Self {
        SledQueue { commit, db, trees: Mutex::new(HashMap::new()), lease_lock: tokio::sync::Mutex::new(()), policy }
    }

    pub fn flush_count(&self) -> u64 {
        self.commit.flush_count()
    }

    fn trees(&self, queue: &str) -> Result<QueueTrees, QueueError> {
        if queue.is_empty()
            || queue.len() > 64
            || !queue.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(QueueError::BadName(queue.to_string()));
        }
        let mut map = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(queue) {
            return Ok(t.clone());
        }
        let open = |part: &str| self.db.open_tree(format!("q/{queue}/{part}"));
        let t = QueueTrees { msg: open("msg")?, ready: open("ready")?, idem: open("idem")?, dead: open("dead")? };
        if t.ready.get(PARTITIONED_MARK)?.is_none() {
            // Written by a berth before partition schedules: build them from the messages.
            for item in t.msg.iter() {
                let (k, v) = item?;
                let (h, _) = decode(id_of(&k), &v)?;
                t.ready.insert(psched_key(&h.partition, h.visible_at_ms, id_of(&k)), &[])?;
            }
            t.ready.insert(PARTITIONED_MARK, &[])?;
        }
        map.insert(queue.to_string(), t.clone());
        Ok(t)
    }

    /// Forget idempotency keys first seen more than `ttl` ago: a repeat of such a key is
    /// a new message again. Returns how many were dropped. (A scan of the key tree; run
    /// it now and then, not per message.)
    pub fn expire_idempotency_keys(&self, queue: &str, ttl: Duration) -> Result<usize, QueueError> {
        let t = self.trees(queue)?;
        let cutoff = now_ms() - ttl.as_millis() as i64;
        let mut dropped = 0;
        for item in t.idem.iter() {
            let (k, v) = item?;
            // Compare-and-swap: a key written again meanwhile is kept.
            if idem_created(&v) < cutoff && t.idem.compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?.is_ok() {
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Remove an acked message (not yet durable: the caller waits for that).
    fn remove_leased(t: &QueueTrees, token: &LeaseToken) -> Result<(), QueueError> {
        (&t.msg, &t.ready)
            .transaction(|(msg, ready)| {
                let (h, _) = leased_header(msg, token)?;
                sched_del(ready, &h.partition, h.visible_at_ms, token.id)?;
                msg.remove(&token.id.to_be_bytes())?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// Lease the messages `due` (in that order) until `max_bytes` of payload.
    fn lease_due(&self, t: &QueueTrees, due: Vec<u64>, now: i64, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        let mut out = Vec::with_capacity(due.len());
        let mut bytes = 0usize;
        for id in due {
            // Stop before a message that would pass the byte bound (a first one always goes).
            let size = t.msg.get(id.to_be_bytes())?.map_or(0, |v| payload_len(&v));
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            let expires = super::later(now, visibility);
            let max_attempts = self.policy.max_attempts;
            let leased = (&t.msg, &t.ready, &t.dead)
                .transaction(|(msg, ready, dead)| {
                    let Some(bytes) = msg.get(id.to_be_bytes())? else { return Ok(None) };
                    let (mut h, payload) = decode(id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    if h.attempts >= max_attempts {
                        let reason = format!("lease expired {} times without an ack; last error: {}", h.attempts, h.last_error.clone().unwrap_or_else(|| "none".into()));
                        Self::bury(msg, ready, dead, id, h, &payload, reason)?;
                        return Ok(None);
                    }
                    sched_del(ready, &h.partition, h.visible_at_ms, id)?;
                    h.attempts += 1;
                    h.visible_at_ms = expires;
                    let token = LeaseToken::issue(id, h.attempts);
                    h.lease = Some(token.lease.clone());
                    sched_put(ready, &h.partition, expires, id)?;
                    msg.insert(&id.to_be_bytes(), encode(&h, &payload))?;
                    Ok(Some(Leased {
                        token,
                        partition: h.partition.clone(),
                        payload,
                        enqueued_at_ms: h.enqueued_at_ms,
                        expires_at_ms: expires,
                    }))
                })
                .map_err(tx_err)?;
            if let Some(l) = leased {
                bytes += l.payload.len();
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Lease like `lease_within`, from `partitions` only: each partition's own schedule
    /// is read, so another partition's backlog is never read past (a tenant's lease does
    /// not wait behind another tenant's orders). Oldest due first across them.
    pub async fn lease_partitions(&self, queue: &str, partitions: &[String], max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        let t = self.trees(queue)?;
        let _serial = self.lease_lock.lock().await;
        let now = now_ms();
        let mut due: Vec<([u8; 16], u64)> = Vec::new();
        for p in partitions {
            let prefix = psched_prefix(p);
            let mut end = prefix.clone();
            end.extend_from_slice(&sched_key(now, u64::MAX));
            for k in t.ready.range(prefix..end).keys().take(max) {
                let k = k?;
                let sched: [u8; 16] = k[k.len() - 16..].try_into().expect("16-byte schedule tail");
                due.push((sched, id_of_sched(&k)));
            }
        }
        due.sort_unstable();
        due.truncate(max);
        self.lease_due(&t, due.into_iter().map(|(_, id)| id).collect(), now, max_bytes, visibility)
    }

    /// The partition of a live message (`None` when it is not in the queue).
    pub fn partition_of(&self, queue: &str, id: u64) -> Result<Option<String>, QueueError> {
        let t = self.trees(queue)?;
        match t.msg.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(decode(id, &v)?.0.partition)),
            None => Ok(None),
        }
    }

    /// The partition of a dead letter (`None` when there is no such dead letter).
    pub fn dead_partition_of(&self, queue: &str, id: u64) -> Result<Option<String>, QueueError> {
        let t = self.trees(queue)?;
        match t.dead.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(decode(id, &v)?.0.partition)),
            None => Ok(None),
        }
    }

    /// Move a message to the dead letters inside a transaction.
    fn bury(msg: &TransactionalTree, ready: &TransactionalTree, dead: &TransactionalTree, id: u64, mut h: Header, payload: &[u8], reason: String) -> TxResult<()> {
        sched_del(ready, &h.partition, h.visible_at_ms, id)?;
        msg.remove(&id.to_be_bytes())?;
        h.last_error = Some(reason);
        h.visible_at_ms = now_ms();
        dead.insert(&id.to_be_bytes(), encode(&h, payload))?;
        Ok(())
    }
}

impl LeaseQueue for SledQueue {
    async fn enqueue(&self, queue: &str, m: NewMessage) -> Result<Enqueued, QueueError> {
        let mut one = self.enqueue_many(queue, vec![m]).await?;
        Ok(one.pop().expect("one outcome per message"))
    }

    async fn enqueue_many(&self, queue: &str, msgs: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let t = self.trees(queue)?;
        let now = now_ms();
        let mut staged = Vec::with_capacity(msgs.len());
        for m in msgs {
            let id = self.db.generate_id()? + 1;
            let header = Header { partition: m.partition, attempts: 0, enqueued_at_ms: now, visible_at_ms: now, idem: m.idempotency_key, last_error: None, lease: None };
            let record = encode(&header, &m.payload);
            staged.push((id, header.idem, record, header.partition));
        }
        let result = (&t.msg, &t.ready, &t.idem)
            .transaction(|(msg, ready, idem)| {
                let mut out = Vec::with_capacity(staged.len());
                for (id, key, record, partition) in &staged {
                    if let Some(key) = key {
                        // Also sees a key inserted earlier in this transaction.
                        if let Some(existing) = idem.get(key.as_bytes())? {
                            out.push(Enqueued::Duplicate(id_of(&existing[..8.min(existing.len())])));
                            continue;
                        }
                        idem.insert(key.as_bytes(), idem_value(*id, now).as_slice())?;
                    }
                    msg.insert(&id.to_be_bytes(), record.as_slice())?;
                    sched_put(ready, partition, now, *id)?;
                    out.push(Enqueued::New(*id));
                }
                Ok(out)
            })
            .map_err(tx_err)?;
        // A duplicate's original may still be waiting for its flush: wait for it too.
        self.commit.durable().await?;
        Ok(result)
    }

    async fn lease_within(&self, queue: &str, max: usize, max_bytes: usize, visibility: Duration) -> Result<Vec<Leased>, QueueError> {
        let t = self.trees(queue)?;
        let _serial = self.lease_lock.lock().await;
        let now = now_ms();
        let due: Vec<u64> = t
            .ready
            .range(..sched_key(now, u64::MAX))
            .keys()
            .take(max)
            .map(|k| k.map(|k| id_of_sched(&k)))
            .collect::<Result<_, _>>()?;
        // A lease lost in a crash only makes the message visible again (at least once),
        // so leases are not flushed on their own; the next durable write carries them.
        self.lease_due(&t, due, now, max_bytes, visibility)
    }

    async fn ack(&self, queue: &str, token: &LeaseToken) -> Result<(), QueueError> {
        Self::remove_leased(&self.trees(queue)?, token)?;
        self.commit.durable().await?;
        Ok(())
    }

    async fn ack_many(&self, queue: &str, tokens: &[LeaseToken]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let t = self.trees(queue)?;
        let done: Vec<_> = tokens.iter().map(|token| Self::remove_leased(&t, token)).collect();
        if done.iter().any(Result::is_ok) {
            self.commit.durable().await?;
        }
        Ok(done)
    }

    async fn nack(&self, queue: &str, token: &LeaseToken, delay: Duration, reason: &str) -> Result<(), QueueError> {
        let t = self.trees(queue)?;
        let max_attempts = self.policy.max_attempts;
        (&t.msg, &t.ready, &t.dead)
            .transaction(|(msg, ready, dead)| {
                let (mut h, payload) = leased_header(msg, token)?;
                if h.attempts >= max_attempts {
                    let why = format!("failed {} attempts; last error: {reason}", h.attempts);
                    return Self::bury(msg, ready, dead, token.id, h, &payload, why);
                }
                sched_del(ready, &h.partition, h.visible_at_ms, token.id)?;
                h.visible_at_ms = super::later(now_ms(), delay);
                h.last_error = Some(reason.to_string());
                h.lease = None;
                sched_put(ready, &h.partition, h.visible_at_ms, token.id)?;
                msg.insert(&token.id.to_be_bytes(), encode(&h, &payload))?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.commit.durable().await?;
        Ok(())
    }

    async fn extend(&self, queue: &str, token: &LeaseToken, visibility: Duration) -> Result<i64, QueueError> {
        let t = self.trees(queue)?;
        let expires = (&t.msg, &t.ready)
            .transaction(|(msg, ready)| {
                let (mut h, payload) = leased_header(msg, token)?;
                sched_del(ready, &h.partition, h.visible_at_ms, token.id)?;
                h.visible_at_ms = super::later(now_ms(), visibility);
                sched_put(ready, &h.partition, h.visible_at_ms, token.id)?;
                msg.insert(&token.id.to_be_bytes(), encode(&h, &payload))?;
                Ok(h.visible_at_ms)
            })
            .map_err(tx_err)?;
        self.commit.durable().await?;
        Ok(expires)
    }

    fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let t = self.trees(queue)?;
        t.dead
            .iter()
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                let id = id_of(&k);
                let (h, payload) = decode(id, &v)?;
                Ok(DeadLetter {
                    id,
                    partition: h.partition,
                    attempts: h.attempts,
                    reason: h.last_error.unwrap_or_default(),
                    enqueued_at_ms: h.enqueued_at_ms,
                    died_at_ms: h.visible_at_ms,
                    payload,
                })
            })
            .collect()
    }

    async fn replay(&self, queue: &str, ids: &[u64]) -> Result<usize, QueueError> {
        let t = self.trees(queue)?;
        let now = now_ms();
        let moved = (&t.msg, &t.ready, &t.dead)
            .transaction(|(msg, ready, dead)| {
                let mut moved = 0;
                for id in ids {
                    let Some(bytes) = dead.remove(&id.to_be_bytes())? else { continue };
                    let (mut h, payload) = decode(*id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    h.attempts = 0;
                    h.lease = None;
                    h.visible_at_ms = now;
                    msg.insert(&id.to_be_bytes(), encode(&h, &payload))?;
                    sched_put(ready, &h.partition, now, *id)?;
                    moved += 1;
                }
                Ok(moved)
            })
            .map_err(tx_err)?;
        self.commit.durable().await?;
        Ok(moved)
    }

    async fn purge(&self, queue: &str, ids: &[u64]) -> Result<usize, QueueError> {
        let t = self.trees(queue)?;
        let mut purged = 0;
        for id in ids {
            if t.dead.remove(id.to_be_bytes())?.is_some() {
                purged += 1;
            }
        }
        self.commit.durable().await?;
        Ok(purged)
    }

    fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let t = self.trees(queue)?;
        let now = now_ms();
        let mut stats = QueueStats { dead: t.dead.len() as u64, ..QueueStats::default() };
        for key in t.ready.range(..[0xFEu8].as_slice()).keys() {
            let key = key?;
            if !is_global_sched(&key) {
                continue;
            }
            let visible = u64::from_be_bytes(key[..8].try_into().expect("16-byte schedule key")) as i64;
            if visible <= now {
                stats.ready += 1;
            } else {
                stats.in_flight += 1;
            }
        }
        // Ids grow with time, so the first live message is the oldest.
        if let Some((k, v)) = t.msg.first()? {
            let id = id_of(&k);
            stats.oldest_age_ms = Some(now - decode(id, &v)?.0.enqueued_at_ms);
        }
        Ok(stats)
    }

    fn partition_stats(&self, queue: &str) -> Result<BTreeMap<String, QueueStats>, QueueError> {
        let t = self.trees(queue)?;
        let now = now_ms();
        let mut out: BTreeMap<String, QueueStats> = BTreeMap::new();
        for item in t.msg.iter() {
            let (k, v) = item?;
            let (h, _) = decode(id_of(&k), &v)?;
            let st = out.entry(h.partition).or_default();
            if h.visible_at_ms <= now {
                st.ready += 1;
            } else {
                st.in_flight += 1;
            }
            let age = now - h.enqueued_at_ms;
            st.oldest_age_ms = Some(st.oldest_age_ms.map_or(age, |a| a.max(age)));
        }
        for item in t.dead.iter() {
            let (k, v) = item?;
            let (h, _) = decode(id_of(&k), &v)?;
            out.entry(h.partition).or_default().dead += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: &str, payload: &str, key: Option<&str>) -> NewMessage {
        NewMessage { partition: partition.into(), payload: payload.as_bytes().to_vec(), idempotency_key: key.map(str::to_string) }
    }

    fn open(dir: &std::path::Path, max_attempts: u32) -> SledQueue {
        // A queue dropped just before may still be releasing the directory's lock (its
        // flusher task and sled's own threads let go of the database a moment later).
        let started = std::time::Instant::now();
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot reopen {}: {e}", dir.display()),
            }
        };
        SledQueue::new(db, QueuePolicy { max_attempts })
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
    async fn a_queue_written_before_partition_schedules_gets_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        {
            let q = SledQueue::new(db.clone(), QueuePolicy { max_attempts: 3 });
            q.enqueue("orders", msg("a", "1", None)).await.unwrap();
            q.enqueue("orders", msg("b", "2", None)).await.unwrap();
        }
        // What an older berth left: only the global schedule.
        let ready = db.open_tree("q/orders/ready").unwrap();
        for k in ready.iter().keys().map(Result::unwrap).filter(|k| !is_global_sched(k)) {
            ready.remove(k).unwrap();
        }
        let q = SledQueue::new(db, QueuePolicy { max_attempts: 3 });
        let b = q.lease_partitions("orders", &["b".into()], 10, usize::MAX, Duration::from_secs(60)).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].payload, b"2");
        assert_eq!(q.stats("orders").unwrap().ready, 1);
    }

    #[tokio::test]
    async fn idempotency_keys_expire() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path(), 3);
        let a = q.enqueue("orders", msg("s1", "a", Some("k1"))).await.unwrap();
        assert_eq!(q.expire_idempotency_keys("orders", Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(q.enqueue("orders", msg("s1", "a", Some("k1"))).await.unwrap(), Enqueued::Duplicate(a.id()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(q.expire_idempotency_keys("orders", Duration::from_millis(1)).unwrap(), 1);
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
