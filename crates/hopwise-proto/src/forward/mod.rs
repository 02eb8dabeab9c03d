//! Exposed services and UDP forwards: the sans-I/O half of `hopwise expose` and
//! `hopwise forward`.
//!
//! A serving node *exposes* a named service (`dns` -> 127.0.0.1:53); nothing else on it is
//! reachable through a forward. A client node *forwards* a local address to `NODE/NAME`: its
//! driver listens there and hands every datagram from a local client to [`Forwards::send`],
//! which keeps one flow per client address. The serving node opens a flow per (client node,
//! flow) towards the exposed target ([`ForwardEvent::OpenTarget`]); its driver sends what the
//! flow carries to the target and hands the target's answers back ([`Forwards::from_target`]),
//! which reach the right local client on the other side ([`ForwardEvent::ToClient`]). Idle
//! flows expire on both sides.
//!
//! TCP services are exposed here too, and [`Forwards::query`] asks a serving node whether it
//! exposes a name, so a forward to a name that is not exposed fails when it is set up; the
//! streams themselves travel over QUIC on their own port (the runner's business).

pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::keyed::{self, Map};
use crate::node::Node;
use crate::service::{Message as ServiceMessage, Service, ServiceTransmit, ports};
use crate::{Duration, Instant, NodeId};
use wire::Message;

/// The longest service name, in bytes (names follow the rules of aliases).
pub const MAX_NAME: usize = crate::alias::MAX_ALIAS;
/// Services a node exposes at most.
pub const MAX_EXPOSED: usize = 256;
/// UDP forwards a node runs at most.
pub const MAX_FORWARDS: usize = 256;
/// Flows a node serves at most (for every client node together), and flows its forwards keep.
pub const MAX_SERVED_FLOWS: usize = 4_096;
pub const MAX_CLIENT_FLOWS: usize = 4_096;
/// A flow that carried nothing either way for this long is closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// A query unanswered for this long fails.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries waiting for an answer at most.
const MAX_QUERIES: usize = 256;
/// How often idle flows and late queries are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// What an exposed service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Udp = 0,
    Tcp = 1,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Udp),
            1 => Some(Self::Tcp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "udp" => Ok(Self::Udp),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!("{other:?}: the kind is udp or tcp")),
        }
    }
}

/// Why a serving node turned a flow or a query away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing of that name is exposed.
    NotExposed,
    /// The name is exposed with the other kind (udp for tcp, or tcp for udp).
    OtherKind,
    /// The serving node has no room for another flow.
    Busy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotExposed => "no service of that name is exposed",
            Self::OtherKind => "the service is exposed with the other kind",
            Self::Busy => "the serving node has no room for another flow",
        })
    }
}

/// Why a service could not be exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExposeError {
    InvalidName {
        name: String,
        reason: &'static str,
    },
    AlreadyExposed {
        name: String,
    },
    TooMany,
    /// [`Forwards::open_forward`]: every forward slot is taken.
    TooManyForwards,
}

impl std::fmt::Display for ExposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidName { name, reason } => {
                write!(f, "{name:?} is not a service name: {reason}")
            }
            Self::AlreadyExposed { name } => write!(f, "a service named {name} is exposed already"),
            Self::TooMany => write!(f, "at most {MAX_EXPOSED} services are exposed"),
            Self::TooManyForwards => write!(f, "at most {MAX_FORWARDS} UDP forwards run"),
        }
    }
}

impl std::error::Error for ExposeError {}

fn encode(message: Message<'_>) -> Vec<u8> {
    let mut data = Vec::new();
    message.encode(&mut data);
    data
}

/// A service name: 1 to [`MAX_NAME`] bytes of a-z, 0-9, `-` and `.`, the rules of an alias.
pub fn validate_name(name: &str) -> Result<(), ExposeError> {
    crate::alias::validate(name).map_err(|invalid| ExposeError::InvalidName {
        name: invalid.name,
        reason: invalid.reason,
    })
}

/// A service this node exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposed {
    pub kind: Kind,
    pub target: SocketAddr,
}

/// A UDP forward this node runs, as [`Forwards::open_forward`] returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardId(pub u32);

/// A flow this node serves towards an exposed target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServedFlow(pub u64);

