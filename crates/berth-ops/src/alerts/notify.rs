//! Alert notifications to webhook receivers, in the body each kind of receiver reads:
//! berth's own JSON (optionally signed like the ERP webhook), WeCom and DingTalk group
//! robots (markdown; DingTalk's optional signing), and Slack incoming webhooks. Each
//! receiver has its own queue and worker, so a slow or broken receiver delays no other;
//! a failed post is retried with backoff and then given up (counted and logged).

use super::{AlertRecord, Severity};
use berth_types::Secret;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// berth's JSON: the alert's fields, `status` firing or resolved.
    Json,
    /// WeCom (企业微信) group robot: `{"msgtype":"markdown", ...}`.
    Wecom,
    /// DingTalk (钉钉) custom robot: markdown; with `secret`, the URL is signed.
    Dingtalk,
    /// Slack incoming webhook: `text` plus a coloured attachment.
    Slack,
}

/// `[alerts.receivers.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub url: String,
    #[serde(default = "json")]
    pub format: Format,
    /// `json`: signs each post (`X-Berth-Signature`, as the ERP webhook); `dingtalk`:
    /// the robot's signing secret (`SEC...`).
    pub secret: Option<Secret>,
    /// Alerts below this severity are not sent here.
    #[serde(default = "warning")]
    pub min_severity: Severity,
    #[serde(default = "five_seconds")]
    pub timeout_ms: u64,
}

fn json() -> Format {
    Format::Json
}
fn warning() -> Severity {
    Severity::Warning
}
fn five_seconds() -> u64 {
    5_000
}

impl ReceiverConfig {
    pub fn check(&self) -> Result<(), String> {
        let ok = url::Url::parse(&self.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(format!("url `{}` must be an http:// or https:// URL", self.url));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be positive".into());
        }
        if self.secret.is_some() && matches!(self.format, Format::Wecom | Format::Slack) {
            return Err("a secret applies to the json and dingtalk formats only (WeCom and Slack put theirs in the URL)".into());
        }
        Ok(())
    }
}

/// What a notification says of its alert (sent and stored in lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeStatus {
    /// It started firing, or fires still (a reminder).
    Firing,
    Resolved,
}

impl NoticeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeStatus::Firing => "firing",
            NoticeStatus::Resolved => "resolved",
        }
    }
}

