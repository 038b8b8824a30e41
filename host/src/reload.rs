//! Config hot reload: berth.toml is checked for changes every second. A valid new file
//! applies what can change under load — everything under `[platforms]`: rate limits,
//! endpoint classes, retry policies, time windows, standby channels — to the next call;
//! changes to other sections are reported as needing a restart. An invalid file
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
    let dbg = |c: &Config| -> [(&'static str, String); 8] {
        [
            ("server", format!("{:?}", c.server)),
            ("runtime", format!("{:?}", c.runtime)),
            ("http", format!("{:?}", c.http)),
            ("sync", format!("{:?}", c.sync)),
            ("erp", format!("{:?}", c.erp)),
            ("stock", format!("{:?}", c.stock)),
            ("connectors", format!("{:?}", c.connectors)),
            ("shops", format!("{:?}", c.shops)),
        ]
    };
    dbg(old).into_iter().zip(dbg(new)).filter(|((_, a), (_, b))| a != b).map(|((name, _), _)| name).collect()
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
                services.reconfigure(&new.platforms);
                let restart = restart_sections(&current, &new);
                if restart.is_empty() {
                    tracing::info!(path = %path.display(), "config reloaded; new platform limits and policies apply to the next call");
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        sections = %restart.join(", "),
                        "config reloaded; platform limits and policies applied, but changes to these sections take effect only after a restart"
                    );
                }
                current = new;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_sections_that_need_a_restart() {
        let parse = |t: &str| Config::parse(t, std::path::Path::new("/etc/berth.toml")).unwrap();
        let a = parse("[platforms.x]\nrequests_per_second = 1.0\n");
        let b = parse("[platforms.x]\nrequests_per_second = 5.0\n");
        assert!(restart_sections(&a, &b).is_empty(), "rate limits reload in place");
        let c = parse("[platforms.x]\nrequests_per_second = 5.0\n[sync]\noverlap_secs = 5\n[stock]\nbatch_size = 3\n");
        assert_eq!(restart_sections(&b, &c), ["sync", "stock"]);
    }
}
