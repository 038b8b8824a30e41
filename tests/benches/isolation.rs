//! Isolation: how many pulls two real Taobao shops (one app key, polled every second)
//! complete per minute while a hostile connector — or a careless ERP client — attacks
//! the host beside them, against the same shops alone. Each attack is measured right
//! after its own baseline run (the machine drifts), each run a fresh berth and data dir.
//!
//! Run: `cargo build --release -p berth-host && cargo bench -p berth-tests --bench isolation`
//! (`ISOLATION_SECS=N` sets the measured span of each run, default 30; `-- NAME` runs
//! only the attacks whose name contains NAME). Prints a Markdown table for
//! docs/isolation.md.

use berth_tests::{get_json, poll_until, Berth};
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The attacks: name, what the hostile side adds to berth.toml (`{gateway}` and the
/// components are filled in), and the client-side load it runs during the measured span.
struct Attack {
    name: &'static str,
    what: &'static str,
    config: &'static str,
    client: Client,
}

#[derive(Clone, Copy)]
enum Client {
    None,
    /// POST this many webhooks at once to each named shop, again and again.
    Webhooks(&'static [&'static str], usize),
    /// Read `GET /v1/orders?limit=1000` from the start, again and again.
    ErpReads,
}

fn attacks() -> Vec<Attack> {
    let hostile = "[connectors.hostile]\ncomponent = \"{hostile}\"\nextra_hosts = [\"127.0.0.1\"]\n[connectors.hostile.limits]\nbreaker = false\n";
    vec![
        Attack {
            name: "foreign-quota",
            what: "connector claiming its own platform calls the Taobao gateway with the app's credentials, as fast as allowed",
            config: "{hostile-section}[shops.evilmart]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"foreign-quota\", target = \"{gateway}\", app_key = \"k\" }\nsecrets = { app_secret = \"s\", session = \"sess-t9\" }\n",
            client: Client::None,
        },
        Attack {
            name: "throttle-claim",
            what: "a Taobao-bound connector says rate-limited(3600000) with no platform answer behind it",
            config: "[connectors.evil]\nplatform = \"taobao\"\ncomponent = \"{hostile_taobao}\"\nextra_hosts = [\"127.0.0.1\"]\n[shops.h-throttle]\nconnector = \"evil\"\npoll_interval_secs = 1\nsettings = { mode = \"throttle-once\", app_key = \"k\" }\n",
            client: Client::None,
        },
        Attack {
            name: "throttle-after-answer",
            what: "the same after one real call answered by the platform: the app key is held for max_hold_secs (here 10 s)",
            config: "[connectors.evil]\nplatform = \"taobao\"\ncomponent = \"{hostile_taobao}\"\nextra_hosts = [\"127.0.0.1\"]\n[shops.h-throttle]\nconnector = \"evil\"\npoll_interval_secs = 1\nsettings = { mode = \"throttle-once\", target = \"{gateway}\", app_key = \"k\" }\nsecrets = { app_secret = \"s\", session = \"sess-t9\" }\n",
            client: Client::None,
        },
        Attack {
            name: "webhook-flood",
            what: "40 + 40 concurrent webhooks, again and again, to two connectors whose handler sleeps 9 s",
            config: "[connectors.hostile-a]\nplatform = \"hostile\"\ncomponent = \"{hostile}\"\n[connectors.hostile-a.limits]\nmax_webhook_calls_per_shop = 40\n[shops.hook-a]\nconnector = \"hostile-a\"\npoll_interval_secs = 3600\nsettings = { mode = \"slow-webhook\" }\n[connectors.hostile-b]\nplatform = \"hostile\"\ncomponent = \"{hostile}\"\n[connectors.hostile-b.limits]\nmax_webhook_calls_per_shop = 40\n[shops.hook-b]\nconnector = \"hostile-b\"\npoll_interval_secs = 3600\nsettings = { mode = \"slow-webhook\" }\n",
            client: Client::Webhooks(&["hook-a", "hook-b"], 40),
        },
        Attack {
            name: "kv-churn",
            what: "rewrites 64 KiB state values without end, endless cursor",
            config: "{hostile-section}[shops.h-kv]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"kv-churn\" }\n",
            client: Client::None,
        },
        Attack {
            name: "order-flood",
            what: "pages of 1,000 new orders, endless cursor (the shop's hourly order budget stops it)",
            config: "{hostile-section}[shops.h-raw]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"raw-flood\", orders = \"1000\", raw_bytes = \"300\" }\n",
            client: Client::None,
        },
        Attack {
            name: "webhook-orders",
            what: "webhooks answering 100 new orders each, 20 at a time, again and again",
            config: "{hostile-section}[shops.h-hook]\nconnector = \"hostile\"\npoll_interval_secs = 3600\nsettings = { mode = \"webhook-orders\", orders = \"100\" }\n",
            client: Client::Webhooks(&["h-hook"], 20),
        },
        Attack {
            name: "log-forge",
            what: "guest log lines with newlines, carriage returns and a megabyte a call",
            config: "{hostile-section}[shops.h-forge]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"log-forge\" }\n[shops.h-flood]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"log-flood\" }\n",
            client: Client::None,
        },
        Attack {
            name: "bad-times",
            what: "orders updated at i64::MAX, and outside the window asked for",
            config: "{hostile-section}[shops.h-time]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"bad-times\", updated = \"9223372036854775807\" }\n[shops.h-window]\nconnector = \"hostile\"\npoll_interval_secs = 1\nsettings = { mode = \"outside-window\" }\n",
            client: Client::None,
        },
        Attack {
            name: "erp-reads",
            what: "an ERP reading the feed of a store of 2 MB orders from the start, again and again",
            config: "{hostile-section}max_raw_json_bytes = 4194304\n[shops.h-big]\nconnector = \"hostile\"\npoll_interval_secs = 3600\nsettings = { mode = \"raw-flood\", orders = \"1\", raw_bytes = \"2000000\" }\n",
            client: Client::ErpReads,
        },
    ]
    .into_iter()
    .map(|mut a| {
        // The hostile connector's section, its limits table left open for more keys.
        a.config = Box::leak(a.config.replace("{hostile-section}", hostile).into_boxed_str());
        a
    })
    .collect()
}

