//! Per-call store state: the locked-down WASI context and the host imports, bound to
//! the connector, version and shop of this call.

use super::bindings::berth::connector::{config, crypto, http, kv, log, metrics};
use crate::capabilities::{self, http::HostAllowlist, http::HttpGateway, kv::KvStore};
use berth_types::shop::ShopConfig;
use berth_types::http::{HttpError, Request as HttpRequest, Response as HttpResponse};
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Services shared by every call.
pub struct HostServices {
    pub http: HttpGateway,
    pub kv: KvStore,
    pub limits: capabilities::ratelimit::RateLimits,
    pub retry: crate::retry::RetryPolicies,
    pub standby: Arc<capabilities::standby::Standbys>,
    /// The runtime's metric families (calls, bounds hit, guest metrics).
    pub metrics: Arc<super::metrics::RuntimeMetrics>,
    /// Outbound requests and rate-limit waits.
    pub http_metrics: Arc<capabilities::metrics::HttpMetrics>,
    /// Each connector's log allowance per minute (by name: shared by its versions).
    log_minutes: std::sync::Mutex<std::collections::HashMap<String, Arc<super::guest_log::MinuteBudget>>>,
}

impl HostServices {
    /// The services a config describes, over the connector state in `kv`.
    pub fn new(
        cfg: &crate::config::Config,
        kv: KvStore,
        metrics: Arc<super::metrics::RuntimeMetrics>,
        http_metrics: Arc<capabilities::metrics::HttpMetrics>,
    ) -> Result<HostServices, reqwest::Error> {
        Ok(HostServices {
            http: HttpGateway::new(cfg.http.clone())?,
            kv,
            limits: capabilities::ratelimit::RateLimits::new(&cfg.platforms),
            retry: crate::retry::RetryPolicies::new(cfg),
            standby: Arc::new(capabilities::standby::Standbys::new(&cfg.platforms)),
            log_minutes: Default::default(),
            metrics,
            http_metrics,
        })
    }

    /// Connector `name`'s log allowance per minute, the one its other versions spend.
    pub fn log_minute(&self, name: &str, limit: usize) -> Arc<super::guest_log::MinuteBudget> {
        let mut all = self.log_minutes.lock().unwrap_or_else(|e| e.into_inner());
        match all.get(name).filter(|b| b.limit() == limit) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(super::guest_log::MinuteBudget::new(limit, self.metrics.log_dropped_counter(name)));
                all.insert(name.to_string(), b.clone());
                b
            }
        }
    }

    /// Apply a reloaded config's `[platforms]`: limits, retry policies, standby channels.
    pub fn reconfigure(&self, platforms: &std::collections::BTreeMap<String, crate::capabilities::config::PlatformConfig>) {
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
    services: Arc<HostServices>,
    /// Set when the host's rate limiter held a request back past the call's budget:
    /// how long the quota still needs.
    held_back: Option<std::time::Duration>,
    /// Recording for, or replaying to, a shadow run (see tape.rs).
    pub(crate) tape: super::tape::Tape,
    /// What this call may still log (shared with stdout/stderr).
    log: super::guest_log::LogBudget,
    /// Bytes of state (keys and values) this call has written.
    kv_written: usize,
    /// The connector's own platform answered a request of this call (a throttle it
    /// reports then has an answer behind it).
    platform_answered: bool,
    /// This call's turn among the connector's concurrent calls, given back with the store.
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl HostState {
    pub fn new(
        ctx: CallContext,
        services: Arc<HostServices>,
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
            services,
            held_back: None,
            tape: super::tape::Tape::Off,
            log,
            kv_written: 0,
            platform_answered: false,
            _turn: turn,
        }
    }

    /// The calling shop's secrets, for scrubbing what the guest hands back.
    pub fn redactor(&self) -> &super::redact::Redactor {
        &self.ctx.redact
    }

    /// Whether the connector's own platform answered a request of this call.
    pub fn platform_answered(&self) -> bool {
        self.platform_answered
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

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        super::convert::http::answer(self.http_send(super::convert::http::request(req)).await)
    }
}

