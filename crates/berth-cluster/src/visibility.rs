//! Each lease's own visibility over one consumer's ack wait.
//!
//! JetStream gives a consumer one ack wait for every delivery. The ERP asks each lease
//! (and each extension) for its own visibility, so the node that leased an order keeps
//! its timer: a lease shorter than the ack wait is given back (a NAK) when it ends, a
//! longer one is renewed (a progress ack) before the server's wait runs out, the last
//! renewal timed so that the server's own expiry falls when the lease ends. A lease as
//! long as the ack wait needs nothing.
//!
//! Any node can settle or extend any lease: the token names the node holding the timer
//! (`<ack subject, base64url>.<node>`). An extension made elsewhere is sent to that node
//! (`<shops bucket>.leases.<queue>.<node>`, core NATS), which renews and answers the new
//! expiry; an ack or nack made elsewhere tells it to drop the timer. When the holder is
//! gone (no responder, or no answer in time), the extension renews for the ack wait and
//! says so in the expiry it answers. A holder that dies leaves its leases to the
//! server: each ends at most one ack wait after its last renewal.

use crate::connect::Connection;
use crate::error::ClusterError;
use async_nats::jetstream::AckKind;
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A lease whose end differs from the server's by less than this needs no timer.
const CLOSE_ENOUGH: Duration = Duration::from_millis(100);
/// How long an ack waits for the consumer's leader to answer (one being elected).
const SETTLE_WAIT: Duration = Duration::from_secs(5);
/// How long an extension waits for the node holding the lease's timer.
const HOLDER_WAIT: Duration = Duration::from_secs(2);

/// A lease token taken apart: the delivery's ack subject, its delivery count, and the
/// node holding its timer (none for tokens issued before timers, or mangled ones).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub subject: String,
    pub delivered: u32,
    pub holder: Option<String>,
}

/// A lease token taken apart: its ack subject, the fields of the subject after
/// `$JS.ACK.` — stream, consumer, delivered, stream seq, consumer seq, time, pending (the
/// newer form's domain and account hash before them and random token after are skipped)
/// — and the node it names. `None`: not an ack subject.
fn decode(token: &str) -> Option<(String, Option<&str>)> {
    let (encoded, holder) = match token.split_once('.') {
        Some((e, h)) => (e, Some(h)),
        None => (token, None),
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok()?;
    Some((String::from_utf8(raw).ok()?, holder))
}

fn fields(subject: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = subject.strip_prefix("$JS.ACK.")?.split('.').collect();
    let at = match parts.len() {
        7 => 0,
        9 | 10 => 2,
        _ => return None,
    };
    Some(parts[at..at + 7].to_vec())
}

/// The consumer a lease token's ack subject names (`None`: not an ack subject); the
/// consumer's own queue checks the rest ([`Visibility::parse`]).
pub(crate) fn consumer_of(token: &str) -> Option<String> {
    let (subject, _) = decode(token)?;
    fields(&subject).map(|f| f[1].to_string())
}

/// What a timer does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Step {
    /// Give the order back: the lease ends before the server's wait would.
    GiveBack,
    /// A progress ack: the server's wait starts again.
    Renew,
}

/// When and what the timer of a lease ending at `ends` does, the server's wait for it
/// running out at `server_ends`; `None` when the server's own expiry is the lease's end.
pub(crate) fn plan(ends: Instant, server_ends: Instant, ack_wait: Duration) -> Option<(Instant, Step)> {
    if ends <= server_ends {
        return (server_ends.duration_since(ends) >= CLOSE_ENOUGH).then_some((ends, Step::GiveBack));
    }
    // Renewed at `ends - ack_wait`, the server's expiry is the lease's end; before that,
    // renewed a margin ahead of the server's wait running out.
    let margin = (ack_wait / 4).min(Duration::from_secs(5));
    let last = ends.checked_sub(ack_wait).unwrap_or(ends);
    let keep = server_ends.checked_sub(margin).unwrap_or(server_ends);
    Some((last.min(keep), Step::Renew))
}

struct Timer {
    subject: String,
    ends: Instant,
    server_ends: Instant,
    at: Instant,
    step: Step,
}

/// The timers of one queue's leases on this node, by stream sequence.
struct Timers {
    ack_wait: Duration,
    by_seq: HashMap<u64, Timer>,
}

impl Timers {
    /// Lease `seq` ends at `ends`, the server's wait for it at `server_ends`: whether it
    /// needs a timer (set) or not (dropped).
    fn set(&mut self, seq: u64, subject: &str, ends: Instant, server_ends: Instant) -> bool {
        match plan(ends, server_ends, self.ack_wait) {
            Some((at, step)) => {
                self.by_seq.insert(seq, Timer { subject: subject.to_string(), ends, server_ends, at, step });
                true
            }
            None => {
                self.by_seq.remove(&seq);
                false
            }
        }
    }

