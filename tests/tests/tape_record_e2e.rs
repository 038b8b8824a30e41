//! A running berth records chosen shops' calls to tapes (`[connectors.X.record]`), and
//! the vendor kit replays such a tape: the way a vendor reproduces a production incident.
//! Only the chosen shop is recorded, nothing secret reaches the disk, and the replay of
//! what production did passes the kit's checks without sending anything.

use berth_sim::Platform;
use berth_tests::{component_variant, get_json_as, poll_until, run_berth, Berth};
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(120);
const ERP: &str = "erp-token-tape-00001";
const DEPLOYER: &str = "deployer-token-tape-01";
/// The recorded shop's token: it must never reach the tape.
const ACME_TOKEN: &str = "shpat_acme_7f3c2b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_berth_records_a_shop_and_the_kit_replays_it() {
    let mut cfg = berth_tests::shopify_sim(83, 6, &[("acme", 30), ("other", 10)]);
    cfg.shopify.shops[0].access_token = ACME_TOKEN.into();
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 8\nsettle_secs = 1\n\
             [admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"ci\", token = \"{DEPLOYER}\", role = \"deployer\" }}]\n{}\
             [connectors.shopify.record]\nshops = [\"acme\"]\n\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/acme\", page_size = \"7\" }}\nsecrets = {{ access_token = \"{ACME_TOKEN}\" }}\n\
             [shops.other]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/other\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            base = sim.base_url(),
        ),
    );
    let berth = Berth::start(&config);
    let entries = || async { get_json_as(ERP, berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0) };
    poll_until(DEADLINE, || async { (entries().await >= 40).then_some(()) }).await.unwrap_or_else(|| panic!("orders\n{}", berth.log()));
    let skus: Vec<String> = sim.state.stock(Platform::Shopify, "acme").into_iter().take(3).map(|i| i.sku).collect();
    let updates: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "quantity": 41})).collect();
    let r = berth_tests::client_as(ERP).post(berth.url("/v1/shops/acme/stock")).json(&json!({ "updates": updates })).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    poll_until(DEADLINE, || async {
        sim.state.stock(Platform::Shopify, "acme").iter().filter(|i| skus.contains(&i.sku) && i.quantity == 41).count().eq(&3).then_some(())
    })
    .await
    .expect("the stock reached the platform");

    let tapes = dir.path().join("data/tapes/shopify");
    let acme = tapes.join("acme");
    // The push's line is written off the call path: wait for it.
    let pushed = poll_until(DEADLINE, || async {
        let text = std::fs::read_to_string(acme.join("calls.jsonl")).ok()?;
        text.contains("\"push-inventory\"").then_some(text)
    })
    .await
    .expect("the push is on the tape");
    assert!(!tapes.join("other").exists(), "only the chosen shop is recorded");
    let meta = std::fs::read_to_string(acme.join("meta.json")).unwrap();
    for text in [&pushed, &meta] {
        assert!(!text.contains(ACME_TOKEN), "the shop's token reached the tape");
    }
    assert!(pushed.contains("<secret:access_token>"), "the token is named where it was");
    let lines: Vec<Value> = pushed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["input"]["call"] == "pull-orders" && !l["exchanges"].as_array().unwrap().is_empty()));

    // The kit replays what production did: the shop's windows, pages and push.
    let acme_dir = acme.display().to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_berth(&["plugin", "test", plugins::SHOPIFY_REST, "--tape", &acme_dir], DEADLINE)).await.unwrap();
    eprintln!("{out}");
    assert_eq!(code, Some(0), "{out}\n{err}");
    for name in ["pull-orders", "orders", "push-inventory", "requests", "fault-500", "fault-garbled", "fault-html"] {
        let line = out.lines().find(|l| l.trim_start().starts_with(&format!("PASS  {name} "))).unwrap_or_else(|| panic!("{name} did not pass:\n{out}"));
        assert!(!line.is_empty());
    }
    assert!(out.contains("30 orders exactly once"), "every acme order, as production pulled them:\n{out}");
    assert!(out.contains("3 SKUs, one result each (3 accepted"), "{out}");

    // The same tape as a tape-based shadow run on the running berth: a regressed build
    // falls short and promotion is refused; an identical build matches every field and
    // is promoted with the tape required.
    let admin = |path: &str, body: Option<Vec<u8>>, json: Option<Value>| {
        berth_tests::api_call(reqwest::Method::POST, berth.url(path), Some(DEPLOYER), body, json)
    };
    let tape = berth_core_tape(&acme);
    let stored = |bytes: Vec<u8>| async {
        let (status, body) = admin("/v1/admin/connectors/shopify/versions?activate=false", Some(bytes), None).await;
        assert_eq!(status, 201, "{body}");
        body["version"]["digest"].as_str().unwrap().to_string()
    };
    let regressed = stored(std::fs::read(plugins::REGRESSED).unwrap()).await;
    let (status, r) = admin("/v1/admin/connectors/shopify/shadow/tape", None, Some(json!({"digest": regressed, "tape": tape}))).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["match_percent"].as_f64().unwrap() < 100.0 && r["compared"].as_u64().unwrap() >= 3, "{r}");
    assert!(!r["differences"].as_array().unwrap().is_empty(), "{r}");
    let (status, body) = admin("/v1/admin/connectors/shopify/promote", None, Some(json!({"require_tape": true}))).await;
    assert_eq!(status, 409, "a regressed build is not promoted: {body}");
    assert!(body.to_string().contains("not a complete match on the tape"), "{body}");

    let same = stored(component_variant(&std::fs::read(plugins::SHOPIFY_REST).unwrap(), "same")).await;
    let (status, body) = admin("/v1/admin/connectors/shopify/promote", None, Some(json!({"require_tape": true}))).await;
    assert_eq!(status, 409, "the regressed build is still the one the tape judged: {body}");
    // From the command line, as ops run it: the recorded shop's directory is the tape.
    let cli = |args: Vec<String>| {
        let url = berth.base_url.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            berth_tests::berth_admin(&url, DEPLOYER, &args)
        })
    };
    let (code, out, err) = cli(vec!["shadow".into(), "shopify".into(), same.clone(), "--tape".into(), acme.display().to_string()]).await.unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["match_percent"].as_f64(), Some(100.0), "{r}");
    assert_eq!(r["calls_matching"], r["compared"], "{r}");
    let (code, out, err) = cli(vec!["promote".into(), "shopify".into(), "--require-tape".into()]).await.unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let view = get_json_as(DEPLOYER, berth.url("/v1/admin/connectors/shopify")).await;
    assert_eq!(view["active"]["digest"].as_str(), Some(same.as_str()), "{view}");
    assert_eq!(view["tape_shadow"]["digest"].as_str(), Some(same.as_str()), "{view}");
    // A tape of another platform is refused with the reason.
    let mut other = tape.clone();
    other["platform"] = json!("taobao");
    let (status, body) = admin("/v1/admin/connectors/shopify/shadow/tape", None, Some(json!({"digest": same, "tape": other}))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("recorded on platform `taobao`"), "{body}");
}

/// A recorded shop's directory as one tape (meta.json, then the calls), as `berth
/// shadow --tape` sends it.
fn berth_core_tape(dir: &std::path::Path) -> Value {
    let mut tape: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let calls: Vec<Value> = std::fs::read_to_string(dir.join("calls.jsonl")).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    tape["calls"] = Value::Array(calls);
    tape
}
