//! A snapshot written at a fixed time (an injected clock) from a real store on disk —
//! the ledger's desired stock, the order store's orders — and listings as a connector
//! reads them: every row read back with the parquet crate's reader, the manifest's counts
//! and checksums right, the day named in the configured zone, a second snapshot of the
//! day replacing the first whole, leftovers of an interrupted write cleared, old days
//! pruned, and the fallback served from the last one only when the platform is down long
//! enough.

use berth_core::listings::{ListingReads, ShopListings};
use berth_core::stock::{PushOutcome, StockLedger, StockRequest};
use berth_core::store::{OrderData, OrderLineRecord, OrderStore, PageSource, SyncState};
use berth_snapshot::fallback::FallbackError;
use berth_snapshot::table::{read, Value};
use berth_snapshot::{tables, SnapshotConfig, Snapshotter};
use berth_types::connector::{Listing, OrderStatus};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// 2026-12-04 18:00:00 UTC: 02:00 on the 5th in Shanghai.
const AT: i64 = 1_796_407_200_000;
const DAY: i64 = 86_400_000;

fn listing(sku: &str, qty: i64, variant: Option<&str>) -> Listing {
    Listing { sku: sku.into(), item_id: format!("item-{sku}"), variant_id: variant.map(str::to_string), title: format!("Title {sku} — ü"), quantity: qty, price_minor: 1999, currency: "CNY".into() }
}

fn order(id: &str, updated: i64, lines: usize) -> OrderData {
    OrderData {
        order_id: id.into(),
        status: OrderStatus::Paid,
        platform_status: "WAIT_SELLER_SEND_GOODS".into(),
        created_at_ms: updated - 1000,
        updated_at_ms: updated,
        currency: "CNY".into(),
        total_minor: 1999 * lines as i64,
        lines: (0..lines).map(|i| OrderLineRecord { line_id: format!("{id}-{i}"), sku: format!("SKU-{i}"), title: "t".into(), quantity: 1 + i as u32, unit_price_minor: 1999 }).collect(),
        buyer_name_masked: "Z***".into(),
        buyer_phone_masked: String::new(),
        raw: serde_json::json!({}),
    }
}

fn col<'a>(row: &'a [(String, Value)], name: &str) -> &'a Value {
    &row.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no column {name}")).1
}

