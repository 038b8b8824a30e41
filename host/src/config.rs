//! `berth.toml`, composed of the sections the parts of berth own (`[runtime]`:
//! runtime/config.rs, `[http]` and `[platforms]`: capabilities/config.rs, `[sync]`,
//! `[erp]`, `[stock]`, `[admin]`, `[health]`, `[alerts]`, `[credentials]`, `[connectors]` beside their
//! modules); `[server]` and the checks across sections are here.
//!
//! Parsing is strict (unknown keys are errors, so a typo cannot silently drop a setting)
//! and every error names the file, and where TOML can tell, the line.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_api::auth::AdminConfig;
use berth_capabilities::config::{HttpConfig, PlatformConfig};
use berth_core::delivery::ErpConfig;
use berth_core::registry::ConnectorConfig;
use berth_runtime::config::RuntimeConfig;
use berth_core::stock::StockConfig;
use berth_core::sync::SyncDefaults;
use berth_types::shop::ShopConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub sync: SyncDefaults,
    #[serde(default)]
    pub erp: ErpConfig,
    #[serde(default)]
    pub stock: StockConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Probes per tier, availability window and SLA targets.
    #[serde(default)]
    pub health: berth_core::health::HealthConfig,
    /// Alert rules and the webhooks they notify.
    #[serde(default)]
    pub alerts: berth_ops::alerts::AlertsConfig,
    /// The key that seals the credentials berth renews for shops, and how early.
    #[serde(default)]
    pub credentials: berth_core::credentials::CredentialsConfig,
    /// Nightly reconciliation of the platforms' quantities with the ERP's.
    #[serde(default)]
    pub reconcile: berth_core::reconcile::ReconcileConfig,
    /// Nightly snapshots (Parquet) and the fallback stock served from them.
    #[serde(default)]
    pub snapshots: berth_snapshot::SnapshotConfig,
    /// Host-side rate limits per platform id (the manifest's `platform`).
    #[serde(default)]
    pub platforms: BTreeMap<String, PlatformConfig>,
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    #[serde(default)]
    pub shops: BTreeMap<String, ShopConfig>,
    /// Cluster mode on NATS JetStream (docs/cluster.md): shops, orders, stock, connector
    /// state and the registry in the NATS cluster, shops run by the node holding their
    /// lease. `BERTH_NODE` in the environment names the node instead of `node`.
    #[serde(default)]
    pub cluster: Option<berth_cluster::ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the store keeps orders, queues, stock, cursors and connector state
    /// (`store/`), component files (`components/`), compiled components (`compiled/`)
    /// and the audit log.
    pub data_dir: PathBuf,
    /// Free space (MiB) berth leaves untouched on the data dir's filesystem: below it,
    /// writes are refused with 507 and `Retry-After`, reads go on, and writes resume by
    /// themselves once space is freed (see crates/berth-storage/src/space.rs).
    pub disk_reserve_mb: u64,
    /// Exit (status 3) when storage or the async runtime makes no progress for this long,
    /// so a supervisor restarts berth (see watchdog.rs); 0 disables.
    pub stall_exit_secs: u64,
    /// `GET /metrics` without a token (for a scraper that cannot send one); otherwise
    /// it needs a token of any role.
    pub metrics_public: bool,
    /// Listen on a non-loopback address with no `[admin] tokens`, so that anyone who
    /// reaches the port can lease, ack and purge orders: refused unless this says so on
    /// purpose (and then warned about at every start).
    pub insecure: bool,
    /// API connections open at once; past it the one idle longest is closed (see
    /// api/listener.rs). Keep it well under the process's file-descriptor limit.
    pub max_connections: u32,
    /// Time a client has to send a request's headers — and the longest a kept-alive
    /// connection may sit idle, and a TLS handshake take.
    pub header_read_timeout_secs: u64,
    /// PEM certificate chain and private key (paths relative to the config file): the
    /// API speaks HTTPS, and both files are read again when they change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The address merchants' browsers reach berth at (`https://berth.example.com`):
    /// platforms send a merchant who authorized the app back to
    /// `public_url/v1/oauth/CONNECTOR/callback`. Needed to onboard shops by OAuth.
    pub public_url: Option<String>,
}

