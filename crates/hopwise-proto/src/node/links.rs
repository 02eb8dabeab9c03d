//! Routing links and on-demand sessions: which nodes this node exchanges routes with, how each
//! link is kept measured and alive, and how the set is improved over time.
//!
//! A node opens `near_links` links to the lowest-latency nodes it has measured and `relay_links`
//! links to the nodes that shorten its paths the most; other nodes may open links to it up to
//! `max_links`. Relays are chosen in two steps: a candidate's benefit is *predicted* from its
//! measured RTT and the coordinates of the destinations it could serve better than the current
//! routes; once linked, its *measured* utility (how much worse the routes would be without it)
//! decides whether it stays. Sessions are direct links a source opens to a destination it sends
//! traffic to, so that the chosen path is never worse than the direct one; they carry no routes.

use std::net::SocketAddr;

use rand::RngExt;

use super::routing::LOST_ROUTE_FALLBACK;
use super::{Node, ProbePurpose};
use crate::keyed::Map;
use crate::link::{Link, LossVerdict};
use crate::routing::Metric;
use crate::wire::{LinkOp, Message};
use crate::{Duration, Instant, NodeId};

/// A link that forwarded data within this window is probed at the active rate.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// Cost added per hop, so that of two paths with equal latency the shorter is preferred.
const HOP_COST: Metric = Metric(2);
/// A link or session not answered within this time is given up, and its node left alone for
/// `SHUN_FOR`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
const SHUN_FOR: Duration = Duration::from_secs(300);
/// An open not accepted after this long is sent again with the link's probes.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// A session is closed after this long without traffic.
const SESSION_IDLE: Duration = Duration::from_secs(20);
/// Probe interval of a session that carries no traffic right now.
const SESSION_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How soon a sample that disagrees with a link's median is checked by another probe.
const CONFIRM_AFTER: Duration = Duration::from_millis(300);
/// Relays are replaced only once they had time to show their worth.
const RELAY_PROBATION: Duration = Duration::from_secs(30);
/// A candidate relay must promise this much more than the weakest relay delivers (ms summed
/// over destinations) before it replaces it.
const RELAY_SWAP_GAIN_MS: f64 = 20.0;
/// A node replaces the farthest near link only if it is this much closer.
const NEAR_REPLACEMENT_FACTOR: f64 = 0.8;
/// Utility credited for a destination that only this link reaches.
const SOLE_ROUTE_UTILITY_MS: f64 = 100.0;
/// A predicted detour counts only if it beats the current route by this factor.
const PREDICTED_GAIN_FACTOR: f64 = 0.95;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Opened by this node to one of the nearest nodes it measured.
    Near,
    /// Opened by this node to a relay that shortens its paths.
    Relay,
    /// Opened by the other node.
    Inbound,
    /// Zoned routing: opened by a member none of whose other links is in its own zone, to a
    /// node of that zone, so that it hears the routes of its zone.
    Zone,
    /// Opened by this node to a node carrying one of its `connect_tags`; kept while it lives.
    Tagged,
    /// Direct path to a destination this node sends traffic to; carries no routes.
    Session,
}

#[derive(Debug, Clone)]
pub struct RoutingLink {
    pub addr: SocketAddr,
    pub kind: LinkKind,
    /// The other end agreed to exchange routes.
    pub accepted: bool,
    /// Latency, loss and liveness, once the first probe was answered.
    pub link: Option<Link>,
    pub opened_at: Instant,
    pub last_traffic: Option<Instant>,
    pub next_probe_at: Instant,
    /// The routing cost, kept up to date with every probe outcome (read for every offer).
    cost: Option<Metric>,
    /// The last sample disagreed with the median: the next probe goes out early.
    confirming: bool,
}

impl RoutingLink {
    fn new(addr: SocketAddr, kind: LinkKind, now: Instant) -> Self {
        Self {
            addr,
            kind,
            accepted: kind == LinkKind::Inbound,
            link: None,
            opened_at: now,
            last_traffic: None,
            next_probe_at: now,
            cost: None,
            confirming: false,
        }
    }