/// One notification: an alert started firing, fired again (a reminder) or resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Notice {
    pub status: NoticeStatus,
    pub source: String,
    #[serde(flatten)]
    pub alert: AlertRecord,
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn lasted(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

impl Notice {
    fn headline(&self) -> String {
        let a = &self.alert;
        match self.status {
            NoticeStatus::Resolved => format!("[RESOLVED] {} — {}", a.rule, a.subject),
            NoticeStatus::Firing => format!("[{}] {} — {}", a.severity.name().to_uppercase(), a.rule, a.subject),
        }
    }

    fn when(&self) -> String {
        let a = &self.alert;
        match a.resolved_ms {
            Some(r) => format!("resolved {} after {}", time(r), lasted(r - a.started_ms)),
            None => format!("firing since {}", time(a.started_ms)),
        }
    }

    /// The body a receiver of `format` reads.
    pub fn body(&self, format: Format) -> serde_json::Value {
        let a = &self.alert;
        match format {
            Format::Json => serde_json::to_value(self).unwrap_or_default(),
            Format::Wecom => {
                let colour = match (self.status, a.severity) {
                    (NoticeStatus::Resolved, _) => "info",
                    (_, Severity::Critical) => "warning",
                    _ => "comment",
                };
                let content = format!(
                    "<font color=\"{colour}\">**{}**</font>\n> {}\n> {}\n> source: {}",
                    self.headline(),
                    a.summary,
                    self.when(),
                    self.source
                );
                serde_json::json!({"msgtype": "markdown", "markdown": {"content": content}})
            }
            Format::Dingtalk => {
                let text = format!("#### {}\n\n> {}\n\n> {}\n\n> source: {}", self.headline(), a.summary, self.when(), self.source);
                serde_json::json!({"msgtype": "markdown", "markdown": {"title": self.headline(), "text": text}})
            }
            Format::Slack => {
                let color = match (self.status, a.severity) {
                    (NoticeStatus::Resolved, _) => "#2eb886",
                    (_, Severity::Critical) => "#d00000",
                    _ => "#e8a317",
                };
                serde_json::json!({
                    "text": self.headline(),
                    "attachments": [{
                        "color": color,
                        "title": self.headline(),
                        "text": format!("{}\n{}", a.summary, self.when()),
                        "footer": self.source,
                        "ts": a.resolved_ms.unwrap_or(a.started_ms) / 1000,
                    }]
                })
            }
        }
    }
}

/// DingTalk's robot signature: base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")).
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let mac = berth_types::digest::hmac_sha256(secret.as_bytes(), format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// How one receiver is doing, for the API and the dashboard.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReceiverStatus {
    pub name: String,
    pub format: String,
    pub sent: u64,
    pub failed: u64,
    pub queued: u64,
    pub last_error: Option<String>,
}

struct Receiver {
    name: String,
    config: ReceiverConfig,
    client: reqwest::Client,
    status: Arc<Mutex<ReceiverStatus>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Attempts per notification before it is given up.
const ATTEMPTS: u32 = 6;
/// Notifications waiting per receiver; beyond, new ones are dropped (and counted).
const QUEUE: usize = 1000;

impl Receiver {
    /// Post once; an error says why the receiver did not take it.
    async fn post(&self, notice: &Notice) -> Result<(), String> {
        let body = serde_json::to_vec(&notice.body(self.config.format)).map_err(|e| e.to_string())?;
        let mut url = url::Url::parse(&self.config.url).map_err(|e| e.to_string())?;
        let mut req = self.client.post(url.clone()).header("content-type", "application/json");
        let now = berth_types::clock::now_ms();
        match (self.config.format, &self.config.secret) {
            (Format::Dingtalk, Some(s)) => {
                url.query_pairs_mut().append_pair("timestamp", &now.to_string()).append_pair("sign", &dingtalk_sign(s.expose(), now));
                req = self.client.post(url).header("content-type", "application/json");
            }
            (Format::Json, Some(s)) => {
                req = req
                    .header("x-berth-timestamp", now.to_string())
                    .header("x-berth-signature", berth_core::delivery::signature(s.expose(), now, &body));
            }
            _ => {}
        }
        let resp = req
            .timeout(Duration::from_millis(self.config.timeout_ms))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach the receiver: {}", without_url(&e)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", berth_runtime::state::bounded(&text, 200)));
        }
        // The robots answer 200 with an error code when they refuse a message.
        if matches!(self.config.format, Format::Wecom | Format::Dingtalk) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(code) = v.get("errcode").and_then(|c| c.as_i64()).filter(|c| *c != 0) {
                return Err(format!("robot refused the message: errcode {code} {}", v["errmsg"].as_str().unwrap_or("")));
            }
        }
        Ok(())
    }

    async fn run(self, mut rx: mpsc::Receiver<Notice>) {
        while let Some(notice) = rx.recv().await {
            let mut delay = Duration::from_secs(1);
            let mut outcome = Err(String::new());
            for attempt in 1..=ATTEMPTS {
                outcome = self.post(&notice).await;
                if outcome.is_ok() || attempt == ATTEMPTS {
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            st.queued = st.queued.saturating_sub(1);
            let result = match outcome {
                Ok(()) => {
                    st.sent += 1;
                    "sent"
                }
                Err(e) => {
                    tracing::error!(receiver = %self.name, rule = %notice.alert.rule, error = %e, "alert notification given up after {ATTEMPTS} attempts");
                    st.failed += 1;
                    st.last_error = Some(e);
                    "failed"
                }
            };
            self.metrics.alert_notification(&self.name, result);
        }
    }
}

/// A reqwest error's text without the URL (a robot's URL carries its access token).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(c) = cause {
        detail = c.to_string();
        cause = c.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind}: {detail}") }
}

