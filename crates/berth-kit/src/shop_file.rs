//! The vendor's shop file for `berth plugin record` and `berth plugin test --tape`: the
//! shop the connector runs for (settings and secrets, as a `[shops.X]` section would
//! give them), the hosts it may reach, what to record and how to replay.
//!
//! ```toml
//! shop = "demo-shop"
//! extra_hosts = ["127.0.0.1"]      # beyond the manifest's allowed-hosts
//! allow_private_addresses = true   # a sandbox on loopback or a private network
//! [settings]
//! base_url = "http://127.0.0.1:8099"
//! [secrets]
//! sign_secret = "…"
//! [record]
//! hours = 72                       # how far back the pulls reach
//! push = { "SKU-1" = 5 }           # stock to push (none: no push)
//! webhook = "push.json"            # {"headers": {…}, "body": "…"}, relative to this file
//! [replay]
//! ignore_params = ["nonce"]        # beyond timestamp, sign … (see replay.rs)
//! throttle_body = '{"result":24,"error_msg":"call frequency exceeded"}'
//! ```

use berth_types::shop::{ShopConfig, Tier};
use berth_types::Secret;
use berth_core::tape::ReplayPlan;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ShopFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid shop file: {why}")]
    Invalid { path: PathBuf, why: String },
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopFile {
    /// The shop id the connector is called with.
    pub shop: String,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub allow_private_addresses: bool,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    #[serde(default)]
    pub record: RecordPlan,
    #[serde(default)]
    pub replay: ReplayPlan,
    /// Where the file was read from (relative paths in it are taken from its directory).
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordPlan {
    /// How far back the pulls reach, in hours before now (72 when absent).
    pub hours: Option<u64>,
    /// Stock to push, SKU → quantity; nothing is pushed when empty.
    #[serde(default)]
    pub push: BTreeMap<String, u32>,
    /// A webhook to hand the connector: a JSON file `{"headers": {…}, "body": "…"}`.
    pub webhook: Option<PathBuf>,
}

/// A webhook given as a file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl ShopFile {
    pub fn read(path: &Path) -> Result<ShopFile, ShopFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ShopFileError::Read { path: path.to_path_buf(), source })?;
        let mut file: ShopFile = toml::from_str(&text).map_err(|e| ShopFileError::Invalid { path: path.to_path_buf(), why: e.to_string() })?;
        if file.shop.trim().is_empty() {
            return Err(ShopFileError::Invalid { path: path.to_path_buf(), why: "`shop` is empty: name the shop id the connector is called with".into() });
        }
        file.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(file)
    }

    /// The shop as the connector sees it.
    pub fn shop_config(&self) -> Arc<ShopConfig> {
        Arc::new(ShopConfig {
            connector: "kit".into(),
            tier: Tier::A,
            poll_interval_secs: None,
            settings: self.settings.clone(),
            secrets: self.secrets.clone(),
        })
    }

    pub fn webhook(&self) -> Result<Option<WebhookFile>, ShopFileError> {
        let Some(rel) = &self.record.webhook else { return Ok(None) };
        let path = self.dir.join(rel);
        let text = std::fs::read_to_string(&path).map_err(|source| ShopFileError::Read { path: path.clone(), source })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ShopFileError::Invalid { path, why: format!("a webhook file is {{\"headers\": {{…}}, \"body\": \"…\"}}: {e}") })
    }
}
