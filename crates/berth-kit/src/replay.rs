//! `berth plugin test FILE --tape DIR`: replay a recorded tape (berth-core's tape/) to a
//! connector and run the platform-independent checks, then replay it again with faults
//! injected into the taped answers. Nothing is sent anywhere; requests are matched as
//! berth-core's tape/replay.rs says, and one the tape cannot answer is reported.

use super::report::{error_kind, fail, pass, skip, some, Check, Report};
use super::shop_file::ShopFile;
use super::{PluginError, ScratchHost};
use berth_core::tape::replay::{first_reads, placeholder_shop, run_input, CallAnswer, Fault, Pool, Shared};
use berth_core::tape::{sensitive, ReplayPlan, TapeFile, TapedInput};
use berth_runtime::tape::Tape;
use berth_runtime::{LoadedConnector, Output};
use berth_types::connector::{Capability, ConnectorError, Manifest, Order, StockUpdate, TimeWindow, UpdateResult};
use berth_types::shop::{ShopConfig, Tier};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Retries of a throttled or failed page (answered from the tape) before a walk gives up.
const MAX_SETBACKS: usize = 50;

/// A run of replayed calls: one pool, the connector's state carried from call to call.
struct Session<'a> {
    connector: &'a LoadedConnector,
    shop: &'a str,
    cfg: Arc<ShopConfig>,
    pool: Arc<Mutex<Pool>>,
    kv: BTreeMap<String, Option<Vec<u8>>>,
}

impl Session<'_> {
    async fn call(&mut self, input: &TapedInput) -> Result<CallAnswer, String> {
        let tape = Tape::scripted(Box::new(Shared(self.pool.clone())), self.kv.clone());
        let (out, tape) = run_input(self.connector, self.shop, self.cfg.clone(), input, tape).await;
        if let Tape::Replaying { overlay, .. } = tape {
            self.kv.extend(overlay);
        }
        out.map_err(|e| e.to_string())
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Replay<'a> {
    tape: &'a TapeFile,
    plan: ReplayPlan,
    connector: &'a LoadedConnector,
    cfg: Arc<ShopConfig>,
    /// What each state key held when first read on the tape.
    kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Requests of the clean replays the tape could not answer.
    unmatched: Vec<String>,
    answered: usize,
    /// Whether real secrets were given (a webhook's signature can be checked).
    secrets_given: bool,
}

