//! Typed wrappers over the host imports: component imports in a wasm32 build, the
//! installed [`crate::native::Host`] in a native one.

#[cfg(target_arch = "wasm32")]
use crate::bindings::berth::connector::{config, crypto, http, kv, log, metrics};
#[cfg(all(target_arch = "wasm32", not(feature = "wit-0-1")))]
use crate::bindings::berth::connector::quota;
#[cfg(not(target_arch = "wasm32"))]
use crate::native::{config, crypto, http, kv, log, metrics};
#[cfg(all(not(target_arch = "wasm32"), not(feature = "wit-0-1")))]
use crate::native::quota;
use crate::ConnectorError;

pub use http::{HttpError, Method, Request, Response};
pub use log::Level;

/// A shop setting or secret; `None` when ops did not configure it.
pub fn config(key: &str) -> Option<String> {
    config::get(key)
}

/// A shop setting the connector cannot work without, as an `auth`-free permanent error
/// naming the key when it is missing, so ops see what to add to `berth.toml`.
pub fn required_config(key: &str) -> Result<String, ConnectorError> {
    config::get(key).ok_or_else(|| {
        ConnectorError::Permanent(format!(
            "shop config is missing `{key}`: add it under the shop's [shops.*.settings] or [shops.*.secrets] in berth.toml"
        ))
    })
}

pub fn log(level: Level, message: &str) {
    log::log(level, message)
}

pub fn info(message: &str) {
    log::log(Level::Info, message)
}

pub fn warn(message: &str) {
    log::log(Level::Warn, message)
}

pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    metrics::counter_add(name, &own_labels(labels), value)
}

pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
    metrics::gauge_set(name, &own_labels(labels), value)
}

pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    metrics::histogram_observe(name, &own_labels(labels), value)
}

fn own_labels(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Send a request through the host. Host refusals and network failures come back as
/// [`ConnectorError`]s the host knows how to act on.
pub fn send(req: &Request) -> Result<Response, ConnectorError> {
    http::send(req).map_err(|e| connector_error(req, e))
}

/// Send a request expected to cost `points` of the platform quota `quota` (0.3.0): the
/// host waits until the shop's quota has them — as the platform last reported it with
/// [`report_quota`] — and answers `rate-limited` when that is longer than the call may
/// wait.
#[cfg(not(feature = "wit-0-1"))]
pub fn send_costed(req: &Request, quota: &str, points: f64) -> Result<Response, ConnectorError> {
    http::send_costed(req, &http::Cost { quota: quota.to_string(), points }).map_err(|e| connector_error(req, e))
}

/// Tell the host what the platform said about one of the shop's quotas (0.3.0): points
/// `available` now, the bucket's `maximum`, `restore_per_second`. Requests sent with
/// [`send_costed`] then wait for the platform's numbers, not a guess.
#[cfg(not(feature = "wit-0-1"))]
pub fn report_quota(name: &str, available: f64, maximum: f64, restore_per_second: f64) -> Result<(), String> {
    quota::report(&quota::QuotaState { name: name.to_string(), available, maximum, restore_per_second })
}

fn connector_error(req: &Request, e: HttpError) -> ConnectorError {
    match e {
        HttpError::Denied(why) => ConnectorError::Permanent(format!("host refused the request: {why}")),
        // The URL without its query or fragment: access tokens and signatures travel there,
        // and this text reaches berth's log and status.
        HttpError::Timeout => ConnectorError::Transient(format!("timed out calling {}", req.url.split(['?', '#']).next().unwrap_or_default())),
        HttpError::Connection(why) => ConnectorError::Transient(format!("connection failed: {why}")),
        HttpError::TooLarge(cap) => {
            ConnectorError::Transient(format!("response exceeded the host's {cap}-byte cap"))
        }
        HttpError::InvalidRequest(why) => ConnectorError::InvalidInput(why),
        // The host's limiter held the request back: park the shop, no retry spent.
        #[cfg(not(feature = "wit-0-1"))]
        HttpError::Throttled(ms) => ConnectorError::RateLimited(ms),
    }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, ConnectorError> {
    send(&Request {
        method: Method::Get,
        url: url.to_string(),
        headers: own_labels(headers),
        body: Vec::new(),
        timeout_ms: None,
    })
}

/// POST `body` with its content type added to `headers`.
fn post(url: &str, content_type: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Result<Response, ConnectorError> {
    let mut hs = own_labels(headers);
    hs.push(("content-type".into(), content_type.into()));
    send(&Request { method: Method::Post, url: url.to_string(), headers: hs, body, timeout_ms: None })
}

pub fn post_form(url: &str, form: &str, headers: &[(&str, &str)]) -> Result<Response, ConnectorError> {
    post(url, "application/x-www-form-urlencoded;charset=utf-8", form.as_bytes().to_vec(), headers)
}

pub fn post_json(url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Result<Response, ConnectorError> {
    post(url, "application/json", body.to_string().into_bytes(), headers)
}

/// First value of a response header, case-insensitive.
pub fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub mod state {
    //! Per-shop key-value state kept by the host (cursors, tokens).
    use super::kv;
    use crate::ConnectorError;

    fn storage(e: String) -> ConnectorError {
        ConnectorError::Transient(format!("host kv failed: {e}"))
    }

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, ConnectorError> {
        kv::get(key).map_err(storage)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), ConnectorError> {
        kv::set(key, value).map_err(storage)
    }
    pub fn delete(key: &str) -> Result<(), ConnectorError> {
        kv::delete(key).map_err(storage)
    }
    pub fn list_prefix(prefix: &str) -> Result<Vec<String>, ConnectorError> {
        kv::list_prefix(prefix).map_err(storage)
    }
}

pub mod hash {
    //! Signing primitives computed natively by the host.
    use super::crypto;

    pub fn md5(data: &[u8]) -> Vec<u8> {
        crypto::md5(data)
    }
    pub fn sha256(data: &[u8]) -> Vec<u8> {
        crypto::sha256(data)
    }
    pub fn hmac_md5(key: &[u8], data: &[u8]) -> Vec<u8> {
        crypto::hmac_md5(key, data)
    }
    pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
        crypto::hmac_sha256(key, data)
    }
    pub fn base64(data: &[u8]) -> String {
        crypto::base64_encode(data)
    }
    pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
        crypto::base64_decode(text)
    }
    pub fn hex_upper(data: &[u8]) -> String {
        crypto::hex_encode(data, true)
    }
    pub fn hex_lower(data: &[u8]) -> String {
        crypto::hex_encode(data, false)
    }
}
