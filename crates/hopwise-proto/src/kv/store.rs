//! What one node stores: the entries of the keys it is a replica for, with their versions,
//! lifetimes and tombstones, inside configured bounds.
//!
//! Ordered maps keep iteration (digests, repair, persistence) deterministic, and they are safe
//! with keys that strangers choose.

use std::collections::BTreeMap;

use blake2::{Blake2s256, Digest};

use super::wire::{State, WireEntry};
use crate::{Duration, Instant, NodeId};

/// How long a tombstone outlives its entry, so that repair spreads it before it goes.
pub const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(60);
/// An ephemeral writer not heard from for this long is gone: its entries expire.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(8);
/// Per-entry bookkeeping counted against the byte bound besides key, sub-key and value.
const ENTRY_OVERHEAD: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub writer: NodeId,
    pub version: u64,
    pub state: State,
    pub ephemeral: bool,
    /// When a live entry expires, or a tombstone is dropped.
    pub deadline: Option<Instant>,
}

impl Stored {
    pub fn from_wire(entry: &WireEntry, now: Instant) -> Self {
        let deadline = match entry.state {
            State::Live(_) => entry.ttl.map(|ttl| now + ttl),
            _ => Some(now + entry.ttl.unwrap_or(TOMBSTONE_LIFETIME)),
        };
        Self {
            writer: entry.writer,
            version: entry.version,
            state: entry.state.clone(),
            ephemeral: entry.ephemeral,
            deadline,
        }
    }

    pub fn to_wire(&self, sub: &[u8], now: Instant) -> WireEntry {
        WireEntry {
            sub: sub.to_vec(),
            writer: self.writer,
            version: self.version,
            state: self.state.clone(),
            ephemeral: self.ephemeral,
            ttl: self
                .deadline
                .map(|at| at.saturating_since(now).max(Duration::from_millis(1))),
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live(_))
    }

    /// Whether this copy wins over `other` (the newer version; a tombstone over the live
    /// entry of the same version).
    pub fn supersedes(&self, other: &Stored) -> bool {
        (self.version, self.writer, self.state.rank())
            > (other.version, other.writer, other.state.rank())
    }

    fn size(&self, key: &[u8], sub: &[u8]) -> usize {
        let value = match &self.state {
            State::Live(value) => value.len(),
            _ => 0,
        };
        key.len() + sub.len() + value + ENTRY_OVERHEAD
    }
}

/// Bounds on one node's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Entries of one writer this node stores; one member cannot fill it alone.
    pub max_entries_per_writer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 << 20,
            max_entries_per_writer: 10_000,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The entry is the store's copy now.
    Applied,
    /// The store's copy is as new or newer (its version is given).
    Older(u64),
    /// Storing it would exceed a bound.
    Full,
}

/// A change to the store, for watchers and for persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    pub sub: Vec<u8>,
    /// The new copy, or `None` when the entry left the store (a tombstone dropped, a key
    /// handed off).
    pub stored: Option<Stored>,
}

#[derive(Debug, Default)]
pub struct Store {
    keys: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Stored>>,
    /// Key hashes of the keys held, for repair digests.
    hashes: BTreeMap<u64, Vec<u8>>,
    per_writer: BTreeMap<NodeId, usize>,
    /// When each writer of ephemeral entries was last heard from, plus the lease.
    leases: BTreeMap<NodeId, Instant>,
    entries: usize,
    bytes: usize,
    limits: Limits,
    changes: Vec<Change>,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&BTreeMap<Vec<u8>, Stored>> {
        self.keys.get(key)
    }

    pub fn get_sub(&self, key: &[u8], sub: &[u8]) -> Option<&Stored> {
        self.keys.get(key)?.get(sub)
    }

    pub fn key_of_hash(&self, hash: u64) -> Option<&Vec<u8>> {
        self.hashes.get(&hash)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.keys.keys()
    }

