//! The routing half of a node: route updates over routing links, sequence-number requests, and
//! hop-by-hop forwarding of overlay data.

use std::net::SocketAddr;

use super::links::{RoutingLink, hop_costs};
use super::{Event, Node, Output};
use crate::routing::{Metric, Seqno, SeqnoWanted};
use crate::wire::{
    BASE_DATAGRAM, Data, DataBody, MAX_DATAGRAM, MAX_ROUTE_ENTRIES, Message, RelayHeader,
    RouteEntry, RouteUpdate, SeqnoRequest, Trace, payload_for_datagram, rewrite_for_next_hop,
};
use crate::{Duration, Instant, NodeId};

/// A sequence-number request travels at most this many hops.
const SEQNO_REQUEST_HOPS: u8 = 16;
/// How long a route lost to unfeasibility keeps carrying packets: a seqno request is answered
/// within a round trip or two.
pub(super) const LOST_ROUTE_FALLBACK: Duration = Duration::from_secs(2);

/// [`Node::send_data`] refused a payload of this many bytes: more than one datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadTooLarge {
    pub len: usize,
    /// This node's limit ([`Node::payload_limit`]).
    pub max: usize,
}

impl std::fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a payload of {} bytes exceeds {}", self.len, self.max)
    }
}

impl std::error::Error for PayloadTooLarge {}

/// A route as a driver sees it (`hopwise routes`, simulator reports).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteInfo {
    pub next_hop: NodeId,
    pub next_hop_addr: SocketAddr,
    /// Expected round trip to the destination, in milliseconds.
    pub metric_ms: f64,
    /// True when the packet goes straight to the destination.
    pub direct: bool,
}

impl Node {
    /// Sends an overlay echo request; the answer arrives as [`Event::PingReply`].
    pub fn ping(&mut self, now: Instant, destination: NodeId, token: u64) {
        self.advance(now);
        let sent_us = self.now.as_micros() as u64;
        self.originate(destination, DataBody::Ping { token, sent_us });
    }

    /// Sends a trace: a ping that records every hop; the answer arrives as
    /// [`Event::TraceReply`].
    pub fn trace(&mut self, now: Instant, destination: NodeId, token: u64) {
        self.advance(now);
        let trace = Trace {
            token,
            sent_us: self.now.as_micros() as u64,
            outbound: None,
            path: Vec::new(),
        };
        self.originate(destination, DataBody::Trace(trace));
    }

    /// The largest payload this node originates: what its `max_datagram` carries, at most
    /// [`crate::wire::MAX_PAYLOAD`].
    #[must_use]
    pub fn payload_limit(&self) -> usize {
        payload_for_datagram(self.config.max_datagram.clamp(BASE_DATAGRAM, MAX_DATAGRAM))
    }

    /// Sends `payload` through the overlay; it arrives as [`Event::Delivered`]. A payload must
    /// fit one datagram ([`Node::payload_limit`] bytes).
    pub fn send_data(
        &mut self,
        now: Instant,
        destination: NodeId,
        payload: Vec<u8>,
    ) -> Result<(), PayloadTooLarge> {
        self.send_bytes(now, destination, payload, DataBody::Payload)
    }

    /// Sends an end-to-end sealed datagram through the overlay; it arrives as
    /// [`Event::Sealed`]. It must fit one datagram ([`Node::payload_limit`] bytes).
    pub fn send_sealed(
        &mut self,
        now: Instant,
        destination: NodeId,
        datagram: Vec<u8>,
    ) -> Result<(), PayloadTooLarge> {
        self.send_bytes(now, destination, datagram, DataBody::Sealed)
    }

    fn send_bytes(
        &mut self,
        now: Instant,
        destination: NodeId,
        bytes: Vec<u8>,
        body: fn(Vec<u8>) -> DataBody,
    ) -> Result<(), PayloadTooLarge> {
        let max = self.payload_limit();
        if bytes.len() > max {
            return Err(PayloadTooLarge {
                len: bytes.len(),
                max,
            });
        }
        self.advance(now);
        self.originate(destination, body(bytes));
        Ok(())
    }

