//! A hostile connector beside a well-behaved one, in the real binary: one shop per way of
//! misbehaving (spinning, hoarding memory, recursing, answering too much, flooding the
//! log, filling its state, returning ids too long to keep, panicking — in every export —
//! leaking its secret, reaching for a host it was not
//! granted, for loopback, the cloud metadata address and a name resolving to loopback).
//! Each is contained with the error that names it; components that import an interface
//! the host does not give, or whose manifest panics, are refused on deploy and change
//! nothing; the Shopify shop next to them keeps pulling on time (measured); the shop's
//! secret shows up nowhere — log, metrics, status API, admin API, webhook answers.

use berth_sim::Platform;
use berth_tests::recorder::Recorder;
use berth_tests::{api_call, get_json_as, poll_until, post_json, Berth};
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(90);
const SECRET: &str = "hostile-secret-value-8231";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-hostile-0001";
const ADMIN: &str = "admin-token-hostile-0001";
const MODES: [&str; 9] = ["loop", "memory", "recursion", "giant", "long-id", "kv-fill", "log-flood", "panic", "leak"];

fn shop_status<'a>(shops: &'a Value, name: &str) -> &'a Value {
    shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == name)).unwrap_or(&Value::Null)
}

/// (shop, where the `egress` mode sends its request, the refusal expected), with the
/// port of a loopback receiver that must see nothing.
fn egress_shops(port: u16) -> [(&'static str, String, &'static str); 4] {
    [
        ("h-egress-ungranted", "http://api.evil.example/steal".to_string(), "host `api.evil.example` is not in the connector's allowed hosts"),
        ("h-egress-loopback", format!("http://127.0.0.1:{port}/steal"), "127.0.0.1 is not a public address"),
        ("h-egress-metadata", "http://169.254.169.254/latest/meta-data/".to_string(), "169.254.169.254 is not a public address"),
        ("h-egress-rebind", format!("http://localhost:{port}/steal"), "`localhost` resolves only to non-public addresses"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_connector_is_contained_and_its_neighbour_unaffected() {
    let sim = berth_sim::start(berth_tests::shopify_sim(61, 2, &[("acme", 20)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    // What the egress shops reach for: a loopback server that must see no request.
    let bait = Recorder::start().await;
    let egress = egress_shops(bait.addr.port());
    let hostile_shops = MODES
        .iter()
        .map(|m| {
            format!(
                "[shops.h-{m}]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = {{ mode = \"{m}\" }}\nsecrets = {{ api_secret = \"{SECRET}\" }}\n"
            )
        })
        .collect::<String>()
        // More spinning shops than the host has worker threads: a guest that held its
        // thread while it spins would stall everyone else.
        + &(2..=4).map(|i| format!("[shops.h-loop{i}]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = {{ mode = \"loop\" }}\n")).collect::<String>()
        + &egress
            .iter()
            .map(|(shop, target, _)| format!("[shops.{shop}]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = {{ mode = \"egress\", target = \"{target}\" }}\n"))
            .collect::<String>();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            r#"
{sync}[admin]
tokens = [{{ name = "erp", token = "{ERP}", role = "erp" }}, {{ name = "root", token = "{ADMIN}", role = "admin" }}]
{connectors}
[connectors.hostile]
component = "{hostile}"
# Granted by name, so what refuses them is the address check.
extra_hosts = ["127.0.0.1", "169.254.169.254", "localhost"]
[connectors.hostile.limits]
call_timeout_ms = 1500
max_memory_mb = 16
# kv-fill reaches the shop's quota here (isolation_disk_e2e holds writes per minute).
max_kv_write_bytes_per_minute = 67108864
# Each call's containment is what this test measures (breaker_e2e covers isolation).
breaker = false
[shops.acme]
connector = "shopify"
tier = "A"
poll_interval_secs = 1
settings = {{ base_url = "{base}/shopify/acme", page_size = "5" }}
secrets = {{ access_token = "tok" }}
{hostile_shops}
"#,
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            hostile = plugins::HOSTILE,
        ),
    );
    // Private addresses: only the neighbour may reach one (the simulator on loopback).
    // The bait's port is granted so that the refusals below are about addresses, not ports.
    let http = format!("allow_private_addresses = false\nallowed_ports = [{}]", bait.addr.port());
    let text = std::fs::read_to_string(&config).unwrap().replacen("allow_private_addresses = true", &http, 1).replace(
        "[connectors.shopify]\n",
        "[connectors.shopify]\nallow_private_addresses = true\n",
    );
    std::fs::write(&config, text).unwrap();
    let berth = Berth::start(&config);

    // Every hostile shop fails, each with the error that names what it did.
    let expect: [(&str, &str); 9] = [
        ("loop", "exceeded its 1500 ms deadline"),
        ("memory", "trapped"),
        ("recursion", "trapped"),
        ("giant", "returned 2000 orders in one page, more than max_orders_per_page (1000)"),
        ("long-id", "order_id is 10000 bytes, more than 256"),
        ("kv-fill", "more than a connector may keep per shop (10000 keys, 16777216 bytes)"),
        ("panic", "trapped"),
        ("leak", "the platform refused secret <secret:api_secret>"),
        ("log-flood", ""),
    ];
    // The poll's condition is the assertion; what it returns is not read.
    if poll_until(DEADLINE, || async {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        let all = expect.iter().filter(|(m, _)| *m != "log-flood").all(|(m, why)| {
            shop_status(&shops, &format!("h-{m}"))["last_error"].as_str().is_some_and(|e| e.contains(why))
        });
        all.then_some(shops)
    })
    .await
    .is_none()
    {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        let errors: Vec<String> = MODES.iter().map(|m| format!("h-{m}: {}", shop_status(&shops, &format!("h-{m}"))["last_error"])).collect();
        panic!("hostile shops did not all fail as expected:\n{}", errors.join("\n"))
    }
    // Egress: refused before a byte leaves, each for its reason.
    let refused = poll_until(DEADLINE, || async {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        let all = egress.iter().all(|(shop, _, why)| shop_status(&shops, shop)["last_error"].as_str().is_some_and(|e| e.contains(why)));
        all.then_some(shops)
    })
    .await;
    let Some(shops) = refused else {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        let errors: Vec<String> = egress.iter().map(|(shop, _, _)| format!("{shop}: {}", shop_status(&shops, shop)["last_error"])).collect();
        panic!("egress not refused as expected:\n{}", errors.join("\n"));
    };
    for (shop, _, _) in &egress {
        let e = shop_status(&shops, shop)["last_error"].as_str().unwrap();
        assert!(e.contains("host refused the request") && !e.contains("reached"), "{shop}: {e}");
    }
    assert!(bait.received().is_empty(), "a request got out: {:?}", bait.received());

    // A panic in every export is contained: check (the probe), push, webhook (pull above).
    let probe = poll_until(DEADLINE, || async {
        let h = get_json_as(ERP, berth.url("/v1/health")).await;
        let s = h["shops"].as_array()?.iter().find(|s| s["shop"] == "h-panic")?.clone();
        (s["last_probe"]["outcome"] == "trap").then_some(s)
    })
    .await
    .expect("the panicking shop's probe");
    assert_eq!(probe["state"], "down", "{probe}");
    let client = berth_tests::client_as(ERP);
    post_json(&client, berth.url("/v1/shops/h-leak/stock"), serde_json::json!({"updates": [{"sku": "L-1", "quantity": 5}]})).await;
    let submitted = post_json(&client, berth.url("/v1/shops/h-panic/stock"), serde_json::json!({"updates": [{"sku": "P-1", "quantity": 5}]})).await;
    assert!(submitted.to_string().contains("queued"), "{submitted}");
    let sku = poll_until(DEADLINE, || async {
        let v = get_json_as(ERP, berth.url("/v1/shops/h-panic/stock/P-1")).await;
        v["last_error"].as_str().is_some_and(|e| e.contains("push-inventory trapped")).then_some(v)
    })
    .await
    .expect("the panicking push is recorded on the SKU");
    assert!(sku["state"] == "pending" || sku["state"] == "failed", "the update is kept for another push: {sku}");
    let hook = client.post(berth.url("/v1/webhooks/h-panic")).body("{}").send().await.unwrap();
    assert_eq!(hook.status().as_u16(), 503, "the platform is told to retry");
    let answer = hook.text().await.unwrap();
    assert!(answer.contains("the shop's connector failed (trap)") && !answer.contains("wasm"), "no guest detail to the platform: {answer}");
    let leak = client.post(berth.url("/v1/webhooks/h-leak")).body("{}").send().await.unwrap();
    assert_eq!(leak.status().as_u16(), 401);
    let answer = leak.text().await.unwrap();
    assert!(!answer.contains(SECRET) && answer.contains("<secret:api_secret>"), "the webhook answer is redacted: {answer}");

    // Components the host must refuse: an import it does not give, a panicking manifest.
    let before = get_json_as(ERP, berth.url("/v1/connectors")).await;
    let active = |v: &Value| v.as_array().and_then(|a| a.iter().find(|c| c["name"] == "hostile")).map(|c| c["digest"].clone());
    for (fixture, why) in [
        (plugins::INTRUDER, "imports `berth-test:intruder/vault`, which berth does not give connectors"),
        (plugins::BROKEN_MANIFEST, "calling manifest() failed: manifest trapped"),
    ] {
        let bytes = std::fs::read(fixture).unwrap();
        let (status, body) = api_call(Method::POST, berth.url("/v1/admin/connectors/hostile/versions"), Some(ADMIN), Some(bytes), None).await;
        assert_eq!(status, 422, "{fixture}: {body}");
        assert!(body.to_string().contains(why), "{fixture}: {body}");
        eprintln!("refused: {}", &body.to_string()[..body.to_string().len().min(400)]);
    }
    assert_eq!(active(&get_json_as(ERP, berth.url("/v1/connectors")).await), active(&before), "the refused deploys changed nothing");

    for m in ["memory", "recursion", "panic"] {
        let e = shop_status(&shops, &format!("h-{m}"))["last_error"].as_str().unwrap().to_string();
        eprintln!("h-{m}: {}", &e[..e.len().min(300)]);
    }

    // The neighbour: every seeded order arrives, and a new one within seconds, while the
    // hostile shops keep misbehaving every second.
    let seeded = sim.state.orders(Platform::Shopify, "acme").len();
    let count = || async { get_json_as(ERP, berth.url("/v1/orders?limit=1000&shop=acme")).await["orders"].as_array().map_or(0, Vec::len) };
    poll_until(DEADLINE, || async { (count().await == seeded).then_some(()) }).await.expect("the neighbour's orders");
    let mut lags = Vec::new();
    for _ in 0..5 {
        sim.state.create(Platform::Shopify, "acme").unwrap();
        let want = seeded + lags.len() + 1;
        let t = Instant::now();
        poll_until(DEADLINE, || async { (count().await == want).then_some(()) }).await.expect("a new order of the neighbour");
        lags.push(t.elapsed());
    }
    eprintln!("neighbour: new order in berth after {lags:?} (poll interval 1 s + settle)");
    // The floor is the poll interval plus the 2 s settle (~3 s). Spinning guests that
    // held their worker threads made every one 4.6–7.7 s (median 6.1) in a run without
    // the yield; with it, 3.1–4.1 s on a quiet machine, and up to 4.6 s for some on a
    // busy CI machine (a median of 4.52 s failed a run there). So: at least two of the
    // five as fast as the floor allows, none past 8 s.
    let mut sorted = lags.clone();
    sorted.sort();
    assert!(sorted[1] < Duration::from_millis(4500) && sorted[4] < Duration::from_secs(8), "the neighbour was slowed: {lags:?}");

    // The log flood was cut and counted; the host is healthy.
    let metrics = berth_tests::client_as(ERP).get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("berth_connector_log_dropped_bytes_total{connector=\"hostile\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dropped > 100_000.0, "log flood not cut: {dropped} bytes dropped");
    for outcome in ["timeout", "trap", "too_large", "auth"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("berth_connector_calls_total{connector=\"hostile\"") && l.contains(&format!("outcome=\"{outcome}\""))),
            "no {outcome} outcome counted"
        );
    }
    let (status, _) = api_call(Method::GET, berth.url("/readyz"), None, None, None).await;
    assert_eq!(status, 200);

    // The secret: nowhere.
    let mut seen = vec![("metrics", metrics), ("webhook answer", answer)];
    for path in ["/v1/shops", "/v1/health", "/v1/alerts", "/v1/status", "/v1/connectors"] {
        seen.push((path, get_json_as(ERP, berth.url(path)).await.to_string()));
    }
    let (_, admin) = api_call(Method::GET, berth.url("/v1/admin/connectors/hostile"), Some(ADMIN), None, None).await;
    seen.push(("admin", admin.to_string()));
    // What the ERP reads back about a stock update the leaking connector refused.
    seen.push(("stock", get_json_as(ERP, berth.url("/v1/shops/h-leak/stock/L-1")).await.to_string()));
    seen.push(("stock queue", get_json_as(ERP, berth.url("/v1/stock/queue")).await.to_string()));
    let log = std::fs::read_to_string(config.with_extension("stderr.log")).unwrap();
    assert!(log.contains("my secret is <secret:api_secret>") && log.contains("stdout secret <secret:api_secret>"), "the leak was logged, redacted");
    assert!(log.contains("one call may write at most 1048576"), "kv-fill met the per-call write budget before the quota");
    seen.push(("log", log));
    for (place, text) in &seen {
        assert!(!text.contains(SECRET), "the secret leaked into {place}");
        assert!(!text.contains(ADMIN), "the admin token leaked into {place}");
    }
    assert!(seen[0].1.contains("berth_connector_metric_dropped_total{connector=\"hostile\",reason=\"secret\"}"), "the leaking metric was dropped");
}

