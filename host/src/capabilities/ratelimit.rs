//! Host-side rate limits: token buckets per platform, keyed by the quota the platform
//! counts against — an app credential shared by every shop on it (`quota_key = "app_key"`
//! names the shop setting holding it), or the shop itself. A connector never sees the
//! limiter: its `http.send` simply waits for a slot, within the call's deadline.
//!
//! Built on `governor` (GCRA, the token-bucket equivalent used across the Rust ecosystem)
//! rather than a hand-written bucket.

use crate::config::{PlatformLimits, ShopConfig};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

struct PlatformLimiter {
    quota_key: Option<String>,
    limiter: DefaultKeyedRateLimiter<String>,
}

#[derive(Default)]
pub struct RateLimits {
    platforms: BTreeMap<String, PlatformLimiter>,
}

/// The slot is further away than the call may wait.
#[derive(Debug, thiserror::Error)]
#[error("the {platform} rate limit has no slot for {wait_ms} ms, longer than this call may wait")]
pub struct NoSlot {
    pub platform: String,
    pub wait_ms: u64,
}

pub fn quota(l: &PlatformLimits) -> Quota {
    let period = Duration::from_secs_f64(1.0 / l.requests_per_second);
    Quota::with_period(period)
        .expect("positive period (checked in config)")
        .allow_burst(NonZeroU32::new(l.burst.max(1)).expect("burst >= 1"))
}

impl RateLimits {
    pub fn new(cfg: &BTreeMap<String, PlatformLimits>) -> Self {
        let platforms = cfg
            .iter()
            .map(|(name, l)| {
                (name.clone(), PlatformLimiter { quota_key: l.quota_key.clone(), limiter: RateLimiter::keyed(quota(l)) })
            })
            .collect();
        RateLimits { platforms }
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
        let Some(p) = self.platforms.get(platform) else { return Ok(Duration::ZERO) };
        let key = Self::key(p, shop, cfg);
        let clock = DefaultClock::default();
        let mut waited = Duration::ZERO;
        loop {
            match p.limiter.check_key(&key) {
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

    fn limits(rps: f64, burst: u32, quota_key: Option<&str>) -> RateLimits {
        let mut m = BTreeMap::new();
        m.insert("p".to_string(), PlatformLimits { requests_per_second: rps, burst, quota_key: quota_key.map(String::from) });
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
