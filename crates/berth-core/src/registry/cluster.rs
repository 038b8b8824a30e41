//! The registry's storage in cluster mode: component bytes in the cluster's object store
//! (cached on this node's disk by digest), each connector's state under its name and
//! each version's record under `version.<connector>.<digest>` in the registry bucket.
//! This node keeps a copy of the states and records, loaded at start and kept by a watch;
//! every change of a state is a compare-and-set, and the watch tells the registry which
//! connector changed so it puts the new state in force here ([`super::ConnectorRegistry::follow`]).
//! Each node's report of a shadow run is kept under `shadow.<connector>.<node>`: a
//! shadow compares the calls of the node's own shops, so the run's report is their sum.

use super::shadow::ShadowReport;
use super::store::{ConnectorState, RegistryStoreError, VersionRecord};
use berth_cluster::registry::SharedRegistry;
use berth_cluster::{ClusterError, Connection};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// What another node changed in the shared registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// The connector's state (active version, pauses, canary).
    State(String),
    /// A version was deployed: this node compiles it ahead, so activating it later
    /// switches within moments here too.
    Version { connector: String, digest: String },
}

fn version_key(connector: &str, digest: &str) -> String {
    format!("version.{connector}.{digest}")
}

fn shadow_key(connector: &str, node: &str) -> String {
    format!("shadow.{connector}.{node}")
}

/// A shared report is cut to this size (its later differences dropped): a shadow finding
/// large differences must not fill the registry bucket.
const MAX_SHARED_REPORT: usize = 256 * 1024;

#[derive(Default)]
struct Known {
    states: BTreeMap<String, (u64, ConnectorState)>,
    versions: BTreeMap<(String, String), VersionRecord>,
    /// Shadow reports by (connector, node), with their revisions.
    reports: BTreeMap<(String, String), (u64, ShadowReport)>,
}

impl Known {
    /// Take a key's value if newer than what is held; what changed, if anything.
    fn apply(&mut self, key: &str, revision: u64, value: Option<&[u8]>) -> Option<RegistryChange> {
        if let Some(rest) = key.strip_prefix("version.") {
            let (connector, digest) = rest.split_once('.')?;
            let id = (connector.to_string(), digest.to_string());
            match value.map(serde_json::from_slice::<VersionRecord>) {
                Some(Ok(rec)) => {
                    let new = self.versions.insert(id, rec).is_none();
                    return new.then(|| RegistryChange::Version { connector: connector.to_string(), digest: digest.to_string() });
                }
                Some(Err(e)) => tracing::error!(key, error = %e, "a version record in the cluster cannot be read; left out"),
                None => {
                    self.versions.remove(&id);
                }
            }
            return None;
        }
        if let Some(rest) = key.strip_prefix("shadow.") {
            let (connector, node) = rest.split_once('.')?;
            let id = (connector.to_string(), node.to_string());
            if self.reports.get(&id).is_some_and(|(held, _)| *held >= revision) {
                return None;
            }
            match value.map(serde_json::from_slice::<ShadowReport>) {
                Some(Ok(report)) => {
                    self.reports.insert(id, (revision, report));
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "a shadow report in the cluster cannot be read; left out"),
                None => {
                    self.reports.remove(&id);
                }
            }
            return None;
        }
        if self.states.get(key).is_some_and(|(held, _)| *held >= revision) {
            return None;
        }
        let state = match value.map(serde_json::from_slice::<ConnectorState>).transpose() {
            Ok(st) => st.unwrap_or_default(),
            Err(e) => {
                tracing::error!(connector = key, error = %e, "a connector state in the cluster cannot be read; this node keeps the last one");
                return None;
            }
        };
        self.states.insert(key.to_string(), (revision, state));
        Some(RegistryChange::State(key.to_string()))
    }
}

