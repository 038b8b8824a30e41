//! SIGKILL at random points while berth renews a shop's tokens, again and again. After
//! every kill the durable state is read with the same key berth seals it with: the
//! refresh token berth holds is the platform's current one, or — when the kill fell
//! between the platform's answer and berth storing it — one the platform spent, and then
//! the next start marks the shop as needing the merchant after exactly one refused
//! attempt (never a silent loop). The test then plays the merchant authorizing again.
//! Kills go on until the platform has answered 50 refreshes (`BERTH_REFRESH_TARGET`); every
//! fifth one lands while the simulator holds a refresh's answer (the refresh took effect,
//! berth has not heard), so the lost-answer path runs every time, not only when a random
//! kill happens to hit its millisecond. `BERTH_CRASH_SEED` replays one run.

use berth_core::credentials::seal::Sealer;
use berth_core::credentials::CredentialBook;
use berth_sim::shopee_auth::ShopeeTokens;
use berth_sim::{Platform, ShopeePartner, ShopeeShop, SimConfig};
use berth_tests::{get_json, poll_until, Berth};
use berth_types::credentials::Credentials;
use berth_types::Secret;
use std::sync::Arc;
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const SHOP_ID: u64 = 880001;
const KEY: [u8; 32] = [0x5e; 32];
const DEADLINE: Duration = Duration::from_secs(120);

fn stats(sim: &berth_sim::SimHandle) -> berth_sim::PlatformStats {
    sim.state.stats().get(&Platform::Shopee).cloned().unwrap_or_default()
}

