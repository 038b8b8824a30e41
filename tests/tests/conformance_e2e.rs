//! `berth plugin test` and `berth plugin inspect`, run as a vendor runs them: the real
//! binary on the components built from plugins/ in four languages. Every production
//! connector passes the conformance suite against its simulated platform; a broken one
//! fails with the check and the reason.

use berth_tests::{kit_check as check, run_berth};
use sha2::{Digest, Sha256};
use std::time::Duration;

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

const DEADLINE: Duration = Duration::from_secs(300);

fn plugin_test(component: &str, sim: &str) -> (Option<i32>, String, String) {
    run_berth(&["plugin", "test", component, "--sim", sim], DEADLINE)
}

#[test]
fn every_connector_passes_the_conformance_suite() {
    let cases = [
        ("Rust Shopify", plugins::SHOPIFY_REST, "shopify", true),
        ("Rust Shopify GraphQL", plugins::SHOPIFY_GRAPHQL, "shopify", true),
        ("Rust Taobao", plugins::TAOBAO, "taobao", false),
        ("Python Shopee", plugins::SHOPEE_PY, "shopee", true),
        ("JavaScript WooCommerce", plugins::WOO_JS, "woo", true),
        ("C WooCommerce", plugins::WOO_C, "woo", true),
    ];
    for (what, component, sim, webhooks) in cases {
        let (code, out, err) = plugin_test(component, sim);
        assert_eq!(code, Some(0), "{what} failed the suite:\n{out}\n{err}");
        assert!(out.contains("RESULT: PASS"), "{what}:\n{out}");
        for name in ["loads", "manifest", "check", "pull-orders", "throttling", "failures", "push-inventory", "hosts"] {
            let (outcome, detail) = check(&out, name).unwrap_or_else(|| panic!("{what}: no `{name}` check in\n{out}"));
            assert_eq!(outcome, "PASS", "{what}: {name}: {detail}\n{out}");
        }
        let (outcome, detail) = check(&out, "webhooks").expect("a webhooks line");
        assert_eq!(outcome, if webhooks { "PASS" } else { "SKIP" }, "{what}: {detail}");
        if webhooks {
            assert!(detail.contains("tampered body -> auth") && detail.contains("without its signature -> auth"), "{what}: {detail}");
        }
        // The figures say what was checked: every seeded order once, per-SKU results.
        let (_, pulled) = check(&out, "pull-orders").unwrap();
        assert!(pulled.contains("exactly once"), "{what}: {pulled}");
        let (_, pushed) = check(&out, "push-inventory").unwrap();
        assert!(pushed.contains("NO-SUCH-SKU-0 rejected") && pushed.contains("=11 set"), "{what}: {pushed}");
        let (_, throttled) = check(&out, "throttling").unwrap();
        assert!(throttled.contains("rate-limited("), "{what}: {throttled}");
        // The Shopee connector's tokens rotate in the simulator; the Shopify GraphQL
        // connector mints them from client credentials (no rotation to check here).
        let (outcome, detail) = check(&out, "credentials").expect("a credentials line");
        assert_eq!(outcome, if sim == "shopee" { "PASS" } else { "SKIP" }, "{what}: {detail}");
        if sim == "shopee" {
            assert!(detail.contains("spent refresh token -> revoked"), "{what}: {detail}");
        }
        // The connectors built for 0.4.0 that declare `products` list the shop's
        // listings: every SKU once, over several pages, as the platform holds it (every
        // production connector lists).
        let (outcome, detail) = check(&out, "listings").expect("a listings line");
        assert_eq!(outcome, "PASS", "{what}: {detail}");
        assert!(detail.contains("24 SKUs in") && detail.contains("pages of 3 items"), "{what}: {detail}");
        // Only the GraphQL connector sends costed requests and reports the platform's quota.
        let (outcome, detail) = check(&out, "quota").expect("a quota line");
        let graphql = component == plugins::SHOPIFY_GRAPHQL;
        assert_eq!(outcome, if graphql { "PASS" } else { "SKIP" }, "{what}: {detail}");
        if graphql {
            assert!(detail.contains("`graphql`"), "{what}: {detail}");
        }
        eprintln!("{what}:\n{out}");
    }
}

