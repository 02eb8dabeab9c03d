//! Publish/subscribe at 1,000 messages a second on ten real `hopwise node` processes
//! (127.16.0.0/16, the bundled cities' latencies): `hopwise pub` fed from standard input on one
//! node, `hopwise sub` on the nine others. A relay on a subscriber's path to the publisher is
//! killed mid-stream; every subscriber that remains gets every message in order, what the dead
//! relay was carrying arrives afterwards, and the stall is printed and held to one second (see
//! docs/ARCHITECTURE.md for what it takes). A binary of its
//! own, so that its load cannot skew the latency checks of the other real-node tests.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use hopwise::api::Response;
use hopwise::testnet::Testnet;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use common::{binary, cities, scratch};

const NETWORK_KEY: [u8; 32] = [16; 32];
const TOPIC: &str = "ticks";
const RATE: u64 = 1_000;
const MESSAGES: u64 = 10 * RATE;
/// Published messages are written to `hopwise pub` this many at a time.
const BATCH: u64 = 10;

/// One message as a subscriber's `hopwise sub --json` printed it, and when.
struct Arrival {
    at: Instant,
    seq: u64,
    text: String,
}

/// Starts `hopwise sub --json` on member `who` and hands every message line to `arrivals`;
/// returns once the subscription is confirmed.
async fn subscribe(
    net: &Testnet,
    who: usize,
    arrivals: mpsc::UnboundedSender<(usize, Arrival)>,
) -> Child {
    let api = net.members[who].api.to_string();
    let mut child = Command::new(binary())
        .args(["sub", TOPIC, "--json", "--api", &api])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hopwise sub starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("a first line");
    assert!(
        matches!(
            serde_json::from_str(&first),
            Ok(Response::Subscribed { .. })
        ),
        "{first}"
    );
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let at = Instant::now();
            match serde_json::from_str::<Response>(&line) {
                Ok(Response::Message(message)) => {
                    let text = String::from_utf8(message.bytes()).unwrap();
                    let arrival = Arrival {
                        at,
                        seq: message.seq,
                        text,
                    };
                    let _ = arrivals.send((who, arrival));
                }
                // Passed on as an arrival of no message, which the checks refuse.
                Ok(Response::Lost { count, .. }) => {
                    let arrival = Arrival {
                        at,
                        seq: 0,
                        text: format!("{count} lost"),
                    };
                    let _ = arrivals.send((who, arrival));
                }
                other => panic!("subscriber {who} printed {other:?}"),
            }
        }
    });
    child
}

/// The subscribers whose overlay path to `publisher` crosses a relay, with that relay.
async fn relayed_subscribers(net: &Testnet, publisher: usize) -> Vec<(usize, usize)> {
    let mut relayed = Vec::new();
    for subscriber in (0..net.members.len()).filter(|&i| i != publisher && net.is_running(i)) {
        let Ok(report) = net.trace(subscriber, publisher).await else {
            continue;
        };
        if report.outbound.len() > 2
            && let Some(relay) = net.index_of(&report.outbound[1].node)
        {
            relayed.push((subscriber, relay));
        }
    }
    relayed
}

/// The longest time between two messages of `arrivals` (in arrival order) around `instant`:
/// from the last one before it to the first after it, and every gap after that up to `within`.
fn stall_after(arrivals: &[Arrival], instant: Instant, within: Duration) -> Duration {
    arrivals
        .windows(2)
        .filter(|pair| pair[1].at >= instant && pair[0].at <= instant + within)
        .map(|pair| pair[1].at - pair[0].at)
        .max()
        .unwrap_or(Duration::ZERO)
}

