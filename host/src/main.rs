//! `berth`: the connector host binary.

use berth_host::service;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "berth", version, about = "Host for e-commerce connectors compiled to WebAssembly components")]
struct Cli {
    /// How log records are written to stderr: `text` (one line each) or `json` (one
    /// object per line). `BERTH_LOG_FORMAT` sets the default.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load connectors from the config, pull orders per shop, and serve the API.
    Serve {
        #[arg(long, default_value = "berth.toml")]
        config: PathBuf,
    },
    /// Check a config file and exit: 0 when valid, 2 with the reason when not.
    CheckConfig {
        #[arg(long, default_value = "berth.toml")]
        config: PathBuf,
    },
    /// Check the NATS cluster named in the config's [cluster] section: reachable, every
    /// bucket with its replicas (created when missing), and as durable as
    /// `durability` requires. 0 when it is, 2 with the reason when not.
    ClusterCheck {
        #[arg(long, default_value = "berth.toml")]
        config: PathBuf,
    },
    /// Upload a component as a new version of a connector and make it active (needs a
    /// deployer token in BERTH_TOKEN). A refused component changes nothing.
    Deploy {
        file: PathBuf,
        #[arg(long)]
        connector: String,
        /// Only store the version; activate it later with `berth activate`.
        #[arg(long)]
        no_activate: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Make a deployed version active.
    Activate {
        connector: String,
        digest: String,
        #[command(flatten)]
        server: Server,
    },
    /// Return a connector to the version active before the current one.
    Rollback {
        connector: String,
        #[command(flatten)]
        server: Server,
    },
    /// Route some shops to a deployed version; it is rolled back by itself when its
    /// failure rate crosses --max-failure-rate over --window-secs.
    Canary {
        connector: String,
        digest: String,
        /// Share of the connector's shops, in percent (at least one shop).
        #[arg(long, conflicts_with = "shops")]
        share: Option<u32>,
        /// Exactly these shops (comma-separated).
        #[arg(long, value_delimiter = ',')]
        shops: Option<Vec<String>>,
        #[arg(long, default_value_t = 0.05)]
        max_failure_rate: f64,
        #[arg(long, default_value_t = 300)]
        window_secs: u64,
        #[arg(long, default_value_t = 20)]
        min_calls: u64,
        #[command(flatten)]
        server: Server,
    },
    /// Make the candidate (the canary's, else the shadow's, else the version last run on
    /// a tape) active for every shop. Refused while its shadow run or its tape run found
    /// differences, unless --force.
    Promote {
        connector: String,
        #[arg(long)]
        force: bool,
        /// Also refuse unless the candidate matched a tape completely (`shadow --tape`).
        #[arg(long)]
        require_tape: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Run a deployed version as a shadow of the active one: same inputs, recorded
    /// platform answers, outputs compared field by field (nothing is sent or stored).
    /// With --tape: replay a recorded tape's calls to it instead and compare its answers
    /// with the recorded ones (the match rate is kept for `promote`).
    Shadow {
        connector: String,
        digest: String,
        /// A tape: `berth plugin record`'s directory, or a recorded shop's
        /// (data_dir/tapes/CONNECTOR/SHOP).
        #[arg(long)]
        tape: Option<std::path::PathBuf>,
        #[command(flatten)]
        server: Server,
    },
    /// Stop the shadow run and print its report.
    ShadowStop {
        connector: String,
        #[command(flatten)]
        server: Server,
    },
    /// Send the canary's shops back to the active version.
    AbortCanary {
        connector: String,
        #[command(flatten)]
        server: Server,
    },
    /// Stop calling a connector (or one shop with --shop) until `berth resume`.
    Pause {
        connector: Option<String>,
        #[arg(long)]
        shop: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Undo `berth pause`.
    Resume {
        connector: Option<String>,
        #[arg(long)]
        shop: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// End a hold on a platform quota now (see `GET /v1/platforms` for the holds and
    /// their keys); needs an operator token.
    ReleaseHold {
        platform: String,
        /// The quota, e.g. `app_key:12345678` or `shop:acme`.
        key: String,
        #[command(flatten)]
        server: Server,
    },
    /// A shop's stock held by write guards: `list` the holds, `release ID` (push them) or
    /// `discard ID` (the platform keeps what it was last given); releases and discards
    /// need an operator token and are audited.
    StockHolds {
        shop: String,
        #[arg(value_parser = ["list", "release", "discard"], default_value = "list")]
        action: String,
        /// The hold (from `list`).
        id: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Resume stock pushes a write guard paused (the platform's success rate fell): one
    /// shop's with --shop, else every shop's on PLATFORM.
    ResumeWrites {
        platform: Option<String>,
        #[arg(long)]
        shop: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Inject a failure into one shop on purpose and record what berth did (alerts, time
    /// to detect and recover, breaker, standby, loss): platform-5xx, throttle-storm,
    /// timeouts, primary-down, connector-traps. Needs an admin token; audited. Waits for
    /// the drill to end and prints its record.
    Drill {
        scenario: String,
        #[arg(long)]
        shop: String,
        /// How long the fault lasts: `60s`, `2m` or seconds.
        #[arg(long, default_value = "60s")]
        duration: String,
        #[command(flatten)]
        server: Server,
    },
    /// Compare a shop's platform quantities (its listings) with the ERP's newest desired
    /// quantities and print every drift (JSON, or CSV with --csv); --repair queues the
    /// drifting SKUs' desired quantities again through the pusher. Operator role; audited.
    /// --last prints the shop's last report without running.
    Reconcile {
        #[arg(long)]
        shop: String,
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        csv: bool,
        #[arg(long, conflicts_with = "repair")]
        last: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Take a snapshot of a shop now: its listings (read from the platform), orders
    /// updated in the last `[snapshots] orders_days` and desired stock, as Parquet files
    /// with a manifest under `[snapshots] dir`/SHOP/DATE. Operator role; audited.
    /// --list prints the shop's snapshots (and its last failure) instead.
    Snapshot {
        #[arg(long)]
        shop: String,
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        server: Server,
    },
    /// List connectors with their active and deployed versions.
    Connectors {
        #[command(flatten)]
        server: Server,
    },
    /// Tools for connector authors: `inspect FILE` describes a component, `test FILE --sim
    /// PLATFORM` runs the conformance suite. Runs the vendor kit, `berth-kit`, installed
    /// beside this binary (`berth serve` does not carry it or the simulator).
    #[command(disable_help_flag = true)]
    Plugin {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct Server {
    /// The berth to talk to (default: $BERTH_URL, else http://127.0.0.1:8080); https://
    /// when it has `[server] tls_cert`.
    #[arg(long)]
    url: Option<String>,
    /// A PEM CA certificate to trust for an https:// berth whose certificate no public
    /// CA signed (default: $BERTH_CA_FILE).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

/// `berth plugin ARGS`: run the vendor kit beside this binary (or `$BERTH_KIT`) with ARGS.
fn plugin_command(args: Vec<String>) -> ExitCode {
    let kit = std::env::var_os("BERTH_KIT").map(std::path::PathBuf::from).or_else(|| {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join(format!("berth-kit{}", std::env::consts::EXE_SUFFIX)))
    });
    let Some(kit) = kit.filter(|k| k.exists()) else {
        eprintln!(
            "error: `berth plugin` runs the vendor kit, `berth-kit`, and it is not beside this binary; build it with `cargo build --release -p berth-kit` and put it next to `berth` (or point BERTH_KIT at it)"
        );
        return ExitCode::from(2);
    };
    match std::process::Command::new(&kit).args(&args).status() {
        Ok(status) => ExitCode::from(status.code().map_or(2, |c| c.clamp(0, 255) as u8)),
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", kit.display());
            ExitCode::from(2)
        }
    }
}

fn init_tracing(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    let json = format.map_or_else(|| std::env::var("BERTH_LOG_FORMAT").is_ok_and(|v| v == "json"), |f| f == LogFormat::Json);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match berth_host::config::Config::load(&config) {
            Ok(cfg) => {
                println!("{}: ok ({} connectors, {} shops)", config.display(), cfg.connectors.len(), cfg.shops.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::ClusterCheck { config } => match runtime() {
            Some(rt) => rt.block_on(cluster_check(config)),
            None => ExitCode::FAILURE,
        },
        Command::Plugin { args } => plugin_command(args),
        Command::Serve { config } => match runtime() {
            Some(rt) => rt.block_on(serve(config)),
            None => ExitCode::FAILURE,
        },
        admin => match runtime() {
            Some(rt) => rt.block_on(admin_command(admin)),
            None => ExitCode::FAILURE,
        },
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

async fn admin_command(cmd: Command) -> ExitCode {
    use berth_host::admin_client::{read_component, AdminClient, Body, ClientError};
    use reqwest::Method;
    let run = async {
        let pause_path = |connector: Option<String>, shop: Option<String>, verb: &str| match (connector, shop) {
            (_, Some(shop)) => Ok(format!("/v1/admin/shops/{shop}/{verb}")),
            (Some(c), None) => Ok(format!("/v1/admin/connectors/{c}/{verb}")),
            (None, None) => Err(ClientError::Refused { status: 0, message: format!("name a connector, or a shop with --shop, to {verb}") }),
        };
        match cmd {
            Command::Deploy { file, connector, no_activate, server } => {
                let bytes = read_component(&file)?;
                let client = AdminClient::from_env(server.url, server.ca_file)?;
                let path = format!("/v1/admin/connectors/{connector}/versions?activate={}", !no_activate);
                client.call(Method::POST, &path, Body::Wasm(bytes)).await
            }
            Command::Activate { connector, digest, server } => {
                let body = Body::Json(serde_json::json!({ "digest": digest }));
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &format!("/v1/admin/connectors/{connector}/activate"), body).await
            }
            Command::Rollback { connector, server } => {
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &format!("/v1/admin/connectors/{connector}/rollback"), Body::Empty).await
            }
            Command::Pause { connector, shop, server } => {
                let path = pause_path(connector, shop, "pause")?;
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, Body::Empty).await
            }
            Command::Resume { connector, shop, server } => {
                let path = pause_path(connector, shop, "resume")?;
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, Body::Empty).await
            }
            Command::Canary { connector, digest, share, shops, max_failure_rate, window_secs, min_calls, server } => {
                let body = Body::Json(serde_json::json!({
                    "digest": digest, "share_percent": share, "shops": shops,
                    "max_failure_rate": max_failure_rate, "window_secs": window_secs, "min_calls": min_calls,
                }));
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &format!("/v1/admin/connectors/{connector}/canary"), body).await
            }
            Command::Promote { connector, force, require_tape, server } => {
                let body = Body::Json(serde_json::json!({ "force": force, "require_tape": require_tape }));
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &format!("/v1/admin/connectors/{connector}/promote"), body).await
            }
            Command::Shadow { connector, digest, tape: None, server } => {
                let body = Body::Json(serde_json::json!({ "digest": digest }));
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &format!("/v1/admin/connectors/{connector}/shadow"), body).await
            }
            Command::Shadow { connector, digest, tape: Some(dir), server } => {
                let tape = berth_core::tape::TapeFile::read(&dir)
                    .map_err(|e| ClientError::Tape(e.to_string()))?;
                let body = Body::Json(serde_json::json!({ "digest": digest, "tape": tape }));
                let path = format!("/v1/admin/connectors/{connector}/shadow/tape");
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, body).await
            }
            Command::ShadowStop { connector, server } => {
                let path = format!("/v1/admin/connectors/{connector}/shadow/stop");
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, Body::Empty).await
            }
            Command::AbortCanary { connector, server } => {
                let path = format!("/v1/admin/connectors/{connector}/canary/abort");
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, Body::Empty).await
            }
            Command::ReleaseHold { platform, key, server } => {
                let path = format!("/v1/admin/platforms/{}/holds/{}/release", enc(&platform), enc(&key));
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, Body::Empty).await
            }
            Command::StockHolds { shop, action, id, server } => {
                let client = AdminClient::from_env(server.url, server.ca_file)?;
                match (action.as_str(), id) {
                    ("list", _) => client.call(Method::GET, &format!("/v1/admin/shops/{}/stock/holds", enc(&shop)), Body::Empty).await,
                    (end, Some(id)) => {
                        let path = format!("/v1/admin/shops/{}/stock/holds/{}/{end}", enc(&shop), enc(&id));
                        client.call(Method::POST, &path, Body::Empty).await
                    }
                    (end, None) => Err(ClientError::Usage(format!("`berth stock-holds {shop} {end}` needs the hold's id (see `berth stock-holds {shop}`)"))),
                }
            }
            Command::ResumeWrites { platform, shop, server } => {
                let path = match (platform, shop) {
                    (_, Some(shop)) => format!("/v1/admin/shops/{}/stock/resume", enc(&shop)),
                    (Some(p), None) => format!("/v1/admin/platforms/{}/writes/resume", enc(&p)),
                    (None, None) => return Err(ClientError::Usage("name a PLATFORM, or a shop with --shop".into())),
                };
                AdminClient::from_env(server.url, server.ca_file)?.call(Method::POST, &path, Body::Empty).await
            }
            Command::Drill { scenario, shop, duration, server } => {
                let secs = parse_duration(&duration).ok_or_else(|| ClientError::Usage(format!("--duration `{duration}`: give seconds, `90s` or `2m`")))?;
                let client = AdminClient::from_env(server.url, server.ca_file)?;
                let body = Body::Json(serde_json::json!({ "scenario": scenario, "duration_secs": secs }));
                let started = client.call(Method::POST, &format!("/v1/admin/shops/{}/drills", enc(&shop)), body).await?;
                let id = started["id"].as_str().unwrap_or_default().to_string();
                eprintln!("drill {id} started: {scenario} on {shop} for {secs} s; waiting for it to end");
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let rec = client.call(Method::GET, &format!("/v1/drills/{}", enc(&id)), Body::Empty).await?;
                    if rec["state"] != "running" && rec["state"] != "recovering" {
                        break Ok(rec);
                    }
                }
            }
            Command::Reconcile { shop, repair, csv, last, server } => {
                let format = if csv { "csv" } else { "json" };
                let client = AdminClient::from_env(server.url, server.ca_file)?;
                if last {
                    client.call(Method::GET, &format!("/v1/admin/shops/{}/reconcile?format={format}", enc(&shop)), Body::Empty).await
                } else {
                    client.call(Method::POST, &format!("/v1/admin/shops/{}/reconcile?repair={repair}&format={format}", enc(&shop)), Body::Empty).await
                }
            }
            Command::Snapshot { shop, list, server } => {
                let method = if list { Method::GET } else { Method::POST };
                AdminClient::from_env(server.url, server.ca_file)?.call(method, &format!("/v1/admin/shops/{}/snapshots", enc(&shop)), Body::Empty).await
            }
            Command::Connectors { server } => AdminClient::from_env(server.url, server.ca_file)?.call(Method::GET, "/v1/admin/connectors", Body::Empty).await,
            Command::Serve { .. } | Command::CheckConfig { .. } | Command::ClusterCheck { .. } | Command::Plugin { .. } => unreachable!("handled in main"),
        }
    };
    match run.await {
        // An answer that is not JSON (CSV) is printed as it came.
        Ok(serde_json::Value::String(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `s` as one URL path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// `90`, `90s` or `2m` as seconds.
fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let (n, unit) = match t.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (t.strip_suffix('s').unwrap_or(t), 1),
    };
    n.trim().parse::<u64>().ok().map(|n| n * unit)
}

async fn cluster_check(config: PathBuf) -> ExitCode {
    let fail = |why: String| {
        eprintln!("error: {why}");
        ExitCode::from(2)
    };
    let cfg = match berth_host::config::Config::load(&config) {
        Ok(cfg) => cfg,
        Err(e) => return fail(e.to_string()),
    };
    let Some(cluster) = cfg.cluster else {
        return fail(format!("{} has no [cluster] section: there is no NATS cluster to check (docs/cluster.md)", config.display()));
    };
    let conn = match berth_cluster::connect(&cluster).await {
        Ok(conn) => conn,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = berth_cluster::registry::SharedRegistry::open(&conn).await {
        return fail(e.to_string());
    }
    for stream in [&conn.names.nodes, &conn.names.shops, &conn.names.registry] {
        match conn.js.get_stream(format!("KV_{stream}")).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    let (leader, peers) = info
                        .cluster
                        .as_ref()
                        .map(|c| (c.leader.clone().unwrap_or_default(), c.replicas.iter().map(|p| p.name.clone()).collect::<Vec<_>>()))
                        .unwrap_or_default();
                    println!("bucket {stream}: {} replica(s), leader {leader}, followers {peers:?}", info.config.num_replicas);
                }
                Err(e) => return fail(format!("bucket {stream}: {e}")),
            },
            Err(e) => return fail(format!("bucket {stream}: {e}")),
        }
    }
    println!("{}: the NATS cluster is fit for cluster mode (durability = \"{}\", replicas = {})", config.display(), cluster.durability.name(), cluster.replicas);
    ExitCode::SUCCESS
}

async fn serve(config: PathBuf) -> ExitCode {
    let running = match service::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("start-up failed: {e}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("berth listening on {}://{}", if running.tls { "https" } else { "http" }, running.addr);
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
