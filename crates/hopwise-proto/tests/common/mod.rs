//! Driving one node by hand, datagram by datagram, as its peers would.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

use hopwise_proto::routing::{Metric, Seqno};
use hopwise_proto::wire::{LinkOp, Message, Packet, RouteEntry, RouteUpdate};
use hopwise_proto::{Config, Duration, Input, Instant, Node, NodeId, Output};

pub fn id(byte: u8) -> NodeId {
    NodeId::from_bytes([byte; NodeId::LEN])
}

pub fn addr(peer: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, peer], 4000))
}

/// A fresh node with id 1, having sent what it sends at start.
pub fn node() -> Node {
    let mut node = Node::new(Config::new(id(1), 5), Instant::ZERO);
    sent(&mut node);
    node
}

/// Everything the node sends until it waits, as decoded packets with their destinations.
pub fn sent(node: &mut Node) -> Vec<(SocketAddr, Message)> {
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

/// The node's deadlines up to `until`, each handled in turn; everything it sent meanwhile.
pub fn run_until(node: &mut Node, until: Instant) -> Vec<(SocketAddr, Message)> {
    let mut out = sent(node);
    loop {
        let deadline = node.poll_timeout();
        if deadline > until {
            node.handle_input(Input::Timeout(until));
            out.extend(sent(node));
            return out;
        }
        node.handle_input(Input::Timeout(deadline));
        out.extend(sent(node));
    }
}

/// `message` arriving from `peer`; what the node sends in reply.
pub fn from(
    node: &mut Node,
    now: Instant,
    peer: u8,
    message: Message,
) -> Vec<(SocketAddr, Message)> {
    let packet = Packet {
        sender: id(peer),
        message,
    };
    node.handle_input(Input::Datagram {
        now,
        from: addr(peer),
        data: &packet.to_bytes(),
    });
    sent(node)
}

/// `peer` opens a routing link to the node and answers its probes after `rtt`; returns the
/// time after that.
pub fn link_from(node: &mut Node, now: Instant, peer: u8, rtt: Duration) -> Instant {
    let probes: Vec<Message> = from(node, now, peer, Message::Link(LinkOp::Open))
        .into_iter()
        .filter(|(to, m)| *to == addr(peer) && matches!(m, Message::ProbeRequest(_)))
        .map(|(_, m)| m)
        .collect();
    assert!(!probes.is_empty(), "a new link is probed at once");
    let now = now + rtt;
    for probe in probes {
        let Message::ProbeRequest(probe) = probe else {
            unreachable!()
        };
        from(node, now, peer, Message::ProbeReply(probe));
    }
    now
}

/// `peer` advertises a route to `destination`.
pub fn advertise(node: &mut Node, now: Instant, peer: u8, destination: u8, seqno: u16, ms: f64) {
    let update = RouteUpdate {
        entries: vec![RouteEntry {
            destination: id(destination),
            seqno: Seqno(seqno),
            metric: Metric::from_ms(ms),
            zone: None,
        }],
    };
    from(node, now, peer, Message::RouteUpdate(update));
}
