//! The 0.1.0 world's imports, served by the current implementations. Only `http` differs:
//! 0.1 has no `throttled` error, so a request the host's limiter held back reaches a 0.1
//! guest as `timeout` (the host still turns the call's outcome into `rate-limited`).

use super::bindings::berth::connector as current;
use super::bindings::v0_1::berth::connector::{config, crypto, http, kv, log, metrics, types};
use super::state::HostState;

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        use berth_types::http as t;
        let method = match req.method {
            http::Method::Get => t::Method::Get,
            http::Method::Head => t::Method::Head,
            http::Method::Post => t::Method::Post,
            http::Method::Put => t::Method::Put,
            http::Method::Patch => t::Method::Patch,
            http::Method::Delete => t::Method::Delete,
        };
        let req = t::Request { method, url: req.url, headers: req.headers, body: req.body, timeout_ms: req.timeout_ms };
        match self.http_send(req).await {
            Ok(r) => Ok(http::Response { status: r.status, headers: r.headers, body: r.body }),
            Err(e) => Err(match e {
                t::HttpError::Denied(why) => http::HttpError::Denied(why),
                t::HttpError::Timeout | t::HttpError::Throttled(_) => http::HttpError::Timeout,
                t::HttpError::Connection(why) => http::HttpError::Connection(why),
                t::HttpError::TooLarge(cap) => http::HttpError::TooLarge(cap),
                t::HttpError::InvalidRequest(why) => http::HttpError::InvalidRequest(why),
            }),
        }
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        <HostState as current::kv::Host>::get(self, key)
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        <HostState as current::kv::Host>::set(self, key, value)
    }
    fn delete(&mut self, key: String) -> Result<(), String> {
        <HostState as current::kv::Host>::delete(self, key)
    }
    fn list_prefix(&mut self, prefix: String) -> Result<Vec<String>, String> {
        <HostState as current::kv::Host>::list_prefix(self, prefix)
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        <HostState as current::config::Host>::get(self, key)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => current::log::Level::Trace,
            log::Level::Debug => current::log::Level::Debug,
            log::Level::Info => current::log::Level::Info,
            log::Level::Warn => current::log::Level::Warn,
            log::Level::Error => current::log::Level::Error,
        };
        <HostState as current::log::Host>::log(self, level, message)
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        <HostState as current::metrics::Host>::counter_add(self, name, labels, value)
    }
    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        <HostState as current::metrics::Host>::gauge_set(self, name, labels, value)
    }
    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        <HostState as current::metrics::Host>::histogram_observe(self, name, labels, value)
    }
}

impl crypto::Host for HostState {
    fn md5(&mut self, data: Vec<u8>) -> Vec<u8> {
        <HostState as current::crypto::Host>::md5(self, data)
    }
    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        <HostState as current::crypto::Host>::sha256(self, data)
    }
    fn hmac_md5(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        <HostState as current::crypto::Host>::hmac_md5(self, key, data)
    }
    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        <HostState as current::crypto::Host>::hmac_sha256(self, key, data)
    }
    fn base64_encode(&mut self, data: Vec<u8>) -> String {
        <HostState as current::crypto::Host>::base64_encode(self, data)
    }
    fn base64_decode(&mut self, text: String) -> Result<Vec<u8>, String> {
        <HostState as current::crypto::Host>::base64_decode(self, text)
    }
    fn hex_encode(&mut self, data: Vec<u8>, upper: bool) -> String {
        <HostState as current::crypto::Host>::hex_encode(self, data, upper)
    }
}

impl types::Host for HostState {}
