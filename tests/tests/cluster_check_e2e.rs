//! `berth cluster-check` against real nats-server clusters, and the `[cluster]` settings
//! `berth` refuses before it connects.

#[path = "../../crates/berth-cluster/tests/common/mod.rs"]
mod nats;

use berth_tests::{run_berth, write_config};
use nats::NatsCluster;
use std::time::Duration;

fn cluster_section(nats: &NatsCluster, extra: &str) -> String {
    let quote = |v: Vec<String>| v.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    format!("[cluster]\nnats = [{}]\nmonitor = [{}]\nnode = \"berth-1\"\nlease_ttl_secs = 5\n{extra}", quote(nats.urls()), quote(nats.monitors()))
}

async fn berth(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_berth(&args, Duration::from_secs(120))
    })
    .await
    .expect("berth ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_check_passes_a_synced_cluster_and_names_what_a_weaker_one_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strict = NatsCluster::start(3, true).await;
    let config = write_config(dir.path(), &cluster_section(&strict, "")).display().to_string();
    let (code, out, err) = berth(vec!["cluster-check".into(), "--config".into(), config.clone()]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("fit for cluster mode") && out.contains("bucket berth_shops: 3 replica(s)") && out.contains("bucket berth_registry"), "{out}");

    let lax = NatsCluster::start(3, false).await;
    let lax_dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(lax_dir.path(), &cluster_section(&lax, "")).display().to_string();
    let (code, _, err) = berth(vec!["cluster-check".into(), "--config".into(), config]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("acknowledges writes before they are on disk") && err.contains("sync_interval: always"), "{err}");
    let replicated = write_config(lax_dir.path(), &cluster_section(&lax, "durability = \"replicated\"\n")).display().to_string();
    let (code, out, err) = berth(vec!["cluster-check".into(), "--config".into(), replicated]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("durability = \"replicated\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cluster_section_is_refused_before_anything_connects() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (section, needle) in [
        ("[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"b1\"\n", "monitor"),
        ("[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"b1\"\ndurability = \"replicated\"\nreplicas = 2\n", "1, 3 or 5"),
        ("[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"Berth One\"\ndurability = \"replicated\"\n", "not a node name"),
        ("[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nnode = \"b1\"\ndurability = \"sometimes\"\n", "durability"),
    ] {
        let config = write_config(dir.path(), section).display().to_string();
        let (code, _, err) = berth(vec!["check-config".into(), "--config".into(), config]).await;
        assert_eq!(code, Some(2), "{section}: {err}");
        assert!(err.contains(needle), "{section}: {err}");
    }
    // No [cluster] at all: nothing to check, said so.
    let config = write_config(dir.path(), "").display().to_string();
    let (code, _, err) = berth(vec!["cluster-check".into(), "--config".into(), config]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("no [cluster] section"), "{err}");
}