    /// The routing cost of crossing this link: recent RTT, inflated by loss beyond a couple of
    /// isolated probes, plus a hop cost.
    pub fn cost(&self) -> Option<Metric> {
        self.cost
    }

    fn update_cost(&mut self) {
        self.cost = self.link.as_ref().map(|link| {
            let rtt = link.recent_rtt_ms() * (1.0 + 4.0 * link.costed_loss());
            Metric::from_ms(rtt).plus(HOP_COST)
        });
    }

    pub fn rtt_ms(&self) -> Option<f64> {
        self.link.as_ref().map(Link::recent_rtt_ms)
    }

    /// A link that exchanges routes (not a source's direct session).
    pub fn is_routing(&self) -> bool {
        self.kind != LinkKind::Session
    }

    pub fn is_active(&self, now: Instant) -> bool {
        self.last_traffic.is_some_and(|at| now - at < ACTIVE_WINDOW)
    }
}

/// The cost of the hop to a node: a measured routing link or session, else the recent RTT of a
/// coordinate neighbour (the median of its last samples, like a link's, so that a changed
/// latency shows within two samples; the coordinates' low percentile would lag behind a rise).
/// Takes the two tables rather than the node, so the route table can be borrowed beside it.
pub(super) fn hop_costs<'a>(
    links: &'a Map<NodeId, RoutingLink>,
    neighbours: &'a Map<NodeId, super::Neighbour>,
) -> impl Fn(&NodeId) -> Option<Metric> + Copy + 'a {
    move |via| {
        links.get(via).and_then(RoutingLink::cost).or_else(|| {
            neighbours
                .get(via)
                .map(|n| Metric::from_ms(n.link.recent_rtt_ms()).plus(HOP_COST))
        })
    }
}

impl Node {
    pub(super) fn rng_factor(&mut self) -> f64 {
        self.rng.random_range(0.8..1.2)
    }

    fn routing_link_count(&self) -> usize {
        self.links.values().filter(|l| l.is_routing()).count()
    }

    /// Opens (or upgrades a session into) a routing link of `kind`.
    fn open_link(&mut self, id: NodeId, addr: SocketAddr, kind: LinkKind) {
        let now = self.now;
        let link = self
            .links
            .entry(id)
            .or_insert_with(|| RoutingLink::new(addr, kind, now));
        if !link.is_routing() {
            // A session turned into a routing link: the open timeout runs from now. From the
            // session's start, the link was given up at once, unanswered, while the other end
            // accepted it and kept a link that exchanged no routes.
            link.opened_at = now;
        }
        link.kind = kind;
        link.next_probe_at = now;
        self.next_link_probe_at = now;
        self.send(addr, Message::Link(LinkOp::Open));
    }

    /// Tells every routing link's other end that this node is leaving, so they re-route at once
    /// instead of after missed probes. The node should not be driven afterwards.
    pub fn leave(&mut self, now: Instant) {
        self.advance(now);
        let ids: Vec<NodeId> = self.routing_links().map(|(id, _)| *id).collect();
        for id in ids {
            self.close_link(id);
        }
    }

    fn close_link(&mut self, id: NodeId) {
        if let Some(link) = self.links.swap_remove(&id) {
            if link.is_routing() {
                self.send(link.addr, Message::Link(LinkOp::Close));
                self.remember_closed(id, link.addr);
                self.link_removed(id);
            }
        }
    }

    /// Keeps the address of a routing link closed on purpose for [`LOST_ROUTE_FALLBACK`]. The
    /// other end still forwards, so the routes lost with the link may carry packets there until
    /// a route with a newer seqno arrives; dropping them instead cost whole round trips.
    fn remember_closed(&mut self, id: NodeId, addr: SocketAddr) {
        let now = self.now;
        self.closed_links
            .retain(|_, (_, at)| now - *at < LOST_ROUTE_FALLBACK);
        self.closed_links.insert(id, (addr, now));
    }

