//! Config hot reload: berth.toml is checked for changes every second. A valid new file
//! applies what can change under load — the `[platforms]` rate limits — to the next
//! call; changes to other sections are reported as needing a restart. An invalid file
//! is refused with the parser's message (file and line) and the running config stays.

use crate::config::Config;
use crate::runtime::state::HostServices;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

const POLL: Duration = Duration::from_secs(1);

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Sections whose change needs a restart (compared by their `Debug` form, which shows no secret values).
fn restart_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if differs(&old.server, &new.server) {
        out.push("server");
    }
    if differs(&old.runtime, &new.runtime) {
        out.push("runtime");
    }
    if differs(&old.http, &new.http) {
        out.push("http");
    }
    if differs(&old.sync, &new.sync) {
        out.push("sync");
    }
    if differs(&old.erp, &new.erp) {
        out.push("erp");
    }
    if differs(&old.stock, &new.stock) {
        out.push("stock");
    }
    if differs(&old.connectors, &new.connectors) {
        out.push("connectors");
    }
    if differs(&old.shops, &new.shops) {
        out.push("shops");
    }
    out
}

pub async fn watch_config(path: PathBuf, mut current: Config, services: Arc<HostServices>, mut shutdown: watch::Receiver<bool>) {
    let mut seen = modified(&path);
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
        match Config::load(&path) {
            Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays in force"),
            Ok(new) => {
                services.limits.reconfigure(&new.platforms);
                let restart = restart_sections(&current, &new);
                if restart.is_empty() {
                    tracing::info!(path = %path.display(), "config reloaded; new rate limits apply to the next call");
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        sections = %restart.join(", "),
                        "config reloaded; rate limits applied, but changes to these sections take effect only after a restart"
                    );
                }
                current = new;
            }
        }
    }
}
