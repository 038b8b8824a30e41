//! A data dir written by the sled release (tests/fixtures/sled-0.34, made under load
//! and killed) migrates into the store with nothing lost or reordered: every feed
//! entry in its place, sync positions, the order queue's messages with their
//! attempts, leases (the ERP's held tokens still ack) and dead letters, idempotency
//! keys, stock records with their versions and ERP seqs, connector state, the registry
//! with its component bytes. The sled dir is kept as a backup; a second start does not
//! migrate again. What is expected is read from the fixture's own dump of every sled
//! tree, decoded here independently of the migration code.

use berth_capabilities::kv::KvStore;
use berth_core::queue::{Enqueued, LeaseQueue, LeaseToken, NewMessage, QueuePolicy, StoreQueues};
use berth_core::registry::RegistryStore;
use berth_core::stock::ledger::RetryPolicy;
use berth_core::stock::{SkuStock, StockLedger};
use berth_core::store::{OrderRecord, OrderStore, SyncState};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

type Trees = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sled-0.34")
}

fn trees() -> Trees {
    let out = Command::new("gzip").arg("-dc").arg(fixture().join("trees.json.gz")).output().expect("gzip");
    assert!(out.status.success());
    let raw: BTreeMap<String, Vec<(String, String)>> = serde_json::from_slice(&out.stdout).expect("trees JSON");
    raw.into_iter()
        .map(|(t, rows)| (t, rows.into_iter().map(|(k, v)| (hex::decode(k).unwrap(), if v.starts_with("sha256:") { v.into_bytes() } else { hex::decode(v).unwrap() })).collect()))
        .collect()
}

/// A sled queue record: its JSON header and payload.
fn sled_record(v: &[u8]) -> (Value, Vec<u8>) {
    let len = u32::from_be_bytes(v[..4].try_into().unwrap()) as usize;
    (serde_json::from_slice(&v[4..4 + len]).unwrap(), v[4 + len..].to_vec())
}

