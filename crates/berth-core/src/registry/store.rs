//! The registry's storage: component bytes as files by digest
//! (`DATA_DIR/components/<sha256>.wasm`, written to a temporary name, synced, renamed),
//! one record per deployed version (keyspace `registry_versions`, connector \0 digest)
//! and each connector's state — active version, the versions before it, pauses
//! (`registry_state`). Every write is durable before it returns. In cluster mode the
//! same records live in the cluster ([`super::cluster`]).

use berth_storage::store::Keyspace;
use berth_storage::{Store, StoreError, WriteCtx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RegistryStoreError {
    #[error("registry storage failed: {0}")]
    Storage(#[from] StoreError),
    #[error("component file {path}: {why}")]
    File { path: String, why: String },
    #[error("registry record `{key}` is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// Cluster mode: the cluster did not take or give the record; nothing changed.
    #[error("the cluster's registry: {0}; try again")]
    Cluster(String),
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

/// How a canary ended (stored and answered as `promoted`, `aborted`, `rolled-back`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CanaryOutcome {
    /// The candidate became the active version.
    Promoted,
    /// Ops ended it; its shops went back to the active version.
    Aborted,
    /// Its calls failed too often; its shops went back to the active version.
    RolledBack,
}

/// How the last canary ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CanaryEnd {
    pub digest: String,
    pub outcome: CanaryOutcome,
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
    /// The shadow run in progress: every node runs it beside the active version. (Left
    /// out of the stored JSON when absent, as before shadow runs were stored.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPlan>,
    /// The last shadow run that ended (its reports are kept for promotion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_shadow: Option<ShadowPlan>,
    /// The last tape-based shadow run's result (`promote` judges it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape_shadow: Option<crate::tape::compare::TapeShadowResult>,
}

impl ConnectorState {
    /// End the shadow run in progress, if any, at `at_ms`: it becomes the last one.
    pub fn end_shadow(&mut self, at_ms: i64) {
        if let Some(mut plan) = self.shadow.take() {
            plan.stopped_ms = Some(at_ms);
            self.last_shadow = Some(plan);
        }
    }
}

/// A shadow run: which candidate, and since when (with the digest, the run's identity:
/// each node's report names it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShadowPlan {
    pub digest: String,
    pub started_ms: i64,
    pub started_by: String,
    /// When it ended (a stop, a promotion, a canary).
    #[serde(default)]
    pub stopped_ms: Option<i64>,
}

pub struct RegistryStore {
    backend: Backend,
}

enum Backend {
    Embedded(Embedded),
    Cluster(super::cluster::ClusterRegistryStore),
}

struct Embedded {
    store: Store,
    components: PathBuf,
    versions: Keyspace,
    state: Keyspace,
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
    /// Records in `store`, component files in `components` (made if missing).
    pub fn open(store: &Store, components: &Path) -> Result<Self, RegistryStoreError> {
        std::fs::create_dir_all(components).map_err(|e| file_error(components, &e))?;
        Ok(RegistryStore {
            backend: Backend::Embedded(Embedded {
                store: store.clone(),
                components: components.to_path_buf(),
                versions: store.keyspace("registry_versions")?,
                state: store.keyspace("registry_state")?,
            }),
        })
    }

    /// The registry shared by the cluster's nodes (components cached in `components`),
    /// and the connectors whose state other nodes change, as they change.
    pub async fn open_cluster(
        conn: &berth_cluster::Connection,
        components: &Path,
    ) -> Result<(Self, tokio::sync::mpsc::UnboundedReceiver<super::cluster::RegistryChange>), RegistryStoreError> {
        let (cluster, changes) = super::cluster::ClusterRegistryStore::open(conn, components).await?;
        Ok((RegistryStore { backend: Backend::Cluster(cluster) }, changes))
    }

    fn embedded(&self) -> Result<&Embedded, &super::cluster::ClusterRegistryStore> {
        match &self.backend {
            Backend::Embedded(e) => Ok(e),
            Backend::Cluster(c) => Err(c),
        }
    }

    /// Store a version and its bytes (once per digest), durably.
    pub async fn put_version(&self, rec: &VersionRecord, bytes: &[u8]) -> Result<(), RegistryStoreError> {
        match self.embedded() {
            Ok(e) => {
                e.put_blob(&rec.digest, bytes)?;
                e.put_record(rec).await
            }
            Err(c) => c.put_version(rec, bytes).await,
        }
    }

    /// Store a version's record (its bytes are in place already).
    pub async fn put_record(&self, rec: &VersionRecord) -> Result<(), RegistryStoreError> {
        match self.embedded() {
            Ok(e) => e.put_record(rec).await,
            Err(c) => c.put_record(rec).await,
        }
    }

    pub fn version(&self, connector: &str, digest: &str) -> Result<Option<VersionRecord>, RegistryStoreError> {
        let e = match self.embedded() {
            Ok(e) => e,
            Err(c) => return Ok(c.version(connector, digest)),
        };
        let key = version_key(connector, digest);
        e.versions.get(&key)?.map(|b| decode(&key, &b)).transpose()
    }

