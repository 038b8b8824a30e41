//! Every API call outside `/healthz`, `/readyz`, the index, the dashboard's page and
//! platform webhooks needs a token whose role grants it: `erp` for orders and stock,
//! any role for status reads, `operator` for dead letters. Refused calls change nothing,
//! say what was missing, are counted, and (for operator calls) audited; no token reaches
//! the log. berth will not listen open on a non-loopback address by accident.

use berth_tests::{api_call, get_json_as, poll_until, run_berth, Berth};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ERP: &str = "erp-token-auth-000000001";
const VIEWER: &str = "viewer-token-auth-000001";
const OPERATOR: &str = "operator-token-auth-0001";
const ADMIN: &str = "admin-token-auth-0000001";
const DEADLINE: Duration = Duration::from_secs(90);

/// berth.toml with the four tokens and shop acme; `server` goes into `[server]`.
fn config(dir: &std::path::Path, base: &str, server: &str) -> std::path::PathBuf {
    let path = berth_tests::write_config(
        dir,
        &format!(
            "{sync}[admin]\ntokens = [\n\
               {{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }},\n\
               {{ name = \"dash\", token = \"{VIEWER}\", role = \"viewer\" }},\n\
               {{ name = \"oncall\", token = \"{OPERATOR}\", role = \"operator\" }},\n\
               {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }},\n]\n{connectors}\
             [shops.acme]\nconnector = \"shopify\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\", webhook_secret = \"hook-secret\" }}\n",
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    let text = std::fs::read_to_string(&path).unwrap().replacen("data_dir = \"data\"\n", &format!("data_dir = \"data\"\n{server}"), 1);
    std::fs::write(&path, text).unwrap();
    path
}

/// (method, path, JSON body) of every call, by the access it needs.
fn erp_calls() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/v1/orders?limit=10", None),
        (Method::GET, "/v1/orders/feed", None),
        (Method::POST, "/v1/orders/lease", Some(json!({"max": 100, "visibility_secs": 600}))),
        (Method::POST, "/v1/orders/ack", Some(json!({"tokens": []}))),
        (Method::POST, "/v1/orders/nack", Some(json!({"tokens": []}))),
        (Method::POST, "/v1/orders/extend", Some(json!({"tokens": [], "visibility_secs": 60}))),
        (Method::GET, "/v1/shops/acme/stock", None),
        (Method::POST, "/v1/shops/acme/stock", Some(json!({"updates": [{"sku": "AUTH-1", "quantity": 3}]}))),
        (Method::GET, "/v1/shops/acme/stock/AUTH-1", None),
    ]
}

fn operator_calls() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::POST, "/v1/orders/dead-letters/replay", Some(json!({"ids": []}))),
        (Method::POST, "/v1/orders/dead-letters/purge", Some(json!({"ids": []}))),
        (Method::POST, "/v1/shops/acme/stock/dead-letters/replay", Some(json!({"skus": []}))),
        (Method::POST, "/v1/shops/acme/stock/dead-letters/purge", Some(json!({"skus": []}))),
    ]
}

fn read_calls() -> Vec<(Method, &'static str, Option<Value>)> {
    ["/v1/orders/queue", "/v1/shops", "/v1/health", "/v1/alerts", "/v1/status", "/v1/stock/queue", "/v1/connectors", "/v1/platforms", "/metrics"]
        .into_iter()
        .map(|p| (Method::GET, p, None))
        .collect()
}

/// The status and headers of a call, and its body as text.
async fn call(berth: &Berth, method: &Method, path: &str, token: Option<&str>, body: &Option<Value>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().request(method.clone(), berth.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("berth answers");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap_or_default())
}

