//! What a large shop's snapshot costs: building and writing its files (100,000 listings,
//! 50,000 orders of 2 lines, 100,000 desired-stock records by default) with zstd pages
//! against uncompressed ones — time and bytes — and reading the listings back as the
//! fallback stock does (once per snapshot; kept after). Rounds alternate between the
//! codecs so the machine's drift falls on both.
//!
//! `cargo bench -p berth-snapshot --bench write` (LISTINGS=N, ORDERS=N, STOCK=N).

use berth_snapshot::table::{self, Codec, Column};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The three tables' columns, shaped like berth's (tables.rs) with plausible values.
fn tables(listings: usize, orders: usize, stock: usize) -> Vec<(&'static str, Vec<Column>)> {
    let sku = |i: usize| format!("SKU-{:07}", i);
    vec![
        (
            "listings",
            vec![
                Column::text("sku", (0..listings).map(sku)),
                Column::text("item_id", (0..listings).map(|i| format!("{}", 7_000_000_000u64 + (i / 4) as u64))),
                Column::opt_text("variant_id", (0..listings).map(|i| (i % 5 != 0).then(|| format!("{}", 9_000_000_000u64 + i as u64)))),
                Column::text("title", (0..listings).map(|i| format!("Cotton T-shirt, crew neck, colour {} size {}", i % 12, i % 6))),
                Column::int("quantity", (0..listings).map(|i| (i * 7919 % 500) as i64)),
                Column::int("price_minor", (0..listings).map(|i| 999 + (i % 40) as i64 * 100)),
                Column::text("currency", (0..listings).map(|_| "CNY".to_string())),
            ],
        ),
        (
            "orders",
            vec![
                Column::text("order_id", (0..orders).map(|i| format!("{}", 3_000_000_000_000u64 + i as u64))),
                Column::text("status", (0..orders).map(|i| ["paid", "shipped", "completed"][i % 3].to_string())),
                Column::time("updated_at", (0..orders).map(|i| 1_796_000_000_000 + i as i64 * 1000)),
                Column::int("total_minor", (0..orders).map(|i| 1999 + (i % 50) as i64 * 100)),
                Column::text("buyer_name_masked", (0..orders).map(|i| format!("{}***", ["Z", "L", "W", "C"][i % 4]))),
            ],
        ),
        (
            "order_lines",
            vec![
                Column::text("order_id", (0..orders * 2).map(|i| format!("{}", 3_000_000_000_000u64 + (i / 2) as u64))),
                Column::text("sku", (0..orders * 2).map(|i| sku(i * 31 % listings.max(1)))),
                Column::int("quantity", (0..orders * 2).map(|i| 1 + (i % 3) as i64)),
            ],
        ),
        (
            "stock",
            vec![
                Column::text("sku", (0..stock).map(sku)),
                Column::int("desired_quantity", (0..stock).map(|i| (i * 104_729 % 500) as i64)),
                Column::opt_int("desired_seq", (0..stock).map(|i| Some(i as i64 * 3))),
                Column::text("state", (0..stock).map(|i| if i % 50 == 0 { "pending" } else { "pushed" }.to_string())),
                Column::opt_time("pushed_at", (0..stock).map(|i| (i % 50 != 0).then_some(1_796_000_000_000 + i as i64))),
            ],
        ),
    ]
}

fn main() {
    let (listings, orders, stock) = (env("LISTINGS", 100_000), env("ORDERS", 50_000), env("STOCK", 100_000));
    let dir = tempfile::tempdir().expect("temp dir");
    println!("{listings} listings, {orders} orders x 2 lines, {stock} stock records; ms to build + write all files, MB written, ms to read the listings back");
    let mut figures: Vec<(Codec, f64, u64, f64)> = Vec::new();
    for round in 0..5 {
        for codec in [Codec::Zstd, Codec::None] {
            let started = Instant::now();
            let mut bytes = 0;
            for (name, columns) in tables(listings, orders, stock) {
                let path = dir.path().join(format!("{name}-{round}-{codec:?}.parquet"));
                let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
                table::write_with(file, &columns, codec).expect("write");
                bytes += std::fs::metadata(&path).expect("written").len();
            }
            let wrote = started.elapsed().as_secs_f64() * 1000.0;
            let started = Instant::now();
            let rows = table::read(&dir.path().join(format!("listings-{round}-{codec:?}.parquet"))).expect("read");
            assert_eq!(rows.len(), listings);
            let read = started.elapsed().as_secs_f64() * 1000.0;
            figures.push((codec, wrote, bytes, read));
        }
    }
    for codec in [Codec::Zstd, Codec::None] {
        let mut w: Vec<f64> = figures.iter().filter(|f| f.0 == codec).map(|f| f.1).collect();
        let mut r: Vec<f64> = figures.iter().filter(|f| f.0 == codec).map(|f| f.3).collect();
        w.sort_by(f64::total_cmp);
        r.sort_by(f64::total_cmp);
        let mb = figures.iter().find(|f| f.0 == codec).map_or(0, |f| f.2) as f64 / 1e6;
        println!("{codec:?}: write median {:.0} ms (min {:.0}, max {:.0}), {mb:.2} MB; listings read median {:.0} ms", w[2], w[0], w[4], r[2]);
    }
}
