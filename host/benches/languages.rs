//! What a connector costs per language: component size, the host's compile (cranelift,
//! cold), loading the compiled code from the cache, a fresh instance plus the trivial
//! `manifest` export, and a realistic `pull-orders` call (one page of 50 orders from the
//! simulator over loopback HTTP, parsed and mapped).
//!
//! Run: `cargo bench -p berth-host --bench languages` (optionally `-- CALLS`, default 200);
//! `METER_FUEL=0` runs it with `[runtime] meter_fuel = false` to see what metering costs.
//! The components are the ones the test build makes (`cargo test -p berth-tests --no-run`).

use berth_host::config::{Secret, ShopConfig, Tier};
use berth_host::plugin::ScratchHost;
use berth_host::runtime::bindings::berth::connector::types::{PullRequest, TimeWindow};
use berth_host::runtime::tape::Tape;
use berth_host::runtime::{Call, Output};
use berth_sim::{LimitsUpdate, Platform, SimConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{count_arg, ms, percentile};

/// (language, connector, simulated platform, component path under target/)
const CONNECTORS: &[(&str, &str, Platform, &str)] = &[
    ("Rust", "shopify", Platform::Shopify, "wasm-guests/wasm32-wasip2/release/berth_connector_shopify.wasm"),
    ("Rust", "taobao", Platform::Taobao, "wasm-guests/wasm32-wasip2/release/berth_connector_taobao.wasm"),
    ("Python", "shopee-py", Platform::Shopee, "wasm-guests-foreign/shopee_py.wasm"),
    ("JavaScript", "woo-js", Platform::Woo, "wasm-guests-foreign/woo_js.wasm"),
    ("C", "woo-c", Platform::Woo, "wasm-guests-foreign/woo_c.wasm"),
];

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.1), percentile(&v, 0.9), percentile(&v, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls = count_arg(200);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("target");
    let mut sim_cfg = SimConfig { history_hours: 2, ..SimConfig::default() };
    // Enough orders in the last two hours for full pages; no platform throttling.
    sim_cfg.shopify.shops[0].orders = 400;
    sim_cfg.taobao.shops[0].orders = 400;
    sim_cfg.shopee.shops[0].orders = 400;
    sim_cfg.woo.sites[0].orders = 400;
    let sim = berth_sim::start(sim_cfg.clone(), "127.0.0.1:0".parse().expect("address")).await.expect("simulator");
    sim.state.set_limits(LimitsUpdate {
        shopify_bucket_size: Some(1_000_000),
        shopify_leak_per_sec: Some(1_000_000.0),
        taobao_calls_per_window: Some(1_000_000),
        shopee_calls_per_window: Some(1_000_000),
        woo_requests_per_window: Some(1_000_000),
        ..Default::default()
    });

    println!("calls per row: {calls} (instantiate), {} (pull-orders)", calls / 4);
    println!(
        "| language | connector | component | host compile (cold) | cached load | instantiate + manifest p50 (p10–p90, p99) | pull-orders, 50 orders, p50 (p10–p90, p99) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (language, name, platform, rel) in CONNECTORS {
        let path: PathBuf = root.join(rel);
        let Ok(bytes) = std::fs::read(&path) else {
            println!("| {language} | {name} | missing: build it with `cargo test -p berth-tests --no-run` | | | | |");
            continue;
        };
        // Cold: a scratch host with an empty compile cache.
        let runtime = if std::env::var("METER_FUEL").is_ok_and(|v| v == "0") { "[runtime]\nmeter_fuel = false\n" } else { "" };
        let host = ScratchHost::with_config(runtime).expect("scratch host");
        let t = Instant::now();
        let local = ["127.0.0.1".to_string()];
        let conn = host.runtime.load(name, &path, &host.options(&local)).await.expect("load");
        let cold = t.elapsed();
        // Cached: the same runtime loads it again from its cache directory.
        let t = Instant::now();
        drop(host.runtime.load(name, &path, &host.options(&local)).await.expect("cached load"));
        let cached = t.elapsed();
        host.unlimited(&conn.manifest.platform);

        let mut inst = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            conn.manifest_call().await.expect("manifest");
            inst.push(t.elapsed());
        }

        let profile = berth_sim::profiles::shop_profile(&sim_cfg, *platform, &sim.base_url()).expect("profile");
        let mut settings: std::collections::BTreeMap<String, String> = profile.settings.iter().cloned().collect();
        settings.insert("page_size".into(), "50".into());
        let shop = Arc::new(ShopConfig {
            connector: name.to_string(),
            tier: Tier::A,
            poll_interval_secs: None,
            settings,
            secrets: profile.secrets.iter().map(|(k, v)| (k.clone(), Secret::new(v.clone()))).collect(),
        });
        let now = berth_sim::now_s() * 1000;
        let window = TimeWindow { start_ms: now - 3 * 3_600_000 + 60_000, end_ms: now };
        let window = match conn.manifest.max_window_ms {
            Some(w) if (window.end_ms - window.start_ms) as u64 > w => TimeWindow { start_ms: window.end_ms - w as i64, ..window },
            _ => window,
        };
        let mut pulls = Vec::with_capacity(calls / 4);
        for _ in 0..calls / 4 {
            let req = PullRequest { window: window.clone(), page_cursor: None };
            let t = Instant::now();
            let (out, _) = conn.call(&profile.shop, shop.clone(), Call::Pull(req), Tape::Off).await;
            let elapsed = t.elapsed();
            match out {
                Ok(Output::Pull(Ok(page))) if page.orders.len() == 50 => pulls.push(elapsed),
                Ok(Output::Pull(Ok(page))) => panic!("{name}: a page of {} orders, not 50", page.orders.len()),
                other => panic!("{name}: pull failed: {:?}", other.map(|o| o.ok())),
            }
        }
        let (i50, i10, i90, i99) = stats(inst);
        let (p50, p10, p90, p99) = stats(pulls);
        println!(
            "| {language} | {name} | {:.2} MB | {} ms | {} ms | {} µs ({}–{}, {}) | {} ms ({}–{}, {}) |",
            bytes.len() as f64 / 1e6,
            ms(cold),
            ms(cached),
            us(i50),
            us(i10),
            us(i90),
            us(i99),
            ms(p50),
            ms(p10),
            ms(p90),
            ms(p99),
        );
    }
}