impl<'a> Replay<'a> {
    fn session(&self) -> Session<'a> {
        let tape: &'a TapeFile = self.tape;
        Session { connector: self.connector, shop: &tape.shop, cfg: self.cfg.clone(), pool: Arc::new(Mutex::new(Pool::new(self.tape, &self.plan))), kv: self.kv.clone() }
    }

    /// Keep what a clean session could not answer.
    fn settle(&mut self, s: Session<'a>) {
        let pool = s.pool();
        self.unmatched.extend(pool.unmatched().iter().cloned());
        self.answered += pool.answered;
    }

    fn inputs(&self, name: &str) -> Vec<&TapedInput> {
        self.tape.calls.iter().map(|c| &c.input).filter(|i| i.name() == name).collect()
    }

    fn manifest_check(&self, m: &Manifest) -> Check {
        let mut problems = Vec::new();
        if m.platform != self.tape.platform {
            problems.push(format!("manifest platform `{}` is not the tape's `{}`", m.platform, self.tape.platform));
        }
        let offered: BTreeSet<&str> = self.tape.settings.keys().chain(&self.tape.secrets).map(String::as_str).collect();
        let unknown: Vec<&String> = m.required_config.iter().filter(|k| !offered.contains(k.as_str())).collect();
        if !unknown.is_empty() {
            problems.push(format!("required-config names keys the recorded shop did not have: {}", some(&unknown, 8)));
        }
        if m.capabilities.is_empty() {
            problems.push("the manifest claims no capability".into());
        }
        if problems.is_empty() {
            pass("manifest", format!("platform {}, requires {}", m.platform, m.required_config.join(", ")))
        } else {
            fail("manifest", problems.join("\n"))
        }
    }

    async fn health_check(&mut self) -> Check {
        if self.inputs("check").is_empty() {
            return skip("check", "the tape has no check call");
        }
        let mut s = self.session();
        let out = s.call(&TapedInput::Check).await;
        self.settle(s);
        match out {
            Ok(CallAnswer::Check(Ok(h))) if h.ok => pass("check", format!("healthy: {}", h.message)),
            Ok(CallAnswer::Check(Ok(h))) => fail("check", format!("reported unhealthy on the taped answers: {}", h.message)),
            Ok(CallAnswer::Check(Err(e))) => fail("check", format!("failed on the taped answers: {}", error_kind(&e))),
            Ok(_) => fail("check", "the host answered check with another call's output".into()),
            Err(e) => fail("check", e),
        }
    }

    /// Orders the recording version returned on the tape.
    fn taped_order_ids(&self) -> BTreeSet<String> {
        self.tape
            .calls
            .iter()
            .filter(|c| c.input.name() == "pull-orders")
            .filter_map(|c| c.answer.pointer("/Pull/Ok/orders").and_then(Value::as_array))
            .flatten()
            .filter_map(|o| o.get("order_id").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Walk every taped window through its pages; the window contract; the orders.
    async fn pull_checks(&mut self, m: &Manifest) -> (Check, Vec<Order>) {
        const NAME: &str = "pull-orders";
        let mut windows: Vec<TimeWindow> = Vec::new();
        let mut taped_pages: BTreeMap<(i64, i64), usize> = BTreeMap::new();
        for i in self.inputs(NAME) {
            if let TapedInput::PullOrders { window, .. } = i {
                if !windows.contains(window) {
                    windows.push(*window);
                }
                *taped_pages.entry((window.start_ms, window.end_ms)).or_default() += 1;
            }
        }
        if windows.is_empty() {
            return (skip(NAME, "the tape has no pull"), Vec::new());
        }
        let mut s = self.session();
        let mut problems = Vec::new();
        let mut orders: Vec<Order> = Vec::new();
        // Where each order came: (window, page). Windows may overlap (a running berth's
        // do, by `overlap_secs`); an order inside two windows is in both rightly, and
        // one outside its window is reported as such.
        let mut seen: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        let (mut pages, mut setbacks) = (0usize, 0usize);
        for (wi, w) in windows.iter().enumerate() {
            let width = (w.end_ms - w.start_ms) as u64;
            if m.max_window_ms.is_some_and(|max| width > max) {
                problems.push(format!("the taped window [{}, {}) is {width} ms, wider than this version's max-window-ms {:?}: record the tape again", w.start_ms, w.end_ms, m.max_window_ms));
            }
            let allowed = taped_pages.get(&(w.start_ms, w.end_ms)).copied().unwrap_or(0) + 3;
            let mut cursor: Option<String> = None;
            let mut page_no = 0usize;
            loop {
                let input = TapedInput::PullOrders { window: *w, page_cursor: cursor.clone() };
                match s.call(&input).await {
                    Ok(CallAnswer::Out(Output::Pull(Ok(page)))) => {
                        page_no += 1;
                        pages += 1;
                        for o in page.orders {
                            if o.updated_at_ms < w.start_ms || o.updated_at_ms >= w.end_ms {
                                problems.push(format!(
                                    "order {} (updated-at-ms {}) came in window [{}, {}), outside it",
                                    o.order_id, o.updated_at_ms, w.start_ms, w.end_ms
                                ));
                            }
                            seen.entry(o.order_id.clone()).or_default().push((wi, page_no));
                            orders.push(o);
                        }
                        match page.next_page_cursor {
                            None => break,
                            Some(next) if Some(&next) == cursor.as_ref() => {
                                problems.push(format!("page cursor `{next}` came back unchanged: the walk would never end"));
                                break;
                            }
                            Some(_) if page_no >= allowed => {
                                problems.push(format!("window [{}, {}) still had pages after {page_no}; the tape has {}: paging does not end", w.start_ms, w.end_ms, allowed - 3));
                                break;
                            }
                            Some(next) => cursor = Some(next),
                        }
                    }
                    Ok(CallAnswer::Out(Output::Pull(Err(e @ (ConnectorError::RateLimited(_) | ConnectorError::Transient(_)))))) if setbacks < MAX_SETBACKS => {
                        // Taped throttles and failures: the next try gets the next taped answer.
                        setbacks += 1;
                        if s.pool().unused() == 0 {
                            problems.push(format!("page {} of window [{}, {}) ended {} with nothing left on the tape", page_no + 1, w.start_ms, w.end_ms, error_kind(&e)));
                            break;
                        }
                    }
                    Ok(CallAnswer::Out(Output::Pull(Err(e)))) => {
                        problems.push(format!("page {} of window [{}, {}) failed on the taped answers: {}", page_no + 1, w.start_ms, w.end_ms, error_kind(&e)));
                        break;
                    }
                    Ok(_) => {
                        problems.push("the host answered a pull with another call's output".into());
                        break;
                    }
                    Err(e) => {
                        problems.push(format!("page {} of window [{}, {}): {e}", page_no + 1, w.start_ms, w.end_ms));
                        break;
                    }
                }
            }
        }
        self.settle(s);
        let twice: Vec<String> = seen
            .iter()
            .filter_map(|(id, at)| {
                let mut pages: Vec<String> = Vec::new();
                for (i, (wi, page)) in at.iter().enumerate() {
                    if at[..i].iter().any(|(w, _)| w == wi) || at[i + 1..].iter().any(|(w, _)| w == wi) {
                        let w = &windows[*wi];
                        pages.push(format!("window [{}, {}) page {page}", w.start_ms, w.end_ms));
                    }
                }
                (!pages.is_empty()).then(|| format!("{id} ({})", pages.join("; ")))
            })
            .collect();
        if !twice.is_empty() {
            problems.push(format!("{} orders came more than once in a window: {}", twice.len(), some(&twice, 3)));
        }
        let missing: Vec<String> = self.taped_order_ids().into_iter().filter(|id| !seen.contains_key(id)).collect();
        if !missing.is_empty() {
            problems.push(format!("{} orders the recording got never came: {}", missing.len(), some(&missing, 5)));
        }
        let check = if problems.is_empty() {
            pass(NAME, format!("{} orders exactly once over {} windows, {pages} pages ({setbacks} taped throttles or failures retried)", seen.len(), windows.len()))
        } else {
            fail(NAME, lines(&problems, 6))
        };
        (check, orders)
    }

    async fn push_check(&mut self) -> Check {
        const NAME: &str = "push-inventory";
        let Some(TapedInput::PushInventory { updates }) = self.inputs(NAME).first().map(|i| (*i).clone()) else {
            return skip(NAME, "the tape has no push");
        };
        let mut s = self.session();
        let wanted: BTreeSet<String> = updates.iter().map(|u| u.sku.clone()).collect();
        let mut due: Vec<StockUpdate> = updates.clone();
        let mut results: BTreeMap<String, UpdateResult> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut calls = 0;
        while !due.is_empty() && problems.is_empty() {
            calls += 1;
            if calls > MAX_SETBACKS {
                problems.push(format!("{calls} calls and still {} SKUs without a result", due.len()));
                break;
            }
            match s.call(&TapedInput::PushInventory { updates: due.clone() }).await {
                Ok(CallAnswer::Out(Output::Push(Ok(answer)))) => {
                    if answer.is_empty() {
                        problems.push("a push answered no SKU at all: the batch can never finish".into());
                    }
                    for r in answer {
                        if !wanted.contains(&r.sku) {
                            problems.push(format!("a result for SKU {} that was not pushed", r.sku));
                        } else if results.contains_key(&r.sku) {
                            problems.push(format!("SKU {} got a second result", r.sku));
                        } else if !r.accepted && r.message.as_deref().unwrap_or("").trim().is_empty() {
                            problems.push(format!("SKU {} rejected without a reason", r.sku));
                        }
                        results.insert(r.sku.clone(), r);
                    }
                    due.retain(|u| !results.contains_key(&u.sku));
                }
                Ok(CallAnswer::Out(Output::Push(Err(e @ (ConnectorError::RateLimited(_) | ConnectorError::Transient(_)))))) => {
                    if s.pool().unused() == 0 {
                        problems.push(format!("the push ended {} with nothing left on the tape", error_kind(&e)));
                    }
                }
                Ok(CallAnswer::Out(Output::Push(Err(e)))) => problems.push(format!("the push failed as a whole on the taped answers: {}", error_kind(&e))),
                Ok(_) => problems.push("the host answered a push with another call's output".into()),
                Err(e) => problems.push(format!("the push: {e}")),
            }
        }
        self.settle(s);
        if problems.is_empty() {
            let accepted = results.values().filter(|r| r.accepted).count();
            pass(NAME, format!("{} SKUs, one result each ({accepted} accepted, {} rejected with a reason) in {calls} calls", wanted.len(), wanted.len() - accepted))
        } else {
            fail(NAME, problems.join("\n"))
        }
    }

    async fn webhook_check(&mut self) -> Check {
        const NAME: &str = "webhooks";
        let Some(TapedInput::HandleWebhook { headers, body }) = self.inputs("handle-webhook").first().map(|i| (*i).clone()) else {
            return skip(NAME, "the tape has no webhook");
        };
        if !self.secrets_given && !self.tape.secrets.is_empty() {
            return skip(NAME, "the shop's secrets are not on the tape: give --shop-config so the push's signature can be checked");
        }
        let mut s = self.session();
        let check = webhook_calls(&mut s, headers, body).await;
        // The requests the calls made count in the `requests` check, whatever the outcome.
        self.settle(s);
        check
    }

    fn requests_check(&self) -> Check {
        if self.unmatched.is_empty() {
            pass("requests", format!("{} requests answered from the tape ({} exchanges on it)", self.answered, self.tape.exchanges()))
        } else {
            fail(
                "requests",
                format!(
                    "{} requests the tape cannot answer (changed parameters? name run-to-run ones in [replay] ignore_params):\n{}",
                    self.unmatched.len(),
                    lines(&self.unmatched, 3)
                ),
            )
        }
    }

    /// Replay the first pull and the first push with `fault` in their first answer.
    async fn fault_check(&mut self, fault: Fault) -> Check {
        let name = fault.check_name();
        if fault == Fault::ThrottleBody && self.plan.throttle_body.is_none() {
            return skip(name, "no throttle body named: set [replay] throttle_body (and throttle_status) in the shop file");
        }
        let first_pull = self.inputs("pull-orders").into_iter().find(|i| matches!(i, TapedInput::PullOrders { page_cursor: None, .. })).cloned();
        let first_push = self.inputs("push-inventory").first().map(|i| (*i).clone());
        let targets: Vec<TapedInput> = first_pull.into_iter().chain(first_push).collect();
        if targets.is_empty() {
            return skip(name, "the tape has no pull and no push to inject into");
        }
        let mut seen = Vec::new();
        let mut problems = Vec::new();
        for input in &targets {
            let mut s = self.session();
            s.pool().arm(Some(fault));
            let out = s.call(input).await;
            let (fired, asked) = {
                let p = s.pool();
                (p.fault_fired, p.asked)
            };
            let call = input.name();
            if !fired {
                seen.push(format!("{call}: made no request the tape answers (not tested)"));
                continue;
            }
            let err = match &out {
                Ok(CallAnswer::Out(Output::Pull(r))) => r.as_ref().err(),
                Ok(CallAnswer::Out(Output::Push(r))) => r.as_ref().err(),
                _ => None,
            };
            match (out.as_ref(), err) {
                (Err(e), _) if e.contains("deadline") => problems.push(format!("{call} hung on {}: {}", fault.describe(), condensed(e))),
                (Err(e), _) => problems.push(format!("{call} crashed on {}: {}", fault.describe(), condensed(e))),
                (Ok(_), Some(ConnectorError::RateLimited(ms))) if *ms > 0 && (fault.is_throttle() || fault == Fault::Status503) => {
                    seen.push(format!("{call}: rate-limited({ms} ms)"))
                }
                (Ok(_), Some(ConnectorError::RateLimited(0))) => problems.push(format!("{call} answered {} rate-limited(0 ms): the host would call again at once", fault.describe())),
                (Ok(_), Some(ConnectorError::Transient(_))) if !fault.is_throttle() => seen.push(format!("{call}: transient")),
                (Ok(_), Some(e)) => problems.push(format!(
                    "{call} answered {} with {}; it must be {}",
                    fault.describe(),
                    error_kind(e),
                    if fault.is_throttle() { "rate-limited(ms > 0)" } else { "transient" }
                )),
                // No error: fine only when the connector asked again and the tape answered.
                (Ok(_), None) if asked > 1 && !fault.is_throttle() => seen.push(format!("{call}: recovered inside the call")),
                (Ok(_), None) if fault.is_throttle() => {
                    problems.push(format!("{call} took {} for a success and went on: it must end the call rate-limited(ms > 0)", fault.describe()))
                }
                (Ok(_), None) => problems.push(format!("{call} took {} for a success", fault.describe())),
            }
        }
        if problems.is_empty() {
            pass(name, format!("{}: {}", fault.describe(), seen.join(", ")))
        } else {
            fail(name, problems.join("\n"))
        }
    }
}

/// At most `n` items, one per line, with how many more there were.
fn lines(items: &[String], n: usize) -> String {
    let mut out: Vec<String> = items.iter().take(n).cloned().collect();
    if items.len() > n {
        out.push(format!("(+{} more)", items.len() - n));
    }
    out.join("\n")
}

/// A call error's first line, and the trap's cause without the wasm backtrace.
fn condensed(e: &str) -> String {
    let first = e.lines().next().unwrap_or("").trim_end_matches(':').trim_end_matches(" at wasm backtrace");
    match e.lines().map(str::trim).find(|l| l.starts_with("wasm trap:")) {
        Some(cause) => format!("{first} ({cause})"),
        None => first.to_string(),
    }
}

/// The taped push, then it forged twice: a changed body, no signature header.
async fn webhook_calls(s: &mut Session<'_>, headers: Vec<(String, String)>, body: berth_core::tape::Body) -> Check {
    const NAME: &str = "webhooks";
    let mut notes = Vec::new();
    let genuine = TapedInput::HandleWebhook { headers: headers.clone(), body: body.clone() };
    match s.call(&genuine).await {
        Ok(CallAnswer::Out(Output::Webhook(Ok(events)))) => notes.push(format!("the taped push -> {} event(s)", events.len())),
        Ok(CallAnswer::Out(Output::Webhook(Err(e)))) => return fail(NAME, format!("the taped push was refused: {}", error_kind(&e))),
        Ok(_) => return fail(NAME, "the host answered a webhook with another call's output".into()),
        Err(e) => return fail(NAME, format!("the taped push crashed the call: {e}")),
    }
    let mut tampered = body.bytes();
    tampered.extend_from_slice(b" ");
    let signature_headers = |k: &str| {
        let k = k.to_ascii_lowercase();
        sensitive(&k) || k.contains("sign") || k.contains("hmac")
    };
    let unsigned: Vec<(String, String)> = headers.iter().filter(|(k, _)| !signature_headers(k)).cloned().collect();
    let forged = [
        ("the push with a changed body", TapedInput::HandleWebhook { headers: headers.clone(), body: berth_core::tape::Body::of(&tampered) }),
        ("the push without its signature", TapedInput::HandleWebhook { headers: unsigned, body }),
    ];
    for (what, input) in forged {
        match s.call(&input).await {
            Ok(CallAnswer::Out(Output::Webhook(Err(ConnectorError::Auth(_))))) => notes.push(format!("{what} -> auth")),
            Ok(CallAnswer::Out(Output::Webhook(Err(e)))) => return fail(NAME, format!("{what} must be refused as auth, got {}", error_kind(&e))),
            Ok(CallAnswer::Out(Output::Webhook(Ok(events)))) => return fail(NAME, format!("{what} was accepted ({} events): forged pushes get through", events.len())),
            Ok(_) => return fail(NAME, "the host answered a webhook with another call's output".into()),
            Err(e) => return fail(NAME, format!("{what} crashed the call: {e}")),
        }
    }
    pass(NAME, notes.join("; "))
}

/// Order fields berth and the ERP rely on, whatever the platform.
fn shape_check(orders: &[Order]) -> Check {
    const NAME: &str = "orders";
    if orders.is_empty() {
        return skip(NAME, "no order on the tape to check");
    }
    let mut problems = Vec::new();
    for o in orders {
        let mut p = Vec::new();
        if o.order_id.trim().is_empty() {
            p.push("an empty order-id".to_string());
        }
        if o.currency.len() != 3 || !o.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            p.push(format!("currency `{}` is not an ISO 4217 code", o.currency));
        }
        if o.total_minor < 0 || o.lines.iter().any(|l| l.unit_price_minor < 0) {
            p.push("a negative amount".into());
        }
        let lines: i64 = o.lines.iter().map(|l| l.unit_price_minor * i64::from(l.quantity)).sum();
        if lines != 0 && (o.total_minor * 100 == lines || lines * 100 == o.total_minor) {
            p.push(format!("total-minor {} is 100 times off its lines' {lines}: major and minor units mixed", o.total_minor));
        }
        if o.lines.iter().any(|l| l.quantity == 0) {
            p.push("a line with quantity 0".into());
        }
        if o.created_at_ms > o.updated_at_ms {
            p.push(format!("created-at-ms {} is after updated-at-ms {}", o.created_at_ms, o.updated_at_ms));
        }
        if !masked_name(&o.buyer_name_masked) {
            p.push(format!("buyer name `{}` is not masked (first character, then one * per character)", o.buyer_name_masked));
        }
        if !masked_phone(&o.buyer_phone_masked) {
            p.push(format!("buyer phone `{}` is not masked (* but for the last four digits)", o.buyer_phone_masked));
        }
        problems.extend(p.into_iter().map(|p| format!("{}: {p}", o.order_id)));
    }
    if problems.is_empty() {
        pass(NAME, format!("{} orders: ids, ISO currencies, exact minor units, times in order, buyer fields masked", orders.len()))
    } else {
        fail(NAME, format!("{} problems: {}", problems.len(), some(&problems, 5)))
    }
}