/// Read (and, with `set`, replace) the shop's credentials on disk while berth is down.
fn with_book<T>(data: &std::path::Path, f: impl FnOnce(&CredentialBook) -> T) -> T {
    let store = berth_storage::Store::open(&data.join("store"), berth_storage::StoreConfig { reserve_bytes: 0, ..Default::default() }).unwrap();
    let book = CredentialBook::open(&store, Arc::new(Sealer::new(&KEY, &[]))).unwrap();
    f(&book)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_refreshes_never_leave_a_silently_burned_refresh_token() {
    let target: u64 = std::env::var("BERTH_REFRESH_TARGET").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("BERTH_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("BERTH_CRASH_SEED={seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    let mut cfg = SimConfig { seed: 5, history_hours: 2, ..SimConfig::default() };
    cfg.shopee.partners = vec![ShopeePartner { partner_id: 9001, partner_key: "sp-partner-key".into() }];
    cfg.shopee.shops = vec![ShopeeShop { shop_id: SHOP_ID, partner_id: 9001, access_token: "sp-token".into(), orders: 20 }];
    cfg.shopee.calls_per_window = 1000;
    cfg.shopee.tokens = Some(ShopeeTokens { access_secs: 2, refresh_secs: 3600, answer_delay_ms: 0 });
    let sim = berth_sim::start(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credentials.key"), hex::encode(KEY)).unwrap();
    let config = berth_tests::write_config(
        dir.path(),
        &format!(
            "[sync]\ninitial_lookback_hours = 3\nsettle_secs = 1\nerror_pause_secs = 1\n\
             [credentials]\nkey_file = \"credentials.key\"\nrefresh_margin_secs = 1\n{}\
             [shops.sg]\nconnector = \"shopee\"\ntier = \"A\"\npoll_interval_secs = 1\n\
             settings = {{ base_url = \"{}/shopee\", partner_id = \"9001\", shop_id = \"{SHOP_ID}\", page_size = \"25\" }}\n\
             secrets = {{ partner_key = \"sp-partner-key\", access_token = \"sp-token\", refresh_token = \"refresh-{SHOP_ID}-0\" }}\n",
            berth_tests::local_connectors(&[("shopee", plugins::SHOPEE_PY)]),
            sim.base_url(),
        ),
    );
    let data = dir.path().join("data");
    let set_answer_delay = |ms: u64| {
        let mut c = sim.state.config.lock().unwrap();
        c.shopee.tokens.as_mut().unwrap().answer_delay_ms = ms;
    };
    let mut lost = 0u64;
    let mut kill = 0u32;
    while stats(&sim).refreshes < target {
        kill += 1;
        assert!(kill <= 200, "200 kills and the platform has answered only {} refreshes", stats(&sim).refreshes);
        let held_answer = kill % 5 == 0;
        set_answer_delay(if held_answer { 30_000 } else { 0 });
        let berth = Berth::start(&config);
        let before = stats(&sim).refreshes;
        poll_until(DEADLINE, || async { (stats(&sim).refreshes > before).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("kill {kill}: no refresh after the start\n{}", berth.log()));
        if !held_answer {
            // Somewhere in the next refresh's path, or between refreshes: after a random
            // number (0 to 5) of further requests at the platform.
            let more = next() % 6;
            let seen = stats(&sim).requests;
            poll_until(DEADLINE, || async { (stats(&sim).requests >= seen + more).then_some(()) })
                .await
                .unwrap_or_else(|| panic!("kill {kill}: berth stopped calling the platform\n{}", berth.log()));
        }
        berth.kill();
        set_answer_delay(0);

        let platform = sim.state.shopee_token_state(SHOP_ID).unwrap();
        let (held, state) = with_book(&data, |b| (b.current("sg").unwrap().0, b.state("sg").unwrap().unwrap()));
        let held_refresh = held.refresh_token.as_ref().map(Secret::expose).unwrap_or_default().to_string();
        if held_refresh == platform.refresh {
            assert!(!held_answer, "kill {kill}: the platform's answer was held back, yet berth has its tokens");
            assert!(state.needs_authorization.is_none(), "kill {kill}: in step with the platform, yet marked: {state:?}");
            continue;
        }
        // The platform rotated and berth never stored the answer: what it holds is spent.
        assert!(sim.state.shopee_refresh_spent(SHOP_ID, &held_refresh), "kill {kill}: berth holds `{held_refresh}`, which the platform never issued");
        lost += 1;
        // The next start finds out once, marks the shop and alerts; it does not loop.
        let spent_before = stats(&sim).spent_refresh_tokens;
        let berth = Berth::start(&config);
        poll_until(DEADLINE, || async {
            let shops = get_json(berth.url("/v1/shops")).await;
            shops[0]["credentials"]["needs_authorization"].as_str().map(str::to_string)
        })
        .await
        .unwrap_or_else(|| panic!("kill {kill}: a lost refresh answer was not marked\n{}", berth.log()));
        berth.kill();
        assert_eq!(stats(&sim).spent_refresh_tokens, spent_before + 1, "kill {kill}: the spent token was tried more than once");
        // The merchant authorizes the app again: berth gets the platform's tokens.
        let fresh = Credentials {
            access_token: Secret::new(platform.access.clone()),
            refresh_token: Some(Secret::new(platform.refresh.clone())),
            access_expires_ms: Some(platform.access_expires_ms),
            refresh_expires_ms: Some(platform.refresh_expires_ms),
            authorization_expires_ms: None,
        };
        let store_set = with_book(&data, |b| {
            let rt = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| rt.block_on(b.set("sg", &fresh)))
        });
        store_set.unwrap();
    }
    // Orders kept flowing through it all.
    let berth = Berth::start(&config);
    sim.state.create(Platform::Shopee, &SHOP_ID.to_string()).unwrap();
    let expected = sim.state.orders(Platform::Shopee, &SHOP_ID.to_string()).len() as u64;
    poll_until(DEADLINE, || async { (get_json(berth.url("/v1/orders/feed")).await["entries"].as_u64()? >= expected).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("orders missing after {kill} kills\n{}", berth.log()));
    let s = stats(&sim);
    assert!(lost >= u64::from(kill / 5), "every held answer is a lost one: {lost} of {kill} kills");
    eprintln!("{kill} kills: {} refreshes at the platform, {lost} answers lost in a kill, {} spent tokens tried, {} calls with an expired token", s.refreshes, s.spent_refresh_tokens, s.expired_token_calls);
    assert_eq!(s.spent_refresh_tokens, lost, "each lost answer costs exactly one refused attempt");
}
