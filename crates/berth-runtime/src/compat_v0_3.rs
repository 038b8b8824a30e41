//! The 0.3.0 world's imports, served by the current implementations: kv, config, log,
//! metrics and crypto have the 0.2.0 shape; `http` adds `send-costed` and `quota` is new
//! (a platform's own quota numbers, reported by the connector).

super::compat::delegate_http!(crate::bindings::v0_3::berth::connector, |ms| http::HttpError::Throttled(ms), costed);
super::compat::delegate_imports!(crate::bindings::v0_3::berth::connector);

impl crate::bindings::v0_3::berth::connector::quota::Host for crate::state::HostState {
    fn report(&mut self, r: crate::bindings::v0_3::berth::connector::quota::QuotaState) -> Result<(), String> {
        self.report_quota(berth_types::http::QuotaReport { name: r.name, available: r.available, maximum: r.maximum, restore_per_second: r.restore_per_second })
    }
}
