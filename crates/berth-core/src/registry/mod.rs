//! The connector registry: every deployed version of every connector, stored durably
//! (component bytes, manifest facts, digest, WIT version), the active one per connector
//! switched atomically, the ones before it kept for rollback, and pauses.
//!
//! At start-up each `[connectors.X]` component file is registered; it becomes active when
//! the file is new or changed since the last start, otherwise the registry's active
//! version (perhaps deployed through the admin API) stays. Compiled code is cached on
//! disk by digest and engine settings, so neither a restart nor a re-deploy recompiles.

pub mod cluster;
pub mod shadow;
pub mod slot;
pub mod store;

use berth_runtime::allowlist::HostAllowlist;
use berth_types::clock::now_ms;

use berth_runtime::{digest, ConnectorRuntime, LoadError, LoadedConnector};
use serde::Serialize;
pub use slot::ConnectorSlot;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
pub use store::{CanaryEnd, CanaryOutcome, CanaryPlan, ConnectorState, RegistryStore, RegistryStoreError, ShadowPlan, VersionRecord};
use serde::Deserialize;
use std::path::PathBuf;
use berth_runtime::config::LimitOverrides;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("connector `{0}` is not configured; add [connectors.{0}] to berth.toml (and restart) before deploying to it")]
    UnknownConnector(String),
    #[error("the component is {size} bytes, more than the {max} bytes allowed (admin.max_component_mb)")]
    TooLarge { size: usize, max: usize },
    #[error("the component was refused: {0}")]
    Invalid(#[from] LoadError),
    #[error("the component is for platform `{now}`, but connector `{connector}` serves `{was}`; deploy it under a connector for `{now}`")]
    PlatformChanged { connector: String, was: String, now: String },
    #[error("the manifest declares hosts ops have not granted ({hosts}); add them to [connectors.{connector}] grant_hosts or remove them from the manifest")]
    HostsNotGranted { connector: String, hosts: String },
    #[error("connector `{connector}` has no version {digest}; deploy it first")]
    UnknownVersion { connector: String, digest: String },
    #[error("connector `{0}` has no earlier version to roll back to")]
    NothingToRollBack(String),
    #[error("connector `{0}` has no canary running; start one with POST /v1/admin/connectors/{0}/canary")]
    NoCanary(String),
    #[error("connector `{0}` already runs a canary; promote or abort it first")]
    CanaryRunning(String),
    #[error("bad canary request: {0}")]
    BadCanary(String),
    #[error("connector `{0}` has no candidate to promote: start a canary or a shadow run first")]
    NoCandidate(String),
    #[error("promotion refused: the shadow run of {digest} is not a complete match: {why}; promote with force to override")]
    ShadowMismatch { digest: String, why: String },
    #[error("connector `{0}` already runs a shadow; stop it first")]
    ShadowRunning(String),
    #[error("bad tape: {0}")]
    BadTape(String),
    #[error("promotion refused: {digest} {why}; promote with force to override")]
    TapeMismatch { digest: String, why: String },
    #[error(transparent)]
    Storage(#[from] RegistryStoreError),
}

/// What a deploy did.
#[derive(Debug, Serialize)]
pub struct Deployed {
    pub version: VersionRecord,
    /// Already in the registry (nothing stored or compiled again).
    pub known: bool,
    pub active: bool,
}

/// One connector as ops see it.
#[derive(Debug, Serialize)]
pub struct ConnectorView {
    pub name: String,
    pub platform: String,
    pub active: Option<VersionRecord>,
    /// Digests that were active before, oldest first.
    pub history: Vec<String>,
    pub versions: Vec<VersionRecord>,
    pub paused: bool,
    pub paused_shops: Vec<String>,
    pub canary: Option<CanaryView>,
    pub last_canary: Option<CanaryEnd>,
    /// The running shadow's report, and the last finished one (cluster mode: summed over
    /// the nodes' reports).
    pub shadow: Option<shadow::ShadowReport>,
    pub last_shadow: Option<shadow::ShadowReport>,
    /// The last tape-based shadow run (`berth shadow NAME DIGEST --tape DIR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tape_shadow: Option<crate::tape::compare::TapeShadowResult>,
    /// Cluster mode: the digests of versions another node deployed that this node has
    /// compiled ahead (activating one is then a load, not a compile).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prepared_here: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CanaryView {
    pub plan: CanaryPlan,
    pub version: String,
    /// The candidate's calls and failures over the plan's window.
    pub tally: berth_runtime::call_stats::Tally,
}

/// What a canary request asks for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRequest {
    pub digest: String,
    /// Route this share of the connector's shops (at least one) to the candidate...
    pub share_percent: Option<u32>,
    /// ...or exactly these shops.
    pub shops: Option<Vec<String>>,
    #[serde(default = "five_percent")]
    pub max_failure_rate: f64,
    #[serde(default = "five_minutes")]
    pub window_secs: u64,
    #[serde(default = "twenty")]
    pub min_calls: u64,
}

fn five_percent() -> f64 {
    0.05
}
fn five_minutes() -> u64 {
    300
}
fn twenty() -> u64 {
    20
}

/// A canary the registry rolled back, for the alert.
#[derive(Debug, Clone)]
pub struct CanaryRollback {
    pub connector: String,
    pub digest: String,
    pub reason: String,
}

