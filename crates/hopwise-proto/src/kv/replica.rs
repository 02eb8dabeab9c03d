//! The replica half of the store: answering writes, reads and watches from other nodes, and
//! keeping each key on its replicas (digests, pulls and pushes, hand-off, liveness checks).

use std::collections::{BTreeMap, BTreeSet};

use super::store::{Merged, Stored};
use super::wire::{KvMessage, PutStatus, State, WireEntry};
use super::{EntryName, MAX_LEASE_LOST, MAX_WATCHERS, MAX_WATCHERS_PER_NODE, into_parts, key_hash};
use crate::{Duration, Instant, NodeId};

/// A replica keeps a watcher this long after its last renewal.
const WATCHER_LEASE: Duration = Duration::from_secs(20);
/// A node that lost its place for a key keeps it this long before letting it go.
const HANDOFF_GRACE: Duration = Duration::from_secs(20);
/// Digests are sent this long after a co-replica became owed one, to batch changes.
const DIGEST_DELAY: Duration = Duration::from_millis(500);
/// A digest's acknowledgement is awaited this long.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// After a reader's hint, a co-replica is given this long to acknowledge.
const HINT_ACK_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Missed acknowledgements after which a co-replica is suspected.
const MAX_MISSED_ACKS: u8 = 2;
/// Digest items per message (16 bytes each, inside one fragmented message).
const DIGEST_ITEMS: usize = 1_000;

#[derive(Debug, Clone)]
pub(super) struct Watcher {
    node: NodeId,
    watch: u64,
    until: Instant,
}

impl super::Kv {
    /// A write from `from`. An early one (its writer not yet proven) is only checked, and
    /// its expected outcome answered; it is stored when it comes again, authenticated, and
    /// answered again only if the outcome differs.
    pub(super) fn on_put(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        key: Vec<u8>,
        entry: WireEntry,
        early: bool,
    ) {
        if entry.writer != from {
            self.stats.forged += 1;
            return;
        }
        let expected = if early {
            None
        } else {
            self.early.take(from, req)
        };
        let rate_checked = expected.is_some();
        let status = if early {
            let status = self.check_write(now, from, &key, &entry, false);
            self.early.answered(from, req, now, status, Some(&key));
            status
        } else {
            self.store_write(now, from, &key, &entry, rate_checked)
        };
        let current = self
            .store
            .get_sub(&key, &entry.sub)
            .map_or(0, |stored| stored.version);
        if req == 0 || expected == Some(status) {
            return;
        }
        let reply = KvMessage::PutReply {
            req,
            status,
            current,
        };
        if early {
            self.send_early(from, reply);
        } else {
            self.send(from, reply);
        }
    }

    /// The outcome a write would have, without storing it: rate (unless already checked),
    /// ownership, and whether it is older than the stored copy.
    fn check_write(
        &mut self,
        now: Instant,
        from: NodeId,
        key: &[u8],
        entry: &WireEntry,
        rate_checked: bool,
    ) -> PutStatus {
        if from != self.id && !rate_checked && !self.write_limiter.allow(from, now) {
            self.stats.refused_rate += 1;
            return PutStatus::RateLimited;
        }
        match self.store.get_sub(key, &entry.sub) {
            Some(existing) if existing.is_live() && existing.writer != from => {
                self.stats.refused_not_owner += 1;
                PutStatus::NotOwner
            }
            Some(existing) if existing.version > entry.version => PutStatus::Stale,
            _ => PutStatus::Stored,
        }
    }

    /// A writer's own write: rate, ownership and bounds checked, then merged.
    fn store_write(
        &mut self,
        now: Instant,
        from: NodeId,
        key: &[u8],
        entry: &WireEntry,
        rate_checked: bool,
    ) -> PutStatus {
        let checked = self.check_write(now, from, key, entry, rate_checked);
        if matches!(checked, PutStatus::RateLimited | PutStatus::NotOwner) {
            return checked;
        }
        if entry.ephemeral {
            self.store.renew_lease(from, now);
        }
        match self
            .store
            .merge(key, &entry.sub, Stored::from_wire(entry, now), now)
        {
            Merged::Applied => PutStatus::Stored,
            Merged::Older(version) if version == entry.version => PutStatus::Stored,
            Merged::Older(_) => PutStatus::Stale,
            Merged::Full => {
                self.stats.refused_full += 1;
                PutStatus::StoreFull
            }
        }
    }

