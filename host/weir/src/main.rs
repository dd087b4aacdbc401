//! `weir`: a gateway and orchestrator for decentralized video and AI compute, extensible with
//! sandboxed WebAssembly components.

mod api;
mod component_cmd;
mod config;
mod installs;
mod listen;
mod node;
mod objects;
mod policy_payments;
mod server;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Weir: gateway and orchestrator for video and AI compute, extensible with WASM components.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a combined gateway + orchestrator node.
    Node(config::Overrides),
    /// Run a gateway: the AI API in front of orchestrators.
    Gateway(config::Overrides),
    /// Run an orchestrator: do AI work for gateways.
    Orchestrator(config::Overrides),
    /// Build, check and list components.
    #[command(subcommand)]
    Component(component_cmd::ComponentCmd),
    /// Benchmarks that print ratios against a reference measured in the same run.
    #[command(subcommand)]
    Bench(weir_bench::BenchCmd),
}

fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(overrides: &config::Overrides, role: node::Role) -> anyhow::Result<()> {
    let config = config::NodeConfig::resolve(overrides)?;
    init_logs(config.json_logs);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(node::run(config, role))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(overrides) => serve(&overrides, node::Role::Node),
        Command::Gateway(overrides) => serve(&overrides, node::Role::Gateway),
        Command::Orchestrator(overrides) => serve(&overrides, node::Role::Orchestrator),
        Command::Component(cmd) => {
            init_logs(false);
            component_cmd::run(cmd)
        }
        Command::Bench(cmd) => {
            init_logs(false);
            weir_bench::run(cmd)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
