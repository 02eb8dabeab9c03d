//! `hopwise`: the command-line entry point.

mod sim_command;

use clap::{Parser, Subcommand};

/// hopwise: a decentralized, latency-optimal overlay network.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a network of hopwise nodes over a measured latency matrix.
    Sim(sim_command::SimArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(args) => sim_command::run(args),
    }
}
