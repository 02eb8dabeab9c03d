//! An end-to-end datagram workload, to measure what end-to-end sessions cost.
//!
//! Every node picks a fixed set of random peers and, once per interval (at a phase of its own),
//! sends each of them a small datagram through its end-to-end layer to a service on
//! [`WORKLOAD_PORT`]. At the same instant it sends the same bytes as a plain overlay payload
//! (the *twin*), which takes the same route without end-to-end protection: the twin's arrival is
//! the plain delivery time the sealed datagram is compared with. With the first datagram of a
//! pair (which waits for the handshake) goes a ping, whose round trip is the overlay RTT that
//! handshake may add.

use std::collections::VecDeque;

use hopwise_proto::e2e::Port;
use hopwise_proto::service::{Message, Service, ServiceHandle, ServiceTransmit};
use hopwise_proto::{Duration, Event, Instant, Node, NodeId};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::report::{Percentiles, percentiles_of};
use crate::sim::{Recorded, Simulation};

/// The port of the workload's service on every node.
pub const WORKLOAD_PORT: Port = Port(4_242);
/// Marks the workload's datagrams (and their twins) among other payloads.
const TAG: u8 = 0xE2;
/// Tag, pair number, sequence number.
const HEADER_LEN: usize = 9;
/// Ping tokens of the workload: this bit, and the pair number.
const PING_TOKEN: u64 = 0xE2E0 << 48;

/// What the workload does.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagramConfig {
    /// Peers each node sends to.
    pub peers_per_node: usize,
    /// Each node sends to all its peers once per interval.
    pub interval: Duration,
    /// When the first datagrams leave (nodes should be routed by then).
    pub start: Duration,
    /// Bytes per datagram (at least the 9 the workload marks them with).
    pub payload_bytes: usize,
}

impl Default for DatagramConfig {
    fn default() -> Self {
        Self {
            peers_per_node: 20,
            interval: Duration::from_secs(1),
            start: Duration::from_secs(60),
            payload_bytes: 64,
        }
    }
}

/// The workload's service: notes when each datagram arrived, and sends what it is given.
#[derive(Default)]
struct Arrivals {
    outgoing: VecDeque<ServiceTransmit>,
    /// Pair, sequence number and arrival of every datagram received.
    arrived: Vec<(u32, u32, Instant)>,
}

impl Service for Arrivals {
    fn handle_message(&mut self, now: Instant, message: Message<'_>, _overlay: &Node) {
        if let Some((pair, seq)) = parse(message.data) {
            self.arrived.push((pair, seq, now));
        }
    }

    fn poll_transmit(&mut self) -> Option<ServiceTransmit> {
        self.outgoing.pop_front()
    }
}

fn payload(pair: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len.max(HEADER_LEN)];
    bytes[0] = TAG;
    bytes[1..5].copy_from_slice(&pair.to_be_bytes());
    bytes[5..9].copy_from_slice(&seq.to_be_bytes());
    bytes
}

fn parse(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < HEADER_LEN || bytes[0] != TAG {
        return None;
    }
    let pair = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
    let seq = u32::from_be_bytes(bytes[5..9].try_into().ok()?);
    Some((pair, seq))
}

pub struct DatagramWorkload {
    config: DatagramConfig,
    /// Pair `p` is node `p / peers_per_node` sending to `peers[p]`.
    peers: Vec<usize>,
    phase: Vec<Duration>,
    /// Nodes in the order they send within a round.
    order: Vec<usize>,
    round: u32,
    cursor: usize,
    handles: Vec<Option<ServiceHandle<Arrivals>>>,
    /// Twin arrivals by pair and sequence number (µs; `i64::MIN`: not arrived).
    twins: Vec<Vec<i64>>,
    /// The overlay round trip measured with each pair's first datagram.
    ping_ms: Vec<Option<f64>>,
    sent: u64,
    stop: Instant,
}

