//! Reading the order feed (`GET /v1/orders` in cluster mode): ENTRIES feed entries of
//! ~600 bytes on a real 3-server JetStream cluster (R3, every write synced), read whole
//! in pages of PAGE entries, one direct get per entry (`feed::list_direct`) against one
//! ordered consumer per page (`feed::list_streamed`), runs interleaved. Run:
//! `cargo bench -p berth-cluster --bench feed_read` (ENTRIES=N, default 5000; PAGE=N,
//! default 1000; ROUNDS=N, default 3).

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use berth_cluster::feed;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let (entries, page, rounds) = (env("ENTRIES", 5000), env("PAGE", 1000), env("ROUNDS", 3));
    let nats = common::NatsCluster::start(3, true).await;
    let conn = common::connect(&nats, "bench").await;
    let record = bytes::Bytes::from(vec![b'x'; 600]);
    // Written 200 at a time, in flight together.
    for chunk in (0..entries).collect::<Vec<_>>().chunks(200) {
        let puts = chunk.iter().map(|i| conn.shops.put(format!("feed.all.shop-{}.order-{i}.1.d", i % 20), record.clone()));
        for r in futures_util::future::join_all(puts).await {
            r.expect("put");
        }
    }
    println!("{entries} feed entries, pages of {page}");
    for round in 1..=rounds {
        for (name, streamed) in [("direct get per entry", false), ("ordered consumer per page", true)] {
            let started = Instant::now();
            let (mut after, mut read) = (0u64, 0usize);
            loop {
                let got = if streamed {
                    feed::list_streamed(&conn, after, page, None).await
                } else {
                    feed::list_direct(&conn, after, page, None).await
                }
                .expect("list");
                assert!(got.windows(2).all(|w| w[0].seq < w[1].seq) && got.first().is_none_or(|r| r.seq > after), "{name}: a page after {after} out of order");
                let Some(last) = got.last() else { break };
                after = last.seq;
                read += got.len();
            }
            assert_eq!(read, entries, "{name}: read every entry");
            let secs = started.elapsed().as_secs_f64();
            println!("round {round}: {name:<26} {:>8.0} entries/s ({:.2} s)", entries as f64 / secs, secs);
        }
    }
}
