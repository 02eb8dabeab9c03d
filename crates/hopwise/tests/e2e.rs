//! End-to-end sessions: a malicious member relay in the simulator, a restarted peer, a
//! handshake flood from a member, and the echo example on real processes through a relay.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use hopwise_proto::e2e::Port;
use hopwise_proto::service::{DatagramSocket, ServiceHandle};
use hopwise_proto::wire::{Data, DataBody, INITIAL_TTL, Message, Packet};
use hopwise_proto::{Duration, Instant, NodeId};
use hopwise_sim::{Matrix, SimConfig, Simulation};

const PORT: Port = Port(5_000);

/// A matrix from rows of RTTs in milliseconds (0: no direct path).
fn matrix(rows: &[&[f64]]) -> Matrix {
    Matrix::from_rows(
        rows.iter()
            .map(|row| row.iter().map(|&ms| (ms > 0.0).then_some(ms)).collect())
            .collect(),
    )
    .expect("a square matrix")
}

fn at(seconds: f64) -> Instant {
    Instant::ZERO + Duration::from_micros((seconds * 1e6) as i64)
}

fn socket(sim: &mut Simulation, node: usize) -> ServiceHandle<DatagramSocket> {
    sim.register(node, PORT, DatagramSocket::new(1_024))
        .expect("running")
        .expect("a free port")
}

fn send(
    sim: &mut Simulation,
    from: (usize, ServiceHandle<DatagramSocket>),
    to: usize,
    data: &[u8],
) {
    let destination = sim.id_of(to);
    sim.with_service(from.0, from.1, |s| s.send_to(destination, PORT, data))
        .expect("running")
        .expect("a datagram that fits");
}

/// Everything node `node`'s socket received so far: sender and bytes.
fn received(
    sim: &mut Simulation,
    node: usize,
    handle: ServiceHandle<DatagramSocket>,
) -> Vec<(NodeId, Vec<u8>)> {
    sim.with_service(node, handle, |s| {
        std::iter::from_fn(|| s.recv_from())
            .map(|d| (d.from, d.data))
            .collect()
    })
    .expect("running")
}

/// An overlay data packet from `hop` carrying a sealed datagram that claims `source`.
fn sealed_packet(hop: NodeId, source: NodeId, destination: NodeId, datagram: Vec<u8>) -> Vec<u8> {
    Packet {
        sender: hop,
        message: Message::Data(Data {
            source,
            destination,
            ttl: INITIAL_TTL,
            hops: 1,
            source_zone: None,
            destination_zone: None,
            body: DataBody::Sealed(datagram),
        }),
    }
    .to_bytes()
}

/// What the relay's tamper sees: a sealed datagram, decoded from a packet it forwards.
fn sealed_in(packet: &[u8]) -> Option<(Packet, Data, Vec<u8>)> {
    let packet = Packet::parse(packet).ok()?;
    let Message::Data(data) = &packet.message else {
        return None;
    };
    let DataBody::Sealed(datagram) = &data.body else {
        return None;
    };
    let (data, datagram) = (data.clone(), datagram.clone());
    Some((packet, data, datagram))
}

fn rebuilt(packet: &Packet, data: Data, body: Vec<u8>) -> Vec<u8> {
    Packet {
        sender: packet.sender,
        message: Message::Data(Data {
            body: DataBody::Sealed(body),
            ..data
        }),
    }
    .to_bytes()
}

const DATA_TYPE: u8 = 4;
const RESPONSE_TYPE: u8 = 2;