    /// A key's entries as they leave now (tombstones too: readers compare versions).
    fn wire_entries(&self, key: &[u8], sub: Option<&[u8]>, now: Instant) -> Vec<WireEntry> {
        let Some(subs) = self.store.get(key) else {
            return Vec::new();
        };
        subs.iter()
            .filter(|(s, _)| sub.is_none_or(|wanted| s.as_slice() == wanted))
            .map(|(s, stored)| stored.to_wire(s, now))
            .collect()
    }

    pub(super) fn on_get(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        key: &[u8],
        sub: Option<Vec<u8>>,
        early: bool,
    ) {
        // A write of this key that its writer may already count as acknowledged is on its way.
        if self.early.park(now, from, req, key, sub.clone(), early) {
            return;
        }
        self.answer_get(now, from, req, key, sub, early);
    }

    pub(super) fn answer_get(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        key: &[u8],
        sub: Option<Vec<u8>>,
        early: bool,
    ) {
        let parts = into_parts(self.wire_entries(key, sub.as_deref(), now));
        let count = parts.len().min(usize::from(u8::MAX)) as u8;
        for (part, entries) in parts.into_iter().take(usize::from(count)).enumerate() {
            let reply = KvMessage::GetReply {
                req,
                part: part as u8,
                parts: count,
                entries,
            };
            // Only one answer rides a handshake's response; the rest follow on the session.
            if early && part == 0 {
                self.send_early(from, reply);
            } else {
                self.send(from, reply);
            }
        }
    }

    pub(super) fn on_watch(
        &mut self,
        now: Instant,
        from: NodeId,
        watch: u64,
        key: Vec<u8>,
        digest: u64,
    ) {
        let until = now + WATCHER_LEASE;
        let watchers = self.watchers.entry(key.clone()).or_default();
        if let Some(existing) = watchers
            .iter_mut()
            .find(|w| w.node == from && w.watch == watch)
        {
            existing.until = until;
        } else {
            let from_node = self
                .watchers
                .values()
                .flatten()
                .filter(|w| w.node == from)
                .count();
            if self.watcher_count >= MAX_WATCHERS || from_node >= MAX_WATCHERS_PER_NODE {
                // No answer: the watcher tries another replica.
                return;
            }
            self.watcher_count += 1;
            self.watchers.entry(key.clone()).or_default().push(Watcher {
                node: from,
                watch,
                until,
            });
        }
        if digest == self.store.digest(&key) {
            self.send(from, KvMessage::WatchAlive { watch });
            return;
        }
        let parts = into_parts(self.wire_entries(&key, None, now));
        let count = parts.len().min(usize::from(u8::MAX)) as u8;
        for (part, entries) in parts.into_iter().take(usize::from(count)).enumerate() {
            let sync = KvMessage::WatchSync {
                watch,
                part: part as u8,
                parts: count,
                entries,
            };
            self.send(from, sync);
        }
    }

    pub(super) fn on_unwatch(&mut self, from: NodeId, watch: u64) {
        for watchers in self.watchers.values_mut() {
            let before = watchers.len();
            watchers.retain(|w| !(w.node == from && w.watch == watch));
            self.watcher_count -= before - watchers.len();
        }
        self.watchers.retain(|_, watchers| !watchers.is_empty());
    }

    pub(super) fn notify_watchers(
        &mut self,
        now: Instant,
        key: &[u8],
        sub: &[u8],
        stored: &Stored,
    ) {
        let Some(watchers) = self.watchers.get(key) else {
            return;
        };
        let targets: Vec<(NodeId, u64)> = watchers.iter().map(|w| (w.node, w.watch)).collect();
        let entry = stored.to_wire(sub, now);
        for (node, watch) in targets {
            self.stats.events_sent += 1;
            self.send(
                node,
                KvMessage::Event {
                    watch,
                    entry: entry.clone(),
                },
            );
        }
    }

    pub(super) fn expire_watchers(&mut self, now: Instant) {
        let mut removed = 0;
        for watchers in self.watchers.values_mut() {
            let before = watchers.len();
            watchers.retain(|w| w.until > now);
            removed += before - watchers.len();
        }
        self.watcher_count -= removed;
        self.watchers.retain(|_, watchers| !watchers.is_empty());
    }

    /// After a view change: keys whose replica set changed are offered to their new replicas,
    /// and keys this node lost its place for are handed off.
    pub(super) fn replace_replicas(&mut self, now: Instant) {
        let keys: Vec<Vec<u8>> = self.store.keys().cloned().collect();
        for key in keys {
            let replicas = self.replicas_of(&key);
            let previous = self.placed.get(&key).cloned().unwrap_or_default();
            if replicas.contains(&self.id) {
                self.handoff.remove(&key);
                for replica in &replicas {
                    if *replica != self.id && !previous.contains(replica) {
                        self.dirty.entry(*replica).or_insert(now);
                    }
                }
            } else if !self.handoff.contains_key(&key) {
                self.stats.handoffs += 1;
                self.handoff.insert(key.clone(), now + HANDOFF_GRACE);
                self.push_key(now, &key, &replicas);
            }
            self.placed.insert(key, replicas);
        }
        self.placed.retain(|key, _| self.store.get(key).is_some());
    }

