//! The status dashboard in headless Chromium, read the way a person reads it: the
//! connectors with their versions, the shops with their tier and state, health per
//! tier, the order queue filling, and — without anyone reloading the page — a platform
//! going down (shop down, alert firing), coming back (all clear, the alert resolved in
//! the recent list), and berth itself going away (a banner saying so).

use berth_sim::{Platform, TaobaoShop};
use berth_tests::browser::{Browser, Page};
use berth_tests::{get_json, Berth};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(60);

/// Wait until `what` holds for the page's table `id`; fail with what the page showed.
async fn until_table(page: &mut Page, id: &str, what: &str, ok: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
    let started = std::time::Instant::now();
    loop {
        let rows = page.table(id).await;
        if ok(&rows) {
            return rows;
        }
        assert!(started.elapsed() < DEADLINE, "the dashboard never showed {what}; #{id} shows {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn until_text(page: &mut Page, selector: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        let t = page.text(selector).await;
        if ok(&t) {
            return t;
        }
        assert!(started.elapsed() < DEADLINE, "`{selector}` never showed what was expected; it shows {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn row<'a>(rows: &'a [Vec<String>], first: &str) -> Option<&'a Vec<String>> {
    rows.iter().find(|r| r.first().is_some_and(|c| c == first))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_connectors_shops_queues_and_alerts_update_live() {
    let mut cfg = berth_tests::shopify_sim(21, 2, &[("acme", 8), ("zeta", 5)]);
    cfg.taobao.shops = vec![TaobaoShop { nick: "tmall-a".into(), app_key: "12345678".into(), session: "sess-demo".into(), orders: 6 }];
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let seeded = ["acme", "zeta"].iter().map(|s| sim.state.orders(Platform::Shopify, s).len()).sum::<usize>()
        + sim.state.orders(Platform::Taobao, "tmall-a").len();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            r#"
{sync}[health.A]
probe_secs = 1
[health.C]
probe_secs = 2
[alerts]
evaluate_secs = 1
source = "berth-dashboard-test"
[[alerts.rules]]
name = "shop-down"
kind = "probe-failing"
failures = 2
severity = "critical"
{connectors}
[shops.acme]
connector = "shopify"
tier = "A"
settings = {{ base_url = "{base}/shopify/acme" }}
secrets = {{ access_token = "tok" }}
[shops.zeta]
connector = "shopify"
tier = "C"
settings = {{ base_url = "{base}/shopify/zeta" }}
secrets = {{ access_token = "tok" }}
[shops.tmall-a]
connector = "taobao"
tier = "A"
settings = {{ gateway = "{base}/taobao/router/rest", app_key = "12345678", page_size = "10" }}
secrets = {{ app_secret = "demo_secret", session = "sess-demo" }}
"#,
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST), ("taobao", plugins::TAOBAO)]),
        ),
    );
    let berth = Berth::start(&config);
    let versions = get_json(berth.url("/v1/connectors")).await;
    let version_of = |name: &str| versions.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["version"].as_str().unwrap().to_string();

    let browser = Browser::launch();
    let mut page = browser.open(&berth.url("/dashboard?refresh=1")).await;
    assert_eq!(page.eval("document.title").await, "berth status");

    // Connectors and their versions.
    let connectors = until_table(&mut page, "connectors", "both connectors", |r| r.len() == 2 && row(r, "taobao").is_some()).await;
    let shopify = row(&connectors, "shopify").unwrap();
    assert_eq!(shopify[1], "shopify");
    assert!(shopify[2].starts_with(&version_of("shopify")), "{shopify:?}");
    assert_eq!((shopify[4].as_str(), shopify[7].as_str()), ("2", "running"), "{shopify:?}");
    assert!(row(&connectors, "taobao").unwrap()[2].starts_with(&version_of("taobao")));

    // Every shop probed and up, with its tier; health per connector and tier.
    let shops = until_table(&mut page, "shops", "three shops up", |r| r.len() == 3 && r.iter().all(|s| s[3] == "up")).await;
    let tiers: Vec<(&str, &str, &str)> = shops.iter().map(|s| (s[0].as_str(), s[1].as_str(), s[2].as_str())).collect();
    assert_eq!(tiers, [("acme", "shopify", "A"), ("tmall-a", "taobao", "A"), ("zeta", "shopify", "C")]);
    assert!(shops[0][4].starts_with("ok "), "the last probe: {:?}", shops[0]);
    let tier_rows = page.table("tiers").await;
    let shopify_a = tier_rows.iter().find(|r| r[0] == "shopify" && r[1] == "A").unwrap_or_else(|| panic!("{tier_rows:?}"));
    assert_eq!((shopify_a[2].as_str(), shopify_a[3].as_str(), shopify_a[8].as_str()), ("1", "1", "99.9%"), "{shopify_a:?}");
    assert!(tier_rows.iter().any(|r| r[0] == "shopify" && r[1] == "C" && r[8] == "99%"), "{tier_rows:?}");

    // Orders pulled and waiting for the ERP: the order queue fills to what the platforms hold.
    let queues = until_table(&mut page, "queues", "every order in the queue", |r| row(r, "orders").is_some_and(|q| q[1] == seeded.to_string())).await;
    assert_eq!(row(&queues, "orders").unwrap()[3], "0", "no dead letters");
    assert_eq!(page.text("#overall").await, "all clear");
    assert_eq!(page.table("firing").await, [vec!["nothing firing".to_string()]]);

    // From here the page must update itself: mark this load and check the mark survives.
    page.eval("window.__loadMark = 'first-load'").await;

    // The platforms go down: the shops turn down and the alert shows, critical.
    sim.state.set_channel_down(0, true);
    until_table(&mut page, "shops", "acme down", |r| row(r, "acme").is_some_and(|s| s[3] == "down")).await;
    let overall = until_text(&mut page, "#overall", |t| t.ends_with("firing")).await;
    assert!(overall == "1 alert firing" || overall == "2 alerts firing" || overall == "3 alerts firing", "{overall}");
    assert_eq!(page.eval("getComputedStyle(document.getElementById('overall')).color").await, "rgb(192, 36, 27)", "critical is red");
    let firing = until_table(&mut page, "firing", "acme's alert", |r| r.iter().any(|a| a[1] == "shop-down" && a[2] == "acme")).await;
    let acme = firing.iter().find(|a| a[2] == "acme").unwrap();
    assert_eq!(acme[0], "critical");
    assert!(acme[3].contains("shop acme (shopify, tier A): the last") && acme[3].contains("probes failed"), "{acme:?}");
    let shops = page.table("shops").await;
    let acme_row = row(&shops, "acme").unwrap();
    assert!(acme_row[4].starts_with("transient "), "the failed probe and why: {acme_row:?}");

    // They come back: all clear, and the recent list shows the alert resolved.
    sim.state.set_channel_down(0, false);
    until_text(&mut page, "#overall", |t| t == "all clear").await;
    let recent = until_table(&mut page, "recent", "the resolved alert", |r| r.iter().any(|e| e[1] == "resolved" && e[4] == "acme")).await;
    assert!(recent.iter().any(|e| e[1] == "firing" && e[3] == "shop-down" && e[4] == "acme"), "{recent:?}");
    let shops = until_table(&mut page, "shops", "acme up again", |r| row(r, "acme").is_some_and(|s| s[3] == "up")).await;
    let availability = &row(&shops, "acme").unwrap()[5];
    assert!(availability.ends_with('%') && availability != "100.000%", "acme's outage shows in its availability: {availability}");
    assert_eq!(page.eval("window.__loadMark").await, "first-load", "the page refreshed its data without reloading");

    // berth goes away: the page says so instead of showing stale numbers as current.
    assert!(page.text("#banner").await.is_empty());
    berth.kill();
    let banner = until_text(&mut page, "#banner", |t| !t.is_empty()).await;
    assert!(banner.starts_with("berth is not answering"), "{banner}");
}