    /// Where a packet for `destination` would go now.
    pub fn route(&self, destination: &NodeId) -> Option<RouteInfo> {
        let (next_hop, metric) = self.next_hop_to(destination)?;
        Some(RouteInfo {
            next_hop,
            next_hop_addr: self.hop_addr(&next_hop)?,
            metric_ms: metric.as_ms(),
            direct: next_hop == *destination,
        })
    }

    /// The head of this node's zone (zoned routing), once it has joined one.
    pub fn zone(&self) -> Option<NodeId> {
        self.routes.own_zone()
    }

    pub fn zoning(&self) -> Option<&crate::routing::ZoneConfig> {
        self.routes.zoning()
    }

    /// Every destination with a route in the table, and where a packet for it goes now.
    pub fn routes(&self) -> impl Iterator<Item = (NodeId, RouteInfo)> + '_ {
        self.routes
            .routes()
            .filter_map(|(destination, _)| Some((*destination, self.route(destination)?)))
    }

    /// Destinations with a route in the table (on-demand sessions not included).
    pub fn route_count(&self) -> usize {
        self.routes.route_count()
    }

    pub fn routing_links(&self) -> impl Iterator<Item = (&NodeId, &RoutingLink)> {
        self.links.iter().filter(|(_, l)| l.is_routing())
    }

    pub(super) fn originate(&mut self, destination: NodeId, body: DataBody) {
        let data = self.new_packet(destination, body);
        if destination == self.config.id {
            self.deliver(self.config.id, data);
            return;
        }
        // Directory messages are few and small: no direct path is worth measuring for them.
        if !data.body.is_directory() {
            self.ensure_session(destination);
        }
        if self.next_hop(&data).is_none()
            && data.destination_zone.is_none()
            && self.routes.zoning().is_some()
        {
            self.await_lookup(data);
            return;
        }
        self.forward(data);
    }

    /// Overlay data that `via` handed to this node.
    pub(super) fn on_data(&mut self, via: NodeId, data: Data) {
        self.learn_source_zone(data.source, data.source_zone);
        self.mark_traffic(via);
        if data.destination == self.config.id {
            self.deliver(via, data);
        } else if data.ttl <= 1 {
            self.stats.dropped_ttl_expired += 1;
        } else {
            self.stats.data_relayed += 1;
            self.forward(Data {
                ttl: data.ttl - 1,
                ..data
            });
        }
    }

    fn deliver(&mut self, via: NodeId, data: Data) {
        self.stats.data_delivered += 1;
        match data.body {
            DataBody::Ping { token, sent_us } => {
                let pong = DataBody::Pong {
                    token,
                    sent_us,
                    ping_hops: data.hops,
                };
                self.originate(data.source, pong);
            }
            DataBody::Pong {
                token,
                sent_us,
                ping_hops,
            } => {
                let Some(rtt_ms) = self.round_trip_since(sent_us) else {
                    return;
                };
                self.outputs.push_back(Output::Event(Event::PingReply {
                    destination: data.source,
                    token,
                    rtt_ms,
                    ping_hops,
                    pong_hops: data.hops,
                }));
            }
            DataBody::Payload(payload) => {
                self.outputs.push_back(Output::Event(Event::Delivered {
                    source: data.source,
                    hops: data.hops,
                    payload,
                }));
            }
            DataBody::Sealed(datagram) => {
                self.outputs.push_back(Output::Event(Event::Sealed {
                    source: data.source,
                    via,
                    datagram,
                }));
            }
            DataBody::Trace(trace) => self.on_trace(data.source, data.hops, trace),
            DataBody::Register { .. } | DataBody::Lookup { .. } | DataBody::LookupReply { .. } => {
                self.deliver_directory(data);
            }
        }
    }

    /// A trace reaching its destination goes back with its path so far; one coming back ends
    /// in an event.
    fn on_trace(&mut self, source: NodeId, hops: u8, trace: Trace) {
        let Some(outbound) = trace.outbound else {
            let back = Trace {
                outbound: Some(hops),
                ..trace
            };
            self.originate(source, DataBody::Trace(back));
            return;
        };
        let Some(rtt_ms) = self.round_trip_since(trace.sent_us) else {
            return;
        };
        self.outputs.push_back(Output::Event(Event::TraceReply {
            destination: source,
            token: trace.token,
            rtt_ms,
            outbound_hops: outbound,
            path: trace.path,
        }));
    }

    /// The round trip since an origin timestamp carried by a reply. The timestamp is ours only
    /// if the reply is genuine: one from the future (or out of range) cannot be, and must not
    /// turn into a negative or absurd round trip; it is counted and dropped.
    fn round_trip_since(&mut self, sent_us: u64) -> Option<f64> {
        let sent = i64::try_from(sent_us).map(Instant::from_micros);
        let Some(sent) = sent.ok().filter(|sent| *sent <= self.now) else {
            self.stats.dropped_unexpected += 1;
            return None;
        };
        Some((self.now - sent).as_millis_f64())
    }

    /// Where a packet goes next: towards its destination if a route or a measured direct link
    /// reaches it, else (zoned routing) towards the head of the destination's zone.
    fn next_hop(&self, data: &Data) -> Option<(NodeId, Metric)> {
        self.next_hop_towards(&data.destination, data.destination_zone)
    }

    /// The next hop to `destination`, or else to the head of its zone.
    fn next_hop_towards(
        &self,
        destination: &NodeId,
        destination_zone: Option<NodeId>,
    ) -> Option<(NodeId, Metric)> {
        self.next_hop_to(destination).or_else(|| {
            destination_zone
                .filter(|head| *head != self.config.id)
                .and_then(|head| self.next_hop_to(&head))
        })
    }

    /// The cheaper of the routed next hop and a measured direct link to the destination. A
    /// route lost to unfeasibility moments ago still carries packets (it is not advertised), so
    /// that waiting for a newer seqno does not drop them; a loop it might close is cut by the TTL.
    fn next_hop_to(&self, destination: &NodeId) -> Option<(NodeId, Metric)> {
        let routed = self
            .routes
            .selected(destination)
            .map(|selected| (selected.via, selected.metric))
            .or_else(|| {
                self.routes
                    .recently_lost(destination, self.now, LOST_ROUTE_FALLBACK)
                    .filter(|(via, _)| self.hop_addr(via).is_some())
            });
        let direct = self
            .links
            .get(destination)
            .and_then(RoutingLink::cost)
            .map(|cost| (*destination, cost));
        match (routed, direct) {
            (Some(r), Some(d)) => Some(if d.1 <= r.1 { d } else { r }),
            (r, d) => r.or(d),
        }
    }

    /// The relay's fast path: a data packet carrying application bytes for another node goes on
    /// as it arrived, rewritten in place ([`rewrite_for_next_hop`]), instead of being decoded
    /// into a [`Data`] and encoded again, with the same bookkeeping as [`Node::handle_input`]
    /// would do. Returns the next hop's address, where the caller sends the packet; `None`
    /// leaves the packet untouched for `handle_input`: anything else, or a packet that needs
    /// more than forwarding (for this node, out of TTL, without a route).
    pub fn relay_in_place(&mut self, now: Instant, packet: &mut [u8]) -> Option<SocketAddr> {
        let header = RelayHeader::peek(packet)?;
        let id = self.config.id;
        if header.destination == id || header.sender == id || header.ttl <= 1 {
            return None;
        }
        self.advance(now);
        let (next_hop, _) = self.next_hop_towards(&header.destination, header.destination_zone)?;
        let addr = self.hop_addr(&next_hop)?;
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += packet.len() as u64;
        self.learn_source_zone(header.source, header.source_zone);
        self.mark_traffic(header.sender);
        self.stats.data_relayed += 1;
        if !self.links.contains_key(&next_hop) {
            self.ensure_session(next_hop);
        }
        self.mark_traffic(next_hop);
        rewrite_for_next_hop(packet, id);
        self.stats.sent.data.add(packet.len());
        self.run_timers();
        Some(addr)
    }

    pub(super) fn forward(&mut self, data: Data) {
        let Some((next_hop, _)) = self.next_hop(&data) else {
            self.stats.dropped_no_route += 1;
            return;
        };
        let Some(addr) = self.hop_addr(&next_hop) else {
            self.stats.dropped_no_route += 1;
            return;
        };
        if !self.links.contains_key(&next_hop) {
            // A coordinate neighbour's direct path now carries traffic: watch it as closely as
            // a link.
            self.ensure_session(next_hop);
        }
        self.mark_traffic(next_hop);
        let mut data = data;
        if let DataBody::Trace(trace) = &mut data.body {
            trace.record(self.config.id, self.hop_rtt_ms(&next_hop).unwrap_or(0.0));
        }
        let message = Message::Data(Data {
            hops: data.hops.saturating_add(1),
            ..data
        });
        self.send(addr, message);
    }

    pub(super) fn on_route_update(&mut self, sender: NodeId, update: RouteUpdate) {
        let routing = self.links.get(&sender).is_some_and(|l| l.is_routing());
        if !routing {
            self.stats.dropped_unexpected += 1;
            return;
        }
        if let Some(link) = self.links.get_mut(&sender) {
            link.accepted = true;
        }
        let now = self.now;
        let cost = hop_costs(&self.links, &self.neighbours);
        let destinations: Vec<NodeId> = update.entries.iter().map(|e| e.destination).collect();
        let wanted: Vec<SeqnoWanted> = update
            .entries
            .into_iter()
            .filter_map(|entry| self.routes.on_update(sender, entry, now, cost))
            .collect();
        self.after_route_change(wanted);
        if !self.requests.is_empty() {
            for destination in &destinations {
                self.answer_forwarded_requests(destination);
            }
        }
    }

    /// Sends what the table wants sent: seqno requests now, route changes after the batching
    /// delay (short for bad news).
    pub(super) fn after_route_change(&mut self, wanted: Vec<SeqnoWanted>) {
        for request in wanted {
            self.request_seqno(request);
        }
        if !self.routes.has_changes() {
            return;
        }
        let delay = if self.routes.has_urgent_changes() {
            self.config.routing.urgent_update_delay
        } else {
            self.config.routing.update_delay
        };
        let at = self.now + delay;
        self.flush_at = Some(self.flush_at.map_or(at, |planned| planned.min(at)));
    }

    fn request_seqno(&mut self, wanted: SeqnoWanted) {
        if self
            .requests
            .own((wanted.destination, wanted.seqno), self.now)
        {
            self.send_own_request(wanted);
        }
    }

    fn send_own_request(&mut self, wanted: SeqnoWanted) {
        let SeqnoWanted {
            destination,
            seqno,
            ask,
        } = wanted;
        self.send_seqno_request(ask, destination, seqno, SEQNO_REQUEST_HOPS);
    }

    /// Own requests still unanswered go out again, to whichever neighbour is best to ask now. A
    /// destination that no longer starves drops its request; one that now wants another seqno
    /// asks for that instead.
    fn resend_requests(&mut self) {
        let cost = hop_costs(&self.links, &self.neighbours);
        let mut resends = Vec::new();
        let mut renewed = Vec::new();
        for key in self.requests.due(self.now) {
            match self.routes.still_wanted(&key.0, cost) {
                Some(wanted) if wanted.seqno == key.1 => resends.push(wanted),
                wanted => {
                    self.requests.drop_own(&key);
                    renewed.extend(wanted);
                }
            }
        }
        for wanted in resends {
            self.send_own_request(wanted);
        }
        for wanted in renewed {
            self.request_seqno(wanted);
        }
    }

    /// Sends `destination`'s current route to one neighbour only.
    fn answer_request(&mut self, to: NodeId, destination: &NodeId) {
        let Some(addr) = self.hop_addr(&to) else {
            return;
        };
        if let Some(entry) = self.routes.advertise_one(destination, to) {
            self.send_routes(addr, &[entry]);
        }
    }

    /// Requests this node sent or passed on that the route to `destination` now satisfies are
    /// forgotten, and answered back towards whoever asked.
    fn answer_forwarded_requests(&mut self, destination: &NodeId) {
        let Some(seqno) = self.routes.selected(destination).map(|s| s.seqno) else {
            return;
        };
        for requester in self.requests.answered(destination, seqno) {
            self.answer_request(requester, destination);
        }
    }

    fn send_seqno_request(&mut self, to: NodeId, destination: NodeId, seqno: Seqno, hop_limit: u8) {
        let Some(addr) = self.links.get(&to).map(|l| l.addr) else {
            return;
        };
        let request = SeqnoRequest {
            destination,
            seqno,
            hop_limit,
        };
        self.send(addr, Message::SeqnoRequest(request));
    }

    pub(super) fn on_seqno_request(&mut self, sender: NodeId, request: SeqnoRequest) {
        if !self.links.contains_key(&sender) {
            self.stats.dropped_unexpected += 1;
            return;
        }
        if request.destination == self.config.id {
            self.routes.bump_seqno(request.seqno);
            self.answer_request(sender, &request.destination);
            return;
        }
        let selected = self.routes.selected(&request.destination).copied();
        match selected {
            // Our route is new enough: it answers the request.
            Some(s) if !request.seqno.is_newer_than(s.seqno) => {
                self.answer_request(sender, &request.destination);
            }
            // Our route is the measured direct path to a destination that is no routing link,
            // so the request cannot be passed on to it: the direct path answers instead. A
            // session does not count: the destination's answer, a route update, would be
            // dropped on a link that carries no routes.
            Some(s)
                if s.via == request.destination
                    && !self
                        .links
                        .get(&request.destination)
                        .is_some_and(RoutingLink::is_routing) =>
            {
                let now = self.now;
                let cost = hop_costs(&self.links, &self.neighbours);
                self.routes
                    .renew_direct(&request.destination, request.seqno, now, cost);
                self.answer_request(sender, &request.destination);
                self.answer_forwarded_requests(&request.destination);
            }
            _ if request.hop_limit > 1 => {
                let key = (request.destination, request.seqno);
                let next = self.routes.request_next_hop(&request.destination, &sender);
                if let Some(next) = next
                    && self.requests.passed_on(key, sender, self.now)
                {
                    let hops = request.hop_limit - 1;
                    self.send_seqno_request(next, request.destination, request.seqno, hops);
                }
            }
            _ => {}
        }
    }

    /// Timers of the routing half: batched updates, link probes, link reviews.
    pub(super) fn on_routing_timers(&mut self) {
        let refresh = self.now >= self.next_refresh_at;
        if refresh || self.flush_at.is_some_and(|at| self.now >= at) {
            self.flush_updates(refresh);
        }
        if self.requests.next_resend().is_some_and(|at| self.now >= at) {
            self.resend_requests();
        }
        if self.now >= self.next_link_probe_at {
            self.probe_links();
        }
        if self.now >= self.next_review_at {
            let jitter = self.rng_factor();
            self.next_review_at = self.now + self.config.routing.review_interval.mul_f64(jitter);
            self.routes.forget_unreachable(self.now);
            self.requests.forget_old(self.now);
            self.review_zone();
            let starving = self
                .routes
                .starving(hop_costs(&self.links, &self.neighbours));
            for wanted in starving {
                self.request_seqno(wanted);
            }
            let now = self.now;
            self.shunned.retain(|_, until| *until > now);
            self.review_links();
        }
    }

    /// Sends the queued route changes (or, in a refresh, everything a neighbour was not told)
    /// to every routing link.
    fn flush_updates(&mut self, refresh: bool) {
        self.flush_at = None;
        if refresh {
            let jitter = self.rng_factor();
            self.next_refresh_at = self.now + self.config.routing.refresh_interval.mul_f64(jitter);
        }
        let cost = hop_costs(&self.links, &self.neighbours);
        let targets: Vec<(NodeId, Metric, SocketAddr)> = self
            .links
            .iter()
            .filter(|(_, l)| l.is_routing() && l.accepted)
            .filter_map(|(id, l)| Some((*id, cost(id)?, l.addr)))
            .collect();
        let costs: Vec<(NodeId, Metric)> = targets.iter().map(|t| (t.0, t.1)).collect();
        let updates = self.routes.take_updates(&costs, refresh);
        for ((_, _, addr), entries) in targets.into_iter().zip(updates) {
            self.send_routes(addr, &entries);
        }
    }

    /// Sends `entries` in as few updates as fit; zoned and flat entries are different kinds of
    /// update (in zoned routing, the zone of a node that has not joined one is not known).
    pub(super) fn send_routes(&mut self, addr: SocketAddr, entries: &[RouteEntry]) {
        let (zoned, flat): (Vec<RouteEntry>, Vec<RouteEntry>) =
            entries.iter().partition(|e| e.zone.is_some());
        for chunk in flat
            .chunks(MAX_ROUTE_ENTRIES)
            .chain(zoned.chunks(MAX_ROUTE_ENTRIES))
        {
            let update = RouteUpdate {
                entries: chunk.to_vec(),
            };
            self.send(addr, Message::RouteUpdate(update));
        }
    }

    /// Link costs changed: re-evaluate what goes through `via`.
    pub(super) fn link_cost_changed(&mut self, via: NodeId) {
        let now = self.now;
        let cost = hop_costs(&self.links, &self.neighbours);
        let wanted = self.routes.reselect_via(&via, now, cost);
        self.after_route_change(wanted);
    }

    /// A link went away: drop what it offered, keeping the direct path if the node is still a
    /// coordinate neighbour.
    pub(super) fn link_removed(&mut self, via: NodeId) {
        let now = self.now;
        let cost = hop_costs(&self.links, &self.neighbours);
        let mut wanted = self.routes.remove_via(&via, now, cost);
        if self.neighbours.contains_key(&via) {
            wanted.extend(self.routes.set_direct(via, true, now, cost));
        }
        self.after_route_change(wanted);
    }

    /// A coordinate neighbour appeared, changed latency or went away. Its measured direct path
    /// is a route to it (and, advertised, a last hop for everyone), unless a routing link to it
    /// already provides one.
    pub(super) fn neighbour_changed(&mut self, id: NodeId) {
        if self.links.get(&id).is_some_and(|l| l.is_routing()) {
            return;
        }
        let now = self.now;
        let present = self.neighbours.contains_key(&id);
        let cost = hop_costs(&self.links, &self.neighbours);
        let wanted: Vec<SeqnoWanted> = self
            .routes
            .set_direct(id, present, now, cost)
            .into_iter()
            .collect();
        self.after_route_change(wanted);
    }

    /// Address of the next hop `via`: a routing link or session, else a coordinate neighbour, else
    /// a routing link closed moments ago (for the routes lost with it).
    /// The measured round trip to a node this one forwards to.
    fn hop_rtt_ms(&self, via: &NodeId) -> Option<f64> {
        self.links
            .get(via)
            .and_then(RoutingLink::rtt_ms)
            .or_else(|| self.neighbours.get(via).map(|n| n.link.recent_rtt_ms()))
    }

    fn hop_addr(&self, via: &NodeId) -> Option<SocketAddr> {
        self.links
            .get(via)
            .map(|l| l.addr)
            .or_else(|| self.neighbours.get(via).map(|n| n.addr))
            .or_else(|| self.recently_closed_addr(via))
    }
}
