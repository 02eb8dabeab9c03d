//! The replicated multi-map key-value store: a service on [`ports::KV`](crate::service::ports::KV).
//!
//! A key holds a map of sub-keys to values. Each key lives on `R` replicas (see [`placement`]);
//! a write goes to all of them and is acknowledged once `W` have stored it; a read goes to the
//! nearest replica with a hedged request to the next. Every entry carries a version (a hybrid
//! logical clock of its writer, [`Kv::next_version`]) and the newer version wins everywhere; a
//! delete or an expiry leaves a tombstone for a while. Only the writer of a live entry may change
//! or delete it: the end-to-end session authenticates who sent a write.
//!
//! The same component is the client (its user's `set`, `get`, `del`, `watch`), the replica (what
//! other nodes ask of it) and the repairer (digests with the other replicas of each key it
//! holds, hand-off when it loses its place, leases for ephemeral entries). Its user calls take
//! `now`; answers come out of [`Kv::poll_event`].

mod client;
mod early;
pub mod placement;
mod replica;
pub mod store;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use blake2::{Blake2s256, Digest};

use crate::keyed;
use crate::limit::{HandshakeLimiter, Rate};
use crate::node::Node;
use crate::service::fragment::{self, Reassembler};
use crate::service::{Message, Service, ServiceTransmit, ports};
use crate::{Duration, Instant, NodeId};
use client::{PendingGet, PendingPut, Unstarted, WatchState};
use placement::View;
use store::Store;
pub use store::{Change, Limits, Stored};
pub use wire::State;
use wire::{KvMessage, PutStatus};

pub const MAX_KEY: usize = 255;
pub const MAX_SUB: usize = 255;
pub const MAX_VALUE: usize = 1_024;

/// How often the store looks at its view, expiries, leases and repair.
const TICK: Duration = Duration::from_millis(500);
/// Operations in flight at once from one node.
const MAX_OPERATIONS: usize = 1_024;
/// Watches one node holds, and watchers one replica serves.
const MAX_WATCHES: usize = 1_024;
const MAX_WATCHERS: usize = 10_000;
const MAX_WATCHERS_PER_NODE: usize = 256;
/// A suspected member stays out of the view this long.
const SUSPICION: Duration = Duration::from_secs(30);
/// Lapsed entries remembered per writer (the rest are found by the next lapse).
const MAX_LEASE_LOST: usize = 256;
/// Members besides its entries' replicas that a writer renews leases on.
const MAX_LEASE_HOLDERS: usize = 64;
/// Entries per part of a reply: parts stay well inside one fragmented message.
const PART_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct KvConfig {
    /// Replicas of each key.
    pub replicas: usize,
    /// Replicas that must store a write before it is acknowledged.
    pub write_quorum: usize,
    pub limits: Limits,
    /// Wall-clock milliseconds at `Instant::ZERO`: versions start from the wall clock, so a
    /// writer that restarted without its state still writes newer versions than before.
    pub clock_base_ms: u64,
    /// An operation not answered by then fails.
    pub operation_timeout: Duration,
    /// Writes one writer may make into one replica.
    pub writer_rate: Rate,
    /// Repair digests go to every co-replica at least this often.
    pub refresh_interval: Duration,
    /// Ephemeral writers renew their lease this often.
    pub lease_interval: Duration,
    /// Watchers renew their watch this often.
    pub watch_renew_interval: Duration,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            replicas: 3,
            write_quorum: 2,
            limits: Limits::default(),
            clock_base_ms: 0,
            operation_timeout: Duration::from_secs(3),
            writer_rate: Rate {
                per_second: 200.0,
                burst: 400.0,
            },
            refresh_interval: Duration::from_secs(30),
            lease_interval: Duration::from_millis(2_500),
            watch_renew_interval: Duration::from_secs(5),
        }
    }
}

/// Why an operation failed. The texts are what the CLI and API show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// A key, sub-key or value longer than its bound.
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Another node wrote the live entry.
    NotOwner,
    StoreFull,
    RateLimited,
    /// No replica answered, and none had a route.
    NoReplica,
    TimedOut,
    /// Too many operations or watches in flight.
    Busy,
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { what, len, max } => {
                write!(f, "too large: a {what} of {len} bytes exceeds {max}")
            }
            Self::NotOwner => write!(f, "not the owner: another node wrote this entry"),
            Self::StoreFull => write!(f, "store full: a replica refused the entry"),
            Self::RateLimited => write!(f, "rate limited: too many writes from this node"),
            Self::NoReplica => write!(f, "no replica reachable"),
            Self::TimedOut => write!(f, "timed out"),
            Self::Busy => write!(f, "too many operations in flight"),
        }
    }
}