pub struct ClusterRegistryStore {
    shared: SharedRegistry,
    node: String,
    /// This node's cache of component files, by digest.
    components: PathBuf,
    copy: Arc<RwLock<Known>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterRegistryStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cluster_error(e: ClusterError) -> RegistryStoreError {
    RegistryStoreError::Cluster(e.to_string())
}

impl ClusterRegistryStore {
    /// Open the shared registry, load every state and record, and keep watching: each
    /// connector whose state another node changes, and each version another node
    /// deploys, is sent on the returned channel.
    pub async fn open(conn: &Connection, components: &Path) -> Result<(Self, mpsc::UnboundedReceiver<RegistryChange>), RegistryStoreError> {
        std::fs::create_dir_all(components).map_err(|e| RegistryStoreError::File { path: components.display().to_string(), why: e.to_string() })?;
        let shared = SharedRegistry::open(conn).await.map_err(cluster_error)?;
        let copy = Arc::new(RwLock::new(Known::default()));
        // The watch first (it replays every key, then follows), so nothing written
        // between the load and the watch is missed.
        let mut changes = shared.watch().await.map_err(cluster_error)?;
        for key in shared.keys().await.map_err(cluster_error)? {
            if let Some((revision, value)) = shared.get(&key).await.map_err(cluster_error)? {
                copy.write().unwrap_or_else(|e| e.into_inner()).apply(&key, revision, Some(&value));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let follow = copy.clone();
        let task = tokio::spawn(async move {
            while let Some(change) = changes.next().await {
                let changed = follow.write().unwrap_or_else(|e| e.into_inner()).apply(&change.connector, change.revision, change.value.as_deref());
                if let Some(changed) = changed {
                    if tx.send(changed).is_err() {
                        return;
                    }
                }
            }
            tracing::error!("the watch of the cluster's registry ended; deploys made on other nodes are not seen here until a restart");
        });
        Ok((ClusterRegistryStore { shared, node: conn.node.clone(), components: components.to_path_buf(), copy, task }, rx))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Share this node's report of a shadow run (cut to [`MAX_SHARED_REPORT`]).
    pub async fn put_shadow_report(&self, connector: &str, report: &ShadowReport) -> Result<(), RegistryStoreError> {
        let mut report = report.clone();
        let mut value = serde_json::to_vec(&report).expect("shadow reports serialize");
        while value.len() > MAX_SHARED_REPORT && !report.differences.is_empty() {
            report.differences.truncate(report.differences.len() / 2);
            value = serde_json::to_vec(&report).expect("shadow reports serialize");
        }
        let key = shadow_key(connector, &self.node);
        let revision = self.shared.put(&key, Bytes::from(value.clone())).await.map_err(cluster_error)?;
        self.copy.write().unwrap_or_else(|e| e.into_inner()).apply(&key, revision, Some(&value));
        Ok(())
    }

    pub fn shadow_reports(&self, connector: &str) -> Vec<(String, ShadowReport)> {
        let copy = self.copy.read().unwrap_or_else(|e| e.into_inner());
        copy.reports.iter().filter(|((c, _), _)| c == connector).map(|((_, node), (_, r))| (node.clone(), r.clone())).collect()
    }

    fn local(&self, digest: &str) -> Option<PathBuf> {
        super::store::component_file(&self.components, digest)
    }

    pub async fn put_version(&self, rec: &VersionRecord, bytes: &[u8]) -> Result<(), RegistryStoreError> {
        let digest = self.shared.put_component(bytes).await.map_err(cluster_error)?;
        if digest != rec.digest {
            return Err(RegistryStoreError::File { path: rec.digest.clone(), why: format!("the bytes hash to {digest}") });
        }
        if let Some(path) = self.local(&digest).filter(|p| !p.exists()) {
            berth_storage::files::write_whole(&path, bytes).map_err(|e| RegistryStoreError::File { path: path.display().to_string(), why: e.to_string() })?;
        }
        self.put_record(rec).await
    }

    pub async fn put_record(&self, rec: &VersionRecord) -> Result<(), RegistryStoreError> {
        let key = version_key(&rec.connector, &rec.digest);
        let value = serde_json::to_vec(rec).expect("registry records serialize");
        let revision = self.shared.put(&key, Bytes::from(value.clone())).await.map_err(cluster_error)?;
        self.copy.write().unwrap_or_else(|e| e.into_inner()).apply(&key, revision, Some(&value));
        Ok(())
    }

    pub fn version(&self, connector: &str, digest: &str) -> Option<VersionRecord> {
        self.copy.read().unwrap_or_else(|e| e.into_inner()).versions.get(&(connector.to_string(), digest.to_string())).cloned()
    }

    pub fn versions(&self, connector: &str) -> Vec<VersionRecord> {
        let copy = self.copy.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<VersionRecord> = copy.versions.iter().filter(|((c, _), _)| c == connector).map(|(_, r)| r.clone()).collect();
        out.sort_by_key(|r| r.deployed_at_ms);
        out
    }

    /// The bytes of `digest`: from this node's cache, else from the cluster (then cached).
    pub async fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryStoreError> {
        let Some(path) = self.local(digest) else { return Ok(None) };
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok(Some(bytes));
        }
        let bytes = match self.shared.component(digest).await {
            Ok(b) => b,
            Err(ClusterError::Nats(why)) if why.contains("not found") => return Ok(None),
            Err(e) => return Err(cluster_error(e)),
        };
        berth_storage::files::write_whole(&path, &bytes).map_err(|e| RegistryStoreError::File { path: path.display().to_string(), why: e.to_string() })?;
        Ok(Some(bytes))
    }

    pub fn state(&self, connector: &str) -> ConnectorState {
        self.copy.read().unwrap_or_else(|e| e.into_inner()).states.get(connector).map(|(_, s)| s.clone()).unwrap_or_default()
    }

    /// Change the connector's state by compare-and-set (`change` may run again on a
    /// newer state another node wrote meanwhile; its `Err` writes nothing).
    pub async fn update_state<R, E: From<RegistryStoreError>>(
        &self,
        connector: &str,
        mut change: impl FnMut(&mut ConnectorState) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut out = None;
        let written = self
            .shared
            .update(connector, |current| {
                let mut st: ConnectorState = match current.map(serde_json::from_slice).transpose() {
                    Ok(st) => st.unwrap_or_default(),
                    Err(e) => return Err(Err(RegistryStoreError::Corrupt { key: connector.to_string(), message: e.to_string() })),
                };
                match change(&mut st) {
                    Ok(r) => {
                        out = Some(r);
                        Ok(Bytes::from(serde_json::to_vec(&st).expect("registry state serializes")))
                    }
                    Err(e) => Err(Ok(e)),
                }
            })
            .await
            .map_err(|e| E::from(cluster_error(e)))?;
        match written {
            Ok((revision, value)) => {
                self.copy.write().unwrap_or_else(|e| e.into_inner()).apply(connector, revision, Some(&value));
                Ok(out.expect("a written change ran"))
            }
            Err(Ok(e)) => Err(e),
            Err(Err(e)) => Err(E::from(e)),
        }
    }
}
