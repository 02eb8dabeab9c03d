//! What the control API reports, read from a node's state.

use std::net::SocketAddr;

use hopwise_proto::e2e::E2eStats;
use hopwise_proto::forward::Forwards;
use hopwise_proto::kv::Kv;
use hopwise_proto::peers::KnownNode;
use hopwise_proto::pubsub::PubSub;
use hopwise_proto::service::ports;
use hopwise_proto::vpn::Vpn;
use hopwise_proto::{Coordinate, LinkKind, Node, NodeId};
use serde::{Deserialize, Serialize};

use crate::runner::{Clock, NodeHost, TcpCounters, TraceOutcome};

/// A coordinate as netloc reports it: seconds, with the error estimate and update count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub x1: f64,
    pub x2: f64,
    pub height: f64,
    pub pos_err: f64,
    pub iteration: u64,
}

impl Location {
    fn new(coord: &Coordinate, error: f64, iteration: u64) -> Self {
        Self {
            x1: coord.x1 / 1000.0,
            x2: coord.x2 / 1000.0,
            height: coord.height / 1000.0,
            pos_err: error,
            iteration,
        }
    }

    pub fn of_node(node: &Node) -> Self {
        Self::new(
            &node.coordinate(),
            node.coordinate_error(),
            node.coordinate_updates(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddrFlags {
    pub is_addr_ipv6: bool,
}

/// A known node in `get_recent_nodes` and `get_full_map`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapNode {
    pub flags: AddrFlags,
    pub ip: String,
    pub port: u16,
    /// The node's first alias, or the first 8 hex digits of its id.
    pub name: String,
    pub location: Location,
    pub id: String,
    /// Unix time (seconds) when this node last heard of it.
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub ip: String,
    pub port: u16,
    pub name: String,
    pub location: Location,
    pub updated_at: u64,
    pub id: String,
}

/// Converts protocol time to Unix time, for `updated_at`.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub clock: Clock,
}

impl WallClock {
    fn unix_seconds(&self, at: hopwise_proto::Instant) -> u64 {
        let age = self.clock.now().saturating_since(at).as_secs_f64();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        (now - age).max(0.0) as u64
    }
}

impl MapNode {
    pub fn new(known: &KnownNode, wall: WallClock) -> Self {
        Self {
            flags: AddrFlags {
                is_addr_ipv6: known.addr.is_ipv6(),
            },
            ip: known.addr.ip().to_string(),
            port: known.addr.port(),
            name: known.id.short(),
            location: Location::new(&known.coord, known.error, 0),
            id: known.id.to_string(),
            updated_at: wall.unix_seconds(known.heard_at),
        }
    }
}

impl NodeInfo {
    pub fn new(known: &KnownNode, wall: WallClock) -> Self {
        let map = MapNode::new(known, wall);
        Self {
            ip: map.ip,
            port: map.port,
            name: map.name,
            location: map.location,
            updated_at: map.updated_at,
            id: map.id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    pub listen: SocketAddr,
    pub uptime_s: f64,
    pub location: Location,
    pub known_nodes: usize,
    pub neighbours: usize,
    pub routing_links: usize,
    pub routes: usize,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    /// Datagrams that failed to decode (garbage, truncated or foreign packets).
    pub dropped_malformed: u64,
    /// Well-formed datagrams that made no sense here.
    pub dropped_unexpected: u64,
    pub dropped_no_route: u64,
    pub dropped_ttl_expired: u64,
    /// Datagrams the secure layer dropped before the node saw them: not from a member,
    /// forged, replayed, or speaking for another node.
    pub dropped_insecure: u64,
    pub handshakes_completed: u64,
    pub handshakes_failed: u64,
    pub handshakes_refused: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub data_relayed: u64,
    pub data_delivered: u64,
    pub end_to_end: EndToEnd,
    pub kv: KvStatus,
    #[serde(default)]
    pub pubsub: PubSubStatus,
    /// Present when the node runs `--vpn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn: Option<VpnStatus>,
    pub forwards: ForwardStatus,
}

/// Exposed services and forwards: UDP flows each way, TCP connections and streams, and what
/// was refused or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ForwardStatus {
    pub exposed: usize,
    pub udp_flows_served: usize,
    pub udp_flows_forwarded: usize,
    pub udp_datagrams_to_targets: u64,
    pub udp_bytes_to_targets: u64,
    pub udp_datagrams_from_targets: u64,
    pub udp_bytes_from_targets: u64,
    pub udp_datagrams_from_clients: u64,
    pub udp_bytes_from_clients: u64,
    pub udp_datagrams_to_clients: u64,
    pub udp_bytes_to_clients: u64,
    pub udp_refused_not_exposed: u64,
    pub udp_refused_other_kind: u64,
    pub udp_refused_busy: u64,
    pub udp_flows_refused: u64,
    pub udp_dropped_too_large: u64,
    pub udp_dropped_no_flow: u64,
    pub udp_dropped_invalid: u64,
    pub tcp_connections_forwarded: u64,
    pub tcp_connections_refused: u64,
    pub tcp_streams_served: u64,
    pub tcp_streams_refused: u64,
    pub tcp_resets: u64,
    pub tcp_bytes_to_targets: u64,
    pub tcp_bytes_from_targets: u64,
}

impl ForwardStatus {
    fn new(host: &NodeHost, tcp: &TcpCounters) -> Self {
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut status = Self {
            tcp_connections_forwarded: load(&tcp.connections_forwarded),
            tcp_connections_refused: load(&tcp.connections_refused),
            tcp_streams_served: load(&tcp.streams_served),
            tcp_streams_refused: load(&tcp.streams_refused),
            tcp_resets: load(&tcp.resets),
            tcp_bytes_to_targets: load(&tcp.bytes_to_targets),
            tcp_bytes_from_targets: load(&tcp.bytes_from_targets),
            ..Self::default()
        };
        let Some(forwards) = host.service_at::<Forwards>(ports::FORWARD) else {
            return status;
        };
        let stats = forwards.stats();
        (status.udp_flows_served, status.udp_flows_forwarded) = forwards.open_flows();
        status.exposed = forwards.exposed().count();
        status.udp_datagrams_to_targets = stats.datagrams_to_targets;
        status.udp_bytes_to_targets = stats.bytes_to_targets;
        status.udp_datagrams_from_targets = stats.datagrams_from_targets;
        status.udp_bytes_from_targets = stats.bytes_from_targets;
        status.udp_datagrams_from_clients = stats.datagrams_from_clients;
        status.udp_bytes_from_clients = stats.bytes_from_clients;
        status.udp_datagrams_to_clients = stats.datagrams_to_clients;
        status.udp_bytes_to_clients = stats.bytes_to_clients;
        status.udp_refused_not_exposed = stats.refused_not_exposed;
        status.udp_refused_other_kind = stats.refused_other_kind;
        status.udp_refused_busy = stats.refused_busy;
        status.udp_flows_refused = stats.flows_refused;
        status.udp_dropped_too_large = stats.dropped_too_large;
        status.udp_dropped_no_flow = stats.dropped_no_flow;
        status.udp_dropped_invalid = stats.dropped_invalid;
        status
    }
}

/// The VPN of this node: its addresses, packets each way, and drops by cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct VpnStatus {
    pub ipv6: String,
    /// Once claimed.
    pub ipv4: Option<String>,
    pub mtu: usize,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub icmp_errors: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_destination: u64,
    pub dropped_no_route: u64,
    pub dropped_too_big: u64,
    pub dropped_unresolved: u64,
    pub dropped_not_allowed: u64,
    pub dropped_spoofed: u64,
    pub dropped_invalid: u64,
    pub dropped_interface_full: u64,
}

impl VpnStatus {
    fn new(host: &NodeHost) -> Option<Self> {
        let vpn = host.service_at::<Vpn>(ports::VPN)?;
        let stats = vpn.stats();
        Some(Self {
            ipv6: vpn.ipv6().to_string(),
            ipv4: vpn.ipv4().map(|a| a.to_string()),
            mtu: vpn.config().mtu,
            packets_sent: stats.packets_sent,
            bytes_sent: stats.bytes_sent,
            packets_received: stats.packets_received,
            bytes_received: stats.bytes_received,
            icmp_errors: stats.icmp_errors,
            dropped_malformed: stats.dropped_malformed,
            dropped_unknown_destination: stats.dropped_unknown_destination,
            dropped_no_route: stats.dropped_no_route,
            dropped_too_big: stats.dropped_too_big,
            dropped_unresolved: stats.dropped_unresolved,
            dropped_not_allowed: stats.dropped_not_allowed,
            dropped_spoofed: stats.dropped_spoofed,
            dropped_invalid: stats.dropped_invalid,
            dropped_interface_full: stats.dropped_interface_full,
        })
    }
}

/// The key-value store of this node: what it holds as a replica, its operations, and what it
/// refused, by cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct KvStatus {
    pub keys: usize,
    pub entries: usize,
    pub bytes: usize,
    /// Members in this node's view (those it places keys on).
    pub view: usize,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub reads_ok: u64,
    pub reads_failed: u64,
    pub hedged_reads: u64,
    pub refused_not_owner: u64,
    pub refused_full: u64,
    pub refused_rate: u64,
    pub dropped_forged: u64,
    pub dropped_malformed: u64,
}

impl KvStatus {
    fn new(host: &NodeHost) -> Self {
        let Some(kv) = host.service_at::<Kv>(ports::KV) else {
            return Self::default();
        };
        let stats = kv.stats();
        Self {
            keys: kv.store().key_count(),
            entries: kv.store().entries(),
            bytes: kv.store().bytes(),
            view: kv.view().len(),
            writes_ok: stats.writes_ok,
            writes_failed: stats.writes_failed,
            reads_ok: stats.reads_ok,
            reads_failed: stats.reads_failed,
            hedged_reads: stats.hedged,
            refused_not_owner: stats.refused_not_owner,
            refused_full: stats.refused_full,
            refused_rate: stats.refused_rate,
            dropped_forged: stats.forged,
            dropped_malformed: stats.malformed,
        }
    }
}

/// Publish/subscribe on this node: its topics and trees, what it delivered and forwarded, and
/// what it repaired, lost or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PubSubStatus {
    pub subscriptions: usize,
    pub publications: usize,
    pub trees: usize,
    /// Topics this node is a rendezvous for.
    pub rendezvous_topics: usize,
    pub published: u64,
    pub delivered: u64,
    pub forwarded: u64,
    pub repairs_sent: u64,
    pub nacks_sent: u64,
    pub upstream_moves: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// Publishes refused beyond the node's publishing rate.
    #[serde(default)]
    pub rate_limited: u64,
    pub dropped_malformed: u64,
}

