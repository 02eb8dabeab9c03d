//! The client half of the store: this node's own `set`, `del`, `get` and `watch`, their
//! retries and hedges, and the placement and leases of the entries it wrote.

use std::collections::{BTreeMap, BTreeSet};

use super::placement::Member;
use super::store::{Stored, digest_of};
use super::wire::{KvMessage, PutStatus, State, WireEntry};
use super::{
    Entry, EventKind, KvError, KvEvent, MAX_KEY, MAX_LEASE_HOLDERS, MAX_OPERATIONS, MAX_SUB,
    MAX_VALUE, MAX_WATCHES, OpId, WatchId, check_len, key_hash, newest_by_sub,
};
use crate::{Duration, Instant, NodeId};

/// A write is sent again to replicas that have not acknowledged it after this long (plus the
/// expected round trip).
const WRITE_RETRY: Duration = Duration::from_millis(300);
/// Replicas still silent this long after a write began are suspected, and the write goes to
/// the replicas that replace them.
const WRITE_REPLACE_AFTER: Duration = Duration::from_millis(1_200);
/// A read asks the next replica when the one it asked has not answered within its expected
/// round trip times this factor, plus the margin.
const HEDGE_FACTOR: f64 = 1.5;
const HEDGE_MARGIN: Duration = Duration::from_millis(20);
/// How long a finished read waits for a hedged answer, to repair a replica that is behind.
const READ_REPAIR_WINDOW: Duration = Duration::from_millis(500);
/// A watch whose replica has not answered its renewal within this (plus the round trip)
/// moves to another replica.
const WATCH_ANSWER_TIMEOUT: Duration = Duration::from_millis(1_000);
/// A first answer without the entry waits this long at most for a second replica to confirm it.
const MISS_CONFIRM_WINDOW: Duration = Duration::from_millis(500);
/// Stale-version retries of one write.
const MAX_STALE_RETRIES: u8 = 3;

/// A user call not yet started (see [`super::Kv::start_operations`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Unstarted {
    Put(u64),
    Get(u64),
    Watch(u64),
}

pub(super) struct PendingPut {
    op: OpId,
    key: Vec<u8>,
    entry: WireEntry,
    targets: Vec<Member>,
    acked: BTreeSet<NodeId>,
    /// Set once the user has been answered; the write keeps going to the other replicas.
    answered: bool,
    started: Instant,
    replaced: bool,
    retry_at: Instant,
    give_up_at: Instant,
    stale_retries: u8,
}

impl PendingPut {
    pub(super) fn deadline(&self) -> Instant {
        self.retry_at.min(self.give_up_at)
    }
}

pub(super) struct PendingGet {
    op: OpId,
    key: Vec<u8>,
    sub: Option<Vec<u8>>,
    /// Replicas in the order they are asked.
    targets: Vec<Member>,
    asked: usize,
    /// Parts received from each replica.
    parts: BTreeMap<NodeId, Vec<Option<Vec<WireEntry>>>>,
    /// The first complete answer (the user has it), kept for read repair.
    answer: Option<(NodeId, Vec<WireEntry>)>,
    /// A first complete answer without a live entry, held until a second replica confirms
    /// it: with writes acknowledged by two replicas of three, one replica may not have a
    /// write yet (it missed it, or it came back empty and repair has not reached it), and a
    /// miss answered from it alone would say that an existing entry does not exist.
    miss: Option<(NodeId, Vec<WireEntry>)>,
    next_hedge: Instant,
    give_up_at: Instant,
}

impl PendingGet {
    pub(super) fn deadline(&self) -> Instant {
        self.next_hedge.min(self.give_up_at)
    }
}

pub(super) struct WatchState {
    key: Vec<u8>,
    /// Everything this watch knows of the key, tombstones included.
    view: BTreeMap<Vec<u8>, Stored>,
    attached: Option<NodeId>,
    /// Replicas that failed this watch lately, tried last.
    failed: BTreeSet<NodeId>,
    /// An answer to the last attach or renewal is awaited until then.
    awaiting: Option<Instant>,
    sync_parts: Vec<Option<Vec<WireEntry>>>,
    renew_at: Instant,
}

