//! Host-side rate limits: token buckets per platform, keyed by the quota the platform
//! counts against — an app credential shared by every shop on it (`quota_key = "app_key"`
//! names the shop setting holding it), or the shop itself. A connector never sees the
//! limiter: its `http.send` simply waits for a slot, within the call's deadline.
//!
//! The platform a request counts against is chosen by its destination, never by what a
//! connector says of itself: `[platforms.ID] hosts` (by default the hosts its connectors'
//! manifests declare) map a URL to a platform, whoever sends it, and a host two
//! platforms' connectors both declare is refused at load until ops say whose it is.
//! Waiters for one bucket take their turns in arrival order, so a connector looping on a
//! shared quota cannot starve the other shops on it.
//!
//! A hold — the platform throttled, or a connector said `rate-limited(ms)` — stops every
//! call on the quota until it ends. What a connector or a platform asks for is capped at
//! the platform's `max_hold_secs`; `suspend_after_throttle_secs` is ops' own floor. Each
//! hold names the shop and connector whose call caused it and why, shows on the status
//! pages and can be released by an operator.
//!
//! Built on `governor` (GCRA, the token-bucket equivalent used across the Rust ecosystem)
//! rather than a hand-written bucket.

use crate::windows::{parse_zone, wait_until_open, TimeWindow, Zone};
use crate::config::PlatformConfig;
use crate::usage::{QuotaUsage, UsageMeter};
use berth_types::connector::RateLimit;
use berth_types::shop::ShopConfig;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

/// One endpoint class: its own bucket on top of the platform's.
struct ClassLimiter {
    name: String,
    patterns: Vec<String>,
    limiter: DefaultKeyedRateLimiter<String>,
    requests_per_second: f64,
    /// Calls let through, per key (`endpoint:NAME` on the usage pages).
    usage: UsageMeter,
}

struct PlatformLimiter {
    requests_per_second: Option<f64>,
    burst: u32,
    /// Where `requests_per_second` came from.
    limit_from: LimitFrom,
    quota_key: Option<String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    classes: Vec<ClassLimiter>,
    /// Drain rate of the platform's bucket when its call-limit header is read.
    call_limit_leak: Option<f64>,
    suspend_after_throttle: Duration,
    /// The longest hold a connector's `rate-limited(ms)` or a platform's answer may set.
    max_hold: Duration,
    windows: Vec<TimeWindow>,
    zone: Zone,
    /// Calls let through the platform's bucket, per key (`requests` on the usage pages).
    usage: UsageMeter,
}

/// Shopify's standard REST bucket drains 2 calls a second.
const DEFAULT_LEAK_PER_SECOND: f64 = 2.0;

/// Where a platform's bucket comes from.
#[derive(Clone, Debug, PartialEq)]
enum LimitFrom {
    /// `[platforms.ID] requests_per_second`.
    Config,
    /// The most generous rate its loaded connectors declare, and who declared it.
    Manifest { connector: String, rate: RateLimit },
    /// No bucket: no rate configured, none declared (or ops turned manifests off).
    None,
}

impl LimitFrom {
    fn label(&self) -> &'static str {
        match self {
            LimitFrom::Config => "config",
            LimitFrom::Manifest { .. } => "manifest",
            LimitFrom::None => "none",
        }
    }
}

/// The rate a platform's declarations add up to: the most generous one, so a connector
/// declaring a low rate cannot slow the platform's other connectors, with the connector
/// that declared it. `None` when none declares a rate.
fn most_generous(declared: Option<&BTreeMap<String, RateLimit>>) -> Option<(String, RateLimit)> {
    declared?
        .iter()
        .filter(|(_, r)| r.requests_per_minute > 0)
        .max_by_key(|(c, r)| (r.requests_per_minute, r.burst, std::cmp::Reverse(c.as_str())))
        .map(|(c, r)| (c.clone(), *r))
}

impl PlatformLimiter {
    /// A platform without configuration: no limits, but throttles and the call-limit
    /// header are still learnt from.
    fn unconfigured() -> Self {
        PlatformLimiter {
            requests_per_second: None,
            burst: 1,
            limit_from: LimitFrom::None,
            quota_key: None,
            limiter: None,
            classes: Vec::new(),
            call_limit_leak: Some(DEFAULT_LEAK_PER_SECOND),
            suspend_after_throttle: Duration::ZERO,
            max_hold: Duration::from_secs(crate::config::DEFAULT_MAX_HOLD_SECS),
            windows: Vec::new(),
            zone: Zone::UTC,
            usage: UsageMeter::new(crate::usage::DEFAULT_WINDOW_SECS),
        }
    }

    /// Built from checked config (`Config::parse` validated windows and time zone), and
    /// the rate the platform's connectors declare (used when config names none and lets
    /// manifests count). A platform config does not name is `PlatformConfig` defaults.
    fn new(l: Option<&PlatformConfig>, declared: Option<(String, RateLimit)>) -> Self {
        let base = l.map_or_else(PlatformLimiter::unconfigured, PlatformLimiter::from_config);
        let manifests_count = l.is_none_or(|l| l.requests_per_second.is_none() && l.use_manifest_rate);
        match declared {
            Some(d) if manifests_count => PlatformLimiter::declared(base, d),
            _ => base,
        }
    }

    /// `p` with a bucket at the rate `connector` declared.
    fn declared(p: PlatformLimiter, (connector, rate): (String, RateLimit)) -> Self {
        let rps = f64::from(rate.requests_per_minute) / 60.0;
        let burst = rate.burst.max(1);
        PlatformLimiter {
            requests_per_second: Some(rps),
            burst,
            limit_from: LimitFrom::Manifest { connector, rate },
            limiter: Some(RateLimiter::keyed(quota(rps, burst))),
            ..p
        }
    }

    fn from_config(l: &PlatformConfig) -> Self {
        PlatformLimiter {
            requests_per_second: l.requests_per_second,
            burst: l.burst,
            limit_from: if l.requests_per_second.is_some() { LimitFrom::Config } else { LimitFrom::None },
            quota_key: l.quota_key.clone(),
            limiter: l.requests_per_second.map(|r| RateLimiter::keyed(quota(r, l.burst))),
            classes: l
                .endpoints
                .iter()
                .map(|(name, e)| ClassLimiter {
                    name: name.clone(),
                    patterns: e.patterns.clone(),
                    limiter: RateLimiter::keyed(quota(e.requests_per_second, e.burst)),
                    requests_per_second: e.requests_per_second,
                    usage: UsageMeter::new(l.usage_window_secs),
                })
                .collect(),
            call_limit_leak: l
                .call_limit_header
                .then(|| l.call_limit_leak_per_second.or(l.requests_per_second).unwrap_or(DEFAULT_LEAK_PER_SECOND)),
            suspend_after_throttle: Duration::from_secs(l.retry.suspend_after_throttle_secs.unwrap_or(0)),
            max_hold: Duration::from_secs(l.max_hold_secs),
            windows: l.windows.iter().filter_map(|w| TimeWindow::parse(w).ok()).collect(),
            zone: l.timezone.as_deref().and_then(|t| parse_zone(t).ok()).unwrap_or(Zone::UTC),
            usage: UsageMeter::new(l.usage_window_secs),
        }
    }

    /// The endpoint class a request falls in: the first whose pattern matches.
    fn class(&self, endpoint: &Endpoint<'_>) -> Option<&ClassLimiter> {
        self.classes.iter().find(|c| {
            c.patterns.iter().any(|p| match p.starts_with('/') {
                true => glob(p, endpoint.path),
                false => endpoint.api_method.is_some_and(|m| glob(p, m)),
            })
        })
    }
}

