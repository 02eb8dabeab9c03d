//! The store's wire format: every message survives a round trip, and arbitrary bytes never
//! make the decoder panic or allocate beyond what they hold.

use proptest::prelude::*;

use super::wire::{KvMessage, PutStatus, State, WireEntry};
use crate::{Duration, NodeId};

fn entry(sub: &[u8], state: State) -> WireEntry {
    WireEntry {
        sub: sub.to_vec(),
        writer: NodeId::from_bytes([9; 8]),
        version: 0x1234_5678_9abc,
        state,
        ephemeral: true,
        ttl: Some(Duration::from_millis(1_500)),
    }
}

fn examples() -> Vec<KvMessage> {
    let live = entry(b"sub", State::Live(vec![7; 1_024]));
    vec![
        KvMessage::Put {
            req: 1,
            key: vec![b'k'; 255],
            entry: live.clone(),
        },
        KvMessage::PutReply {
            req: 2,
            status: PutStatus::Stale,
            current: 99,
        },
        KvMessage::Get {
            req: 3,
            key: b"k".to_vec(),
            sub: Some(b"s".to_vec()),
        },
        KvMessage::Get {
            req: 3,
            key: b"k".to_vec(),
            sub: None,
        },
        KvMessage::GetReply {
            req: 4,
            part: 0,
            parts: 2,
            entries: vec![live.clone(), entry(b"gone", State::Deleted)],
        },
        KvMessage::Watch {
            watch: 5,
            key: b"w".to_vec(),
            digest: 77,
        },
        KvMessage::WatchSync {
            watch: 5,
            part: 1,
            parts: 2,
            entries: vec![entry(b"x", State::Expired)],
        },
        KvMessage::WatchAlive { watch: 5 },
        KvMessage::Event {
            watch: 5,
            entry: live.clone(),
        },
        KvMessage::Unwatch { watch: 5 },
        KvMessage::Digest {
            keys: vec![(1, 2), (3, 4)],
        },
        KvMessage::DigestAck,
        KvMessage::Pull { keys: vec![1, 3] },
        KvMessage::Push {
            key: b"k".to_vec(),
            entries: vec![live],
        },
        KvMessage::Lease,
        KvMessage::Suspect {
            node: NodeId::from_bytes([1; 8]),
        },
        KvMessage::LeaseLost {
            entries: vec![(b"alias/x".to_vec(), vec![1; 8])],
        },
    ]
}

#[test]
fn every_message_survives_a_round_trip() {
    for message in examples() {
        let bytes = message.encode();
        assert_eq!(KvMessage::decode(&bytes), Ok(message));
    }
}

#[test]
fn oversized_fields_and_trailing_bytes_are_refused() {
    let mut too_long_value = KvMessage::Put {
        req: 1,
        key: b"k".to_vec(),
        entry: entry(b"s", State::Live(vec![0; 1_025])),
    }
    .encode();
    assert!(KvMessage::decode(&too_long_value).is_err());
    too_long_value.truncate(10);
    assert!(KvMessage::decode(&too_long_value).is_err());
    let mut trailing = KvMessage::Lease.encode();
    trailing.push(0);
    assert!(KvMessage::decode(&trailing).is_err());
    // A count of 60,000 entries in a short message is refused before anything is reserved.
    let forged = [4u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0xEA, 0x60];
    assert!(KvMessage::decode(&forged).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
        if let Ok(message) = KvMessage::decode(&bytes) {
            // Whatever decodes encodes back to the same bytes.
            prop_assert_eq!(message.encode(), bytes);
        }
    }

    #[test]
    fn mutated_messages_never_panic(index in 0..16usize, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let examples = examples();
        let mut bytes = examples[index % examples.len()].encode();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        let _ = KvMessage::decode(&bytes);
    }
}
