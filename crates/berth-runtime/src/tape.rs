//! A call's view of the outside world, recorded while the active version runs and
//! replayed to a shadow candidate, so the candidate sees the same platform answers and
//! the same stored state without sending anything anywhere or changing any state.
//!
//! Replayed requests are matched in order by method, host and path (query and body are
//! not compared: signed APIs put timestamps there). A request that does not match, or
//! comes after the recording ran out, is refused and noted as a mismatch. The vendor
//! kit replays its tapes through a [`Script`] instead (berth-kit's replay.rs).

use berth_types::http::{HttpError, Method, Request, Response};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: Method,
    pub url: String,
    /// The request's headers and body as the connector sent them (kept for the vendor
    /// kit's tapes, which match on parameters and body).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub result: Result<Response, HttpError>,
}

/// Answers replayed requests from something other than one call's in-order recording:
/// the vendor kit's tapes, matched by parameters, with faults injected.
pub trait Script: Send {
    fn answer(&mut self, req: &Request) -> Result<Response, HttpError>;
}

/// Where a replay's answers come from.
pub enum Source {
    /// The active version's exchanges of the same call, in order (shadow runs).
    InOrder { exchanges: VecDeque<Exchange>, answered: usize, mismatches: Vec<String> },
    Script(Box<dyn Script>),
}

#[derive(Default)]
pub enum Tape {
    /// A normal call.
    #[default]
    Off,
    Recording {
        exchanges: Vec<Exchange>,
        /// The first value each key had when the call read it.
        kv_reads: BTreeMap<String, Option<Vec<u8>>>,
    },
    /// Nothing leaves: requests are answered from `source`, kv reads see the recorded
    /// values, kv writes stay in the overlay.
    Replaying {
        source: Source,
        kv_reads: BTreeMap<String, Option<Vec<u8>>>,
        /// The replayed call's own writes, kept from the store.
        overlay: BTreeMap<String, Option<Vec<u8>>>,
    },
}

fn endpoint(url: &str) -> (String, String) {
    match url::Url::parse(url) {
        Ok(u) => (u.host_str().unwrap_or("").to_string(), u.path().to_string()),
        Err(_) => (String::new(), url.to_string()),
    }
}

fn describe(method: &Method, url: &str) -> String {
    let (host, path) = endpoint(url);
    format!("{} {host}{path}", method.as_str())
}

impl Tape {
    pub fn recording() -> Tape {
        Tape::Recording { exchanges: Vec::new(), kv_reads: BTreeMap::new() }
    }

    /// A replay answered by `script`, the state reads seeing `kv_reads` first.
    pub fn scripted(script: Box<dyn Script>, kv_reads: BTreeMap<String, Option<Vec<u8>>>) -> Tape {
        Tape::Replaying { source: Source::Script(script), kv_reads, overlay: BTreeMap::new() }
    }

    /// Turn a recording into a replay.
    pub fn into_replay(self) -> Tape {
        match self {
            Tape::Recording { exchanges, kv_reads } => Tape::Replaying {
                source: Source::InOrder { exchanges: exchanges.into(), answered: 0, mismatches: Vec::new() },
                kv_reads,
                overlay: BTreeMap::new(),
            },
            other => other,
        }
    }

    pub fn is_replaying(&self) -> bool {
        matches!(self, Tape::Replaying { .. })
    }

    /// Requests an in-order replay could not answer from the recording.
    pub fn mismatches(&self) -> &[String] {
        match self {
            Tape::Replaying { source: Source::InOrder { mismatches, .. }, .. } => mismatches,
            _ => &[],
        }
    }

    /// Answer a replayed request (`None` when not replaying).
    pub fn answer(&mut self, req: &Request) -> Option<Result<Response, HttpError>> {
        let Tape::Replaying { source, .. } = self else { return None };
        let (exchanges, answered, mismatches) = match source {
            Source::Script(script) => return Some(script.answer(req)),
            Source::InOrder { exchanges, answered, mismatches } => (exchanges, answered, mismatches),
        };
        let n = *answered + mismatches.len() + 1;
        let asked = describe(&req.method, &req.url);
        let Some(next) = exchanges.pop_front() else {
            mismatches.push(format!("request {n} ({asked}) was not made by the active version"));
            return Some(Err(HttpError::Denied("shadow run: the active version made no such request".into())));
        };
        let recorded = describe(&next.method, &next.url);
        if recorded != asked {
            mismatches.push(format!("request {n} was {asked}; the active version's was {recorded}"));
            return Some(Err(HttpError::Denied("shadow run: this request differs from the active version's".into())));
        }
        *answered += 1;
        Some(next.result)
    }