/// Node 1 (M) is the only way from node 0 (A) to node 2 (C); node 3 (D) is another member.
/// M alters, replays, reorders, truncates and forges A's datagrams to C, changes their source
/// to D, and tries to open a session with C as A with its own key. C receives each genuine
/// datagram once and nothing else, and counts every bad one.
#[test]
fn a_malicious_relay_cannot_alter_replay_reorder_truncate_or_forge() {
    let (a, m, c, d) = (0, 1, 2, 3);
    let net = matrix(&[
        &[0.0, 20.0, 0.0, 0.0],
        &[20.0, 0.0, 20.0, 20.0],
        &[0.0, 20.0, 0.0, 30.0],
        &[0.0, 20.0, 30.0, 0.0],
    ]);
    let mut sim = Simulation::new(net, &SimConfig::default());
    sim.run_until(at(20.0));
    let (a_id, m_id, c_id, d_id) = (sim.id_of(a), sim.id_of(m), sim.id_of(c), sim.id_of(d));
    let from_a = (a, socket(&mut sim, a));
    let at_c = socket(&mut sim, c);
    send(&mut sim, from_a, c, b"hello");
    sim.run_until(at(21.0));
    assert_eq!(received(&mut sim, c, at_c), vec![(a_id, b"hello".to_vec())]);

    // M's misdeeds, one per datagram of A's to C, in this order.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Misdeed {
        Alter,
        PassAndRecord,
        PassAndReplay,
        Truncate,
        Hold,
        PassAndRelease,
        ClaimD,
        Forge,
    }
    let plan = [
        Misdeed::Alter,
        Misdeed::PassAndRecord,
        Misdeed::PassAndReplay,
        Misdeed::Truncate,
        Misdeed::Hold,
        Misdeed::PassAndRelease,
        Misdeed::ClaimD,
        Misdeed::Forge,
    ];
    let responses_to_a: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let captured = responses_to_a.clone();
    let mut step = 0;
    let (mut recorded, mut held) = (None::<Vec<u8>>, None::<Vec<u8>>);
    sim.tamper(
        m,
        Box::new(move |_now, packet| {
            let Some((parsed, data, datagram)) = sealed_in(&packet) else {
                return vec![packet];
            };
            if data.source == c_id && data.destination == a_id && datagram[0] == RESPONSE_TYPE {
                captured.borrow_mut().push(datagram);
                return vec![packet];
            }
            let from_a_to_c = data.source == a_id && data.destination == c_id;
            if !from_a_to_c || datagram[0] != DATA_TYPE || step >= plan.len() {
                return vec![packet];
            }
            let misdeed = plan[step];
            step += 1;
            match misdeed {
                Misdeed::Alter => {
                    let mut body = datagram;
                    *body.last_mut().expect("a tag") ^= 0x40;
                    vec![rebuilt(&parsed, data, body)]
                }
                Misdeed::PassAndRecord => {
                    recorded = Some(packet.clone());
                    vec![packet]
                }
                Misdeed::PassAndReplay => vec![packet, recorded.clone().expect("recorded")],
                Misdeed::Truncate => {
                    let mut body = datagram;
                    body.truncate(body.len() - 3);
                    vec![rebuilt(&parsed, data, body)]
                }
                Misdeed::Hold => {
                    held = Some(packet);
                    Vec::new()
                }
                Misdeed::PassAndRelease => vec![packet, held.take().expect("held")],
                Misdeed::ClaimD => vec![rebuilt(
                    &parsed,
                    Data {
                        source: d_id,
                        ..data
                    },
                    datagram,
                )],
                Misdeed::Forge => {
                    let mut body = vec![0x5a; datagram.len()];
                    body[0] = DATA_TYPE;
                    vec![rebuilt(&parsed, data, body)]
                }
            }
        }),
    );
    let sent: Vec<Vec<u8>> = (0..12)
        .map(|i| format!("payload {i}").into_bytes())
        .collect();
    for (i, payload) in sent.iter().enumerate() {
        send(&mut sim, from_a, c, payload);
        sim.run_until(at(21.0 + 0.1 * (i + 1) as f64));
    }
    sim.run_until(at(23.0));

    // M claims to be A with its own static key: a session C must refuse.
    let mut forger = hopwise_proto::e2e::EndToEnd::new(a_id, sim.keys(m).private_key, 99, at(23.0));
    forger
        .send(at(23.0), c_id, PORT, PORT, b"forged by m")
        .expect("queued");
    for round in 0..3 {
        while let Some((to, datagram)) = forger.poll_transmit() {
            sim.inject(m, c, sealed_packet(m_id, a_id, to, datagram));
        }
        sim.run_until(at(23.5 + f64::from(round)));
        for response in responses_to_a.borrow_mut().drain(..) {
            forger.handle_datagram(sim.now(), c_id, m_id, &response);
        }
    }
    let stats = sim.e2e_stats(c);
    let got = received(&mut sim, c, at_c);
    let got_payloads: Vec<&Vec<u8>> = got.iter().map(|(_, p)| p).collect();
    // Altered, truncated, re-sourced and forged datagrams are lost; the held one arrives late.
    let expected: HashSet<&Vec<u8>> = [1, 2, 4, 5, 8, 9, 10, 11]
        .iter()
        .map(|&i| &sent[i])
        .collect();
    assert!(got.iter().all(|(from, _)| *from == a_id), "{got:?}");
    assert_eq!(
        got_payloads.len(),
        expected.len(),
        "each genuine datagram once: {got:?}"
    );
    assert_eq!(
        got_payloads.iter().copied().collect::<HashSet<_>>(),
        expected
    );
    println!("at C: {stats:?}");
    assert!(stats.dropped_bad_tag >= 3, "altered, truncated and forged");
    assert!(stats.dropped_replayed >= 1);
    assert!(
        stats.dropped_no_session >= 1,
        "the datagram re-sourced to D"
    );
    assert!(stats.handshakes_failed >= 1, "M's key is not A's");
    assert_eq!(sim.e2e_stats(a).dropped_bad_tag, 0);
}

