//! The connector registry shared by every node: component bytes in an object store
//! (by digest), each connector's state — its versions and which is active, canary,
//! shadow or paused — in a KV bucket, changed by compare-and-set and watched by every
//! node, so a deploy, canary, rollback or pause made on one node is in force on all of
//! them within a moment.
//!
//! The state is the host's JSON: this module stores, swaps and announces it.

use crate::connect::{bucket_retrying, retrying, Connection, Open};
use crate::error::ClusterError;
use async_nats::jetstream::{kv, object_store};
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How many times an update is retried when other nodes keep changing the connector.
const MAX_RETRIES: usize = 40;

/// One connector's state as it changed: its new value (None: removed) and revision.
#[derive(Debug, Clone)]
pub struct Change {
    pub connector: String,
    pub revision: u64,
    pub value: Option<Bytes>,
}

#[derive(Clone)]
pub struct SharedRegistry {
    state: kv::Store,
    components: object_store::ObjectStore,
}

impl SharedRegistry {
    /// Open (or create) the registry's bucket and object store, with the cluster's replicas.
    pub async fn open(conn: &Connection) -> Result<SharedRegistry, ClusterError> {
        let (state, _) = bucket_retrying(&conn.js, conn.replicas, &conn.names.registry, Duration::ZERO, 16).await?;
        let name = conn.names.components.clone();
        let components = retrying(&name, || async {
            if let Ok(store) = conn.js.get_object_store(&name).await {
                return Ok(store);
            }
            conn.js
                .create_object_store(object_store::Config {
                    bucket: name.clone(),
                    num_replicas: conn.replicas,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                // Another node may be creating it too, or the cluster electing: try again.
                .map_err(|e| Open::Retry(ClusterError::Bucket { bucket: name.clone(), reason: e.to_string() }))
        })
        .await?;
        Ok(SharedRegistry { state, components })
    }

    /// Store a component's bytes under their sha256 (hex); the digest.
    pub async fn put_component(&self, bytes: &[u8]) -> Result<String, ClusterError> {
        let digest = hex::encode(berth_types::digest::sha256(bytes));
        if self.components.info(&digest).await.is_ok() {
            return Ok(digest);
        }
        crate::connect::patiently("a component's bytes", || async {
            let mut reader = bytes;
            self.components.put(digest.as_str(), &mut reader).await.map_err(ClusterError::nats)
        })
        .await?;
        Ok(digest)
    }

    /// A component's bytes by digest, checked against it.
    pub async fn component(&self, digest: &str) -> Result<Vec<u8>, ClusterError> {
        let mut object = self.components.get(digest).await.map_err(ClusterError::nats)?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(ClusterError::nats)?;
        if hex::encode(berth_types::digest::sha256(&bytes)) != digest {
            return Err(ClusterError::Nats(format!("component {digest} read back with other bytes")));
        }
        Ok(bytes)
    }

    /// Every key of the registry bucket (connector states, and whatever else the host
    /// keeps beside them, such as version records under keys with dots).
    pub async fn keys(&self) -> Result<Vec<String>, ClusterError> {
        let keys = self.state.keys().await.map_err(ClusterError::nats)?;
        futures_util::TryStreamExt::try_collect(keys).await.map_err(ClusterError::nats)
    }

    /// Write `key` whatever it holds (records that never change once written, such as
    /// a version's facts). The revision.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, ClusterError> {
        crate::connect::patiently(key, || self.state.put(key, value.clone())).await
    }

    /// The connector's state and its revision.
    pub async fn get(&self, connector: &str) -> Result<Option<(u64, Bytes)>, ClusterError> {
        let entry = self.state.entry(connector).await.map_err(ClusterError::nats)?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| (e.revision, e.value)))
    }

    /// Change the connector's state with `change` (given the current state, None when
    /// there is none), by compare-and-set: when another node changed it in between,
    /// `change` runs again on the newer state. `change` answering `Err` stops without
    /// writing. The new revision and state.
    pub async fn update<E>(
        &self,
        connector: &str,
        mut change: impl FnMut(Option<&[u8]>) -> Result<Bytes, E>,
    ) -> Result<Result<(u64, Bytes), E>, ClusterError> {
        for _ in 0..MAX_RETRIES {
            let current = crate::connect::patiently(connector, || self.state.entry(connector)).await?;
            let (revision, value) = match &current {
                Some(e) if e.operation == kv::Operation::Put => (e.revision, Some(e.value.as_ref())),
                Some(e) => (e.revision, None),
                None => (0, None),
            };
            let next = match change(value) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
            let written = if revision == 0 {
                self.state.create(connector, next.clone()).await.map_err(|e| e.to_string())
            } else {
                self.state.update(connector, next.clone(), revision).await.map_err(|e| e.to_string())
            };
            match written {
                Ok(rev) => return Ok(Ok((rev, next))),
                Err(e) => {
                    // Another node's write came first (read again, decide again), or a
                    // cluster settling did not take it (a moment before trying again).
                    tracing::debug!(connector, error = %e, "registry update not taken; reading again");
                    tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 80)).await;
                }
            }
        }
        Err(ClusterError::Conflict(format!("connector {connector}'s state (changed by other nodes {MAX_RETRIES} times in a row)")))
    }

    /// Every connector's state now, then each change as it is made, by any node.
    pub async fn watch(&self) -> Result<futures_util::stream::BoxStream<'static, Change>, ClusterError> {
        let watch = self.state.watch_with_history(">").await.map_err(ClusterError::nats)?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = entry.ok()?;
                let value = (entry.operation == kv::Operation::Put).then_some(entry.value);
                Some(Change { connector: entry.key, revision: entry.revision, value })
            })
            .boxed())
    }
}
