//! The hopwise node: one sans-I/O state machine per overlay member.
//!
//! # Driving a node
//!
//! The driver owns the socket and the clock. It
//! 1. feeds every received datagram and every expired deadline through [`Node::handle_input`];
//! 2. then drains [`Node::poll_output`] until it returns [`Output::Timeout`], sending each
//!    [`Output::Transmit`] and acting on each [`Output::Event`];
//! 3. calls `handle_input(Input::Timeout(now))` once that deadline has passed.
//!
//! The node never reads a clock and draws all randomness from the seed in its [`Config`], so the
//! same inputs always give the same outputs.

mod links;
mod nearest;
mod requests;
mod routing;
mod zones;

pub use links::{LinkKind, RoutingLink};
pub use routing::{PayloadTooLarge, RouteInfo};

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::ops::AddAssign;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::trace;

use crate::coords::{Coordinate, Observation, Vivaldi, VivaldiConfig};
use crate::keyed::{self, HashKey, Map};
use crate::link::{Link, LossVerdict};
use crate::peers::{KnownNode, PeerTable};
use crate::routing::{RouteTable, ZoneConfig};
use crate::tags::TagFilter;
use crate::wire::{GossipEntry, MAX_GOSSIP, Message, Packet, Probe, WireCoord};
use crate::{Duration, Instant, NodeId};

#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// Seeds this node's random generator; a node's behaviour is a function of it and its inputs.
    pub rng_seed: u64,
    /// Addresses to contact at start, before anything is known.
    pub bootstrap: Vec<SocketAddr>,
    /// A landmark is pinned at the origin of the coordinate space and never moves.
    pub landmark: bool,
    /// Mean time between two probes sent by this node (each timer is jittered by ±20%).
    pub probe_interval: Duration,
    /// A probe unanswered after this long counts as lost.
    pub probe_timeout: Duration,
    /// Consecutive lost probes after which a link is declared down.
    pub max_missed_probes: u32,
    /// Neighbours kept because they are the closest found so far.
    pub near_neighbours: usize,
    /// Neighbours kept at random, so the coordinate is constrained from every direction.
    pub far_neighbours: usize,
    /// Share of probes spent on nodes that are not yet neighbours once the set is full.
    pub explore_fraction: f64,
    /// The share in the node's first `startup_exploration`. Measured nodes are the only
    /// candidates for routing links, so exploring is how a new node finds its nearest nodes and
    /// its relays; every neighbour replaced changes a direct route, though, so a mature node
    /// explores less.
    pub startup_explore_fraction: f64,
    pub startup_exploration: Duration,
    /// Gossip entries carried by each probe and reply.
    pub gossip_per_probe: usize,
    /// Bound on the table of known nodes.
    pub max_known_nodes: usize,
    /// This node's tags (at most [`crate::tags::MAX_TAGS`]), for others' `connect_tags`.
    pub tags: Vec<String>,
    /// Tags of nodes this node keeps a routing link to, wherever they are: every known node
    /// carrying one of them gets a link (a [`LinkKind::Tagged`]), up to `max_tagged_links`.
    pub connect_tags: Vec<String>,
    pub max_tagged_links: usize,
    pub vivaldi: VivaldiConfig,
    pub routing: RoutingConfig,
    /// The largest datagram this node sends (before the secure layer seals it), from
    /// [`crate::wire::BASE_DATAGRAM`] to [`crate::wire::MAX_DATAGRAM`]: what the path MTU
    /// carries ([`crate::wire::datagram_for_path_mtu`]). It bounds the payloads the node
    /// originates; it forwards and accepts datagrams up to `MAX_DATAGRAM` from anyone.
    pub max_datagram: usize,
}

