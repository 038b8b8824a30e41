//! berth-kit, the vendor kit: `berth plugin inspect` describes a component, `berth plugin
//! test` runs the conformance suite against the simulator (`berth plugin …` runs the
//! `berth-kit` binary installed beside `berth`).
//!
//! Owns the scratch host and the conformance suite. Depends on the host crates and
//! berth-sim; nothing depends on it but benches, so `berth serve` links neither the kit
//! nor the simulator.
//!
//! Both run the component in a throwaway host (its own temporary data directory, the
//! same engine, capabilities and limits as `berth serve`), so what passes here is what
//! ops will load.

pub mod conformance;
pub mod record;
pub mod replay;
pub mod report;
pub mod shop_file;

use berth_capabilities::kv::KvStore;
use berth_host::config::Config;
use berth_capabilities::config::PlatformConfig;
use berth_types::connector::Manifest;
use berth_capabilities::services::HostServices;
use berth_runtime::{ComponentShape, ConnectorRuntime, LoadError, LoadedConnector};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot set up a scratch host in a temporary directory: {0}")]
    Scratch(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("unknown simulator platform `{0}`: use one of shopify, taobao, shopee, woo")]
    UnknownPlatform(String),
    #[error("cannot start the simulator: {0}")]
    Simulator(std::io::Error),
    #[error(transparent)]
    ShopFile(#[from] shop_file::ShopFileError),
    #[error(transparent)]
    Tape(#[from] berth_core::tape::TapeError),
}

/// A host of one's own for a component under test.
pub struct ScratchHost {
    pub runtime: Arc<ConnectorRuntime>,
    pub services: Arc<HostServices>,
    _store: berth_storage::Store,
    _dir: tempfile::TempDir,
}

impl ScratchHost {
    /// Private addresses are allowed: the simulator runs on loopback.
    pub fn new() -> Result<ScratchHost, PluginError> {
        Self::with_config("")
    }

    /// A scratch host with more berth.toml sections (e.g. `[runtime]` for a benchmark).
    pub fn with_config(extra: &str) -> Result<ScratchHost, PluginError> {
        let scratch = |e: &dyn std::fmt::Display| PluginError::Scratch(e.to_string());
        let dir = tempfile::tempdir().map_err(|e| scratch(&e))?;
        let text = format!("[server]\ndata_dir = {:?}\n[http]\nallow_private_addresses = true\n{extra}", dir.path().display().to_string());
        let cfg = Config::parse(&text, Path::new("<scratch host>")).map_err(|e| scratch(&e))?;
        let store = berth_storage::Store::open(&dir.path().join("store"), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() })
            .map_err(|e| scratch(&e))?;
        let kv = KvStore::open(&store).map_err(|e| scratch(&e))?;
        let metrics = berth_host::metrics::AllMetrics::new();
        let services = Arc::new(HostServices::new(&cfg.http, &cfg.platforms, cfg.retry_defaults(), kv, metrics.http).map_err(|e| scratch(&e))?);
        let runtime = ConnectorRuntime::new(&cfg.runtime, services.clone(), metrics.runtime, dir.path().join("compiled"))?;
        Ok(ScratchHost { runtime, services, _store: store, _dir: dir })
    }

    /// Load options granting no manifest host, only `extra_hosts`, with default limits.
    pub fn options<'a>(&self, extra_hosts: &'a [String]) -> berth_runtime::LoadOptions<'a> {
        berth_runtime::LoadOptions { platform: None, grants: Some(&[]), extra_hosts, allow_private: false, limits: self.runtime.limits(&Default::default()) }
    }

    /// No host-side limit for `platform`: what the suite sees is the platform's own
    /// throttling and the connector's answer to it.
    pub fn unlimited(&self, platform: &str) {
        let open = PlatformConfig::unlimited();
        self.services.reconfigure(&BTreeMap::from([(platform.to_string(), open)]));
    }
}

/// What `berth plugin inspect` found.
pub struct Inspection {
    pub path: PathBuf,
    pub bytes: usize,
    pub digest: String,
    pub shape: ComponentShape,
    /// The manifest, or why the host cannot load the component.
    pub loaded: Result<Manifest, LoadError>,
}

pub async fn inspect(path: &Path) -> Result<Inspection, PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_path_buf(), source })?;
    let host = ScratchHost::new()?;
    let shape = host.runtime.shape(path, &bytes).await?;
    let options = berth_runtime::LoadOptions { platform: None, grants: None, extra_hosts: &[], allow_private: false, limits: host.runtime.limits(&Default::default()) };
    let loaded = host.runtime.load_bytes("inspect", path, &bytes, &options).await.map(|c: LoadedConnector| c.manifest);
    Ok(Inspection { path: path.to_path_buf(), bytes: bytes.len(), digest: berth_runtime::digest(&bytes), shape, loaded })
}

impl Inspection {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "component  {}", self.path.display());
        let _ = writeln!(out, "size       {} bytes ({:.1} MiB)", self.bytes, self.bytes as f64 / 1_048_576.0);
        let _ = writeln!(out, "digest     sha256:{}", self.digest);
        let _ = writeln!(out, "WIT world  {}", self.shape.world_version.as_deref().map_or("none (imports no berth:connector interface)".to_string(), |v| format!("berth:connector@{v}")));
        match &self.loaded {
            Ok(m) => {
                let _ = writeln!(out, "manifest");
                let _ = writeln!(out, "  platform          {}", m.platform);
                let _ = writeln!(out, "  connector-version {}", m.connector_version);
                let _ = writeln!(out, "  wit-version       {}", m.wit_version);
                let caps: Vec<&str> = m.capabilities.iter().map(|c| c.name()).collect();
                let _ = writeln!(out, "  capabilities      {}", caps.join(", "));
                let hosts = if m.allowed_hosts.is_empty() { "(none: ops grant hosts with extra_hosts)".to_string() } else { m.allowed_hosts.join(", ") };
                let _ = writeln!(out, "  allowed-hosts     {hosts}");
                let rate = m.default_rate_limit;
                let rate = match rate.requests_per_minute {
                    0 => "none declared (no host-side bucket unless ops set one)".to_string(),
                    rpm => format!(
                        "{rpm} requests/min, burst {} (each shop's or app key's bucket unless ops set [platforms.{}] requests_per_second)",
                        rate.burst.max(1),
                        m.platform
                    ),
                };
                let _ = writeln!(out, "  rate limit        {rate}");
                let window = m.max_window_ms.map_or("unbounded".to_string(), |ms| format!("{} ms ({:.1} h)", ms, ms as f64 / 3_600_000.0));
                let _ = writeln!(out, "  max window        {window}");
                let _ = writeln!(out, "  required config   {}", m.required_config.join(", "));
            }
            Err(e) => {
                let _ = writeln!(out, "NOT LOADABLE: {e}");
            }
        }
        let _ = writeln!(out, "imports ({})", self.shape.imports.len());
        for i in &self.shape.imports {
            let _ = writeln!(out, "  {i}");
        }
        let _ = writeln!(out, "exports ({})", self.shape.exports.len());
        for e in &self.shape.exports {
            let _ = writeln!(out, "  {e}");
        }
        if !self.shape.other_exports.is_empty() {
            let _ = writeln!(out, "also exported, never called by berth (the toolchain's own) ({})", self.shape.other_exports.len());
            for e in &self.shape.other_exports {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}
