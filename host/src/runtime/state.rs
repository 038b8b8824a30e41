//! Per-call store state: the locked-down WASI context and the host imports, bound to
//! the connector, version and shop of this call.

use super::bindings::berth::connector::{config, crypto, http, kv, log, metrics};
use crate::capabilities::{self, http::HostAllowlist, http::HttpGateway, kv::KvStore};
use crate::config::ShopConfig;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Longest guest log line kept; the rest is cut so a guest cannot flood the log.
const MAX_LOG_BYTES: usize = 4096;

/// Services shared by every call.
pub struct HostServices {
    pub http: HttpGateway,
    pub kv: KvStore,
    pub limits: capabilities::ratelimit::RateLimits,
}

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
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    ctx: CallContext,
    services: Arc<HostServices>,
    /// Set when the host's rate limiter held a request back past the call's budget:
    /// how long the quota still needs.
    held_back: Option<std::time::Duration>,
}

impl HostState {
    pub fn new(ctx: CallContext, services: Arc<HostServices>, max_memory_bytes: usize) -> Self {
        let shop = ctx.shop.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
        let out = |stream: &'static str| GuestOutput {
            connector: ctx.connector.clone(),
            shop: shop.clone(),
            stream,
        };
        // No preopened dirs, no env, no args, no sockets, no name lookup.
        let wasi = WasiCtx::builder()
            .stdout(out("stdout"))
            .stderr(out("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(max_memory_bytes).trap_on_grow_failure(true).build(),
            ctx,
            services,
            held_back: None,
        }
    }

    /// Whether (and for how long) the rate limiter held a request of this call back.
    pub fn held_back(&self) -> Option<std::time::Duration> {
        self.held_back
    }

    fn shop_name(&self) -> &str {
        self.ctx.shop.as_ref().map(|(s, _)| s.as_str()).unwrap_or("")
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
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

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        let started = std::time::Instant::now();
        let url_for_log = bounded(&req.url, 256).to_string();
        // Wait for the platform's rate limit, leaving the guest half its remaining time.
        let budget = self.ctx.deadline.saturating_duration_since(started) / 2;
        let cfg = self.ctx.shop.as_ref().map(|(_, c)| c.as_ref());
        match self.services.limits.acquire(&self.ctx.platform, self.shop_name(), cfg, budget).await {
            Ok(waited) if !waited.is_zero() => tracing::debug!(
                connector = %self.ctx.connector, shop = self.shop_name(), waited_ms = waited.as_millis() as u64, "rate limit wait"
            ),
            Ok(_) => {}
            Err(no_slot) => {
                tracing::info!(connector = %self.ctx.connector, shop = self.shop_name(), error = %no_slot, "request held back");
                self.held_back = Some(std::time::Duration::from_millis(no_slot.wait_ms));
                return Err(http::HttpError::Timeout);
            }
        }
        let result = self.services.http.send(&self.ctx.allow, req).await;
        if let Ok(r) = &result {
            let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            if let Some(wait) = capabilities::ratelimit::retry_after(r.status, &r.headers, now_s) {
                tracing::info!(connector = %self.ctx.connector, shop = self.shop_name(), wait_ms = wait.as_millis() as u64, "platform throttled; holding its quota");
                self.services.limits.penalize(&self.ctx.platform, self.shop_name(), cfg, wait);
            }
        }
        match &result {
            Ok(r) => tracing::debug!(
                connector = %self.ctx.connector, shop = self.shop_name(), status = r.status,
                ms = started.elapsed().as_millis() as u64, "http"
            ),
            Err(http::HttpError::Denied(why)) => {
                self.services.http.note_refusal(&self.ctx.connector);
                tracing::warn!(
                    connector = %self.ctx.connector, shop = self.shop_name(), url = %strip_query(&url_for_log),
                    reason = %why, "http request refused by policy"
                )
            }
            Err(e) => tracing::warn!(
                connector = %self.ctx.connector, shop = self.shop_name(), url = %strip_query(&url_for_log),
                error = ?e, "http request failed"
            ),
        }
        result
    }
}