#[tokio::test]
async fn a_snapshot_at_a_fixed_time_reads_back_row_for_row() {
    let data = tempfile::tempdir().unwrap();
    let store = berth_storage::Store::open(&data.path().join("store"), Default::default()).unwrap();
    let ledger = Arc::new(StockLedger::open(&store, berth_types::retry::RetryPolicy::new(500, 60_000, 5)).unwrap());
    let orders = Arc::new(OrderStore::on(&store).unwrap());
    // Orders are dated from the fixed time (the store stamps their receipt now, later).
    let now = AT;

    // Desired stock: A pushed, B pending (with the ERP's seq), C rejected.
    let req = |sku: &str, q: u32, seq: Option<u64>| StockRequest { sku: sku.into(), quantity: q, seq };
    ledger.submit("acme", &[req("A", 5, None), req("B", 7, Some(42)), req("C", 1, None)]).await.unwrap();
    let version = |sku: &str| ledger.get("acme", sku).unwrap().unwrap().version;
    ledger
        .settle("acme", &[("A".into(), version("A"), 5, PushOutcome::Accepted), ("C".into(), version("C"), 1, PushOutcome::Rejected("unknown sku".into()))])
        .await
        .unwrap();
    // Orders: one too old for orders_days, one updated twice (the newest counts), another shop's.
    let src = PageSource { shop: "acme", platform: "taobao", connector_version: "1.2.0" };
    let st = SyncState::default();
    orders.commit_page(&src, &[order("old", now - 40 * DAY, 1), order("o1", now - 2 * DAY, 1), order("o2", now - DAY, 2)], &st).await.unwrap();
    orders.commit_page(&src, &[order("o1", now - 1000, 3)], &st).await.unwrap();
    orders.commit_page(&PageSource { shop: "other", ..src }, &[order("x", now, 1)], &st).await.unwrap();

    let clock = Arc::new(AtomicI64::new(AT));
    let c = clock.clone();
    let cfg = SnapshotConfig { timezone: Some("Asia/Shanghai".into()), orders_days: 7, keep_days: 2, fallback_after_mins: 30, ..Default::default() };
    let snaps = Snapshotter::new(cfg, data.path(), Arc::new(ListingReads::default()), orders.clone(), ledger.clone())
        .unwrap()
        .with_clock(Arc::new(move || c.load(Ordering::SeqCst)));
    let read = ShopListings {
        shop: "acme".into(),
        connector: "taobao".into(),
        version: "1.2.0".into(),
        read_at_ms: now - 5000,
        pages: 1,
        retries: 0,
        listings: vec![listing("A", 5, None), listing("B", 3, Some("v-b")), listing("D", -2, None)],
    };
    // At the fixed time: the day is Shanghai's.
    let taken = snaps.write_from("acme", "taobao", &read, "nightly", Instant::now()).await.unwrap();
    let m = taken.manifest;
    assert_eq!((m.date.as_str(), m.at_ms, m.timezone.as_str(), m.by.as_str()), ("2026-12-05", AT, "Asia/Shanghai", "nightly"));
    assert_eq!((m.shop.as_str(), m.platform.as_str(), m.connector.as_str(), m.version.as_str()), ("acme", "taobao", "taobao", "1.2.0"));
    let dir = snaps.root().join("acme").join("2026-12-05");
    assert_eq!(taken.dir, dir);
    let on_disk: berth_snapshot::Manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, m);
    let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [tables::LISTINGS, tables::ORDERS, tables::ORDER_LINES, tables::STOCK]);
    for f in &m.files {
        let bytes = std::fs::read(dir.join(&f.name)).unwrap();
        assert_eq!((bytes.len() as u64, hex::encode(Sha256::digest(&bytes))), (f.bytes, f.sha256.clone()), "{}", f.name);
        assert_eq!(read_rows(&dir, &f.name).len(), f.rows, "{}", f.name);
    }

    let listings = read_rows(&dir, tables::LISTINGS);
    let got: Vec<(String, i64, Option<String>)> = listings.iter().map(|r| (text(r, "sku"), int(r, "quantity"), col(r, "variant_id").text().map(str::to_string))).collect();
    assert_eq!(got, [("A".into(), 5, None), ("B".into(), 3, Some("v-b".into())), ("D".into(), -2, None)]);
    assert!(listings.iter().all(|r| text(r, "title").ends_with("— ü") && int(r, "price_minor") == 1999 && text(r, "currency") == "CNY" && text(r, "item_id").starts_with("item-")));

    // The orders orders_days (7) reach back to from the snapshot's time, each at its
    // newest version; not another shop's.
    let orders_back = read_rows(&dir, tables::ORDERS);
    let got: Vec<(String, i64, i64, String)> = orders_back.iter().map(|r| (text(r, "order_id"), int(r, "updated_at"), int(r, "lines"), text(r, "status"))).collect();
    assert_eq!(got, [("o1".into(), now - 1000, 3, "paid".into()), ("o2".into(), now - DAY, 2, "paid".into())]);
    assert!(matches!(col(&orders_back[0], "updated_at"), Value::Time(_)), "timestamps are timestamps");
    let lines = read_rows(&dir, tables::ORDER_LINES);
    assert_eq!(lines.len(), 5);
    assert_eq!((text(&lines[2], "order_id"), text(&lines[2], "sku"), int(&lines[2], "quantity")), ("o1".into(), "SKU-2".into(), 3));

    let stock = read_rows(&dir, tables::STOCK);
    let got: Vec<(String, i64, Option<i64>, String, Option<i64>)> =
        stock.iter().map(|r| (text(r, "sku"), int(r, "desired_quantity"), col(r, "desired_seq").int(), text(r, "state"), col(r, "pushed_quantity").int())).collect();
    assert_eq!(got, [("A".into(), 5, None, "pushed".into(), Some(5)), ("B".into(), 7, Some(42), "pending".into(), None), ("C".into(), 1, None, "rejected".into(), None)]);
    assert_eq!(col(&stock[2], "last_error").text(), Some("unknown sku"));

    // The next day's; an interrupted write's leftovers are cleared at start.
    clock.store(AT + DAY, Ordering::SeqCst);
    snaps.write_from("acme", "taobao", &read, "ops", Instant::now()).await.unwrap();
    let shop_dir = snaps.root().join("acme");
    std::fs::create_dir(shop_dir.join(".tmp-2026-12-06-1-1")).unwrap();
    snaps.tidy(&["acme".to_string()]);
    let visible: Vec<String> = std::fs::read_dir(&shop_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(visible.iter().all(|n| !n.starts_with('.')), "{visible:?}");
    assert_eq!(snaps.list("acme").len(), 2);
    // A snapshot keep_days (2) after the fixed one prunes it.
    clock.store(AT + 3 * DAY, Ordering::SeqCst);
    snaps.write_from("acme", "taobao", &read, "nightly", Instant::now()).await.unwrap();
    let days: Vec<String> = snaps.list("acme").into_iter().map(|s| s.manifest.date).collect();
    assert_eq!(days, ["2026-12-08", "2026-12-06"]);

    // Fallback: not while reachable or down for less than fallback_after_mins; then the
    // last snapshot's listed quantities, stale, with its time.
    let t = AT + 3 * DAY;
    assert!(matches!(snaps.fallback("acme", None), Err(FallbackError::Reachable(_))));
    assert!(matches!(snaps.fallback("acme", Some(t - 29 * 60_000)), Err(FallbackError::NotYet { after_mins: 30, .. })));
    let fb = snaps.fallback("acme", Some(t - 31 * 60_000)).unwrap();
    assert!(fb.stale);
    assert_eq!((fb.snapshot_at_ms, fb.snapshot_date.as_str(), fb.down_since_ms), (t, "2026-12-08", t - 31 * 60_000));
    let q: Vec<(&str, i64)> = fb.items.iter().map(|i| (i.sku.as_str(), i.quantity)).collect();
    assert_eq!(q, [("A", 5), ("B", 3), ("D", -2)]);
    assert!(matches!(snaps.fallback("nobody", Some(0)), Err(FallbackError::NoSnapshot(_))));
}

