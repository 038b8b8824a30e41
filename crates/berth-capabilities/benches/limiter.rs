//! What the host's rate limiter costs each outbound request when it does not have to
//! wait: `RateLimits::acquire` on a platform without a bucket, with one (its calls
//! counted for quota usage), and with an endpoint class on top; and what reading the
//! usage of many keys costs (`/metrics`, `/v1/platforms` and each alert evaluation do).
//! Rounds alternate between the cases so the machine's drift falls on each.
//!
//! `cargo bench -p berth-capabilities --bench limiter` (CALLS=N per round, default 200000).

use berth_capabilities::ratelimit::{Endpoint, RateLimits};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn limits() -> RateLimits {
    let cfg: toml::Table = toml::from_str(
        "[free]\n\
         [bucketed]\nrequests_per_second = 100000.0\nburst = 100000\n\
         [classed]\nrequests_per_second = 100000.0\nburst = 100000\n\
         [classed.endpoints.stock]\nmatch = [\"/stock\"]\nrequests_per_second = 100000.0\nburst = 100000\n",
    )
    .expect("bench config");
    let platforms: BTreeMap<String, berth_capabilities::config::PlatformConfig> =
        cfg.into_iter().map(|(k, v)| (k, v.try_into().expect("platform config"))).collect();
    RateLimits::new(&platforms)
}

/// Nanoseconds per `acquire` of `calls` calls spread over 100 shops.
async fn round(l: &RateLimits, platform: &str, path: &str, keys: &[String], calls: usize) -> f64 {
    let started = Instant::now();
    for i in 0..calls {
        let e = Endpoint { path, api_method: None };
        let (_, flight) = l.acquire(platform, &keys[i % keys.len()], e, Duration::ZERO).await.expect("a slot without waiting");
        drop(flight);
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    let calls: usize = std::env::var("CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let keys: Vec<String> = (0..100).map(|i| format!("shop:s{i}")).collect();
    println!("{calls} calls a round over 100 keys; ns per acquire (no waiting)");
    let cases = [("no bucket", "free", "/orders"), ("bucket", "bucketed", "/orders"), ("bucket + class", "classed", "/stock")];
    let mut figures: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    rt.block_on(async {
        for _ in 0..5 {
            // A fresh limiter per round: buckets full, as after a quiet spell.
            for (name, platform, path) in cases {
                let l = limits();
                figures.entry(name).or_default().push(round(&l, platform, path, &keys, calls).await);
            }
        }
    });
    for (name, _, _) in cases {
        let mut v = figures.remove(name).unwrap_or_default();
        v.sort_by(f64::total_cmp);
        println!("{name:>16}: median {:>7.0} ns  (rounds {:?})", v[v.len() / 2], v.iter().map(|x| x.round() as u64).collect::<Vec<_>>());
    }
    // Reading usage: 10,000 keys on one bucket.
    rt.block_on(async {
        let l = limits();
        let many: Vec<String> = (0..10_000).map(|i| format!("shop:s{i}")).collect();
        round(&l, "bucketed", "/orders", &many, many.len()).await;
        let mut reads = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let rows = l.usage();
            reads.push(t.elapsed().as_micros() as u64);
            assert_eq!(rows.len(), many.len());
        }
        reads.sort();
        println!("usage() over 10,000 keys: median {} µs", reads[reads.len() / 2]);
    });
}
