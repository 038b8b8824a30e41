//! The order feed and the ERP's queue over it, against a real 3-server JetStream cluster.

mod common;

use berth_cluster::classes::ALL;
use berth_cluster::feed::{self, FeedEntry, OrderQueue, QueueSettings, QueueToken};
use berth_cluster::ClusterError;
use common::{claim, connect, NatsCluster};
use std::time::{Duration, Instant};

fn entry(order: &str, updated: i64, content: &str) -> FeedEntry {
    let mut digest = [0u8; 32];
    for (i, b) in content.bytes().enumerate() {
        digest[i % 32] ^= b;
    }
    FeedEntry { order_id: order.into(), updated_at_ms: updated, digest, record: format!("{order}@{updated}:{content}").into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_append_new_versions_once_with_their_position_under_the_lease() {
    let nats = NatsCluster::start(3, true).await;
    let conn = connect(&nats, "a").await;
    let fence = claim(&conn, "shop-1", "a").await;
    // Order ids are the platform's: dots, slashes and spaces included.
    let page1 = vec![entry("A.1/x y", 1000, "paid"), entry("B", 1000, "paid"), entry("B", 1000, "paid")];
    let out = feed::append_page(&conn, &fence, ALL, &page1, Some("p1".into())).await.expect("page 1");
    assert_eq!((out.added, out.duplicates), (2, 1));
    // The same versions again (an overlapping window), a newer one, one equal in time but
    // different in content (paid -> shipped within a second), and an older one.
    let page2 = vec![entry("A.1/x y", 1000, "paid"), entry("B", 2000, "shipped"), entry("C", 500, "paid"), entry("C", 500, "cancelled"), entry("B", 1500, "older")];
    let out = feed::append_page(&conn, &fence, ALL, &page2, Some("p2".into())).await.expect("page 2");
    assert_eq!((out.added, out.duplicates), (3, 2));
    assert_eq!(feed::position(&conn, "shop-1").await.expect("read").expect("position"), "p2");

    let other = claim(&conn, "shop-2", "a").await;
    feed::append_page(&conn, &other, ALL, &[entry("Z", 1, "paid")], None).await.expect("shop 2");

    let all = feed::list(&conn, 0, 100, None).await.expect("list");
    let records: Vec<String> = all.iter().map(|r| String::from_utf8_lossy(&r.record).to_string()).collect();
    assert_eq!(records, ["A.1/x y@1000:paid", "B@1000:paid", "B@2000:shipped", "C@500:paid", "C@500:cancelled", "Z@1:paid"]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[5].shop, "shop-2");
    let after = feed::list(&conn, all[2].seq, 2, Some("shop-1")).await.expect("list after");
    assert_eq!(after.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![all[3].seq, all[4].seq]);

    // Another node takes shop-1: the old holder's page lands nothing, not even its position.
    let _b = claim(&conn, "shop-1", "b").await;
    let stale = feed::append_page(&conn, &fence, ALL, &[entry("D", 9, "paid")], Some("p3".into())).await;
    assert!(matches!(stale, Err(ClusterError::Fenced { .. })), "{stale:?}");
    assert_eq!(feed::list(&conn, 0, 100, None).await.expect("list").len(), 6);
    assert_eq!(feed::position(&conn, "shop-1").await.expect("read").expect("position"), "p2");
}

async fn lease_until(queue: &OrderQueue, n: usize, secs: u64) -> Vec<feed::LeasedRecord> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "leased {} of {n} within {secs} s", got.len());
        got.extend(queue.lease(n - got.len(), Duration::from_millis(300), queue.ack_wait()).await.expect("lease"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erp_queue_leases_on_one_node_acks_on_another_and_buries_what_keeps_failing() {
    let nats = NatsCluster::start(3, true).await;
    let (a, b) = (connect(&nats, "a").await, connect(&nats, "b").await);
    let fence = claim(&a, "shop-1", "a").await;
    let entries: Vec<FeedEntry> = (0..6).map(|i| entry(&format!("O{i}"), 10, "paid")).collect();
    feed::append_page(&a, &fence, ALL, &entries, None).await.expect("page");

    let settings = QueueSettings { visibility: Duration::from_secs(2), max_attempts: 2 };
    let qa = OrderQueue::open(&a, "erp", ALL, settings.clone()).await.expect("queue on a");
    let qb = OrderQueue::open(&b, "erp", ALL, settings).await.expect("queue on b");
    let leased = lease_until(&qa, 6, 20).await;
    let (ready, in_flight, oldest) = qa.depth().await.expect("depth");
    assert_eq!((ready, in_flight), (0, 6));
    assert!(oldest.is_some(), "six leased orders: the oldest has a time");
    // Acked on the other node: never delivered again.
    let tokens: Vec<QueueToken> = leased[..3].iter().map(|l| l.token.clone()).collect();
    let acks = qb.ack_many(&tokens).await;
    assert!(acks.iter().all(|r| r.is_ok()), "acks on b: {acks:?}");
    // Nacked with a delay: back after it, second attempt.
    qb.nack(&leased[3].token, Duration::from_millis(200), "erp said 503").await.expect("nack");
    let again = lease_until(&qb, 1, 20).await;
    assert_eq!((again[0].token.id, again[0].attempt), (leased[3].token.id, 2));
    // Its last attempt nacked: a dead letter with the reason, never delivered again.
    qa.nack(&again[0].token, Duration::ZERO, "erp said 400: bad sku").await.expect("last nack");
    // Never acked: after the visibility the others come back, then die on their last try.
    let back = lease_until(&qa, 2, 20).await;
    assert!(back.iter().all(|l| l.attempt == 2));
    let mut ids: Vec<u64> = back.iter().map(|l| l.token.id).collect();
    ids.sort();
    assert_eq!(ids, vec![leased[4].token.id, leased[5].token.id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        qa.lease(10, Duration::from_millis(300), qa.ack_wait()).await.expect("lease");
        if qa.dead_letters(10).await.expect("dead").len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "expired leases not buried");
    }
    let dead = qa.dead_letters(10).await.expect("dead letters");
    let bad_sku = dead.iter().find(|d| d.seq == leased[3].token.id).expect("the nacked order");
    assert_eq!((bad_sku.attempts, bad_sku.reason.as_str()), (2, "erp said 400: bad sku"));
    assert!(dead.iter().filter(|d| d.seq != leased[3].token.id).all(|d| d.reason.contains("expired") && d.attempts == 2));
    assert!(qb.lease(10, Duration::from_millis(500), qb.ack_wait()).await.expect("lease").is_empty(), "a buried or acked order came back");
    assert!(dead.iter().all(|d| d.shop == "shop-1"), "dead letters name their shop: {dead:?}");

    // Replayed on b: the order is delivered again (a new message of the feed) and its
    // dead letter is gone; purged: gone without coming back; unknown ids are skipped.
    assert_eq!(qb.replay(&[bad_sku.seq, 999_999]).await.expect("replay"), 1);
    let replayed = lease_until(&qa, 1, 20).await;
    assert_eq!(replayed[0].record, leased[3].record, "the same order again");
    qa.ack(&replayed[0].token).await.expect("ack the replayed order");
    let others: Vec<u64> = dead.iter().map(|d| d.seq).filter(|s| *s != bad_sku.seq).collect();
    assert_eq!(qa.purge(&others).await.expect("purge"), 2);
    assert!(qa.dead_letters(10).await.expect("dead").is_empty());
    assert_eq!(qa.purge(&others).await.expect("purge again"), 0);
    assert!(qb.lease(10, Duration::from_millis(500), qb.ack_wait()).await.expect("lease").is_empty(), "a purged order came back");

    // A token is only ever this queue's ack subject.
    for ack in ["$KV.berth_shops.owner.shop-1", "$JS.ACK.KV_berth_shops.other.1.1.1.1.0", "$JS.ACK.KV_berth_shops.erp.1.999.1.1.0"] {
        let forged = QueueToken { id: 1, ack: base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, ack) };
        assert!(qa.ack(&forged).await.is_err(), "{ack} accepted");
    }
}

/// Lease on `queue` until `ids` all came back, each at `attempt`; fails after `secs`.
async fn comes_back(queue: &OrderQueue, ids: &[u64], attempt: u32, secs: u64) -> Vec<feed::LeasedRecord> {
    let got = lease_until(queue, ids.len(), secs).await;
    let mut back: Vec<u64> = got.iter().map(|l| l.token.id).collect();
    back.sort();
    assert_eq!(back, ids, "other orders came back");
    assert!(got.iter().all(|l| l.attempt == attempt), "{:?}", got.iter().map(|l| l.attempt).collect::<Vec<_>>());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lease_keeps_its_own_visibility_whichever_node_extends_or_settles_it() {
    let nats = NatsCluster::start(3, true).await;
    let (a, b, c) = (connect(&nats, "a").await, connect(&nats, "b").await, connect(&nats, "c").await);
    let fence = claim(&a, "shop-1", "a").await;
    feed::append_page(&a, &fence, ALL, &[entry("O0", 10, "paid")], None).await.expect("page");
    // The consumer's ack wait is 8 s; leases ask 1 s, 3 s and 20 s.
    let settings = QueueSettings { visibility: Duration::from_secs(8), max_attempts: 10 };
    let qa = OrderQueue::open(&a, "erp", ALL, settings.clone()).await.expect("queue on a");
    let qb = OrderQueue::open(&b, "erp", ALL, settings.clone()).await.expect("queue on b");
    let qc = OrderQueue::open(&c, "erp", ALL, settings).await.expect("queue on c");
    let (short, long) = (Duration::from_secs(1), Duration::from_secs(20));

    // A lease of 1 s comes back long before the ack wait (the leasing node gives it back).
    let first = lease_until_for(&qa, 1, short).await;
    let leased_at = Instant::now();
    let again = comes_back(&qb, &[first[0].token.id], 2, 20).await;
    qb.ack(&again[0].token).await.expect("ack");
    assert!(leased_at.elapsed() < Duration::from_secs(7), "a 1 s lease came back after {:?}: the ack wait, not its own end", leased_at.elapsed());
    let entries: Vec<FeedEntry> = (1..5).map(|i| entry(&format!("O{i}"), 10, "paid")).collect();
    feed::append_page(&a, &fence, ALL, &entries, None).await.expect("page");

    // Four more on a: O1 and O2 for 20 s, O3 and O4 for 3 s. O3 is extended to 20 s on
    // c (a keeps its timer), O2 acked on b, O4 left to end.
    let mut long_ones = lease_until_for(&qa, 2, long).await;
    let mut short_ones = lease_until_for(&qa, 2, Duration::from_secs(3)).await;
    let (o4, o3) = (short_ones.pop().expect("o4"), short_ones.pop().expect("o3"));
    let expires = qc.extend(&o3.token, long).await.expect("extend on c");
    let extended_at = Instant::now();
    let asked = berth_types::clock::now_ms() + long.as_millis() as i64;
    assert!((expires - asked).abs() < 3_000, "extended to {expires}, asked about {asked}");
    let o2 = long_ones.pop().expect("o2");
    qb.ack(&o2.token).await.expect("ack on b");
    // a keeps timers for O1 (renewals) and O3 (extended): O4's ended, O2's dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while qa.timed_leases() != 2 {
        assert!(Instant::now() < deadline, "a keeps {} lease timers, not 2", qa.timed_leases());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // O4 comes back; O1 and O3 are held past the ack wait by a's renewals.
    let again = comes_back(&qb, &[o4.token.id], 2, 20).await;
    qb.ack(&again[0].token).await.expect("ack");
    let mut early = Vec::new();
    while extended_at.elapsed() < Duration::from_secs(15) {
        early.extend(qb.lease(5, Duration::from_millis(500), qb.ack_wait()).await.expect("lease").into_iter().map(|l| l.token.id));
    }
    assert!(early.is_empty(), "leases of 20 s ({}, {}) came back before 15 s: {early:?}", long_ones[0].token.id, o3.token.id);
    // Then they end.
    let mut ids = vec![long_ones[0].token.id, o3.token.id];
    ids.sort();
    let back = comes_back(&qb, &ids, 2, 30).await;

    // The node keeping a lease's timer (b leased them) leaves: an extension elsewhere
    // renews for the ack wait and says so.
    drop(qb);
    let extended = qc.extend(&back[0].token, long).await.expect("extend with its holder gone");
    let wait_end = berth_types::clock::now_ms() + 8_000;
    assert!((extended - wait_end).abs() < 3_000, "renewed to {extended}, the ack wait ends about {wait_end}");
}

async fn lease_until_for(queue: &OrderQueue, n: usize, visibility: Duration) -> Vec<feed::LeasedRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "leased {} of {n}", got.len());
        got.extend(queue.lease(n - got.len(), Duration::from_millis(300), visibility).await.expect("lease"));
    }
    got
}

