//! The zoned-routing half of a node (see `routing::zones`): choosing a zone, registering it with
//! the directory, answering directory requests as a head, and looking up the zone of a
//! destination that no exact route reaches.

use rand::RngExt;

use super::Node;
use crate::keyed::{HashKey, Map};
use crate::wire::{Data, DataBody, INITIAL_TTL};
use crate::{Duration, Instant, NodeId};

/// A node registers its zone again this often, so a directory head that restarted or took over
/// learns it without asking.
const REGISTER_INTERVAL: Duration = Duration::from_secs(30);
/// A registration not renewed for this long is dropped.
const REGISTRATION_LIFETIME: Duration = Duration::from_secs(100);
/// A learned zone is trusted this long before it is looked up again (nodes change zone rarely).
const ZONE_HINT_LIFETIME: Duration = Duration::from_secs(60);
/// An unanswered lookup is sent again after this long, and given up (with what waits for it)
/// after `LOOKUP_GIVE_UP`.
const LOOKUP_RETRY: Duration = Duration::from_secs(1);
const LOOKUP_GIVE_UP: Duration = Duration::from_secs(4);
/// Bounds: remembered zones, directory entries, destinations being looked up, and packets
/// waiting per destination.
const MAX_ZONE_HINTS: usize = 4_096;
const MAX_DIRECTORY: usize = 65_536;
const MAX_LOOKUPS: usize = 256;
const MAX_WAITING_PER_LOOKUP: usize = 8;
/// Another head replaces the current one only if it is this much closer (and 3 ms), so nodes
/// near a boundary do not flap between zones. Every switch makes the node's links retract the
/// routes of the old zone and send those of the new one.
const ZONE_SWITCH_FACTOR: f64 = 0.75;
const ZONE_SWITCH_MARGIN_MS: f64 = 3.0;
/// A node joins its first zone after this long: the routes to heads are poor in the first
/// seconds, and a hasty choice would be revised soon.
const FIRST_ZONE_AFTER: Duration = Duration::from_secs(10);
/// A member stays at least this long in a zone whose head it still reaches. Every switch costs
/// the old and the new zone a wave of updates, and routes to heads move for a while after
/// relays change.
const ZONE_MIN_STAY: Duration = Duration::from_secs(60);
/// A member leaves a zone whose head it no longer reaches after this long: a route that is
/// lost for a moment (while a seqno request is answered) is no reason to move.
const HEAD_LOST_AFTER: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub(super) struct ZoneState {
    /// Zones of destinations learned from lookups and from packets' source zones.
    hints: Map<NodeId, (NodeId, Instant)>,
    /// As a directory head: the zones nodes registered with us.
    directory: Map<NodeId, (NodeId, Instant)>,
    lookups: Map<NodeId, PendingLookup>,
    /// Where and what we last registered, and when.
    registered: Option<(NodeId, NodeId, Instant)>,
    /// When this node last joined a zone.
    joined_at: Option<Instant>,
    /// Since when the route to the own head has been missing.
    head_lost_since: Option<Instant>,
}

#[derive(Debug)]
struct PendingLookup {
    first_asked: Instant,
    last_asked: Instant,
    waiting: Vec<Data>,
}

impl ZoneState {
    pub(super) fn new(hash_key: HashKey) -> Self {
        Self {
            hints: Map::with_hasher(hash_key),
            directory: Map::with_hasher(hash_key),
            lookups: Map::with_hasher(hash_key),
            registered: None,
            joined_at: None,
            head_lost_since: None,
        }
    }
}

fn remember(
    map: &mut Map<NodeId, (NodeId, Instant)>,
    bound: usize,
    key: NodeId,
    value: (NodeId, Instant),
    victim: usize,
) {
    if !map.contains_key(&key) && map.len() >= bound {
        map.swap_remove_index(victim % map.len());
    }
    map.insert(key, value);
}

impl Node {
    fn zoned(&self) -> bool {
        self.routes.zoning().is_some()
    }

    /// At every link review: join (or keep) the zone of the nearest head, register it, and
    /// forget what has expired.
    pub(super) fn review_zone(&mut self) {
        let Some(zoning) = self.routes.zoning().copied() else {
            return;
        };
        if !zoning.is_head(&self.config.id) && self.now - self.started_at >= FIRST_ZONE_AFTER {
            if let Some(head) = self.zone_to_join() {
                self.zones.joined_at = Some(self.now);
                self.zones.head_lost_since = None;
                self.routes.set_own_zone(head);
                self.after_route_change(Vec::new());
            }
        }
        self.register_zone();
        let now = self.now;
        let zones = &mut self.zones;
        zones
            .hints
            .retain(|_, (_, at)| now - *at < ZONE_HINT_LIFETIME);
        zones
            .directory
            .retain(|_, (_, at)| now - *at < REGISTRATION_LIFETIME);
        let expired: Vec<PendingLookup> = zones
            .lookups
            .extract_if(.., |_, l| now - l.first_asked >= LOOKUP_GIVE_UP)
            .map(|(_, l)| l)
            .collect();
        for lookup in expired {
            self.stats.dropped_no_route += lookup.waiting.len() as u64;
        }
    }