pub struct ConnectorRegistry {
    store: RegistryStore,
    runtime: Arc<ConnectorRuntime>,
    configs: RwLock<BTreeMap<String, ConnectorConfig>>,
    slots: RwLock<BTreeMap<String, Arc<ConnectorSlot>>>,
    /// Deploys, activations, rollbacks and pauses run one at a time.
    changes: tokio::sync::Mutex<()>,
    /// Each connector's shops (canaries pick from them).
    shops: RwLock<BTreeMap<String, Vec<String>>>,
    /// Cluster mode: versions other nodes deployed that this node has compiled ahead.
    prepared: RwLock<std::collections::BTreeSet<(String, String)>>,
    /// Cluster mode: what each connector's shared shadow report last said (its run and
    /// counts): shared again only when it changed.
    shared_shadows: std::sync::Mutex<BTreeMap<String, ShadowMark>>,
    /// Where shops' recordings go (`[connectors.X.record]`): `<tapes>/<connector>/<shop>/`.
    tapes: Option<std::path::PathBuf>,
}

/// A shadow report's run and counts, to tell whether it changed since it was shared.
type ShadowMark = (String, i64, u64, u64, Option<i64>);

fn shadow_mark(r: &shadow::ShadowReport) -> ShadowMark {
    (r.digest.clone(), r.started_ms, r.compared, r.skipped, r.stopped_ms)
}

fn record(name: &str, loaded: &LoadedConnector, size: usize, by: &str) -> VersionRecord {
    let m = &loaded.manifest;
    VersionRecord {
        connector: name.to_string(),
        digest: loaded.digest.clone(),
        version: m.connector_version.clone(),
        platform: m.platform.clone(),
        wit_version: m.wit_version.clone(),
        allowed_hosts: m.allowed_hosts.clone(),
        capabilities: m.capabilities.iter().map(|c| c.name().to_string()).collect(),
        size_bytes: size as u64,
        deployed_at_ms: now_ms(),
        deployed_by: by.to_string(),
    }
}

/// Start-up failures, each naming the connector.
#[derive(Debug, thiserror::Error)]
pub enum RegistryOpenError {
    #[error("connector `{connector}`: {source}")]
    Load { connector: String, source: LoadError },
    #[error(transparent)]
    Storage(#[from] RegistryStoreError),
}

impl ConnectorRegistry {
    /// Register and load every configured connector (see the module docs).
    /// `tapes`: where shops' recordings go (none: connectors' `record` is not served).
    pub async fn open(
        store: RegistryStore,
        runtime: Arc<ConnectorRuntime>,
        configs: &BTreeMap<String, ConnectorConfig>,
        tapes: Option<std::path::PathBuf>,
    ) -> Result<Self, RegistryOpenError> {
        let registry = ConnectorRegistry {
            store,
            runtime,
            configs: RwLock::default(),
            slots: RwLock::default(),
            changes: tokio::sync::Mutex::new(()),
            shops: RwLock::default(),
            prepared: RwLock::default(),
            shared_shadows: Default::default(),
            tapes,
        };
        for (name, c) in configs {
            registry.add_connector(name, c).await?;
        }
        Ok(registry)
    }

