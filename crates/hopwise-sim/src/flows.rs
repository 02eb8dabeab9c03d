//! Application flows: constant-rate packet streams between random node pairs, used to measure
//! how long traffic stops when relays die.

use hopwise_proto::{Duration, Event, Instant};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sim::{Recorded, Simulation};

/// Each flow sends one packet per interval (20 packets/s).
pub const FLOW_INTERVAL: Duration = Duration::from_millis(50);
/// Longest path walked when tracing a flow through the routing tables.
const MAX_TRACE_HOPS: usize = 32;

pub struct Flows {
    pairs: Vec<(usize, usize)>,
    next_seq: u32,
    /// Arrival times per flow.
    arrivals: Vec<Vec<Instant>>,
}

impl Flows {
    /// `count` flows between distinct random nodes, drawn from `seed`.
    pub fn new(nodes: usize, count: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x666c_6f77);
        let pairs = if nodes < 2 {
            Vec::new()
        } else {
            (0..count)
                .map(|_| {
                    let a = rng.random_range(0..nodes);
                    let b = (a + rng.random_range(1..nodes)) % nodes;
                    (a, b)
                })
                .collect()
        };
        Self {
            arrivals: vec![Vec::new(); pairs.len()],
            pairs,
            next_seq: 0,
        }
    }

    pub fn pairs(&self) -> &[(usize, usize)] {
        &self.pairs
    }

    /// Every flow sends its next packet now.
    pub fn send(&mut self, sim: &mut Simulation) {
        let seq = self.next_seq;
        self.next_seq += 1;
        for (flow, &(a, b)) in self.pairs.iter().enumerate() {
            let mut payload = (flow as u32).to_be_bytes().to_vec();
            payload.extend_from_slice(&seq.to_be_bytes());
            sim.send_data(a, b, payload)
                .expect("eight bytes fit a datagram");
        }
    }

    /// Takes note of the deliveries among `recorded`.
    pub fn record(&mut self, recorded: &[Recorded]) {
        for r in recorded {
            // A flow's packet is 8 bytes: its flow and sequence numbers.
            let Event::Delivered { payload, .. } = &r.event else {
                continue;
            };
            if payload.len() != 8 {
                continue;
            }
            let Some(flow) = payload
                .get(..4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            else {
                continue;
            };
            if self.pairs.get(flow).is_some_and(|p| p.1 == r.node) {
                self.arrivals[flow].push(r.at);
            }
        }
    }

    /// The nodes a packet of `flow` would cross now, following each node's route table.
    pub fn trace(&self, sim: &Simulation, flow: usize) -> Vec<usize> {
        let (mut at, destination) = self.pairs[flow];
        let destination_id = sim.id_of(destination);
        let mut path = vec![at];
        while at != destination && path.len() <= MAX_TRACE_HOPS {
            let Some(next) = sim
                .node(at)
                .and_then(|n| n.route(&destination_id))
                .and_then(|r| sim.index_of_id(&r.next_hop))
            else {
                break;
            };
            at = next;
            path.push(at);
        }
        path
    }

    /// The longest stretch without arrivals for `flow` between `from` and `until` (the end of
    /// the measurement), in milliseconds.
    pub fn longest_gap_ms(&self, flow: usize, from: Instant, until: Instant) -> f64 {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for &at in self.arrivals[flow]
            .iter()
            .filter(|&&at| at > from && at <= until)
        {
            longest = longest.max(at - last);
            last = at;
        }
        longest = longest.max(until - last);
        longest.as_millis_f64()
    }

    /// When `flow` last received a packet at or before `at`.
    pub fn last_arrival_before(&self, flow: usize, at: Instant) -> Option<Instant> {
        self.arrivals[flow]
            .iter()
            .copied()
            .filter(|&t| t <= at)
            .max()
    }
}
