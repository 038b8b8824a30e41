//! `berth check-config`: a valid file passes, an invalid one is refused with the file,
//! the line and what to change, and the exit code says which.

use std::process::Command;

fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn valid_config_passes() {
    let (code, out, _) = check(
        "[connectors.shopify]\ncomponent = \"x.wasm\"\n[shops.acme]\nconnector = \"shopify\"\nsecrets = { access_token = \"shpat_secret_value\" }\n",
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("ok (1 connectors, 1 shops)"), "{out}");
    assert!(!out.contains("shpat_secret_value"));
}

#[test]
fn syntax_error_names_the_line() {
    let (code, _, err) = check("[server]\nlisten = \"127.0.0.1:8080\"\ndata_dir = [\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("berth.toml is not valid"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn bad_values_are_explained() {
    let (code, _, err) = check("[server]\nlisten = \"not an address\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("listen") && err.contains("line 2"), "{err}");

    let (code, _, err) = check("[shops.acme]\nconnector = \"amazon\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("connector `amazon`, which is not defined; add [connectors.amazon]"), "{err}");

    let (code, _, err) = check("[runtime]\ncall_timeout_ms = 0\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("call_timeout_ms"), "{err}");
    // The nightly reconciliation: a time of day, a zone, shops that exist.
    for (section, why) in [
        ("[reconcile]\nat = \"25:00\"\n", "[reconcile] time `25:00` is not HH:MM"),
        ("[reconcile]\nat = \"02:00\"\ntimezone = \"Mars/Olympus\"\n", "IANA zone name"),
        ("[reconcile]\nrepair = true\n", "runs neither at its own time (`at`) nor after a nightly snapshot"),
        ("[snapshots]\nat = \"02:00\"\n[reconcile]\nrepair = true\nafter_snapshot = false\n", "neither `at` nor the run after the snapshot"),
        ("[reconcile]\ntimezone = \"UTC\"\n", "sets timezone but no `at`"),
        ("[reconcile]\nat = \"02:00\"\nshops = [\"ghost\"]\n", "`ghost`, which is not a configured shop"),
        ("[reconcile]\nat = \"02:00\"\nafter_snapshot = true\n", "both `at` and `after_snapshot = true`"),
        ("[reconcile]\nafter_snapshot = true\n", "[snapshots] has no `at`"),
        // Snapshots: the same, and bounds that must hold.
        ("[snapshots]\nat = \"02:00\"\nshops = [\"ghost\"]\n", "[snapshots] shops names `ghost`"),
        ("[snapshots]\nshops = [\"acme\"]\n", "[snapshots] sets tiers or shops but no `at`"),
        ("[snapshots]\nat = \"2am\"\n", "[snapshots] time `2am` is not HH:MM"),
        ("[snapshots]\ntimezone = \"Mars/Olympus\"\n", "IANA zone name"),
        ("[snapshots]\nkeep_days = 0\n", "keep_days must be at least 1"),
        ("[snapshots]\nfallback_after_mins = 0\n", "fallback_after_mins must be at least 1"),
        ("[snapshots]\nkeep = 3\n", "unknown field `keep`"),
    ] {
        let (code, _, err) = check(section);
        assert_eq!(code, Some(2), "{section}");
        assert!(err.contains(why), "{section}: {err}");
    }
}

#[test]
fn missing_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check-config", "--config", "/nonexistent/berth.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read config /nonexistent/berth.toml"), "{err}");
}
