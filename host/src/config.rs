//! `berth.toml`: listen address, data dir, runtime limits, connectors and shops.
//!
//! Parsing is strict (unknown keys are errors, so a typo cannot silently drop a setting)
//! and every error names the file, and where TOML can tell, the line.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use berth_types::access::{Access, Role};
pub use berth_types::retry::RetryOverrides;
pub use berth_types::shop::{ShopConfig, Tier};
pub use berth_types::Secret;

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
    pub health: crate::health::HealthConfig,
    /// Alert rules and the webhooks they notify.
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// Host-side rate limits per platform id (the manifest's `platform`).
    #[serde(default)]
    pub platforms: BTreeMap<String, PlatformConfig>,
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    #[serde(default)]
    pub shops: BTreeMap<String, ShopConfig>,
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
}

impl ServerConfig {
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Wall-clock deadline of one connector call.
    pub call_timeout_ms: u64,
    /// Deadline of a webhook call (the platform waits seconds for its answer; a call
    /// past it counts against the connector's circuit breaker).
    pub webhook_timeout_ms: u64,
    /// Webhook calls of one shop running at once; more are answered 429 at once.
    pub max_webhook_calls_per_shop: u32,
    /// Linear-memory cap per instance.
    pub max_memory_mb: u32,
    /// Instances alive at once across all connectors (pooling allocator slots).
    pub max_instances: u32,
    /// Memory of each pooled instance slot kept mapped between calls: only the pages the
    /// last call dirtied, reset with memset, so the next call does not page-fault them
    /// back in (a fresh Rust instance costs about a third as much). Costs up to this
    /// much RSS per slot in use; 0 hands every slot back with madvise after each call.
    pub keep_resident_kb: u32,
    /// Count fuel (about one unit per WebAssembly instruction) on every call and export
    /// it. Costs CPU in guest code (10–35% in the languages bench) and compile time;
    /// off, `fuel_per_call` cannot be set.
    pub meter_fuel: bool,
    /// Fuel one call may burn before it traps (`out_of_fuel`); no limit when absent.
    pub fuel_per_call: Option<u64>,
    /// Calls of one connector version running at once; more wait their turn within
    /// their deadline.
    pub max_concurrent_calls: u32,
    /// Log output one call may write (the log import and stdout/stderr together); the
    /// rest is dropped and counted.
    pub max_log_bytes_per_call: u64,
    /// Log output a connector may write per minute, all its calls together; the rest
    /// of the minute is dropped and counted.
    pub max_log_bytes_per_minute: u64,
    /// Orders (or webhook events) one call may return.
    pub max_orders_per_page: u32,
    /// Bytes of orders one call may return.
    pub max_output_bytes: u64,
    /// An order's raw platform JSON kept at most this long; a longer one is replaced by
    /// a note of its size (the order itself is kept) and counted.
    pub max_raw_json_bytes: u64,
    /// Lines one order may have; a page with a longer order is refused.
    pub max_lines_per_order: u32,
    /// Events one webhook call may return; more and the call is refused (503).
    pub max_events_per_webhook: u32,
    /// New order versions stored per shop in any hour (pulls and webhooks together);
    /// past it the shop's intake pauses until the hour has room, and an alert names it.
    pub max_orders_per_shop_per_hour: u32,
    /// State bytes (keys and values, overwrites included) one connector may write per
    /// shop per minute.
    pub max_kv_write_bytes_per_minute: u64,
    /// Isolate a connector version whose calls keep failing in the sandbox (see
    /// runtime/breaker.rs): at least `breaker_failure_percent` of at least
    /// `breaker_min_calls` calls within `breaker_window_secs`. Isolated for
    /// `breaker_open_secs`, then one trial call; each failed trial doubles the wait up
    /// to `breaker_max_open_secs`.
    pub breaker: bool,
    pub breaker_window_secs: u64,
    pub breaker_min_calls: u32,
    pub breaker_failure_percent: u8,
    pub breaker_open_secs: u64,
    pub breaker_max_open_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            call_timeout_ms: 30_000,
            webhook_timeout_ms: 5_000,
            max_webhook_calls_per_shop: 4,
            max_memory_mb: 64,
            max_instances: 64,
            keep_resident_kb: 1024,
            meter_fuel: true,
            fuel_per_call: None,
            max_concurrent_calls: 32,
            max_log_bytes_per_call: 64 * 1024,
            max_log_bytes_per_minute: 1024 * 1024,
            max_orders_per_page: 1000,
            max_output_bytes: 16 * 1024 * 1024,
            max_raw_json_bytes: 256 * 1024,
            max_lines_per_order: 1000,
            max_events_per_webhook: 100,
            max_orders_per_shop_per_hour: 50_000,
            max_kv_write_bytes_per_minute: 4 * 1024 * 1024,
            breaker: true,
            breaker_window_secs: 60,
            breaker_min_calls: 5,
            breaker_failure_percent: 50,
            breaker_open_secs: 30,
            breaker_max_open_secs: 600,
        }
    }
}

