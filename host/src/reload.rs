//! Config hot reload: berth.toml is checked for changes every second. A valid new file
//! applies what can change under load: everything under `[platforms]` (rate limits,
//! endpoint classes, retry policies, time windows, standby channels) to the next call;
//! `[admin]` tokens (a revoked token stops working within a second); new
//! `[connectors.X]` (loaded and registered, so a connector for a new platform needs no
//! restart; it takes its shops' tokens from the credential book like the others); and
//! `[shops]` (new shops start — their tokens go into the credential book when their
//! connector refreshes them —, changed ones restart with their new settings, removed
//! ones stop; shops onboarded by OAuth are not in the file and keep running). Other
//! changes — to an existing connector's entry, or to other sections — are reported as
//! needing a restart. An invalid file is refused with the parser's message (file and
//! line) and the running config stays.

use crate::config::Config;
use berth_core::registry::ConnectorRegistry;
use berth_capabilities::services::HostServices;
use berth_core::shops::ShopSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

const POLL: Duration = Duration::from_secs(1);

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Sections applied in place (`connectors` only for additions, see `apply`).
const RELOADED: [&str; 4] = ["platforms", "admin", "shops", "connectors"];

/// What a reload changes.
pub struct Reloadable {
    pub services: Arc<HostServices>,
    pub admin: Arc<berth_api::auth::AdminAuth>,
    pub audit: Arc<berth_core::audit::AuditLog>,
    pub registry: Arc<ConnectorRegistry>,
    pub shops: Arc<ShopSet>,
    /// Cluster mode: the cluster's shops.
    pub cluster: Option<Arc<ClusterShopSet>>,
    pub onboarding: Arc<berth_core::onboarding::Onboarding>,
    /// The credential book and the refresh margin (ms), when berth keeps credentials.
    pub credentials: Option<(Arc<berth_core::credentials::CredentialBook>, i64)>,
}

impl Reloadable {
    /// Apply a valid new config; returns what changed and what needs a restart.
    async fn apply(&self, old: &toml::Table, text: &toml::Table, new: &Config) -> (Vec<String>, Vec<String>) {
        self.services.reconfigure(&new.platforms);
        self.admin.reconfigure(&new.admin);
        self.audit.set_max_unauthenticated_per_minute(new.admin.max_unauthenticated_audits_per_minute);
        let mut changed = Vec::new();
        let mut restart = restart_sections(old, text);
        let (old_c, new_c) = (old.get("connectors").and_then(|v| v.as_table()), text.get("connectors").and_then(|v| v.as_table()));
        for (name, c) in &new.connectors {
            if self.registry.slot(name).is_none() {
                match self.registry.add_connector(name, c).await {
                    Ok(slot) => {
                        if let Some((book, margin_ms)) = &self.credentials {
                            slot.use_credentials(book.clone(), *margin_ms);
                        }
                        if let Some(t) = &c.onboarding {
                            self.onboarding.add_template(name, t.clone());
                        }
                        changed.push(format!("connector `{name}` ({}) loaded", slot.platform))
                    }
                    Err(e) => changed.push(format!("{e}; not loaded")),
                }
            } else if old_c.and_then(|t| t.get(name)) != new_c.and_then(|t| t.get(name)) {
                restart.push(format!("connectors.{name}"));
            }
        }
        if let Some(gone) = old_c.into_iter().flat_map(|t| t.keys()).find(|k| !new.connectors.contains_key(*k)) {
            restart.push(format!("connectors.{gone} (removed)"));
        }
        if let Some((book, _)) = &self.credentials {
            for (shop, sc) in &new.shops {
                let Some(slot) = self.registry.slot(&sc.connector) else { continue };
                if let Err(e) = crate::service::seed_credentials(book, shop, sc, &slot).await {
                    changed.push(format!("shop `{shop}`: its credentials could not be kept ({e})"));
                }
            }
        }
        let registry = self.registry.clone();
        let (all, problems) = self.onboarding.with_onboarded(&new.shops);
        changed.extend(problems);
        if let Some(cluster) = &self.cluster {
            changed.extend(cluster.share(&all).await);
            return (changed, restart);
        }
        changed.extend(self.shops.apply(&all, |c| registry.slot(c)).await);
        self.registry.set_shops(self.shops.by_connector());
        (changed, restart)
    }
}

/// Cluster mode: the cluster's shops (the config file's and those onboarded by OAuth on
/// any node) and the lease loop's view of their names.
pub struct ClusterShopSet {
    cluster: Arc<berth_core::shops::cluster::ClusterShops>,
    names: watch::Sender<std::collections::BTreeSet<String>>,
    shops: Arc<ShopSet>,
    registry: Arc<ConnectorRegistry>,
    classes: Arc<berth_cluster::classes::Classes>,
    /// The `[admin]` tokens as configured now (a reload reconfigures them first).
    admin: Arc<berth_api::auth::AdminAuth>,
}

