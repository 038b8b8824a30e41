//! Per-call store state: the locked-down WASI context and the host imports, bound to
//! the connector, version and shop of this call.

use super::bindings::berth::connector::{config, crypto, http, kv, log, metrics};
use super::allowlist::HostAllowlist;
use super::imports::{HostImports, SendNotes};
use super::metrics::RuntimeMetrics;
use berth_types::shop::ShopConfig;
use berth_types::http::{HttpError, Request as HttpRequest, Response as HttpResponse};
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Who is calling: fixed for the life of one store.
#[derive(Clone)]
pub struct CallContext {
    pub connector: Arc<str>,
    pub version: Arc<str>,
    /// `None` for calls not made on a shop's behalf (e.g. reading the manifest).
    pub shop: Option<(String, Arc<ShopConfig>)>,
    pub allow: Arc<HostAllowlist>,
    /// The manifest's platform id (rate limits are per platform).
    pub platform: Arc<str>,
    /// When this call's deadline passes; outbound waits stay well inside it.
    pub deadline: std::time::Instant,
    /// The shop's secret values, kept out of what the guest writes.
    pub redact: super::redact::Redactor,
    /// State bytes the connector may write per shop per minute.
    pub kv_write_per_minute: u64,
}

pub struct HostState {
    /// Built on the call's first WASI import (see [`locked_down_wasi`]): most calls of a
    /// connector that touches no WASI interface never pay for it.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limits: PeakLimits,
    ctx: CallContext,
    /// What the imports reach outside the sandbox (the capabilities).
    imports: Arc<dyn HostImports>,
    metrics: Arc<RuntimeMetrics>,
    /// Whether the host's rate limiter held a request back past the call's budget (and
    /// how long the quota still needs), whether the platform answered one.
    notes: SendNotes,
    /// Recording for, or replaying to, a shadow run (see tape.rs).
    pub(crate) tape: super::tape::Tape,
    /// What this call may still log (shared with stdout/stderr).
    log: super::guest_log::LogBudget,
    /// Bytes of state (keys and values) this call has written.
    kv_written: usize,
    /// This call's turn among the connector's concurrent calls, given back with the store.
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl HostState {
    pub fn new(
        ctx: CallContext,
        imports: Arc<dyn HostImports>,
        metrics: Arc<RuntimeMetrics>,
        max_memory_bytes: usize,
        log: super::guest_log::LogBudget,
        turn: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        HostState {
            wasi: None,
            table: ResourceTable::new(),
            limits: PeakLimits {
                inner: StoreLimitsBuilder::new().memory_size(max_memory_bytes).trap_on_grow_failure(true).build(),
                peak_memory: 0,
            },
            ctx,
            imports,
            metrics,
            notes: SendNotes::default(),
            tape: super::tape::Tape::Off,
            log,
            kv_written: 0,
            _turn: turn,
        }
    }

    /// The calling shop's secrets, for scrubbing what the guest hands back.
    pub fn redactor(&self) -> &super::redact::Redactor {
        &self.ctx.redact
    }

    /// Whether the connector's own platform answered a request of this call.
    pub fn platform_answered(&self) -> bool {
        self.notes.platform_answered
    }

    /// Whether (and for how long) the rate limiter held a request of this call back.
    pub fn held_back(&self) -> Option<std::time::Duration> {
        self.notes.held_back
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// The most linear memory any of the instance's memories was allowed to grow to.
    pub fn peak_memory(&self) -> usize {
        self.limits.peak_memory
    }
}

/// The store's limits, noting the largest memory growth they allowed.
pub struct PeakLimits {
    inner: StoreLimits,
    peak_memory: usize,
}

impl ResourceLimiter for PeakLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak_memory = self.peak_memory.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ctx = self.wasi.get_or_insert_with(|| locked_down_wasi(&self.ctx, &self.log));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

/// The WASI a connector gets: no preopened dirs, no env, no args, no sockets, no name
/// lookup; stdout and stderr go line by line to the log under the call's budget.
fn locked_down_wasi(ctx: &CallContext, log: &super::guest_log::LogBudget) -> WasiCtx {
    let out = |stream: &'static str| super::guest_log::GuestOutput {
        origin: ctx.origin(),
        stream,
        budget: log.clone(),
        redact: ctx.redact.clone(),
    };
    WasiCtx::builder()
        .stdout(out("stdout"))
        .stderr(out("stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl CallContext {
    /// The calling shop's name (empty for calls not made for a shop).
    pub fn shop_name(&self) -> &str {
        self.shop.as_ref().map(|(s, _)| s.as_str()).unwrap_or("")
    }

    /// Who writes this call's guest log records.
    fn origin(&self) -> super::guest_log::Origin {
        let shop: Arc<str> = self.shop.as_ref().map_or_else(|| Arc::from(""), |(s, _)| Arc::from(s.as_str()));
        super::guest_log::Origin { connector: self.connector.clone(), version: self.version.clone(), shop }
    }
}

/// Cut a guest string to `max` bytes on a char boundary.
pub fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// State bytes (keys and values, overwrites included) one call may write.
pub const MAX_KV_WRITE_BYTES_PER_CALL: usize = 1024 * 1024;

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        super::convert::http::answer(self.http_send(super::convert::http::request(req)).await)
    }
}

impl HostState {
    /// A connector's request, in any world's version: replayed, recorded or sent.
    pub async fn http_send(&mut self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.http_send_costed(req, None).await
    }

