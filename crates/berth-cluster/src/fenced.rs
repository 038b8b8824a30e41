//! Writes only the lease holder can make.
//!
//! A shop's state lives in the shops bucket beside its lease (`state.<shop>.<name>`).
//! Each write is published with `Nats-Expected-Last-Subject-Sequence-Subject` naming the
//! shop's `owner.<shop>` subject and `Nats-Expected-Last-Subject-Sequence` the writer's
//! fence revision: the stream appends it only if the lease has not been written since
//! the writer took it, in the same step as the append (one stream, one Raft log), so a
//! node that lost the lease while paused cannot land a single write when it resumes.
//!
//! [`put_all`] writes several keys of one shop as one atomic batch (JetStream atomic
//! publish, nats-server 2.12+): a page of orders and the pull position that follows it
//! land together or not at all, under the same fence.

use crate::connect::Connection;
use crate::error::ClusterError;
use crate::lease::{owner_key, Fence};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use bytes::Bytes;

/// The key of a shop's state item `name` (letters, digits, `-`, `_`, `.`).
pub fn state_key(shop: &str, name: &str) -> String {
    format!("state.{shop}.{name}")
}

/// Put `value` at the shop's state item `name`, refused with [`ClusterError::Fenced`]
/// unless `fence` is still the shop's lease. Returns the write's revision.
pub async fn put(conn: &Connection, fence: &Fence, name: &str, value: Bytes) -> Result<u64, ClusterError> {
    let subject = format!("$KV.{}.{}", conn.names.shops, state_key(&fence.shop, name));
    let mut headers = async_nats::HeaderMap::new();
    fence_headers(conn, fence, &mut headers);
    let ack = conn.js.publish_with_headers(subject, headers, value).await.map_err(ClusterError::nats)?;
    match ack.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(ClusterError::Fenced { shop: fence.shop.clone(), revision: fence.revision }),
        Err(e) => Err(ClusterError::nats(e)),
    }
}

/// The header naming the node that made a fenced write.
pub const WRITER_HEADER: &str = "Berth-Node";

/// The fence on a write: the stream takes it only while the shop's lease is still at
/// the fence's revision. The write names its node too.
fn fence_headers(conn: &Connection, fence: &Fence, headers: &mut async_nats::HeaderMap) {
    headers.insert(WRITER_HEADER, conn.node.as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", format!("$KV.{}.{}", conn.names.shops, owner_key(&fence.shop)).as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence", fence.revision.to_string().as_str());
}

/// At most this many keys per atomic batch (the server's limit is 1,000).
pub const MAX_BATCH: usize = 1000;

/// What a write of a batch expects of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there.
    Any,
    /// The key has never been written (or its history is gone).
    Absent,
    /// The key's newest revision is this one (compare-and-set).
    Revision(u64),
}

/// One write of an atomic batch: a key of the shops bucket and its new value.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: String,
    pub value: Bytes,
    pub expect: Expect,
}

impl Write {
    pub fn put(key: String, value: Bytes) -> Write {
        Write { key, value, expect: Expect::Any }
    }
}

/// Write every `(key, value)` — keys of the shops bucket that belong to `fence.shop`
/// (`<kind>.<shop>.<rest>`) — as one atomic batch, refused whole with
/// [`ClusterError::Fenced`] unless `fence` is still the shop's lease. Returns the stream
/// sequence of the last write.
pub async fn put_all(conn: &Connection, fence: &Fence, items: Vec<(String, Bytes)>) -> Result<u64, ClusterError> {
    write_all(conn, Some(fence), items.into_iter().map(|(k, v)| Write::put(k, v)).collect()).await
}

/// The shop a key of the shops bucket belongs to: `<kind>.<shop>.…`, or for the feed
/// `feed.<class>.<shop>.…`.
pub fn shop_of_key(key: &str) -> Option<&str> {
    let mut parts = key.split('.');
    match parts.next()? {
        "feed" => parts.nth(1),
        _ => parts.next(),
    }
}

