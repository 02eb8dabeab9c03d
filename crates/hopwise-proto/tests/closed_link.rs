//! A node driven by hand, datagram by datagram. When a routing link is closed on purpose, the
//! routes lost with it keep carrying packets to the old next hop for a moment (its path still
//! works), instead of being dropped until a route with a newer seqno arrives. An acceptance of
//! a link the node no longer has is answered with a close, so neither end keeps half a link.

mod common;

use std::net::SocketAddr;

use common::{addr, advertise, from, id, link_from, node, sent};
use hopwise_proto::wire::{LinkOp, Message};
use hopwise_proto::{Duration, Instant, Node};

const PEER: u8 = 2;
const DESTINATION: u8 = 9;

fn peer_addr() -> SocketAddr {
    addr(PEER)
}

fn from_peer(node: &mut Node, now: Instant, message: Message) -> Vec<(SocketAddr, Message)> {
    from(node, now, PEER, message)
}

fn data_sent_to_peer(sent: &[(SocketAddr, Message)]) -> bool {
    sent.iter().any(|(to, m)| {
        *to == peer_addr() && matches!(m, Message::Data(d) if d.destination == id(DESTINATION))
    })
}

/// A node with one routing link, to the peer, measured at 20 ms, and a route through it to
/// the destination.
fn node_routing_through_peer() -> (Node, Instant) {
    let mut node = node();
    let start = Instant::ZERO + Duration::from_millis(10);
    let now = link_from(&mut node, start, PEER, Duration::from_millis(20));
    advertise(&mut node, now, PEER, DESTINATION, 1, 50.0);
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

#[test]
fn an_acceptance_of_a_link_given_up_is_answered_with_a_close() {
    let mut node = node();
    let now = Instant::ZERO + Duration::from_millis(10);
    let answer = from_peer(&mut node, now, Message::Link(LinkOp::Accept));
    assert!(
        answer
            .iter()
            .any(|(to, m)| *to == peer_addr() && matches!(m, Message::Link(LinkOp::Close))),
        "the other end is told to drop the link it believes in: {answer:?}"
    );
}
