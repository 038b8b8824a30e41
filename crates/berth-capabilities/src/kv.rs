//! `berth:connector/kv`: state in the storage core, scoped to one connector and one shop so a
//! connector can neither read another's state nor another shop's, and held to a quota
//! per scope so one cannot fill the host's disk. The quota is checked before a write
//! (a refused write writes nothing), and what a scope may write per minute is bounded
//! too: the store is log-structured, so rewriting the same keys in a loop costs disk
//! even when the quota holds. In cluster mode the state lives in the cluster instead
//! (`kv_cluster.rs`), under the same keys, quota and rate.

use berth_storage::store::Keyspace;
use berth_storage::{Store, StoreError, WriteCtx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Longest key a connector may use, and largest value.
pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// What one connector may keep for one shop: keys, and bytes of keys and values.
pub const MAX_SCOPE_KEYS: u64 = 10_000;
pub const MAX_SCOPE_BYTES: u64 = 16 * 1024 * 1024;

/// Keys and bytes a scope holds.
#[derive(Clone, Copy, Default)]
struct Usage {
    keys: u64,
    bytes: u64,
}

/// A scope's usage (counted once) and what it wrote in the current minute.
#[derive(Default)]
struct ScopeState {
    usage: Option<Usage>,
    /// (minute since the epoch, bytes written in it).
    written: (i64, u64),
}

/// Why a write was refused; the text is what the connector reads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteRefused {
    #[error("{0}")]
    Invalid(String),
    #[error("the shop's state would hold {keys} keys and {bytes} bytes, more than a connector may keep per shop ({MAX_SCOPE_KEYS} keys, {MAX_SCOPE_BYTES} bytes); delete keys it no longer needs")]
    Quota { keys: u64, bytes: u64 },
    #[error("the shop's state took {written} bytes of writes this minute; a connector may write at most {limit} per shop per minute (max_kv_write_bytes_per_minute); state is for cursors and tokens, not bulk data")]
    Rate { written: u64, limit: u64 },
    #[error("storage error: {0}")]
    Storage(String),
}

#[derive(Clone)]
pub struct KvStore {
    backend: Backend,
    /// Per scope prefix, counted from the tree the first time the scope writes. The map's
    /// lock is held only to find a scope's entry; a write holds its own scope's lock, so
    /// scopes never wait on each other.
    usage: Arc<Mutex<HashMap<Vec<u8>, Arc<Mutex<ScopeState>>>>>,
}

#[derive(Clone)]
enum Backend {
    Embedded { store: Store, tree: Keyspace },
    Cluster(Arc<crate::kv_cluster::ClusterKv>),
}

/// One connector + shop's view of the store.
pub struct KvScope<'a> {
    store: &'a KvStore,
    connector: String,
    shop: String,
    prefix: Vec<u8>,
}

impl KvStore {
    /// Connector state in `store`'s `connector_kv` keyspace.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(KvStore { backend: Backend::Embedded { store: store.clone(), tree: store.keyspace("connector_kv")? }, usage: Arc::default() })
    }

    /// Connector state in the cluster, written by the node holding the shop's lease
    /// (`fences`: this node's leases).
    pub fn cluster(conn: berth_cluster::Connection, fences: Arc<dyn berth_cluster::lease::FenceSource>) -> Self {
        KvStore { backend: Backend::Cluster(Arc::new(crate::kv_cluster::ClusterKv::new(conn, fences))), usage: Arc::default() }
    }

    fn tree(&self) -> Result<(&Store, &Keyspace), &crate::kv_cluster::ClusterKv> {
        match &self.backend {
            Backend::Embedded { store, tree } => Ok((store, tree)),
            Backend::Cluster(c) => Err(c),
        }
    }

    /// A write through the store's writer, from a connector's (synchronous) host call:
    /// on a multi-threaded runtime the worker hands its other tasks on while it waits
    /// for the batch, so no async task waits behind a sync.
    fn write(store: &Store, op: impl FnOnce(&mut WriteCtx<'_>) -> Result<(), StoreError> + Send + 'static) -> Result<(), StoreError> {
        let store = store.clone();
        let wait = move || store.write_blocking(op);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }

    pub fn scope(&self, connector: &str, shop: &str) -> KvScope<'_> {
        let mut prefix = Vec::with_capacity(connector.len() + shop.len() + 2);
        prefix.extend_from_slice(connector.as_bytes());
        prefix.push(0);
        prefix.extend_from_slice(shop.as_bytes());
        prefix.push(0);
        KvScope { store: self, connector: connector.to_string(), shop: shop.to_string(), prefix }
    }
}