    /// The address of a routing link closed within [`LOST_ROUTE_FALLBACK`].
    pub(super) fn recently_closed_addr(&self, id: &NodeId) -> Option<SocketAddr> {
        let (addr, at) = self.closed_links.get(id)?;
        (self.now - *at < LOST_ROUTE_FALLBACK).then_some(*addr)
    }

    fn drop_link(&mut self, id: NodeId, shun: bool) {
        if shun {
            self.shunned.insert(id, self.now + SHUN_FOR);
        }
        // Given up or gone down: no longer a near-link candidate until measured again.
        self.nearest.forget(&id);
        if let Some(link) = self.links.swap_remove(&id) {
            if link.is_routing() {
                self.link_removed(id);
                // A node left without a routing link hears no routes but its neighbours'
                // direct paths: it chooses a new link at once, not at the next periodic review
                // (up to 5 s later). Reviewing early on every loss instead opened links during
                // a partition that kept pairs apart after it healed.
                if self.routing_link_count() == 0 {
                    self.next_review_at = self.next_review_at.min(self.now);
                }
            }
        }
    }

    /// Makes sure traffic to `destination` can be compared with the direct path.
    pub(super) fn ensure_session(&mut self, destination: NodeId) {
        if self.links.contains_key(&destination) {
            self.mark_traffic(destination);
            return;
        }
        let sessions = self.links.values().filter(|l| !l.is_routing()).count();
        if sessions >= self.config.routing.max_sessions || self.shunned.contains_key(&destination) {
            return;
        }
        let Some(addr) = self.known.get(&destination).map(|n| n.addr) else {
            return;
        };
        let mut session = RoutingLink::new(addr, LinkKind::Session, self.now);
        session.last_traffic = Some(self.now);
        // A coordinate neighbour's path is measured already: start from that, so that probe
        // timeouts and loss detection work from the first probe.
        if let Some(neighbour) = self.neighbours.get(&destination) {
            let rtt = neighbour.link.filtered_rtt_ms();
            session.link = Some(Link::new(rtt, self.config.routing.max_missed_probes));
            session.update_cost();
        }
        self.links.insert(destination, session);
        self.next_link_probe_at = self.now;
    }

