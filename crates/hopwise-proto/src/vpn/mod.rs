//! The VPN service: IP packets between the members' interfaces, end to end over the overlay.
//!
//! The driver reads packets from the node's TUN interface and hands each to
//! [`Vpn::send_packet`]; the service finds the destination node (from an IPv6 address alone,
//! from the store's claims for IPv4) and sends the packet to that node's VPN port, where it is
//! checked (allowed sender, addressed to this node, from the sender's own address) and waits
//! in [`Vpn::poll_packet`] for the driver to write it to the interface. A packet larger than
//! the interface MTU is answered with an ICMP error, so path MTU discovery works.
//!
//! IPv4 addresses are claimed in the key-value store ([`ipv4_key`]); the service asks its
//! driver to resolve the ones it does not know ([`Vpn::poll_lookup`], answered by
//! [`Vpn::resolved`]) and caches the answers, negative ones too.

mod address;
pub mod packet;

pub use address::{BadPrefix, CLAIM_SUB, Ipv4Prefix, Ipv6Prefix, ipv4_key, ipv4_of_key};

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

use crate::keyed::{self, Map};
use crate::node::Node;
use crate::service::{Message, Service, ServiceTransmit, ports};
use crate::{Duration, Instant, NodeId};
use packet::Header;

/// How long a resolved IPv4 address is trusted before it is asked again ...
const RESOLVED_FOR: Duration = Duration::from_secs(60);
/// ... and how long an address nobody claimed stays unknown.
const UNCLAIMED_FOR: Duration = Duration::from_secs(5);
/// A lookup unanswered for this long is given up (its packets are dropped).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the cache of IPv4 resolutions.
const MAX_RESOLUTIONS: usize = 4_096;
/// Packets held for one address while it is resolved, and in all.
const MAX_WAITING_PER_ADDRESS: usize = 8;
const MAX_WAITING: usize = 256;
/// Packets received and not yet written to the interface.
const MAX_TO_INTERFACE: usize = 1_024;

#[derive(Debug, Clone)]
pub struct VpnConfig {
    pub ipv6_prefix: Ipv6Prefix,
    pub ipv4_prefix: Ipv4Prefix,
    /// The members that may send into this node's interface; `None`: every member.
    pub allow: Option<Vec<NodeId>>,
    /// The interface MTU: the largest packet carried, at most the host's
    /// [`crate::service::Host::max_data`].
    pub mtu: usize,
}

/// The VPN's counters, each way and by cause of drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VpnStats {
    /// Packets read from the interface and sent to a member, and their bytes.
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Packets received from members and written to the interface, and their bytes.
    pub packets_received: u64,
    pub bytes_received: u64,
    /// ICMP errors (packet too big) written back to the interface.
    pub icmp_errors: u64,
    /// From the interface: not a whole IP packet.
    pub dropped_malformed: u64,
    /// From the interface: to an address outside the network's prefixes, or to no member.
    pub dropped_unknown_destination: u64,
    /// From the interface: to a member this node has no route to.
    pub dropped_no_route: u64,
    /// From the interface: larger than the MTU, without a way to say so (IPv4 that may be
    /// fragmented, or an ICMP error).
    pub dropped_too_big: u64,
    /// Held too long or too many while an IPv4 address was resolved.
    pub dropped_unresolved: u64,
    /// From a member this node does not allow (`--vpn-allow`).
    pub dropped_not_allowed: u64,
    /// From a member, with a source address that is not the member's own.
    pub dropped_spoofed: u64,
    /// From a member: malformed, or not addressed to this node.
    pub dropped_invalid: u64,
    /// Received while the interface had not taken the earlier ones.
    pub dropped_interface_full: u64,
}

#[derive(Debug, Clone, Copy)]
enum Resolution {
    Known {
        node: Option<NodeId>,
        until: Instant,
    },
    Asked {
        since: Instant,
    },
}

/// Whether a lookup of `address` was asked for and has not timed out.
fn in_flight(resolutions: &Map<Ipv4Addr, Resolution>, now: Instant, address: &Ipv4Addr) -> bool {
    matches!(
        resolutions.get(address),
        Some(Resolution::Asked { since }) if now - *since < LOOKUP_TIMEOUT
    )
}

/// Which nodes the overlay has a route to.
type Routed<'a> = &'a dyn Fn(&NodeId) -> bool;

/// A packet held while the address it depends on is resolved.
enum Waiting {
    /// To send to whoever claimed the destination.
    Outgoing(Vec<u8>),
    /// Received from `from`, whose claim on the source address is being checked.
    Incoming { from: NodeId, packet: Vec<u8> },
}

pub struct Vpn {
    local: NodeId,
    config: VpnConfig,
    ipv4: Option<Ipv4Addr>,
    resolutions: Map<Ipv4Addr, Resolution>,
    waiting: Map<Ipv4Addr, Vec<Waiting>>,
    waiting_count: usize,
    lookups: VecDeque<Ipv4Addr>,
    transmits: VecDeque<ServiceTransmit>,
    to_interface: VecDeque<Vec<u8>>,
    stats: VpnStats,
}

