//! Retry policies: how long to back off after a failed pull or push, how many attempts
//! to make, and which errors are worth retrying at all. The defaults come from `[sync]`
//! (order pulls) and `[stock]` (stock pushes); `[platforms.X.retry]` overrides them per
//! platform and is reloaded with the config, so a changed policy applies to the next
//! failure.

use crate::config::PlatformConfig;
pub use berth_types::retry::{ErrorKind, Job, RetryOverrides, RetryPolicy, DEFAULT_RETRY_ON};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The job defaults: order pulls from `[sync]` (they keep trying unless a platform sets
/// `max_attempts`), stock pushes from `[stock]`.
#[derive(Clone, Debug)]
pub struct RetryDefaults {
    pub pull: RetryPolicy,
    pub push: RetryPolicy,
}

/// The policies in force; swapped whole on a config reload.
pub struct RetryPolicies {
    pull: RetryPolicy,
    push: RetryPolicy,
    platforms: RwLock<Arc<BTreeMap<String, RetryOverrides>>>,
}

impl RetryPolicies {
    pub fn new(defaults: RetryDefaults, platforms: &BTreeMap<String, PlatformConfig>) -> Self {
        let policies = RetryPolicies { pull: defaults.pull, push: defaults.push, platforms: RwLock::default() };
        policies.reconfigure(platforms);
        policies
    }

    pub fn reconfigure(&self, platforms: &BTreeMap<String, PlatformConfig>) {
        let map = platforms.iter().map(|(name, p)| (name.clone(), p.retry.clone())).collect();
        *self.platforms.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    pub fn get(&self, platform: &str, job: Job) -> RetryPolicy {
        let default = match job {
            Job::Pull => &self.pull,
            Job::Push => &self.push,
        };
        let platforms = self.platforms.read().unwrap_or_else(|e| e.into_inner()).clone();
        platforms.get(platform).map_or_else(|| default.clone(), |o| default.with(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(push_attempts: u32, platforms: &str) -> RetryPolicies {
        let defaults = RetryDefaults {
            pull: RetryPolicy::new(1_000, 60_000, u32::MAX),
            push: RetryPolicy::new(1_000, 300_000, push_attempts),
        };
        RetryPolicies::new(defaults, &crate::config::parse_platforms(platforms))
    }

    #[test]
    fn platform_settings_override_the_job_defaults() {
        let p = policies(4, "[platforms.taobao.retry]\nbase_ms = 1000\nmax_ms = 8000\njitter = 0.0\nmax_attempts = 6\nretry_on = [\"transient\", \"permanent\"]\n");
        let tb = p.get("taobao", Job::Push);
        assert_eq!((tb.base_ms, tb.max_ms, tb.max_attempts), (1000, 8000, 6));
        let steps: Vec<u64> = (1..=5).map(|a| tb.delay(a).as_millis() as u64).collect();
        assert_eq!(steps, [1000, 2000, 4000, 8000, 8000]);
        assert!(tb.retries(ErrorKind::Permanent, 5) && !tb.retries(ErrorKind::Permanent, 6));
        assert!(!tb.retries(ErrorKind::Timeout, 0), "only what retry_on names is retried");
        // Other platforms keep the [stock] defaults; pulls keep retrying.
        let other = p.get("shopify", Job::Push);
        assert_eq!((other.max_attempts, other.retry_on.as_slice()), (4, DEFAULT_RETRY_ON.as_slice()));
        assert!(p.get("shopify", Job::Pull).retries(ErrorKind::Trap, 1_000_000));
        assert!(!p.get("shopify", Job::Pull).retries(ErrorKind::Auth, 0));
    }

    #[test]
    fn a_reload_applies_to_the_next_lookup() {
        let p = policies(10, "");
        assert_eq!(p.get("taobao", Job::Pull).max_attempts, u32::MAX);
        p.reconfigure(&crate::config::parse_platforms("[platforms.taobao.retry]\nmax_attempts = 2\n"));
        assert_eq!(p.get("taobao", Job::Pull).max_attempts, 2);
    }
}
