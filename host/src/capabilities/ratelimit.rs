//! Host-side rate limits: token buckets per platform, keyed by the quota the platform
//! counts against — an app credential shared by every shop on it (`quota_key = "app_key"`
//! names the shop setting holding it), or the shop itself. A connector never sees the
//! limiter: its `http.send` simply waits for a slot, within the call's deadline.
//!
//! Built on `governor` (GCRA, the token-bucket equivalent used across the Rust ecosystem)
//! rather than a hand-written bucket.

use crate::capabilities::windows::{parse_zone, wait_until_open, TimeWindow, Zone};
use crate::config::{PlatformConfig, ShopConfig};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

/// One endpoint class: its own bucket on top of the platform's.
struct ClassLimiter {
    name: String,
    patterns: Vec<String>,
    limiter: DefaultKeyedRateLimiter<String>,
}

struct PlatformLimiter {
    quota_key: Option<String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    classes: Vec<ClassLimiter>,
    /// Drain rate of the platform's bucket when its call-limit header is read.
    call_limit_leak: Option<f64>,
    suspend_after_throttle: Duration,
    windows: Vec<TimeWindow>,
    zone: Zone,
}

/// Shopify's standard REST bucket drains 2 calls a second.
const DEFAULT_LEAK_PER_SECOND: f64 = 2.0;

impl PlatformLimiter {
    /// A platform without configuration: no limits, but throttles and the call-limit
    /// header are still learnt from.
    fn unconfigured() -> Self {
        PlatformLimiter {
            quota_key: None,
            limiter: None,
            classes: Vec::new(),
            call_limit_leak: Some(DEFAULT_LEAK_PER_SECOND),
            suspend_after_throttle: Duration::ZERO,
            windows: Vec::new(),
            zone: Zone::UTC,
        }
    }

    /// Built from checked config (`Config::parse` validated windows and time zone).
    fn from_config(l: &PlatformConfig) -> Self {
        PlatformLimiter {
            quota_key: l.quota_key.clone(),
            limiter: l.requests_per_second.map(|r| RateLimiter::keyed(quota(r, l.burst))),
            classes: l
                .endpoints
                .iter()
                .map(|(name, e)| ClassLimiter {
                    name: name.clone(),
                    patterns: e.patterns.clone(),
                    limiter: RateLimiter::keyed(quota(e.requests_per_second, e.burst)),
                })
                .collect(),
            call_limit_leak: l
                .call_limit_header
                .then(|| l.call_limit_leak_per_second.or(l.requests_per_second).unwrap_or(DEFAULT_LEAK_PER_SECOND)),
            suspend_after_throttle: Duration::from_secs(l.retry.suspend_after_throttle_secs.unwrap_or(0)),
            windows: l.windows.iter().filter_map(|w| TimeWindow::parse(w).ok()).collect(),
            zone: l.timezone.as_deref().and_then(|t| parse_zone(t).ok()).unwrap_or(Zone::UTC),
        }
    }

    /// The endpoint class a request falls in: the first whose pattern matches.
    fn class(&self, endpoint: &Endpoint<'_>) -> Option<&ClassLimiter> {
        self.classes.iter().find(|c| {
            c.patterns.iter().any(|p| match p.starts_with('/') {
                true => glob(p, endpoint.path),
                false => endpoint.api_method.is_some_and(|m| glob(p, m)),
            })
        })
    }
}

/// What a request is, as endpoint classes see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoint<'a> {
    pub path: &'a str,
    /// The API method of an RPC-style router (`method=` in the query or form body).
    pub api_method: Option<&'a str>,
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Default)]
pub struct RateLimits {
    /// Swapped whole when the config is reloaded; a call uses the set it started with.
    platforms: std::sync::RwLock<std::sync::Arc<BTreeMap<String, PlatformLimiter>>>,
    /// Quotas the platform said are exhausted, until when: (platform, key) -> instant.
    blocked: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
    /// Requests sent and not answered yet, per (platform, key): a call-limit header
    /// read from one answer does not count them, so the reserve must.
    in_flight: InFlightCounts,
    /// Quotas whose last answer said the platform's bucket is nearly full: their
    /// requests go one at a time until an answer says otherwise.
    nearly_full: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

type InFlightCounts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), u32>>>;