/// Write `writes` as one atomic batch: all land or none does. Each write's [`Expect`] is
/// checked by the stream in the same step (compare-and-set on many keys at once); with
/// `fence`, the batch also requires the shop's lease to be unchanged and may touch only
/// that shop's keys. Refused: [`ClusterError::Fenced`] when the lease moved,
/// [`ClusterError::Conflict`] when a key changed since it was read (read, decide and
/// write again).
pub async fn write_all(conn: &Connection, fence: Option<&Fence>, mut writes: Vec<Write>) -> Result<u64, ClusterError> {
    if let Some(fence) = fence {
        if let Some(w) = writes.iter().find(|w| shop_of_key(&w.key) != Some(fence.shop.as_str())) {
            return Err(ClusterError::Nats(format!("key {} is not one of shop {}'s keys", w.key, fence.shop)));
        }
        // The fence rides on the first write; when that one has its own expectation, on
        // a marker written first.
        if writes.first().is_some_and(|w| w.expect != Expect::Any) {
            writes.insert(0, Write::put(state_key(&fence.shop, "fence"), Bytes::from(fence.revision.to_string())));
        }
    }
    if writes.is_empty() || writes.len() > MAX_BATCH {
        return Err(ClusterError::Nats(format!("an atomic batch holds 1 to {MAX_BATCH} writes, not {}", writes.len())));
    }
    let batch = format!("{:032x}", rand::random::<u128>());
    let last = writes.len();
    let mut reply = None;
    for (i, w) in writes.iter().enumerate() {
        let subject = format!("$KV.{}.{}", conn.names.shops, w.key);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", batch.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if fence.is_some() {
            // Who wrote it, on every write of a fenced batch (an audit of the stream:
            // each must lie in a lease epoch of this node's).
            headers.insert(WRITER_HEADER, conn.node.as_str());
        }
        match (i, fence, w.expect) {
            (0, Some(fence), _) => fence_headers(conn, fence, &mut headers),
            (_, _, Expect::Any) => {}
            (_, _, Expect::Absent) => headers.insert("Nats-Expected-Last-Subject-Sequence", "0"),
            (_, _, Expect::Revision(r)) => headers.insert("Nats-Expected-Last-Subject-Sequence", r.to_string().as_str()),
        }
        if i + 1 == last {
            headers.insert("Nats-Batch-Commit", "1");
        }
        // The first and the last are requests: the first so a refused batch (wrong
        // fence, atomic publish not allowed) is known before sending the rest, the last
        // for the commit's acknowledgement. The rest are plain publishes, in order.
        if i == 0 || i + 1 == last {
            let msg = conn.client.request_with_headers(subject, headers, w.value.clone()).await.map_err(ClusterError::nats)?;
            if !msg.payload.is_empty() {
                let answer: serde_json::Value = serde_json::from_slice(&msg.payload).map_err(ClusterError::nats)?;
                if let Some(err) = answer.get("error") {
                    return Err(refused(conn, fence, &writes, err).await);
                }
                reply = answer.get("seq").and_then(|s| s.as_u64()).or(reply);
            }
        } else {
            conn.client.publish_with_headers(subject, headers, w.value.clone()).await.map_err(ClusterError::nats)?;
        }
    }
    reply.ok_or_else(|| ClusterError::Nats("the batch's commit was not acknowledged with a sequence".into()))
}