impl DatagramWorkload {
    /// The workload of `nodes` nodes, drawn from `seed`; no datagram leaves at or after `stop`.
    pub fn new(nodes: usize, config: DatagramConfig, seed: u64, stop: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6532_6564_6174_6167);
        let per_node = config.peers_per_node.min(nodes.saturating_sub(1));
        let mut peers = Vec::with_capacity(nodes * per_node);
        for node in 0..nodes {
            let mut chosen: Vec<usize> = Vec::with_capacity(per_node);
            while chosen.len() < per_node {
                let other = (node + rng.random_range(1..nodes)) % nodes;
                if !chosen.contains(&other) {
                    chosen.push(other);
                }
            }
            peers.extend(chosen);
        }
        let phase: Vec<Duration> = (0..nodes)
            .map(|_| config.interval.mul_f64(rng.random::<f64>()))
            .collect();
        let mut order: Vec<usize> = (0..nodes).collect();
        order.sort_by_key(|&node| phase[node]);
        Self {
            config: DatagramConfig {
                peers_per_node: per_node,
                ..config
            },
            twins: vec![Vec::new(); peers.len()],
            ping_ms: vec![None; peers.len()],
            peers,
            phase,
            order,
            round: 0,
            cursor: 0,
            handles: vec![None; nodes],
            sent: 0,
            stop,
        }
    }

    fn pair_count(&self) -> usize {
        self.peers.len()
    }

    fn sent_at(&self, pair: usize, seq: u32) -> Instant {
        let node = pair / self.config.peers_per_node;
        self.round_start(seq) + self.phase[node]
    }

    fn round_start(&self, round: u32) -> Instant {
        Instant::ZERO
            + self.config.start
            + Duration::from_micros(self.config.interval.as_micros() * i64::from(round))
    }

    /// When the next datagrams leave.
    pub fn next_due(&self) -> Option<Instant> {
        let node = *self.order.get(self.cursor)?;
        let due = self.round_start(self.round) + self.phase[node];
        (self.config.peers_per_node > 0 && due < self.stop).then_some(due)
    }

    /// Sends every datagram due by `now` (the simulation's clock).
    pub fn send_due(&mut self, sim: &mut Simulation, now: Instant) {
        while let Some(due) = self.next_due().filter(|&due| due <= now) {
            let node = self.order[self.cursor];
            self.send_round(sim, node, due);
            self.cursor += 1;
            if self.cursor == self.order.len() {
                self.cursor = 0;
                self.round += 1;
            }
        }
    }

    /// The workload's service on every running node, so that no datagram finds its port
    /// empty.
    fn register_everywhere(&mut self, sim: &mut Simulation) {
        for (node, handle) in self.handles.iter_mut().enumerate() {
            if handle.is_none()
                && let Some(Ok(registered)) = sim.register(node, WORKLOAD_PORT, Arrivals::default())
            {
                *handle = Some(registered);
            }
        }
    }

    fn send_round(&mut self, sim: &mut Simulation, node: usize, due: Instant) {
        debug_assert!(sim.now() >= due);
        if self.round == 0 && self.cursor == 0 {
            self.register_everywhere(sim);
        }
        let Some(handle) = self.handles[node] else {
            return;
        };
        let per_node = self.config.peers_per_node;
        let seq = self.round;
        for pair in node * per_node..(node + 1) * per_node {
            let peer = self.peers[pair];
            let bytes = payload(pair as u32, seq, self.config.payload_bytes);
            let to: NodeId = sim.id_of(peer);
            let datagram = ServiceTransmit {
                early: false,
                to,
                port: WORKLOAD_PORT,
                data: bytes.clone(),
            };
            sim.with_service(node, handle, |service| service.outgoing.push_back(datagram));
            self.sent += 1;
            sim.send_data(node, peer, bytes)
                .expect("workload payloads fit a datagram");
            if seq == 0 {
                sim.ping(node, peer, PING_TOKEN | pair as u64);
            }
        }
    }

    /// Takes note of twins and pings among `recorded`.
    pub fn record(&mut self, recorded: &[Recorded]) {
        for r in recorded {
            match &r.event {
                Event::Delivered { payload, .. } => {
                    let Some((pair, seq)) = parse(payload) else {
                        continue;
                    };
                    let (pair, seq) = (pair as usize, seq as usize);
                    if self.peers.get(pair) != Some(&r.node) {
                        continue;
                    }
                    let arrivals = &mut self.twins[pair];
                    if arrivals.len() <= seq {
                        arrivals.resize(seq + 1, i64::MIN);
                    }
                    arrivals[seq] = r.at.as_micros();
                }
                Event::PingReply { token, rtt_ms, .. } if token & PING_TOKEN == PING_TOKEN => {
                    let pair = (token & !PING_TOKEN) as usize;
                    if let Some(slot) = self.ping_ms.get_mut(pair) {
                        *slot = Some(*rtt_ms);
                    }
                }
                _ => {}
            }
        }
    }

    /// What the workload measured, once the run is over.
    pub fn report(&self, sim: &Simulation) -> E2eReport {
        let mut first_ms = Vec::new();
        let mut first_plain_ms = Vec::new();
        let mut extra_ms = Vec::new();
        let mut extra_rtts = Vec::new();
        let mut extra_within = Vec::new();
        let mut later_ratio = Vec::new();
        let mut delivered = 0u64;
        let mut twins_delivered = 0u64;
        let mut first_lost = 0usize;
        let arrivals = self
            .handles
            .iter()
            .enumerate()
            .filter_map(|(node, handle)| Some(sim.service(node, (*handle)?)?.arrived.as_slice()));
        let mut first_seen = vec![false; self.pair_count()];
        for &(pair, seq, at) in arrivals.flatten() {
            let pair = pair as usize;
            delivered += 1;
            let sent = self.sent_at(pair, seq);
            let sealed = (at - sent).as_millis_f64();
            let Some(twin) = self.twins[pair]
                .get(seq as usize)
                .filter(|&&t| t != i64::MIN)
                .map(|&t| (Instant::from_micros(t) - sent).as_millis_f64())
            else {
                continue;
            };
            if seq == 0 {
                first_seen[pair] = true;
                first_ms.push(sealed);
                first_plain_ms.push(twin);
                extra_ms.push(sealed - twin);
                if let Some(rtt) = self.ping_ms[pair] {
                    extra_rtts.push((sealed - twin) / rtt);
                    extra_within.push(sealed - twin <= rtt + 0.001);
                }
            } else if twin > 0.0 {
                later_ratio.push(sealed / twin);
            }
        }
        for (pair, arrivals) in self.twins.iter().enumerate() {
            twins_delivered += arrivals.iter().filter(|&&t| t != i64::MIN).count() as u64;
            if arrivals.first().is_some_and(|&t| t != i64::MIN) && !first_seen[pair] {
                first_lost += 1;
            }
        }
        let stats = sim.total_e2e_stats();
        // A microsecond of slack for the rounding of times in milliseconds.
        let within_one_rtt = extra_within.iter().filter(|&&within| within).count();
        let later_slower = later_ratio.iter().filter(|&&x| x > 1.01).count();
        let per_payload = |bytes: u64| bytes as f64 / stats.payloads_sent.max(1) as f64;
        E2eReport {
            pairs: self.pair_count(),
            peers_per_node: self.config.peers_per_node,
            interval_s: self.config.interval.as_secs_f64(),
            start_s: self.config.start.as_secs_f64(),
            payload_bytes: self.config.payload_bytes.max(HEADER_LEN),
            sent: self.sent,
            delivered,
            twins_delivered,
            first_payloads_lost: first_lost,
            first_payload_ms: percentiles_of(&mut first_ms),
            first_payload_plain_ms: percentiles_of(&mut first_plain_ms),
            first_payload_extra_ms: percentiles_of(&mut extra_ms),
            first_payload_extra_rtts: percentiles_of(&mut extra_rtts),
            first_payload_extra_max_rtts: extra_rtts.iter().copied().fold(0.0, f64::max),
            first_within_one_rtt_fraction: within_one_rtt as f64 / extra_within.len().max(1) as f64,
            later_payload_ratio: percentiles_of(&mut later_ratio),
            later_payload_ratio_max: later_ratio.iter().copied().fold(0.0, f64::max),
            later_slower_than_1pct_fraction: later_slower as f64 / later_ratio.len().max(1) as f64,
            bytes_added_per_payload: hopwise_proto::e2e::OVERHEAD,
            e2e_bytes_per_payload: per_payload(stats.bytes_sent),
            handshakes_completed: stats.handshakes_completed,
            rekeys: stats.rekeys,
            handshakes_failed: stats.handshakes_failed,
            handshakes_timed_out: stats.handshakes_timed_out,
            dropped: E2eDrops {
                bad_tag: stats.dropped_bad_tag,
                replayed: stats.dropped_replayed,
                no_session: stats.dropped_no_session,
                malformed: stats.dropped_malformed,
                unexpected: stats.dropped_unexpected,
                unknown_port: stats.dropped_unknown_port,
                unsent: stats.dropped_unsent,
            },
        }
    }
}

