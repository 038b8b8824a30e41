//! Scale: the real `berth` binary (release) with 1,000 shops across the five production
//! connectors against the simulator: memory and CPU idle and under polling load, and
//! the idle RSS each connector adds.
//!
//! Run: `cargo build --release -p berth-host && cargo bench -p berth-tests --bench scale`
//! (optionally `-- SHOPS`, default 1000, split evenly over the five connectors;
//! `RUNTIME="keep_resident_kb = 0"` adds lines to every run's `[runtime]`).
//!
//! Rows:
//! - idle: every shop has pulled its history once; polls are an hour apart; RSS and CPU
//!   of the berth process over [`MEASURE`].
//! - load: the same shops polled every [`LOAD_POLL_SECS`] s; pages pulled per second,
//!   RSS and CPU over [`MEASURE`]. The simulator runs in this bench's process and shares
//!   the machine's cores with berth.
//! - hot swap, under that load: for each connector, deploy a rebuilt version (another
//!   digest: a cold compile), the original again (compiled code from the cache), the
//!   rebuilt one again (cache); time from the deploy request to the new version serving
//!   (the answer comes once it is active), and every call that did not end `ok` while
//!   the swaps ran.
//! - per connector: berth with that connector and one idle shop, minus berth with no
//!   connector at all.

use berth_sim::{ShopeePartner, ShopeeShop, ShopifyShop, SimConfig, TaobaoApp, TaobaoShop, WooSite};
use berth_tests::{poll_until, Berth};
use std::path::Path;
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// How long each idle or load figure is measured.
const MEASURE: Duration = Duration::from_secs(20);
/// Poll interval of every shop under load.
const LOAD_POLL_SECS: u64 = 5;
/// Orders seeded per shop (two hours of history).
const ORDERS: usize = 10;
/// The deployer's token in the bench's config.
const DEPLOYER: &str = "bench-deployer-token-0001";

/// (connector, component)
fn connectors() -> [(&'static str, &'static str); 5] {
    [("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO), ("shopee", plugins::SHOPEE_PY), ("woo-js", plugins::WOO_JS), ("woo-c", plugins::WOO_C)]
}

fn sim_config(per: usize) -> SimConfig {
    let mut cfg = SimConfig { seed: 9, history_hours: 2, ..SimConfig::default() };
    cfg.shopify.shops = (0..per).map(|i| ShopifyShop { name: format!("sf{i}"), access_token: format!("tok{i}"), orders: ORDERS }).collect();
    cfg.shopify.bucket_size = 1_000_000;
    cfg.shopify.leak_per_sec = 1_000_000.0;
    cfg.taobao.apps = vec![TaobaoApp { app_key: "k1".into(), secret: "tb-secret".into() }];
    cfg.taobao.shops = (0..per).map(|i| TaobaoShop { nick: format!("tb{i}"), app_key: "k1".into(), session: format!("s{i}"), orders: ORDERS }).collect();
    cfg.taobao.calls_per_window = 1_000_000;
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = (0..per).map(|i| ShopeeShop { shop_id: 880_000 + i as u64, partner_id: 9001, access_token: format!("sp{i}"), orders: ORDERS }).collect();
    cfg.shopee.calls_per_window = 1_000_000;
    cfg.woo.sites = (0..2 * per).map(|i| WooSite { name: format!("wo{i}"), consumer_key: format!("ck{i}"), consumer_secret: format!("cs{i}"), orders: ORDERS }).collect();
    cfg.woo.requests_per_window = 1_000_000;
    cfg
}

/// `[shops.*]` for shop `i` of `connector`, polled every `poll` seconds.
fn shop(sim: &str, connector: &str, i: usize, poll: u64) -> String {
    let (name, settings, secrets) = match connector {
        "shopify" => (format!("sf{i}"), format!("base_url = \"{sim}/shopify/sf{i}\""), format!("access_token = \"tok{i}\"")),
        "taobao" => (
            format!("tb{i}"),
            format!("gateway = \"{sim}/taobao/router/rest\", app_key = \"k1\", sign_method = \"hmac-sha256\""),
            format!("app_secret = \"tb-secret\", session = \"s{i}\""),
        ),
        "shopee" => (
            format!("sp{i}"),
            format!(
                "base_url = \"{sim}/shopee\", partner_id = \"9001\", shop_id = \"{}\", webhook_url = \"{}\"",
                880_000 + i,
                berth_sim::profiles::SHOPEE_CALLBACK_URL
            ),
            format!("partner_key = \"sp-partner-key\", access_token = \"sp{i}\""),
        ),
        // The two WooCommerce connectors take alternate simulated sites.
        "woo-js" | "woo-c" => {
            let (prefix, site) = if connector == "woo-js" { ("wj", 2 * i) } else { ("wc", 2 * i + 1) };
            (format!("{prefix}{i}"), format!("base_url = \"{sim}/woo/wo{site}\""), format!("consumer_key = \"ck{site}\", consumer_secret = \"cs{site}\""))
        }
        other => panic!("no shop template for connector `{other}`"),
    };
    format!(
        "[shops.{name}]\nconnector = \"{connector}\"\npoll_interval_secs = {poll}\nsettings = {{ {settings}, page_size = \"50\" }}\nsecrets = {{ {secrets} }}\n"
    )
}

/// `[shops.*]` for `per` shops of each connector, polled every `poll` seconds.
fn shops(sim: &str, per: usize, poll: u64) -> String {
    (0..per).flat_map(|i| connectors().map(|(c, _)| shop(sim, c, i, poll))).collect()
}

/// A berth config in `dir` with `connectors` and `shops`; the compiled code cache is
/// copied from `cache` (if given) so no run but the first compiles.
fn config(dir: &Path, connectors: &[(&str, &str)], shops: &str, cache: Option<&Path>) -> std::path::PathBuf {
    if let Some(cache) = cache {
        let to = dir.join("data/compiled");
        std::fs::create_dir_all(&to).expect("cache dir");
        for f in std::fs::read_dir(cache).expect("read cache").flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).expect("copy compiled code");
        }
    }
    let runtime = std::env::var("RUNTIME").unwrap_or_default();
    let rest = format!(
        "[sync]\ninitial_lookback_hours = 3\n[runtime]\nmax_instances = 256\n{runtime}\n\
         [admin]\nmax_component_mb = 64\ntokens = [{{ name = \"bench\", token = \"{DEPLOYER}\", role = \"deployer\" }}]\n{}{}{shops}",
        berth_tests::NO_MANIFEST_RATES,
        berth_tests::local_connectors(connectors)
    );
    berth_tests::write_config(dir, &rest)
}

