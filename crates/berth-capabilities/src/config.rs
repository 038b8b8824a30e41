//! `[http]` and `[platforms.X]`: how connectors reach platforms (the gateway, rate
//! limits, allowed hours, retry settings, a standby channel), owned here.

use berth_types::retry::RetryOverrides;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Per-request timeout; a connector may ask for less, never more.
    pub timeout_ms: u64,
    pub max_response_bytes: u64,
    /// Let connectors reach loopback, private and link-local addresses. Only for tests
    /// and demos against a local simulator.
    pub allow_private_addresses: bool,
    /// Ports beyond 80 and 443 connectors may call (a platform's API on 8443, say); a
    /// connector allowed private addresses (a local sandbox) may call any port.
    pub allowed_ports: Vec<u16>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { timeout_ms: 15_000, max_response_bytes: 8 * 1024 * 1024, allow_private_addresses: false, allowed_ports: Vec::new() }
    }
}

impl HttpConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("http.timeout_ms must be positive".into());
        }
        Ok(())
    }
}

/// How the host calls one platform (the manifest's `platform` id): rate limits, endpoint
/// classes, throttle learning, retry policy, allowed hours and a hot-standby channel.
/// Everything here is reloaded with the file and applies to the next call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// The bucket per quota. When absent, the rate its connectors' manifests declare
    /// (`default-rate-limit`, the most generous one) unless `use_manifest_rate = false`;
    /// no host-side limit when none declares one.
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once after a quiet spell (with `requests_per_second`).
    #[serde(default = "one")]
    pub burst: u32,
    /// Without `requests_per_second`: limit each quota at the rate the platform's
    /// connectors declare (true), or not at all (false: only the platform's own throttles
    /// hold calls back).
    #[serde(default = "yes")]
    pub use_manifest_rate: bool,
    /// Shop setting naming the credential the platform counts calls against (e.g.
    /// `app_key`: every shop on one app key shares one bucket); per shop when absent.
    /// A shop of the platform without the setting is refused, naming it.
    pub quota_key: Option<String>,
    /// Where this platform's API is: `host`, `*.suffix`, optionally `:port` and a
    /// `/path` prefix. A request to one of them counts against this platform's buckets
    /// whichever connector sends it. The hosts its connectors' manifests declare when
    /// absent.
    pub hosts: Option<Vec<String>>,
    /// The longest hold a connector's `rate-limited(ms)` (or a platform's wait) may put
    /// on a quota; `retry.suspend_after_throttle_secs` is ops' own and may be longer.
    #[serde(default = "default_max_hold")]
    pub max_hold_secs: u64,
    /// Limits per endpoint class, on top of the platform's own (e.g. stock writes slower
    /// than order reads). Keyed by class name.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointClass>,
    /// Read Shopify's `X-Shopify-Shop-Api-Call-Limit: used/size` on every answer and hold
    /// the shop's calls before the platform's bucket fills, instead of waiting for a 429.
    #[serde(default = "yes")]
    pub call_limit_header: bool,
    /// How fast that bucket drains, calls per second; `requests_per_second` when absent,
    /// else Shopify's standard 2.
    pub call_limit_leak_per_second: Option<f64>,
    /// When calls are allowed, e.g. `["Mon-Fri 09:00-21:00"]`; always when empty.
    #[serde(default)]
    pub windows: Vec<String>,
    /// The windows' time zone: an IANA name (`Asia/Shanghai`) or a UTC offset (`+08:00`); UTC when absent.
    pub timezone: Option<String>,
    /// Retry policy for this platform's pulls and pushes; `[sync]`/`[stock]` fill the gaps.
    #[serde(default)]
    pub retry: RetryOverrides,
    /// A second channel to the same API, used while the first one is unhealthy.
    pub standby: Option<StandbyConfig>,
    /// Ops' guess of quotas of points (a GraphQL cost bucket), by the name the
    /// connector reports them under: followed until the platform reports its own numbers.
    #[serde(default)]
    pub points: BTreeMap<String, crate::points::PointsGuess>,
    /// The sliding window quota usage is counted over (the gauge
    /// `berth_ratelimit_quota_used_ratio`, the status pages, `quota-usage` alerts), seconds.
    #[serde(default = "usage_window")]
    pub usage_window_secs: u64,
}

impl PlatformConfig {
    /// No host-side limit, window or call-limit pacing: the platform's own throttling is
    /// all a connector meets (the conformance kit's view).
    pub fn unlimited() -> PlatformConfig {
        PlatformConfig {
            requests_per_second: None,
            burst: 1,
            use_manifest_rate: false,
            quota_key: None,
            hosts: None,
            max_hold_secs: DEFAULT_MAX_HOLD_SECS,
            endpoints: BTreeMap::new(),
            call_limit_header: false,
            call_limit_leak_per_second: None,
            windows: Vec::new(),
            timezone: None,
            retry: RetryOverrides::default(),
            standby: None,
            points: BTreeMap::new(),
            usage_window_secs: crate::usage::DEFAULT_WINDOW_SECS,
        }
    }
}

