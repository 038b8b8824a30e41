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
    pub retry: crate::retry::RetryPolicies,
    pub standby: Arc<capabilities::standby::Standbys>,
}

impl HostServices {
    /// The services a config describes, over the connector state in `kv`.
    pub fn new(cfg: &crate::config::Config, kv: KvStore) -> Result<HostServices, reqwest::Error> {
        Ok(HostServices {
            http: HttpGateway::new(cfg.http.clone())?,
            kv,
            limits: capabilities::ratelimit::RateLimits::new(&cfg.platforms),
            retry: crate::retry::RetryPolicies::new(cfg),
            standby: Arc::new(capabilities::standby::Standbys::new(&cfg.platforms)),
        })
    }

    /// Apply a reloaded config's `[platforms]`: limits, retry policies, standby channels.
    pub fn reconfigure(&self, platforms: &std::collections::BTreeMap<String, crate::config::PlatformConfig>) {
        self.limits.reconfigure(platforms);
        self.retry.reconfigure(platforms);
        self.standby.reconfigure(platforms);
    }
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
    /// The shop's secret values, kept out of what the guest writes.
    pub redact: super::redact::Redactor,
}

pub struct HostState {
    /// Built on the call's first WASI import (see [`locked_down_wasi`]): most calls of a
    /// connector that touches no WASI interface never pay for it.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limits: PeakLimits,
    ctx: CallContext,
    services: Arc<HostServices>,
    /// Set when the host's rate limiter held a request back past the call's budget:
    /// how long the quota still needs.
    held_back: Option<std::time::Duration>,
    /// Recording for, or replaying to, a shadow run (see tape.rs).
    pub(crate) tape: super::tape::Tape,
    /// What this call may still log (shared with stdout/stderr).
    log: super::limits::LogBudget,
    /// Bytes of state (keys and values) this call has written.
    kv_written: usize,
    /// This call's turn among the connector's concurrent calls, given back with the store.
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl HostState {
    pub fn new(
        ctx: CallContext,
        services: Arc<HostServices>,
        max_memory_bytes: usize,
        log: super::limits::LogBudget,
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
            services,
            held_back: None,
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
fn locked_down_wasi(ctx: &CallContext, log: &super::limits::LogBudget) -> WasiCtx {
    let shop = ctx.shop.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
    let out = |stream: &'static str| GuestOutput {
        connector: ctx.connector.clone(),
        shop: shop.clone(),
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
        // A shadow run is answered from the active version's recording; nothing leaves.
        if let Some(answer) = self.tape.answer(&req.method, &req.url) {
            return answer;
        }
        if !matches!(self.tape, super::tape::Tape::Recording { .. }) {
            return self.send_live(req).await;
        }
        let (method, raw_url) = (req.method, req.url.clone());
        let result = self.send_live(req).await;
        self.tape.record(&method, &raw_url, &result);
        result
    }
}

impl HostState {
    async fn send_live(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        let started = std::time::Instant::now();
        let url_for_log = bounded(&req.url, 256).to_string();
        let services = self.services.clone();
        let url = match services.http.admit(&self.ctx.allow, &req.url) {
            Ok(url) => url,
            Err(e) => return Err(self.refused(&url_for_log, e)),
        };
        // Wait for the platform's rate limits, leaving the guest half its remaining time.
        let budget = self.ctx.deadline.saturating_duration_since(started) / 2;
        let cfg = self.ctx.shop.as_ref().map(|(_, c)| c.clone());
        let api_method = services.limits.has_classes(&self.ctx.platform).then(|| api_method(&url, &req)).flatten();
        let endpoint = capabilities::ratelimit::Endpoint { path: url.path(), api_method: api_method.as_deref() };
        // Held until the answer has been learnt from (see RateLimits::acquire).
        let _on_its_way = match services.limits.acquire(&self.ctx.platform, self.shop_name(), cfg.as_deref(), endpoint, budget).await {
            Ok((waited, flight)) => {
                if !waited.is_zero() {
                    crate::metrics::Metrics::get().rate_limit_wait(&self.ctx.platform, waited);
                    tracing::debug!(
                        connector = %self.ctx.connector, shop = self.shop_name(), waited_ms = waited.as_millis() as u64, "rate limit wait"
                    )
                }
                flight
            }
            Err(no_slot) => {
                tracing::info!(connector = %self.ctx.connector, shop = self.shop_name(), error = %no_slot, "request held back");
                self.held_back = Some(std::time::Duration::from_millis(no_slot.wait_ms));
                crate::metrics::Metrics::get().http(&self.ctx.platform, "held_back", None);
                return Err(http::HttpError::Throttled(no_slot.wait_ms.max(1)));
            }
        };
        let url = services.standby.route(&self.ctx.platform, url);
        let sent = std::time::Instant::now();
        let result = services.http.send_to(&self.ctx.allow, url, req).await;
        let status = match &result {
            Ok(r) => crate::metrics::status_class(r.status),
            Err(http::HttpError::Denied(_)) => "denied",
            Err(http::HttpError::Timeout) => "timeout",
            Err(http::HttpError::Connection(_)) => "connection",
            Err(http::HttpError::TooLarge(_)) => "too_large",
            Err(http::HttpError::InvalidRequest(_)) => "invalid",
            Err(http::HttpError::Throttled(_)) => "held_back",
        };
        crate::metrics::Metrics::get().http(&self.ctx.platform, status, Some(sent.elapsed()));
        match &result {
            Ok(r) => {
                use capabilities::ratelimit::Hold;
                match services.limits.learn(&self.ctx.platform, self.shop_name(), cfg.as_deref(), r.status, &r.headers) {
                    Some(Hold::Throttled(wait)) => tracing::info!(
                        connector = %self.ctx.connector, shop = self.shop_name(), wait_ms = wait.as_millis() as u64,
                        "platform throttled; holding its quota"
                    ),
                    Some(Hold::NearlyFull(wait)) => tracing::debug!(
                        connector = %self.ctx.connector, shop = self.shop_name(), wait_ms = wait.as_millis() as u64,
                        "platform's call bucket nearly full; slowing down"
                    ),
                    None => {}
                }
                tracing::debug!(
                    connector = %self.ctx.connector, shop = self.shop_name(), status = r.status,
                    ms = started.elapsed().as_millis() as u64, "http"
                )
            }
            Err(http::HttpError::Denied(_)) => {}
            Err(e) => tracing::warn!(
                connector = %self.ctx.connector, shop = self.shop_name(), url = %strip_query(&url_for_log),
                error = ?e, "http request failed"
            ),
        }
        result.map_err(|e| match e {
            http::HttpError::Denied(why) => self.refused(&url_for_log, http::HttpError::Denied(why)),
            e => e,
        })
    }
}

impl HostState {
    /// Count and log a request refused by policy; returns the error for the guest.
    fn refused(&self, url: &str, e: http::HttpError) -> http::HttpError {
        if let http::HttpError::Denied(why) = &e {
            self.services.http.note_refusal(&self.ctx.connector);
            crate::metrics::Metrics::get().http(&self.ctx.platform, "denied", None);
            tracing::warn!(
                connector = %self.ctx.connector, shop = self.shop_name(), url = %strip_query(url),
                reason = %why, "http request refused by policy"
            );
        }
        e
    }
}

/// The API method of an RPC-style call (`method=` in the query, or in a form body).
fn api_method(url: &url::Url, req: &http::Request) -> Option<String> {
    let pick = |pairs: url::form_urlencoded::Parse<'_>| pairs.into_iter().find(|(k, _)| k == "method").map(|(_, v)| v.into_owned());
    pick(url.query_pairs()).or_else(|| {
        let form = req.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type") && v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded")
        });
        form.then(|| pick(url::form_urlencoded::parse(&req.body))).flatten()
    })
}

