//! Classes of shops for the ERP's order queue, so a token scoped to some shops leases
//! only theirs.
//!
//! One JetStream consumer delivers each of its messages once, whoever fetches; two
//! consumers over the same shop would each deliver its orders. So the feed is
//! partitioned into *classes*: the shops seen by the same set of token scopes (the
//! shops no scoped token sees are the class [`ALL`]). Each class has its own consumer
//! ([`crate::feed::OrderQueue`] on `feed.<class>.>`); a scoped token leases from the
//! classes its scope is in, an unscoped one from every class.
//!
//! The class is part of an order's subject, written by whichever node appends the order
//! as its copy of the assignment says ([`Classes::class_of`]). A reload that moves a
//! shop to another class needs no handover: orders already in the feed stay with the
//! old class's consumer until they are settled, new ones go to the new class. Each
//! class's scopes are kept in the shops bucket (`class.<id>`, written once, every node's
//! copy watched), so every node knows who may lease from a class — also one that has no
//! shops any more but still holds orders.

use crate::connect::Connection;
use crate::error::ClusterError;
use crate::mirror::{Json, Mirror};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The class of the shops no scoped token sees (all of them when no token is scoped).
pub const ALL: &str = "all";
const PREFIX: &str = "class.";

/// `class.<id>`: the token scopes that see the class's shops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRecord {
    pub scopes: Vec<String>,
}

/// The class of shops seen by exactly `scopes` (each a scope's canonical key): [`ALL`]
/// for none, else `s` and 16 hex digits of their digest — the same on every node.
pub fn class_id(scopes: &BTreeSet<String>) -> String {
    if scopes.is_empty() {
        return ALL.to_string();
    }
    let joined = scopes.iter().cloned().collect::<Vec<_>>().join("\n");
    format!("s{}", hex::encode(&berth_types::digest::sha256(joined.as_bytes())[..8]))
}

/// This node's assignment of shops to classes, and every class the cluster knows.
pub struct Classes {
    conn: Connection,
    known: Mirror<Json<ClassRecord>>,
    by_shop: RwLock<HashMap<String, String>>,
}

impl Classes {
    pub async fn open(conn: &Connection) -> Result<Arc<Classes>, ClusterError> {
        let known = Mirror::open(conn, PREFIX, Box::new(|_, _, _| {})).await?;
        Ok(Arc::new(Classes { conn: conn.clone(), known, by_shop: RwLock::new(HashMap::new()) }))
    }

    /// The class `shop`'s orders are appended under ([`ALL`] for a shop not assigned).
    pub fn class_of(&self, shop: &str) -> String {
        self.by_shop.read().unwrap_or_else(|p| p.into_inner()).get(shop).cloned().unwrap_or_else(|| ALL.to_string())
    }

    /// Assign each shop to the class of the scopes that see it (`seen_by`: shop → scope
    /// keys). New classes are recorded in the cluster first, so a class's orders are
    /// never in the feed before every node can know who may lease them. Returns the
    /// shops whose class changed.
    pub async fn assign(&self, seen_by: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, ClusterError> {
        let mut next = HashMap::with_capacity(seen_by.len());
        let mut records: BTreeMap<String, ClassRecord> = BTreeMap::new();
        for (shop, scopes) in seen_by {
            let id = class_id(scopes);
            if id != ALL {
                records.entry(id.clone()).or_insert_with(|| ClassRecord { scopes: scopes.iter().cloned().collect() });
            }
            next.insert(shop.clone(), id);
        }
        for (id, record) in records {
            let key = format!("{PREFIX}{id}");
            if self.known.get(&key).record.is_some() {
                continue;
            }
            let value = bytes::Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            // Written once with the same content whoever writes it: tried again while the
            // cluster settles (a create answered after all is then "already exists").
            let created = crate::connect::patiently(&key, || async {
                match self.conn.shops.create(&key, value.clone()).await {
                    Ok(revision) => Ok(Some(revision)),
                    Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
            let Some(revision) = created else { continue };
            self.known.applied_writes(&[(key, revision, Some(record))]);
        }
        let mut by_shop = self.by_shop.write().unwrap_or_else(|p| p.into_inner());
        let moved = next.iter().filter(|(shop, id)| by_shop.get(*shop).is_some_and(|old| old != *id)).map(|(shop, _)| shop.clone()).collect();
        *by_shop = next;
        Ok(moved)
    }

    /// The classes a token with scope `scope` (its canonical key; `None`: unscoped)
    /// leases from, [`ALL`] first for an unscoped one.
    pub fn leasable(&self, scope: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = scope.is_none().then(|| ALL.to_string()).into_iter().collect();
        self.known.walk(PREFIX, PREFIX, |key, record| {
            if scope.is_none_or(|s| record.scopes.iter().any(|r| r == s)) {
                out.push(key.trim_start_matches(PREFIX).to_string());
            }
            true
        });
        out
    }

    /// Whether the cluster has class `class` (this node's copy, else the leader's).
    pub async fn exists(&self, class: &str) -> Result<bool, ClusterError> {
        let key = format!("{PREFIX}{class}");
        if class == ALL || self.known.get(&key).record.is_some() {
            return Ok(true);
        }
        Ok(self.conn.latest_shop_key(&key).await?.and_then(|l| l.value).is_some_and(|v| !v.is_empty()))
    }

    /// Whether a token with scope `scope` sees the orders of class `class`.
    pub fn sees(&self, class: &str, scope: Option<&str>) -> bool {
        let Some(scope) = scope else { return true };
        self.known.get(&format!("{PREFIX}{class}")).record.is_some_and(|r| r.scopes.iter().any(|s| s == scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_is_named_by_its_scopes_alone() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(class_id(&set(&[])), ALL);
        let a = class_id(&set(&["acme-*", "globex"]));
        assert_eq!(a, class_id(&set(&["globex", "acme-*"])), "the order the scopes come in does not matter");
        assert_ne!(a, class_id(&set(&["acme-*"])));
        assert!(a.len() == 17 && a.starts_with('s') && a[1..].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    }
}