impl std::error::Error for KvError {}

/// Names a `set`, `del` or `get` in its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Names a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchId(pub u64);

/// A live entry as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sub: Vec<u8>,
    pub value: Vec<u8>,
    pub writer: NodeId,
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Set,
    Del,
    Expire,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Del => "del",
            Self::Expire => "expire",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// A `set` or `del` finished: the version written, or why not.
    Written {
        op: OpId,
        result: Result<u64, KvError>,
    },
    /// A `get` finished with the live entries it found.
    Read {
        op: OpId,
        result: Result<Vec<Entry>, KvError>,
    },
    /// A watched key changed (`value` is empty for `del` and `expire`).
    Watched {
        watch: WatchId,
        key: Vec<u8>,
        kind: EventKind,
        entry: Entry,
    },
}

/// Counters of one node's store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub reads_ok: u64,
    pub reads_failed: u64,
    /// Reads that asked a second replica because the first was slow.
    pub hedged: u64,
    pub read_repairs: u64,
    pub refused_not_owner: u64,
    pub refused_full: u64,
    pub refused_rate: u64,
    /// Writes that claimed a writer other than their authenticated sender.
    pub forged: u64,
    pub malformed: u64,
    pub digests_sent: u64,
    pub pushes_sent: u64,
    pub handoffs: u64,
    pub suspicions: u64,
    pub events_sent: u64,
    /// Service datagrams and their bytes (before end-to-end sealing).
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
}

/// A key and one of its sub-keys.
type EntryName = (Vec<u8>, Vec<u8>);