/// A peer that restarts (same key, no state) is re-keyed: traffic to it resumes as soon as
/// the overlay reaches it again, and is never black-holed.
#[test]
fn a_restarted_peer_is_re_keyed() {
    let (a, c) = (0, 2);
    let net = matrix(&[&[0.0, 20.0, 0.0], &[20.0, 0.0, 30.0], &[0.0, 30.0, 0.0]]);
    let mut sim = Simulation::new(net, &SimConfig::default());
    sim.run_until(at(20.0));
    let from_a = (a, socket(&mut sim, a));
    let mut at_c = socket(&mut sim, c);
    let mut delivered: Vec<(f64, Vec<u8>)> = Vec::new();
    let mut restarted_at = None;
    let mut routed_back_at = None;
    let a_id = sim.id_of(a);
    for tick in 0..400 {
        let now = 20.0 + 0.05 * f64::from(tick);
        if tick == 100 {
            sim.restart_node(c);
            sim.run_until(at(now));
            at_c = socket(&mut sim, c);
            restarted_at = Some(now);
        }
        send(&mut sim, from_a, c, format!("{tick}").as_bytes());
        sim.run_until(at(now + 0.05));
        let routed = sim.node(c).is_some_and(|n| n.route(&a_id).is_some());
        if restarted_at.is_some() && routed_back_at.is_none() && routed {
            routed_back_at = Some(now + 0.05);
        }
        for (from, payload) in received(&mut sim, c, at_c) {
            assert_eq!(from, sim.id_of(a));
            delivered.push((now, payload));
        }
    }
    let restarted_at = restarted_at.expect("restarted");
    let first_after = delivered
        .iter()
        .find(|(t, _)| *t >= restarted_at)
        .map(|(t, _)| t - restarted_at)
        .expect("deliveries resume after the restart");
    // The restarted node needs a route back before its handshake reaches the sender: its
    // init, lost while it had none, goes out again within a second (the init retry), and the
    // re-key takes a round trip.
    let routed_back = routed_back_at.expect("the restarted node rejoins") - restarted_at;
    println!(
        "the restarted node routed back after {routed_back:.2} s; deliveries resumed after \
         {first_after:.2} s"
    );
    assert!(
        first_after <= routed_back + 1.2,
        "resumed {first_after:.2} s after the restart, routed back after {routed_back:.2} s"
    );
    // Once resumed, nothing is lost: every later datagram arrives, once.
    let after: Vec<&Vec<u8>> = delivered
        .iter()
        .filter(|(t, _)| *t >= restarted_at + first_after)
        .map(|(_, p)| p)
        .collect();
    let sent_after = ((restarted_at + first_after - 20.0) / 0.05).round() as usize;
    assert!(
        after.len() + 2 >= 400 - sent_after,
        "{} of {}",
        after.len(),
        400 - sent_after
    );
    assert_eq!(after.iter().collect::<HashSet<_>>().len(), after.len());
    let at_a = sim.e2e_stats(a);
    assert!(at_a.rekeys >= 1, "{at_a:?}");
    assert!(
        sim.e2e_stats(c).dropped_no_session >= 1,
        "the old keys were refused"
    );
}