/// A host bucket's usage rows: calls counted over the window against what the bucket
/// refills in it.
fn counted(platform: &str, quota: &str, meter: &UsageMeter, rps: f64) -> Vec<QuotaUsage> {
    let window = meter.window_secs();
    let capacity = rps * window as f64;
    meter
        .used()
        .into_iter()
        .map(|(key, used)| QuotaUsage { window_secs: Some(window), ..QuotaUsage::new(platform, quota.to_string(), key, used, capacity, "counted") })
        .collect()
}

/// What a request is, as endpoint classes see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoint<'a> {
    pub path: &'a str,
    /// The API method of an RPC-style router (`method=` in the query or form body).
    pub api_method: Option<&'a str>,
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A destination pattern of `[platforms.ID] hosts`: `host[:port][/path-prefix]`, the
/// host exact or `*.suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    host: String,
    port: Option<u16>,
    path: String,
}

impl Destination {
    pub fn parse(pattern: &str) -> Result<Destination, String> {
        let bad = || format!("host pattern `{pattern}` must be `host`, `*.suffix`, optionally with `:port` and a `/path` prefix");
        let (authority, path) = match pattern.find('/') {
            Some(i) => (&pattern[..i], &pattern[i..]),
            None => (pattern, ""),
        };
        // `[v6]` or `[v6]:port`; else `name` or `name:port`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(rest) => {
                let (h, after) = rest.split_once(']').ok_or_else(bad)?;
                match after.strip_prefix(':') {
                    Some(p) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
                    None if after.is_empty() => (h, None),
                    None => return Err(bad()),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
                None => (authority, None),
            },
        };
        let name = host.strip_prefix("*.").unwrap_or(host);
        if name.is_empty() || name.contains('*') || host.len() > 253 || pattern.contains(['?', '#', ' ']) {
            return Err(bad());
        }
        Ok(Destination { host: host.to_ascii_lowercase(), port, path: path.to_string() })
    }

    /// How closely `url` matches (higher is closer), if it does: an exact host over a
    /// wildcard, a port over none, a longer path prefix over a shorter one.
    fn score(&self, url: &url::Url) -> Option<usize> {
        let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let exact = match self.host.strip_prefix("*.") {
            Some(suffix) => {
                let under = host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.');
                if !under {
                    return None;
                }
                false
            }
            None if self.host == host => true,
            None => return None,
        };
        if self.port.is_some_and(|p| Some(p) != url.port_or_known_default()) {
            return None;
        }
        let path = url.path();
        // A path prefix is whole segments: `/taobao` covers `/taobao` and `/taobao/...`.
        let prefix = self.path.trim_end_matches('/');
        if !prefix.is_empty() && !(path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))) {
            return None;
        }
        Some(usize::from(exact) * 100_000 + usize::from(self.port.is_some()) * 10_000 + self.path.len())
    }
}

/// Which platform each destination belongs to: ops' `[platforms.ID] hosts`, then the
/// hosts loaded connectors declare for their platform.
#[derive(Default)]
struct Destinations {
    /// From config: authoritative.
    configured: Vec<(Destination, String)>,
    /// Platforms that list their hosts in config: their connectors' manifests add none.
    listed: std::collections::BTreeSet<String>,
    /// From manifests: (pattern as declared, platform).
    declared: BTreeMap<String, String>,
}

impl Destinations {
    fn platform_for(&self, url: &url::Url) -> Option<&str> {
        let configured = self.configured.iter().filter_map(|(d, p)| Some((d.score(url)?, p)));
        if let Some((_, p)) = configured.max_by_key(|(score, _)| *score) {
            return Some(p);
        }
        // Declared hosts are bare names or `*.suffix` (the manifest check says so).
        let declared = self.declared.iter().filter_map(|(h, p)| Some((Destination::parse(h).ok()?.score(url)?, p)));
        declared.max_by_key(|(score, _)| *score).map(|(_, p)| p.as_str())
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)
    }
}

/// How berth limits calls to one platform (`GET /v1/platforms`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlatformLimitsView {
    /// The bucket per quota; no host-side limit when absent.
    pub requests_per_second: Option<f64>,
    pub burst: u32,
    /// Where the bucket comes from: `config` (`[platforms.ID] requests_per_second`),
    /// `manifest` (the most generous `default-rate-limit` its loaded connectors declare)
    /// or `none`.
    pub limit_from: &'static str,
    /// With `manifest`: the connector whose declaration it is, and what it declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared: Option<RateLimit>,
    /// The shop setting naming the quota (shared by shops with the same value); per shop when absent.
    pub quota_key: Option<String>,
    /// The window its quota usage is counted over (`usage_window_secs`).
    pub usage_window_secs: u64,
    pub max_hold_secs: u64,
    pub suspend_after_throttle_secs: u64,
    /// Destinations whose requests count against this platform, whoever sends them.
    pub hosts: Vec<String>,
    /// `config` (`[platforms.ID] hosts`) or `manifests` (its connectors' declared hosts).
    pub hosts_from: &'static str,
    /// Quotas of points, as the platform last reported them (or ops guessed).
    pub points: Vec<crate::points::PointsView>,
}

/// Whether two host patterns (`name` or `*.suffix`) can match one host.
fn overlap(a: &str, b: &str) -> bool {
    let under = |name: &str, suffix: &str| name.len() > suffix.len() && name.ends_with(suffix) && name[..name.len() - suffix.len()].ends_with('.');
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (None, None) => a == b,
        (Some(s), None) => under(b, s),
        (None, Some(s)) => under(a, s),
        (Some(x), Some(y)) => x == y || under(x, y) || under(y, x),
    }
}

/// A connector's manifest declares a host another platform's connectors declare.
#[derive(Debug, thiserror::Error)]
#[error("declares host `{host}` for platform `{platform}`, which connectors of platform `{other}` declare too; say which platform it belongs to with [platforms.{other}] hosts = [...] (or [platforms.{platform}] hosts)")]
pub struct HostClaimed {
    pub host: String,
    pub platform: String,
    pub other: String,
}

/// What caused a hold, for the status pages and the alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldCause {
    /// The shop whose call was throttled.
    pub shop: String,
    pub connector: String,
    /// What said so: `connector returned rate-limited(3600000 ms)`, `platform answered 429 ...`.
    pub reason: String,
}

#[derive(Clone, Debug)]
struct HoldState {
    until: std::time::Instant,
    since_ms: i64,
    length: Duration,
    /// A throttle (the platform said stop) rather than pacing (a nearly full bucket).
    throttle: bool,
    cause: HoldCause,
}

/// A hold in force, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeldQuota {
    pub platform: String,
    /// The setting and its value (an app key is not a secret; a secret is shown as a
    /// digest), or `shop:NAME`.
    pub key: String,
    pub remaining_ms: u64,
    /// How long the hold was set for.
    pub held_ms: u64,
    pub since_ms: i64,
    /// `throttle` (the platform or the connector said stop) or `pacing` (a nearly full
    /// call bucket).
    pub kind: &'static str,
    /// The shop whose call caused the hold, its connector, and why.
    pub shop: String,
    pub connector: String,
    pub reason: String,
}

#[derive(Default)]
pub struct RateLimits {
    /// Swapped whole when the config is reloaded; a call uses the set it started with.
    /// A platform whose declared rate changes gets a new limiter; the others are kept.
    platforms: std::sync::RwLock<std::sync::Arc<BTreeMap<String, std::sync::Arc<PlatformLimiter>>>>,
    /// The config the limiters were built from, and the rates loaded connectors declare
    /// (platform -> connector -> rate; a connector's newest load replaces its entry).
    /// Both locked together, under the `platforms` swap.
    sources: std::sync::Mutex<Sources>,
    destinations: std::sync::RwLock<Destinations>,
    /// Quotas held, until when and why: (platform, key) -> hold.
    blocked: std::sync::Mutex<std::collections::HashMap<(String, String), HoldState>>,
    /// Requests sent and not answered yet, per (platform, key): a call-limit header
    /// read from one answer does not count them, so the reserve must.
    in_flight: InFlightCounts,
    /// Quotas whose last answer said the platform's bucket is nearly full: their
    /// requests go one at a time until an answer says otherwise.
    nearly_full: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// One queue per limited bucket: waiters take slots in arrival order (tokio's mutex
    /// is fair), so many requests of one shop cannot crowd out another shop's one.
    queues: std::sync::Mutex<std::collections::HashMap<(String, String), std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Told when an operator releases a hold: workers waiting one out look again.
    released: tokio::sync::Notify,
    /// Quotas of points the platforms report (a GraphQL cost bucket), per shop quota.
    pub points: crate::points::PointsBuckets,
    /// The last call-limit header read per (platform, key): used, size, when, and the
    /// bucket's leak rate (usage pages drain it since).
    call_limits: std::sync::Mutex<std::collections::HashMap<(String, String), CallLimitReport>>,
}

