//! `hopwise`: the command-line entry point.

use hopwise::{client, demo, keys, node_command, sim_command};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// hopwise: a decentralized, latency-optimal overlay network.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node on a UDP socket, with a control API.
    Node(node_command::NodeArgs),
    /// Write a new node key pair file (or with --network, a network key file), mode 0600.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = "hopwise.key")]
        out: PathBuf,
        /// Write a network key (shared by every member) instead of a node key pair.
        #[arg(long)]
        network: bool,
    },
    /// Start a local network of nodes with real-world latencies and show the paths it finds.
    Demo(demo::DemoArgs),
    /// Simulate a network of hopwise nodes over a measured latency matrix.
    Sim(sim_command::SimArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Node(args) => node_command::run(args),
        Command::Keygen { out, network } => keygen(&out, network),
        Command::Sim(args) => sim_command::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Client(command) => client::run(command),
    }
}

fn keygen(out: &std::path::Path, network: bool) -> anyhow::Result<()> {
    if network {
        keys::save_network_key(&keys::random_bytes()?, out)?;
        println!("network key written to {}", out.display());
    } else {
        let key = keys::NodeKey::generate()?;
        key.save(out)?;
        println!("node {} key written to {}", key.id(), out.display());
    }
    Ok(())
}
