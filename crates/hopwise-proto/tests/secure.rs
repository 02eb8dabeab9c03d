//! The secure layer driven datagram by datagram: members handshake and talk, strangers and
//! forgers get nowhere, and no input makes it panic.

use std::net::SocketAddr;

use hopwise_proto::secure::{Keys, SecureNode, crypto};
use hopwise_proto::{Config, Duration, Event, Input, Instant, NodeId, Output};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const NETWORK_KEY: [u8; 32] = [42; 32];

fn keys(seed: u64, network_key: [u8; 32]) -> Keys {
    let (private_key, public_key) = crypto::generate_keypair(&mut ChaCha8Rng::seed_from_u64(seed));
    Keys {
        private_key,
        public_key,
        network_key,
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 4000))
}

/// A member at `addr(n)` that joins through `addr(1)` (unless it is node 1).
fn member(n: u8, network_key: [u8; 32]) -> SecureNode {
    let mut config = Config::new(NodeId::from_bytes([0; 8]), u64::from(n));
    if n != 1 {
        config.bootstrap = vec![addr(1)];
    }
    SecureNode::new(config, &keys(u64::from(n), network_key), Instant::ZERO)
}

/// A tiny lossless network with a fixed one-way delay, routing every transmit by address.
struct Wire {
    nodes: Vec<(SocketAddr, SecureNode)>,
    in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    events: Vec<(SocketAddr, Event)>,
    /// Every datagram that crossed the wire.
    captured: Vec<Vec<u8>>,
    /// Pairs of addresses the wire does not carry between (either way).
    blocked: Vec<(SocketAddr, SocketAddr)>,
}

const ONE_WAY: Duration = Duration::from_millis(10);

impl Wire {
    fn new(nodes: Vec<(SocketAddr, SecureNode)>) -> Self {
        Self {
            nodes,
            in_flight: Vec::new(),
            events: Vec::new(),
            captured: Vec::new(),
            blocked: Vec::new(),
        }
    }

    fn drain(&mut self, index: usize, now: Instant) {
        let (from, node) = &mut self.nodes[index];
        loop {
            match node.poll_output() {
                Output::Transmit(t) => {
                    self.captured.push(t.contents.clone());
                    self.in_flight
                        .push((now + ONE_WAY, *from, t.destination, t.contents));
                }
                Output::Event(event) => self.events.push((*from, event)),
                Output::Timeout(_) => return,
            }
        }
    }

    /// Runs every node and datagram in 1 ms steps until `until`.
    fn run(&mut self, from: Instant, until: Instant) {
        let mut now = from;
        while now <= until {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|d| d.0 <= now);
            self.in_flight = later;
            for (_, source, destination, data) in due {
                if self.blocked.iter().any(|&(a, b)| {
                    (a, b) == (source, destination) || (b, a) == (source, destination)
                }) {
                    continue;
                }
                if let Some(index) = self.nodes.iter().position(|(a, _)| *a == destination) {
                    let input = Input::Datagram {
                        now,
                        from: source,
                        data: &data,
                    };
                    self.nodes[index].1.handle_input(input);
                    self.drain(index, now);
                }
            }
            for index in 0..self.nodes.len() {
                if self.nodes[index].1.poll_timeout() <= now {
                    self.nodes[index].1.handle_input(Input::Timeout(now));
                    self.drain(index, now);
                }
            }
            now += Duration::from_millis(1);
        }
    }

    fn node(&self, index: usize) -> &SecureNode {
        &self.nodes[index].1
    }
}

fn secs(s: i64) -> Instant {
    Instant::ZERO + Duration::from_secs(s)
}

#[test]
fn members_handshake_measure_and_route_with_nothing_in_the_clear() {
    let mut wire = Wire::new((1..=3).map(|n| (addr(n), member(n, NETWORK_KEY))).collect());
    wire.run(Instant::ZERO, secs(10));
    for index in 0..3 {
        let node = wire.node(index).node();
        assert_eq!(node.known_nodes().len(), 2, "node {index} knows the others");
        assert!(node.route_count() >= 2, "node {index} routes to the others");
        assert!(wire.node(index).secure_stats().handshakes_completed >= 2);
        assert_eq!(wire.node(index).secure_stats().dropped(), 0);
    }
    let ids: Vec<[u8; 8]> = (0..3)
        .map(|i| *wire.node(i).node().id().as_bytes())
        .collect();
    for datagram in &wire.captured {
        for id in &ids {
            assert!(!datagram.windows(8).any(|w| w == id), "an id in the clear");
        }
    }
    // The measured RTT is the wire's, although the first probe waited for a handshake.
    let (_, neighbour) = wire
        .node(1)
        .node()
        .neighbours()
        .next()
        .expect("a neighbour");
    assert!((neighbour.link.filtered_rtt_ms() - 20.0).abs() < 0.5);
    // And a trace crosses the overlay and comes back.
    let target = wire.node(2).node().id();
    wire.nodes[0].1.node_mut().trace(secs(10), target, 9);
    wire.drain(0, secs(10));
    wire.run(secs(10), secs(11));
    assert!(wire.events.iter().any(|(at, event)| *at == addr(1)
        && matches!(event, Event::TraceReply { token: 9, destination, .. } if *destination == target)));
}

