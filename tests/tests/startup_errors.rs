//! `berth serve` refuses to start on a bad config or a bad component, says what is wrong
//! and what to do, and exits non-zero instead of half-running.

use berth_tests::run_berth;
use std::path::Path;
use std::time::Duration;

/// Every component build.rs makes must be used here, so none goes untested.
#[deny(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

fn serve(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("berth.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _out, err) = run_berth(&["serve", "--config", path.to_str().unwrap()], Duration::from_secs(120));
    (code, err)
}

fn shop_config(component: &str, settings: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
         [connectors.shopify]\ncomponent = {component:?}\n\
         [shops.acme]\nconnector = \"shopify\"\n{settings}\n"
    )
}

#[test]
fn config_syntax_error_stops_start() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = serve(dir.path(), "[server\nlisten = 1\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not valid") && err.contains("line 1"), "{err}");
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"this is not wasm").unwrap();
    let (code, err) = serve(dir.path(), &shop_config(bogus.to_str().unwrap(), ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("connector `shopify`") && err.contains("is not a WebAssembly component"), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest valid core wasm module: magic + version 1.
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let (code, err) = serve(dir.path(), &shop_config(module.to_str().unwrap(), ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a WebAssembly component"), "{err}");
}

#[test]
fn a_missing_component_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = serve(dir.path(), &shop_config("/nope/shopify.wasm", ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read component /nope/shopify.wasm"), "{err}");
}

#[test]
fn a_fuel_limit_too_small_for_the_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // The connector's own limit, under its section.
    let config = shop_config(plugins::SHOPIFY_REST, "").replace("[shops.acme]", "[connectors.shopify.limits]\nfuel_per_call = 1000\n[shops.acme]");
    let (code, err) = serve(dir.path(), &config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("manifest used up its fuel (1000, fuel_per_call)"), "{err}");
    let too_big = shop_config(plugins::SHOPIFY_REST, "").replace("[shops.acme]", "[connectors.shopify.limits]\nmax_memory_mb = 512\n[shops.acme]");
    let (code, err) = serve(dir.path(), &too_big);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("connectors.shopify.limits: max_memory_mb 512 is above runtime.max_memory_mb (64)"), "{err}");
}

#[test]
fn components_that_cannot_be_served_are_refused_at_start() {
    // One importing an interface the host does not give; one whose manifest panics.
    for (component, why) in [
        (plugins::INTRUDER, "imports `berth-test:intruder/vault`, which berth does not give connectors"),
        (plugins::BROKEN_MANIFEST, "calling manifest() failed: manifest trapped"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err) = serve(dir.path(), &shop_config(component, ""));
        assert_eq!(code, Some(2), "{component}: {err}");
        assert!(err.contains("connector `shopify`") && err.contains(why), "{component}: {err}");
    }
}

#[test]
fn a_missing_shop_secret_is_named() {
    // Every Shopify build (current world, the 0.1.0 fixture, the regressed fixture) loads,
    // and its manifest's required keys are checked before start.
    for component in [plugins::SHOPIFY_REST, plugins::SHOPIFY_WIT_0_1, plugins::REGRESSED] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err) = serve(dir.path(), &shop_config(component, "settings = { base_url = \"https://acme.myshopify.com\" }"));
        assert_eq!(code, Some(2), "{component}: {err}");
        assert!(
            err.contains("shop `acme`: connector `shopify` needs config key `access_token`; add it under [shops.acme.settings] or [shops.acme.secrets]"),
            "{component}: {err}"
        );
    }
    // The GraphQL connector takes a static token or client credentials: only base_url is
    // required before start.
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = serve(dir.path(), &shop_config(plugins::SHOPIFY_GRAPHQL, "settings = { client_id = \"x\" }"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("shop `acme`: connector `shopify` needs config key `base_url`"), "{err}");
}

#[test]
fn the_taobao_connector_loads_and_the_port_in_use_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\
         [connectors.taobao]\ncomponent = {:?}\n\
         [shops.t]\nconnector = \"taobao\"\n\
         settings = {{ gateway = \"https://eco.taobao.com/router/rest\", app_key = \"1\" }}\n\
         secrets = {{ app_secret = \"s\", session = \"x\" }}\n",
        plugins::TAOBAO
    );
    let (code, err) = serve(dir.path(), &config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
    // The connector was loaded and checked before the bind.
    assert!(err.contains("connector loaded") && err.contains("platform=taobao"), "{err}");
}

/// The Python, JavaScript and C connectors load like any other, and their manifests'
/// required config is enforced before anything runs.
#[test]
fn connectors_in_other_languages_name_missing_config() {
    // The hostile fixture's manifest is checked like any other before it can misbehave.
    for (component, platform, missing) in [
        (plugins::SHOPEE_PY, "shopee", "partner_key"),
        (plugins::WOO_JS, "woocommerce", "consumer_key"),
        (plugins::WOO_C, "woocommerce", "consumer_key"),
        // The same connectors built for older worlds.
        (plugins::WOO_C_WIT_0_2, "woocommerce", "consumer_key"),
        (plugins::TAOBAO_WIT_0_3, "taobao", "gateway"),
        (plugins::HOSTILE, "hostile", "mode"),
        // The vendor kit's fixture for a platform the simulator does not model.
        (plugins::SOUK, "souk", "app_key"),
        (plugins::SOUK_WRONG, "souk", "app_key"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
             [connectors.c]\nplatform = \"{platform}\"\ncomponent = {component:?}\n\
             [shops.acme]\nconnector = \"c\"\n\
             settings = {{ base_url = \"https://shop.example\", partner_id = \"1\", shop_id = \"2\" }}\n\
             secrets = {{ access_token = \"t\", consumer_secret = \"s\" }}\n"
        );
        let (code, err) = serve(dir.path(), &config);
        assert_eq!(code, Some(2), "{component}: {err}");
        assert!(err.contains(&format!("connector `c` needs config key `{missing}`")), "{component}: {err}");
    }
}

/// A connector serves the platform ops bind it to (its name by default): a component
/// whose manifest names another platform is refused with the fix; bound as it says, it
/// loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_serves_only_the_platform_ops_named_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
         [connectors.evilmart]\ncomponent = {:?}\n",
        plugins::HOSTILE_TAOBAO
    );
    let (code, err) = serve(dir.path(), &config);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("its manifest names platform `taobao`, but ops bound connector `evilmart` to platform `evilmart`")
            && err.contains("[connectors.evilmart] platform = \"taobao\""),
        "{err}"
    );
    let bound = config.replace("[connectors.evilmart]\n", "[connectors.evilmart]\nplatform = \"taobao\"\n");
    let path = dir.path().join("bound.toml");
    std::fs::write(&path, bound).unwrap();
    let berth = berth_tests::Berth::start(&path);
    let connectors = berth_tests::get_json(berth.url("/v1/connectors")).await;
    assert_eq!(connectors[0]["platform"], "taobao", "{connectors}");
}