/// How a node chooses its routing links and exchanges routes.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Routing links this node opens to the lowest-latency nodes it has measured.
    pub near_links: usize,
    /// Routing links this node opens to the relays that most shorten its paths.
    pub relay_links: usize,
    /// Bound on all routing links, including those other nodes opened to this one.
    pub max_links: usize,
    /// Probe interval of a routing link that carries no traffic.
    pub idle_probe_interval: Duration,
    /// Probe interval of a link that forwarded data within the last second: fast failure
    /// detection where it matters, without probing every link that fast.
    pub active_probe_interval: Duration,
    /// Consecutive lost probes after which a routing link or session is declared down.
    pub max_missed_probes: u32,
    /// Route improvements are batched for this long before they are sent.
    pub update_delay: Duration,
    /// Lost or worsened routes are sent after this short delay.
    pub urgent_update_delay: Duration,
    /// How often every routing link hears the route changes that were withheld from it because
    /// they did not matter to it at the time.
    pub refresh_interval: Duration,
    /// Time between two reviews of the routing links.
    pub review_interval: Duration,
    /// A relay link is replaced by a better candidate at most this often.
    pub relay_swap_interval: Duration,
    /// The same in zoned routing, where a new link costs both ends a full table of hundreds to
    /// thousands of entries: at 2,000 nodes, swapping at most every 60 s instead of 20 s cut
    /// route-update traffic by 9% at the same median stretch.
    pub zoned_relay_swap_interval: Duration,
    /// Bound on the destinations in the route table.
    pub max_destinations: usize,
    /// Bound on on-demand direct sessions.
    pub max_sessions: usize,
    /// Zoned routing (for networks beyond about a thousand nodes), or flat routing with `None`.
    /// Every member of a network must use the same setting.
    pub zones: Option<ZoneConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            near_links: 8,
            relay_links: 8,
            max_links: 64,
            idle_probe_interval: Duration::from_secs(5),
            active_probe_interval: Duration::from_millis(100),
            max_missed_probes: 3,
            update_delay: Duration::from_secs(1),
            urgent_update_delay: Duration::from_millis(200),
            refresh_interval: Duration::from_secs(30),
            review_interval: Duration::from_secs(5),
            relay_swap_interval: Duration::from_secs(20),
            zoned_relay_swap_interval: Duration::from_secs(60),
            max_destinations: 65_536,
            max_sessions: 1_024,
            zones: None,
        }
    }
}

impl Config {
    pub fn new(id: NodeId, rng_seed: u64) -> Self {
        Self {
            id,
            rng_seed,
            bootstrap: Vec::new(),
            landmark: false,
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(1_500),
            max_missed_probes: 4,
            near_neighbours: 4,
            far_neighbours: 44,
            explore_fraction: 0.2,
            startup_explore_fraction: 0.4,
            startup_exploration: Duration::from_secs(120),
            gossip_per_probe: 3,
            max_known_nodes: 4_096,
            tags: Vec::new(),
            connect_tags: Vec::new(),
            max_tagged_links: 16,
            vivaldi: VivaldiConfig::default(),
            routing: RoutingConfig::default(),
            max_datagram: crate::wire::BASE_DATAGRAM,
        }
    }
}

pub enum Input<'a> {
    Datagram {
        now: Instant,
        from: SocketAddr,
        data: &'a [u8],
    },
    Timeout(Instant),
}

#[must_use]
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
    /// Nothing more to do until this deadline (or the next datagram).
    Timeout(Instant),
}

/// A datagram to send.
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("destination", &self.destination)
            .field("len", &self.contents.len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    LinkUp {
        id: NodeId,
        addr: SocketAddr,
        rtt_ms: f64,
    },
    LinkDown {
        id: NodeId,
    },
    /// The answer to [`Node::ping`] came back through the overlay.
    PingReply {
        destination: NodeId,
        token: u64,
        rtt_ms: f64,
        /// Links the ping crossed on its way out, and the pong on its way back.
        ping_hops: u8,
        pong_hops: u8,
    },
    /// The answer to [`Node::trace`]: the round trip and every node that forwarded the trace,
    /// with its measured RTT to the next hop. The first `outbound_hops` entries are the way
    /// out, starting with this node; the rest are the way back, starting with the destination.
    TraceReply {
        destination: NodeId,
        token: u64,
        rtt_ms: f64,
        outbound_hops: u8,
        path: Vec<crate::wire::TraceHop>,
    },
    /// A payload sent with [`Node::send_data`] reached this node. `source` is what the packet
    /// claims: a member relay could have changed it, or the payload.
    Delivered {
        source: NodeId,
        hops: u8,
        payload: Vec<u8>,
    },
    /// An end-to-end sealed datagram ([`Node::send_sealed`]) reached this node, for the
    /// end-to-end layer to authenticate: `source` is only what the packet claims. `via` is the
    /// member that handed it over (the last hop, authenticated hop by hop on real links; this
    /// node itself for its own datagrams), so that work done for unauthenticated datagrams can
    /// be limited per neighbour.
    Sealed {
        source: NodeId,
        via: NodeId,
        datagram: Vec<u8>,
    },
}