#[test]
fn a_relay_forwards_data_it_only_carries_intact_and_counted() {
    let mut wire = Wire::new((1..=3).map(|n| (addr(n), member(n, NETWORK_KEY))).collect());
    // Nodes 2 and 3 cannot reach each other: node 1 relays between them.
    wire.blocked.push((addr(2), addr(3)));
    wire.run(Instant::ZERO, secs(10));
    let target = wire.node(2).node().id();
    let relay_before = wire.node(0).node().stats().clone();
    for n in 0..50u16 {
        let payload = n.to_be_bytes().repeat(300);
        let node = wire.nodes[1].1.node_mut();
        node.send_data(secs(10), target, payload)
            .expect("fits a datagram");
    }
    wire.drain(1, secs(10));
    wire.run(secs(10), secs(11));
    let delivered: Vec<(u8, Vec<u8>)> = wire
        .events
        .iter()
        .filter(|(at, _)| *at == addr(3))
        .filter_map(|(_, event)| match event {
            Event::Delivered { hops, payload, .. } => Some((*hops, payload.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<(u8, Vec<u8>)> = (0..50u16)
        .map(|n| (2, n.to_be_bytes().repeat(300)))
        .collect();
    assert_eq!(
        delivered, expected,
        "every payload, in order, after two hops"
    );
    let relay = wire.node(0).node().stats();
    assert_eq!(relay.data_relayed - relay_before.data_relayed, 50);
    assert_eq!(
        relay.sent.data.datagrams - relay_before.sent.data.datagrams,
        50
    );
    assert_eq!(
        relay.data_delivered, relay_before.data_delivered,
        "none was for the relay"
    );
}

#[test]
fn a_node_with_another_network_key_learns_nothing_and_is_learned_by_nobody() {
    let mut wire = Wire::new(vec![
        (addr(1), member(1, NETWORK_KEY)),
        (addr(2), member(2, NETWORK_KEY)),
        (addr(3), member(3, [7; 32])),
    ]);
    wire.run(Instant::ZERO, secs(10));
    let outsider = wire.node(2);
    assert_eq!(outsider.secure_stats().handshakes_completed, 0);
    assert_eq!(outsider.node().known_nodes().len(), 0);
    let outsider_id = outsider.node().id();
    for index in 0..2 {
        let member = wire.node(index);
        assert!(member.node().known_nodes().get(&outsider_id).is_none());
    }
    assert!(wire.node(0).secure_stats().handshakes_failed > 0);
    assert_eq!(
        wire.node(1).node().known_nodes().len(),
        1,
        "the members found each other"
    );
}

#[test]
fn replayed_and_forged_datagrams_are_dropped_and_counted() {
    let mut wire = Wire::new(vec![
        (addr(1), member(1, NETWORK_KEY)),
        (addr(2), member(2, NETWORK_KEY)),
    ]);
    wire.run(Instant::ZERO, secs(5));
    let recorded: Vec<Vec<u8>> = wire.captured.clone();
    // Deliver what was still in flight: from here on, every recorded datagram is old.
    let now = secs(5) + ONE_WAY + ONE_WAY;
    wire.run(secs(5), now);
    let target = &mut wire.nodes[0].1;
    let before = *target.secure_stats();
    let received_before = target.node().stats().datagrams_received;
    // Exact replays of everything node 2 ever sent, from node 2's address.
    for datagram in &recorded {
        target.handle_input(Input::Datagram {
            now,
            from: addr(2),
            data: datagram,
        });
    }
    // A flipped bit in a real data datagram.
    let mut forged = recorded.last().expect("traffic").clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    target.handle_input(Input::Datagram {
        now,
        from: addr(2),
        data: &forged,
    });
    // The same bytes from an address without a session.
    target.handle_input(Input::Datagram {
        now,
        from: addr(9),
        data: &forged,
    });
    let after = *target.secure_stats();
    assert!(after.dropped_replayed > before.dropped_replayed);
    assert!(
        after.dropped_forged + after.dropped_replayed
            > before.dropped_forged + before.dropped_replayed
    );
    assert_eq!(after.dropped_no_session, before.dropped_no_session + 1);
    assert_eq!(
        target.node().stats().datagrams_received,
        received_before,
        "nothing replayed or forged reached the node"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_is_counted_and_never_reaches_the_node(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..40)
    ) {
        let mut node = member(1, NETWORK_KEY);
        for (i, data) in datagrams.iter().enumerate() {
            let now = Instant::from_micros(i as i64 * 1_000);
            node.handle_input(Input::Datagram { now, from: addr(9), data });
            while let Output::Transmit(_) | Output::Event(_) = node.poll_output() {}
        }
        prop_assert_eq!(node.node().stats().datagrams_received, 0);
        prop_assert!(node.secure_stats().dropped() <= datagrams.len() as u64);
    }
}
