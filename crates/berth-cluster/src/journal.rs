//! Append-only records every node writes and any node reads back: the audit log and the
//! alert notifications, each a JetStream stream of its own (`<prefix>_<name>`, subjects
//! `<prefix>_<name>.<node>`), replicated like the buckets and limited to a number of
//! messages (the oldest go first).
//!
//! An append is acknowledged by the stream before it returns. Each carries an id
//! (`Nats-Msg-Id`), so a node sending one again after a lost acknowledgement does not
//! store it twice within the stream's duplicate window; for the audit log, whose entries
//! are forwarded from the node's own file, the node also reads back where its last
//! forwarded entry was ([`Journal::last_of`]) before sending more.

use crate::connect::{retrying, Connection, Open};
use crate::error::ClusterError;
use async_nats::jetstream::{self, stream::StorageType};
use bytes::Bytes;
use std::time::Duration;

/// One stored record.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    /// The node that wrote it.
    pub node: String,
    /// The id it was appended with.
    pub id: Option<String>,
    pub payload: Bytes,
}

/// A stream of records from every node.
#[derive(Clone)]
pub struct Journal {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    name: String,
    node: String,
}

impl Journal {
    /// Open `<prefix>_<name>`, creating it with the connection's replicas when absent;
    /// it keeps the newest `max_msgs` records.
    pub async fn open(conn: &Connection, prefix: &str, name: &str, max_msgs: i64) -> Result<Journal, ClusterError> {
        let stream_name = format!("{prefix}_{name}");
        let stream = retrying(&stream_name, || async {
            let err = |reason: String| ClusterError::Bucket { bucket: stream_name.clone(), reason };
            conn.js
                .get_or_create_stream(jetstream::stream::Config {
                    name: stream_name.clone(),
                    subjects: vec![format!("{stream_name}.>")],
                    max_messages: max_msgs,
                    storage: StorageType::File,
                    num_replicas: conn.replicas,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| Open::Retry(err(e.to_string())))
        })
        .await?;
        Ok(Journal { js: conn.js.clone(), stream, name: stream_name, node: conn.node.clone() })
    }

    /// The node whose records [`Journal::append`] writes.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Append `payload` as this node's; acknowledged by the stream when this returns.
    pub async fn append(&self, id: &str, payload: Bytes) -> Result<u64, ClusterError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let subject = format!("{}.{}", self.name, self.node);
        let ack = self.js.publish_with_headers(subject, headers, payload).await.map_err(ClusterError::nats)?;
        Ok(ack.await.map_err(ClusterError::nats)?.sequence)
    }

    /// The newest record `node` appended, if the stream still has one.
    pub async fn last_of(&self, node: &str) -> Result<Option<Entry>, ClusterError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(&format!("{}.{node}", self.name)).await {
            Ok(msg) => Ok(Some(self.entry(msg.sequence, &msg.subject, Some(&msg.headers), msg.payload))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(ClusterError::nats(e)),
        }
    }

    /// The sequence of the newest record (0: none yet).
    pub async fn last_seq(&self) -> Result<u64, ClusterError> {
        Ok(self.stream.clone().info().await.map_err(ClusterError::nats)?.state.last_sequence)
    }

    /// The newest `limit` records of every node, oldest first.
    pub async fn tail(&self, limit: usize) -> Result<Vec<Entry>, ClusterError> {
        let info = self.stream.clone().info().await.map_err(ClusterError::nats)?.clone();
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if info.state.messages == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let start = last.saturating_sub(limit as u64 - 1).max(first).max(1);
        let run = crate::run::read(&self.stream, None, start, limit, &self.name).await?;
        let mut out: Vec<Entry> = run.messages.into_iter().map(|m| self.entry(m.seq, &m.subject, m.headers.as_ref(), m.payload)).collect();
        if run.cut {
            // The rest one message at a time.
            for seq in out.last().map_or(start, |e| e.seq + 1)..=last {
                match self.stream.get_raw_message(seq).await {
                    Ok(m) => out.push(self.entry(seq, &m.subject, Some(&m.headers), m.payload)),
                    // Removed by the stream's limit meanwhile.
                    Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(ClusterError::nats(e)),
                }
            }
        }
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }

    /// A stored message as a record (its node from its subject, its id from its headers).
    fn entry(&self, seq: u64, subject: &str, headers: Option<&async_nats::HeaderMap>, payload: Bytes) -> Entry {
        Entry {
            seq,
            node: subject.strip_prefix(self.name.as_str()).and_then(|s| s.strip_prefix('.')).unwrap_or(subject).to_string(),
            id: headers.and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string()),
            payload,
        }
    }
}
