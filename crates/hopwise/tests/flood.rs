//! A flood of bad datagrams against a real `hopwise node` in a testbed of five processes.
//! It has a test binary of its own: the flood saturates both cores for ten seconds, which
//! would skew the latency-sensitive testbed tests if they ran beside it.

mod common;

use std::time::Duration;

use hopwise::api::{Request, Response};
use hopwise::client::call;
use hopwise::testnet::Testnet;
use tokio::task::JoinSet;

use common::{binary, cities, scratch};

const NETWORK_KEY: [u8; 32] = [7; 32];

/// Resident memory of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Datagrams per second of the flood, and for how long.
const FLOOD_RATE: usize = 20_000;
const FLOOD_SECONDS: usize = 10;

/// Sends the flood from the calling thread: random datagrams of 0-1500 random bytes from a
/// stranger's socket, and truncated or replayed copies of real recorded packets from the
/// address that holds a real session with the target. Returns the datagrams sent.
fn flood(
    target: std::net::SocketAddr,
    stranger: &std::net::UdpSocket,
    session_peer: &std::net::UdpSocket,
    recorded: &[Vec<u8>],
) -> usize {
    use rand::{Rng, RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let batch = FLOOD_RATE / 100;
    let start = std::time::Instant::now();
    let mut sent = 0;
    for tick in 0..FLOOD_SECONDS * 100 {
        for _ in 0..batch {
            let kind = rng.random_range(0..8);
            let copy = &recorded[rng.random_range(0..recorded.len())];
            let result = match kind {
                0 => session_peer.send_to(copy, target),
                1 => session_peer.send_to(&copy[..rng.random_range(0..copy.len())], target),
                _ => {
                    let mut datagram = vec![0; rng.random_range(0..=1500)];
                    rng.fill_bytes(&mut datagram);
                    stranger.send_to(&datagram, target)
                }
            };
            sent += usize::from(result.is_ok());
        }
        let due = start + Duration::from_millis(10 * (tick as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    }
    sent
}

#[tokio::test]
async fn a_flood_of_bad_datagrams_is_counted_and_the_network_keeps_working() {
    let matrix = cities(5);
    let dir = scratch("testbed-flood");
    let mut net = Testnet::create(binary(), &matrix, &dir, &NETWORK_KEY, 4).expect("create");
    let (target, watched) = (0, 4);
    // The watched node joins through a recording relay in front of the target, so the test
    // sees real datagrams of a real session.
    let proxy = std::net::UdpSocket::bind("127.4.1.1:4000").expect("bind proxy");
    proxy.set_nonblocking(true).expect("nonblocking");
    let session_peer = proxy.try_clone().expect("clone");
    let proxy = tokio::net::UdpSocket::from_std(proxy).expect("tokio socket");
    net.members[watched].seed = Some(proxy.local_addr().expect("addr"));
    let (target_addr, watched_addr) = (net.members[target].listen, net.members[watched].listen);
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let recorder = recorded.clone();
    let relay = tokio::spawn(async move {
        let mut buf = vec![0; 2048];
        loop {
            let Ok((len, from)) = proxy.recv_from(&mut buf).await else {
                continue;
            };
            let to = if from == watched_addr {
                target_addr
            } else {
                watched_addr
            };
            recorder.lock().expect("recorder").push(buf[..len].to_vec());
            let _ = proxy.send_to(&buf[..len], to).await;
        }
    });
    for i in 0..matrix.len() {
        net.launch(i).expect("launch");
    }
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("every node routes to every other");
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The capture: no datagram shows a packet header or any node's id in the clear.
    let captured = recorded.lock().expect("recorder").clone();
    assert!(
        captured.len() >= 10,
        "{} datagrams recorded",
        captured.len()
    );
    let ids: Vec<[u8; 8]> = net.members.iter().map(|m| *m.id.as_bytes()).collect();
    for datagram in &captured {
        assert!(!datagram.starts_with(&[hopwise_proto::wire::MAGIC, hopwise_proto::wire::VERSION]));
        for id in &ids {
            assert!(
                !datagram.windows(8).any(|w| w == id),
                "a node id in the clear"
            );
        }
    }

    let pid = net.pid(target).expect("running");
    let idle_kib = resident_kib(pid);
    let before = net.status(target).await.expect("status");
    let stranger = std::net::UdpSocket::bind("127.4.9.9:0").expect("bind");
    let flooding = tokio::task::spawn_blocking(move || {
        flood(target_addr, &stranger, &session_peer, &captured)
    });
    // Meanwhile the other nodes trace each other, and the target's memory is watched. A trace
    // may cross the target, whose socket the flood saturates: the kernel drops what does not
    // fit its buffer, genuine packets among them, so a trace can be lost. What must hold: the
    // traces keep being answered through the flood (most of them, and some in every second of
    // it), and all of them afterwards.
    let others = [(1, 2), (2, 3), (3, 1), (1, 3)];
    let flood_started = std::time::Instant::now();
    let flooding = std::sync::Arc::new(flooding);
    // Each pair traces in a loop of its own, so that one lost trace (3 s to time out) does not
    // hold up the others.
    let mut tracers = JoinSet::new();
    for &(from, to) in &others {
        let api = net.members[from].api;
        let request = Request::Trace {
            node: net.members[to].id.to_string(),
        };
        let flooding = flooding.clone();
        tracers.spawn(async move {
            let (mut answered_at, mut asked) = (Vec::new(), 0);
            while !flooding.is_finished() {
                asked += 1;
                if let Ok(Response::Trace(_)) = call(api, &request).await {
                    answered_at.push(flood_started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (answered_at, asked)
        });
    }
    let mut peak_kib = idle_kib;
    while !flooding.is_finished() {
        peak_kib = peak_kib.max(resident_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The flood's own length: a tracer still waiting out a lost trace's timeout when the
    // flood ends must not add seconds in which the others, already stopped, answer nothing.
    let flood_lasted = flood_started.elapsed();
    let (mut answered_at, mut asked) = (Vec::new(), 0);
    while let Some(done) = tracers.join_next().await {
        let (at, count) = done.expect("tracer");
        answered_at.extend(at);
        asked += count;
    }
    let flooding = std::sync::Arc::into_inner(flooding).expect("the tracers are done");
    let sent = flooding.await.expect("flood");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut answered_after = 0;
    for _ in 0..5 {
        for &(from, to) in &others {
            answered_after += usize::from(net.trace(from, to).await.is_ok());
        }
    }
    let status = net.status(target).await.expect("the target still answers");
    let counted = (status.dropped_insecure - before.dropped_insecure)
        + (status.dropped_malformed - before.dropped_malformed);
    answered_at.sort();
    let answered = answered_at.len();
    let silent_seconds = (0..flood_lasted.as_secs())
        .filter(|&s| {
            !answered_at
                .iter()
                .any(|at| at.as_secs() == s || at.as_secs() == s + 1)
        })
        .collect::<Vec<_>>();
    println!(
        "flood: {sent} datagrams sent, {counted} counted as dropped; resident memory idle \
         {idle_kib} KiB, peak {peak_kib} KiB; {answered} of {asked} traces between other nodes \
         answered during the flood, {answered_after} of 20 after it"
    );
    assert!(
        net.is_running(target) && resident_kib(pid) > 0,
        "the target survived"
    );
    assert!(
        peak_kib < 2 * idle_kib,
        "memory {idle_kib} -> {peak_kib} KiB"
    );
    assert!(
        answered * 10 >= asked * 9,
        "{answered} of {asked} traces answered during the flood"
    );
    assert!(
        silent_seconds.is_empty(),
        "two seconds of the flood without an answer from second {silent_seconds:?} of \
         {flood_lasted:?}; answers at {answered_at:?}"
    );
    assert_eq!(answered_after, 20, "traces after the flood");
    assert!(counted >= sent as u64 / 2, "{counted} of {sent} counted");

    // The relay carries the watched node's link to the target: it stops only with the
    // network, since stopping it earlier cuts that link, and for the seconds until the loss is
    // detected, the traces whose routes cross it.
    relay.abort();
    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
