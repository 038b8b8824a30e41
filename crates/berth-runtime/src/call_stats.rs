//! Outcomes of one connector version's calls over a trailing window: what a canary is
//! judged by. A call fails when it traps, times out or returns an error other than
//! `rate-limited` (a throttle is the platform's doing, not the version's).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest window kept; older outcomes are dropped.
const KEEP: Duration = Duration::from_secs(3600);
/// At most this many outcomes are kept (oldest dropped first).
const MAX_KEPT: usize = 100_000;

#[derive(Default)]
pub struct CallStats {
    outcomes: Mutex<VecDeque<(Instant, bool)>>,
}

/// Calls and failures in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Tally {
    pub calls: u64,
    pub failures: u64,
}

impl Tally {
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }
}

impl CallStats {
    pub fn record(&self, ok: bool) {
        let now = Instant::now();
        let mut q = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        while q.front().is_some_and(|(t, _)| now.duration_since(*t) > KEEP) || q.len() >= MAX_KEPT {
            q.pop_front();
        }
        q.push_back((now, ok));
    }

    /// Outcomes within the last `window`.
    pub fn tally(&self, window: Duration) -> Tally {
        let now = Instant::now();
        let q = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = Tally::default();
        for (_, ok) in q.iter().rev().take_while(|(at, _)| now.duration_since(*at) <= window) {
            t.calls += 1;
            if !ok {
                t.failures += 1;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_the_window() {
        let s = CallStats::default();
        for ok in [true, false, true, true] {
            s.record(ok);
        }
        let t = s.tally(Duration::from_secs(60));
        assert_eq!(t, Tally { calls: 4, failures: 1 });
        assert_eq!(t.failure_rate(), 0.25);
        assert_eq!(s.tally(Duration::ZERO).calls, 0);
        assert_eq!(Tally::default().failure_rate(), 0.0);
    }
}
