//! What a connector writes to the host's log — the `log` import and its stdout/stderr —
//! kept in two budgets and one shape.
//!
//! Budgets: a call may log `max_log_bytes_per_call`, a connector (all its versions and
//! shops together) `max_log_bytes_per_minute`; past either the output is dropped and
//! counted (`berth_connector_log_dropped_bytes_total`) with one line saying so, so a
//! connector that logs from many calls at once cannot fill the disk either.
//!
//! Shape: every guest record is one line of the host's log, whatever the guest wrote:
//! control characters (newlines, carriage returns, escapes) are written as `\n`, `\r`,
//! `\u{1b}`, so a guest cannot start a line that looks like the host's own, and the
//! record carries the connector, version and shop as fields.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest guest log line kept; the rest is cut.
pub const MAX_LINE_BYTES: usize = 4096;

/// A connector's log allowance per minute, shared by every call of every version.
pub struct MinuteBudget {
    limit: usize,
    /// `berth_connector_log_dropped_bytes_total` of the connector.
    dropped: prometheus_client::metrics::counter::Counter,
    /// (minute since the epoch, bytes logged in it, whether the drop was told).
    used: Mutex<(u64, usize, bool)>,
}

impl MinuteBudget {
    pub fn new(limit: usize, dropped: prometheus_client::metrics::counter::Counter) -> MinuteBudget {
        MinuteBudget { limit, dropped, used: Mutex::new((0, 0, false)) }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `n` more bytes fit in this minute; `Err(first)` when not, `first` being
    /// true for the first refusal of the minute.
    fn take(&self, n: usize, now_ms: i64) -> Result<(), bool> {
        let minute = now_ms.max(0) as u64 / 60_000;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.0 != minute {
            *used = (minute, 0, false);
        }
        if used.1 + n > self.limit {
            let first = !used.2;
            used.2 = true;
            return Err(first);
        }
        used.1 += n;
        Ok(())
    }
}

/// A call's log allowance, shared by the `log` import and the guest's stdout/stderr,
/// inside its connector's allowance per minute.
#[derive(Clone)]
pub struct LogBudget {
    call: Arc<CallAllowance>,
    minute: Arc<MinuteBudget>,
    connector: Arc<str>,
}

struct CallAllowance {
    left: AtomicUsize,
    told: AtomicBool,
}

impl LogBudget {
    pub fn new(connector: Arc<str>, per_call: usize, minute: Arc<MinuteBudget>) -> LogBudget {
        LogBudget { call: Arc::new(CallAllowance { left: AtomicUsize::new(per_call), told: AtomicBool::new(false) }), minute, connector }
    }

    /// Whether `n` more bytes may be logged; when not, they are counted as dropped.
    pub fn take(&self, n: usize) -> bool {
        let call_ok = self.call.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok();
        if !call_ok {
            self.minute.dropped.inc_by(n as u64);
            if !self.call.told.swap(true, Ordering::Relaxed) {
                tracing::warn!(connector = %self.connector, "the connector's log output for this call passed max_log_bytes_per_call; the rest is dropped");
            }
            return false;
        }
        match self.minute.take(n, berth_types::clock::now_ms()) {
            Ok(()) => true,
            Err(first) => {
                self.minute.dropped.inc_by(n as u64);
                if first {
                    tracing::warn!(
                        connector = %self.connector, limit_bytes = self.minute.limit,
                        "the connector's log output passed max_log_bytes_per_minute; the rest of this minute is dropped"
                    );
                }
                false
            }
        }
    }
}

/// `s` with every control character written out (`\n`, `\r`, `\t`, `\u{..}`), so it
/// stays on one line; backslashes are doubled so an escape cannot be forged either.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\' || is_line_break(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_line_break(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Unicode line and paragraph separators: not control characters, but some log viewers
/// break lines on them.
fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}')
}

/// Who wrote a guest record.
#[derive(Clone)]
pub struct Origin {
    pub connector: Arc<str>,
    pub version: Arc<str>,
    pub shop: Arc<str>,
}

/// Write one guest record: budgeted, secrets replaced, on one line.
pub fn emit(origin: &Origin, level: tracing::Level, stream: &'static str, text: &str, budget: &LogBudget, redact: &super::redact::Redactor) {
    let text = super::state::bounded(text, MAX_LINE_BYTES);
    if !budget.take(text.len()) {
        return;
    }
    let clean = redact.text(text);
    let line = one_line(&clean);
    let (connector, version, shop) = (&*origin.connector, &*origin.version, &*origin.shop);
    match level {
        tracing::Level::TRACE => tracing::trace!(connector, version, shop, stream, "guest: {line}"),
        tracing::Level::DEBUG => tracing::debug!(connector, version, shop, stream, "guest: {line}"),
        tracing::Level::INFO => tracing::info!(connector, version, shop, stream, "guest: {line}"),
        tracing::Level::WARN => tracing::warn!(connector, version, shop, stream, "guest: {line}"),
        tracing::Level::ERROR => tracing::error!(connector, version, shop, stream, "guest: {line}"),
    }
}

/// Guest stdout/stderr, line by line into the log.
#[derive(Clone)]
pub struct GuestOutput {
    pub origin: Origin,
    pub stream: &'static str,
    pub budget: LogBudget,
    pub redact: super::redact::Redactor,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestWriter { out: self.clone() })
    }
}

struct GuestWriter {
    out: GuestOutput,
}

impl tokio::io::AsyncWrite for GuestWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let text = String::from_utf8_lossy(&buf[..buf.len().min(MAX_LINE_BYTES)]);
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            let o = &self.out;
            emit(&o.origin, tracing::Level::INFO, o.stream, line, &o.budget, &o.redact);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        let forged = "ok\n2026-12-03T03:00:00Z  INFO berth_host::api::admin: admin token accepted name=\"root\"\r\x1b[2K";
        let line = one_line(forged);
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\x1b'), "{line}");
        assert_eq!(line, "ok\\n2026-12-03T03:00:00Z  INFO berth_host::api::admin: admin token accepted name=\"root\"\\r\\u{1b}[2K");
        assert_eq!(one_line("a\\nb"), "a\\\\nb", "a literal backslash-n is not taken for an escape");
        assert_eq!(one_line("x\u{2028}y"), "x\\u{2028}y");
        assert!(matches!(one_line("plain text, ünïcode"), Cow::Borrowed(_)));
    }

    #[test]
    fn budgets_per_call_and_per_minute() {
        let dropped = prometheus_client::metrics::counter::Counter::<u64>::default();
        let b = LogBudget::new("c".into(), 10, Arc::new(MinuteBudget::new(1 << 20, dropped.clone())));
        let stdout = b.clone();
        assert!(b.take(6));
        assert!(!stdout.take(6), "the clone spends the same call budget");
        assert!(stdout.take(4));
        assert!(!b.take(1));
        assert_eq!(dropped.get(), 7, "what was refused is counted");
        // Every call of a connector spends one allowance per minute.
        let minute = MinuteBudget::new(15, Default::default());
        let t = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;
        assert_eq!(minute.take(10, t), Ok(()));
        assert_eq!(minute.take(5, t + 59_999), Ok(()));
        assert_eq!(minute.take(1, t + 59_999), Err(true), "15 bytes this minute");
        assert_eq!(minute.take(1, t + 59_999), Err(false), "told once a minute");
        assert_eq!(minute.take(15, t + 60_000), Ok(()), "the next minute starts afresh");
    }
}
