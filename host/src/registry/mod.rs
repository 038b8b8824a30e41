//! The connector registry: every deployed version of every connector, stored durably
//! (component bytes, manifest facts, digest, WIT version), the active one per connector
//! switched atomically, the ones before it kept for rollback, and pauses.
//!
//! At start-up each `[connectors.X]` component file is registered; it becomes active when
//! the file is new or changed since the last start, otherwise the registry's active
//! version (perhaps deployed through the admin API) stays. Compiled code is cached on
//! disk by digest and engine settings, so neither a restart nor a re-deploy recompiles.

pub mod slot;
pub mod store;

use crate::capabilities::http::HostAllowlist;
use crate::clock::now_ms;
use crate::config::ConnectorConfig;
use crate::runtime::{digest, ConnectorRuntime, LoadError, LoadedConnector};
use serde::Serialize;
pub use slot::ConnectorSlot;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
pub use store::{ConnectorState, RegistryStore, RegistryStoreError, VersionRecord};

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
}

pub struct ConnectorRegistry {
    store: RegistryStore,
    runtime: Arc<ConnectorRuntime>,
    configs: BTreeMap<String, ConnectorConfig>,
    slots: BTreeMap<String, Arc<ConnectorSlot>>,
    /// Deploys, activations, rollbacks and pauses run one at a time.
    changes: tokio::sync::Mutex<()>,
    max_component_bytes: usize,
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
        capabilities: m.capabilities.iter().map(|c| format!("{c:?}").to_lowercase()).collect(),
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
    pub async fn open(
        store: RegistryStore,
        runtime: Arc<ConnectorRuntime>,
        configs: &BTreeMap<String, ConnectorConfig>,
        max_component_bytes: usize,
    ) -> Result<Self, RegistryOpenError> {
        let mut slots = BTreeMap::new();
        for (name, c) in configs {
            let load_err = |source| RegistryOpenError::Load { connector: name.clone(), source };
            let bytes = std::fs::read(&c.component).map_err(|source| load_err(LoadError::Read { path: c.component.clone(), source }))?;
            let file_digest = digest(&bytes);
            let mut st = store.state(name)?;
            let from_file = runtime
                .load_bytes(name, &c.component, &bytes, c.grant_hosts.as_deref(), &c.extra_hosts)
                .await
                .map_err(load_err)?;
            let from_file = Arc::new(from_file);
            let mut active = from_file.clone();
            if st.config_digest.as_deref() != Some(file_digest.as_str()) {
                if store.version(name, &file_digest)?.is_none() {
                    store.put_version(&record(name, &from_file, bytes.len(), "config"), &bytes).await?;
                }
                if let Some(prev) = st.active.take().filter(|d| *d != file_digest) {
                    st.history.push(prev);
                }
                st.active = Some(file_digest.clone());
                st.config_digest = Some(file_digest.clone());
                store.set_state(name, &st).await?;
                tracing::info!(connector = %name, digest = &file_digest[..12], "the configured component is new or changed; it is active");
            } else if let Some(d) = st.active.clone().filter(|d| *d != file_digest) {
                match Self::load_stored(&store, &runtime, name, c, &d).await {
                    Ok(l) if l.manifest.platform == from_file.manifest.platform => active = Arc::new(l),
                    Ok(l) => tracing::error!(connector = %name, platform = %l.manifest.platform, "the registry's active version serves another platform; using the configured component"),
                    Err(e) => tracing::error!(connector = %name, digest = &d[..12.min(d.len())], error = %e, "cannot load the registry's active version; using the configured component"),
                }
            }
            let slot = ConnectorSlot::new(active, st.paused, st.paused_shops.clone());
            slots.insert(name.clone(), Arc::new(slot));
        }
        Ok(ConnectorRegistry {
            store,
            runtime,
            configs: configs.clone(),
            slots,
            changes: tokio::sync::Mutex::new(()),
            max_component_bytes,
        })
    }

    async fn load_stored(
        store: &RegistryStore,
        runtime: &Arc<ConnectorRuntime>,
        name: &str,
        c: &ConnectorConfig,
        digest: &str,
    ) -> Result<LoadedConnector, DeployError> {
        let bytes = store
            .blob(digest)?
            .ok_or_else(|| DeployError::UnknownVersion { connector: name.to_string(), digest: digest.to_string() })?;
        let origin = Path::new("registry").join(digest);
        Ok(runtime.load_bytes(name, &origin, &bytes, c.grant_hosts.as_deref(), &c.extra_hosts).await?)
    }

    pub fn slot(&self, name: &str) -> Option<Arc<ConnectorSlot>> {
        self.slots.get(name).cloned()
    }

    pub fn slots(&self) -> &BTreeMap<String, Arc<ConnectorSlot>> {
        &self.slots
    }

