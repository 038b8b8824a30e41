//! What a connector costs per language: component size, the host's compile (cranelift,
//! cold), loading the compiled code from the cache, a fresh instance plus the trivial
//! `manifest` export, and a realistic `pull-orders` call (one page of 50 orders from the
//! simulator over loopback HTTP, parsed and mapped), one at a time; then calls/s of each
//! with [`IN_FLIGHT`] calls at once on the bench's two worker threads (a 2-core machine).
//!
//! Run: `cargo bench -p berth-host --bench languages` (optionally `-- CALLS`, default 2000);
//! `RUNTIME='meter_fuel = false'` (lines of the config's `[runtime]` table, `;`-separated)
//! runs it on other runtime settings, e.g. to see what metering or `keep_resident_kb` costs;
//! `ONLY=shopify` runs one connector (for profiling); with it, `COMPONENT=path` measures
//! another build of that connector (e.g. one built differently) in place of the test build's.
//! The components are the ones the test build makes (`cargo test -p berth-tests --no-run`).
//!
//! For the Rust connectors a second table gives wasmtime's floor beside berth's figure:
//! the same component on an engine configured the same way, instantiated into a bare
//! `Store<()>` (every import a trap; `manifest` calls none) and called — no per-call host
//! state, limiter, deadline callback, call permit or metrics. The difference is berth's.

