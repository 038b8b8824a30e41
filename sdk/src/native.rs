//! The host imports for a connector compiled natively (any target but wasm32).
//!
//! Built for `wasm32-wasip2`, a connector's [`crate::host`] calls are component imports
//! the host answers. Built natively, they go to a [`Host`] installed on the calling
//! thread with [`with_host`]: a connector's unit tests can answer them from fixtures,
//! and a Rust host can link a connector in and answer them itself (berth's end-to-end
//! benchmark runs the Shopify connector both ways). A call with no host installed
//! panics, saying so.

use crate::bindings::berth::connector::http::{HttpError, Request, Response};
use crate::bindings::berth::connector::log::Level;
use std::cell::RefCell;

/// Which metric call a connector made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// What answers a natively built connector's host calls: the `berth:connector` imports,
/// one method each (the metrics calls share one).
pub trait Host {
    fn send(&mut self, req: &Request) -> Result<Response, HttpError>;
    fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn kv_set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    fn kv_delete(&mut self, key: &str) -> Result<(), String>;
    fn kv_list_prefix(&mut self, prefix: &str) -> Result<Vec<String>, String>;
    fn config(&mut self, key: &str) -> Option<String>;
    fn log(&mut self, level: Level, message: &str);
    fn metric(&mut self, kind: MetricKind, name: &str, labels: &[(String, String)], value: f64);
    fn md5(&mut self, data: &[u8]) -> Vec<u8>;
    fn sha256(&mut self, data: &[u8]) -> Vec<u8>;
    fn hmac_md5(&mut self, key: &[u8], data: &[u8]) -> Vec<u8>;
    fn hmac_sha256(&mut self, key: &[u8], data: &[u8]) -> Vec<u8>;
    fn base64_encode(&mut self, data: &[u8]) -> String;
    fn base64_decode(&mut self, text: &str) -> Result<Vec<u8>, String>;
    fn hex_encode(&mut self, data: &[u8], upper: bool) -> String;
    /// `http.send-costed` (0.3.0): by default the request goes as `send` would send it.
    #[cfg(not(feature = "wit-0-1"))]
    fn send_costed(&mut self, req: &Request, cost: &crate::bindings::berth::connector::http::Cost) -> Result<Response, HttpError> {
        let _ = cost;
        self.send(req)
    }
    /// `quota.report` (0.3.0): by default taken and forgotten.
    #[cfg(not(feature = "wit-0-1"))]
    fn report_quota(&mut self, state: &crate::bindings::berth::connector::quota::QuotaState) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

thread_local! {
    static HOST: RefCell<Option<Box<dyn Host>>> = const { RefCell::new(None) };
}

/// Run `f` (a connector call) with `host` answering its host calls on this thread; the
/// host installed before, if any, is back afterwards, also when `f` panics.
pub fn with_host<R>(host: impl Host + 'static, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Box<dyn Host>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            HOST.with(|h| *h.borrow_mut() = before);
        }
    }
    let before = HOST.with(|h| h.borrow_mut().replace(Box::new(host)));
    let _restore = Restore(before);
    f()
}

fn call<R>(f: impl FnOnce(&mut dyn Host) -> R) -> R {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        let host = h.as_deref_mut().expect(
            "a berth host call outside berth_sdk::native::with_host: a natively built connector needs a Host installed for its calls",
        );
        f(host)
    })
}

// The same functions, with the same signatures, as the generated component imports.

pub(crate) mod http {
    pub use crate::bindings::berth::connector::http::{HttpError, Method, Request, Response};

    pub fn send(req: &Request) -> Result<Response, HttpError> {
        super::call(|h| h.send(req))
    }

    #[cfg(not(feature = "wit-0-1"))]
    pub use crate::bindings::berth::connector::http::Cost;

    #[cfg(not(feature = "wit-0-1"))]
    pub fn send_costed(req: &Request, cost: &Cost) -> Result<Response, HttpError> {
        super::call(|h| h.send_costed(req, cost))
    }
}

#[cfg(not(feature = "wit-0-1"))]
pub(crate) mod quota {
    pub use crate::bindings::berth::connector::quota::QuotaState;

    pub fn report(state: &QuotaState) -> Result<(), String> {
        super::call(|h| h.report_quota(state))
    }
}

pub(crate) mod kv {
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
        super::call(|h| h.kv_get(key))
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        super::call(|h| h.kv_set(key, value))
    }
    pub fn delete(key: &str) -> Result<(), String> {
        super::call(|h| h.kv_delete(key))
    }
    pub fn list_prefix(prefix: &str) -> Result<Vec<String>, String> {
        super::call(|h| h.kv_list_prefix(prefix))
    }
}

pub(crate) mod config {
    pub fn get(key: &str) -> Option<String> {
        super::call(|h| h.config(key))
    }
}

pub(crate) mod log {
    pub use crate::bindings::berth::connector::log::Level;

    pub fn log(level: Level, message: &str) {
        super::call(|h| h.log(level, message))
    }
}

pub(crate) mod metrics {
    use super::MetricKind;

