//! End to end: orders per second from the simulator through the Shopify connector into
//! berth's durable ERP queue and out to an ERP consumer, with the connector run as its
//! WASM component and as native Rust linked into the host (the same source, see
//! common/native.rs), in the same run and through the same path:
//!
//! - one task per shop pages through a window holding all its orders, as a shop worker
//!   does: `pull-orders` (a fresh instance per call for the component), the page mapped
//!   with `sync::to_record` and taken by `sync::store_page` (new versions queued for the
//!   ERP, then the page and position committed; every write waits for fsync);
//! - an ERP consumer leases up to 256 orders at a time and acks them with
//!   `OrderInbox::ack_many` (what `POST /v1/orders/ack` runs), until it has every order.
//!
//! Each round runs both, alternating which goes first, each on a fresh database. The
//! figure is orders/s from the first pull to the last ack; the table also shows the time
//! spent inside `pull-orders` calls, the rest being queueing, storing and acking.
//!
//! Run: `cargo bench -p berth-host --bench e2e` (optionally `-- ORDERS_PER_SHOP`, default
//! 1500; `ROUNDS=n`, default 3). The component is the one the test build makes
//! (`cargo test -p berth-tests --no-run`).

use berth_types::Secret;
use berth_types::shop::{ShopConfig, Tier};
use berth_core::inbox::OrderInbox;
use berth_kit::ScratchHost;
use berth_core::queue::{QueuePolicy, StoreQueues};
use berth_types::connector::{ConnectorError, OrderPage, PullRequest, TimeWindow};
use berth_runtime::tape::Tape;
use berth_runtime::{Call, LoadedConnector};
use berth_core::store::{OrderData, OrderStore, PageSource, SyncState, WindowProgress};
use berth_core::sync::{store_page, to_record};
use berth_sim::{LimitsUpdate, Platform, SimConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[path = "common/native.rs"]
mod native;

use common::{count_arg, ms, percentile, spread};
use native::NativeShopify;

/// Shops pulled at once, each with its own task (as each shop has its own worker).
const SHOPS: usize = 8;
/// Shopify's largest page.
const PAGE: &str = "250";
/// Orders the ERP leases at once.
const LEASE: usize = 256;
/// Longest a run may take before the bench says what is missing.
const RUN_LIMIT: Duration = Duration::from_secs(300);

enum Connector {
    Wasm(Arc<LoadedConnector>),
    Native(Arc<NativeShopify>),
}

impl Connector {
    fn label(&self) -> &'static str {
        match self {
            Connector::Wasm(_) => "WASM component",
            Connector::Native(_) => "native Rust",
        }
    }

    fn version(&self) -> String {
        match self {
            Connector::Wasm(c) => c.version().to_string(),
            Connector::Native(_) => "native".into(),
        }
    }

    async fn pull(&self, shop: &str, cfg: Arc<ShopConfig>, req: PullRequest) -> Result<OrderPage, ConnectorError> {
        match self {
            Connector::Wasm(c) => match c.call(shop, cfg, Call::Pull(req), Tape::Off).await.0 {
                Ok(out) => out.into_pull(),
                Err(e) => panic!("the component's pull failed: {e}"),
            },
            Connector::Native(n) => n.pull(shop, cfg, &req).await,
        }
    }
}

struct Shop {
    name: String,
    cfg: Arc<ShopConfig>,
}

struct RunResult {
    orders: usize,
    elapsed: Duration,
    /// Every `pull-orders` call's time, sorted.
    pulls: Vec<Duration>,
    /// The store and queue writes of the pages.
    storing: Duration,
}

/// Where a worker's pages go: into berth's store and queue, or nowhere (pull only).
type Sink = Option<(Arc<OrderStore>, OrderInbox)>;

/// One shop's worker: page through `window` to the end.
/// Returns each pull's time, the time spent storing, and how many orders came.
async fn pull_shop(conn: Arc<Connector>, shop: Arc<Shop>, window: TimeWindow, sink: Sink) -> (Vec<Duration>, Duration, usize) {
    let version = conn.version();
    let src = PageSource { shop: &shop.name, platform: "shopify", connector_version: &version };
    let (mut pulls, mut storing, mut pulled) = (Vec::new(), Duration::ZERO, 0);
    let mut cursor = None;
    loop {
        let req = PullRequest { window: window.clone(), page_cursor: cursor.clone() };
        let t = Instant::now();
        let page = conn.pull(&shop.name, shop.cfg.clone(), req).await.unwrap_or_else(|e| panic!("{}: {} pull failed: {e:?}", shop.name, conn.label()));
        pulls.push(t.elapsed());
        let next = match &page.next_page_cursor {
            None => SyncState { watermark_ms: Some(window.end_ms), current: None },
            Some(c) => SyncState {
                watermark_ms: None,
                current: Some(WindowProgress { start_ms: window.start_ms, end_ms: window.end_ms, cursor: Some(c.clone()), pages: 0 }),
            },
        };
        cursor = page.next_page_cursor;
        let orders: Vec<OrderData> = page.orders.into_iter().map(to_record).collect();
        pulled += orders.len();
        if let Some((store, inbox)) = &sink {
            let t = Instant::now();
            store_page(store, inbox, &src, &orders, &next, None).await.expect("store the page");
            storing += t.elapsed();
        }
        if cursor.is_none() {
            return (pulls, storing, pulled);
        }
    }
}

