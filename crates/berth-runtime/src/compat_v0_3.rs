//! The 0.3.0 world's imports, served by the current implementations: every interface has
//! the 0.2.0 shape (0.3 adds exports — credentials, OAuth — and types, not imports).

super::compat::delegate_http!(crate::bindings::v0_3::berth::connector, |ms| http::HttpError::Throttled(ms));
super::compat::delegate_imports!(crate::bindings::v0_3::berth::connector);