/// Requests matching any pattern share this class's own bucket (keyed like the
/// platform's). A pattern starting with `/` is matched against the URL path, any other
/// against the API method named in a `method` query or form parameter (TOP-style
/// routers, e.g. `taobao.item.quantity.update`). `*` matches any run of characters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointClass {
    #[serde(rename = "match")]
    pub patterns: Vec<String>,
    pub requests_per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
}

/// Hot standby: calls a connector makes to `primary` go to `backup` while the primary
/// fails its health checks, and back when it recovers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// Base URLs (scheme, host, port and optional path prefix) of the two channels.
    pub primary: String,
    pub backup: String,
    /// Path probed on each channel; any answer below 500 counts as healthy.
    #[serde(default = "slash")]
    pub health_path: String,
    #[serde(default = "five_seconds")]
    pub check_interval_ms: u64,
    /// Failed checks in a row before the calls move to the backup.
    #[serde(default = "two")]
    pub fail_after: u32,
    /// Good checks of the primary in a row before the calls move back.
    #[serde(default = "three")]
    pub recover_after: u32,
}

/// How long a hold a connector or a platform may ask for, by default: five minutes.
pub const DEFAULT_MAX_HOLD_SECS: u64 = 300;

fn default_max_hold() -> u64 {
    DEFAULT_MAX_HOLD_SECS
}

fn usage_window() -> u64 {
    crate::usage::DEFAULT_WINDOW_SECS
}

fn yes() -> bool {
    true
}
fn slash() -> String {
    "/".into()
}
fn five_seconds() -> u64 {
    5_000
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

fn one() -> u32 {
    1
}

fn rate(what: &str, r: f64, burst: u32) -> Result<(), String> {
    if !(r.is_finite() && r > 0.0 && r <= 100_000.0) || burst == 0 {
        return Err(format!("{what}requests_per_second must be in (0, 100000] and burst at least 1"));
    }
    Ok(())
}

fn base_url(what: &str, u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.query().is_none() => Ok(()),
        _ => Err(format!("standby.{what} `{u}` must be an http:// or https:// base URL without a query")),
    }
}

impl PlatformConfig {
    /// One `[platforms.X]` table on its own.
    pub fn check(&self) -> Result<(), String> {
        check_platform(self)
    }
}

fn check_platform(l: &PlatformConfig) -> Result<(), String> {
    rate("", l.requests_per_second.unwrap_or(1.0), l.burst)?;
    for h in l.hosts.iter().flatten() {
        super::ratelimit::Destination::parse(h).map_err(|e| format!("hosts: {e}"))?;
    }
    if l.hosts.as_ref().is_some_and(Vec::is_empty) {
        return Err("hosts is empty; list the platform's API hosts, or leave it out to take its connectors' manifests".into());
    }
    if !(1..=crate::usage::MAX_WINDOW_SECS).contains(&l.usage_window_secs) {
        return Err(format!("usage_window_secs must be between 1 and {}", crate::usage::MAX_WINDOW_SECS));
    }
    if l.max_hold_secs == 0 {
        return Err("max_hold_secs must be at least 1".into());
    }
    for (class, e) in &l.endpoints {
        rate(&format!("endpoints.{class}."), e.requests_per_second, e.burst)?;
        if e.patterns.is_empty() || e.patterns.iter().any(|p| p.is_empty()) {
            return Err(format!("endpoints.{class}: `match` needs at least one non-empty pattern"));
        }
    }
    for (name, g) in &l.points {
        g.check().map_err(|e| format!("points.{name}: {e}"))?;
    }
    if l.call_limit_leak_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("call_limit_leak_per_second must be positive".into());
    }
    for w in &l.windows {
        super::windows::TimeWindow::parse(w)?;
    }
    if let Some(tz) = &l.timezone {
        super::windows::parse_zone(tz)?;
    }
    let r = &l.retry;
    if r.base_ms == Some(0) || r.max_ms.is_some_and(|m| m < r.base_ms.unwrap_or(1)) {
        return Err("retry.base_ms must be positive and not above retry.max_ms".into());
    }
    if r.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j)) {
        return Err("retry.jitter must be between 0 and 1".into());
    }
    if r.max_attempts == Some(0) {
        return Err("retry.max_attempts must be at least 1".into());
    }
    if let Some(s) = &l.standby {
        base_url("primary", &s.primary)?;
        base_url("backup", &s.backup)?;
        if s.primary.trim_end_matches('/') == s.backup.trim_end_matches('/') {
            return Err("standby.primary and standby.backup are the same channel".into());
        }
        if !s.health_path.starts_with('/') {
            return Err(format!("standby.health_path `{}` must start with /", s.health_path));
        }
        if s.check_interval_ms < 100 || s.fail_after == 0 || s.recover_after == 0 {
            return Err("standby.check_interval_ms must be at least 100, fail_after and recover_after at least 1".into());
        }
    }
    Ok(())
}

/// `[platforms.X]` tables from TOML, each checked as in berth.toml (for tests).
#[cfg(test)]
pub(crate) fn parse_platforms(text: &str) -> BTreeMap<String, PlatformConfig> {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        platforms: BTreeMap<String, PlatformConfig>,
    }
    let only: Only = toml::from_str(text).expect("valid [platforms] TOML");
    for (name, p) in &only.platforms {
        p.check().unwrap_or_else(|e| panic!("platforms.{name}: {e}"));
    }
    only.platforms
}
