//! Connector state in cluster mode: one key per connector + shop + key in the cluster's
//! shops bucket (`kv.<shop>.<connector>.<hex of the key>`), written only by the node
//! that runs the shop, fenced by its lease — a node that lost the shop while paused
//! cannot overwrite the new owner's cursor.
//!
//! The running node is the only writer, so it keeps the shop's state in memory once
//! read (a scan of the scope when it first touches it under a lease, kept by its own
//! writes) and reads it there; the quota is counted from that copy. Any other node (a
//! webhook arrives anywhere) reads a key from the stream leader and may not write.
//!
//! Connector calls are synchronous host calls: the cluster's answers are waited for on
//! the calling worker thread, which hands its other tasks on meanwhile (as the embedded
//! store's writes do).

use berth_cluster::fenced::{self, Expect, Write};
use berth_cluster::lease::{Fence, FenceSource};
use berth_cluster::{ClusterError, Connection};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// One connector + shop's state as the running node holds it.
struct Scope {
    /// The lease it was read under: a new lease reads it again.
    fence: u64,
    /// Key -> (revision, value).
    keys: BTreeMap<String, (u64, Vec<u8>)>,
}

pub struct ClusterKv {
    conn: Connection,
    fences: Arc<dyn FenceSource>,
    scopes: Mutex<HashMap<(String, String), Arc<Mutex<Option<Scope>>>>>,
}

/// Wait for the cluster from a synchronous host call. Only a multi-threaded runtime can
/// (its worker hands its other tasks on); berth runs connectors on one.
fn block<T>(f: impl Future<Output = T>) -> Result<T, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(|| handle.block_on(f))),
        _ => Err("cluster mode runs connectors on a multi-threaded runtime; this call was made outside one".into()),
    }
}

fn wait<T>(f: impl Future<Output = Result<T, ClusterError>>) -> Result<T, String> {
    block(f)?.map_err(nats)
}

pub fn scope_prefix(connector: &str, shop: &str) -> String {
    format!("kv.{shop}.{connector}.")
}

fn item_key(connector: &str, shop: &str, key: &str) -> String {
    format!("{}{}", scope_prefix(connector, shop), hex::encode(key))
}

fn nats(e: ClusterError) -> String {
    format!("cluster error: {e}")
}

impl ClusterKv {
    pub fn new(conn: Connection, fences: Arc<dyn FenceSource>) -> ClusterKv {
        ClusterKv { conn, fences, scopes: Mutex::new(HashMap::new()) }
    }

    fn entry(&self, connector: &str, shop: &str) -> Arc<Mutex<Option<Scope>>> {
        let mut all = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        all.entry((connector.to_string(), shop.to_string())).or_default().clone()
    }

    /// Run `f` on the scope as this node holds it, read first if this node took the
    /// shop's lease since it last looked. `None` for the fence: this node does not run
    /// the shop.
    fn with_scope<R>(&self, connector: &str, shop: &str, f: impl FnOnce(&Fence, &mut Scope) -> Result<R, String>) -> Result<Option<R>, String> {
        let Some(fence) = self.fences.fence(shop) else {
            // Not (or no longer) this node's shop: its copy goes.
            self.scopes.lock().unwrap_or_else(|e| e.into_inner()).remove(&(connector.to_string(), shop.to_string()));
            return Ok(None);
        };
        let entry = self.entry(connector, shop);
        let mut held = entry.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_none_or(|s| s.fence != fence.revision) {
            *held = Some(Scope { fence: fence.revision, keys: self.read_scope(connector, shop)? });
        }
        f(&fence, held.as_mut().expect("read above")).map(Some)
    }

    /// The scope's keys as the cluster holds them: key -> (revision, value).
    fn read_scope(&self, connector: &str, shop: &str) -> Result<BTreeMap<String, (u64, Vec<u8>)>, String> {
        let prefix = scope_prefix(connector, shop);
        let mut keys = BTreeMap::new();
        for item in wait(fenced::scan(&self.conn, &prefix))? {
            let Some(hex_key) = item.key.strip_prefix(&prefix) else { continue };
            let Some(key) = hex::decode(hex_key).ok().and_then(|k| String::from_utf8(k).ok()) else { continue };
            // An empty value is a deleted key.
            if !item.value.is_empty() {
                keys.insert(key, (item.revision, item.value.to_vec()));
            }
        }
        Ok(keys)
    }

    pub fn get(&self, connector: &str, shop: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(v) = self.with_scope(connector, shop, |_, scope| Ok(scope.keys.get(key).map(|(_, v)| v.clone())))? {
            return Ok(v);
        }
        let latest = wait(self.conn.latest_shop_key(&item_key(connector, shop, key)))?;
        Ok(latest.and_then(|l| l.value).filter(|v| !v.is_empty()).map(|v| v.to_vec()))
    }

    /// Keys in the order the embedded store lists them, at most `limit`.
    pub fn list_prefix(&self, connector: &str, shop: &str, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        if let Some(keys) = self.with_scope(connector, shop, |_, scope| Ok(scope.keys.keys().filter(|k| k.starts_with(prefix)).take(limit).cloned().collect()))? {
            return Ok(keys);
        }
        Ok(self.read_scope(connector, shop)?.into_keys().filter(|k| k.starts_with(prefix)).take(limit).collect())
    }

    /// What the scope holds (keys, bytes of keys and values), and the value `key` has.
    pub fn usage(&self, connector: &str, shop: &str, key: &str) -> Result<((u64, u64), Option<usize>), String> {
        self.with_scope(connector, shop, |_, scope| {
            let bytes = scope.keys.iter().map(|(k, (_, v))| (k.len() + v.len()) as u64).sum();
            Ok(((scope.keys.len() as u64, bytes), scope.keys.get(key).map(|(_, v)| v.len())))
        })?
        .ok_or_else(|| not_running(shop))
    }

    /// Write (`Some`) or delete (`None`) `key`, fenced by the shop's lease and expecting
    /// the revision this node holds for it.
    pub fn put(&self, connector: &str, shop: &str, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        self.with_scope(connector, shop, |fence, scope| {
            if value.is_none() && !scope.keys.contains_key(key) {
                return Ok(());
            }
            // The fence is the only check needed: the lease holder is the only writer.
            let write = Write { key: item_key(connector, shop, key), value: value.map_or_else(Bytes::new, Bytes::copy_from_slice), expect: Expect::Any };
            let revision = block(fenced::write_all(&self.conn, Some(fence), vec![write]))?.map_err(|e| match e {
                ClusterError::Fenced { .. } => format!("this node no longer runs shop {shop}; its state was not written"),
                e => nats(e),
            })?;
            match value {
                Some(v) => {
                    scope.keys.insert(key.to_string(), (revision, v.to_vec()));
                }
                None => {
                    scope.keys.remove(key);
                }
            }
            Ok(())
        })?
        .ok_or_else(|| not_running(shop))
    }
}

fn not_running(shop: &str) -> String {
    format!("this node does not run shop {shop} (another node of the cluster does); a connector writes its state only on the node running the shop")
}
