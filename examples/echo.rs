//! An echo service on hopwise, built only on the library's public API: a program that runs its
//! own node, binds service port 7007, and either answers every datagram with the same bytes
//! (`serve`) or sends one and prints the answer (`send`). Both ends authenticate each other and
//! encrypt end to end, whatever relays the overlay picks between them.
//!
//! ```sh
//! hopwise keygen --network --out network.key
//! cargo run --example echo -- serve --network-key-file network.key \
//!     --listen 0.0.0.0:4100 --api 127.0.0.1:4101
//! cargo run --example echo -- send NODE_ID "hello" --network-key-file network.key \
//!     --listen 0.0.0.0:4200 --api 127.0.0.1:4201 --seed 127.0.0.1:4100
//! ```
//!
//! The node options are those of `hopwise node` (`--seed`, `--key`, `--config`, ...).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hopwise::embed::ServiceSocket;
use hopwise::node_command::{self, NodeArgs};
use hopwise_proto::NodeId;

/// The echo service's port (1024 and up are free for programs' own services).
const ECHO_PORT: u16 = 7007;

#[derive(Parser)]
#[command(about = "An echo service on a hopwise node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every datagram on the echo port with the same bytes, until Ctrl-C.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Send MESSAGE to the echo service of node NODE_ID (its full id) and print the answer.
    Send {
        node_id: String,
        message: String,
        /// Give up after this long (the node may need a few seconds to join first).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        node: NodeArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Serve { node } => runtime.block_on(serve(node)),
        Command::Send {
            node_id,
            message,
            timeout,
            node,
        } => runtime.block_on(send(node, &node_id, &message, timeout)),
    }
}

async fn serve(options: NodeArgs) -> anyhow::Result<()> {
    let node = node_command::start(options).await?;
    let mut socket = node.bind(ECHO_PORT).await?;
    println!("echo service of node {} on port {ECHO_PORT}", node.id());
    loop {
        tokio::select! {
            datagram = socket.recv_from() => {
                let Some(datagram) = datagram else { break };
                // `from` is authenticated: the sender proved the key behind its id.
                println!("{} bytes from {}", datagram.data.len(), datagram.from);
                if let Err(error) = socket.send_to(datagram.from, datagram.port, &datagram.data).await {
                    eprintln!("cannot answer {}: {error}", datagram.from);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.shutdown().await;
    Ok(())
}

async fn send(
    options: NodeArgs,
    node_id: &str,
    message: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let server =
        NodeId::from_hex(node_id).context("NODE_ID must be a full node id (16 hex digits)")?;
    let node = node_command::start(options).await?;
    let mut socket = node.bind(ECHO_PORT).await?;
    let started = Instant::now();
    // Until the node has joined and found a route, datagrams are lost: send again each second.
    while started.elapsed() < timeout {
        socket
            .send_to(server, ECHO_PORT, message.as_bytes())
            .await?;
        if echoed(&mut socket, server, Duration::from_secs(1))
            .await
            .is_some()
        {
            // The session is up: time one more round trip.
            let sent = Instant::now();
            socket
                .send_to(server, ECHO_PORT, message.as_bytes())
                .await?;
            if let Some((answer, arrived)) =
                echoed(&mut socket, server, Duration::from_secs(1)).await
            {
                println!(
                    "echo from {server}: {} ({:.1} ms)",
                    String::from_utf8_lossy(&answer),
                    (arrived - sent).as_secs_f64() * 1e3
                );
                node.shutdown().await;
                return Ok(());
            }
        }
    }
    node.shutdown().await;
    bail!("no echo from {server} within {timeout:?}")
}

/// The next datagram from `server` within `wait`, and when it arrived. Answers to earlier
/// tries that are waiting behind it are skipped.
async fn echoed(
    socket: &mut ServiceSocket,
    server: NodeId,
    wait: Duration,
) -> Option<(Vec<u8>, Instant)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let answer = tokio::time::timeout_at(deadline, socket.recv_from())
            .await
            .ok()??;
        let arrived = Instant::now();
        if answer.from == server {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(1), socket.recv_from()).await
            {
            }
            return Some((answer.data, arrived));
        }
    }
}
