//! The pub/sub service's messages on [`crate::service::ports::PUBSUB`]. A topic travels as the
//! hash of its name (the key-value store's [`crate::kv::key_hash`]); a tree is named by its
//! topic and its publisher.
//!
//! ```text
//! announce    1 | topic u64 | since u64                            publisher -> rendezvous
//! interest    2 | topic u64                                        subscriber -> rendezvous
//! publishers  3 | topic u64 | count u8 | publisher u64 * count     rendezvous -> subscriber
//! join        4 | topic u64 | publisher u64 | ask u8 | epoch u32 | highest u64   child -> parent
//! joined      5 | topic u64 | publisher u64 | epoch u32 | highest u64    parent -> child
//! leave       6 | topic u64 | publisher u64                        child -> parent
//! data        7 | topic u64 | publisher u64 | epoch u32 | seq u64 | message  parent -> child
//! nack        8 | topic u64 | publisher u64 | epoch u32 | first u64 | count u16  child -> parent
//! started     9 | topic u64 | publisher u64 | since u64          rendezvous -> subscriber
//! ```
//!
//! A publisher's first announcement of a publication says `since` 0, later ones its highest
//! number; a rendezvous that hears of a publisher for the first time passes that on to the
//! interested nodes (`started`), which fetch the messages after it: subscribers that were there
//! when a publication started get all of it that the buffers still hold once their tree forms.
//!
//! An epoch is drawn by the publisher when it starts publishing on a topic, so sequence
//! numbers that start again after a restart are not taken for old ones. Epoch 0 in `joined`
//! means the parent has not heard from the publisher yet. A join says how far its sender has got
//! (`highest`, in `epoch`: it asks for what it lacks below that itself), so that a parent sends
//! a child nothing up to there, and answers a renewal only when the child is behind; `ask` 1
//! asks for an answer regardless (a first join to this parent).

use crate::NodeId;
use crate::wire::DecodeError;
use crate::wire::codec::Reader;

const ANNOUNCE: u8 = 1;
const INTEREST: u8 = 2;
const PUBLISHERS: u8 = 3;
const JOIN: u8 = 4;
const JOINED: u8 = 5;
const LEAVE: u8 = 6;
const DATA: u8 = 7;
const NACK: u8 = 8;
const STARTED: u8 = 9;

/// Publishers one `publishers` message lists at most (and a rendezvous keeps per topic).
pub const MAX_LISTED_PUBLISHERS: usize = 64;
/// Sequence numbers one `nack` asks for at most.
pub const MAX_NACK_COUNT: u16 = 256;
/// The bytes a data message adds in front of its message.
pub const DATA_OVERHEAD: usize = 1 + 8 + 8 + 4 + 8;

/// One tree: the messages of `publisher` on `topic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeId {
    pub topic: u64,
    pub publisher: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Announce {
        topic: u64,
        since: u64,
    },
    Interest {
        topic: u64,
    },
    /// `ids` holds 8 bytes per publisher (see [`Message::publishers`]).
    Publishers {
        topic: u64,
        ids: &'a [u8],
    },
    Join {
        tree: TreeId,
        ask: bool,
        epoch: u32,
        highest: u64,
    },
    Joined {
        tree: TreeId,
        epoch: u32,
        highest: u64,
    },
    Leave(TreeId),
    Data {
        tree: TreeId,
        epoch: u32,
        seq: u64,
        message: &'a [u8],
    },
    Nack {
        tree: TreeId,
        epoch: u32,
        first: u64,
        count: u16,
    },
    Started {
        tree: TreeId,
        since: u64,
    },
}

fn put_tree(out: &mut Vec<u8>, tag: u8, tree: TreeId) {
    out.push(tag);
    out.extend_from_slice(&tree.topic.to_be_bytes());
    out.extend_from_slice(tree.publisher.as_bytes());
}