fn read_rows(dir: &std::path::Path, name: &str) -> Vec<Vec<(String, Value)>> {
    read(&dir.join(name)).unwrap()
}

fn text(row: &[(String, Value)], name: &str) -> String {
    col(row, name).text().unwrap_or_else(|| panic!("{name} is not text: {:?}", col(row, name))).to_string()
}

fn int(row: &[(String, Value)], name: &str) -> i64 {
    col(row, name).int().unwrap_or_else(|| panic!("{name} is not a number: {:?}", col(row, name)))
}

#[test]
fn a_replaced_snapshot_is_whole_and_a_bad_shop_name_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let manifest = |at: i64| berth_snapshot::Manifest {
        format: 1,
        shop: "s1".into(),
        platform: "p".into(),
        connector: "c".into(),
        version: "1".into(),
        date: "2026-12-05".into(),
        timezone: "UTC".into(),
        at_ms: at,
        listings_read_at_ms: at,
        orders_days: 1,
        took_ms: 0,
        by: "t".into(),
        files: vec![],
    };
    let table = |n: usize| tables::Table { file: tables::STOCK, columns: vec![berth_snapshot::table::Column::int("q", (0..n as i64).collect::<Vec<_>>())] };
    berth_snapshot::files::write(root.path(), manifest(1), &[table(2)]).unwrap();
    let berth_snapshot::Snapshot { manifest: m, dir } = berth_snapshot::files::write(root.path(), manifest(2), &[table(3)]).unwrap();
    assert_eq!((m.at_ms, m.files[0].rows), (2, 3));
    assert_eq!(read(&dir.join(tables::STOCK)).unwrap().len(), 3);
    assert_eq!(berth_snapshot::files::list(root.path(), "s1").len(), 1);
    // A replacement moved aside but never landed comes back at start.
    std::fs::rename(&dir, root.path().join("s1").join(".old-2026-12-05-77")).unwrap();
    berth_snapshot::files::tidy(&root.path().join("s1"));
    assert_eq!(berth_snapshot::files::list(root.path(), "s1")[0].manifest.at_ms, 2);
    let mut bad = manifest(3);
    bad.shop = "../etc".into();
    assert!(berth_snapshot::files::write(root.path(), bad, &[table(1)]).unwrap_err().to_string().contains("cannot name a directory"));
}