use berth_types::Secret;
use berth_types::shop::{ShopConfig, Tier};
use berth_kit::ScratchHost;
use berth_types::connector::{PullRequest, TimeWindow};
use berth_runtime::tape::Tape;
use berth_runtime::{Call, Output};
use berth_sim::{LimitsUpdate, Platform, SimConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{count_arg, ms, percentile, spread};

/// (language, connector, simulated platform, component path under target/)
const CONNECTORS: &[(&str, &str, Platform, &str)] = &[
    ("Rust", "shopify", Platform::Shopify, "wasm-guests/wasm32-wasip2/release/berth_connector_shopify_rest.wasm"),
    ("Rust", "shopify-graphql", Platform::Shopify, "wasm-guests/wasm32-wasip2/release/berth_connector_shopify_graphql.wasm"),
    ("Rust", "taobao", Platform::Taobao, "wasm-guests/wasm32-wasip2/release/berth_connector_taobao.wasm"),
    ("Python", "shopee-py", Platform::Shopee, "wasm-guests-foreign/shopee_py.wasm"),
    ("JavaScript", "woo-js", Platform::Woo, "wasm-guests-foreign/woo_js.wasm"),
    ("C", "woo-c", Platform::Woo, "wasm-guests-foreign/woo_c.wasm"),
];

/// Calls in flight at once in the calls/s rows (each on its own task).
const IN_FLIGHT: usize = 8;
/// How long each calls/s row runs.
const THROUGHPUT_FOR: Duration = Duration::from_secs(3);
/// berth against wasmtime's floor: this many rounds of each, alternating which goes
/// first, each [`ROUND_FOR`] long; the medians are reported.
const ROUNDS: usize = 6;
const ROUND_FOR: Duration = Duration::from_millis(500);

/// Calls per second of `call` with [`IN_FLIGHT`] tasks calling it back to back for `time`.
async fn calls_per_sec<F, Fut>(call: F, time: Duration) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let until = Instant::now() + time;
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    call().await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("calls task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Calls/s of `ours` and of `floor`, measured in alternating rounds so the machine's
/// drift moves both alike: (median, lowest, highest) of each.
async fn alternating_rates<F, Fut, G, Gut>(ours: F, floor: G) -> ([f64; 3], [f64; 3])
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
    G: Fn() -> Gut + Clone + Send + 'static,
    Gut: std::future::Future<Output = ()> + Send,
{
    let (mut a, mut b) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            a.push(calls_per_sec(ours.clone(), ROUND_FOR).await);
            b.push(calls_per_sec(floor.clone(), ROUND_FOR).await);
        } else {
            b.push(calls_per_sec(floor.clone(), ROUND_FOR).await);
            a.push(calls_per_sec(ours.clone(), ROUND_FOR).await);
        }
    }
    (spread(a), spread(b))
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.1), percentile(&v, 0.9), percentile(&v, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls = count_arg(2000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("target");
    let mut sim_cfg = SimConfig { history_hours: 2, ..SimConfig::default() };
    // Enough orders in the last two hours for full pages; no platform throttling.
    sim_cfg.shopify.shops[0].orders = 400;
    sim_cfg.taobao.shops[0].orders = 400;
    sim_cfg.shopee.shops[0].orders = 400;
    sim_cfg.woo.sites[0].orders = 400;
    // Shopify's GraphQL bucket as large as the REST one is made below.
    sim_cfg.shopify.graphql = berth_sim::shopify_graphql::GraphqlLimits { maximum: 1e12, restore_per_second: 1e12, max_query_cost: 1e12 };
    let sim = berth_sim::start(sim_cfg.clone(), "127.0.0.1:0".parse().expect("address")).await.expect("simulator");
    sim.state.set_limits(LimitsUpdate {
        shopify_bucket_size: Some(1_000_000),
        shopify_leak_per_sec: Some(1_000_000.0),
        taobao_calls_per_window: Some(1_000_000),
        shopee_calls_per_window: Some(1_000_000),
        woo_requests_per_window: Some(1_000_000),
        ..Default::default()
    });

    println!("calls per row: {calls} (instantiate), {} (pull-orders); calls/s: {IN_FLIGHT} in flight for {} s", calls / 4, THROUGHPUT_FOR.as_secs());
    println!(
        "| language | connector | component | host compile (cold) | cached load | instantiate + manifest p50 (p10–p90, p99) | manifest calls/s | pull-orders, 50 orders, p50 (p10–p90, p99) | pull-orders calls/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let only = std::env::var("ONLY").ok();
    let mut floors = Vec::new();
    for (language, name, platform, rel) in CONNECTORS {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let path: PathBuf = match std::env::var_os("COMPONENT") {
            Some(other) if only.is_some() => PathBuf::from(other),
            _ => root.join(rel),
        };
        let Ok(bytes) = std::fs::read(&path) else {
            println!("| {language} | {name} | missing: build it with `cargo test -p berth-tests --no-run` | | | | | | |");
            continue;
        };
        // Cold: a scratch host with an empty compile cache.
        let runtime = format!("[runtime]\n{}\n", std::env::var("RUNTIME").unwrap_or_default().replace(';', "\n"));
        let runtime = runtime.as_str();
        let host = ScratchHost::with_config(runtime).expect("scratch host");
        let t = Instant::now();
        let local = ["127.0.0.1".to_string()];
        let conn = Arc::new(host.runtime.load(name, &path, &host.options(&local)).await.expect("load"));
        let cold = t.elapsed();
        // Cached: the same runtime loads it again from its cache directory.
        let t = Instant::now();
        drop(host.runtime.load(name, &path, &host.options(&local)).await.expect("cached load"));
        let cached = t.elapsed();
        host.unlimited(&conn.manifest.platform);

        // For the Rust connectors, wasmtime alone, call for call with berth's (the
        // machine's noise moves both alike).
        let floor = (*language == "Rust").then(|| Arc::new(Floor::new(&path, runtime)));
        let (mut inst, mut bare) = (Vec::with_capacity(calls), Vec::new());
        for _ in 0..calls {
            let t = Instant::now();
            conn.manifest_call().await.expect("manifest");
            inst.push(t.elapsed());
            if let Some(f) = &floor {
                let t = Instant::now();
                f.call().await;
                bare.push(t.elapsed());
            }
        }
        let c = conn.clone();
        let ours = move || {
            let c = c.clone();
            async move {
                c.manifest_call().await.expect("manifest");
            }
        };
        let (manifest_rate, floor_rates) = match &floor {
            Some(f) => {
                let f = f.clone();
                let (mine, bare) = alternating_rates(ours, move || {
                    let f = f.clone();
                    async move { f.call().await }
                })
                .await;
                (mine[0], Some((mine, bare)))
            }
            None => (calls_per_sec(ours, THROUGHPUT_FOR).await, None),
        };

        let profile = berth_sim::profiles::shop_profile(&sim_cfg, *platform, &sim.base_url()).expect("profile");
        let mut settings: std::collections::BTreeMap<String, String> = profile.settings.iter().cloned().collect();
        settings.insert("page_size".into(), "50".into());
        // The GraphQL connector's lines per order: 50 orders of 10 lines stay under a query's cost cap.
        settings.insert("line_items".into(), "10".into());
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
        let (c, shop_name) = (conn.clone(), profile.shop.clone());
        let pull_rate = calls_per_sec(move || {
            let (c, shop, shop_name) = (c.clone(), shop.clone(), shop_name.clone());
            let req = PullRequest { window: window.clone(), page_cursor: None };
            async move {
                let (out, _) = c.call(&shop_name, shop, Call::Pull(req), Tape::Off).await;
                assert!(matches!(out, Ok(Output::Pull(Ok(_)))), "pull failed under load");
            }
        }, THROUGHPUT_FOR)
        .await;
        let (i50, i10, i90, i99) = stats(inst);
        if let Some(rates) = floor_rates {
            floors.push((*name, i50, rates, bare));
        }
        let (p50, p10, p90, p99) = stats(pulls);
        println!(
            "| {language} | {name} | {:.2} MB | {} ms | {} ms | {} µs ({}–{}, {}) | {:.0} | {} ms ({}–{}, {}) | {:.0} |",
            bytes.len() as f64 / 1e6,
            ms(cold),
            ms(cached),
            us(i50),
            us(i10),
            us(i90),
            us(i99),
            manifest_rate,
            ms(p50),
            ms(p10),
            ms(p90),
            ms(p99),
            pull_rate,
        );
    }
    if floors.is_empty() {
        return;
    }
    println!();
    println!(
        "| connector | berth: instantiate + manifest p50 | wasmtime floor p50 (p10–p90, p99) | berth's share | berth calls/s, median of {ROUNDS} (range) | floor calls/s, alternating (range) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, ours, (our_rate, bare_rate), bare) in floors {
        let (b50, b10, b90, b99) = stats(bare);
        println!(
            "| {name} | {} µs | {} µs ({}–{}, {}) | {} µs | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) |",
            us(ours),
            us(b50),
            us(b10),
            us(b90),
            us(b99),
            us(ours.saturating_sub(b50)),
            our_rate[0],
            our_rate[1],
            our_rate[2],
            bare_rate[0],
            bare_rate[1],
            bare_rate[2],
        );
    }
}

/// wasmtime alone: a connector's component on an engine set up as berth's (the same
/// `[runtime]` lines), each call instantiating it into a bare store and calling
/// `manifest`.
struct Floor {
    engine: berth_runtime::engine::ConnectorEngine,
    pre: berth_runtime::bindings::ConnectorPre<()>,
    fuel: bool,
}

impl Floor {
    fn new(path: &Path, runtime: &str) -> Floor {
        use wasmtime::component::{Component, Linker};
        let cfg = berth_host::config::Config::parse(runtime, Path::new("<bench>")).expect("runtime config");
        let engine = berth_runtime::engine::ConnectorEngine::new(&cfg.runtime).expect("engine");
        let component = Component::from_file(&engine.engine, path).expect("compile");
        let mut linker = Linker::<()>::new(&engine.engine);
        linker.define_unknown_imports_as_traps(&component).expect("trap imports");
        let pre = berth_runtime::bindings::ConnectorPre::new(linker.instantiate_pre(&component).expect("instantiate_pre")).expect("world");
        Floor { engine, pre, fuel: cfg.runtime.meter_fuel }
    }

    async fn call(&self) {
        let mut store = wasmtime::Store::new(&self.engine.engine, ());
        if self.fuel {
            store.set_fuel(u64::MAX).expect("fuel");
        }
        store.set_epoch_deadline(1_000);
        let inst = self.pre.instantiate_async(&mut store).await.expect("instantiate");
        inst.call_manifest(&mut store).await.expect("manifest");
    }
}
