//! Exponential backoff with jitter, shared by every retry loop in the host.

use rand::Rng;
use std::time::Duration;

/// Delay before retry number `attempt` (1-based): `base_ms` doubling per attempt up to
/// `max_ms`, then jittered into [half, full] so shops and SKUs failing together do not
/// retry in step.
pub fn delay(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let base = base_ms as f64 * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = base.min(max_ms as f64);
    Duration::from_millis((capped * rand::thread_rng().gen_range(0.5..=1.0)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_with_jitter() {
        for _ in 0..100 {
            let d1 = delay(1, 1000, 60_000).as_millis();
            assert!((500..=1000).contains(&d1), "{d1}");
            let d3 = delay(3, 1000, 60_000).as_millis();
            assert!((2000..=4000).contains(&d3), "{d3}");
            let big = delay(40, 1000, 60_000).as_millis();
            assert!((30_000..=60_000).contains(&big), "{big}");
        }
    }
}