/// Resident memory and CPU time (user + system) of a process, from /proc.
struct Usage {
    rss_bytes: u64,
    cpu: Duration,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start at ") ".
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = 100; // USER_HZ on Linux
    Usage { rss_bytes: rss_kb * 1024, cpu: Duration::from_millis(ticks * 1000 / hz) }
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The shops' pages pulled so far, and how many have pulled successfully at least once.
async fn progress(client: &reqwest::Client, berth: &Berth) -> (u64, usize) {
    let shops: serde_json::Value = client.get(berth.url("/v1/shops")).send().await.expect("shops").json().await.expect("shops json");
    let list = shops.as_array().cloned().unwrap_or_default();
    let pages = list.iter().map(|s| s["pages"].as_u64().unwrap_or(0)).sum();
    let synced = list.iter().filter(|s| !s["last_success_ms"].is_null()).count();
    (pages, synced)
}

/// RSS at the end and CPU share (of one core) over [`MEASURE`], and pages pulled per second.
async fn measure(client: &reqwest::Client, berth: &Berth) -> (u64, f64, f64) {
    let (pages0, _) = progress(client, berth).await;
    let (u0, t0) = (usage(berth.pid()), Instant::now());
    tokio::time::sleep(MEASURE).await;
    let (u1, took) = (usage(berth.pid()), t0.elapsed());
    let (pages1, _) = progress(client, berth).await;
    let cpu = (u1.cpu - u0.cpu).as_secs_f64() / took.as_secs_f64();
    (u1.rss_bytes, cpu, (pages1 - pages0) as f64 / took.as_secs_f64())
}

/// Connector calls so far by (call, outcome), from `/metrics`.
async fn call_outcomes(client: &reqwest::Client, berth: &Berth) -> std::collections::BTreeMap<(String, String), f64> {
    let text = client.get(berth.url("/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("berth_connector_calls_total{")) {
        let label = |name: &str| line.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry((label("call"), label("outcome"))).or_insert(0.0) += value;
    }
    out
}

/// Deploy `bytes` as `connector` and wait for the answer (it comes once the version is
/// active): how long that took.
async fn deploy(client: &reqwest::Client, berth: &Berth, connector: &str, bytes: &[u8]) -> Duration {
    let t = Instant::now();
    let resp = client
        .post(berth.url(&format!("/v1/admin/connectors/{connector}/versions")))
        .bearer_auth(DEPLOYER)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("deploy");
    let took = t.elapsed();
    let status = resp.status().as_u16();
    assert!(status == 200 || status == 201, "deploy of {connector}: {status} {}", resp.text().await.unwrap_or_default());
    took
}

/// Idle RSS of berth started on `cfg` once it listens and its connectors are loaded.
async fn idle_rss(client: &reqwest::Client, cfg: &Path, shops: usize) -> u64 {
    let berth = Berth::start(cfg);
    poll_until(Duration::from_secs(300), || async { (progress(client, &berth).await.1 >= shops).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the shops did not sync\n{}", berth.log()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    usage(berth.pid()).rss_bytes
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(1000usize);
    let per = (total / 5).max(1);
    let total = per * 5;
    let sim = berth_sim::start(sim_config(per), "127.0.0.1:0".parse().expect("address")).await.expect("simulator");
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let work = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("work dir");
    println!("{total} shops ({per} per connector: shopify, taobao, shopee-py, woo-js, woo-c), {ORDERS} orders each");
    println!("| phase | shops | RSS MB | CPU (share of one core) | pages/s |");
    println!("|---|---:|---:|---:|---:|");

    // First start: cranelift compiles all five components into the cache the runs below
    // load from (a compiler's heap is not what a running host holds).
    let warm_dir = work.path().join("warm");
    std::fs::create_dir_all(&warm_dir).expect("dir");
    let t = Instant::now();
    drop(Berth::start(&config(&warm_dir, &connectors(), "", None)));
    let cold = t.elapsed();
    let cache = warm_dir.join("data/compiled");

    // Idle: one pull of each shop's history at start, then an hour between polls.
    let idle_dir = work.path().join("idle");
    std::fs::create_dir_all(&idle_dir).expect("dir");
    let cfg = config(&idle_dir, &connectors(), &shops(&base, per, 3600), Some(&cache));
    let t = Instant::now();
    let berth = Berth::start(&cfg);
    let started = t.elapsed();
    poll_until(Duration::from_secs(600), || async { (progress(&client, &berth).await.1 >= total).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("not every shop synced\n{}", berth.log()));
    let caught_up = t.elapsed();
    let (rss, cpu, _) = measure(&client, &berth).await;
    println!("| idle (all shops synced, polls an hour apart) | {total} | {} | {cpu:.3} | 0 |", mb(rss));
    drop(berth);

    // Load: every shop polled every LOAD_POLL_SECS.
    let load_dir = work.path().join("load");
    std::fs::create_dir_all(&load_dir).expect("dir");
    let cfg = config(&load_dir, &connectors(), &shops(&base, per, LOAD_POLL_SECS), Some(&cache));
    let berth = Berth::start(&cfg);
    poll_until(Duration::from_secs(600), || async { (progress(&client, &berth).await.1 >= total).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("not every shop synced\n{}", berth.log()));
    let (rss, cpu, pages) = measure(&client, &berth).await;
    println!("| load (every shop polled every {LOAD_POLL_SECS} s) | {total} | {} | {cpu:.3} | {pages:.0} |", mb(rss));

    // Hot swaps under the same load.
    let before = call_outcomes(&client, &berth).await;
    let mut swaps = Vec::new();
    for (name, component) in connectors() {
        let original = std::fs::read(component).expect("component");
        let rebuilt = berth_tests::component_variant(&original, "bench-rebuilt");
        let cold = deploy(&client, &berth, name, &rebuilt).await;
        let back = deploy(&client, &berth, name, &original).await;
        let again = deploy(&client, &berth, name, &rebuilt).await;
        swaps.push((name, cold, back, again));
    }
    // Calls already running on the old versions finish within a poll or two.
    tokio::time::sleep(Duration::from_secs(2 * LOAD_POLL_SECS)).await;
    let after = call_outcomes(&client, &berth).await;
    drop(berth);
    let (mut calls, mut failed) = (0.0, Vec::new());
    for (key, n) in &after {
        let n = n - before.get(key).copied().unwrap_or(0.0);
        calls += n;
        if key.1 != "ok" && n > 0.0 {
            failed.push(format!("{} {}: {n}", key.0, key.1));
        }
    }
    println!("\n| connector | deploy → serving, cold compile | back to the previous version (cache) | the new one again (cache) |");
    println!("|---|---:|---:|---:|");
    for (name, cold, back, again) in swaps {
        println!("| {name} | {} ms | {} ms | {} ms |", cold.as_millis(), back.as_millis(), again.as_millis());
    }
    println!("calls while the 15 swaps ran under load: {calls:.0}; not ok: {}", if failed.is_empty() { "none".to_string() } else { failed.join(", ") });
    println!(
        "start to listening: {:.2} s compiling all five cold, {:.2} s from the cache with {total} shops; all {total} shops pulled their history {:.2} s after start",
        cold.as_secs_f64(),
        started.as_secs_f64(),
        caught_up.as_secs_f64()
    );

    // Per connector: one connector, one idle shop, against none at all.
    let none_dir = work.path().join("none");
    std::fs::create_dir_all(&none_dir).expect("dir");
    let baseline = idle_rss(&client, &config(&none_dir, &[], "", None), 0).await;
    println!("\n| connector | idle RSS MB (one shop) | added over no connector |");
    println!("|---|---:|---:|");
    println!("| (none) | {} | |", mb(baseline));
    for (name, component) in connectors() {
        let dir = work.path().join(format!("one-{name}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let one = shop(&base, name, 0, 3600);
        let rss = idle_rss(&client, &config(&dir, &[(name, component)], &one, Some(&cache)), 1).await;
        println!("| {name} | {} | {} |", mb(rss), mb(rss.saturating_sub(baseline)));
    }
}