fn scopes(list: &[&str]) -> std::collections::BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Lease from `queues` for `scope` until `n` records came (a lease during a consumer
/// leader's election gives nothing: not the end), then once more, which must give
/// nothing; the records' texts and tokens.
async fn lease_n(queues: &berth_cluster::queues::OrderQueues, scope: Option<&str>, n: usize) -> Vec<(String, QueueToken)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    let lease = |wait: u64| queues.lease(scope, 50, Duration::from_millis(wait), queues.ack_wait());
    while out.len() < n {
        assert!(Instant::now() < deadline, "{scope:?} leased {} of {n}", out.len());
        let got = lease(300).await.expect("lease");
        out.extend(got.into_iter().map(|l| (String::from_utf8_lossy(&l.record).to_string(), l.token)));
    }
    let more = lease(300).await.expect("lease");
    assert!(more.is_empty(), "{scope:?} leased more than {n}: {:?}", more.iter().map(|l| String::from_utf8_lossy(&l.record).to_string()).collect::<Vec<_>>());
    out
}

/// Per shop, whatever its class: (shop, ready, in flight, an oldest time), and whether
/// the read stopped at `limit`.
async fn per_shop(q: &berth_cluster::queues::OrderQueues, limit: usize) -> (Vec<(String, u64, u64, bool)>, bool) {
    let (by_shop, capped) = q.depth_by_shop(limit).await.expect("depth by shop");
    (by_shop.into_iter().map(|(s, d)| (s, d.ready, d.in_flight, d.oldest_ms.is_some())).collect(), capped)
}

