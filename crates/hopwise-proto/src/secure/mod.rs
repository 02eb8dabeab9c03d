//! Encrypted, authenticated links between members of one network.
//!
//! [`SecureNode`] wraps a [`Node`] with the same driving contract (`handle_input`,
//! `poll_output`, `poll_timeout`). Every datagram the node sends is sealed for its
//! destination's Noise session, and every datagram received must open under a session before
//! the node sees it. A session's peer is known by its static key, so the node id in each packet
//! it carries must be that key's id: nobody can speak for another node on a link.
//!
//! Randomness comes from the node's seed, so simulations run the real handshakes and ciphers
//! deterministically.

mod channels;
pub mod crypto;
mod replay;

pub use channels::{HANDSHAKE_TIMEOUT, MAX_SECURE_DATAGRAM, OVERHEAD, SecureStats};

use channels::Sealed;
pub use replay::ReplayWindow;

use std::collections::VecDeque;
use std::net::SocketAddr;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::node::{Config, Input, Node, Output};
use crate::wire::{self, HEADER_LEN};
use crate::{Instant, NodeId};

/// The Noise pattern of every link. Both ends prove their static key (XX), and the network key
/// is mixed in from the first message (psk0), so a hello from a stranger without it fails its
/// first tag check before any Diffie-Hellman work.
pub const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_AESGCM_BLAKE2s";

/// A node's static key pair and the network key all members share.
#[derive(Clone)]
pub struct Keys {
    pub private_key: [u8; 32],
    pub public_key: [u8; 32],
    pub network_key: [u8; 32],
}

pub struct SecureNode {
    node: Node,
    channels: channels::Channels,
    now: Instant,
    /// Copies of the decrypted packets, while an operator captures them.
    capture: Option<VecDeque<Captured>>,
    /// The packet of the datagram being handled, decrypted: one buffer for every datagram.
    opened: Vec<u8>,
}

/// A packet as the node sees it, after decryption or before encryption (see
/// [`SecureNode::capture`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub at: Instant,
    /// The other end of the link.
    pub peer: SocketAddr,
    /// Sent by this node (rather than received).
    pub outgoing: bool,
    pub packet: Vec<u8>,
}

/// Captured packets kept for a driver that does not take them; the oldest go first.
const MAX_CAPTURED: usize = 4_096;

impl SecureNode {
    /// The node's id is the id of its public key; `config.id` is replaced by it.
    pub fn new(mut config: Config, keys: &Keys, now: Instant) -> Self {
        config.id = NodeId::from_public_key(&keys.public_key);
        // A generator of its own, so that the node's choices do not depend on handshakes.
        let rng = ChaCha8Rng::seed_from_u64(config.rng_seed ^ 0x5EC0_5EC0_5EC0_5EC0);
        let hash_key = crate::keyed::hash_key(config.rng_seed.rotate_left(17));
        let channels =
            channels::Channels::new(keys.private_key, keys.network_key, rng, hash_key, now);
        Self {
            node: Node::new(config, now),
            channels,
            now,
            capture: None,
            opened: Vec::new(),
        }
    }

    /// Starts or stops keeping a copy of every packet the node receives (once decrypted) and
    /// sends (before encryption), for an operator's packet capture: what a member relay sees.
    pub fn capture(&mut self, on: bool) {
        self.capture = on.then(VecDeque::new);
    }

    /// The next captured packet.
    pub fn poll_captured(&mut self) -> Option<Captured> {
        self.capture.as_mut()?.pop_front()
    }

