//! `berth:connector/kv`: state on sled, scoped to one connector and one shop so a
//! connector can neither read another's state nor another shop's.

use sled::Tree;

/// Longest key a connector may use, and largest value.
pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct KvStore {
    tree: Tree,
}

/// One connector + shop's view of the store.
pub struct KvScope<'a> {
    store: &'a KvStore,
    prefix: Vec<u8>,
}

impl KvStore {
    pub fn new(tree: Tree) -> Self {
        KvStore { tree }
    }

    pub fn scope(&self, connector: &str, shop: &str) -> KvScope<'_> {
        let mut prefix = Vec::with_capacity(connector.len() + shop.len() + 2);
        prefix.extend_from_slice(connector.as_bytes());
        prefix.push(0);
        prefix.extend_from_slice(shop.as_bytes());
        prefix.push(0);
        KvScope { store: self, prefix }
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
        Ok(self.store.tree.get(self.key(key)?).map_err(storage)?.map(|v| v.to_vec()))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()));
        }
        self.store.tree.insert(self.key(key)?, value).map_err(storage)?;
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.store.tree.remove(self.key(key)?).map_err(storage)?;
        Ok(())
    }

    /// Keys (without the scope) starting with `prefix`, at most 1000.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<String>, String> {
        let start = self.key(prefix)?;
        self.store
            .tree
            .scan_prefix(&start)
            .keys()
            .take(1000)
            .map(|k| {
                let k = k.map_err(storage)?;
                Ok(String::from_utf8_lossy(&k[self.prefix.len()..]).into_owned())
            })
            .collect()
    }
}

fn storage(e: sled::Error) -> String {
    format!("storage error: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let kv = KvStore::new(db.open_tree("kv").unwrap());
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
}
