//! The 0.4.0 world's imports: the same as 0.3.0's (only an export is new, `listings`),
//! served by the current implementations.

super::compat::delegate_http!(crate::bindings::v0_4::berth::connector, |ms| http::HttpError::Throttled(ms), costed);
super::compat::delegate_imports!(crate::bindings::v0_4::berth::connector);

impl crate::bindings::v0_4::berth::connector::quota::Host for crate::state::HostState {
    fn report(&mut self, r: crate::bindings::v0_4::berth::connector::quota::QuotaState) -> Result<(), String> {
        self.report_quota(berth_types::http::QuotaReport { name: r.name, available: r.available, maximum: r.maximum, restore_per_second: r.restore_per_second })
    }
}