    /// Load a configured connector — at start, or when a config reload adds one — and
    /// serve it: the configured component when new or changed, else the registry's choice.
    pub async fn add_connector(&self, name: &str, c: &ConnectorConfig) -> Result<Arc<ConnectorSlot>, RegistryOpenError> {
        let (store, runtime) = (&self.store, &self.runtime);
        let load_err = |source| RegistryOpenError::Load { connector: name.to_string(), source };
        let bytes = std::fs::read(&c.component).map_err(|source| load_err(LoadError::Read { path: c.component.clone(), source }))?;
        let file_digest = digest(&bytes);
        let mut st = store.state(name)?;
        let from_file = runtime
            .load_bytes(name, &c.component, &bytes, &load_options(&runtime, name, c))
            .await
            .map_err(load_err)?;
        let from_file = Arc::new(from_file);
        let mut active = from_file.clone();
        if st.config_digest.as_deref() != Some(file_digest.as_str()) {
            if store.version(name, &file_digest)?.is_none() {
                store.put_version(&record(name, &from_file, bytes.len(), "config"), &bytes).await?;
            }
            st = store
                .update_state(name, |st| {
                    // Checked again: in a cluster, another node starting with the same
                    // file may have made it active already.
                    if st.config_digest.as_deref() != Some(file_digest.as_str()) {
                        if let Some(prev) = st.active.take().filter(|d| *d != file_digest) {
                            st.history.push(prev);
                        }
                        st.active = Some(file_digest.clone());
                        st.config_digest = Some(file_digest.clone());
                    }
                    Ok::<_, RegistryOpenError>(st.clone())
                })
                .await?;
            tracing::info!(connector = %name, digest = &file_digest[..12], "the configured component is new or changed; it is active");
        }
        if let Some(d) = st.active.clone().filter(|d| *d != file_digest) {
            match Self::load_stored(store, runtime, name, c, &d).await {
                Ok(l) if l.manifest.platform == from_file.manifest.platform => active = Arc::new(l),
                Ok(l) => tracing::error!(connector = %name, platform = %l.manifest.platform, "the registry's active version serves another platform; using the configured component"),
                Err(e) => tracing::error!(connector = %name, digest = &d[..12.min(d.len())], error = %e, "cannot load the registry's active version; using the configured component"),
            }
        }
        let slot = ConnectorSlot::new(active, st.paused, st.paused_shops.clone());
        if let Some(plan) = st.canary.clone() {
            // A canary survives a restart; one whose candidate cannot load is dropped.
            match Self::load_stored(store, runtime, name, c, &plan.digest).await {
                Ok(v) => slot.set_canary(Some(slot::Canary { version: Arc::new(v), shops: plan.shops.iter().cloned().collect() })),
                Err(e) => {
                    tracing::error!(connector = %name, error = %e, "cannot load the canary candidate; the canary ends");
                    store
                        .update_state(name, |st| {
                            st.canary = None;
                            Ok::<_, RegistryOpenError>(())
                        })
                        .await?;
                }
            }
        }
        if let Some(plan) = st.shadow.clone().filter(|_| slot.canary().is_none()) {
            // A shadow run survives a restart, and a node joining the cluster runs it too.
            match Self::load_stored(store, runtime, name, c, &plan.digest).await {
                Ok(v) => slot.set_shadow(Some(self.shadow_of(name, Arc::new(v), &plan))),
                Err(e) => tracing::error!(connector = %name, error = %e, "cannot load the shadow candidate; this node does not run the shadow"),
            }
        }
        if let (Some(tapes), Some(rec)) = (&self.tapes, &c.record) {
            slot.record(&tapes.join(name), rec);
        }
        let slot = Arc::new(slot);
        self.configs.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), c.clone());
        self.slots.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), slot.clone());
        Ok(slot)
    }

    /// Cluster mode: put in force here each connector state another node changed (its
    /// active version, pauses, canary), as the cluster's registry watch reports them.
    /// Runs until the channel closes.
    pub async fn follow(self: Arc<Self>, mut changed: tokio::sync::mpsc::UnboundedReceiver<cluster::RegistryChange>) {
        while let Some(change) = changed.recv().await {
            match change {
                cluster::RegistryChange::State(name) => {
                    if let Err(e) = self.apply_state(&name).await {
                        tracing::error!(connector = %name, error = %e, "cannot put the connector's new state in force on this node");
                    }
                }
                cluster::RegistryChange::Version { connector, digest } => {
                    let Some(cfg) = self.config(&connector) else { continue };
                    // Compiled now into this node's cache: activating it is then a load.
                    match Self::load_stored(&self.store, &self.runtime, &connector, &cfg, &digest).await {
                        Ok(_) => {
                            self.prepared.write().unwrap_or_else(|e| e.into_inner()).insert((connector, digest));
                        }
                        Err(e) => tracing::warn!(connector = %connector, digest = &digest[..12.min(digest.len())], error = %e, "cannot compile a version another node deployed; it is compiled when activated"),
                    }
                }
            }
        }
    }

    /// Cluster mode: whether this node has compiled ahead a version another node deployed.
    pub fn prepared(&self, name: &str, digest: &str) -> bool {
        self.prepared.read().unwrap_or_else(|e| e.into_inner()).contains(&(name.to_string(), digest.to_string()))
    }

    /// Make this node's slot match the stored state of `name`: a no-op for a change this
    /// node made itself.
    pub async fn apply_state(&self, name: &str) -> Result<(), DeployError> {
        let Ok((slot, cfg)) = self.known(name) else { return Ok(()) };
        let st = self.store.state(name)?;
        // Loaded outside the change lock, like a deploy.
        let active = match st.active.as_deref().filter(|d| *d != slot.current().digest) {
            Some(d) => Some(Arc::new(Self::load_stored(&self.store, &self.runtime, name, &cfg, d).await?)),
            None => None,
        };
        let canary = match (&st.canary, slot.canary()) {
            (Some(plan), Some(c)) if c.version.digest == plan.digest => None,
            (Some(plan), _) => Some(Arc::new(Self::load_stored(&self.store, &self.runtime, name, &cfg, &plan.digest).await?)),
            (None, _) => None,
        };
        let shadow = match (&st.shadow, slot.shadow()) {
            (Some(plan), Some(sh)) if sh.version.digest == plan.digest && sh.started_ms() == plan.started_ms => None,
            // A candidate this node cannot load leaves the shadow to the others (said once).
            (Some(plan), _) => match Self::load_stored(&self.store, &self.runtime, name, &cfg, &plan.digest).await {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::error!(connector = name, error = %e, "cannot load the shadow candidate another node started; this node does not run the shadow");
                    None
                }
            },
            (None, _) => None,
        };
        let _guard = self.changes.lock().await;
        // Read again under the lock: the state may have moved while loading.
        let st = self.store.state(name)?;
        if let Some(next) = active.filter(|a| st.active.as_deref() == Some(a.digest.as_str())) {
            let old = slot.swap(next.clone());
            tracing::warn!(connector = name, from = %old.version(), to = %next.version(), to_digest = &next.digest[..12], "active connector version switched by another node");
        }
        slot.set_pauses(st.paused, st.paused_shops.clone());
        match (&st.canary, canary) {
            (Some(plan), Some(version)) if version.digest == plan.digest => {
                slot.set_canary(Some(slot::Canary { version, shops: plan.shops.iter().cloned().collect() }));
                tracing::warn!(connector = name, digest = &plan.digest[..12.min(plan.digest.len())], "canary started by another node");
            }
            (None, _) if slot.canary().is_some() => {
                slot.set_canary(None);
                tracing::warn!(connector = name, "canary ended by another node");
            }
            _ => {}
        }
        match (&st.shadow, shadow) {
            (Some(plan), Some(version)) if version.digest == plan.digest => {
                slot.set_shadow(Some(self.shadow_of(name, version, plan)));
                tracing::warn!(connector = name, digest = &plan.digest[..12.min(plan.digest.len())], "shadow run started by another node");
            }
            (None, _) if slot.shadow().is_some() => {
                slot.set_shadow(None);
                tracing::warn!(connector = name, "shadow run ended by another node");
            }
            _ => {}
        }
        Ok(())
    }

    /// This node's shadow for the run `plan`: it goes on from the report this node shared
    /// before (it restarted), else starts from nothing.
    fn shadow_of(&self, name: &str, version: Arc<LoadedConnector>, plan: &ShadowPlan) -> Arc<shadow::Shadow> {
        let node = self.store.node();
        let mine = self.store.shadow_reports(name).into_iter().find(|(n, r)| Some(n.as_str()) == node && r.of_run(&plan.digest, plan.started_ms));
        Arc::new(match mine {
            Some((_, report)) => shadow::Shadow::resume(version, report),
            None => shadow::Shadow::new(version, plan.started_ms),
        })
    }

    /// The running shadow's report and the last finished one's. Cluster mode: the sums
    /// of every node's reports of those runs (this node's as it is now, the others' as
    /// they last shared them, at most a second old).
    fn shadow_reports(&self, name: &str, slot: &ConnectorSlot) -> (Option<shadow::ShadowReport>, Option<shadow::ShadowReport>) {
        let (running, last) = (slot.shadow().map(|s| s.report()), slot.last_shadow());
        let Some(node) = self.store.node() else { return (running, last) };
        let st = self.store.state(name).unwrap_or_default();
        let shared = self.store.shadow_reports(name);
        let sum = |plan: Option<&ShadowPlan>| {
            let plan = plan?;
            let own = running.iter().chain(last.iter()).find(|r| r.of_run(&plan.digest, plan.started_ms)).cloned();
            let parts = shared.iter().filter(|(n, _)| n != node).cloned().chain(own.map(|r| (node.to_string(), r)));
            let mut report = shadow::ShadowReport::sum(&plan.digest, plan.started_ms, parts)?;
            // A node down when the run ended never says it stopped: the plan does.
            report.stopped_ms = report.stopped_ms.or(plan.stopped_ms);
            Some(report)
        };
        (sum(st.shadow.as_ref()), sum(st.last_shadow.as_ref()))
    }

    /// Cluster mode: share this node's report of `name`'s shadow run when it changed
    /// since it was last shared.
    async fn share_shadow_report(&self, name: &str, slot: &ConnectorSlot) {
        if self.store.node().is_none() {
            return;
        }
        let Some(report) = slot.shadow().map(|s| s.report()).or_else(|| slot.last_shadow()) else { return };
        let mark = shadow_mark(&report);
        if self.shared_shadows.lock().unwrap_or_else(|e| e.into_inner()).get(name) == Some(&mark) {
            return;
        }
        match self.store.put_shadow_report(name, &report).await {
            Ok(()) => {
                self.shared_shadows.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), mark);
            }
            Err(e) => tracing::warn!(connector = name, error = %e, "cannot share this node's shadow report; tried again in a second"),
        }
    }

    /// Cluster mode: share this node's shadow reports every second while they change.
    /// Runs until shutdown.
    pub async fn share_shadow_reports(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if self.store.node().is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            for (name, slot) in self.slots() {
                self.share_shadow_report(&name, &slot).await;
            }
        }
    }

    /// End the shadow run, in the registry's state (every node ends it) and here; this
    /// node's last report is shared at once.
    async fn end_shadow(&self, name: &str, slot: &ConnectorSlot) -> Result<(), DeployError> {
        self.store
            .update_state(name, |st| {
                st.end_shadow(now_ms());
                Ok::<_, DeployError>(())
            })
            .await?;
        slot.set_shadow(None);
        self.share_shadow_report(name, slot).await;
        Ok(())
    }

    /// Each connector's shops, as started (at start-up and after each config reload).
    pub fn set_shops(&self, shops: BTreeMap<String, Vec<String>>) {
        *self.shops.write().unwrap_or_else(|e| e.into_inner()) = shops;
    }

    async fn load_stored(
        store: &RegistryStore,
        runtime: &Arc<ConnectorRuntime>,
        name: &str,
        c: &ConnectorConfig,
        digest: &str,
    ) -> Result<LoadedConnector, DeployError> {
        let bytes = store
            .blob(digest)
            .await?
            .ok_or_else(|| DeployError::UnknownVersion { connector: name.to_string(), digest: digest.to_string() })?;
        let origin = Path::new("registry").join(digest);
        Ok(runtime.load_bytes(name, &origin, &bytes, &load_options(&runtime, name, c)).await?)
    }

    pub fn slot(&self, name: &str) -> Option<Arc<ConnectorSlot>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Every connector, by name.
    pub fn slots(&self) -> BTreeMap<String, Arc<ConnectorSlot>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The connector's config as loaded.
    pub fn config(&self, name: &str) -> Option<ConnectorConfig> {
        self.configs.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn known(&self, name: &str) -> Result<(Arc<ConnectorSlot>, ConnectorConfig), DeployError> {
        match (self.slot(name), self.config(name)) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err(DeployError::UnknownConnector(name.to_string())),
        }
    }

    /// Validate and store a component as a version of `name`; make it active when
    /// `activate`. A refused component changes nothing.
    pub async fn deploy(&self, name: &str, bytes: &[u8], by: &str, activate: bool, max_bytes: usize) -> Result<Deployed, DeployError> {
        let (slot, cfg) = self.known(name)?;
        if bytes.len() > max_bytes {
            return Err(DeployError::TooLarge { size: bytes.len(), max: max_bytes });
        }
        // Compiled before the change lock is taken (5–25 s for a Python or JavaScript
        // component): pause, abort-canary and rollback never wait behind a compile.
        let origin = Path::new("upload").join(&digest(bytes)[..12]);
        let loaded = self.runtime.load_bytes(name, &origin, bytes, &load_options(&self.runtime, name, &cfg)).await?;
        check_deploy(name, &slot.platform, &loaded.manifest.platform, &loaded.manifest.allowed_hosts, cfg.grant_hosts.as_deref())?;
        let _guard = self.changes.lock().await;
        let existing = self.store.version(name, &loaded.digest)?;
        let known = existing.is_some();
        let version = match existing {
            Some(v) => v,
            None => {
                let rec = record(name, &loaded, bytes.len(), by);
                self.store.put_version(&rec, bytes).await?;
                rec
            }
        };
        if activate {
            self.make_active(name, &slot, Arc::new(loaded), false).await?;
        }
        tracing::info!(connector = name, digest = &version.digest[..12], version = %version.version, by, activate, "connector version deployed");
        Ok(Deployed { version, known, active: activate })
    }

    /// Persist `next` as active (pushing the current one on the history unless rolling
    /// back), then swap it in.
    async fn make_active(&self, name: &str, slot: &ConnectorSlot, next: Arc<LoadedConnector>, rollback: bool) -> Result<(), DeployError> {
        let current = slot.current().digest.clone();
        if current == next.digest {
            return Ok(());
        }
        self.store
            .update_state(name, |st| {
                if rollback {
                    st.history.pop();
                } else {
                    // What the registry had active (another node's choice, in a cluster).
                    st.history.push(st.active.clone().unwrap_or_else(|| current.clone()));
                }
                st.active = Some(next.digest.clone());
                Ok::<_, DeployError>(())
            })
            .await?;
        let old = slot.swap(next.clone());
        tracing::warn!(connector = name, from = %old.version(), to = %next.version(), from_digest = &old.digest[..12], to_digest = &next.digest[..12], "active connector version switched");
        Ok(())
    }

    /// Make a stored version active.
    pub async fn activate(&self, name: &str, digest: &str) -> Result<VersionRecord, DeployError> {
        let (slot, cfg) = self.known(name)?;
        let rec = self
            .store
            .version(name, digest)?
            .ok_or_else(|| DeployError::UnknownVersion { connector: name.to_string(), digest: digest.to_string() })?;
        let loaded = Self::load_stored(&self.store, &self.runtime, name, &cfg, digest).await?;
        let _guard = self.changes.lock().await;
        self.make_active(name, &slot, Arc::new(loaded), false).await?;
        Ok(rec)
    }

    /// Go back to the version active before the current one. Returns (from, to).
    pub async fn rollback(&self, name: &str) -> Result<(VersionRecord, VersionRecord), DeployError> {
        let (slot, cfg) = self.known(name)?;
        let missing = |d: &str| DeployError::UnknownVersion { connector: name.to_string(), digest: d.to_string() };
        // The version to go back to is loaded outside the change lock; if another change
        // moved the history meanwhile, look again (the loaded version is usually the
        // same one, from the compile cache).
        for _ in 0..5 {
            let to = self.store.state(name)?.history.last().cloned().ok_or_else(|| DeployError::NothingToRollBack(name.to_string()))?;
            let to_rec = self.store.version(name, &to)?.ok_or_else(|| missing(&to))?;
            let loaded = Self::load_stored(&self.store, &self.runtime, name, &cfg, &to).await?;
            let _guard = self.changes.lock().await;
            if self.store.state(name)?.history.last() != Some(&to) {
                continue;
            }
            let from = slot.current().digest.clone();
            let from_rec = self.store.version(name, &from)?.ok_or_else(|| missing(&from))?;
            self.make_active(name, &slot, Arc::new(loaded), true).await?;
            return Ok((from_rec, to_rec));
        }
        Err(DeployError::NothingToRollBack(format!("{name} (its history kept changing during the rollback; try again)")))
    }

    /// Pause or resume a connector (every shop on it) or one shop, durably.
    pub async fn set_paused(&self, name: &str, shop: Option<&str>, paused: bool) -> Result<(), DeployError> {
        let (slot, _) = self.known(name)?;
        let _guard = self.changes.lock().await;
        self.store
            .update_state(name, |st| {
                match shop {
                    None => st.paused = paused,
                    Some(s) if paused => {
                        st.paused_shops.insert(s.to_string());
                    }
                    Some(s) => {
                        st.paused_shops.remove(s);
                    }
                }
                Ok::<_, DeployError>(())
            })
            .await?;
        slot.set_paused(shop, paused);
        tracing::warn!(connector = name, shop = shop.unwrap_or("*"), paused, "connector pause changed");
        Ok(())
    }

    /// Route some shops to a stored version; it is rolled back automatically when its
    /// failure rate crosses the plan's threshold (see [`ConnectorRegistry::check_canaries`]).
    pub async fn start_canary(&self, name: &str, req: &CanaryRequest, by: &str) -> Result<CanaryPlan, DeployError> {
        let (slot, cfg) = self.known(name)?;
        if self.store.version(name, &req.digest)?.is_none() {
            return Err(DeployError::UnknownVersion { connector: name.to_string(), digest: req.digest.clone() });
        }
        // Loaded (compiled if the cache lacks it) before the change lock is taken.
        let candidate = Self::load_stored(&self.store, &self.runtime, name, &cfg, &req.digest).await?;
        let _guard = self.changes.lock().await;
        if slot.canary().is_some() {
            return Err(DeployError::CanaryRunning(name.to_string()));
        }
        if !(req.max_failure_rate.is_finite() && (0.0..1.0).contains(&req.max_failure_rate)) || req.window_secs == 0 || req.min_calls == 0 {
            return Err(DeployError::BadCanary("max_failure_rate must be in [0, 1), window_secs and min_calls at least 1".into()));
        }
        let own = self.shops.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned().unwrap_or_default();
        let shops = match (&req.shops, req.share_percent) {
            (Some(list), None) => {
                if let Some(s) = list.iter().find(|s| !own.contains(s)) {
                    return Err(DeployError::BadCanary(format!("shop `{s}` does not use connector `{name}`")));
                }
                list.clone()
            }
            (None, Some(p)) if (1..=100).contains(&p) => canary_shops(name, &own, p),
            _ => return Err(DeployError::BadCanary("give either share_percent (1..=100) or shops".into())),
        };
        if shops.is_empty() {
            return Err(DeployError::BadCanary(format!("connector `{name}` has no shops to route")));
        }
        if slot.current().digest == req.digest {
            return Err(DeployError::BadCanary("that version is already active".into()));
        }
        let plan = CanaryPlan {
            digest: req.digest.clone(),
            shops: shops.clone(),
            max_failure_rate: req.max_failure_rate,
            window_secs: req.window_secs,
            min_calls: req.min_calls,
            started_ms: now_ms(),
            started_by: by.to_string(),
        };
        self.store
            .update_state(name, |st| {
                // Another node may have started one meanwhile (cluster mode).
                if st.canary.is_some() {
                    return Err(DeployError::CanaryRunning(name.to_string()));
                }
                st.canary = Some(plan.clone());
                // A canary follows a shadow run: the shadow stops, its report stays for
                // promotion.
                st.end_shadow(plan.started_ms);
                Ok(())
            })
            .await?;
        slot.set_shadow(None);
        self.share_shadow_report(name, &slot).await;
        slot.set_canary(Some(slot::Canary { version: Arc::new(candidate), shops: shops.into_iter().collect() }));
        tracing::warn!(connector = name, digest = &req.digest[..12.min(req.digest.len())], shops = ?plan.shops, "canary started");
        Ok(plan)
    }

    /// End the canary: `promoted` makes the candidate active, `aborted` and
    /// `rolled-back` send its shops back to the active version.
    async fn end_canary(&self, name: &str, outcome: CanaryOutcome, reason: String) -> Result<CanaryEnd, DeployError> {
        let (slot, _) = self.known(name)?;
        let canary = slot.canary().ok_or_else(|| DeployError::NoCanary(name.to_string()))?;
        if outcome == CanaryOutcome::Promoted {
            self.make_active(name, &slot, canary.version.clone(), false).await?;
        }
        let end = CanaryEnd { digest: canary.version.digest.clone(), outcome, reason, at_ms: now_ms() };
        self.store
            .update_state(name, |st| {
                st.canary = None;
                st.last_canary = Some(end.clone());
                Ok::<_, DeployError>(())
            })
            .await?;
        slot.set_canary(None);
        Ok(end)
    }

    /// Make the candidate active for every shop: the canary's, else the shadow's, else
    /// the version a tape-based shadow run last judged. Refused (unless `force`) while
    /// the candidate's live shadow or its tape run found differences, and with
    /// `require_tape` when no tape run of it matched completely.
    pub async fn promote(&self, name: &str, force: bool, require_tape: bool) -> Result<CanaryEnd, DeployError> {
        let (slot, cfg) = self.known(name)?;
        let _guard = self.changes.lock().await;
        let taped = self.store.state(name)?.tape_shadow;
        let candidate = match (slot.canary(), slot.shadow(), &taped) {
            (Some(c), _, _) => c.version,
            (None, Some(sh), _) => sh.version.clone(),
            (None, None, Some(t)) if t.digest != slot.current().digest => {
                Arc::new(Self::load_stored(&self.store, &self.runtime, name, &cfg, &t.digest).await?)
            }
            _ => return Err(DeployError::NoCandidate(name.to_string())),
        };
        let (running, last) = self.shadow_reports(name, &slot);
        let report = running.or(last).filter(|r| r.digest == candidate.digest);
        if let (Some(r), false) = (&report, force) {
            r.complete_match().map_err(|why| DeployError::ShadowMismatch { digest: candidate.digest.clone(), why })?;
        }
        match (taped.filter(|t| t.digest == candidate.digest), force) {
            (_, true) => {}
            (Some(t), false) => t.complete_match().map_err(|why| DeployError::TapeMismatch {
                digest: candidate.digest.clone(),
                why: format!("is not a complete match on the tape recorded by {}: {why}", t.recorded_by),
            })?,
            (None, false) if require_tape => {
                return Err(DeployError::TapeMismatch {
                    digest: candidate.digest.clone(),
                    why: "has not been run on a tape: `berth shadow NAME DIGEST --tape DIR` first".into(),
                })
            }
            (None, false) => {}
        }
        let reason = if force { "promoted by ops (forced)" } else { "promoted by ops" }.to_string();
        if slot.canary().is_some() {
            return self.end_canary(name, CanaryOutcome::Promoted, reason).await;
        }
        self.make_active(name, &slot, candidate.clone(), false).await?;
        self.end_shadow(name, &slot).await?;
        Ok(CanaryEnd { digest: candidate.digest.clone(), outcome: CanaryOutcome::Promoted, reason, at_ms: now_ms() })
    }

    /// Run a stored version as a shadow of the active one (see shadow.rs).
    pub async fn start_shadow(&self, name: &str, digest: &str, by: &str) -> Result<shadow::ShadowReport, DeployError> {
        let (slot, cfg) = self.known(name)?;
        if self.store.version(name, digest)?.is_none() {
            return Err(DeployError::UnknownVersion { connector: name.to_string(), digest: digest.to_string() });
        }
        let candidate = Self::load_stored(&self.store, &self.runtime, name, &cfg, digest).await?;
        let _guard = self.changes.lock().await;
        if slot.canary().is_some() {
            return Err(DeployError::CanaryRunning(name.to_string()));
        }
        if slot.shadow().is_some() {
            return Err(DeployError::ShadowRunning(name.to_string()));
        }
        if slot.current().digest == digest {
            return Err(DeployError::BadCanary("that version is already active".into()));
        }
        let plan = ShadowPlan { digest: digest.to_string(), started_ms: now_ms(), started_by: by.to_string(), stopped_ms: None };
        self.store
            .update_state(name, |st| {
                // Another node may have started one meanwhile (cluster mode).
                if st.canary.is_some() {
                    return Err(DeployError::CanaryRunning(name.to_string()));
                }
                if st.shadow.is_some() {
                    return Err(DeployError::ShadowRunning(name.to_string()));
                }
                st.shadow = Some(plan.clone());
                Ok(())
            })
            .await?;
        let sh = Arc::new(shadow::Shadow::new(Arc::new(candidate), plan.started_ms));
        let report = sh.report();
        slot.set_shadow(Some(sh));
        self.share_shadow_report(name, &slot).await;
        tracing::warn!(connector = name, digest = &digest[..12.min(digest.len())], "shadow run started");
        Ok(report)
    }

    /// A tape-based shadow run: replay `tape` to the stored version `digest` and compare
    /// its answers with the recorded ones, field by field (tape/compare.rs). The result
    /// is kept in the connector's state (one per connector, the last), shown in its view
    /// and judged by `promote`. `shop` is the tape's shop's config when it is served here.
    pub async fn tape_shadow(
        &self,
        name: &str,
        digest: &str,
        tape: &crate::tape::TapeFile,
        shop: Option<Arc<berth_types::shop::ShopConfig>>,
        by: &str,
    ) -> Result<crate::tape::compare::TapeShadowResult, DeployError> {
        let (slot, cfg) = self.known(name)?;
        if self.store.version(name, digest)?.is_none() {
            return Err(DeployError::UnknownVersion { connector: name.to_string(), digest: digest.to_string() });
        }
        if tape.platform != slot.platform {
            return Err(DeployError::BadTape(format!("it was recorded on platform `{}`; connector `{name}` serves `{}`", tape.platform, slot.platform)));
        }
        if tape.calls.is_empty() {
            return Err(DeployError::BadTape("it holds no call".into()));
        }
        let candidate = Self::load_stored(&self.store, &self.runtime, name, &cfg, digest).await?;
        let result = crate::tape::compare::compare(&candidate, tape, shop, by).await;
        self.store
            .update_state(name, |st| {
                st.tape_shadow = Some(result.clone());
                Ok::<_, DeployError>(())
            })
            .await?;
        tracing::warn!(
            connector = name, digest = &digest[..12.min(digest.len())], compared = result.compared, match_percent = result.match_percent,
            "tape-based shadow run done"
        );
        Ok(result)
    }

    /// Stop the shadow run; its report stays readable until the next one.
    pub async fn stop_shadow(&self, name: &str) -> Result<shadow::ShadowReport, DeployError> {
        let (slot, _) = self.known(name)?;
        let _guard = self.changes.lock().await;
        // In a cluster the run may be in the state while this node could not load it.
        if slot.shadow().is_none() && self.store.state(name)?.shadow.is_none() {
            return Err(DeployError::NoCandidate(name.to_string()));
        }
        self.end_shadow(name, &slot).await?;
        self.shadow_reports(name, &slot).1.ok_or_else(|| DeployError::NoCandidate(name.to_string()))
    }

    pub async fn abort_canary(&self, name: &str) -> Result<CanaryEnd, DeployError> {
        let _guard = self.changes.lock().await;
        self.end_canary(name, CanaryOutcome::Aborted, "aborted by ops".into()).await
    }

    /// Roll back every canary whose candidate fails too often; returns what it rolled back.
    pub async fn check_canaries(&self) -> Vec<CanaryRollback> {
        let mut rolled = Vec::new();
        for (name, slot) in &self.slots() {
            let Some(canary) = slot.canary() else { continue };
            let Ok(st) = self.store.state(name) else { continue };
            let Some(plan) = st.canary else { continue };
            let tally = canary.version.calls.tally(std::time::Duration::from_secs(plan.window_secs));
            if tally.calls < plan.min_calls || tally.failure_rate() <= plan.max_failure_rate {
                continue;
            }
            let reason = format!(
                "{} of {} calls failed in the last {} s ({:.1}% > {:.1}%)",
                tally.failures,
                tally.calls,
                plan.window_secs,
                tally.failure_rate() * 100.0,
                plan.max_failure_rate * 100.0
            );
            let _guard = self.changes.lock().await;
            match self.end_canary(name, CanaryOutcome::RolledBack, reason.clone()).await {
                Ok(_) => rolled.push(CanaryRollback { connector: name.clone(), digest: plan.digest, reason }),
                Err(e) => tracing::error!(connector = %name, error = %e, "cannot roll the canary back"),
            }
        }
        rolled
    }

    pub fn view(&self, name: &str) -> Result<ConnectorView, DeployError> {
        let (slot, _) = self.known(name)?;
        let st = self.store.state(name)?;
        let versions = self.store.versions(name)?;
        let active_digest = slot.current().digest.clone();
        let canary = match (slot.canary(), st.canary.clone()) {
            (Some(c), Some(plan)) => Some(CanaryView {
                version: c.version.version().to_string(),
                tally: c.version.calls.tally(std::time::Duration::from_secs(plan.window_secs)),
                plan,
            }),
            _ => None,
        };
        let (shadow, last_shadow) = self.shadow_reports(name, &slot);
        Ok(ConnectorView {
            canary,
            tape_shadow: st.tape_shadow.clone(),
            last_canary: st.last_canary.clone(),
            shadow,
            last_shadow,
            name: name.to_string(),
            platform: slot.platform.clone(),
            active: versions.iter().find(|v| v.digest == active_digest).cloned(),
            history: st.history,
            versions,
            paused: slot.paused(),
            paused_shops: slot.paused_shops().into_iter().collect(),
            prepared_here: self.prepared.read().unwrap_or_else(|e| e.into_inner()).iter().filter(|(c, _)| c == name).map(|(_, d)| d.clone()).collect(),
        })
    }
}

