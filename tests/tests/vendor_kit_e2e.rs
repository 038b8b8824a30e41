//! The vendor kit on a platform berth does not simulate: `berth plugin record` against a
//! small Souk server in this test (sorted-parameter HMAC signing, throttles as HTTP 200
//! with a body code, cursor paging, inclusive bounds, 7-day windows), then `berth plugin
//! test --tape` replaying that tape — clean and with every fault kind — to the Souk
//! connector (passes), to its deliberately wrong build (fails exactly the checks its
//! mistakes break), and to a tape missing an answer (reported, not guessed).

use axum::extract::{Query, State};
use axum::routing::get;
use berth_tests::{kit_check as check, run_berth};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(300);
const APP_KEY: &str = "souk-app-7781";
const SIGN_SECRET: &str = "sign-secret-4f1d9a";
const ACCESS_TOKEN: &str = "token-ChB2x9qLmE";
const WEBHOOK_SECRET: &str = "hook-secret-83ac1e";
const HOUR: i64 = 3_600_000;

fn hmac_hex(key: &str, data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Default)]
struct Souk {
    orders: Vec<Value>,
    stock: BTreeMap<String, u64>,
    /// Requests by API method.
    calls: BTreeMap<String, usize>,
    /// List calls answered so far (the third, the newer window's first page, is
    /// throttled once).
    lists: usize,
    bad_signatures: usize,
}

type Shared = Arc<Mutex<Souk>>;

fn answer(result: i64, data: Value) -> axum::Json<Value> {
    axum::Json(json!({ "result": result, "data": data }))
}

async fn api(State(souk): State<Shared>, Query(q): Query<BTreeMap<String, String>>) -> axum::Json<Value> {
    let mut s = souk.lock().unwrap();
    let method = q.get("method").cloned().unwrap_or_default();
    *s.calls.entry(method.clone()).or_default() += 1;
    let signed: Vec<String> = q.iter().filter(|(k, _)| *k != "sign").map(|(k, v)| format!("{k}={v}")).collect();
    if q.get("sign").map(String::as_str) != Some(hmac_hex(SIGN_SECRET, signed.join("&").as_bytes()).as_str())
        || q.get("access_token").map(String::as_str) != Some(ACCESS_TOKEN)
        || q.get("appkey").map(String::as_str) != Some(APP_KEY)
    {
        s.bad_signatures += 1;
        return axum::Json(json!({"result": 28, "error_msg": "invalid signature or token"}));
    }
    let param: Value = q.get("param").and_then(|p| serde_json::from_str(p).ok()).unwrap_or(Value::Null);
    match method.as_str() {
        "open.shop.info.get" => answer(1, json!({"shopName": "Souk Test Shop"})),
        "open.order.cursor.list" => {
            s.lists += 1;
            if s.lists == 3 {
                return axum::Json(json!({"result": 24, "error_msg": "call frequency exceeded", "retry_after_ms": 200}));
            }
            let (begin, end) = (param["beginTime"].as_i64().unwrap_or(0), param["endTime"].as_i64().unwrap_or(0));
            let from: usize = param["cursor"].as_str().and_then(|c| c.strip_prefix("pc-")).and_then(|n| n.parse().ok()).unwrap_or(0);
            let size = param["pageSize"].as_u64().unwrap_or(20) as usize;
            // Both bounds inclusive, as the platform documents.
            let mut hits: Vec<&Value> = s.orders.iter().filter(|o| (begin..=end).contains(&o["updateTime"].as_i64().unwrap_or(0))).collect();
            hits.sort_by_key(|o| o["updateTime"].as_i64());
            let page: Vec<Value> = hits.iter().skip(from).take(size).map(|o| (*o).clone()).collect();
            let cursor = if from + size < hits.len() { format!("pc-{}", from + size) } else { "nomore".into() };
            answer(1, json!({"cursor": cursor, "orderList": page}))
        }
        "open.item.sku.stock.update" => {
            let sku = param["skuCode"].as_str().unwrap_or("").to_string();
            if !s.stock.contains_key(&sku) {
                return axum::Json(json!({"result": 802, "error_msg": format!("sku {sku} not found")}));
            }
            s.stock.insert(sku, param["stock"].as_u64().unwrap_or(0));
            answer(1, json!({}))
        }
        _ => axum::Json(json!({"result": 404, "error_msg": "no such method"})),
    }
}

/// 45 orders over the last ten days, one of them updated exactly on the boundary of the
/// two 7-day windows the recording uses (`until - 72 h`).
const STATUSES: [i64; 5] = [10, 30, 40, 70, 80];

fn seed(until: i64) -> Souk {
    let mut souk = Souk::default();
    for i in 0..45i64 {
        let updated = if i == 7 { until - 72 * HOUR } else { until - 1_000 - i * 5 * HOUR - i * 37_000 };
        souk.orders.push(json!({
            "oid": format!("SK{:06}", 310_000 + i),
            "createTime": updated - 2 * HOUR,
            "updateTime": updated,
            "status": STATUSES[i as usize % 5],
            "totalFee": 1990 * (1 + i % 3) + 500,
            "buyerName": if i % 2 == 0 { "Zhang San" } else { "李小龙" },
            "buyerPhone": "+86 138-0013-8000",
            "items": [{"itemId": format!("IT{i}"), "skuCode": format!("SKU-{}", i % 4), "title": "Tea", "num": 1 + i % 3, "price": 1990}],
        }));
    }
    for sku in ["SKU-0", "SKU-1", "SKU-2", "SKU-3"] {
        souk.stock.insert(sku.into(), 100);
    }
    souk
}