/// A request on its way (see [`RateLimits::acquire`]); dropped when it is answered or failed.
#[derive(Debug)]
pub struct InFlight {
    counts: InFlightCounts,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Why the host holds a quota after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The platform throttled (429/503 with a wait).
    Throttled(Duration),
    /// The platform's call-limit header says its bucket is nearly full.
    NearlyFull(Duration),
}

/// Shopify-style `used/size` call-limit header.
pub fn call_limit(headers: &[(String, String)]) -> Option<(u32, u32)> {
    let v = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-shopify-shop-api-call-limit"))?.1.trim();
    let (used, size) = v.split_once('/')?;
    let (used, size) = (used.trim().parse::<u32>().ok()?, size.trim().parse::<u32>().ok()?);
    (size > 0).then_some((used.min(size), size))
}

/// How long to hold calls so the platform's bucket keeps a reserve (a tenth of it, at
/// least one call) free: the time it takes to drain back to that level.
pub fn drain_wait(used: u32, size: u32, leak_per_second: f64) -> Duration {
    let reserve = (size / 10).max(1);
    let over = (used + reserve).saturating_sub(size);
    if over == 0 || leak_per_second <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(over as f64 / leak_per_second)
}

/// How long a throttling answer asks to wait: `Retry-After` (seconds, possibly
/// fractional) or `X-RateLimit-Reset` (seconds to wait, or a Unix time in seconds).
pub fn retry_after(status: u16, headers: &[(String, String)], now_unix_s: f64) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
    let secs = |v: &str| v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0);
    let wait = match (header("retry-after").and_then(secs), header("x-ratelimit-reset").and_then(secs)) {
        (Some(s), _) => s,
        // Large values are absolute Unix times.
        (None, Some(r)) if r > 1_000_000_000.0 => (r - now_unix_s).max(0.0),
        (None, Some(r)) => r,
        (None, None) if status == 429 => 1.0,
        (None, None) => return None,
    };
    // A garbage value must not park a quota for days.
    Some(Duration::from_secs_f64(wait.min(3600.0)))
}

/// The slot is further away than the call may wait.
#[derive(Debug, thiserror::Error)]
#[error("the {platform} rate limit has no slot for {wait_ms} ms, longer than this call may wait")]
pub struct NoSlot {
    pub platform: String,
    pub wait_ms: u64,
}

pub fn quota(requests_per_second: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / requests_per_second);
    Quota::with_period(period)
        .expect("positive period (checked in config)")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst >= 1"))
}

impl RateLimits {
    pub fn new(cfg: &BTreeMap<String, PlatformConfig>) -> Self {
        let limits = RateLimits::default();
        limits.reconfigure(cfg);
        limits
    }

    /// Apply new limits (config reload): the next call uses them. Quotas the platform
    /// said are exhausted stay held.
    pub fn reconfigure(&self, cfg: &BTreeMap<String, PlatformConfig>) {
        let platforms: BTreeMap<String, PlatformLimiter> =
            cfg.iter().map(|(name, l)| (name.clone(), PlatformLimiter::from_config(l))).collect();
        *self.platforms.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(platforms);
    }

