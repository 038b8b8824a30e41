//! `berth plugin test FILE --tape DIR`: replay a recorded tape (tape_file.rs) to a
//! connector and run the platform-independent checks, then replay it again with faults
//! injected into the taped answers. Nothing is sent anywhere.
//!
//! Requests are answered from the tape by method, host, path and parameters (query,
//! form body, JSON body, JSON held in a parameter), ignoring those that change from run
//! to run — clocks, nonces, signatures and tokens ([`DEFAULT_IGNORED`], the plan's
//! `ignore_params`, and every parameter whose taped value was redacted). The same request
//! asked twice gets the taped answers in the order they were recorded. A request the
//! tape cannot answer is reported (and refused to the connector), never guessed.

use super::report::{error_kind, fail, pass, skip, some, Check, Report};
use super::shop_file::{ReplayPlan, ShopFile};
use super::tape_file::{params, sensitive, TapeFile, TapedExchange, TapedInput};
use super::{PluginError, ScratchHost};
use berth_core::registry::shadow::json_of;
use berth_runtime::tape::{Script, Tape};
use berth_runtime::{CallError, LoadedConnector, Output};
use berth_types::connector::{Capability, ConnectorError, Health, Manifest, Order, PullRequest, StockUpdate, TimeWindow, UpdateResult, WebhookRequest};
use berth_types::http::{HttpError, Method, Request, Response};
use berth_types::shop::{ShopConfig, Tier};
use berth_types::Secret;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Parameters never compared: they change from run to run.
pub const DEFAULT_IGNORED: &[&str] = &["timestamp", "ts", "nonce", "sign", "sig", "signature", "hmac", "access_token", "token", "_"];
/// Retries of a throttled or failed page (answered from the tape) before a walk gives up.
const MAX_SETBACKS: usize = 50;

/// What a replayed call answered.
pub enum CallAnswer {
    Check(Result<Health, ConnectorError>),
    Out(Output),
}

impl CallAnswer {
    /// As a tape and a shadow report hold it.
    pub fn json(out: &Result<CallAnswer, CallError>) -> Value {
        match out {
            Ok(CallAnswer::Check(h)) => serde_json::json!({ "Check": h }),
            Ok(CallAnswer::Out(o)) => json_of(&Ok(o.clone())),
            Err(e) => serde_json::json!({ "call-error": e.to_string() }),
        }
    }
}

/// Run one taped input with `tape`.
pub async fn run_input(c: &LoadedConnector, shop: &str, cfg: Arc<ShopConfig>, input: &TapedInput, tape: Tape) -> (Result<CallAnswer, CallError>, Tape) {
    use berth_runtime::Call;
    let call = match input {
        TapedInput::Check => {
            let (out, tape) = c.check_taped(shop, cfg, tape).await;
            return (out.map(CallAnswer::Check), tape);
        }
        TapedInput::PullOrders { window, page_cursor } => Call::Pull(PullRequest { window: *window, page_cursor: page_cursor.clone() }),
        TapedInput::PushInventory { updates } => Call::Push(updates.clone()),
        TapedInput::HandleWebhook { headers, body } => Call::Webhook(WebhookRequest { headers: headers.clone(), body: body.bytes() }),
    };
    let (out, tape) = c.call(shop, cfg, call, tape).await;
    (out.map(CallAnswer::Out), tape)
}

