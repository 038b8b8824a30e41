//! The capabilities as one service the runtime calls through its `HostImports` trait:
//! outbound requests pass the gateway (allowlist, address guard), the platform's rate
//! limits and holds, and the standby router, and their answers teach the limiter; state
//! goes to the shop's kv scope; throttles reported by connectors hold quotas.

use super::http::HttpGateway;
use super::kv::KvStore;
use berth_runtime::imports::{HostImports, KvRefusal, Pending, SendNotes};
use berth_runtime::state::CallContext;
use berth_types::http::{HttpError, Request as HttpRequest, Response as HttpResponse};
use berth_types::retry::{Job, RetryPolicy};
use berth_types::shop::ShopConfig;
use std::sync::Arc;
use std::time::Duration;

/// Services shared by every call.
pub struct HostServices {
    pub http: HttpGateway,
    pub kv: KvStore,
    pub limits: super::ratelimit::RateLimits,
    pub retry: super::retry::RetryPolicies,
    pub standby: Arc<super::standby::Standbys>,
    /// Outbound requests and rate-limit waits.
    pub http_metrics: Arc<super::metrics::HttpMetrics>,
    /// Faults a drill injects into one shop's calls.
    pub faults: Arc<super::drills::InjectedFaults>,
    /// Cluster mode: asked right before each request leaves (see [`HostServices::gate_platforms`]).
    platform_gate: std::sync::RwLock<Option<PlatformGate>>,
}

/// Whether this node may act on platforms right now.
pub type PlatformGate = Arc<dyn Fn() -> bool + Send + Sync>;

impl HostServices {
    /// The services `[http]` and `[platforms]` describe, with the job defaults of the
    /// retry policies, over the connector state in `kv`.
    pub fn new(
        http: &super::config::HttpConfig,
        platforms: &std::collections::BTreeMap<String, super::config::PlatformConfig>,
        retry: super::retry::RetryDefaults,
        kv: KvStore,
        http_metrics: Arc<super::metrics::HttpMetrics>,
    ) -> Result<HostServices, reqwest::Error> {
        let faults = Arc::new(super::drills::InjectedFaults::default());
        Ok(HostServices {
            http: HttpGateway::new(http.clone())?,
            kv,
            limits: super::ratelimit::RateLimits::new(platforms),
            retry: super::retry::RetryPolicies::new(retry, platforms),
            standby: Arc::new(super::standby::Standbys::new(platforms).with_faults(faults.clone())),
            http_metrics,
            faults,
            platform_gate: std::sync::RwLock::new(None),
        })
    }

    /// Cluster mode: no request leaves while `gate` says no (this node is cut off, or has
    /// just woken from a pause and its leases may be another node's). Asked after the
    /// rate-limit wait, right before sending: a stalled process that wakes must not send
    /// a push the shop's new owner has superseded. A request held so answers as
    /// throttled (the caller waits and retries without spending an attempt).
    pub fn gate_platforms(&self, gate: PlatformGate) {
        *self.platform_gate.write().unwrap_or_else(|p| p.into_inner()) = Some(gate);
    }

    /// Apply a reloaded config's `[platforms]`: limits, retry policies, standby channels.
    pub fn reconfigure(&self, platforms: &std::collections::BTreeMap<String, crate::config::PlatformConfig>) {
        self.limits.reconfigure(platforms);
        self.retry.reconfigure(platforms);
        self.standby.reconfigure(platforms);
    }
}

/// How long a request held by the platform gate tells its caller to wait.
const GATE_HOLD_MS: u64 = 500;

