//! Writes only the lease holder can make.
//!
//! A shop's state lives in the shops bucket beside its lease (`state.<shop>.<name>`).
//! Each write is published with `Nats-Expected-Last-Subject-Sequence-Subject` naming the
//! shop's `owner.<shop>` subject and `Nats-Expected-Last-Subject-Sequence` the writer's
//! fence revision: the stream appends it only if the lease has not been written since
//! the writer took it, in the same step as the append (one stream, one Raft log), so a
//! node that lost the lease while paused cannot land a single write when it resumes.

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

/// Read the shop's state item `name` (any node may read).
pub async fn get(conn: &Connection, shop: &str, name: &str) -> Result<Option<kv::Entry>, ClusterError> {
    let entry = conn.shops.entry(state_key(shop, name)).await.map_err(ClusterError::nats)?;
    Ok(entry.filter(|e| e.operation == kv::Operation::Put))
}
