//! Write guards on outbound stock, with the real binary against the simulator:
//! - a submission zeroing many SKUs is held (the platform keeps its quantities while a
//!   later change goes out), alerted, kept up to date by a newer quantity, and discarded
//!   by an operator (audited; a viewer may not); many quantities moving by more than
//!   the limit are held and released with the CLI, and then reach the platform;
//! - a platform failing pushes pauses its shop's pushes (alerted, shown), an operator's
//!   resume lets them try again, and once the platform is fine the shop's passing
//!   probes resume them and the quantity arrives.

use berth_sim::faults::FaultKind;
use berth_sim::Platform;
use berth_tests::{api_call, berth_admin, get_json_as, poll_until, post_json, Berth};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(90);
const ERP: &str = "erp-token-guards-00001";
const OPERATOR: &str = "operator-token-guards-1";
const VIEWER: &str = "viewer-token-guards-001";
const ADMIN: &str = "admin-token-guards-0001";

fn config(dir: &std::path::Path, base: &str, guard: &str, tier: &str) -> std::path::PathBuf {
    berth_tests::write_config(
        dir,
        &format!(
            r#"
{sync}[stock]
max_attempts = 1000
retry_base_ms = 100
retry_max_ms = 300
[stock.write_guards.shopify]
{guard}
[health.A]
probe_secs = 1
[alerts]
evaluate_secs = 1
[admin]
tokens = [{{ name = "erp", token = "{ERP}", role = "erp" }}, {{ name = "ops", token = "{OPERATOR}", role = "operator" }}, {{ name = "watch", token = "{VIEWER}", role = "viewer" }}, {{ name = "root", token = "{ADMIN}", role = "admin" }}]
{connectors}
[shops.acme]
connector = "shopify"
tier = "{tier}"
poll_interval_secs = 1
settings = {{ base_url = "{base}/shopify/acme" }}
secrets = {{ access_token = "tok" }}
"#,
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    )
}

async fn submit(berth: &Berth, updates: &[(&str, u32)]) -> Value {
    let updates: Vec<Value> = updates.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect();
    post_json(&berth_tests::client_as(ERP), berth.url("/v1/shops/acme/stock"), json!({ "updates": updates })).await
}

/// Wait until the simulator shows `quantity` for every one of `skus`.
async fn at_platform(sim: &berth_sim::SimHandle, berth: &Berth, skus: &[&str], quantity: u32) {
    let ok = poll_until(DEADLINE, || async {
        let stock = sim.state.stock(Platform::Shopify, "acme");
        skus.iter().all(|s| stock.iter().any(|i| i.sku == *s && i.quantity == quantity)).then_some(())
    })
    .await;
    assert!(ok.is_some(), "{skus:?} did not reach {quantity} at the platform\n{}", berth.log());
}

fn platform_quantity(sim: &berth_sim::SimHandle, sku: &str) -> Option<u32> {
    sim.state.stock(Platform::Shopify, "acme").into_iter().find(|i| i.sku == sku).map(|i| i.quantity)
}

/// The alert with `fingerprint` once it fires (`true`) or once it no longer does.
async fn alert(berth: &Berth, fingerprint: &str, firing: bool) -> Option<Value> {
    poll_until(DEADLINE, || async {
        let a = get_json_as(VIEWER, berth.url("/v1/alerts")).await;
        let found = a["firing"].as_array()?.iter().find(|f| f["fingerprint"] == fingerprint).cloned();
        match (found, firing) {
            (Some(f), true) => Some(f),
            (None, false) => Some(Value::Null),
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspicious_stock_changes_are_held_until_a_person_releases_or_discards_them() {
    let sim = berth_sim::start(berth_tests::shopify_sim(51, 2, &[("acme", 2)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let guard = "max_zero_percent = 25.0\nmin_zeroed = 3\nmax_changed_skus = 5\nwindow_secs = 300\npause_writes_below = 0.0\n";
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), guard, "B"));
    let all: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().map(|i| i.sku).collect();
    let skus: Vec<&str> = all.iter().map(String::as_str).collect();
    assert!(skus.len() >= 16, "{skus:?}");
    // The first push has nothing to compare with: it goes out whole.
    let first: Vec<(&str, u32)> = skus.iter().map(|s| (*s, 10)).collect();
    assert!(submit(&berth, &first).await.get("held").is_none());
    at_platform(&sim, &berth, &skus, 10).await;

    // 8 of the shop's SKUs to 0 at once: held, with why.
    let zeroed = &skus[1..=8];
    let r = submit(&berth, &zeroed.iter().map(|s| (*s, 0)).collect::<Vec<_>>()).await;
    let hold = r["held"]["hold"].as_str().unwrap_or_else(|| panic!("not held: {r}")).to_string();
    assert!(r["held"]["reason"].as_str().is_some_and(|w| w.contains("8 of the shop's")), "{r}");
    assert!(r["results"].as_array().unwrap().iter().all(|x| x["outcome"] == "held"), "{r}");
    // A later small change goes out; the held zeros, due before it, never did.
    let r = submit(&berth, &[(skus[0], 11)]).await;
    assert!(r.get("held").is_none(), "{r}");
    at_platform(&sim, &berth, &skus[..1], 11).await;
    assert!(zeroed.iter().all(|s| platform_quantity(&sim, s) == Some(10)), "a held quantity reached the platform");

    // Ops see the hold and are alerted; a newer quantity for a held SKU stays in it.
    let (status, holds) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/stock/holds"), Some(VIEWER), None, None).await;
    assert_eq!(status, 200, "{holds}");
    let h = &holds["holds"][0];
    assert_eq!((h["id"].as_str(), h["skus"].as_u64(), h["zeroed"].as_u64()), (Some(hold.as_str()), Some(8), Some(8)), "{holds}");
    let fired = alert(&berth, "stock-held/acme", true).await.unwrap_or_else(|| panic!("no stock-held alert\n{}", berth.log()));
    assert!(fired["summary"].as_str().is_some_and(|s| s.contains("8 stock changes held")), "{fired}");
    let r = submit(&berth, &[(zeroed[0], 3)]).await;
    assert_eq!(r["results"][0]["outcome"], "held", "{r}");

    // A viewer may not end it; an operator discards it: the platform keeps what it had.
    let path = format!("/v1/admin/shops/acme/stock/holds/{hold}/discard");
    let (status, _) = api_call(Method::POST, berth.url(&path), Some(VIEWER), None, None).await;
    assert_eq!(status, 403);
    let (status, body) = api_call(Method::POST, berth.url(&path), Some(OPERATOR), None, None).await;
    assert_eq!((status, body["discarded"].as_u64()), (200, Some(8)), "{body}");
    for s in zeroed {
        let rec = get_json_as(ERP, berth.url(&format!("/v1/shops/acme/stock/{s}"))).await;
        assert_eq!((rec["state"].as_str(), rec["quantity"].as_u64()), (Some("pushed"), Some(10)), "{rec}");
    }
    let (status, _) = api_call(Method::POST, berth.url(&path), Some(OPERATOR), None, None).await;
    assert_eq!(status, 404, "a hold ends once");
    assert!(alert(&berth, "stock-held/acme", false).await.is_some(), "the alert did not resolve\n{}", berth.log());

    // Six quantities doubling (more than max_changed_skus = 5 by more than 15%): held,
    // then released with the CLI, and they go out.
    let doubled = &skus[9..=14];
    let r = submit(&berth, &doubled.iter().map(|s| (*s, 20)).collect::<Vec<_>>()).await;
    let hold = r["held"]["hold"].as_str().unwrap_or_else(|| panic!("not held: {r}")).to_string();
    assert!(r["held"]["reason"].as_str().is_some_and(|w| w.contains("6 quantities would change by more than 15%")), "{r}");
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["stock-holds", "acme"]);
    assert!(code == Some(0) && out.contains(&hold), "{out}{err}");
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["stock-holds", "acme", "release", &hold]);
    assert!(code == Some(0) && out.contains("\"released\": 6"), "{out}{err}");
    at_platform(&sim, &berth, doubled, 20).await;
    let (code, _, err) = berth_admin(&berth.base_url, OPERATOR, &["stock-holds", "acme", "release"]);
    assert!(code == Some(1) && err.contains("needs the hold's id"), "{err}");

    // Every end of a hold, and the refused try, is in the audit log.
    let (_, audit) = api_call(Method::GET, berth.url("/v1/admin/audit?limit=100"), Some(ADMIN), None, None).await;
    let entries: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .map(|e| (e["action"].as_str().unwrap_or("").to_string(), e["who"].as_str().unwrap_or("").to_string(), e["outcome"].as_str().unwrap_or("").to_string()))
        .collect();
    for want in [("discard-stock-hold", "watch", "forbidden"), ("discard-stock-hold", "ops", "ok"), ("discard-stock-hold", "ops", "refused"), ("release-stock-hold", "ops", "ok")] {
        assert!(entries.iter().any(|(a, w, o)| (a.as_str(), w.as_str(), o.as_str()) == want), "{want:?} not audited: {entries:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_failing_pushes_pauses_them_until_an_operator_or_passing_probes_resume() {
    let sim = berth_sim::start(berth_tests::shopify_sim(52, 2, &[("acme", 2)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let guard = "max_zero_percent = 100.0\nmax_changed_skus = 1000\npause_writes_below = 0.9\nmin_calls = 3\nwindow_mins = 5\nresume_after_mins = 0.05\n";
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), guard, "A"));
    let sku = sim.state.stock(Platform::Shopify, "acme")[0].sku.clone();
    submit(&berth, &[(&sku, 10)]).await;
    at_platform(&sim, &berth, &[&sku], 10).await;

    // The platform fails every call: after a few failed pushes they pause.
    sim.state.inject(Platform::Shopify, FaultKind::Http500, 100_000);
    submit(&berth, &[(&sku, 11)]).await;
    let pauses = || async { api_call(Method::GET, berth.url("/v1/admin/stock/pauses"), Some(VIEWER), None, None).await.1 };
    let waiting = |p: &Value| p["pauses"][0]["shops"].get("acme").is_some();
    let first = poll_until(DEADLINE, || async { Some(pauses().await).filter(waiting) })
        .await
        .unwrap_or_else(|| panic!("pushes not paused\n{}", berth.log()));
    assert_eq!(first["pauses"][0]["platform"], "shopify", "{first}");
    assert!(first["pauses"][0]["reason"].as_str().is_some_and(|r| r.contains("push calls succeeded")), "{first}");
    let fired = alert(&berth, "writes-paused/acme", true).await.unwrap_or_else(|| panic!("no writes-paused alert\n{}", berth.log()));
    assert!(fired["summary"].as_str().is_some_and(|s| s.contains("stock pushes to shopify paused")), "{fired}");
    let queue = get_json_as(ERP, berth.url("/v1/stock/queue")).await;
    assert!(queue["acme"]["pusher"]["last_error"].as_str().is_some_and(|e| e.contains("paused")), "{queue}");

    // An operator resumes the platform: the pushes try again, fail again, pause again.
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["resume-writes", "shopify"]);
    assert!(code == Some(0) && out.contains("\"resumed\": true"), "{out}{err}");
    let since = first["pauses"][0]["since_ms"].as_i64().unwrap();
    let again = poll_until(DEADLINE, || async {
        Some(pauses().await).filter(|p| waiting(p) && p["pauses"][0]["since_ms"].as_i64().is_some_and(|s| s > since))
    })
    .await;
    assert!(again.is_some(), "the resumed pushes did not pause again while the platform failed\n{}", berth.log());
    assert_eq!(platform_quantity(&sim, &sku), Some(10));

    // The platform recovers: the shop's probes pass, and after resume_after_mins its
    // pushes resume by themselves.
    sim.state.clear_faults(Platform::Shopify);
    at_platform(&sim, &berth, &[&sku], 11).await;
    let after = pauses().await;
    assert!(!waiting(&after) && after["pauses"][0]["resumed"].as_array().is_some_and(|r| r.iter().any(|s| s == "acme")), "{after}");
    assert!(alert(&berth, "writes-paused/acme", false).await.is_some(), "the alert did not resolve\n{}", berth.log());
    let (code, _, err) = berth_admin(&berth.base_url, OPERATOR, &["resume-writes", "woo"]);
    assert!(code == Some(1) && err.contains("not paused"), "{err}");
}
