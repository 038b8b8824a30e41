//! Retry policies: how long to back off after a failed pull or push, how many attempts
//! to make, and which errors are worth retrying at all. The defaults come from `[sync]`
//! (order pulls) and `[stock]` (stock pushes); `[platforms.X.retry]` overrides them per
//! platform and is reloaded with the config, so a changed policy applies to the next
//! failure.

use crate::config::{Config, PlatformConfig, RetryOverrides};
use crate::runtime::bindings::berth::connector::types::ConnectorError;
use crate::runtime::CallError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What went wrong, as a retry policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The connector says trying again may work (5xx, network trouble, a garbled answer).
    Transient,
    /// The call ran past its deadline.
    Timeout,
    /// The connector trapped or could not be instantiated.
    Trap,
    /// The platform refused in a way retrying will not change.
    Permanent,
    /// The connector refused what it was given.
    InvalidInput,
    /// Credentials were refused.
    Auth,
}

impl ErrorKind {
    /// The name config uses (`retry_on`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Trap => "trap",
            ErrorKind::Permanent => "permanent",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::Auth => "auth",
        }
    }

    pub fn of(e: &ConnectorError) -> Option<ErrorKind> {
        match e {
            ConnectorError::Transient(_) => Some(ErrorKind::Transient),
            ConnectorError::Permanent(_) => Some(ErrorKind::Permanent),
            ConnectorError::InvalidInput(_) => Some(ErrorKind::InvalidInput),
            ConnectorError::Auth(_) => Some(ErrorKind::Auth),
            // Throttling is not a failure: it parks without spending an attempt.
            ConnectorError::RateLimited(_) => None,
        }
    }

    pub fn of_call(e: &CallError) -> ErrorKind {
        match e {
            CallError::Timeout { .. } => ErrorKind::Timeout,
            CallError::Trap { .. } | CallError::OutOfFuel { .. } | CallError::OutputTooLarge { .. } | CallError::BadOutput { .. } => ErrorKind::Trap,
            CallError::Busy { .. } | CallError::NoInstance { .. } | CallError::HeldBack { .. } => ErrorKind::Timeout,
            CallError::Instantiate(_) => ErrorKind::Trap,
            // Callers wait an isolation out (`CallError::isolated_for`) before asking.
            CallError::Isolated { .. } => ErrorKind::Trap,
        }
    }
}

/// The job a policy is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Pull,
    Push,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub jitter: f64,
    pub max_attempts: u32,
    pub retry_on: Vec<ErrorKind>,
}

/// Retried unless a platform says otherwise.
pub const DEFAULT_RETRY_ON: [ErrorKind; 3] = [ErrorKind::Transient, ErrorKind::Timeout, ErrorKind::Trap];

impl RetryPolicy {
    pub fn new(base_ms: u64, max_ms: u64, max_attempts: u32) -> Self {
        RetryPolicy { base_ms, max_ms, jitter: 0.5, max_attempts, retry_on: DEFAULT_RETRY_ON.to_vec() }
    }

    /// Wait before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        crate::backoff::delay_with_jitter(attempt, self.base_ms, self.max_ms, self.jitter)
    }

    /// Whether a failure of `kind` after `attempts` failed attempts is tried again.
    pub fn retries(&self, kind: ErrorKind, attempts: u32) -> bool {
        self.retry_on.contains(&kind) && attempts < self.max_attempts
    }

    fn with(&self, o: &RetryOverrides) -> RetryPolicy {
        RetryPolicy {
            base_ms: o.base_ms.unwrap_or(self.base_ms),
            max_ms: o.max_ms.unwrap_or(self.max_ms.max(o.base_ms.unwrap_or(0))),
            jitter: o.jitter.unwrap_or(self.jitter),
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            retry_on: o.retry_on.clone().unwrap_or_else(|| self.retry_on.clone()),
        }
    }
}

/// The policies in force; swapped whole on a config reload.
pub struct RetryPolicies {
    pull: RetryPolicy,
    push: RetryPolicy,
    platforms: RwLock<Arc<BTreeMap<String, RetryOverrides>>>,
}

impl RetryPolicies {
    pub fn new(cfg: &Config) -> Self {
        let policies = RetryPolicies {
            // Order pulls keep trying unless a platform sets max_attempts.
            pull: RetryPolicy::new(cfg.sync.retry_base_ms, cfg.sync.retry_max_ms, u32::MAX),
            push: RetryPolicy::new(cfg.stock.retry_base_ms, cfg.stock.retry_max_ms, cfg.stock.max_attempts),
            platforms: RwLock::default(),
        };
        policies.reconfigure(&cfg.platforms);
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

    fn cfg(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("/etc/berth.toml")).unwrap()
    }

    #[test]
    fn platform_settings_override_the_job_defaults() {
        let c = cfg("[stock]\nmax_attempts = 4\n[platforms.taobao.retry]\nbase_ms = 1000\nmax_ms = 8000\njitter = 0.0\nmax_attempts = 6\nretry_on = [\"transient\", \"permanent\"]\n");
        let p = RetryPolicies::new(&c);
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
        let p = RetryPolicies::new(&cfg(""));
        assert_eq!(p.get("taobao", Job::Pull).max_attempts, u32::MAX);
        p.reconfigure(&cfg("[platforms.taobao.retry]\nmax_attempts = 2\n").platforms);
        assert_eq!(p.get("taobao", Job::Pull).max_attempts, 2);
    }
}
