//! Reconciliation with the real binary against the simulator: after the ERP's quantities
//! reached a Shopify shop, a seller changes some by hand at the platform; `berth
//! reconcile` finds exactly those drifts (SKU, platform and desired quantity, since when;
//! JSON and CSV), a second run marks them persistent and the `stock-drift` alert fires
//! and the drift gauge shows them, and `--repair` sets the ERP's newest quantities again
//! through the pusher — a SKU the ERP changed meanwhile gets its newer quantity, and the
//! platform never sees an older quantity after a newer one. A clean run resolves the
//! alert. Only an operator may run it (audited); a viewer reads the last report.

use berth_sim::Platform;
use berth_tests::{api_call, berth_admin, get_json_as, poll_until, Berth};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(90);
const ERP: &str = "erp-token-reconcile-001";
const OPERATOR: &str = "operator-token-recon-01";
const VIEWER: &str = "viewer-token-reconcile1";
const ADMIN: &str = "admin-token-reconcile-1";

async fn submit(berth: &Berth, updates: &[(String, u32)]) {
    let updates: Vec<Value> = updates.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect();
    let (status, body) = api_call(Method::POST, berth.url("/v1/shops/acme/stock"), Some(ERP), None, Some(json!({ "updates": updates }))).await;
    assert_eq!(status, 202, "{body}");
}

