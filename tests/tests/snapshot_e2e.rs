//! Snapshots with the real binary against the simulator:
//! - `berth snapshot --shop S` writes the shop's listings, orders and desired stock as
//!   Parquet with a manifest; read back with the parquet crate and with pyarrow, every
//!   row is the platform's, the ERP's orders and the ledger's;
//! - while the platform is down a snapshot fails (nothing visible, `snapshot-failed`
//!   alert), and once the platform has been down past `fallback_after_mins` the last
//!   snapshot's quantities are served at `/v1/shops/{shop}/stock/fallback`, stale, with a
//!   `stock-fallback` alert; both end when the platform is back;
//! - the nightly snapshot at its time is tried again while the platform fails, lands, and
//!   the reconciliation (without a time of its own) runs right after it on the same
//!   listings.

use berth_sim::Platform;
use berth_snapshot::table::{read, Value};
use berth_tests::{api_call, berth_admin, get_json_as, poll_until, Berth};
use reqwest::Method;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const ERP: &str = "erp-token-snapshots-001";
const OPERATOR: &str = "operator-token-snaps-01";
const VIEWER: &str = "viewer-token-snapshots1";
const ADMIN: &str = "admin-token-snapshots-1";

/// berth.toml: `[snapshots]` into `dir`/snaps with `snapshots` added, `sections`, the
/// four roles' tokens and tier-A Shopify `shops` at the simulator.
fn config(dir: &Path, base: &str, snapshots: &str, sections: &str, shops: &[&str]) -> std::path::PathBuf {
    let tokens = berth_tests::four_roles(ERP, OPERATOR, VIEWER, ADMIN);
    let shops: String = shops
        .iter()
        .map(|s| format!("[shops.{s}]\nconnector = \"shopify\"\ntier = \"A\"\npoll_interval_secs = 1\nsettings = {{ base_url = \"{base}/shopify/{s}\" }}\nsecrets = {{ access_token = \"tok\" }}\n"))
        .collect();
    let connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]);
    let dirs = format!("[snapshots]\ndir = \"{}\"\n{snapshots}", dir.join("snaps").display());
    berth_tests::write_config(dir, &format!("{}{dirs}{sections}{tokens}{connectors}{shops}", berth_tests::QUICK_SYNC))
}

async fn alert(berth: &Berth, fingerprint: &str, firing: bool) -> bool {
    berth_tests::alert_becomes(berth, VIEWER, fingerprint, firing, DEADLINE).await
}

fn col<'a>(row: &'a [(String, Value)], name: &str) -> &'a Value {
    &row.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no column {name} in {row:?}")).1
}

/// The ERP's orders of the shop, by id: each order's newest version's updated time.
async fn erp_orders(berth: &Berth) -> BTreeMap<String, i64> {
    let feed = get_json_as(ERP, berth.url("/v1/orders?limit=1000&shop=acme")).await;
    let mut out = BTreeMap::new();
    for o in feed["orders"].as_array().cloned().unwrap_or_default() {
        let (id, at) = (o["order"]["order_id"].as_str().unwrap().to_string(), o["order"]["updated_at_ms"].as_i64().unwrap());
        let e = out.entry(id).or_insert(at);
        *e = (*e).max(at);
    }
    out
}