    fn keep(&mut self, peer: SocketAddr, outgoing: bool, packet: &[u8]) {
        if let Some(captured) = &mut self.capture {
            if captured.len() >= MAX_CAPTURED {
                captured.pop_front();
            }
            captured.push_back(Captured {
                at: self.now,
                peer,
                outgoing,
                packet: packet.to_vec(),
            });
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// For the node's own API (`ping`, `trace`, `send_data`, `leave`); its output is sealed on
    /// the way out like any other.
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    pub fn secure_stats(&self) -> &SecureStats {
        self.channels.stats()
    }

    pub fn handle_input(&mut self, input: Input<'_>) {
        match input {
            Input::Datagram { now, from, data } => {
                self.now = self.now.max(now);
                let mut packet = std::mem::take(&mut self.opened);
                let sender = self.channels.open(now, from, data, &mut packet);
                self.flush_established();
                match sender {
                    Some(sender) if claimed_sender(&packet) == Some(sender) => {
                        self.on_packet(now, from, &mut packet);
                    }
                    Some(_) => {
                        self.channels.count_wrong_sender();
                        self.node.handle_input(Input::Timeout(now));
                    }
                    None => self.node.handle_input(Input::Timeout(now)),
                }
                self.opened = packet;
            }
            Input::Timeout(now) => {
                self.now = self.now.max(now);
                self.channels.on_timeout(now);
                self.node.handle_input(input);
            }
        }
    }

    /// An authentic packet from `from`: relayed at once when it only passes through (sealed
    /// for the next hop from the buffer it was opened into), handed to the node otherwise.
    fn on_packet(&mut self, now: Instant, from: SocketAddr, packet: &mut [u8]) {
        self.keep(from, false, packet);
        match self.node.relay_in_place(now, packet) {
            Some(next_hop) => {
                self.keep(next_hop, true, packet);
                self.channels.seal(now, next_hop, packet);
            }
            None => self.node.handle_input(Input::Datagram {
                now,
                from,
                data: packet,
            }),
        }
    }

    /// Takes back the buffer of a datagram the driver has sent, for one to come.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.channels.recycle(buffer);
    }

    /// Packets that waited for a handshake go out now. A probe request is re-timed first: its
    /// round trip must not include the handshake.
    fn flush_established(&mut self) {
        for (peer, queued) in self.channels.take_established() {
            for packet in queued {
                if let Some(packet) = self.retimed(packet) {
                    self.channels.seal(self.now, peer, &packet);
                }
            }
        }
    }

    fn retimed(&mut self, mut packet: Vec<u8>) -> Option<Vec<u8>> {
        if let Some(seq) = wire::probe_request_seq(&packet) {
            let timestamp_us = self.node.retime_probe(self.now, seq)?;
            wire::set_probe_request_timestamp(&mut packet, timestamp_us);
        }
        Some(packet)
    }

    pub fn poll_output(&mut self) -> Output {
        loop {
            if let Some(transmit) = self.channels.poll_transmit() {
                return Output::Transmit(transmit);
            }
            match self.node.poll_output() {
                Output::Transmit(transmit) => {
                    self.keep(transmit.destination, true, &transmit.contents);
                    let probe_seq = wire::probe_request_seq(&transmit.contents);
                    let sealed =
                        self.channels
                            .seal(self.now, transmit.destination, &transmit.contents);
                    self.channels.recycle(transmit.contents);
                    if let (Sealed::Held, Some(seq)) = (sealed, probe_seq) {
                        self.node.hold_probe(seq, HANDSHAKE_TIMEOUT);
                    }
                }
                Output::Event(event) => return Output::Event(event),
                Output::Timeout(at) => {
                    let secure = self.channels.next_timeout().unwrap_or(Instant::MAX);
                    return Output::Timeout(at.min(secure));
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Instant {
        let secure = self.channels.next_timeout().unwrap_or(Instant::MAX);
        self.node.poll_timeout().min(secure)
    }
}

/// The sender id in a hopwise packet's header, read without parsing the rest.
fn claimed_sender(packet: &[u8]) -> Option<NodeId> {
    let id = packet.get(4..HEADER_LEN)?;
    Some(NodeId::from_bytes(id.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;

    fn keys(seed: u64) -> Keys {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (private_key, public_key) = crypto::generate_keypair(&mut rng);
        Keys {
            private_key,
            public_key,
            network_key: [3; 32],
        }
    }

    #[test]
    fn a_member_cannot_speak_for_another_node() {
        let honest_addr: std::net::SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let liar_addr: std::net::SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let mut honest = SecureNode::new(
            Config::new(NodeId::from_bytes([0; 8]), 1),
            &keys(1),
            Instant::ZERO,
        );
        // A genuine member whose node claims someone else's id in every packet.
        let claimed = NodeId::from_bytes([0xcd; 8]);
        let mut liar = SecureNode::new(
            Config::new(NodeId::from_bytes([0; 8]), 2),
            &keys(2),
            Instant::ZERO,
        );
        let mut config = Config::new(claimed, 2);
        config.bootstrap = vec![honest_addr];
        liar.node = Node::new(config, Instant::ZERO);

        let mut now = Instant::ZERO;
        for _ in 0..2_000 {
            for (from, to, sender) in [(liar_addr, honest_addr, 0), (honest_addr, liar_addr, 1)] {
                let (source, target) = if sender == 0 {
                    (&mut liar, &mut honest)
                } else {
                    (&mut honest, &mut liar)
                };
                source.handle_input(Input::Timeout(now));
                loop {
                    match source.poll_output() {
                        Output::Transmit(t) => {
                            assert_eq!(t.destination, to);
                            let data = &t.contents;
                            target.handle_input(Input::Datagram { now, from, data });
                        }
                        Output::Event(_) => {}
                        Output::Timeout(_) => break,
                    }
                }
            }
            now += Duration::from_millis(5);
        }
        assert!(
            honest.secure_stats().handshakes_completed >= 1,
            "the liar is a member"
        );
        assert!(honest.secure_stats().dropped_wrong_sender > 0);
        assert!(honest.node().known_nodes().get(&claimed).is_none());
        assert_eq!(honest.node().stats().datagrams_received, 0);
    }
}