#[derive(Clone, Copy)]
struct CallLimitReport {
    used: u32,
    size: u32,
    at: std::time::Instant,
    leak: f64,
}

#[derive(Default)]
struct Sources {
    config: BTreeMap<String, PlatformConfig>,
    declared: BTreeMap<String, BTreeMap<String, RateLimit>>,
}

/// The shop lacks the setting its platform's quota is counted by.
#[derive(Debug, thiserror::Error)]
#[error("platform `{platform}` counts calls per `{setting}`, and shop `{shop}` has no `{setting}`")]
pub struct NoQuotaKey {
    pub platform: String,
    pub setting: String,
    pub shop: String,
}

type InFlightCounts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, String), u32>>>;

/// A request on its way (see [`RateLimits::acquire`]); dropped when it is answered or failed.
#[derive(Debug)]
pub struct InFlight {
    counts: InFlightCounts,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Why the host holds a quota after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The platform throttled (429/503 with a wait).
    Throttled(Duration),
    /// The platform's call-limit header says its bucket is nearly full.
    NearlyFull(Duration),
}

/// Shopify-style `used/size` call-limit header.
pub fn call_limit(headers: &[(String, String)]) -> Option<(u32, u32)> {
    let v = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-shopify-shop-api-call-limit"))?.1.trim();
    let (used, size) = v.split_once('/')?;
    let (used, size) = (used.trim().parse::<u32>().ok()?, size.trim().parse::<u32>().ok()?);
    (size > 0).then_some((used.min(size), size))
}

/// How long to hold calls so the platform's bucket keeps a reserve (a tenth of it, at
/// least one call) free: the time it takes to drain back to that level.
pub fn drain_wait(used: u32, size: u32, leak_per_second: f64) -> Duration {
    let reserve = (size / 10).max(1);
    let over = (used + reserve).saturating_sub(size);
    if over == 0 || leak_per_second <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(over as f64 / leak_per_second)
}

/// How long a throttling answer asks to wait: `Retry-After` (seconds, possibly
/// fractional) or `X-RateLimit-Reset` (seconds to wait, or a Unix time in seconds).
pub fn retry_after(status: u16, headers: &[(String, String)], now_unix_s: f64) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
    let secs = |v: &str| v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0);
    let wait = match (header("retry-after").and_then(secs), header("x-ratelimit-reset").and_then(secs)) {
        (Some(s), _) => s,
        // Large values are absolute Unix times.
        (None, Some(r)) if r > 1_000_000_000.0 => (r - now_unix_s).max(0.0),
        (None, Some(r)) => r,
        (None, None) if status == 429 => 1.0,
        (None, None) => return None,
    };
    // A garbage value must not park a quota for days.
    Some(Duration::from_secs_f64(wait.min(3600.0)))
}

/// The slot is further away than the call may wait.
#[derive(Debug, thiserror::Error)]
#[error("the {platform} rate limit has no slot for {wait_ms} ms, longer than this call may wait")]
pub struct NoSlot {
    pub platform: String,
    pub wait_ms: u64,
}

pub fn quota(requests_per_second: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / requests_per_second);
    Quota::with_period(period)
        .expect("positive period (checked in config)")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst >= 1"))
}

impl RateLimits {
    pub fn new(cfg: &BTreeMap<String, PlatformConfig>) -> Self {
        let limits = RateLimits::default();
        limits.reconfigure(cfg);
        limits
    }

    /// Apply new limits (config reload): the next call uses them. Quotas the platform
    /// said are exhausted stay held.
    pub fn reconfigure(&self, cfg: &BTreeMap<String, PlatformConfig>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.config = cfg.clone();
        let names: std::collections::BTreeSet<&String> = cfg.keys().chain(sources.declared.keys()).collect();
        let platforms: BTreeMap<String, std::sync::Arc<PlatformLimiter>> = names
            .into_iter()
            .map(|name| {
                let limiter = PlatformLimiter::new(cfg.get(name), most_generous(sources.declared.get(name)));
                (name.clone(), std::sync::Arc::new(limiter))
            })
            .collect();
        *self.platforms.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(platforms);
        drop(sources);
        self.points.configure(cfg.iter().filter(|(_, l)| !l.points.is_empty()).map(|(name, l)| (name.clone(), l.points.clone())).collect());
        let mut d = self.destinations.write().unwrap_or_else(|e| e.into_inner());
        d.configured = cfg
            .iter()
            .flat_map(|(name, l)| l.hosts.iter().flatten().filter_map(move |h| Some((Destination::parse(h).ok()?, name.clone()))))
            .collect();
        d.listed = cfg.iter().filter(|(_, l)| l.hosts.is_some()).map(|(name, _)| name.clone()).collect();
    }

    /// A loaded connector of `platform` declares `hosts`: they count against `platform`,
    /// unless config says whose they are. Refused when another platform's connectors
    /// declare one of them and config does not settle it.
    pub fn claim(&self, platform: &str, hosts: &[String]) -> Result<(), HostClaimed> {
        let mut d = self.destinations.write().unwrap_or_else(|e| e.into_inner());
        if d.listed.contains(platform) {
            return Ok(());
        }
        for h in hosts {
            let host = h.to_ascii_lowercase();
            // A host config gives to some platform is that platform's, whoever declares it.
            let settled = Destination::parse(&host).is_ok_and(|dest| d.configured.iter().any(|(c, _)| c.host == dest.host));
            if settled {
                continue;
            }
            // Equal or overlapping patterns (`acme.myshopify.com` under `*.myshopify.com`):
            // the more specific one would capture the other platform's traffic.
            if let Some((_, other)) = d.declared.iter().find(|(h, p)| *p != platform && overlap(h, &host)) {
                return Err(HostClaimed { host, platform: platform.to_string(), other: other.clone() });
            }
        }
        for h in hosts {
            d.declared.entry(h.to_ascii_lowercase()).or_insert_with(|| platform.to_string());
        }
        Ok(())
    }