/// `[connectors.X.limits]`: this connector's own limits; `[runtime]`'s where absent.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub call_timeout_ms: Option<u64>,
    pub webhook_timeout_ms: Option<u64>,
    pub max_webhook_calls_per_shop: Option<u32>,
    /// Instance slots kept for this connector alone; by default an even share of the
    /// slots no connector reserved. All reservations together fit `runtime.max_instances`.
    pub reserved_instances: Option<u32>,
    /// At most `runtime.max_memory_mb` (the engine's pool is sized by it).
    pub max_memory_mb: Option<u32>,
    pub fuel_per_call: Option<u64>,
    pub max_concurrent_calls: Option<u32>,
    pub max_log_bytes_per_call: Option<u64>,
    pub max_log_bytes_per_minute: Option<u64>,
    pub max_orders_per_page: Option<u32>,
    pub max_output_bytes: Option<u64>,
    pub max_raw_json_bytes: Option<u64>,
    pub max_lines_per_order: Option<u32>,
    pub max_events_per_webhook: Option<u32>,
    pub max_orders_per_shop_per_hour: Option<u32>,
    pub max_kv_write_bytes_per_minute: Option<u64>,
    pub breaker: Option<bool>,
    pub breaker_window_secs: Option<u64>,
    pub breaker_min_calls: Option<u32>,
    pub breaker_failure_percent: Option<u8>,
    pub breaker_open_secs: Option<u64>,
    pub breaker_max_open_secs: Option<u64>,
}