impl ClusterShopSet {
    pub fn new(
        cluster: Arc<berth_core::shops::cluster::ClusterShops>,
        node: &crate::cluster::Node,
        shops: Arc<ShopSet>,
        registry: Arc<ConnectorRegistry>,
        admin: Arc<berth_api::auth::AdminAuth>,
    ) -> ClusterShopSet {
        ClusterShopSet { cluster, names: node.shops.clone(), shops, registry, classes: node.classes.clone(), admin }
    }

    /// Put each of `all` in the class of the feed of the token scopes that see it, so a
    /// scoped token leases its shops' orders (berth_cluster::classes). Returns what
    /// changed, one line each.
    pub async fn assign_classes(&self, all: &std::collections::BTreeMap<String, berth_types::shop::ShopConfig>) -> Vec<String> {
        let seen_by: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = {
            let scopes = self.admin.scopes();
            all.keys().map(|shop| (shop.clone(), scopes.iter().filter(|s| s.sees(shop)).map(|s| s.key()).collect())).collect()
        };
        match self.classes.assign(&seen_by).await {
            Ok(moved) => moved.into_iter().map(|shop| format!("shop `{shop}`: its new orders go to the ERP leases of the token scopes that see it now")).collect(),
            Err(e) => vec![format!("the ERP queue's classes of shops could not be recorded in the cluster ({e}); scoped tokens lease as before")],
        }
    }
    /// The cluster's shops are now `all`: the lease loop starts new shops where they land
    /// and stops removed ones; a shop running here whose settings changed restarts with
    /// them. Returns what changed, one line each.
    pub async fn share(&self, all: &std::collections::BTreeMap<String, berth_types::shop::ShopConfig>) -> Vec<String> {
        let mut changed = self.assign_classes(all).await;
        changed.extend(self.cluster.set_configs(all.clone()));
        for (name, sc) in all.iter().filter(|(name, _)| self.shops.runs(name)) {
            if let Some(slot) = self.registry.slot(&sc.connector) {
                match self.shops.put(name, sc, slot).await {
                    Ok(berth_core::shops::Put::Restarted) => changed.push(format!("shop `{name}` restarted with its new settings")),
                    Ok(_) => {}
                    Err(e) => changed.push(format!("{e}; the shop was not restarted")),
                }
            }
        }
        let before = self.names.borrow().clone();
        let after = self.cluster.names();
        for added in after.difference(&before) {
            changed.push(format!("shop `{added}` added to the cluster's shops"));
        }
        for removed in before.difference(&after) {
            changed.push(format!("shop `{removed}` removed from the cluster's shops"));
        }
        self.names.send_replace(after);
        self.registry.set_shops(self.shops.by_connector());
        changed
    }

    /// Share the cluster's shops out again whenever a shop is onboarded or removed by
    /// OAuth on any node, until shutdown.
    pub async fn follow_onboarding(self: Arc<Self>, onboarding: Arc<berth_core::onboarding::Onboarding>, mut shutdown: watch::Receiver<bool>) {
        let Some(changes) = onboarding.changes() else { return };
        loop {
            tokio::select! {
                _ = changes.notified() => {}
                _ = shutdown.changed() => return,
            }
            let (all, problems) = onboarding.all_shops();
            for line in problems.into_iter().chain(self.share(&all).await) {
                tracing::info!("onboarded shops changed: {line}");
            }
        }
    }
}

/// The file's top-level tables as written (secrets included, never printed).
fn sections(path: &PathBuf) -> toml::Table {
    std::fs::read_to_string(path).ok().and_then(|t| t.parse::<toml::Table>().ok()).unwrap_or_default()
}

/// Sections not applied in place whose content changed: they need a restart. Compared
/// as parsed TOML, so a changed secret counts and formatting or comments do not.
fn restart_sections(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names.into_iter().filter(|k| !RELOADED.contains(&k.as_str()) && old.get(*k) != new.get(*k)).cloned().collect()
}

/// What a reload must not do to a running berth: leave it with no shops, no connectors
/// or no admin tokens where it has them — what an empty or truncated file looks like (a
/// file written over with `: > berth.toml`, a copy cut short). Refused like an invalid file.
fn emptied(old: &toml::Table, new: &Config) -> Option<String> {
    let had = |key: &str| old.get(key).and_then(toml::Value::as_table).is_some_and(|t| !t.is_empty());
    let tokens = old.get("admin").and_then(|a| a.get("tokens")).and_then(toml::Value::as_array).is_some_and(|t| !t.is_empty());
    let lost = [
        ("shops", had("shops") && new.shops.is_empty()),
        ("connectors", had("connectors") && new.connectors.is_empty()),
        ("admin tokens", tokens && new.admin.tokens.is_empty()),
    ];
    let lost: Vec<&str> = lost.iter().filter(|(_, gone)| *gone).map(|(what, _)| *what).collect();
    (!lost.is_empty()).then(|| {
        format!(
            "the new file has no {} where the running config has them (an empty or truncated file?); to remove them all, stop berth and start it on the new file",
            lost.join(", no ")
        )
    })
}