    /// This node is leaving: each key it holds goes to the members that take its place in the
    /// key's replica set. Without this a departure would leave a key on two copies until the
    /// others' views drop this node and repair runs, and losing those two meanwhile would lose
    /// the entries whose writers are gone too.
    pub(super) fn hand_off_on_leave(&mut self, now: Instant) {
        let successors = self.view.without(&[self.id]);
        let keys: Vec<Vec<u8>> = self.store.keys().cloned().collect();
        for key in keys {
            let holders = self.placed.get(&key).cloned().unwrap_or_default();
            let newcomers: Vec<NodeId> = successors
                .closest(key_hash(&key), self.config.replicas)
                .iter()
                .map(|member| member.id)
                .filter(|id| !holders.contains(id))
                .collect();
            if !newcomers.is_empty() {
                self.stats.handoffs += 1;
                self.push_key(now, &key, &newcomers);
            }
        }
    }

    fn push_key(&mut self, now: Instant, key: &[u8], to: &[NodeId]) {
        let entries = self.wire_entries(key, None, now);
        for part in into_parts(entries) {
            let me = self.id;
            for replica in to.iter().filter(|r| **r != me) {
                self.stats.pushes_sent += 1;
                self.send(
                    *replica,
                    KvMessage::Push {
                        key: key.to_vec(),
                        entries: part.clone(),
                    },
                );
            }
        }
    }