    pub fn counter_add(name: &str, labels: &[(String, String)], value: u64) {
        super::call(|h| h.metric(MetricKind::Counter, name, labels, value as f64))
    }
    pub fn gauge_set(name: &str, labels: &[(String, String)], value: f64) {
        super::call(|h| h.metric(MetricKind::Gauge, name, labels, value))
    }
    pub fn histogram_observe(name: &str, labels: &[(String, String)], value: f64) {
        super::call(|h| h.metric(MetricKind::Histogram, name, labels, value))
    }
}

pub(crate) mod crypto {
    pub fn md5(data: &[u8]) -> Vec<u8> {
        super::call(|h| h.md5(data))
    }
    pub fn sha256(data: &[u8]) -> Vec<u8> {
        super::call(|h| h.sha256(data))
    }
    pub fn hmac_md5(key: &[u8], data: &[u8]) -> Vec<u8> {
        super::call(|h| h.hmac_md5(key, data))
    }
    pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
        super::call(|h| h.hmac_sha256(key, data))
    }
    pub fn base64_encode(data: &[u8]) -> String {
        super::call(|h| h.base64_encode(data))
    }
    pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
        super::call(|h| h.base64_decode(text))
    }
    pub fn hex_encode(data: &[u8], upper: bool) -> String {
        super::call(|h| h.hex_encode(data, upper))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    /// Answers from a map and records what the connector did.
    #[derive(Default)]
    struct Fixture {
        state: Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
        sent: Rc<RefCell<Vec<String>>>,
    }

    impl Host for Fixture {
        fn send(&mut self, req: &Request) -> Result<Response, HttpError> {
            self.sent.borrow_mut().push(req.url.clone());
            match req.url.as_str() {
                "https://p.example/slow" => Err(HttpError::Timeout),
                _ => Ok(Response { status: 200, headers: vec![("X-Page".into(), "2".into())], body: b"{}".to_vec() }),
            }
        }
        fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.state.borrow().get(key).cloned())
        }
        fn kv_set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
            self.state.borrow_mut().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn kv_delete(&mut self, key: &str) -> Result<(), String> {
            self.state.borrow_mut().remove(key);
            Ok(())
        }
        fn kv_list_prefix(&mut self, prefix: &str) -> Result<Vec<String>, String> {
            Ok(self.state.borrow().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
        }
        fn config(&mut self, key: &str) -> Option<String> {
            (key == "base_url").then(|| "https://p.example".into())
        }
        fn log(&mut self, _: Level, _: &str) {}
        fn metric(&mut self, _: MetricKind, _: &str, _: &[(String, String)], _: f64) {}
        fn md5(&mut self, _: &[u8]) -> Vec<u8> {
            vec![1]
        }
        fn sha256(&mut self, _: &[u8]) -> Vec<u8> {
            vec![2]
        }
        fn hmac_md5(&mut self, _: &[u8], _: &[u8]) -> Vec<u8> {
            vec![3]
        }
        fn hmac_sha256(&mut self, key: &[u8], data: &[u8]) -> Vec<u8> {
            [key, data].concat()
        }
        fn base64_encode(&mut self, data: &[u8]) -> String {
            format!("b64({})", data.len())
        }
        fn base64_decode(&mut self, _: &str) -> Result<Vec<u8>, String> {
            Err("not base64".into())
        }
        fn hex_encode(&mut self, data: &[u8], upper: bool) -> String {
            format!("{}{}", data.len(), if upper { "U" } else { "l" })
        }
    }

    #[test]
    fn a_native_build_answers_host_calls_from_the_installed_host() {
        let fixture = Fixture::default();
        let (state, sent) = (fixture.state.clone(), fixture.sent.clone());
        with_host(fixture, || {
            let base = host::required_config("base_url").unwrap();
            let resp = host::get(&format!("{base}/orders"), &[]).unwrap();
            assert_eq!(host::header(&resp, "x-page"), Some("2"));
            // The SDK maps the host's answer the same way in both builds.
            assert!(matches!(host::get("https://p.example/slow", &[]), Err(crate::ConnectorError::Transient(_))));
            assert!(matches!(host::required_config("token"), Err(crate::ConnectorError::Permanent(m)) if m.contains("`token`")));
            host::state::set("cursor", b"abc").unwrap();
            assert_eq!(host::state::list_prefix("cur").unwrap(), vec!["cursor".to_string()]);
            assert_eq!(host::hash::hmac_sha256(b"k", b"d"), b"kd");
            assert_eq!(host::hash::hex_upper(b"xyz"), "3U");
            assert!(host::hash::base64_decode("?").is_err());
        });
        assert_eq!(state.borrow().get("cursor").map(Vec::as_slice), Some(&b"abc"[..]));
        assert_eq!(*sent.borrow(), ["https://p.example/orders", "https://p.example/slow"]);
    }

    #[test]
    fn the_host_before_is_back_after_the_call_even_when_it_panics() {
        let outer = Fixture::default();
        let outer_state = outer.state.clone();
        with_host(outer, || {
            let panicked = std::panic::catch_unwind(|| {
                with_host(Fixture::default(), || {
                    host::state::set("inner", b"1").unwrap();
                    panic!("the connector panicked");
                })
            });
            assert!(panicked.is_err());
            host::state::set("outer", b"2").unwrap();
        });
        assert_eq!(outer_state.borrow().keys().collect::<Vec<_>>(), ["outer"]);
        let none = std::panic::catch_unwind(|| host::config("base_url"));
        assert!(none.is_err(), "no host installed: the call panics, saying so");
    }
}