    pub fn is_recording(&self) -> bool {
        matches!(self, Tape::Recording { .. })
    }

    /// Note an exchange: `req` is the request as sent, kept whole.
    pub fn record(&mut self, req: Request, result: &Result<Response, HttpError>) {
        if let Tape::Recording { exchanges, .. } = self {
            exchanges.push(Exchange { method: req.method, url: req.url, headers: req.headers, body: req.body, result: result.clone() });
        }
    }

    /// A kv read: replays see the recorded value (or their own write); recordings note it.
    /// `read` fetches the stored value.
    pub fn kv_get(&mut self, key: &str, read: impl FnOnce() -> Result<Option<Vec<u8>>, String>) -> Result<Option<Vec<u8>>, String> {
        match self {
            Tape::Off => read(),
            Tape::Recording { kv_reads, .. } => {
                let v = read()?;
                kv_reads.entry(key.to_string()).or_insert_with(|| v.clone());
                Ok(v)
            }
            Tape::Replaying { overlay, kv_reads, .. } => match overlay.get(key).or_else(|| kv_reads.get(key)) {
                Some(v) => Ok(v.clone()),
                None => read(),
            },
        }
    }

    /// A kv write during a replay goes to the overlay (returns true); otherwise the
    /// caller writes the store.
    pub fn kv_put(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        match self {
            Tape::Replaying { overlay, .. } => {
                overlay.insert(key.to_string(), value.map(<[u8]>::to_vec));
                true
            }
            _ => false,
        }
    }

    /// Recorded requests an in-order replay never asked for.
    pub fn unused(&self) -> usize {
        match self {
            Tape::Replaying { source: Source::InOrder { exchanges, .. }, .. } => exchanges.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<Response, HttpError> {
        Ok(Response { status: 200, headers: vec![], body: body.as_bytes().to_vec() })
    }

    fn req(method: Method, url: &str) -> Request {
        Request { method, url: url.into(), headers: vec![], body: vec![], timeout_ms: None }
    }

    #[test]
    fn replays_in_order_by_endpoint_and_notes_mismatches() {
        let mut t = Tape::recording();
        t.record(req(Method::Get, "https://a.example/orders.json?since=1&sig=X"), &ok("page1"));
        t.record(req(Method::Post, "https://a.example/router?t=1"), &ok("done"));
        t.kv_get("cursor", || Ok(Some(b"7".to_vec()))).unwrap();
        let mut r = t.into_replay();
        assert!(r.is_replaying());
        // The same endpoints with another signature: answered from the recording.
        let first = r.answer(&req(Method::Get, "https://a.example/orders.json?since=1&sig=Y")).unwrap().unwrap();
        assert_eq!(first.body, b"page1");
        // Another endpoint: refused and noted.
        assert!(matches!(r.answer(&req(Method::Get, "https://a.example/other")), Some(Err(HttpError::Denied(_)))));
        assert!(matches!(r.answer(&req(Method::Get, "https://a.example/more")), Some(Err(HttpError::Denied(_)))));
        assert_eq!(r.mismatches().len(), 2, "{:?}", r.mismatches());
        assert!(r.mismatches()[0].contains("the active version's was POST a.example/router"), "{:?}", r.mismatches());
        // kv: the recorded value wins over the store; writes stay in the overlay.
        assert_eq!(r.kv_get("cursor", || Ok(Some(b"9".to_vec()))).unwrap(), Some(b"7".to_vec()));
        assert!(r.kv_put("cursor", Some(b"8")));
        assert_eq!(r.kv_get("cursor", || Ok(None)).unwrap(), Some(b"8".to_vec()));
        assert_eq!(r.kv_get("other", || Ok(Some(b"s".to_vec()))).unwrap(), Some(b"s".to_vec()));
        assert_eq!(r.unused(), 0);
        assert!(Tape::Off.answer(&req(Method::Get, "https://x")).is_none());
    }

    #[test]
    fn a_script_answers_every_request_and_keeps_writes() {
        struct Echo;
        impl Script for Echo {
            fn answer(&mut self, req: &Request) -> Result<Response, HttpError> {
                ok(&req.url)
            }
        }
        let mut t = Tape::scripted(Box::new(Echo), BTreeMap::from([("token".to_string(), Some(b"t".to_vec()))]));
        assert_eq!(t.answer(&req(Method::Get, "https://b.example/x")).unwrap().unwrap().body, b"https://b.example/x");
        assert_eq!(t.kv_get("token", || Ok(None)).unwrap(), Some(b"t".to_vec()));
        assert!(t.kv_put("cursor", Some(b"1")));
        assert!(t.mismatches().is_empty());
    }
}