/// The shops a share of `percent` routes to a candidate: at least one, picked by a
/// stable hash of connector and shop so the same shops are chosen every time.
pub fn canary_shops(connector: &str, shops: &[String], percent: u32) -> Vec<String> {
    let fnv = |s: &str| s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let mut ranked: Vec<&String> = shops.iter().collect();
    ranked.sort_by_key(|s| (fnv(&format!("{connector}/{s}")), s.to_string()));
    let n = ((shops.len() as u64 * percent as u64).div_ceil(100) as usize).max(1).min(shops.len());
    let mut picked: Vec<String> = ranked.into_iter().take(n).cloned().collect();
    picked.sort();
    picked
}

/// Watch running canaries every second; a candidate failing too often is rolled back,
/// written to the audit log and told as an event (the canary-rollback alert rules hear it).
pub async fn watch_canaries(
    registry: Arc<ConnectorRegistry>,
    audit: Arc<crate::audit::AuditLog>,
    events: Arc<crate::events::Events>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        for r in registry.check_canaries().await {
            tracing::error!(connector = %r.connector, digest = %r.digest, reason = %r.reason, "canary rolled back automatically");
            events.emit(&crate::events::Event::CanaryRolledBack { connector: &r.connector, digest: &r.digest, reason: &r.reason });
            let entry = crate::audit::AuditEntry::now("berth", "canary-rollback", &r.connector, Some(&r.digest), "ok", r.reason.clone());
            if let Err(e) = audit.append(&entry) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
    }
}