impl KvScope<'_> {
    fn key(&self, key: &str) -> Result<Vec<u8>, String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()));
        }
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.as_bytes());
        Ok(k)
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let k = self.key(key)?;
        match self.store.tree() {
            Ok((_, tree)) => tree.get(&k).map_err(storage),
            Err(c) => c.get(&self.connector, &self.shop, key),
        }
    }

    /// This scope's usage entry.
    fn usage_entry(&self) -> Arc<Mutex<ScopeState>> {
        let mut all = self.store.usage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = all.get(&self.prefix) {
            return entry.clone();
        }
        all.entry(self.prefix.clone()).or_default().clone()
    }

    /// What the scope holds now (counted from the tree once, then kept up to date).
    fn counted(&self, tree: &Keyspace, usage: &mut Option<Usage>) -> Result<Usage, String> {
        if let Some(u) = *usage {
            return Ok(u);
        }
        let mut u = Usage::default();
        for item in tree.prefix(&self.prefix) {
            let (k, v) = item.map_err(storage)?;
            u.keys += 1;
            u.bytes += (k.len() - self.prefix.len() + v.len()) as u64;
        }
        *usage = Some(u);
        Ok(u)
    }

    /// Write `key` (no bound on writes per minute: for the host's own use and tests).
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.set_within(key, value, u64::MAX, berth_types::clock::now_ms()).map_err(|e| e.to_string())
    }

    /// Write `key` if the scope's quota and its writes this minute (`per_minute`, at
    /// `now_ms`) allow it; nothing is written when they do not.
    pub fn set_within(&self, key: &str, value: &[u8], per_minute: u64, now_ms: i64) -> Result<(), WriteRefused> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(WriteRefused::Invalid(format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len())));
        }
        let k = self.key(key).map_err(WriteRefused::Invalid)?;
        let entry = self.usage_entry();
        let mut st = entry.lock().unwrap_or_else(|e| e.into_inner());
        let n = (key.len() + value.len()) as u64;
        let minute = now_ms.div_euclid(60_000);
        let written = if st.written.0 == minute { st.written.1 } else { 0 };
        if written + n > per_minute {
            return Err(WriteRefused::Rate { written, limit: per_minute });
        }
        // The quota is judged before anything is written: a refused write costs no disk.
        let (usage, old_len) = match self.store.tree() {
            Ok((_, tree)) => {
                let usage = self.counted(tree, &mut st.usage).map_err(WriteRefused::Storage)?;
                let old = tree.get(&k).map_err(|e| WriteRefused::Storage(e.to_string()))?;
                (usage, old.map(|v| v.len()))
            }
            Err(c) => {
                let ((keys, bytes), old) = c.usage(&self.connector, &self.shop, key).map_err(WriteRefused::Storage)?;
                (Usage { keys, bytes }, old)
            }
        };
        let old_bytes = old_len.map_or(0, |v| (key.len() + v) as u64);
        let keys = usage.keys + u64::from(old_len.is_none());
        let bytes = usage.bytes + n - old_bytes;
        if keys > MAX_SCOPE_KEYS || (bytes > MAX_SCOPE_BYTES && bytes > usage.bytes) {
            return Err(WriteRefused::Quota { keys, bytes });
        }
        match self.store.tree() {
            Ok((store, tree)) => {
                let (tree, value) = (tree.clone(), value.to_vec());
                KvStore::write(store, move |ctx: &mut WriteCtx<'_>| {
                    ctx.insert(&tree, k, value);
                    Ok(())
                })
                .map_err(|e| WriteRefused::Storage(e.to_string()))?;
                st.usage = Some(Usage { keys, bytes });
            }
            Err(c) => c.put(&self.connector, &self.shop, key, Some(value)).map_err(WriteRefused::Storage)?,
        }
        st.written = (minute, written + n);
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<(), String> {
        let k = self.key(key)?;
        let (store, tree) = match self.store.tree() {
            Ok(t) => t,
            Err(c) => return c.put(&self.connector, &self.shop, key, None),
        };
        let entry = self.usage_entry();
        let mut guard = entry.lock().unwrap_or_else(|e| e.into_inner());
        let old = tree.get(&k).map_err(storage)?;
        if let Some(old) = old {
            let tree = tree.clone();
            KvStore::write(store, move |ctx: &mut WriteCtx<'_>| {
                ctx.remove(&tree, k);
                Ok(())
            })
            .map_err(storage)?;
            if let Some(u) = guard.usage.as_mut() {
                u.keys = u.keys.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub((key.len() + old.len()) as u64);
            }
        }
        Ok(())
    }

    /// Keys (without the scope) starting with `prefix`, at most 1000.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<String>, String> {
        let start = self.key(prefix)?;
        let (_, tree) = match self.store.tree() {
            Ok(t) => t,
            Err(c) => return c.list_prefix(&self.connector, &self.shop, prefix, 1000),
        };
        tree.prefix(&start)
            .take(1000)
            .map(|item| {
                let (k, _) = item.map_err(storage)?;
                Ok(String::from_utf8_lossy(&k[self.prefix.len()..]).into_owned())
            })
            .collect()
    }
}

