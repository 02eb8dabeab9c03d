//! The discrete-event loop: many real [`Node`]s in one process, virtual time jumping from one
//! event to the next.
//!
//! Events are ordered by (time, insertion number), so ties resolve in a fixed order and a seed
//! fully determines a run.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use hopwise_proto::e2e::{E2eStats, Port};
use hopwise_proto::kv::{Kv, KvConfig, KvStats};
use hopwise_proto::secure::{Keys, SecureNode, SecureStats, crypto};
use hopwise_proto::service::{Host, OverlayNode, RegisterError, Service, ServiceHandle, ports};
use hopwise_proto::{
    Algorithm, Config, Coordinate, Duration, Event, Input, Instant, Node, NodeId, NodeStats,
    Output, PayloadTooLarge, ZoneConfig,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::datagrams::DatagramConfig;
use crate::kvload::KvWorkloadConfig;
use crate::matrix::Matrix;
use crate::network::{Network, NetworkConfig};

const BASE_ADDR: u32 = u32::from_be_bytes([10, 0, 0, 0]);
const PORT: u16 = 7000;

/// Simulated address of node `index`: 10.0.0.1, 10.0.0.2, ...
pub fn addr_of(index: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(BASE_ADDR + index as u32 + 1), PORT))
}

fn index_of(addr: SocketAddr, nodes: usize) -> Option<usize> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let index = u32::from(*v4.ip()).checked_sub(BASE_ADDR + 1)? as usize;
    (index < nodes && v4.port() == PORT).then_some(index)
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Bootstrap addresses each node starts with (drawn at random among the others).
    pub bootstrap_per_node: usize,
    /// Nodes start at random times within this window.
    pub start_spread: Duration,
    /// Make node 0 a landmark (fixed at the origin) and give it to every node as a bootstrap.
    pub landmark: bool,
    pub algorithm: Algorithm,
    pub network: NetworkConfig,
    /// Matrices that take over from the first one, each after `network.matrix_interval`.
    pub later_matrices: Vec<Matrix>,
    /// What the run measures besides coordinates.
    pub scenario: Scenario,
    /// Zoned routing for every node, or flat routing with `None`.
    pub zones: Option<ZoneConfig>,
    /// Run every node behind the real hop-by-hop Noise layer: handshakes, encryption, replay
    /// windows. End-to-end sessions run either way.
    pub secure: bool,
    /// Tags and connect-tags of particular nodes (all others have none).
    pub tags: Vec<NodeTags>,
    /// The key-value store every member runs.
    pub kv: KvConfig,
}

#[derive(Debug, Clone, Default)]
pub struct NodeTags {
    pub node: usize,
    pub tags: Vec<String>,
    pub connect_tags: Vec<String>,
}

/// Traffic and failures a run injects, and what it measures at the end.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Measure overlay round trips between node pairs at the end of the run.
    pub measure_pairs: bool,
    /// Flows of 20 packets/s between random pairs (see `flows`).
    pub flows: usize,
    /// Fraction of nodes killed at `fail_at`.
    pub fail_nodes: f64,
    pub fail_at: Option<Duration>,
    /// End-to-end datagrams between random pairs, with plain twins (see `datagrams`).
    pub datagrams: Option<DatagramConfig>,
    /// Failure waves: `fail_waves` times, `fail_every` apart from `fail_at`, another
    /// `fail_nodes` of all nodes is killed among the running ones.
    pub fail_waves: usize,
    pub fail_every: Duration,
    /// Key-value operations spread over the run (see `kvload`).
    pub kv: Option<KvWorkloadConfig>,
    /// Topics, subscribers and publishers (see `pubsub`).
    pub pubsub: Option<crate::pubsub::PubSubWorkloadConfig>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            measure_pairs: true,
            flows: 0,
            fail_nodes: 0.0,
            fail_at: None,
            datagrams: None,
            fail_waves: 1,
            fail_every: Duration::from_secs(40),
            kv: None,
            pubsub: None,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            bootstrap_per_node: 2,
            start_spread: Duration::from_secs(1),
            landmark: false,
            algorithm: Algorithm::Fit,
            network: NetworkConfig::default(),
            later_matrices: Vec::new(),
            scenario: Scenario::default(),
            zones: None,
            secure: false,
            tags: Vec::new(),
            kv: KvConfig::default(),
        }
    }
}