    fn known(&self, name: &str) -> Result<(&Arc<ConnectorSlot>, &ConnectorConfig), DeployError> {
        match (self.slots.get(name), self.configs.get(name)) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err(DeployError::UnknownConnector(name.to_string())),
        }
    }

    /// Validate and store a component as a version of `name`; make it active when
    /// `activate`. A refused component changes nothing.
    pub async fn deploy(&self, name: &str, bytes: &[u8], by: &str, activate: bool) -> Result<Deployed, DeployError> {
        let (slot, cfg) = self.known(name)?;
        if bytes.len() > self.max_component_bytes {
            return Err(DeployError::TooLarge { size: bytes.len(), max: self.max_component_bytes });
        }
        let _guard = self.changes.lock().await;
        let origin = Path::new("upload").join(&digest(bytes)[..12]);
        let loaded = self.runtime.load_bytes(name, &origin, bytes, cfg.grant_hosts.as_deref(), &cfg.extra_hosts).await?;
        check_deploy(name, &slot.platform, &loaded.manifest.platform, &loaded.manifest.allowed_hosts, cfg.grant_hosts.as_deref())?;
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
            self.make_active(name, slot, Arc::new(loaded), false).await?;
        }
        tracing::info!(connector = name, digest = &version.digest[..12], version = %version.version, by, activate, "connector version deployed");
        Ok(Deployed { version, known, active: activate })
    }

    /// Persist `next` as active (pushing the current one on the history unless rolling
    /// back), then swap it in.
    async fn make_active(&self, name: &str, slot: &ConnectorSlot, next: Arc<LoadedConnector>, rollback: bool) -> Result<(), DeployError> {
        let mut st = self.store.state(name)?;
        let current = slot.current().digest.clone();
        if current == next.digest {
            return Ok(());
        }
        if rollback {
            st.history.pop();
        } else {
            st.history.push(current);
        }
        st.active = Some(next.digest.clone());
        self.store.set_state(name, &st).await?;
        let old = slot.swap(next.clone());
        tracing::warn!(connector = name, from = %old.version(), to = %next.version(), from_digest = &old.digest[..12], to_digest = &next.digest[..12], "active connector version switched");
        Ok(())
    }

    /// Make a stored version active.
    pub async fn activate(&self, name: &str, digest: &str) -> Result<VersionRecord, DeployError> {
        let (slot, cfg) = self.known(name)?;
        let _guard = self.changes.lock().await;
        let rec = self
            .store
            .version(name, digest)?
            .ok_or_else(|| DeployError::UnknownVersion { connector: name.to_string(), digest: digest.to_string() })?;
        let loaded = Self::load_stored(&self.store, &self.runtime, name, cfg, digest).await?;
        self.make_active(name, slot, Arc::new(loaded), false).await?;
        Ok(rec)
    }

    /// Go back to the version active before the current one. Returns (from, to).
    pub async fn rollback(&self, name: &str) -> Result<(VersionRecord, VersionRecord), DeployError> {
        let (slot, cfg) = self.known(name)?;
        let _guard = self.changes.lock().await;
        let st = self.store.state(name)?;
        let to = st.history.last().cloned().ok_or_else(|| DeployError::NothingToRollBack(name.to_string()))?;
        let from = slot.current().digest.clone();
        let missing = |d: &str| DeployError::UnknownVersion { connector: name.to_string(), digest: d.to_string() };
        let from_rec = self.store.version(name, &from)?.ok_or_else(|| missing(&from))?;
        let to_rec = self.store.version(name, &to)?.ok_or_else(|| missing(&to))?;
        let loaded = Self::load_stored(&self.store, &self.runtime, name, cfg, &to).await?;
        self.make_active(name, slot, Arc::new(loaded), true).await?;
        Ok((from_rec, to_rec))
    }

    /// Pause or resume a connector (every shop on it) or one shop, durably.
    pub async fn set_paused(&self, name: &str, shop: Option<&str>, paused: bool) -> Result<(), DeployError> {
        let (slot, _) = self.known(name)?;
        let _guard = self.changes.lock().await;
        let mut st = self.store.state(name)?;
        match shop {
            None => st.paused = paused,
            Some(s) if paused => {
                st.paused_shops.insert(s.to_string());
            }
            Some(s) => {
                st.paused_shops.remove(s);
            }
        }
        self.store.set_state(name, &st).await?;
        slot.set_paused(shop, paused);
        tracing::warn!(connector = name, shop = shop.unwrap_or("*"), paused, "connector pause changed");
        Ok(())
    }

    pub fn view(&self, name: &str) -> Result<ConnectorView, DeployError> {
        let (slot, _) = self.known(name)?;
        let st = self.store.state(name)?;
        let versions = self.store.versions(name)?;
        let active_digest = slot.current().digest.clone();
        Ok(ConnectorView {
            name: name.to_string(),
            platform: slot.platform.clone(),
            active: versions.iter().find(|v| v.digest == active_digest).cloned(),
            history: st.history,
            versions,
            paused: slot.paused(),
            paused_shops: slot.paused_shops().into_iter().collect(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
