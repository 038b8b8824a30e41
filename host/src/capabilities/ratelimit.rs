//! Host-side rate limits: token buckets per platform, keyed by the quota the platform
//! counts against — an app credential shared by every shop on it (`quota_key = "app_key"`
//! names the shop setting holding it), or the shop itself. A connector never sees the
//! limiter: its `http.send` simply waits for a slot, within the call's deadline.
//!
//! Built on `governor` (GCRA, the token-bucket equivalent used across the Rust ecosystem)
//! rather than a hand-written bucket.

use crate::capabilities::windows::{parse_offset, wait_until_open, TimeWindow};
use crate::config::{PlatformLimits, ShopConfig};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

struct PlatformLimiter {
    quota_key: Option<String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    windows: Vec<TimeWindow>,
    tz: chrono::FixedOffset,
}

impl PlatformLimiter {
    fn unlimited() -> Self {
        PlatformLimiter { quota_key: None, limiter: None, windows: Vec::new(), tz: chrono::FixedOffset::east_opt(0).expect("UTC") }
    }

    /// Built from checked config (`Config::parse` validated windows and time zone).
    fn from_config(l: &PlatformLimits) -> Self {
        PlatformLimiter {
            quota_key: l.quota_key.clone(),
            limiter: l.requests_per_second.map(|r| RateLimiter::keyed(quota(r, l.burst))),
            windows: l.windows.iter().filter_map(|w| TimeWindow::parse(w).ok()).collect(),
            tz: l.timezone.as_deref().and_then(|t| parse_offset(t).ok()).unwrap_or(Self::unlimited().tz),
        }
    }
}

#[derive(Default)]
pub struct RateLimits {
    /// Swapped whole when the config is reloaded; a call uses the set it started with.
    platforms: std::sync::RwLock<std::sync::Arc<BTreeMap<String, PlatformLimiter>>>,
    /// Quotas the platform said are exhausted, until when: (platform, key) -> instant.
    blocked: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
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
    pub fn new(cfg: &BTreeMap<String, PlatformLimits>) -> Self {
        let limits = RateLimits::default();
        limits.reconfigure(cfg);
        limits
    }

    /// Apply new limits (config reload): the next call uses them. Quotas the platform
    /// said are exhausted stay held.
    pub fn reconfigure(&self, cfg: &BTreeMap<String, PlatformLimits>) {
        let platforms: BTreeMap<String, PlatformLimiter> =
            cfg.iter().map(|(name, l)| (name.clone(), PlatformLimiter::from_config(l))).collect();
        *self.platforms.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(platforms);
    }

    fn snapshot(&self) -> std::sync::Arc<BTreeMap<String, PlatformLimiter>> {
        self.platforms.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The platform said the quota of `shop` is exhausted for `wait`: hold every call
    /// counting against it (other shops on the same app key too) until then.
    pub fn penalize(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>, wait: Duration) {
        let key = self.snapshot().get(platform).map_or_else(|| format!("shop:{shop}"), |p| Self::key(p, shop, cfg));
        let until = std::time::Instant::now() + wait;
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let entry = blocked.entry((platform.to_string(), key)).or_insert(until);
        *entry = (*entry).max(until);
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
            (Some(setting), Some(c)) => match c.value(setting) {
                Some(v) => format!("{setting}:{v}"),
                None => format!("shop:{shop}"),
            },
            _ => format!("shop:{shop}"),
        }
    }

