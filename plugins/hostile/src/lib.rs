//! A connector that misbehaves on purpose, for the containment tests. Its shop setting
//! `mode` says how, in every export but `manifest` (which must load):
//! - `loop`: spins forever (the call deadline must stop it);
//! - `memory`: allocates until it cannot (the memory cap);
//! - `recursion`: recurses without end (the stack);
//! - `giant`: returns far more orders, and bytes, than a page may hold;
//! - `long-id`: returns an order whose id is longer than the host keeps;
//! - `log-flood`: logs and prints a megabyte, then answers normally;
//! - `kv-fill`: writes new state keys until the host refuses (one call's write budget,
//!   then the shop's quota), and reports the refusal;
//! - `panic`: panics;
//! - `leak`: logs, prints, reports in a metric and returns in its error the shop's
//!   secret `api_secret`;
//! - `egress`: requests the shop setting `target` (a host it was not granted, a private
//!   or metadata address, a name resolving to one) and reports what the host answered;
//! - anything else: behaves (an empty page).

use berth_sdk::{host, Capability, Connector, ConnectorError, Event, Health, Manifest, Order, OrderLine, OrderPage, OrderStatus, PullRequest, RateLimit, StockUpdate, UpdateResult, WebhookRequest};

struct Hostile;

fn mode() -> String {
    host::config("mode").unwrap_or_default()
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: &mut [u64; 64]) -> u64 {
    pad[(depth % 64) as usize] = depth;
    recurse(depth + 1, pad) + pad[((depth + 7) % 64) as usize]
}

fn giant_page() -> OrderPage {
    let raw = "x".repeat(1_000);
    let orders = (0..2000)
        .map(|i| Order {
            order_id: format!("G-{i}"),
            status: OrderStatus::Paid,
            platform_status: "paid".into(),
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_000,
            currency: "USD".into(),
            total_minor: 100,
            lines: vec![OrderLine { line_id: "1".into(), sku: "S".into(), title: "t".into(), quantity: 1, unit_price_minor: 100 }],
            buyer_name_masked: String::new(),
            buyer_phone_masked: String::new(),
            raw_json: raw.clone(),
        })
        .collect();
    OrderPage { orders, next_page_cursor: None }
}

/// Misbehave as the mode says; `Ok(())` when the mode lets the export answer.
fn misbehave() -> Result<(), ConnectorError> {
    match mode().as_str() {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xAB; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recursion" => {
            let mut pad = [0u64; 64];
            let n = recurse(0, &mut pad);
            Err(ConnectorError::Permanent(format!("unreachable {n}")))
        }
        "log-flood" => {
            let line = "flood ".repeat(170);
            for i in 0..1000 {
                host::info(&format!("{i} {line}"));
                println!("{i} {line}");
            }
            Ok(())
        }
        "panic" => panic!("hostile connector panics on purpose"),
        "kv-fill" => {
            let chunk = vec![0x5A; 64 * 1024];
            let call = berth_sdk::time::now_ms();
            for i in 0..1_000_000u32 {
                host::state::set(&format!("fill-{call}-{i}"), &chunk)?;
            }
            Err(ConnectorError::Permanent("the host let a million 64 KiB values in".into()))
        }
        "leak" => {
            let secret = host::config("api_secret").unwrap_or_default();
            host::warn(&format!("my secret is {secret}"));
            println!("stdout secret {secret}");
            host::counter_add("leaks", &[("key", &secret)], 1);
            Err(ConnectorError::Auth(format!("the platform refused secret {secret}")))
        }
        "egress" => {
            let target = host::config("target").unwrap_or_default();
            let resp = host::get(&target, &[])?;
            Err(ConnectorError::Permanent(format!("reached {target}: HTTP {}", resp.status)))
        }
        _ => Ok(()),
    }
}

impl Connector for Hostile {
    fn manifest() -> Manifest {
        Manifest {
            platform: "hostile".into(),
            connector_version: "6.6.6".into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory, Capability::Webhooks],
            allowed_hosts: vec!["api.hostile.invalid".into()],
            default_rate_limit: RateLimit { requests_per_minute: 60, burst: 1 },
            max_window_ms: None,
            required_config: vec!["mode".into()],
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        misbehave()?;
        Ok(Health { ok: true, message: "fine".into() })
    }

    fn pull_orders(_shop: String, _req: PullRequest) -> Result<OrderPage, ConnectorError> {
        match mode().as_str() {
            "giant" => return Ok(giant_page()),
            "long-id" => {
                let mut page = giant_page();
                page.orders.truncate(1);
                page.orders[0].order_id = "L".repeat(10_000);
                return Ok(page);
            }
            _ => {}
        }
        misbehave()?;
        Ok(OrderPage { orders: Vec::new(), next_page_cursor: None })
    }

    fn push_inventory(_shop: String, updates: Vec<StockUpdate>) -> Result<Vec<UpdateResult>, ConnectorError> {
        misbehave()?;
        Ok(updates.into_iter().map(|u| UpdateResult { sku: u.sku, accepted: true, message: None }).collect())
    }

    fn handle_webhook(_shop: String, _req: WebhookRequest) -> Result<Vec<Event>, ConnectorError> {
        misbehave()?;
        Ok(Vec::new())
    }
}

berth_sdk::export_connector!(Hostile);