    /// Everything stored, for a caller that persists or inspects it.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>, &Stored)> {
        self.keys
            .iter()
            .flat_map(|(key, subs)| subs.iter().map(move |(sub, stored)| (key, sub, stored)))
    }

    /// The changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Stores `incoming` unless the store's copy supersedes it or a bound refuses it.
    pub fn merge(&mut self, key: &[u8], sub: &[u8], incoming: Stored, now: Instant) -> Merged {
        if incoming.ephemeral && incoming.is_live() {
            // A copy handed on by another replica starts a lease its writer then renews.
            self.leases
                .entry(incoming.writer)
                .or_insert(now + LEASE_LIFETIME);
        }
        let existing = self.get_sub(key, sub);
        if let Some(existing) = existing {
            if !incoming.supersedes(existing) {
                return Merged::Older(existing.version);
            }
        }
        let old_size = existing.map_or(0, |e| e.size(key, sub));
        let new_size = incoming.size(key, sub);
        let same_writer = existing.is_some_and(|e| e.writer == incoming.writer);
        let writer_entries = self.per_writer.get(&incoming.writer).copied().unwrap_or(0);
        let adds_entry = existing.is_none();
        if incoming.is_live()
            && ((adds_entry && self.entries >= self.limits.max_entries)
                || self.bytes - old_size + new_size > self.limits.max_bytes
                || (!same_writer && writer_entries >= self.limits.max_entries_per_writer))
        {
            return Merged::Full;
        }
        let previous = self.insert(key, sub, incoming.clone());
        if let Some(previous) = previous {
            self.bytes -= previous.size(key, sub);
            self.count_writer(previous.writer, false);
        } else {
            self.entries += 1;
        }
        self.bytes += new_size;
        self.count_writer(incoming.writer, true);
        self.changes.push(Change {
            key: key.to_vec(),
            sub: sub.to_vec(),
            stored: Some(incoming),
        });
        Merged::Applied
    }

    fn insert(&mut self, key: &[u8], sub: &[u8], stored: Stored) -> Option<Stored> {
        if !self.keys.contains_key(key) {
            self.hashes.insert(super::key_hash(key), key.to_vec());
        }
        self.keys
            .entry(key.to_vec())
            .or_default()
            .insert(sub.to_vec(), stored)
    }

    fn count_writer(&mut self, writer: NodeId, add: bool) {
        let count = self.per_writer.entry(writer).or_insert(0);
        if add {
            *count += 1;
        } else {
            *count -= 1;
            if *count == 0 {
                self.per_writer.remove(&writer);
            }
        }
    }

    /// Takes the sub-key out of the store (its tombstone is due, or the key moved away).
    pub fn remove(&mut self, key: &[u8], sub: &[u8]) {
        let Some(subs) = self.keys.get_mut(key) else {
            return;
        };
        let Some(stored) = subs.remove(sub) else {
            return;
        };
        if subs.is_empty() {
            self.keys.remove(key);
            self.hashes.remove(&super::key_hash(key));
        }
        self.entries -= 1;
        self.bytes -= stored.size(key, sub);
        self.count_writer(stored.writer, false);
        self.changes.push(Change {
            key: key.to_vec(),
            sub: sub.to_vec(),
            stored: None,
        });
    }

    /// Takes a whole key out of the store.
    pub fn remove_key(&mut self, key: &[u8]) {
        let subs: Vec<Vec<u8>> = self
            .keys
            .get(key)
            .map(|subs| subs.keys().cloned().collect())
            .unwrap_or_default();
        for sub in subs {
            self.remove(key, &sub);
        }
    }

    /// The writer of ephemeral entries is alive.
    pub fn renew_lease(&mut self, writer: NodeId, now: Instant) {
        self.leases.insert(writer, now + LEASE_LIFETIME);
    }

    /// Expires live entries whose time is up, and ephemeral entries whose writer went silent
    /// where `holds_place` says this node is one of the key's replicas (a node that only keeps
    /// a key until it hands it off hears no leases); drops tombstones that are due. Returns
    /// the entries that expired for a lapsed lease, by writer.
    pub fn expire(
        &mut self,
        now: Instant,
        holds_place: impl Fn(&[u8]) -> bool,
    ) -> Vec<(NodeId, Vec<u8>, Vec<u8>)> {
        self.leases.retain(|_, until| *until > now);
        let mut expired = Vec::new();
        let mut lapsed = Vec::new();
        let mut dropped = Vec::new();
        for (key, subs) in &self.keys {
            for (sub, stored) in subs {
                let due = stored.deadline.is_some_and(|at| at <= now);
                let lease_gone = stored.ephemeral
                    && !self.leases.contains_key(&stored.writer)
                    && holds_place(key);
                match stored.state {
                    State::Live(_) if due || lease_gone => {
                        if !due {
                            lapsed.push((stored.writer, key.clone(), sub.clone()));
                        }
                        expired.push((key.clone(), sub.clone()));
                    }
                    State::Deleted | State::Expired if due => {
                        dropped.push((key.clone(), sub.clone()));
                    }
                    _ => {}
                }
            }
        }
        for (key, sub) in expired {
            let stored = self.get_sub(&key, &sub).expect("listed above");
            let tombstone = Stored {
                state: State::Expired,
                deadline: Some(now + TOMBSTONE_LIFETIME),
                ..stored.clone()
            };
            self.merge(&key, &sub, tombstone, now);
        }
        for (key, sub) in dropped {
            self.remove(&key, &sub);
        }
        lapsed
    }

    /// A digest of a key's entries (sub-keys, writers, versions, states): equal digests mean
    /// equal copies.
    pub fn digest(&self, key: &[u8]) -> u64 {
        self.keys.get(key).map_or(0, |subs| digest_of(subs.iter()))
    }
}

