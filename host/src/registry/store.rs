//! The registry on sled: component bytes by digest (`registry/blobs`), one record per
//! deployed version (`registry/versions`, connector \0 digest), and each connector's
//! state — active version, the versions before it, pauses (`registry/state`). Every
//! write is durable (group commit) before it returns.

use crate::queue::group_commit::GroupCommit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RegistryStoreError {
    #[error("registry storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("registry storage could not be made durable: {0}")]
    Durable(String),
    #[error("registry record `{key}` is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

/// One deployed version of a connector.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    pub connector: String,
    /// sha256 of the component bytes, hex.
    pub digest: String,
    /// The manifest's `connector-version`.
    pub version: String,
    pub platform: String,
    pub wit_version: String,
    pub allowed_hosts: Vec<String>,
    pub capabilities: Vec<String>,
    pub size_bytes: u64,
    pub deployed_at_ms: i64,
    /// Admin token name, or `config` for the component named in berth.toml.
    pub deployed_by: String,
}

/// A canary in progress: some shops run a candidate version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CanaryPlan {
    pub digest: String,
    /// The shops routed to the candidate.
    pub shops: Vec<String>,
    /// Roll back when more than this share of the candidate's calls fail...
    pub max_failure_rate: f64,
    /// ...over this trailing window...
    pub window_secs: u64,
    /// ...once it made at least this many calls in it.
    pub min_calls: u64,
    pub started_ms: i64,
    pub started_by: String,
}

/// How the last canary ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CanaryEnd {
    pub digest: String,
    /// `promoted`, `aborted` or `rolled-back`.
    pub outcome: String,
    pub reason: String,
    pub at_ms: i64,
}

/// What is live for one connector.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConnectorState {
    /// Digest of the active version.
    pub active: Option<String>,
    /// Versions active before it, oldest first: `rollback` goes back one.
    pub history: Vec<String>,
    pub paused: bool,
    pub paused_shops: BTreeSet<String>,
    /// Digest of the component file berth.toml named when last seen: a changed file is
    /// deployed at start-up; an unchanged one leaves the registry's choice alone.
    pub config_digest: Option<String>,
    pub canary: Option<CanaryPlan>,
    pub last_canary: Option<CanaryEnd>,
}

pub struct RegistryStore {
    blobs: sled::Tree,
    versions: sled::Tree,
    state: sled::Tree,
    commit: Arc<GroupCommit>,
}

fn version_key(connector: &str, digest: &str) -> Vec<u8> {
    let mut k = connector.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(digest.as_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, RegistryStoreError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryStoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry records serialize")
}

impl RegistryStore {
    pub fn open(db: &sled::Db, commit: Arc<GroupCommit>) -> Result<Self, RegistryStoreError> {
        Ok(RegistryStore {
            blobs: db.open_tree("registry/blobs")?,
            versions: db.open_tree("registry/versions")?,
            state: db.open_tree("registry/state")?,
            commit,
        })
    }

    async fn durable(&self) -> Result<(), RegistryStoreError> {
        self.commit.durable().await.map_err(|e| RegistryStoreError::Durable(e.to_string()))
    }

    /// Store a version and its bytes (once per digest), durably.
    pub async fn put_version(&self, rec: &VersionRecord, bytes: &[u8]) -> Result<(), RegistryStoreError> {
        if !self.blobs.contains_key(rec.digest.as_bytes())? {
            self.blobs.insert(rec.digest.as_bytes(), bytes)?;
        }
        self.versions.insert(version_key(&rec.connector, &rec.digest), encode(rec))?;
        self.durable().await
    }

    pub fn version(&self, connector: &str, digest: &str) -> Result<Option<VersionRecord>, RegistryStoreError> {
        let key = version_key(connector, digest);
        self.versions.get(&key)?.map(|b| decode(&key, &b)).transpose()
    }

    /// Every version of a connector, oldest deploy first.
    pub fn versions(&self, connector: &str) -> Result<Vec<VersionRecord>, RegistryStoreError> {
        let mut prefix = connector.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<VersionRecord> = self
            .versions
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|r| r.deployed_at_ms);
        Ok(out)
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryStoreError> {
        Ok(self.blobs.get(digest.as_bytes())?.map(|b| b.to_vec()))
    }

    pub fn state(&self, connector: &str) -> Result<ConnectorState, RegistryStoreError> {
        match self.state.get(connector.as_bytes())? {
            Some(b) => decode(connector.as_bytes(), &b),
            None => Ok(ConnectorState::default()),
        }
    }

    pub async fn set_state(&self, connector: &str, st: &ConnectorState) -> Result<(), RegistryStoreError> {
        self.state.insert(connector.as_bytes(), encode(st))?;
        self.durable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(connector: &str, digest: &str, at: i64) -> VersionRecord {
        VersionRecord {
            connector: connector.into(),
            digest: digest.into(),
            version: "1.0.0".into(),
            platform: "p".into(),
            wit_version: "0.1.0".into(),
            allowed_hosts: vec![],
            capabilities: vec![],
            size_bytes: 3,
            deployed_at_ms: at,
            deployed_by: "ci".into(),
        }
    }

    #[tokio::test]
    async fn versions_and_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let s = RegistryStore::open(&db, GroupCommit::start(db.clone())).unwrap();
            s.put_version(&rec("c", "bbb", 2), b"two").await.unwrap();
            s.put_version(&rec("c", "aaa", 1), b"one").await.unwrap();
            s.put_version(&rec("cx", "ccc", 3), b"three").await.unwrap();
            let st = ConnectorState { active: Some("bbb".into()), history: vec!["aaa".into()], ..Default::default() };
            s.set_state("c", &st).await.unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let s = RegistryStore::open(&db, GroupCommit::start(db.clone())).unwrap();
        let v: Vec<String> = s.versions("c").unwrap().into_iter().map(|r| r.digest).collect();
        assert_eq!(v, ["aaa", "bbb"], "oldest first, other connectors apart");
        assert_eq!(s.blob("aaa").unwrap().as_deref(), Some(b"one".as_slice()));
        assert_eq!(s.state("c").unwrap().active.as_deref(), Some("bbb"));
        assert_eq!(s.state("nope").unwrap(), ConnectorState::default());
        assert!(s.version("c", "zzz").unwrap().is_none());
    }
}