/// The platform bans the app above 40 calls a second; berth's bucket is 20.
fn sim_config() -> berth_sim::SimConfig {
    berth_tests::taobao_sim(30, 1, &[("t1", 5), ("t2", 5), ("t9", 5)], 40)
}

fn config(dir: &std::path::Path, gateway: &str, port: &str, attack: Option<&Attack>) -> std::path::PathBuf {
    let mut text = format!(
        "[sync]\ninitial_lookback_hours = 1\nsettle_secs = 1\nmax_pages_per_window = 20\nerror_pause_secs = 5\n\
         [platforms.taobao]\nrequests_per_second = 20.0\nburst = 5\nquota_key = \"app_key\"\nmax_hold_secs = 10\n\
         hosts = [\"127.0.0.1:{port}/taobao\"]\n{}",
        berth_tests::local_connectors(&[("taobao", plugins::TAOBAO)])
    );
    for n in ["t1", "t2"] {
        text.push_str(&berth_tests::taobao_shop(n, "taobao", gateway, &format!("sess-{n}"), ""));
    }
    if let Some(a) = attack {
        text.push_str(
            &a.config
                .replace("{gateway}", gateway)
                .replace("{hostile_taobao}", plugins::HOSTILE_TAOBAO)
                .replace("{hostile}", plugins::HOSTILE),
        );
    }
    berth_tests::write_config(dir, &text)
}

/// Pages the two real shops have pulled.
async fn pulls(berth: &Berth) -> u64 {
    let shops = get_json(berth.url("/v1/shops")).await;
    shops.as_array().into_iter().flatten().filter(|s| s["shop"] == "t1" || s["shop"] == "t2").filter_map(|s| s["pages"].as_u64()).sum()
}

/// The client load of an attack, until `stop`.
async fn load(client: Client, base: String, stop: Instant) {
    let http = reqwest::Client::new();
    while Instant::now() < stop {
        match client {
            Client::None => return,
            Client::Webhooks(shops, n) => {
                let posts: Vec<_> = shops
                    .iter()
                    .flat_map(|s| std::iter::repeat_n(format!("{base}/v1/webhooks/{s}"), n))
                    .map(|url| {
                        let http = http.clone();
                        tokio::spawn(async move { http.post(url).body("{}").send().await.map(|r| r.status().as_u16()).ok() })
                    })
                    .collect();
                for p in posts {
                    let _ = p.await;
                }
            }
            Client::ErpReads => {
                let mut after = 0u64;
                loop {
                    let Ok(r) = http.get(format!("{base}/v1/orders?limit=1000&after={after}")).send().await else { break };
                    let Ok(v) = r.json::<serde_json::Value>().await else { break };
                    match v["next_after"].as_u64() {
                        Some(n) if n > after => after = n,
                        _ => break,
                    }
                }
            }
        }
    }
}

/// One run: berth with the real shops (and the attack), warmed up, then the real shops'
/// pulls per minute over `span` and berth's peak RSS.
async fn run(attack: Option<&Attack>, span: Duration) -> (f64, u64) {
    let sim = berth_sim::start(sim_config(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gateway = format!("{}/taobao/router/rest", sim.base_url());
    let port = sim.base_url().rsplit(':').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&config(dir.path(), &gateway, &port, attack));
    poll_until(Duration::from_secs(120), || async { (pulls(&berth).await >= 4).then_some(()) }).await.expect("the real shops pull");
    // The attack gets going before the measured span.
    let client = attack.map_or(Client::None, |a| a.client);
    let warm = Instant::now() + Duration::from_secs(5);
    load(client, berth.base_url.clone(), warm).await;
    tokio::time::sleep_until(warm.into()).await;
    let start = (Instant::now(), pulls(&berth).await);
    let stop = Instant::now() + span;
    load(client, berth.base_url.clone(), stop).await;
    tokio::time::sleep_until(stop.into()).await;
    let n = pulls(&berth).await - start.1;
    let per_minute = n as f64 * 60.0 / start.0.elapsed().as_secs_f64();
    (per_minute, berth.memory().1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let span = Duration::from_secs(std::env::var("ISOLATION_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30));
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!("| attack | what it does | baseline pulls/min | with the attack | ratio | berth peak RSS |");
    println!("|---|---|---:|---:|---:|---:|");
    for a in attacks().iter().filter(|a| only.as_deref().is_none_or(|o| a.name.contains(o))) {
        let (base, _) = run(None, span).await;
        let (with, rss) = run(Some(a), span).await;
        println!("| {} | {} | {base:.0} | {with:.0} | {:.0}% | {} MB |", a.name, a.what, 100.0 * with / base.max(1.0), rss >> 20);
    }
}