fn entry_of(entry: &WireEntry) -> Entry {
    Entry {
        sub: entry.sub.clone(),
        value: match &entry.state {
            State::Live(value) => value.clone(),
            _ => Vec::new(),
        },
        writer: entry.writer,
        version: entry.version,
    }
}

fn hedge_delay(member: &Member) -> Duration {
    Duration::from_micros((member.rtt_ms * HEDGE_FACTOR * 1_000.0) as i64) + HEDGE_MARGIN
}

impl super::Kv {
    /// Sets `sub` of `key` to `value`, for `ttl` if given; an ephemeral entry lives only as
    /// long as this node does. The answer comes as [`KvEvent::Written`].
    pub fn set(
        &mut self,
        now: Instant,
        key: &[u8],
        sub: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        ephemeral: bool,
    ) -> Result<OpId, KvError> {
        check_len("value", value, MAX_VALUE)?;
        self.write(now, key, sub, State::Live(value.to_vec()), ttl, ephemeral)
    }

    /// Deletes `sub` of `key` (only its writer may).
    pub fn del(&mut self, now: Instant, key: &[u8], sub: &[u8]) -> Result<OpId, KvError> {
        self.write(now, key, sub, State::Deleted, None, false)
    }

    fn write(
        &mut self,
        now: Instant,
        key: &[u8],
        sub: &[u8],
        state: State,
        ttl: Option<Duration>,
        ephemeral: bool,
    ) -> Result<OpId, KvError> {
        check_len("key", key, MAX_KEY)?;
        if key.is_empty() {
            return Err(KvError::TooLarge {
                what: "key (empty)",
                len: 0,
                max: MAX_KEY,
            });
        }
        check_len("sub-key", sub, MAX_SUB)?;
        if self.puts.len() >= MAX_OPERATIONS {
            return Err(KvError::Busy);
        }
        let entry = WireEntry {
            sub: sub.to_vec(),
            writer: self.id,
            version: self.next_version(now),
            state,
            ephemeral,
            ttl,
        };
        let req = self.request_id();
        let put = PendingPut {
            op: OpId(req),
            key: key.to_vec(),
            entry,
            // Placed when it starts, on a view of that moment (see `start_operations`).
            targets: Vec::new(),
            acked: BTreeSet::new(),
            answered: false,
            started: now,
            replaced: false,
            retry_at: now,
            give_up_at: now + self.config.operation_timeout,
            stale_retries: 0,
        };
        self.puts.insert(req, put);
        self.unstarted.push(Unstarted::Put(req));
        self.last_now = now;
        Ok(OpId(req))
    }

    /// Starts the operations of the user's calls since the last timeout, on `self.view`, which
    /// the caller has just rebuilt: a store that is idle does not wake its node to keep a
    /// view, so a call waits for the next timeout (at once) to place its key.
    pub(super) fn start_operations(&mut self, now: Instant) {
        for unstarted in std::mem::take(&mut self.unstarted) {
            match unstarted {
                Unstarted::Put(req) => {
                    let Some(put) = self.puts.get_mut(&req) else {
                        continue;
                    };
                    put.targets = self.view.closest(key_hash(&put.key), self.config.replicas);
                    self.send_put(now, req);
                }
                Unstarted::Get(req) => {
                    let Some(get) = self.gets.get_mut(&req) else {
                        continue;
                    };
                    get.targets = self.view.by_rtt(key_hash(&get.key), self.config.replicas);
                    self.ask_next(now, req);
                }
                Unstarted::Watch(id) => {
                    if self.watches.contains_key(&id) {
                        self.attach(now, id);
                    }
                }
            }
        }
    }

    /// Sends the write to every replica that has not acknowledged it.
    fn send_put(&mut self, now: Instant, req: u64) {
        let Some(put) = self.puts.get_mut(&req) else {
            return;
        };
        let slowest = put.targets.iter().map(|m| m.rtt_ms).fold(0.0, f64::max);
        put.retry_at = now + WRITE_RETRY + Duration::from_micros((slowest * 1_000.0) as i64);
        let message = KvMessage::Put {
            req,
            key: put.key.clone(),
            entry: put.entry.clone(),
        };
        let unacked: Vec<NodeId> = put
            .targets
            .iter()
            .map(|m| m.id)
            .filter(|id| !put.acked.contains(id))
            .collect();
        for to in unacked {
            self.send_early(to, message.clone());
        }
    }