/// Shops the running config has and the new one drops, when that is more than half of them.
fn many_removed(old: &toml::Table, new: &Config) -> Option<Vec<String>> {
    let running: Vec<&String> = old.get("shops").and_then(toml::Value::as_table).map(|t| t.keys().collect()).unwrap_or_default();
    let gone: Vec<String> = running.iter().filter(|s| !new.shops.contains_key(s.as_str())).map(|s| s.to_string()).collect();
    (gone.len() * 2 > running.len() && !gone.is_empty()).then_some(gone)
}

pub async fn watch_config(path: PathBuf, live: Reloadable, mut shutdown: watch::Receiver<bool>) {
    let mut seen = modified(&path);
    let mut current = sections(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = Config::load(&path).map_err(|e| e.to_string()).and_then(|new| match emptied(&current, &new) {
            Some(why) => Err(format!("config {}: {why}", path.display())),
            None => Ok(new),
        });
        match loaded {
            Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays in force"),
            Ok(new) => {
                if let Some(gone) = many_removed(&current, &new) {
                    tracing::warn!(path = %path.display(), shops = %gone.join(", "), "config reload removes more than half of the running shops");
                }
                let text = sections(&path);
                let (changed, restart) = live.apply(&current, &text, &new).await;
                for c in &changed {
                    tracing::warn!(path = %path.display(), "config reload: {c}");
                }
                if restart.is_empty() {
                    tracing::info!(path = %path.display(), "config reloaded; new platform limits and policies apply to the next call");
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        sections = %restart.join(", "),
                        "config reloaded; platform limits and policies applied, but changes to these sections take effect only after a restart"
                    );
                }
                current = text;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_or_truncated_file_is_not_taken_and_a_mass_removal_is_named() {
        let running = "[admin]\ntokens = [{ name = \"ops\", token = \"operator-token-0001\", role = \"operator\" }]\n\
                       [connectors.c]\ncomponent = \"c.wasm\"\n[shops.a]\nconnector = \"c\"\n[shops.b]\nconnector = \"c\"\n[shops.c]\nconnector = \"c\"\n";
        let old: toml::Table = running.parse().unwrap();
        let parse = |t: &str| Config::parse(t, std::path::Path::new("/b.toml")).unwrap();
        let why = emptied(&old, &parse("")).unwrap();
        assert!(why.contains("no shops, no connectors, no admin tokens"), "{why}");
        // Cut short before the shops: the connectors and tokens are there, the shops not.
        let cut = &running[..running.find("[shops.a]").unwrap()];
        assert!(emptied(&old, &parse(cut)).unwrap().contains("no shops where"));
        assert_eq!(emptied(&old, &parse(running)), None);
        let two_gone = running.replace("[shops.b]\nconnector = \"c\"\n", "").replace("[shops.c]\nconnector = \"c\"\n", "");
        assert_eq!(many_removed(&old, &parse(&two_gone)), Some(vec!["b".to_string(), "c".to_string()]));
        assert_eq!(many_removed(&old, &parse(&running.replace("[shops.c]\nconnector = \"c\"\n", ""))), None, "one of three is not more than half");
        // A berth that never had shops may get its first ones, or none.
        assert_eq!(emptied(&"".parse().unwrap(), &parse("")), None);
    }

    #[test]
    fn names_the_sections_that_need_a_restart() {
        let t = |s: &str| s.parse::<toml::Table>().unwrap();
        let a = t("[platforms.x]\nrequests_per_second = 1.0\n");
        let b = t("# tuned\n[platforms.x]\nrequests_per_second   = 5.0\n");
        assert!(restart_sections(&a, &b).is_empty(), "platforms reload in place; comments and spacing do not count");
        let c = t("[platforms.x]\nrequests_per_second = 5.0\n[sync]\noverlap_secs = 5\n[stock]\nbatch_size = 3\n");
        assert_eq!(restart_sections(&b, &c), ["stock", "sync"]);
        // A changed secret alone is a change.
        let d = t("[erp]\nwebhook_secret = \"old\"\n");
        let e = t("[erp]\nwebhook_secret = \"new\"\n");
        assert_eq!(restart_sections(&d, &e), ["erp"]);
    }
}
