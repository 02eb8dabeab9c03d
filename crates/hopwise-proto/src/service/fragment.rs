//! Messages larger than one end-to-end datagram, for services that need them (a key-value entry
//! with a long key, sub-key and value is larger than [`BASE_DATA`], the size every node carries).
//!
//! Each datagram carries `[message id u32][index u8][count u8]` and a chunk. The receiver keeps
//! partial messages in a bounded table (per peer and in all) for a short time; a lost chunk
//! loses the message, and the service's own retries recover it, as for a lost datagram.

use std::collections::BTreeMap;

use super::BASE_DATA;
use crate::{Duration, Instant, NodeId};

/// The header each datagram of a message carries.
pub const FRAGMENT_HEADER: usize = 6;
/// Bytes of a message each datagram carries.
pub const CHUNK: usize = BASE_DATA - FRAGMENT_HEADER;
/// The most datagrams one message takes.
pub const MAX_FRAGMENTS: usize = 16;
/// The largest message.
pub const MAX_MESSAGE: usize = CHUNK * MAX_FRAGMENTS;
/// Partial messages are dropped after this long.
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds on partial messages: from one peer, and in all.
const MAX_PARTIAL_PER_PEER: usize = 8;
const MAX_PARTIAL: usize = 256;

/// Splits `message` into datagrams; `None` if it is larger than [`MAX_MESSAGE`].
pub fn split(id: u32, message: &[u8]) -> Option<Vec<Vec<u8>>> {
    if message.len() > MAX_MESSAGE {
        return None;
    }
    let count = message.len().div_ceil(CHUNK).max(1);
    let chunks = (0..count).map(|index| {
        let chunk = &message[index * CHUNK..((index + 1) * CHUNK).min(message.len())];
        let mut datagram = Vec::with_capacity(FRAGMENT_HEADER + chunk.len());
        datagram.extend_from_slice(&id.to_be_bytes());
        datagram.push(index as u8);
        datagram.push(count as u8);
        datagram.extend_from_slice(chunk);
        datagram
    });
    Some(chunks.collect())
}

/// The message of a datagram that holds a whole message (one of one); `None` otherwise.
pub fn single(datagram: &[u8]) -> Option<&[u8]> {
    let (header, chunk) = datagram.split_first_chunk::<FRAGMENT_HEADER>()?;
    (header[4] == 0 && header[5] == 1).then_some(chunk)
}

struct Partial {
    started: Instant,
    chunks: Vec<Option<Vec<u8>>>,
}

/// Puts messages back together from their datagrams.
#[derive(Default)]
pub struct Reassembler {
    partial: BTreeMap<(NodeId, u32), Partial>,
    /// Datagrams that were malformed or did not fit the bounds.
    pub dropped: u64,
}

impl Reassembler {
    /// Takes one datagram from `from`; returns a message once all its chunks are in.
    pub fn accept(&mut self, now: Instant, from: NodeId, datagram: &[u8]) -> Option<Vec<u8>> {
        let Some((header, chunk)) = datagram.split_first_chunk::<FRAGMENT_HEADER>() else {
            self.dropped += 1;
            return None;
        };
        let id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let (index, count) = (usize::from(header[4]), usize::from(header[5]));
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            self.dropped += 1;
            return None;
        }
        if count == 1 {
            return Some(chunk.to_vec());
        }
        // Every chunk but the last is full, so a message is bounded by its count.
        if index + 1 < count && chunk.len() != CHUNK {
            self.dropped += 1;
            return None;
        }
        self.expire(now);
        let key = (from, id);
        if !self.partial.contains_key(&key) {
            let from_peer = self.partial.range((from, 0)..=(from, u32::MAX)).count();
            if from_peer >= MAX_PARTIAL_PER_PEER || self.partial.len() >= MAX_PARTIAL {
                self.dropped += 1;
                return None;
            }
            self.partial.insert(
                key,
                Partial {
                    started: now,
                    chunks: vec![None; count],
                },
            );
        }
        let partial = self.partial.get_mut(&key).expect("inserted above");
        if partial.chunks.len() != count {
            self.dropped += 1;
            return None;
        }
        partial.chunks[index] = Some(chunk.to_vec());
        if partial.chunks.iter().any(Option::is_none) {
            return None;
        }
        let partial = self.partial.remove(&key).expect("present");
        Some(partial.chunks.into_iter().flatten().flatten().collect())
    }

    fn expire(&mut self, now: Instant) {
        self.partial
            .retain(|_, partial| now.saturating_since(partial.started) < REASSEMBLY_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> NodeId {
        NodeId::from_bytes([n; 8])
    }

    #[test]
    fn a_message_comes_back_whole_in_any_order() {
        let message: Vec<u8> = (0..3 * CHUNK + 10).map(|i| i as u8).collect();
        let mut datagrams = split(7, &message).unwrap();
        assert_eq!(datagrams.len(), 4);
        datagrams.reverse();
        let mut reassembler = Reassembler::default();
        let mut out = None;
        for datagram in &datagrams {
            assert!(out.is_none());
            out = reassembler.accept(Instant::ZERO, peer(1), datagram);
        }
        assert_eq!(out.as_deref(), Some(&message[..]));
        assert!(reassembler.partial.is_empty());
    }

    #[test]
    fn too_large_is_refused_and_partials_are_bounded() {
        assert!(split(1, &vec![0; MAX_MESSAGE + 1]).is_none());
        let mut reassembler = Reassembler::default();
        for id in 0..100 {
            let first = &split(id, &vec![1; 2 * CHUNK]).unwrap()[0];
            assert!(reassembler.accept(Instant::ZERO, peer(2), first).is_none());
        }
        assert_eq!(reassembler.partial.len(), MAX_PARTIAL_PER_PEER);
        let later = Instant::ZERO + Duration::from_secs(4);
        let first = &split(500, &vec![1; 2 * CHUNK]).unwrap()[0];
        reassembler.accept(later, peer(2), first);
        assert_eq!(reassembler.partial.len(), 1, "old partials expire");
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(datagrams in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..1200), 0..40)) {
            let mut reassembler = Reassembler::default();
            for datagram in &datagrams {
                if let Some(message) = reassembler.accept(Instant::ZERO, peer(3), datagram) {
                    prop_assert!(message.len() <= MAX_MESSAGE);
                }
            }
            prop_assert!(reassembler.partial.len() <= MAX_PARTIAL_PER_PEER);
        }
    }
}
