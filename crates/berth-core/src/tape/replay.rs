//! Replaying a tape: requests answered from it by method, host, path and parameters
//! (query, form body, JSON body, JSON held in a parameter), ignoring those that change
//! from run to run — clocks, nonces, signatures and tokens ([`DEFAULT_IGNORED`], the
//! plan's `ignore_params`, and every parameter whose taped value was redacted). The same
//! request asked twice gets the taped answers in the order they were recorded. A request
//! the tape cannot answer is refused to the connector and noted, never guessed. A
//! [`Fault`] can stand in for the next answer.

use super::{params, sensitive, ReplayPlan, TapeFile, TapedExchange, TapedInput};
use crate::registry::shadow::json_of;
use berth_runtime::tape::{Script, Tape};
use berth_runtime::{CallError, LoadedConnector, Output};
use berth_types::connector::{ConnectorError, Health, PullRequest, WebhookRequest};
use berth_types::http::{HttpError, Method, Request, Response};
use berth_types::shop::ShopConfig;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Parameters never compared: they change from run to run.
pub const DEFAULT_IGNORED: &[&str] = &["timestamp", "ts", "nonce", "sign", "sig", "signature", "hmac", "access_token", "token", "_"];

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
            Ok(CallAnswer::Out(o)) => json_of(Ok(o)),
            Err(e) => json_of::<Output>(Err(e)),
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

    pub fn describe(self) -> &'static str {
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
    pub fn is_throttle(self) -> bool {
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
    pub fault_fired: bool,
    /// Requests asked since the last [`Pool::arm`].
    pub asked: usize,
    pub answered: usize,
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
pub struct Shared(pub Arc<Mutex<Pool>>);

impl Script for Shared {
    fn answer(&mut self, req: &Request) -> Result<Response, HttpError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).answer(req)
    }
}

/// The shop a replay runs for when its real config is not at hand: the tape's settings,
/// and its secrets as the placeholders the tape's redactions name.
pub fn placeholder_shop(tape: &TapeFile) -> Arc<ShopConfig> {
    Arc::new(ShopConfig {
        connector: "tape".into(),
        tier: berth_types::shop::Tier::A,
        poll_interval_secs: None,
        settings: tape.settings.clone(),
        secrets: tape.secrets.iter().map(|k| (k.clone(), berth_types::Secret::new(format!("<secret:{k}>")))).collect(),
    })
}

/// The state the calls start from: each key as the tape first read it.
pub fn first_reads(tape: &TapeFile) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut kv = BTreeMap::new();
    for c in &tape.calls {
        for (k, v) in &c.kv_reads {
            kv.entry(k.clone()).or_insert_with(|| v.as_ref().map(|b| b.bytes()));
        }
    }
    kv
}

#[cfg(test)]
mod tests {
    use super::*;

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