impl HostState {
    /// A connector's request, in any world's version: replayed, recorded or sent.
    pub async fn http_send(&mut self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
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
    async fn send_live(&mut self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let started = std::time::Instant::now();
        let url_for_log = bounded(&req.url, 256).to_string();
        let services = self.services.clone();
        let url = match services.http.admit(&self.ctx.allow, &req.url) {
            Ok(url) => url,
            Err(e) => return Err(self.refused(&url_for_log, e)),
        };
        // The destination picks the platform whose buckets the request spends, whoever
        // sends it; a destination of no platform's counts against the connector's own.
        let platform: Arc<str> = match services.limits.platform_for(&url) {
            Some(p) if *p != *self.ctx.platform => {
                tracing::debug!(connector = %self.ctx.connector, shop = self.shop_name(), destination_platform = %p, "request to another platform's host: it spends that platform's quota");
                Arc::from(p)
            }
            _ => self.ctx.platform.clone(),
        };
        let cfg = self.ctx.shop.as_ref().map(|(_, c)| c.clone());
        let key = match services.limits.quota_of(&platform, self.shop_name(), cfg.as_deref()) {
            Ok(key) => key,
            Err(e) => {
                let why = format!("{e}: berth cannot tell whose quota this request to `{}` would spend", url.host_str().unwrap_or(""));
                return Err(self.refused(&url_for_log, HttpError::Denied(why)));
            }
        };
        // Wait for the platform's rate limits, leaving the guest half its remaining time.
        let budget = self.ctx.deadline.saturating_duration_since(started) / 2;
        let api_method = services.limits.has_classes(&platform).then(|| api_method(&url, &req)).flatten();
        let endpoint = capabilities::ratelimit::Endpoint { path: url.path(), api_method: api_method.as_deref() };
        // Held until the answer has been learnt from (see RateLimits::acquire).
        let _on_its_way = match services.limits.acquire(&platform, &key, endpoint, budget).await {
            Ok((waited, flight)) => {
                if !waited.is_zero() {
                    services.http_metrics.rate_limit_wait(&platform, waited);
                    tracing::debug!(
                        connector = %self.ctx.connector, shop = self.shop_name(), waited_ms = waited.as_millis() as u64, "rate limit wait"
                    )
                }
                flight
            }
            Err(no_slot) => {
                tracing::info!(connector = %self.ctx.connector, shop = self.shop_name(), error = %no_slot, "request held back");
                self.held_back = Some(std::time::Duration::from_millis(no_slot.wait_ms));
                services.http_metrics.http(&platform, "held_back", None);
                return Err(HttpError::Throttled(no_slot.wait_ms.max(1)));
            }
        };
        let url = services.standby.route(&platform, url);
        let sent = std::time::Instant::now();
        let result = services.http.send_to(&self.ctx.allow, url, req).await;
        let status = match &result {
            Ok(r) => capabilities::metrics::status_class(r.status),
            Err(HttpError::Denied(_)) => "denied",
            Err(HttpError::Timeout) => "timeout",
            Err(HttpError::Connection(_)) => "connection",
            Err(HttpError::TooLarge(_)) => "too_large",
            Err(HttpError::InvalidRequest(_)) => "invalid",
            Err(HttpError::Throttled(_)) => "held_back",
        };
        services.http_metrics.http(&platform, status, Some(sent.elapsed()));
        if result.is_ok() && platform == self.ctx.platform {
            self.platform_answered = true;
        }
        match &result {
            Ok(r) => {
                use capabilities::ratelimit::Hold;
                match services.limits.learn(&platform, &key, self.shop_name(), &self.ctx.connector, r.status, &r.headers) {
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
            Err(HttpError::Denied(_)) => {}
            Err(e) => tracing::warn!(
                connector = %self.ctx.connector, shop = self.shop_name(), url = %strip_query(&url_for_log),
                error = %redacted_error(e), "http request failed"
            ),
        }
        result.map_err(|e| match e {
            HttpError::Denied(why) => self.refused(&url_for_log, HttpError::Denied(why)),
            e => e,
        })
    }
}

/// An HTTP error for the log: reqwest's text names the whole URL, query (and any access
/// token in it) included, so only the kind and the URL's path are kept.
fn redacted_error(e: &HttpError) -> String {
    let scrub = |s: &str| -> String {
        // Cut every URL in the text at its query.
        s.split(' ').map(|w| if w.contains("://") { strip_query(w) } else { w.to_string() }).collect::<Vec<_>>().join(" ")
    };
    match e {
        HttpError::Connection(s) => format!("connection: {}", scrub(s)),
        HttpError::InvalidRequest(s) => format!("invalid request: {}", scrub(s)),
        other => format!("{other:?}"),
    }
}

impl HostState {
    /// Count and log a request refused by policy; returns the error for the guest.
    fn refused(&self, url: &str, e: HttpError) -> HttpError {
        if let HttpError::Denied(why) = &e {
            self.services.http.note_refusal(&self.ctx.connector);
            self.services.http_metrics.http(&self.ctx.platform, "denied", None);
            tracing::warn!(
                connector = %self.ctx.connector, shop = self.shop_name(), url = %strip_query(url),
                reason = %why, "http request refused by policy"
            );
        }
        e
    }
}

/// The API method of an RPC-style call (`method=` in the query, or in a form body).
fn api_method(url: &url::Url, req: &HttpRequest) -> Option<String> {
    let pick = |pairs: url::form_urlencoded::Parse<'_>| pairs.into_iter().find(|(k, _)| k == "method").map(|(_, v)| v.into_owned());
    pick(url.query_pairs()).or_else(|| {
        let form = req.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type") && v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded")
        });
        form.then(|| pick(url::form_urlencoded::parse(&req.body))).flatten()
    })
}