fn id(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_data_dir_migrates_with_nothing_lost_or_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let untar = Command::new("tar").arg("xzf").arg(fixture().join("db.tar.gz")).arg("-C").arg(&data).status().unwrap();
    assert!(untar.success());
    let want = trees();
    let erp: Value = serde_json::from_slice(&std::fs::read(fixture().join("erp.json")).unwrap()).unwrap();

    let config = berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() };
    let (storage, migrated) = berth_storage::migrate::open(&data, &data.join("components"), config.clone()).await.expect("migration");
    let migrated = migrated.expect("a sled dir was found and migrated");
    assert!(!data.join("db").exists(), "the sled dir is set aside");
    assert!(migrated.backup.join("conf").is_file(), "and kept whole: {}", migrated.backup.display());
    for (tree, rows) in &want {
        // The schedules (queue `ready`, stock `due`) are derived from the records.
        if tree != "__sled__default" && !tree.ends_with("/ready") && tree != "stock/due" {
            assert_eq!(migrated.trees.get(tree), Some(&rows.len()), "tree {tree}");
        }
    }

    // Orders: the feed, entry for entry, in order; positions; versions already seen.
    let orders = OrderStore::on(&storage).unwrap();
    let feed = orders.list(0, 10_000, None).unwrap();
    let want_feed: Vec<OrderRecord> = want["orders_feed"].iter().map(|(_, v)| serde_json::from_slice(v).unwrap()).collect();
    assert_eq!(feed.len(), 81);
    assert_eq!(feed, want_feed, "the feed, every entry in its place");
    assert_eq!(orders.feed_len(), 81);
    for r in &feed {
        assert!(!orders.is_new(&r.shop, &r.order).await.unwrap(), "seq {} would be queued again", r.seq);
    }
    for (shop, v) in &want["sync_state"] {
        let shop = String::from_utf8(shop.clone()).unwrap();
        let st: SyncState = serde_json::from_slice(v).unwrap();
        assert_eq!(orders.sync_state(&shop).await.unwrap(), st, "sync position of {shop}");
    }

    // The order queue.
    let queue = StoreQueues::open(&storage, QueuePolicy { max_attempts: 2 }).unwrap();
    let now = berth_storage::now_ms();
    let msgs: Vec<(u64, Value, Vec<u8>)> = want["q/orders/msg"].iter().map(|(k, v)| {
        let (h, p) = sled_record(v);
        (id(k), h, p)
    }).collect();
    let st = queue.stats("orders").unwrap();
    let in_flight = msgs.iter().filter(|(_, h, _)| h["visible_at_ms"].as_i64().unwrap() > now).count() as u64;
    assert_eq!((st.ready + st.in_flight, st.in_flight, st.dead), (msgs.len() as u64, in_flight, 6), "{st:?}");
    let dead = queue.dead_letters("orders", 100).unwrap();
    let want_dead: Vec<(u64, String, u32, String)> = want["q/orders/dead"].iter().map(|(k, v)| {
        let (h, _) = sled_record(v);
        (id(k), h["partition"].as_str().unwrap().to_string(), h["attempts"].as_u64().unwrap() as u32, h["last_error"].as_str().unwrap().to_string())
    }).collect();
    let got_dead: Vec<(u64, String, u32, String)> = dead.iter().map(|d| (d.id, d.partition.clone(), d.attempts, d.reason.clone())).collect();
    assert_eq!(got_dead, want_dead, "dead letters with their reasons");
    assert!(dead.iter().all(|d| d.reason.contains("ERP said no again")));
    let dead_orders: Vec<String> = dead.iter().map(|d| serde_json::from_slice::<Value>(&d.payload).unwrap()["order"]["order_id"].as_str().unwrap().to_string()).collect();
    let mut want_dead_orders: Vec<String> = erp["dead_orders"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let mut sorted = dead_orders.clone();
    sorted.sort();
    want_dead_orders.sort();
    assert_eq!(sorted, want_dead_orders);
    // An idempotency key seen before is still a duplicate.
    let (key, value) = &want["q/orders/idem"][0];
    let again = queue
        .enqueue("orders", NewMessage { partition: "acme".into(), payload: b"again".to_vec(), idempotency_key: Some(String::from_utf8(key.clone()).unwrap()) })
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate(id(&value[..8])));
    // The ERP's held leases still ack, once each; then everything else leases back in
    // schedule order with its payload.
    let held: Vec<LeaseToken> = erp["held"].as_array().unwrap().iter().map(|l| serde_json::from_value(l["token"].clone()).unwrap()).collect();
    let done = queue.ack_many("orders", &held).await.unwrap();
    assert!(done.iter().all(Result::is_ok), "held tokens after the migration: {done:?}");
    let acked: std::collections::BTreeSet<u64> = held.iter().map(|t| t.id).collect();
    let acked_again = queue.ack_many("orders", &held).await.unwrap();
    assert!(acked_again.iter().all(Result::is_err));
    let mut rest: Vec<&(u64, Value, Vec<u8>)> = msgs.iter().filter(|(id, _, _)| !acked.contains(id)).collect();
    rest.sort_by_key(|(id, h, _)| (h["visible_at_ms"].as_i64().unwrap(), *id));
    // (Leases a day old may have expired by now: due or not, each comes back once.)
    let leased = queue.lease_within("orders", 1000, usize::MAX, Duration::from_secs(60)).await.unwrap();
    let due: Vec<&&(u64, Value, Vec<u8>)> = rest.iter().filter(|(_, h, _)| h["visible_at_ms"].as_i64().unwrap() <= berth_storage::now_ms()).collect();
    assert!(due.len() >= 50, "the fixture's ready messages: {}", due.len());
    assert_eq!(leased.iter().map(|l| l.token.id).collect::<Vec<_>>(), due.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), "due messages in schedule order");
    for (l, (_, h, p)) in leased.iter().zip(&due) {
        assert_eq!(&l.payload, p);
        assert_eq!(l.token.attempt, h["attempts"].as_u64().unwrap() as u32 + 1, "attempts carried over");
        assert_eq!(l.partition, h["partition"].as_str().unwrap());
    }

    // Stock, record for record; versions go on past sled's.
    let ledger = StockLedger::open(&storage, RetryPolicy::new(1000, 60_000, 10)).unwrap();
    let mut max_version = 0;
    for (k, v) in &want["stock/sku"] {
        let (shop, sku) = k.split_at(k.iter().position(|&b| b == 0).unwrap());
        let (shop, sku) = (std::str::from_utf8(shop).unwrap(), std::str::from_utf8(&sku[1..]).unwrap());
        let rec: SkuStock = serde_json::from_slice(v).unwrap();
        max_version = max_version.max(rec.version);
        assert_eq!(ledger.get(shop, sku).unwrap().as_ref(), Some(&rec), "{shop}/{sku}");
    }
    let with_seq = want["stock/sku"].iter().filter(|(_, v)| serde_json::from_slice::<SkuStock>(v).unwrap().seq.is_some()).count();
    assert!(with_seq >= 12, "the ERP's seqs are in the fixture ({with_seq})");
    let due = ledger.due("acme", i64::MAX - 1, 1000).unwrap();
    assert_eq!(due.len(), want["stock/due"].len(), "the due index");
    let next = ledger.submit("acme", &[berth_core::stock::StockRequest { sku: "NEW-SKU".into(), quantity: 1, seq: None }]).await.unwrap();
    assert!(next[0].version > max_version, "version {} after sled's {max_version}", next[0].version);

    // Connector state, the registry and component bytes.
    let kv = KvStore::open(&storage).unwrap();
    for (k, v) in &want["connector_kv"] {
        let parts: Vec<&[u8]> = k.splitn(3, |&b| b == 0).collect();
        let (connector, shop, key) = (std::str::from_utf8(parts[0]).unwrap(), std::str::from_utf8(parts[1]).unwrap(), std::str::from_utf8(parts[2]).unwrap());
        assert_eq!(kv.scope(connector, shop).get(key).unwrap().as_ref(), Some(v), "kv {connector}/{shop}/{key}");
    }
    let registry = RegistryStore::open(&storage, &data.join("components")).unwrap();
    for (k, v) in &want["registry/state"] {
        let connector = std::str::from_utf8(k).unwrap();
        assert_eq!(serde_json::to_value(registry.state(connector).unwrap()).unwrap(), serde_json::from_slice::<Value>(v).unwrap(), "state of {connector}");
    }
    for (k, v) in &want["registry/versions"] {
        let (connector, digest) = k.split_at(k.iter().position(|&b| b == 0).unwrap());
        let (connector, digest) = (std::str::from_utf8(connector).unwrap(), std::str::from_utf8(&digest[1..]).unwrap());
        let rec = registry.version(connector, digest).unwrap().expect("version record");
        assert_eq!(serde_json::to_value(rec).unwrap(), serde_json::from_slice::<Value>(v).unwrap());
    }
    for (k, v) in &want["registry/blobs"] {
        let digest = std::str::from_utf8(k).unwrap();
        let bytes = registry.blob(digest).await.unwrap().expect("component file");
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))), String::from_utf8(v.clone()).unwrap());
        assert_eq!(hex::encode(Sha256::digest(&bytes)), digest, "named by its digest");
    }

    // A second start opens the store and migrates nothing.
    drop((orders, queue, ledger, kv, registry, storage));
    let (_, again) = berth_storage::migrate::open(&data, &data.join("components"), config).await.unwrap();
    assert!(again.is_none());
}
