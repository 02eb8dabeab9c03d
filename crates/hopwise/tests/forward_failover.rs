//! A relay killed during a TCP transfer through a forward (real processes, subnet 127.12):
//! the transfer completes intact, and the longest wait for data while the overlay routes
//! around the dead relay is at most 2 s. It has a binary of its own, so that no other test's
//! load skews the stall it measures.

mod common;

use std::time::{Duration, Instant};

use hopwise::api::{Request, Response};
use hopwise::client::call;
use hopwise::testnet::Testnet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{binary, scratch, two_relays};

const NETWORK_KEY: [u8; 32] = [12; 32];
const SERVER: usize = 1;
const CLIENT: usize = 2;
const TARGET: &str = "127.12.9.1:7000";
const LOCAL: &str = "127.12.8.1:7000";
/// The transfer: a chunk every 10 ms (about 52 Mbit/s) for 10 s.
const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 1_000;

/// Byte `position` of the transfer: a function of the position alone, so any split of the
/// stream into reads checks the same way.
fn byte_at(position: usize) -> u8 {
    ((position as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Sends the transfer's chunks, paced, to the one connection it accepts.
async fn paced_source(listener: TcpListener) -> std::io::Result<()> {
    let (mut stream, _) = listener.accept().await?;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for n in 0..CHUNKS {
        ticks.tick().await;
        let chunk: Vec<u8> = (n * CHUNK..(n + 1) * CHUNK).map(byte_at).collect();
        stream.write_all(&chunk).await?;
    }
    stream.shutdown().await
}

#[tokio::test]
async fn a_tcp_transfer_survives_the_loss_of_its_relay() {
    let dir = scratch("forward-failover");
    let mut net = Testnet::create(binary(), &two_relays(), &dir, &NETWORK_KEY, 12).expect("create");
    for i in 0..net.members.len() {
        net.launch(i).expect("launch");
    }
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("every node routes to every other");
    let source = TcpListener::bind(TARGET).await.expect("bind the source");
    let source = tokio::spawn(paced_source(source));
    let exposed = call(
        net.members[SERVER].api,
        &Request::Expose {
            kind: "tcp".into(),
            name: "stream".into(),
            target: TARGET.into(),
        },
    )
    .await
    .expect("expose");
    assert!(matches!(exposed, Response::Exposed(_)), "{exposed:?}");
    let forwarded = call(
        net.members[CLIENT].api,
        &Request::Forward {
            kind: "tcp".into(),
            listen: LOCAL.into(),
            service: format!("{}/stream", net.members[SERVER].id),
        },
    )
    .await
    .expect("forward");
    assert!(
        matches!(forwarded, Response::Forwarding(_)),
        "{forwarded:?}"
    );

    let trace = net.trace(CLIENT, SERVER).await.expect("a trace");
    let relay = net
        .index_of(&trace.outbound[1].node)
        .expect("the path crosses a member");
    assert_ne!(relay, SERVER, "the client has no direct path to the server");

    // The transfer runs on its own task, which notes the longest wait between two reads.
    let reader = tokio::spawn(async move {
        let mut stream = TcpStream::connect(LOCAL).await.expect("connect");
        let (mut received, mut buffer) = (0, vec![0; CHUNK]);
        let started = Instant::now();
        let (mut last_data, mut longest_wait) = (started, Duration::ZERO);
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .expect("data within 10 s")
                .expect("the connection holds");
            if read == 0 {
                return (received, longest_wait, started.elapsed());
            }
            let now = Instant::now();
            longest_wait = longest_wait.max(now - last_data);
            last_data = now;
            let wrong = (0..read).find(|&i| buffer[i] != byte_at(received + i));
            assert_eq!(wrong.map(|i| received + i), None, "a wrong byte");
            received += read;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The relay dies under a flow of traces, which tells how long the overlay took to route
    // around it.
    let overlay_gap = match net.kill_under_flow(CLIENT, SERVER, relay).await {
        Ok((gap, _)) => gap,
        Err(error) => {
            for member in [CLIENT, SERVER] {
                let routes = call(net.members[member].api, &Request::Routes).await;
                println!("routes of {}: {routes:?}", net.members[member].name);
            }
            panic!("the overlay did not route around the dead relay: {error}");
        }
    };
    let (received, longest_wait, took) = reader.await.expect("the transfer");
    source
        .await
        .expect("source task")
        .expect("the source sent it all");
    let after = net.trace(CLIENT, SERVER).await.expect("a trace after");
    println!(
        "a transfer of {} MB through relay {} (killed 3 s in) finished in {:.1} s, intact; \
         longest wait for data {:.0} ms; the overlay's own delivery gap {:.0} ms; the path \
         now crosses {}",
        received / 1_000_000,
        net.members[relay].name,
        took.as_secs_f64(),
        longest_wait.as_secs_f64() * 1e3,
        overlay_gap.as_secs_f64() * 1e3,
        after.outbound[1].node
    );
    assert_eq!(received, CHUNK * CHUNKS);
    assert!(
        longest_wait <= Duration::from_secs(2),
        "the transfer stalled for {longest_wait:?}"
    );
    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