    /// The head whose zone this node should join now, if it is not the current one: the nearest
    /// head by route, once the current head is clearly farther and the node has stayed a while,
    /// or once the route to the current head has been lost for a while.
    fn zone_to_join(&mut self) -> Option<NodeId> {
        let now = self.now;
        let (head, metric) = self
            .routes
            .heads()
            .min_by_key(|(id, s)| (s.metric, **id))
            .map(|(id, s)| (*id, s.metric.as_ms()))?;
        let Some(own) = self.routes.own_zone() else {
            return Some(head);
        };
        if own == head {
            self.zones.head_lost_since = None;
            return None;
        }
        match self.routes.selected(&own) {
            Some(current) => {
                self.zones.head_lost_since = None;
                let settled = self
                    .zones
                    .joined_at
                    .is_none_or(|at| now - at >= ZONE_MIN_STAY);
                let current = current.metric.as_ms();
                let closer = metric <= ZONE_SWITCH_FACTOR * current - ZONE_SWITCH_MARGIN_MS;
                (settled && closer).then_some(head)
            }
            None => {
                let since = *self.zones.head_lost_since.get_or_insert(now);
                (now - since >= HEAD_LOST_AFTER).then_some(head)
            }
        }
    }

    /// The head keeping the directory entry for `target`, among the heads we have routes to.
    fn directory_head(&self, target: &NodeId) -> Option<NodeId> {
        let zoning = self.routes.zoning()?;
        let me = zoning.is_head(&self.config.id).then_some(self.config.id);
        let heads = self.routes.heads().map(|(id, _)| *id).chain(me);
        zoning.directory_for(target, heads)
    }

    fn register_zone(&mut self) {
        let me = self.config.id;
        let (Some(zone), Some(head)) = (self.routes.own_zone(), self.directory_head(&me)) else {
            return;
        };
        let due = self
            .zones
            .registered
            .is_none_or(|(at_head, with_zone, when)| {
                at_head != head || with_zone != zone || self.now - when >= REGISTER_INTERVAL
            });
        if !due {
            return;
        }
        self.zones.registered = Some((head, zone, self.now));
        if head == me {
            self.record_registration(me, zone);
        } else {
            self.originate(head, DataBody::Register { zone });
        }
    }

    fn record_registration(&mut self, node: NodeId, zone: NodeId) {
        let victim = self.rng.random_range(0..usize::MAX);
        remember(
            &mut self.zones.directory,
            MAX_DIRECTORY,
            node,
            (zone, self.now),
            victim,
        );
    }

    /// The zone of `destination` as far as this node knows.
    pub(super) fn zone_hint(&self, destination: &NodeId) -> Option<NodeId> {
        self.routes
            .zone_of(destination)
            .or_else(|| self.zones.hints.get(destination).map(|(zone, _)| *zone))
    }

    /// What a packet tells about its source's zone.
    pub(super) fn learn_source_zone(&mut self, source: NodeId, source_zone: Option<NodeId>) {
        if let (Some(zone), true) = (source_zone, self.zoned()) {
            self.remember_zone(source, zone);
        }
    }

    fn remember_zone(&mut self, node: NodeId, zone: NodeId) {
        let victim = self.rng.random_range(0..usize::MAX);
        let hint = (zone, self.now);
        remember(&mut self.zones.hints, MAX_ZONE_HINTS, node, hint, victim);
    }

    /// A packet of ours for a destination outside our routes, whose zone we do not know: it
    /// waits for the directory's answer.
    pub(super) fn await_lookup(&mut self, data: Data) {
        let target = data.destination;
        let now = self.now;
        if !self.zones.lookups.contains_key(&target) && self.zones.lookups.len() >= MAX_LOOKUPS {
            self.stats.dropped_no_route += 1;
            return;
        }
        let lookup = self
            .zones
            .lookups
            .entry(target)
            .or_insert_with(|| PendingLookup {
                first_asked: now,
                last_asked: Instant::ZERO,
                waiting: Vec::new(),
            });
        if lookup.waiting.len() < MAX_WAITING_PER_LOOKUP {
            lookup.waiting.push(data);
        } else {
            self.stats.dropped_no_route += 1;
        }
        if lookup.last_asked != Instant::ZERO && now - lookup.last_asked < LOOKUP_RETRY {
            return;
        }
        lookup.last_asked = now;
        match self.directory_head(&target) {
            Some(head) if head == self.config.id => {
                let zone = self.zones.directory.get(&target).map(|(zone, _)| *zone);
                self.on_lookup_reply(target, zone);
            }
            Some(head) => self.originate(head, DataBody::Lookup { target }),
            None => {}
        }
    }

    /// Directory messages addressed to this node.
    pub(super) fn deliver_directory(&mut self, data: Data) {
        match data.body {
            DataBody::Register { zone } => self.record_registration(data.source, zone),
            DataBody::Lookup { target } => {
                let zone = self
                    .zones
                    .directory
                    .get(&target)
                    .map(|(zone, _)| *zone)
                    .or_else(|| self.routes.zone_of(&target));
                self.originate(data.source, DataBody::LookupReply { target, zone });
            }
            DataBody::LookupReply { target, zone } => self.on_lookup_reply(target, zone),
            DataBody::Ping { .. }
            | DataBody::Pong { .. }
            | DataBody::Payload(_)
            | DataBody::Sealed(_)
            | DataBody::Trace(_) => {}
        }
    }

    fn on_lookup_reply(&mut self, target: NodeId, zone: Option<NodeId>) {
        let Some(lookup) = self.zones.lookups.swap_remove(&target) else {
            return;
        };
        let Some(zone) = zone else {
            self.stats.dropped_no_route += lookup.waiting.len() as u64;
            return;
        };
        self.remember_zone(target, zone);
        for data in lookup.waiting {
            self.forward(Data {
                destination_zone: Some(zone),
                ..data
            });
        }
    }

    /// A fresh packet from this node, with the zones filled in where zoned routing needs them.
    pub(super) fn new_packet(&self, destination: NodeId, body: DataBody) -> Data {
        let zoned = self.zoned();
        Data {
            source: self.config.id,
            destination,
            ttl: INITIAL_TTL,
            hops: 0,
            source_zone: self.routes.own_zone().filter(|_| zoned),
            destination_zone: if zoned {
                self.zone_hint(&destination)
            } else {
                None
            },
            body,
        }
    }
}