    fn snapshot(&self) -> std::sync::Arc<BTreeMap<String, PlatformLimiter>> {
        self.platforms.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn key_of(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>) -> String {
        self.snapshot().get(platform).map_or_else(|| format!("shop:{shop}"), |p| Self::key(p, shop, cfg))
    }

    /// Hold every call counting against `shop`'s quota (other shops on the same app key
    /// too) for `wait`.
    fn hold(&self, platform: &str, key: String, wait: Duration) {
        let until = std::time::Instant::now() + wait;
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        // Forget holds that have passed, so the map stays as small as the set of held quotas.
        blocked.retain(|_, t| *t > std::time::Instant::now());
        let entry = blocked.entry((platform.to_string(), key)).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The platform throttled `shop` and asked for `wait`: hold its quota that long, or
    /// the platform's `suspend_after_throttle_secs` if longer. Returns the hold.
    pub fn penalize(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>, wait: Duration) -> Duration {
        let suspend = self.snapshot().get(platform).map_or(Duration::ZERO, |p| p.suspend_after_throttle);
        let wait = wait.max(suspend);
        self.hold(platform, self.key_of(platform, shop, cfg), wait);
        wait
    }

    /// Learn from an answer: a throttle (429/503 with `Retry-After` or
    /// `X-RateLimit-Reset`) or a call-limit header saying the bucket is nearly full holds
    /// the quota. Returns what was held, if anything.
    pub fn learn(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>, status: u16, headers: &[(String, String)]) -> Option<Hold> {
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        if let Some(wait) = retry_after(status, headers, now_s) {
            return Some(Hold::Throttled(self.penalize(platform, shop, cfg, wait)));
        }
        let platforms = self.snapshot();
        let unconfigured = PlatformLimiter::unconfigured();
        let leak = platforms.get(platform).unwrap_or(&unconfigured).call_limit_leak?;
        let (used, size) = call_limit(headers)?;
        let key = self.key_of(platform, shop, cfg);
        // Other requests of this quota already on their way will fill the bucket too.
        let others = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(platform.to_string(), key.clone()))
            .map_or(0, |n| n.saturating_sub(1));
        let wait = drain_wait(used + others, size, leak);
        let mut nearly_full = self.nearly_full.lock().unwrap_or_else(|e| e.into_inner());
        if wait.is_zero() {
            nearly_full.remove(&(platform.to_string(), key));
            return None;
        }
        nearly_full.insert((platform.to_string(), key.clone()));
        drop(nearly_full);
        self.hold(platform, key, wait);
        Some(Hold::NearlyFull(wait))
    }

    fn blocked_for(&self, platform: &str, key: &str) -> Duration {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .get(&(platform.to_string(), key.to_string()))
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(std::time::Instant::now()))
    }

    /// The bucket a call of `shop` counts against.
    fn key(p: &PlatformLimiter, shop: &str, cfg: Option<&ShopConfig>) -> String {
        match (&p.quota_key, cfg) {
            (Some(setting), Some(c)) => match (c.settings.get(setting), c.secrets.get(setting)) {
                (Some(v), _) => format!("{setting}:{v}"),
                // Keys show up on status pages: a secret is keyed by a digest, never its value.
                (None, Some(secret)) => {
                    format!("{setting}:sha256:{}", &hex::encode(crate::capabilities::crypto::sha256(secret.expose().as_bytes()))[..16])
                }
                (None, None) => format!("shop:{shop}"),
            },
            _ => format!("shop:{shop}"),
        }
    }

