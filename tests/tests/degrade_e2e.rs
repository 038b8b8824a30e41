//! Working a tier-C shop by hand while its platform is down, with the real binary: the
//! CSV export and import stay closed until the shop has been down past the threshold;
//! then pending stock comes out as CSV (held from the pusher, a newer ERP quantity
//! still wins), orders come in from the platform's CSV — once, whether the file is
//! imported twice or the platform later serves the same orders — and a bad file is
//! refused by row with nothing taken. After the platform is back nothing is lost or
//! pushed twice.

use berth_sim::Platform;
use berth_tests::{api_call, get_json_as, poll_until, Berth};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(60);
const OPERATOR: &str = "operator-token-degrade-1";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-degrade-0001";
const VIEWER: &str = "viewer-token-degrade-01";

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).unwrap().to_rfc3339()
}

async fn orders_of(berth: &Berth) -> Vec<Value> {
    get_json_as(ERP, berth.url("/v1/orders?limit=1000&shop=corner")).await["orders"].as_array().cloned().unwrap_or_default()
}

async fn csv_post(berth: &Berth, path: &str, body: String) -> (u16, Value) {
    api_call(Method::POST, berth.url(path), Some(OPERATOR), Some(body.into_bytes()), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_shop_is_worked_by_csv_without_loss_or_duplicates() {
    let sim = berth_sim::start(berth_tests::shopify_sim(41, 2, &[("corner", 6)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            r#"
{sync}[stock]
max_attempts = 1000
retry_base_ms = 100
retry_max_ms = 500
[health]
degrade_after_secs = 2
[health.C]
probe_secs = 1
[admin]
tokens = [{{ name = "erp", token = "{ERP}", role = "erp" }}, {{ name = "ops", token = "{OPERATOR}", role = "operator" }}, {{ name = "watch", token = "{VIEWER}", role = "viewer" }}]
{connectors}
[shops.corner]
connector = "shopify"
tier = "C"
poll_interval_secs = 1
settings = {{ base_url = "{base}/shopify/corner" }}
secrets = {{ access_token = "tok" }}
"#,
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    let berth = Berth::start(&config);
    let seeded = sim.state.orders(Platform::Shopify, "corner").len();
    poll_until(DEADLINE, || async { (orders_of(&berth).await.len() == seeded).then_some(()) }).await.expect("the seeded orders");

    // Up: closed, and it says why.
    poll_until(DEADLINE, || async {
        let (_, s) = api_call(Method::GET, berth.url("/v1/admin/shops/corner/degrade"), Some(VIEWER), None, None).await;
        (s["state"] == "up").then_some(())
    })
    .await
    .expect("a first probe");
    let (status, body) = api_call(Method::POST, berth.url("/v1/admin/shops/corner/stock/export"), Some(OPERATOR), None, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("shop `corner` is not degraded: its last probe found it up"), "{body}");
    let (status, _) = api_call(Method::POST, berth.url("/v1/admin/shops/corner/stock/export"), Some(VIEWER), None, None).await;
    assert_eq!(status, 403, "a viewer may not export");

    // Down: stock updates cannot go out; new orders are taken on the platform meanwhile.
    sim.state.set_channel_down(0, true);
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "corner").into_iter().map(|i| i.sku).take(3).collect();
    let before: Vec<u32> = skus.iter().map(|s| sim.state.stock(Platform::Shopify, "corner").into_iter().find(|i| &i.sku == s).unwrap().quantity).collect();
    let updates: Vec<Value> = skus.iter().enumerate().map(|(i, s)| json!({"sku": s, "quantity": 100 + i})).collect();
    api_call(Method::POST, berth.url("/v1/shops/corner/stock"), Some(ERP), None, Some(json!({ "updates": updates }))).await;
    let fresh: Vec<_> = (0..2).map(|_| sim.state.create(Platform::Shopify, "corner").unwrap()).collect();
    let status = poll_until(DEADLINE, || async {
        let (_, s) = api_call(Method::GET, berth.url("/v1/admin/shops/corner/degrade"), Some(VIEWER), None, None).await;
        (s["degraded"] == true).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("never degraded; log:\n{}", berth.log()));
    assert_eq!((status["state"].as_str(), status["pending_stock"].as_u64()), (Some("down"), Some(3)), "{status}");

    // Stock out as CSV; the pusher holds those SKUs.
    let resp = reqwest::Client::new()
        .post(berth.url("/v1/admin/shops/corner/stock/export"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let batch = resp.headers()["x-berth-export-batch"].to_str().unwrap().to_string();
    let csv = resp.text().await.unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][..2], ["sku", "quantity"]);
    let mut exported: Vec<(String, String)> = rows[1..].iter().map(|r| (r[0].to_string(), r[1].to_string())).collect();
    exported.sort();
    let mut want: Vec<(String, String)> = skus.iter().enumerate().map(|(i, s)| (s.clone(), (100 + i).to_string())).collect();
    want.sort();
    assert_eq!(exported, want, "every pending update, once:\n{csv}");
    let held = get_json_as(ERP, berth.url("/v1/shops/corner/stock?state=exported")).await;
    assert_eq!(held["skus"].as_array().map(Vec::len), Some(3), "{held}");
    let (status, again) = api_call(Method::POST, berth.url("/v1/admin/shops/corner/stock/export"), Some(OPERATOR), None, None).await;
    assert_eq!(status, 200, "{again}");
    // The ERP changes one SKU after the export: that newer quantity must still reach the platform.
    api_call(Method::POST, berth.url("/v1/shops/corner/stock"), Some(ERP), None, Some(json!({"updates": [{"sku": skus[1], "quantity": 555}]}))).await;

    // Orders in from the platform's CSV: the two taken during the outage, plus one berth has.
    let known = sim.state.orders(Platform::Shopify, "corner").into_iter().find(|o| !fresh.iter().any(|f| f.id == o.id)).unwrap();
    let mut file = String::from("order_id,status,updated_at,created_at,currency,total,sku,quantity,unit_price,title,line_id\n");
    for o in fresh.iter().chain([&known]) {
        let status = berth_sim::profiles::normalized_status(Platform::Shopify, o);
        for l in &o.lines {
            file += &format!(
                "{},{status},{},{},{},{}.{:02},{},{},{}.{:02},\"{}\",{}\n",
                o.id,
                rfc3339(o.updated_s),
                rfc3339(o.created_s),
                o.currency,
                o.total_minor() / 100,
                o.total_minor() % 100,
                l.sku,
                l.quantity,
                l.unit_price_minor / 100,
                l.unit_price_minor % 100,
                l.title,
                l.line_id
            );
        }
    }
    let (status, bad) = csv_post(&berth, "/v1/admin/shops/corner/orders/import", file.replace(",USD,", ",US Dollars,")).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("row 2: currency `US DOLLARS` is not an ISO 4217 code"), "{bad}");
    assert_eq!(orders_of(&berth).await.len(), seeded, "a refused file takes nothing");
    let (status, first) = csv_post(&berth, "/v1/admin/shops/corner/orders/import", file.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["orders"].as_u64(), first["new"].as_u64(), first["known"].as_u64()), (Some(3), Some(2), Some(1)), "{first}");
    let (_, second) = csv_post(&berth, "/v1/admin/shops/corner/orders/import", file).await;
    assert_eq!((second["new"].as_u64(), second["known"].as_u64()), (Some(0), Some(3)), "the same file twice adds nothing: {second}");
    let orders = orders_of(&berth).await;
    assert_eq!(orders.len(), seeded + 2);
    let imported = orders.iter().find(|o| o["order"]["order_id"] == fresh[0].id.to_string()).unwrap();
    assert_eq!(imported["order"]["total_minor"], fresh[0].total_minor(), "{imported}");
    assert_eq!(imported["connector_version"], "csv-import", "{imported}");

    // Back up: ops confirm the upload; berth pushes only the newer quantity, pulls add no duplicates.
    sim.state.set_channel_down(0, false);
    let (status, done) = api_call(Method::POST, berth.url(&format!("/v1/admin/shops/corner/stock/exports/{batch}/confirm")), Some(OPERATOR), None, None).await;
    assert_eq!((status, done["confirmed"].as_u64()), (200, Some(2)), "the SKU the ERP changed is no longer the batch's: {done}");
    let pushed = poll_until(DEADLINE, || async {
        let q = sim.state.stock(Platform::Shopify, "corner").into_iter().find(|i| i.sku == skus[1])?.quantity;
        (q == 555).then_some(())
    })
    .await;
    assert!(pushed.is_some(), "the newer quantity never reached the platform; log:\n{}", berth.log());
    for (i, s) in skus.iter().enumerate().filter(|(i, _)| *i != 1) {
        let item = sim.state.stock(Platform::Shopify, "corner").into_iter().find(|it| &it.sku == s).unwrap();
        assert_eq!(item.quantity, before[i], "{s} was uploaded by hand: berth must not push it again (history {:?})", item.history);
        let rec = get_json_as(ERP, berth.url(&format!("/v1/shops/corner/stock/{s}"))).await;
        assert_eq!((rec["state"].as_str(), rec["pushed_quantity"].as_u64()), (Some("pushed"), Some(100 + i as u64)), "{rec}");
    }
    // The platform serves the two outage orders again: same versions, nothing new for the ERP.
    let newest_ms = fresh.iter().map(|o| o.updated_s * 1000).max().unwrap();
    poll_until(DEADLINE, || async {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        (shops[0]["watermark_ms"].as_i64()? > newest_ms).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("pulls never passed the outage's orders; log:\n{}", berth.log()));
    assert_eq!(orders_of(&berth).await.len(), seeded + 2, "no order twice");
    let up = poll_until(DEADLINE, || async {
        let (_, s) = api_call(Method::GET, berth.url("/v1/admin/shops/corner/degrade"), Some(VIEWER), None, None).await;
        (s["state"] == "up").then_some(s)
    })
    .await
    .expect("probes find the shop up again");
    assert_eq!((up["degraded"].as_bool(), up["exported_stock"].as_u64()), (Some(false), Some(0)), "{up}");
}
