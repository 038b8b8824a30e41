//! The ERP reads a store of 2 MB orders: `GET /v1/orders?limit=1000` and a lease of
//! 1,000 each stop at `[erp] max_response_bytes` (8 MiB, at least one order), stream
//! the answer, and `next_after` (or the next lease) goes on — every order read exactly
//! once. Reading the feed, berth's memory grows by less than twice that bound (before:
//! one read built a 1.04 GB answer in memory, a 5.7 GB peak).

use berth_tests::{get_json, poll_until, Berth};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const BOUND: usize = 8 << 20;
const ORDERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_leases_stop_at_the_byte_bound_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 1\nmax_pages_per_window = {}\nerror_pause_secs = 3600\n\
             [connectors.hostile]\ncomponent = {:?}\n\
             [connectors.hostile.limits]\nmax_raw_json_bytes = 4194304\nbreaker = false\n\
             [shops.h-big]\nconnector = \"hostile\"\npoll_interval_secs = 3600\n\
             settings = {{ mode = \"raw-flood\", orders = \"1\", raw_bytes = \"2000000\" }}\n",
            ORDERS + 1,
            plugins::HOSTILE
        ),
    );
    let berth = Berth::start(&config);
    // One 2 MB order a page until the window's page bound stops the endless cursor.
    let filled = poll_until(Duration::from_secs(120), || async {
        let shops = get_json(berth.url("/v1/shops")).await;
        let s = shops.as_array()?.iter().find(|s| s["shop"] == "h-big")?.clone();
        (s["orders_added"].as_u64()? as usize == ORDERS && s["last_error"].as_str().is_some_and(|e| e.contains("max_pages_per_window"))).then_some(())
    })
    .await;
    if filled.is_none() {
        panic!("the store did not fill: {}", get_json(berth.url("/v1/shops")).await);
    }

    let client = reqwest::Client::new();
    let (rss_before, _) = berth.memory();
    berth.reset_peak_memory();
    // The feed, page by page.
    let mut seen = BTreeSet::new();
    let mut after = 0u64;
    let mut answers = 0;
    loop {
        let resp = client.get(berth.url(&format!("/v1/orders?limit=1000&after={after}"))).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body = resp.bytes().await.unwrap();
        let page: Value = serde_json::from_slice(&body).expect("a whole JSON answer");
        let orders = page["orders"].as_array().unwrap();
        if orders.is_empty() {
            break;
        }
        answers += 1;
        assert!(body.len() <= BOUND + 4096, "an answer of {} bytes, over the {BOUND}-byte bound", body.len());
        for o in orders {
            assert!(seen.insert(o["order"]["order_id"].as_str().unwrap().to_string()), "read twice: {}", o["seq"]);
        }
        after = page["next_after"].as_u64().unwrap();
    }
    assert_eq!(seen.len(), ORDERS, "every order read once");
    assert!(answers >= ORDERS * 2_000_000 / BOUND + 1, "{answers} answers for {} MB", ORDERS * 2);
    let (_, peak) = berth.memory();
    let grew = peak.saturating_sub(rss_before);
    eprintln!("feed reads: RSS before {} MB, peak during them {} MB (+{} KB)", rss_before >> 20, peak >> 20, grew >> 10);
    assert!((grew as usize) < 2 * BOUND, "memory grew {} MB reading {} MB of orders", grew >> 20, ORDERS * 2);
    let (rss_before, _) = berth.memory();
    berth.reset_peak_memory();
    // The queue, lease by lease.
    let mut leased = BTreeSet::new();
    loop {
        let resp = client.post(berth.url("/v1/orders/lease")).json(&serde_json::json!({"max": 1000, "visibility_secs": 600})).send().await.unwrap();
        let body = resp.bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&body).expect("a whole JSON answer");
        let leases = v["leases"].as_array().unwrap();
        if leases.is_empty() {
            break;
        }
        assert!(body.len() <= BOUND + 4096, "a lease answer of {} bytes", body.len());
        let tokens: Vec<Value> = leases.iter().map(|l| l["token"].clone()).collect();
        for l in leases {
            assert_eq!(l["shop"], "h-big", "the queued order's fields beside its token: {}", &l.to_string()[..200]);
            assert!(leased.insert(l["order"]["order_id"].as_str().unwrap().to_string()));
        }
        let acked: Value = client.post(berth.url("/v1/orders/ack")).json(&serde_json::json!({"tokens": tokens})).send().await.unwrap().json().await.unwrap();
        assert_eq!(acked["done"].as_u64().unwrap() as usize, leases.len());
    }
    assert_eq!(leased, seen, "every order leased once");
    // A lease rewrites each message it takes (header and payload are one record), and the
    // engine's memtable holds what it wrote: memory follows what was leased, not the
    // answer's size — bounded here by what was leased plus one answer.
    let (_, peak) = berth.memory();
    let grew = peak.saturating_sub(rss_before);
    eprintln!("leases: RSS before {} MB, peak during them {} MB (+{} KB)", rss_before >> 20, peak >> 20, grew >> 10);
    assert!((grew as usize) < ORDERS * 2_000_000 * 2 + BOUND, "memory grew {} MB leasing {} MB of orders", grew >> 20, ORDERS * 2);
}
