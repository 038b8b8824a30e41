//! `berth-kit`: the vendor kit's binary. `berth plugin ARGS` runs `berth-kit ARGS`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "berth plugin", bin_name = "berth plugin", about = "Tools for connector authors: describe a component, run the conformance suite")]
struct Cli {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's manifest, WIT version, imports, exports and digest.
    Inspect { file: PathBuf },
    /// Run the conformance suite against the built-in simulator of a platform
    /// (shopify, taobao, shopee, woo). Exit 0 when every check passes, 1 when one fails.
    Test {
        file: PathBuf,
        #[arg(long)]
        sim: String,
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
            PluginCommand::Test { file, sim } => {
                berth_kit::conformance::run(&file, &sim).await.map(|report| printed(report.render(), report.passed()))
            }
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