impl PubSubStatus {
    fn new(host: &NodeHost) -> Self {
        let Some(pubsub) = host.service_at::<PubSub>(ports::PUBSUB) else {
            return Self::default();
        };
        let stats = pubsub.stats();
        Self {
            subscriptions: pubsub.subscriptions().count(),
            publications: pubsub.publications().count(),
            trees: pubsub.trees().count(),
            rendezvous_topics: pubsub.rendezvous_topics(),
            published: stats.published,
            delivered: stats.delivered,
            forwarded: stats.forwarded,
            repairs_sent: stats.repairs_sent,
            nacks_sent: stats.nacks_sent,
            upstream_moves: stats.upstream_moves,
            lost: stats.lost,
            duplicates: stats.duplicate_link_crossings + stats.duplicate_arrivals,
            refused: stats.refused,
            rate_limited: stats.rate_limited,
            dropped_malformed: stats.malformed,
        }
    }
}

/// End-to-end sessions and what their layer dropped, by cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndToEnd {
    pub sessions: usize,
    pub handshakes_in_progress: usize,
    pub handshakes_completed: u64,
    pub rekeys: u64,
    pub handshakes_failed: u64,
    pub handshakes_refused: u64,
    pub handshakes_timed_out: u64,
    pub payloads_sent: u64,
    pub payloads_received: u64,
    /// Altered, truncated or forged data.
    pub dropped_bad_tag: u64,
    pub dropped_replayed: u64,
    pub dropped_unknown_port: u64,
    pub dropped_no_session: u64,
    pub dropped_malformed: u64,
    pub dropped_unexpected: u64,
    /// Payloads given up before they left: no room to wait for a handshake, or it failed.
    pub dropped_unsent: u64,
}

