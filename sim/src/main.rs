//! `berth-sim`: run the marketplace simulator on loopback.

use anyhow::Context;
use berth_sim::SimConfig;
use clap::Parser;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "Marketplace simulator for berth: Shopify-, Taobao-TOP-, Shopee- and WooCommerce-like APIs on loopback")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// JSON file with a SimConfig (seed, shops, limits); built-in demo data when absent.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Create one new order per shop and touch an existing one every N seconds (0 = off).
    #[arg(long, default_value_t = 0)]
    live_every_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    let config: SimConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid simulator config", path.display()))?
        }
        None => SimConfig::default(),
    };
    let shops = config.shops();
    let sim = berth_sim::start(config, args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %sim.addr, "simulator listening; control API at /_sim/stats");
    if args.live_every_secs > 0 {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(args.live_every_secs));
        tick.tick().await;
        loop {
            tick.tick().await;
            for (platform, shop) in &shops {
                if let Some(o) = sim.state.create(*platform, shop) {
                    tracing::info!(?platform, shop, order = o.id, "new order");
                }
                let first = sim.state.orders(*platform, shop).first().map(|o| o.id);
                if let Some(id) = first {
                    sim.state.touch(*platform, shop, id);
                }
            }
        }
    } else {
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
