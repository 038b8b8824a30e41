//! An ERP at work against berth for the tests that kill it: stock posts with rising
//! quantities, order leases and acks, and what berth answered — so a test can check
//! afterwards that nothing acknowledged was lost and nothing acked came back.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An order version: shop, order id, updated time.
pub type Version = (String, String, i64);

pub fn version(l: &Value) -> Version {
    (
        l["shop"].as_str().unwrap_or_default().to_string(),
        l["order"]["order_id"].as_str().unwrap_or_default().to_string(),
        l["order"]["updated_at_ms"].as_i64().unwrap_or_default(),
    )
}

/// What the ERP was told, across the run.
#[derive(Default)]
pub struct ErpLedger {
    pub next_quantity: BTreeMap<(String, String), u32>,
    /// Highest quantity per (shop, SKU) whose POST got a 202.
    pub acked_quantity: BTreeMap<(String, String), u32>,
    /// Order versions whose ack berth confirmed.
    pub acked_orders: BTreeSet<Version>,
    /// Acks whose answer never came (the node was killed or stopped meanwhile).
    pub acks_in_doubt: BTreeSet<Version>,
    pub stock_posts: usize,
    pub leases: usize,
    /// Answers other than 2xx, by status (a node going away answers nothing at all).
    pub refused: BTreeMap<u16, usize>,
}

/// xorshift; the seed is printed so a failure can be replayed.
pub struct Rng(pub u64);
impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The ERP at work against the nodes in `nodes` in turn until `stop`: stock updates for
/// random SKUs of random shops (3 per post, rising quantities), leases of 20 for
/// `visibility_secs`, and acks of about half of what it leased (the rest is left to
/// expire and come back).
pub async fn erp_load(nodes: Arc<Mutex<Vec<String>>>, skus: BTreeMap<String, Vec<String>>, erp: Arc<Mutex<ErpLedger>>, stop: Arc<AtomicBool>, mut rng: Rng, visibility_secs: u64) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let shops: Vec<&String> = skus.keys().collect();
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let base = {
            let nodes = nodes.lock().unwrap();
            turn += 1;
            match nodes.len() {
                0 => None,
                n => Some(nodes[turn % n].clone()),
            }
        };
        let Some(base) = base else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let shop = shops[rng.below(shops.len() as u64) as usize].clone();
        let updates: Vec<(String, u32)> = {
            let mut erp = erp.lock().unwrap();
            let list = &skus[&shop];
            (0..3)
                .map(|_| {
                    let sku = list[rng.below(list.len() as u64) as usize].clone();
                    let q = erp.next_quantity.entry((shop.clone(), sku.clone())).or_insert(0);
                    *q += 1;
                    (sku, *q)
                })
                .collect()
        };
        let body = json!({ "updates": updates.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>() });
        if let Ok(r) = client.post(format!("{base}/v1/shops/{shop}/stock")).json(&body).send().await {
            let mut erp = erp.lock().unwrap();
            if r.status().as_u16() == 202 {
                erp.stock_posts += 1;
                for (sku, q) in updates {
                    let acked = erp.acked_quantity.entry((shop.clone(), sku)).or_insert(0);
                    *acked = (*acked).max(q);
                }
            } else {
                *erp.refused.entry(r.status().as_u16()).or_default() += 1;
            }
        }
        let leased: Option<Value> = async {
            let r = client.post(format!("{base}/v1/orders/lease")).json(&json!({"max": 20, "visibility_secs": visibility_secs})).send().await.ok()?;
            r.json().await.ok()
        }
        .await;
        for l in leased.iter().flat_map(|v| v["leases"].as_array().cloned().unwrap_or_default()) {
            erp.lock().unwrap().leases += 1;
            if rng.below(2) == 0 {
                continue;
            }
            let acked: Option<Value> = async {
                let r = client.post(format!("{base}/v1/orders/ack")).json(&json!({"tokens": [l["token"]]})).send().await.ok()?;
                r.json().await.ok()
            }
            .await;
            match acked {
                Some(a) if a["done"] == 1 => erp.lock().unwrap().acked_orders.insert(version(&l)),
                Some(_) => false,
                None => erp.lock().unwrap().acks_in_doubt.insert(version(&l)),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