/// Until the platform holds exactly `want` for every SKU.
async fn landed(berth: &Berth, sim: &berth_sim::SimHandle, want: &[(String, u32)]) {
    poll_until(DEADLINE, || async {
        let items = sim.state.stock(Platform::Shopify, "acme");
        want.iter().all(|(sku, q)| items.iter().any(|i| &i.sku == sku && i.quantity == *q)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the quantities did not land\n{}", berth.log()));
    // And the ledger says so (nothing pending): what reconciliation compares.
    poll_until(DEADLINE, || async {
        let q = get_json_as(ERP, berth.url("/v1/stock/queue")).await;
        (q["acme"]["pending"] == 0).then_some(())
    })
    .await
    .expect("the pushes settled");
}

/// berth.toml: the four roles' tokens, `sections`, and Shopify `shops` at the simulator.
fn config(dir: &std::path::Path, base: &str, sections: &str, shops: &[&str]) -> std::path::PathBuf {
    let tokens = berth_tests::four_roles(ERP, OPERATOR, VIEWER, ADMIN);
    let shops: String = shops
        .iter()
        .map(|s| format!("[shops.{s}]\nconnector = \"shopify\"\npoll_interval_secs = 60\nsettings = {{ base_url = \"{base}/shopify/{s}\" }}\nsecrets = {{ access_token = \"tok\" }}\n"))
        .collect();
    let connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]);
    berth_tests::write_config(dir, &format!("{}{sections}{tokens}{connectors}{shops}", berth_tests::QUICK_SYNC))
}

async fn reconcile(berth: &Berth, query: &str) -> Value {
    let (status, body) = api_call(Method::POST, berth.url(&format!("/v1/admin/shops/acme/reconcile{query}")), Some(OPERATOR), None, None).await;
    assert_eq!(status, 200, "{body}\n{}", berth.log());
    body
}

async fn alert(berth: &Berth, fingerprint: &str, firing: bool) -> bool {
    berth_tests::alert_becomes(berth, VIEWER, fingerprint, firing, DEADLINE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifts_made_at_the_platform_are_found_alerted_and_repaired() {
    let sim = berth_sim::start(berth_tests::shopify_sim(81, 1, &[("acme", 2)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &base, "[stock]\nretry_base_ms = 100\nretry_max_ms = 300\n[alerts]\nevaluate_secs = 1\n", &["acme"]);
    let berth = Berth::start(&config);
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().map(|i| i.sku).collect();
    let desired: Vec<(String, u32)> = skus.iter().enumerate().map(|(i, s)| (s.clone(), 100 + i as u32)).collect();
    submit(&berth, &desired).await;
    landed(&berth, &sim, &desired).await;

    // In step: nothing drifts.
    let clean = reconcile(&berth, "").await;
    assert_eq!((clean["compared"].as_u64(), clean["drifting"].as_u64(), clean["listed"].as_u64()), (Some(24), Some(0), Some(24)), "{clean}");

    // A seller changes three quantities by hand at the platform.
    let drifted = [(skus[1].clone(), 0u32), (skus[5].clone(), 7), (skus[9].clone(), 999)];
    for (sku, q) in &drifted {
        sim.state.edit_stock(Platform::Shopify, "acme", sku, *q).expect("a SKU of the shop");
    }
    let first = reconcile(&berth, "").await;
    assert_eq!((first["drifting"].as_u64(), first["persistent"].as_u64(), first["repaired"].as_u64()), (Some(3), Some(0), Some(0)), "{first}");
    let rows = first["drifts"].as_array().unwrap();
    for (sku, q) in &drifted {
        let row = rows.iter().find(|r| r["sku"] == sku.as_str()).unwrap_or_else(|| panic!("{sku} not reported: {first}"));
        let want = desired.iter().find(|(s, _)| s == sku).unwrap().1;
        assert_eq!((row["platform_quantity"].as_i64(), row["desired_quantity"].as_u64(), row["runs"].as_u64()), (Some(i64::from(*q)), Some(u64::from(want)), Some(1)), "{row}");
        assert_eq!(row["since_ms"], first["at_ms"], "{row}");
    }
    assert!(alert(&berth, "stock-drift/acme", false).await, "a first sighting is not yet an alert");

    // Again, by the CLI as CSV: the same three, now in their second run.
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["reconcile", "--shop", "acme", "--csv"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("sku,platform_quantity,desired_quantity,desired_seq,since_ms,runs"));
    let csv_rows: Vec<&str> = lines.collect();
    assert_eq!(csv_rows.len(), 3, "{out}");
    let (sku, q) = &drifted[1];
    let want = desired.iter().find(|(s, _)| s == sku).unwrap().1;
    assert!(csv_rows.contains(&format!("{sku},{q},{want},,{},2", first["at_ms"]).as_str()), "{out}");
    assert!(alert(&berth, "stock-drift/acme", true).await, "no stock-drift alert\n{}", berth.log());
    let metrics = reqwest::Client::new().get(berth.url("/metrics")).bearer_auth(VIEWER).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("berth_stock_drift_skus{shop=\"acme\"} 3"), "{metrics}");

    // The ERP changes one drifting SKU meanwhile; the repair sets the others back to
    // what the ERP wants, and that one to its newer quantity.
    let newer = (skus[5].clone(), 555u32);
    submit(&berth, std::slice::from_ref(&newer)).await;
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["reconcile", "--shop", "acme", "--repair"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let repaired: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    // The SKU the ERP changed is on its way (or already there): only the other two move.
    assert_eq!((repaired["repaired"].as_u64(), repaired["repair"].as_bool()), (Some(2), Some(true)), "{repaired}");
    let mut want = desired.clone();
    want.iter_mut().find(|(s, _)| *s == newer.0).unwrap().1 = newer.1;
    landed(&berth, &sim, &want).await;
    for item in sim.state.stock(Platform::Shopify, "acme") {
        assert!(item.history.windows(2).all(|w| w[0] <= w[1]), "{}: an older quantity followed a newer one: {:?}", item.sku, item.history);
    }
    let after = reconcile(&berth, "").await;
    assert_eq!(after["drifting"].as_u64(), Some(0), "{after}");
    assert!(alert(&berth, "stock-drift/acme", false).await, "the alert did not resolve");

    // Who may: a viewer reads the last report, only an operator runs one; each audited.
    let (status, last) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/reconcile"), Some(VIEWER), None, None).await;
    assert_eq!((status, last["at_ms"].clone()), (200, after["at_ms"].clone()), "{last}");
    let (status, _) = api_call(Method::POST, berth.url("/v1/admin/shops/acme/reconcile"), Some(VIEWER), None, None).await;
    assert_eq!(status, 403);
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/shops/nope/reconcile"), Some(OPERATOR), None, None).await;
    assert_eq!(status, 404, "{body}");
    let (_, audit) = api_call(Method::GET, berth.url("/v1/admin/audit?limit=100"), Some(ADMIN), None, None).await;
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["who"] == "ops" && e["outcome"] == "ok").filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "reconcile").count(), 4, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == "reconcile-repair").count(), 1, "{actions:?}");
}

/// `[reconcile] at` runs it by itself at that time of day: a report by `nightly` appears
/// with no one asking, for the shops the section names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_run_happens_at_its_time_for_the_shops_named() {
    let sim = berth_sim::start(berth_tests::shopify_sim(82, 1, &[("acme", 1), ("other", 1)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    // 25 s from now, UTC, as a time of day: far enough that berth is up before it on a
    // busy machine (a time already past when the loop starts is tomorrow's).
    let (at_s, at) = berth_tests::time_of_day_in(25);
    let config = config(dir.path(), &base, &format!("[reconcile]\nat = \"{at}\"\ntimezone = \"UTC\"\nshops = [\"acme\"]\n"), &["acme", "other"]);
    let berth = Berth::start(&config);
    let report = poll_until(DEADLINE, || async {
        let (status, r) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/reconcile"), Some(VIEWER), None, None).await;
        (status == 200).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("no nightly reconciliation of acme\n{}", berth.log()));
    assert_eq!((report["by"].as_str(), report["listed"].as_u64()), (Some("nightly"), Some(24)), "{report}");
    assert!(report["at_ms"].as_i64().is_some_and(|t| t >= at_s as i64 * 1000), "it ran before its time: {report}");
    // `other` is not named: not reconciled.
    let (status, body) = api_call(Method::GET, berth.url("/v1/admin/shops/other/reconcile"), Some(VIEWER), None, None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not reconciled yet"), "{body}");
}