/// The `e2e` section of `report.json`: delivery times of end-to-end datagrams against their
/// plain twins, and what the end-to-end layer sent.
#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub pairs: usize,
    pub peers_per_node: usize,
    pub interval_s: f64,
    pub start_s: f64,
    pub payload_bytes: usize,
    /// Sealed datagrams sent, delivered, and twins delivered.
    pub sent: u64,
    pub delivered: u64,
    pub twins_delivered: u64,
    /// Pairs whose first twin arrived but whose first sealed datagram did not.
    pub first_payloads_lost: usize,
    /// One-way delivery time of each pair's first sealed datagram (which waits for the
    /// handshake), of its twin, the difference, and the difference in overlay round trips.
    pub first_payload_ms: Percentiles,
    pub first_payload_plain_ms: Percentiles,
    pub first_payload_extra_ms: Percentiles,
    pub first_payload_extra_rtts: Percentiles,
    pub first_payload_extra_max_rtts: f64,
    /// Pairs whose first datagram waited at most one overlay round trip more than its twin.
    pub first_within_one_rtt_fraction: f64,
    /// Later datagrams: delivery time over their twin's.
    pub later_payload_ratio: Percentiles,
    pub later_payload_ratio_max: f64,
    pub later_slower_than_1pct_fraction: f64,
    /// Bytes a sealed datagram adds to the same payload sent plain.
    pub bytes_added_per_payload: usize,
    /// Everything the end-to-end layer sent (handshakes, acknowledgements, sealed payloads)
    /// per payload sent.
    pub e2e_bytes_per_payload: f64,
    pub handshakes_completed: u64,
    pub rekeys: u64,
    pub handshakes_failed: u64,
    pub handshakes_timed_out: u64,
    /// What the end-to-end layers of all nodes dropped, by cause.
    pub dropped: E2eDrops,
}

/// End-to-end drops by cause (see `hopwise_proto::e2e::E2eStats`).
#[derive(Debug, Clone, Serialize)]
pub struct E2eDrops {
    pub bad_tag: u64,
    pub replayed: u64,
    pub no_session: u64,
    pub malformed: u64,
    pub unexpected: u64,
    pub unknown_port: u64,
    pub unsent: u64,
}
