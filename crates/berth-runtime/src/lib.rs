//! Running connectors: one [`wasmtime::Engine`], an `InstancePre` per connector version,
//! a fresh instance per call with a deadline and a memory cap, and compiled components
//! cached on disk keyed by content digest and engine settings.

pub mod allowlist;
pub mod bindings;
pub mod breaker;
pub mod call_stats;
mod compat;
mod compat_v0_1;
mod compat_v0_3;
mod compat_v0_4;
pub mod credential_calls;
pub mod listing_calls;
pub mod compile_cache;
pub mod config;
pub mod convert;
pub mod crypto;
pub mod engine;
pub mod guest_log;
pub mod imports;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod redact;
pub mod state;
pub mod tape;

use crate::allowlist::HostAllowlist;
use crate::config::RuntimeConfig;
use berth_types::shop::ShopConfig;
use berth_types::connector::{
    ConnectorError, Event, Health, Manifest, OrderPage, PullRequest, StockUpdate, UpdateResult, WebhookRequest,
};
use bindings::{Connector, ConnectorPre};
use engine::ConnectorEngine;
use sha2::{Digest, Sha256};
use imports::HostImports;
use state::{CallContext, HostState};
use tape::Tape;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Store;

/// The newest WIT version this host serves.
pub const WIT_VERSION: &str = "0.4.0";
/// Every version it serves: components built for any of them load.
pub const WIT_VERSIONS: [&str; 4] = ["0.1.0", "0.2.0", "0.3.0", "0.4.0"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a WebAssembly component ({message}); build connectors as components, e.g. `cargo build --target wasm32-wasip2`")]
    NotAComponent { path: PathBuf, message: String },
    #[error("{path} does not fit a berth:connector world this host serves ({}): {message}", WIT_VERSIONS.join(", "))]
    WrongWorld { path: PathBuf, message: String },
    #[error("{path} imports {imports}, which berth does not give connectors (only the berth:connector interfaces and WASI 0.2); remove the import, or build against the berth SDK")]
    UnknownImport { path: PathBuf, imports: String },
    #[error("{path}: calling manifest() failed: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: the manifest is not acceptable: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{call} exceeded its {deadline_ms} ms deadline; the instance was discarded")]
    Timeout { call: &'static str, deadline_ms: u64 },
    #[error("{call} trapped: {message}; the instance was discarded")]
    Trap { call: &'static str, message: String },
    #[error("{call} used up its fuel ({fuel}, fuel_per_call); the instance was discarded")]
    OutOfFuel { call: &'static str, fuel: u64 },
    #[error("{call} found {running} calls of this connector running (max_concurrent_calls) until its deadline")]
    Busy { call: &'static str, running: usize },
    #[error("{call} found no instance slot free for this connector: {in_use} of its calls run, {reserved} slots are reserved for it and the shared ones are taken (runtime.max_instances, reserved_instances)")]
    NoInstance { call: &'static str, in_use: usize, reserved: usize },
    #[error("{call} broke the connector's limits: {why}; the answer was dropped")]
    OutputTooLarge { call: &'static str, why: String },
    #[error("{call} answered what the host does not take: {why}; the answer was dropped")]
    BadOutput { call: &'static str, why: String },
    #[error("cannot instantiate the connector: {0}")]
    Instantiate(String),
    #[error("{call} stopped: the host's rate limiter held a request back for {} ms, longer than the call could wait", wait.as_millis())]
    HeldBack { call: &'static str, wait: Duration },
    #[error("{call} not run: this connector version is isolated by its circuit breaker ({reason}); a trial call in {} s", retry_in.as_secs().max(1))]
    Isolated { call: &'static str, retry_in: Duration, reason: String },
    #[error("{call} not run: this connector version was built for berth:connector {wit_version}, which has no {call} export (new in {since}); rebuild it with a newer SDK")]
    NotExported { call: &'static str, wit_version: String, since: &'static str },
}

impl CallError {
    /// Whether the call failed in the sandbox — what the circuit breaker counts:
    /// `Some(true)` for traps, deadlines, fuel and output limits, `Some(false)` for a
    /// call that ran, `None` for one that never ran guest code.
    fn sandbox_failure(out: Option<&CallError>) -> Option<bool> {
        match out {
            None => Some(false),
            Some(
                CallError::Timeout { .. }
                | CallError::Trap { .. }
                | CallError::OutOfFuel { .. }
                | CallError::OutputTooLarge { .. }
                | CallError::BadOutput { .. },
            ) => Some(true),
            Some(
                CallError::Busy { .. }
                | CallError::NoInstance { .. }
                | CallError::Instantiate(_)
                | CallError::Isolated { .. }
                | CallError::NotExported { .. },
            ) => None,
            // It ran; the host's own limiter stopped it.
            Some(CallError::HeldBack { .. }) => Some(false),
        }
    }

    /// How long the host's rate limiter holds the call's quota back: the caller waits
    /// that out without spending an attempt (it is not the platform's throttle).
    pub fn held_back_for(&self) -> Option<Duration> {
        match self {
            CallError::HeldBack { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// How long to wait before calling again when the connector is isolated.
    pub fn isolated_for(&self) -> Option<Duration> {
        match self {
            CallError::Isolated { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }
}

/// A call made and not yet counted in the metrics ([`LoadedConnector::manifest_call`] at load).
struct Uncounted {
    call: &'static str,
    outcome: &'static str,
    started: std::time::Instant,
    usage: Option<Usage>,
}

impl Uncounted {
    fn count(self, conn: &LoadedConnector) {
        conn.observe(self.call, self.outcome, self.started, self.usage);
    }
}

/// What one call's instance used.
#[derive(Clone, Copy, Debug)]
struct Usage {
    peak_memory: usize,
    /// None when fuel is not metered.
    fuel: Option<u64>,
}

/// Shared by every loaded connector.
pub struct ConnectorRuntime {
    engine: ConnectorEngine,
    linker: Linker<HostState>,
    /// What connectors' imports reach outside the sandbox (the capabilities).
    imports: Arc<dyn HostImports>,
    pub metrics: Arc<metrics::RuntimeMetrics>,
    /// Each connector's log allowance per minute (by name: shared by its versions).
    log_minutes: std::sync::Mutex<std::collections::HashMap<String, Arc<guest_log::MinuteBudget>>>,
    cache_dir: PathBuf,
    /// `[runtime]`: every connector's limits where its own section says nothing.
    defaults: RuntimeConfig,
    /// The engine's instance slots, shared fairly between connectors.
    pool: Arc<pool::InstancePool>,
}

/// How ops let a connector run: the manifest hosts they grant (all when `None`), hosts
/// beyond the manifest, and its limits.
pub struct LoadOptions<'a> {
    /// The platform ops bound the connector to (`[connectors.X] platform`, else its
    /// name); a manifest naming another is refused. `None`: whatever it names (the
    /// vendor kit's scratch host).
    pub platform: Option<&'a str>,
    pub grants: Option<&'a [String]>,
    pub extra_hosts: &'a [String],
    /// May reach non-public addresses (`[connectors.X] allow_private_addresses`).
    pub allow_private: bool,
    pub limits: limits::ConnectorLimits,
}

/// One connector version, ready to instantiate.
pub struct LoadedConnector {
    pub name: Arc<str>,
    pub digest: String,
    pub manifest: Manifest,
    version: Arc<str>,
    /// The manifest's platform, shared by every call's context.
    platform: Arc<str>,
    pre: ConnectorPre<HostState>,
    /// The exports new in 0.3.0 (credentials, OAuth), for a component built for it.
    pre_v0_3: Option<bindings::v0_3::ConnectorPre<HostState>>,
    /// The export new in 0.4.0 (listings), for a component built for it.
    pre_v0_4: Option<bindings::v0_4::ConnectorPre<HostState>>,
    /// The berth:connector version the component imports.
    wit_version: Option<String>,
    allow: Arc<HostAllowlist>,
    runtime: Arc<ConnectorRuntime>,
    /// How this version's calls ended lately (canary checks read it).
    pub calls: call_stats::CallStats,
    pub limits: limits::ConnectorLimits,
    /// One permit per call that may run at once.
    turns: Arc<tokio::sync::Semaphore>,
    /// Isolates this version while its calls keep failing in the sandbox.
    pub breaker: breaker::Breaker,
    /// Where this version's calls are counted and timed.
    meters: metrics::CallMeters,
    /// The connector's log allowance per minute, shared with its other versions.
    log_minute: Arc<guest_log::MinuteBudget>,
}

impl ConnectorRuntime {
    pub fn new(
        cfg: &RuntimeConfig,
        imports: Arc<dyn HostImports>,
        metrics: Arc<metrics::RuntimeMetrics>,
        cache_dir: PathBuf,
    ) -> Result<Arc<Self>, LoadError> {
        let engine = ConnectorEngine::new(cfg).map_err(|e| LoadError::Engine(format!("{e:?}")))?;
        let mut linker = Linker::new(&engine.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| LoadError::Engine(format!("{e:?}")))?;
        Connector::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:?}")))?;
        bindings::v0_1::Connector::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:?}")))?;
        bindings::v0_3::Connector::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:?}")))?;
        bindings::v0_4::Connector::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:?}")))?;
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| LoadError::Engine(format!("cannot create cache dir {}: {e}", cache_dir.display())))?;
        Ok(Arc::new(ConnectorRuntime {
            engine,
            linker,
            imports,
            metrics,
            log_minutes: Default::default(),
            cache_dir,
            defaults: cfg.clone(),
            pool: pool::InstancePool::new(cfg.max_instances as usize),
        }))
    }

    fn engine_key(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Compile a component's bytes on a blocking thread (it takes seconds), or load the
    /// compiled artifact from the cache (see compile_cache.rs).
    async fn compile(&self, path: &Path, bytes: &[u8], digest: &str) -> Result<Component, LoadError> {
        let cached = compile_cache::entry(&self.cache_dir, digest, &self.engine_key());
        let engine = self.engine.engine.clone();
        let (path, bytes, short) = (path.to_path_buf(), bytes.to_vec(), digest[..12].to_string());
        let job = tokio::task::spawn_blocking(move || {
            match compile_cache::load(&engine, &cached) {
                Ok(c) => {
                    tracing::debug!(digest = %short, "component loaded from the compile cache");
                    return Ok(c);
                }
                Err(compile_cache::CacheMiss::Absent) => {}
                Err(why) => tracing::warn!(path = %cached.display(), error = %why, "ignoring a compiled cache entry; compiling again"),
            }
            let started = std::time::Instant::now();
            tracing::info!(digest = %short, bytes = bytes.len(), "compiling component");
            let component = Component::new(&engine, &bytes)
                .map_err(|e| LoadError::NotAComponent { path: path.clone(), message: format!("{e}") })?;
            tracing::info!(digest = %short, ms = started.elapsed().as_millis() as u64, "component compiled");
            match component.serialize() {
                Ok(blob) => {
                    if let Err(e) = compile_cache::store(&cached, &blob) {
                        tracing::warn!(path = %cached.display(), error = %e, "cannot write compiled cache entry");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot serialize compiled component"),
            }
            Ok(component)
        });
        job.await.map_err(|e| LoadError::Engine(format!("the compile task failed: {e}")))?
    }

    /// How connector `name` stands in the instance pool.
    /// What connectors' imports reach (the capabilities), for calls made outside a
    /// loaded component (the native comparison in the e2e bench).
    pub fn imports(&self) -> Arc<dyn HostImports> {
        self.imports.clone()
    }

    /// Connector `name`'s log allowance per minute, the one its other versions spend.
    pub fn log_minute(&self, name: &str, limit: usize) -> Arc<guest_log::MinuteBudget> {
        let mut all = self.log_minutes.lock().unwrap_or_else(|e| e.into_inner());
        match all.get(name).filter(|b| b.limit() == limit) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(guest_log::MinuteBudget::new(limit, self.metrics.log_dropped_counter(name)));
                all.insert(name.to_string(), b.clone());
                b
            }
        }
    }

    pub fn pool_share(&self, name: &str) -> Option<pool::PoolShare> {
        self.pool.share(name)
    }

    /// Load a connector component from a file (see [`ConnectorRuntime::load_bytes`]).
    pub async fn load(self: &Arc<Self>, name: &str, path: &Path, options: &LoadOptions<'_>) -> Result<LoadedConnector, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
        self.load_bytes(name, path, &bytes, options).await
    }

    /// The limits of a connector with `overrides` (`[connectors.X.limits]`).
    pub fn limits(&self, overrides: &crate::config::LimitOverrides) -> limits::ConnectorLimits {
        limits::ConnectorLimits::resolve(&self.defaults, overrides)
    }

    /// Load a connector component: compile (or reuse the cache), check it against the
    /// world, read its manifest, and grant it the declared hosts ops grant (all when
    /// `grants` is `None`) plus `extra_hosts`. `origin` names where the bytes came from
    /// in errors.
    pub async fn load_bytes(
        self: &Arc<Self>,
        name: &str,
        origin: &Path,
        bytes: &[u8],
        options: &LoadOptions<'_>,
    ) -> Result<LoadedConnector, LoadError> {
        let (grants, extra_hosts) = (options.grants, options.extra_hosts);
        let path = origin;
        let digest = digest(bytes);
        let component = self.compile(path, bytes, &digest).await?;
        let linked_wit = world_version(&component, &self.engine.engine);
        let foreign: Vec<String> = component
            .component_type()
            .imports(&self.engine.engine)
            .map(|(name, _)| name)
            .filter(|name| !name.starts_with("berth:connector/") && !name.starts_with("wasi:"))
            .map(|name| format!("`{name}`"))
            .collect();
        if !foreign.is_empty() {
            return Err(LoadError::UnknownImport { path: path.to_path_buf(), imports: foreign.join(", ") });
        }
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld { path: path.to_path_buf(), message: format!("{e}") };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(wrong)?;
        self.pool.register(name, options.limits.reserved_instances, options.limits.max_concurrent_calls);
        // 0.3.0's exports are 0.4.0's too: both worlds' components are called through them.
        let pre_v0_3 = match linked_wit.as_deref() {
            Some("0.3.0" | "0.4.0") => Some(bindings::v0_3::ConnectorPre::new(instance_pre.clone()).map_err(wrong)?),
            _ => None,
        };
        let pre_v0_4 = match linked_wit.as_deref() {
            Some("0.4.0") => Some(bindings::v0_4::ConnectorPre::new(instance_pre.clone()).map_err(wrong)?),
            _ => None,
        };
        let pre = ConnectorPre::new(instance_pre).map_err(wrong)?;
        let mut loaded = LoadedConnector {
            name: name.into(),
            digest: digest.clone(),
            manifest: placeholder_manifest(),
            version: "unknown".into(),
            platform: "".into(),
            pre,
            pre_v0_3,
            pre_v0_4,
            wit_version: linked_wit.clone(),
            allow: Arc::new(HostAllowlist::default()),
            runtime: self.clone(),
            calls: Default::default(),
            limits: options.limits,
            turns: Arc::new(tokio::sync::Semaphore::new(options.limits.max_concurrent_calls)),
            breaker: breaker::Breaker::new(options.limits.breaker),
            meters: metrics::RuntimeMetrics::unregistered(name),
            log_minute: self.log_minute(name, options.limits.max_log_bytes_per_minute),
        };
        // Counted once its version is known (a component whose manifest call fails is
        // not loaded and leaves no series behind).
        let (manifest, manifest_call) = loaded.manifest_uncounted().await;
        let manifest = manifest.map_err(|e| LoadError::Manifest { path: path.to_path_buf(), message: e.to_string() })?;
        check_manifest(&manifest, linked_wit.as_deref()).map_err(|message| LoadError::BadManifest { path: path.to_path_buf(), message })?;
        if let Some(bound) = options.platform.filter(|p| *p != manifest.platform) {
            return Err(LoadError::BadManifest {
                path: path.to_path_buf(),
                message: format!(
                    "its manifest names platform `{}`, but ops bound connector `{name}` to platform `{bound}`; if it is right, set [connectors.{name}] platform = \"{}\"",
                    state::bounded(&manifest.platform, 64),
                    state::bounded(&manifest.platform, 64)
                ),
            });
        }
        // Its declared hosts count against its platform, whoever calls them later.
        self.imports
            .claim_hosts(&manifest.platform, &manifest.allowed_hosts)
            .map_err(|message| LoadError::BadManifest { path: path.to_path_buf(), message })?;
        self.imports.declare_rate(&manifest.platform, name, manifest.default_rate_limit);
        loaded.version = manifest.connector_version.as_str().into();
        loaded.platform = manifest.platform.as_str().into();
        loaded.meters = self.metrics.meters(name, &loaded.version);
        manifest_call.count(&loaded);
        let granted = HostAllowlist::granted(&manifest.allowed_hosts, grants);
        for h in manifest.allowed_hosts.iter().filter(|h| !granted.contains(h)) {
            tracing::warn!(connector = name, host = %h, "the manifest declares a host ops did not grant; calls to it will be refused");
        }
        loaded.allow = Arc::new(HostAllowlist::new(granted.into_iter().chain(extra_hosts.iter().cloned())).with_private(options.allow_private));
        loaded.manifest = manifest;
        tracing::info!(connector = name, version = %loaded.version, digest = &digest[..12], platform = %loaded.manifest.platform, "connector loaded");
        Ok(loaded)
    }
}

/// Every export of any version of the berth world: the calls the host makes.
pub const WORLD_EXPORTS: &[&str] = &[
    "manifest",
    "check",
    "pull-orders",
    "push-inventory",
    "handle-webhook",
    "authorization",
    "refresh-credentials",
    "consent-url",
    "exchange-code",
    "listings",
];

/// A component's imports and exports by name, and the berth world it imports.
#[derive(Clone, Debug)]
pub struct ComponentShape {
    pub imports: Vec<String>,
    /// The berth world's calls it exports.
    pub exports: Vec<String>,
    /// What else it exports, which berth never calls (a toolchain's own interface, such
    /// as componentize-py's `exports`).
    pub other_exports: Vec<String>,
    pub world_version: Option<String>,
}

impl ConnectorRuntime {
    /// Compile (or take from the cache) a component and list what it imports and
    /// exports, without linking it: a component the host cannot serve is described too.
    pub async fn shape(&self, origin: &Path, bytes: &[u8]) -> Result<ComponentShape, LoadError> {
        let component = self.compile(origin, bytes, &digest(bytes)).await?;
        let ty = component.component_type();
        let engine = &self.engine.engine;
        let (exports, other_exports) = ty.exports(engine).map(|(name, _)| name.to_string()).partition(|name| WORLD_EXPORTS.contains(&name.as_str()));
        Ok(ComponentShape { imports: ty.imports(engine).map(|(name, _)| name.to_string()).collect(), exports, other_exports, world_version: world_version(&component, engine) })
    }
}

/// A component's identity: the sha256 of its bytes, hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The webhook export's name: its calls have their own deadline and never wait for a slot.
const WEBHOOK_CALL: &str = "handle-webhook";

/// A call's store and the pool slot it holds, given back after the store (and so its
/// instance) is gone: fields drop in order.
struct Running {
    store: Store<HostState>,
    _slot: pool::PoolSlot,
}

impl std::ops::Deref for Running {
    type Target = Store<HostState>;
    fn deref(&self) -> &Store<HostState> {
        &self.store
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Store<HostState> {
        &mut self.store
    }
}

impl wasmtime::AsContext for Running {
    type Data = HostState;
    fn as_context(&self) -> wasmtime::StoreContext<'_, HostState> {
        self.store.as_context()
    }
}

impl wasmtime::AsContextMut for Running {
    fn as_context_mut(&mut self) -> wasmtime::StoreContextMut<'_, HostState> {
        self.store.as_context_mut()
    }
}

/// One export call's input (owned: a shadow run replays it later).
#[derive(Clone, Debug, serde::Serialize)]
pub enum Call {
    Pull(PullRequest),
    Push(Vec<StockUpdate>),
    Webhook(WebhookRequest),
}

impl Call {
    /// This call's answer when it fails with `e` before reaching the connector.
    pub fn failed(&self, e: ConnectorError) -> Output {
        match self {
            Call::Pull(_) => Output::Pull(Err(e)),
            Call::Push(_) => Output::Push(Err(e)),
            Call::Webhook(_) => Output::Webhook(Err(e)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Call::Pull(_) => "pull-orders",
            Call::Push(_) => "push-inventory",
            Call::Webhook(_) => WEBHOOK_CALL,
        }
    }
}

/// Whether a call's answer counts as the version succeeding: a throttle is the
/// platform's doing, not the version's failure.
fn succeeded<T>(r: &Result<T, ConnectorError>) -> bool {
    matches!(r, Ok(_) | Err(ConnectorError::RateLimited(_)))
}

/// What an export returned.
#[derive(Clone, Debug, serde::Serialize)]
pub enum Output {
    Pull(Result<OrderPage, ConnectorError>),
    Push(Result<Vec<UpdateResult>, ConnectorError>),
    Webhook(Result<Vec<Event>, ConnectorError>),
}

/// The `outcome` metric label of a connector error.
pub fn error_outcome(e: &ConnectorError) -> &'static str {
    match e {
        ConnectorError::RateLimited(_) => "rate_limited",
        ConnectorError::Auth(_) => "auth",
        ConnectorError::Transient(_) => "transient",
        ConnectorError::Permanent(_) => "permanent",
        ConnectorError::InvalidInput(_) => "invalid_input",
    }
}

impl CallError {
    /// How a retry policy sees a call that did not return.
    pub fn kind(&self) -> berth_types::retry::ErrorKind {
        use berth_types::retry::ErrorKind;
        match self {
            CallError::Timeout { .. } => ErrorKind::Timeout,
            CallError::Trap { .. } | CallError::OutOfFuel { .. } | CallError::OutputTooLarge { .. } | CallError::BadOutput { .. } => ErrorKind::Trap,
            CallError::Busy { .. } | CallError::NoInstance { .. } | CallError::HeldBack { .. } => ErrorKind::Timeout,
            CallError::Instantiate(_) => ErrorKind::Trap,
            // Callers wait an isolation out (`CallError::isolated_for`) before asking.
            CallError::Isolated { .. } => ErrorKind::Trap,
            // Only a new build helps.
            CallError::NotExported { .. } => ErrorKind::Permanent,
        }
    }
}

/// The `outcome` metric label of a call that did not return.
pub fn call_error_outcome(e: &CallError) -> &'static str {
    match e {
        CallError::Timeout { .. } => "timeout",
        CallError::Trap { .. } => "trap",
        CallError::OutOfFuel { .. } => "out_of_fuel",
        CallError::Busy { .. } | CallError::NoInstance { .. } => "busy",
        CallError::HeldBack { .. } => "held_back",
        CallError::OutputTooLarge { .. } => "too_large",
        CallError::BadOutput { .. } => "bad_output",
        CallError::Instantiate(_) => "instantiate",
        CallError::Isolated { .. } => "isolated",
        CallError::NotExported { .. } => "not_exported",
    }
}

impl Output {
    /// Whether the answer keeps to the connector's output limits and contract (see limits.rs).
    fn within(&self, l: &limits::ConnectorLimits, call: &Call, now_ms: i64) -> Result<(), limits::Refusal> {
        use limits::Refusal;
        match (self, call) {
            (Output::Pull(Ok(page)), _) => {
                if let Some(c) = page.next_page_cursor.as_ref().filter(|c| c.len() > limits::MAX_CURSOR_BYTES) {
                    return Err(Refusal::TooLarge(format!("returned a page cursor of {} bytes, more than {}", c.len(), limits::MAX_CURSOR_BYTES)));
                }
                limits::check_orders(&page.orders, l, now_ms)
            }
            (Output::Webhook(Ok(events)), _) => limits::check_events(events, l, now_ms),
            // One answer per SKU asked about; a few strangers are ignored, a flood is refused.
            (Output::Push(Ok(results)), Call::Push(asked)) if results.len() > 2 * asked.len() + 16 => {
                Err(Refusal::TooLarge(format!("returned {} results for {} stock updates", results.len(), asked.len())))
            }
            _ => Ok(()),
        }
    }

    /// Orders the answer carries, to cap their raw JSON.
    fn orders_mut(&mut self) -> Box<dyn Iterator<Item = &mut berth_types::connector::Order> + '_> {
        match self {
            Output::Pull(Ok(page)) => Box::new(page.orders.iter_mut()),
            Output::Webhook(Ok(events)) => Box::new(events.iter_mut().filter_map(|e| match e {
                Event::OrderUpserted(o) => Some(o),
                _ => None,
            })),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The `outcome` metric label: `ok` or the error's case.
    fn outcome(&self) -> &'static str {
        let err = match self {
            Output::Pull(r) => r.as_ref().err(),
            Output::Push(r) => r.as_ref().err(),
            Output::Webhook(r) => r.as_ref().err(),
        };
        err.map_or("ok", error_outcome)
    }

    /// Whether the call counts as a success (a throttle is not the version's failure).
    pub fn ok(&self) -> bool {
        match self {
            Output::Pull(r) => succeeded(r),
            Output::Push(r) => succeeded(r),
            Output::Webhook(r) => succeeded(r),
        }
    }

    pub fn into_pull(self) -> Result<OrderPage, ConnectorError> {
        match self {
            Output::Pull(r) => r,
            other => Err(ConnectorError::Permanent(format!("internal: a pull got {other:?}"))),
        }
    }

    pub fn into_push(self) -> Result<Vec<UpdateResult>, ConnectorError> {
        match self {
            Output::Push(r) => r,
            other => Err(ConnectorError::Permanent(format!("internal: a push got {other:?}"))),
        }
    }

    pub fn into_webhook(self) -> Result<Vec<Event>, ConnectorError> {
        match self {
            Output::Webhook(r) => r,
            other => Err(ConnectorError::Permanent(format!("internal: a webhook got {other:?}"))),
        }
    }
}

/// A call that failed because berth's own rate limiter held its request back is a
/// throttle, not a platform failure: the caller parks the shop without spending an
/// attempt.
fn held_back_as_throttle<T>(call: &'static str, result: Result<T, ConnectorError>, held_back: Option<Duration>) -> Result<Result<T, ConnectorError>, CallError> {
    match (result, held_back) {
        (Err(ConnectorError::Transient(_) | ConnectorError::RateLimited(_)), Some(wait)) => Err(CallError::HeldBack { call, wait }),
        (other, _) => Ok(other),
    }
}

fn placeholder_manifest() -> Manifest {
    Manifest {
        platform: String::new(),
        connector_version: String::new(),
        wit_version: String::new(),
        capabilities: Vec::new(),
        allowed_hosts: Vec::new(),
        default_rate_limit: berth_types::connector::RateLimit { requests_per_minute: 0, burst: 0 },
        max_window_ms: None,
        required_config: Vec::new(),
    }
}

/// The `berth:connector` version a component imports (`None` when it imports nothing of it).
fn world_version(component: &Component, engine: &wasmtime::Engine) -> Option<String> {
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| name.strip_prefix("berth:connector/").and_then(|n| n.split_once('@')).map(|(_, v)| v.to_string()))
}

/// Bounds of a manifest's `default-rate-limit`: ops' own `requests_per_second` bound
/// (100,000 a second), and a burst a token bucket can hold.
const MAX_DECLARED_PER_MINUTE: u32 = 6_000_000;
const MAX_DECLARED_BURST: u32 = 100_000;

fn check_manifest(m: &Manifest, linked: Option<&str>) -> Result<(), String> {
    if m.platform.is_empty() || m.platform.len() > 64 {
        return Err("platform must be 1..=64 characters".into());
    }
    if m.connector_version.is_empty() || m.connector_version.len() > 64 {
        return Err("connector-version must be 1..=64 characters".into());
    }
    if !WIT_VERSIONS.contains(&m.wit_version.as_str()) {
        return Err(format!("wit-version `{}` is not one this host serves ({})", m.wit_version, WIT_VERSIONS.join(", ")));
    }
    if let Some(linked) = linked.filter(|l| *l != m.wit_version) {
        return Err(format!(
            "wit-version is `{}`, but the component imports the {linked} world; fix the manifest",
            m.wit_version
        ));
    }
    if m.max_window_ms == Some(0) {
        return Err("max-window-ms must be positive when given".into());
    }
    let rate = m.default_rate_limit;
    if rate.requests_per_minute > MAX_DECLARED_PER_MINUTE || rate.burst > MAX_DECLARED_BURST {
        return Err(format!(
            "default-rate-limit must be at most {MAX_DECLARED_PER_MINUTE} requests per minute and a burst of {MAX_DECLARED_BURST} (it says {} and {}); declare 0 requests per minute for no advice",
            rate.requests_per_minute, rate.burst
        ));
    }
    if m.allowed_hosts.len() > 64 || m.required_config.len() > 64 {
        return Err("a manifest may declare at most 64 allowed hosts and 64 required config keys".into());
    }
    if let Some(h) = m.allowed_hosts.iter().find(|h| h.is_empty() || h.len() > 253 || h.contains('/') || h.contains(':')) {
        return Err(format!("allowed host `{}` must be a bare host name or `*.suffix` of at most 253 characters", state::bounded(h, 64)));
    }
    if let Some(k) = m.required_config.iter().find(|k| k.is_empty() || k.len() > 64) {
        return Err(format!("required config key `{}` must be 1..=64 characters", state::bounded(k, 64)));
    }
    Ok(())
}

impl LoadedConnector {
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The deadline of a call: webhooks have their own, shorter one (a platform waits
    /// only seconds for its answer).
    fn timeout_of(&self, call: &'static str) -> Duration {
        if call == WEBHOOK_CALL {
            self.limits.webhook_timeout
        } else {
            self.limits.call_timeout
        }
    }

    /// A fresh instance of the exports every world has, in a store from [`Self::store_for`].
    async fn instance(&self, call: &'static str, shop: Option<(String, Arc<ShopConfig>)>) -> Result<(Running, Connector), CallError> {
        let mut running = self.store_for(call, shop).await?;
        let instance = self
            .pre
            .instantiate_async(&mut running)
            .await
            .map_err(|e| CallError::Instantiate(format!("{e}")))?;
        Ok((running, instance))
    }

    /// A store for one call under this connector's limits, once it is the call's turn
    /// and the pool has a slot for it (a webhook call does not wait for either).
    async fn store_for(&self, call: &'static str, shop: Option<(String, Arc<ShopConfig>)>) -> Result<Running, CallError> {
        let rt = &self.runtime;
        let l = &self.limits;
        let webhook = call == WEBHOOK_CALL;
        // A drill on the shop: the call traps as a broken version's would.
        if let Some((name, _)) = &shop {
            if rt.imports.injected_trap(name) {
                return Err(CallError::Trap { call, message: "drill: a trap injected into this shop's calls".into() });
            }
        }
        let deadline = std::time::Instant::now() + self.timeout_of(call);
        // A free turn is taken without arming a timer; only a wait for one needs it.
        let turn = match self.turns.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if webhook => return Err(CallError::Busy { call, running: l.max_concurrent_calls }),
            Err(_) => match tokio::time::timeout_at(deadline.into(), self.turns.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(CallError::Busy { call, running: l.max_concurrent_calls }),
            },
        };
        let slot = if webhook { rt.pool.try_take(&self.name) } else { rt.pool.take(&self.name, deadline).await };
        let slot = slot.map_err(|no| {
            rt.metrics.limit_hit(&self.name, "instances", 1);
            if no.at_max {
                CallError::Busy { call, running: no.in_use }
            } else {
                CallError::NoInstance { call, in_use: no.in_use, reserved: no.reserved }
            }
        })?;
        let redact = redact::Redactor::for_shop(shop.as_ref().map(|(_, c)| &**c));
        let ctx = CallContext {
            redact,
            connector: self.name.clone(),
            version: self.version.clone(),
            shop,
            allow: self.allow.clone(),
            platform: self.platform.clone(),
            deadline,
            kv_write_per_minute: l.max_kv_write_bytes_per_minute as u64,
        };
        let log = guest_log::LogBudget::new(self.name.clone(), l.max_log_bytes_per_call, self.log_minute.clone());
        let mut store = Store::new(&rt.engine.engine, HostState::new(ctx, rt.imports.clone(), rt.metrics.clone(), l.max_memory_bytes, log, turn));
        store.limiter(|s| s.limiter());
        // Every epoch tick (10 ms) of guest code: past the deadline, stop it; before,
        // yield to the executor, so a guest spinning on the CPU holds no worker thread
        // from the calls of other connectors and shops.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if std::time::Instant::now() >= deadline {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        if rt.defaults.meter_fuel {
            store.set_fuel(l.fuel_per_call).map_err(|e| CallError::Instantiate(format!("{e}")))?;
        }
        Ok(Running { store, _slot: slot })
    }

    /// Await a call under the deadline; traps and timeouts become [`CallError`]s. The
    /// store is dropped by the caller either way: an instance is never reused.
    async fn finish<R>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = wasmtime::Result<R>>,
    ) -> Result<R, CallError> {
        let deadline = self.timeout_of(call);
        let give_up = tokio::time::Instant::now() + deadline + Duration::from_millis(100);
        // The epoch deadline stops guest code; the timeout below stops a host import
        // that hangs. A call done at its first poll (no import waited) needs no timer.
        let mut fut = std::pin::pin!(fut);
        let done = match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => tokio::time::timeout_at(give_up, fut).await,
        };
        match done {
            Err(_) => Err(CallError::Timeout { call, deadline_ms: deadline.as_millis() as u64 }),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => Err(CallError::Timeout { call, deadline_ms: deadline.as_millis() as u64 }),
                    Some(wasmtime::Trap::OutOfFuel) => Err(CallError::OutOfFuel { call, fuel: self.limits.fuel_per_call }),
                    _ => Err(CallError::Trap { call, message: state::bounded(&format!("{e:?}"), 2048).to_string() }),
                }
            }
        }
    }

    /// A fresh instance and its `manifest` export: the cheapest whole call there is.
    pub async fn manifest_call(&self) -> Result<Manifest, CallError> {
        let (r, counted) = self.manifest_uncounted().await;
        counted.count(self);
        r
    }

    /// The manifest call, and how it went, not counted yet: at load the version it is
    /// counted under comes from its answer.
    async fn manifest_uncounted(&self) -> (Result<Manifest, CallError>, Uncounted) {
        let started = std::time::Instant::now();
        let (mut store, inst) = match self.instance("manifest", None).await {
            Ok(x) => x,
            Err(e) => {
                let outcome = call_error_outcome(&e);
                return (Err(e), Uncounted { call: "manifest", outcome, started, usage: None });
            }
        };
        let r = self.finish("manifest", inst.call_manifest(&mut store)).await.map(Manifest::from);
        let outcome = r.as_ref().map_or_else(call_error_outcome, |_| "ok");
        (r, Uncounted { call: "manifest", outcome, started, usage: Some(self.usage(&store)) })
    }

    pub async fn check(&self, shop: &str, cfg: Arc<ShopConfig>) -> Result<Result<Health, ConnectorError>, CallError> {
        self.check_taped(shop, cfg, Tape::Off).await.0
    }

    /// `check` with a tape (the vendor kit records and replays it).
    pub async fn check_taped(&self, shop: &str, cfg: Arc<ShopConfig>, tape: Tape) -> (Result<Result<Health, ConnectorError>, CallError>, Tape) {
        let started = std::time::Instant::now();
        let (mut store, inst, ticket) = match self.start("check", shop, cfg, started).await {
            Ok(x) => x,
            Err(e) => return (Err(e), tape),
        };
        store.data_mut().tape = tape;
        let mut r = self.finish("check", inst.call_check(&mut store, shop)).await.map(convert::answer);
        self.judge(ticket, r.as_ref().err());
        store.data().redactor().health(&mut r);
        let outcome = match &r {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => error_outcome(e),
            Err(e) => call_error_outcome(e),
        };
        self.observe("check", outcome, started, Some(self.usage(&store)));
        let tape = std::mem::take(&mut store.data_mut().tape);
        (self.tally(r), tape)
    }

    /// A shop's call past the circuit breaker, on a fresh instance; a call refused or
    /// not started is counted here.
    async fn start(
        &self,
        call: &'static str,
        shop: &str,
        cfg: Arc<ShopConfig>,
        started: std::time::Instant,
    ) -> Result<(Running, Connector, breaker::Ticket<'_>), CallError> {
        let (mut store, ticket) = self.admitted(call, shop, cfg, started).await?;
        match self.pre.instantiate_async(&mut store).await {
            Ok(inst) => Ok((store, inst, ticket)),
            Err(e) => {
                let e = CallError::Instantiate(format!("{e}"));
                self.observe(call, call_error_outcome(&e), started, None);
                self.judge(ticket, Some(&e));
                Err(e)
            }
        }
    }

    /// A store for one call of `shop` once the breaker admits it, with the ticket the
    /// call's end is judged by; a refusal or a failure to get the store is counted and
    /// judged here.
    async fn admitted(&self, call: &'static str, shop: &str, cfg: Arc<ShopConfig>, started: std::time::Instant) -> Result<(Running, breaker::Ticket<'_>), CallError> {
        let ticket = self.breaker.admit().map_err(|r| CallError::Isolated { call, retry_in: r.retry_in, reason: r.reason });
        let ticket = ticket.inspect_err(|e| self.observe(call, call_error_outcome(e), started, None))?;
        match self.store_for(call, Some((shop.to_string(), cfg))).await {
            Ok(store) => Ok((store, ticket)),
            Err(e) => {
                self.observe(call, call_error_outcome(&e), started, None);
                self.judge(ticket, Some(&e));
                Err(e)
            }
        }
    }

    /// Tell the circuit breaker how a call ended; say so when that isolates the version
    /// or ends its isolation.
    fn judge(&self, ticket: breaker::Ticket<'_>, error: Option<&CallError>) {
        let (connector, version) = (&*self.name, &*self.version);
        let m = &self.runtime.metrics;
        match ticket.finish(CallError::sandbox_failure(error)) {
            None => {}
            Some(breaker::Change::Opened { reason, open_for }) => {
                tracing::error!(connector, version, %reason, trial_in_secs = open_for.as_secs(), "connector version isolated by its circuit breaker: its calls are refused until a trial call passes");
                m.breaker(connector, version, true, true);
            }
            Some(breaker::Change::Reopened { open_for }) => {
                tracing::warn!(connector, version, trial_in_secs = open_for.as_secs(), "the trial call failed too; the connector version stays isolated");
            }
            Some(breaker::Change::Closed) => {
                tracing::warn!(connector, version, "the trial call passed; the connector version serves again");
                m.breaker(connector, version, false, false);
            }
        }
    }

    /// Count a finished call in the metrics: outcome, time, the memory it grew to.
    fn observe(&self, call: &'static str, outcome: &'static str, started: std::time::Instant, usage: Option<Usage>) {
        self.meters.call(call, outcome, started.elapsed());
        if let Some(u) = usage {
            self.meters.usage(u.peak_memory, u.fuel);
        }
    }

    /// What an instance used: the memory it grew to and the fuel it burned.
    fn usage(&self, store: &Store<HostState>) -> Usage {
        let fuel = store.get_fuel().ok().map(|left| self.limits.fuel_per_call.saturating_sub(left));
        Usage { peak_memory: store.data().peak_memory(), fuel }
    }

    /// Run one export with `tape` (recording, replaying or off) and hand the tape back.
    /// Not counted in [`LoadedConnector::calls`]: callers count with `note_outcome`
    /// (shadow replays are not counted). Workers call through `ConnectorSlot`.
    pub async fn call(&self, shop: &str, cfg: Arc<ShopConfig>, call: Call, tape: Tape) -> (Result<Output, CallError>, Tape) {
        let started = std::time::Instant::now();
        let live = !matches!(tape, Tape::Replaying { .. });
        let (mut store, inst, ticket) = match self.start(call.name(), shop, cfg.clone(), started).await {
            Ok(x) => x,
            Err(e) => return (Err(e), tape),
        };
        store.data_mut().tape = tape;
        let out = match &call {
            Call::Pull(req) => self
                .finish("pull-orders", inst.call_pull_orders(&mut store, shop, &convert::pull_request(req)))
                .await
                .map(convert::answer)
                .and_then(|r| held_back_as_throttle("pull-orders", r, store.data().held_back()).map(Output::Pull)),
            Call::Push(updates) => self
                .finish("push-inventory", inst.call_push_inventory(&mut store, shop, &convert::stock_updates(updates)))
                .await
                .map(convert::answers)
                .and_then(|r| held_back_as_throttle("push-inventory", r, store.data().held_back()).map(Output::Push)),
            Call::Webhook(req) => self
                .finish("handle-webhook", inst.call_handle_webhook(&mut store, shop, &convert::webhook_request(req)))
                .await
                .map(|r| Output::Webhook(convert::answers(r))),
        };
        let mut out = out;
        store.data().redactor().output(&mut out);
        let out = out.and_then(|mut o| {
            // Over-long free text is cut and raw JSON past its bound dropped first: the
            // page is judged by what is kept.
            let cut = limits::cut_free_text(o.orders_mut());
            if cut > 0 {
                tracing::warn!(
                    connector = %self.name, version = %self.version, shop, fields = cut,
                    "order titles or buyer fields were longer than the host keeps; cut, ending in `…(cut)`"
                );
                self.limit_hit("text_cut", cut as u64);
            }
            let capped = limits::cap_raw_json(o.orders_mut(), &self.limits);
            if capped > 0 {
                tracing::warn!(
                    connector = %self.name, version = %self.version, shop, orders = capped, max_raw_json_bytes = self.limits.max_raw_json_bytes,
                    "orders' raw JSON was longer than max_raw_json_bytes; kept the orders without it"
                );
                self.limit_hit("raw_json_dropped", capped as u64);
            }
            match o.within(&self.limits, &call, berth_types::clock::now_ms()) {
                Ok(()) => Ok(o),
                Err(limits::Refusal::TooLarge(why)) => Err(CallError::OutputTooLarge { call: call.name(), why }),
                Err(limits::Refusal::Bad(why)) => Err(CallError::BadOutput { call: call.name(), why }),
            }
        });
        let mut out = out;
        if live {
            self.hold_for_throttle(shop, &cfg, store.data().platform_answered(), &mut out);
        }
        self.judge(ticket, out.as_ref().err());
        let tape = std::mem::take(&mut store.data_mut().tape);
        let outcome = out.as_ref().map_or_else(call_error_outcome, Output::outcome);
        self.observe(call.name(), outcome, started, Some(self.usage(&store)));
        (out, tape)
    }

    /// Count how a call that ran with a tape ended (see [`LoadedConnector::call`]).
    pub fn note_outcome(&self, out: &Result<Output, CallError>) {
        self.calls.record(match out {
            Ok(o) => o.ok(),
            // Waiting for the host's own limiter is not the version failing.
            Err(CallError::HeldBack { .. }) => true,
            Err(_) => false,
        });
    }

    /// A pull or push said `rate-limited(ms)`: the platform throttled `shop` (a body
    /// code, say). When the platform answered this call, hold the shop's quota — every
    /// shop sharing it — for the wait, within the platform's `max_hold_secs` and at least
    /// its `suspend_after_throttle_secs`. A claim with no answer from the platform behind
    /// it holds nothing shared: only the calling shop waits (capped the same way). The
    /// answer's `ms` becomes the wait the worker keeps.
    fn hold_for_throttle(&self, shop: &str, cfg: &ShopConfig, answered: bool, out: &mut Result<Output, CallError>) {
        let ms = match out {
            Ok(Output::Pull(Err(ConnectorError::RateLimited(ms))) | Output::Push(Err(ConnectorError::RateLimited(ms)))) => ms,
            _ => return,
        };
        let imports = &self.runtime.imports;
        let wait = Duration::from_millis((*ms).max(1));
        let held = if answered {
            let reason = format!("the connector returned rate-limited({} ms)", wait.as_millis());
            imports.hold_quota(&self.manifest.platform, shop, cfg, wait, &self.name, reason)
        } else {
            let own = wait.min(imports.max_hold(&self.manifest.platform));
            tracing::warn!(
                connector = %self.name, version = %self.version, shop, wait_ms = own.as_millis() as u64,
                "the connector said rate-limited without an answer from the platform in this call: only this shop waits, its quota is not held"
            );
            own
        };
        *ms = held.as_millis() as u64;
    }

    /// Resolves when an operator releases a quota hold (a worker waiting out a hold or a
    /// throttle looks again).
    pub async fn quota_released(&self) {
        self.runtime.imports.quota_released().await
    }

    /// The connector's instance slots: reserved, its max, in use now.
    pub fn pool_share(&self) -> Option<pool::PoolShare> {
        self.runtime.pool.share(&self.name)
    }

    /// A host bound stopped `n` things this connector did or returned (`limit` names it).
    pub fn limit_hit(&self, limit: &str, n: u64) {
        self.runtime.metrics.limit_hit(&self.name, limit, n);
    }

    /// The retry policy in force now for this connector's platform.
    pub fn retry_policy(&self, job: berth_types::retry::Job) -> berth_types::retry::RetryPolicy {
        self.runtime.imports.retry_policy(&self.manifest.platform, job)
    }

    /// Count how a call ended, and hand the result on.
    fn tally<T>(&self, r: Result<Result<T, ConnectorError>, CallError>) -> Result<Result<T, ConnectorError>, CallError> {
        self.calls.record(r.as_ref().is_ok_and(succeeded));
        r
    }

    /// Whether the manifest offers a capability.
    pub fn offers(&self, cap: berth_types::connector::Capability) -> bool {
        self.manifest.capabilities.contains(&cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_types::connector::RateLimit;

    fn manifest(wit: &str) -> Manifest {
        Manifest { platform: "p".into(), connector_version: "1".into(), wit_version: wit.into(), ..placeholder_manifest() }
    }

    #[test]
    fn the_manifest_names_a_served_world_and_the_one_it_imports() {
        assert!(check_manifest(&manifest("0.1.0"), Some("0.1.0")).is_ok());
        assert!(check_manifest(&manifest("0.2.0"), Some("0.2.0")).is_ok());
        assert!(check_manifest(&manifest("0.2.0"), None).is_ok());
        assert!(check_manifest(&manifest("0.4.0"), Some("0.4.0")).is_ok());
        let err = check_manifest(&manifest("0.1.0"), Some("0.2.0")).unwrap_err();
        assert!(err.contains("imports the 0.2.0 world"), "{err}");
        let err = check_manifest(&manifest("0.9.0"), None).unwrap_err();
        assert!(err.contains("not one this host serves (0.1.0, 0.2.0, 0.3.0, 0.4.0)"), "{err}");
        let hosts = Manifest { allowed_hosts: vec!["h".repeat(300)], ..manifest("0.2.0") };
        let err = check_manifest(&hosts, None).unwrap_err();
        assert!(err.contains("at most 253 characters") && err.len() < 200, "named, bounded: {err}");
        let keys = Manifest { required_config: (0..65).map(|i| format!("k{i}")).collect(), ..manifest("0.2.0") };
        assert!(check_manifest(&keys, None).unwrap_err().contains("at most 64"));
        let rate = |requests_per_minute, burst| Manifest { default_rate_limit: RateLimit { requests_per_minute, burst }, ..manifest("0.2.0") };
        assert!(check_manifest(&rate(MAX_DECLARED_PER_MINUTE, MAX_DECLARED_BURST), None).is_ok());
        assert!(check_manifest(&rate(0, 0), None).is_ok(), "no advice");
        let err = check_manifest(&rate(u32::MAX, 1), None).unwrap_err();
        assert!(err.contains("default-rate-limit must be at most 6000000 requests per minute"), "{err}");
        assert!(check_manifest(&rate(60, MAX_DECLARED_BURST + 1), None).is_err());
        let held = held_back_as_throttle::<()>("pull-orders", Err(ConnectorError::Transient("timed out".into())), Some(Duration::from_millis(1500)));
        assert_eq!(held.unwrap_err().held_back_for(), Some(Duration::from_millis(1500)));
        let own = held_back_as_throttle::<()>("pull-orders", Err(ConnectorError::RateLimited(9)), None);
        assert!(matches!(own, Ok(Err(ConnectorError::RateLimited(9)))), "the connector's own throttle stays its own");
    }
}