/// The SDKs' masking rule for names: the first character, then `*` for every other (at least one).
fn masked_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        None => true,
        Some(_) => {
            let rest: Vec<char> = chars.collect();
            !rest.is_empty() && rest.iter().all(|c| *c == '*')
        }
    }
}

/// For phones: digits only, all but the last four `*` (four or fewer: all `*`).
fn masked_phone(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let stars = s.chars().take_while(|c| *c == '*').count();
    let rest = &s[stars..];
    stars > 0 && rest.len() <= 4 && rest.bytes().all(|b| b.is_ascii_digit()) && (rest.is_empty() || s.len() > 4)
}

/// The replay's plan: the shop file's where it says something, else the tape's.
fn plan_for(tape: &TapeFile, file: Option<&ShopFile>) -> ReplayPlan {
    let mut plan = tape.replay.clone();
    if let Some(f) = file {
        plan.ignore_params.extend(f.replay.ignore_params.iter().cloned());
        if f.replay.throttle_body.is_some() {
            plan.throttle_body = f.replay.throttle_body.clone();
            plan.throttle_status = f.replay.throttle_status;
        }
    }
    plan
}

/// The shop the replayed calls run for: with a shop file, the tape's settings under its
/// own and its secrets; else the tape's placeholders.
fn shop_for(tape: &TapeFile, file: Option<&ShopFile>) -> Arc<ShopConfig> {
    let Some(f) = file else { return placeholder_shop(tape) };
    let mut settings = tape.settings.clone();
    settings.extend(f.settings.clone());
    Arc::new(ShopConfig { connector: "kit".into(), tier: Tier::A, poll_interval_secs: None, settings, secrets: f.secrets.clone() })
}