    /// Every version of a connector, oldest deploy first.
    pub fn versions(&self, connector: &str) -> Result<Vec<VersionRecord>, RegistryStoreError> {
        let e = match self.embedded() {
            Ok(e) => e,
            Err(c) => return Ok(c.versions(connector)),
        };
        let mut prefix = connector.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<VersionRecord> = e
            .versions
            .prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|r| r.deployed_at_ms);
        Ok(out)
    }

    pub async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryStoreError> {
        let e = match self.embedded() {
            Ok(e) => e,
            Err(c) => return c.blob(digest).await,
        };
        let Some(path) = e.blob_path(digest) else { return Ok(None) };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(file_error(&path, &err)),
        }
    }

    pub fn state(&self, connector: &str) -> Result<ConnectorState, RegistryStoreError> {
        let e = match self.embedded() {
            Ok(e) => e,
            Err(c) => return Ok(c.state(connector)),
        };
        match e.state.get(connector.as_bytes())? {
            Some(b) => decode(connector.as_bytes(), &b),
            None => Ok(ConnectorState::default()),
        }
    }

    /// Read the connector's state, let `change` change it, store it; durable on return.
    /// Single node: the caller serialises changes (the registry's change lock). Cluster:
    /// a compare-and-set, and `change` runs again on a newer state another node wrote
    /// meanwhile. `change`'s `Err` stores nothing.
    pub async fn update_state<R, E: From<RegistryStoreError>>(
        &self,
        connector: &str,
        mut change: impl FnMut(&mut ConnectorState) -> Result<R, E>,
    ) -> Result<R, E> {
        let e = match self.embedded() {
            Ok(e) => e,
            Err(c) => return c.update_state(connector, change).await,
        };
        let mut st = self.state(connector)?;
        let out = change(&mut st)?;
        let (state, key, value) = (e.state.clone(), connector.as_bytes().to_vec(), encode(&st));
        e.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&state, key, value);
                Ok::<_, RegistryStoreError>(())
            })
            .await?;
        Ok(out)
    }

    pub async fn set_state(&self, connector: &str, st: &ConnectorState) -> Result<(), RegistryStoreError> {
        self.update_state(connector, |held| {
            *held = st.clone();
            Ok::<_, RegistryStoreError>(())
        })
        .await
    }

    /// Cluster mode: this node's name (single node: none, and no report is shared).
    pub fn node(&self) -> Option<&str> {
        self.embedded().err().map(|c| c.node())
    }

    /// Cluster mode: share this node's report of a shadow run of `connector` (a single
    /// node keeps its reports in memory only).
    pub async fn put_shadow_report(&self, connector: &str, report: &super::shadow::ShadowReport) -> Result<(), RegistryStoreError> {
        match self.embedded() {
            Ok(_) => Ok(()),
            Err(c) => c.put_shadow_report(connector, report).await,
        }
    }

    /// Cluster mode: every node's last shared report of a shadow run of `connector`, by node.
    pub fn shadow_reports(&self, connector: &str) -> Vec<(String, super::shadow::ShadowReport)> {
        match self.embedded() {
            Ok(_) => Vec::new(),
            Err(c) => c.shadow_reports(connector),
        }
    }
}

/// Where the bytes of `digest` are kept in `dir` (`None` for a digest that is not hex:
/// it never names a file).
pub(super) fn component_file(dir: &Path, digest: &str) -> Option<PathBuf> {
    (!digest.is_empty() && digest.len() <= 128 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| dir.join(format!("{digest}.wasm")))
}

impl Embedded {
    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        component_file(&self.components, digest)
    }

    /// Write the bytes of `digest` once: a temporary file, synced, renamed, the folder
    /// synced — a crash leaves the whole file or none.
    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), RegistryStoreError> {
        let path = self.blob_path(digest).ok_or_else(|| RegistryStoreError::File { path: digest.to_string(), why: "the digest is not hex".into() })?;
        if path.exists() {
            return Ok(());
        }
        self.store.space_guard().check()?;
        berth_storage::files::write_whole(&path, bytes).map_err(|e| file_error(&path, &e))
    }

    async fn put_record(&self, rec: &VersionRecord) -> Result<(), RegistryStoreError> {
        let (versions, key, value) = (self.versions.clone(), version_key(&rec.connector, &rec.digest), encode(rec));
        self.store
            .write(move |ctx: &mut WriteCtx<'_>| {
                ctx.insert(&versions, key, value);
                Ok::<_, RegistryStoreError>(())
            })
            .await
    }
}

fn file_error(path: &Path, e: &std::io::Error) -> RegistryStoreError {
    RegistryStoreError::File { path: path.display().to_string(), why: e.to_string() }
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
        let open = || {
            let store = Store::open(&dir.path().join("store"), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
            RegistryStore::open(&store, &dir.path().join("components")).unwrap()
        };
        {
            let s = open();
            s.put_version(&rec("c", "bbb", 2), b"two").await.unwrap();
            s.put_version(&rec("c", "aaa", 1), b"one").await.unwrap();
            s.put_version(&rec("cx", "ccc", 3), b"three").await.unwrap();
            let st = ConnectorState { active: Some("bbb".into()), history: vec!["aaa".into()], ..Default::default() };
            s.set_state("c", &st).await.unwrap();
        }
        let s = open();
        let v: Vec<String> = s.versions("c").unwrap().into_iter().map(|r| r.digest).collect();
        assert_eq!(v, ["aaa", "bbb"], "oldest first, other connectors apart");
        assert_eq!(s.blob("aaa").await.unwrap().as_deref(), Some(b"one".as_slice()));
        assert_eq!(s.state("c").unwrap().active.as_deref(), Some("bbb"));
        assert_eq!(s.state("nope").unwrap(), ConnectorState::default());
        assert!(s.version("c", "zzz").unwrap().is_none());
        // Bytes are files named by digest, and only a hex digest names one.
        assert_eq!(std::fs::read(dir.path().join("components/aaa.wasm")).unwrap(), b"one");
        assert_eq!(s.blob("../store").await.unwrap(), None);
        assert!(s.put_version(&rec("c", "../x", 4), b"no").await.is_err());
    }
}
