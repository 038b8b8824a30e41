//! Tapes: a connector's platform exchanges, recorded by the vendor kit (`berth plugin
//! record`) or by a running berth for chosen shops (`[connectors.X] record_shops`), and
//! replayed (replay.rs) by the kit's checks and by tape-based shadow runs.
//!
//! A tape on disk: every platform exchange of a recorded run, per call, with the call's
//! input and the recording version's answer. One JSON file (`tape.json`) in the tape's
//! directory, readable and editable by hand.
//!
//! No secret reaches the file: the shop's secrets, and the values of every request
//! parameter or header that carries a credential or a signature (`access_token`,
//! `sign`, `Authorization` …, see [`sensitive`]), are replaced wherever they appear — in
//! URLs, headers, bodies, answers, state — with `<secret:KEY>` or `<redacted:NAME>`.
//! Responses are otherwise kept as received.

use berth_runtime::redact::Redactor;
use berth_runtime::tape::Exchange;
use berth_types::connector::{StockUpdate, TimeWindow};
use berth_types::http::{HttpError, Method, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod compare;
pub mod journal;
pub mod replay;

pub const TAPE_FILE: &str = "tape.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    #[error("cannot read the tape {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the tape {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a berth tape: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// How a tape is replayed; written onto the tape at recording, overridden by a shop
/// file given to the replay.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplayPlan {
    /// Request parameters not compared (beyond the defaults: clocks, nonces, signatures
    /// and tokens).
    #[serde(default)]
    pub ignore_params: Vec<String>,
    /// The platform's own throttle answer, injected as a fault: the connector must say
    /// `rate-limited(ms > 0)` for it. No throttle-body check without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_body: Option<String>,
    /// The HTTP status the throttle body comes with (200 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_status: Option<u16>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapeFile {
    pub format: u32,
    pub recorded_at_ms: i64,
    /// The recording component: platform, version and digest.
    pub platform: String,
    pub connector_version: String,
    pub component_digest: String,
    pub max_window_ms: Option<u64>,
    pub shop: String,
    pub settings: BTreeMap<String, String>,
    /// The names of the shop's secrets; their values are never on the tape.
    pub secrets: Vec<String>,
    #[serde(default)]
    pub replay: ReplayPlan,
    pub calls: Vec<TapedCall>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapedCall {
    pub input: TapedInput,
    /// What the recording version answered (as berth's API would show it).
    pub answer: serde_json::Value,
    pub exchanges: Vec<TapedExchange>,
    /// The first value of each state key the call read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kv_reads: BTreeMap<String, Option<Body>>,
}

impl TapedCall {
    /// A call that ran with a recording tape: its input, its answer, and the exchanges
    /// and state reads the tape holds (not yet redacted).
    pub fn recorded(input: TapedInput, answer: serde_json::Value, tape: &berth_runtime::tape::Tape) -> TapedCall {
        let (exchanges, kv_reads) = match tape {
            berth_runtime::tape::Tape::Recording { exchanges, kv_reads } => (
                exchanges.iter().map(TapedExchange::of).collect(),
                kv_reads.iter().map(|(k, v)| (k.clone(), v.as_deref().map(Body::of))).collect(),
            ),
            _ => (Vec::new(), BTreeMap::new()),
        };
        TapedCall { input, answer, exchanges, kv_reads }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "call", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TapedInput {
    Check,
    PullOrders { window: TimeWindow, page_cursor: Option<String> },
    PushInventory { updates: Vec<StockUpdate> },
    HandleWebhook { headers: Vec<(String, String)>, body: Body },
}

impl TapedInput {
    /// A worker's call as a tape holds it.
    pub fn of(call: &berth_runtime::Call) -> TapedInput {
        match call {
            berth_runtime::Call::Pull(r) => TapedInput::PullOrders { window: r.window, page_cursor: r.page_cursor.clone() },
            berth_runtime::Call::Push(u) => TapedInput::PushInventory { updates: u.clone() },
            berth_runtime::Call::Webhook(w) => TapedInput::HandleWebhook { headers: w.headers.clone(), body: Body::of(&w.body) },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TapedInput::Check => "check",
            TapedInput::PullOrders { .. } => "pull-orders",
            TapedInput::PushInventory { .. } => "push-inventory",
            TapedInput::HandleWebhook { .. } => "handle-webhook",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapedExchange {
    pub method: Method,
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Body::is_empty")]
    pub body: Body,
    pub answer: TapedAnswer,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum TapedAnswer {
    Response { status: u16, headers: Vec<(String, String)>, body: Body },
    /// The request got no answer: `timeout`, `connection`, `denied`, `too-large`,
    /// `invalid-request` or `throttled` (the host's limiter held it back).
    Error { kind: String, detail: String },
}

/// Bytes: as text when they are UTF-8, else base64.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Body {
    #[default]
    Empty,
    Text(String),
    Binary { base64: String },
}

impl Body {
    pub fn of(bytes: &[u8]) -> Body {
        if bytes.is_empty() {
            return Body::Empty;
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Body::Text(s.to_string()),
            Err(_) => Body::Binary { base64: base64::engine::general_purpose::STANDARD.encode(bytes) },
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Empty => Vec::new(),
            Body::Text(s) => s.as_bytes().to_vec(),
            Body::Binary { base64 } => base64::engine::general_purpose::STANDARD.decode(base64).unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Body::Empty)
    }

    fn scrub(&mut self, r: &Redactor) {
        if let Body::Text(s) = self {
            *s = r.text(s).into_owned();
        }
    }
}

impl TapedAnswer {
    pub fn of(result: &Result<Response, HttpError>) -> TapedAnswer {
        match result {
            Ok(r) => TapedAnswer::Response { status: r.status, headers: r.headers.clone(), body: Body::of(&r.body) },
            Err(e) => {
                let (kind, detail) = match e {
                    HttpError::Denied(d) => ("denied", d.clone()),
                    HttpError::Timeout => ("timeout", String::new()),
                    HttpError::Connection(d) => ("connection", d.clone()),
                    HttpError::TooLarge(n) => ("too-large", n.to_string()),
                    HttpError::InvalidRequest(d) => ("invalid-request", d.clone()),
                    HttpError::Throttled(ms) => ("throttled", ms.to_string()),
                };
                TapedAnswer::Error { kind: kind.into(), detail }
            }
        }
    }

    pub fn result(&self) -> Result<Response, HttpError> {
        match self {
            TapedAnswer::Response { status, headers, body } => Ok(Response { status: *status, headers: headers.clone(), body: body.bytes() }),
            TapedAnswer::Error { kind, detail } => Err(match kind.as_str() {
                "timeout" => HttpError::Timeout,
                "connection" => HttpError::Connection(detail.clone()),
                "too-large" => HttpError::TooLarge(detail.parse().unwrap_or(0)),
                "invalid-request" => HttpError::InvalidRequest(detail.clone()),
                "throttled" => HttpError::Throttled(detail.parse().unwrap_or(1000)),
                _ => HttpError::Denied(detail.clone()),
            }),
        }
    }
}

impl TapedExchange {
    pub fn of(x: &Exchange) -> TapedExchange {
        TapedExchange { method: x.method, url: x.url.clone(), headers: x.headers.clone(), body: Body::of(&x.body), answer: TapedAnswer::of(&x.result) }
    }
}

/// Whether a parameter or header of this name carries a credential or a signature.
pub fn sensitive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(n.as_str(), "sign" | "sig" | "session" | "cookie" | "set-cookie" | "authorization" | "proxy-authorization")
        || ["-sign", "_sign", "-sig", "_sig"].iter().any(|s| n.ends_with(s))
        || ["token", "secret", "signature", "password", "hmac", "api_key", "apikey", "api-key", "access_key", "access-key"].iter().any(|s| n.contains(s))
}

/// Query parameters, and form parameters of a body that is a form.
pub fn params(url: &str, body: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = url::Url::parse(url).map(|u| u.query_pairs().into_owned().collect()).unwrap_or_default();
    if let Ok(text) = std::str::from_utf8(body) {
        let t = text.trim();
        if !t.is_empty() && !t.starts_with(['{', '[']) && t.contains('=') && !t.contains(char::is_whitespace) {
            out.extend(url::form_urlencoded::parse(t.as_bytes()).into_owned());
        }
    }
    out
}

/// Learn what must not reach the tape from its requests, then scrub everything.
pub fn redact(tape: &mut TapeFile, mut r: Redactor) -> usize {
    let learned: usize = tape.calls.iter().map(|c| learn(c, &mut r).len()).sum();
    for call in &mut tape.calls {
        scrub(call, &r);
    }
    learned
}

/// The credential and signature values a call's requests carry, as (name, value), each
/// added to `r` as `<redacted:NAME>`.
pub fn learn(call: &TapedCall, r: &mut Redactor) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for x in &call.exchanges {
        found.extend(params(&x.url, &x.body.bytes()).into_iter().filter(|(k, _)| sensitive(k)));
        for (k, v) in &x.headers {
            if sensitive(k) {
                found.push((k.to_ascii_lowercase(), v.clone()));
                // `Bearer X`, `Basic X`: the credential alone too.
                if let Some((_, cred)) = v.split_once(' ') {
                    found.push((k.to_ascii_lowercase(), cred.trim().to_string()));
                }
            }
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&x.body.bytes()) {
            json_sensitive(&json, &mut found);
        }
    }
    for (k, v) in &found {
        r.add(v, &format!("<redacted:{k}>"));
    }
    found
}

/// Replace what `r` knows everywhere in a call: URLs, headers, bodies, answers, state.
pub fn scrub(call: &mut TapedCall, r: &Redactor) {
    let text = call.answer.to_string();
    if let Ok(v) = serde_json::from_str(&r.text(&text)) {
        call.answer = v;
    }
    if let TapedInput::HandleWebhook { headers, body } = &mut call.input {
        for (_, v) in headers.iter_mut() {
            *v = r.text(v).into_owned();
        }
        body.scrub(r);
    }
    for x in &mut call.exchanges {
        x.url = r.text(&x.url).into_owned();
        for (_, v) in x.headers.iter_mut() {
            *v = r.text(v).into_owned();
        }
        x.body.scrub(r);
        if let TapedAnswer::Response { headers, body, .. } = &mut x.answer {
            for (_, v) in headers.iter_mut() {
                *v = r.text(v).into_owned();
            }
            body.scrub(r);
        }
    }
    for v in call.kv_reads.values_mut().flatten() {
        v.scrub(r);
    }
}

fn json_sensitive(v: &serde_json::Value, found: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) if sensitive(k) => found.push((k.clone(), s.clone())),
                    other => json_sensitive(other, found),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| json_sensitive(v, found)),
        _ => {}
    }
}

impl TapeFile {
    /// A tape file, a directory holding `tape.json`, or a running berth's recording
    /// directory (journal.rs: `meta.json` and the calls in `calls*.jsonl`).
    pub fn read(dir: &Path) -> Result<TapeFile, TapeError> {
        if dir.is_dir() && !dir.join(TAPE_FILE).exists() && dir.join(journal::META_FILE).exists() {
            return journal::read(dir);
        }
        let path = if dir.is_dir() { dir.join(TAPE_FILE) } else { dir.to_path_buf() };
        let text = std::fs::read_to_string(&path).map_err(|source| TapeError::Read { path: path.clone(), source })?;
        let tape: TapeFile = serde_json::from_str(&text).map_err(|e| TapeError::Invalid { path: path.clone(), why: e.to_string() })?;
        if tape.format != FORMAT {
            return Err(TapeError::Invalid { path, why: format!("format {} is not {FORMAT}, the one this kit reads: record it again", tape.format) });
        }
        Ok(tape)
    }

    /// Write `dir/tape.json` by a temporary name and a rename: never half written.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, TapeError> {
        let path = dir.join(TAPE_FILE);
        let err = |source| TapeError::Write { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = dir.join(format!(".{TAPE_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(path)
    }

    pub fn exchanges(&self) -> usize {
        self.calls.iter().map(|c| c.exchanges.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_carry_credentials() {
        for n in ["sign", "access_token", "X-Shopify-Access-Token", "Authorization", "client_secret", "X-Souk-Sign", "x-api-signature", "hmac"] {
            assert!(sensitive(n), "{n}");
        }
        for n in ["timestamp", "method", "param", "page_size", "signMethod", "design"] {
            assert!(!sensitive(n), "{n}");
        }
    }

    #[test]
    fn bodies_round_trip_as_text_or_base64() {
        for b in [&b""[..], b"{\"a\":1}", &[0xff, 0x00, 0x10]] {
            let body = Body::of(b);
            let json = serde_json::to_string(&body).unwrap();
            assert_eq!(serde_json::from_str::<Body>(&json).unwrap().bytes(), b);
        }
    }
}
