//! Connector lifecycle against the real binary and real components: deploy, hot-swap
//! under load with failures counted, rollback, pause/resume, admin tokens and roles, the
//! audit log, invalid uploads refused with nothing changed, and a restart that keeps the
//! deployed version without compiling it again.

use berth_sim::Platform;
use berth_tests::{berth_admin, component_variant, get_json_as, poll_until, Berth};
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const VIEWER: &str = "viewer-token-000000001";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-lifecycle-0001";
const OPERATOR: &str = "operator-token-0000001";
const DEPLOYER: &str = "deployer-token-0000001";
const ADMIN: &str = "admin-token-00000000001";

fn sim_config() -> berth_sim::SimConfig {
    berth_tests::shopify_sim(31, 6, &[("acme", 30), ("zeta", 10)])
}

fn config(dir: &std::path::Path, sim: &str, max_mb: u32) -> std::path::PathBuf {
    let shop = |name: &str| {
        format!(
            "[shops.{name}]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{sim}/shopify/{name}\", page_size = \"10\" }}\nsecrets = {{ access_token = \"tok\" }}\n"
        )
    };
    berth_tests::write_config(
        dir,
        &format!(
            "[sync]\ninitial_lookback_hours = 8\nsettle_secs = 1\n\
             [stock]\nretry_base_ms = 50\nretry_max_ms = 200\n\
             [admin]\nmax_component_mb = {max_mb}\ntokens = [\n\
               {{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }},\
               {{ name = \"dash\", token = \"{VIEWER}\", role = \"viewer\" }},\n\
               {{ name = \"oncall\", token = \"{OPERATOR}\", role = \"operator\" }},\n\
               {{ name = \"ci\", token = \"{DEPLOYER}\", role = \"deployer\" }},\n\
               {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }},\n]\n\
             {}{}{}",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            shop("acme"),
            shop("zeta"),
        ),
    )
}

async fn send(method: reqwest::Method, url: String, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, Value) {
    berth_tests::api_call(method, url, token, body, None).await
}

async fn deploy(berth: &Berth, token: Option<&str>, connector: &str, bytes: Vec<u8>) -> (u16, Value) {
    send(reqwest::Method::POST, berth.url(&format!("/v1/admin/connectors/{connector}/versions")), token, Some(bytes)).await
}

async fn active_digest(berth: &Berth) -> String {
    get_json_as(ERP, berth.url("/v1/connectors")).await[0]["digest"].as_str().unwrap_or_default().to_string()
}

fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn entries(berth: &Berth) -> u64 {
    get_json_as(ERP, berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_nothing_and_roll_back() {
    let sim = berth_sim::start(sim_config(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), 32));
    poll_until(DEADLINE, || async { (entries(&berth).await >= 40).then_some(()) }).await.expect("initial orders");
    let original = std::fs::read(plugins::SHOPIFY_REST).unwrap();
    let v1 = digest_of(&original);
    assert_eq!(active_digest(&berth).await, v1);
    let variants: Vec<Vec<u8>> = (2..=4).map(|n| component_variant(&original, &format!("v{n}"))).collect();

    // Load: the ERP keeps sending rising quantities and the platform keeps taking orders
    // the whole time, while versions are swapped ten times back to back.
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().map(|i| i.sku).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, skus, url, state) = (stop.clone(), skus.clone(), berth.url("/v1/shops/acme/stock"), sim.state.clone());
        tokio::spawn(async move {
            let client = berth_tests::client_as(ERP);
            let (mut quantity, mut orders) = (0u32, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                quantity += 1;
                let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": quantity})).collect();
                let r = client.post(&url).json(&json!({ "updates": updates })).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 202);
                if quantity % 4 == 0 {
                    state.create(Platform::Shopify, if orders % 2 == 0 { "acme" } else { "zeta" }).unwrap();
                    orders += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (quantity, orders)
        })
    };
    let writes = || sim.state.stats()[&Platform::Shopify].stock_writes;
    let mut swaps = 0;
    for round in 0..10 {
        let (status, body) = if round == 9 {
            send(reqwest::Method::POST, berth.url("/v1/admin/connectors/shopify/rollback"), Some(DEPLOYER), None).await
        } else {
            deploy(&berth, Some(DEPLOYER), "shopify", variants[round % 3].clone()).await
        };
        assert!(status == 200 || status == 201, "round {round}: {status} {body}");
        swaps += 1;
        // Calls run on the new version before the next swap.
        let w = writes();
        poll_until(DEADLINE, || async { (writes() >= w + 24).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("round {round}: stock pushes stopped\n{}", berth.log()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (quantity, created) = load.await.unwrap();
    // The last step rolled back from the version of round 8 to the one of round 7.
    let after_rollback = active_digest(&berth).await;
    assert_eq!(after_rollback, digest_of(&variants[7 % 3]), "rollback returns to the previous version");

    let expected_orders = 40 + created;
    poll_until(DEADLINE, || async { (entries(&berth).await >= expected_orders).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("orders lost across swaps\n{}", berth.log()));
    poll_until(DEADLINE, || async {
        let items = sim.state.stock(Platform::Shopify, "acme");
        items.iter().all(|i| i.quantity == quantity).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("stock did not reach {quantity} everywhere\n{}", berth.log()));

    // Zero failed calls: no pull or push error anywhere, nothing the platform refused.
    let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
    let pull_errors: u64 = shops.as_array().unwrap().iter().map(|s| s["errors"].as_u64().unwrap()).sum();
    let queue = get_json_as(ERP, berth.url("/v1/stock/queue")).await;
    let push_errors = queue["acme"]["pusher"]["errors"].as_u64().unwrap();
    let stats = sim.state.stats()[&Platform::Shopify].clone();
    eprintln!("{swaps} swaps under load ({quantity} stock submissions, {created} new orders): pull errors {pull_errors}, push errors {push_errors}, platform {stats:?}");
    assert_eq!((pull_errors, push_errors, stats.rejected), (0, 0, 0), "{shops}\n{queue}");

    // The registry kept every version; the audit log has every change with its digest.
    let view = berth_tests::get_json(berth.url("/v1/admin/connectors/shopify")).await;
    assert_eq!(view["versions"].as_array().map(Vec::len), None, "needs a token: {view}");
    let (_, view) = send(reqwest::Method::GET, berth.url("/v1/admin/connectors/shopify"), Some(VIEWER), None).await;
    assert_eq!(view["versions"].as_array().unwrap().len(), 4, "{view}");
    assert_eq!(view["active"]["digest"], after_rollback, "{view}");
    let (_, audit) = send(reqwest::Method::GET, berth.url("/v1/admin/audit?limit=50"), Some(ADMIN), None).await;
    let log: Vec<&Value> = audit["entries"].as_array().unwrap().iter().collect();
    let deploys = log.iter().filter(|e| e["action"] == "deploy" && e["outcome"] == "ok" && e["who"] == "ci").count();
    assert_eq!(deploys, 9, "{audit}");
    let rollback = log.iter().find(|e| e["action"] == "rollback").expect("rollback audited");
    assert_eq!((rollback["who"].as_str(), rollback["digest"].as_str()), (Some("ci"), Some(after_rollback.as_str())));
    assert!(log.iter().all(|e| e["at_ms"].as_i64().unwrap() > 0 && e["target"] == "shopify"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_wrong_tokens_change_nothing() {
    let sim = berth_sim::start(sim_config(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), 1));
    let before = active_digest(&berth).await;
    let good = component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "candidate");

    let cases: Vec<(&str, Option<&str>, &str, Vec<u8>, u16, &str)> = vec![
        ("no token", None, "shopify", good.clone(), 401, "Authorization: Bearer"),
        ("unknown token", Some("not-a-token-at-all-xx"), "shopify", good.clone(), 401, "unknown token"),
        ("viewer", Some(VIEWER), "shopify", good.clone(), 403, "needs one of deployer, admin"),
        ("operator", Some(OPERATOR), "shopify", good.clone(), 403, "needs one of deployer, admin"),
        ("not wasm", Some(DEPLOYER), "shopify", b"#!/bin/sh\necho hi\n".to_vec(), 422, "not a WebAssembly component"),
        // An empty component: valid wasm, but not the connector world.
        ("wrong world", Some(DEPLOYER), "shopify", b"\0asm\x0d\0\x01\0".to_vec(), 422, "does not fit a berth:connector world"),
        ("oversize", Some(DEPLOYER), "shopify", vec![0u8; 1024 * 1024 + 10], 413, "larger than 1048576 bytes"),
        ("other platform", Some(DEPLOYER), "shopify", std::fs::read(plugins::TAOBAO).unwrap(), 422, "its manifest names platform `taobao`, but ops bound connector `shopify` to platform `shopify`"),
        ("unknown connector", Some(DEPLOYER), "jd", good.clone(), 404, "not configured"),
    ];
    for (what, token, connector, bytes, status, message) in cases {
        let (got, body) = deploy(&berth, token, connector, bytes).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body["error"].as_str().unwrap_or_default().contains(message), "{what}: {body}");
    }
    // The token is checked before the query or the body is looked at, and a known caller's
    // bad query or body is refused and audited like any other refusal.
    let maybe = berth.url("/v1/admin/connectors/shopify/versions?activate=maybe");
    let (status, body) = send(reqwest::Method::POST, maybe.clone(), None, Some(good.clone())).await;
    assert_eq!(status, 401, "no token, bad query: the token first: {body}");
    let (status, body) = send(reqwest::Method::POST, maybe, Some(DEPLOYER), Some(good.clone())).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("activate=true|false"), "{body}");
    for bad in [&b"{\"digest\": 7"[..], b"", b"[]"] {
        let (status, body) = send(reqwest::Method::POST, berth.url("/v1/admin/connectors/shopify/canary"), Some(DEPLOYER), Some(bad.to_vec())).await;
        assert_eq!(status, 400, "{body}");
    }
    // Nothing changed: same active version, only the one configured version stored.
    assert_eq!(active_digest(&berth).await, before);
    let (_, view) = send(reqwest::Method::GET, berth.url("/v1/admin/connectors/shopify"), Some(VIEWER), None).await;
    assert_eq!(view["versions"].as_array().unwrap().len(), 1, "{view}");
    let (status, _) = send(reqwest::Method::POST, berth.url("/v1/admin/connectors/shopify/rollback"), Some(DEPLOYER), None).await;
    assert_eq!(status, 409, "nothing to roll back to");
    // Roles: a viewer cannot pause or read the audit log; an operator can pause.
    let (status, _) = send(reqwest::Method::POST, berth.url("/v1/admin/connectors/shopify/pause"), Some(VIEWER), None).await;
    assert_eq!(status, 403);
    let (status, _) = send(reqwest::Method::GET, berth.url("/v1/admin/audit"), Some(DEPLOYER), None).await;
    assert_eq!(status, 403);
    let (status, body) = send(reqwest::Method::POST, berth.url("/v1/admin/connectors/shopify/pause"), Some(OPERATOR), None).await;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    let (status, _) = send(reqwest::Method::POST, berth.url("/v1/admin/connectors/shopify/resume"), Some(OPERATOR), None).await;
    assert_eq!(status, 200);

    // Every attempt is in the audit log, refused ones with why.
    let (_, audit) = send(reqwest::Method::GET, berth.url("/v1/admin/audit"), Some(ADMIN), None).await;
    let outcomes: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["outcome"].as_str().unwrap().to_string()))
        .collect();
    let count = |action: &str, outcome: &str| outcomes.iter().filter(|(a, o)| a == action && o == outcome).count();
    assert_eq!(count("deploy", "unauthorized"), 3, "{audit}");
    assert_eq!(count("deploy", "forbidden"), 2, "{audit}");
    assert_eq!(count("deploy", "refused"), 6, "{audit}");
    assert_eq!(count("canary", "refused"), 3, "bad bodies from a known caller are audited: {audit}");
    assert_eq!((count("rollback", "refused"), count("pause", "forbidden"), count("pause", "ok"), count("resume", "ok")), (1, 1, 1, 1), "{audit}");
    assert!(!audit.to_string().contains(DEPLOYER), "a token reached the audit log");
    assert!(!berth.log().contains(DEPLOYER), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_survives_a_restart_without_recompiling_and_pause_holds_a_shop() {
    let sim = berth_sim::start(sim_config(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim.base_url(), 32);
    let berth = Berth::start(&config);
    poll_until(DEADLINE, || async { (entries(&berth).await >= 40).then_some(()) }).await.expect("initial orders");

    let v2 = component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "v2");
    let file = dir.path().join("shopify-v2.wasm");
    std::fs::write(&file, &v2).unwrap();
    let (code, out, err) = berth_admin(&berth.base_url, DEPLOYER, &["deploy", file.to_str().unwrap(), "--connector", "shopify"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains(&digest_of(&v2)), "{out}");
    let (code, _, err) = berth_admin(&berth.base_url, VIEWER, &["deploy", file.to_str().unwrap(), "--connector", "shopify"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("403") && err.contains("needs one of deployer, admin"), "{err}");

    // Pause one shop: its new order waits while the other shop's comes in; resume brings it.
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["pause", "--shop", "acme"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    poll_until(DEADLINE, || async {
        let shops = get_json_as(ERP, berth.url("/v1/shops")).await;
        shops.as_array()?.iter().any(|s| s["shop"] == "acme" && s["paused"] == true).then_some(())
    })
    .await
    .expect("acme never showed as paused");
    let held = sim.state.create(Platform::Shopify, "acme").unwrap();
    let other = sim.state.create(Platform::Shopify, "zeta").unwrap();
    let has = |id: u64| {
        let berth = &berth;
        async move {
            let orders = get_json_as(ERP, berth.url("/v1/orders?limit=1000")).await;
            orders["orders"].as_array().is_some_and(|o| o.iter().any(|o| o["order"]["order_id"] == id.to_string()))
        }
    };
    poll_until(DEADLINE, || async { has(other.id).await.then_some(()) }).await.expect("the unpaused shop's order");
    // Two more polls of the unpaused shop: the paused one would have been read by now.
    let zeta_pages = || async {
        get_json_as(ERP, berth.url("/v1/shops")).await.as_array().and_then(|a| a.iter().find(|s| s["shop"] == "zeta").and_then(|s| s["windows_completed"].as_u64())).unwrap_or(0)
    };
    let w = zeta_pages().await;
    poll_until(DEADLINE, || async { (zeta_pages().await >= w + 2).then_some(()) }).await.expect("zeta keeps polling");
    assert!(!has(held.id).await, "a paused shop was pulled");
    let (code, _, err) = berth_admin(&berth.base_url, OPERATOR, &["resume", "--shop", "acme"]);
    assert_eq!(code, Some(0), "{err}");
    poll_until(DEADLINE, || async { has(held.id).await.then_some(()) }).await.expect("the order after resume");

    // A restart (SIGKILL) keeps the deployed version, and does not compile it again.
    berth.kill();
    let berth = Berth::start(&config);
    assert_eq!(active_digest(&berth).await, digest_of(&v2));
    poll_until(DEADLINE, || async { berth.log().contains("berth is serving").then_some(()) }).await.expect("serving");
    assert!(!berth.log().contains("component compiled"), "the restart compiled again:\n{}", berth.log());
    let (code, out, err) = berth_admin(&berth.base_url, DEPLOYER, &["rollback", "shopify"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(active_digest(&berth).await, digest_of(&std::fs::read(plugins::SHOPIFY_REST).unwrap()));
}
