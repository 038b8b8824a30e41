//! Other worlds' imports served by the current (0.2.0) implementations:
//! [`delegate_imports!`] writes the interfaces whose shapes are the same in every world
//! (kv, config, log, metrics, crypto, types) for a world's bindings; each world's own
//! module (`compat_v0_1.rs`, `compat_v0_3.rs`) writes its `http`, where they differ.

/// Implement a world's kv, config, log, metrics, crypto and types imports for
/// `HostState` by handing each call to the current world's implementation. `$m` is the
/// world's generated `berth::connector` module.
macro_rules! delegate_imports {
    ($($m:ident)::+) => {
        const _: () = {
            use $crate::bindings::berth::connector as current;
            use $crate::state::HostState;
            use $($m)::+ as m;

            impl m::kv::Host for HostState {
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

            impl m::config::Host for HostState {
                fn get(&mut self, key: String) -> Option<String> {
                    <HostState as current::config::Host>::get(self, key)
                }
            }

            impl m::log::Host for HostState {
                fn log(&mut self, level: m::log::Level, message: String) {
                    let level = match level {
                        m::log::Level::Trace => current::log::Level::Trace,
                        m::log::Level::Debug => current::log::Level::Debug,
                        m::log::Level::Info => current::log::Level::Info,
                        m::log::Level::Warn => current::log::Level::Warn,
                        m::log::Level::Error => current::log::Level::Error,
                    };
                    <HostState as current::log::Host>::log(self, level, message)
                }
            }

            impl m::metrics::Host for HostState {
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

            impl m::crypto::Host for HostState {
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

            impl m::types::Host for HostState {}
        };
    };
}

/// Implement a world's `http` import for `HostState` through the current one's
/// `http_send`; `$throttled` makes the world's error for a request the host's limiter
/// held back `ms` milliseconds (worlds before 0.2 have no `throttled`). With `costed`,
/// the world's `send-costed` (0.3.0) too.
macro_rules! delegate_http {
    ($($m:ident)::+, |$ms:ident| $throttled:expr $(, $costed:ident)?) => {
        const _: () = {
            use $crate::state::HostState;
            use $($m)::+::http;
            use berth_types::http as t;

            fn request(req: http::Request) -> t::Request {
                let method = match req.method {
                    http::Method::Get => t::Method::Get,
                    http::Method::Head => t::Method::Head,
                    http::Method::Post => t::Method::Post,
                    http::Method::Put => t::Method::Put,
                    http::Method::Patch => t::Method::Patch,
                    http::Method::Delete => t::Method::Delete,
                };
                t::Request { method, url: req.url, headers: req.headers, body: req.body, timeout_ms: req.timeout_ms }
            }

            fn answer(r: Result<t::Response, t::HttpError>) -> Result<http::Response, http::HttpError> {
                match r {
                    Ok(r) => Ok(http::Response { status: r.status, headers: r.headers, body: r.body }),
                    Err(e) => Err(match e {
                        t::HttpError::Denied(why) => http::HttpError::Denied(why),
                        t::HttpError::Timeout => http::HttpError::Timeout,
                        t::HttpError::Throttled($ms) => $throttled,
                        t::HttpError::Connection(why) => http::HttpError::Connection(why),
                        t::HttpError::TooLarge(cap) => http::HttpError::TooLarge(cap),
                        t::HttpError::InvalidRequest(why) => http::HttpError::InvalidRequest(why),
                    }),
                }
            }

            impl http::Host for HostState {
                async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
                    answer(self.http_send(request(req)).await)
                }
                $(
                    $crate::compat::delegate_http!(@$costed);
                )?
            }
        };
    };
    (@costed) => {
        async fn send_costed(&mut self, req: http::Request, cost: http::Cost) -> Result<http::Response, http::HttpError> {
            let cost = t::Cost { quota: cost.quota, points: cost.points };
            answer(self.http_send_costed(request(req), Some(cost)).await)
        }
    };
}

/// `fn connector_error`, from a world's generated `connector-error` to berth's, its
/// messages cut to 512 bytes: for the modules calling the exports newer worlds added.
macro_rules! connector_error_fn {
    ($wit:path) => {
        fn connector_error(e: $wit) -> berth_types::connector::ConnectorError {
            use berth_types::connector::ConnectorError as Ours;
            use $wit as Theirs;
            let cut = |why: String| $crate::state::bounded(&why, 512).to_string();
            match e {
                Theirs::RateLimited(ms) => Ours::RateLimited(ms),
                Theirs::Auth(why) => Ours::Auth(cut(why)),
                Theirs::Transient(why) => Ours::Transient(cut(why)),
                Theirs::Permanent(why) => Ours::Permanent(cut(why)),
                Theirs::InvalidInput(why) => Ours::InvalidInput(cut(why)),
            }
        }
    };
}

pub(crate) use {connector_error_fn, delegate_http, delegate_imports};
