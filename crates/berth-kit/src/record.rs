//! `berth plugin record FILE --shop-config shop.toml --out DIR`: run the connector's
//! calls against the vendor's sandbox or the real platform, with the vendor's own
//! credentials, through berth's gateway (allowlist, the manifest's rate limit, timeouts,
//! size caps), and write every platform exchange to a tape (tape_file.rs).
//!
//! The calls: `check`; pulls over the last `[record] hours` (72) in windows no wider
//! than the manifest's `max-window-ms`, through every page, throttles waited out; one
//! push of `[record] push`, continued until every SKU has its result; the webhook of
//! `[record] webhook`. Each is taped with its input and the connector's answer.

use super::shop_file::ShopFile;
use berth_core::tape::replay::{run_input, CallAnswer};
use berth_core::tape::{self as tape_file, Body, TapeFile, TapedCall, TapedInput};
use super::{PluginError, ScratchHost};
use berth_runtime::redact::Redactor;
use berth_runtime::tape::Tape;
use berth_runtime::{LoadedConnector, Output};
use berth_types::connector::{Capability, ConnectorError, StockUpdate, TimeWindow};
use berth_types::shop::ShopConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a throttle the recording honours (a connector asking an hour would
/// stall it).
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Throttles and transient failures one recording puts up with.
const MAX_SETBACKS: usize = 200;
/// Pages one window may have.
const MAX_PAGES: usize = 10_000;

/// What a recording wrote.
pub struct Recorded {
    pub path: PathBuf,
    pub calls: usize,
    pub exchanges: usize,
    pub orders: usize,
    pub throttles: usize,
    /// Values learned from the requests and kept off the tape (beyond the shop's secrets).
    pub redacted: usize,
    /// Calls that ended in an error that is on the tape as it happened.
    pub errors: Vec<String>,
}

impl Recorded {
    pub fn render(&self) -> String {
        let mut out = format!(
            "recorded {} calls, {} platform exchanges, {} orders ({} throttles waited out) to {}\n\
             secrets and {} credential or signature values seen in requests are redacted\n",
            self.calls,
            self.exchanges,
            self.orders,
            self.throttles,
            self.path.display(),
            self.redacted
        );
        for e in &self.errors {
            out.push_str(&format!("note: {e}\n"));
        }
        out
    }
}

struct Recorder {
    connector: LoadedConnector,
    shop: String,
    cfg: Arc<ShopConfig>,
    calls: Vec<TapedCall>,
    throttles: usize,
    setbacks: usize,
    errors: Vec<String>,
}

impl Recorder {
    async fn call(&mut self, input: TapedInput) -> Result<CallAnswer, String> {
        let (out, tape) = run_input(&self.connector, &self.shop, self.cfg.clone(), &input, Tape::recording()).await;
        self.calls.push(TapedCall::recorded(input, CallAnswer::json(&out), &tape));
        out.map_err(|e| e.to_string())
    }

    /// A throttle or a transient failure: wait (a throttle's ms, a second otherwise) and
    /// say whether to try again.
    async fn setback(&mut self, e: &ConnectorError, what: &str) -> bool {
        self.setbacks += 1;
        let wait = match e {
            ConnectorError::RateLimited(ms) => {
                self.throttles += 1;
                Duration::from_millis((*ms).max(1))
            }
            ConnectorError::Transient(_) => Duration::from_secs(1),
            _ => return false,
        };
        if self.setbacks > MAX_SETBACKS {
            self.errors.push(format!("{what}: gave up after {MAX_SETBACKS} throttles and transient failures"));
            return false;
        }
        tokio::time::sleep(wait.min(MAX_WAIT)).await;
        true
    }

    async fn pulls(&mut self, hours: u64, until_ms: Option<i64>, max_window_ms: Option<u64>) -> usize {
        let end = until_ms.unwrap_or_else(berth_types::clock::now_ms);
        let start = end - hours as i64 * 3_600_000;
        let step = max_window_ms.map_or(end - start, |w| w as i64).clamp(1, end - start);
        let mut orders = 0;
        let mut at = start;
        while at < end {
            let window = TimeWindow { start_ms: at, end_ms: (at + step).min(end) };
            at = window.end_ms;
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let what = format!("pull of [{}, {}) page {}", window.start_ms, window.end_ms, pages + 1);
                match self.call(TapedInput::PullOrders { window, page_cursor: cursor.clone() }).await {
                    Ok(CallAnswer::Out(Output::Pull(Ok(page)))) => {
                        pages += 1;
                        orders += page.orders.len();
                        match page.next_page_cursor {
                            Some(next) if Some(&next) != cursor.as_ref() && pages < MAX_PAGES => cursor = Some(next),
                            Some(_) => {
                                self.errors.push(format!("{what}: the page cursor came back unchanged or the pages never ended; the window's walk stopped"));
                                break;
                            }
                            None => break,
                        }
                    }
                    Ok(CallAnswer::Out(Output::Pull(Err(e)))) => {
                        if !self.setback(&e, &what).await {
                            self.errors.push(format!("{what} ended {}", super::report::error_kind(&e)));
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        self.errors.push(format!("{what}: {e}"));
                        break;
                    }
                }
            }
        }
        orders
    }

    async fn push(&mut self, stock: &BTreeMap<String, u32>) {
        let mut due: Vec<StockUpdate> = stock.iter().map(|(sku, q)| StockUpdate { sku: sku.clone(), quantity: *q }).collect();
        let mut calls = 0;
        while !due.is_empty() && calls < 50 {
            calls += 1;
            match self.call(TapedInput::PushInventory { updates: due.clone() }).await {
                Ok(CallAnswer::Out(Output::Push(Ok(results)))) if !results.is_empty() => {
                    due.retain(|u| !results.iter().any(|r| r.sku == u.sku));
                }
                Ok(CallAnswer::Out(Output::Push(Ok(_)))) => {
                    self.errors.push("a push answered no SKU at all".into());
                    return;
                }
                Ok(CallAnswer::Out(Output::Push(Err(e)))) => {
                    if !self.setback(&e, "push").await {
                        self.errors.push(format!("the push ended {}", super::report::error_kind(&e)));
                        return;
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    self.errors.push(format!("the push: {e}"));
                    return;
                }
            }
        }
    }
}

/// Record `component` for the shop in `shop_file` into `out` (a directory).
/// The pulls reach `hours` back from `until_ms` (now when absent).
pub async fn record(component: &Path, shop_file: &Path, out: &Path, hours: Option<u64>, until_ms: Option<i64>) -> Result<Recorded, PluginError> {
    let file = ShopFile::read(shop_file)?;
    let webhook = file.webhook()?;
    let bytes = std::fs::read(component).map_err(|source| PluginError::Read { path: component.to_path_buf(), source })?;
    let host = ScratchHost::with_config("[runtime]\nbreaker = false\n")?;
    // The manifest's hosts (all of them: the vendor's own platform) and the file's.
    let options = berth_runtime::LoadOptions {
        platform: None,
        grants: None,
        extra_hosts: &file.extra_hosts,
        allow_private: file.allow_private_addresses,
        limits: host.runtime.limits(&Default::default()),
    };
    let connector = host.runtime.load_bytes("kit", component, &bytes, &options).await?;
    let m = connector.manifest.clone();
    // The platform is called at the pace the manifest declares: the host's bucket
    // follows its `default-rate-limit`, as in a running berth with no `[platforms.ID]`.
    let cfg = file.shop_config();
    let mut rec = Recorder { connector, shop: file.shop.clone(), cfg: cfg.clone(), calls: Vec::new(), throttles: 0, setbacks: 0, errors: Vec::new() };
    match rec.call(TapedInput::Check).await {
        Ok(CallAnswer::Check(Ok(h))) if h.ok => {}
        Ok(CallAnswer::Check(Ok(h))) => rec.errors.push(format!("check reported unhealthy: {}", h.message)),
        Ok(CallAnswer::Check(Err(e))) => rec.errors.push(format!("check ended {}", super::report::error_kind(&e))),
        Ok(_) => {}
        Err(e) => rec.errors.push(format!("check: {e}")),
    }
    let mut orders = 0;
    if m.capabilities.contains(&Capability::Orders) {
        orders = rec.pulls(hours.or(file.record.hours).unwrap_or(72), until_ms, m.max_window_ms).await;
    }
    if m.capabilities.contains(&Capability::Inventory) && !file.record.push.is_empty() {
        rec.push(&file.record.push).await;
    }
    if let Some(w) = webhook {
        if m.capabilities.contains(&Capability::Webhooks) {
            let input = TapedInput::HandleWebhook { headers: w.headers.into_iter().collect(), body: Body::Text(w.body) };
            if let Err(e) = rec.call(input).await {
                rec.errors.push(format!("the webhook: {e}"));
            }
        } else {
            rec.errors.push("a webhook was given, but the manifest has no `webhooks` capability: not recorded".into());
        }
    }
    let mut tape = TapeFile {
        format: tape_file::FORMAT,
        recorded_at_ms: berth_types::clock::now_ms(),
        platform: m.platform.clone(),
        connector_version: m.connector_version.clone(),
        component_digest: berth_runtime::digest(&bytes),
        max_window_ms: m.max_window_ms,
        shop: file.shop.clone(),
        settings: file.settings.clone(),
        secrets: file.secrets.keys().cloned().collect(),
        replay: file.replay.clone(),
        calls: std::mem::take(&mut rec.calls),
    };
    let redacted = tape_file::redact(&mut tape, Redactor::for_shop(Some(&cfg)));
    let path = tape.write(out)?;
    Ok(Recorded { path, calls: tape.calls.len(), exchanges: tape.exchanges(), orders, throttles: rec.throttles, redacted, errors: rec.errors })
}
