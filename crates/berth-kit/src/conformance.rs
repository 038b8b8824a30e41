//! The conformance suite `berth plugin test FILE --sim PLATFORM` runs: the component in
//! a scratch host, against the simulator's version of its platform, checked for what
//! ops rely on — every order exactly once across windows and pages and mapped right,
//! throttling answered with `rate-limited`, failures answered with `transient`, pushes
//! verified and forgeries refused, stock set per SKU with one result each, and no
//! request outside the hosts it was granted.

use super::report::{error_kind, fail, pass, skip, some, Check, Outcome, Report};
use super::{PluginError, ScratchHost};
use berth_core::credentials::with_credentials;
use berth_types::Secret;
use berth_types::shop::{ShopConfig, Tier};
use berth_types::connector::{
    Capability, ConnectorError, Event, Manifest, Order, PullRequest, StockUpdate, TimeWindow, UpdateResult, WebhookRequest,
};
use berth_runtime::tape::{Exchange, Tape};
use berth_runtime::{Call, LoadedConnector, Output};
use berth_sim::faults::FaultKind;
use berth_sim::profiles::{self, ShopProfile};
use berth_sim::{LimitsUpdate, Platform, SimConfig, SimHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest the suite honours one `rate-limited` wait (a connector asking for an hour
/// would stall it).
const MAX_HONOURED_WAIT: Duration = Duration::from_secs(10);
/// Calls a page walk or a push may spend on throttles before the check gives up.
const MAX_THROTTLES: usize = 200;

struct Suite {
    connector: LoadedConnector,
    sim: SimHandle,
    sim_config: SimConfig,
    platform: Platform,
    profile: ShopProfile,
    shop: Arc<ShopConfig>,
    /// Every request the connector made, across calls.
    exchanges: Vec<Exchange>,
}

/// Run the suite for the component at `path` against the simulated `platform`.
pub async fn run(path: &Path, platform: &str) -> Result<Report, PluginError> {
    let platform = Platform::parse(platform).ok_or_else(|| PluginError::UnknownPlatform(platform.to_string()))?;
    let host = ScratchHost::new()?;
    let mut sim_config = SimConfig { timeout_hold_ms: 2_000, ..SimConfig::default() };
    // Shopee's tokens expire and rotate as the platform's do, long enough not to end
    // during the suite (the credentials check refreshes them).
    sim_config.shopee.tokens = Some(berth_sim::shopee_auth::ShopeeTokens { access_secs: 3600, refresh_secs: 86_400, answer_delay_ms: 0 });
    let sim = berth_sim::start(sim_config.clone(), "127.0.0.1:0".parse().expect("a valid address"))
        .await
        .map_err(PluginError::Simulator)?;
    let mut report = Report {
        component: path.display().to_string(),
        against: format!("the simulated {}", platform.name()),
        connector: "?".into(),
        checks: Vec::new(),
    };
    // Only the simulator's host is granted: the manifest's own hosts are not, so a
    // request anywhere else is refused and shows up in the hosts check.
    let local = ["127.0.0.1".to_string()];
    let options = host.options(&local);
    let connector = match host.runtime.load("conformance", path, &options).await {
        Ok(c) => c,
        Err(e) => {
            report.checks.push(Check { name: "loads", outcome: Outcome::Fail, detail: e.to_string() });
            return Ok(report);
        }
    };
    let m = connector.manifest.clone();
    report.connector = format!("{} {}", m.platform, m.connector_version);
    host.unlimited(&m.platform);
    let caps: Vec<&str> = m.capabilities.iter().map(|c| c.name()).collect();
    report.checks.push(Check {
        name: "loads",
        outcome: Outcome::Pass,
        detail: format!("WIT {}, capabilities {}", m.wit_version, caps.join(", ")),
    });
    let profile = profiles::shop_profile(&sim_config, platform, &sim.base_url()).ok_or_else(|| {
        PluginError::Scratch(format!("the simulator has no {} shop configured", platform.name()))
    })?;
    let shop = Arc::new(ShopConfig {
        connector: "conformance".into(),
        tier: Tier::A,
        poll_interval_secs: None,
        settings: profile.settings.iter().cloned().collect(),
        secrets: profile.secrets.iter().map(|(k, v)| (k.clone(), Secret::new(v.clone()))).collect(),
    });
    let mut suite = Suite { connector, sim, sim_config, platform, profile, shop, exchanges: Vec::new() };
    report.checks.push(suite.manifest_check(&m));
    report.checks.push(suite.health_check().await);
    if m.capabilities.contains(&Capability::Orders) {
        report.checks.push(suite.pull_check(&m).await);
        report.checks.push(suite.throttle_check(&m).await);
        report.checks.push(suite.failure_check(&m).await);
    } else {
        report.checks.push(skip("pull-orders", "no `orders` capability"));
    }
    if m.capabilities.contains(&Capability::Webhooks) {
        report.checks.push(suite.webhook_check().await);
    } else {
        report.checks.push(skip("webhooks", "no `webhooks` capability"));
    }
    if m.capabilities.contains(&Capability::Inventory) {
        report.checks.push(suite.stock_check().await);
    } else {
        report.checks.push(skip("push-inventory", "no `inventory` capability"));
    }
    report.checks.push(suite.listings_check().await);
    report.checks.push(suite.credentials_check().await);
    report.checks.push(quota_check(&host, &m.platform));
    report.checks.push(suite.hosts_check());
    Ok(report)
}

/// A connector that sends requests with an expected cost (`http.send-costed`, 0.3.0)
/// must report what the platform says of that quota (`quota.report`), or the host's
/// bucket never learns the platform's numbers.
fn quota_check(host: &ScratchHost, platform: &str) -> Check {
    const NAME: &str = "quota";
    let points = &host.services.limits.points;
    let costed = points.costed(platform);
    if costed == 0 {
        return skip(NAME, "no request was sent with an expected cost (http.send-costed)");
    }
    let reported: Vec<String> = points
        .views(platform)
        .into_iter()
        .filter(|v| v.source == "reported")
        .map(|v| format!("`{}` {:.0}/{:.0} restored {}/s", v.name, v.available.max(0.0), v.maximum, v.restore_per_second))
        .collect();
    if reported.is_empty() {
        return fail(NAME, format!("{costed} requests were sent with an expected cost, but no answer's quota state was reported (quota.report): the host's bucket cannot follow the platform"));
    }
    pass(NAME, format!("{costed} costed requests; the platform's quota reported: {}", reported.join(", ")))
}






fn now_ms() -> i64 {
    berth_sim::now_s() * 1000
}

impl Suite {
    /// One export call, its requests kept for the hosts check. `Err` is a trap, a
    /// timeout or an instantiation failure, as text.
    async fn call(&mut self, call: Call) -> Result<Output, String> {
        let (out, tape) = self.connector.call(&self.profile.shop, self.shop.clone(), call, Tape::recording()).await;
        if let Tape::Recording { exchanges, .. } = tape {
            self.exchanges.extend(exchanges);
        }
        out.map_err(|e| e.to_string())
    }

    async fn pull(&mut self, window: TimeWindow, cursor: Option<String>) -> Result<Result<berth_types::connector::OrderPage, ConnectorError>, String> {
        match self.call(Call::Pull(PullRequest { window, page_cursor: cursor })).await? {
            Output::Pull(r) => Ok(r),
            _ => Err("the host answered a pull with another call's output".into()),
        }
    }

    /// A connector that refreshes (berth:connector 0.3.0) must hand back rotated tokens
    /// that work, and call a spent refresh token `revoked` (retrying it cannot help).
    async fn credentials_check(&mut self) -> Check {
        use berth_types::credentials::{Credentials, RefreshError};
        const NAME: &str = "credentials";
        let support = match self.connector.auth_support().await {
            Ok(s) => s,
            Err(e) => return fail(NAME, format!("authorization() failed: {e}")),
        };
        if !support.refreshes {
            return skip(NAME, "static credentials (authorization().refreshes is false)");
        }
        let Some(state) = self.profile.shop.parse().ok().and_then(|id| self.sim.state.shopee_token_state(id)) else {
            return skip(NAME, &format!("the simulator does not expire {}'s tokens (only Shopee's)", self.platform.name()));
        };
        let Some(access) = self.shop.secrets.get("access_token").cloned() else {
            return fail(NAME, "the shop profile has no access_token".into());
        };
        let current = Credentials {
            access_token: access,
            refresh_token: Some(Secret::new(state.refresh.clone())),
            access_expires_ms: Some(state.access_expires_ms),
            refresh_expires_ms: None,
            authorization_expires_ms: None,
        };
        let shop = self.profile.shop.clone();
        let config = with_credentials(&self.shop, &current);
        let new = match self.connector.refresh_credentials(&shop, config.clone(), &current).await {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => return fail(NAME, format!("a refresh with a valid refresh token was refused: {e}")),
            Err(e) => return fail(NAME, e.to_string()),
        };
        let platform = self.sim.state.shopee_token_state(shop.parse().unwrap_or_default());
        if new.access_token == current.access_token || new.refresh_token.as_ref().map(Secret::expose) != platform.as_ref().map(|p| p.refresh.as_str()) {
            return fail(NAME, "the refresh did not return the platform's new access and refresh tokens".into());
        }
        if !new.access_expires_ms.is_some_and(|t| t > now_ms()) {
            return fail(NAME, "the new access token has no expiry in the future (access-expires-ms)".into());
        }
        match self.connector.check(&shop, with_credentials(&self.shop, &new)).await {
            Ok(Ok(h)) if h.ok => {}
            Ok(Ok(h)) => return fail(NAME, format!("the new access token did not work: {}", h.message)),
            Ok(Err(e)) => return fail(NAME, format!("the new access token did not work: {}", error_kind(&e))),
            Err(e) => return fail(NAME, e.to_string()),
        }
        match self.connector.refresh_credentials(&shop, config, &current).await {
            Ok(Err(RefreshError::Revoked(_))) => pass(NAME, "rotated tokens returned and working; a spent refresh token -> revoked".into()),
            Ok(Err(RefreshError::Transient(why))) => fail(NAME, format!("a spent refresh token came back `transient` ({why}); it must be `revoked`: retrying cannot work")),
            Ok(Ok(_)) => fail(NAME, "a spent refresh token was refused by the platform, but the connector returned credentials".into()),
            Err(e) => fail(NAME, e.to_string()),
        }
    }

    fn manifest_check(&self, m: &Manifest) -> Check {
        let mut problems = Vec::new();
        if Platform::parse(&m.platform) != Some(self.platform) {
            problems.push(format!("manifest platform `{}` is not the simulated `{}`", m.platform, self.platform.name()));
        }
        let offered: BTreeSet<&str> = self.profile.settings.iter().chain(&self.profile.secrets).map(|(k, _)| k.as_str()).collect();
        let unknown: Vec<&String> = m.required_config.iter().filter(|k| !offered.contains(k.as_str())).collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "required-config names keys a {} shop does not have: {} (the simulator's shop offers {})",
                self.platform.name(),
                some(&unknown, 8),
                offered.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        if m.capabilities.is_empty() {
            problems.push("the manifest claims no capability".into());
        }
        if problems.is_empty() {
            pass("manifest", format!("platform {}, requires {}", m.platform, m.required_config.join(", ")))
        } else {
            fail("manifest", problems.join("\n"))
        }
    }

    async fn health_check(&mut self) -> Check {
        match self.connector.check(&self.profile.shop, self.shop.clone()).await {
            Ok(Ok(h)) if h.ok => pass("check", format!("healthy: {}", h.message)),
            Ok(Ok(h)) => fail("check", format!("reported unhealthy against a healthy simulator: {}", h.message)),
            Ok(Err(e)) => fail("check", format!("failed against a healthy simulator: {}", error_kind(&e))),
            Err(e) => fail("check", e.to_string()),
        }
    }

    /// Walk one window through every page, waiting out throttles as the host would.
    async fn walk(&mut self, window: TimeWindow, orders: &mut Vec<Order>, pages: &mut usize, throttles: &mut usize) -> Result<(), String> {
        let mut cursor: Option<String> = None;
        loop {
            match self.pull(window.clone(), cursor.clone()).await? {
                Ok(page) => {
                    *pages += 1;
                    orders.extend(page.orders);
                    match page.next_page_cursor {
                        Some(next) if Some(&next) == cursor.as_ref() => {
                            return Err(format!("page cursor `{next}` came back unchanged: the walk would never end"));
                        }
                        Some(next) => cursor = Some(next),
                        None => return Ok(()),
                    }
                    if *pages > 10_000 {
                        return Err("more than 10000 pages for the seeded orders".into());
                    }
                }
                Err(ConnectorError::RateLimited(ms)) => {
                    *throttles += 1;
                    if *throttles > MAX_THROTTLES {
                        return Err(format!("throttled more than {MAX_THROTTLES} times in one walk"));
                    }
                    tokio::time::sleep(Duration::from_millis(ms.max(1)).min(MAX_HONOURED_WAIT)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "page {} of window [{}, {}) failed: {}",
                        *pages + 1,
                        window.start_ms,
                        window.end_ms,
                        error_kind(&e)
                    ))
                }
            }
        }
    }

    async fn pull_check(&mut self, m: &Manifest) -> Check {
        let name = "pull-orders";
        let end = now_ms() + 60_000;
        let start = end - (self.sim_config.history_hours as i64 + 2) * 3_600_000;
        let step = m.max_window_ms.map(|w| w as i64).unwrap_or(end - start).min(end - start);
        let (mut orders, mut pages, mut throttles, mut windows) = (Vec::new(), 0usize, 0usize, 0usize);
        let mut at = start;
        while at < end {
            let window = TimeWindow { start_ms: at, end_ms: (at + step).min(end) };
            windows += 1;
            if let Err(e) = self.walk(window, &mut orders, &mut pages, &mut throttles).await {
                return fail(name, e);
            }
            at += step;
        }
        let seeded = self.sim.state.orders(self.platform, &self.profile.shop);
        let expected: BTreeMap<String, &berth_sim::data::SimOrder> =
            seeded.iter().map(|o| (profiles::order_id(self.platform, o), o)).collect();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &orders {
            *seen.entry(o.order_id.as_str()).or_default() += 1;
        }
        let missing: Vec<&String> = expected.keys().filter(|id| !seen.contains_key(id.as_str())).collect();
        let twice: Vec<String> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, n)| format!("{id} x{n}")).collect();
        let unknown: Vec<&str> = seen.keys().copied().filter(|id| !expected.contains_key(*id)).collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("{} of {} seeded orders never came: {}", missing.len(), expected.len(), some(&missing, 5)));
        }
        if !twice.is_empty() {
            problems.push(format!("{} orders came more than once: {}", twice.len(), some(&twice, 5)));
        }
        if !unknown.is_empty() {
            problems.push(format!("{} orders the shop does not have: {}", unknown.len(), some(&unknown, 5)));
        }
        let mut wrong = Vec::new();
        for o in &orders {
            if let Some(sim) = expected.get(&o.order_id) {
                wrong.extend(self.mapping_problems(o, sim).into_iter().map(|p| format!("{}: {p}", o.order_id)));
            }
        }
        if !wrong.is_empty() {
            problems.push(format!("{} field mismatches: {}", wrong.len(), some(&wrong, 5)));
        }
        if problems.is_empty() {
            pass(name, format!("{} orders exactly once over {windows} windows, {pages} pages ({throttles} throttled calls waited out)", orders.len()))
        } else {
            fail(name, problems.join("\n"))
        }
    }

    fn mapping_problems(&self, o: &Order, sim: &berth_sim::data::SimOrder) -> Vec<String> {
        let mut p = Vec::new();
        if o.updated_at_ms != sim.updated_s * 1000 {
            p.push(format!("updated-at-ms {} is not {}", o.updated_at_ms, sim.updated_s * 1000));
        }
        if o.created_at_ms != sim.created_s * 1000 {
            p.push(format!("created-at-ms {} is not {}", o.created_at_ms, sim.created_s * 1000));
        }
        // The WIT name, which is how the simulator names the status it expects.
        let status = o.status.as_str();
        let want = profiles::normalized_status(self.platform, sim);
        if status != want {
            p.push(format!("status {status} is not {want}"));
        }
        if o.total_minor != sim.total_minor() {
            p.push(format!("total-minor {} is not {}", o.total_minor, sim.total_minor()));
        }
        if o.currency != sim.currency {
            p.push(format!("currency {} is not {}", o.currency, sim.currency));
        }
        let mut got: Vec<(String, u32, i64)> = o.lines.iter().map(|l| (l.sku.clone(), l.quantity, l.unit_price_minor)).collect();
        let mut want_lines: Vec<(String, u32, i64)> = sim.lines.iter().map(|l| (l.sku.clone(), l.quantity, l.unit_price_minor)).collect();
        got.sort();
        want_lines.sort();
        if got != want_lines {
            p.push(format!("lines (sku, quantity, unit price) {got:?} are not {want_lines:?}"));
        }
        if o.buyer_name_masked.contains(&sim.buyer_name) || (!sim.buyer_phone.is_empty() && o.buyer_phone_masked.contains(&sim.buyer_phone)) {
            p.push("buyer name or phone left unmasked".into());
        }
        p
    }

    /// Squeeze the platform's budget to one call, call in a burst, expect `rate-limited`.
    async fn throttle_check(&mut self, _m: &Manifest) -> Check {
        let name = "throttling";
        let before = self.sim.state.stats().get(&self.platform).map(|s| s.throttled).unwrap_or(0);
        self.sim.state.set_limits(LimitsUpdate {
            shopify_bucket_size: Some(1),
            shopify_leak_per_sec: Some(0.5),
            taobao_calls_per_window: Some(1),
            taobao_window_ms: Some(2_000),
            taobao_ban_secs: Some(2),
            shopee_calls_per_window: Some(1),
            woo_requests_per_window: Some(1),
        });
        // A GraphQL API's bucket of points, spent by another app behind the host's back.
        self.sim.state.spend_shopify_points(&self.profile.shop, 1e9);
        let window = TimeWindow { start_ms: now_ms() - 3_600_000, end_ms: now_ms() };
        let mut kinds = Vec::new();
        let mut limited = None;
        for _ in 0..4 {
            match self.pull(window.clone(), None).await {
                Ok(Ok(_)) => kinds.push("ok".to_string()),
                Ok(Err(ConnectorError::RateLimited(ms))) => {
                    kinds.push(format!("rate-limited({ms} ms)"));
                    limited.get_or_insert(ms);
                }
                Ok(Err(e)) => kinds.push(error_kind(&e)),
                Err(e) => kinds.push(format!("call failed: {e}")),
            }
        }
        let defaults = SimConfig::default();
        self.sim.state.set_limits(LimitsUpdate {
            shopify_bucket_size: Some(defaults.shopify.bucket_size),
            shopify_leak_per_sec: Some(defaults.shopify.leak_per_sec),
            taobao_calls_per_window: Some(defaults.taobao.calls_per_window),
            taobao_window_ms: Some(defaults.taobao.window_ms),
            taobao_ban_secs: Some(defaults.taobao.ban_secs),
            shopee_calls_per_window: Some(defaults.shopee.calls_per_window),
            woo_requests_per_window: Some(defaults.woo.requests_per_window),
        });
        self.sim.state.spend_shopify_points(&self.profile.shop, -1e9);
        let after = self.sim.state.stats().get(&self.platform).map(|s| s.throttled).unwrap_or(0);
        let others: Vec<&String> = kinds.iter().filter(|k| *k != "ok" && !k.starts_with("rate-limited")).collect();
        // Let the platform's ban pass before the next check.
        if let Some(ms) = limited {
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_HONOURED_WAIT)).await;
        }
        match (limited, others.is_empty()) {
            (Some(ms), true) if ms > 0 => pass(name, format!("the platform throttled {} calls; answers: {}", after - before, kinds.join(", "))),
            (Some(_), true) => fail(name, "rate-limited with a wait of 0 ms: the host would call again at once".into()),
            (_, false) => fail(name, format!("a throttled platform must give rate-limited, not: {}", some(&others, 3))),
            (None, true) => fail(
                name,
                format!("the platform throttled {} calls but no call ended rate-limited (answers: {})", after - before, kinds.join(", ")),
            ),
        }
    }

    /// A 500 and a garbled body must end `transient` (or be retried inside the call),
    /// never permanent, never a trap.
    async fn failure_check(&mut self, _m: &Manifest) -> Check {
        let name = "failures";
        let window = TimeWindow { start_ms: now_ms() - 3_600_000, end_ms: now_ms() };
        let mut seen = Vec::new();
        for kind in [FaultKind::Http500, FaultKind::Garbage, FaultKind::Http503] {
            self.sim.state.inject(self.platform, kind, 1);
            let answer = loop {
                match self.pull(window.clone(), None).await {
                    Ok(Err(ConnectorError::RateLimited(ms))) => {
                        tokio::time::sleep(Duration::from_millis(ms).min(MAX_HONOURED_WAIT)).await;
                    }
                    other => break other,
                }
            };
            self.sim.state.clear_faults(self.platform);
            let label = format!("{kind:?}");
            match answer {
                Ok(Err(ConnectorError::Transient(_))) => seen.push(format!("{label}: transient")),
                Ok(Ok(_)) => seen.push(format!("{label}: recovered inside the call")),
                Ok(Err(e)) => return fail(name, format!("{label} from the platform must be transient, got {}", error_kind(&e))),
                Err(e) => return fail(name, format!("{label} from the platform crashed the call: {e}")),
            }
        }
        pass(name, seen.join(", "))
    }

    async fn webhook(&mut self, headers: Vec<(String, String)>, body: Vec<u8>) -> Result<Result<Vec<Event>, ConnectorError>, String> {
        match self.call(Call::Webhook(WebhookRequest { headers, body })).await? {
            Output::Webhook(r) => Ok(r),
            _ => Err("the host answered a webhook with another call's output".into()),
        }
    }

    async fn webhook_check(&mut self) -> Check {
        let name = "webhooks";
        let orders = self.sim.state.orders(self.platform, &self.profile.shop);
        let Some(order) = orders.first() else {
            return fail(name, "the simulated shop has no order to push".into());
        };
        let Some((headers, body)) = profiles::signed_push(&self.sim_config, self.platform, order) else {
            return skip(name, &format!("the simulated {} does not push over HTTP", self.platform.name()));
        };
        let id = profiles::order_id(self.platform, order);
        let mut notes = Vec::new();
        match self.webhook(headers.clone(), body.clone()).await {
            Ok(Ok(events)) => {
                let names_it = events.iter().any(|e| match e {
                    Event::OrderUpserted(o) => o.order_id == id,
                    Event::OrderChanged(o) => *o == id,
                    Event::StockChanged(_) => false,
                });
                if !names_it {
                    return fail(name, format!("a signed push for order {id} gave {} events, none naming it", events.len()));
                }
                notes.push(format!("signed push -> {} event(s) for {id}", events.len()));
            }
            Ok(Err(e)) => return fail(name, format!("a correctly signed push was refused: {}", error_kind(&e))),
            Err(e) => return fail(name, format!("a correctly signed push crashed the call: {e}")),
        }
        // The same signature over a changed body, and no signature at all.
        let mut tampered = body.clone();
        tampered.extend_from_slice(b" ");
        // The headers that carry the signature, by the names platforms use for them.
        let signature_headers: BTreeSet<String> = headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| k.contains("hmac") || k.contains("signature") || k.contains("sign") || k == "authorization")
            .collect();
        let unsigned: Vec<(String, String)> =
            headers.iter().filter(|(k, _)| !signature_headers.contains(&k.to_ascii_lowercase())).cloned().collect();
        for (what, h, b) in [("a tampered body", headers.clone(), tampered), ("a push without its signature", unsigned, body.clone())] {
            match self.webhook(h, b).await {
                Ok(Err(ConnectorError::Auth(_))) => notes.push(format!("{what} -> auth")),
                Ok(Err(e)) => return fail(name, format!("{what} must be refused as auth, got {}", error_kind(&e))),
                Ok(Ok(events)) => return fail(name, format!("{what} was accepted ({} events): forged pushes get through", events.len())),
                Err(e) => return fail(name, format!("{what} crashed the call: {e}")),
            }
        }
        pass(name, notes.join("; "))
    }

    async fn push(&mut self, updates: Vec<StockUpdate>) -> Result<Result<Vec<UpdateResult>, ConnectorError>, String> {
        match self.call(Call::Push(updates)).await? {
            Output::Push(r) => Ok(r),
            _ => Err("the host answered a push with another call's output".into()),
        }
    }

    async fn stock_check(&mut self) -> Check {
        let name = "push-inventory";
        let catalogue = self.sim.state.stock(self.platform, &self.profile.shop);
        let mut due: Vec<StockUpdate> = catalogue
            .iter()
            .step_by(4)
            .take(6)
            .enumerate()
            .map(|(i, item)| StockUpdate { sku: item.sku.clone(), quantity: 11 + i as u32 + item.quantity })
            .collect();
        let unknown = "NO-SUCH-SKU-0".to_string();
        due.push(StockUpdate { sku: unknown.clone(), quantity: 5 });
        let wanted: BTreeMap<String, u32> = due.iter().map(|u| (u.sku.clone(), u.quantity)).collect();
        let mut results: BTreeMap<String, UpdateResult> = BTreeMap::new();
        let (mut calls, mut throttles) = (0, 0);
        while !due.is_empty() {
            calls += 1;
            if calls > 50 {
                return fail(name, format!("50 calls and still {} SKUs without a result", due.len()));
            }
            match self.push(due.clone()).await {
                Ok(Ok(answer)) => {
                    if answer.is_empty() {
                        return fail(name, "a push answered no SKU at all: the batch can never finish".into());
                    }
                    for r in answer {
                        if !wanted.contains_key(&r.sku) {
                            return fail(name, format!("a result for SKU {} that was not pushed", r.sku));
                        }
                        results.insert(r.sku.clone(), r);
                    }
                    due.retain(|u| !results.contains_key(&u.sku));
                }
                Ok(Err(ConnectorError::RateLimited(ms))) => {
                    throttles += 1;
                    if throttles > MAX_THROTTLES {
                        return fail(name, "throttled without end".into());
                    }
                    tokio::time::sleep(Duration::from_millis(ms).min(MAX_HONOURED_WAIT)).await;
                }
                Ok(Err(e)) => return fail(name, format!("the push failed as a whole: {}", error_kind(&e))),
                Err(e) => return fail(name, format!("the push crashed: {e}")),
            }
        }
        let now = self.sim.state.stock(self.platform, &self.profile.shop);
        let mut lines = Vec::new();
        let mut problems = Vec::new();
        for (sku, quantity) in &wanted {
            let r = &results[sku];
            let on_platform = now.iter().find(|i| &i.sku == sku).map(|i| i.quantity);
            if *sku == unknown {
                if r.accepted {
                    problems.push(format!("{sku}: accepted, but the shop has no such SKU"));
                } else {
                    lines.push(format!("{sku} rejected ({})", r.message.as_deref().unwrap_or("no reason given")));
                }
                continue;
            }
            match (r.accepted, on_platform) {
                (true, Some(q)) if q == *quantity => lines.push(format!("{sku}={quantity} set")),
                (true, q) => problems.push(format!("{sku}: accepted, but the platform holds {q:?}, not {quantity}")),
                (false, _) => problems.push(format!("{sku}: rejected ({}) though the shop sells it", r.message.as_deref().unwrap_or(""))),
            }
        }
        if problems.is_empty() {
            pass(name, format!("{} SKUs in {calls} calls: {}", wanted.len(), lines.join(", ")))
        } else {
            fail(name, problems.join("\n"))
        }
    }

    /// A 0.4.0 connector lists every SKU the shop sells exactly once, over pages small
    /// enough to need several, with the platform's quantity, price and currency.
    async fn listings_check(&mut self) -> Check {
        const NAME: &str = "listings";
        const LIMIT: u32 = 3;
        if !self.connector.has_listings() {
            let world = self.connector.manifest.wit_version.clone();
            return skip(NAME, &format!("built for berth:connector {world}; listings are new in 0.4.0"));
        }
        if !self.connector.manifest.capabilities.contains(&Capability::Products) {
            return skip(NAME, "no `products` capability");
        }
        let shop = self.profile.shop.clone();
        let (mut listed, mut cursor, mut pages, mut throttles) = (Vec::new(), None::<String>, 0usize, 0usize);
        loop {
            pages += 1;
            if pages > 200 {
                return fail(NAME, "200 pages and the listings did not end (next-cursor never none)".into());
            }
            match self.connector.listings(&shop, self.shop.clone(), cursor.as_deref(), LIMIT).await {
                Ok(Ok(page)) => {
                    listed.extend(page.listings);
                    match page.next_cursor {
                        Some(next) if cursor.as_deref() == Some(next.as_str()) => return fail(NAME, format!("page {pages} answered the cursor it was given: paging never ends")),
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                Ok(Err(ConnectorError::RateLimited(ms))) => {
                    throttles += 1;
                    if throttles > MAX_THROTTLES {
                        return fail(NAME, "throttled without end".into());
                    }
                    pages -= 1;
                    tokio::time::sleep(Duration::from_millis(ms).min(MAX_HONOURED_WAIT)).await;
                }
                Ok(Err(e)) => return fail(NAME, format!("page {pages} failed: {}", error_kind(&e))),
                Err(e) => return fail(NAME, format!("page {pages} crashed: {e}")),
            }
        }
        let catalogue = self.sim.state.stock(self.platform, &shop);
        let currency = self.platform.currency();
        let mut problems = Vec::new();
        for item in &catalogue {
            let found: Vec<_> = listed.iter().filter(|l| l.sku == item.sku).collect();
            let [l] = found.as_slice() else {
                problems.push(format!("{}: listed {} times, not once", item.sku, found.len()));
                continue;
            };
            if l.quantity != i64::from(item.quantity) {
                problems.push(format!("{}: quantity {} listed, the platform holds {}", item.sku, l.quantity, item.quantity));
            }
            if l.price_minor != item.price_minor || l.currency != currency {
                problems.push(format!("{}: price {} {} listed, the platform's is {} {currency} (minor units)", item.sku, l.price_minor, l.currency, item.price_minor));
            }
            let ids = [item.product_id.to_string(), item.variant_id.to_string()];
            if !ids.contains(&l.item_id) || l.variant_id.as_ref().is_some_and(|v| !ids.contains(v)) {
                problems.push(format!("{}: ids {}/{:?} are not the platform's ({}/{})", item.sku, l.item_id, l.variant_id, ids[0], ids[1]));
            }
        }
        let extra: Vec<&str> = listed.iter().filter(|l| !catalogue.iter().any(|i| i.sku == l.sku)).map(|l| l.sku.as_str()).collect();
        if !extra.is_empty() {
            problems.push(format!("listed SKUs the shop does not sell: {}", extra.join(", ")));
        }
        if pages < 2 && catalogue.len() > LIMIT as usize {
            problems.push(format!("{} SKUs came in one page though {LIMIT} items were asked for", listed.len()));
        }
        if problems.is_empty() {
            pass(NAME, format!("{} SKUs in {pages} pages of {LIMIT} items, quantities, prices and ids as the platform holds them", listed.len()))
        } else {
            fail(NAME, problems.join("\n"))
        }
    }

    fn hosts_check(&self) -> Check {
        let name = "hosts";
        let sim_host = self.sim.addr.ip().to_string();
        let mut hosts: BTreeMap<String, usize> = BTreeMap::new();
        let mut refused = Vec::new();
        for x in &self.exchanges {
            let host = url::Url::parse(&x.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_else(|| x.url.clone());
            *hosts.entry(host.clone()).or_default() += 1;
            if let Err(berth_types::http::HttpError::Denied(why)) = &x.result {
                refused.push(format!("{host}: {why}"));
            }
        }
        let outside: Vec<&String> = hosts.keys().filter(|h| **h != sim_host).collect();
        let seen: Vec<String> = hosts.iter().map(|(h, n)| format!("{h} ({n} requests)")).collect();
        if refused.is_empty() && outside.is_empty() {
            pass(name, format!("every request went to the granted simulator: {}", seen.join(", ")))
        } else {
            let mut why = Vec::new();
            if !outside.is_empty() {
                why.push(format!("requests outside the granted host: {}", some(&outside, 5)));
            }
            if !refused.is_empty() {
                why.push(format!("refused by the host: {}", some(&refused, 5)));
            }
            fail(name, why.join("\n"))
        }
    }
}