/// The digest of a key's entries (as [`Store::digest`], for a watcher's own view as well).
pub fn digest_of<'a>(entries: impl Iterator<Item = (&'a Vec<u8>, &'a Stored)>) -> u64 {
    let mut hasher = Blake2s256::new();
    let mut any = false;
    for (sub, stored) in entries {
        any = true;
        hasher.update([sub.len() as u8]);
        hasher.update(sub);
        hasher.update(stored.writer.as_bytes());
        hasher.update(stored.version.to_be_bytes());
        hasher.update([stored.state.rank()]);
    }
    if !any {
        return 0;
    }
    let hash = hasher.finalize();
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(writer: u8, version: u64, value: &[u8]) -> Stored {
        Stored {
            writer: NodeId::from_bytes([writer; 8]),
            version,
            state: State::Live(value.to_vec()),
            ephemeral: false,
            deadline: None,
        }
    }

    #[test]
    fn the_newer_version_wins_and_a_tombstone_beats_its_own_version() {
        let mut store = Store::new(Limits::default());
        let now = Instant::ZERO;
        assert_eq!(
            store.merge(b"k", b"s", live(1, 5, b"a"), now),
            Merged::Applied
        );
        assert_eq!(
            store.merge(b"k", b"s", live(1, 4, b"old"), now),
            Merged::Older(5)
        );
        let tombstone = Stored {
            state: State::Expired,
            ..live(1, 5, b"")
        };
        assert_eq!(store.merge(b"k", b"s", tombstone, now), Merged::Applied);
        assert_eq!(
            store.merge(b"k", b"s", live(1, 5, b"a"), now),
            Merged::Older(5)
        );
        assert_eq!(store.entries(), 1);
    }

    #[test]
    fn bounds_refuse_instead_of_evicting() {
        let limits = Limits {
            max_entries: 2,
            max_bytes: 1 << 20,
            max_entries_per_writer: 10,
        };
        let mut store = Store::new(limits);
        let now = Instant::ZERO;
        assert_eq!(
            store.merge(b"k", b"1", live(1, 1, b"a"), now),
            Merged::Applied
        );
        assert_eq!(
            store.merge(b"k", b"2", live(1, 1, b"a"), now),
            Merged::Applied
        );
        assert_eq!(store.merge(b"k", b"3", live(1, 1, b"a"), now), Merged::Full);
        assert_eq!(
            store.merge(b"k", b"1", live(1, 2, b"b"), now),
            Merged::Applied
        );
        assert_eq!(store.entries(), 2);
    }

    #[test]
    fn entries_expire_into_tombstones_which_then_go() {
        let mut store = Store::new(Limits::default());
        let mut entry = live(1, 1, b"v");
        entry.deadline = Some(Instant::ZERO + Duration::from_secs(5));
        store.merge(b"k", b"s", entry, Instant::ZERO);
        store.expire(Instant::ZERO + Duration::from_secs(5), |_| true);
        assert_eq!(store.get_sub(b"k", b"s").unwrap().state, State::Expired);
        store.expire(
            Instant::ZERO + Duration::from_secs(5) + TOMBSTONE_LIFETIME,
            |_| true,
        );
        assert!(store.get(b"k").is_none());
        assert_eq!((store.entries(), store.bytes()), (0, 0));
    }

    #[test]
    fn ephemeral_entries_go_with_their_writers_lease() {
        let mut store = Store::new(Limits::default());
        let mut entry = live(7, 1, b"v");
        entry.ephemeral = true;
        store.renew_lease(entry.writer, Instant::ZERO);
        store.merge(b"k", b"s", entry, Instant::ZERO);
        store.expire(
            Instant::ZERO + LEASE_LIFETIME - Duration::from_millis(1),
            |_| true,
        );
        assert!(store.get_sub(b"k", b"s").unwrap().is_live());
        // A node that only keeps the key for a hand-off hears no leases: it does not judge.
        assert!(
            store
                .expire(Instant::ZERO + LEASE_LIFETIME, |_| false)
                .is_empty()
        );
        assert!(store.get_sub(b"k", b"s").unwrap().is_live());
        let lapsed = store.expire(Instant::ZERO + LEASE_LIFETIME, |_| true);
        assert_eq!(
            lapsed,
            vec![(NodeId::from_bytes([7; 8]), b"k".to_vec(), b"s".to_vec())]
        );
        assert_eq!(store.get_sub(b"k", b"s").unwrap().state, State::Expired);
    }
}