impl LimitOverrides {
    fn check(&self, rt: &RuntimeConfig) -> Result<(), String> {
        let zero = [
            ("call_timeout_ms", self.call_timeout_ms == Some(0)),
            ("webhook_timeout_ms", self.webhook_timeout_ms == Some(0)),
            ("max_webhook_calls_per_shop", self.max_webhook_calls_per_shop == Some(0)),
            ("max_memory_mb", self.max_memory_mb == Some(0)),
            ("fuel_per_call", self.fuel_per_call == Some(0)),
            ("max_concurrent_calls", self.max_concurrent_calls == Some(0)),
            ("max_orders_per_page", self.max_orders_per_page == Some(0)),
            ("max_output_bytes", self.max_output_bytes == Some(0)),
            ("max_lines_per_order", self.max_lines_per_order == Some(0)),
            ("max_events_per_webhook", self.max_events_per_webhook == Some(0)),
            ("max_orders_per_shop_per_hour", self.max_orders_per_shop_per_hour == Some(0)),
            ("max_kv_write_bytes_per_minute", self.max_kv_write_bytes_per_minute == Some(0)),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!("{name} must be at least 1"));
        }
        if let Some(mb) = self.max_memory_mb.filter(|mb| *mb > rt.max_memory_mb) {
            return Err(format!("max_memory_mb {mb} is above runtime.max_memory_mb ({}), which sizes the engine's memory pool; raise that too", rt.max_memory_mb));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Per-request timeout; a connector may ask for less, never more.
    pub timeout_ms: u64,
    pub max_response_bytes: u64,
    /// Let connectors reach loopback, private and link-local addresses. Only for tests
    /// and demos against a local simulator.
    pub allow_private_addresses: bool,
    /// Ports beyond 80 and 443 connectors may call (a platform's API on 8443, say); a
    /// connector allowed private addresses (a local sandbox) may call any port.
    pub allowed_ports: Vec<u16>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { timeout_ms: 15_000, max_response_bytes: 8 * 1024 * 1024, allow_private_addresses: false, allowed_ports: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncDefaults {
    /// How far back the first pull of a new shop reaches.
    pub initial_lookback_hours: u32,
    /// Each window starts this far before the last one ended, to catch late updates.
    pub overlap_secs: u32,
    /// The newest edge of a window stays this far behind now, so a platform's own
    /// write lag does not hide an order at the edge.
    pub settle_secs: u32,
    /// Backoff for transient errors: base doubling up to max, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Pause after an auth or permanent error before trying again.
    pub error_pause_secs: u64,
    /// Pages one window may take; a connector whose cursor has not ended by then fails
    /// the window (its cursor does not end) and the window starts over after a pause.
    pub max_pages_per_window: u32,
}

impl Default for SyncDefaults {
    fn default() -> Self {
        SyncDefaults {
            initial_lookback_hours: 72,
            overlap_secs: 120,
            settle_secs: 2,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            error_pause_secs: 60,
            max_pages_per_window: 2000,
        }
    }
}

/// How the ERP receives orders from the inbound queue: it leases them over HTTP, and/or
/// berth posts them to `webhook_url`. Each queued order goes to one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErpConfig {
    /// Leases (or webhook deliveries) of one order before it moves to the dead letters.
    pub max_attempts: u32,
    /// Idempotency keys of the order queue are forgotten after this long.
    pub idempotency_ttl_hours: u64,
    /// Post new orders here (JSON `{"orders": [...]}`); 2xx acknowledges the batch.
    pub webhook_url: Option<String>,
    /// Signs each delivery: `X-Berth-Signature: sha256=HEX(HMAC-SHA256(secret, "{X-Berth-Timestamp}.{body}"))`.
    pub webhook_secret: Option<Secret>,
    /// Orders per delivery.
    pub webhook_batch: usize,
    pub webhook_timeout_ms: u64,
    /// Backoff after a failed delivery: base doubling up to max, with jitter.
    pub webhook_retry_base_ms: u64,
    pub webhook_retry_max_ms: u64,
    /// Bytes of orders one answer carries (`GET /v1/orders`, a lease, a webhook
    /// delivery), at least one order; read on with `next_after` or another lease.
    pub max_response_bytes: u64,
}

impl Default for ErpConfig {
    fn default() -> Self {
        ErpConfig {
            max_attempts: 20,
            idempotency_ttl_hours: 168,
            webhook_url: None,
            webhook_secret: None,
            webhook_batch: 50,
            webhook_timeout_ms: 10_000,
            webhook_retry_base_ms: 1_000,
            webhook_retry_max_ms: 300_000,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// How the host calls one platform (the manifest's `platform` id): rate limits, endpoint
/// classes, throttle learning, retry policy, allowed hours and a hot-standby channel.
/// Everything here is reloaded with the file and applies to the next call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// No limit when absent.
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once after a quiet spell.
    #[serde(default = "one")]
    pub burst: u32,
    /// Shop setting naming the credential the platform counts calls against (e.g.
    /// `app_key`: every shop on one app key shares one bucket); per shop when absent.
    /// A shop of the platform without the setting is refused, naming it.
    pub quota_key: Option<String>,
    /// Where this platform's API is: `host`, `*.suffix`, optionally `:port` and a
    /// `/path` prefix. A request to one of them counts against this platform's buckets
    /// whichever connector sends it. The hosts its connectors' manifests declare when
    /// absent.
    pub hosts: Option<Vec<String>>,
    /// The longest hold a connector's `rate-limited(ms)` (or a platform's wait) may put
    /// on a quota; `retry.suspend_after_throttle_secs` is ops' own and may be longer.
    #[serde(default = "default_max_hold")]
    pub max_hold_secs: u64,
    /// Limits per endpoint class, on top of the platform's own (e.g. stock writes slower
    /// than order reads). Keyed by class name.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointClass>,
    /// Read Shopify's `X-Shopify-Shop-Api-Call-Limit: used/size` on every answer and hold
    /// the shop's calls before the platform's bucket fills, instead of waiting for a 429.
    #[serde(default = "yes")]
    pub call_limit_header: bool,
    /// How fast that bucket drains, calls per second; `requests_per_second` when absent,
    /// else Shopify's standard 2.
    pub call_limit_leak_per_second: Option<f64>,
    /// When calls are allowed, e.g. `["Mon-Fri 09:00-21:00"]`; always when empty.
    #[serde(default)]
    pub windows: Vec<String>,
    /// The windows' time zone: an IANA name (`Asia/Shanghai`) or a UTC offset (`+08:00`); UTC when absent.
    pub timezone: Option<String>,
    /// Retry policy for this platform's pulls and pushes; `[sync]`/`[stock]` fill the gaps.
    #[serde(default)]
    pub retry: RetryOverrides,
    /// A second channel to the same API, used while the first one is unhealthy.
    pub standby: Option<StandbyConfig>,
}

impl PlatformConfig {
    /// No host-side limit, window or call-limit pacing: the platform's own throttling is
    /// all a connector meets (the conformance kit's view).
    pub fn unlimited() -> PlatformConfig {
        PlatformConfig {
            requests_per_second: None,
            burst: 1,
            quota_key: None,
            hosts: None,
            max_hold_secs: DEFAULT_MAX_HOLD_SECS,
            endpoints: BTreeMap::new(),
            call_limit_header: false,
            call_limit_leak_per_second: None,
            windows: Vec::new(),
            timezone: None,
            retry: RetryOverrides::default(),
            standby: None,
        }
    }
}

/// Requests matching any pattern share this class's own bucket (keyed like the
/// platform's). A pattern starting with `/` is matched against the URL path, any other
/// against the API method named in a `method` query or form parameter (TOP-style
/// routers, e.g. `taobao.item.quantity.update`). `*` matches any run of characters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointClass {
    #[serde(rename = "match")]
    pub patterns: Vec<String>,
    pub requests_per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
}

/// Hot standby: calls a connector makes to `primary` go to `backup` while the primary
/// fails its health checks, and back when it recovers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// Base URLs (scheme, host, port and optional path prefix) of the two channels.
    pub primary: String,
    pub backup: String,
    /// Path probed on each channel; any answer below 500 counts as healthy.
    #[serde(default = "slash")]
    pub health_path: String,
    #[serde(default = "five_seconds")]
    pub check_interval_ms: u64,
    /// Failed checks in a row before the calls move to the backup.
    #[serde(default = "two")]
    pub fail_after: u32,
    /// Good checks of the primary in a row before the calls move back.
    #[serde(default = "three")]
    pub recover_after: u32,
}

/// How long a hold a connector or a platform may ask for, by default: five minutes.
pub const DEFAULT_MAX_HOLD_SECS: u64 = 300;

fn default_max_hold() -> u64 {
    DEFAULT_MAX_HOLD_SECS
}

fn yes() -> bool {
    true
}
fn slash() -> String {
    "/".into()
}
fn five_seconds() -> u64 {
    5_000
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

fn one() -> u32 {
    1
}

/// Outbound stock pushes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StockConfig {
    /// Failed pushes of one quantity before the SKU moves to the dead letters.
    pub max_attempts: u32,
    /// SKUs handed to one `push-inventory` call.
    pub batch_size: usize,
    /// Backoff between failed pushes of a SKU: base doubling up to max, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for StockConfig {
    fn default() -> Self {
        StockConfig { max_attempts: 10, batch_size: 50, retry_base_ms: 1_000, retry_max_ms: 300_000 }
    }
}

/// Who may call the API: the ERP, people reading status, ops under `/v1/admin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer tokens, each with a role. With none, `/v1/admin` refuses every call and
    /// the rest of the API answers without a token — allowed on a loopback listener
    /// only (or with `[server] insecure = true`). With any, every call but `/healthz`,
    /// `/readyz` and platform webhooks needs one.
    pub tokens: Vec<AdminToken>,
    /// Largest component a deploy takes.
    pub max_component_mb: u32,
    /// Refused attempts without a valid token written to the audit log one by one per
    /// minute; the rest are counted in one entry (and in `berth_api_refused_total`).
    pub max_unauthenticated_audits_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { tokens: Vec::new(), max_component_mb: 32, max_unauthenticated_audits_per_minute: 60 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it: written to the audit log with every change it makes.
    pub name: String,
    pub token: Secret,
    pub role: Role,
    /// The shops this token may see and change (exact names, or a prefix ending in `*`:
    /// `["acme-*", "globex"]`): one ERP vendor's merchant, in a berth serving many. Its
    /// leases come from those shops' queue partitions only, every call naming another
    /// shop answers 404, and whole-host views (metrics, alerts, the dashboard's status,
    /// platforms, connectors, the feed's counters) are not for it. All shops when absent.
    #[serde(default)]
    pub shops: Option<Vec<String>>,
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
}

impl ConnectorConfig {
    /// The platform connector `name` serves: as configured, else its name.
    pub fn platform_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.platform.as_deref().unwrap_or(name)
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
        let mut cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        if cfg.server.data_dir.is_relative() {
            cfg.server.data_dir = base.join(&cfg.server.data_dir);
        }
        for file in [&mut cfg.server.tls_cert, &mut cfg.server.tls_key].into_iter().flatten() {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if cfg.server.tls_cert.is_some() != cfg.server.tls_key.is_some() {
            return Err(invalid("server.tls_cert and server.tls_key go together: set both (PEM files) or neither".into()));
        }
        if cfg.server.max_connections < 8 || !(1..=3600).contains(&cfg.server.header_read_timeout_secs) {
            return Err(invalid("server.max_connections must be at least 8 and server.header_read_timeout_secs 1..=3600".into()));
        }
        for (name, c) in cfg.connectors.iter_mut() {
            if !valid_id(name) {
                return Err(invalid(format!(
                    "connector name `{name}` may only use a-z, 0-9, `-` and `_`"
                )));
            }
            if c.component.is_relative() {
                c.component = base.join(&c.component);
            }
            if c.platform.as_deref().is_some_and(|p| !valid_id(p)) {
                return Err(invalid(format!("connectors.{name}.platform may only use a-z, 0-9, `-` and `_`")));
            }
        }
        for (name, shop) in &cfg.shops {
            if !valid_id(name) {
                return Err(invalid(format!("shop name `{name}` may only use a-z, 0-9, `-` and `_`")));
            }
            if !cfg.connectors.contains_key(&shop.connector) {
                let known: Vec<&str> = cfg.connectors.keys().map(String::as_str).collect();
                return Err(invalid(format!(
                    "shop `{name}` uses connector `{}`, which is not defined; add [connectors.{}] or use one of: {}",
                    shop.connector,
                    shop.connector,
                    if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                )));
            }
            if shop.poll_interval_secs == Some(0) {
                return Err(invalid(format!("shop `{name}`: poll_interval_secs must be at least 1")));
            }
            if let Some(k) = shop.settings.keys().find(|k| shop.secrets.contains_key(*k)) {
                return Err(invalid(format!("shop `{name}`: `{k}` is both a setting and a secret; keep one")));
            }
            let platform = cfg.connectors[&shop.connector].platform_of(&shop.connector);
            if let Some(key) = cfg.platforms.get(platform).and_then(|p| p.quota_key.as_deref()) {
                if shop.value(key).is_none() {
                    return Err(invalid(format!(
                        "shop `{name}`: platform `{platform}` counts calls per `{key}` (its quota_key), and the shop has no `{key}`; add it under [shops.{name}.settings] (or .secrets), so berth knows whose quota its calls spend"
                    )));
                }
            }
        }
        if cfg.runtime.call_timeout_ms == 0 || cfg.http.timeout_ms == 0 {
            return Err(invalid("runtime.call_timeout_ms and http.timeout_ms must be positive".into()));
        }
        if cfg.runtime.fuel_per_call == Some(0) {
            return Err(invalid("runtime.fuel_per_call must be at least 1 (leave it out for no limit)".into()));
        }
        let rt = &cfg.runtime;
        if rt.max_concurrent_calls == 0
            || rt.max_orders_per_page == 0
            || rt.max_output_bytes == 0
            || rt.max_lines_per_order == 0
            || rt.max_events_per_webhook == 0
            || rt.max_orders_per_shop_per_hour == 0
            || rt.max_kv_write_bytes_per_minute == 0
        {
            return Err(invalid("runtime.max_concurrent_calls, max_orders_per_page, max_output_bytes, max_lines_per_order, max_events_per_webhook, max_orders_per_shop_per_hour and max_kv_write_bytes_per_minute must be at least 1".into()));
        }
        crate::runtime::limits::ConnectorLimits::resolve(rt, &LimitOverrides::default())
            .breaker
            .check()
            .map_err(|e| invalid(format!("runtime: {e}")))?;
        for (name, c) in &cfg.connectors {
            c.limits.check(rt).map_err(|e| invalid(format!("connectors.{name}.limits: {e}")))?;
            crate::runtime::limits::ConnectorLimits::resolve(rt, &c.limits)
                .breaker
                .check()
                .map_err(|e| invalid(format!("connectors.{name}.limits: {e}")))?;
            if !rt.meter_fuel && c.limits.fuel_per_call.is_some() {
                return Err(invalid(format!("connectors.{name}.limits.fuel_per_call needs runtime.meter_fuel = true")));
            }
        }
        if rt.webhook_timeout_ms == 0 || rt.max_webhook_calls_per_shop == 0 {
            return Err(invalid("runtime.webhook_timeout_ms and runtime.max_webhook_calls_per_shop must be at least 1".into()));
        }
        check_reservations(&cfg).map_err(invalid)?;
        if !rt.meter_fuel && rt.fuel_per_call.is_some() {
            return Err(invalid("runtime.fuel_per_call needs runtime.meter_fuel = true".into()));
        }
        if cfg.runtime.max_instances == 0 || cfg.runtime.max_memory_mb == 0 {
            return Err(invalid("runtime.max_instances and runtime.max_memory_mb must be positive".into()));
        }
        if u64::from(cfg.runtime.keep_resident_kb) > u64::from(cfg.runtime.max_memory_mb) * 1024 {
            return Err(invalid(format!(
                "runtime.keep_resident_kb ({}) is more than an instance's memory (max_memory_mb = {}); set it at most {}",
                cfg.runtime.keep_resident_kb,
                cfg.runtime.max_memory_mb,
                u64::from(cfg.runtime.max_memory_mb) * 1024
            )));
        }
        if cfg.erp.max_attempts == 0 {
            return Err(invalid("erp.max_attempts must be at least 1".into()));
        }
        if let Some(u) = &cfg.erp.webhook_url {
            let ok = url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
            if !ok {
                return Err(invalid(format!("erp.webhook_url `{u}` must be an http:// or https:// URL")));
            }
        }
        if cfg.erp.max_response_bytes < 1024 {
            return Err(invalid("erp.max_response_bytes must be at least 1024".into()));
        }
        if cfg.sync.max_pages_per_window == 0 {
            return Err(invalid("sync.max_pages_per_window must be at least 1".into()));
        }
        if cfg.erp.idempotency_ttl_hours == 0 {
            return Err(invalid("erp.idempotency_ttl_hours must be at least 1".into()));
        }
        if !(1..=1000).contains(&cfg.erp.webhook_batch) || cfg.erp.webhook_timeout_ms == 0 {
            return Err(invalid("erp.webhook_batch must be 1..=1000 and erp.webhook_timeout_ms positive".into()));
        }
        if cfg.erp.webhook_retry_base_ms == 0 || cfg.erp.webhook_retry_max_ms < cfg.erp.webhook_retry_base_ms {
            return Err(invalid("erp.webhook_retry_base_ms must be positive and not above erp.webhook_retry_max_ms".into()));
        }
        if cfg.sync.retry_base_ms == 0 || cfg.sync.retry_max_ms < cfg.sync.retry_base_ms {
            return Err(invalid("sync.retry_base_ms must be positive and not above sync.retry_max_ms".into()));
        }
        for (name, l) in &cfg.platforms {
            check_platform(l).map_err(|e| invalid(format!("platforms.{name}: {e}")))?;
        }
        for (i, t) in cfg.admin.tokens.iter().enumerate() {
            if t.name.is_empty() || t.token.expose().len() < 16 {
                return Err(invalid(format!(
                    "admin.tokens[{i}]: a token needs a name and at least 16 characters (e.g. `openssl rand -hex 24`)"
                )));
            }
            if cfg.admin.tokens[..i].iter().any(|o| o.name == t.name || o.token.expose() == t.token.expose()) {
                return Err(invalid(format!("admin.tokens[{i}] (`{}`): names and tokens must be unique", t.name)));
            }
        }
        if cfg.admin.tokens.is_empty() && !cfg.server.open_without_tokens() {
            return Err(invalid(format!(
                "server.listen is {}, not a loopback address, and no [admin] tokens are configured: anyone who reaches \
                 the port could lease, ack and purge orders. Add tokens (e.g. `{{ name = \"erp\", token = \"<openssl rand -hex 24>\", \
                 role = \"erp\" }}`), listen on 127.0.0.1, or set [server] insecure = true to run open on purpose",
                cfg.server.listen
            )));
        }
        for t in &cfg.admin.tokens {
            let Some(shops) = &t.shops else { continue };
            let pattern_ok = |p: &String| {
                let name = p.strip_suffix('*').unwrap_or(p);
                !p.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
            };
            if shops.is_empty() || !shops.iter().all(pattern_ok) {
                return Err(invalid(format!(
                    "admin.tokens `{}`: shops must list shop names or prefixes ending in `*` (e.g. [\"acme-*\", \"globex\"])",
                    t.name
                )));
            }
            if !matches!(t.role, Role::Erp | Role::Viewer | Role::Operator) {
                return Err(invalid(format!(
                    "admin.tokens `{}`: a token scoped to shops may have role erp, viewer or operator; deploys and the audit log concern every shop",
                    t.name
                )));
            }
        }
        if cfg.admin.max_component_mb == 0 {
            return Err(invalid("admin.max_component_mb must be at least 1".into()));
        }
        cfg.health.check().map_err(invalid)?;
        cfg.alerts.rules().map_err(invalid)?;
        if cfg.stock.max_attempts == 0 || !(1..=1000).contains(&cfg.stock.batch_size) {
            return Err(invalid("stock.max_attempts must be at least 1 and stock.batch_size 1..=1000".into()));
        }
        if cfg.stock.retry_base_ms == 0 || cfg.stock.retry_max_ms < cfg.stock.retry_base_ms {
            return Err(invalid("stock.retry_base_ms must be positive and not above stock.retry_max_ms".into()));
        }
        Ok(cfg)
    }
}

/// Reserved instance slots must fit the pool, leave every other connector at least one
/// and not exceed what the connector may use at once.
fn check_reservations(cfg: &Config) -> Result<(), String> {
    let rt = &cfg.runtime;
    let mut reserved = Vec::new();
    for (name, c) in &cfg.connectors {
        let Some(n) = c.limits.reserved_instances else { continue };
        let max = c.limits.max_concurrent_calls.unwrap_or(rt.max_concurrent_calls);
        if n > max {
            return Err(format!("connectors.{name}.limits.reserved_instances ({n}) is more than its max_concurrent_calls ({max}) lets it use"));
        }
        reserved.push((name.as_str(), n));
    }
    let sum: u64 = reserved.iter().map(|(_, n)| u64::from(*n)).sum();
    let others = cfg.connectors.len() - reserved.len();
    let need = sum + others as u64;
    if need > u64::from(rt.max_instances) {
        let parts: Vec<String> = reserved.iter().map(|(name, n)| format!("{name} {n}")).collect();
        return Err(format!(
            "connectors reserve {sum} instance slots ({}){}, more than runtime.max_instances ({}) holds; lower reserved_instances or raise max_instances",
            parts.join(", "),
            if others > 0 { format!(" and the {others} connectors without a reservation need at least one each") } else { String::new() },
            rt.max_instances
        ));
    }
    Ok(())
}

fn rate(what: &str, r: f64, burst: u32) -> Result<(), String> {
    if !(r.is_finite() && r > 0.0 && r <= 100_000.0) || burst == 0 {
        return Err(format!("{what}requests_per_second must be in (0, 100000] and burst at least 1"));
    }
    Ok(())
}

fn base_url(what: &str, u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.query().is_none() => Ok(()),
        _ => Err(format!("standby.{what} `{u}` must be an http:// or https:// base URL without a query")),
    }
}

fn check_platform(l: &PlatformConfig) -> Result<(), String> {
    rate("", l.requests_per_second.unwrap_or(1.0), l.burst)?;
    for h in l.hosts.iter().flatten() {
        crate::capabilities::ratelimit::Destination::parse(h).map_err(|e| format!("hosts: {e}"))?;
    }
    if l.hosts.as_ref().is_some_and(Vec::is_empty) {
        return Err("hosts is empty; list the platform's API hosts, or leave it out to take its connectors' manifests".into());
    }
    if l.max_hold_secs == 0 {
        return Err("max_hold_secs must be at least 1".into());
    }
    for (class, e) in &l.endpoints {
        rate(&format!("endpoints.{class}."), e.requests_per_second, e.burst)?;
        if e.patterns.is_empty() || e.patterns.iter().any(|p| p.is_empty()) {
            return Err(format!("endpoints.{class}: `match` needs at least one non-empty pattern"));
        }
    }
    if l.call_limit_leak_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("call_limit_leak_per_second must be positive".into());
    }
    for w in &l.windows {
        crate::capabilities::windows::TimeWindow::parse(w)?;
    }
    if let Some(tz) = &l.timezone {
        crate::capabilities::windows::parse_zone(tz)?;
    }
    let r = &l.retry;
    if r.base_ms == Some(0) || r.max_ms.is_some_and(|m| m < r.base_ms.unwrap_or(1)) {
        return Err("retry.base_ms must be positive and not above retry.max_ms".into());
    }
    if r.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j)) {
        return Err("retry.jitter must be between 0 and 1".into());
    }
    if r.max_attempts == Some(0) {
        return Err("retry.max_attempts must be at least 1".into());
    }
    if let Some(s) = &l.standby {
        base_url("primary", &s.primary)?;
        base_url("backup", &s.backup)?;
        if s.primary.trim_end_matches('/') == s.backup.trim_end_matches('/') {
            return Err("standby.primary and standby.backup are the same channel".into());
        }
        if !s.health_path.starts_with('/') {
            return Err(format!("standby.health_path `{}` must start with /", s.health_path));
        }
        if s.check_interval_ms < 100 || s.fail_after == 0 || s.recover_after == 0 {
            return Err("standby.check_interval_ms must be at least 100, fail_after and recover_after at least 1".into());
        }
    }
    Ok(())
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