/// `berth plugin test FILE --tape DIR [--shop-config shop.toml]`.
pub async fn run(component: &Path, tape_dir: &Path, shop_file: Option<&Path>) -> Result<Report, PluginError> {
    let tape = TapeFile::read(tape_dir)?;
    let file = shop_file.map(ShopFile::read).transpose()?;
    let host = ScratchHost::with_config("[runtime]\nbreaker = false\ncall_timeout_ms = 10000\n")?;
    let mut report = Report {
        component: component.display().to_string(),
        against: format!("the tape {} ({} calls, {} exchanges, {} {})", tape_dir.display(), tape.calls.len(), tape.exchanges(), tape.platform, tape.connector_version),
        connector: "?".into(),
        checks: Vec::new(),
    };
    // Nothing is sent: no host is granted.
    let options = host.options(&[]);
    let connector = match host.runtime.load("kit", component, &options).await {
        Ok(c) => c,
        Err(e) => {
            report.checks.push(fail("loads", e.to_string()));
            return Ok(report);
        }
    };
    let m = connector.manifest.clone();
    report.connector = format!("{} {}", m.platform, m.connector_version);
    let caps: Vec<&str> = m.capabilities.iter().map(|c| c.name()).collect();
    report.checks.push(pass("loads", format!("WIT {}, capabilities {}", m.wit_version, caps.join(", "))));
    let mut r = Replay {
        tape: &tape,
        plan: plan_for(&tape, file.as_ref()),
        connector: &connector,
        cfg: shop_for(&tape, file.as_ref()),
        kv: first_reads(&tape),
        unmatched: Vec::new(),
        answered: 0,
        secrets_given: file.is_some(),
    };
    report.checks.push(r.manifest_check(&m));
    report.checks.push(r.health_check().await);
    if m.capabilities.contains(&Capability::Orders) {
        let (check, orders) = r.pull_checks(&m).await;
        report.checks.push(check);
        report.checks.push(shape_check(&orders));
    } else {
        report.checks.push(skip("pull-orders", "no `orders` capability"));
    }
    if m.capabilities.contains(&Capability::Inventory) {
        report.checks.push(r.push_check().await);
    } else {
        report.checks.push(skip("push-inventory", "no `inventory` capability"));
    }
    if m.capabilities.contains(&Capability::Webhooks) {
        report.checks.push(r.webhook_check().await);
    } else {
        report.checks.push(skip("webhooks", "no `webhooks` capability"));
    }
    report.checks.push(r.requests_check());
    for fault in Fault::ALL {
        report.checks.push(r.fault_check(fault).await);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masking_rule() {
        for ok in ["", "Z********", "王*", "L*"] {
            assert!(masked_name(ok), "{ok}");
        }
        for bad in ["Zhang San", "Z", "Z*n"] {
            assert!(!masked_name(bad), "{bad}");
        }
        for ok in ["", "*********8000", "****", "*8000"] {
            assert!(masked_phone(ok), "{ok}");
        }
        for bad in ["13800138000", "138****8000", "1234", "****80001"] {
            assert!(!masked_phone(bad), "{bad}");
        }
    }
}

/// `berth plugin shadow FILE --tape DIR`: the tape's calls replayed to the component, its
/// answers compared with the recorded ones field by field (berth-core's
/// tape/compare.rs, as a running berth's `shadow --tape` does).
pub async fn shadow(component: &Path, tape_dir: &Path, shop_file: Option<&Path>) -> Result<berth_core::tape::compare::TapeShadowResult, PluginError> {
    let tape = TapeFile::read(tape_dir)?;
    let file = shop_file.map(ShopFile::read).transpose()?;
    let host = ScratchHost::with_config("[runtime]\nbreaker = false\ncall_timeout_ms = 10000\n")?;
    let connector = host.runtime.load("kit", component, &host.options(&[])).await?;
    let cfg = file.as_ref().map(|f| shop_for(&tape, Some(f)));
    Ok(berth_core::tape::compare::compare(&connector, &tape, cfg, "berth plugin shadow").await)
}

/// A tape run's result as the kit prints it.
pub fn render_shadow(r: &berth_core::tape::compare::TapeShadowResult) -> String {
    let mut out = format!(
        "tape shadow: {} calls recorded by {} for shop {}\n  compared {} ({} skipped: webhooks need --shop-config), {} matching every field\n  fields {}/{} matching: {:.2}%\n",
        r.calls, r.recorded_by, r.shop, r.compared, r.skipped, r.calls_matching, r.fields_matching, r.fields, r.match_percent
    );
    if r.unanswered_requests > 0 {
        out.push_str(&format!("  {} requests the tape could not answer\n", r.unanswered_requests));
    }
    for d in &r.differences {
        out.push_str(&format!("  DIFF {} {}: recorded {} / candidate {}\n", d.call, d.path, d.active, d.candidate));
    }
    if r.difference_count > r.differences.len() {
        out.push_str(&format!("  (+{} more differences)\n", r.difference_count - r.differences.len()));
    }
    out.push_str(match r.complete_match() {
        Ok(()) => "RESULT: PASS (100% of fields match)\n",
        Err(_) => "RESULT: FAIL (not a complete match)\n",
    });
    out
}