/// Every receiver, each behind its own queue.
pub struct Notifier {
    receivers: Vec<(Severity, mpsc::Sender<Notice>, Arc<Mutex<ReceiverStatus>>)>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Notifier {
    /// Start one worker per receiver.
    pub fn start(receivers: &std::collections::BTreeMap<String, ReceiverConfig>, metrics: Arc<crate::metrics::Metrics>) -> Result<Notifier, String> {
        // Receivers are ops' own endpoints (often on the private network): not the
        // connectors' sandboxed client. No redirects: a notice goes where it was configured.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot set up the alert HTTP client: {e}"))?;
        let mut out = Vec::new();
        for (name, config) in receivers {
            let (tx, rx) = mpsc::channel(QUEUE);
            let status = Arc::new(Mutex::new(ReceiverStatus {
                name: name.clone(),
                format: format!("{:?}", config.format).to_lowercase(),
                ..Default::default()
            }));
            let r = Receiver { name: name.clone(), config: config.clone(), client: client.clone(), status: status.clone(), metrics: metrics.clone() };
            tokio::spawn(r.run(rx));
            out.push((config.min_severity, tx, status));
        }
        Ok(Notifier { receivers: out, metrics })
    }

    /// Queue a notice to every receiver that takes its severity.
    pub fn send(&self, notice: &Notice) {
        for (min, tx, status) in &self.receivers {
            if notice.alert.severity < *min {
                continue;
            }
            let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
            match tx.try_send(notice.clone()) {
                Ok(()) => st.queued += 1,
                Err(_) => {
                    st.failed += 1;
                    st.last_error = Some(format!("more than {QUEUE} notifications waiting; this one was dropped"));
                    self.metrics.alert_notification(&st.name, "failed");
                }
            }
        }
    }

    pub fn statuses(&self) -> Vec<ReceiverStatus> {
        self.receivers.iter().map(|(_, _, s)| s.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(status: NoticeStatus) -> Notice {
        Notice {
            status,
            source: "berth-test".into(),
            alert: AlertRecord {
                fingerprint: "probe-failing/acme".into(),
                rule: "probe-failing".into(),
                kind: "probe-failing".into(),
                severity: Severity::Critical,
                subject: "acme".into(),
                summary: "shop acme: the last 2 probes failed".into(),
                value: 2.0,
                threshold: 2.0,
                started_ms: 1_700_000_000_000,
                resolved_ms: (status == NoticeStatus::Resolved).then_some(1_700_000_195_000),
            },
        }
    }

    #[test]
    fn each_format_reads_as_its_receiver_expects() {
        let j = notice(NoticeStatus::Firing).body(Format::Json);
        assert_eq!((j["status"].as_str(), j["rule"].as_str(), j["severity"].as_str()), (Some("firing"), Some("probe-failing"), Some("critical")));
        assert_eq!(j["fingerprint"], "probe-failing/acme");
        let w = notice(NoticeStatus::Firing).body(Format::Wecom);
        assert_eq!(w["msgtype"], "markdown");
        let content = w["markdown"]["content"].as_str().unwrap();
        assert!(content.contains("[CRITICAL] probe-failing — acme") && content.contains("firing since 2023-11-14 22:13:20 UTC"), "{content}");
        let d = notice(NoticeStatus::Resolved).body(Format::Dingtalk);
        assert_eq!(d["markdown"]["title"], "[RESOLVED] probe-failing — acme");
        assert!(d["markdown"]["text"].as_str().unwrap().contains("after 3m15s"), "{d}");
        let s = notice(NoticeStatus::Firing).body(Format::Slack);
        assert_eq!(s["attachments"][0]["color"], "#d00000");
        assert_eq!(s["text"], "[CRITICAL] probe-failing — acme");
    }

    #[test]
    fn dingtalk_signature_matches_its_documented_scheme() {
        // Computed independently:
        // printf '1700000000000\nSECtest' | openssl dgst -sha256 -hmac SECtest -binary | base64
        assert_eq!(dingtalk_sign("SECtest", 1_700_000_000_000), "aZLLrriXgn05YbwaGR7knYsLeJADjr9NwLaNNKpxh4g=");
    }
}