    pub(super) fn on_put_reply(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        status: PutStatus,
        current: u64,
    ) {
        let Some(put) = self.puts.get_mut(&req) else {
            return;
        };
        if !put.targets.iter().any(|m| m.id == from) {
            return;
        }
        let error = match status {
            PutStatus::Stored => {
                put.acked.insert(from);
                let quorum = self.config.write_quorum.min(put.targets.len()).max(1);
                if !put.answered && put.acked.len() >= quorum {
                    put.answered = true;
                    let (op, version) = (put.op, put.entry.version);
                    self.remember_own(now, req);
                    self.stats.writes_ok += 1;
                    self.emit(
                        now,
                        KvEvent::Written {
                            op,
                            result: Ok(version),
                        },
                    );
                }
                let put = self.puts.get(&req).expect("present");
                if put.acked.len() == put.targets.len() {
                    self.puts.remove(&req);
                }
                return;
            }
            PutStatus::Stale if put.stale_retries < MAX_STALE_RETRIES && !put.answered => {
                // Another writer's tombstone, or this writer's own earlier life, is newer.
                put.stale_retries += 1;
                self.observe_version(current);
                let version = self.next_version(now);
                let put = self.puts.get_mut(&req).expect("present");
                put.entry.version = version;
                put.acked.clear();
                self.send_put(now, req);
                return;
            }
            PutStatus::Stale => return,
            PutStatus::NotOwner => KvError::NotOwner,
            PutStatus::StoreFull => KvError::StoreFull,
            PutStatus::RateLimited => KvError::RateLimited,
        };
        let put = self.puts.remove(&req).expect("present");
        if !put.answered {
            self.stats.writes_failed += 1;
            self.emit(
                now,
                KvEvent::Written {
                    op: put.op,
                    result: Err(error),
                },
            );
        }
    }

    /// A write was acknowledged: this node now keeps its entry placed (or forgets a deleted one).
    fn remember_own(&mut self, now: Instant, req: u64) {
        let put = &self.puts[&req];
        let id = (put.key.clone(), put.entry.sub.clone());
        if let State::Live(_) = put.entry.state {
            let own = super::Own {
                entry: put.entry.clone(),
                expires: put.entry.ttl.map(|ttl| now + ttl),
                placed_on: put.targets.iter().map(|m| m.id).collect(),
            };
            self.own.insert(id, own);
        } else {
            self.own.remove(&id);
        }
    }

    /// Reads `key` (or only `sub` of it). The answer comes as [`KvEvent::Read`].
    pub fn get(&mut self, now: Instant, key: &[u8], sub: Option<&[u8]>) -> Result<OpId, KvError> {
        check_len("key", key, MAX_KEY)?;
        if let Some(sub) = sub {
            check_len("sub-key", sub, MAX_SUB)?;
        }
        if self.gets.len() >= MAX_OPERATIONS {
            return Err(KvError::Busy);
        }
        let req = self.request_id();
        self.gets.insert(
            req,
            PendingGet {
                op: OpId(req),
                key: key.to_vec(),
                sub: sub.map(<[u8]>::to_vec),
                targets: Vec::new(),
                asked: 0,
                parts: BTreeMap::new(),
                answer: None,
                miss: None,
                next_hedge: now,
                give_up_at: now + self.config.operation_timeout,
            },
        );
        self.unstarted.push(Unstarted::Get(req));
        self.last_now = now;
        Ok(OpId(req))
    }

    /// Asks the next replica of a read, and sets when to hedge after it.
    fn ask_next(&mut self, now: Instant, req: u64) {
        let Some(get) = self.gets.get_mut(&req) else {
            return;
        };
        let Some(target) = get.targets.get(get.asked).copied() else {
            get.next_hedge = Instant::MAX;
            return;
        };
        get.asked += 1;
        get.next_hedge = now + hedge_delay(&target);
        if get.asked > 1 {
            self.stats.hedged += 1;
        }
        let message = KvMessage::Get {
            req,
            key: get.key.clone(),
            sub: get.sub.clone(),
        };
        self.send_early(target.id, message);
    }