    /// Wait for a slot, at most `budget`. Returns how long it waited.
    pub async fn acquire(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>, budget: Duration) -> Result<Duration, NoSlot> {
        let unlimited = PlatformLimiter::unlimited();
        let platforms = self.snapshot();
        let p = platforms.get(platform).unwrap_or(&unlimited);
        let key = Self::key(p, shop, cfg);
        // Outside the allowed hours, or while the platform holds the quota: wait.
        let closed = wait_until_open(&p.windows, p.tz, crate::clock::now_ms());
        let mut waited = self.blocked_for(platform, &key).max(closed);
        if waited > budget {
            return Err(NoSlot { platform: platform.to_string(), wait_ms: waited.as_millis() as u64 });
        }
        if !waited.is_zero() {
            tokio::time::sleep(waited).await;
        }
        let Some(limiter) = &p.limiter else { return Ok(waited) };
        let clock = DefaultClock::default();
        loop {
            match limiter.check_key(&key) {
                Ok(()) => return Ok(waited),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(clock.now());
                    if waited + wait > budget {
                        return Err(NoSlot { platform: platform.to_string(), wait_ms: wait.as_millis() as u64 });
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn reconfigure_applies_to_the_next_call() {
        let l = limits(1.0, 1, None);
        l.acquire("p", "s", None, Duration::ZERO).await.unwrap();
        assert!(l.acquire("p", "s", None, Duration::ZERO).await.is_err());
        let mut m = BTreeMap::new();
        m.insert(
            "p".to_string(),
            PlatformLimits { requests_per_second: Some(1000.0), burst: 5, quota_key: None, windows: Vec::new(), timezone: None },
        );
        l.reconfigure(&m);
        for _ in 0..5 {
            l.acquire("p", "s", None, Duration::ZERO).await.unwrap();
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
    }

    #[tokio::test]
    async fn a_throttled_quota_holds_every_shop_on_it() {
        let l = limits(1000.0, 10, Some("app_key"));
        let cfg: ShopConfig = toml::from_str("connector = \"c\"\nsettings = { app_key = \"K\" }\n").unwrap();
        l.penalize("p", "a", Some(&cfg), Duration::from_millis(300));
        assert!(l.acquire("p", "b", Some(&cfg), Duration::from_millis(100)).await.is_err(), "b shares a's app key");
        let start = Instant::now();
        l.acquire("p", "b", Some(&cfg), Duration::from_secs(1)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        // Unconfigured platforms learn too, per shop.
        l.penalize("q", "a", None, Duration::from_secs(60));
        assert!(l.acquire("q", "a", None, Duration::from_millis(10)).await.is_err());
        assert!(l.acquire("q", "b", None, Duration::ZERO).await.is_ok());
    }

    fn limits(rps: f64, burst: u32, quota_key: Option<&str>) -> RateLimits {
        let mut m = BTreeMap::new();
        m.insert(
            "p".to_string(),
            PlatformLimits { requests_per_second: Some(rps), burst, quota_key: quota_key.map(String::from), windows: Vec::new(), timezone: None },
        );
        RateLimits::new(&m)
    }

    #[tokio::test]
    async fn holds_the_rate_after_the_burst() {
        let l = limits(20.0, 2, None);
        let start = Instant::now();
        for _ in 0..12 {
            l.acquire("p", "s", None, Duration::from_secs(5)).await.unwrap();
        }
        // 2 at once, then 10 more at 20/s: about 0.5 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(900), "{took:?}");
        // Other platforms are not limited; other shops have their own bucket.
        assert_eq!(l.acquire("q", "s", None, Duration::ZERO).await.unwrap(), Duration::ZERO);
        assert_eq!(l.acquire("p", "other", None, Duration::ZERO).await.unwrap(), Duration::ZERO);
    }

    #[tokio::test]
    async fn shops_on_one_app_key_share_a_bucket_and_budgets_are_kept() {
        let l = limits(1.0, 1, Some("app_key"));
        let cfg = |k: &str| -> ShopConfig {
            toml::from_str(&format!("connector = \"c\"\nsettings = {{ app_key = \"{k}\" }}\n")).unwrap()
        };
        let (a, b, c) = (cfg("K1"), cfg("K1"), cfg("K2"));
        l.acquire("p", "a", Some(&a), Duration::ZERO).await.unwrap();
        let err = l.acquire("p", "b", Some(&b), Duration::from_millis(100)).await.unwrap_err();
        assert!(err.wait_ms > 100 && err.to_string().contains("rate limit"), "{err}");
        assert_eq!(l.acquire("p", "c", Some(&c), Duration::ZERO).await.unwrap(), Duration::ZERO);
    }
}