    /// The timers due by `now`, each moved to its next step (or dropped), and when the
    /// next one is due.
    fn due(&mut self, now: Instant) -> (Vec<(String, Step)>, Option<Instant>) {
        let ack_wait = self.ack_wait;
        let mut out = Vec::new();
        self.by_seq.retain(|_, t| {
            if t.at > now {
                return true;
            }
            if now >= t.server_ends {
                // Late past the server's own wait (this process was stopped): the order was
                // delivered again, and a NAK or renewal now would act on that delivery.
                tracing::warn!(late_ms = now.duration_since(t.at).as_millis() as u64, "a lease's timer ran after the order queue's ack wait; the lease had already ended");
                return false;
            }
            out.push((t.subject.clone(), t.step));
            match t.step {
                Step::GiveBack => false,
                Step::Renew => {
                    t.server_ends = now + ack_wait;
                    match plan(t.ends, t.server_ends, ack_wait) {
                        Some((at, step)) => {
                            (t.at, t.step) = (at, step);
                            true
                        }
                        None => false,
                    }
                }
            }
        });
        (out, self.by_seq.values().map(|t| t.at).min())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Note {
    /// Extend this lease to `visibility_ms` from now.
    Extend { seq: u64, ack: String, visibility_ms: u64 },
    /// The lease was acked or given back elsewhere: drop its timer.
    Drop { seq: u64 },
}

#[derive(Serialize, Deserialize)]
struct Answer {
    #[serde(default)]
    expires_at_ms: Option<i64>,
    #[serde(default)]
    error: Option<String>,
}

/// The lease timers of one queue on this node.
pub(crate) struct Visibility {
    client: async_nats::Client,
    node: String,
    /// `KV_<shops bucket>`, the stream the consumer reads.
    stream: String,
    queue: String,
    subject_prefix: String,
    ack_wait: Duration,
    timers: Mutex<Timers>,
    wake: Arc<tokio::sync::Notify>,
    /// Told when these timers go, so the answering task unsubscribes at once (other
    /// nodes then find no responder rather than waiting).
    gone: Arc<tokio::sync::Notify>,
}

impl Drop for Visibility {
    fn drop(&mut self) {
        self.gone.notify_one();
    }
}

fn not_a_token() -> ClusterError {
    ClusterError::Nats("not a lease token of this queue".into())
}

impl Visibility {
    /// The timers of queue `queue`, with the tasks that run them and answer other nodes;
    /// both end with the returned value.
    pub async fn start(conn: &Connection, queue: &str, ack_wait: Duration) -> Result<Arc<Visibility>, ClusterError> {
        let subject_prefix = format!("{}.leases.{queue}", conn.names.shops);
        let inbox = conn.client.subscribe(format!("{subject_prefix}.{}", conn.node)).await.map_err(ClusterError::nats)?;
        let gone = Arc::new(tokio::sync::Notify::new());
        let me = Arc::new(Visibility {
            client: conn.client.clone(),
            node: conn.node.clone(),
            stream: format!("KV_{}", conn.names.shops),
            queue: queue.to_string(),
            subject_prefix,
            ack_wait,
            timers: Mutex::new(Timers { ack_wait, by_seq: HashMap::new() }),
            wake: Arc::new(tokio::sync::Notify::new()),
            gone: gone.clone(),
        });
        tokio::spawn(run_timers(Arc::downgrade(&me)));
        tokio::spawn(answer(Arc::downgrade(&me), inbox, gone));
        Ok(me)
    }

    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// The token the ERP gets for a delivery made on this node.
    pub fn token(&self, reply: &str) -> String {
        format!("{}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(reply), self.node)
    }

    /// The ack subject in `token`, if it is one of this consumer's: `$JS.ACK.<stream>.
    /// <consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or the newer
    /// form with a domain and account hash before the stream and a random token after.
    /// Anything else is refused, so a token never makes berth publish elsewhere.
    pub fn parse(&self, id: u64, token: &str) -> Result<Token, ClusterError> {
        let (subject, holder) = decode(token).ok_or_else(not_a_token)?;
        let f = fields(&subject).ok_or_else(not_a_token)?;
        let numbers = &f[2..7];
        if f[0] != self.stream || f[1] != self.queue || numbers.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) || numbers[1] != id.to_string() {
            return Err(not_a_token());
        }
        let delivered = numbers[0].parse().map_err(|_| not_a_token())?;
        let holder = holder.filter(|h| crate::config::valid_name(h)).map(String::from);
        Ok(Token { subject, delivered, holder })
    }

    /// Send `kind` on a delivery's ack subject; answered once the server applied it.
    /// While the consumer's leader is being elected nobody answers that subject: tried
    /// again for up to [`SETTLE_WAIT`] (each kind may be sent twice).
    pub async fn send(&self, subject: &str, kind: AckKind) -> Result<(), ClusterError> {
        use async_nats::RequestErrorKind;
        let body = Bytes::from(kind);
        let until = Instant::now() + SETTLE_WAIT;
        let mut pause = Duration::from_millis(20);
        loop {
            match self.client.request(subject.to_string(), body.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == RequestErrorKind::NoResponders && Instant::now() + pause < until => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(ClusterError::nats(e)),
            }
        }
    }

    /// Order `seq` was just delivered here, leased for `visibility`.
    pub fn leased(&self, seq: u64, subject: &str, visibility: Duration) {
        let now = Instant::now();
        self.set(seq, subject, now + visibility, now + self.ack_wait);
    }

    fn set(&self, seq: u64, subject: &str, ends: Instant, server_ends: Instant) {
        if self.lock().set(seq, subject, ends, server_ends) {
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the lease `visibility` from now; its new expiry (ms since the epoch).
    pub async fn extend(&self, seq: u64, token: &Token, visibility: Duration) -> Result<i64, ClusterError> {
        match token.holder.as_deref() {
            Some(holder) if holder != self.node => match self.ask(holder, seq, token, visibility).await {
                Ok(Some(expires_at_ms)) => Ok(expires_at_ms),
                Ok(None) => {
                    // The holder is gone: the server's wait is the lease now.
                    self.send(&token.subject, AckKind::Progress).await?;
                    Ok(berth_types::clock::now_ms() + self.ack_wait.as_millis() as i64)
                }
                Err(e) => Err(e),
            },
            _ => self.extend_here(seq, &token.subject, visibility).await,
        }
    }

    async fn extend_here(&self, seq: u64, subject: &str, visibility: Duration) -> Result<i64, ClusterError> {
        self.send(subject, AckKind::Progress).await?;
        let now = Instant::now();
        self.set(seq, subject, now + visibility, now + self.ack_wait);
        Ok(berth_types::clock::now_ms() + visibility.as_millis() as i64)
    }

    /// Ask `holder` to extend; `None` when it does not answer.
    async fn ask(&self, holder: &str, seq: u64, token: &Token, visibility: Duration) -> Result<Option<i64>, ClusterError> {
        let note = Note::Extend { seq, ack: self.token(&token.subject), visibility_ms: visibility.as_millis() as u64 };
        let subject = format!("{}.{holder}", self.subject_prefix);
        let body = Bytes::from(serde_json::to_vec(&note).unwrap_or_default());
        let reply = match tokio::time::timeout(HOLDER_WAIT, self.client.request(subject, body)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                tracing::debug!(holder, error = %e, "the node holding a lease's timer did not answer; renewing for the ack wait");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        let answer: Answer = serde_json::from_slice(&reply.payload).map_err(ClusterError::nats)?;
        match (answer.expires_at_ms, answer.error) {
            (Some(at), _) => Ok(Some(at)),
            (None, Some(e)) => Err(ClusterError::Nats(e)),
            (None, None) => Ok(None),
        }
    }

    /// The lease was acked or given back: its timer, here or on its holder, goes.
    pub async fn settled(&self, seq: u64, token: &Token) {
        match token.holder.as_deref() {
            Some(holder) if holder != self.node => {
                let body = serde_json::to_vec(&Note::Drop { seq }).unwrap_or_default();
                if let Err(e) = self.client.publish(format!("{}.{holder}", self.subject_prefix), body.into()).await {
                    tracing::debug!(holder, error = %e, "cannot tell the node holding a lease's timer that it was settled");
                }
            }
            _ => {
                self.lock().by_seq.remove(&seq);
            }
        }
    }

    /// Leases with a timer on this node.
    pub fn timed(&self) -> usize {
        self.lock().by_seq.len()
    }

}

async fn run_timers(me: Weak<Visibility>) {
    loop {
        let Some(v) = me.upgrade() else { return };
        let (due, next) = v.lock().due(Instant::now());
        let sends = due.iter().map(|(subject, step)| {
            let kind = match step {
                Step::GiveBack => AckKind::Nak(None),
                Step::Renew => AckKind::Progress,
            };
            let v = &v;
            async move {
                if let Err(e) = v.send(subject, kind).await {
                    tracing::warn!(error = %e, ?step, "a lease's timer could not reach the order queue");
                }
            }
        });
        futures_util::future::join_all(sends).await;
        // Woken by a new timer, at the next one, or once a second to notice the queue
        // is gone.
        let wait = next.map_or(Duration::from_secs(1), |at| at.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        let wake = v.wake.clone();
        drop(v);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Answer other nodes' notes about the leases this node holds.
async fn answer(me: Weak<Visibility>, mut inbox: async_nats::Subscriber, gone: Arc<tokio::sync::Notify>) {
    loop {
        let msg = tokio::select! {
            msg = inbox.next() => msg,
            _ = gone.notified() => None,
        };
        let Some(msg) = msg else { return };
        let Some(v) = me.upgrade() else { return };
        let answer = match serde_json::from_slice::<Note>(&msg.payload) {
            Ok(Note::Drop { seq }) => {
                v.lock().by_seq.remove(&seq);
                None
            }
            Ok(Note::Extend { seq, ack, visibility_ms }) => Some(match v.parse(seq, &ack) {
                Ok(token) => match v.extend_here(seq, &token.subject, Duration::from_millis(visibility_ms)).await {
                    Ok(at) => Answer { expires_at_ms: Some(at), error: None },
                    Err(e) => Answer { expires_at_ms: None, error: Some(e.to_string()) },
                },
                Err(e) => Answer { expires_at_ms: None, error: Some(e.to_string()) },
            }),
            Err(e) => {
                tracing::warn!(error = %e, "a note about a lease from another node is not one berth sends");
                None
            }
        };
        if let (Some(answer), Some(reply)) = (answer, msg.reply) {
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = v.client.publish(reply, body.into()).await {
                tracing::debug!(error = %e, "cannot answer another node about a lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_shorter_than_the_wait_is_given_back_when_it_ends() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(60);
        assert_eq!(plan(t0 + Duration::from_secs(5), t0 + wait, wait), Some((t0 + Duration::from_secs(5), Step::GiveBack)));
    }

    #[test]
    fn a_lease_as_long_as_the_wait_needs_no_timer() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(60);
        assert_eq!(plan(t0 + wait, t0 + wait, wait), None);
        assert_eq!(plan(t0 + wait, t0 + wait + Duration::from_millis(40), wait), None);
    }

    #[test]
    fn a_longer_lease_is_kept_alive_then_renewed_once_to_end_on_time() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(60);
        let ends = t0 + Duration::from_secs(200);
        // Renewed 5 s before the server's wait runs out, three times ...
        let mut server_ends = t0 + wait;
        let mut renewals = Vec::new();
        while let Some((at, step)) = plan(ends, server_ends, wait) {
            assert_eq!(step, Step::Renew);
            renewals.push(at.duration_since(t0).as_secs());
            server_ends = at + wait;
            assert!(renewals.len() < 10);
        }
        assert_eq!(renewals, vec![55, 110, 140]);
        // ... the last at `ends - wait`: the server's expiry is the lease's end.
        assert_eq!(server_ends, ends);
    }

    #[test]
    fn a_timer_running_after_the_servers_wait_does_nothing() {
        let (mut timers, t0) = (Timers { ack_wait: Duration::from_secs(10), by_seq: HashMap::new() }, Instant::now());
        assert!(timers.set(7, "s", t0 + Duration::from_secs(30), t0 + Duration::from_secs(10)));
        // Woken at 12 s (stopped in between): nothing is sent, the timer is gone.
        let (sends, next) = timers.due(t0 + Duration::from_secs(12));
        assert!(sends.is_empty() && next.is_none() && timers.by_seq.is_empty());
    }

    #[test]
    fn timers_renew_on_time_and_give_back_at_the_end() {
        let (mut timers, t0) = (Timers { ack_wait: Duration::from_secs(10), by_seq: HashMap::new() }, Instant::now());
        let s = Duration::from_secs;
        assert!(timers.set(1, "long", t0 + s(25), t0 + s(10)));
        assert!(timers.set(2, "short", t0 + s(3), t0 + s(10)));
        assert!(!timers.set(3, "as long as the wait", t0 + s(10), t0 + s(10)));
        assert_eq!(timers.due(t0 + s(2)), (vec![], Some(t0 + s(3))));
        assert_eq!(timers.due(t0 + s(3)), (vec![("short".to_string(), Step::GiveBack)], Some(t0 + s(7) + Duration::from_millis(500))));
        // Kept alive 2.5 s before the server's wait ends, then renewed at `ends - wait`.
        let (sends, next) = timers.due(t0 + s(7) + Duration::from_millis(500));
        assert_eq!((sends, next), (vec![("long".to_string(), Step::Renew)], Some(t0 + s(15))));
        assert_eq!(timers.due(t0 + s(15)), (vec![("long".to_string(), Step::Renew)], None));
        assert!(timers.by_seq.is_empty());
    }

    #[test]
    fn a_late_last_renewal_gives_the_order_back_at_the_lease_end() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        let ends = t0 + Duration::from_secs(30);
        let late = t0 + Duration::from_secs(21);
        assert_eq!(plan(ends, late + wait, wait), Some((ends, Step::GiveBack)));
    }
}
