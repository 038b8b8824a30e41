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
    headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", format!("$KV.{}.{}", conn.names.shops, owner_key(&fence.shop)).as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence", fence.revision.to_string().as_str());
    let ack = conn.js.publish_with_headers(subject, headers, value).await.map_err(ClusterError::nats)?;
    match ack.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(ClusterError::Fenced { shop: fence.shop.clone(), revision: fence.revision }),
        Err(e) => Err(ClusterError::nats(e)),
    }
}

/// At most this many keys per atomic batch (the server's limit is 1,000).
pub const MAX_BATCH: usize = 1000;

/// Write every `(key, value)` — keys of the shops bucket that belong to `fence.shop`
/// (`<kind>.<shop>.<rest>`) — as one atomic batch, refused whole with
/// [`ClusterError::Fenced`] unless `fence` is still the shop's lease. Returns the stream
/// sequence of the last write.
pub async fn put_all(conn: &Connection, fence: &Fence, items: Vec<(String, Bytes)>) -> Result<u64, ClusterError> {
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ClusterError::Nats(format!("an atomic batch holds 1 to {MAX_BATCH} writes, not {}", items.len())));
    }
    if let Some((key, _)) = items.iter().find(|(k, _)| k.split('.').nth(1) != Some(fence.shop.as_str())) {
        return Err(ClusterError::Nats(format!("key {key} is not one of shop {}'s keys", fence.shop)));
    }
    let batch = format!("{:032x}", rand::random::<u128>());
    let last = items.len();
    let mut reply = None;
    for (i, (key, value)) in items.into_iter().enumerate() {
        let subject = format!("$KV.{}.{key}", conn.names.shops);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", batch.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i == 0 {
            headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", format!("$KV.{}.{}", conn.names.shops, owner_key(&fence.shop)).as_str());
            headers.insert("Nats-Expected-Last-Subject-Sequence", fence.revision.to_string().as_str());
        }
        if i + 1 == last {
            headers.insert("Nats-Batch-Commit", "1");
        }
        // The first and the last are requests: the first so a refused batch (wrong
        // fence, atomic publish not allowed) is known before sending the rest, the last
        // for the commit's acknowledgement. The rest are plain publishes, in order.
        if i == 0 || i + 1 == last {
            let msg = conn.client.request_with_headers(subject, headers, value).await.map_err(ClusterError::nats)?;
            if !msg.payload.is_empty() {
                let answer: serde_json::Value = serde_json::from_slice(&msg.payload).map_err(ClusterError::nats)?;
                if let Some(err) = answer.get("error") {
                    return Err(batch_error(fence, err));
                }
                reply = answer.get("seq").and_then(|s| s.as_u64()).or(reply);
            }
        } else {
            conn.client.publish_with_headers(subject, headers, value).await.map_err(ClusterError::nats)?;
        }
    }
    reply.ok_or_else(|| ClusterError::Nats("the batch's commit was not acknowledged with a sequence".into()))
}

/// JetStream's error for a refused batch: 10071 is the fence (wrong last sequence).
fn batch_error(fence: &Fence, err: &serde_json::Value) -> ClusterError {
    if err.get("err_code").and_then(|c| c.as_u64()) == Some(10071) {
        return ClusterError::Fenced { shop: fence.shop.clone(), revision: fence.revision };
    }
    ClusterError::Nats(format!("atomic batch refused: {}", err.get("description").and_then(|d| d.as_str()).unwrap_or("no description")))
}

/// Read the shop's state item `name` (any node may read).
pub async fn get(conn: &Connection, shop: &str, name: &str) -> Result<Option<kv::Entry>, ClusterError> {
    let entry = conn.shops.entry(state_key(shop, name)).await.map_err(ClusterError::nats)?;
    Ok(entry.filter(|e| e.operation == kv::Operation::Put))
}
