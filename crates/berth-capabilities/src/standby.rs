//! Hot-standby channels: a platform may be reachable through a second base URL (another
//! gateway or region serving the same API). The host probes both every
//! `check_interval_ms`; after `fail_after` failed probes of the primary in a row (and a
//! healthy backup) a connector's calls to either base URL go to the backup, and after
//! `recover_after` good probes of the primary they go back. A connector keeps using the
//! base URL it was configured with and never knows.
//!
//! Switching takes at most `check_interval_ms × fail_after` plus one probe timeout
//! (10–15 s with the defaults), well inside the alert time of any tier.

use berth_types::clock::now_ms;
use crate::config::{PlatformConfig, StandbyConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest a probe may take.
const MAX_PROBE: Duration = Duration::from_secs(5);

/// What ops see about one platform's channels.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChannelStatus {
    pub primary: String,
    pub backup: String,
    /// `primary` or `backup`: where calls go now.
    pub active: &'static str,
    pub primary_healthy: Option<bool>,
    pub backup_healthy: Option<bool>,
    pub switches: u64,
    pub last_switch_ms: Option<i64>,
    /// Why the last failed probe failed, per channel.
    pub primary_error: Option<String>,
    pub backup_error: Option<String>,
}

struct ChannelState {
    status: ChannelStatus,
    primary_fails: u32,
    primary_oks: u32,
    next_check: Instant,
    probing: bool,
}

pub struct Channel {
    config: StandbyConfig,
    primary: url::Url,
    backup: url::Url,
    state: Mutex<ChannelState>,
}

/// A base URL with a path ending in `/`, so prefixes compare by whole segments.
fn base(u: &str) -> Option<url::Url> {
    let mut url = url::Url::parse(u).ok()?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Some(url)
}

/// Whether `url` lies under `base`: same scheme, host, port and path prefix.
fn under(url: &url::Url, base: &url::Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && format!("{}/", url.path()).starts_with(base.path())
}

fn rebase(url: &url::Url, from: &url::Url, to: &url::Url) -> url::Url {
    let rest = url.path().strip_prefix(from.path()).unwrap_or("");
    let mut out = to.clone();
    out.set_path(&format!("{}{rest}", to.path()));
    if url.path().len() + 1 == from.path().len() {
        // The URL was the base itself without its trailing slash.
        out.set_path(to.path().trim_end_matches('/'));
    }
    out.set_query(url.query());
    out
}

