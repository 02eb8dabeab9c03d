//! A load generator and a sink for overlay datagrams, built on the library's public API: the
//! ends `scripts/forward-bench.sh` drives through a hopwise relay and through a raw UDP
//! forwarder, so that the only difference between the two runs is what sits in the middle.
//!
//! `send TARGET` runs a node that sends datagrams of `--size` bytes to port 7100 of the node
//! TARGET names (an alias or an id) as fast as the node takes them, for `--seconds`, and prints
//! how many it sent. `sink` runs a node that counts what arrives on port 7100 and, after each
//! run (a second without datagrams), prints one JSON line: datagrams, bytes, and the seconds
//! from the first to the last of them.
//!
//! The node options are those of `hopwise node` (`--seed`, `--alias`, `--listen`, ...).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use hopwise::embed::ServiceSocket;
use hopwise::node_command::{self, NodeArgs};
use hopwise::runner::SocketError;
use hopwise_proto::e2e::SendError;
use tokio::time::Instant;

const LOAD_PORT: u16 = 7100;
/// Sends in flight at once: enough that the node takes a batch per wake.
const SENDERS: usize = 64;
/// A sink's run ends after this long without a datagram.
const RUN_GAP: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(about = "Overlay datagram load: a sender and a sink")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send to port 7100 of TARGET as fast as the node takes datagrams.
    Send {
        target: String,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Payload bytes per datagram.
        #[arg(long, default_value_t = 1_100)]
        size: usize,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Count what arrives on port 7100, a JSON line per run, until Ctrl-C.
    Sink {
        #[command(flatten)]
        node: NodeArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Send {
            target,
            seconds,
            size,
            node,
        } => runtime.block_on(send(node, &target, Duration::from_secs_f64(seconds), size)),
        Command::Sink { node } => runtime.block_on(sink(node)),
    }
}

async fn send(
    options: NodeArgs,
    target: &str,
    length: Duration,
    size: usize,
) -> anyhow::Result<()> {
    let node = node_command::start(options).await?;
    let socket = Arc::new(node.bind(LOAD_PORT).await?);
    // The target's alias becomes known once the node has joined.
    let joined_by = Instant::now() + Duration::from_secs(30);
    let to = loop {
        match node.resolve(target).await {
            Ok(to) => break to,
            Err(error) if Instant::now() > joined_by => bail!("{target}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let (sent, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + length;
    let payload: Arc<[u8]> = vec![0x5a; size].into();
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (socket, payload) = (socket.clone(), payload.clone());
            let (sent, refused) = (sent.clone(), refused.clone());
            tokio::spawn(async move {
                keep_sending(&socket, to, &payload, until, &sent, &refused).await
            })
        })
        .collect();
    for sender in senders {
        sender.await??;
    }
    println!(
        "{{\"sent\":{},\"refused\":{}}}",
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    drop(socket);
    node.shutdown().await;
    Ok(())
}

async fn keep_sending(
    socket: &ServiceSocket,
    to: hopwise_proto::NodeId,
    payload: &[u8],
    until: Instant,
    sent: &AtomicU64,
    refused: &AtomicU64,
) -> anyhow::Result<()> {
    while Instant::now() < until {
        match socket.send_to(to, LOAD_PORT, payload).await {
            Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
            // No session yet and its queue is full: the handshake is under way.
            Err(SocketError::Send(SendError::QueueFull)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(error) => return Err(error.into()),
        };
    }
    Ok(())
}

async fn sink(options: NodeArgs) -> anyhow::Result<()> {
    let node = node_command::start(options).await?;
    let mut socket = node.bind(LOAD_PORT).await?;
    let mut run: Option<(u64, u64, Instant, Instant)> = None;
    loop {
        let gap = tokio::time::sleep(RUN_GAP);
        tokio::select! {
            datagram = socket.recv_from() => {
                let Some(datagram) = datagram else { break };
                let now = Instant::now();
                let (datagrams, bytes, _, last) = run.get_or_insert((0, 0, now, now));
                *datagrams += 1;
                *bytes += datagram.data.len() as u64;
                *last = now;
            }
            () = gap => {
                if let Some((datagrams, bytes, first, last)) = run.take() {
                    let seconds = (last - first).as_secs_f64();
                    println!("{{\"datagrams\":{datagrams},\"bytes\":{bytes},\"seconds\":{seconds:.3}}}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.shutdown().await;
    Ok(())
}
