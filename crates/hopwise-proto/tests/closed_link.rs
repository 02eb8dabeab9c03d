//! A node driven by hand, datagram by datagram: when a routing link is closed on purpose, the
//! routes lost with it keep carrying packets to the old next hop for a moment (its path still
//! works), instead of being dropped until a route with a newer seqno arrives.

use std::net::SocketAddr;

use hopwise_proto::routing::{Metric, Seqno};
use hopwise_proto::wire::{LinkOp, Message, Packet, RouteEntry, RouteUpdate};
use hopwise_proto::{Config, Duration, Input, Instant, Node, NodeId, Output};

fn id(byte: u8) -> NodeId {
    NodeId::from_bytes([byte; NodeId::LEN])
}

const PEER: u8 = 2;
const DESTINATION: u8 = 9;

fn peer_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, PEER], 4000))
}

/// Everything the node sends until it waits, as decoded packets with their destinations.
fn sent(node: &mut Node) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    loop {
        match node.poll_output() {
            Output::Transmit(t) => {
                let packet = Packet::parse(&t.contents).expect("the node sends valid packets");
                out.push((t.destination, packet.message));
            }
            Output::Event(_) => {}
            Output::Timeout(_) => return out,
        }
    }
}

fn from_peer(node: &mut Node, now: Instant, message: Message) -> Vec<(SocketAddr, Message)> {
    let packet = Packet {
        sender: id(PEER),
        message,
    };
    node.handle_input(Input::Datagram {
        now,
        from: peer_addr(),
        data: &packet.to_bytes(),
    });
    sent(node)
}

fn data_sent_to_peer(sent: &[(SocketAddr, Message)]) -> bool {
    sent.iter().any(|(to, m)| {
        *to == peer_addr() && matches!(m, Message::Data(d) if d.destination == id(DESTINATION))
    })
}

/// A node with one routing link, to the peer, measured at 20 ms, and a route through it to
/// the destination.
fn node_routing_through_peer() -> (Node, Instant) {
    let mut node = Node::new(Config::new(id(1), 5), Instant::ZERO);
    sent(&mut node);
    let mut now = Instant::ZERO + Duration::from_millis(10);
    let probes: Vec<Message> = from_peer(&mut node, now, Message::Link(LinkOp::Open))
        .into_iter()
        .filter(|(to, m)| *to == peer_addr() && matches!(m, Message::ProbeRequest(_)))
        .map(|(_, m)| m)
        .collect();
    assert!(!probes.is_empty(), "a new link is probed at once");
    now += Duration::from_millis(20);
    for probe in probes {
        let Message::ProbeRequest(probe) = probe else {
            unreachable!()
        };
        from_peer(&mut node, now, Message::ProbeReply(probe));
    }
    let update = RouteUpdate {
        entries: vec![RouteEntry {
            destination: id(DESTINATION),
            seqno: Seqno(1),
            metric: Metric::from_ms(50.0),
            zone: None,
        }],
    };
    from_peer(&mut node, now, Message::RouteUpdate(update));
    let route = node
        .route(&id(DESTINATION))
        .expect("a route through the peer");
    assert_eq!(route.next_hop, id(PEER));
    (node, now)
}

#[test]
fn a_closed_link_carries_the_packets_of_its_lost_routes_for_a_moment_only() {
    let (mut node, now) = node_routing_through_peer();
    from_peer(&mut node, now, Message::Link(LinkOp::Close));
    assert!(
        node.route(&id(DESTINATION)).is_some(),
        "the lost route still forwards"
    );

    let soon = now + Duration::from_millis(500);
    node.ping(soon, id(DESTINATION), 1);
    assert!(
        data_sent_to_peer(&sent(&mut node)),
        "half a second after the close, the ping goes to the old next hop"
    );

    let later = now + Duration::from_secs(3);
    node.ping(later, id(DESTINATION), 2);
    assert!(
        !data_sent_to_peer(&sent(&mut node)),
        "seconds later, the closed link carries nothing"
    );
}