impl Channel {
    fn new(config: StandbyConfig) -> Option<Channel> {
        let (primary, backup) = (base(&config.primary)?, base(&config.backup)?);
        let status = ChannelStatus {
            primary: config.primary.clone(),
            backup: config.backup.clone(),
            active: "primary",
            ..Default::default()
        };
        Some(Channel {
            config,
            primary,
            backup,
            state: Mutex::new(ChannelState { status, primary_fails: 0, primary_oks: 0, next_check: Instant::now(), probing: false }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> ChannelStatus {
        self.lock().status.clone()
    }

    fn on_backup(&self) -> bool {
        self.lock().status.active == "backup"
    }

    /// Where a call to `url` goes: under either base URL, to the active one.
    fn route(&self, url: url::Url) -> url::Url {
        let (active, other) = if self.on_backup() { (&self.backup, &self.primary) } else { (&self.primary, &self.backup) };
        if under(&url, other) {
            rebase(&url, other, active)
        } else {
            url
        }
    }

    /// Take in one round of probes and switch if the rules say so.
    fn record(&self, platform: &str, primary: Result<(), String>, backup: Result<(), String>) {
        let mut st = self.lock();
        st.probing = false;
        st.next_check = Instant::now() + Duration::from_millis(self.config.check_interval_ms);
        let (p_ok, b_ok) = (primary.is_ok(), backup.is_ok());
        if p_ok {
            st.primary_oks += 1;
            st.primary_fails = 0;
        } else {
            st.primary_fails += 1;
            st.primary_oks = 0;
        }
        st.status.primary_healthy = Some(p_ok);
        st.status.backup_healthy = Some(b_ok);
        st.status.primary_error = primary.err();
        st.status.backup_error = backup.err();
        let to = match st.status.active {
            "primary" if st.primary_fails >= self.config.fail_after && b_ok => Some("backup"),
            "backup" if st.primary_oks >= self.config.recover_after || (!b_ok && p_ok) => Some("primary"),
            _ => None,
        };
        if let Some(to) = to {
            st.status.active = to;
            st.status.switches += 1;
            st.status.last_switch_ms = Some(now_ms());
            tracing::warn!(
                platform,
                to,
                primary_error = st.status.primary_error.as_deref().unwrap_or(""),
                backup_error = st.status.backup_error.as_deref().unwrap_or(""),
                "platform calls switched channel"
            );
        }
    }
}

/// Every platform's standby channels; swapped on a config reload (a channel whose
/// settings did not change keeps its state).
#[derive(Default)]
pub struct Standbys {
    channels: RwLock<Arc<BTreeMap<String, Arc<Channel>>>>,
    /// Faults drills inject: a primary a drill has down fails its health checks.
    faults: Option<Arc<crate::drills::InjectedFaults>>,
}

impl Standbys {
    pub fn new(platforms: &BTreeMap<String, PlatformConfig>) -> Self {
        let s = Standbys::default();
        s.reconfigure(platforms);
        s
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Channel>>> {
        self.channels.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reconfigure(&self, platforms: &BTreeMap<String, PlatformConfig>) {
        let old = self.snapshot();
        let channels = platforms
            .iter()
            .filter_map(|(name, p)| {
                let cfg = p.standby.as_ref()?;
                match old.get(name) {
                    Some(c) if c.config == *cfg => Some((name.clone(), c.clone())),
                    _ => Channel::new(cfg.clone()).map(|c| (name.clone(), Arc::new(c))),
                }
            })
            .collect();
        *self.channels.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(channels);
    }

    /// The URL a call of `platform` goes to.
    pub fn route(&self, platform: &str, url: url::Url) -> url::Url {
        match self.snapshot().get(platform) {
            Some(c) => c.route(url),
            None => url,
        }
    }

    /// Whether `url` (routed already) goes to `platform`'s primary channel.
    pub fn on_primary(&self, platform: &str, url: &url::Url) -> bool {
        self.snapshot().get(platform).is_some_and(|c| under(url, &c.primary))
    }

    /// Whether `platform` has a standby channel.
    pub fn has(&self, platform: &str) -> bool {
        self.snapshot().contains_key(platform)
    }

    /// Drills' faults count: a primary a drill has down fails its health checks.
    pub fn with_faults(mut self, faults: Arc<crate::drills::InjectedFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    pub fn status(&self) -> BTreeMap<String, ChannelStatus> {
        self.snapshot().iter().map(|(name, c)| (name.clone(), c.status())).collect()
    }

    /// Probe every channel when due, until shutdown.
    pub async fn run(self: Arc<Self>, client: reqwest::Client, mut shutdown: watch::Receiver<bool>) {
        loop {
            for (platform, channel) in self.snapshot().iter() {
                {
                    let mut st = channel.lock();
                    if st.probing || st.next_check > Instant::now() {
                        continue;
                    }
                    st.probing = true;
                }
                let forced = self.faults.as_ref().is_some_and(|f| f.primary_down(platform));
                let (platform, channel, client) = (platform.clone(), channel.clone(), client.clone());
                tokio::spawn(async move {
                    let timeout = Duration::from_millis(channel.config.check_interval_ms).min(MAX_PROBE);
                    let path = channel.config.health_path.trim_start_matches('/');
                    let probe = |b: &url::Url| b.join(path).map_err(|e| e.to_string());
                    let primary = async {
                        match forced {
                            true => Err("drill: the primary channel is down".to_string()),
                            false => check(&client, probe(&channel.primary), timeout).await,
                        }
                    };
                    let (p, b) = tokio::join!(primary, check(&client, probe(&channel.backup), timeout));
                    channel.record(&platform, p, b);
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One probe: any answer below 500 within `timeout` is healthy.
async fn check(client: &reqwest::Client, url: Result<url::Url, String>, timeout: Duration) -> Result<(), String> {
    let resp = client.get(url?).timeout(timeout).send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer within {} ms", timeout.as_millis())
        } else {
            format!("cannot connect: {e}")
        }
    })?;
    match resp.status().as_u16() {
        s if s < 500 => Ok(()),
        s => Err(format!("answered HTTP {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(fail_after: u32, recover_after: u32) -> Channel {
        Channel::new(StandbyConfig {
            primary: "http://a.example:8080/api".into(),
            backup: "https://b.example/mirror/".into(),
            health_path: "/health".into(),
            check_interval_ms: 1000,
            fail_after,
            recover_after,
        })
        .unwrap()
    }

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn routes_to_the_active_channel_keeping_path_and_query() {
        let c = channel(2, 2);
        let call = u("http://a.example:8080/api/orders.json?limit=5&page_info=x");
        assert_eq!(c.route(call.clone()), call, "primary active: unchanged");
        let err = || Err("answered HTTP 503".to_string());
        c.record("p", err(), Ok(()));
        assert_eq!(c.route(call.clone()), call, "one failure is not enough");
        c.record("p", err(), Ok(()));
        assert_eq!(c.route(call.clone()).as_str(), "https://b.example/mirror/orders.json?limit=5&page_info=x");
        // A next-page link the backup handed out stays on the backup.
        let from_backup = u("https://b.example/mirror/orders.json?page_info=y");
        assert_eq!(c.route(from_backup.clone()), from_backup);
        // Other hosts, other ports and look-alike paths are left alone.
        for other in ["http://a.example:9090/api/x", "http://c.example:8080/api/x", "http://a.example:8080/apix/y"] {
            assert_eq!(c.route(u(other)).as_str(), other);
        }
        let st = c.status();
        assert_eq!((st.active, st.switches, st.primary_healthy), ("backup", 1, Some(false)));
        assert_eq!(st.primary_error.as_deref(), Some("answered HTTP 503"));
    }

    #[test]
    fn switches_back_after_the_primary_recovers_and_never_to_a_dead_backup() {
        let c = channel(1, 3);
        let err = || Err("down".to_string());
        c.record("p", err(), err());
        assert_eq!(c.status().active, "primary", "the backup is down too: stay");
        c.record("p", err(), Ok(()));
        assert_eq!(c.status().active, "backup");
        c.record("p", Ok(()), Ok(()));
        c.record("p", Ok(()), Ok(()));
        assert_eq!(c.status().active, "backup", "needs 3 good probes");
        c.record("p", Ok(()), Ok(()));
        assert_eq!((c.status().active, c.status().switches), ("primary", 2));
        // On the backup, a failing backup with a healthy primary goes back at once.
        c.record("p", err(), Ok(()));
        c.record("p", Ok(()), err());
        assert_eq!(c.status().active, "primary");
    }

    #[test]
    fn reload_keeps_the_state_of_unchanged_channels() {
        let text = "[platforms.p.standby]\nprimary = \"http://a.example\"\nbackup = \"http://b.example\"\nfail_after = 1\n";
        let cfg = crate::config::parse_platforms(text);
        let s = Standbys::new(&cfg);
        s.snapshot()["p"].record("p", Err("x".into()), Ok(()));
        s.reconfigure(&cfg);
        assert_eq!(s.status()["p"].active, "backup");
        assert_eq!(s.route("p", u("http://a.example/x?y=1")).as_str(), "http://b.example/x?y=1");
        assert_eq!(s.route("q", u("http://a.example/x")).as_str(), "http://a.example/x");
        s.reconfigure(&BTreeMap::new());
        assert!(s.status().is_empty());
    }
}