/// Encodes a `publishers` message listing `publishers` (at most
/// [`MAX_LISTED_PUBLISHERS`]; more are left out).
pub fn encode_publishers(topic: u64, publishers: impl Iterator<Item = NodeId>) -> Vec<u8> {
    let mut out = vec![PUBLISHERS];
    out.extend_from_slice(&topic.to_be_bytes());
    out.push(0);
    let mut count = 0u8;
    for id in publishers.take(MAX_LISTED_PUBLISHERS) {
        out.extend_from_slice(id.as_bytes());
        count += 1;
    }
    out[9] = count;
    out
}

impl<'a> Message<'a> {
    /// The publishers a `publishers` message lists (nothing for other messages).
    pub fn publishers(&self) -> impl Iterator<Item = NodeId> + 'a {
        let ids: &'a [u8] = match self {
            Self::Publishers { ids, .. } => ids,
            _ => &[],
        };
        ids.chunks_exact(8)
            .map(|id| NodeId::from_bytes(id.try_into().expect("8 bytes")))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Self::Announce { topic, since } => {
                out.push(ANNOUNCE);
                out.extend_from_slice(&topic.to_be_bytes());
                out.extend_from_slice(&since.to_be_bytes());
            }
            Self::Interest { topic } => {
                out.push(INTEREST);
                out.extend_from_slice(&topic.to_be_bytes());
            }
            Self::Publishers { topic, ids } => {
                out.extend_from_slice(&encode_publishers(topic, self.publishers()));
                debug_assert!(ids.len() % 8 == 0);
            }
            Self::Join {
                tree,
                ask,
                epoch,
                highest,
            } => {
                put_tree(out, JOIN, tree);
                out.push(u8::from(ask));
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&highest.to_be_bytes());
            }
            Self::Joined {
                tree,
                epoch,
                highest,
            } => {
                put_tree(out, JOINED, tree);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&highest.to_be_bytes());
            }
            Self::Leave(tree) => put_tree(out, LEAVE, tree),
            Self::Data {
                tree,
                epoch,
                seq,
                message,
            } => {
                put_tree(out, DATA, tree);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(message);
            }
            Self::Nack {
                tree,
                epoch,
                first,
                count,
            } => {
                put_tree(out, NACK, tree);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Self::Started { tree, since } => {
                put_tree(out, STARTED, tree);
                out.extend_from_slice(&since.to_be_bytes());
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn read_tree(reader: &mut Reader<'_>) -> Result<TreeId, DecodeError> {
    Ok(TreeId {
        topic: reader.u64()?,
        publisher: NodeId::from_bytes(reader.bytes()?),
    })
}

/// Reads a message; an error for anything malformed (the service counts it).
pub fn decode(data: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut reader = Reader::new(data);
    let message = match reader.u8()? {
        ANNOUNCE => Message::Announce {
            topic: reader.u64()?,
            since: reader.u64()?,
        },
        INTEREST => Message::Interest {
            topic: reader.u64()?,
        },
        PUBLISHERS => {
            let topic = reader.u64()?;
            let count = usize::from(reader.u8()?);
            if count > MAX_LISTED_PUBLISHERS {
                return Err(DecodeError::TooManyEntries(count));
            }
            Message::Publishers {
                topic,
                ids: reader.slice(count * 8)?,
            }
        }
        JOIN => Message::Join {
            tree: read_tree(&mut reader)?,
            ask: match reader.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::ReservedBitsSet),
            },
            epoch: reader.u32()?,
            highest: reader.u64()?,
        },
        JOINED => Message::Joined {
            tree: read_tree(&mut reader)?,
            epoch: reader.u32()?,
            highest: reader.u64()?,
        },
        LEAVE => Message::Leave(read_tree(&mut reader)?),
        DATA => {
            let tree = read_tree(&mut reader)?;
            let epoch = reader.u32()?;
            let seq = reader.u64()?;
            let message = reader.slice(reader.remaining())?;
            return Ok(Message::Data {
                tree,
                epoch,
                seq,
                message,
            });
        }
        NACK => {
            let message = Message::Nack {
                tree: read_tree(&mut reader)?,
                epoch: reader.u32()?,
                first: reader.u64()?,
                count: reader.u16()?,
            };
            if let Message::Nack { count, .. } = message
                && count > MAX_NACK_COUNT
            {
                return Err(DecodeError::TooManyEntries(count.into()));
            }
            message
        }
        STARTED => Message::Started {
            tree: read_tree(&mut reader)?,
            since: reader.u64()?,
        },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    reader.finish()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree() -> TreeId {
        TreeId {
            topic: 0x0102_0304_0506_0708,
            publisher: NodeId::from_bytes([9; 8]),
        }
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let ids: Vec<u8> = [[1u8; 8], [2; 8]].concat();
        let messages = [
            Message::Announce {
                topic: 5,
                since: 17,
            },
            Message::Interest { topic: 6 },
            Message::Publishers {
                topic: 7,
                ids: &ids,
            },
            Message::Join {
                tree: tree(),
                ask: true,
                epoch: 3,
                highest: 98,
            },
            Message::Joined {
                tree: tree(),
                epoch: 3,
                highest: 99,
            },
            Message::Leave(tree()),
            Message::Data {
                tree: tree(),
                epoch: 3,
                seq: 100,
                message: b"hello",
            },
            Message::Nack {
                tree: tree(),
                epoch: 3,
                first: 40,
                count: 12,
            },
            Message::Started {
                tree: tree(),
                since: 7,
            },
        ];
        for message in messages {
            let bytes = message.to_bytes();
            assert_eq!(decode(&bytes), Ok(message), "{message:?}");
        }
        let listed: Vec<NodeId> = decode(&messages[2].to_bytes())
            .unwrap()
            .publishers()
            .collect();
        assert_eq!(
            listed,
            vec![NodeId::from_bytes([1; 8]), NodeId::from_bytes([2; 8])]
        );
    }

    #[test]
    fn a_data_message_adds_exactly_its_overhead() {
        let bytes = Message::Data {
            tree: tree(),
            epoch: 1,
            seq: 1,
            message: &[0; 10],
        }
        .to_bytes();
        assert_eq!(bytes.len(), DATA_OVERHEAD + 10);
    }

    #[test]
    fn nacks_for_too_much_and_long_lists_are_refused() {
        for count in [MAX_NACK_COUNT + 1, u16::MAX] {
            let mut bytes = Message::Nack {
                tree: tree(),
                epoch: 1,
                first: 1,
                count: 1,
            }
            .to_bytes();
            let len = bytes.len();
            bytes[len - 2..].copy_from_slice(&count.to_be_bytes());
            assert!(decode(&bytes).is_err(), "count {count}");
        }
        let mut bytes = vec![PUBLISHERS];
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.push(MAX_LISTED_PUBLISHERS as u8 + 1);
        bytes.extend(std::iter::repeat_n(0, 8 * (MAX_LISTED_PUBLISHERS + 1)));
        assert!(decode(&bytes).is_err());
        let too_many = (0..100u64).map(|i| NodeId::from_bytes(i.to_be_bytes()));
        let listed = encode_publishers(7, too_many);
        assert_eq!(
            decode(&listed).unwrap().publishers().count(),
            MAX_LISTED_PUBLISHERS
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic_and_reencode_to_themselves(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            if let Ok(message) = decode(&bytes) {
                prop_assert_eq!(message.to_bytes(), bytes);
            }
        }

        #[test]
        fn any_truncation_of_a_message_is_refused(cut in 0usize..37, seq in any::<u64>()) {
            let messages = [
                Message::Nack { tree: tree(), epoch: 2, first: seq, count: 3 },
                Message::Join { tree: tree(), ask: true, epoch: 2, highest: seq },
                Message::Started { tree: tree(), since: seq },
                Message::Announce { topic: 5, since: seq },
            ];
            for message in messages {
                let bytes = message.to_bytes();
                if cut >= bytes.len() {
                    continue;
                }
                prop_assert!(decode(&bytes[..cut]).is_err(), "{message:?}");
            }
        }
    }
}