/// A new version must serve the connector's platform and need only granted hosts.
pub fn check_deploy(connector: &str, platform: &str, new_platform: &str, hosts: &[String], grants: Option<&[String]>) -> Result<(), DeployError> {
    if new_platform != platform {
        return Err(DeployError::PlatformChanged { connector: connector.into(), was: platform.into(), now: new_platform.into() });
    }
    let granted = HostAllowlist::granted(hosts, grants);
    let missing: Vec<&str> = hosts.iter().filter(|h| !granted.contains(h)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(DeployError::HostsNotGranted { connector: connector.into(), hosts: missing.join(", ") });
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Path to the component (`.wasm`), relative to the config file.
    pub component: PathBuf,
    /// The platform this connector serves (its buckets, retry policy and holds); the
    /// connector's name when absent. A component whose manifest names another platform
    /// is refused.
    pub platform: Option<String>,
    /// Which of the manifest's hosts ops grant (exact names or `*.suffix`); all of them
    /// when absent. A manifest host no grant covers is unreachable.
    #[serde(default)]
    pub grant_hosts: Option<Vec<String>>,
    /// Hosts granted beyond the manifest's own list (e.g. a simulator's address).
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// Let this connector reach loopback, private and link-local addresses (a local
    /// sandbox or simulator); `http.allow_private_addresses` does it for all.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// This connector's limits where they differ from `[runtime]`.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// What every shop onboarded by OAuth through this connector gets (the app's keys,
    /// the platform's URL); without it the connector onboards no shop.
    pub onboarding: Option<crate::onboarding::OnboardingConfig>,
    /// Record chosen shops' calls to tapes in `data_dir/tapes/<connector>/<shop>/`, for
    /// the vendor kit to replay (`berth plugin test --tape`); see tape/journal.rs.
    #[serde(default)]
    pub record: Option<crate::tape::journal::RecordConfig>,
}

impl ConnectorConfig {
    /// The platform connector `name` serves: as configured, else its name.
    pub fn platform_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.platform.as_deref().unwrap_or(name)
    }
}


