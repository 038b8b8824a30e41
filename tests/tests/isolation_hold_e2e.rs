//! One shop on a shared Taobao app key whose connector says `rate-limited(3600000)` —
//! an hour — after a real answer of the platform, beside two real Taobao shops on that
//! key. The hold is capped at the platform's `max_hold_secs`; it names the shop whose
//! call caused it; the shops on the key show `throttled` (not `up`) in health and on the
//! dashboard's data; the `quota-held` alert fires; an operator releases it with
//! `berth release-hold` (audited) and the real shops' new orders arrive at once, not
//! an hour later. A second shop claims the same with no answer of the platform behind
//! it: that holds nothing shared.

use berth_sim::Platform;
use berth_tests::{api_call, berth_admin, get_json_as, poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(90);
const OPERATOR: &str = "operator-token-hold-0001";
/// The ERP's token: order and stock calls, status reads.
const ERP: &str = "erp-token-isolation-hold-0001";
const ADMIN: &str = "admin-token-hold-00000001";
const MAX_HOLD_SECS: u64 = 300;

fn shop_health(h: &Value, shop: &str) -> Value {
    h["shops"].as_array().and_then(|a| a.iter().find(|s| s["shop"] == shop)).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_long_throttle_is_capped_visible_alerted_and_released() {
    let cfg = berth_tests::taobao_sim(21, 2, &[("t1", 5), ("t2", 5), ("t3", 5)], 1000);
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gateway = format!("{}/taobao/router/rest", sim.base_url());
    let mut text = format!(
        "[sync]\ninitial_lookback_hours = 2\nsettle_secs = 1\n\
         [admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"ops\", token = \"{OPERATOR}\", role = \"operator\" }}, {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n\
         [alerts]\nevaluate_secs = 1\n\
         [[alerts.rules]]\nname = \"quota-held\"\nkind = \"quota-held\"\nabove_secs = 60\n\
         [platforms.taobao]\nrequests_per_second = 20.0\nburst = 5\nquota_key = \"app_key\"\nmax_hold_secs = {MAX_HOLD_SECS}\n\
         {connectors}\
         [connectors.evil]\nplatform = \"taobao\"\ncomponent = {hostile:?}\nextra_hosts = [\"127.0.0.1\"]\n",
        connectors = berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)]),
        hostile = plugins::HOSTILE_TAOBAO,
    );
    let hostile = format!(", mode = \"throttle-once\", target = \"{gateway}\"");
    for (name, connector, extra) in [
        ("t1", "taobao", ""),
        ("t2", "taobao", ""),
        ("h-throttle", "evil", hostile.as_str()),
        ("h-liar", "evil", ", mode = \"throttle-once\""),
    ] {
        let session = if name.starts_with("h-") { "sess-t3".to_string() } else { format!("sess-{name}") };
        text.push_str(&berth_tests::taobao_shop(name, connector, &gateway, &session, extra));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &text);
    let berth = Berth::start(&config);

    // The hold: an hour asked for, max_hold_secs given, and who caused it named.
    let hold = poll_until(DEADLINE, || async {
        let p = get_json_as(ERP, berth.url("/v1/platforms")).await;
        p["taobao"]["held_quotas"].as_array()?.iter().find(|h| h["kind"] == "throttle").cloned()
    })
    .await
    .expect("the throttle holds the app key's quota");
    assert_eq!(hold["key"], "app_key:k", "{hold}");
    assert_eq!(hold["held_ms"], MAX_HOLD_SECS * 1000, "capped at max_hold_secs, not an hour: {hold}");
    assert_eq!((hold["shop"].as_str(), hold["connector"].as_str()), (Some("h-throttle"), Some("evil")), "{hold}");
    assert!(hold["reason"].as_str().unwrap().contains("rate-limited(3600000 ms)"), "{hold}");
    // The claim with no answer of the platform behind it held only its own shop.
    poll_until(DEADLINE, || async { berth.full_log().contains("without an answer from the platform in this call").then_some(()) })
        .await
        .expect("h-liar's claim was seen");
    let holds = get_json_as(ERP, berth.url("/v1/platforms")).await["taobao"]["held_quotas"].clone();
    assert!(holds.as_array().unwrap().iter().all(|h| h["shop"] != "h-liar"), "{holds}");

    // Every shop on the key is `throttled`, naming the shop whose call caused it.
    let health = poll_until(DEADLINE, || async {
        let h = get_json_as(ERP, berth.url("/v1/health")).await;
        (shop_health(&h, "t1")["state"] == "throttled").then_some(h)
    })
    .await
    .expect("t1 shows throttled");
    let t1 = shop_health(&health, "t1");
    assert!(t1["held"].as_str().unwrap().contains("after a call of shop `h-throttle`"), "{t1}");
    let status = get_json_as(ERP, berth.url("/v1/status")).await;
    let row = status["shops"].as_array().unwrap().iter().find(|s| s["shop"] == "t2").unwrap().clone();
    assert_eq!(row["state"], "throttled", "the dashboard's data: {row}");
    // The alert names the quota and the shop.
    let alert = poll_until(DEADLINE, || async {
        let a = get_json_as(ERP, berth.url("/v1/alerts")).await;
        a["firing"].as_array()?.iter().find(|f| f["rule"] == "quota-held").cloned()
    })
    .await
    .expect("the quota-held alert fires");
    assert_eq!(alert["subject"], "taobao:app_key:k");
    assert!(alert["summary"].as_str().unwrap().contains("after a call of shop h-throttle (evil)"), "{alert}");

    // While held, no call of the key reaches the platform.
    let before = sim.state.stats()[&Platform::Taobao].requests;
    let held = get_json_as(ERP, berth.url("/v1/platforms")).await["taobao"]["held_quotas"].clone();
    let left = held.as_array().unwrap().iter().find(|h| h["kind"] == "throttle").unwrap()["remaining_ms"].as_u64().unwrap();
    assert!(left > 200_000, "the test needs the hold to have most of its time left: {held}");
    sim.state.create(Platform::Taobao, "t1").unwrap();
    let t1_orders = || async { get_json_as(ERP, berth.url("/v1/orders?limit=1000&shop=t1")).await["orders"].as_array().map_or(0, Vec::len) };
    let seeded = t1_orders().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.state.stats()[&Platform::Taobao].requests, before, "a call of the held key reached the platform");

    // A viewer cannot release it; an operator can, by the CLI.
    let (code, body) = api_call(reqwest::Method::POST, berth.url("/v1/admin/platforms/taobao/holds/app_key:k/release"), None, None, None).await;
    assert_eq!(code, 401, "{body}");
    let (code, out, err) = berth_admin(&berth.base_url, OPERATOR, &["release-hold", "taobao", "app_key:k"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"shop\": \"h-throttle\""), "the answer shows the hold ended: {out}");
    let held = get_json_as(ERP, berth.url("/v1/platforms")).await["taobao"]["held_quotas"].clone();
    assert!(held.as_array().unwrap().iter().all(|h| h["kind"] != "throttle"), "released: {held}");
    // Calls go on at once: the new order arrives well within the hold it would have waited.
    poll_until(Duration::from_secs(60), || async { (t1_orders().await > seeded).then_some(()) })
        .await
        .expect("t1's new order after the release");
    assert!(berth_tests::stock_reaches(&sim, &berth, Some(ERP), Platform::Taobao, "t2", 43, Duration::from_secs(60)).await, "t2's stock after the release");
    let again = poll_until(DEADLINE, || async {
        let h = get_json_as(ERP, berth.url("/v1/health")).await;
        (shop_health(&h, "t1")["state"] != "throttled").then_some(())
    })
    .await;
    assert!(again.is_some(), "t1 is no longer throttled");
    let (code, again_out, _) = berth_admin(&berth.base_url, OPERATOR, &["release-hold", "taobao", "app_key:k"]);
    assert_eq!(code, Some(1), "nothing left to release: {again_out}");
    // Audited: who released which hold.
    let (_, audit) = api_call(reqwest::Method::GET, berth.url("/v1/admin/audit"), Some(ADMIN), None, None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "release-hold" && e["who"] == "ops" && e["outcome"] == "ok" && e["target"] == "hold:taobao/app_key:k"),
        "{audit}"
    );
    assert!(entries.iter().any(|e| e["action"] == "release-hold" && e["outcome"] == "unauthorized"), "the refused attempt is audited too: {audit}");
}