/// A fault injected into the first taped answer of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    TooManyWithRetryAfter,
    TooMany,
    ThrottleBody,
    Status500,
    Status502,
    Status503,
    Timeout,
    Truncated,
    Garbled,
    HtmlPage,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::TooManyWithRetryAfter,
        Fault::TooMany,
        Fault::ThrottleBody,
        Fault::Status500,
        Fault::Status502,
        Fault::Status503,
        Fault::Timeout,
        Fault::Truncated,
        Fault::Garbled,
        Fault::HtmlPage,
    ];

    pub fn check_name(self) -> &'static str {
        match self {
            Fault::TooManyWithRetryAfter => "fault-429-wait",
            Fault::TooMany => "fault-429",
            Fault::ThrottleBody => "fault-throttle-body",
            Fault::Status500 => "fault-500",
            Fault::Status502 => "fault-502",
            Fault::Status503 => "fault-503",
            Fault::Timeout => "fault-timeout",
            Fault::Truncated => "fault-truncated",
            Fault::Garbled => "fault-garbled",
            Fault::HtmlPage => "fault-html",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::TooManyWithRetryAfter => "HTTP 429 with Retry-After: 7",
            Fault::TooMany => "HTTP 429 without Retry-After",
            Fault::ThrottleBody => "the platform's throttle body",
            Fault::Status500 => "HTTP 500",
            Fault::Status502 => "HTTP 502",
            Fault::Status503 => "HTTP 503",
            Fault::Timeout => "a timeout",
            Fault::Truncated => "the taped body cut in half",
            Fault::Garbled => "the taped body garbled",
            Fault::HtmlPage => "an HTML error page with status 200",
        }
    }

    /// Whether the call must end `rate-limited` (else `transient`).
    fn is_throttle(self) -> bool {
        matches!(self, Fault::TooManyWithRetryAfter | Fault::TooMany | Fault::ThrottleBody)
    }

    fn answer(self, taped: &TapedExchange, plan: &ReplayPlan) -> Result<Response, HttpError> {
        let status = |status: u16, headers: Vec<(&str, &str)>, body: &[u8]| {
            Ok(Response { status, headers: headers.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: body.to_vec() })
        };
        let json = [("content-type", "application/json")];
        let taped_body = match taped.answer.result() {
            Ok(r) => r,
            Err(_) => Response { status: 200, headers: json.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: b"{}".to_vec() },
        };
        match self {
            Fault::TooManyWithRetryAfter => status(429, vec![("retry-after", "7"), json[0]], br#"{"error":"too many requests"}"#),
            Fault::TooMany => status(429, vec![json[0]], br#"{"error":"too many requests"}"#),
            Fault::ThrottleBody => status(plan.throttle_status.unwrap_or(200), vec![json[0]], plan.throttle_body.as_deref().unwrap_or("").as_bytes()),
            Fault::Status500 => status(500, vec![json[0]], br#"{"error":"internal error"}"#),
            Fault::Status502 => status(502, vec![("content-type", "text/plain")], b"bad gateway"),
            Fault::Status503 => status(503, vec![json[0]], br#"{"error":"service unavailable"}"#),
            Fault::Timeout => Err(HttpError::Timeout),
            Fault::Truncated => {
                let mut r = taped_body;
                let half = r.body.len() / 2;
                r.body.truncate(half);
                Ok(r)
            }
            Fault::Garbled => {
                let mut r = taped_body;
                r.body = r.body.iter().rev().map(|b| if b.is_ascii_alphanumeric() { b'#' } else { *b }).collect();
                if r.body.is_empty() {
                    r.body = b"#\x00\xff".to_vec();
                }
                Ok(r)
            }
            Fault::HtmlPage => status(
                200,
                vec![("content-type", "text/html; charset=utf-8")],
                b"<!DOCTYPE html><html><head><title>Maintenance</title></head><body><h1>We'll be back soon</h1></body></html>",
            ),
        }
    }
}

/// The tape's exchanges as a pool the replayed requests draw from.
pub struct Pool {
    ignored: BTreeSet<String>,
    exchanges: Vec<TapedExchange>,
    free: BTreeMap<String, VecDeque<usize>>,
    plan: ReplayPlan,
    /// A fault for the next request, and what it hit.
    fault: Option<Fault>,
    fault_fired: bool,
    /// Requests asked since the last [`Pool::arm`].
    asked: usize,
    answered: usize,
    unmatched: Vec<String>,
}

/// Whether a taped value was redacted (so it cannot be compared).
fn redacted(v: &str) -> bool {
    v.contains("<secret:") || v.contains("<redacted:")
}

/// A JSON value with its keys sorted and the ignored ones left out.
fn canon(v: &Value, ignored: &BTreeSet<String>) -> String {
    match v {
        Value::Object(m) => {
            let fields: BTreeMap<&String, String> =
                m.iter().filter(|(k, _)| !ignored.contains(&k.to_ascii_lowercase())).map(|(k, v)| (k, canon(v, ignored))).collect();
            let inner: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(|v| canon(v, ignored)).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

impl Pool {
    pub fn new(tape: &TapeFile, plan: &ReplayPlan) -> Pool {
        let mut ignored: BTreeSet<String> = DEFAULT_IGNORED.iter().map(|s| s.to_string()).collect();
        ignored.extend(plan.ignore_params.iter().map(|p| p.to_ascii_lowercase()));
        let exchanges: Vec<TapedExchange> = tape.calls.iter().flat_map(|c| c.exchanges.iter().cloned()).collect();
        // Parameters whose taped value was redacted, and those named for credentials.
        for x in &exchanges {
            for (k, v) in params(&x.url, &x.body.bytes()) {
                if redacted(&v) || sensitive(&k) {
                    ignored.insert(k.to_ascii_lowercase());
                }
            }
        }
        let mut pool = Pool { ignored, exchanges: Vec::new(), free: BTreeMap::new(), plan: plan.clone(), fault: None, fault_fired: false, asked: 0, answered: 0, unmatched: Vec::new() };
        for (i, x) in exchanges.iter().enumerate() {
            let key = pool.key(x.method, &x.url, &x.body.bytes());
            pool.free.entry(key).or_default().push_back(i);
        }
        pool.exchanges = exchanges;
        pool
    }

    /// What a request is matched by.
    fn key(&self, method: Method, url: &str, body: &[u8]) -> String {
        let (host, path) = url::Url::parse(url).map(|u| (u.host_str().unwrap_or("").to_string(), u.path().to_string())).unwrap_or_default();
        let value = |v: &str| match serde_json::from_str::<Value>(v) {
            Ok(j @ (Value::Object(_) | Value::Array(_))) => canon(&j, &self.ignored),
            _ => v.to_string(),
        };
        let mut ps: Vec<(String, String)> =
            params(url, body).into_iter().filter(|(k, v)| !self.ignored.contains(&k.to_ascii_lowercase()) && !redacted(v)).map(|(k, v)| {
                let v = value(&v);
                (k, v)
            }).collect();
        ps.sort();
        let query: Vec<String> = ps.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let text = std::str::from_utf8(body).unwrap_or("");
        let body_part = match serde_json::from_slice::<Value>(body) {
            Ok(j) => canon(&j, &self.ignored),
            // A form body is in the parameters already.
            Err(_) if params("http://x/", body).is_empty() => text.to_string(),
            Err(_) => String::new(),
        };
        format!("{} {host}{path}?{} {body_part}", method.as_str(), query.join("&")).trim_end().to_string()
    }

    /// Make the next request's answer `fault` (none: clean), and count requests anew.
    pub fn arm(&mut self, fault: Option<Fault>) {
        self.fault = fault;
        self.fault_fired = false;
        self.asked = 0;
    }

    pub fn unmatched(&self) -> &[String] {
        &self.unmatched
    }

    /// Taped exchanges no request asked for.
    pub fn unused(&self) -> usize {
        self.free.values().map(VecDeque::len).sum()
    }

    fn answer(&mut self, req: &Request) -> Result<Response, HttpError> {
        self.asked += 1;
        let key = self.key(req.method, &req.url, &req.body);
        let Some(&i) = self.free.get(&key).and_then(VecDeque::front) else {
            let endpoint = key.split('?').next().unwrap_or("").to_string();
            let near: Vec<&str> = self.free.iter().filter(|(k, q)| !q.is_empty() && k.starts_with(&format!("{endpoint}?"))).map(|(k, _)| k.as_str()).take(1).collect();
            let hint = near.first().map_or(String::new(), |k| format!(" (the nearest taped one: {k})"));
            self.unmatched.push(format!("{key}{hint}"));
            return Err(HttpError::Denied("replay: the tape has no answer for this request".into()));
        };
        if let Some(f) = self.fault.take() {
            // The fault stands in for the taped answer, which stays for a retry.
            self.fault_fired = true;
            return f.answer(&self.exchanges[i], &self.plan);
        }
        self.free.get_mut(&key).map(VecDeque::pop_front);
        self.answered += 1;
        self.exchanges[i].answer.result()
    }
}

/// The pool as a replay's script (the pool outlives the calls).
struct Shared(Arc<Mutex<Pool>>);

impl Script for Shared {
    fn answer(&mut self, req: &Request) -> Result<Response, HttpError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).answer(req)
    }
}

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
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let (mut pages, mut setbacks) = (0usize, 0usize);
        for w in &windows {
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
                            seen.entry(o.order_id.clone()).or_default().push(format!("window [{}, {}) page {page_no}", w.start_ms, w.end_ms));
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
        let twice: Vec<String> = seen.iter().filter(|(_, at)| at.len() > 1).map(|(id, at)| format!("{id} ({})", at.join("; "))).collect();
        if !twice.is_empty() {
            problems.push(format!("{} orders came more than once: {}", twice.len(), some(&twice, 3)));
        }
        let missing: Vec<String> = self.taped_order_ids().into_iter().filter(|id| !seen.contains_key(id)).collect();
        if !missing.is_empty() {
            problems.push(format!("{} orders the recording got never came: {}", missing.len(), some(&missing, 5)));
        }
        let check = if problems.is_empty() {
            pass(NAME, format!("{} orders exactly once over {} windows, {pages} pages ({setbacks} taped throttles or failures retried)", orders.len(), windows.len()))
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
            ("the push with a changed body", TapedInput::HandleWebhook { headers: headers.clone(), body: super::tape_file::Body::of(&tampered) }),
            ("the push without its signature", TapedInput::HandleWebhook { headers: unsigned, body: body.clone() }),
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
        self.settle(s);
        pass(NAME, notes.join("; "))
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

/// The shop the replayed calls run for: the tape's settings, and the shop file's
/// secrets when given (else placeholders named like the tape's redactions).
fn shop_for(tape: &TapeFile, file: Option<&ShopFile>) -> Arc<ShopConfig> {
    let mut settings = tape.settings.clone();
    let secrets: BTreeMap<String, Secret> = match file {
        Some(f) => {
            settings.extend(f.settings.clone());
            f.secrets.clone()
        }
        None => tape.secrets.iter().map(|k| (k.clone(), Secret::new(format!("<secret:{k}>")))).collect(),
    };
    Arc::new(ShopConfig { connector: "kit".into(), tier: Tier::A, poll_interval_secs: None, settings, secrets })
}

/// The state the calls start from: each key as the tape first read it.
fn first_reads(tape: &TapeFile) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut kv = BTreeMap::new();
    for c in &tape.calls {
        for (k, v) in &c.kv_reads {
            kv.entry(k.clone()).or_insert_with(|| v.as_ref().map(|b| b.bytes()));
        }
    }
    kv
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

    #[test]
    fn keys_ignore_clocks_signatures_and_redacted_values() {
        let tape: TapeFile = serde_json::from_value(serde_json::json!({
            "format": 1, "recorded_at_ms": 0, "platform": "p", "connector_version": "1", "component_digest": "d",
            "max_window_ms": null, "shop": "s", "settings": {}, "secrets": ["k"],
            "calls": [{"input": {"call": "check"}, "answer": null, "exchanges": [
                {"method": "Get", "url": "http://h/a?key=%3Csecret%3Ak%3E&param=%7B%22b%22%3A1%2C%22a%22%3A2%7D&timestamp=1&sign=X",
                 "answer": {"response": {"status": 200, "headers": [], "body": "one"}}},
                {"method": "Get", "url": "http://h/a?key=%3Csecret%3Ak%3E&param=%7B%22b%22%3A1%2C%22a%22%3A2%7D&timestamp=1&sign=X",
                 "answer": {"response": {"status": 200, "headers": [], "body": "two"}}}
            ]}]
        })).unwrap();
        let mut pool = Pool::new(&tape, &ReplayPlan::default());
        let req = |url: &str| Request { method: Method::Get, url: url.into(), headers: vec![], body: vec![], timeout_ms: None };
        // Another key value, clock and signature; the JSON parameter's keys in another order.
        let same = "http://h/a?key=real&param=%7B%22a%22%3A2%2C%22b%22%3A1%7D&timestamp=2&sign=Y";
        assert_eq!(pool.answer(&req(same)).unwrap().body, b"one");
        pool.arm(Some(Fault::Status503));
        assert_eq!(pool.answer(&req(same)).unwrap().status, 503);
        assert_eq!(pool.answer(&req(same)).unwrap().body, b"two", "a fault leaves the taped answer for the retry");
        assert!(pool.answer(&req(same)).is_err(), "asked a third time: the tape has no more");
        assert!(pool.answer(&req("http://h/a?key=real&param=%7B%22a%22%3A3%7D")).is_err());
        assert_eq!(pool.unmatched().len(), 2, "{:?}", pool.unmatched());
    }
}