    /// Notes that data went to `id` or came from it now. A link that was idle is probed at once
    /// and then at the active rate, so that its failure is noticed within a fraction of a
    /// second, by the receiving end of a one-way stream (a pub/sub tree, a media flow) as well
    /// as by the sending end.
    pub(super) fn mark_traffic(&mut self, id: NodeId) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if !link.is_active(now) {
            link.next_probe_at = now;
            self.next_link_probe_at = now;
        }
        link.last_traffic = Some(now);
    }

    pub(super) fn on_link_op(&mut self, from: SocketAddr, sender: NodeId, op: LinkOp) {
        match op {
            LinkOp::Open => {
                let has_room = self.routing_link_count() < self.config.routing.max_links;
                match self.links.get_mut(&sender) {
                    // A session becomes a routing link only if there is room for one.
                    Some(link) if link.is_routing() || has_room => {
                        if !link.is_routing() {
                            link.kind = LinkKind::Inbound;
                        }
                        link.accepted = true;
                        link.addr = from;
                    }
                    None if has_room => {
                        let link = RoutingLink::new(from, LinkKind::Inbound, self.now);
                        self.links.insert(sender, link);
                        self.next_link_probe_at = self.now;
                    }
                    _ => {
                        self.send(from, Message::Link(LinkOp::Refuse));
                        return;
                    }
                }
                self.send(from, Message::Link(LinkOp::Accept));
                let dump = self.routes.full_dump(sender);
                self.send_routes(from, &dump);
            }
            LinkOp::Accept => {
                // An acceptance of a link this node gave up on: the other end keeps it as a
                // link, and would wait for routes that never come. It is closed instead.
                let Some(link) = self.links.get_mut(&sender).filter(|l| l.is_routing()) else {
                    self.send(from, Message::Link(LinkOp::Close));
                    return;
                };
                if !link.accepted {
                    link.accepted = true;
                    let dump = self.routes.full_dump(sender);
                    self.send_routes(from, &dump);
                }
            }
            LinkOp::Refuse => {
                if self.links.get(&sender).is_some_and(|l| !l.accepted) {
                    self.drop_link(sender, true);
                }
            }
            LinkOp::Close => {
                if let Some(link) = self.links.get(&sender).filter(|l| l.is_routing()) {
                    self.remember_closed(sender, link.addr);
                    self.drop_link(sender, false);
                }
            }
        }
    }

    /// Sends the probes that are due, gives up on links that never answered, closes idle
    /// sessions.
    pub(super) fn probe_links(&mut self) {
        let now = self.now;
        let routing = self.config.routing.clone();
        let mut due = Vec::new();
        let mut give_up = Vec::new();
        let mut next = Instant::MAX;
        for (id, link) in &mut self.links {
            let unanswered = link.link.is_none() || (link.is_routing() && !link.accepted);
            if unanswered && now - link.opened_at >= OPEN_TIMEOUT {
                give_up.push(*id);
                continue;
            }
            if !link.is_routing() && link.last_traffic.is_none_or(|at| now - at >= SESSION_IDLE) {
                give_up.push(*id);
                continue;
            }
            if link.next_probe_at <= now {
                let interval = if link.is_active(now) {
                    routing.active_probe_interval
                } else if !link.is_routing() || link.link.is_none() {
                    SESSION_PROBE_INTERVAL
                } else {
                    routing.idle_probe_interval
                };
                let timeout = link
                    .link
                    .as_ref()
                    .map_or(Duration::from_millis(1_500), |l| {
                        let ms = 1.5 * l.srtt_ms() + 4.0 * l.rttvar_ms();
                        Duration::from_millis_f64(ms.clamp(100.0, 1_500.0))
                    });
                // An open or its acceptance may be lost: ask again with the probes until
                // accepted (an open of an existing link is accepted again, with a full table,
                // so not before an answer could have come).
                let reopen =
                    link.is_routing() && !link.accepted && now - link.opened_at >= REOPEN_AFTER;
                due.push((*id, link.addr, timeout, reopen));
                link.next_probe_at = now + interval;
            }
            next = next.min(link.next_probe_at);
        }
        self.next_link_probe_at = next;
        for id in give_up {
            let never_answered = self.links.get(&id).is_some_and(|l| l.link.is_none());
            self.drop_link(id, never_answered);
        }
        for (id, addr, timeout, reopen) in due {
            if reopen {
                self.send(addr, Message::Link(LinkOp::Open));
            }
            self.send_probe_with(addr, ProbePurpose::Link(id), timeout, Vec::new());
        }
    }

    /// The other end of an idle link probed it, which shows the link alive: this end skips
    /// its own next probe. Whichever end's timer runs out first probes, so an idle link costs
    /// about one probe per interval instead of two, and both ends still get samples.
    pub(super) fn link_probed_by_peer(&mut self, id: NodeId) {
        let interval = self.config.routing.idle_probe_interval;
        let postponed = self.now + interval.mul_f64(self.rng.random_range(0.5..1.5));
        let now = self.now;
        if let Some(link) = self.links.get_mut(&id)
            && link.is_routing()
            && link.link.is_some()
            && !link.is_active(now)
            && !link.confirming
        {
            link.next_probe_at = link.next_probe_at.max(postponed);
        }
    }

    pub(super) fn on_link_sample(&mut self, id: NodeId, rtt_ms: f64) {
        let max_missed = self.config.routing.max_missed_probes;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let before = link.cost();
        match &mut link.link {
            Some(estimator) => {
                estimator.on_sample(rtt_ms);
            }
            None => link.link = Some(Link::new(rtt_ms, max_missed)),
        }
        link.update_cost();
        let after = link.cost();
        // A sample far from the link's median may be a real change of latency: probe again
        // soon, so that the median (and the routes) follow within a second, not a few intervals.
        let median = link.rtt_ms().unwrap_or(rtt_ms);
        link.confirming = (rtt_ms - median).abs() > (0.05 * median).max(1.0);
        if link.confirming {
            link.next_probe_at = link.next_probe_at.min(self.now + CONFIRM_AFTER);
            self.next_link_probe_at = self.next_link_probe_at.min(link.next_probe_at);
        }
        let routing = link.is_routing();
        let changed = match (before, after) {
            (Some(b), Some(a)) => b.0.abs_diff(a.0) > (b.0 / 200).max(1),
            _ => true,
        };
        if routing && changed {
            self.link_cost_changed(id);
        }
    }

    pub(super) fn on_link_probe_lost(&mut self, id: NodeId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(estimator) = link.link.as_mut() else {
            return;
        };
        if estimator.on_probe_lost() == LossVerdict::WentDown {
            self.drop_link(id, false);
            // The direct path is gone: the node is no coordinate neighbour either.
            self.remove_neighbour(id);
            return;
        }
        let before = link.cost();
        link.update_cost();
        if link.is_routing() && link.cost() != before {
            self.link_cost_changed(id);
        }
    }

    /// Improves the set of routing links: the nearest nodes measured, and relays whose predicted
    /// benefit clearly exceeds what the weakest current relay delivers.
    pub(super) fn review_links(&mut self) {
        let now = self.now;
        let candidates = self.measured_candidates();
        self.review_tagged();
        self.review_near(&candidates);
        self.review_zone_link(&candidates);
        let relays: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(_, l)| l.kind == LinkKind::Relay)
            .map(|(id, _)| *id)
            .collect();
        let open_room = self.routing_link_count() < self.config.routing.max_links;
        if relays.len() < self.config.routing.relay_links && open_room {
            if let Some((id, addr, _)) = self.best_relay_candidate(&candidates) {
                self.open_link(id, addr, LinkKind::Relay);
                self.last_relay_swap = now;
            }
            return;
        }
        let swap_interval = match self.routes.zoning() {
            Some(_) => self.config.routing.zoned_relay_swap_interval,
            None => self.config.routing.relay_swap_interval,
        };
        if now - self.last_relay_swap < swap_interval {
            return;
        }
        let utilities = self.link_utilities();
        let weakest = relays
            .iter()
            .filter(|id| self.links[*id].opened_at + RELAY_PROBATION <= now)
            .map(|id| (*id, utilities.get(id).copied().unwrap_or(0.0)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((weakest, utility)) = weakest else {
            return;
        };
        if let Some((id, addr, benefit)) = self.best_relay_candidate(&candidates) {
            if benefit > 2.0 * utility + RELAY_SWAP_GAIN_MS {
                self.close_link(weakest);
                self.open_link(id, addr, LinkKind::Relay);
                self.last_relay_swap = now;
            }
        }
    }

    /// Opens a link to every known node that carries one of this node's `connect_tags`, up to
    /// `max_tagged_links`.
    fn review_tagged(&mut self) {
        if self.connect_filters.is_empty() {
            return;
        }
        let tagged = self
            .links
            .values()
            .filter(|l| l.kind == LinkKind::Tagged)
            .count();
        let room = self.config.max_tagged_links.saturating_sub(tagged);
        let wanted: Vec<(NodeId, SocketAddr)> = self
            .known
            .iter()
            .filter(|k| self.connect_filters.iter().any(|f| k.tags.covers(*f)))
            .filter(|k| {
                !self
                    .links
                    .get(&k.id)
                    .is_some_and(|l| l.kind == LinkKind::Tagged)
            })
            .filter(|k| !self.shunned.contains_key(&k.id))
            .take(room)
            .map(|k| (k.id, k.addr))
            .collect();
        for (id, addr) in wanted {
            self.open_link(id, addr, LinkKind::Tagged);
        }
    }

    /// Nodes with a measured RTT that could become routing links: coordinate neighbours and the
    /// nearest nodes measured (sessions may be upgraded), sorted by RTT.
    fn measured_candidates(&self) -> Vec<(NodeId, SocketAddr, f64)> {
        let nearest = self
            .nearest
            .iter()
            .filter(|m| !self.neighbours.contains_key(&m.id))
            .map(|m| (m.id, m.addr, m.rtt_ms));
        let mut candidates: Vec<(NodeId, SocketAddr, f64)> = self
            .neighbours
            .iter()
            .map(|(id, n)| (*id, n.addr, n.link.filtered_rtt_ms()))
            .chain(nearest)
            .filter(|(id, _, _)| !self.shunned.contains_key(id))
            .collect();
        candidates.sort_by(|a, b| a.2.total_cmp(&b.2));
        candidates
    }

    fn review_near(&mut self, candidates: &[(NodeId, SocketAddr, f64)]) {
        let wanted = self.config.routing.near_links;
        let linked = |node: &Node, id: &NodeId| node.links.get(id).is_some_and(|l| l.is_routing());
        // The nearest measured nodes, whether as candidates or as existing links.
        let mut nearest: Vec<(NodeId, f64)> = candidates.iter().map(|c| (c.0, c.2)).collect();
        for (id, link) in &self.links {
            if link.is_routing() && !nearest.iter().any(|(n, _)| n == id) {
                if let Some(rtt) = link.rtt_ms() {
                    nearest.push((*id, rtt));
                }
            }
        }
        nearest.sort_by(|a, b| a.1.total_cmp(&b.1));
        nearest.truncate(wanted);
        let open_room = self.routing_link_count() < self.config.routing.max_links;
        let near_rtts: Vec<f64> = self
            .links
            .values()
            .filter(|l| l.kind == LinkKind::Near)
            .map(|l| l.rtt_ms().unwrap_or(f64::INFINITY))
            .collect();
        let farthest_near = near_rtts.iter().copied().fold(0.0, f64::max);
        let missing = candidates
            .iter()
            .find(|c| nearest.iter().any(|(id, _)| *id == c.0) && !linked(self, &c.0));
        // Once the near links are complete, only a clearly closer node is worth a new link
        // (each new link costs both ends a full table).
        let worth_it = missing.is_some_and(|c| {
            near_rtts.len() < wanted || c.2 < NEAR_REPLACEMENT_FACTOR * farthest_near
        });
        if let (true, true, Some(&(id, addr, _))) = (open_room, worth_it, missing) {
            self.open_link(id, addr, LinkKind::Near);
        }
        let surplus: Vec<(NodeId, f64)> = self
            .links
            .iter()
            .filter(|(id, l)| l.kind == LinkKind::Near && !nearest.iter().any(|(n, _)| n == *id))
            .map(|(id, l)| (*id, l.rtt_ms().unwrap_or(f64::INFINITY)))
            .collect();
        let near_count = self
            .links
            .values()
            .filter(|l| l.kind == LinkKind::Near)
            .count();
        if near_count > wanted {
            if let Some((id, _)) = surplus.into_iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
                self.close_link(id);
            }
        }
    }

    /// Zoned routing: a member hears routes to the other members of its zone only from links in
    /// that zone. A member without one opens a link to the nearest measured node of its zone,
    /// or to its head; a zone link to a zone it has left is closed.
    fn review_zone_link(&mut self, candidates: &[(NodeId, SocketAddr, f64)]) {
        let Some(zone) = self
            .routes
            .own_zone()
            .filter(|head| *head != self.config.id)
        else {
            return;
        };
        let in_zone =
            |node: &Node, id: &NodeId| *id == zone || node.routes.zone_of(id) == Some(zone);
        let stale: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(id, l)| l.kind == LinkKind::Zone && !in_zone(self, id))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close_link(id);
        }
        let linked = self
            .links
            .iter()
            .any(|(id, l)| l.is_routing() && in_zone(self, id));
        if linked || self.routing_link_count() >= self.config.routing.max_links {
            return;
        }
        let target = candidates
            .iter()
            .find(|c| in_zone(self, &c.0) && self.links.get(&c.0).is_none_or(|l| !l.is_routing()))
            .map(|c| (c.0, c.1))
            .or_else(|| Some((zone, self.known.get(&zone)?.addr)))
            .filter(|(id, _)| !self.shunned.contains_key(id));
        if let Some((id, addr)) = target {
            self.open_link(id, addr, LinkKind::Zone);
        }
    }

    /// How much worse, in milliseconds summed over destinations, the routes would be without
    /// each link: the gap between the best and second-best offer wherever the link is best.
    fn link_utilities(&self) -> Map<NodeId, f64> {
        let mut utilities = Map::with_hasher(self.hash_key);
        let cost = hop_costs(&self.links, &self.neighbours);
        for (_, offers, _) in self.routes.destinations() {
            let mut best: Option<(Metric, NodeId)> = None;
            let mut second: Option<Metric> = None;
            for offer in offers.iter().filter(|o| !o.metric.is_infinite()) {
                let Some(total) = cost(&offer.via).map(|c| offer.metric.plus(c)) else {
                    continue;
                };
                match best {
                    Some((b, _)) if total >= b => {
                        second = Some(second.map_or(total, |s| s.min(total)));
                    }
                    // The old best (never worse than the old second) becomes the second.
                    Some((b, _)) => {
                        second = Some(b);
                        best = Some((total, offer.via));
                    }
                    None => best = Some((total, offer.via)),
                }
            }
            if let Some((best_metric, via)) = best {
                let gain = second.map_or(SOLE_ROUTE_UTILITY_MS, |s| {
                    (s.as_ms() - best_metric.as_ms()).min(SOLE_ROUTE_UTILITY_MS)
                });
                *utilities.entry(via).or_insert(0.0) += gain;
            }
        }
        utilities
    }

    /// The unlinked measured node whose link would shorten the current routes the most, judged
    /// by its RTT plus the coordinate distance from it to each destination.
    fn best_relay_candidate(
        &self,
        candidates: &[(NodeId, SocketAddr, f64)],
    ) -> Option<(NodeId, SocketAddr, f64)> {
        let destinations: Vec<(NodeId, f64, crate::Coordinate)> = self
            .routes
            .routes()
            .filter_map(|(id, selected)| {
                let coord = self
                    .neighbours
                    .get(id)
                    .map(|n| n.coord)
                    .or_else(|| self.known.get(id).map(|k| k.coord))?;
                Some((*id, selected.metric.as_ms(), coord))
            })
            .collect();
        candidates
            .iter()
            .filter(|c| self.links.get(&c.0).is_none_or(|l| !l.is_routing()))
            .map(|&(id, addr, rtt)| {
                let coord = self.neighbours.get(&id).map(|n| n.coord);
                let benefit: f64 = destinations
                    .iter()
                    .map(|(dest, current, dest_coord)| {
                        let detour = if *dest == id {
                            rtt
                        } else {
                            rtt + coord.map_or(f64::INFINITY, |c| c.distance_ms(dest_coord))
                        };
                        if detour < PREDICTED_GAIN_FACTOR * current {
                            current - detour
                        } else {
                            0.0
                        }
                    })
                    .sum();
                (id, addr, benefit)
            })
            .filter(|c| c.2 > 0.0)
            .max_by(|a, b| a.2.total_cmp(&b.2))
    }
}
