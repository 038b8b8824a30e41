//! Fault injection and throttling, per platform.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the next request to a platform gets instead of a normal answer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// HTTP 500 with a short error body.
    Http500,
    /// HTTP 503, as a load balancer in front of a platform answers.
    Http503,
    /// Hold the request without answering for `timeout_hold` (the caller should time out).
    Timeout,
    /// HTTP 200 with a body that is not the platform's JSON.
    Garbage,
}

#[derive(Default)]
pub struct FaultQueue {
    queue: VecDeque<FaultKind>,
}

impl FaultQueue {
    pub fn push(&mut self, kind: FaultKind, count: usize) {
        self.queue.extend(std::iter::repeat_n(kind, count));
    }
    pub fn next(&mut self) -> Option<FaultKind> {
        self.queue.pop_front()
    }
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

/// Shopify's leaky bucket: each call adds one; the bucket leaks `leak_per_sec`.
pub struct LeakyBucket {
    pub size: f64,
    pub leak_per_sec: f64,
    level: f64,
    last: Instant,
}

pub enum BucketAnswer {
    Allowed { used: u32 },
    Throttled { retry_after: Duration, used: u32 },
}

impl LeakyBucket {
    pub fn new(size: u32, leak_per_sec: f64) -> Self {
        LeakyBucket { size: size as f64, leak_per_sec, level: 0.0, last: Instant::now() }
    }

    pub fn take(&mut self, now: Instant) -> BucketAnswer {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level - elapsed * self.leak_per_sec).max(0.0);
        self.last = now;
        if self.level + 1.0 <= self.size {
            self.level += 1.0;
            BucketAnswer::Allowed { used: self.level.ceil() as u32 }
        } else {
            let wait = (self.level + 1.0 - self.size) / self.leak_per_sec;
            BucketAnswer::Throttled {
                retry_after: Duration::from_secs_f64(wait.max(0.05)),
                used: self.level.ceil() as u32,
            }
        }
    }
}

/// TOP-style flow control: at most `calls` per `per` per app; going over bans the app
/// for `ban` and every call during the ban is refused with the time left.
pub struct CallWindow {
    pub calls: u32,
    pub per: Duration,
    pub ban: Duration,
    window_start: Instant,
    used: u32,
    banned_until: Option<Instant>,
}

impl CallWindow {
    pub fn new(calls: u32, per: Duration, ban: Duration) -> Self {
        CallWindow { calls, per, ban, window_start: Instant::now(), used: 0, banned_until: None }
    }

    /// `Ok(())` when the call may go on, `Err(time left in the ban)` when throttled.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.banned_until {
            if now < until {
                return Err(until - now);
            }
            self.banned_until = None;
            self.window_start = now;
            self.used = 0;
        }
        if now.saturating_duration_since(self.window_start) >= self.per {
            self.window_start = now;
            self.used = 0;
        }
        if self.used < self.calls {
            self.used += 1;
            Ok(())
        } else {
            self.banned_until = Some(now + self.ban);
            Err(self.ban)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_throttles_and_leaks() {
        let t0 = Instant::now();
        let mut b = LeakyBucket::new(2, 2.0);
        assert!(matches!(b.take(t0), BucketAnswer::Allowed { used: 1 }));
        assert!(matches!(b.take(t0), BucketAnswer::Allowed { used: 2 }));
        match b.take(t0) {
            BucketAnswer::Throttled { retry_after, used } => {
                assert_eq!(used, 2);
                assert!((retry_after.as_secs_f64() - 0.5).abs() < 1e-6);
            }
            _ => panic!("third call in a 2-bucket must be throttled"),
        }
        assert!(matches!(b.take(t0 + Duration::from_millis(500)), BucketAnswer::Allowed { .. }));
    }

    #[test]
    fn window_bans_then_recovers() {
        let t0 = Instant::now();
        let mut w = CallWindow::new(2, Duration::from_secs(1), Duration::from_secs(3));
        assert!(w.take(t0).is_ok());
        assert!(w.take(t0).is_ok());
        assert_eq!(w.take(t0), Err(Duration::from_secs(3)));
        assert_eq!(w.take(t0 + Duration::from_secs(1)), Err(Duration::from_secs(2)));
        assert!(w.take(t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn faults_are_served_in_order() {
        let mut q = FaultQueue::default();
        q.push(FaultKind::Http500, 2);
        q.push(FaultKind::Garbage, 1);
        assert_eq!(q.pending(), 3);
        assert_eq!(q.next(), Some(FaultKind::Http500));
        assert_eq!(q.next(), Some(FaultKind::Http500));
        assert_eq!(q.next(), Some(FaultKind::Garbage));
        assert_eq!(q.next(), None);
    }
}