/// Why a batch was refused. JetStream says only "wrong last sequence" (10071 when the
/// first write is refused, 10164 at the commit), for the fence and for any
/// compare-and-set alike: the lease, read again, tells which.
async fn refused(conn: &Connection, fence: Option<&Fence>, writes: &[Write], err: &serde_json::Value) -> ClusterError {
    if !matches!(err.get("err_code").and_then(|c| c.as_u64()), Some(10071) | Some(10164)) {
        return ClusterError::Nats(format!("atomic batch refused: {err}"));
    }
    if let Some(fence) = fence {
        let lease = conn.latest_shop_key(&owner_key(&fence.shop)).await;
        if !matches!(lease, Ok(Some(ref l)) if l.revision == fence.revision) {
            return ClusterError::Fenced { shop: fence.shop.clone(), revision: fence.revision };
        }
    }
    let keys: Vec<&str> = writes.iter().filter(|w| w.expect != Expect::Any).map(|w| w.key.as_str()).take(5).collect();
    ClusterError::Conflict(format!("one of {keys:?}"))
}

/// A key's newest value, as [`scan`] finds it.
#[derive(Debug, Clone)]
pub struct Scanned {
    /// The key without the bucket's prefix.
    pub key: String,
    pub revision: u64,
    pub value: Bytes,
}

/// Every live key of the shops bucket under `prefix` (ending in `.`), with its newest
/// value and revision.
pub async fn scan(conn: &Connection, prefix: &str) -> Result<Vec<Scanned>, ClusterError> {
    let mut out = Vec::new();
    newest(conn, prefix, |w| {
        if let Some(value) = w.value {
            out.push(Scanned { key: w.key, revision: w.revision, value });
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// A message of the shops stream read as a write of one key.
pub(crate) struct KeyWrite {
    /// The key without the bucket's prefix.
    pub key: String,
    pub revision: u64,
    /// `None`: the key was deleted or purged.
    pub value: Option<Bytes>,
}

impl KeyWrite {
    pub(crate) fn of(bucket_prefix: &str, msg: &async_nats::jetstream::Message) -> Result<KeyWrite, ClusterError> {
        let revision = msg.info().map_err(ClusterError::nats)?.stream_sequence;
        let op = msg.headers.as_ref().and_then(|h| h.get("KV-Operation")).map(|v| v.as_str().to_string());
        let deleted = matches!(op.as_deref(), Some("DEL") | Some("PURGE"));
        let key = msg.subject.strip_prefix(bucket_prefix).unwrap_or(&msg.subject).to_string();
        Ok(KeyWrite { key, revision, value: (!deleted).then(|| msg.payload.clone()) })
    }
}

/// The newest write of every key under `prefix` (deletions too), each through `each`:
/// an ephemeral ordered consumer delivering the last message per subject, read until
/// the count it started with. Returns the bucket's subject prefix and the consumer,
/// which goes on with every write after those.
pub(crate) async fn newest(
    conn: &Connection,
    prefix: &str,
    mut each: impl FnMut(KeyWrite) -> Result<(), ClusterError>,
) -> Result<(String, async_nats::jetstream::consumer::pull::Ordered), ClusterError> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let bucket_prefix = format!("$KV.{}.", conn.names.shops);
    let consumer = conn
        .shops_stream()
        .create_consumer(OrderedConfig { filter_subject: format!("{bucket_prefix}{prefix}>"), deliver_policy: DeliverPolicy::LastPerSubject, ..Default::default() })
        .await
        .map_err(ClusterError::nats)?;
    let mut remaining = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(ClusterError::nats)?;
    while remaining > 0 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), futures_util::StreamExt::next(&mut messages)).await;
        let msg = match next {
            Ok(Some(m)) => m.map_err(ClusterError::nats)?,
            Ok(None) => break,
            Err(_) => return Err(ClusterError::Nats(format!("reading {prefix}: {remaining} keys not delivered within 10 s"))),
        };
        remaining -= 1;
        each(KeyWrite::of(&bucket_prefix, &msg)?)?;
    }
    Ok((bucket_prefix, messages))
}

/// Read the shop's state item `name` (any node may read).
pub async fn get(conn: &Connection, shop: &str, name: &str) -> Result<Option<kv::Entry>, ClusterError> {
    let entry = conn.shops.entry(state_key(shop, name)).await.map_err(ClusterError::nats)?;
    Ok(entry.filter(|e| e.operation == kv::Operation::Put))
}