/// A member floods a node with inits under made-up ids: the node's handshake table stays
/// bounded, nearly all are refused, and a node reaching it through another neighbour still
/// opens a session and delivers.
#[test]
fn handshake_tables_stay_bounded_under_a_flood_from_a_member() {
    use rand::{Rng, RngExt, SeedableRng};
    let (a, m, c) = (0, 1, 2);
    let net = matrix(&[&[0.0, 20.0, 20.0], &[20.0, 0.0, 20.0], &[20.0, 20.0, 0.0]]);
    let mut sim = Simulation::new(net, &SimConfig::default());
    sim.run_until(at(20.0));
    let (m_id, c_id) = (sim.id_of(m), sim.id_of(c));
    let from_a = (a, socket(&mut sim, a));
    let at_c = socket(&mut sim, c);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut flooded = 0u64;
    let mut largest_table = 0;
    let mut got = Vec::new();
    for tick in 0..50 {
        // 2,000 inits per 100 ms: 20,000 per second.
        for _ in 0..2_000 {
            let mut init = vec![1u8; 37];
            rng.fill_bytes(&mut init[1..]);
            let claimed = NodeId::from_bytes(rng.random());
            sim.inject(m, c, sealed_packet(m_id, claimed, c_id, init));
            flooded += 1;
        }
        if tick == 10 {
            send(&mut sim, from_a, c, b"through the flood");
        }
        sim.run_until(at(20.0 + 0.1 * f64::from(tick + 1)));
        largest_table = largest_table.max(sim.handshakes_in_progress(c));
        got.extend(received(&mut sim, c, at_c));
    }
    let stats = sim.e2e_stats(c);
    println!(
        "{flooded} inits flooded, {} refused, largest handshake table {largest_table}",
        stats.handshakes_refused
    );
    assert!(largest_table <= 64 + 1, "{largest_table} handshakes held");
    assert!(stats.handshakes_refused >= flooded * 9 / 10);
    assert_eq!(got, vec![(sim.id_of(a), b"through the flood".to_vec())]);
}

/// A datagram for a port no service holds is counted and dropped; the service on the other
/// port sees nothing of it.
#[test]
fn datagrams_for_a_port_nobody_listens_on_are_counted() {
    let net = matrix(&[&[0.0, 20.0], &[20.0, 0.0]]);
    let mut sim = Simulation::new(net, &SimConfig::default());
    sim.run_until(at(10.0));
    let from_a = (0, socket(&mut sim, 0));
    let at_b = socket(&mut sim, 1);
    let b = sim.id_of(1);
    sim.with_service(from_a.0, from_a.1, |s| s.send_to(b, Port(6_000), b"nobody"))
        .expect("running")
        .expect("fits");
    send(&mut sim, from_a, 1, b"somebody");
    sim.run_until(at(11.0));
    assert_eq!(
        received(&mut sim, 1, at_b),
        vec![(sim.id_of(0), b"somebody".to_vec())]
    );
    assert_eq!(sim.e2e_stats(1).dropped_unknown_port, 1);
}

/// The example program. `cargo test` builds it with the tests; a run of this target alone
/// (`--test e2e`) does not, so a missing one is built here. (After changing the library, run
/// `cargo build --examples` before `--test e2e` alone: a stale example is not noticed.)
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "hopwise", "--example", name])
            .status()
            .expect("cargo");
        assert!(built.success(), "building the {name} example");
    }
    path
}

/// The UDP payloads of a pcap file written by `hopwise node --capture` (IPv4 records).
fn captured_packets(pcap: &[u8]) -> Vec<&[u8]> {
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let record = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        if record.len() >= 28 && record[0] == 0x45 {
            packets.push(&record[28..]);
        }
        at += 16 + len;
    }
    packets
}