/// Counters a driver can show (`hopwise status`) or aggregate (simulator reports).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub datagrams_received: u64,
    pub bytes_received: u64,
    /// Datagrams that failed to decode.
    pub dropped_malformed: u64,
    /// Well-formed datagrams that made no sense here (unsolicited replies, our own id).
    pub dropped_unexpected: u64,
    pub probes_sent: u64,
    pub probes_lost: u64,
    /// Datagrams and bytes sent, by what they carried (and in total: [`SentByKind::total`]).
    /// Overlay data (originated or relayed) is user traffic; everything else is control traffic.
    pub sent: SentByKind,
    pub data_relayed: u64,
    pub data_delivered: u64,
    /// Data dropped because its TTL ran out (a loop or an absurdly long path).
    pub dropped_ttl_expired: u64,
    /// Data dropped because no route to its destination was known.
    pub dropped_no_route: u64,
}

/// Datagrams and bytes of one kind of message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volume {
    pub datagrams: u64,
    pub bytes: u64,
}

impl Volume {
    pub(super) fn add(&mut self, bytes: usize) {
        self.datagrams += 1;
        self.bytes += bytes as u64;
    }
}

impl AddAssign for Volume {
    fn add_assign(&mut self, other: Self) {
        self.datagrams += other.datagrams;
        self.bytes += other.bytes;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentByKind {
    /// Probe requests and replies (coordinates, link liveness, gossip).
    pub probes: Volume,
    pub route_updates: Volume,
    pub link_control: Volume,
    pub seqno_requests: Volume,
    /// Zone registrations and lookups (zoned routing).
    pub directory: Volume,
    pub data: Volume,
}

impl SentByKind {
    pub fn total(&self) -> Volume {
        let mut total = self.probes;
        total += self.route_updates;
        total += self.link_control;
        total += self.seqno_requests;
        total += self.directory;
        total += self.data;
        total
    }

    fn record(&mut self, message: &Message, bytes: usize) {
        let volume = match message {
            Message::ProbeRequest(_) | Message::ProbeReply(_) => &mut self.probes,
            Message::RouteUpdate(_) => &mut self.route_updates,
            Message::Link(_) => &mut self.link_control,
            Message::SeqnoRequest(_) => &mut self.seqno_requests,
            Message::Data(data) if data.body.is_directory() => &mut self.directory,
            Message::Data(_) => &mut self.data,
        };
        volume.add(bytes);
    }
}

impl AddAssign for SentByKind {
    fn add_assign(&mut self, other: Self) {
        self.probes += other.probes;
        self.route_updates += other.route_updates;
        self.link_control += other.link_control;
        self.seqno_requests += other.seqno_requests;
        self.directory += other.directory;
        self.data += other.data;
    }
}

impl AddAssign<&NodeStats> for NodeStats {
    fn add_assign(&mut self, other: &NodeStats) {
        self.datagrams_received += other.datagrams_received;
        self.bytes_received += other.bytes_received;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_unexpected += other.dropped_unexpected;
        self.probes_sent += other.probes_sent;
        self.probes_lost += other.probes_lost;
        self.sent += other.sent;
        self.data_relayed += other.data_relayed;
        self.data_delivered += other.data_delivered;
        self.dropped_ttl_expired += other.dropped_ttl_expired;
        self.dropped_no_route += other.dropped_no_route;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourRole {
    Near,
    Far,
}

/// A node we probe regularly.
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub addr: SocketAddr,
    pub role: NeighbourRole,
    pub link: Link,
    pub coord: Coordinate,
    pub error: f64,
    pub last_probed: Instant,
}

#[derive(Debug, Clone)]
struct PendingProbe {
    addr: SocketAddr,
    sent_at: Instant,
    deadline: Instant,
    purpose: ProbePurpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbePurpose {
    /// Measuring a coordinate neighbour or a candidate.
    Coordinates,
    /// Keeping a routing link or session measured and alive.
    Link(NodeId),
}

pub struct Node {
    config: Config,
    rng: ChaCha8Rng,
    /// Keys every hash table of this node.
    hash_key: HashKey,
    now: Instant,
    started_at: Instant,
    vivaldi: Vivaldi,
    known: PeerTable,
    neighbours: Map<NodeId, Neighbour>,
    /// The nearest nodes measured, neighbours or not: candidates for near links.
    nearest: nearest::NearestMeasured,
    /// Probes in flight, by sequence number.
    pending: Map<u32, PendingProbe>,
    /// No probe in `pending` expires before this.
    next_expiry: Option<Instant>,
    routes: RouteTable,
    links: Map<NodeId, links::RoutingLink>,
    /// Routing links closed on purpose (by either end) moments ago, with their addresses: the
    /// path still works, so a route lost with one keeps carrying packets there for a little
    /// while, like a route lost to unfeasibility.
    closed_links: Map<NodeId, (SocketAddr, Instant)>,
    /// No link needs a probe before this.
    next_link_probe_at: Instant,
    /// Batched route changes go out at this time.
    flush_at: Option<Instant>,
    next_review_at: Instant,
    next_refresh_at: Instant,
    last_relay_swap: Instant,
    /// Nodes that refused or never answered a link or session, until when to leave them alone.
    shunned: Map<NodeId, Instant>,
    /// Sequence-number requests recently sent or passed on: duplicates held back, askers
    /// answered, own ones resent while unanswered.
    requests: requests::SeqnoRequests,
    next_seq: u32,
    next_probe_at: Instant,
    /// Bootstrap addresses that have never answered; retried with exponential backoff, so a
    /// seed that was down when this node started is still found.
    unanswered_bootstrap: Vec<SocketAddr>,
    bootstrap_retry_at: Instant,
    bootstrap_backoff: Duration,
    zones: zones::ZoneState,
    /// This node's tags, and one filter per tag it connects to.
    own_tags: TagFilter,
    connect_filters: Vec<TagFilter>,
    outputs: VecDeque<Output>,
    stats: NodeStats,
    /// Reused for every coordinate update.
    observations: Vec<Observation>,
}

impl Node {
    pub fn new(config: Config, now: Instant) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        let vivaldi = if config.landmark {
            let origin = Coordinate::new(0.0, 0.0, config.vivaldi.min_height_ms);
            Vivaldi::fixed(config.vivaldi.clone(), origin)
        } else {
            Vivaldi::new(config.vivaldi.clone())
        };
        let hash_key = keyed::hash_key(config.rng_seed);
        let known = PeerTable::new(config.max_known_nodes, hash_key);
        let unanswered_bootstrap = config.bootstrap.clone();
        let routes = RouteTable::new(
            config.id,
            config.routing.max_destinations,
            config.routing.zones,
            hash_key,
        );
        let nearest = nearest::NearestMeasured::new(config.routing.near_links);
        let own_tags = TagFilter::of(&config.tags);
        let connect_filters = config
            .connect_tags
            .iter()
            .map(|tag| TagFilter::of(&[tag]))
            .collect();
        let next_review_at = now + config.routing.review_interval;
        let next_refresh_at = now + config.routing.refresh_interval;
        Self {
            config,
            rng,
            hash_key,
            now,
            started_at: now,
            vivaldi,
            known,
            neighbours: Map::with_hasher(hash_key),
            nearest,
            pending: Map::with_hasher(hash_key),
            next_expiry: None,
            routes,
            links: Map::with_hasher(hash_key),
            closed_links: Map::with_hasher(hash_key),
            next_link_probe_at: Instant::MAX,
            flush_at: None,
            next_review_at,
            next_refresh_at,
            last_relay_swap: now,
            shunned: Map::with_hasher(hash_key),
            requests: requests::SeqnoRequests::new(hash_key),
            next_seq: 0,
            // The first timer fires at once and greets the bootstrap addresses.
            next_probe_at: now,
            unanswered_bootstrap,
            bootstrap_retry_at: now,
            bootstrap_backoff: BOOTSTRAP_FIRST_RETRY,
            zones: zones::ZoneState::new(hash_key),
            own_tags,
            connect_filters,
            outputs: VecDeque::new(),
            stats: NodeStats::default(),
            observations: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn coordinate(&self) -> Coordinate {
        self.vivaldi.coordinate()
    }

    pub fn coordinate_error(&self) -> f64 {
        self.vivaldi.error()
    }

    pub fn coordinate_updates(&self) -> u64 {
        self.vivaldi.updates()
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    pub fn neighbours(&self) -> impl Iterator<Item = (&NodeId, &Neighbour)> {
        self.neighbours.iter()
    }

    pub fn known_nodes(&self) -> &PeerTable {
        &self.known
    }

    pub fn handle_input(&mut self, input: Input<'_>) {
        match input {
            Input::Datagram { now, from, data } => {
                self.advance(now);
                self.handle_datagram(from, data);
            }
            Input::Timeout(now) => self.advance(now),
        }
        self.run_timers();
    }

    /// What falls due at the node's current time.
    fn run_timers(&mut self) {
        if self.next_expiry.is_some_and(|at| self.now >= at) {
            self.expire_probes();
        }
        if self.now >= self.next_probe_at {
            self.on_probe_timer();
        }
        self.on_routing_timers();
    }

    /// The next output; [`Output::Timeout`] means the queue is drained.
    pub fn poll_output(&mut self) -> Output {
        self.outputs
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.poll_timeout()))
    }

    /// The earliest deadline at which the node needs `Input::Timeout`.
    pub fn poll_timeout(&self) -> Instant {
        [
            self.next_expiry,
            Some(self.next_link_probe_at),
            self.flush_at,
            Some(self.next_review_at),
            Some(self.next_refresh_at),
            self.requests.next_resend(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_probe_at, Instant::min)
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn handle_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += data.len() as u64;
        let packet = match Packet::parse(data) {
            Ok(packet) => packet,
            Err(error) => {
                trace!(%from, %error, "dropping malformed datagram");
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if packet.sender == self.config.id {
            self.stats.dropped_unexpected += 1;
            return;
        }
        match packet.message {
            Message::ProbeRequest(probe) => self.on_probe_request(from, packet.sender, probe),
            Message::ProbeReply(probe) => self.on_probe_reply(from, packet.sender, probe),
            Message::RouteUpdate(update) => self.on_route_update(packet.sender, update),
            Message::Link(op) => self.on_link_op(from, packet.sender, op),
            Message::SeqnoRequest(request) => self.on_seqno_request(packet.sender, request),
            Message::Data(data) => self.on_data(packet.sender, data),
        }
    }

    fn on_probe_request(&mut self, from: SocketAddr, sender: NodeId, probe: Probe) {
        self.hear_from(sender, from, &probe);
        if probe.gossip.is_empty() {
            self.link_probed_by_peer(sender);
        }
        // A keepalive without gossip gets a keepalive back.
        let gossip = if probe.gossip.is_empty() && self.links.contains_key(&sender) {
            Vec::new()
        } else {
            self.pick_gossip(Some(sender))
        };
        let reply = Probe {
            seq: probe.seq,
            timestamp_us: probe.timestamp_us,
            coord: self.wire_coord(),
            gossip,
            tags: self.own_tags,
        };
        self.send(from, Message::ProbeReply(reply));
    }

    fn on_probe_reply(&mut self, from: SocketAddr, sender: NodeId, probe: Probe) {
        let matches = self
            .pending
            .get(&probe.seq)
            .is_some_and(|p| p.addr == from && p.sent_at.as_micros() as u64 == probe.timestamp_us);
        if !matches {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let pending = self.pending.swap_remove(&probe.seq).expect("checked above");
        let rtt_ms = (self.now - pending.sent_at).as_millis_f64().max(0.001);
        self.unanswered_bootstrap.retain(|addr| *addr != from);
        let (coord, error) = self.hear_from(sender, from, &probe);
        if let ProbePurpose::Link(link_id) = pending.purpose {
            if link_id == sender {
                self.on_link_sample(sender, rtt_ms);
            }
            return;
        }
        self.nearest.observe(sender, from, rtt_ms);
        if let Some(neighbour) = self.neighbours.get_mut(&sender) {
            // The direct path's route cost follows the recent median (see `hop_costs`).
            let before = neighbour.link.recent_rtt_ms();
            neighbour.link.on_sample(rtt_ms);
            if neighbour.link.recent_rtt_ms() != before {
                self.neighbour_changed(sender);
            }
        } else if !self.admit(sender, from, rtt_ms, coord, error) {
            return;
        } else {
            self.neighbour_changed(sender);
        }
        self.update_coordinate(&sender);
    }

    /// Everything a packet from `sender` itself tells us: where it is and whom it knows. Returns
    /// the sender's coordinate and error estimate.
    fn hear_from(&mut self, sender: NodeId, from: SocketAddr, probe: &Probe) -> (Coordinate, f64) {
        let coord = coordinate_of(&probe.coord);
        let error = f64::from(probe.coord.error);
        if let Some(neighbour) = self.neighbours.get_mut(&sender) {
            neighbour.addr = from;
            neighbour.coord = coord;
            neighbour.error = error;
        }
        let heard = KnownNode {
            id: sender,
            addr: from,
            coord,
            error,
            heard_at: self.now,
            direct_at: Some(self.now),
            tags: probe.tags,
        };
        self.known.learn(heard, &mut self.rng);
        for entry in &probe.gossip {
            if entry.id == self.config.id || self.neighbours.contains_key(&entry.id) {
                continue;
            }
            let gossiped = KnownNode {
                id: entry.id,
                addr: entry.addr,
                coord: coordinate_of(&entry.coord),
                error: f64::from(entry.coord.error),
                heard_at: self.now,
                direct_at: None,
                tags: entry.tags,
            };
            self.known.learn(gossiped, &mut self.rng);
        }
        (coord, error)
    }

    /// Decides whether a freshly measured node becomes a neighbour, and in which role.
    fn admit(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        rtt_ms: f64,
        coord: Coordinate,
        error: f64,
    ) -> bool {
        let count = |role| self.neighbours.values().filter(|n| n.role == role).count();
        let (near, far) = (count(NeighbourRole::Near), count(NeighbourRole::Far));
        let farthest_near = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.role == NeighbourRole::Near)
            .max_by(|a, b| {
                a.1.link
                    .filtered_rtt_ms()
                    .total_cmp(&b.1.link.filtered_rtt_ms())
            })
            .map(|(id, n)| (*id, n.link.filtered_rtt_ms()));
        let role = if near < self.config.near_neighbours {
            NeighbourRole::Near
        } else if farthest_near.is_some_and(|(_, worst)| rtt_ms < worst) {
            let (demoted, _) = farthest_near.expect("checked above");
            if far < self.config.far_neighbours {
                self.neighbours[&demoted].role = NeighbourRole::Far;
            } else {
                self.remove_neighbour(demoted);
            }
            NeighbourRole::Near
        } else if far < self.config.far_neighbours {
            NeighbourRole::Far
        } else if self.rng.random_bool(FAR_ROTATION_PROBABILITY) {
            let far_ids: Vec<NodeId> = self
                .neighbours
                .iter()
                .filter(|(_, n)| n.role == NeighbourRole::Far)
                .map(|(id, _)| *id)
                .collect();
            let victim = far_ids[self.rng.random_range(0..far_ids.len())];
            self.remove_neighbour(victim);
            NeighbourRole::Far
        } else {
            return false;
        };
        let neighbour = Neighbour {
            addr,
            role,
            link: Link::new(rtt_ms, self.config.max_missed_probes),
            coord,
            error,
            last_probed: self.now,
        };
        self.neighbours.insert(id, neighbour);
        self.outputs
            .push_back(Output::Event(Event::LinkUp { id, addr, rtt_ms }));
        true
    }

    /// Drops a coordinate neighbour: its direct path stops being offered as a route, and the
    /// application hears that the link went down.
    fn remove_neighbour(&mut self, id: NodeId) {
        if self.neighbours.swap_remove(&id).is_some() {
            self.neighbour_changed(id);
            self.outputs
                .push_back(Output::Event(Event::LinkDown { id }));
        }
    }

    fn update_coordinate(&mut self, latest: &NodeId) {
        self.observations.clear();
        let mut latest_observation = None;
        for (id, n) in &self.neighbours {
            let observation = Observation {
                coord: n.coord,
                error: n.error,
                rtt_ms: n.link.filtered_rtt_ms(),
            };
            if id == latest {
                latest_observation = Some(observation);
            }
            self.observations.push(observation);
        }
        if let Some(latest) = latest_observation {
            self.vivaldi
                .update(&latest, &self.observations, &mut self.rng);
        }
    }

    fn on_probe_timer(&mut self) {
        let jitter = self.rng.random_range(0.8..1.2);
        self.next_probe_at = self.now + self.config.probe_interval.mul_f64(jitter);
        let alone = self.neighbours.is_empty() && self.known.is_empty();
        if alone || (!self.unanswered_bootstrap.is_empty() && self.now >= self.bootstrap_retry_at) {
            // Alone, greet every bootstrap address; otherwise only those that never answered.
            let targets = if alone {
                self.config.bootstrap.clone()
            } else {
                self.unanswered_bootstrap.clone()
            };
            for addr in targets {
                self.send_probe(addr);
            }
            self.bootstrap_retry_at = self.now + self.bootstrap_backoff;
            self.bootstrap_backoff =
                (self.bootstrap_backoff + self.bootstrap_backoff).min(BOOTSTRAP_MAX_RETRY);
            if alone {
                self.next_probe_at = self.now + BOOTSTRAP_FIRST_RETRY.mul_f64(jitter);
                return;
            }
        }
        let full =
            self.neighbours.len() >= self.config.near_neighbours + self.config.far_neighbours;
        let explore_fraction = if self.now - self.started_at < self.config.startup_exploration {
            self.config.startup_explore_fraction
        } else {
            self.config.explore_fraction
        };
        let explore = !full || self.rng.random_bool(explore_fraction);
        let target = if explore { self.pick_candidate() } else { None };
        match target.or_else(|| self.stalest_neighbour()) {
            Some(addr) => self.send_probe(addr),
            None => {
                if let Some(addr) = self.config.bootstrap.first().copied() {
                    self.send_probe(addr);
                }
            }
        }
    }

    /// A known node that is not a neighbour yet: half the time the one that the coordinates
    /// predict to be closest among a small random sample (to find near neighbours quickly), half
    /// the time a uniformly random one (to keep far constraints diverse).
    fn pick_candidate(&mut self) -> Option<SocketAddr> {
        let guided = self.rng.random_bool(0.5);
        let me = self.vivaldi.coordinate();
        let mut best: Option<(f64, SocketAddr)> = None;
        for _ in 0..CANDIDATE_SAMPLE {
            let node = self.known.random(&mut self.rng)?;
            if self.neighbours.contains_key(&node.id)
                || self.pending.values().any(|p| p.addr == node.addr)
            {
                continue;
            }
            let score = if guided {
                me.distance_ms(&node.coord)
            } else {
                0.0
            };
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, node.addr));
            }
            if !guided {
                break;
            }
        }
        best.map(|(_, addr)| addr)
    }

    fn stalest_neighbour(&mut self) -> Option<SocketAddr> {
        let pending = &self.pending;
        let (_, neighbour) = self
            .neighbours
            .iter_mut()
            .filter(|(_, n)| !pending.values().any(|p| p.addr == n.addr))
            .min_by_key(|(_, n)| n.last_probed)?;
        neighbour.last_probed = self.now;
        Some(neighbour.addr)
    }

    fn send_probe(&mut self, addr: SocketAddr) {
        let gossip = self.pick_gossip(None);
        let timeout = self.config.probe_timeout;
        self.send_probe_with(addr, ProbePurpose::Coordinates, timeout, gossip);
    }

    fn send_probe_with(
        &mut self,
        addr: SocketAddr,
        purpose: ProbePurpose,
        timeout: Duration,
        gossip: Vec<GossipEntry>,
    ) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let deadline = self.now + timeout;
        self.pending.insert(
            seq,
            PendingProbe {
                addr,
                sent_at: self.now,
                deadline,
                purpose,
            },
        );
        self.next_expiry = Some(self.next_expiry.map_or(deadline, |at| at.min(deadline)));
        self.stats.probes_sent += 1;
        let probe = Probe {
            seq,
            timestamp_us: self.now.as_micros() as u64,
            coord: self.wire_coord(),
            gossip,
            tags: self.own_tags,
        };
        self.send(addr, Message::ProbeRequest(probe));
    }

    /// The driver holds a probe request back for up to `hold` (the secure layer does while a
    /// handshake runs): it must not time out meanwhile. [`Node::retime_probe`] follows when it
    /// leaves.
    pub fn hold_probe(&mut self, seq: u32, hold: Duration) {
        if let Some(pending) = self.pending.get_mut(&seq) {
            pending.deadline += hold;
        }
    }

    /// A probe request the driver held back leaves now: its round trip and its timeout count
    /// from now. Returns the timestamp the request must carry, or `None` if the probe is no
    /// longer awaited.
    pub fn retime_probe(&mut self, now: Instant, seq: u32) -> Option<u64> {
        self.advance(now);
        let pending = self.pending.get_mut(&seq)?;
        let timeout = pending.deadline - pending.sent_at;
        pending.sent_at = self.now;
        pending.deadline = self.now + timeout;
        Some(self.now.as_micros() as u64)
    }

    fn expire_probes(&mut self) {
        let now = self.now;
        let expired: Vec<PendingProbe> = self
            .pending
            .extract_if(.., |_, p| p.deadline <= now)
            .map(|(_, p)| p)
            .collect();
        self.next_expiry = self.pending.values().map(|p| p.deadline).min();
        for lost in expired {
            self.stats.probes_lost += 1;
            if let ProbePurpose::Link(id) = lost.purpose {
                self.on_link_probe_lost(id);
                continue;
            }
            let Some((&id, neighbour)) = self
                .neighbours
                .iter_mut()
                .find(|(_, n)| n.addr == lost.addr)
            else {
                continue;
            };
            if neighbour.link.on_probe_lost() == LossVerdict::WentDown {
                self.remove_neighbour(id);
                self.known.remove(&id);
                self.nearest.forget(&id);
            }
        }
    }

    /// Up to `gossip_per_probe` distinct live nodes: mostly neighbours (fresh coordinates), and
    /// some known nodes that contacted us recently, so that a newcomer is advertised before anyone
    /// has adopted it as a neighbour. Nodes only heard of second-hand are never passed on, so the
    /// dead do not circulate.
    fn pick_gossip(&mut self, exclude: Option<NodeId>) -> Vec<GossipEntry> {
        let wanted = self.config.gossip_per_probe.min(MAX_GOSSIP);
        let recent_since =
            Instant::from_micros(self.now.as_micros() - GOSSIP_RECENT_CONTACT.as_micros());
        let mut entries: Vec<GossipEntry> = Vec::with_capacity(wanted);
        for _ in 0..wanted * 2 {
            if entries.len() == wanted {
                break;
            }
            let from_known = self.neighbours.is_empty() || self.rng.random_bool(GOSSIP_KNOWN_SHARE);
            let candidate = if from_known {
                self.known
                    .random(&mut self.rng)
                    .filter(|n| n.direct_at.is_some_and(|at| at >= recent_since))
                    .map(|n| (n.id, n.addr, n.coord, n.error))
            } else {
                let index = self.rng.random_range(0..self.neighbours.len());
                self.neighbours
                    .get_index(index)
                    .map(|(id, n)| (*id, n.addr, n.coord, n.error))
            };
            let Some((id, addr, coord, error)) = candidate else {
                continue;
            };
            if Some(id) == exclude || entries.iter().any(|e| e.id == id) {
                continue;
            }
            let tags = self.known.get(&id).map_or(TagFilter::NONE, |k| k.tags);
            entries.push(GossipEntry {
                id,
                addr,
                coord: to_wire(coord, error),
                tags,
            });
        }
        entries
    }

    fn wire_coord(&self) -> WireCoord {
        to_wire(self.vivaldi.coordinate(), self.vivaldi.error())
    }

    /// Queues `message` for `destination`.
    fn send(&mut self, destination: SocketAddr, message: Message) {
        let packet = Packet {
            sender: self.config.id,
            message,
        };
        let contents = packet.to_bytes();
        self.stats.sent.record(&packet.message, contents.len());
        self.outputs.push_back(Output::Transmit(Transmit {
            destination,
            contents,
        }));
    }
}

/// Chance that a measured node which qualifies only as a far neighbour replaces a random far
/// neighbour when the set is full: slow rotation keeps constraints diverse.
const FAR_ROTATION_PROBABILITY: f64 = 0.25;
/// First and longest wait before greeting an unanswered bootstrap address again.
const BOOTSTRAP_FIRST_RETRY: Duration = Duration::from_secs(1);
const BOOTSTRAP_MAX_RETRY: Duration = Duration::from_secs(60);
/// Share of gossip slots offered to recently heard known nodes rather than neighbours.
const GOSSIP_KNOWN_SHARE: f64 = 0.34;
/// A known node counts as alive for gossip this long after it last contacted us.
const GOSSIP_RECENT_CONTACT: Duration = Duration::from_secs(30);
/// Known nodes sampled when looking for the closest candidate.
const CANDIDATE_SAMPLE: usize = 16;

fn coordinate_of(wire: &WireCoord) -> Coordinate {
    Coordinate::new(
        f64::from(wire.x1),
        f64::from(wire.x2),
        f64::from(wire.height),
    )
}

fn to_wire(coord: Coordinate, error: f64) -> WireCoord {
    WireCoord {
        x1: coord.x1 as f32,
        x2: coord.x2 as f32,
        height: coord.height as f32,
        error: error as f32,
    }
}