fn texts(leased: &[(String, QueueToken)]) -> Vec<String> {
    let mut t: Vec<String> = leased.iter().map(|(r, _)| r.clone()).collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_lease_only_the_classes_of_shops_they_see_and_a_move_needs_no_handover() {
    use berth_cluster::classes::Classes;
    use berth_cluster::queues::OrderQueues;
    let nats = NatsCluster::start(3, true).await;
    let (a, b) = (connect(&nats, "a").await, connect(&nats, "b").await);
    // shop-a is seen by the scope `acme-*`, shop-c by `acme-*` and `shop-c`, shop-b by none.
    let seen_by: std::collections::BTreeMap<String, _> =
        [("shop-a".to_string(), scopes(&["acme-*"])), ("shop-b".to_string(), scopes(&[])), ("shop-c".to_string(), scopes(&["acme-*", "shop-c"]))].into();
    let (classes_a, classes_b) = (Classes::open(&a).await.expect("classes on a"), Classes::open(&b).await.expect("classes on b"));
    classes_a.assign(&seen_by).await.expect("assign on a");
    classes_b.assign(&seen_by).await.expect("assign on b");
    assert_eq!(classes_a.class_of("shop-b"), ALL);
    assert_ne!(classes_a.class_of("shop-a"), classes_a.class_of("shop-c"));
    let settings = QueueSettings { visibility: Duration::from_secs(30), max_attempts: 5 };
    let qa = OrderQueues::open(&a, "erp", settings.clone(), classes_a.clone()).await.expect("queues on a");
    let qb = OrderQueues::open(&b, "erp", settings, classes_b.clone()).await.expect("queues on b");
    for shop in ["shop-a", "shop-b", "shop-c"] {
        let fence = claim(&a, shop, "a").await;
        let entries: Vec<FeedEntry> = (0..3).map(|i| entry(&format!("{shop}/{i}"), 10, "paid")).collect();
        feed::append_page(&a, &fence, &classes_a.class_of(shop), &entries, None).await.expect("page");
    }
    let record = |shop: &str, i: usize| format!("{shop}/{i}@10:paid");
    let all_ready: Vec<_> = ["shop-a", "shop-b", "shop-c"].iter().map(|s| (s.to_string(), 3, 0, true)).collect();
    assert_eq!(per_shop(&qb, 100).await, (all_ready, false));
    let (first_two, capped) = per_shop(&qb, 2).await;
    assert!(capped && first_two.iter().map(|(_, r, _, _)| r).sum::<u64>() <= 6, "a read stopped at 2 a class: {first_two:?}");

    // `shop-c` leases shop-c's orders only; `acme-*` then shop-a's (shop-c's are taken);
    // an unscoped token the rest. Each order once.
    let c = lease_n(&qb, Some("shop-c"), 3).await;
    assert_eq!(texts(&c), (0..3).map(|i| record("shop-c", i)).collect::<Vec<_>>());
    let (counts, _) = per_shop(&qa, 100).await;
    assert_eq!(counts.iter().find(|(s, ..)| s == "shop-c"), Some(&("shop-c".to_string(), 0, 3, true)), "{counts:?}");
    let acme = lease_n(&qa, Some("acme-*"), 3).await;
    assert_eq!(texts(&acme), (0..3).map(|i| record("shop-a", i)).collect::<Vec<_>>());
    lease_n(&qb, Some("globex"), 0).await;
    let rest = lease_n(&qa, None, 3).await;
    assert_eq!(texts(&rest), (0..3).map(|i| record("shop-b", i)).collect::<Vec<_>>());
    // A scope settles only its classes' leases, on any node.
    assert!(qb.sees(&acme[0].1, Some("acme-*")) && !qb.sees(&acme[0].1, Some("shop-c")) && !qb.sees(&rest[0].1, Some("acme-*")));
    assert!(qb.sees(&c[0].1, Some("acme-*")), "shop-c is acme-*'s too");
    for (_, token) in acme.iter().chain(&c).chain(&rest) {
        qb.ack(token).await.expect("ack on the other node");
    }
    let by_class = qa.depth_by_class().await.expect("depth");
    assert_eq!(by_class.len(), 3, "{by_class:?}");
    assert!(by_class.iter().all(|(_, d)| (d.ready, d.in_flight) == (0, 0)), "{by_class:?}");
    assert_eq!(per_shop(&qa, 100).await, (vec![], false), "every order settled");

    // A new scope `shop-b` sees shop-b from now on: orders in the feed stay where they
    // are (an unscoped lease), new ones go to the new class.
    let fence = claim(&a, "shop-b", "a").await;
    feed::append_page(&a, &fence, &classes_a.class_of("shop-b"), &[entry("shop-b/old", 20, "paid")], None).await.expect("page");
    let mut moved = seen_by.clone();
    moved.insert("shop-b".into(), scopes(&["shop-b"]));
    assert_eq!(classes_a.assign(&moved).await.expect("reassign"), vec!["shop-b".to_string()]);
    classes_b.assign(&moved).await.expect("reassign on b");
    feed::append_page(&a, &fence, &classes_a.class_of("shop-b"), &[entry("shop-b/new", 30, "paid")], None).await.expect("page");
    let scoped = lease_n(&qb, Some("shop-b"), 1).await;
    assert_eq!(texts(&scoped), vec!["shop-b/new@30:paid".to_string()]);
    let unscoped = lease_n(&qb, None, 1).await;
    assert_eq!(texts(&unscoped), vec!["shop-b/old@20:paid".to_string()]);

    // A token naming a class the cluster does not have opens nothing.
    let forged_subject = format!("$JS.ACK.KV_berth_shops.erp_s0000000000000000.1.{}.1.1.0", unscoped[0].1.id);
    let forged = QueueToken { id: unscoped[0].1.id, ack: base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, forged_subject) };
    assert!(qa.ack(&forged).await.is_err());
}
