//! The API's listener holds against clients that take connections and never use them,
//! and speaks HTTPS: under `ulimit -n 1024`, 4,000 idle and slow-header connections do
//! not keep `/healthz` or the ERP's lease from being answered; a connection that sends
//! no complete headers is closed after `header_read_timeout_secs`; with `tls_cert` and
//! `tls_key` berth serves HTTPS, serves a renewed certificate without a restart, and the
//! `berth` CLI talks to it with `--ca-file`.

use berth_tests::{api_call, berth_admin, metric_sum, poll_until, run_berth, Berth};
use reqwest::Method;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ERP: &str = "erp-token-edges-00000001";
const ADMIN: &str = "admin-token-edges-000001";
const DEADLINE: Duration = Duration::from_secs(120);

fn tokens() -> String {
    format!("[admin]\ntokens = [{{ name = \"erp\", token = \"{ERP}\", role = \"erp\" }}, {{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}]\n")
}

/// Put `server` lines into the `[server]` table write_config wrote.
fn with_server(path: &Path, server: &str) {
    let text = std::fs::read_to_string(path).unwrap().replacen("data_dir = \"data\"\n", &format!("data_dir = \"data\"\n{server}"), 1);
    std::fs::write(path, text).unwrap();
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `/healthz` answered 200 within 10 s, on a new connection.
async fn healthz(url: &str) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    matches!(client.get(url).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_cannot_take_the_port() {
    const HOLD: usize = 4000;
    assert!(berth_tests::raise_nofile(HOLD as u64 + 512) >= HOLD as u64 + 256, "this test needs {} open files of its own", HOLD + 256);
    let sim = berth_sim::start(berth_tests::shopify_sim(51, 1, &[("acme", 3)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{sync}{tokens}{connectors}[shops.acme]\nconnector = \"shopify\"\nsettings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            sync = berth_tests::QUICK_SYNC,
            tokens = tokens(),
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
            base = sim.base_url(),
        ),
    );
    with_server(&config, "header_read_timeout_secs = 3\n");
    let berth = Berth::start_with_nofile(&config, 1024);
    let addr = berth.base_url.trim_start_matches("http://").to_string();
    let healthz_url = berth.url("/healthz");
    assert!(healthz(&healthz_url).await);

    // 4,000 connections: half send nothing, half start a request and never finish its headers.
    let mut held = Vec::with_capacity(HOLD);
    for i in 0..HOLD {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&addr)).await else { continue };
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\nX-Slow: ").await;
        }
        held.push(s);
        if i % 500 == 499 {
            // While they pile up, berth keeps answering.
            assert!(healthz(&healthz_url).await, "/healthz did not answer with {} connections held", held.len());
        }
    }
    assert!(held.len() >= HOLD * 9 / 10, "only {} of {HOLD} connections were made", held.len());

    // With all of them held: probes and the ERP's lease are answered, again and again.
    for _ in 0..10 {
        assert!(healthz(&healthz_url).await, "/healthz did not answer with {} connections held", held.len());
    }
    let (status, body) = api_call(Method::POST, berth.url("/v1/orders/lease"), Some(ERP), None, Some(serde_json::json!({"max": 10}))).await;
    assert_eq!(status, 200, "{body}");
    assert!(open_fds(berth.pid()) <= 1024);
    let metrics = berth_tests::client_as(ADMIN).get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric_sum(&metrics, "berth_api_connections_closed_total{reason=\"evicted\"}") > 0.0, "{metrics}");
    assert!(metric_sum(&metrics, "berth_api_connections ") <= 512.0, "{metrics}");
    drop(held);

    // Alone, a connection that never completes its headers is closed by berth, and so is
    // a kept-alive one left idle after its answer.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(DEADLINE, slow.read(&mut buf)).await.expect("berth closes a slow-header connection");
    assert!(matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf[..n.unwrap()]).contains("408"), "a slow-header connection was answered");
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\n\r\n").await.unwrap();
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle kept-alive connection was never closed");
    // Once the clients are gone berth's descriptors come back down.
    let settled = poll_until(DEADLINE, || async { (open_fds(berth.pid()) < 300).then_some(()) }).await;
    assert!(settled.is_some(), "berth still holds {} descriptors", open_fds(berth.pid()));
    let metrics = berth_tests::client_as(ADMIN).get(berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric_sum(&metrics, "berth_api_connections_closed_total{reason=\"timeout\"}") >= 1.0, "{metrics}");
}

/// openssl, run in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A server key and certificate for 127.0.0.1, signed by the test CA, named `cn`.
fn server_cert(dir: &Path, name: &str, cn: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let subject = format!("/CN={cn}");
    openssl(dir, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(dir, &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem, "-days", "2", "-extfile", "san.ext"]);
}

/// The subject berth's certificate names, as `openssl s_client` sees it.
fn served_subject(addr: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_renewed_certificate_and_the_cli_trusting_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    openssl(&certs, &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=berth test CA"]);
    server_cert(&certs, "first", "berth-first");
    server_cert(&certs, "renewed", "berth-renewed");
    std::fs::copy(certs.join("first.pem"), certs.join("server.pem")).unwrap();
    std::fs::copy(certs.join("first.key"), certs.join("server.key")).unwrap();

    let config = berth_tests::write_config(dir.path(), &tokens());
    with_server(&config, "tls_cert = \"certs/server.pem\"\ntls_key = \"certs/server.key\"\n");
    let berth = Berth::start(&config);
    assert!(berth.base_url.starts_with("https://127.0.0.1:"), "{}", berth.base_url);
    let addr = berth.base_url.trim_start_matches("https://").to_string();

    // A client trusting the CA gets answers; one that does not, and plain HTTP, do not.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let trusting = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let r = trusting.get(berth.url("/v1/health")).bearer_auth(ERP).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let err = reqwest::Client::new().get(berth.url("/healthz")).send().await.unwrap_err();
    assert!(err.is_connect() || err.to_string().contains("certificate") || format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap().get(format!("http://{addr}/healthz")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200, "plain HTTP must not be served");
    assert!(served_subject(&addr).contains("berth-first"));

    // The CLI with --ca-file (or BERTH_CA_FILE) speaks to it; without, it says it cannot.
    let ca_file = certs.join("ca.pem");
    let (code, out, err) = berth_admin(&berth.base_url, ADMIN, &["connectors", "--ca-file", ca_file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, _, err) = berth_admin(&berth.base_url, ADMIN, &["connectors"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach berth"), "{err}");

    // A renewed certificate, written over the files berth serves, is served without a restart.
    std::fs::copy(certs.join("renewed.key"), certs.join("server.key")).unwrap();
    std::fs::copy(certs.join("renewed.pem"), certs.join("server.pem")).unwrap();
    let renewed = poll_until(DEADLINE, || async { served_subject(&addr).contains("berth-renewed").then_some(()) }).await;
    assert!(renewed.is_some(), "still serving {}", served_subject(&addr));
    let r = trusting.get(berth.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(berth.full_log().contains("TLS certificate reloaded"));

    // A key that is not one stops start-up with what to fix.
    std::fs::write(certs.join("server.key"), "not a key\n").unwrap();
    berth.kill();
    let (code, _, err) = run_berth(&["serve", "--config", config.to_str().unwrap()], Duration::from_secs(120));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("holds no PEM private key") && err.contains("tls_cert and tls_key"), "{err}");
}