/// The echo example (a program embedding a node) answers another instance of itself through
/// a relay, a real `hopwise node` process; the relay's capture of what it forwarded, decrypted
/// hop by hop, holds the datagrams but not their plaintext.
#[tokio::test]
async fn the_echo_example_answers_through_a_relay_that_sees_no_plaintext() {
    use hopwise::testnet::Testnet;
    use std::time::Duration as StdDuration;

    let echo = example("echo");
    let dir = std::env::temp_dir().join(format!("hopwise-e2e-echo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The relay is 10 ms from each end; the ends cannot reach each other directly.
    let net_matrix = matrix(&[&[0.0, 20.0, 20.0], &[20.0, 0.0, 0.0], &[20.0, 0.0, 0.0]]);
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_hopwise"));
    let mut net = Testnet::create(binary, &net_matrix, &dir, &[9; 32], 6).expect("create");
    let (relay, server, client) = (0, 1, 2);
    let capture = dir.join("relay.pcap");
    net.members[relay].options = vec!["--capture".into(), capture.display().to_string()];
    net.members[server].program = Some((echo.clone(), vec!["serve".into()]));
    net.launch(relay).expect("relay");
    net.launch(server).expect("server");
    net.wait_for_routes_among(&[relay, server], StdDuration::from_secs(30))
        .await
        .expect("the server joins");
    let relayed_before = net.status(relay).await.expect("status").data_relayed;

    let server_id = net.members[server].id.to_string();
    let message = "only the two ends may read this";
    net.members[client].program =
        Some((echo, vec!["send".into(), server_id.clone(), message.into()]));
    net.launch(client).expect("client");
    let exit = net.wait(client, StdDuration::from_secs(60)).await;
    let log = net.log(client);
    println!("client: {log}");
    assert!(
        exit.is_some_and(|s| s.success()),
        "the client failed: {log}"
    );
    assert!(
        log.contains(&format!("echo from {server_id}: {message}")),
        "{log}"
    );

    let relayed = net.status(relay).await.expect("status").data_relayed - relayed_before;
    let server_status = net
        .status(server)
        .await
        .expect("the example serves the API");
    let e2e = &server_status.end_to_end;
    println!("relay forwarded {relayed} packets; server end to end: {e2e:?}");
    assert!(
        relayed >= 4,
        "the handshake and both datagrams crossed the relay"
    );
    assert!(e2e.payloads_received >= 1 && e2e.sessions >= 1);
    assert_eq!(e2e.dropped_bad_tag + e2e.handshakes_failed, 0);

    net.stop().await;
    let pcap = std::fs::read(&capture).expect("the relay wrote its capture");
    let packets = captured_packets(&pcap);
    let (client_id, server_id) = (net.members[client].id, net.members[server].id);
    let sealed_between_ends = packets
        .iter()
        .filter_map(|p| Packet::parse(p).ok())
        .filter(|p| {
            matches!(&p.message, Message::Data(d)
                if matches!(d.body, DataBody::Sealed(_))
                    && [d.source, d.destination].contains(&client_id)
                    && [d.source, d.destination].contains(&server_id))
        })
        .count();
    println!(
        "capture: {} packets, {sealed_between_ends} sealed datagrams between the ends",
        packets.len()
    );
    assert!(sealed_between_ends >= 4);
    assert!(
        !pcap.windows(message.len()).any(|w| w == message.as_bytes()),
        "the plaintext is in the relay's capture"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A measurement, not a check (`cargo test --release -p hopwise --test e2e -- --ignored
/// --nocapture`): on real processes, the round trip of an end-to-end echo against a trace
/// (plain overlay packets) over the same relayed path, 10 ms each hop. The echo also crosses
/// the programs' own sockets and tasks at both ends.
#[tokio::test]
#[ignore = "a measurement; run it in a release build"]
async fn echo_round_trips_against_plain_traces() {
    use hopwise::testnet::Testnet;
    use std::time::Duration as StdDuration;

    let echo = example("echo");
    let dir = std::env::temp_dir().join(format!("hopwise-e2e-rtt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 0 relays; 1 serves; 2 traces and 3 echoes, side by side (0.2 ms apart).
    let net_matrix = matrix(&[
        &[0.0, 20.0, 20.0, 20.0],
        &[20.0, 0.0, 0.0, 0.0],
        &[20.0, 0.0, 0.0, 0.2],
        &[20.0, 0.0, 0.2, 0.0],
    ]);
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_hopwise"));
    let mut net = Testnet::create(binary, &net_matrix, &dir, &[9; 32], 7).expect("create");
    let (relay, server, tracer, client) = (0, 1, 2, 3);
    net.members[server].program = Some((echo.clone(), vec!["serve".into()]));
    for member in [relay, server, tracer] {
        net.launch(member).expect("launch");
    }
    net.wait_for_routes_among(&[relay, server, tracer], StdDuration::from_secs(30))
        .await
        .expect("routes");
    tokio::time::sleep(StdDuration::from_secs(5)).await;
    let server_id = net.members[server].id.to_string();
    net.members[client].program =
        Some((echo, vec!["send".into(), server_id.clone(), "timed".into()]));
    let (mut traces, mut echoes) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        if let Ok(report) = net.trace(tracer, server).await {
            traces.push(report.rtt_ms);
        }
        let before = net.log(client).len();
        net.launch(client).expect("client");
        net.wait(client, StdDuration::from_secs(60)).await;
        let printed = net.log(client)[before..].to_string();
        let rtt = printed
            .rsplit_once('(')
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok());
        echoes.extend(rtt);
    }
    net.stop().await;
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (trace, echo) = (median(&mut traces), median(&mut echoes));
    println!(
        "{} traces, median {trace:.2} ms; {} echoes, median {echo:.2} ms; echo / trace {:.4}",
        traces.len(),
        echoes.len(),
        echo / trace
    );
    let _ = std::fs::remove_dir_all(&dir);
}