impl ServerConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("server.tls_cert and server.tls_key go together: set both (PEM files) or neither".into());
        }
        if self.max_connections < 8 || !(1..=3600).contains(&self.header_read_timeout_secs) {
            return Err("server.max_connections must be at least 8 and server.header_read_timeout_secs 1..=3600".into());
        }
        if let Some(u) = &self.public_url {
            let parsed = url::Url::parse(u).map_err(|e| format!("server.public_url `{u}` is not a URL ({e}); write it like https://berth.example.com"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(format!("server.public_url `{u}` must be an http(s) address with no query or fragment"));
            }
        }
        Ok(())
    }

    /// Whether the API may answer callers without a token: only with no tokens at all,
    /// and only on loopback unless `insecure` says otherwise.
    pub fn open_without_tokens(&self) -> bool {
        self.listen.ip().is_loopback() || self.insecure
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            data_dir: "berth-data".into(),
            disk_reserve_mb: 64,
            stall_exit_secs: 60,
            metrics_public: false,
            insecure: false,
            max_connections: 512,
            header_read_timeout_secs: 10,
            tls_cert: None,
            tls_key: None,
            public_url: None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parse and check; relative paths are resolved against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        // One file for every node of a cluster: the node's name may come from its
        // environment instead.
        if let (Some(cluster), Ok(node)) = (&mut cfg.cluster, std::env::var("BERTH_NODE")) {
            cluster.node = node;
        }
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        cfg.resolve_paths(path.parent().unwrap_or(Path::new("")));
        cfg.check_sections().map_err(invalid)?;
        cfg.check_names().map_err(invalid)?;
        cfg.check_shops().map_err(invalid)?;
        cfg.check_onboarding().map_err(invalid)?;
        cfg.check_exposure().map_err(invalid)?;
        Ok(cfg)
    }

    /// The retry policies' job defaults: order pulls from `[sync]` (they keep trying
    /// unless a platform sets `max_attempts`), stock pushes from `[stock]`.
    pub fn retry_defaults(&self) -> berth_capabilities::retry::RetryDefaults {
        berth_capabilities::retry::RetryDefaults {
            pull: berth_types::retry::RetryPolicy::new(self.sync.retry_base_ms, self.sync.retry_max_ms, u32::MAX),
            push: berth_types::retry::RetryPolicy::new(self.stock.retry_base_ms, self.stock.retry_max_ms, self.stock.max_attempts),
        }
    }

    /// Paths in the file are relative to the file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        let files = [&mut self.server.data_dir].into_iter().chain([&mut self.server.tls_cert, &mut self.server.tls_key].into_iter().flatten());
        let keys = self.credentials.key_file.iter_mut().chain(self.credentials.previous_key_files.iter_mut());
        for file in files.chain(self.connectors.values_mut().map(|c| &mut c.component)).chain(keys) {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }

    /// Each section on its own, checked by the part of berth that owns it.
    fn check_sections(&self) -> Result<(), String> {
        self.server.check()?;
        self.runtime.check()?;
        self.http.check()?;
        for (name, c) in &self.connectors {
            self.runtime.check_connector(name, &c.limits)?;
        }
        berth_runtime::config::check_reservations(&self.runtime, self.connectors.iter().map(|(n, c)| (n.as_str(), &c.limits)))?;
        self.erp.check()?;
        self.sync.check()?;
        for (name, l) in &self.platforms {
            l.check().map_err(|e| format!("platforms.{name}: {e}"))?;
        }
        self.admin.check()?;
        self.health.check()?;
        self.alerts.rules()?;
        self.credentials.check()?;
        self.reconcile.schedule()?;
        if let Some(unknown) = self.reconcile.shops.iter().flatten().find(|s| !self.shops.contains_key(*s)) {
            return Err(format!("[reconcile] shops names `{unknown}`, which is not a configured shop"));
        }
        let snapshots = self.snapshots.schedule()?;
        self.snapshots.zone()?;
        if let Some(unknown) = self.snapshots.shops.iter().flatten().find(|s| !self.shops.contains_key(*s)) {
            return Err(format!("[snapshots] shops names `{unknown}`, which is not a configured shop"));
        }
        if self.reconcile.after_snapshot == Some(true) && snapshots.is_none() {
            return Err("[reconcile] after_snapshot = true but [snapshots] has no `at`: give the snapshots a time of day, or the reconciliation its own `at`".into());
        }
        let r = &self.reconcile;
        if r.at.is_none() && snapshots.is_none() && (r.tiers.is_some() || r.shops.is_some() || r.repair) {
            return Err("[reconcile] sets tiers, shops or repair but runs neither at its own time (`at`) nor after a nightly snapshot ([snapshots] `at`): give one of them".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            let max = berth_core::stock::cluster::MAX_SKUS_PER_CHANGE;
            if self.stock.batch_size > max {
                return Err(format!(
                    "stock.batch_size = {} with [cluster]: a push's results are written as one atomic batch of the cluster, at most {max} SKUs; set stock.batch_size to {max} or less",
                    self.stock.batch_size
                ));
            }
        }
        self.stock.check()
    }

    /// Connector, platform and shop names are ids: they go into keys, paths and labels.
    fn check_names(&self) -> Result<(), String> {
        for (name, c) in &self.connectors {
            if !valid_id(name) {
                return Err(format!("connector name `{name}` may only use a-z, 0-9, `-` and `_`"));
            }
            if c.platform.as_deref().is_some_and(|p| !valid_id(p)) {
                return Err(format!("connectors.{name}.platform may only use a-z, 0-9, `-` and `_`"));
            }
            if let Some(rec) = &c.record {
                // Each names a directory under data_dir/tapes/NAME.
                if let Some(shop) = rec.shops.iter().find(|s| !valid_id(s)) {
                    return Err(format!("connectors.{name}.record.shops: `{shop}` is not a shop name (a-z, 0-9, `-` and `_`)"));
                }
                if !(1..=1_048_576).contains(&rec.max_kb) {
                    return Err(format!("connectors.{name}.record.max_kb must be 1..=1048576 (1 GiB), not {}", rec.max_kb));
                }
            }
        }
        if let Some(name) = self.shops.keys().find(|n| !valid_id(n)) {
            return Err(format!("shop name `{name}` may only use a-z, 0-9, `-` and `_`"));
        }
        Ok(())
    }

    /// A connector that onboards shops by OAuth has where to send merchants back, a key
    /// to seal their credentials, and a template a shop can run on.
    fn check_onboarding(&self) -> Result<(), String> {
        for (name, c) in &self.connectors {
            let Some(t) = &c.onboarding else { continue };
            if self.server.public_url.is_none() {
                return Err(format!("connectors.{name}.onboarding needs server.public_url: the address merchants' browsers reach berth at, where the platform sends them back"));
            }
            if self.credentials.key_file.is_none() && self.credentials.key_env.is_none() {
                return Err(format!("connectors.{name}.onboarding needs [credentials] key_file or key_env: onboarded shops' tokens are kept sealed with it"));
            }
            if t.poll_interval_secs == Some(0) {
                return Err(format!("connectors.{name}.onboarding.poll_interval_secs must be at least 1"));
            }
            if let Some(k) = t.settings.keys().find(|k| t.secrets.contains_key(*k)) {
                return Err(format!("connectors.{name}.onboarding: `{k}` is both a setting and a secret; keep one"));
            }
        }
        Ok(())
    }

    /// Each shop names a defined connector and has what its platform's quota is keyed by.
    fn check_shops(&self) -> Result<(), String> {
        for (name, shop) in &self.shops {
            let Some(connector) = self.connectors.get(&shop.connector) else {
                let known: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
                return Err(format!(
                    "shop `{name}` uses connector `{}`, which is not defined; add [connectors.{}] or use one of: {}",
                    shop.connector,
                    shop.connector,
                    if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                ));
            };
            if shop.poll_interval_secs == Some(0) {
                return Err(format!("shop `{name}`: poll_interval_secs must be at least 1"));
            }
            if let Some(k) = shop.settings.keys().find(|k| shop.secrets.contains_key(*k)) {
                return Err(format!("shop `{name}`: `{k}` is both a setting and a secret; keep one"));
            }
            let platform = connector.platform_of(&shop.connector);
            if let Some(key) = self.platforms.get(platform).and_then(|p| p.quota_key.as_deref()) {
                if shop.value(key).is_none() {
                    return Err(format!(
                        "shop `{name}`: platform `{platform}` counts calls per `{key}` (its quota_key), and the shop has no `{key}`; add it under [shops.{name}.settings] (or .secrets), so berth knows whose quota its calls spend"
                    ));
                }
            }
        }
        Ok(())
    }

    /// An API anyone on the network can reach must have tokens, unless ops say otherwise.
    fn check_exposure(&self) -> Result<(), String> {
        if self.admin.tokens.is_empty() && !self.server.open_without_tokens() {
            return Err(format!(
                "server.listen is {}, not a loopback address, and no [admin] tokens are configured: anyone who reaches \
                 the port could lease, ack and purge orders. Add tokens (e.g. `{{ name = \"erp\", token = \"<openssl rand -hex 24>\", \
                 role = \"erp\" }}`), listen on 127.0.0.1, or set [server] insecure = true to run open on purpose",
                self.server.listen
            ));
        }
        Ok(())
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/berth/berth.toml"))
    }

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:9999"
        data_dir = "data"
        [connectors.shopify]
        component = "shopify.wasm"
        [shops.acme]
        connector = "shopify"
        tier = "A"
        settings = { base_url = "https://acme.myshopify.com" }
        secrets = { access_token = "shpat_x" }
    "#;

    #[test]
    fn parses_and_resolves_paths() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.server.data_dir, Path::new("/etc/berth/data"));
        assert_eq!(cfg.connectors["shopify"].component, Path::new("/etc/berth/shopify.wasm"));
        let shop = &cfg.shops["acme"];
        assert_eq!(shop.poll_interval_secs(), 30);
        assert_eq!(shop.value("access_token"), Some("shpat_x"));
        assert_eq!(shop.value("base_url"), Some("https://acme.myshopify.com"));
    }

    #[test]
    fn secrets_never_print() {
        let cfg = parse(GOOD).unwrap();
        let shown = format!("{:?}", cfg);
        assert!(!shown.contains("shpat_x"), "{shown}");
        assert!(shown.contains("access_token"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \n").unwrap_err().to_string();
        assert!(err.contains("/etc/berth/berth.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_keys_and_connectors_are_refused() {
        let err = parse("[server]\nlisen = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `lisen`"), "{err}");
        let err = parse("[shops.a]\nconnector = \"nope\"\n").unwrap_err().to_string();
        assert!(err.contains("connector `nope`, which is not defined"), "{err}");
        let err = parse("[connectors.Bad]\ncomponent = \"x.wasm\"\n").unwrap_err().to_string();
        assert!(err.contains("connector name `Bad`"), "{err}");
    }

    #[test]
    fn connector_limits_are_checked() {
        let rec = "[connectors.s]\ncomponent = \"s.wasm\"\n[connectors.s.record]\n";
        let err = parse(&format!("{rec}shops = [\"../etc\"]\n")).unwrap_err().to_string();
        assert!(err.contains("connectors.s.record.shops: `../etc` is not a shop name"), "{err}");
        let err = parse(&format!("{rec}shops = [\"acme\"]\nmax_kb = 0\n")).unwrap_err().to_string();
        assert!(err.contains("connectors.s.record.max_kb must be 1..=1048576"), "{err}");
        assert_eq!(parse(&format!("{rec}shops = [\"acme\"]\n")).unwrap().connectors["s"].record.as_ref().map(|r| r.max_kb), Some(16 * 1024));
        let c = "[connectors.s]\ncomponent = \"s.wasm\"\n[connectors.s.limits]\n";
        let err = parse(&format!("{c}max_concurrent_calls = 0\n")).unwrap_err().to_string();
        assert!(err.contains("connectors.s.limits: max_concurrent_calls must be at least 1"), "{err}");
        let err = parse(&format!("{c}max_memroy_mb = 8\n")).unwrap_err().to_string();
        assert!(err.contains("unknown field `max_memroy_mb`"), "{err}");
        let ok = parse(&format!("{c}max_memory_mb = 8\ncall_timeout_ms = 500\n")).unwrap();
        assert_eq!(ok.connectors["s"].limits.max_memory_mb, Some(8));
        let err = parse(&format!("[runtime]\nmeter_fuel = false\n{c}fuel_per_call = 9\n")).unwrap_err().to_string();
        assert!(err.contains("connectors.s.limits.fuel_per_call needs runtime.meter_fuel = true"), "{err}");
        let err = parse(&format!("{c}breaker_failure_percent = 0\n")).unwrap_err().to_string();
        assert!(err.contains("connectors.s.limits: breaker_failure_percent must be 1..=100"), "{err}");
        let err = parse("[runtime]\nbreaker_open_secs = 900\n").unwrap_err().to_string();
        assert!(err.contains("runtime: breaker_max_open_secs (600) must be at least breaker_open_secs (900)"), "{err}");
        assert!(parse(&format!("{c}breaker = false\nbreaker_failure_percent = 0\n")).is_ok(), "an unused breaker is not judged");
        let err = parse("[runtime]\nmax_memory_mb = 1\nkeep_resident_kb = 2048\n").unwrap_err().to_string();
        assert!(err.contains("runtime.keep_resident_kb (2048) is more than an instance's memory (max_memory_mb = 1); set it at most 1024"), "{err}");
        assert_eq!(parse("[runtime]\nkeep_resident_kb = 0\n").unwrap().runtime.keep_resident_kb, 0);
    }

    #[test]
    fn erp_and_stock_settings_are_checked() {
        let err = parse("[erp]\nwebhook_url = \"ftp://erp\"\n").unwrap_err().to_string();
        assert!(err.contains("erp.webhook_url `ftp://erp` must be an http:// or https:// URL"), "{err}");
        let err = parse("[stock]\nbatch_size = 0\n").unwrap_err().to_string();
        assert!(err.contains("stock.batch_size 1..=1000"), "{err}");
        let cluster = "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nmonitor = [\"http://127.0.0.1:8222\"]\nnode = \"n1\"\n";
        let err = parse(&format!("[stock]\nbatch_size = 1000\n{cluster}")).unwrap_err().to_string();
        assert!(err.contains("stock.batch_size = 1000 with [cluster]") && err.contains("set stock.batch_size to 999 or less"), "{err}");
        assert!(parse(&format!("[stock]\nbatch_size = 999\n{cluster}")).is_ok());
        let err = parse("[platforms.taobao]\nwindows = [\"Mon-Fry 09:00-21:00\"]\n").unwrap_err().to_string();
        assert!(err.contains("platforms.taobao: time window `Mon-Fry 09:00-21:00`"), "{err}");
        let err = parse("[platforms.taobao]\ntimezone = \"Asia/Shangai\"\n").unwrap_err().to_string();
        assert!(err.contains("platforms.taobao: timezone `Asia/Shangai` is neither an IANA zone name"), "{err}");
        assert!(parse("[platforms.taobao]\ntimezone = \"Asia/Shanghai\"\n").is_ok());
        let err = parse("[platforms.taobao.retry]\nretry_on = [\"transient\", \"flaky\"]\n").unwrap_err().to_string();
        assert!(err.contains("unknown variant `flaky`"), "{err}");
        let err = parse("[platforms.taobao.retry]\nbase_ms = 5000\nmax_ms = 10\n").unwrap_err().to_string();
        assert!(err.contains("platforms.taobao: retry.base_ms must be positive and not above retry.max_ms"), "{err}");
        let err = parse("[platforms.taobao.endpoints.stock]\nmatch = []\nrequests_per_second = 1.0\n").unwrap_err().to_string();
        assert!(err.contains("endpoints.stock: `match` needs at least one"), "{err}");
        let err = parse("[platforms.s.standby]\nprimary = \"http://a\"\nbackup = \"ftp://b\"\n").unwrap_err().to_string();
        assert!(err.contains("standby.backup `ftp://b` must be an http:// or https:// base URL"), "{err}");
        let err = parse("[admin]\ntokens = [{ name = \"ci\", token = \"short\", role = \"deployer\" }]\n").unwrap_err().to_string();
        assert!(err.contains("admin.tokens[0]: a token needs a name and at least 16 characters"), "{err}");
        let err = parse("[admin]\ntokens = [{ name = \"ci\", token = \"0123456789abcdef\", role = \"root\" }]\n").unwrap_err().to_string();
        assert!(err.contains("unknown variant `root`"), "{err}");
        let ok = parse("[admin]\ntokens = [{ name = \"ci\", token = \"0123456789abcdef\", role = \"deployer\" }]\n").unwrap();
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
        let cfg = parse("[erp]\nwebhook_url = \"https://erp.example/hook\"\nwebhook_secret = \"k3y\"\n").unwrap();
        assert!(!format!("{cfg:?}").contains("k3y"));
    }

    #[test]
    fn quotas_hosts_and_instance_reservations_are_checked() {
        let shops = "[connectors.taobao]\ncomponent = \"t.wasm\"\n[shops.a]\nconnector = \"taobao\"\nsettings = { app_key = \"K\" }\n[shops.b]\nconnector = \"taobao\"\n";
        let err = parse(&format!("[platforms.taobao]\nquota_key = \"app_key\"\n{shops}")).unwrap_err().to_string();
        assert!(err.contains("shop `b`: platform `taobao` counts calls per `app_key` (its quota_key), and the shop has no `app_key`"), "{err}");
        assert!(parse(shops).is_ok(), "no quota_key, no need");
        // The platform is the connector's, as ops bound it (its name by default).
        let bound = "[platforms.woocommerce]\nquota_key = \"site\"\n[connectors.woo-js]\nplatform = \"woocommerce\"\ncomponent = \"w.wasm\"\n[shops.s]\nconnector = \"woo-js\"\n";
        assert!(parse(bound).unwrap_err().to_string().contains("platform `woocommerce` counts calls per `site`"));
        assert_eq!(parse(&bound.replace("[shops.s]\nconnector = \"woo-js\"\n", "")).unwrap().connectors["woo-js"].platform_of("woo-js"), "woocommerce");
        let err = parse("[connectors.x]\nplatform = \"Evil Mart\"\ncomponent = \"x.wasm\"\n").unwrap_err().to_string();
        assert!(err.contains("connectors.x.platform may only use"), "{err}");
        let err = parse("[platforms.taobao]\nhosts = [\"eco.taobao.com:http\"]\n").unwrap_err().to_string();
        assert!(err.contains("platforms.taobao: hosts: host pattern `eco.taobao.com:http`"), "{err}");
        assert!(parse("[platforms.taobao]\nhosts = [\"*.taobao.com\", \"127.0.0.1:9100/taobao\"]\nmax_hold_secs = 60\n").is_ok());
        let err = parse("[platforms.taobao]\nmax_hold_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("max_hold_secs must be at least 1"), "{err}");
        let c = |name: &str, reserved: u32| format!("[connectors.{name}]\ncomponent = \"{name}.wasm\"\n[connectors.{name}.limits]\nreserved_instances = {reserved}\n");
        let err = parse(&format!("[runtime]\nmax_instances = 10\n{}{}", c("a", 6), c("b", 5))).unwrap_err().to_string();
        assert!(err.contains("connectors reserve 11 instance slots (a 6, b 5), more than runtime.max_instances (10)"), "{err}");
        let err = parse(&format!("[runtime]\nmax_instances = 10\n{}{}[connectors.c]\ncomponent = \"c.wasm\"\n", c("a", 5), c("b", 5))).unwrap_err().to_string();
        assert!(err.contains("the 1 connectors without a reservation need at least one each"), "{err}");
        assert!(parse(&format!("[runtime]\nmax_instances = 10\n{}{}", c("a", 5), c("b", 5))).is_ok());
        let err = parse(&format!("{}max_concurrent_calls = 2\n", c("a", 3))).unwrap_err().to_string();
        assert!(err.contains("reserved_instances (3) is more than its max_concurrent_calls (2)"), "{err}");
    }
}
