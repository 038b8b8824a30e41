//! A circuit breaker per loaded connector version: a version whose calls keep failing in
//! the sandbox — trapping, running past their deadline, out of fuel, answering more than
//! its limits allow — is isolated: its calls are refused without running guest code
//! (`isolated`, which the job layer waits out without spending an attempt) until a
//! cool-down has passed. Then one call is let through as a trial: when it does not fail
//! that way the breaker closes and the version serves again; when it does, the
//! cool-down doubles (up to `breaker_max_open_secs`).
//!
//! Errors a connector *returns* (the platform is down, refused credentials, throttled)
//! are the platform's answer, not the sandbox failing: the retry policies handle them
//! and they never trip the breaker. Neither do `busy` (the host's own queueing) and
//! instance-creation failures (the host's pool).

use berth_types::clock::now_ms;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a version is isolated, from `[runtime]` and `[connectors.X.limits]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BreakerPolicy {
    pub enabled: bool,
    pub window_secs: u64,
    /// Calls in the window before the breaker judges.
    pub min_calls: u32,
    /// Isolate when at least this share of the window's calls failed in the sandbox.
    pub failure_percent: u8,
    pub open_secs: u64,
    pub max_open_secs: u64,
}

impl BreakerPolicy {
    /// What is wrong with the settings, named as config spells them.
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !(1..=100).contains(&self.failure_percent) {
            return Err(format!("breaker_failure_percent must be 1..=100, not {}", self.failure_percent));
        }
        for (name, v) in [("breaker_window_secs", self.window_secs), ("breaker_min_calls", u64::from(self.min_calls)), ("breaker_open_secs", self.open_secs)] {
            if v == 0 {
                return Err(format!("{name} must be at least 1 (turn the breaker off with breaker = false)"));
            }
        }
        if self.window_secs > 3600 {
            return Err(format!("breaker_window_secs must be at most 3600, not {}", self.window_secs));
        }
        if self.max_open_secs < self.open_secs {
            return Err(format!("breaker_max_open_secs ({}) must be at least breaker_open_secs ({})", self.max_open_secs, self.open_secs));
        }
        Ok(())
    }
}

/// Where a breaker stands (answered as `closed`, `open`, `half-open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls run.
    Closed,
    /// Calls are refused until the trial time.
    Open,
    /// One trial call is running.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the breaker stands, for the API, the dashboard and the alert rule.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BreakerView {
    pub state: BreakerState,
    /// When it opened (wall clock, ms), while not closed.
    pub since_ms: Option<i64>,
    /// Why it opened.
    pub reason: Option<String>,
    /// When the next trial call may run, while open.
    pub trial_at_ms: Option<i64>,
    /// Times it opened since the version was loaded.
    pub trips: u64,
    /// Sandbox failures and calls in the current window.
    pub window_failures: u64,
    pub window_calls: u64,
}

/// One second of outcomes.
#[derive(Clone, Copy)]
struct Second {
    at: u64,
    calls: u32,
    failures: u32,
}

enum State {
    Closed,
    Open { until: Instant, strikes: u32 },
    /// One trial call is running.
    Trial { strikes: u32 },
}

struct Inner {
    state: State,
    seconds: VecDeque<Second>,
    opened_ms: Option<i64>,
    reason: Option<String>,
    trips: u64,
}

pub struct Breaker {
    policy: BreakerPolicy,
    born: Instant,
    inner: Mutex<Inner>,
}

/// A call the breaker refused: why, and how long until a trial may run.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub retry_in: Duration,
    pub reason: String,
}

/// A call the breaker let through; [`Ticket::finish`] reports how it ended. A ticket
/// dropped unfinished (the call was cancelled) lets the next call be the trial.
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    trial: bool,
    done: bool,
}

