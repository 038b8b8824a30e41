//! A shop's access token travels in the query string (as Shopee's, Lazada's and many
//! others' do), and its requests fail every way a request can: connection refused, a
//! timeout, a TLS handshake with something that is not TLS, a 5xx that echoes the
//! request. The token reaches nothing berth writes: not its log, its metrics, its API
//! answers, its audit log, nor any file in its data directory.

use berth_tests::{get_json_as, poll_until, Berth};
use serde_json::Value;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "admin-token-secrets-0001";
const TOKEN: &str = "qtok-7f3a9c1e5b2d4e6f8a0b";

/// A server that accepts connections and never answers.
async fn silent() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    port
}

/// A server answering every request with `status` and the request's URI (query included)
/// in its body, as some platforms' error pages do.
async fn echoing(status: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        (axum::http::StatusCode::from_u16(status).unwrap(), format!("{{\"error\":\"internal\",\"request\":\"{uri}\"}}"))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn files_holding(dir: &std::path::Path, needle: &[u8], found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_holding(&path, needle, found);
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_query_reaches_nothing_berth_writes_whatever_the_failure() {
    let refused_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (silent_port, plain_port, failing_port) = (silent().await, echoing(200).await, echoing(500).await);
    let url = |scheme: &str, port: u16| format!("{scheme}://127.0.0.1:{port}/api/v2/order/get_order_list?partner_id=1&access_token={TOKEN}&shop_id=7");
    let shops = [
        ("h-refused", url("http", refused_port), "connection failed"),
        ("h-timeout", url("http", silent_port), "timed out calling http://127.0.0.1"),
        ("h-tls", url("https", plain_port), "connection failed"),
        ("h-5xx", url("http", failing_port), "HTTP 500"),
    ];
    let mut rest = format!(
        "[admin]\ntokens = [{{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n\
         [connectors.hostile]\ncomponent = {:?}\nextra_hosts = [\"127.0.0.1\"]\n[connectors.hostile.limits]\nbreaker = false\n",
        plugins::HOSTILE
    );
    for (name, target, _) in &shops {
        rest += &berth_tests::hostile_shop(name, &format!("mode = \"egress\", target = \"{target}\""));
        rest += &format!("secrets = {{ access_token = \"{TOKEN}\" }}\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(dir.path(), &rest);
    let text = std::fs::read_to_string(&config).unwrap().replacen("allow_private_addresses = true\n", "allow_private_addresses = true\ntimeout_ms = 1500\n", 1);
    std::fs::write(&config, text).unwrap();
    let berth = Berth::start(&config);

    // Every shop failed the way it was meant to, and says so.
    let failed = poll_until(Duration::from_secs(90), || async {
        let status = get_json_as(ADMIN, berth.url("/v1/shops")).await;
        let errors: Vec<String> = shops
            .iter()
            .map(|(name, _, _)| {
                status.as_array().and_then(|a| a.iter().find(|s| s["shop"] == *name)).and_then(|s| s["last_error"].as_str()).unwrap_or_default().to_string()
            })
            .collect();
        shops.iter().zip(&errors).all(|((_, _, want), got)| got.contains(want)).then_some(errors)
    })
    .await;
    let shown = get_json_as(ADMIN, berth.url("/v1/shops")).await;
    let errors = failed.unwrap_or_else(|| panic!("not every shop failed as expected: {shown}"));
    assert!(errors[1].contains("/api/v2/order/get_order_list") && !errors[1].contains('?'), "the timeout names the path, not the query: {}", errors[1]);

    // Everything berth wrote or answers: no token.
    let mut seen: Vec<(String, String)> = Vec::new();
    for path in ["/v1/shops", "/v1/health", "/v1/status", "/v1/alerts", "/v1/connectors", "/v1/platforms", "/v1/orders/queue", "/v1/admin/audit"] {
        seen.push((path.to_string(), get_json_as(ADMIN, berth.url(path)).await.to_string()));
    }
    let metrics = berth_tests::client_as(ADMIN).get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    seen.push(("/metrics".into(), metrics));
    let log = berth.full_log();
    seen.push(("the log".into(), log.clone()));
    for (what, text) in &seen {
        assert!(!text.contains(TOKEN), "the token reached {what}: {text}");
    }
    // berth's own lines about the failed requests name the URL without its query.
    let request_lines: Vec<&str> = log.lines().filter(|l| l.contains("http request failed")).collect();
    assert!(!request_lines.is_empty(), "the failed requests are logged");
    for line in &request_lines {
        let url = line.split("url=").nth(1).unwrap_or_default().split(' ').next().unwrap_or_default();
        assert!(url.starts_with("http") && !url.contains('?'), "{line}");
    }
    let shops_json: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert!(shops_json.to_string().contains("<secret:access_token>"), "the 5xx's echo is shown with the token replaced: {shops_json}");
    // Nor any file in the data directory (the store, the audit log, the compile cache).
    berth.kill();
    let mut found = Vec::new();
    files_holding(&dir.path().join("data"), TOKEN.as_bytes(), &mut found);
    assert!(found.is_empty(), "the token was written to {found:?}");
}