impl EndToEnd {
    fn new(host: &NodeHost) -> Self {
        let stats: &E2eStats = host.e2e_stats();
        Self {
            sessions: host.sessions().count(),
            handshakes_in_progress: host.handshakes_in_progress(),
            handshakes_completed: stats.handshakes_completed,
            rekeys: stats.rekeys,
            handshakes_failed: stats.handshakes_failed,
            handshakes_refused: stats.handshakes_refused,
            handshakes_timed_out: stats.handshakes_timed_out,
            payloads_sent: stats.payloads_sent,
            payloads_received: stats.payloads_received,
            dropped_bad_tag: stats.dropped_bad_tag,
            dropped_replayed: stats.dropped_replayed,
            dropped_unknown_port: stats.dropped_unknown_port,
            dropped_no_session: stats.dropped_no_session,
            dropped_malformed: stats.dropped_malformed,
            dropped_unexpected: stats.dropped_unexpected,
            dropped_unsent: stats.dropped_unsent,
        }
    }
}

impl Status {
    pub fn new(host: &NodeHost, listen: SocketAddr, clock: Clock, tcp: &TcpCounters) -> Self {
        let node = host.node();
        let secure = host.overlay().secure_stats();
        let stats = node.stats();
        let sent = stats.sent.total();
        Self {
            id: node.id().to_string(),
            listen,
            uptime_s: clock
                .now()
                .saturating_since(hopwise_proto::Instant::ZERO)
                .as_secs_f64(),
            location: Location::of_node(node),
            known_nodes: node.known_nodes().len(),
            neighbours: node.neighbours().count(),
            routing_links: node.routing_links().count(),
            routes: node.route_count(),
            datagrams_received: stats.datagrams_received,
            bytes_received: stats.bytes_received,
            dropped_malformed: stats.dropped_malformed,
            dropped_unexpected: stats.dropped_unexpected,
            dropped_no_route: stats.dropped_no_route,
            dropped_ttl_expired: stats.dropped_ttl_expired,
            dropped_insecure: secure.dropped(),
            handshakes_completed: secure.handshakes_completed,
            handshakes_failed: secure.handshakes_failed,
            handshakes_refused: secure.handshakes_refused,
            datagrams_sent: sent.datagrams,
            bytes_sent: sent.bytes,
            data_relayed: stats.data_relayed,
            data_delivered: stats.data_delivered,
            end_to_end: EndToEnd::new(host),
            kv: KvStatus::new(host),
            pubsub: PubSubStatus::new(host),
            vpn: VpnStatus::new(host),
            forwards: ForwardStatus::new(host, tcp),
        }
    }
}

