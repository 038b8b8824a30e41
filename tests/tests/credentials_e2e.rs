//! Credentials that expire, end to end below the service: the Python Shopee connector
//! (a real 0.4.0 component) refreshes through the credential book against the
//! simulator's Shopee, which expires access tokens and spends each refresh token when it
//! hands out the next one. What is asserted is what the platform saw (its refresh and
//! expired-token counts) and what the book holds on disk.

use berth_core::credentials::seal::Sealer;
use berth_core::credentials::{ConnectorRefresher, CredentialBook, CredentialError};
use berth_core::failure::Failure;
use berth_sim::shopee_auth::ShopeeTokens;
use berth_sim::{Platform, ShopeeConfig, SimConfig};
use berth_types::credentials::Credentials;
use berth_types::retry::ErrorKind;
use berth_types::shop::{ShopConfig, Tier};
use berth_types::Secret;
use std::sync::Arc;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const SHOP: &str = "14701711";

struct Setup {
    sim: berth_sim::SimHandle,
    book: Arc<CredentialBook>,
    refresher: Arc<ConnectorRefresher>,
    _host: berth_kit::ScratchHost,
    _store: berth_storage::Store,
    _dir: tempfile::TempDir,
}

/// The simulator with Shopee tokens that live `access_secs`; the Shopee connector in a
/// scratch host; a credential book holding the shop's first tokens.
async fn setup(access_secs: u64) -> Setup {
    let shopee = ShopeeConfig { tokens: Some(ShopeeTokens { access_secs, refresh_secs: 3600, answer_delay_ms: 0 }), calls_per_window: 1000, ..ShopeeConfig::default() };
    let cfg = SimConfig { seed: 7, history_hours: 2, shopee, ..SimConfig::default() };
    let sim = berth_sim::start(cfg.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let host = berth_kit::ScratchHost::new().unwrap();
    host.unlimited("shopee");
    let local = ["127.0.0.1".to_string()];
    let connector = Arc::new(host.runtime.load("shopee", std::path::Path::new(plugins::SHOPEE_PY), &host.options(&local)).await.unwrap());
    let profile = berth_sim::profiles::shop_profile(&cfg, Platform::Shopee, &sim.base_url()).unwrap();
    let config = Arc::new(ShopConfig {
        connector: "shopee".into(),
        tier: Tier::A,
        poll_interval_secs: None,
        settings: profile.settings.iter().cloned().collect(),
        secrets: profile.secrets.iter().map(|(k, v)| (k.clone(), Secret::new(v.clone()))).collect(),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = berth_storage::Store::open(dir.path(), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
    let book = Arc::new(CredentialBook::open(&store, Arc::new(Sealer::new(&[9; 32], &[]))).unwrap());
    let first = Credentials {
        access_token: config.secrets["access_token"].clone(),
        refresh_token: Some(Secret::new(format!("refresh-{SHOP}-0"))),
        access_expires_ms: Some(berth_types::clock::now_ms() + access_secs as i64 * 1000),
        refresh_expires_ms: None,
        authorization_expires_ms: None,
    };
    book.set(SHOP, &first).await.unwrap();
    Setup { sim, book, refresher: Arc::new(ConnectorRefresher { connector, config }), _host: host, _store: store, _dir: dir }
}

fn stats(sim: &berth_sim::SimHandle) -> berth_sim::PlatformStats {
    sim.state.stats().get(&Platform::Shopee).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_at_expiry_make_one_refresh_at_the_platform() {
    let s = setup(3600).await;
    assert!(s.refresher.connector.auth_support().await.unwrap().refreshes, "the Shopee connector refreshes");
    // Fifty callers find the token inside the margin at once.
    let margin = 2 * 3600 * 1000;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (book, refresher) = (s.book.clone(), s.refresher.clone());
        calls.push(tokio::spawn(async move { book.fresh(SHOP, margin, &*refresher).await.map(|(c, g)| (c.access_token.expose().to_string(), g)) }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), (format!("access-{SHOP}-1"), 2));
    }
    assert_eq!(stats(&s.sim).refreshes, 1, "one refresh at the platform for fifty callers");
    assert_eq!(stats(&s.sim).spent_refresh_tokens, 0);
    // The platform and the book agree on the rotated refresh token.
    let platform = s.sim.state.shopee_token_state(SHOP.parse().unwrap()).unwrap();
    let (held, _) = s.book.current(SHOP).unwrap();
    assert_eq!(held.refresh_token.as_ref().map(Secret::expose), Some(platform.refresh.as_str()));
    // The new access token works for a real call.
    let cfg = berth_core::credentials::with_credentials(&s.refresher.config, &held);
    let health = s.refresher.connector.check(SHOP, cfg).await.unwrap();
    assert!(health.is_ok(), "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_once_then_refreshed_and_a_revocation_needs_the_merchant() {
    // Access tokens that are over as soon as they are issued.
    let s = setup(0).await;
    let (creds, generation) = s.book.current(SHOP).unwrap();
    let cfg = berth_core::credentials::with_credentials(&s.refresher.config, &creds);
    let answer = s.refresher.connector.check(SHOP, cfg).await;
    let Err(Failure::Failed { kind: ErrorKind::Auth, why }) = Failure::check(answer) else { panic!("an expired token must be an auth failure") };
    assert!(why.contains("access token expired"), "{why}");
    assert_eq!(stats(&s.sim).expired_token_calls, 1);
    // The refusal refreshes once; a second refusal of the same generation takes the new
    // credentials without another refresh.
    let (new, g2) = s.book.refused(SHOP, generation, &*s.refresher).await.unwrap();
    assert_eq!((new.access_token.expose(), g2), (format!("access-{SHOP}-1").as_str(), generation + 1));
    assert_eq!(s.book.refused(SHOP, generation, &*s.refresher).await.unwrap().1, g2);
    assert_eq!(stats(&s.sim).refreshes, 1);

    // The merchant revoked the app: the next refresh is refused, the shop needs them.
    assert!(s.sim.state.revoke_shopee(SHOP.parse().unwrap()));
    let err = s.book.refused(SHOP, g2, &*s.refresher).await.unwrap_err();
    assert!(matches!(&err, CredentialError::Reauthorize { why, .. } if why.contains("Invalid refresh_token")), "{err}");
    let state = s.book.state(SHOP).unwrap().unwrap();
    assert!(state.needs_authorization.is_some() && state.failures == 1, "{state:?}");
    // No loop: asking again does not reach the platform.
    let rejected = stats(&s.sim).rejected;
    assert!(matches!(s.book.fresh(SHOP, 0, &*s.refresher).await, Err(CredentialError::Reauthorize { .. })));
    assert_eq!(stats(&s.sim).rejected, rejected, "no refresh attempt after the shop was marked");
}

/// The whole service: a Shopee shop whose access tokens live three seconds, for many
/// lifetimes. Every order arrives; each expiry costs at most one call with an expired
/// token; no refresh token is ever used twice; the tokens on disk are sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_renews_a_shops_tokens_through_many_expiries_and_loses_no_order() {
    use berth_sim::{ShopeePartner, ShopeeShop};
    let mut cfg = SimConfig { seed: 11, history_hours: 2, ..SimConfig::default() };
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = vec![ShopeeShop { shop_id: 880001, partner_id: 9001, access_token: "sp-token".into(), orders: 30 }];
    cfg.shopee.calls_per_window = 1000;
    cfg.shopee.tokens = Some(ShopeeTokens { access_secs: 3, refresh_secs: 3600, answer_delay_ms: 0 });
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.key"), "5e".repeat(32)).unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\nerror_pause_secs = 1\n\
             [credentials]\nkey_file = \"credentials.key\"\nrefresh_margin_secs = 1\n{}\
             [shops.sg]\nconnector = \"shopee\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{}/shopee\", partner_id = \"9001\", shop_id = \"880001\", page_size = \"25\" }}\n\
             secrets = {{ partner_key = \"sp-partner-key\", access_token = \"sp-token\", refresh_token = \"refresh-880001-0\" }}\n",
            berth_tests::local_connectors(&[("shopee", plugins::SHOPEE_PY)]),
            sim.base_url(),
        ),
    );
    let berth = berth_tests::Berth::start(&config);
    let deadline = std::time::Duration::from_secs(180);
    let feed = || async { berth_tests::get_json(berth.url("/v1/orders/feed")).await["entries"].as_u64().unwrap_or(0) };
    let mut expected = sim.state.orders(Platform::Shopee, "880001").len() as u64;
    berth_tests::poll_until(deadline, || async { (feed().await >= expected).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the seeded orders never all arrived\n{}", berth.log()));
    // New orders and stock updates keep going through while tokens expire and are
    // renewed, again and again (each three-second token stands for Shopee's four hours).
    let skus: Vec<String> = sim.state.stock(Platform::Shopee, "880001").into_iter().map(|i| i.sku).collect();
    let client = reqwest::Client::new();
    for round in 1..=6u64 {
        let before = stats(&sim).refreshes;
        berth_tests::poll_until(deadline, || async { (stats(&sim).refreshes > before).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("round {round}: no refresh\n{}", berth.log()));
        sim.state.create(Platform::Shopee, "880001").unwrap();
        expected += 1;
        let sku = &skus[round as usize % skus.len()];
        let quantity = 40 + round as u32;
        let queued = berth_tests::post_json(&client, berth.url("/v1/shops/sg/stock"), serde_json::json!({ "updates": [{ "sku": sku, "quantity": quantity }] })).await;
        assert!(queued.to_string().contains("queued"), "round {round}: {queued}");
        berth_tests::poll_until(deadline, || async { (feed().await >= expected).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("round {round}: the new order never arrived\n{}", berth.log()));
        berth_tests::poll_until(deadline, || async {
            sim.state.stock(Platform::Shopee, "880001").iter().any(|i| &i.sku == sku && i.quantity == quantity).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("round {round}: the stock update never reached the platform\n{}", berth.log()));
    }
    let s = stats(&sim);
    eprintln!("simulated Shopee saw: {} refreshes, {} calls with an expired token, {} spent refresh tokens reused, {} calls answered", s.refreshes, s.expired_token_calls, s.spent_refresh_tokens, s.ok);
    assert!(s.refreshes >= 6, "{s:?}");
    assert!(s.expired_token_calls <= s.refreshes, "more calls with an expired token than expiries: {s:?}");
    assert_eq!(s.spent_refresh_tokens, 0, "a refresh token was used twice: {s:?}");
    // GET /v1/shops shows the credentials' state, never a token.
    let shops = berth_tests::get_json(berth.url("/v1/shops")).await;
    let state = &shops[0]["credentials"];
    assert!(state["generation"].as_u64().unwrap() >= 7 && state["can_refresh"] == true && state["needs_authorization"].is_null(), "{shops}");
    assert!(state["access_expires_ms"].as_i64().is_some() && state["last_refresh_ms"].as_i64().is_some(), "{shops}");
    let text = shops.to_string();
    assert!(!text.contains("access-880001") && !text.contains("refresh-880001") && !text.contains("sp-token"), "a token in the answer: {text}");
    // The tokens berth holds are not in its data dir in the clear.
    let platform = sim.state.shopee_token_state(880001).unwrap();
    let mut files = vec![dir.path().join("data")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            // berth's store compacts while it runs: what was listed a moment ago may be gone.
            files.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else if let Ok(bytes) = std::fs::read(&p) {
            assert!(!bytes.windows(platform.refresh.len()).any(|w| w == platform.refresh.as_bytes()), "{} holds the refresh token", p.display());
        }
    }

    // The merchant revokes the app: the next refresh is refused, the shop is marked and
    // the default `credentials` alert fires naming it and what the merchant must do.
    assert!(sim.state.revoke_shopee(880001));
    let alert = berth_tests::poll_until(deadline, || async {
        let alerts = berth_tests::get_json(berth.url("/v1/alerts")).await;
        alerts["firing"].as_array()?.iter().find(|a| a["rule"] == "credentials" && a["subject"] == "sg").cloned()
    })
    .await
    .unwrap_or_else(|| panic!("the credentials alert never fired\n{}", berth.log()));
    assert!(alert["summary"].as_str().unwrap().contains("the merchant must authorize the app again"), "{alert}");
    let shops = berth_tests::get_json(berth.url("/v1/shops")).await;
    assert!(shops[0]["credentials"]["needs_authorization"].is_string(), "{shops}");
    assert_eq!(stats(&sim).spent_refresh_tokens, 0, "{:?}", stats(&sim));
    // The refreshes are counted by outcome (no shop in a label).
    let metrics = reqwest::get(berth.url("/metrics")).await.unwrap().text().await.unwrap();
    let refreshes = |outcome: &str| berth_tests::metric_sum(&metrics, &format!("berth_credential_refreshes_total{{outcome=\"{outcome}\"}}"));
    assert!(refreshes("ok") >= 6.0 && refreshes("revoked") >= 1.0, "{metrics}");

    // A marked shop makes no call with the credentials the platform refused: its pulls
    // fail inside berth, and the platform hears nothing more from it.
    let errors = |shops: &serde_json::Value| shops[0]["errors"].as_u64().unwrap_or(0);
    let first = berth_tests::poll_until(deadline, || async {
        let shops = berth_tests::get_json(berth.url("/v1/shops")).await;
        shops[0]["last_error"].as_str()?.contains("no call is made").then(|| errors(&shops))
    })
    .await
    .unwrap_or_else(|| panic!("the marked shop's pulls never failed inside berth\n{}", berth.log()));
    let heard = stats(&sim).requests;
    berth_tests::poll_until(deadline, || async { (errors(&berth_tests::get_json(berth.url("/v1/shops")).await) >= first + 2).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the marked shop stopped trying\n{}", berth.log()));
    assert_eq!(stats(&sim).requests, heard, "a marked shop still called the platform");
}
