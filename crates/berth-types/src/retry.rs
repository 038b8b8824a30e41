//! How a failure is classed ([`ErrorKind`]) and retried ([`RetryPolicy`]): the one
//! place the connector-error → retry decision is made. Which policy applies to a
//! platform and job is config, kept by berth-core (`retry::RetryPolicies`).

use crate::connector::ConnectorError;
use serde::{Deserialize, Serialize};
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

    /// The kind of a connector's error; `None` for throttling, which is not a failure:
    /// it parks without spending an attempt.
    pub fn of(e: &ConnectorError) -> Option<ErrorKind> {
        match e {
            ConnectorError::Transient(_) => Some(ErrorKind::Transient),
            ConnectorError::Permanent(_) => Some(ErrorKind::Permanent),
            ConnectorError::InvalidInput(_) => Some(ErrorKind::InvalidInput),
            ConnectorError::Auth(_) => Some(ErrorKind::Auth),
            ConnectorError::RateLimited(_) => None,
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

/// What a retry loop does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this long.
    Retry(Duration),
    /// The policy does not retry this (any more).
    GiveUp,
}

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

    /// The decision after a failure of `kind` that made it `attempts` failed attempts.
    pub fn decide(&self, kind: ErrorKind, attempts: u32) -> Decision {
        if self.retries(kind, attempts) {
            Decision::Retry(self.delay(attempts))
        } else {
            Decision::GiveUp
        }
    }

    /// Why a failure of `kind` is not tried again, for people: the attempts ran out, or
    /// the policy does not retry its kind at all.
    pub fn gave_up(&self, kind: ErrorKind, attempts: u32, why: &str) -> String {
        if self.retry_on.contains(&kind) {
            format!("gave up after {attempts} attempts: {why}")
        } else {
            format!("{}: {why} (not retried: `{}` is not in the platform's retry_on)", kind.name(), kind.name())
        }
    }

    /// This policy with `o`'s settings where it has them.
    pub fn with(&self, o: &RetryOverrides) -> RetryPolicy {
        RetryPolicy {
            base_ms: o.base_ms.unwrap_or(self.base_ms),
            max_ms: o.max_ms.unwrap_or(self.max_ms.max(o.base_ms.unwrap_or(0))),
            jitter: o.jitter.unwrap_or(self.jitter),
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            retry_on: o.retry_on.clone().unwrap_or_else(|| self.retry_on.clone()),
        }
    }
}

/// Per-platform retry settings (`[platforms.X.retry]`); each one absent falls back to
/// the job's defaults (`[sync]` for order pulls, `[stock]` for stock pushes).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryOverrides {
    /// First backoff step; each further attempt doubles it up to `max_ms`.
    pub base_ms: Option<u64>,
    pub max_ms: Option<u64>,
    /// Share of each step taken off at random (0 = exact steps, 0.5 = somewhere in the upper half).
    pub jitter: Option<f64>,
    /// Failed attempts before giving up: a stock update moves to the dead letters, an
    /// order pull pauses for `sync.error_pause_secs` and is shown on the shop's status.
    pub max_attempts: Option<u32>,
    /// Which errors are retried; the rest give up at once. Kinds: `transient`,
    /// `timeout`, `trap`, `permanent`, `invalid-input`, `auth`.
    pub retry_on: Option<Vec<ErrorKind>>,
    /// After the platform throttles, hold its quota at least this long (e.g. 7200 for a
    /// platform that bans for hours once a daily quota is spent).
    pub suspend_after_throttle_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_field_by_field() {
        let base = RetryPolicy::new(500, 60_000, 5);
        let o = RetryOverrides { base_ms: Some(1000), max_ms: Some(8000), jitter: Some(0.0), max_attempts: Some(6), ..Default::default() };
        let p = base.with(&o);
        assert_eq!((p.base_ms, p.max_ms, p.max_attempts), (1000, 8000, 6));
        let steps: Vec<u64> = (1..=5).map(|a| p.delay(a).as_millis() as u64).collect();
        assert_eq!(steps, [1000, 2000, 4000, 8000, 8000]);
        assert_eq!(p.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(p.decide(ErrorKind::Transient, 5), Decision::Retry(Duration::from_millis(8000)));
        assert_eq!(p.decide(ErrorKind::Transient, 6), Decision::GiveUp);
        assert_eq!(p.decide(ErrorKind::Auth, 0), Decision::GiveUp, "only what retry_on names is retried");
        assert_eq!(p.gave_up(ErrorKind::Transient, 6, "503"), "gave up after 6 attempts: 503");
        assert!(p.gave_up(ErrorKind::Auth, 1, "401").ends_with("(not retried: `auth` is not in the platform's retry_on)"));
        assert_eq!(ErrorKind::of(&ConnectorError::RateLimited(5)), None);
        assert_eq!(ErrorKind::of(&ConnectorError::Auth("x".into())), Some(ErrorKind::Auth));
    }
}
