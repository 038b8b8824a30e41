//! The circuit breaker in the real binary: a connector whose every call panics is
//! isolated after a few calls — its calls are refused without running guest code, the
//! `connector-isolated` alert reaches the receiver, the API and metrics say so — while a
//! Shopify shop beside it keeps pulling. Trial calls that still panic keep it isolated;
//! once the shops' setting makes it behave (a config reload), the next trial passes,
//! the breaker closes, the alert resolves and the shops pull again.

use berth_sim::Platform;
use berth_tests::recorder::Recorder;
use berth_tests::{get_json, poll_until, Berth};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(60);
const SHOPS: [&str; 3] = ["h-1", "h-2", "h-3"];

fn config_text(mode: &str, base: &str, receiver: &str) -> String {
    let hostile_shops: String = SHOPS
        .iter()
        .map(|s| format!("[shops.{s}]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = {{ mode = \"{mode}\" }}\n"))
        .collect();
    format!(
        r#"
{sync}[alerts]
evaluate_secs = 1
[alerts.receivers.ops]
url = "{receiver}"
{connectors}
[connectors.hostile]
component = "{hostile}"
[connectors.hostile.limits]
breaker_min_calls = 3
breaker_window_secs = 30
breaker_open_secs = 1
breaker_max_open_secs = 2
[shops.acme]
connector = "shopify"
poll_interval_secs = 1
settings = {{ base_url = "{base}/shopify/acme", page_size = "5" }}
secrets = {{ access_token = "tok" }}
{hostile_shops}
"#,
        sync = berth_tests::QUICK_SYNC,
        connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        hostile = plugins::HOSTILE,
    )
}

/// The sum of the hostile connector's calls that ended with `outcome`.
async fn calls(berth: &Berth, outcome: &str) -> f64 {
    let text = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("berth_connector_calls_total{connector=\"hostile\"") && l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn breaker(berth: &Berth) -> Value {
    let all = get_json(berth.url("/v1/connectors")).await;
    all.as_array().and_then(|a| a.iter().find(|c| c["name"] == "hostile")).map(|c| c["breaker"].clone()).unwrap_or(Value::Null)
}

/// Notifications of the connector-isolated rule the receiver took: their statuses.
fn isolated_notices(rec: &Recorder) -> Vec<String> {
    rec.taken("/ops")
        .iter()
        .map(|r| r.json())
        .filter(|v| v["rule"] == "connector-isolated" && v["subject"] == "hostile")
        .map(|v| v["status"].as_str().unwrap_or("").to_string())
        .collect()
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed: the reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_keeps_failing_is_isolated_alerted_and_recovers() {
    let sim = berth_sim::start(berth_tests::shopify_sim(71, 2, &[("acme", 12)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &config_text("panic", &base, &rec.url("/ops")));
    let berth = Berth::start(&config);

    // 1. Isolated: the breaker opens, the alert fires, the shops say why they wait.
    poll_until(DEADLINE, || async { isolated_notices(&rec).contains(&"firing".to_string()).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("no connector-isolated alert reached the receiver\n{}", berth.log()));
    let b = breaker(&berth).await;
    assert!(b["state"] == "open" || b["state"] == "half-open", "{b}");
    assert!(b["trips"].as_u64() >= Some(1), "{b}");
    assert!(b["reason"].as_str().unwrap_or("").contains("calls failed in the sandbox"), "{b}");
    poll_until(DEADLINE, || async {
        let shops = get_json(berth.url("/v1/shops")).await;
        let all = SHOPS.iter().all(|name| {
            let s = shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == *name)).cloned().unwrap_or(Value::Null);
            s["last_error"].as_str().is_some_and(|e| e.contains("isolated by its circuit breaker"))
        });
        all.then_some(())
    })
    .await
    .expect("every hostile shop waits out the isolation");
    // The log is written by its own thread: wait for the line, do not race it.
    poll_until(DEADLINE, || async { berth.log().contains("connector version isolated by its circuit breaker").then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the isolation was not logged\n{}", berth.log()));

    // 2. Contained: while isolated the guest runs only for the trial calls (one per
    //    1–2 s cool-down); the other calls are refused without running it.
    let (traps0, refused0) = (calls(&berth, "trap").await, calls(&berth, "isolated").await);
    let watched = Duration::from_secs(6);
    tokio::time::sleep(watched).await;
    let (traps, refused) = (calls(&berth, "trap").await - traps0, calls(&berth, "isolated").await - refused0);
    eprintln!("in {watched:?} isolated: {traps} guest calls (trials), {refused} refused");
    assert!(traps <= 6.0, "the guest ran {traps} times in {watched:?} while isolated");
    assert!(refused >= 3.0, "calls were refused while isolated: {refused}");
    assert_eq!(isolated_notices(&rec), ["firing"], "one notification while it holds");
    let metrics = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("berth_connector_isolated{connector=\"hostile\",version=\"6.6.6\"} 1"), "isolation gauge");
    assert!(metrics.contains("berth_connector_breaker_trips_total{connector=\"hostile\",version=\"6.6.6\"} 1"), "one trip: failed trials are not new trips");

    // 3. The neighbour pulls every order meanwhile.
    let seeded = sim.state.orders(Platform::Shopify, "acme").len();
    let acme = || async { get_json(berth.url("/v1/orders?limit=1000&shop=acme")).await["orders"].as_array().map_or(0, Vec::len) };
    poll_until(DEADLINE, || async { (acme().await == seeded).then_some(()) }).await.expect("the neighbour's orders");

    // 4. Healthy again: the next trial passes, the breaker closes, the alert resolves.
    write(&config, &std::fs::read_to_string(&config).unwrap().replace("mode = \"panic\"", "mode = \"calm\""));
    let resolved = poll_until(DEADLINE, || async { isolated_notices(&rec).contains(&"resolved".to_string()).then_some(()) }).await;
    if resolved.is_none() {
        panic!("the isolation never resolved: {}\n{}", breaker(&berth).await, berth.log());
    }
    assert_eq!(breaker(&berth).await["state"], "closed");
    poll_until(DEADLINE, || async {
        let shops = get_json(berth.url("/v1/shops")).await;
        let pulling = SHOPS.iter().all(|name| {
            let s = shops.as_array().and_then(|a| a.iter().find(|s| s["shop"] == *name)).cloned().unwrap_or(Value::Null);
            s["last_error"].is_null() && s["windows_completed"].as_u64() > Some(0)
        });
        pulling.then_some(())
    })
    .await
    .expect("the hostile shops pull again once it behaves");
    let metrics = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("berth_connector_isolated{connector=\"hostile\",version=\"6.6.6\"} 0"), "isolation gauge back to 0");
    assert!(berth.log().contains("the trial call passed; the connector version serves again"));
}
