//! The shared registry against a real 3-server JetStream cluster: a change made through
//! one node is seen by another within a second; concurrent changes are all kept.

mod common;

use berth_cluster::registry::SharedRegistry;
use common::{connect, NatsCluster};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_one_node_is_seen_on_another_within_a_second() {
    let nats = NatsCluster::start(3, true).await;
    let (a, b) = (SharedRegistry::open(&connect(&nats, "a").await).await.expect("a"), SharedRegistry::open(&connect(&nats, "b").await).await.expect("b"));
    // A component of 3 MB (chunked by the object store), stored once by digest.
    let component: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = a.put_component(&component).await.expect("put");
    assert_eq!(a.put_component(&component).await.expect("put again"), digest);
    assert_eq!(b.component(&digest).await.expect("read on b"), component);
    assert!(b.component("00").await.is_err());

    let mut changes = b.watch().await.expect("watch");
    let started = Instant::now();
    a.update("shopee", |_| Ok::<_, String>(format!("{{\"active\":\"{digest}\"}}").into())).await.expect("write").expect("change");
    let change = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.expect("a change within 5 s").expect("stream open");
    let seen = started.elapsed();
    assert_eq!(change.connector, "shopee");
    assert!(String::from_utf8_lossy(change.value.as_deref().expect("value")).contains(&digest));
    assert!(seen < Duration::from_secs(1), "seen after {seen:?}");
    println!("a deploy on node a seen on node b after {seen:?}");

    // Both nodes change the same connector at once, each from what it read: both kept.
    let append = |field: &'static str| {
        move |current: Option<&[u8]>| -> Result<bytes::Bytes, String> {
            let mut v: serde_json::Value = serde_json::from_slice(current.unwrap_or(b"{}")).map_err(|e| e.to_string())?;
            v[field] = serde_json::Value::Bool(true);
            Ok(serde_json::to_vec(&v).map_err(|e| e.to_string())?.into())
        }
    };
    let (ra, rb) = tokio::join!(a.update("shopee", append("paused")), b.update("shopee", append("canary")));
    ra.expect("a").expect("a's change");
    rb.expect("b").expect("b's change");
    let (_, state) = a.get("shopee").await.expect("read").expect("state");
    let v: serde_json::Value = serde_json::from_slice(&state).expect("json");
    assert_eq!((v["paused"].as_bool(), v["canary"].as_bool(), v["active"].as_str()), (Some(true), Some(true), Some(digest.as_str())));
    // A change that refuses writes nothing.
    let refused = a.update("shopee", |_| Err::<bytes::Bytes, _>("no such version")).await.expect("no nats error");
    assert_eq!(refused.err(), Some("no such version"));
    assert_eq!(a.get("shopee").await.expect("read").expect("state").1, state);
}