#[test]
fn a_connector_that_breaks_fails_with_the_check_and_the_reason() {
    // Every call of this fixture fails transient: the suite must say which checks and why.
    let (code, out, err) = plugin_test(plugins::REGRESSED, "shopify");
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.contains("RESULT: FAIL"), "{out}");
    let (outcome, detail) = check(&out, "pull-orders").expect("a pull-orders line");
    assert_eq!(outcome, "FAIL", "{out}");
    assert!(detail.contains("transient"), "the reason is missing: {detail}");

    // The Python connector is not a Shopify connector: its manifest and its calls fail.
    let (code, out, _) = plugin_test(plugins::SHOPEE_PY, "shopify");
    assert_eq!(code, Some(1), "{out}");
    let (outcome, detail) = check(&out, "manifest").unwrap();
    assert_eq!(outcome, "FAIL");
    assert!(detail.contains("platform `shopee` is not the simulated `shopify`"), "{detail}");

    // Not a component at all.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
    let (code, out, _) = plugin_test(bogus.to_str().unwrap(), "woo");
    assert_eq!(code, Some(1), "{out}");
    let (outcome, detail) = check(&out, "loads").unwrap();
    assert_eq!(outcome, "FAIL");
    assert!(detail.contains("not a WebAssembly component"), "{detail}");

    // An unknown platform is a usage error, not a report.
    let (code, _, err) = plugin_test(plugins::WOO_C, "amazon");
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown simulator platform `amazon`") && err.contains("shopee"), "{err}");
}

#[test]
fn inspect_prints_manifest_world_imports_and_digest() {
    for (component, platform, language_import, world, rate) in [
        (plugins::SHOPEE_PY, "shopee", "wasi:sockets/tcp", "0.4.0", "480 requests/min, burst 5"),
        (plugins::WOO_JS, "woocommerce", "wasi:random/random", "0.4.0", "300 requests/min, burst 5"),
        (plugins::WOO_C, "woocommerce", "wasi:filesystem/preopens", "0.4.0", "300 requests/min, burst 5"),
        (plugins::WOO_C_WIT_0_2, "woocommerce", "wasi:filesystem/preopens", "0.2.0", "300 requests/min, burst 5"),
        (plugins::TAOBAO_WIT_0_3, "taobao", "berth:connector/http@0.3.0", "0.3.0", "600 requests/min, burst 10"),
        (plugins::SHOPIFY_REST, "shopify", "berth:connector/http@0.4.0", "0.4.0", "120 requests/min, burst 40"),
    ] {
        let (code, out, err) = run_berth(&["plugin", "inspect", component], DEADLINE);
        assert_eq!(code, Some(0), "{out}\n{err}");
        let digest = hex::encode(Sha256::digest(std::fs::read(component).unwrap()));
        assert!(out.contains(&format!("digest     sha256:{digest}")), "{out}");
        assert!(out.contains(&format!("WIT world  berth:connector@{world}")), "{out}");
        assert!(out.contains(&format!("  platform          {platform}\n")), "{out}");
        assert!(out.contains(&format!("  wit-version       {world}")), "{out}");
        // The declared rate, and what the host makes of it.
        let declared = format!("  rate limit        {rate} (each shop's or app key's bucket unless ops set [platforms.{platform}] requests_per_second)\n");
        assert!(out.contains(&declared), "{out}");
        assert!(out.contains(&format!("berth:connector/crypto@{world}")), "{out}");
        assert!(out.contains(language_import), "{component}: {out}");
        for export in ["manifest", "check", "pull-orders", "push-inventory", "handle-webhook"] {
            assert!(out.lines().any(|l| l.trim() == export), "{export} missing: {out}");
        }
        let credentials = ["authorization", "refresh-credentials", "consent-url", "exchange-code"];
        assert_eq!(credentials.iter().all(|e| out.lines().any(|l| l.trim() == *e)), world >= "0.3.0", "0.3.0's exports: {out}");
        assert_eq!(out.lines().any(|l| l.trim() == "listings"), world == "0.4.0", "0.4.0's export: {out}");
        // The berth calls are the exports; componentize-py's own `exports` interface is
        // set apart, and only the Python component has it.
        let exports = out.split("\nexports (").nth(1).unwrap_or_else(|| panic!("{out}"));
        let count: usize = exports.split(')').next().unwrap().parse().unwrap();
        assert_eq!(count, match world { "0.4.0" => 10, "0.3.0" => 9, _ => 5 }, "{component}: {out}");
        let apart = out.contains("also exported, never called by berth (the toolchain's own) (1)\n  exports\n");
        assert_eq!(apart, component == plugins::SHOPEE_PY, "{component}: {out}");
    }
    // The 0.1 build of the Shopify connector says which world it imports.
    let (code, out, _) = run_berth(&["plugin", "inspect", plugins::SHOPIFY_WIT_0_1], DEADLINE);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("WIT world  berth:connector@0.1.0") && out.contains("  wit-version       0.1.0"), "{out}");
    // A file that is not a component: a clear error, exit 2.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("x.wasm");
    std::fs::write(&bogus, b"not wasm").unwrap();
    let (code, _, err) = run_berth(&["plugin", "inspect", bogus.to_str().unwrap()], DEADLINE);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a WebAssembly component"), "{err}");
}