/// With tokens configured the page's data needs one: the page asks once, keeps the
/// token for the tab (sessionStorage, never a cookie or the URL) and shows the status
/// with it, refreshing without asking again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_page_asks_once_and_keeps_the_token_for_the_tab() {
    const VIEWER: &str = "viewer-token-dash-0001";
    let sim = berth_sim::start(berth_tests::shopify_sim(22, 1, &[("acme", 2)]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "{sync}[admin]\ntokens = [{{ name = \"watch\", token = \"{VIEWER}\", role = \"viewer\" }}]\n{connectors}\
             [shops.acme]\nconnector = \"shopify\"\nsettings = {{ base_url = \"{base}/shopify/acme\" }}\nsecrets = {{ access_token = \"tok\" }}\n",
            sync = berth_tests::QUICK_SYNC,
            connectors = berth_tests::local_connectors(&[("shopify", plugins::SHOPIFY_REST)]),
        ),
    );
    let berth = Berth::start(&config);
    let (status, _) = berth_tests::api_call(reqwest::Method::GET, berth.url("/v1/status"), None, None, None).await;
    assert_eq!(status, 401, "the page's data needs a token");

    let browser = Browser::launch();
    let (mut page, asked) = browser.open_answering_prompt(&berth.url("/dashboard?refresh=1"), VIEWER).await;
    assert!(asked.contains("needs a token"), "{asked}");
    let connectors = until_table(&mut page, "connectors", "the connector, read with the token", |r| row(r, "shopify").is_some()).await;
    assert_eq!(row(&connectors, "shopify").unwrap()[1], "shopify");
    assert_eq!(page.eval("sessionStorage.getItem('berth-token')").await, VIEWER);
    assert_eq!(page.eval("document.cookie").await, "", "the token is not a cookie");
    // It keeps refreshing with the kept token (a second prompt would block the page and this read).
    let first = until_text(&mut page, "#updated", |t| t.starts_with("updated ")).await;
    until_text(&mut page, "#updated", |t| t.starts_with("updated ") && t != first).await;
    assert!(page.text("#banner").await.is_empty());
}
