//! A raw user-space UDP forwarder: the baseline `scripts/forward-bench.sh` races a hopwise
//! relay against. It batches as a node does (recvmmsg and GRO in, GSO out, through the
//! runner's own batch module) but has no encryption and no routing: every datagram from a
//! client goes to TARGET, and every datagram from TARGET goes back to the last client.
//!
//! Every second in which it forwarded something it prints a JSON line with what it has forwarded
//! from clients to TARGET so far: `{"forwarded":DATAGRAMS,"bytes":BYTES}`.
//!
//! Usage: `raw_forwarder LISTEN TARGET`

use std::net::SocketAddr;
use std::time::Duration;

use hopwise::runner::batch::{BatchReceiver, BatchSender};
use hopwise_proto::Transmit;
use tokio::net::UdpSocket;

/// Receive batches handled before the outbox is sent, as in the runner.
const BATCHES_PER_WAKE: usize = 16;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(target)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: raw_forwarder LISTEN TARGET");
    };
    let (listen, target): (SocketAddr, SocketAddr) = (listen.parse()?, target.parse()?);
    let socket = UdpSocket::bind(listen).await?;
    let (mut receiver, mut sender) = (BatchReceiver::new(&socket)?, BatchSender::new(&socket)?);
    let mut client: Option<SocketAddr> = None;
    let mut outbox = Vec::new();
    // Buffers of sent datagrams, used again, as a node does.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let (mut forwarded, mut bytes, mut reported) = (0u64, 0u64, 0u64);
    let mut report = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            readable = socket.readable() => readable?,
            _ = report.tick() => {
                if forwarded != reported {
                    println!("{{\"forwarded\":{forwarded},\"bytes\":{bytes}}}");
                    reported = forwarded;
                }
                continue;
            }
        }
        for _ in 0..BATCHES_PER_WAKE {
            let received = receiver.receive(&socket, |from, data| {
                let destination = if from == target {
                    match client {
                        Some(client) => client,
                        None => return,
                    }
                } else {
                    client = Some(from);
                    forwarded += 1;
                    bytes += data.len() as u64;
                    target
                };
                let mut contents = spare.pop().unwrap_or_default();
                contents.clear();
                contents.extend_from_slice(data);
                outbox.push(Transmit {
                    destination,
                    contents,
                });
            });
            if received.is_err() {
                break;
            }
        }
        sender.send_all(&socket, &mut outbox, |to| to, |buffer| spare.push(buffer));
    }
}