async fn queue_counts(berth: &Berth) -> (u64, u64) {
    let q = get_json_as(VIEWER, berth.url("/v1/orders/queue")).await;
    (q["ready"].as_u64().unwrap_or(0), q["in_flight"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_token_whose_role_grants_it() {
    let sim = berth_sim::start(berth_tests::shopify_sim(31, 1, &[("acme", 6)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let seeded = sim.state.orders(berth_sim::Platform::Shopify, "acme").len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), ""));
    let reached = poll_until(DEADLINE, || async { (queue_counts(&berth).await.0 == seeded).then_some(()) }).await;
    assert!(reached.is_some(), "the seeded orders never reached the queue: {:?}", queue_counts(&berth).await);

    // Without a token, with an unknown one, or with one whose role does not grant the call:
    // 401 (asking for a bearer token) or 403 saying which roles would do, and nothing happens.
    let mut refused = 0u64;
    let groups = [(erp_calls(), ERP, Some(VIEWER)), (operator_calls(), OPERATOR, Some(ERP)), (read_calls(), VIEWER, None)];
    for (calls, allowed, weaker) in &groups {
        for (method, path, body) in calls {
            for token in [None, Some("not-a-token-anyone-has-1")] {
                let (status, headers, text) = call(&berth, method, path, token, body).await;
                assert_eq!(status, 401, "{method} {path} with {token:?}: {text}");
                assert_eq!(headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{method} {path}");
                refused += 1;
            }
            if let Some(weak) = weaker {
                let (status, _, text) = call(&berth, method, path, Some(weak), body).await;
                assert_eq!(status, 403, "{method} {path} with a weaker role: {text}");
                assert!(text.contains("this call needs one of"), "{text}");
                refused += 1;
            }
        }
        // The role that grants it gets through (and admin everywhere).
        for (method, path, body) in calls {
            for token in [*allowed, ADMIN] {
                let (status, _, text) = call(&berth, method, path, Some(token), body).await;
                assert!(status != 401 && status != 403 && status < 500, "{method} {path} as {token}: {status} {text}");
            }
        }
    }
    // Every role reads status.
    for token in [ERP, VIEWER, OPERATOR, ADMIN] {
        assert_eq!(call(&berth, &Method::GET, "/v1/health", Some(token), &None).await.0, 200);
    }

    // The refused leases and acks changed nothing: the ERP's lease (above) took every order,
    // none was acked, and none vanished.
    let (ready, in_flight) = queue_counts(&berth).await;
    assert_eq!(ready + in_flight, seeded, "nothing acked or lost by refused calls");
    assert_eq!(in_flight, seeded, "the ERP's own lease holds them all");

    // Open without a token: the probes, the index, the dashboard's page, platform webhooks
    // (refused by the connector's signature check, not by berth's tokens).
    for path in ["/healthz", "/readyz", "/", "/dashboard"] {
        assert_eq!(call(&berth, &Method::GET, path, None, &None).await.0, 200, "{path}");
    }
    let (status, headers, text) = call(&berth, &Method::POST, "/v1/webhooks/acme", None, &Some(json!({"id": 1}))).await;
    assert_eq!(status, 401, "an unsigned webhook: {text}");
    assert!(headers.get("www-authenticate").is_none() && !text.contains("Bearer"), "the connector refused it, not the token gate: {text}");

    // Refusals are counted by what they needed, never by who.
    let metrics = berth_tests::client_as(VIEWER).get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let counted = berth_tests::metric_sum(&metrics, "berth_api_refused_total");
    assert!(counted >= refused as f64, "{counted} counted of {refused} refused:\n{metrics}");
    assert!(metrics.contains("berth_api_refused_total{reason=\"forbidden\",access=\"erp\"}"), "{metrics}");

    // Operator calls here are audited, refused attempts too, with no token in the entries.
    let (_, audit) = api_call(Method::GET, berth.url("/v1/admin/audit?limit=1000"), Some(ADMIN), None, None).await;
    let entries = audit["entries"].as_array().unwrap();
    let count = |action: &str, who: &str, outcome: &str| entries.iter().filter(|e| e["action"] == action && e["who"] == who && e["outcome"] == outcome).count();
    assert_eq!(count("order-dead-letters-replay", "oncall", "ok"), 1, "{audit}");
    assert_eq!(count("order-dead-letters-replay", "root", "ok"), 1, "{audit}");
    assert_eq!(count("order-dead-letters-replay", "erp", "forbidden"), 1, "{audit}");
    assert_eq!(count("order-dead-letters-replay", "-", "unauthorized"), 2, "{audit}");
    assert_eq!(count("stock-dead-letters-purge", "oncall", "ok"), 1, "{audit}");
    let (audit_text, log) = (audit.to_string(), berth.full_log());
    for token in [ERP, VIEWER, OPERATOR, ADMIN, "not-a-token-anyone-has-1"] {
        assert!(!audit_text.contains(token) && !log.contains(token), "a token reached the audit log or the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_public_and_nothing_else_with_it() {
    let sim = berth_sim::start(berth_tests::shopify_sim(32, 1, &[("acme", 1)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), "metrics_public = true\n"));
    let (status, _, text) = call(&berth, &Method::GET, "/metrics", None, &None).await;
    assert_eq!(status, 200);
    assert!(text.contains("berth_"), "{text}");
    assert_eq!(call(&berth, &Method::GET, "/v1/status", None, &None).await.0, 401);
    assert_eq!(call(&berth, &Method::POST, "/v1/orders/lease", None, &Some(json!({"max": 1}))).await.0, 401);
}

/// Listening beyond loopback with no token: refused at start unless `insecure` says so,
/// and then warned about.
#[test]
fn no_open_api_beyond_loopback_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, "[server]\nlisten = \"0.0.0.0:0\"\ndata_dir = \"data\"\n").unwrap();
    let (code, _out, err) = run_berth(&["serve", "--config", path.to_str().unwrap()], Duration::from_secs(120));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a loopback address, and no [admin] tokens are configured") && err.contains("insecure = true"), "{err}");

    std::fs::write(&path, "[server]\nlisten = \"0.0.0.0:0\"\ndata_dir = \"data\"\ninsecure = true\n").unwrap();
    let berth = Berth::start(&path);
    let port = berth.base_url.rsplit(':').next().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _) = rt.block_on(api_call(Method::GET, format!("http://127.0.0.1:{port}/v1/orders/queue"), None, None, None));
    assert_eq!(status, 200, "open on purpose");
    let warned = berth.full_log();
    assert!(warned.contains("insecure = true") && warned.contains("WARN"), "{warned}");

    // Open, a JSON body must say so: a web page can post plain text or a form to any
    // address without asking first, but not JSON.
    let lease = format!("http://127.0.0.1:{port}/v1/orders/lease");
    for (label, want) in [(None, 415), (Some("text/plain"), 415), (Some("application/x-www-form-urlencoded"), 415), (Some("application/json"), 200)] {
        let (status, text) = rt.block_on(raw_post(&lease, None, label, r#"{"max": 1}"#));
        assert_eq!(status, want, "{label:?}: {text}");
        if want == 415 {
            assert!(text.contains("Content-Type: application/json"), "{text}");
        }
    }
}

/// POST `body` to `url` labelled `content_type` (none when absent), with `token`.
async fn raw_post(url: &str, token: Option<&str>, content_type: Option<&str>, body: &'static str) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// With a token, a JSON body is read whatever it is labelled (curl -d says it is a form;
/// many clients say nothing), unless it says it is something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_json_body_is_read_without_a_json_label() {
    let sim = berth_sim::start(berth_tests::shopify_sim(33, 1, &[("acme", 1)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &sim.base_url(), ""));
    let url = berth.url("/v1/shops/acme/stock");
    let body = r#"{"updates": [{"sku": "LABEL-1", "quantity": 4}]}"#;
    for label in [None, Some("application/x-www-form-urlencoded"), Some("text/plain; charset=utf-8"), Some("application/json")] {
        let (status, text) = raw_post(&url, Some(ERP), label, body).await;
        assert_eq!(status, 202, "{label:?}: {text}");
    }
    let (status, text) = raw_post(&url, Some(ERP), Some("text/xml"), body).await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("labelled `text/xml`") && text.contains("expected"), "{text}");
    let (status, text) = raw_post(&url, Some(ERP), None, "{\"updates\": 5}").await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(raw_post(&url, None, None, body).await.0, 401, "no token, no reading");
    let (_, stock) = api_call(Method::GET, berth.url("/v1/shops/acme/stock/LABEL-1"), Some(ERP), None, None).await;
    assert_eq!(stock["quantity"], 4, "{stock}");
}