#[tokio::test]
async fn nine_subscribers_get_1000_messages_a_second_in_order_through_a_relay_kill() {
    let matrix = cities(10);
    let dir = scratch("pubsub-rate");
    let mut net = Testnet::start(binary(), &matrix, &dir, &NETWORK_KEY, 16).expect("start");
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("routes");

    // The publisher: the member with the most subscribers reaching it through relays.
    let mut publisher = 0;
    let mut most = 0;
    for candidate in 0..net.members.len() {
        let relayed = relayed_subscribers(&net, candidate).await.len();
        if relayed > most {
            (publisher, most) = (candidate, relayed);
        }
    }
    assert!(most > 0, "some path crosses a relay");
    let subscribers: Vec<usize> = (0..net.members.len()).filter(|&i| i != publisher).collect();
    let (arrivals_in, mut arrivals_out) = mpsc::unbounded_channel();
    let mut sub_processes = Vec::new();
    for &who in &subscribers {
        sub_processes.push(subscribe(&net, who, arrivals_in.clone()).await);
    }
    // Every subscriber's interest reaches the topic's rendezvous before the publisher starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let api = net.members[publisher].api.to_string();
    let mut publishing = Command::new(binary())
        .args(["pub", TOPIC, "--api", &api])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hopwise pub starts");
    let mut stdin = publishing.stdin.take().unwrap();
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(1_000 * BATCH / RATE));
        for first in (1..=MESSAGES).step_by(BATCH as usize) {
            ticks.tick().await;
            let lines: String = (first..first + BATCH)
                .map(|seq| format!("{seq}\n"))
                .collect();
            stdin.write_all(lines.as_bytes()).await.unwrap();
        }
    });

    // Halfway, kill a relay that carries the tree to some subscriber.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let relayed = relayed_subscribers(&net, publisher).await;
    let &(_, relay) = relayed
        .first()
        .expect("a subscriber's path to the publisher crosses a relay mid-stream");
    let downstream: Vec<usize> = relayed
        .iter()
        .filter(|&&(_, r)| r == relay)
        .map(|&(s, _)| s)
        .collect();
    net.kill(relay).await;
    let killed = Instant::now();
    println!(
        "killed relay {} of subscribers {downstream:?} ({:?} into the stream)",
        matrix.names()[relay],
        killed - started
    );

    feeder.await.unwrap();
    let status = publishing.wait().await.expect("hopwise pub exits");
    assert!(status.success(), "hopwise pub: {status}");
    let published_in = started.elapsed();
    println!("{MESSAGES} messages published in {published_in:?}");

    // Every remaining subscriber gets all of them, in order.
    let remaining: Vec<usize> = subscribers
        .iter()
        .copied()
        .filter(|&i| i != relay)
        .collect();
    let mut got: HashMap<usize, Vec<Arrival>> = HashMap::new();
    let complete = |got: &HashMap<usize, Vec<Arrival>>| {
        remaining
            .iter()
            .all(|who| got.get(who).map_or(0, Vec::len) as u64 >= MESSAGES)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !complete(&got) {
        match tokio::time::timeout_at(deadline, arrivals_out.recv()).await {
            Ok(Some((who, arrival))) => got.entry(who).or_default().push(arrival),
            _ => break,
        }
    }
    // What each node's service counted, for whoever reads a failure.
    for who in 0..net.members.len() {
        if let Ok(status) = net.status(who).await {
            let counters = status.pubsub;
            println!(
                "{}: delivered {} forwarded {} nacks {} repairs {} moves {} lost {} duplicates {}",
                matrix.names()[who],
                counters.delivered,
                counters.forwarded,
                counters.nacks_sent,
                counters.repairs_sent,
                counters.upstream_moves,
                counters.lost,
                counters.duplicates,
            );
        }
    }
    for &who in &remaining {
        let arrivals = got.get(&who).map(Vec::as_slice).unwrap_or_default();
        let lost: Vec<&str> = arrivals
            .iter()
            .filter(|a| a.seq == 0)
            .map(|a| a.text.as_str())
            .collect();
        assert!(lost.is_empty(), "subscriber {who}: {lost:?}");
        let seqs: Vec<u64> = arrivals.iter().map(|a| a.seq).collect();
        let want: Vec<u64> = (1..=MESSAGES).collect();
        assert!(
            seqs == want,
            "subscriber {who} got {} messages, first out of place at {:?}",
            seqs.len(),
            seqs.iter().zip(&want).position(|(a, b)| a != b)
        );
        assert!(arrivals.iter().all(|a| a.text == a.seq.to_string()));
    }
    // Those below the dead relay stalled a second at most.
    for &who in &downstream {
        let stall = stall_after(&got[&who], killed, Duration::from_secs(3));
        println!(
            "subscriber {} stalled {stall:?} after the kill",
            matrix.names()[who]
        );
        assert!(
            stall <= Duration::from_secs(1),
            "subscriber {who}: {stall:?}"
        );
    }
    drop(sub_processes);
    net.stop().await;
    // Kept when the test fails, for the nodes' logs.
    let _ = std::fs::remove_dir_all(&dir);
}