/// The hash of a key: where it sits among the node ids.
pub fn key_hash(key: &[u8]) -> u64 {
    let hash = Blake2s256::digest(key);
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// A node's own entry, which it keeps placed on the key's replicas (and whose lease it renews
/// when it is ephemeral).
#[derive(Debug, Clone)]
struct Own {
    entry: wire::WireEntry,
    /// When a lifetime runs out (the entry is forgotten then).
    expires: Option<Instant>,
    placed_on: Vec<NodeId>,
}

pub struct Kv {
    id: NodeId,
    config: KvConfig,
    store: Store,
    clock: u64,
    view: View,
    /// The overlay's route count when the view was built: a change rebuilds it at once.
    view_routes: usize,
    suspects: BTreeMap<NodeId, Instant>,
    next_request: u64,
    next_message: u32,
    puts: BTreeMap<u64, PendingPut>,
    gets: BTreeMap<u64, PendingGet>,
    watches: BTreeMap<u64, WatchState>,
    /// Replica side: who watches which key.
    watchers: BTreeMap<Vec<u8>, Vec<replica::Watcher>>,
    watcher_count: usize,
    own: BTreeMap<(Vec<u8>, Vec<u8>), Own>,
    /// Replica side: each held key's replicas when last placed.
    placed: BTreeMap<Vec<u8>, Vec<NodeId>>,
    /// Keys this node no longer holds a place for, and when it lets them go.
    handoff: BTreeMap<Vec<u8>, Instant>,
    /// Co-replicas owed a digest, and since when.
    dirty: BTreeMap<NodeId, Instant>,
    /// Co-replicas whose digest acknowledgement is awaited: the deadline, and whether missing
    /// it makes them suspects at once (a reader's hint) or only the second time.
    awaiting_ack: BTreeMap<NodeId, (Instant, bool)>,
    missed_acks: BTreeMap<NodeId, u8>,
    next_tick: Instant,
    next_refresh: Instant,
    next_lease: Instant,
    write_limiter: HandshakeLimiter,
    request_limiter: HandshakeLimiter,
    reassembler: Reassembler,
    /// Ephemeral entries expired here for a lapsed lease, by writer: a writer that turns out
    /// to be alive is told, and writes them again.
    lease_lost: BTreeMap<NodeId, Vec<EntryName>>,
    /// Writer side: members that said they hold copies of this node's ephemeral entries
    /// (their lease lapsed there: often a member the writer did not place them on, whose view
    /// of the key's replicas differs): their leases are renewed too.
    lease_holders: BTreeSet<NodeId>,
    /// Requests answered in a handshake's first flight, and the reads waiting for their
    /// writes.
    early: early::EarlyRequests,
    /// User calls waiting for the next timeout to start, and the latest time a call gave.
    unstarted: Vec<Unstarted>,
    last_now: Instant,
    /// Messages to this node itself, handled without the network.
    loopback: VecDeque<KvMessage>,
    outgoing: VecDeque<ServiceTransmit>,
    /// Events for the user, with when they happened.
    events: VecDeque<(Instant, KvEvent)>,
    persist: Option<Vec<Change>>,
    stats: KvStats,
}

impl Kv {
    pub fn new(id: NodeId, config: KvConfig, rng_seed: u64, now: Instant) -> Self {
        let hash_key = keyed::hash_key(rng_seed ^ 0x6b76);
        let request_rate = Rate {
            per_second: 1_000.0,
            burst: 2_000.0,
        };
        let overall = |rate: Rate| Rate {
            per_second: rate.per_second * 20.0,
            burst: rate.burst * 20.0,
        };
        Self {
            id,
            store: Store::new(config.limits),
            clock: 0,
            view: View::from_members(vec![placement::Member { id, rtt_ms: 0.0 }]),
            view_routes: 0,
            suspects: BTreeMap::new(),
            next_request: 1,
            next_message: 0,
            puts: BTreeMap::new(),
            gets: BTreeMap::new(),
            watches: BTreeMap::new(),
            watchers: BTreeMap::new(),
            watcher_count: 0,
            own: BTreeMap::new(),
            placed: BTreeMap::new(),
            handoff: BTreeMap::new(),
            dirty: BTreeMap::new(),
            awaiting_ack: BTreeMap::new(),
            missed_acks: BTreeMap::new(),
            next_tick: now,
            next_refresh: now + config.refresh_interval,
            next_lease: now,
            write_limiter: HandshakeLimiter::new(
                config.writer_rate,
                overall(config.writer_rate),
                hash_key,
                now,
            ),
            request_limiter: HandshakeLimiter::new(
                request_rate,
                overall(request_rate),
                hash_key,
                now,
            ),
            reassembler: Reassembler::default(),
            early: early::EarlyRequests::default(),
            unstarted: Vec::new(),
            last_now: now,
            lease_lost: BTreeMap::new(),
            lease_holders: BTreeSet::new(),
            loopback: VecDeque::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            persist: None,
            stats: KvStats::default(),
            config,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    pub fn stats(&self) -> &KvStats {
        &self.stats
    }

    /// What this node stores as a replica.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replicas of `key` in this node's view, closest first by XOR distance.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<NodeId> {
        self.view
            .closest(key_hash(key), self.config.replicas)
            .iter()
            .map(|m| m.id)
            .collect()
    }

    /// Members this node can reach, with their expected round trips.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The next event for this store's user, with when it happened.
    pub fn poll_event(&mut self) -> Option<(Instant, KvEvent)> {
        self.events.pop_front()
    }

    /// Records every change to the store from now on, for [`Kv::poll_persist`].
    pub fn enable_persistence(&mut self) {
        self.persist.get_or_insert_with(Vec::new);
    }

    /// The changes to store on disk since the last call.
    pub fn poll_persist(&mut self) -> Vec<Change> {
        self.persist
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Loads entries kept from an earlier run (before the node has any traffic). Repair then
    /// brings them up to date with the other replicas.
    pub fn restore(
        &mut self,
        now: Instant,
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, Stored)>,
    ) {
        for (key, sub, stored) in entries {
            self.clock = self.clock.max(stored.version);
            self.store.merge(&key, &sub, stored, now);
        }
        self.store.take_changes();
    }

    /// A version newer than any this node has written or seen: wall-clock milliseconds in the
    /// high bits, a counter in the low 16.
    fn next_version(&mut self, now: Instant) -> u64 {
        let wall_ms = self.config.clock_base_ms + (now.as_micros().max(0) as u64) / 1_000;
        self.clock = (self.clock + 1).max(wall_ms << 16);
        self.clock
    }

    fn observe_version(&mut self, version: u64) {
        self.clock = self.clock.max(version);
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Sends `message` to `to` (to this node itself through the loopback queue).
    fn send(&mut self, to: NodeId, message: KvMessage) {
        self.send_with(to, message, false);
    }

    /// Sends a read or write request, or the answer to an early one, in the first flight of
    /// a handshake where there is no session yet (a message of one datagram only): a first
    /// contact costs one round trip, not two. Reads are public to members anyway, and a write
    /// is stored only once the handshake proves its writer.
    fn send_early(&mut self, to: NodeId, message: KvMessage) {
        self.send_with(to, message, true);
    }

    fn send_with(&mut self, to: NodeId, message: KvMessage, early: bool) {
        if to == self.id {
            self.loopback.push_back(message);
            return;
        }
        let bytes = message.encode();
        self.next_message = self.next_message.wrapping_add(1);
        let Some(datagrams) = fragment::split(self.next_message, &bytes) else {
            // Every message is built within the bound; one that is not is a bug, not input.
            debug_assert!(false, "a kv message of {} bytes", bytes.len());
            return;
        };
        let early = early && datagrams.len() == 1;
        for data in datagrams {
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += data.len() as u64;
            self.outgoing.push_back(ServiceTransmit {
                to,
                port: ports::KV,
                data,
                early,
            });
        }
    }

    /// Handles what this node sent itself.
    fn drain_loopback(&mut self, now: Instant) {
        while let Some(message) = self.loopback.pop_front() {
            self.dispatch(now, self.id, message);
        }
    }

    fn dispatch(&mut self, now: Instant, from: NodeId, message: KvMessage) {
        match message {
            KvMessage::Put { req, key, entry } => self.on_put(now, from, req, key, entry, false),
            KvMessage::PutReply {
                req,
                status,
                current,
            } => self.on_put_reply(now, from, req, status, current),
            KvMessage::Get { req, key, sub } => {
                if self.early.take(from, req).is_none() {
                    self.on_get(now, from, req, &key, sub, false);
                }
            }
            KvMessage::GetReply {
                req,
                part,
                parts,
                entries,
            } => self.on_get_reply(now, from, req, part, parts, entries),
            KvMessage::Watch { watch, key, digest } => {
                self.on_watch(now, from, watch, key, digest);
            }
            KvMessage::WatchSync {
                watch,
                part,
                parts,
                entries,
            } => self.on_watch_sync(now, from, watch, part, parts, entries),
            KvMessage::WatchAlive { watch } => self.on_watch_alive(from, watch),
            KvMessage::Event { watch, entry } => self.on_event(now, from, watch, entry),
            KvMessage::Unwatch { watch } => self.on_unwatch(from, watch),
            KvMessage::Digest { keys } => self.on_digest(now, from, &keys),
            KvMessage::DigestAck => self.on_digest_ack(from),
            KvMessage::Pull { keys } => self.on_pull(now, from, &keys),
            KvMessage::Push { key, entries } => self.on_push(now, &key, entries),
            KvMessage::Lease => self.on_lease(now, from),
            KvMessage::LeaseLost { entries } => self.on_lease_lost(now, from, entries),
            KvMessage::Suspect { node } => self.on_suspect_hint(now, node),
        }
    }

    /// Marks `node` as dead for a while: it leaves the view at the next tick.
    fn suspect(&mut self, node: NodeId, now: Instant) {
        if node != self.id {
            self.stats.suspicions += 1;
            self.suspects.insert(node, now + SUSPICION);
        }
    }

    fn refresh_view(&mut self, now: Instant, overlay: &Node) {
        self.suspects.retain(|_, until| *until > now);
        self.view_routes = overlay.route_count();
        let view = View::of(overlay, &self.suspects, now);
        let changed = view.fingerprint() != self.view.fingerprint();
        self.view = view;
        if changed {
            self.replace_replicas(now);
            self.place_own(now);
        }
    }

    /// After every input and user call: reads that waited for a write are answered, and the
    /// store's changes go to watchers and to disk.
    fn after_changes(&mut self, now: Instant) {
        self.drain_loopback(now);
        for read in self.early.ready(now) {
            self.answer_get(now, read.from, read.req, &read.key, read.sub, read.early);
        }
        let changes = self.store.take_changes();
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            // A key new here is placed at once, so that its leases are judged.
            if change.stored.is_some() && !self.placed.contains_key(&change.key) {
                let replicas = self.replicas_of(&change.key);
                self.placed.insert(change.key.clone(), replicas);
            }
        }
        for change in &changes {
            if let Some(stored) = &change.stored {
                self.notify_watchers(now, &change.key, &change.sub, stored);
            }
        }
        if let Some(persist) = &mut self.persist {
            persist.extend(changes);
        }
        self.drain_loopback(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        if !self.unstarted.is_empty() {
            return Some(self.last_now);
        }
        if self.is_idle() {
            return None;
        }
        let puts = self.puts.values().map(PendingPut::deadline);
        let gets = self.gets.values().map(PendingGet::deadline);
        Some(puts.chain(gets).fold(self.next_tick, Instant::min))
    }

    /// Nothing stored, written, watched or under way: the store needs no timer (an idle store
    /// costs its node no wake-ups and sends nothing).
    fn is_idle(&self) -> bool {
        self.store.entries() == 0
            && self.own.is_empty()
            && self.puts.is_empty()
            && self.gets.is_empty()
            && self.watches.is_empty()
            && self.watcher_count == 0
            && self.handoff.is_empty()
            && self.dirty.is_empty()
            && self.awaiting_ack.is_empty()
            && self.lease_lost.is_empty()
    }
}

impl Service for Kv {
    fn handle_message(&mut self, now: Instant, message: Message<'_>, overlay: &Node) {
        if overlay.route_count() != self.view_routes {
            self.refresh_view(now, overlay);
        }
        let Some(bytes) = self.reassembler.accept(now, message.from, message.data) else {
            return;
        };
        match KvMessage::decode(&bytes) {
            Ok(decoded) => {
                if !self.request_limiter.allow(message.from, now) {
                    self.stats.refused_rate += 1;
                    return;
                }
                self.observe_versions(&decoded);
                self.dispatch(now, message.from, decoded);
            }
            Err(_) => self.stats.malformed += 1,
        }
        self.after_changes(now);
    }

    /// Reads and writes that rode a handshake's init: a read is answered at once; a write is
    /// checked and its expected outcome answered, and it is stored when it arrives again from
    /// its proven writer.
    fn handle_early(&mut self, now: Instant, message: Message<'_>, _overlay: &Node) {
        let Some(bytes) = fragment::single(message.data) else {
            return;
        };
        if self.early.is_full() {
            return;
        }
        let from = message.from;
        match KvMessage::decode(bytes) {
            Ok(KvMessage::Get { req, key, sub }) if self.request_limiter.allow(from, now) => {
                self.early.answered(from, req, now, PutStatus::Stored, None);
                self.on_get(now, from, req, &key, sub, true);
            }
            Ok(KvMessage::Put { req, key, entry }) if req != 0 => {
                self.on_put(now, from, req, key, entry, true);
            }
            Ok(_) => {}
            Err(_) => self.stats.malformed += 1,
        }
        self.after_changes(now);
    }

    fn handle_timeout(&mut self, now: Instant, overlay: &Node) {
        if !self.unstarted.is_empty() || overlay.route_count() != self.view_routes {
            self.refresh_view(now, overlay);
        }
        self.start_operations(now);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.refresh_view(now, overlay);
            let (placed, id) = (&self.placed, self.id);
            let lapsed = self
                .store
                .expire(now, |key| placed.get(key).is_some_and(|r| r.contains(&id)));
            self.forget_rewritten_lapses();
            self.report_lapsed(lapsed);
            self.expire_own(now);
            self.expire_watchers(now);
            self.early.expire(now);
            self.repair_tick(now);
            self.renew_leases(now);
            self.renew_watches(now);
        }
        self.time_operations(now);
        self.after_changes(now);
    }

    fn poll_transmit(&mut self) -> Option<ServiceTransmit> {
        self.outgoing.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_deadline()
    }
}

impl Kv {
    fn observe_versions(&mut self, message: &KvMessage) {
        let seen = match message {
            KvMessage::Put { entry, .. } | KvMessage::Event { entry, .. } => entry.version,
            KvMessage::PutReply { current, .. } => *current,
            KvMessage::GetReply { entries, .. }
            | KvMessage::WatchSync { entries, .. }
            | KvMessage::Push { entries, .. } => {
                entries.iter().map(|e| e.version).max().unwrap_or(0)
            }
            _ => 0,
        };
        self.observe_version(seen);
    }
}

/// Splits entries into parts of a bounded size (at least one part, maybe empty).
fn into_parts(entries: Vec<wire::WireEntry>) -> Vec<Vec<wire::WireEntry>> {
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for entry in entries {
        let len = wire::entry_len(&entry);
        if size + len > PART_BYTES && !parts.last().expect("one part").is_empty() {
            parts.push(Vec::new());
            size = 0;
        }
        size += len;
        parts.last_mut().expect("one part").push(entry);
    }
    parts
}

fn check_len(what: &'static str, bytes: &[u8], max: usize) -> Result<(), KvError> {
    if bytes.len() > max {
        return Err(KvError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// The newest entry of each sub-key among `entries` (by version, writer, then tombstone over
/// live).
fn newest_by_sub<'a>(
    entries: impl IntoIterator<Item = &'a wire::WireEntry>,
) -> BTreeMap<Vec<u8>, &'a wire::WireEntry> {
    let mut newest: BTreeMap<Vec<u8>, &wire::WireEntry> = BTreeMap::new();
    for entry in entries {
        let key = |e: &wire::WireEntry| (e.version, e.writer, e.state.rank());
        match newest.get(&entry.sub) {
            Some(existing) if key(existing) >= key(entry) => {}
            _ => {
                newest.insert(entry.sub.clone(), entry);
            }
        }
    }
    newest
}
