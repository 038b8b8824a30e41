//! Exponential backoff with jitter, shared by every retry loop in the host.

use rand::Rng;
use std::time::Duration;

/// Delay before retry number `attempt` (1-based): `base_ms` doubling per attempt up to
/// `max_ms`, then jittered into [half, full] so shops and SKUs failing together do not
/// retry in step.
pub fn delay(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    delay_with_jitter(attempt, base_ms, max_ms, 0.5)
}

/// As [`delay`], with `jitter` (0..=1) the share of the step that may be taken off.
pub fn delay_with_jitter(attempt: u32, base_ms: u64, max_ms: u64, jitter: f64) -> Duration {
    let base = base_ms as f64 * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = base.min(max_ms as f64);
    let jitter = jitter.clamp(0.0, 1.0);
    let factor = if jitter > 0.0 { rand::thread_rng().gen_range(1.0 - jitter..=1.0) } else { 1.0 };
    Duration::from_millis((capped * factor) as u64)
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
        // Without jitter the steps are exact: 1-2-4-8 s, capped at 8.
        let steps: Vec<u128> = (1..=6).map(|a| delay_with_jitter(a, 1000, 8000, 0.0).as_millis()).collect();
        assert_eq!(steps, [1000, 2000, 4000, 8000, 8000, 8000]);
    }
}