/// URLs may carry tokens in their query; logs get the path only.
fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        self.services.kv.scope(&self.ctx.connector, self.shop_name()).get(&key)
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.services.kv.scope(&self.ctx.connector, self.shop_name()).set(&key, &value)
    }
    fn delete(&mut self, key: String) -> Result<(), String> {
        self.services.kv.scope(&self.ctx.connector, self.shop_name()).delete(&key)
    }
    fn list_prefix(&mut self, prefix: String) -> Result<Vec<String>, String> {
        self.services.kv.scope(&self.ctx.connector, self.shop_name()).list_prefix(&prefix)
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.shop.as_ref().and_then(|(_, cfg)| cfg.value(&key)).map(str::to_string)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let msg = bounded(&message, MAX_LOG_BYTES);
        let (c, v, s) = (&*self.ctx.connector, &*self.ctx.version, self.shop_name());
        match level {
            log::Level::Trace => tracing::trace!(connector = c, version = v, shop = s, "guest: {msg}"),
            log::Level::Debug => tracing::debug!(connector = c, version = v, shop = s, "guest: {msg}"),
            log::Level::Info => tracing::info!(connector = c, version = v, shop = s, "guest: {msg}"),
            log::Level::Warn => tracing::warn!(connector = c, version = v, shop = s, "guest: {msg}"),
            log::Level::Error => tracing::error!(connector = c, version = v, shop = s, "guest: {msg}"),
        }
    }
}

impl metrics::Host for HostState {
    // Metrics export arrives with the operations work; until then guest metrics are
    // traced at debug level, bounded, so they cost nothing when not looked at.
    fn counter_add(&mut self, name: String, _labels: Vec<(String, String)>, value: u64) {
        tracing::debug!(connector = %self.ctx.connector, metric = bounded(&name, 64), value, "guest counter");
    }
    fn gauge_set(&mut self, name: String, _labels: Vec<(String, String)>, value: f64) {
        tracing::debug!(connector = %self.ctx.connector, metric = bounded(&name, 64), value, "guest gauge");
    }
    fn histogram_observe(&mut self, name: String, _labels: Vec<(String, String)>, value: f64) {
        tracing::debug!(connector = %self.ctx.connector, metric = bounded(&name, 64), value, "guest histogram");
    }
}

impl crypto::Host for HostState {
    fn md5(&mut self, data: Vec<u8>) -> Vec<u8> {
        capabilities::crypto::md5(&data)
    }
    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        capabilities::crypto::sha256(&data)
    }
    fn hmac_md5(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        capabilities::crypto::hmac_md5(&key, &data)
    }
    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        capabilities::crypto::hmac_sha256(&key, &data)
    }
    fn base64_encode(&mut self, data: Vec<u8>) -> String {
        capabilities::crypto::base64_encode(&data)
    }
    fn base64_decode(&mut self, text: String) -> Result<Vec<u8>, String> {
        capabilities::crypto::base64_decode(&text)
    }
    fn hex_encode(&mut self, data: Vec<u8>, upper: bool) -> String {
        capabilities::crypto::hex_encode(&data, upper)
    }
}

impl super::bindings::berth::connector::types::Host for HostState {}

/// Guest stdout/stderr, line by line into the tracing log.
#[derive(Clone)]
struct GuestOutput {
    connector: Arc<str>,
    shop: String,
    stream: &'static str,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestWriter { out: self.clone() })
    }
}

struct GuestWriter {
    out: GuestOutput,
}

impl tokio::io::AsyncWrite for GuestWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let text = String::from_utf8_lossy(&buf[..buf.len().min(MAX_LOG_BYTES)]);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(connector = %self.out.connector, shop = %self.out.shop, stream = self.out.stream, "guest: {line}");
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