/// What a query found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutcome {
    Exposed,
    Refused(Refusal),
    /// No answer within [`QUERY_TIMEOUT`].
    NoAnswer,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardEvent {
    /// The answer to [`Forwards::query`] `token`.
    Answered { token: u32, outcome: QueryOutcome },
    /// Open a socket towards `target` for a new flow.
    OpenTarget {
        flow: ServedFlow,
        target: SocketAddr,
    },
    /// Send `data` to the flow's target.
    ToTarget { flow: ServedFlow, data: Vec<u8> },
    /// The flow ended (idle, or its service is no longer exposed): close its socket.
    CloseTarget { flow: ServedFlow },
    /// Send `data` to local client `client` of forward `forward`.
    ToClient {
        forward: ForwardId,
        client: SocketAddr,
        data: Vec<u8>,
    },
    /// The serving node refused the flow of `client`.
    Refused {
        forward: ForwardId,
        client: SocketAddr,
        refusal: Refusal,
    },
}

/// Why a client's datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardSendError {
    UnknownForward,
    /// Longer than a forward carries ([`Forwards::max_payload`]).
    TooLarge {
        len: usize,
        max: usize,
    },
    /// Every flow slot is taken.
    TooManyFlows,
}

impl std::fmt::Display for ForwardSendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownForward => write!(f, "no such forward"),
            Self::TooLarge { len, max } => {
                write!(
                    f,
                    "a datagram of {len} bytes exceeds the forward's limit of {max}"
                )
            }
            Self::TooManyFlows => write!(f, "at most {MAX_CLIENT_FLOWS} flows are open"),
        }
    }
}

impl std::error::Error for ForwardSendError {}

/// The counters of exposed services and forwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Serving: flows opened, datagrams and bytes to targets, and back to client nodes.
    pub flows_served: u64,
    pub datagrams_to_targets: u64,
    pub bytes_to_targets: u64,
    pub datagrams_from_targets: u64,
    pub bytes_from_targets: u64,
    /// Serving: flows turned away, by cause.
    pub refused_not_exposed: u64,
    pub refused_other_kind: u64,
    pub refused_busy: u64,
    /// Forwarding: flows opened, datagrams and bytes from local clients, and back to them.
    pub flows_forwarded: u64,
    pub datagrams_from_clients: u64,
    pub bytes_from_clients: u64,
    pub datagrams_to_clients: u64,
    pub bytes_to_clients: u64,
    /// Forwarding: flows the serving node refused.
    pub flows_refused: u64,
    /// Datagrams too large for the overlay, either way.
    pub dropped_too_large: u64,
    /// From a client with no flow slot left.
    pub dropped_no_flow: u64,
    /// Malformed messages, and answers for flows or queries that are gone.
    pub dropped_invalid: u64,
}

struct ServedState {
    node: NodeId,
    flow: u32,
    name: String,
    last_active: Instant,
}

struct ForwardState {
    node: NodeId,
    name: String,
}

struct ClientFlow {
    forward: ForwardId,
    client: SocketAddr,
    last_active: Instant,
}

struct Query {
    deadline: Instant,
}

/// The forward service on [`ports::FORWARD`]. See the module documentation.
pub struct Forwards {
    max_data: usize,
    exposed: Map<String, Exposed>,
    /// Serving side: by id, and by (client node, its flow number).
    served: Map<ServedFlow, ServedState>,
    served_by_peer: Map<(NodeId, u32), ServedFlow>,
    next_served: u64,
    /// Forwarding side: forwards, and flows by number and by (forward, local client).
    forwards: Map<ForwardId, ForwardState>,
    next_forward: u32,
    flows: Map<u32, ClientFlow>,
    flows_by_client: Map<(ForwardId, SocketAddr), u32>,
    next_flow: u32,
    queries: Map<u32, Query>,
    next_token: u32,
    outgoing: VecDeque<ServiceTransmit>,
    events: VecDeque<ForwardEvent>,
    next_sweep: Option<Instant>,
    stats: ForwardStats,
}

impl Forwards {
    /// A service whose datagrams carry at most `max_data` bytes (the host's
    /// [`crate::service::Host::max_data`]); `seed` keys its tables.
    pub fn new(max_data: usize, seed: u64) -> Self {
        let key = keyed::hash_key(seed);
        Self {
            max_data,
            exposed: Map::with_hasher(key),
            served: Map::with_hasher(key),
            served_by_peer: Map::with_hasher(key),
            next_served: 1,
            forwards: Map::with_hasher(key),
            next_forward: 1,
            flows: Map::with_hasher(key),
            flows_by_client: Map::with_hasher(key),
            // Flow numbers start from the seed, so a restarted client does not reuse the
            // numbers of its previous run while the server still keeps those flows.
            next_flow: (seed as u32) | 1,
            queries: Map::with_hasher(key),
            next_token: 1,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            next_sweep: None,
            stats: ForwardStats::default(),
        }
    }

