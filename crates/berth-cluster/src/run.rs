//! Reading a run of a stream's messages in one go: one ordered consumer from a start
//! sequence (a round trip to create it, then the server streams the messages), deleted
//! when the read ends. The order feed's pages and the journals' tails read this way.

use crate::error::ClusterError;
use async_nats::jetstream::stream::Stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

/// One message of a run.
pub(crate) struct Message {
    pub seq: u64,
    /// When the stream stored it (ms since the epoch).
    pub time_ms: i64,
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// A run as read.
pub(crate) struct Run {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// The read stopped early: the client recreated the consumer before its first
    /// message and started it from the stream's beginning (async-nats 0.51 does, whatever
    /// the start asked for). The caller reads the rest another way, after the last
    /// message here (or before `start` when there is none).
    pub cut: bool,
}

/// Up to `limit` messages of `stream` from sequence `start` on (under `filter`, when
/// given), oldest first: as many as the stream held there when the read began.
pub(crate) async fn read(stream: &Stream, filter: Option<String>, start: u64, limit: usize, what: &str) -> Result<Run, ClusterError> {
    read_as(stream, filter, start, limit, what, false).await
}

/// [`read`] without the messages' bodies (their subjects, sequences and times only).
pub(crate) async fn read_headers(stream: &Stream, filter: Option<String>, start: u64, limit: usize, what: &str) -> Result<Run, ClusterError> {
    read_as(stream, filter, start, limit, what, true).await
}

async fn read_as(stream: &Stream, filter: Option<String>, start: u64, limit: usize, what: &str, headers_only: bool) -> Result<Run, ClusterError> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start.max(1) },
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(ClusterError::nats)?;
    let _done = Discard { stream: stream.clone(), name: consumer.cached_info().name.clone() };
    let want = (consumer.cached_info().num_pending as usize).min(limit);
    let mut run = Run { messages: Vec::with_capacity(want), cut: false };
    if want == 0 {
        return Ok(run);
    }
    let mut messages = consumer.messages().await.map_err(ClusterError::nats)?;
    while run.messages.len() < want {
        let msg = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(m)) => m.map_err(ClusterError::nats)?,
            Ok(None) => break,
            Err(_) => return Err(ClusterError::Nats(format!("reading {what}: {} of {want} messages delivered within 10 s", run.messages.len()))),
        };
        let (seq, time_ms) = {
            let info = msg.info().map_err(ClusterError::nats)?;
            (info.stream_sequence, (info.published.unix_timestamp_nanos() / 1_000_000) as i64)
        };
        if seq < start || run.messages.last().is_some_and(|m| seq <= m.seq) {
            run.cut = true;
            break;
        }
        run.messages.push(Message { seq, time_ms, subject: msg.subject.to_string(), headers: msg.headers.clone(), payload: msg.payload.clone() });
    }
    Ok(run)
}

/// Deletes a consumer made for one read when the read ends, without waiting for it: a
/// busy reader must not leave thousands of them behind (the server limits how many a
/// stream has; an ordered consumer otherwise lingers until it has been idle for 30 s).
struct Discard {
    stream: Stream,
    name: String,
}

impl Drop for Discard {
    fn drop(&mut self) {
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}