impl Vpn {
    pub fn new(local: NodeId, config: VpnConfig, rng_seed: u64) -> Self {
        let hash_key = keyed::hash_key(rng_seed ^ 0x0F9E_0F9E_0F9E_0F9E);
        Self {
            local,
            config,
            ipv4: None,
            resolutions: Map::with_hasher(hash_key),
            waiting: Map::with_hasher(hash_key),
            waiting_count: 0,
            lookups: VecDeque::new(),
            transmits: VecDeque::new(),
            to_interface: VecDeque::new(),
            stats: VpnStats::default(),
        }
    }

    pub fn config(&self) -> &VpnConfig {
        &self.config
    }

    pub fn stats(&self) -> &VpnStats {
        &self.stats
    }

    /// This node's IPv6 address.
    pub fn ipv6(&self) -> std::net::Ipv6Addr {
        self.config.ipv6_prefix.address_of(self.local)
    }

    /// This node's IPv4 address, once claimed.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4
    }

    /// The driver claimed `address` for this node.
    pub fn set_ipv4(&mut self, address: Ipv4Addr) {
        self.ipv4 = Some(address);
    }

    /// From now on only these members may send into the interface.
    pub fn set_allow(&mut self, allowed: Vec<NodeId>) {
        self.config.allow = Some(allowed);
    }

    /// A packet read from the interface; `overlay` tells where it can go.
    pub fn send_packet(&mut self, now: Instant, packet: &[u8], overlay: &Node) {
        self.route_packet(now, packet, &|node| overlay.route(node).is_some());
    }

    /// [`Vpn::send_packet`], with `routed` telling which nodes have a route.
    fn route_packet(&mut self, now: Instant, packet: &[u8], routed: Routed<'_>) {
        let Ok(header) = Header::parse(packet) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if packet.len() > self.config.mtu {
            self.answer_too_big(packet, header);
            return;
        }
        match header.destination {
            IpAddr::V6(destination) => match self.config.ipv6_prefix.node_of(destination) {
                Some(node) if node != self.local => self.transmit(node, packet, routed),
                _ => self.stats.dropped_unknown_destination += 1,
            },
            IpAddr::V4(destination) if self.config.ipv4_prefix.is_host(destination) => {
                match self.resolution(now, destination) {
                    Some(Some(node)) if node != self.local => self.transmit(node, packet, routed),
                    Some(_) => self.stats.dropped_unknown_destination += 1,
                    None => self.hold(now, destination, packet, None),
                }
            }
            IpAddr::V4(_) => self.stats.dropped_unknown_destination += 1,
        }
    }

    /// The next packet to write to the interface.
    pub fn poll_packet(&mut self) -> Option<Vec<u8>> {
        self.to_interface.pop_front()
    }

    /// The next IPv4 address the driver is to resolve: the writer of its claim in the store
    /// ([`ipv4_key`]), answered through [`Vpn::resolved`].
    pub fn poll_lookup(&mut self) -> Option<Ipv4Addr> {
        self.lookups.pop_front()
    }

    /// What the store says of `address`: the node that claimed it, or nobody.
    pub fn resolved(
        &mut self,
        now: Instant,
        address: Ipv4Addr,
        node: Option<NodeId>,
        overlay: &Node,
    ) {
        self.resolved_with(now, address, node, &|node| overlay.route(node).is_some());
    }

    fn resolved_with(
        &mut self,
        now: Instant,
        address: Ipv4Addr,
        node: Option<NodeId>,
        routed: Routed<'_>,
    ) {
        let until = now
            + if node.is_some() {
                RESOLVED_FOR
            } else {
                UNCLAIMED_FOR
            };
        self.remember(address, Resolution::Known { node, until });
        let Some(waiting) = self.waiting.swap_remove(&address) else {
            return;
        };
        self.waiting_count -= waiting.len();
        for held in waiting {
            match (held, node) {
                (Waiting::Outgoing(packet), Some(to)) if to != self.local => {
                    self.transmit(to, &packet, routed);
                }
                (Waiting::Outgoing(_), _) => self.stats.dropped_unknown_destination += 1,
                (Waiting::Incoming { from, packet }, Some(owner)) if owner == from => {
                    self.deliver(packet);
                }
                (Waiting::Incoming { .. }, _) => self.stats.dropped_spoofed += 1,
            }
        }
    }

    /// The node `address` resolves to now: `Some(None)` for nobody, `None` while unknown.
    fn resolution(&self, now: Instant, address: Ipv4Addr) -> Option<Option<NodeId>> {
        match self.resolutions.get(&address) {
            Some(Resolution::Known { node, until }) if *until > now => Some(*node),
            _ => None,
        }
    }

    fn remember(&mut self, address: Ipv4Addr, resolution: Resolution) {
        if self.resolutions.len() >= MAX_RESOLUTIONS && !self.resolutions.contains_key(&address) {
            // The oldest entry makes room (the map keeps insertion order).
            self.resolutions.shift_remove_index(0);
        }
        self.resolutions.insert(address, resolution);
    }

    /// Holds `packet` (received from `from`, or sent when `None`) until `address` is resolved,
    /// and asks for it once. Only a packet that is held asks: the bound on held packets bounds
    /// the lookups a member can make this node start with made-up source addresses.
    fn hold(&mut self, now: Instant, address: Ipv4Addr, packet: &[u8], from: Option<NodeId>) {
        self.expire_waiting(now);
        let queued = self.waiting.get(&address).map_or(0, Vec::len);
        if queued >= MAX_WAITING_PER_ADDRESS || self.waiting_count >= MAX_WAITING {
            self.stats.dropped_unresolved += 1;
            return;
        }
        let packet = packet.to_vec();
        let held = match from {
            None => Waiting::Outgoing(packet),
            Some(from) => Waiting::Incoming { from, packet },
        };
        self.waiting.entry(address).or_default().push(held);
        self.waiting_count += 1;
        if !in_flight(&self.resolutions, now, &address) {
            self.remember(address, Resolution::Asked { since: now });
            self.lookups.push_back(address);
        }
    }

    /// Drops what waits for lookups that were given up.
    fn expire_waiting(&mut self, now: Instant) {
        let resolutions = &self.resolutions;
        let mut dropped = 0;
        self.waiting.retain(|address, queue| {
            let pending = in_flight(resolutions, now, address);
            if !pending {
                dropped += queue.len();
            }
            pending
        });
        self.waiting_count -= dropped;
        self.stats.dropped_unresolved += dropped as u64;
    }

    fn transmit(&mut self, to: NodeId, packet: &[u8], routed: Routed<'_>) {
        if !routed(&to) {
            self.stats.dropped_no_route += 1;
            return;
        }
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += packet.len() as u64;
        self.transmits.push_back(ServiceTransmit {
            to,
            port: ports::VPN,
            data: packet.to_vec(),
            early: false,
        });
    }

    fn deliver(&mut self, packet: Vec<u8>) {
        if self.to_interface.len() >= MAX_TO_INTERFACE {
            self.stats.dropped_interface_full += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += packet.len() as u64;
        self.to_interface.push_back(packet);
    }

    /// Tells the sender of an oversized packet the MTU, where the protocol has a way to. The
    /// error comes from the packet's destination, as if the path to it said so: the kernel
    /// drops an IPv4 packet from one of its own addresses arriving on an interface.
    fn answer_too_big(&mut self, packet: &[u8], header: Header) {
        let mtu = self.config.mtu;
        let error = match (header.source, header.destination) {
            _ if header.icmp_error => None,
            (IpAddr::V6(source), IpAddr::V6(router)) => {
                Some(packet::packet_too_big(router, packet, source, mtu as u32))
            }
            (IpAddr::V4(source), IpAddr::V4(router)) if header.dont_fragment => {
                Some(packet::fragmentation_needed(
                    router,
                    packet,
                    source,
                    mtu.min(usize::from(u16::MAX)) as u16,
                ))
            }
            _ => None,
        };
        match error {
            Some(error) if self.to_interface.len() < MAX_TO_INTERFACE => {
                self.stats.icmp_errors += 1;
                self.to_interface.push_back(error);
            }
            _ => self.stats.dropped_too_big += 1,
        }
    }

    /// Whether `from` sent from its own address to this node's, and may send here at all.
    fn accept(&mut self, now: Instant, from: NodeId, packet: &[u8]) {
        if self
            .config
            .allow
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&from))
        {
            self.stats.dropped_not_allowed += 1;
            return;
        }
        let Ok(header) = Header::parse(packet) else {
            self.stats.dropped_invalid += 1;
            return;
        };
        match (header.source, header.destination) {
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                if destination != self.ipv6() {
                    self.stats.dropped_invalid += 1;
                } else if self.config.ipv6_prefix.node_of(source) != Some(from) {
                    self.stats.dropped_spoofed += 1;
                } else {
                    self.deliver(packet.to_vec());
                }
            }
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                if Some(destination) != self.ipv4 {
                    self.stats.dropped_invalid += 1;
                    return;
                }
                if !self.config.ipv4_prefix.is_host(source) {
                    self.stats.dropped_spoofed += 1;
                    return;
                }
                match self.resolution(now, source) {
                    Some(Some(owner)) if owner == from => self.deliver(packet.to_vec()),
                    Some(_) => self.stats.dropped_spoofed += 1,
                    None => self.hold(now, source, packet, Some(from)),
                }
            }
            _ => self.stats.dropped_invalid += 1,
        }
    }
}

impl Service for Vpn {
    fn handle_message(&mut self, now: Instant, message: Message<'_>, _overlay: &Node) {
        self.accept(now, message.from, message.data);
    }

    fn poll_transmit(&mut self) -> Option<ServiceTransmit> {
        self.transmits.pop_front()
    }
}

#[cfg(test)]
mod tests;
