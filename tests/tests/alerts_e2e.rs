//! Tier probes, availability and alerts in the real binary: a tier-A shop is probed
//! through its connector's `check` every second; rules for queue age, dead letters,
//! failing probes and the call success rate fire once to four local receivers (berth's
//! signed JSON, WeCom, DingTalk with its URL signature, Slack for critical only), are
//! not repeated while they hold, and resolve once; a receiver answering 500 gets the
//! notification on a retry. Availability and SLA show the outage in `/v1/health` and
//! `/metrics`.

use berth_sim::Platform;
use berth_tests::recorder::{Received, Recorder};
use berth_tests::{get_json, poll_until, post_json, Berth};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(60);
const RECEIVERS: [&str; 4] = ["/json", "/wecom", "/dingtalk", "/slack"];

/// The one-line headline each receiver shows: `[CRITICAL] rule — subject`, `[RESOLVED] ...`.
fn headline(r: &Received) -> String {
    let v = r.json();
    match r.path.as_str() {
        "/json" => {
            let a = &v;
            match a["status"].as_str() {
                Some("resolved") => format!("[RESOLVED] {} — {}", a["rule"].as_str().unwrap_or(""), a["subject"].as_str().unwrap_or("")),
                _ => format!(
                    "[{}] {} — {}",
                    a["severity"].as_str().unwrap_or("").to_uppercase(),
                    a["rule"].as_str().unwrap_or(""),
                    a["subject"].as_str().unwrap_or("")
                ),
            }
        }
        "/wecom" => {
            let c = v["markdown"]["content"].as_str().unwrap_or("");
            c.split("**").nth(1).unwrap_or("").to_string()
        }
        "/dingtalk" => v["markdown"]["title"].as_str().unwrap_or("").to_string(),
        "/slack" => v["text"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    }
}

fn headlines(rec: &Recorder, path: &str) -> Vec<String> {
    rec.taken(path).iter().map(headline).collect()
}

fn count(rec: &Recorder, path: &str, line: &str) -> usize {
    headlines(rec, path).iter().filter(|h| *h == line).count()
}

/// Wait until every receiver in `paths` has taken `line`.
async fn delivered(rec: &Recorder, paths: &[&str], line: &str, berth: &Berth) {
    let got = poll_until(DEADLINE, || async { paths.iter().all(|p| count(rec, p, line) >= 1).then_some(()) }).await;
    assert!(
        got.is_some(),
        "`{line}` did not reach {paths:?}; received: {:?}\nberth log:\n{}",
        RECEIVERS.iter().map(|p| (p, headlines(rec, p))).collect::<Vec<_>>(),
        berth.log()
    );
}

async fn health(berth: &Berth) -> Value {
    get_json(berth.url("/v1/health")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_alerts_reach_every_receiver_once() {
    let sim = berth_sim::start(berth_tests::shopify_sim(11, 2, &[("acme", 12)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = sim.base_url();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            r#"
{sync}[erp]
max_attempts = 1
[health.A]
probe_secs = 1
[alerts]
evaluate_secs = 1
source = "berth-e2e"
[alerts.receivers.ops]
url = "{json}"
secret = "alert-signing-secret-1"
[alerts.receivers.wecom]
url = "{wecom}"
format = "wecom"
[alerts.receivers.dingtalk]
url = "{dingtalk}"
format = "dingtalk"
secret = "SECdingtalk-secret"
[alerts.receivers.slack]
url = "{slack}"
format = "slack"
min_severity = "critical"
[[alerts.rules]]
name = "orders-waiting"
kind = "queue-age"
queue = "orders"
above_secs = 2
[[alerts.rules]]
name = "orders-dead"
kind = "dead-letters"
queue = "orders"
window_secs = 4
[[alerts.rules]]
name = "shop-down"
kind = "probe-failing"
failures = 2
severity = "critical"
[[alerts.rules]]
name = "calls-failing"
kind = "success-rate"
below_percent = 98.0
window_secs = 8
min_calls = 3
severity = "critical"
{connectors}
[shops.acme]
connector = "shopify"
tier = "A"
poll_interval_secs = 2
settings = {{ base_url = "{base}/shopify/acme" }}
secrets = {{ access_token = "tok" }}
"#,
            json = rec.url("/json"),
            wecom = rec.url("/wecom?key=robot-key"),
            dingtalk = rec.url("/dingtalk?access_token=robot-token"),
            slack = rec.url("/slack"),
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    // berth's own receiver is down for the first notification: it must come on a retry.
    rec.refuse_next("/json", 1);
    let berth = Berth::start(&config);
    let client = reqwest::Client::new();

    // 1. Orders arrive and nobody leases them: the queue-age rule fires (a warning: not to Slack).
    let seeded = sim.state.orders(Platform::Shopify, "acme").len();
    let waiting = "[WARNING] orders-waiting — orders";
    delivered(&rec, &["/json", "/wecom", "/dingtalk"], waiting, &berth).await;
    assert_eq!(rec.received().iter().filter(|r| r.path == "/json" && r.answered == 500).count(), 1, "the refused first post");
    let h = health(&berth).await;
    let acme = &h["shops"][0];
    assert_eq!((acme["shop"].as_str(), acme["tier"].as_str(), acme["state"].as_str()), (Some("acme"), Some("A"), Some("up")), "{h}");
    assert_eq!(acme["probe_secs"], 1);
    assert_eq!(h["tiers"]["A"]["sla_percent"], 99.9);

    // 2. The ERP takes them, failing one: the queue drains (resolved) and a dead letter appears.
    let leases = poll_until(DEADLINE, || async {
        let r = post_json(&client, berth.url("/v1/orders/lease"), json!({"max": 100, "visibility_secs": 60})).await;
        let l = r["leases"].as_array().cloned().unwrap_or_default();
        (l.len() == seeded).then_some(l)
    })
    .await
    .expect("every seeded order leased at once");
    let tokens: Vec<Value> = leases.iter().map(|l| l["token"].clone()).collect();
    post_json(&client, berth.url("/v1/orders/nack"), json!({"tokens": [tokens[0]], "delay_secs": 0})).await;
    post_json(&client, berth.url("/v1/orders/ack"), json!({"tokens": tokens[1..]})).await;
    delivered(&rec, &["/json", "/wecom", "/dingtalk"], "[RESOLVED] orders-waiting — orders", &berth).await;
    delivered(&rec, &["/json", "/wecom", "/dingtalk"], "[WARNING] orders-dead — orders", &berth).await;
    // The dead letters stop growing: resolved once the rule's window has passed.
    delivered(&rec, &["/json", "/wecom", "/dingtalk"], "[RESOLVED] orders-dead — orders", &berth).await;

    // 3. The platform goes down: probes fail, calls fail; both rules are critical (Slack too).
    sim.state.set_channel_down(0, true);
    delivered(&rec, &RECEIVERS, "[CRITICAL] shop-down — acme", &berth).await;
    delivered(&rec, &RECEIVERS, "[CRITICAL] calls-failing — shopify", &berth).await;
    let h = health(&berth).await;
    assert_eq!(h["shops"][0]["state"], "down", "{h}");
    // Several more failed probes and evaluations: no repeat.
    poll_until(DEADLINE, || async { (health(&berth).await["shops"][0]["consecutive_failures"].as_u64()? >= 6).then_some(()) })
        .await
        .expect("probes go on every second while the platform is down");
    for p in RECEIVERS {
        assert_eq!(count(&rec, p, "[CRITICAL] shop-down — acme"), 1, "{p} got the firing alert more than once: {:?}", headlines(&rec, p));
    }
    let firing = get_json(berth.url("/v1/alerts")).await;
    let fingerprints: Vec<&str> = firing["firing"].as_array().unwrap().iter().filter_map(|a| a["fingerprint"].as_str()).collect();
    assert!(fingerprints.contains(&"shop-down/acme") && fingerprints.contains(&"calls-failing/shopify"), "{firing}");

    // 4. It comes back: both resolve, once.
    sim.state.set_channel_down(0, false);
    delivered(&rec, &RECEIVERS, "[RESOLVED] shop-down — acme", &berth).await;
    delivered(&rec, &RECEIVERS, "[RESOLVED] calls-failing — shopify", &berth).await;
    let h = health(&berth).await;
    let acme = &h["shops"][0];
    assert_eq!(acme["state"], "up", "{h}");
    let (probes, up) = (acme["availability"]["probes"].as_u64().unwrap(), acme["availability"]["up"].as_u64().unwrap());
    assert!(probes >= 8 && up >= 2 && probes - up >= 6, "the outage's failed probes count against availability: {acme}");
    let ratio = acme["availability"]["ratio"].as_f64().unwrap();
    assert!((ratio - up as f64 / probes as f64).abs() < 1e-9, "{acme}");
    assert_eq!(acme["availability"]["sla_met"], false, "tier A promises 99.9%: {acme}");
    assert!(acme["availability"]["error_budget_left"].as_f64().unwrap() < 0.0, "{acme}");
    let sum = &h["summary"][0];
    assert_eq!((sum["connector"].as_str(), sum["tier"].as_str(), sum["shops"].as_u64(), sum["below_sla"].as_u64()), (Some("shopify"), Some("A"), Some(1), Some(1)), "{h}");

    // What each receiver got, in its own format.
    let ops = rec.taken("/json");
    let first = &ops[0];
    let (ts, sig) = (&first.headers["x-berth-timestamp"], &first.headers["x-berth-signature"]);
    let mut mac = Hmac::<Sha256>::new_from_slice(b"alert-signing-secret-1").unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&first.body);
    assert_eq!(sig, &format!("sha256={}", hex::encode(mac.finalize().into_bytes())), "berth's JSON is signed like the ERP webhook");
    let v = first.json();
    assert_eq!((v["source"].as_str(), v["kind"].as_str(), v["fingerprint"].as_str()), (Some("berth-e2e"), Some("queue-age"), Some("orders-waiting/orders")), "{v}");
    assert!(v["started_ms"].as_i64().is_some() && v["resolved_ms"].is_null(), "{v}");
    for d in rec.taken("/dingtalk") {
        let q: std::collections::BTreeMap<String, String> = url::form_urlencoded::parse(d.query.as_bytes()).into_owned().collect();
        assert_eq!(q["access_token"], "robot-token");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"SECdingtalk-secret").unwrap();
        mac.update(format!("{}\nSECdingtalk-secret", q["timestamp"]).as_bytes());
        use base64::Engine as _;
        assert_eq!(q["sign"], base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()), "DingTalk's signature");
        assert_eq!(d.json()["msgtype"], "markdown");
    }
    for w in rec.taken("/wecom") {
        assert_eq!(w.query, "key=robot-key");
        assert!(w.json()["markdown"]["content"].as_str().unwrap().contains("source: berth-e2e"), "{}", w.json());
    }
    let slack = rec.taken("/slack");
    assert!(slack.iter().all(|s| !headline(s).contains("WARNING")), "Slack takes critical alerts only");
    let colours: Vec<String> = slack.iter().map(|s| s.json()["attachments"][0]["color"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(colours.iter().filter(|c| *c == "#d00000").count(), 2, "two critical alerts fired: {colours:?}");
    assert_eq!(colours.iter().filter(|c| *c == "#2eb886").count(), 2, "and resolved: {colours:?}");

    // The API and /metrics tell the same story; no label names the shop.
    let alerts = get_json(berth.url("/v1/alerts")).await;
    assert_eq!(alerts["firing"].as_array().map(Vec::len), Some(0), "{alerts}");
    let ops_status = alerts["receivers"].as_array().unwrap().iter().find(|r| r["name"] == "ops").unwrap().clone();
    assert_eq!((ops_status["sent"].as_u64(), ops_status["failed"].as_u64()), (Some(rec.taken("/json").len() as u64), Some(0)), "{alerts}");
    let text = client.get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("berth_availability_ratio{connector=\"shopify\",tier=\"A\"}"), "{text}");
    assert!(text.contains("berth_probes_total{connector=\"shopify\",tier=\"A\",outcome=\"ok\"}"), "{text}");
    assert!(text.contains("berth_probes_total{connector=\"shopify\",tier=\"A\",outcome=\"transient\"}"), "{text}");
    assert!(text.contains("berth_shops_below_sla{connector=\"shopify\",tier=\"A\"} 1"), "{text}");
    assert!(text.contains("berth_sla_target_ratio{tier=\"A\"} 0.999"), "{text}");
    assert!(text.contains("berth_alert_notifications_total{receiver=\"slack\",result=\"sent\"} 4"), "{text}");
    assert!(!text.contains("acme"), "no shop label unless health.shop_labels is set");
}
