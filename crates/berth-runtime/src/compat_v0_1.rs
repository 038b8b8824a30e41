//! The 0.1.0 world's imports, served by the current implementations. Only `http` differs:
//! 0.1 has no `throttled` error, so a request the host's limiter held back reaches a 0.1
//! guest as `timeout` (the host still turns the call's outcome into `rate-limited`).

super::compat::delegate_http!(crate::bindings::v0_1::berth::connector, |_ms| http::HttpError::Timeout);
super::compat::delegate_imports!(crate::bindings::v0_1::berth::connector);