fn storage(e: StoreError) -> String {
    format!("storage error: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let kv = KvStore::open(&store).unwrap();
        let a = kv.scope("shopify", "acme");
        let b = kv.scope("shopify", "other");
        let c = kv.scope("taobao", "acme");
        a.set("cursor", b"1").unwrap();
        a.set("cursor:2", b"2").unwrap();
        b.set("cursor", b"x").unwrap();
        assert_eq!(a.get("cursor").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(b.get("cursor").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(c.get("cursor").unwrap(), None);
        assert_eq!(a.list_prefix("cursor").unwrap(), vec!["cursor", "cursor:2"]);
        a.delete("cursor").unwrap();
        assert_eq!(a.get("cursor").unwrap(), None);
        assert!(a.set(&"k".repeat(MAX_KEY_BYTES + 1), b"v").is_err());
        assert!(a.set("big", &vec![0u8; MAX_VALUE_BYTES + 1]).is_err());
    }

    #[test]
    fn a_scope_is_held_to_its_quota_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let kv = KvStore::open(&store).unwrap();
        let a = kv.scope("hostile", "a");
        let chunk = vec![7u8; MAX_VALUE_BYTES];
        let fit = (MAX_SCOPE_BYTES / (MAX_VALUE_BYTES as u64 + 8)) as usize;
        for i in 0..fit {
            a.set(&format!("k{i:06}"), &chunk).unwrap();
        }
        let err = a.set("one-more", &chunk).unwrap_err();
        assert!(err.contains("more than a connector may keep per shop"), "{err}");
        a.set("k000000", &chunk).expect("overwriting in place does not grow it");
        kv.scope("hostile", "b").set("k", &chunk).expect("another shop has its own quota");
        // A new process counts what is stored.
        let again = KvStore::open(&store).unwrap();
        let a = again.scope("hostile", "a");
        assert!(a.set("one-more", &chunk).is_err());
        a.set("k000001", b"small").expect("shrinking a value is taken");
        a.set("one-more", &chunk).expect("and makes room");
        assert!(a.set("two-more", &chunk).is_err());
        a.delete("k000002").unwrap();
        a.set("two-more", &chunk).expect("deleting makes room");
    }

    #[test]
    fn a_refused_write_writes_nothing_and_writes_per_minute_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
        let kv = KvStore::open(&store).unwrap();
        let a = kv.scope("hostile", "a");
        let t = 1_800_000_000_000 - 1_800_000_000_000 % 60_000;
        let chunk = vec![1u8; 1000];
        for i in 0..4 {
            a.set_within(&format!("k{i}"), &chunk, 4008, t).unwrap();
        }
        // Overwriting the same key spends the minute too.
        let err = a.set_within("k0", &chunk, 4008, t + 1).unwrap_err();
        assert_eq!(err, WriteRefused::Rate { written: 4008, limit: 4008 });
        assert!(err.to_string().contains("max_kv_write_bytes_per_minute"), "{err}");
        a.set_within("k0", b"small", 4008, t + 60_000).expect("the next minute writes again");
        assert_eq!(a.get("k0").unwrap().as_deref(), Some(&b"small"[..]));
        // Filled to the quota, a refused write leaves the tree as it was.
        let b = kv.scope("hostile", "b");
        let big = vec![7u8; MAX_VALUE_BYTES];
        let fit = (MAX_SCOPE_BYTES / (MAX_VALUE_BYTES as u64 + 8)) as usize;
        for i in 0..fit {
            b.set(&format!("k{i:06}"), &big).unwrap();
        }
        let before = kv.tree().ok().unwrap().1.iter().count();
        assert!(matches!(b.set_within("one-more", &big, u64::MAX, t), Err(WriteRefused::Quota { .. })));
        assert_eq!(kv.tree().ok().unwrap().1.iter().count(), before);
        assert_eq!(b.get("one-more").unwrap(), None);
    }
}