    /// `http.send`, for a request expected to cost points of a platform quota (0.3.0).
    pub async fn http_send_costed(&mut self, req: HttpRequest, cost: Option<berth_types::http::Cost>) -> Result<HttpResponse, HttpError> {
        // A shadow run is answered from the active version's recording; nothing leaves.
        if let Some(answer) = self.tape.answer(&req) {
            return answer;
        }
        if !self.tape.is_recording() {
            return self.send_live(req, cost).await;
        }
        let sent = req.clone();
        let result = self.send_live(req, cost).await;
        self.tape.record(sent, &result);
        result
    }

    async fn send_live(&mut self, req: HttpRequest, cost: Option<berth_types::http::Cost>) -> Result<HttpResponse, HttpError> {
        let imports = self.imports.clone();
        imports.send(&self.ctx, req, cost, &mut self.notes).await
    }

    /// `quota.report` (0.3.0). A shadow run's reports are about recorded answers, not the
    /// platform now: they are dropped.
    pub fn report_quota(&mut self, report: berth_types::http::QuotaReport) -> Result<(), String> {
        if self.tape.is_replaying() {
            return Ok(());
        }
        let sent = self.notes.points_sent.as_ref().filter(|(name, _)| *name == report.name).map(|(_, n)| *n);
        let out = self.imports.report_quota(&self.ctx, report, sent);
        if out.is_err() {
            self.metrics.limit_hit(&self.ctx.connector, "quota_report", 1);
        }
        out
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let (imports, ctx) = (&self.imports, &self.ctx);
        self.tape.kv_get(&key, || imports.kv_get(ctx, &key))
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        // The quota bounds what a shop's state holds; these bound the disk writes one
        // call, and one shop per minute, make (rewriting the same keys again and again).
        let n = key.len() + value.len();
        if self.kv_written + n > MAX_KV_WRITE_BYTES_PER_CALL {
            self.metrics.limit_hit(&self.ctx.connector, "kv_rate", 1);
            return Err(format!(
                "this call has written {} bytes of state; one call may write at most {} (state is for cursors and tokens, not bulk data)",
                self.kv_written, MAX_KV_WRITE_BYTES_PER_CALL
            ));
        }
        if self.tape.kv_put(&key, Some(&value)) {
            self.kv_written += n;
            return Ok(());
        }
        match self.imports.kv_set(&self.ctx, &key, &value) {
            Ok(()) => {
                self.kv_written += n;
                Ok(())
            }
            Err(e) => {
                if let Some(limit) = e.limit() {
                    self.metrics.limit_hit(&self.ctx.connector, limit, 1);
                }
                Err(e.to_string())
            }
        }
    }
    fn delete(&mut self, key: String) -> Result<(), String> {
        if self.tape.kv_put(&key, None) {
            return Ok(());
        }
        self.imports.kv_delete(&self.ctx, &key)
    }
    fn list_prefix(&mut self, prefix: String) -> Result<Vec<String>, String> {
        self.imports.kv_list(&self.ctx, &prefix)
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.shop.as_ref().and_then(|(_, cfg)| cfg.value(&key)).map(str::to_string)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        super::guest_log::emit(&self.ctx.origin(), level, "log", &message, &self.log, &self.ctx.redact);
    }
}

impl metrics::Host for HostState {
    // Exported under berth_connector_metric_*, bounded (see super::metrics::GUEST_MAX_SERIES).
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        self.guest_metric(super::metrics::GuestKind::Counter, &name, &labels, value as f64);
    }
    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.guest_metric(super::metrics::GuestKind::Gauge, &name, &labels, value);
    }
    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.guest_metric(super::metrics::GuestKind::Histogram, &name, &labels, value);
    }
}

impl HostState {
    fn guest_metric(&self, kind: super::metrics::GuestKind, name: &str, labels: &[(String, String)], value: f64) {
        let secret = |s: &str| matches!(self.ctx.redact.text(s), std::borrow::Cow::Owned(_));
        if secret(name) || labels.iter().any(|(k, v)| secret(k) || secret(v)) {
            // Not even redacted: a series named after a secret says where it is.
            self.metrics.guest_refused(&self.ctx.connector, "secret");
            return;
        }
        if let Err(reason) = self.metrics.guest(&self.ctx.connector, kind, name, labels, value) {
            tracing::debug!(connector = %self.ctx.connector, metric = bounded(name, 64), reason, "guest metric dropped");
        }
    }
}

impl crypto::Host for HostState {
    fn md5(&mut self, data: Vec<u8>) -> Vec<u8> {
        super::crypto::md5(&data)
    }
    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        super::crypto::sha256(&data)
    }
    fn hmac_md5(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        super::crypto::hmac_md5(&key, &data)
    }
    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        super::crypto::hmac_sha256(&key, &data)
    }
    fn base64_encode(&mut self, data: Vec<u8>) -> String {
        super::crypto::base64_encode(&data)
    }
    fn base64_decode(&mut self, text: String) -> Result<Vec<u8>, String> {
        super::crypto::base64_decode(&text)
    }
    fn hex_encode(&mut self, data: Vec<u8>, upper: bool) -> String {
        super::crypto::hex_encode(&data, upper)
    }
}

impl super::bindings::berth::connector::types::Host for HostState {}
