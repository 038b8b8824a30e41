//! Secrets out of guest text: a connector holds its shop's secrets (`config.get`) and may
//! echo them — in a log line, on stdout, in an error message, in a per-SKU rejection, in
//! a panic, in an order it returns (its raw platform JSON included). Before any of that
//! reaches a log line, a status page, the order store and the ERP, the stock ledger or
//! an alert, every secret value of the calling shop (as written, URL-encoded and
//! JSON-escaped) is replaced with `<secret:KEY>`; a metric update naming one is dropped.
//! Error and message texts are also cut to [`MAX_GUEST_TEXT`]. Page cursors and the
//! connector's own state are not touched: they are the connector's, never served.

use berth_types::shop::ShopConfig;
use berth_types::connector::{ConnectorError, Event, Order, UpdateResult};
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
        let mut r = Redactor::default();
        for (key, secret) in cfg.into_iter().flat_map(|c| c.secrets.iter()) {
            r.add(secret.expose(), &format!("<secret:{key}>"));
        }
        r
    }

    /// Also replace `value` (as written, URL-encoded and JSON-escaped) with `label`: a
    /// value learned at run time, such as a token a refresh returned.
    pub fn add(&mut self, value: &str, label: &str) {
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let quoted = serde_json::to_string(value).unwrap_or_default();
        let escaped = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string();
        for v in [encoded, escaped, value.to_string()] {
            if !v.is_empty() && !self.needles.iter().any(|(n, _)| *n == v) {
                self.needles.push((v, label.to_string()));
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        self.needles.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
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

    /// Take the secrets out of a string without bounding it (order fields have their
    /// own bounds, checked after).
    fn scrub(&self, s: &mut String) {
        if let Cow::Owned(clean) = self.text(s) {
            *s = clean;
        }
    }

    /// Every text field of an order, its raw JSON included.
    pub fn order(&self, o: &mut Order) {
        if self.needles.is_empty() {
            return;
        }
        for f in [&mut o.order_id, &mut o.platform_status, &mut o.currency, &mut o.buyer_name_masked, &mut o.buyer_phone_masked, &mut o.raw_json] {
            self.scrub(f);
        }
        for l in &mut o.lines {
            for f in [&mut l.line_id, &mut l.sku, &mut l.title] {
                self.scrub(f);
            }
        }
    }

    fn event(&self, e: &mut Event) {
        match e {
            Event::OrderUpserted(o) => self.order(o),
            Event::OrderChanged(id) => self.scrub(id),
            Event::StockChanged(u) => self.scrub(&mut u.sku),
        }
    }

    /// Bound a guest string and take the secrets out of it.
    fn owned(&self, s: &mut String) {
        if s.len() > MAX_GUEST_TEXT {
            let keep = crate::state::bounded(s, MAX_GUEST_TEXT).len();
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
            Ok(Output::Pull(Ok(page))) => page.orders.iter_mut().for_each(|o| self.order(o)),
            Ok(Output::Webhook(Ok(events))) => events.iter_mut().for_each(|e| self.event(e)),
            Err(e) => self.call_error(e),
        }
    }

    /// What `check` hands back.
    pub fn health(&self, r: &mut Result<Result<berth_types::connector::Health, ConnectorError>, super::CallError>) {
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
    use berth_types::Secret;

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

    #[test]
    fn orders_lose_the_secrets_raw_json_included() {
        use berth_types::connector::{OrderLine, OrderStatus};
        let mut cfg: ShopConfig = toml::from_str("connector = \"c\"").unwrap();
        cfg.secrets.insert("app_secret".into(), Secret::new("sec/ret\"key"));
        let r = Redactor::for_shop(Some(&cfg));
        let mut o = Order {
            order_id: "1".into(),
            status: OrderStatus::Paid,
            platform_status: "paid".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            currency: "USD".into(),
            total_minor: 1,
            lines: vec![OrderLine { line_id: "1".into(), sku: "S".into(), title: "gift for sec/ret\"key".into(), quantity: 1, unit_price_minor: 1 }],
            buyer_name_masked: String::new(),
            buyer_phone_masked: String::new(),
            raw_json: serde_json::json!({ "echo": "sec/ret\"key", "url": "x?s=sec%2Fret%22key" }).to_string(),
        };
        r.order(&mut o);
        assert_eq!(o.lines[0].title, "gift for <secret:app_secret>");
        assert!(!o.raw_json.contains("sec/ret") && !o.raw_json.contains("sec%2F"), "{}", o.raw_json);
        let raw: serde_json::Value = serde_json::from_str(&o.raw_json).expect("still JSON");
        assert_eq!(raw["echo"], "<secret:app_secret>");
        assert_eq!(raw["url"], "x?s=<secret:app_secret>");
    }
}
