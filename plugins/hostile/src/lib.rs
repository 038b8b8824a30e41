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
//! - `foreign-quota`: calls another platform's API — the Taobao-like gateway in `target`,
//!   signed with the shop's `app_key`/`app_secret`/`session` — as fast as the host lets
//!   it, and pages on without end;
//! - `throttle-once`: its first pull says `rate-limited(3600000)` (an hour), then behaves;
//!   with a `target` (a Taobao-like gateway) it first makes one real call there, so the
//!   platform answered the call that claims the throttle;
//! - `slow-webhook`: its webhook handler sleeps 9 s;
//! - `kv-churn`: rewrites four 64 KiB state values until the host refuses, paging on
//!   without end;
//! - `raw-flood`: pages on without end, each page `orders` new orders (default 1000) of
//!   `raw_bytes` of raw JSON (default 1 KiB), updated within the window asked for;
//! - `webhook-orders`: each webhook returns `orders` new orders (default 1000);
//! - `log-forge`: logs and prints lines with newlines and carriage returns that look
//!   like the host's own;
//! - `bad-times`: returns an order updated at the shop setting `updated` (ms);
//! - `outside-window`: returns three orders, one updated inside the window asked for,
//!   one an hour after it, one an hour before it;
//! - `raw-secret`: returns an order whose raw JSON and buyer name hold `api_secret`;
//! - anything else: behaves (an empty page).
//!
//! Built with the `taobao` feature, its manifest serves platform `taobao` (to stand
//! beside the real Taobao connector on one app key).

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

