//! The crates' dependencies point one way (docs/ARCHITECTURE.md): cargo already refuses
//! a cycle, this refuses a dependency on a crate higher up. And `berth serve`'s binary
//! carries neither the vendor kit nor the simulator.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Each workspace package's normal (not dev, not build) dependencies on berth crates.
fn berth_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut all = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|n| n.starts_with("berth-"))
            .map(str::to_string)
            .collect();
        all.insert(p["name"].as_str().expect("name").to_string(), deps);
    }
    all
}

#[test]
fn each_crate_depends_only_on_crates_below_it() {
    let deps = berth_dependencies();
    let below: &[(&str, &[&str])] = &[
        ("berth-types", &[]),
        ("berth-storage", &[]),
        ("berth-cluster", &["berth-types"]),
        ("berth-runtime", &["berth-types"]),
        ("berth-capabilities", &["berth-types", "berth-storage", "berth-cluster", "berth-runtime"]),
        ("berth-core", &["berth-types", "berth-storage", "berth-cluster", "berth-runtime", "berth-capabilities"]),
        ("berth-snapshot", &["berth-types", "berth-storage", "berth-core"]),
        ("berth-ops", &["berth-types", "berth-storage", "berth-cluster", "berth-runtime", "berth-capabilities", "berth-core", "berth-snapshot"]),
        ("berth-api", &["berth-types", "berth-runtime", "berth-capabilities", "berth-core", "berth-snapshot", "berth-ops", "berth-cluster"]),
        ("berth-host", &["berth-types", "berth-storage", "berth-cluster", "berth-runtime", "berth-capabilities", "berth-core", "berth-snapshot", "berth-ops", "berth-api"]),
    ];
    for (krate, allowed) in below {
        let have = deps.get(*krate).unwrap_or_else(|| panic!("{krate} is not in the workspace: {deps:?}"));
        let above: Vec<&String> = have.iter().filter(|d| !allowed.contains(&d.as_str())).collect();
        assert!(above.is_empty(), "{krate} depends on {above:?}, which it must not know (docs/ARCHITECTURE.md)");
    }
    assert!(deps["berth-kit"].contains("berth-sim"), "the kit carries the simulator: {deps:?}");
}

#[test]
fn the_serving_binary_carries_no_simulator() {
    let berth = berth_tests::berth_bin();
    let kit = berth.with_file_name(format!("berth-kit{}", std::env::consts::EXE_SUFFIX));
    let names_sim = |path: &Path| {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes.windows(b"berth_sim".len()).any(|w| w == b"berth_sim")
    };
    assert!(names_sim(&kit), "the kit's binary should name the simulator's code (else this check finds nothing)");
    assert!(!names_sim(&berth), "{} links the simulator", berth.display());
}