/// A node this one exchanges packets with regularly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub addr: SocketAddr,
    /// `near`, `relay`, `inbound`, `zone`, `tagged` (routing links), `session` (a direct path carrying
    /// traffic) or `neighbour` (measured for coordinates only).
    pub kind: String,
    pub rtt_ms: Option<f64>,
}

pub fn peers(node: &Node) -> Vec<Peer> {
    let links = node.routing_links().map(|(id, link)| Peer {
        id: id.to_string(),
        addr: link.addr,
        kind: match link.kind {
            LinkKind::Near => "near",
            LinkKind::Relay => "relay",
            LinkKind::Inbound => "inbound",
            LinkKind::Zone => "zone",
            LinkKind::Tagged => "tagged",
            LinkKind::Session => "session",
        }
        .to_string(),
        rtt_ms: link.rtt_ms(),
    });
    let neighbours = node
        .neighbours()
        .filter(|(id, _)| node.routing_links().all(|(link, _)| link != *id))
        .map(|(id, n)| Peer {
            id: id.to_string(),
            addr: n.addr,
            kind: "neighbour".to_string(),
            rtt_ms: Some(n.link.recent_rtt_ms()),
        });
    links.chain(neighbours).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub destination: String,
    pub next_hop: String,
    pub next_hop_addr: SocketAddr,
    pub metric_ms: f64,
    pub direct: bool,
}

pub fn routes(node: &Node) -> Vec<Route> {
    node.routes()
        .map(|(destination, route)| Route {
            destination: destination.to_string(),
            next_hop: route.next_hop.to_string(),
            next_hop_addr: route.next_hop_addr,
            metric_ms: route.metric_ms,
            direct: route.direct,
        })
        .collect()
}

/// The answer to `ping` and `trace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceReport {
    pub destination: String,
    pub rtt_ms: f64,
    /// Every node the packet crossed on the way out (this node first, the destination last),
    /// with the RTT each forwarding node measured to the next.
    pub outbound: Vec<TraceStep>,
    /// The same for the way back (the destination first, this node last).
    pub inbound: Vec<TraceStep>,
    /// Set when the destination was named by an alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<AliasChoice>,
}

/// Which claimant of an alias a command used: the nearest of `claimants`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasChoice {
    pub name: String,
    pub claimants: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    pub node: String,
    /// The RTT to the next node; `None` for the last node of a direction.
    pub rtt_ms: Option<f64>,
}

impl TraceReport {
    pub fn new(origin: NodeId, destination: NodeId, outcome: &TraceOutcome) -> Self {
        let split = usize::from(outcome.outbound_hops).min(outcome.path.len());
        let (out, back) = outcome.path.split_at(split);
        let direction = |hops: &[hopwise_proto::wire::TraceHop], end: NodeId| {
            hops.iter()
                .map(|hop| TraceStep {
                    node: hop.node.to_string(),
                    rtt_ms: Some(f64::from(hop.rtt_us) / 1000.0),
                })
                .chain(std::iter::once(TraceStep {
                    node: end.to_string(),
                    rtt_ms: None,
                }))
                .collect()
        };
        Self {
            destination: destination.to_string(),
            rtt_ms: outcome.rtt_ms,
            outbound: direction(out, destination),
            inbound: direction(back, origin),
            alias: None,
        }
    }
}

/// Resolves a node named on the command line: a full id, or a unique prefix of a known id.
pub fn resolve_node(node: &Node, text: &str) -> Result<NodeId, String> {
    if let Some(id) = NodeId::from_hex(text) {
        return Ok(id);
    }
    let text = text.to_ascii_lowercase();
    let mut matches = node
        .known_nodes()
        .iter()
        .map(|known| known.id)
        .filter(|id| id.to_string().starts_with(&text));
    match (matches.next(), matches.next()) {
        (Some(id), None) if !text.is_empty() => Ok(id),
        (Some(_), Some(_)) => Err(format!("{text} matches several nodes")),
        _ => Err(format!("no known node matches {text}")),
    }
}