/// URLs may carry tokens in their query; logs get the path only.
fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let scope = self.services.kv.scope(&self.ctx.connector, self.shop_name());
        self.tape.kv_get(&key, || scope.get(&key))
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        // The quota bounds what a shop's state holds; this bounds the disk writes one
        // call makes (rewriting the same keys again and again).
        let n = key.len() + value.len();
        if self.kv_written + n > capabilities::kv::MAX_WRITE_BYTES_PER_CALL {
            return Err(format!(
                "this call has written {} bytes of state; one call may write at most {} (state is for cursors and tokens, not bulk data)",
                self.kv_written,
                capabilities::kv::MAX_WRITE_BYTES_PER_CALL
            ));
        }
        self.kv_written += n;
        if self.tape.kv_put(&key, Some(&value)) {
            return Ok(());
        }
        self.services.kv.scope(&self.ctx.connector, self.shop_name()).set(&key, &value)
    }
    fn delete(&mut self, key: String) -> Result<(), String> {
        if self.tape.kv_put(&key, None) {
            return Ok(());
        }
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
        if !self.log.take(msg.len()) {
            return;
        }
        let msg = self.ctx.redact.text(msg);
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
    // Exported under berth_connector_metric_*, bounded (see crate::metrics::GUEST_MAX_SERIES).
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        self.guest_metric(crate::metrics::GuestKind::Counter, &name, &labels, value as f64);
    }
    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.guest_metric(crate::metrics::GuestKind::Gauge, &name, &labels, value);
    }
    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        self.guest_metric(crate::metrics::GuestKind::Histogram, &name, &labels, value);
    }
}

impl HostState {
    fn guest_metric(&self, kind: crate::metrics::GuestKind, name: &str, labels: &[(String, String)], value: f64) {
        let secret = |s: &str| matches!(self.ctx.redact.text(s), std::borrow::Cow::Owned(_));
        if secret(name) || labels.iter().any(|(k, v)| secret(k) || secret(v)) {
            // Not even redacted: a series named after a secret says where it is.
            crate::metrics::Metrics::get().guest_refused(&self.ctx.connector, "secret");
            return;
        }
        if let Err(reason) = crate::metrics::Metrics::get().guest(&self.ctx.connector, kind, name, labels, value) {
            tracing::debug!(connector = %self.ctx.connector, metric = bounded(name, 64), reason, "guest metric dropped");
        }
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
    budget: super::limits::LogBudget,
    redact: super::redact::Redactor,
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
        for line in text.lines().filter(|l| !l.trim().is_empty() && self.out.budget.take(l.len())) {
            let line = self.out.redact.text(line);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str, headers: &[(&str, &str)], body: &str) -> (url::Url, http::Request) {
        let r = http::Request {
            method: http::Method::Post,
            url: url.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
            timeout_ms: None,
        };
        (url::Url::parse(url).unwrap(), r)
    }

    #[test]
    fn reads_the_api_method_from_the_query_or_a_form_body() {
        let (u, r) = req("http://gw/router/rest?method=taobao.trades.sold.get&v=2.0", &[], "");
        assert_eq!(api_method(&u, &r).as_deref(), Some("taobao.trades.sold.get"));
        let form = [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")];
        let (u, r) = req("http://gw/router/rest", &form, "app_key=1&method=taobao.item.quantity.update&sign=X");
        assert_eq!(api_method(&u, &r).as_deref(), Some("taobao.item.quantity.update"));
        // A JSON body is not read as a form.
        let (u, r) = req("http://gw/router/rest", &[("content-type", "application/json")], "method=x");
        assert_eq!(api_method(&u, &r), None);
    }
}