/// pyarrow (in the toolchain venv, scripts/toolchains) reading a snapshot's files: per
/// file, its rows and (a check that the columns are typed) the sum of a numeric column.
fn pyarrow_read(dir: &Path) -> Json {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.toolchains/venv/bin/python");
    let script = r#"
import json, sys, pyarrow.parquet as pq
d = sys.argv[1]
out = {}
for name, col in [("listings", "quantity"), ("orders", "total_minor"), ("order_lines", "quantity"), ("stock", "desired_quantity")]:
    t = pq.read_table(f"{d}/{name}.parquet")
    out[name] = {"rows": t.num_rows, "sum": sum(v for v in t.column(col).to_pylist()), "types": {f.name: str(f.type) for f in t.schema}}
out["skus"] = sorted(pq.read_table(f"{d}/listings.parquet").column("sku").to_pylist())
print(json.dumps(out))
"#;
    let out = std::process::Command::new(python).args(["-c", script, &dir.display().to_string()]).output().expect("run the toolchain's python (scripts/toolchains installs it)");
    assert!(out.status.success(), "pyarrow could not read the snapshot: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_reads_back_everywhere_and_serves_as_fallback_stock() {
    let sim = berth_sim::start(berth_tests::shopify_sim(91, 2, &[("acme", 4)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let sections = "[stock]\nretry_base_ms = 100\nretry_max_ms = 300\n[alerts]\nevaluate_secs = 1\n[health.A]\nprobe_secs = 1\n";
    let config = config(dir.path(), &base, "fallback_after_mins = 1\n", sections, &["acme"]);
    let berth = Berth::start(&config);

    // Every seeded order in, the ERP's quantities on the platform.
    let seeded = sim.state.orders(Platform::Shopify, "acme").len();
    assert!(seeded > 0);
    poll_until(DEADLINE, || async { (erp_orders(&berth).await.len() == seeded).then_some(()) }).await.unwrap_or_else(|| panic!("the seeded orders\n{}", berth.log()));
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().map(|i| i.sku).collect();
    let desired: Vec<(String, u32)> = skus.iter().take(10).enumerate().map(|(i, s)| (s.clone(), 40 + i as u32)).collect();
    let updates: Vec<Json> = desired.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect();
    let (status, body) = api_call(Method::POST, berth.url("/v1/shops/acme/stock"), Some(ERP), None, Some(json!({ "updates": updates }))).await;
    assert_eq!(status, 202, "{body}");
    poll_until(DEADLINE, || async {
        let q = get_json_as(ERP, berth.url("/v1/stock/queue")).await;
        (q["acme"]["pending"] == 0).then_some(())
    })
    .await
    .expect("the pushes settled");

    // Up: no fallback, and it says why.
    let (status, body) = api_call(Method::GET, berth.url("/v1/shops/acme/stock/fallback"), Some(ERP), None, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("reachable"), "{body}");

    // A snapshot now, by the CLI.
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["snapshot", "--shop", "acme"]);
    assert_eq!(code, Some(0), "{out}{err}\n{}", berth.log());
    let m: Json = serde_json::from_str(&out).unwrap();
    let snap = Path::new(m["dir"].as_str().unwrap()).to_path_buf();
    assert!(snap.starts_with(dir.path().join("snaps").join("acme")), "{m}");
    assert_eq!((m["shop"].as_str(), m["connector"].as_str(), m["by"].as_str(), m["platform"].as_str()), (Some("acme"), Some("shopify"), Some("ops"), Some("shopify")), "{m}");
    let rows_of = |name: &str| m["files"].as_array().unwrap().iter().find(|f| f["name"] == name).and_then(|f| f["rows"].as_u64()).unwrap_or_else(|| panic!("{name} in {m}"));
    let platform = sim.state.stock(Platform::Shopify, "acme");
    let erp = erp_orders(&berth).await;
    assert_eq!((rows_of("listings.parquet"), rows_of("orders.parquet"), rows_of("stock.parquet")), (platform.len() as u64, erp.len() as u64, 10), "{m}");
    let manifest: Json = serde_json::from_slice(&std::fs::read(snap.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["at_ms"], m["at_ms"]);
    let metrics = reqwest::Client::new().get(berth.url("/metrics")).bearer_auth(VIEWER).send().await.unwrap().text().await.unwrap();
    let gauge = format!("berth_snapshot_taken_timestamp_seconds{{shop=\"acme\"}} {}", m["at_ms"].as_i64().unwrap() / 1000);
    assert!(metrics.contains(&gauge), "{gauge} not in\n{metrics}");

    // Read back with the parquet crate: every listing is the platform's.
    let listings = read(&snap.join("listings.parquet")).unwrap();
    assert_eq!(listings.len(), platform.len());
    for item in &platform {
        let row = listings.iter().find(|r| col(r, "sku").text() == Some(&item.sku)).unwrap_or_else(|| panic!("{} not in the snapshot", item.sku));
        assert_eq!((col(row, "quantity").int(), col(row, "price_minor").int()), (Some(i64::from(item.quantity)), Some(item.price_minor)), "{}", item.sku);
        assert_eq!((col(row, "item_id").text(), col(row, "variant_id").text()), (Some(item.product_id.to_string().as_str()), Some(item.variant_id.to_string().as_str())));
    }
    let orders = read(&snap.join("orders.parquet")).unwrap();
    let got: BTreeMap<String, i64> = orders.iter().map(|r| (col(r, "order_id").text().unwrap().to_string(), col(r, "updated_at").int().unwrap())).collect();
    assert_eq!(got, erp, "each order once, at its newest version");
    let stock = read(&snap.join("stock.parquet")).unwrap();
    for (sku, q) in &desired {
        let row = stock.iter().find(|r| col(r, "sku").text() == Some(sku)).unwrap();
        assert_eq!((col(row, "desired_quantity").int(), col(row, "state").text(), col(row, "pushed_quantity").int()), (Some(i64::from(*q)), Some("pushed"), Some(i64::from(*q))));
    }

    // And with pyarrow: the same rows, typed columns.
    let py = pyarrow_read(&snap);
    assert_eq!(py["listings"]["rows"].as_u64(), Some(platform.len() as u64), "{py}");
    assert_eq!(py["listings"]["sum"].as_i64(), Some(platform.iter().map(|i| i64::from(i.quantity)).sum()), "{py}");
    assert_eq!(py["stock"]["sum"].as_i64(), Some(desired.iter().map(|(_, q)| i64::from(*q)).sum()), "{py}");
    assert_eq!(py["orders"]["rows"].as_u64(), Some(erp.len() as u64), "{py}");
    assert_eq!(py["orders"]["types"]["updated_at"], "timestamp[ms, tz=UTC]", "{py}");
    let mut want_skus: Vec<&str> = platform.iter().map(|i| i.sku.as_str()).collect();
    want_skus.sort();
    assert_eq!(py["skus"], json!(want_skus), "{py}");

    // The platform goes down: a snapshot fails, whole or nothing, and is alerted.
    sim.state.set_channel_down(0, true);
    let down_at = std::time::Instant::now();
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/shops/acme/snapshots"), Some(OPERATOR), None, None).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    let (_, listed) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/snapshots"), Some(VIEWER), None, None).await;
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(1), "{listed}");
    assert!(listed["failed"]["error"].as_str().is_some_and(|e| e.contains("listings")), "{listed}");
    let hidden: Vec<String> = std::fs::read_dir(dir.path().join("snaps").join("acme")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(hidden.len(), 1, "only the landed snapshot: {hidden:?}");
    assert!(alert(&berth, "snapshot-failed/acme", true).await, "no snapshot-failed alert\n{}", berth.log());

    // Down past fallback_after_mins (1): the snapshot's quantities, stale, and an alert.
    let fallback = poll_until(DEADLINE, || async {
        let (status, body) = api_call(Method::GET, berth.url("/v1/shops/acme/stock/fallback"), Some(ERP), None, None).await;
        (status == 200).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("no fallback stock after the outage\n{}", berth.log()));
    assert!(down_at.elapsed() >= Duration::from_secs(60), "served before the threshold");
    assert_eq!((fallback["stale"].as_bool(), fallback["snapshot_at_ms"].clone()), (Some(true), m["at_ms"].clone()), "{fallback}");
    let items = fallback["items"].as_array().unwrap();
    assert_eq!(items.len(), platform.len());
    for item in &platform {
        let got = items.iter().find(|i| i["sku"] == item.sku.as_str()).unwrap_or_else(|| panic!("{} not served", item.sku));
        assert_eq!(got["quantity"].as_i64(), Some(i64::from(item.quantity)), "{got}");
    }
    assert!(alert(&berth, "stock-fallback/acme", true).await, "no stock-fallback alert\n{}", berth.log());

    // Back up: the fallback ends with the first passing probe; a snapshot lands again and
    // clears the failure.
    sim.state.set_channel_down(0, false);
    poll_until(DEADLINE, || async {
        let (status, _) = api_call(Method::GET, berth.url("/v1/shops/acme/stock/fallback"), Some(ERP), None, None).await;
        (status == 409).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the fallback outlived the outage\n{}", berth.log()));
    assert!(alert(&berth, "stock-fallback/acme", false).await, "the stock-fallback alert did not resolve");
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/shops/acme/snapshots"), Some(OPERATOR), None, None).await;
    assert_eq!(status, 200, "{body}");
    let (_, listed) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/snapshots"), Some(VIEWER), None, None).await;
    assert!(listed["failed"].is_null(), "{listed}");
    assert!(alert(&berth, "snapshot-failed/acme", false).await, "the snapshot-failed alert did not resolve");

    // Who may: a viewer lists, only an operator takes one; taken snapshots are audited.
    let (status, _) = api_call(Method::POST, berth.url("/v1/admin/shops/acme/snapshots"), Some(VIEWER), None, None).await;
    assert_eq!(status, 403);
    let (status, _) = api_call(Method::POST, berth.url("/v1/admin/shops/nope/snapshots"), Some(OPERATOR), None, None).await;
    assert_eq!(status, 404);
    let (_, audit) = api_call(Method::GET, berth.url("/v1/admin/audit?limit=100"), Some(ADMIN), None, None).await;
    let outcomes: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "snapshot" && e["who"] == "ops").filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "ok").count(), 2, "{outcomes:?}");
    // And the one the outage failed, and the unknown shop's refusal.
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
}

/// `[snapshots] at`: the nightly snapshot at its time, tried again while the platform
/// fails, lands once it answers; `[reconcile]` without a time of its own reconciles the
/// shops it names right after their snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_snapshot_is_retried_and_followed_by_reconciliation() {
    let sim = berth_sim::start(berth_tests::shopify_sim(92, 1, &[("acme", 1), ("other", 1)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    // 40 s from now as a UTC time of day: berth is up well before it on a busy machine (a
    // time already past when its loop starts would be tomorrow's).
    let (at_s, at) = berth_tests::time_of_day_in(40);
    let snapshots = format!("at = \"{at}\"\ntimezone = \"UTC\"\nshops = [\"acme\"]\nretries = 20\nretry_after_secs = 2\n");
    let config = config(dir.path(), &base, &snapshots, "[alerts]\nevaluate_secs = 1\n[reconcile]\nshops = [\"acme\"]\n", &["acme", "other"]);
    let berth = Berth::start(&config);

    // The platform fails when the night comes: the snapshot fails, is alerted, tried again.
    sim.state.set_channel_down(0, true);
    let failed = poll_until(DEADLINE, || async {
        let (_, l) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/snapshots"), Some(VIEWER), None, None).await;
        l["failed"]["attempts"].as_u64().filter(|a| *a >= 2).map(|_| l)
    })
    .await
    .unwrap_or_else(|| panic!("the nightly snapshot did not fail and retry\n{}", berth.log()));
    assert_eq!((failed["snapshots"].as_array().map(Vec::len), failed["failed"]["retrying"].as_bool()), (Some(0), Some(true)), "{failed}");
    // Still to be tried again: not an alert yet.
    let alerts = get_json_as(VIEWER, berth.url("/v1/alerts")).await;
    assert!(!alerts["firing"].as_array().unwrap().iter().any(|f| f["fingerprint"] == "snapshot-failed/acme"), "{alerts}");
    sim.state.set_channel_down(0, false);

    let listed = poll_until(DEADLINE, || async {
        let (_, l) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/snapshots"), Some(VIEWER), None, None).await;
        (l["snapshots"].as_array().map(Vec::len) == Some(1)).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("the nightly snapshot never landed\n{}", berth.log()));
    let snap = &listed["snapshots"][0];
    assert_eq!(snap["by"], "nightly", "{listed}");
    assert!(snap["at_ms"].as_i64().is_some_and(|t| t >= at_s as i64 * 1000), "taken before its time: {snap}");
    assert!(listed["failed"].is_null(), "{listed}");
    let snap_dir = Path::new(snap["dir"].as_str().unwrap());
    assert_eq!(read(&snap_dir.join("listings.parquet")).unwrap().len(), sim.state.stock(Platform::Shopify, "acme").len());

    // Reconciled right after, on the snapshot's listings.
    let report = poll_until(DEADLINE, || async {
        let (status, r) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/reconcile"), Some(VIEWER), None, None).await;
        (status == 200).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("no reconciliation after the snapshot\n{}", berth.log()));
    assert_eq!((report["by"].as_str(), report["at_ms"].as_i64()), (Some("nightly"), snap["listings_read_at_ms"].as_i64()), "{report}");
    // `other` is not named: no snapshot, no report.
    let (_, other) = api_call(Method::GET, berth.url("/v1/admin/shops/other/snapshots"), Some(VIEWER), None, None).await;
    assert_eq!(other["snapshots"].as_array().map(Vec::len), Some(0), "{other}");
    let (status, _) = api_call(Method::GET, berth.url("/v1/admin/shops/other/reconcile"), Some(VIEWER), None, None).await;
    assert_eq!(status, 404);
}

/// A full disk under the snapshots (a small tmpfs, mounted as root as CI runs it): the
/// snapshot fails with 507 and says why, nothing of it is visible, the last one stays
/// whole; once space is freed the next one lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_a_snapshot_whole_and_keeps_the_last() {
    let sim = berth_sim::start(berth_tests::shopify_sim(93, 1, &[("acme", 2)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let disk = berth_tests::tmpfs::Tmpfs::mount(&dir.path().join("snaps"), 2);
    let berth = Berth::start(&config(dir.path(), &base, "", "", &["acme"]));
    let take = || async { api_call(Method::POST, berth.url("/v1/admin/shops/acme/snapshots"), Some(OPERATOR), None, None).await };
    let (status, first) = take().await;
    assert_eq!(status, 200, "{first}\n{}", berth.log());
    let snap = Path::new(first["dir"].as_str().unwrap()).to_path_buf();

    let filler = berth_tests::tmpfs::fill(&disk.0);
    let (status, body) = take().await;
    assert_eq!(status, 507, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(why.contains("No space left on device") && why.contains("the last one stays"), "{why}");
    let names: Vec<String> = std::fs::read_dir(snap.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, [first["date"].as_str().unwrap()], "nothing of the failed snapshot is visible");
    for f in first["files"].as_array().unwrap() {
        let bytes = std::fs::read(snap.join(f["name"].as_str().unwrap())).unwrap();
        let sha = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(Some(sha.as_str()), f["sha256"].as_str(), "{f}: the last snapshot changed");
    }

    std::fs::remove_file(filler).unwrap();
    let (status, again) = take().await;
    assert_eq!(status, 200, "{again}");
    assert!(again["at_ms"].as_i64() > first["at_ms"].as_i64(), "{again}");
    let (_, listed) = api_call(Method::GET, berth.url("/v1/admin/shops/acme/snapshots"), Some(VIEWER), None, None).await;
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(1), "the day's snapshot replaced whole: {listed}");
    assert!(listed["failed"].is_null(), "{listed}");
}
