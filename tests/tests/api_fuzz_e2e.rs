//! Random JSON and random query strings at every ERP and operator endpoint, as any client
//! might send: berth never answers 5xx, a 4xx names what was wrong, and a refused call
//! changes nothing — no order acked, leased, replayed or purged, no stock changed.
//! Seeded, so a failure can be replayed (`BERTH_FUZZ_SEED`).

use berth_tests::{get_json_as, poll_until, Berth};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "admin-token-fuzz-0000001";
const CASES_PER_ENDPOINT: usize = 60;

/// xorshift64*: enough randomness for inputs, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const FIELDS: &[&str] = &[
    "max", "visibility_secs", "tokens", "delay_secs", "reason", "ids", "skus", "updates", "sku", "quantity", "seq", "id", "attempt", "lease",
];

fn number(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e300),
        5 => json!(0.5),
        6 => json!(u32::MAX as u64 + 1),
        7 => json!(604_801),
        8 => json!(86_401),
        _ => json!(rng.below(2000)),
    }
}

fn string(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(""),
        1 => json!("x".repeat(rng.below(5000) as usize)),
        2 => json!("SKU-\u{0}-\u{202e}-é-🙂"),
        3 => json!("../../etc/passwd"),
        4 => json!("00000000000000000000000000000000"),
        _ => json!(format!("S-{}", rng.below(100))),
    }
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let kinds = if depth == 0 { 4 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => number(rng),
        3 => string(rng),
        4 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        5 => object(rng, depth - 1),
        // A token-shaped object: the fields a lease answers, with random values.
        _ => json!({"id": number(rng), "attempt": number(rng), "lease": string(rng)}),
    }
}

fn object(rng: &mut Rng, depth: u32) -> Value {
    let mut map = Map::new();
    for _ in 0..rng.below(4) {
        let key = if rng.below(5) == 0 { format!("k{}", rng.below(9)) } else { rng.pick(FIELDS).to_string() };
        map.insert(key, value(rng, depth));
    }
    Value::Object(map)
}

/// A body: mostly JSON objects of the endpoint's own fields, sometimes anything at all.
fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => b"{".to_vec(),
        1 => vec![0xff, 0xfe, 0x00],
        2 => value(rng, 2).to_string().into_bytes(),
        _ => object(rng, 3).to_string().into_bytes(),
    }
}

fn query(rng: &mut Rng) -> String {
    let keys = ["after", "limit", "shop", "state", "x"];
    let vals = ["-1", "0", "1", "18446744073709551616", "abc", "pending", "%zz", "1000", "1001", "acme", ""];
    (0..rng.below(4)).map(|_| format!("{}={}", rng.pick(&keys), rng.pick(&vals))).collect::<Vec<_>>().join("&")
}

/// What a refused call must not change: orders in the queue (all of them, and dead
/// ones), leases not grown, and every SKU's desired stock.
#[derive(Debug, PartialEq)]
struct Durable {
    total: u64,
    dead: u64,
    in_flight: u64,
    stock: BTreeMap<String, u64>,
}

async fn durable(berth: &Berth) -> Durable {
    let q = get_json_as(ADMIN, berth.url("/v1/orders/queue")).await;
    let n = |k: &str| q[k].as_u64().unwrap_or_else(|| panic!("queue stats lack {k}: {q}"));
    let list = get_json_as(ADMIN, berth.url("/v1/shops/acme/stock?limit=1000")).await;
    let stock = list["skus"].as_array().unwrap_or_else(|| panic!("{list}")).iter().map(|s| (s["sku"].as_str().unwrap().to_string(), s["version"].as_u64().unwrap())).collect();
    Durable { total: n("ready") + n("in_flight") + n("dead"), dead: n("dead"), in_flight: n("in_flight"), stock }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_input_never_a_5xx_and_a_refusal_changes_nothing() {
    let seed = std::env::var("BERTH_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_ba5e_u64);
    let mut rng = Rng(seed | 1);
    let sim = berth_sim::start(berth_tests::shopify_sim(61, 1, &[("acme", 5)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let seeded = sim.state.orders(berth_sim::Platform::Shopify, "acme").len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{sync}[admin]\ntokens = [{{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n{connectors}\
             [shops.acme]\nconnector = \"shopify\"\nsettings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            base = sim.base_url(),
        ),
    );
    let berth = Berth::start(&config);
    let queued = poll_until(Duration::from_secs(90), || async { (durable(&berth).await.total == seeded).then_some(()) }).await;
    assert!(queued.is_some(), "the seeded orders never reached the queue");

    let posts = [
        "/v1/orders/lease",
        "/v1/orders/ack",
        "/v1/orders/nack",
        "/v1/orders/extend",
        "/v1/orders/dead-letters/replay",
        "/v1/orders/dead-letters/purge",
        "/v1/shops/acme/stock",
        "/v1/shops/acme/stock/dead-letters/replay",
        "/v1/shops/acme/stock/dead-letters/purge",
    ];
    let gets = ["/v1/orders", "/v1/shops/acme/stock", "/v1/admin/audit"];
    let client = berth_tests::client_as(ADMIN);
    let (mut refused, mut taken) = (0, 0);
    let mut before = durable(&berth).await;
    for round in 0..CASES_PER_ENDPOINT {
        for path in posts.iter().copied().chain(gets.iter().copied()) {
            let (method, url, bytes) = if posts.contains(&path) {
                (Method::POST, berth.url(path), Some(body(&mut rng)))
            } else {
                (Method::GET, berth.url(&format!("{path}?{}", query(&mut rng))), None)
            };
            let mut req = client.request(method.clone(), &url);
            if let Some(b) = &bytes {
                req = req.header("content-type", "application/json").body(b.clone());
            }
            let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let shown = bytes.as_deref().map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()).unwrap_or_default();
            assert!(status < 500, "seed {seed} round {round}: {method} {url} {shown} answered {status}: {text}");
            if (400..500).contains(&status) {
                refused += 1;
                let why: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("a refusal that is not JSON: {text}"));
                assert!(why["error"].as_str().is_some_and(|e| !e.is_empty()) || status == 409, "{method} {url}: {text}");
                let after = durable(&berth).await;
                // Leases may expire meanwhile (in flight falls, never rises); nothing else moves.
                assert!(
                    after.total == before.total && after.dead == before.dead && after.stock == before.stock && after.in_flight <= before.in_flight,
                    "seed {seed} round {round}: refused {method} {url} {shown} ({status}: {text}) changed {before:?} to {after:?}"
                );
                before = after;
            } else {
                taken += 1;
                before = durable(&berth).await;
            }
        }
    }
    eprintln!("seed {seed}: {refused} refused, {taken} taken");
    assert!(refused > 100 && taken > 10, "the inputs must exercise both: {refused} refused, {taken} taken");
    assert!(berth.log().lines().all(|l| !l.contains("panicked")), "{}", berth.log());
}