fn outcomes(report: &str) -> BTreeMap<String, String> {
    report
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (outcome, rest) = l.split_once("  ")?;
            matches!(outcome, "PASS" | "FAIL" | "SKIP").then(|| (rest.trim_start().split(' ').next().unwrap_or("").to_string(), outcome.to_string()))
        })
        .collect()
}

async fn berth(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_berth(&args, DEADLINE)
    })
    .await
    .expect("berth ran")
}

const FAULTS: [&str; 10] = [
    "fault-429-wait",
    "fault-429",
    "fault-throttle-body",
    "fault-500",
    "fault-502",
    "fault-503",
    "fault-timeout",
    "fault-truncated",
    "fault-garbled",
    "fault-html",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_a_platform_we_do_not_simulate_and_replay_it_clean_and_with_faults() {
    let until = berth_types_now() - 60_000;
    let souk: Shared = Arc::new(Mutex::new(seed(until)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/open/{*method}", get(api)).with_state(souk.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let hook_body = r#"{"event":"ORDER_UPDATE","oid":"SK310003","status":40}"#;
    let hook = json!({"headers": {"X-Souk-Sign": hmac_hex(WEBHOOK_SECRET, hook_body.as_bytes()), "Content-Type": "application/json"}, "body": hook_body});
    std::fs::write(dir.path().join("push.json"), hook.to_string()).unwrap();
    let shop_file = dir.path().join("shop.toml");
    std::fs::write(
        &shop_file,
        format!(
            r#"shop = "souk-shop-1"
extra_hosts = ["127.0.0.1"]
allow_private_addresses = true
[settings]
base_url = "http://{addr}"
app_key = "{APP_KEY}"
[secrets]
sign_secret = "{SIGN_SECRET}"
access_token = "{ACCESS_TOKEN}"
webhook_secret = "{WEBHOOK_SECRET}"
[record]
push = {{ "SKU-1" = 7, "SKU-2" = 0, "NO-SUCH-SKU" = 3 }}
webhook = "push.json"
[replay]
throttle_body = '{{"result":24,"error_msg":"call frequency exceeded","retry_after_ms":500}}'
"#
        ),
    )
    .unwrap();
    let tape = dir.path().join("tape");
    let s = |p: &std::path::Path| p.display().to_string();

    // Record: every call ran against the server, signed as it demands.
    let (code, out, err) = berth(vec![
        "plugin".into(), "record".into(), plugins::SOUK.into(), "--shop-config".into(), s(&shop_file), "--out".into(), s(&tape),
        "--hours".into(), "240".into(), "--until-ms".into(), until.to_string(),
    ])
    .await;
    assert_eq!(code, Some(0), "record failed:\n{out}\n{err}");
    assert!(out.contains("recorded") && out.contains("45 orders") && out.contains("1 throttles waited out"), "{out}");
    {
        let s = souk.lock().unwrap();
        assert_eq!(s.bad_signatures, 0, "every request was signed right");
        assert_eq!(s.stock["SKU-1"], 7);
        assert_eq!(s.stock["SKU-2"], 0);
        assert_eq!(s.calls["open.shop.info.get"], 1);
        assert_eq!(s.calls["open.item.sku.stock.update"], 3);
    }
    let calls_after_recording = souk.lock().unwrap().calls.clone();
    let text = std::fs::read_to_string(tape.join("tape.json")).unwrap();
    for secret in [SIGN_SECRET, ACCESS_TOKEN, WEBHOOK_SECRET] {
        assert!(!text.contains(secret), "a secret reached the tape");
    }
    let taped: Value = serde_json::from_str(&text).unwrap();
    let urls: Vec<&str> = taped["calls"].as_array().unwrap().iter().flat_map(|c| c["exchanges"].as_array().unwrap()).map(|x| x["url"].as_str().unwrap()).collect();
    assert!(urls.len() >= 8, "{urls:?}");
    for u in &urls {
        let sign = url::Url::parse(u).unwrap().query_pairs().find(|(k, _)| k == "sign").map(|(_, v)| v.into_owned());
        assert_eq!(sign.as_deref(), Some("<redacted:sign>"), "{u}");
    }
    let kinds: Vec<&str> = taped["calls"].as_array().unwrap().iter().map(|c| c["input"]["call"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"check"));
    assert!(kinds.contains(&"push-inventory") && kinds.last() == Some(&"handle-webhook"), "{kinds:?}");

    // Replay to the same connector: every check passes, every fault is answered right.
    let test = |component: &str, with_shop: bool, tape_dir: &std::path::Path| {
        let mut args = vec!["plugin".to_string(), "test".into(), component.into(), "--tape".into(), s(tape_dir)];
        if with_shop {
            args.extend(["--shop-config".into(), s(&shop_file)]);
        }
        args
    };
    let (code, out, err) = berth(test(plugins::SOUK, true, &tape)).await;
    eprintln!("{out}");
    assert_eq!(code, Some(0), "the Souk connector failed its own tape:\n{out}\n{err}");
    for name in ["loads", "manifest", "check", "pull-orders", "orders", "push-inventory", "webhooks", "requests"].into_iter().chain(FAULTS) {
        let (outcome, detail) = check(&out, name).unwrap_or_else(|| panic!("no `{name}` check in\n{out}"));
        assert_eq!(outcome, "PASS", "{name}: {detail}\n{out}");
    }
    let (_, pulled) = check(&out, "pull-orders").unwrap();
    assert!(pulled.contains("45 orders exactly once over 2 windows") && pulled.contains("1 taped throttles"), "{pulled}");
    let (_, pushed) = check(&out, "push-inventory").unwrap();
    assert!(pushed.contains("3 SKUs, one result each (2 accepted, 1 rejected"), "{pushed}");
    let (_, hooks) = check(&out, "webhooks").unwrap();
    assert!(hooks.contains("changed body -> auth") && hooks.contains("without its signature -> auth"), "{hooks}");
    assert!(check(&out, "fault-429-wait").unwrap().1.contains("pull-orders: rate-limited(7000 ms)"), "{out}");
    assert!(check(&out, "fault-throttle-body").unwrap().1.contains("rate-limited(500 ms)"), "{out}");
    assert!(check(&out, "fault-html").unwrap().1.contains("transient"), "{out}");
    assert_eq!(souk.lock().unwrap().calls, calls_after_recording, "a replay sent nothing to the platform");

    // Without the shop file the secrets are placeholders: the webhook check says why it
    // cannot run; the rest still passes.
    let (code, out, _) = berth(test(plugins::SOUK, false, &tape)).await;
    assert_eq!(code, Some(0), "{out}");
    let (outcome, detail) = check(&out, "webhooks").unwrap();
    assert!(outcome == "SKIP" && detail.contains("--shop-config"), "{outcome} {detail}");

    // The wrong build: a throttle body taken for success, an order outside its window
    // kept, a trap on an HTML page. Exactly those checks fail.
    let (code, out, err) = berth(test(plugins::SOUK_WRONG, true, &tape)).await;
    eprintln!("{out}");
    assert_eq!(code, Some(1), "{out}\n{err}");
    let failed: Vec<String> = outcomes(&out).into_iter().filter(|(_, o)| o == "FAIL").map(|(n, _)| n).collect();
    assert_eq!(failed, ["fault-html", "fault-throttle-body", "pull-orders"], "{out}");
    assert!(check(&out, "pull-orders").unwrap().1.starts_with("order SK310007 (updated-at-ms"), "{out}");
    assert!(out.contains("order SK310007 (updated-at-ms") && out.contains("outside it"), "{out}");
    assert!(out.contains("orders the recording got never came"), "the taped throttle taken for an empty page: {out}");
    assert!(check(&out, "fault-throttle-body").unwrap().1.contains("for a success"), "{out}");
    let (_, html) = check(&out, "fault-html").unwrap();
    assert!(html.contains("crashed") && html.contains("wasm trap") && !html.contains("backtrace"), "{out}");

    // The tape as a shadow run: the same build matches every field; the wrong one not.
    let shadow = |component: &str| {
        vec!["plugin".to_string(), "shadow".into(), component.into(), "--tape".into(), s(&tape), "--shop-config".into(), s(&shop_file)]
    };
    let (code, out, err) = berth(shadow(plugins::SOUK)).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("compared 7 (0 skipped") && out.contains("7 matching every field") && out.contains(": 100.00%"), "{out}");
    let (code, out, _) = berth(shadow(plugins::SOUK_WRONG)).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("RESULT: FAIL") && out.contains("DIFF pull-orders"), "{out}");
    let rate: f64 = out.split("matching: ").nth(1).and_then(|r| r.split('%').next()).and_then(|r| r.parse().ok()).expect("a match rate");
    assert!(rate < 100.0, "{out}");
    assert_eq!(souk.lock().unwrap().calls, calls_after_recording);

    // A tape without the check's exchange: the request is reported, not guessed.
    let cut = dir.path().join("cut");
    let mut edited = taped.clone();
    edited["calls"][0]["exchanges"] = json!([]);
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::write(cut.join("tape.json"), edited.to_string()).unwrap();
    let (code, out, _) = berth(test(plugins::SOUK, true, &cut)).await;
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(check(&out, "check").unwrap().0, "FAIL", "{out}");
    let (outcome, detail) = check(&out, "requests").unwrap();
    assert!(outcome == "FAIL" && detail.contains("1 requests the tape cannot answer"), "{out}");
    assert!(out.contains("GET 127.0.0.1/open/open/shop/info/get?appkey="), "{out}");
    assert_eq!(souk.lock().unwrap().calls, calls_after_recording);
}

fn berth_types_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
