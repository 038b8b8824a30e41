//! The API listener's cost: the same small router served by `axum::serve` (what berth
//! used before) and by berth's own listener (connection bounds, header timeout, busy
//! tracking per request), hit over loopback by keep-alive clients. Rounds alternate
//! between the two so the machine's drift falls on both.
//!
//! `cargo bench -p berth-host --bench listener` (REQUESTS=N per round, default 20000).

use axum::routing::{get, post};
use axum::Router;
use std::time::{Duration, Instant};

fn app() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/orders/lease", post(|body: axum::body::Bytes| async move { format!("{{\"leases\":[],\"asked\":{}}}", body.len()) }))
}

/// Serve `app` one way on a fresh port; returns its address and a stop switch.
async fn start(own: bool) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = tokio::sync::watch::channel(false);
    if own {
        let limits = berth_api::listener::Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            metrics: berth_host::metrics::AllMetrics::new().api,
        };
        tokio::spawn(berth_api::listener::serve(listener, app(), limits, None, rx));
    } else {
        let mut rx = rx;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app())
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
    }
    (addr, stop)
}

/// `clients` keep-alive clients sending `total` requests between them (half GETs, half
/// small POSTs); requests per second and p50/p99 latency.
async fn round(addr: std::net::SocketAddr, clients: usize, total: usize) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let per = total / clients;
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).build().expect("client");
            let mut times = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                let resp = if (i + c) % 2 == 0 {
                    client.get(format!("http://{addr}/healthz")).send().await
                } else {
                    client.post(format!("http://{addr}/v1/orders/lease")).body("{\"max\":10}").send().await
                };
                let resp = resp.expect("answered");
                assert!(resp.status().is_success());
                let _ = resp.bytes().await;
                times.push(t.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all[all.len() / 2], all[all.len() * 99 / 100])
}

fn main() {
    let total: usize = std::env::var("REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("{total} requests a round over loopback, half GET /healthz, half small POSTs; p50/p99 in µs");
    println!("| server | clients | round | req/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for clients in [1, 16, 64] {
        for r in 1..=3 {
            for own in [false, true] {
                let (rate, p50, p99) = rt.block_on(async {
                    let (addr, stop) = start(own).await;
                    let out = round(addr, clients, total).await;
                    let _ = stop.send(true);
                    out
                });
                let name = if own { "berth listener" } else { "axum::serve" };
                println!("| {name} | {clients} | {r} | {rate:.0} | {} | {} |", p50.as_micros(), p99.as_micros());
            }
        }
    }
}