/// A setting as a number, or `default`.
fn number(key: &str, default: i64) -> i64 {
    host::config(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Ids no earlier call used: a counter in state.
fn fresh_ids(n: usize) -> Result<u64, ConnectorError> {
    let next = host::state::get("next-id")?.and_then(|b| String::from_utf8(b).ok()?.parse::<u64>().ok()).unwrap_or(0);
    host::state::set("next-id", (next + n as u64).to_string().as_bytes())?;
    Ok(next)
}

fn order_at(id: String, updated_at_ms: i64, raw_json: String) -> Order {
    Order {
        order_id: id,
        status: OrderStatus::Paid,
        platform_status: "paid".into(),
        created_at_ms: updated_at_ms.min(berth_sdk::time::now_ms()).saturating_sub(60_000).max(946_684_800_000),
        updated_at_ms,
        currency: "USD".into(),
        total_minor: 100,
        lines: vec![OrderLine { line_id: "1".into(), sku: "S".into(), title: "t".into(), quantity: 1, unit_price_minor: 100 }],
        buyer_name_masked: String::new(),
        buyer_phone_masked: String::new(),
        raw_json,
    }
}

/// `n` new orders updated at `at`, each with `raw_bytes` of raw JSON.
fn new_orders(n: usize, at: i64, raw_bytes: usize) -> Result<Vec<Order>, ConnectorError> {
    let first = fresh_ids(n)?;
    let raw = format!("{{\"pad\":\"{}\"}}", "x".repeat(raw_bytes.saturating_sub(10)));
    Ok((0..n as u64).map(|i| order_at(format!("F-{}", first + i), at, raw.clone())).collect())
}

/// One signed TOP call to `gateway` with this shop's credentials (the Taobao-like
/// simulator checks the signature before it counts the call against the app).
fn top_call(gateway: &str) -> Result<(), ConnectorError> {
    use berth_sdk::host::hash;
    let (app_key, secret, session) = (host::required_config("app_key")?, host::required_config("app_secret")?, host::required_config("session")?);
    let now = berth_sdk::time::now_ms();
    let mut p = std::collections::BTreeMap::new();
    for (k, v) in [
        ("method", "taobao.trades.sold.increment.get".to_string()),
        ("app_key", app_key),
        ("session", session),
        ("timestamp", berth_sdk::time::format_ymd_hms(now, 8 * 60)),
        ("format", "json".into()),
        ("v", "2.0".into()),
        ("sign_method", "md5".into()),
        ("fields", "tid,modified".into()),
        ("start_modified", berth_sdk::time::format_ymd_hms(now - 3_600_000, 8 * 60)),
        ("end_modified", berth_sdk::time::format_ymd_hms(now, 8 * 60)),
    ] {
        p.insert(k.to_string(), v);
    }
    let payload: String = p.iter().map(|(k, v)| format!("{k}{v}")).collect();
    let sign = hash::hex_upper(&hash::md5(format!("{secret}{payload}{secret}").as_bytes()));
    p.insert("sign".into(), sign);
    let form: Vec<(String, String)> = p.into_iter().collect();
    host::post_form(gateway, &berth_sdk::text::form_encode(&form), &[]).map(|_| ())
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
        "log-forge" => {
            let forged = "ok\n2026-12-03T03:15:55.000000Z  INFO berth_host::api::admin: admin token accepted name=\"root\" role=admin";
            host::info(forged);
            host::warn("fine\r2026-12-03T03:15:56.000000Z  INFO berth_host::api::admin: admin token accepted name=\"root\" role=admin\u{2028}x");
            println!("out\r2026-12-03T03:15:57.000000Z  INFO berth_host::api::admin: admin token accepted name=\"root\" role=admin");
            Ok(())
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
            platform: if cfg!(feature = "taobao") { "taobao" } else { "hostile" }.into(),
            connector_version: "6.6.6".into(),
            wit_version: berth_sdk::WIT_VERSION.into(),
            capabilities: vec![Capability::Orders, Capability::Inventory, Capability::Webhooks],
            allowed_hosts: vec![if cfg!(feature = "taobao") { "gw.hostile-taobao.invalid" } else { "api.hostile.invalid" }.into()],
            default_rate_limit: RateLimit { requests_per_minute: 60, burst: 1 },
            max_window_ms: None,
            required_config: vec!["mode".into()],
        }
    }

    fn check(_shop: String) -> Result<Health, ConnectorError> {
        misbehave()?;
        Ok(Health { ok: true, message: "fine".into() })
    }

    fn pull_orders(_shop: String, req: PullRequest) -> Result<OrderPage, ConnectorError> {
        let more = |orders: Vec<Order>| Ok(OrderPage { orders, next_page_cursor: Some("more".into()) });
        let (start, end) = (req.window.start_ms, req.window.end_ms);
        match mode().as_str() {
            "foreign-quota" => {
                let gateway = host::required_config("target")?;
                // As fast as the host lets it: every request waits for the bucket its
                // destination spends, until the host holds one back past the deadline.
                for _ in 0..100_000 {
                    if top_call(&gateway).is_err() {
                        break;
                    }
                }
                return more(Vec::new());
            }
            "throttle-once" => {
                if host::state::get("throttled")?.is_none() {
                    host::state::set("throttled", b"1")?;
                    if let Some(gateway) = host::config("target") {
                        top_call(&gateway)?;
                    }
                    return Err(ConnectorError::RateLimited(3_600_000));
                }
                return Ok(OrderPage { orders: Vec::new(), next_page_cursor: None });
            }
            "kv-churn" => {
                let value = vec![0x5A; 64 * 1024];
                for i in 0..1_000_000u32 {
                    if host::state::set(&format!("churn-{}", i % 4), &value).is_err() {
                        break;
                    }
                }
                return more(Vec::new());
            }
            "raw-flood" => {
                let n = number("orders", 1000) as usize;
                return more(new_orders(n, end, number("raw_bytes", 1024) as usize)?);
            }
            "bad-times" => return Ok(OrderPage { orders: vec![order_at("T-1".into(), number("updated", 0), "{}".into())], next_page_cursor: None }),
            "outside-window" => {
                let orders = vec![
                    order_at("W-in".into(), end, "{}".into()),
                    order_at("W-after".into(), end + 3_600_000, "{}".into()),
                    order_at("W-before".into(), start - 3_600_000, "{}".into()),
                ];
                return Ok(OrderPage { orders, next_page_cursor: None });
            }
            "raw-secret" => {
                let secret = host::config("api_secret").unwrap_or_default();
                let mut o = order_at("S-1".into(), end, serde_json::json!({ "token": secret, "note": format!("key={secret}") }).to_string());
                o.buyer_name_masked = secret;
                return Ok(OrderPage { orders: vec![o], next_page_cursor: None });
            }
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
        match mode().as_str() {
            "slow-webhook" => {
                std::thread::sleep(std::time::Duration::from_secs(9));
                return Ok(Vec::new());
            }
            "webhook-orders" => {
                let n = number("orders", 1000) as usize;
                return Ok(new_orders(n, berth_sdk::time::now_ms(), 64)?.into_iter().map(Event::OrderUpserted).collect());
            }
            _ => {}
        }
        misbehave()?;
        Ok(Vec::new())
    }
}

berth_sdk::export_connector!(Hostile);