/// Each node's bootstrap addresses, all nodes it can open contact with (not behind a NAT). The
/// first is a random earlier such node, so the bootstrap graph is a spanning tree (wherever the
/// network allows one) and the cold-start overlay is connected; the others are drawn at random.
/// With a landmark, everyone knows node 0.
fn bootstrap_lists(
    network: &Network,
    config: &SimConfig,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<SocketAddr>> {
    let n = network.len();
    (0..n)
        .map(|index| {
            let mut list = Vec::new();
            if config.landmark && index != 0 {
                list.push(addr_of(0));
            }
            let earlier: Vec<usize> = (0..index)
                .filter(|&j| network.can_initiate(index, j))
                .collect();
            if !earlier.is_empty() && config.bootstrap_per_node > 0 {
                list.push(addr_of(earlier[rng.random_range(0..earlier.len())]));
            }
            let wanted = config.bootstrap_per_node + usize::from(config.landmark && index != 0);
            let mut attempts = 0;
            while n > 1 && list.len() < wanted && attempts < 64 * wanted {
                attempts += 1;
                let other = (index + rng.random_range(1..n)) % n;
                if !network.is_natted(other) {
                    list.push(addr_of(other));
                }
            }
            list
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: Instant,
    order: u64,
    what: Happening,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Happening {
    Start {
        node: usize,
    },
    Wake {
        node: usize,
    },
    Deliver {
        from: usize,
        to: usize,
        data: Vec<u8>,
    },
}

/// An event a node reported that a scenario may want to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub at: Instant,
    pub node: usize,
    pub event: Event,
}

/// A simulated member: a host over the protocol node alone, or over the secure layer. Either
/// way it runs the real end-to-end layer and whatever services a scenario registers.
// Plain nodes stay inline: they are the common case, and a slot holds one node either way.
#[allow(clippy::large_enum_variant)]
enum SimNode {
    Plain(Host<Node>),
    Secure(Box<Host<SecureNode>>),
}

/// Runs the same expression on whichever host a member has.
macro_rules! on_host {
    ($node:expr, $host:ident => $body:expr) => {
        match $node {
            SimNode::Plain($host) => $body,
            SimNode::Secure($host) => $body,
        }
    };
}

impl SimNode {
    fn node(&self) -> &Node {
        on_host!(self, host => host.node())
    }

    fn node_mut(&mut self) -> &mut Node {
        on_host!(self, host => host.overlay_mut().node_mut())
    }

    fn handle_input(&mut self, input: Input<'_>) {
        on_host!(self, host => host.handle_input(input))
    }

    fn poll_output(&mut self) -> Output {
        on_host!(self, host => host.poll_output())
    }

    fn e2e_stats(&self) -> &E2eStats {
        on_host!(self, host => host.e2e_stats())
    }

    fn handshakes_in_progress(&self) -> usize {
        on_host!(self, host => host.handshakes_in_progress())
    }

    fn register<S: Service>(
        &mut self,
        port: Port,
        service: S,
    ) -> Result<ServiceHandle<S>, RegisterError> {
        on_host!(self, host => host.register(port, service))
    }

    fn service_mut<S: Service>(&mut self, handle: ServiceHandle<S>) -> &mut S {
        on_host!(self, host => host.service_mut(handle))
    }

    fn service_with_node<S: Service>(&mut self, handle: ServiceHandle<S>) -> (&mut S, &Node) {
        on_host!(self, host => host.service_with_node(handle))
    }

    fn service<S: Service>(&self, handle: ServiceHandle<S>) -> &S {
        on_host!(self, host => host.service(handle))
    }
}

/// Rewrites what a node sends: given each datagram it emits, returns the datagrams that go out
/// in its place (none to drop it, several to add some). Tests use it to make a member relay
/// misbehave.
pub type Tamper = Box<dyn FnMut(Instant, Vec<u8>) -> Vec<Vec<u8>>>;

pub struct Simulation {
    /// Each node's configuration until it starts.
    configs: Vec<Option<Config>>,
    /// The configurations nodes were created with, for restarts.
    first_configs: Vec<Config>,
    restarts: u64,
    /// Each node's static keys; its id is their public key's.
    keys: Vec<Keys>,
    secure: bool,
    ids: Vec<NodeId>,
    index_by_id: HashMap<NodeId, usize>,
    recorded: Vec<Recorded>,
    nodes: Vec<Option<SimNode>>,
    /// Secure-layer and end-to-end counters of nodes that were stopped, so totals cover the
    /// whole run.
    stopped_secure: SecureStats,
    stopped_e2e: E2eStats,
    /// The key-value store every member runs, and the counters of stopped members' stores.
    kv_handles: Vec<Option<ServiceHandle<Kv>>>,
    kv_config: KvConfig,
    stopped_kv: Vec<KvStats>,
    tampers: HashMap<usize, Tamper>,
    /// The deadline each node last asked for; a popped wake-up that differs is stale.
    wake_at: Vec<Option<Instant>>,
    network: Network,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    now: Instant,
    events: u64,
}

impl Simulation {
    pub fn new(matrix: Matrix, config: &SimConfig) -> Self {
        let n = matrix.len();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut matrices = vec![matrix];
        matrices.extend(config.later_matrices.iter().cloned());
        let network = Network::new(matrices, config.network.clone(), rng.random());
        let bootstrap = bootstrap_lists(&network, config, &mut rng);
        let mut sim = Self {
            configs: Vec::with_capacity(n),
            first_configs: Vec::with_capacity(n),
            restarts: 0,
            keys: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            index_by_id: HashMap::with_capacity(n),
            recorded: Vec::new(),
            nodes: (0..n).map(|_| None).collect(),
            secure: config.secure,
            stopped_secure: SecureStats::default(),
            stopped_e2e: E2eStats::default(),
            kv_handles: vec![None; n],
            kv_config: config.kv.clone(),
            stopped_kv: Vec::new(),
            tampers: HashMap::new(),
            wake_at: vec![None; n],
            network,
            queue: BinaryHeap::new(),
            next_order: 0,
            now: Instant::ZERO,
            events: 0,
        };
        // Plain and secure runs draw the same keys, so they simulate the same node ids.
        let network_key: [u8; 32] = rng.random();
        for (index, bootstrap) in bootstrap.into_iter().enumerate() {
            let (private_key, public_key) = crypto::generate_keypair(&mut rng);
            let keys = Keys {
                private_key,
                public_key,
                network_key,
            };
            let id = NodeId::from_public_key(&keys.public_key);
            sim.keys.push(keys);
            sim.ids.push(id);
            sim.index_by_id.insert(id, index);
            let mut node_config = Config::new(id, rng.random());
            node_config.vivaldi.algorithm = config.algorithm;
            node_config.landmark = config.landmark && index == 0;
            node_config.bootstrap = bootstrap;
            node_config.routing.zones = config.zones;
            if let Some(tagged) = config.tags.iter().find(|t| t.node == index) {
                node_config.tags = tagged.tags.clone();
                node_config.connect_tags = tagged.connect_tags.clone();
            }
            sim.first_configs.push(node_config.clone());
            sim.configs.push(Some(node_config));
            let start = Instant::ZERO + config.start_spread.mul_f64(rng.random::<f64>());
            sim.schedule(start, Happening::Start { node: index });
        }
        sim
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Events processed so far (node starts, timer wake-ups and datagram deliveries).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The matrix in force now.
    pub fn matrix(&self) -> &Matrix {
        self.network.matrix_at(self.now)
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Cuts, partitions and heals the simulated network while nodes run.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, index: usize) -> Option<&Node> {
        self.nodes[index].as_ref().map(SimNode::node)
    }

    pub fn id_of(&self, index: usize) -> NodeId {
        self.ids[index]
    }

    pub fn index_of_id(&self, id: &NodeId) -> Option<usize> {
        self.index_by_id.get(id).copied()
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].is_some()
    }

    /// Pings and deliveries reported since the last call.
    pub fn take_recorded(&mut self) -> Vec<Recorded> {
        std::mem::take(&mut self.recorded)
    }

    /// Node `from` pings node `to` through the overlay now; the reply is recorded.
    pub fn ping(&mut self, from: usize, to: usize, token: u64) {
        let destination = self.ids[to];
        if let Some(node) = self.nodes[from].as_mut() {
            node.node_mut().ping(self.now, destination, token);
            self.drain(from);
        }
    }

    /// Node `from` sends `payload` to node `to` through the overlay now (nothing if `from` is
    /// not running).
    pub fn send_data(
        &mut self,
        from: usize,
        to: usize,
        payload: Vec<u8>,
    ) -> Result<(), PayloadTooLarge> {
        let destination = self.ids[to];
        if let Some(node) = self.nodes[from].as_mut() {
            node.node_mut().send_data(self.now, destination, payload)?;
            self.drain(from);
        }
        Ok(())
    }

    /// Every node's coordinate and error estimate (origin and full error for nodes not started).
    pub fn coordinates(&self) -> Vec<(Coordinate, f64)> {
        self.nodes
            .iter()
            .map(|n| {
                n.as_ref()
                    .map(SimNode::node)
                    .map_or((Coordinate::default(), 1.5), |n| {
                        (n.coordinate(), n.coordinate_error())
                    })
            })
            .collect()
    }

    /// Counters summed over all nodes.
    pub fn total_stats(&self) -> NodeStats {
        let mut total = NodeStats::default();
        for stats in self.nodes.iter().flatten().map(|n| n.node().stats()) {
            total += stats;
        }
        total
    }

    /// Secure-layer counters summed over all nodes (zero in a plain run).
    pub fn total_secure_stats(&self) -> SecureStats {
        let mut total = self.stopped_secure;
        for node in self.nodes.iter().flatten() {
            if let SimNode::Secure(host) = node {
                total += host.overlay().secure_stats();
            }
        }
        total
    }

    /// End-to-end counters summed over all nodes.
    pub fn total_e2e_stats(&self) -> E2eStats {
        let mut total = self.stopped_e2e;
        for node in self.nodes.iter().flatten() {
            total += node.e2e_stats();
        }
        total
    }

    /// End-to-end counters of node `index` (zero if it is not running).
    pub fn e2e_stats(&self, index: usize) -> E2eStats {
        self.nodes[index]
            .as_ref()
            .map_or_else(E2eStats::default, |n| *n.e2e_stats())
    }

    /// End-to-end handshakes node `index` has in progress (0 if it is not running).
    pub fn handshakes_in_progress(&self, index: usize) -> usize {
        self.nodes[index]
            .as_ref()
            .map_or(0, SimNode::handshakes_in_progress)
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The static keys of node `index`.
    pub fn keys(&self, index: usize) -> &Keys {
        &self.keys[index]
    }

    /// Stops node `index` at once, as if its process died: it sends nothing more and whatever
    /// reaches it is lost.
    pub fn stop_node(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].take() {
            self.stopped_e2e += node.e2e_stats();
            if let Some(handle) = self.kv_handles[index].take() {
                self.stopped_kv.push(*node.service(handle).stats());
            }
            if let SimNode::Secure(host) = node {
                self.stopped_secure += host.overlay().secure_stats();
            }
        }
        self.configs[index] = None;
        self.wake_at[index] = None;
    }

    /// Stops node `index` and starts it again now, with the same keys and bootstrap addresses,
    /// a new random seed and none of its old state: a restarted process.
    pub fn restart_node(&mut self, index: usize) {
        self.stop_node(index);
        let mut config = self.first_configs[index].clone();
        self.restarts += 1;
        config.rng_seed = config.rng_seed.wrapping_add(self.restarts);
        self.configs[index] = Some(config);
        self.schedule(self.now, Happening::Start { node: index });
    }

    /// Registers `service` on `port` of node `index`; `None` if the node is not running.
    pub fn register<S: Service>(
        &mut self,
        index: usize,
        port: Port,
        service: S,
    ) -> Option<Result<ServiceHandle<S>, RegisterError>> {
        Some(self.nodes[index].as_mut()?.register(port, service))
    }

    /// Runs a user call on a service of node `index` now, and sends what it queued; `None` if
    /// the node is not running.
    pub fn with_service<S: Service, R>(
        &mut self,
        index: usize,
        handle: ServiceHandle<S>,
        call: impl FnOnce(&mut S) -> R,
    ) -> Option<R> {
        self.with_service_and_node(index, handle, |service, _, _| call(service))
    }

    /// Like [`Simulation::with_service`], for calls that need the overlay node in view.
    pub fn with_service_and_node<S: Service, R>(
        &mut self,
        index: usize,
        handle: ServiceHandle<S>,
        call: impl FnOnce(&mut S, &Node, Instant) -> R,
    ) -> Option<R> {
        let now = self.now;
        let node = self.nodes[index].as_mut()?;
        node.handle_input(Input::Timeout(now));
        let (service, overlay) = node.service_with_node(handle);
        let result = call(service, overlay, now);
        self.drain(index);
        Some(result)
    }

    /// A service of node `index`; `None` if the node is not running.
    pub fn service<S: Service>(&self, index: usize, handle: ServiceHandle<S>) -> Option<&S> {
        Some(self.nodes[index].as_ref()?.service(handle))
    }

    /// The key-value store of node `index`; `None` if the node is not running.
    pub fn kv(&self, index: usize) -> Option<&Kv> {
        self.service(index, self.kv_handles[index]?)
    }

    /// Runs a user call on the key-value store of node `index` now (see
    /// [`Simulation::with_service`]).
    pub fn with_kv<R>(
        &mut self,
        index: usize,
        call: impl FnOnce(&mut Kv, Instant) -> R,
    ) -> Option<R> {
        let handle = self.kv_handles[index]?;
        let now = self.now;
        self.with_service(index, handle, |kv| call(kv, now))
    }

    /// The events the store of node `index` has for its user, with when each happened.
    pub fn kv_events(&mut self, index: usize) -> Vec<(Instant, hopwise_proto::kv::KvEvent)> {
        let Some(handle) = self.kv_handles[index] else {
            return Vec::new();
        };
        let Some(node) = self.nodes[index].as_mut() else {
            return Vec::new();
        };
        let kv = node.service_mut(handle);
        std::iter::from_fn(|| kv.poll_event()).collect()
    }

    /// The counters of every store that ran, stopped ones included.
    pub fn all_kv_stats(&self) -> Vec<KvStats> {
        let running = (0..self.len()).filter_map(|i| self.kv(i).map(|kv| *kv.stats()));
        self.stopped_kv.iter().copied().chain(running).collect()
    }

    /// Makes node `index` send, in place of every datagram it emits, what `tamper` returns.
    pub fn tamper(&mut self, index: usize, tamper: Tamper) {
        self.tampers.insert(index, tamper);
    }

    /// Delivers `datagram` to node `to` as if node `from` had sent it now (after the network's
    /// delay, if the network carries it).
    pub fn inject(&mut self, from: usize, to: usize, datagram: Vec<u8>) {
        if let Some(delay) = self.network.transit(from, to, self.now) {
            let happening = Happening::Deliver {
                from,
                to,
                data: datagram,
            };
            self.schedule(self.now + delay, happening);
        }
    }

    /// Processes every event up to and including `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(event) = self.queue.pop().expect("peeked");
            self.now = event.at;
            self.dispatch(event.what);
        }
        self.now = self.now.max(until);
    }

    fn schedule(&mut self, at: Instant, what: Happening) {
        self.queue.push(Reverse(Scheduled {
            at,
            order: self.next_order,
            what,
        }));
        self.next_order += 1;
    }

    fn dispatch(&mut self, what: Happening) {
        let now = self.now;
        let node = match what {
            Happening::Start { node } => {
                let Some(config) = self.configs[node].take() else {
                    return; // stopped before it started
                };
                let keys = &self.keys[node];
                // The end-to-end layer draws from a stream of its own.
                let e2e_seed = config.rng_seed ^ 0xE2E0_0000_0000_E2E0;
                self.nodes[node] = Some(if self.secure {
                    let overlay = SecureNode::new(config, keys, now);
                    SimNode::Secure(Box::new(Host::new(overlay, keys, e2e_seed, now)))
                } else {
                    SimNode::Plain(Host::new(Node::new(config, now), keys, e2e_seed, now))
                });
                let id = self.ids[node];
                let kv = Kv::new(id, self.kv_config.clone(), e2e_seed ^ 0x6b76, now);
                let running = self.nodes[node].as_mut().expect("just started");
                self.kv_handles[node] = Some(running.register(ports::KV, kv).expect("a free port"));
                self.nodes[node]
                    .as_mut()
                    .expect("just started")
                    .handle_input(Input::Timeout(now));
                node
            }
            Happening::Wake { node } => {
                if self.wake_at[node] != Some(now) {
                    return; // superseded by a later poll_timeout
                }
                self.wake_at[node] = None;
                let Some(running) = self.nodes[node].as_mut() else {
                    return;
                };
                running.handle_input(Input::Timeout(now));
                node
            }
            Happening::Deliver { from, to, data } => {
                let Some(receiver) = self.nodes[to].as_mut() else {
                    return; // not running: the datagram is lost
                };
                receiver.handle_input(Input::Datagram {
                    now,
                    from: addr_of(from),
                    data: &data,
                });
                to
            }
        };
        self.events += 1;
        self.drain(node);
    }

    fn drain(&mut self, index: usize) {
        let n = self.nodes.len();
        loop {
            let output = self.nodes[index]
                .as_mut()
                .expect("draining a running node")
                .poll_output();
            match output {
                Output::Transmit(transmit) => {
                    let Some(to) = index_of(transmit.destination, n) else {
                        continue;
                    };
                    let datagrams = match self.tampers.get_mut(&index) {
                        Some(tamper) => tamper(self.now, transmit.contents),
                        None => vec![transmit.contents],
                    };
                    for datagram in datagrams {
                        self.inject(index, to, datagram);
                    }
                }
                Output::Event(event @ (Event::PingReply { .. } | Event::Delivered { .. })) => {
                    self.recorded.push(Recorded {
                        at: self.now,
                        node: index,
                        event,
                    })
                }
                Output::Event(_) => {}
                Output::Timeout(at) => {
                    let at = at.max(self.now);
                    if self.wake_at[index] != Some(at) {
                        self.wake_at[index] = Some(at);
                        self.schedule(at, Happening::Wake { node: index });
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_back_to_indices() {
        for i in [0, 1, 255, 256, 9_999] {
            assert_eq!(index_of(addr_of(i), 10_000), Some(i));
        }
        assert_eq!(index_of(addr_of(10), 10), None);
        assert_eq!(index_of("10.0.0.0:7000".parse().unwrap(), 10), None);
        assert_eq!(index_of("10.0.0.1:7001".parse().unwrap(), 10), None);
    }
}