    pub fn stats(&self) -> ForwardStats {
        self.stats
    }

    /// Publishes `name`: forwards from other nodes may reach `target` through it.
    pub fn expose(
        &mut self,
        name: &str,
        kind: Kind,
        target: SocketAddr,
    ) -> Result<(), ExposeError> {
        validate_name(name)?;
        if self.exposed.contains_key(name) {
            return Err(ExposeError::AlreadyExposed { name: name.into() });
        }
        if self.exposed.len() >= MAX_EXPOSED {
            return Err(ExposeError::TooMany);
        }
        self.exposed.insert(name.into(), Exposed { kind, target });
        Ok(())
    }

    /// Withdraws `name`, and closes the flows it served. `false` if it was not exposed.
    pub fn unexpose(&mut self, name: &str) -> bool {
        if self.exposed.shift_remove(name).is_none() {
            return false;
        }
        let ended: Vec<ServedFlow> = self
            .served
            .iter()
            .filter(|(_, state)| state.name == name)
            .map(|(flow, _)| *flow)
            .collect();
        ended.into_iter().for_each(|flow| self.close_served(flow));
        true
    }

    /// The exposed services, in the order they were exposed.
    pub fn exposed(&self) -> impl Iterator<Item = (&str, Exposed)> {
        self.exposed.iter().map(|(name, e)| (name.as_str(), *e))
    }

    /// Where a forward of `kind` to `name` leads on this node.
    pub fn lookup(&self, name: &str, kind: Kind) -> Result<SocketAddr, Refusal> {
        match self.exposed.get(name) {
            None => Err(Refusal::NotExposed),
            Some(exposed) if exposed.kind != kind => Err(Refusal::OtherKind),
            Some(exposed) => Ok(exposed.target),
        }
    }

