//! `berth-kit`: the vendor kit's binary. `berth plugin ARGS` runs `berth-kit ARGS`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "berth plugin", bin_name = "berth plugin", about = "Tools for connector authors: describe a component, run the conformance suite, record a tape and replay it with faults")]
struct Cli {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's manifest, WIT version, imports, exports and digest.
    Inspect { file: PathBuf },
    /// Run the checks. With --sim: the conformance suite against the built-in simulator
    /// of a platform (shopify, taobao, shopee, woo). With --tape: replay a tape made by
    /// `berth plugin record`, clean and with faults injected (any platform). Exit 0 when
    /// every check passes, 1 when one fails.
    #[command(group(clap::ArgGroup::new("against").required(true).args(["sim", "tape"])))]
    Test {
        file: PathBuf,
        #[arg(long)]
        sim: Option<String>,
        /// A tape directory (or its tape.json).
        #[arg(long)]
        tape: Option<PathBuf>,
        /// With --tape: the shop file the tape was recorded with (its secrets let the
        /// webhook check verify signatures; its [replay] section adds to the tape's).
        #[arg(long, requires = "tape")]
        shop_config: Option<PathBuf>,
    },
    /// Replay a tape's calls to the component and compare its answers with the recorded
    /// ones, field by field. Exit 0 on a 100% match, 1 otherwise.
    Shadow {
        file: PathBuf,
        #[arg(long)]
        tape: PathBuf,
        /// The shop file (its secrets let recorded webhooks be compared).
        #[arg(long)]
        shop_config: Option<PathBuf>,
    },
    /// Run the connector's calls (check, pulls over a window, a push, a webhook) against
    /// the platform or a sandbox named in the shop file, and write every platform
    /// exchange to a tape, secrets and signatures redacted.
    Record {
        file: PathBuf,
        #[arg(long)]
        shop_config: PathBuf,
        /// The tape's directory (created; its tape.json is replaced).
        #[arg(long)]
        out: PathBuf,
        /// How far back the pulls reach, in hours (else [record] hours, else 72).
        #[arg(long)]
        hours: Option<u64>,
        /// Where the pulls end, in Unix milliseconds (else now): to record the window of
        /// an incident.
        #[arg(long)]
        until_ms: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // As `berth` logs: to stderr, `BERTH_LOG` filtering; the report goes to stdout.
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Print what was found; exit 0 when it is good, 1 when not, 2 when it could not run.
    let printed = |text: String, good: bool| {
        print!("{text}");
        if good {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            PluginCommand::Inspect { file } => berth_kit::inspect(&file).await.map(|i| printed(i.render(), i.loaded.is_ok())),
            PluginCommand::Test { file, sim: Some(sim), .. } => {
                berth_kit::conformance::run(&file, &sim).await.map(|report| printed(report.render(), report.passed()))
            }
            PluginCommand::Test { file, tape: Some(tape), shop_config, .. } => {
                berth_kit::replay::run(&file, &tape, shop_config.as_deref()).await.map(|report| printed(report.render(), report.passed()))
            }
            PluginCommand::Test { .. } => unreachable!("clap requires --sim or --tape"),
            PluginCommand::Shadow { file, tape, shop_config } => berth_kit::replay::shadow(&file, &tape, shop_config.as_deref())
                .await
                .map(|r| printed(berth_kit::replay::render_shadow(&r), r.complete_match().is_ok())),
            PluginCommand::Record { file, shop_config, out, hours, until_ms } => {
                berth_kit::record::record(&file, &shop_config, &out, hours, until_ms).await.map(|r| printed(r.render(), true))
            }
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