    /// The periodic half of repair: hand-offs that are due, digests owed, acknowledgements
    /// missed, and the slow refresh with every co-replica.
    pub(super) fn repair_tick(&mut self, now: Instant) {
        let due: Vec<Vec<u8>> = self
            .handoff
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.handoff.remove(&key);
            let replicas = self.replicas_of(&key);
            if !replicas.contains(&self.id) {
                self.push_key(now, &key, &replicas);
                self.store.remove_key(&key);
                self.placed.remove(&key);
            }
        }
        if now >= self.next_refresh {
            self.next_refresh = now + self.config.refresh_interval;
            let peers: BTreeSet<NodeId> = self.placed.values().flatten().copied().collect();
            for peer in peers {
                if peer != self.id {
                    self.dirty.entry(peer).or_insert(now);
                }
            }
        }
        let missed: Vec<(NodeId, bool)> = self
            .awaiting_ack
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(node, (_, hinted))| (*node, *hinted))
            .collect();
        for (node, hinted) in missed {
            self.awaiting_ack.remove(&node);
            let misses = self.missed_acks.entry(node).or_insert(0);
            *misses += 1;
            if hinted || *misses >= MAX_MISSED_ACKS {
                self.missed_acks.remove(&node);
                self.suspect(node, now);
            }
        }
        let owed: Vec<NodeId> = self
            .dirty
            .iter()
            .filter(|(_, since)| now.saturating_since(**since) >= DIGEST_DELAY)
            .map(|(node, _)| *node)
            .collect();
        for peer in owed {
            self.dirty.remove(&peer);
            self.send_digest(now, peer, ACK_TIMEOUT, false);
        }
    }

    /// Sends `peer` the digests of every key both should hold, and awaits its acknowledgement.
    fn send_digest(&mut self, now: Instant, peer: NodeId, timeout: Duration, hinted: bool) {
        let keys: Vec<(u64, u64)> = self
            .placed
            .iter()
            .filter(|(_, replicas)| replicas.contains(&peer))
            .map(|(key, _)| (key_hash(key), self.store.digest(key)))
            .collect();
        self.stats.digests_sent += 1;
        let chunks: Vec<Vec<(u64, u64)>> = if keys.is_empty() {
            vec![Vec::new()]
        } else {
            keys.chunks(DIGEST_ITEMS).map(<[_]>::to_vec).collect()
        };
        for keys in chunks {
            self.send(peer, KvMessage::Digest { keys });
        }
        let entry = self
            .awaiting_ack
            .entry(peer)
            .or_insert((now + timeout, hinted));
        entry.0 = entry.0.min(now + timeout);
        entry.1 |= hinted;
    }

    pub(super) fn on_digest(&mut self, now: Instant, from: NodeId, keys: &[(u64, u64)]) {
        self.send(from, KvMessage::DigestAck);
        let mut pull = Vec::new();
        let mut listed = BTreeSet::new();
        for &(hash, digest) in keys {
            listed.insert(hash);
            match self.store.key_of_hash(hash).cloned() {
                Some(key) if self.store.digest(&key) == digest => {}
                Some(key) => {
                    pull.push(hash);
                    self.push_key(now, &key, &[from]);
                }
                None => pull.push(hash),
            }
        }
        // Keys both should hold that the sender did not list: it is missing them.
        let missing: Vec<Vec<u8>> = self
            .placed
            .iter()
            .filter(|(key, replicas)| replicas.contains(&from) && !listed.contains(&key_hash(key)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in missing {
            self.push_key(now, &key, &[from]);
        }
        for chunk in pull.chunks(DIGEST_ITEMS) {
            self.send(
                from,
                KvMessage::Pull {
                    keys: chunk.to_vec(),
                },
            );
        }
    }

    pub(super) fn on_digest_ack(&mut self, from: NodeId) {
        self.awaiting_ack.remove(&from);
        self.missed_acks.remove(&from);
    }

    pub(super) fn on_pull(&mut self, now: Instant, from: NodeId, keys: &[u64]) {
        for hash in keys {
            if let Some(key) = self.store.key_of_hash(*hash).cloned() {
                self.push_key(now, &key, &[from]);
            }
        }
    }

    /// Repair data from another replica: merged by version; ownership was checked when the
    /// writer wrote it.
    pub(super) fn on_push(&mut self, now: Instant, key: &[u8], entries: Vec<WireEntry>) {
        let new_key = self.store.get(key).is_none();
        for entry in entries {
            let _ = self
                .store
                .merge(key, &entry.sub, Stored::from_wire(&entry, now), now);
        }
        if new_key && self.store.get(key).is_some() {
            let replicas = self.replicas_of(key);
            if !replicas.contains(&self.id) {
                // Pushed here by a node whose view differs: keep it for a grace period only.
                self.handoff
                    .entry(key.to_vec())
                    .or_insert(now + HANDOFF_GRACE);
            }
            self.placed.insert(key.to_vec(), replicas);
        }
    }

    /// The writer of ephemeral entries is alive; if some of its entries expired here for a
    /// lapsed lease and are still tombstones, it is told.
    pub(super) fn on_lease(&mut self, now: Instant, from: NodeId) {
        self.store.renew_lease(from, now);
        self.forget_rewritten_lapses();
        if let Some(entries) = self.lease_lost.remove(&from) {
            self.send(from, KvMessage::LeaseLost { entries });
        }
    }

    /// Ephemeral entries that expired here for a lapsed lease: their writer is told at once,
    /// because a live writer whose view leaves this node out of the key's replicas never
    /// renews the lease here, although repair from the other replicas gave this node a copy.
    /// They are kept to tell the writer again when a lease shows it alive (it may have been
    /// out of reach).
    pub(super) fn report_lapsed(&mut self, lapsed: Vec<(NodeId, Vec<u8>, Vec<u8>)>) {
        let mut by_writer: BTreeMap<NodeId, Vec<EntryName>> = BTreeMap::new();
        for (writer, key, sub) in lapsed {
            let lost = by_writer.entry(writer).or_default();
            if lost.len() < MAX_LEASE_LOST {
                lost.push((key, sub));
            }
        }
        for (writer, entries) in by_writer {
            let lost = self.lease_lost.entry(writer).or_default();
            let room = MAX_LEASE_LOST.saturating_sub(lost.len());
            lost.extend(entries.iter().take(room).cloned());
            self.send(writer, KvMessage::LeaseLost { entries });
        }
    }

    /// Lapsed entries whose tombstone is gone, or that their writer wrote again, need no
    /// telling any more.
    pub(super) fn forget_rewritten_lapses(&mut self) {
        let store = &self.store;
        self.lease_lost.retain(|_, entries| {
            entries.retain(|(key, sub)| {
                store
                    .get_sub(key, sub)
                    .is_some_and(|stored| stored.state == State::Expired)
            });
            !entries.is_empty()
        });
    }

    /// A reader could not reach `node`: check it now, and suspect it if it stays silent.
    pub(super) fn on_suspect_hint(&mut self, now: Instant, node: NodeId) {
        if node == self.id || !self.view.contains(&node) || self.awaiting_ack.contains_key(&node) {
            return;
        }
        self.send_digest(now, node, HINT_ACK_TIMEOUT, true);
    }
}
