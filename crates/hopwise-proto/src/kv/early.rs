//! Requests that rode a handshake's init (see [`crate::e2e::EndToEnd::send_early`]): which
//! were answered early, so their authenticated repeat is not answered again, and the writes
//! that were expected to succeed and wait for their writer to be proven.
//!
//! A read of a key with such a write pending waits (briefly) for it: the writer may already
//! hold its acknowledgement, and a read that starts after it must not miss the write.

use std::collections::BTreeMap;

use super::wire::PutStatus;
use crate::{Duration, Instant, NodeId};

/// Early requests are remembered this long: the handshake that proves their sender is over by
/// then.
const MEMORY: Duration = Duration::from_secs(6);
const MAX_REMEMBERED: usize = 4_096;
/// A read waits at most this long for a pending write, and at most this many reads wait.
const MAX_WAIT: Duration = Duration::from_secs(1);
const MAX_PARKED: usize = 1_024;

struct Answered {
    at: Instant,
    status: PutStatus,
    /// The key of a write expected to be stored.
    pending_key: Option<Vec<u8>>,
}

/// A read waiting for a pending write of its key.
#[derive(Debug, Clone)]
pub(super) struct ParkedRead {
    pub from: NodeId,
    pub req: u64,
    pub key: Vec<u8>,
    pub sub: Option<Vec<u8>>,
    pub early: bool,
    until: Instant,
}

#[derive(Default)]
pub(super) struct EarlyRequests {
    answered: BTreeMap<(NodeId, u64), Answered>,
    pending_writes: BTreeMap<Vec<u8>, usize>,
    parked: Vec<ParkedRead>,
}

impl EarlyRequests {
    pub(super) fn is_full(&self) -> bool {
        self.answered.len() >= MAX_REMEMBERED
    }

    /// An early request was answered (a write with its expected `status`).
    pub(super) fn answered(
        &mut self,
        from: NodeId,
        req: u64,
        now: Instant,
        status: PutStatus,
        write_key: Option<&[u8]>,
    ) {
        let pending_key = write_key
            .filter(|_| status == PutStatus::Stored)
            .map(<[u8]>::to_vec);
        if let Some(key) = &pending_key {
            *self.pending_writes.entry(key.clone()).or_insert(0) += 1;
        }
        let previous = self.answered.insert(
            (from, req),
            Answered {
                at: now,
                status,
                pending_key,
            },
        );
        if let Some(previous) = previous {
            self.settle(previous);
        }
    }

    /// The authenticated repeat of a request: the status it was answered with early, if it was.
    pub(super) fn take(&mut self, from: NodeId, req: u64) -> Option<PutStatus> {
        let answered = self.answered.remove(&(from, req))?;
        let status = answered.status;
        self.settle(answered);
        Some(status)
    }

    fn settle(&mut self, answered: Answered) {
        let Some(key) = answered.pending_key else {
            return;
        };
        if let Some(count) = self.pending_writes.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.pending_writes.remove(&key);
            }
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let old: Vec<(NodeId, u64)> = self
            .answered
            .iter()
            .filter(|(_, a)| now.saturating_since(a.at) >= MEMORY)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            let answered = self.answered.remove(&id).expect("listed");
            self.settle(answered);
        }
    }

    /// Holds a read of `key` if a write of it is pending; false if it should be answered now.
    pub(super) fn park(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        key: &[u8],
        sub: Option<Vec<u8>>,
        early: bool,
    ) -> bool {
        if !self.pending_writes.contains_key(key) || self.parked.len() >= MAX_PARKED {
            return false;
        }
        self.parked.push(ParkedRead {
            from,
            req,
            key: key.to_vec(),
            sub,
            early,
            until: now + MAX_WAIT,
        });
        true
    }

    /// Reads to answer now: their key's writes are settled, or they waited long enough.
    pub(super) fn ready(&mut self, now: Instant) -> Vec<ParkedRead> {
        if self.parked.is_empty() {
            return Vec::new();
        }
        let (ready, waiting) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|read| !self.pending_writes.contains_key(&read.key) || read.until <= now);
        self.parked = waiting;
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_waits_for_a_pending_write_of_its_key_only() {
        let mut early = EarlyRequests::default();
        let (writer, reader) = (NodeId::from_bytes([1; 8]), NodeId::from_bytes([2; 8]));
        let now = Instant::ZERO;
        early.answered(writer, 5, now, PutStatus::Stored, Some(b"k"));
        assert!(early.park(now, reader, 1, b"k", None, true));
        assert!(!early.park(now, reader, 2, b"other", None, true));
        assert!(early.ready(now).is_empty());
        assert_eq!(early.take(writer, 5), Some(PutStatus::Stored));
        let ready = early.ready(now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].req, 1);
        assert_eq!(early.take(writer, 5), None, "answered once");
    }

    #[test]
    fn waits_end_and_memories_fade() {
        let mut early = EarlyRequests::default();
        let writer = NodeId::from_bytes([1; 8]);
        early.answered(writer, 5, Instant::ZERO, PutStatus::Stored, Some(b"k"));
        assert!(early.park(Instant::ZERO, writer, 6, b"k", None, false));
        assert_eq!(early.ready(Instant::ZERO + MAX_WAIT).len(), 1);
        early.expire(Instant::ZERO + MEMORY);
        assert!(!early.park(Instant::ZERO + MEMORY, writer, 7, b"k", None, false));
    }
}
