//! Onboarding a shop by OAuth, end to end: the berth binary, the Python Shopee connector
//! (a real 0.4.0 component) and the simulator's Shopee consent page and token endpoint.
//! An admin starts the onboarding with an HTTP client that follows redirects — berth's
//! start, the platform's consent page, berth's callback — and the new shop runs: its
//! orders arrive and its tokens are renewed, with no config edit and no restart. What is
//! asserted is what the platform saw and what berth answers and keeps.

use berth_sim::shopee_auth::ShopeeTokens;
use berth_sim::{Platform, ShopeePartner, ShopeeShop, SimConfig};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const ADMIN: &str = "root-admin-token-0001";
const OPERATOR: &str = "ops-operator-token-01";
const DEADLINE: Duration = Duration::from_secs(180);

fn stats(sim: &berth_sim::SimHandle) -> berth_sim::PlatformStats {
    sim.state.stats().get(&Platform::Shopee).cloned().unwrap_or_default()
}

/// A free loopback port for berth (it must know its own address: the platform sends
/// merchants back there).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(dir: &std::path::Path, port: u16, sim: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("berth.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
         [http]\nallow_private_addresses = true\n\
         [admin]\ntokens = [{{ name = \"root\", token = \"{ADMIN}\", role = \"admin\" }}, {{ name = \"ops\", token = \"{OPERATOR}\", role = \"operator\" }}]\n\
         [sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\n\
         [credentials]\nkey_file = \"credentials.key\"\nrefresh_margin_secs = 1\n{connectors}\
         [connectors.shopee.onboarding]\ntier = \"A\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{sim}/shopee\", partner_id = \"9001\", page_size = \"25\" }}\n\
         secrets = {{ partner_key = \"sp-partner-key\" }}\n\
         [shops.sg]\nconnector = \"shopee\"\npoll_interval_secs = 1\n\
         settings = {{ base_url = \"{sim}/shopee\", partner_id = \"9001\", shop_id = \"880001\", page_size = \"25\" }}\n\
         secrets = {{ partner_key = \"sp-partner-key\", access_token = \"sp-token\", refresh_token = \"refresh-880001-0\" }}\n{extra}",
        connectors = berth_tests::local_connectors(&[("shopee", plugins::SHOPEE_PY)]),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// How many orders of `shop` berth has taken in.
async fn orders_of(berth: &berth_tests::Berth, shop: &str) -> usize {
    let page = berth_tests::get_json_as(ADMIN, berth.url(&format!("/v1/orders?shop={shop}&limit=1000"))).await;
    page["orders"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_authorizes_the_app_and_the_new_shop_runs_without_a_restart() {
    let mut cfg = SimConfig { seed: 23, history_hours: 2, ..SimConfig::default() };
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = vec![
        ShopeeShop { shop_id: 880001, partner_id: 9001, access_token: "sp-token".into(), orders: 5 },
        ShopeeShop { shop_id: 880002, partner_id: 9001, access_token: "never-configured".into(), orders: 20 },
    ];
    cfg.shopee.calls_per_window = 1000;
    cfg.shopee.tokens = Some(ShopeeTokens { access_secs: 4, refresh_secs: 3600, answer_delay_ms: 0 });
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.key"), "6f".repeat(32)).unwrap();
    let port = free_port();
    let path = config(dir.path(), port, &sim.base_url(), "");
    let berth = berth_tests::Berth::start(&path);
    let start = berth.url("/v1/oauth/shopee/start?shop=sg-new");

    // Only an admin starts an onboarding; a forged or replayed callback starts nothing.
    assert_eq!(reqwest::get(&start).await.unwrap().status(), 401);
    assert_eq!(berth_tests::client_as(OPERATOR).get(&start).send().await.unwrap().status(), 403);
    let forged = reqwest::get(berth.url("/v1/oauth/shopee/callback?state=guessed&code=x&shop_id=880002")).await.unwrap();
    assert_eq!(forged.status(), 400);
    assert!(forged.text().await.unwrap().contains("start again"));
    let bad = berth_tests::client_as(ADMIN).get(berth.url("/v1/oauth/shopee/start?shop=Not%20A%20Name")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(stats(&sim).consents, 0);

    // The merchant of shop 880002 is logged in at the platform; the admin's client follows
    // the redirects: berth's start -> the consent page -> berth's callback (the client
    // drops the admin token on leaving berth's origin, so the callback has none).
    sim.state.shopee_login(880002);
    let done = berth_tests::client_as(ADMIN).get(&start).send().await.unwrap();
    assert_eq!(done.status(), 200, "{}", berth.log());
    assert!(done.url().path().ends_with("/v1/oauth/shopee/callback"), "{}", done.url());
    let body: serde_json::Value = done.json().await.unwrap();
    assert_eq!((body["shop"].as_str(), body["authorized"].as_bool(), body["shop_is"].as_str()), (Some("sg-new"), Some(true), Some("started")), "{body}");
    assert!(!body.to_string().contains("access-880002"), "a token in the answer: {body}");
    assert_eq!((stats(&sim).consents, stats(&sim).code_exchanges), (1, 1));

    // The shop runs: every order of 880002 arrives, and its tokens are renewed as they
    // expire, never with a spent refresh token.
    let want = sim.state.orders(Platform::Shopee, "880002").len();
    berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, "sg-new").await >= want).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the onboarded shop's orders never arrived\n{}", berth.log()));
    let issued = sim.state.shopee_token_state(880002).unwrap().refreshes;
    berth_tests::poll_until(DEADLINE, || async { (sim.state.shopee_token_state(880002).unwrap().refreshes > issued).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the onboarded shop's token was never refreshed\n{}", berth.log()));
    let shops = berth_tests::get_json_as(ADMIN, berth.url("/v1/shops")).await;
    let new = shops.as_array().unwrap().iter().find(|s| s["shop"] == "sg-new").unwrap_or_else(|| panic!("{shops}"));
    assert!(new["credentials"]["generation"].as_u64().unwrap() >= 2 && new["credentials"]["authorization_expires_ms"].is_i64(), "{new}");
    assert_eq!(new["tier"], "A", "the template's tier: {new}");

    // A config reload (the file does not name the shop) leaves it running.
    let path = config(dir.path(), port, &sim.base_url(), "# touched\n[platforms.shopee]\nrequests_per_second = 50.0\n");
    let _ = path;
    berth_tests::poll_until(DEADLINE, || async { berth.log().contains("config reloaded").then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the reload never happened\n{}", berth.log()));
    sim.state.create(Platform::Shopee, "880002").unwrap();
    berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, "sg-new").await > want).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("after a reload the onboarded shop stopped\n{}", berth.log()));

    // The merchant revokes the app; authorizing it again (step by step this time) brings
    // the shop back, and the callback works once.
    assert!(sim.state.revoke_shopee(880002));
    berth_tests::poll_until(DEADLINE, || async {
        let shops = berth_tests::get_json_as(ADMIN, berth.url("/v1/shops")).await;
        shops.as_array()?.iter().any(|s| s["shop"] == "sg-new" && s["credentials"]["needs_authorization"].is_string()).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the revocation was never noticed\n{}", berth.log()));
    let step = no_redirects();
    let to_consent = step.get(&start).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(to_consent.status(), 303);
    let consent = to_consent.headers()["location"].to_str().unwrap().to_string();
    assert!(consent.starts_with(&format!("{}/shopee/api/v2/shop/auth_partner?partner_id=9001&", sim.base_url())), "{consent}");
    let back = step.get(&consent).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    let answered = step.get(&callback).send().await.unwrap();
    assert_eq!(answered.status(), 200);
    let body: serde_json::Value = answered.json().await.unwrap();
    assert_eq!(body["shop_is"], "unchanged", "the running shop takes the new credentials: {body}");
    let replay = step.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), 400, "a callback works once");
    let before = orders_of(&berth, "sg-new").await;
    sim.state.create(Platform::Shopee, "880002").unwrap();
    berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, "sg-new").await > before).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("after authorizing again the shop's orders never came\n{}", berth.log()));

    // The onboarded shop survives a restart (SIGKILL: nothing is flushed on the way out).
    berth.kill();
    let berth = berth_tests::Berth::start(&dir.path().join("berth.toml"));
    let before = orders_of(&berth, "sg-new").await;
    sim.state.create(Platform::Shopee, "880002").unwrap();
    berth_tests::poll_until(DEADLINE, || async { (orders_of(&berth, "sg-new").await > before).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("after a restart the onboarded shop did not run\n{}", berth.log()));
    assert_eq!(stats(&sim).spent_refresh_tokens, 0, "{:?}", stats(&sim));

    // Both steps are in the audit log, the callback under the name of the admin who
    // started it.
    let audit = berth_tests::get_json_as(ADMIN, berth.url("/v1/admin/audit")).await.to_string();
    for needle in ["\"oauth-start\"", "\"oauth-callback\"", "shop:sg-new", "\"root\""] {
        assert!(audit.contains(needle), "{needle} not in the audit log: {audit}");
    }

    // Ops see the onboarded shops and can take one away; the config file's are not theirs.
    let listed = berth_tests::get_json_as(ADMIN, berth.url("/v1/oauth/shops")).await;
    assert_eq!(listed["shops"]["sg-new"]["settings"]["shop_id"], "880002", "{listed}");
    let admin = berth_tests::client_as(ADMIN);
    assert_eq!(admin.delete(berth.url("/v1/oauth/shops/sg")).send().await.unwrap().status(), 409);
    assert_eq!(berth_tests::client_as(OPERATOR).delete(berth.url("/v1/oauth/shops/sg-new")).send().await.unwrap().status(), 403);
    assert_eq!(admin.delete(berth.url("/v1/oauth/shops/sg-new")).send().await.unwrap().status(), 200);
    assert_eq!(admin.delete(berth.url("/v1/oauth/shops/sg-new")).send().await.unwrap().status(), 404);
    let shops = berth_tests::get_json_as(ADMIN, berth.url("/v1/shops")).await;
    assert!(shops.as_array().unwrap().iter().all(|s| s["shop"] != "sg-new"), "the removed shop still runs: {shops}");
}