/// The ERP: lease and ack until `expected` orders are acked; returns how many it acked.
async fn consume(inbox: OrderInbox, expected: usize) -> usize {
    let mut acked = 0;
    while acked < expected {
        let leased = inbox.lease(LEASE, Duration::from_secs(60)).await.expect("lease");
        if leased.is_empty() {
            // An ERP polling an empty queue: a short pause, not a spin on the two cores.
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let tokens: Vec<_> = leased.into_iter().map(|l| l.token).collect();
        let done = inbox.ack_many(&tokens).await.expect("ack");
        assert!(done.iter().all(Result::is_ok), "an ack failed: {:?}", done.iter().find(|r| r.is_err()));
        acked += done.len();
    }
    acked
}

async fn run(conn: &Arc<Connector>, shops: &[Arc<Shop>], window: &TimeWindow, expected: usize) -> RunResult {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = berth_storage::Store::open(&dir.path().join("store"), berth_storage::StoreConfig::default()).expect("open store");
    let store = Arc::new(OrderStore::on(&storage).expect("order store"));
    let queue = StoreQueues::open(&storage, QueuePolicy::default()).expect("queues");
    let inbox = OrderInbox::new(Arc::new(queue));
    let started = Instant::now();
    let consumer = tokio::spawn(consume(inbox.clone(), expected));
    let workers: Vec<_> = shops
        .iter()
        .map(|s| tokio::spawn(pull_shop(conn.clone(), s.clone(), window.clone(), Some((store.clone(), inbox.clone())))))
        .collect();
    let (mut pulls, mut storing) = (Vec::new(), Duration::ZERO);
    for w in workers {
        let (p, s, _) = w.await.expect("shop worker");
        pulls.extend(p);
        storing += s;
    }
    let acked = match tokio::time::timeout(RUN_LIMIT, consumer).await {
        Ok(done) => done.expect("consumer"),
        Err(_) => panic!("{}: the ERP consumer did not get all {expected} orders in {RUN_LIMIT:?}; queue: {:?}", conn.label(), inbox.stats()),
    };
    let elapsed = started.elapsed();
    assert_eq!(acked, expected, "{}: every order reaches the ERP once", conn.label());
    assert_eq!(store.feed_len(), expected, "{}: every order is stored once", conn.label());
    pulls.sort();
    RunResult { orders: acked, elapsed, pulls, storing }
}

/// The connector alone: every shop's pages pulled and mapped, stored nowhere.
async fn pull_only(conn: &Arc<Connector>, shops: &[Arc<Shop>], window: &TimeWindow, expected: usize) -> RunResult {
    let started = Instant::now();
    let workers: Vec<_> = shops.iter().map(|s| tokio::spawn(pull_shop(conn.clone(), s.clone(), window.clone(), None))).collect();
    let (mut pulls, mut orders) = (Vec::new(), 0);
    for w in workers {
        let (p, _, n) = w.await.expect("shop worker");
        pulls.extend(p);
        orders += n;
    }
    assert_eq!(orders, expected, "{}: every order pulled once", conn.label());
    pulls.sort();
    RunResult { orders, elapsed: started.elapsed(), pulls, storing: Duration::ZERO }
}

#[derive(Clone, Copy)]
enum Phase {
    EndToEnd,
    PullOnly,
}

/// `rounds` runs of `phase` with each connector, alternating which goes first, a table
/// row each; the median orders/s of the WASM and of the native runs.
async fn compare(phase: Phase, rounds: usize, [wasm, native]: [&Arc<Connector>; 2], shops: &[Arc<Shop>], window: &TimeWindow, expected: usize) -> (f64, f64) {
    let last = match phase {
        Phase::EndToEnd => "first pull → last ack ms",
        Phase::PullOnly => "first pull → last page ms",
    };
    println!("| round | connector | orders | pulls | orders/s | {last} | pull-orders ms p50 (p10–p90) | in pull-orders | storing pages |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let (mut wasm_rates, mut native_rates) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let order = if round % 2 == 1 { [wasm, native] } else { [native, wasm] };
        for conn in order {
            let r = match phase {
                Phase::EndToEnd => run(conn, shops, window, expected).await,
                Phase::PullOnly => pull_only(conn, shops, window, expected).await,
            };
            let rate = row(conn, round, &r);
            match **conn {
                Connector::Wasm(_) => wasm_rates.push(rate),
                Connector::Native(_) => native_rates.push(rate),
            }
        }
    }
    (spread(wasm_rates)[0], spread(native_rates)[0])
}

fn row(conn: &Connector, round: usize, r: &RunResult) -> f64 {
    let rate = r.orders as f64 / r.elapsed.as_secs_f64();
    let in_pulls: Duration = r.pulls.iter().sum();
    println!(
        "| {round} | {} | {} | {} | {:.0} | {} | {} ({}–{}) | {:.2} s | {:.2} s |",
        conn.label(),
        r.orders,
        r.pulls.len(),
        rate,
        ms(r.elapsed),
        ms(percentile(&r.pulls, 0.5)),
        ms(percentile(&r.pulls, 0.1)),
        ms(percentile(&r.pulls, 0.9)),
        in_pulls.as_secs_f64(),
        r.storing.as_secs_f64(),
    );
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let per_shop = count_arg(1500);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let component = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target/wasm-guests/wasm32-wasip2/release/berth_connector_shopify_rest.wasm");
    if !component.exists() {
        eprintln!("{} is missing: build it with `cargo test -p berth-tests --no-run`", component.display());
        std::process::exit(2);
    }

    let mut sim_cfg = SimConfig { history_hours: 2, ..SimConfig::default() };
    let first = sim_cfg.shopify.shops[0].clone();
    sim_cfg.shopify.shops = (0..SHOPS)
        .map(|i| berth_sim::ShopifyShop { name: format!("{}-{i}", first.name), orders: per_shop, ..first.clone() })
        .collect();
    let sim = berth_sim::start(sim_cfg.clone(), "127.0.0.1:0".parse().expect("address")).await.expect("simulator");
    // The platform does not throttle here; neither does the host (below).
    sim.state.set_limits(LimitsUpdate { shopify_bucket_size: Some(1_000_000), shopify_leak_per_sec: Some(1_000_000.0), ..Default::default() });
    let profile = berth_sim::profiles::shop_profile(&sim_cfg, Platform::Shopify, &sim.base_url()).expect("profile");
    let shops: Vec<Arc<Shop>> = sim_cfg
        .shopify
        .shops
        .iter()
        .map(|s| {
            let mut settings: std::collections::BTreeMap<String, String> = profile.settings.iter().cloned().collect();
            settings.insert("base_url".into(), format!("{}/shopify/{}", sim.base_url().trim_end_matches('/'), s.name));
            settings.insert("page_size".into(), PAGE.into());
            let secrets = [("access_token".to_string(), Secret::new(s.access_token.clone()))].into_iter().collect();
            let cfg = ShopConfig { connector: "shopify".into(), tier: Tier::A, poll_interval_secs: None, settings, secrets };
            Arc::new(Shop { name: s.name.clone(), cfg: Arc::new(cfg) })
        })
        .collect();
    let now = berth_sim::now_s() * 1000;
    let window = TimeWindow { start_ms: now - 3 * 3_600_000, end_ms: now + 60_000 };

    let host = ScratchHost::new().expect("scratch host");
    let local = ["127.0.0.1".to_string()];
    let options = host.options(&local);
    let limits = options.limits;
    let wasm = Arc::new(Connector::Wasm(Arc::new(host.runtime.load("shopify", &component, &options).await.expect("load the component"))));
    host.unlimited("shopify");
    let native = Arc::new(Connector::Native(Arc::new(NativeShopify::new(host.runtime.clone(), &local, limits))));
    let expected = SHOPS * per_shop;

    println!("{SHOPS} shops × {per_shop} orders = {expected} orders per run, pages of {PAGE}, the ERP leasing {LEASE} at a time");
    let conns = [&wasm, &native];
    let (w, n) = compare(Phase::EndToEnd, rounds, conns, &shops, &window, expected).await;
    println!();
    println!("end to end, median orders/s: WASM {w:.0}, native {n:.0}; WASM / native = {:.2} (target ≥ 0.8)", w / n);
    // The same pulls with nothing stored: what the connector alone costs each way.
    println!();
    println!("pull only (pages pulled and mapped, not stored):");
    let (w, n) = compare(Phase::PullOnly, rounds, conns, &shops, &window, expected).await;
    println!();
    println!("pull only, median orders/s: WASM {w:.0}, native {n:.0}; WASM / native = {:.2}", w / n);
}