    pub(super) fn on_get_reply(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        part: u8,
        parts: u8,
        entries: Vec<WireEntry>,
    ) {
        let Some(get) = self.gets.get_mut(&req) else {
            return;
        };
        if !get.targets[..get.asked].iter().any(|m| m.id == from) || parts == 0 || part >= parts {
            return;
        }
        let received = get
            .parts
            .entry(from)
            .or_insert_with(|| vec![None; usize::from(parts)]);
        if received.len() != usize::from(parts) {
            return;
        }
        received[usize::from(part)] = Some(entries);
        if received.iter().any(Option::is_none) {
            return;
        }
        let entries: Vec<WireEntry> = get
            .parts
            .remove(&from)
            .expect("present")
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        // An answer after the user has one only repairs.
        if let Some(first) = get.answer.take() {
            let key = self.gets.remove(&req).expect("present").key;
            self.repair_between(&key, first, (from, entries));
            return;
        }
        let held = get.miss.take();
        let live: Vec<Entry> =
            newest_by_sub(entries.iter().chain(held.iter().flat_map(|(_, held)| held)))
                .into_values()
                .filter(|e| matches!(e.state, State::Live(_)))
                .map(entry_of)
                .collect();
        if live.is_empty() && held.is_none() && get.targets.len() > 1 {
            get.miss = Some((from, entries));
            get.give_up_at = get.give_up_at.min(now + MISS_CONFIRM_WINDOW);
            self.ask_next(now, req);
            return;
        }
        let op = get.op;
        let confirmed_miss_from = held.as_ref().map(|(first, _)| *first);
        // Replicas asked before these and silent: suspects, and a hint to this one.
        let silent: Vec<NodeId> = get.targets[..get.asked]
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != from && Some(*id) != confirmed_miss_from)
            .collect();
        let repair = match held {
            // Kept for read repair with a later answer.
            None => {
                get.answer = Some((from, entries));
                get.next_hedge = Instant::MAX;
                get.give_up_at = now + READ_REPAIR_WINDOW;
                None
            }
            // Two answers are in: repair between them now.
            Some(first) => {
                let key = self.gets.remove(&req).expect("present").key;
                Some((key, first, (from, entries)))
            }
        };
        self.stats.reads_ok += 1;
        self.emit(
            now,
            KvEvent::Read {
                op,
                result: Ok(live),
            },
        );
        for node in silent {
            self.send(from, KvMessage::Suspect { node });
        }
        if let Some((key, first, second)) = repair {
            self.repair_between(&key, first, second);
        }
    }

    /// Read repair: each of two replicas' answers for `key` gets what it lacks of the other's.
    fn repair_between(
        &mut self,
        key: &[u8],
        (first, first_entries): (NodeId, Vec<WireEntry>),
        (second, second_entries): (NodeId, Vec<WireEntry>),
    ) {
        let ours = newest_by_sub(&first_entries);
        let theirs = newest_by_sub(&second_entries);
        let behind = |a: &BTreeMap<Vec<u8>, &WireEntry>, b: &BTreeMap<Vec<u8>, &WireEntry>| {
            b.values()
                .filter(|e| {
                    a.get(&e.sub).is_none_or(|mine| {
                        (mine.version, mine.writer, mine.state.rank())
                            < (e.version, e.writer, e.state.rank())
                    })
                })
                .map(|e| (*e).clone())
                .collect::<Vec<_>>()
        };
        let to_first = behind(&ours, &theirs);
        let to_second = behind(&theirs, &ours);
        for (to, entries) in [(first, to_first), (second, to_second)] {
            if !entries.is_empty() {
                self.stats.read_repairs += 1;
                self.send(
                    to,
                    KvMessage::Push {
                        key: key.to_vec(),
                        entries,
                    },
                );
            }
        }
    }

    /// Watches `key`: every set, del and expire comes as [`KvEvent::Watched`], starting with
    /// the entries the key holds now.
    pub fn watch(&mut self, now: Instant, key: &[u8]) -> Result<WatchId, KvError> {
        check_len("key", key, MAX_KEY)?;
        if self.watches.len() >= MAX_WATCHES {
            return Err(KvError::Busy);
        }
        let id = self.request_id();
        self.watches.insert(
            id,
            WatchState {
                key: key.to_vec(),
                view: BTreeMap::new(),
                attached: None,
                failed: BTreeSet::new(),
                awaiting: None,
                sync_parts: Vec::new(),
                renew_at: now,
            },
        );
        self.unstarted.push(Unstarted::Watch(id));
        self.last_now = now;
        Ok(WatchId(id))
    }

    pub fn unwatch(&mut self, now: Instant, watch: WatchId) {
        if let Some(state) = self.watches.remove(&watch.0)
            && let Some(replica) = state.attached
        {
            self.send(replica, KvMessage::Unwatch { watch: watch.0 });
        }
        self.after_changes(now);
    }

    /// Attaches a watch to the nearest replica that has not failed it (or renews it there).
    fn attach(&mut self, now: Instant, id: u64) {
        let replicas = self
            .view
            .by_rtt(key_hash(&self.watches[&id].key), self.config.replicas);
        let state = self.watches.get_mut(&id).expect("present");
        let keep = state
            .attached
            .filter(|a| replicas.iter().any(|m| m.id == *a) && !state.failed.contains(a));
        let Some(target) = keep
            .and_then(|a| replicas.iter().find(|m| m.id == a))
            .or_else(|| replicas.iter().find(|m| !state.failed.contains(&m.id)))
            .or_else(|| replicas.first())
            .copied()
        else {
            return;
        };
        if state.attached != Some(target.id)
            && let Some(old) = state.attached
        {
            self.outgoing_unwatch(id, old);
        }
        let state = self.watches.get_mut(&id).expect("present");
        state.attached = Some(target.id);
        state.sync_parts.clear();
        state.awaiting = Some(now + WATCH_ANSWER_TIMEOUT + hedge_delay(&target));
        state.renew_at = now + self.config.watch_renew_interval;
        let message = KvMessage::Watch {
            watch: id,
            key: state.key.clone(),
            digest: digest_of(state.view.iter()),
        };
        self.send(target.id, message);
    }

    fn outgoing_unwatch(&mut self, id: u64, replica: NodeId) {
        self.send(replica, KvMessage::Unwatch { watch: id });
    }

    pub(super) fn on_watch_sync(
        &mut self,
        now: Instant,
        from: NodeId,
        watch: u64,
        part: u8,
        parts: u8,
        entries: Vec<WireEntry>,
    ) {
        let Some(state) = self.watches.get_mut(&watch) else {
            return;
        };
        if state.attached != Some(from) || parts == 0 || part >= parts {
            return;
        }
        if state.sync_parts.len() != usize::from(parts) {
            state.sync_parts = vec![None; usize::from(parts)];
        }
        state.sync_parts[usize::from(part)] = Some(entries);
        if state.sync_parts.iter().any(Option::is_none) {
            return;
        }
        let entries: Vec<WireEntry> = std::mem::take(&mut state.sync_parts)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        state.awaiting = None;
        state.failed.clear();
        for entry in entries {
            self.apply_watched(now, watch, entry);
        }
    }

    pub(super) fn on_watch_alive(&mut self, from: NodeId, watch: u64) {
        if let Some(state) = self.watches.get_mut(&watch)
            && state.attached == Some(from)
        {
            state.awaiting = None;
            state.failed.clear();
        }
    }

    pub(super) fn on_event(&mut self, now: Instant, from: NodeId, watch: u64, entry: WireEntry) {
        let attached = self.watches.get(&watch).and_then(|s| s.attached);
        if attached == Some(from) {
            self.apply_watched(now, watch, entry);
        }
    }

    fn emit(&mut self, now: Instant, event: KvEvent) {
        self.events.push_back((now, event));
    }

    /// Takes an entry into a watch's view; a newer version than the view's becomes an event.
    fn apply_watched(&mut self, now: Instant, watch: u64, entry: WireEntry) {
        let Some(state) = self.watches.get_mut(&watch) else {
            return;
        };
        let incoming = Stored {
            deadline: None,
            ..Stored::from_wire(&entry, now)
        };
        if state
            .view
            .get(&entry.sub)
            .is_some_and(|known| !incoming.supersedes(known))
        {
            return;
        }
        let kind = match entry.state {
            State::Live(_) => EventKind::Set,
            State::Deleted => EventKind::Del,
            State::Expired => EventKind::Expire,
        };
        let was_live = state.view.get(&entry.sub).is_some_and(Stored::is_live);
        state.view.insert(entry.sub.clone(), incoming);
        // A tombstone of something this watch never saw alive is no news to its user.
        if kind == EventKind::Set || was_live {
            let key = state.key.clone();
            self.emit(
                now,
                KvEvent::Watched {
                    watch: WatchId(watch),
                    key,
                    kind,
                    entry: entry_of(&entry),
                },
            );
        }
    }

    /// The live entries a watch knows (what its user has been told).
    pub fn watched(&self, watch: WatchId) -> Option<Vec<Entry>> {
        let state = self.watches.get(&watch.0)?;
        let live = state.view.iter().filter(|(_, s)| s.is_live());
        Some(
            live.map(|(sub, stored)| entry_of(&stored.to_wire(sub, Instant::ZERO)))
                .collect(),
        )
    }

    pub(super) fn renew_watches(&mut self, now: Instant) {
        let ids: Vec<u64> = self.watches.keys().copied().collect();
        for id in ids {
            let state = &self.watches[&id];
            let replicas = self.replicas_of(&state.key);
            let moved = state.attached.is_some_and(|a| !replicas.contains(&a));
            if let Some(deadline) = state.awaiting
                && deadline <= now
            {
                // The replica did not answer: try another, and resynchronise there.
                let failed = state.attached;
                let state = self.watches.get_mut(&id).expect("present");
                if let Some(failed) = failed {
                    state.failed.insert(failed);
                    self.suspect(failed, now);
                }
                self.attach(now, id);
            } else if moved || state.renew_at <= now {
                self.attach(now, id);
            }
        }
    }

    /// Retries, hedges and gives up operations whose time has come.
    pub(super) fn time_operations(&mut self, now: Instant) {
        let puts: Vec<u64> = self
            .puts
            .iter()
            .filter(|(_, p)| p.deadline() <= now)
            .map(|(req, _)| *req)
            .collect();
        for req in puts {
            let put = self.puts.get_mut(&req).expect("present");
            if put.give_up_at <= now {
                let put = self.puts.remove(&req).expect("present");
                if !put.answered {
                    self.stats.writes_failed += 1;
                    let error = if put.acked.is_empty() {
                        KvError::NoReplica
                    } else {
                        KvError::TimedOut
                    };
                    self.emit(
                        now,
                        KvEvent::Written {
                            op: put.op,
                            result: Err(error),
                        },
                    );
                }
                continue;
            }
            if !put.replaced && now.saturating_since(put.started) >= WRITE_REPLACE_AFTER {
                // Silent replicas are suspected; their replacements in the new view get it too.
                put.replaced = true;
                let silent: Vec<NodeId> = put
                    .targets
                    .iter()
                    .map(|m| m.id)
                    .filter(|id| !put.acked.contains(id))
                    .collect();
                for node in &silent {
                    self.suspect(*node, now);
                }
                self.view = self.view.without(&silent);
                let put = self.puts.get_mut(&req).expect("present");
                for member in self.view.closest(key_hash(&put.key), self.config.replicas) {
                    if !put.targets.iter().any(|m| m.id == member.id) {
                        put.targets.push(member);
                    }
                }
            }
            self.send_put(now, req);
        }
        let gets: Vec<u64> = self
            .gets
            .iter()
            .filter(|(_, g)| g.deadline() <= now)
            .map(|(req, _)| *req)
            .collect();
        for req in gets {
            let get = self.gets.get_mut(&req).expect("present");
            if get.give_up_at <= now {
                let get = self.gets.remove(&req).expect("present");
                match (&get.answer, &get.miss) {
                    // Answered already: the repair window is over.
                    (Some(_), _) => {}
                    // No second replica confirmed the miss in time: it stands.
                    (None, Some(_)) => {
                        self.stats.reads_ok += 1;
                        self.emit(
                            now,
                            KvEvent::Read {
                                op: get.op,
                                result: Ok(Vec::new()),
                            },
                        );
                    }
                    // Every replica asked stayed silent: the next read asks others.
                    (None, None) => {
                        for target in &get.targets[..get.asked] {
                            self.suspect(target.id, now);
                        }
                        self.stats.reads_failed += 1;
                        self.emit(
                            now,
                            KvEvent::Read {
                                op: get.op,
                                result: Err(KvError::TimedOut),
                            },
                        );
                    }
                }
                continue;
            }
            self.ask_next(now, req);
        }
    }

    /// Forgets own entries whose lifetime is over.
    pub(super) fn expire_own(&mut self, now: Instant) {
        self.own
            .retain(|_, own| own.expires.is_none_or(|at| at > now));
    }

    /// Puts own entries on the replicas that newly hold their place (after a view change).
    pub(super) fn place_own(&mut self, now: Instant) {
        let mut sends = Vec::new();
        for ((key, _), own) in &mut self.own {
            let replicas: Vec<NodeId> = self
                .view
                .closest(key_hash(key), self.config.replicas)
                .iter()
                .map(|m| m.id)
                .collect();
            for replica in &replicas {
                if !own.placed_on.contains(replica) {
                    let mut entry = own.entry.clone();
                    entry.ttl = own.expires.map(|at| at.saturating_since(now));
                    sends.push((*replica, key.clone(), entry));
                }
            }
            own.placed_on = replicas;
        }
        for (to, key, entry) in sends {
            // Nobody waits for the answer: request 0 names no operation.
            self.send(to, KvMessage::Put { req: 0, key, entry });
        }
    }

    /// Renews the lease of this node's ephemeral entries on every replica that holds one, and
    /// on the members that said they hold copies (while they are in the view).
    pub(super) fn renew_leases(&mut self, now: Instant) {
        if now < self.next_lease {
            return;
        }
        self.next_lease = now + self.config.lease_interval;
        let mut holders: BTreeSet<NodeId> = self
            .own
            .values()
            .filter(|own| own.entry.ephemeral)
            .flat_map(|own| own.placed_on.iter().copied())
            .collect();
        if holders.is_empty() {
            self.lease_holders.clear();
        }
        let view = &self.view;
        self.lease_holders.retain(|holder| view.contains(holder));
        holders.extend(self.lease_holders.iter().copied());
        for holder in holders {
            self.send(holder, KvMessage::Lease);
        }
    }

    /// A replica expired some of this node's ephemeral entries for a lapsed lease (it did not
    /// hear from this node in time, during a change of replicas, or it holds a copy without
    /// being among the replicas in this node's view): those still held live here are written
    /// again, with a new version, to the key's replicas and to it, and its lease is renewed
    /// from now on.
    pub(super) fn on_lease_lost(
        &mut self,
        now: Instant,
        from: NodeId,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let holds_own = entries
            .iter()
            .any(|id| self.own.get(id).is_some_and(|own| own.entry.ephemeral));
        if holds_own && self.lease_holders.len() < MAX_LEASE_HOLDERS {
            self.lease_holders.insert(from);
        }
        for id in entries {
            let Some(version) = self
                .own
                .get(&id)
                .filter(|own| own.entry.ephemeral && own.entry.writer == self.id)
                .map(|_| ())
                .map(|()| self.next_version(now))
            else {
                continue;
            };
            let own = self.own.get_mut(&id).expect("present");
            own.entry.version = version;
            let mut entry = own.entry.clone();
            entry.ttl = own.expires.map(|at| at.saturating_since(now));
            let replicas = self.replicas_of(&id.0);
            let own = self.own.get_mut(&id).expect("present");
            own.placed_on = replicas.clone();
            for to in replicas.into_iter().chain([from]) {
                self.send(
                    to,
                    KvMessage::Put {
                        req: 0,
                        key: id.0.clone(),
                        entry: entry.clone(),
                    },
                );
            }
        }
    }

    /// This node is leaving: its ephemeral entries are deleted now rather than when their
    /// lease runs out, and the keys it holds go to the members that take its place.
    pub fn leave(&mut self, now: Instant) {
        self.hand_off_on_leave(now);
        let ephemeral: Vec<(Vec<u8>, Vec<u8>)> = self
            .own
            .iter()
            .filter(|(_, own)| own.entry.ephemeral)
            .map(|(id, _)| id.clone())
            .collect();
        for (key, sub) in ephemeral {
            let _ = self.del(now, &key, &sub);
        }
    }
}