/// URLs may carry tokens in their query; logs get the path only.
/// A URL as logs and errors may show it: scheme, host, port and path — no query, no
/// fragment, no user or password (where access tokens and signatures travel).
fn strip_query(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => {
            let cut = url.split(['?', '#']).next().unwrap_or_default();
            // Not a URL the parser takes: drop anything up to an `@` after the scheme too.
            match cut.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, r)| r)),
                None => cut.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn logged_urls_lose_query_fragment_and_userinfo() {
        assert_eq!(super::strip_query("https://u:p@api.example.com:8443/a/b?access_token=SECRET&x=1#frag"), "https://api.example.com:8443/a/b");
        assert_eq!(super::strip_query("http://127.0.0.1:9/x?sign=abc"), "http://127.0.0.1:9/x");
        assert_eq!(super::strip_query("weird://tok@host/p?q"), "weird://host/p");
        assert_eq!(super::strip_query("not a url?token=1"), "not a url");
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let scope = self.services.kv.scope(&self.ctx.connector, self.shop_name());
        self.tape.kv_get(&key, || scope.get(&key))
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        // The quota bounds what a shop's state holds; these bound the disk writes one
        // call, and one shop per minute, make (rewriting the same keys again and again).
        let n = key.len() + value.len();
        if self.kv_written + n > capabilities::kv::MAX_WRITE_BYTES_PER_CALL {
            self.services.metrics.limit_hit(&self.ctx.connector, "kv_rate", 1);
            return Err(format!(
                "this call has written {} bytes of state; one call may write at most {} (state is for cursors and tokens, not bulk data)",
                self.kv_written,
                capabilities::kv::MAX_WRITE_BYTES_PER_CALL
            ));
        }
        if self.tape.kv_put(&key, Some(&value)) {
            self.kv_written += n;
            return Ok(());
        }
        let scope = self.services.kv.scope(&self.ctx.connector, self.shop_name());
        match scope.set_within(&key, &value, self.ctx.kv_write_per_minute, berth_types::clock::now_ms()) {
            Ok(()) => {
                self.kv_written += n;
                Ok(())
            }
            Err(e) => {
                let limit = match e {
                    capabilities::kv::WriteRefused::Quota { .. } => Some("kv_quota"),
                    capabilities::kv::WriteRefused::Rate { .. } => Some("kv_rate"),
                    _ => None,
                };
                if let Some(limit) = limit {
                    self.services.metrics.limit_hit(&self.ctx.connector, limit, 1);
                }
                Err(e.to_string())
            }
        }
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
            self.services.metrics.guest_refused(&self.ctx.connector, "secret");
            return;
        }
        if let Err(reason) = self.services.metrics.guest(&self.ctx.connector, kind, name, labels, value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str, headers: &[(&str, &str)], body: &str) -> (url::Url, HttpRequest) {
        let r = HttpRequest {
            method: berth_types::http::Method::Post,
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