/// A state change worth telling ops about.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Closed → open: the version is isolated.
    Opened { reason: String, open_for: Duration },
    /// A trial failed: open again, longer.
    Reopened { open_for: Duration },
    /// A trial passed: the version serves again.
    Closed,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            born: Instant::now(),
            inner: Mutex::new(Inner { state: State::Closed, seconds: VecDeque::new(), opened_ms: None, reason: None, trips: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let a call run, or refuse it while the version is isolated.
    pub fn admit(&self) -> Result<Ticket<'_>, Refusal> {
        if !self.policy.enabled {
            return Ok(Ticket { breaker: self, trial: false, done: false });
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let trial = match inner.state {
            State::Closed => false,
            State::Open { until, strikes } if until <= now => {
                inner.state = State::Trial { strikes };
                true
            }
            State::Open { until, .. } => return Err(inner.refusal(until - now)),
            // Others wait for the trial's verdict.
            State::Trial { .. } => return Err(inner.refusal(Duration::from_secs(1))),
        };
        Ok(Ticket { breaker: self, trial, done: false })
    }

    fn second(&self, at: Instant) -> u64 {
        at.duration_since(self.born).as_secs()
    }

    /// Count a finished call; returns a change when this call opened or closed it.
    fn record(&self, trial: bool, failed: bool) -> Option<Change> {
        let p = &self.policy;
        if !p.enabled {
            return None;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        if trial {
            let State::Trial { strikes } = inner.state else { return None };
            if failed {
                let open_for = Duration::from_secs(p.open_secs.saturating_mul(1 << strikes.min(20)).min(p.max_open_secs));
                inner.state = State::Open { until: now + open_for, strikes: strikes + 1 };
                return Some(Change::Reopened { open_for });
            }
            inner.state = State::Closed;
            inner.seconds.clear();
            inner.opened_ms = None;
            inner.reason = None;
            return Some(Change::Closed);
        }
        if !matches!(inner.state, State::Closed) {
            // A call started before the breaker opened: its outcome judges nothing now.
            return None;
        }
        let sec = self.second(now);
        let keep_from = sec.saturating_sub(p.window_secs.saturating_sub(1));
        while inner.seconds.front().is_some_and(|s| s.at < keep_from) {
            inner.seconds.pop_front();
        }
        match inner.seconds.back_mut() {
            Some(s) if s.at == sec => {
                s.calls += 1;
                s.failures += failed as u32;
            }
            _ => inner.seconds.push_back(Second { at: sec, calls: 1, failures: failed as u32 }),
        }
        if !failed {
            return None;
        }
        let (calls, failures) = inner.totals();
        if calls < u64::from(p.min_calls) || failures * 100 < u64::from(p.failure_percent) * calls {
            return None;
        }
        let open_for = Duration::from_secs(p.open_secs);
        let reason = format!("{failures} of {calls} calls failed in the sandbox (trap, deadline, fuel or output limit) in the last {} s", p.window_secs);
        inner.state = State::Open { until: now + open_for, strikes: 1 };
        inner.opened_ms = Some(now_ms());
        inner.reason = Some(reason.clone());
        inner.trips += 1;
        Some(Change::Opened { reason, open_for })
    }

    /// The trial call was cancelled: the next call is the trial.
    fn abandon_trial(&self) {
        let mut inner = self.lock();
        if let State::Trial { strikes } = inner.state {
            inner.state = State::Open { until: Instant::now(), strikes };
        }
    }

    pub fn view(&self) -> BreakerView {
        let inner = self.lock();
        let now = Instant::now();
        let (state, trial_at_ms) = match inner.state {
            State::Closed => (BreakerState::Closed, None),
            State::Open { until, .. } => (BreakerState::Open, Some(now_ms() + until.saturating_duration_since(now).as_millis() as i64)),
            State::Trial { .. } => (BreakerState::HalfOpen, None),
        };
        let (window_calls, window_failures) = if matches!(inner.state, State::Closed) { inner.totals() } else { (0, 0) };
        BreakerView {
            state,
            since_ms: inner.opened_ms,
            reason: inner.reason.clone(),
            trial_at_ms,
            trips: inner.trips,
            window_failures,
            window_calls,
        }
    }

    /// Whether calls are refused now (open or half-open).
    pub fn isolated(&self) -> bool {
        !matches!(self.lock().state, State::Closed)
    }
}

impl Inner {
    fn refusal(&self, retry_in: Duration) -> Refusal {
        Refusal { retry_in, reason: self.reason.clone().unwrap_or_default() }
    }

    fn totals(&self) -> (u64, u64) {
        self.seconds.iter().fold((0, 0), |(c, f), s| (c + u64::from(s.calls), f + u64::from(s.failures)))
    }
}

impl Ticket<'_> {
    /// The call ended; `failed` when it failed in the sandbox (see the module docs),
    /// `None` when it never ran guest code (then a trial passes to the next call).
    pub fn finish(mut self, failed: Option<bool>) -> Option<Change> {
        let failed = failed?;
        self.done = true;
        self.breaker.record(self.trial, failed)
    }

    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done && self.trial {
            self.breaker.abandon_trial();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(open_secs: u64) -> BreakerPolicy {
        BreakerPolicy { enabled: true, window_secs: 60, min_calls: 4, failure_percent: 50, open_secs, max_open_secs: 4 * open_secs.max(1) }
    }

    fn run(b: &Breaker, failed: bool) -> Result<Option<Change>, Refusal> {
        b.admit().map(|t| t.finish(Some(failed)))
    }

    #[test]
    fn opens_at_the_failure_share_and_refuses_calls() {
        let b = Breaker::new(policy(30));
        assert_eq!(run(&b, true).unwrap(), None, "one failure is not enough calls to judge");
        assert_eq!(run(&b, false).unwrap(), None);
        assert_eq!(run(&b, false).unwrap(), None);
        let opened = run(&b, true).unwrap();
        assert!(matches!(&opened, Some(Change::Opened { reason, open_for }) if reason.starts_with("2 of 4 calls failed") && *open_for == Duration::from_secs(30)), "{opened:?}");
        let refused = b.admit().err().expect("isolated");
        assert!(refused.retry_in > Duration::from_secs(29) && refused.reason.contains("2 of 4"), "{refused:?}");
        let v = b.view();
        assert_eq!((v.state, v.trips), (BreakerState::Open, 1));
        assert!(BreakerPolicy { window_secs: 7200, ..policy(30) }.check().unwrap_err().contains("at most 3600"));
        assert!(policy(30).check().is_ok());
        assert!(v.since_ms.is_some() && v.trial_at_ms.is_some());
    }

    #[test]
    fn successes_keep_it_closed() {
        let b = Breaker::new(policy(30));
        for i in 0..100 {
            assert_eq!(run(&b, i % 3 == 2).unwrap(), None, "a third failing stays under 50%");
        }
        let v = b.view();
        assert_eq!((v.state, v.window_calls, v.window_failures), (BreakerState::Closed, 100, 33));
    }

    #[test]
    fn one_trial_after_the_cool_down_closes_or_reopens_longer() {
        let b = Breaker::new(policy(0));
        for _ in 0..4 {
            let _ = run(&b, true);
        }
        assert!(b.isolated());
        // Cool-down 0: the next call is the trial; the others wait for its verdict.
        let trial = b.admit().expect("the trial runs");
        assert!(trial.is_trial());
        assert!(b.admit().is_err(), "one trial at a time");
        assert_eq!(b.view().state, BreakerState::HalfOpen);
        assert!(matches!(trial.finish(Some(true)), Some(Change::Reopened { .. })), "a failed trial reopens");
        // A cancelled trial, or one that never ran guest code, hands the trial on.
        let cancelled = b.admit().expect("trial");
        drop(cancelled);
        let never_ran = b.admit().expect("trial");
        assert_eq!(never_ran.finish(None), None);
        let trial = b.admit().expect("the next call is the trial");
        assert_eq!(trial.finish(Some(false)), Some(Change::Closed));
        assert!(!b.isolated());
        assert_eq!(b.view().window_calls, 0, "a closed breaker starts a fresh window");
        assert_eq!(run(&b, true).unwrap(), None, "and judges anew");
    }

    #[test]
    fn the_cool_down_doubles_up_to_the_cap() {
        let p = BreakerPolicy { open_secs: 10, max_open_secs: 25, ..policy(10) };
        let b = Breaker::new(p);
        for _ in 0..4 {
            let _ = run(&b, true);
        }
        // Force the trial now and fail it, twice.
        for want in [20, 25] {
            b.lock().state = State::Open { until: Instant::now(), strikes: if want == 20 { 1 } else { 2 } };
            match run(&b, true).unwrap() {
                Some(Change::Reopened { open_for }) => assert_eq!(open_for, Duration::from_secs(want)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn disabled_never_opens() {
        let b = Breaker::new(BreakerPolicy { enabled: false, ..policy(30) });
        for _ in 0..50 {
            assert_eq!(run(&b, true).unwrap(), None);
        }
        assert!(!b.isolated());
    }
}
