//! A call's view of the outside world, recorded while the active version runs and
//! replayed to a shadow candidate, so the candidate sees the same platform answers and
//! the same stored state without sending anything anywhere or changing any state.
//!
//! Replayed requests are matched in order by method, host and path (query and body are
//! not compared: signed APIs put timestamps there). A request that does not match, or
//! comes after the recording ran out, is refused and noted as a mismatch.

use berth_types::http::{HttpError, Method, Response};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: Method,
    pub url: String,
    pub result: Result<Response, HttpError>,
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
    Replaying {
        exchanges: VecDeque<Exchange>,
        kv_reads: BTreeMap<String, Option<Vec<u8>>>,
        /// The candidate's own writes, kept from the store.
        overlay: BTreeMap<String, Option<Vec<u8>>>,
        answered: usize,
        mismatches: Vec<String>,
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

    /// Turn a recording into a replay.
    pub fn into_replay(self) -> Tape {
        match self {
            Tape::Recording { exchanges, kv_reads } => Tape::Replaying {
                exchanges: exchanges.into(),
                kv_reads,
                overlay: BTreeMap::new(),
                answered: 0,
                mismatches: Vec::new(),
            },
            other => other,
        }
    }

    pub fn is_replaying(&self) -> bool {
        matches!(self, Tape::Replaying { .. })
    }

    /// Requests a replay could not answer from the recording.
    pub fn mismatches(&self) -> &[String] {
        match self {
            Tape::Replaying { mismatches, .. } => mismatches,
            _ => &[],
        }
    }

    /// Answer a replayed request (`None` when not replaying).
    pub fn answer(&mut self, method: &Method, url: &str) -> Option<Result<Response, HttpError>> {
        let Tape::Replaying { exchanges, answered, mismatches, .. } = self else { return None };
        let n = *answered + mismatches.len() + 1;
        let asked = describe(method, url);
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

    pub fn record(&mut self, method: &Method, url: &str, result: &Result<Response, HttpError>) {
        if let Tape::Recording { exchanges, .. } = self {
            exchanges.push(Exchange { method: *method, url: url.to_string(), result: result.clone() });
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

    /// Recorded requests the replay never asked for.
    pub fn unused(&self) -> usize {
        match self {
            Tape::Replaying { exchanges, .. } => exchanges.len(),
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

    #[test]
    fn replays_in_order_by_endpoint_and_notes_mismatches() {
        let mut t = Tape::recording();
        t.record(&Method::Get, "https://a.example/orders.json?since=1&sig=X", &ok("page1"));
        t.record(&Method::Post, "https://a.example/router?t=1", &ok("done"));
        t.kv_get("cursor", || Ok(Some(b"7".to_vec()))).unwrap();
        let mut r = t.into_replay();
        assert!(r.is_replaying());
        // The same endpoints with another signature: answered from the recording.
        let first = r.answer(&Method::Get, "https://a.example/orders.json?since=1&sig=Y").unwrap().unwrap();
        assert_eq!(first.body, b"page1");
        // Another endpoint: refused and noted.
        assert!(matches!(r.answer(&Method::Get, "https://a.example/other"), Some(Err(HttpError::Denied(_)))));
        assert!(matches!(r.answer(&Method::Get, "https://a.example/more"), Some(Err(HttpError::Denied(_)))));
        assert_eq!(r.mismatches().len(), 2, "{:?}", r.mismatches());
        assert!(r.mismatches()[0].contains("the active version's was POST a.example/router"), "{:?}", r.mismatches());
        // kv: the recorded value wins over the store; writes stay in the overlay.
        assert_eq!(r.kv_get("cursor", || Ok(Some(b"9".to_vec()))).unwrap(), Some(b"7".to_vec()));
        assert!(r.kv_put("cursor", Some(b"8")));
        assert_eq!(r.kv_get("cursor", || Ok(None)).unwrap(), Some(b"8".to_vec()));
        assert_eq!(r.kv_get("other", || Ok(Some(b"s".to_vec()))).unwrap(), Some(b"s".to_vec()));
        assert_eq!(r.unused(), 0);
        assert!(Tape::Off.answer(&Method::Get, "https://x").is_none());
    }
}
