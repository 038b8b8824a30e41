//! What the benchmarks share: percentiles, millisecond formatting, the size argument.

use std::time::Duration;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The first non-flag argument as a count (cargo bench passes `--bench`), else `default`.
pub fn count_arg(default: usize) -> usize {
    std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// Median, lowest and highest of rates measured round by round (not every bench has rounds).
#[allow(dead_code)]
pub fn spread(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    [v[v.len() / 2], v[0], v[v.len() - 1]]
}