impl HostServices {
    async fn send_live(&self, ctx: &CallContext, req: HttpRequest, cost: Option<berth_types::http::Cost>, notes: &mut SendNotes) -> Result<HttpResponse, HttpError> {
        let started = std::time::Instant::now();
        let url_for_log = berth_runtime::state::bounded(&req.url, 256).to_string();
        let url = match self.http.admit(&ctx.allow, &req.url) {
            Ok(url) => url,
            Err(e) => return Err(self.refused(ctx, &url_for_log, e)),
        };
        // The destination picks the platform whose buckets the request spends, whoever
        // sends it; a destination of no platform's counts against the connector's own.
        let platform: Arc<str> = match self.limits.platform_for(&url) {
            Some(p) if *p != *ctx.platform => {
                tracing::debug!(connector = %ctx.connector, shop = ctx.shop_name(), destination_platform = %p, "request to another platform's host: it spends that platform's quota");
                Arc::from(p)
            }
            _ => ctx.platform.clone(),
        };
        let cfg = ctx.shop.as_ref().map(|(_, c)| c.clone());
        let key = match self.limits.quota_of(&platform, ctx.shop_name(), cfg.as_deref()) {
            Ok(key) => key,
            Err(e) => {
                let why = format!("{e}: berth cannot tell whose quota this request to `{}` would spend", url.host_str().unwrap_or(""));
                return Err(self.refused(ctx, &url_for_log, HttpError::Denied(why)));
            }
        };
        // Wait for the platform's rate limits, leaving the guest half its remaining time.
        let mut budget = ctx.deadline.saturating_duration_since(started) / 2;
        // A request expected to cost points of a quota the platform reports waits for them.
        let _points = match &cost {
            None => None,
            Some(c) => match self.limits.points.take(&platform, &key, c, budget).await {
                Ok((waited, spent)) => {
                    if !waited.is_zero() {
                        self.http_metrics.rate_limit_wait(&platform, waited);
                        tracing::debug!(connector = %ctx.connector, shop = ctx.shop_name(), quota = %c.quota, points = c.points, waited_ms = waited.as_millis() as u64, "points quota wait");
                    }
                    budget = budget.saturating_sub(waited);
                    if let Some(s) = &spent {
                        notes.points_sent = Some((c.quota.clone(), s.sent));
                    }
                    spent
                }
                Err(no_slot) => {
                    tracing::info!(connector = %ctx.connector, shop = ctx.shop_name(), quota = %c.quota, points = c.points, error = %no_slot, "request held back: its quota lacks the points");
                    notes.held_back = Some(std::time::Duration::from_millis(no_slot.wait_ms));
                    self.http_metrics.http(&platform, "held_back", None);
                    return Err(HttpError::Throttled(no_slot.wait_ms.max(1)));
                }
            },
        };
        let api_method = self.limits.has_classes(&platform).then(|| api_method(&url, &req)).flatten();
        let endpoint = super::ratelimit::Endpoint { path: url.path(), api_method: api_method.as_deref() };
        // Held until the answer has been learnt from (see RateLimits::acquire).
        let _on_its_way = match self.limits.acquire(&platform, &key, endpoint, budget).await {
            Ok((waited, flight)) => {
                if !waited.is_zero() {
                    self.http_metrics.rate_limit_wait(&platform, waited);
                    tracing::debug!(
                        connector = %ctx.connector, shop = ctx.shop_name(), waited_ms = waited.as_millis() as u64, "rate limit wait"
                    )
                }
                flight
            }
            Err(no_slot) => {
                tracing::info!(connector = %ctx.connector, shop = ctx.shop_name(), error = %no_slot, "request held back");
                notes.held_back = Some(std::time::Duration::from_millis(no_slot.wait_ms));
                self.http_metrics.http(&platform, "held_back", None);
                return Err(HttpError::Throttled(no_slot.wait_ms.max(1)));
            }
        };
        let url = self.standby.route(&platform, url);
        let gate = self.platform_gate.read().unwrap_or_else(|p| p.into_inner()).clone();
        if gate.is_some_and(|may| !may()) {
            tracing::info!(connector = %ctx.connector, shop = ctx.shop_name(), "request held: this node's shop leases are not sound right now");
            notes.held_back = Some(std::time::Duration::from_millis(GATE_HOLD_MS));
            self.http_metrics.http(&platform, "held_back", None);
            return Err(HttpError::Throttled(GATE_HOLD_MS));
        }
        let sent = std::time::Instant::now();
        // A drill on this shop answers in the platform's place.
        let result = match self.faults.answer(ctx.shop_name(), || self.standby.on_primary(&platform, &url)) {
            Some(injected) => injected,
            None => self.http.send_to(&ctx.allow, url, req).await,
        };
        let status = match &result {
            Ok(r) => super::metrics::status_class(r.status),
            Err(HttpError::Denied(_)) => "denied",
            Err(HttpError::Timeout) => "timeout",
            Err(HttpError::Connection(_)) => "connection",
            Err(HttpError::TooLarge(_)) => "too_large",
            Err(HttpError::InvalidRequest(_)) => "invalid",
            Err(HttpError::Throttled(_)) => "held_back",
        };
        self.http_metrics.http(&platform, status, Some(sent.elapsed()));
        if result.is_ok() && platform == ctx.platform {
            notes.platform_answered = true;
        }
        match &result {
            Ok(r) => {
                use super::ratelimit::Hold;
                match self.limits.learn(&platform, &key, ctx.shop_name(), &ctx.connector, r.status, &r.headers) {
                    Some(Hold::Throttled(wait)) => tracing::info!(
                        connector = %ctx.connector, shop = ctx.shop_name(), wait_ms = wait.as_millis() as u64,
                        "platform throttled; holding its quota"
                    ),
                    Some(Hold::NearlyFull(wait)) => tracing::debug!(
                        connector = %ctx.connector, shop = ctx.shop_name(), wait_ms = wait.as_millis() as u64,
                        "platform's call bucket nearly full; slowing down"
                    ),
                    None => {}
                }
                tracing::debug!(
                    connector = %ctx.connector, shop = ctx.shop_name(), status = r.status,
                    ms = started.elapsed().as_millis() as u64, "http"
                )
            }
            Err(HttpError::Denied(_)) => {}
            Err(e) => tracing::warn!(
                connector = %ctx.connector, shop = ctx.shop_name(), url = %strip_query(&url_for_log),
                error = %redacted_error(e), "http request failed"
            ),
        }
        result.map_err(|e| match e {
            HttpError::Denied(why) => self.refused(ctx, &url_for_log, HttpError::Denied(why)),
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

impl HostServices {
    /// Count and log a request refused by policy; returns the error for the guest.
    fn refused(&self, ctx: &CallContext, url: &str, e: HttpError) -> HttpError {
        if let HttpError::Denied(why) = &e {
            self.http.note_refusal(&ctx.connector);
            self.http_metrics.http(&ctx.platform, "denied", None);
            tracing::warn!(
                connector = %ctx.connector, shop = ctx.shop_name(), url = %strip_query(url),
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


impl HostImports for HostServices {
    fn injected_trap(&self, shop: &str) -> bool {
        self.faults.traps(shop)
    }

    fn claim_hosts(&self, platform: &str, hosts: &[String]) -> Result<(), String> {
        self.limits.claim(platform, hosts).map_err(|e| e.to_string())
    }

    fn declare_rate(&self, platform: &str, connector: &str, rate: berth_types::connector::RateLimit) {
        self.limits.declare_rate(platform, connector, rate);
    }

    fn send<'a>(&'a self, call: &'a CallContext, req: HttpRequest, cost: Option<berth_types::http::Cost>, notes: &'a mut SendNotes) -> Pending<'a, Result<HttpResponse, HttpError>> {
        Box::pin(self.send_live(call, req, cost, notes))
    }

    fn report_quota(&self, call: &CallContext, report: berth_types::http::QuotaReport, sent: Option<u64>) -> Result<(), String> {
        let cfg = call.shop.as_ref().map(|(_, c)| c.clone());
        let key = self.limits.quota_of(&call.platform, call.shop_name(), cfg.as_deref()).map_err(|e| e.to_string())?;
        self.limits.points.report_after(&call.platform, &key, &report, sent).inspect_err(|e| {
            tracing::warn!(connector = %call.connector, shop = call.shop_name(), error = %e, "quota report refused");
        })
    }

    fn kv_get(&self, call: &CallContext, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.kv.scope(&call.connector, call.shop_name()).get(key)
    }

    fn kv_set(&self, call: &CallContext, key: &str, value: &[u8]) -> Result<(), KvRefusal> {
        let scope = self.kv.scope(&call.connector, call.shop_name());
        scope.set_within(key, value, call.kv_write_per_minute, berth_types::clock::now_ms()).map_err(|e| match e {
            super::kv::WriteRefused::Quota { .. } => KvRefusal::Quota(e.to_string()),
            super::kv::WriteRefused::Rate { .. } => KvRefusal::Rate(e.to_string()),
            other => KvRefusal::Failed(other.to_string()),
        })
    }

    fn kv_delete(&self, call: &CallContext, key: &str) -> Result<(), String> {
        self.kv.scope(&call.connector, call.shop_name()).delete(key)
    }

    fn kv_list(&self, call: &CallContext, prefix: &str) -> Result<Vec<String>, String> {
        self.kv.scope(&call.connector, call.shop_name()).list_prefix(prefix)
    }

    fn hold_quota(&self, platform: &str, shop: &str, cfg: &ShopConfig, wait: Duration, connector: &str, reason: String) -> Duration {
        let cause = super::ratelimit::HoldCause { shop: shop.to_string(), connector: connector.to_string(), reason };
        self.limits.penalize(platform, shop, Some(cfg), wait, cause)
    }

    fn max_hold(&self, platform: &str) -> Duration {
        self.limits.max_hold(platform)
    }

    fn quota_released(&self) -> Pending<'_, ()> {
        Box::pin(self.limits.released())
    }

    fn retry_policy(&self, platform: &str, job: Job) -> RetryPolicy {
        self.retry.get(platform, job)
    }
}

#[cfg(test)]
mod api_method_tests {
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