    /// A loaded version of `connector` declares `rate` for one quota of `platform` (its
    /// manifest's `default-rate-limit`). Unless config sets the platform's
    /// `requests_per_second` or turns manifests off, the platform's bucket follows the
    /// most generous rate declared; it is rebuilt (its buckets refilled) only when that
    /// rate changes.
    pub fn declare_rate(&self, platform: &str, connector: &str, rate: RateLimit) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let before = most_generous(sources.declared.get(platform));
        sources.declared.entry(platform.to_string()).or_default().insert(connector.to_string(), rate);
        let after = most_generous(sources.declared.get(platform));
        if before.map(|(_, r)| r) == after.as_ref().map(|(_, r)| *r) {
            return;
        }
        let limiter = PlatformLimiter::new(sources.config.get(platform), after);
        if let LimitFrom::Manifest { connector, rate } = &limiter.limit_from {
            tracing::info!(
                platform, connector = %connector, requests_per_minute = rate.requests_per_minute, burst = rate.burst,
                "the platform's calls are limited at the rate its connector's manifest declares"
            );
        }
        let mut platforms = self.platforms.write().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::clone(&platforms);
        next.insert(platform.to_string(), std::sync::Arc::new(limiter));
        *platforms = std::sync::Arc::new(next);
    }

    /// The platform a request to `url` counts against, when its destination belongs to one.
    pub fn platform_for(&self, url: &url::Url) -> Option<String> {
        self.destinations.read().unwrap_or_else(|e| e.into_inner()).platform_for(url).map(str::to_string)
    }

    fn snapshot(&self) -> std::sync::Arc<BTreeMap<String, std::sync::Arc<PlatformLimiter>>> {
        self.platforms.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The quota `shop`'s calls to `platform` count against: its value of the platform's
    /// `quota_key` setting, or the shop itself when the platform has none.
    pub fn quota_of(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>) -> Result<String, NoQuotaKey> {
        match self.snapshot().get(platform) {
            Some(p) => Self::key(p, platform, shop, cfg),
            None => Ok(format!("shop:{shop}")),
        }
    }

    /// Hold the quota `key` of `platform` until `wait` has passed (or longer, if it is
    /// held longer already).
    fn hold(&self, platform: &str, key: String, wait: Duration, throttle: bool, cause: HoldCause) {
        let now = std::time::Instant::now();
        let until = now + wait;
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        // Forget holds that have passed, so the map stays as small as the set of held quotas.
        blocked.retain(|_, h| h.until > now);
        let state = HoldState { until, since_ms: berth_types::clock::now_ms(), length: wait, throttle, cause };
        match blocked.entry((platform.to_string(), key)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                // The later end wins; a throttle is not downgraded to pacing.
                if until > e.get().until {
                    let throttle = throttle || e.get().throttle;
                    e.insert(HoldState { throttle, ..state });
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(state);
            }
        }
    }

    /// The longest hold the platform's `max_hold_secs` allows.
    pub fn max_hold(&self, platform: &str) -> Duration {
        self.snapshot().get(platform).map_or(Duration::from_secs(crate::config::DEFAULT_MAX_HOLD_SECS), |p| p.max_hold)
    }

    /// The platform or a connector said `shop`'s quota is spent and asked for `wait`:
    /// hold it that long — at most the platform's `max_hold_secs`, at least its
    /// `suspend_after_throttle_secs`. Returns the hold.
    pub fn penalize(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>, wait: Duration, cause: HoldCause) -> Duration {
        let (suspend, max_hold) = self.snapshot().get(platform).map_or(
            (Duration::ZERO, Duration::from_secs(crate::config::DEFAULT_MAX_HOLD_SECS)),
            |p| (p.suspend_after_throttle, p.max_hold),
        );
        if wait > max_hold {
            tracing::warn!(
                platform, shop, connector = %cause.connector, asked_ms = wait.as_millis() as u64, max_hold_secs = max_hold.as_secs(),
                "a hold longer than the platform's max_hold_secs was asked for; capped"
            );
        }
        let wait = wait.min(max_hold).max(suspend);
        let key = self.quota_of(platform, shop, cfg).unwrap_or_else(|_| format!("shop:{shop}"));
        self.hold(platform, key, wait, true, cause);
        wait
    }

    /// Learn from an answer: a throttle (429/503 with `Retry-After` or
    /// `X-RateLimit-Reset`) or a call-limit header saying the bucket is nearly full holds
    /// the quota `key`. Returns what was held, if anything.
    pub fn learn(&self, platform: &str, key: &str, shop: &str, connector: &str, status: u16, headers: &[(String, String)]) -> Option<Hold> {
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let cause = |reason: String| HoldCause { shop: shop.to_string(), connector: connector.to_string(), reason };
        if let Some(wait) = retry_after(status, headers, now_s) {
            let (suspend, max_hold) = self.snapshot().get(platform).map_or(
                (Duration::ZERO, Duration::from_secs(crate::config::DEFAULT_MAX_HOLD_SECS)),
                |p| (p.suspend_after_throttle, p.max_hold),
            );
            let held = wait.min(max_hold).max(suspend);
            let why = format!("the platform answered HTTP {status} asking to wait {} ms", wait.as_millis());
            self.hold(platform, key.to_string(), held, true, cause(why));
            return Some(Hold::Throttled(held));
        }
        let platforms = self.snapshot();
        let unconfigured = PlatformLimiter::unconfigured();
        let leak = platforms.get(platform).map_or(&unconfigured, |p| p).call_limit_leak?;
        let (used, size) = call_limit(headers)?;
        let flight = (platform.to_string(), key.to_string());
        let report = CallLimitReport { used, size, at: std::time::Instant::now(), leak };
        self.call_limits.lock().unwrap_or_else(|e| e.into_inner()).insert(flight.clone(), report);
        // Other requests of this quota already on their way will fill the bucket too.
        let others = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).get(&flight).map_or(0, |n| n.saturating_sub(1));
        let wait = drain_wait(used + others, size, leak);
        let mut nearly_full = self.nearly_full.lock().unwrap_or_else(|e| e.into_inner());
        if wait.is_zero() {
            nearly_full.remove(&flight);
            return None;
        }
        nearly_full.insert(flight);
        drop(nearly_full);
        self.hold(platform, key.to_string(), wait, false, cause(format!("the platform's call bucket is at {used}/{size}")));
        Some(Hold::NearlyFull(wait))
    }

    fn blocked_for(&self, platform: &str, key: &str) -> Duration {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .get(&(platform.to_string(), key.to_string()))
            .map_or(Duration::ZERO, |h| h.until.saturating_duration_since(std::time::Instant::now()))
    }

    /// The bucket a call of `shop` counts against.
    fn key(p: &PlatformLimiter, platform: &str, shop: &str, cfg: Option<&ShopConfig>) -> Result<String, NoQuotaKey> {
        match (&p.quota_key, cfg) {
            (Some(setting), Some(c)) => match (c.settings.get(setting), c.secrets.get(setting)) {
                (Some(v), _) => Ok(format!("{setting}:{v}")),
                // Keys show up on status pages: a secret is keyed by a digest, never its value.
                (None, Some(secret)) => {
                    Ok(format!("{setting}:sha256:{}", &hex::encode(berth_types::digest::sha256(secret.expose().as_bytes()))[..16]))
                }
                (None, None) => Err(NoQuotaKey { platform: platform.to_string(), setting: setting.clone(), shop: shop.to_string() }),
            },
            _ => Ok(format!("shop:{shop}")),
        }
    }

    /// This bucket's turn queue.
    fn queue(&self, key: &(String, String)) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.entry(key.clone()).or_default().clone()
    }

    /// Wait for a slot of the platform's bucket and of the request's endpoint class, at
    /// most `budget` in all; while the platform's bucket is nearly full, also for the
    /// quota's request on its way to be answered (two requests woken by the end of one
    /// hold would both spend the one call the reserve keeps). Returns how long it
    /// waited and the request's place among those on their way, to hold until its
    /// answer has been learnt from. `key` is the quota (see [`RateLimits::quota_of`]).
    pub async fn acquire(&self, platform: &str, key: &str, endpoint: Endpoint<'_>, budget: Duration) -> Result<(Duration, InFlight), NoSlot> {
        let unconfigured = PlatformLimiter::unconfigured();
        let platforms = self.snapshot();
        let p = platforms.get(platform).map_or(&unconfigured, |p| p);
        let no_slot = |wait: Duration| NoSlot { platform: platform.to_string(), wait_ms: wait.as_millis() as u64 };
        // Outside the allowed hours, or while the platform holds the quota: wait.
        let closed = wait_until_open(&p.windows, p.zone, berth_types::clock::now_ms());
        let mut waited = self.blocked_for(platform, key).max(closed);
        if waited > budget {
            return Err(no_slot(waited));
        }
        if !waited.is_zero() {
            tokio::time::sleep(waited).await;
        }
        let class = p.class(&endpoint);
        let flight = (platform.to_string(), key.to_string());
        let key = key.to_string();
        // A limited bucket is taken in turn; an unlimited one needs no queue.
        let queue = (p.limiter.is_some() || class.is_some()).then(|| self.queue(&flight));
        let _turn = match &queue {
            Some(q) => match q.try_lock() {
                Ok(turn) => Some(turn),
                Err(_) => {
                    let started = std::time::Instant::now();
                    match tokio::time::timeout(budget.saturating_sub(waited), q.lock()).await {
                        Ok(turn) => {
                            waited += started.elapsed();
                            Some(turn)
                        }
                        Err(_) => return Err(no_slot(budget)),
                    }
                }
            },
            None => None,
        };
        for limiter in [p.limiter.as_ref(), class.map(|c| &c.limiter)].into_iter().flatten() {
            waited += Self::slot(limiter, &key, budget.saturating_sub(waited)).await.map_err(no_slot)?;
        }
        // The tokens are spent: count them against their quotas.
        if p.limiter.is_some() {
            p.usage.count(&key);
        }
        if let Some(c) = class {
            c.usage.count(&key);
        }
        loop {
            // Another request of this quota on its way to a nearly full bucket, or a hold
            // its answer just set: wait, then look again.
            let step = match self.take_turn(&flight) {
                Ok(flight) => return Ok((waited, flight)),
                Err(step) => step,
            };
            if waited + step > budget {
                return Err(no_slot(waited + step));
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
    }

    /// Count a request as on its way, or say how long to wait first: while the quota is
    /// held, or while its bucket is nearly full and another request is on its way. The
    /// hold is read under the same lock the answered request's count is released under
    /// (after its answer set any new hold), so no request slips between the two.
    fn take_turn(&self, key: &(String, String)) -> Result<InFlight, Duration> {
        let mut counts = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.blocked_for(&key.0, &key.1);
        if !held.is_zero() {
            return Err(held);
        }
        let busy = counts.get(key).is_some_and(|n| *n > 0);
        if busy && self.nearly_full.lock().unwrap_or_else(|e| e.into_inner()).contains(key) {
            return Err(Duration::from_millis(10));
        }
        *counts.entry(key.clone()).or_insert(0) += 1;
        Ok(InFlight { counts: self.in_flight.clone(), key: key.clone() })
    }

    async fn slot(limiter: &DefaultKeyedRateLimiter<String>, key: &String, budget: Duration) -> Result<Duration, Duration> {
        // The limiter's own clock: making a clock per call costs more than the check.
        let clock = limiter.clock();
        let mut waited = Duration::ZERO;
        loop {
            match limiter.check_key(key) {
                Ok(()) => return Ok(waited),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(clock.now());
                    if waited + wait > budget {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
    }

    /// How much of each quota is in use (see [`crate::usage`]), every key, unsorted: the
    /// host's own buckets counted over their windows, the platforms' call-limit reports
    /// drained at the bucket's leak rate since they were read, and the points quotas.
    pub fn usage(&self) -> Vec<QuotaUsage> {
        let mut rows = Vec::new();
        for (name, p) in self.snapshot().iter() {
            if let (Some(rps), Some(_)) = (p.requests_per_second, &p.limiter) {
                rows.extend(counted(name, "requests", &p.usage, rps));
            }
            for c in &p.classes {
                rows.extend(counted(name, &format!("endpoint:{}", c.name), &c.usage, c.requests_per_second));
            }
        }
        let now = std::time::Instant::now();
        let mut reports = self.call_limits.lock().unwrap_or_else(|e| e.into_inner());
        // A report drained to nothing tells nothing more: forgotten (the map stays as
        // small as the keys calling now).
        reports.retain(|(platform, key), r| {
            let used = f64::from(r.used) - r.leak * now.saturating_duration_since(r.at).as_secs_f64();
            if used > 0.0 {
                rows.push(QuotaUsage::new(platform, "call-limit".into(), key.clone(), used, f64::from(r.size), "reported"));
            }
            used > 0.0
        });
        drop(reports);
        for platform in self.points.platforms() {
            for v in self.points.views(&platform) {
                let used = (v.maximum - v.available).max(0.0);
                rows.push(QuotaUsage::new(&platform, format!("points:{}", v.name), v.key, used, v.maximum, v.source));
            }
        }
        rows
    }

    /// The endpoint class names of a platform (for status pages).
    pub fn classes(&self, platform: &str) -> Vec<String> {
        self.snapshot().get(platform).map(|p| p.classes.iter().map(|c| c.name.clone()).collect()).unwrap_or_default()
    }

    /// Whether a platform has endpoint classes (only then is a request's API method read).
    pub fn has_classes(&self, platform: &str) -> bool {
        self.snapshot().get(platform).is_some_and(|p| !p.classes.is_empty())
    }

    /// How berth limits calls to `platform` now, for status pages.
    pub fn limits_view(&self, platform: &str) -> PlatformLimitsView {
        let unconfigured = PlatformLimiter::unconfigured();
        let platforms = self.snapshot();
        let p = platforms.get(platform).map_or(&unconfigured, |p| p);
        let d = self.destinations.read().unwrap_or_else(|e| e.into_inner());
        let configured = d.configured.iter().filter(|(_, p)| p == platform).map(|(dest, _)| dest.to_string());
        let declared = d.declared.iter().filter(|(_, p)| *p == platform).map(|(h, _)| h.clone());
        let (declared_by, declared_rate) = match &p.limit_from {
            LimitFrom::Manifest { connector, rate } => (Some(connector.clone()), Some(*rate)),
            _ => (None, None),
        };
        PlatformLimitsView {
            requests_per_second: p.requests_per_second,
            burst: p.burst,
            limit_from: p.limit_from.label(),
            declared_by,
            declared: declared_rate,
            quota_key: p.quota_key.clone(),
            usage_window_secs: p.usage.window_secs(),
            max_hold_secs: p.max_hold.as_secs(),
            suspend_after_throttle_secs: p.suspend_after_throttle.as_secs(),
            hosts: configured.chain(declared).collect(),
            hosts_from: if d.listed.contains(platform) { "config" } else { "manifests" },
            points: self.points.views(platform),
        }
    }

    fn view(platform: &str, key: &str, h: &HoldState, now: std::time::Instant) -> HeldQuota {
        HeldQuota {
            platform: platform.to_string(),
            key: key.to_string(),
            remaining_ms: h.until.saturating_duration_since(now).as_millis() as u64,
            held_ms: h.length.as_millis() as u64,
            since_ms: h.since_ms,
            kind: if h.throttle { "throttle" } else { "pacing" },
            shop: h.cause.shop.clone(),
            connector: h.cause.connector.clone(),
            reason: h.cause.reason.clone(),
        }
    }

    /// Holds in force now, by platform and key.
    pub fn held(&self) -> Vec<HeldQuota> {
        let now = std::time::Instant::now();
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<HeldQuota> =
            blocked.iter().filter(|(_, h)| h.until > now).map(|((platform, key), h)| Self::view(platform, key, h, now)).collect();
        out.sort_by(|a, b| (&a.platform, &a.key).cmp(&(&b.platform, &b.key)));
        out
    }

    /// The throttle hold `shop`'s calls to `platform` wait behind now, if any.
    pub fn throttle_on(&self, platform: &str, shop: &str, cfg: Option<&ShopConfig>) -> Option<HeldQuota> {
        let key = self.quota_of(platform, shop, cfg).ok()?;
        let now = std::time::Instant::now();
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.get(&(platform.to_string(), key.clone())).filter(|h| h.throttle && h.until > now).map(|h| Self::view(platform, &key, h, now))
    }

    /// An operator ends a hold: the quota's calls go on at once. Returns the hold ended.
    pub fn release(&self, platform: &str, key: &str) -> Option<HeldQuota> {
        let now = std::time::Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let flight = (platform.to_string(), key.to_string());
        let h = blocked.remove(&flight).filter(|h| h.until > now)?;
        drop(blocked);
        self.nearly_full.lock().unwrap_or_else(|e| e.into_inner()).remove(&flight);
        self.released.notify_waiters();
        Some(Self::view(platform, key, &h, now))
    }

    /// Resolves when an operator releases a hold (any: waiters look again).
    pub async fn released(&self) {
        self.released.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const ANY: Endpoint<'static> = Endpoint { path: "/", api_method: None };

    /// A shop's call, its quota looked up as `http.send` does.
    async fn acq(l: &RateLimits, platform: &str, shop: &str, cfg: Option<&ShopConfig>, e: Endpoint<'_>, budget: Duration) -> Result<(Duration, InFlight), NoSlot> {
        let key = l.quota_of(platform, shop, cfg).unwrap();
        l.acquire(platform, &key, e, budget).await
    }

    fn lrn(l: &RateLimits, platform: &str, shop: &str, cfg: Option<&ShopConfig>, status: u16, h: &[(String, String)]) -> Option<Hold> {
        let key = l.quota_of(platform, shop, cfg).unwrap();
        l.learn(platform, &key, shop, "c", status, h)
    }

    fn pen(l: &RateLimits, platform: &str, shop: &str, cfg: Option<&ShopConfig>, wait: Duration) -> Duration {
        let cause = HoldCause { shop: shop.into(), connector: "c".into(), reason: "test".into() };
        l.penalize(platform, shop, cfg, wait, cause)
    }

    /// Limits from a `[platforms]` TOML snippet, checked as berth.toml is.
    fn from_toml(text: &str) -> RateLimits {
        RateLimits::new(&crate::config::parse_platforms(text))
    }

    fn limits(rps: f64, burst: u32, quota_key: Option<&str>) -> RateLimits {
        let key = quota_key.map(|k| format!("quota_key = \"{k}\"\n")).unwrap_or_default();
        from_toml(&format!("[platforms.p]\nrequests_per_second = {rps:?}\nburst = {burst}\n{key}"))
    }

    #[tokio::test]
    async fn reconfigure_applies_to_the_next_call() {
        let l = limits(1.0, 1, None);
        acq(&l, "p", "s", None, ANY, Duration::ZERO).await.unwrap();
        assert!(acq(&l, "p", "s", None, ANY, Duration::ZERO).await.is_err());
        let cfg = crate::config::parse_platforms("[platforms.p]\nrequests_per_second = 1000.0\nburst = 5\n");
        l.reconfigure(&cfg);
        for _ in 0..5 {
            acq(&l, "p", "s", None, ANY, Duration::ZERO).await.unwrap();
        }
    }

    const fn rate(requests_per_minute: u32, burst: u32) -> RateLimit {
        RateLimit { requests_per_minute, burst }
    }

    /// How many calls of one shop go through at once, without waiting.
    async fn at_once(l: &RateLimits, platform: &str, shop: &str) -> usize {
        let mut n = 0;
        while acq(l, platform, shop, None, ANY, Duration::ZERO).await.is_ok() {
            n += 1;
            assert!(n < 1000, "no bucket");
        }
        n
    }

    #[tokio::test]
    async fn a_declared_rate_limits_each_shop_unless_config_says_otherwise() {
        // No config: the manifest's rate, per shop.
        let l = RateLimits::new(&BTreeMap::new());
        l.declare_rate("p", "c1", rate(6, 3));
        assert_eq!(at_once(&l, "p", "s").await, 3);
        assert_eq!(at_once(&l, "p", "other").await, 3, "each shop has its own bucket");
        let v = l.limits_view("p");
        assert_eq!((v.limit_from, v.declared_by.as_deref(), v.requests_per_second), ("manifest", Some("c1"), Some(0.1)));
        // A connector declaring less does not slow the platform; one declaring more
        // raises it (for a new bucket).
        l.declare_rate("p", "low", rate(1, 1));
        assert_eq!(l.limits_view("p").declared_by.as_deref(), Some("c1"));
        l.declare_rate("p", "c2", rate(12, 5));
        assert_eq!(at_once(&l, "p", "s").await, 5);
        // The same rate again (a reload) keeps the buckets as they are.
        l.declare_rate("p", "c2", rate(12, 5));
        assert_eq!(at_once(&l, "p", "s").await, 0);
        // A declared 0 is no advice; a platform without declarations has no bucket.
        l.declare_rate("q", "c3", rate(0, 9));
        assert_eq!(l.limits_view("q").limit_from, "none");
        assert_eq!(l.limits_view("nobody").limit_from, "none");

        // Config's own rate wins; a section without one keeps the declared rate (with
        // its quota key); `use_manifest_rate = false` means no host-side limit.
        let cfg = crate::config::parse_platforms(
            "[platforms.p]\nrequests_per_second = 0.2\nburst = 7\n[platforms.q]\nquota_key = \"app\"\n[platforms.r]\nuse_manifest_rate = false\n",
        );
        l.reconfigure(&cfg);
        l.declare_rate("q", "c3", rate(60, 2));
        l.declare_rate("r", "c4", rate(60, 2));
        assert_eq!(l.limits_view("p").limit_from, "config");
        assert_eq!(at_once(&l, "p", "s").await, 7);
        let q = l.limits_view("q");
        assert_eq!((q.limit_from, q.burst, q.quota_key.as_deref()), ("manifest", 2, Some("app")));
        assert_eq!(l.limits_view("r").limit_from, "none");
        assert_eq!(acq(&l, "r", "s", None, ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
        // The declarations outlive a reload: without its section, `p` follows c2 again.
        l.reconfigure(&BTreeMap::new());
        let p = l.limits_view("p");
        assert_eq!((p.limit_from, p.declared_by.as_deref(), p.burst), ("manifest", Some("c2"), 5));
    }

    #[test]
    fn reads_throttle_headers() {
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(retry_after(429, &h("Retry-After", "2.0"), 0.0), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(429, &h("x-ratelimit-reset", "5"), 0.0), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(429, &h("X-RateLimit-Reset", "1700000030"), 1_700_000_000.0), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(429, &[], 0.0), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(503, &[], 0.0), None);
        assert_eq!(retry_after(200, &h("Retry-After", "9"), 0.0), None);
        assert_eq!(retry_after(429, &h("Retry-After", "99999999"), 0.0), Some(Duration::from_secs(3600)));
        assert_eq!(call_limit(&h("X-Shopify-Shop-Api-Call-Limit", "32/40")), Some((32, 40)));
        assert_eq!(call_limit(&h("x-shopify-shop-api-call-limit", "garbage")), None);
        assert_eq!(call_limit(&h("x-shopify-shop-api-call-limit", "3/0")), None);
    }

    #[test]
    fn the_call_limit_header_keeps_a_reserve_free() {
        // Bucket of 40 draining 2/s keeps 4 free: at 36 used nothing waits, at 38 one second.
        assert_eq!(drain_wait(36, 40, 2.0), Duration::ZERO);
        assert_eq!(drain_wait(37, 40, 2.0), Duration::from_millis(500));
        assert_eq!(drain_wait(38, 40, 2.0), Duration::from_secs(1));
        assert_eq!(drain_wait(40, 40, 2.0), Duration::from_secs(2));
        // A tiny bucket still keeps one call free.
        assert_eq!(drain_wait(1, 2, 2.0), Duration::ZERO);
        assert_eq!(drain_wait(2, 2, 2.0), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn near_a_full_bucket_requests_go_one_at_a_time() {
        let limits = RateLimits::default();
        let nine = [("X-Shopify-Shop-Api-Call-Limit".to_string(), "9/10".to_string())];
        let second = Duration::from_secs(1);
        {
            let (_, _alone) = acq(&limits, "shopify", "acme", None, ANY, second).await.unwrap();
            assert_eq!(lrn(&limits, "shopify", "acme", None, 200, &nine), None, "9 of 10 keeps the one call reserve");
        }
        let (_, probe) = acq(&limits, "shopify", "acme", None, ANY, second).await.unwrap();
        let (_, page) = acq(&limits, "shopify", "acme", None, ANY, second).await.unwrap();
        assert_eq!(
            lrn(&limits, "shopify", "acme", None, 200, &nine),
            Some(Hold::NearlyFull(Duration::from_millis(500))),
            "another request of the shop is on its way: it takes the reserve"
        );
        drop(page);
        // Nearly full with the probe still on its way: the next request waits for its answer.
        assert!(acq(&limits, "shopify", "acme", None, ANY, Duration::from_millis(50)).await.is_err());
        assert!(acq(&limits, "shopify", "zeta", None, ANY, Duration::ZERO).await.is_ok(), "other shops go on");
        drop(probe);
        let (waited, _next) = acq(&limits, "shopify", "acme", None, ANY, second).await.unwrap();
        assert!(waited >= Duration::from_millis(400), "then it holds for the drain: {waited:?}");
    }

    #[tokio::test]
    async fn a_nearly_full_bucket_holds_the_shop_unless_turned_off() {
        let h = vec![("X-Shopify-Shop-Api-Call-Limit".to_string(), "39/40".to_string())];
        // Unconfigured platforms read the header too (at Shopify's standard 2/s).
        let l = from_toml("");
        assert_eq!(lrn(&l, "shopify", "a", None, 200, &h), Some(Hold::NearlyFull(Duration::from_millis(1500))));
        assert!(acq(&l, "shopify", "a", None, ANY, Duration::from_millis(100)).await.is_err());
        assert!(acq(&l, "shopify", "b", None, ANY, Duration::ZERO).await.is_ok(), "other shops have their own bucket");
        let off = from_toml("[platforms.shopify]\ncall_limit_header = false\n");
        assert_eq!(lrn(&off, "shopify", "a", None, 200, &h), None);
        let fast = from_toml("[platforms.shopify]\ncall_limit_leak_per_second = 20.0\n");
        assert_eq!(lrn(&fast, "shopify", "a", None, 200, &h), Some(Hold::NearlyFull(Duration::from_millis(150))));
    }

    #[tokio::test]
    async fn a_throttle_suspends_the_quota_for_the_configured_time() {
        let l = from_toml("[platforms.taobao.retry]\nsuspend_after_throttle_secs = 7200\n");
        assert_eq!(pen(&l, "taobao", "a", None, Duration::from_secs(41)), Duration::from_secs(7200));
        let err = acq(&l, "taobao", "a", None, ANY, Duration::from_secs(60)).await.unwrap_err();
        assert!(err.wait_ms > 7_000_000, "{err}");
        let h = vec![("Retry-After".to_string(), "2".to_string())];
        assert_eq!(lrn(&l, "taobao", "b", None, 429, &h), Some(Hold::Throttled(Duration::from_secs(7200))));
        assert_eq!(l.held().iter().filter(|h| h.platform == "taobao").count(), 2);
    }

    #[tokio::test]
    async fn endpoint_classes_have_their_own_bucket() {
        let l = from_toml(
            "[platforms.taobao]\nrequests_per_second = 1000.0\nburst = 100\n\
             [platforms.taobao.endpoints.stock]\nmatch = [\"taobao.item.quantity.*\", \"/admin/*/inventory_levels/set.json\"]\nrequests_per_second = 1.0\n",
        );
        let stock = Endpoint { path: "/router/rest", api_method: Some("taobao.item.quantity.update") };
        let orders = Endpoint { path: "/router/rest", api_method: Some("taobao.trades.sold.increment.get") };
        let by_path = Endpoint { path: "/admin/api/2024-01/inventory_levels/set.json", api_method: None };
        acq(&l, "taobao", "s", None, stock, Duration::ZERO).await.unwrap();
        assert!(acq(&l, "taobao", "s", None, stock, Duration::ZERO).await.is_err(), "the stock class allows 1/s");
        assert!(acq(&l, "taobao", "s", None, by_path, Duration::ZERO).await.is_err(), "path patterns share the class");
        for _ in 0..20 {
            acq(&l, "taobao", "s", None, orders, Duration::ZERO).await.unwrap();
        }
        assert_eq!(l.classes("taobao"), ["stock"]);
    }

    #[tokio::test]
    async fn usage_counts_each_quota_against_what_its_bucket_refills() {
        let l = from_toml(
            "[platforms.p]\nrequests_per_second = 10.0\nburst = 100\nusage_window_secs = 10\ncall_limit_leak_per_second = 0.001\n\
             [platforms.p.endpoints.stock]\nmatch = [\"/stock\"]\nrequests_per_second = 1.0\nburst = 5\n",
        );
        let stock = Endpoint { path: "/stock", api_method: None };
        for _ in 0..30 {
            acq(&l, "p", "a", None, ANY, Duration::ZERO).await.unwrap();
        }
        // Until the class's bucket refuses: a refused call spends nothing.
        let mut let_through = 0.0;
        while acq(&l, "p", "b", None, stock, Duration::ZERO).await.is_ok() {
            let_through += 1.0;
        }
        assert!(let_through >= 5.0, "the class's burst");
        let header = [("X-Shopify-Shop-Api-Call-Limit".to_string(), "30/40".to_string())];
        assert!(lrn(&l, "p", "a", None, 200, &header).is_none());
        let mut rows = l.usage();
        crate::usage::by_ratio(&mut rows);
        let got: Vec<(&str, &str, f64, f64, &str, Option<u64>)> =
            rows.iter().map(|r| (r.quota.as_str(), r.key.as_str(), r.used.round(), r.capacity, r.source, r.window_secs)).collect();
        assert_eq!(
            got,
            vec![
                ("call-limit", "shop:a", 30.0, 40.0, "reported", None),
                ("endpoint:stock", "shop:b", let_through, 10.0, "counted", Some(10)),
                ("requests", "shop:a", 30.0, 100.0, "counted", Some(10)),
                ("requests", "shop:b", let_through, 100.0, "counted", Some(10)),
            ]
        );
        assert_eq!(l.limits_view("p").usage_window_secs, 10);
        // Unlimited platforms have no bucket to measure against.
        let _ = acq(&l, "free", "a", None, ANY, Duration::ZERO).await.unwrap();
        assert!(l.usage().iter().all(|r| r.platform == "p"));
    }

    #[test]
    fn globs() {
        assert!(glob("taobao.item.*", "taobao.item.quantity.update"));
        assert!(glob("*.update", "taobao.item.quantity.update"));
        assert!(glob("/admin/*/orders.json", "/admin/api/2024-01/orders.json"));
        assert!(glob("a*b*c", "abc") && glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "acb") && !glob("taobao.item.*", "taobao.items") && !glob("ab*ba", "aba"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[tokio::test]
    async fn a_throttled_quota_holds_every_shop_on_it() {
        let l = limits(1000.0, 10, Some("app_key"));
        let cfg: ShopConfig = toml::from_str("connector = \"c\"\nsettings = { app_key = \"K\" }\n").unwrap();
        pen(&l, "p", "a", Some(&cfg), Duration::from_millis(300));
        assert!(acq(&l, "p", "b", Some(&cfg), ANY, Duration::from_millis(100)).await.is_err(), "b shares a's app key");
        let start = Instant::now();
        acq(&l, "p", "b", Some(&cfg), ANY, Duration::from_secs(1)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        // A quota keyed by a secret never shows the secret.
        let secret: ShopConfig = toml::from_str("connector = \"c\"\nsecrets = { app_key = \"hush\" }\n").unwrap();
        pen(&l, "p", "c", Some(&secret), Duration::from_secs(60));
        let held = format!("{:?}", l.held());
        assert!(held.contains("app_key:sha256:") && !held.contains("hush"), "{held}");
        // Unconfigured platforms learn too, per shop.
        pen(&l, "q", "a", None, Duration::from_secs(60));
        assert!(acq(&l, "q", "a", None, ANY, Duration::from_millis(10)).await.is_err());
        assert!(acq(&l, "q", "b", None, ANY, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn holds_the_rate_after_the_burst() {
        let l = limits(20.0, 2, None);
        let start = Instant::now();
        for _ in 0..12 {
            acq(&l, "p", "s", None, ANY, Duration::from_secs(5)).await.unwrap();
        }
        // 2 at once, then 10 more at 20/s: about 0.5 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(900), "{took:?}");
        // Other platforms are not limited; other shops have their own bucket.
        assert_eq!(acq(&l, "q", "s", None, ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
        assert_eq!(acq(&l, "p", "other", None, ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
    }

    #[tokio::test]
    async fn shops_on_one_app_key_share_a_bucket_and_budgets_are_kept() {
        let l = limits(1.0, 1, Some("app_key"));
        let cfg = |k: &str| -> ShopConfig {
            toml::from_str(&format!("connector = \"c\"\nsettings = {{ app_key = \"{k}\" }}\n")).unwrap()
        };
        let (a, b, c) = (cfg("K1"), cfg("K1"), cfg("K2"));
        acq(&l, "p", "a", Some(&a), ANY, Duration::ZERO).await.unwrap();
        let err = acq(&l, "p", "b", Some(&b), ANY, Duration::from_millis(100)).await.unwrap_err();
        assert!(err.wait_ms > 100 && err.to_string().contains("rate limit"), "{err}");
        assert_eq!(acq(&l, "p", "c", Some(&c), ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO);
    }

    #[test]
    fn the_destination_picks_the_platform_whoever_sends_it() {
        let l = from_toml("[platforms.taobao]\nhosts = [\"127.0.0.1:9100/taobao\", \"*.taobao.com\"]\n");
        l.claim("shopify", &["*.myshopify.com".to_string()]).unwrap();
        l.claim("hostile", &["api.hostile.invalid".to_string(), "eco.taobao.com".to_string()]).expect("config says whose taobao.com is");
        let at = |u: &str| l.platform_for(&url::Url::parse(u).unwrap());
        assert_eq!(at("http://127.0.0.1:9100/taobao/router/rest?method=x").as_deref(), Some("taobao"));
        assert_eq!(at("http://127.0.0.1:9100/taobao").as_deref(), Some("taobao"));
        assert_eq!(at("http://127.0.0.1:9100/taobaox/router").as_deref(), None, "a path prefix is a whole segment");
        assert_eq!(at("http://127.0.0.1:9101/taobao/router").as_deref(), None, "another port");
        assert_eq!(at("http://127.0.0.1:9100/shopify/acme/admin").as_deref(), None, "no platform's: the sender's own");
        assert_eq!(at("https://eco.taobao.com/router/rest").as_deref(), Some("taobao"), "config wins over a manifest");
        assert_eq!(at("https://acme.myshopify.com/admin/api").as_deref(), Some("shopify"));
        assert_eq!(at("https://api.hostile.invalid/x").as_deref(), Some("hostile"));
        // A manifest cannot take over another platform's hosts by naming them, however specifically.
        for evil in ["*.myshopify.com", "acme.myshopify.com", "*.shop.myshopify.com"] {
            let err = l.claim("evilmart", &[evil.to_string()]).unwrap_err();
            assert!(err.to_string().contains("connectors of platform `shopify` declare too"), "{err}");
        }
        assert_eq!(at("https://acme.myshopify.com/admin/api").as_deref(), Some("shopify"), "a refused claim changes nothing");
        assert!(overlap("*.a.com", "*.b.a.com") && !overlap("*.a.com", "a.com") && !overlap("x.a.com", "y.a.com"));
        assert!(Destination::parse("host:notaport").is_err() && Destination::parse("*.").is_err() && Destination::parse("a.*.com").is_err());
        let v6 = from_toml("[platforms.local]\nhosts = [\"[::1]:9100/shopify\"]\n");
        assert_eq!(v6.platform_for(&url::Url::parse("http://[::1]:9100/shopify/acme").unwrap()).as_deref(), Some("local"));
    }

    #[tokio::test]
    async fn a_shop_without_the_quota_setting_has_no_bucket_to_spend() {
        let l = limits(10.0, 1, Some("app_key"));
        let cfg: ShopConfig = toml::from_str("connector = \"c\"\n").unwrap();
        let err = l.quota_of("p", "evil", Some(&cfg)).unwrap_err();
        assert_eq!(err.to_string(), "platform `p` counts calls per `app_key`, and shop `evil` has no `app_key`");
        assert_eq!(l.quota_of("q", "evil", Some(&cfg)).unwrap(), "shop:evil", "a platform without quota_key counts per shop");
    }

    #[tokio::test]
    async fn holds_are_capped_name_their_cause_and_an_operator_ends_them() {
        let l = from_toml("[platforms.taobao]\nquota_key = \"app_key\"\nmax_hold_secs = 120\n[platforms.slow]\nmax_hold_secs = 60\n[platforms.slow.retry]\nsuspend_after_throttle_secs = 600\n");
        let shop = |k: &str| -> ShopConfig { toml::from_str(&format!("connector = \"c\"\nsettings = {{ app_key = \"{k}\" }}\n")).unwrap() };
        let (a, b) = (shop("K"), shop("K"));
        let cause = HoldCause { shop: "h-throttle".into(), connector: "hostile".into(), reason: "the connector returned rate-limited(3600000 ms)".into() };
        let held = l.penalize("taobao", "h-throttle", Some(&a), Duration::from_secs(3600), cause);
        assert_eq!(held, Duration::from_secs(120), "an hour asked for, max_hold_secs given");
        let on_b = l.throttle_on("taobao", "b", Some(&b)).expect("b shares the app key");
        assert_eq!((on_b.shop.as_str(), on_b.connector.as_str(), on_b.key.as_str(), on_b.held_ms), ("h-throttle", "hostile", "app_key:K", 120_000));
        assert!(on_b.reason.contains("rate-limited(3600000 ms)"));
        assert!(acq(&l, "taobao", "b", Some(&b), ANY, Duration::from_secs(1)).await.is_err());
        // A platform's own wait is capped too; ops' suspension is a floor above the cap.
        let h = vec![("Retry-After".to_string(), "3600".to_string())];
        assert_eq!(l.learn("taobao", "app_key:Z", "z", "c", 429, &h), Some(Hold::Throttled(Duration::from_secs(120))));
        assert_eq!(pen(&l, "slow", "s", None, Duration::from_secs(5)), Duration::from_secs(600), "suspend_after_throttle_secs is ops' choice");
        let released = l.release("taobao", "app_key:K").expect("held");
        assert_eq!(released.shop, "h-throttle");
        assert!(l.throttle_on("taobao", "b", Some(&b)).is_none());
        assert_eq!(acq(&l, "taobao", "b", Some(&b), ANY, Duration::ZERO).await.unwrap().0, Duration::ZERO, "calls go on at once");
        assert!(l.release("taobao", "app_key:K").is_none(), "nothing left to release");
        assert_eq!(l.held().iter().map(|h| h.key.as_str()).collect::<Vec<_>>(), ["shop:s", "app_key:Z"], "by platform: slow, taobao");
    }

    #[tokio::test]
    async fn waiters_for_a_bucket_take_turns_in_arrival_order() {
        let l = std::sync::Arc::new(limits(20.0, 1, None));
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Three of a looping connector's requests queue first, the neighbour's next, then
        // three more of the loop's: the neighbour is fourth, not last.
        for who in ["loop", "loop", "loop", "neighbour", "loop", "loop", "loop"] {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let (_, flight) = l.acquire("p", "shop:s", ANY, Duration::from_secs(10)).await.unwrap();
                drop(flight);
                order.lock().unwrap().push(who);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(order.lock().unwrap().iter().position(|w| *w == "neighbour"), Some(3), "{:?}", order.lock().unwrap());
    }
}