/// How connector `name`, configured as `c`, is loaded: the platform ops bound it to, the
/// hosts they grant and add, and its limits over `[runtime]`'s.
fn load_options<'a>(runtime: &ConnectorRuntime, name: &'a str, c: &'a ConnectorConfig) -> berth_runtime::LoadOptions<'a> {
    berth_runtime::LoadOptions {
        platform: Some(c.platform_of(name)),
        grants: c.grant_hosts.as_deref(),
        extra_hosts: &c.extra_hosts,
        allow_private: c.allow_private_addresses,
        limits: runtime.limits(&c.limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_shares_pick_stable_shops() {
        let shops: Vec<String> = (0..10).map(|i| format!("shop{i}")).collect();
        let a = canary_shops("shopify", &shops, 20);
        assert_eq!(a.len(), 2);
        assert_eq!(a, canary_shops("shopify", &shops, 20), "the same shops every time");
        assert_eq!(canary_shops("shopify", &shops, 1).len(), 1, "at least one shop");
        assert_eq!(canary_shops("shopify", &shops, 100).len(), 10);
        assert!(canary_shops("shopify", &[], 50).is_empty());
    }

    #[test]
    fn a_deploy_keeps_the_platform_and_needs_granted_hosts() {
        let hosts = vec!["*.myshopify.com".to_string(), "cdn.example".to_string()];
        assert!(check_deploy("s", "shopify", "shopify", &hosts, None).is_ok(), "no grants configured: the manifest is granted");
        let err = check_deploy("s", "shopify", "shopify", &hosts, Some(&["*.myshopify.com".to_string()])).unwrap_err();
        assert!(err.to_string().contains("hosts ops have not granted (cdn.example)"), "{err}");
        let err = check_deploy("s", "shopify", "taobao", &hosts, None).unwrap_err();
        assert!(err.to_string().contains("for platform `taobao`, but connector `s` serves `shopify`"), "{err}");
    }
}
