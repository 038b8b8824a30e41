//! Secrets out of guest text: a connector holds its shop's secrets (`config.get`) and may
//! echo them — in a log line, on stdout, in an error message, in a per-SKU rejection, in
//! a panic. Before any of that reaches a log line, a status page, the stock ledger or an
//! alert, every secret value of the calling shop (as written and URL-encoded) is
//! replaced with `<secret:KEY>`; a metric update naming one is dropped. Error and message
//! texts are also cut to [`MAX_GUEST_TEXT`].

use crate::config::ShopConfig;
use crate::runtime::bindings::berth::connector::types::{ConnectorError, UpdateResult};
use std::borrow::Cow;

/// Values shorter than this are not searched for (they would match ordinary text).
const MIN_SECRET_LEN: usize = 4;
/// Longest error or message text kept from a guest (it is stored in shop status, the
/// stock ledger and alerts); the rest is cut.
pub const MAX_GUEST_TEXT: usize = 2048;

/// The secret values of one shop and what replaces each.
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<(String, String)>,
}

impl Redactor {
    pub fn for_shop(cfg: Option<&ShopConfig>) -> Redactor {
        let mut needles = Vec::new();
        for (key, secret) in cfg.into_iter().flat_map(|c| c.secrets.iter()) {
            let value = secret.expose();
            if value.len() < MIN_SECRET_LEN {
                continue;
            }
            let label = format!("<secret:{key}>");
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            if encoded != value {
                needles.push((encoded, label.clone()));
            }
            needles.push((value.to_string(), label));
        }
        // Longest first, so a secret containing another is replaced whole.
        needles.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        Redactor { needles }
    }

    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if !self.needles.iter().any(|(n, _)| s.contains(n.as_str())) {
            return Cow::Borrowed(s);
        }
        let mut out = s.to_string();
        for (needle, label) in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), label);
            }
        }
        Cow::Owned(out)
    }

    /// Bound a guest string and take the secrets out of it.
    fn owned(&self, s: &mut String) {
        if s.len() > MAX_GUEST_TEXT {
            let keep = crate::runtime::state::bounded(s, MAX_GUEST_TEXT).len();
            s.truncate(keep);
            s.push_str(" …(cut)");
        }
        if let Cow::Owned(clean) = self.text(s) {
            *s = clean;
        }
    }

    pub fn error(&self, e: &mut ConnectorError) {
        match e {
            ConnectorError::Auth(s) | ConnectorError::Transient(s) | ConnectorError::Permanent(s) | ConnectorError::InvalidInput(s) => self.owned(s),
            ConnectorError::RateLimited(_) => {}
        }
    }

    pub fn results(&self, results: &mut [UpdateResult]) {
        for r in results {
            if let Some(m) = r.message.as_mut() {
                self.owned(m);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// A trap's message (a guest panic can print anything).
    pub fn call_error(&self, e: &mut super::CallError) {
        if let super::CallError::Trap { message, .. } = e {
            self.owned(message);
        }
    }

    /// Everything a call hands back that can carry text.
    pub fn output(&self, out: &mut Result<super::Output, super::CallError>) {
        use super::Output;
        match out {
            Ok(Output::Pull(Err(e)) | Output::Push(Err(e)) | Output::Webhook(Err(e))) => self.error(e),
            Ok(Output::Push(Ok(results))) => self.results(results),
            Ok(Output::Pull(Ok(_)) | Output::Webhook(Ok(_))) => {}
            Err(e) => self.call_error(e),
        }
    }

    /// What `check` hands back.
    pub fn health(&self, r: &mut Result<Result<crate::runtime::bindings::berth::connector::types::Health, ConnectorError>, super::CallError>) {
        match r {
            Ok(Ok(h)) => self.owned(&mut h.message),
            Ok(Err(e)) => self.error(e),
            Err(e) => self.call_error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn secrets_are_replaced_as_written_and_url_encoded() {
        let mut cfg: ShopConfig = toml::from_str("connector = \"c\"").unwrap();
        cfg.secrets.insert("app_secret".into(), Secret::new("s3cr3t/+key"));
        cfg.secrets.insert("pin".into(), Secret::new("42"));
        let r = Redactor::for_shop(Some(&cfg));
        assert_eq!(r.text("signing with s3cr3t/+key"), "signing with <secret:app_secret>");
        assert_eq!(r.text("GET /x?k=s3cr3t%2F%2Bkey"), "GET /x?k=<secret:app_secret>");
        assert_eq!(r.text("42 orders"), "42 orders", "values this short are left alone");
        assert!(matches!(r.text("nothing here"), Cow::Borrowed(_)));
        let mut e = ConnectorError::Auth("bad key s3cr3t/+key".into());
        r.error(&mut e);
        assert!(matches!(e, ConnectorError::Auth(ref s) if s == "bad key <secret:app_secret>"));
        assert!(Redactor::for_shop(None).is_empty());
        let mut long = ConnectorError::Transient("é".repeat(MAX_GUEST_TEXT));
        Redactor::for_shop(None).error(&mut long);
        assert!(matches!(long, ConnectorError::Transient(ref s) if s.len() <= MAX_GUEST_TEXT + 10 && s.ends_with("…(cut)")), "guest text is bounded");
    }
}