    /// Asks `node` whether it exposes `name` as `kind`; the answer comes as
    /// [`ForwardEvent::Answered`] with the returned token. `None` when too many queries wait.
    pub fn query(&mut self, now: Instant, node: NodeId, kind: Kind, name: &str) -> Option<u32> {
        if self.queries.len() >= MAX_QUERIES || validate_name(name).is_err() {
            return None;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.queries.insert(
            token,
            Query {
                deadline: now + QUERY_TIMEOUT,
            },
        );
        self.transmit(node, Message::Query { token, kind, name });
        self.schedule_sweep(now);
        Some(token)
    }

    /// Starts a UDP forward to service `name` on `node`; the driver listens for local clients.
    pub fn open_forward(&mut self, node: NodeId, name: &str) -> Result<ForwardId, ExposeError> {
        validate_name(name)?;
        if self.forwards.len() >= MAX_FORWARDS {
            return Err(ExposeError::TooManyForwards);
        }
        let id = ForwardId(self.next_forward);
        self.next_forward += 1;
        self.forwards.insert(
            id,
            ForwardState {
                node,
                name: name.into(),
            },
        );
        Ok(id)
    }

    /// Ends a forward and forgets its flows.
    pub fn close_forward(&mut self, forward: ForwardId) {
        if self.forwards.shift_remove(&forward).is_none() {
            return;
        }
        let ended: Vec<u32> = self
            .flows
            .iter()
            .filter(|(_, flow)| flow.forward == forward)
            .map(|(number, _)| *number)
            .collect();
        for number in ended {
            if let Some(flow) = self.flows.shift_remove(&number) {
                self.flows_by_client
                    .shift_remove(&(flow.forward, flow.client));
            }
        }
    }

    /// The largest client datagram forward `forward` carries.
    pub fn max_payload(&self, forward: ForwardId) -> Option<usize> {
        let state = self.forwards.get(&forward)?;
        Some(self.max_data - wire::data_overhead(state.name.len()))
    }

    /// Carries a datagram from local client `client` of `forward` to its service, in the
    /// client's flow (opened by its first datagram).
    pub fn send(
        &mut self,
        now: Instant,
        forward: ForwardId,
        client: SocketAddr,
        data: &[u8],
    ) -> Result<(), ForwardSendError> {
        let max = self
            .max_payload(forward)
            .ok_or(ForwardSendError::UnknownForward)?;
        if data.len() > max {
            self.stats.dropped_too_large += 1;
            return Err(ForwardSendError::TooLarge {
                len: data.len(),
                max,
            });
        }
        let number = match self.flows_by_client.get(&(forward, client)) {
            Some(number) => *number,
            None => {
                if self.flows.len() >= MAX_CLIENT_FLOWS {
                    self.stats.dropped_no_flow += 1;
                    return Err(ForwardSendError::TooManyFlows);
                }
                let number = self.new_flow_number();
                self.flows.insert(
                    number,
                    ClientFlow {
                        forward,
                        client,
                        last_active: now,
                    },
                );
                self.flows_by_client.insert((forward, client), number);
                self.stats.flows_forwarded += 1;
                self.schedule_sweep(now);
                number
            }
        };
        if let Some(flow) = self.flows.get_mut(&number) {
            flow.last_active = now;
        }
        let state = &self.forwards[&forward];
        let message = encode(Message::Data {
            flow: number,
            name: &state.name,
            payload: data,
        });
        let to = state.node;
        self.push(to, message);
        self.stats.datagrams_from_clients += 1;
        self.stats.bytes_from_clients += data.len() as u64;
        Ok(())
    }

    /// Carries what a served flow's target answered back to the client node.
    pub fn from_target(&mut self, now: Instant, flow: ServedFlow, data: &[u8]) {
        let Some(state) = self.served.get_mut(&flow) else {
            return;
        };
        if 1 + 4 + data.len() > self.max_data {
            self.stats.dropped_too_large += 1;
            return;
        }
        state.last_active = now;
        let (node, number) = (state.node, state.flow);
        self.transmit(
            node,
            Message::Reply {
                flow: number,
                payload: data,
            },
        );
        self.stats.datagrams_from_targets += 1;
        self.stats.bytes_from_targets += data.len() as u64;
    }

    /// The next thing for the driver to do.
    pub fn poll_event(&mut self) -> Option<ForwardEvent> {
        self.events.pop_front()
    }

    /// Flows open on each side: (served, forwarded).
    pub fn open_flows(&self) -> (usize, usize) {
        (self.served.len(), self.flows.len())
    }

    fn new_flow_number(&mut self) -> u32 {
        loop {
            let number = self.next_flow;
            self.next_flow = self.next_flow.wrapping_add(1);
            if !self.flows.contains_key(&number) {
                return number;
            }
        }
    }

    fn transmit(&mut self, to: NodeId, message: Message<'_>) {
        self.push(to, encode(message));
    }

    fn push(&mut self, to: NodeId, data: Vec<u8>) {
        self.outgoing.push_back(ServiceTransmit {
            to,
            port: ports::FORWARD,
            data,
            early: false,
        });
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
    }

    fn close_served(&mut self, flow: ServedFlow) {
        if let Some(state) = self.served.shift_remove(&flow) {
            self.served_by_peer.shift_remove(&(state.node, state.flow));
            self.events.push_back(ForwardEvent::CloseTarget { flow });
        }
    }

    /// A client node's datagram for flow `number` of service `name`.
    fn on_data(&mut self, now: Instant, from: NodeId, number: u32, name: &str, payload: &[u8]) {
        let flow = match self.served_by_peer.get(&(from, number)) {
            Some(flow) => *flow,
            None => {
                let target = match self.lookup(name, Kind::Udp) {
                    Ok(target) if self.served.len() < MAX_SERVED_FLOWS => target,
                    Ok(_) => return self.refuse(from, number, Refusal::Busy),
                    Err(refusal) => return self.refuse(from, number, refusal),
                };
                let flow = ServedFlow(self.next_served);
                self.next_served += 1;
                self.served.insert(
                    flow,
                    ServedState {
                        node: from,
                        flow: number,
                        name: name.into(),
                        last_active: now,
                    },
                );
                self.served_by_peer.insert((from, number), flow);
                self.stats.flows_served += 1;
                self.events
                    .push_back(ForwardEvent::OpenTarget { flow, target });
                self.schedule_sweep(now);
                flow
            }
        };
        let state = self.served.get_mut(&flow).expect("indexed");
        if state.name != name {
            // A flow number reused for another service: not this flow's datagram.
            self.stats.dropped_invalid += 1;
            return;
        }
        state.last_active = now;
        self.stats.datagrams_to_targets += 1;
        self.stats.bytes_to_targets += payload.len() as u64;
        self.events.push_back(ForwardEvent::ToTarget {
            flow,
            data: payload.to_vec(),
        });
    }

    fn refuse(&mut self, to: NodeId, flow: u32, refusal: Refusal) {
        match refusal {
            Refusal::NotExposed => self.stats.refused_not_exposed += 1,
            Refusal::OtherKind => self.stats.refused_other_kind += 1,
            Refusal::Busy => self.stats.refused_busy += 1,
        }
        self.transmit(to, Message::Refused { flow, refusal });
    }

    /// The client flow `number`, if `from` is the node it forwards to.
    fn own_flow(&mut self, from: NodeId, number: u32) -> Option<&mut ClientFlow> {
        let flow = self.flows.get_mut(&number)?;
        let forward = self.forwards.get(&flow.forward)?;
        (forward.node == from).then_some(flow)
    }

    /// An authenticated datagram from `from` for this port.
    fn receive(&mut self, now: Instant, from: NodeId, data: &[u8]) {
        match wire::decode(data) {
            Some(Message::Query { token, kind, name }) => {
                let refusal = self.lookup(name, kind).err();
                self.transmit(from, Message::Answer { token, refusal });
            }
            Some(Message::Answer { token, refusal }) => {
                if self.queries.shift_remove(&token).is_none() {
                    self.stats.dropped_invalid += 1;
                    return;
                }
                let outcome = refusal.map_or(QueryOutcome::Exposed, QueryOutcome::Refused);
                self.events
                    .push_back(ForwardEvent::Answered { token, outcome });
            }
            Some(Message::Data {
                flow,
                name,
                payload,
            }) => self.on_data(now, from, flow, name, payload),
            Some(Message::Reply { flow, payload }) => {
                let Some(state) = self.own_flow(from, flow) else {
                    self.stats.dropped_invalid += 1;
                    return;
                };
                state.last_active = now;
                let (forward, client) = (state.forward, state.client);
                self.stats.datagrams_to_clients += 1;
                self.stats.bytes_to_clients += payload.len() as u64;
                self.events.push_back(ForwardEvent::ToClient {
                    forward,
                    client,
                    data: payload.to_vec(),
                });
            }
            Some(Message::Refused { flow, refusal }) => {
                let Some(state) = self.own_flow(from, flow) else {
                    self.stats.dropped_invalid += 1;
                    return;
                };
                let (forward, client) = (state.forward, state.client);
                self.flows.shift_remove(&flow);
                self.flows_by_client.shift_remove(&(forward, client));
                self.stats.flows_refused += 1;
                self.events.push_back(ForwardEvent::Refused {
                    forward,
                    client,
                    refusal,
                });
            }
            None => self.stats.dropped_invalid += 1,
        }
    }

    /// Fails late queries and closes idle flows.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|at| now < at) {
            return;
        }
        self.next_sweep = None;
        let late: Vec<u32> = self
            .queries
            .iter()
            .filter(|(_, query)| query.deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in late {
            self.queries.shift_remove(&token);
            self.events.push_back(ForwardEvent::Answered {
                token,
                outcome: QueryOutcome::NoAnswer,
            });
        }
        let idle = |last_active: Instant| now.saturating_since(last_active) >= FLOW_IDLE;
        let ended: Vec<ServedFlow> = self
            .served
            .iter()
            .filter(|(_, state)| idle(state.last_active))
            .map(|(flow, _)| *flow)
            .collect();
        ended.into_iter().for_each(|flow| self.close_served(flow));
        let flows_by_client = &mut self.flows_by_client;
        self.flows.retain(|_, flow| {
            let keep = !idle(flow.last_active);
            if !keep {
                flows_by_client.shift_remove(&(flow.forward, flow.client));
            }
            keep
        });
        if !(self.queries.is_empty() && self.served.is_empty() && self.flows.is_empty()) {
            self.schedule_sweep(now);
        }
    }
}

impl Service for Forwards {
    fn handle_message(&mut self, now: Instant, message: ServiceMessage<'_>, _overlay: &Node) {
        self.receive(now, message.from, message.data);
    }

    fn handle_timeout(&mut self, now: Instant, _overlay: &Node) {
        self.sweep(now);
    }

    fn poll_transmit(&mut self) -> Option<ServiceTransmit> {
        self.outgoing.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }
}