    /// Wait for a slot of the platform's bucket and of the request's endpoint class, at
    /// most `budget` in all; while the platform's bucket is nearly full, also for the
    /// quota's request on its way to be answered (two requests woken by the end of one
    /// hold would both spend the one call the reserve keeps). Returns how long it
    /// waited and the request's place among those on their way, to hold until its
    /// answer has been learnt from.
    pub async fn acquire(
        &self,
        platform: &str,
        shop: &str,
        cfg: Option<&ShopConfig>,
        endpoint: Endpoint<'_>,
        budget: Duration,
    ) -> Result<(Duration, InFlight), NoSlot> {
        let unconfigured = PlatformLimiter::unconfigured();
        let platforms = self.snapshot();
        let p = platforms.get(platform).unwrap_or(&unconfigured);
        let key = Self::key(p, shop, cfg);
        let no_slot = |wait: Duration| NoSlot { platform: platform.to_string(), wait_ms: wait.as_millis() as u64 };
        // Outside the allowed hours, or while the platform holds the quota: wait.
        let closed = wait_until_open(&p.windows, p.zone, crate::clock::now_ms());
        let mut waited = self.blocked_for(platform, &key).max(closed);
        if waited > budget {
            return Err(no_slot(waited));
        }
        if !waited.is_zero() {
            tokio::time::sleep(waited).await;
        }
        let class = p.class(&endpoint).map(|c| &c.limiter);
        for limiter in [p.limiter.as_ref(), class].into_iter().flatten() {
            waited += Self::slot(limiter, &key, budget.saturating_sub(waited)).await.map_err(no_slot)?;
        }
        let key = (platform.to_string(), key);
        loop {
            // Another request of this quota on its way to a nearly full bucket, or a hold
            // its answer just set: wait, then look again.
            let step = match self.take_turn(&key) {
                Ok(flight) => return Ok((waited, flight)),
                Err(step) => step,
            };
            if waited + step > budget {
                return Err(no_slot(waited + step));
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
    }

    /// Count a request as on its way, or say how long to wait first: while the quota is
    /// held, or while its bucket is nearly full and another request is on its way. The
    /// hold is read under the same lock the answered request's count is released under
    /// (after its answer set any new hold), so no request slips between the two.
    fn take_turn(&self, key: &(String, String)) -> Result<InFlight, Duration> {
        let mut counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.blocked_for(&key.0, &key.1);
        if !held.is_zero() {
            return Err(held);
        }
        let busy = counts.get(key).is_some_and(|n| *n > 0);
        if busy && self.nearly_full.lock().unwrap_or_else(|e| e.into_inner()).contains(key) {
            return Err(Duration::from_millis(10));
        }
        *counts.entry(key.clone()).or_insert(0) += 1;
        Ok(InFlight { counts: self.in_flight.clone(), key: key.clone() })
    }

    async fn slot(limiter: &DefaultKeyedRateLimiter<String>, key: &String, budget: Duration) -> Result<Duration, Duration> {
        let clock = DefaultClock::default();
        let mut waited = Duration::ZERO;
        loop {
            match limiter.check_key(key) {
                Ok(()) => return Ok(waited),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(clock.now());
                    if waited + wait > budget {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }

    /// The endpoint class names of a platform (for status pages).
    pub fn classes(&self, platform: &str) -> Vec<String> {
        self.snapshot().get(platform).map(|p| p.classes.iter().map(|c| c.name.clone()).collect()).unwrap_or_default()
    }

    /// Whether a platform has endpoint classes (only then is a request's API method read).
    pub fn has_classes(&self, platform: &str) -> bool {
        self.snapshot().get(platform).is_some_and(|p| !p.classes.is_empty())
    }

    /// Quotas held now, per platform: (key, remaining ms). Keys name a setting and its
    /// value (e.g. an app key, which is not a secret) or a shop.
    pub fn held(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let now = std::time::Instant::now();
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for ((platform, key), until) in blocked.iter().filter(|(_, t)| **t > now) {
            out.entry(platform.clone()).or_default().push((key.clone(), (*until - now).as_millis() as u64));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const ANY: Endpoint<'static> = Endpoint { path: "/", api_method: None };

    /// Limits from a `[platforms]` TOML snippet, checked as berth.toml is.
    fn from_toml(text: &str) -> RateLimits {
        let cfg = crate::config::Config::parse(text, std::path::Path::new("/etc/berth.toml")).unwrap();
        RateLimits::new(&cfg.platforms)
    }

    fn limits(rps: f64, burst: u32, quota_key: Option<&str>) -> RateLimits {
        let key = quota_key.map(|k| format!("quota_key = \"{k}\"\n")).unwrap_or_default();
        from_toml(&format!("[platforms.p]\nrequests_per_second = {rps:?}\nburst = {burst}\n{key}"))
    }

    #[tokio::test]
    async fn reconfigure_applies_to_the_next_call() {
        let l = limits(1.0, 1, None);
        l.acquire("p", "s", None, ANY, Duration::ZERO).await.unwrap();
        assert!(l.acquire("p", "s", None, ANY, Duration::ZERO).await.is_err());
        let cfg = crate::config::Config::parse("[platforms.p]\nrequests_per_second = 1000.0\nburst = 5\n", std::path::Path::new("/b.toml")).unwrap();
        l.reconfigure(&cfg.platforms);
        for _ in 0..5 {
            l.acquire("p", "s", None, ANY, Duration::ZERO).await.unwrap();
        }
    }

    #[test]
    fn reads_throttle_headers() {
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(retry_after(429, &h("Retry-After", "2.0"), 0.0), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(429, &h("x-ratelimit-reset", "5"), 0.0), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(429, &h("X-RateLimit-Reset", "1700000030"), 1_700_000_000.0), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(429, &[], 0.0), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(503, &[], 0.0), None);
        assert_eq!(retry_after(200, &h("Retry-After", "9"), 0.0), None);
        assert_eq!(retry_after(429, &h("Retry-After", "99999999"), 0.0), Some(Duration::from_secs(3600)));
        assert_eq!(call_limit(&h("X-Shopify-Shop-Api-Call-Limit", "32/40")), Some((32, 40)));
        assert_eq!(call_limit(&h("x-shopify-shop-api-call-limit", "garbage")), None);
        assert_eq!(call_limit(&h("x-shopify-shop-api-call-limit", "3/0")), None);
    }

    #[test]
    fn the_call_limit_header_keeps_a_reserve_free() {
        // Bucket of 40 draining 2/s keeps 4 free: at 36 used nothing waits, at 38 one second.
        assert_eq!(drain_wait(36, 40, 2.0), Duration::ZERO);
        assert_eq!(drain_wait(37, 40, 2.0), Duration::from_millis(500));
        assert_eq!(drain_wait(38, 40, 2.0), Duration::from_secs(1));
        assert_eq!(drain_wait(40, 40, 2.0), Duration::from_secs(2));
        // A tiny bucket still keeps one call free.
        assert_eq!(drain_wait(1, 2, 2.0), Duration::ZERO);
        assert_eq!(drain_wait(2, 2, 2.0), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn near_a_full_bucket_requests_go_one_at_a_time() {
        let limits = RateLimits::default();
        let nine = [("X-Shopify-Shop-Api-Call-Limit".to_string(), "9/10".to_string())];
        let second = Duration::from_secs(1);
        {
            let (_, _alone) = limits.acquire("shopify", "acme", None, ANY, second).await.unwrap();
            assert_eq!(limits.learn("shopify", "acme", None, 200, &nine), None, "9 of 10 keeps the one call reserve");
        }
        let (_, probe) = limits.acquire("shopify", "acme", None, ANY, second).await.unwrap();
        let (_, page) = limits.acquire("shopify", "acme", None, ANY, second).await.unwrap();
        assert_eq!(
            limits.learn("shopify", "acme", None, 200, &nine),
            Some(Hold::NearlyFull(Duration::from_millis(500))),
            "another request of the shop is on its way: it takes the reserve"
        );
        drop(page);
        // Nearly full with the probe still on its way: the next request waits for its answer.
        assert!(limits.acquire("shopify", "acme", None, ANY, Duration::from_millis(50)).await.is_err());
        assert!(limits.acquire("shopify", "zeta", None, ANY, Duration::ZERO).await.is_ok(), "other shops go on");
        drop(probe);
        let (waited, _next) = limits.acquire("shopify", "acme", None, ANY, second).await.unwrap();
        assert!(waited >= Duration::from_millis(400), "then it holds for the drain: {waited:?}");
    }

    #[tokio::test]
    async fn a_nearly_full_bucket_holds_the_shop_unless_turned_off() {
        let h = vec![("X-Shopify-Shop-Api-Call-Limit".to_string(), "39/40".to_string())];
        // Unconfigured platforms read the header too (at Shopify's standard 2/s).
        let l = from_toml("");
        assert_eq!(l.learn("shopify", "a", None, 200, &h), Some(Hold::NearlyFull(Duration::from_millis(1500))));
        assert!(l.acquire("shopify", "a", None, ANY, Duration::from_millis(100)).await.is_err());
        assert!(l.acquire("shopify", "b", None, ANY, Duration::ZERO).await.is_ok(), "other shops have their own bucket");
        let off = from_toml("[platforms.shopify]\ncall_limit_header = false\n");
        assert_eq!(off.learn("shopify", "a", None, 200, &h), None);
        let fast = from_toml("[platforms.shopify]\ncall_limit_leak_per_second = 20.0\n");
        assert_eq!(fast.learn("shopify", "a", None, 200, &h), Some(Hold::NearlyFull(Duration::from_millis(150))));
    }

    #[tokio::test]
    async fn a_throttle_suspends_the_quota_for_the_configured_time() {
        let l = from_toml("[platforms.taobao.retry]\nsuspend_after_throttle_secs = 7200\n");
        assert_eq!(l.penalize("taobao", "a", None, Duration::from_secs(41)), Duration::from_secs(7200));
        let err = l.acquire("taobao", "a", None, ANY, Duration::from_secs(60)).await.unwrap_err();
        assert!(err.wait_ms > 7_000_000, "{err}");
        let h = vec![("Retry-After".to_string(), "2".to_string())];
        assert_eq!(l.learn("taobao", "b", None, 429, &h), Some(Hold::Throttled(Duration::from_secs(7200))));
        assert_eq!(l.held()["taobao"].len(), 2);
    }

    #[tokio::test]
    async fn endpoint_classes_have_their_own_bucket() {
        let l = from_toml(
            "[platforms.taobao]\nrequests_per_second = 1000.0\nburst = 100\n\
             [platforms.taobao.endpoints.stock]\nmatch = [\"taobao.item.quantity.*\", \"/admin/*/inventory_levels/set.json\"]\nrequests_per_second = 1.0\n",
        );
        let stock = Endpoint { path: "/router/rest", api_method: Some("taobao.item.quantity.update") };
        let orders = Endpoint { path: "/router/rest", api_method: Some("taobao.trades.sold.increment.get") };
        let by_path = Endpoint { path: "/admin/api/2024-01/inventory_levels/set.json", api_method: None };
        l.acquire("taobao", "s", None, stock, Duration::ZERO).await.unwrap();
        assert!(l.acquire("taobao", "s", None, stock, Duration::ZERO).await.is_err(), "the stock class allows 1/s");
        assert!(l.acquire("taobao", "s", None, by_path, Duration::ZERO).await.is_err(), "path patterns share the class");
        for _ in 0..20 {
            l.acquire("taobao", "s", None, orders, Duration::ZERO).await.unwrap();
        }
        assert_eq!(l.classes("taobao"), ["stock"]);
    }

    #[test]
    fn globs() {
        assert!(glob("taobao.item.*", "taobao.item.quantity.update"));
        assert!(glob("*.update", "taobao.item.quantity.update"));
        assert!(glob("/admin/*/orders.json", "/admin/api/2024-01/orders.json"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "acb") && !glob("taobao.item.*", "taobao.items") && !glob("ab*ba", "aba"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[tokio::test]
    async fn a_throttled_quota_holds_every_shop_on_it() {
        let l = limits(1000.0, 10, Some("app_key"));
        let cfg: ShopConfig = toml::from_str("connector = \"c\"\nsettings = { app_key = \"K\" }\n").unwrap();
        l.penalize("p", "a", Some(&cfg), Duration::from_millis(300));
        assert!(l.acquire("p", "b", Some(&cfg), ANY, Duration::from_millis(100)).await.is_err(), "b shares a's app key");
        let start = Instant::now();
        l.acquire("p", "b", Some(&cfg), ANY, Duration::from_secs(1)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        // A quota keyed by a secret never shows the secret.
        let secret: ShopConfig = toml::from_str("connector = \"c\"\nsecrets = { app_key = \"hush\" }\n").unwrap();
        l.penalize("p", "c", Some(&secret), Duration::from_secs(60));
        let held = format!("{:?}", l.held());
        assert!(held.contains("app_key:sha256:") && !held.contains("hush"), "{held}");
        // Unconfigured platforms learn too, per shop.
        l.penalize("q", "a", None, Duration::from_secs(60));
        assert!(l.acquire("q", "a", None, ANY, Duration::from_millis(10)).await.is_err());
        assert!(l.acquire("q", "b", None, ANY, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn holds_the_rate_after_the_burst() {
        let l = limits(20.0, 2, None);
        let start = Instant::now();
        for _ in 0..12 {
            l.acquire("p", "s", None, ANY, Duration::from_secs(5)).await.unwrap();
        }
        // 2 at once, then 10 more at 20/s: about 0.5 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(900), "{took:?}");
        // Other platforms are not limited; other shops have their own bucket.
        assert_eq!(l.acquire("q", "s", None, ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
        assert_eq!(l.acquire("p", "other", None, ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
    }

    #[tokio::test]
    async fn shops_on_one_app_key_share_a_bucket_and_budgets_are_kept() {
        let l = limits(1.0, 1, Some("app_key"));
        let cfg = |k: &str| -> ShopConfig {
            toml::from_str(&format!("connector = \"c\"\nsettings = {{ app_key = \"{k}\" }}\n")).unwrap()
        };
        let (a, b, c) = (cfg("K1"), cfg("K1"), cfg("K2"));
        l.acquire("p", "a", Some(&a), ANY, Duration::ZERO).await.unwrap();
        let err = l.acquire("p", "b", Some(&b), ANY, Duration::from_millis(100)).await.unwrap_err();
        assert!(err.wait_ms > 100 && err.to_string().contains("rate limit"), "{err}");
        assert_eq!(l.acquire("p", "c", Some(&c), ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
    }
}
