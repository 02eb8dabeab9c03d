//! The key-value store's messages, one per (reassembled) service message.
//!
//! ```text
//! key     = len u8, bytes                      (1..=255 bytes)
//! entry   = sub (len u8, bytes), writer id (8), version u64, state u8 (bit 4: ephemeral),
//!           remaining lifetime in ms u32 (0: none), value (len u16, bytes; live entries only)
//! ```
//!
//! Every message starts with its kind byte. Decoding never panics and allocates at most what
//! the message holds; every length is checked against the store's bounds.

use super::{MAX_KEY, MAX_SUB, MAX_VALUE};
use crate::wire::DecodeError;
use crate::wire::codec::Reader;
use crate::{Duration, NodeId};

/// What an entry says about its sub-key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Live(Vec<u8>),
    /// Deleted by its writer: a tombstone, so an older copy elsewhere cannot bring it back.
    Deleted,
    /// Its lifetime ran out (or its ephemeral writer went silent): also a tombstone.
    Expired,
}

impl State {
    /// Among copies of one version, a tombstone wins over the live entry.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Live(_) => 0,
            Self::Deleted => 1,
            Self::Expired => 2,
        }
    }
}

/// An entry as it travels: `ttl` is what is left of its lifetime when it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    pub sub: Vec<u8>,
    pub writer: NodeId,
    pub version: u64,
    pub state: State,
    pub ephemeral: bool,
    pub ttl: Option<Duration>,
}

/// How a replica answered a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutStatus {
    Stored,
    /// Another node wrote the live entry.
    NotOwner,
    StoreFull,
    RateLimited,
    /// The replica holds a newer version (given in the reply): the writer's clock was behind.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvMessage {
    Put {
        req: u64,
        key: Vec<u8>,
        entry: WireEntry,
    },
    PutReply {
        req: u64,
        status: PutStatus,
        current: u64,
    },
    Get {
        req: u64,
        key: Vec<u8>,
        sub: Option<Vec<u8>>,
    },
    /// One part of the answer: entries travel in parts of a bounded size.
    GetReply {
        req: u64,
        part: u8,
        parts: u8,
        entries: Vec<WireEntry>,
    },
    /// Attach (or renew) a watch; `digest` is the watcher's view, to skip an unneeded resync.
    Watch {
        watch: u64,
        key: Vec<u8>,
        digest: u64,
    },
    WatchSync {
        watch: u64,
        part: u8,
        parts: u8,
        entries: Vec<WireEntry>,
    },
    WatchAlive {
        watch: u64,
    },
    Event {
        watch: u64,
        entry: WireEntry,
    },
    Unwatch {
        watch: u64,
    },
    /// Repair: (key hash, digest of the key's entries) for keys both ends should hold.
    Digest {
        keys: Vec<(u64, u64)>,
    },
    DigestAck,
    Pull {
        keys: Vec<u64>,
    },
    Push {
        key: Vec<u8>,
        entries: Vec<WireEntry>,
    },
    /// The sender is alive: its ephemeral entries live on.
    Lease,
    /// The sender could not reach `node`, another replica of a key this node holds.
    Suspect {
        node: NodeId,
    },
    /// To a writer whose lease lapsed here while it lives: these (key, sub-key) entries of its
    /// expired, and it writes them again.
    LeaseLost {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

const PUT: u8 = 1;
const PUT_REPLY: u8 = 2;
const GET: u8 = 3;
const GET_REPLY: u8 = 4;
const WATCH: u8 = 5;
const WATCH_SYNC: u8 = 6;
const WATCH_ALIVE: u8 = 7;
const EVENT: u8 = 8;
const UNWATCH: u8 = 9;
const DIGEST: u8 = 10;
const DIGEST_ACK: u8 = 11;
const PULL: u8 = 12;
const PUSH: u8 = 13;
const LEASE: u8 = 14;
const SUSPECT: u8 = 15;
const LEASE_LOST: u8 = 16;

const EPHEMERAL_BIT: u8 = 0x10;
/// Bound on the items of one message (entries, digests, pulls), whatever its size.
const MAX_ITEMS: usize = 4_096;

/// An entry's size on the wire.
pub fn entry_len(entry: &WireEntry) -> usize {
    let value = match &entry.state {
        State::Live(value) => 2 + value.len(),
        _ => 0,
    };
    1 + entry.sub.len() + NodeId::LEN + 8 + 1 + 4 + value
}

impl KvMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Self::Put { req, key, entry } => {
                out.push(PUT);
                out.extend_from_slice(&req.to_be_bytes());
                put_key(&mut out, key);
                put_entry(&mut out, entry);
            }
            Self::PutReply {
                req,
                status,
                current,
            } => {
                out.push(PUT_REPLY);
                out.extend_from_slice(&req.to_be_bytes());
                out.push(match status {
                    PutStatus::Stored => 0,
                    PutStatus::NotOwner => 1,
                    PutStatus::StoreFull => 2,
                    PutStatus::RateLimited => 3,
                    PutStatus::Stale => 4,
                });
                out.extend_from_slice(&current.to_be_bytes());
            }
            Self::Get { req, key, sub } => {
                out.push(GET);
                out.extend_from_slice(&req.to_be_bytes());
                put_key(&mut out, key);
                match sub {
                    Some(sub) => {
                        out.push(1);
                        put_key(&mut out, sub);
                    }
                    None => out.push(0),
                }
            }
            Self::GetReply {
                req,
                part,
                parts,
                entries,
            } => {
                out.push(GET_REPLY);
                out.extend_from_slice(&req.to_be_bytes());
                out.extend_from_slice(&[*part, *parts]);
                put_entries(&mut out, entries);
            }
            Self::Watch { watch, key, digest } => {
                out.push(WATCH);
                out.extend_from_slice(&watch.to_be_bytes());
                put_key(&mut out, key);
                out.extend_from_slice(&digest.to_be_bytes());
            }
            Self::WatchSync {
                watch,
                part,
                parts,
                entries,
            } => {
                out.push(WATCH_SYNC);
                out.extend_from_slice(&watch.to_be_bytes());
                out.extend_from_slice(&[*part, *parts]);
                put_entries(&mut out, entries);
            }
            Self::WatchAlive { watch } => {
                out.push(WATCH_ALIVE);
                out.extend_from_slice(&watch.to_be_bytes());
            }
            Self::Event { watch, entry } => {
                out.push(EVENT);
                out.extend_from_slice(&watch.to_be_bytes());
                put_entry(&mut out, entry);
            }
            Self::Unwatch { watch } => {
                out.push(UNWATCH);
                out.extend_from_slice(&watch.to_be_bytes());
            }
            Self::Digest { keys } => {
                out.push(DIGEST);
                out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
                for (key, digest) in keys {
                    out.extend_from_slice(&key.to_be_bytes());
                    out.extend_from_slice(&digest.to_be_bytes());
                }
            }
            Self::DigestAck => out.push(DIGEST_ACK),
            Self::Pull { keys } => {
                out.push(PULL);
                out.extend_from_slice(&(keys.len() as u16).to_be_bytes());
                for key in keys {
                    out.extend_from_slice(&key.to_be_bytes());
                }
            }
            Self::Push { key, entries } => {
                out.push(PUSH);
                put_key(&mut out, key);
                put_entries(&mut out, entries);
            }
            Self::Lease => out.push(LEASE),
            Self::Suspect { node } => {
                out.push(SUSPECT);
                out.extend_from_slice(node.as_bytes());
            }
            Self::LeaseLost { entries } => {
                out.push(LEASE_LOST);
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for (key, sub) in entries {
                    put_key(&mut out, key);
                    put_key(&mut out, sub);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let message = match reader.u8()? {
            PUT => Self::Put {
                req: reader.u64()?,
                key: read_key(&mut reader, MAX_KEY)?,
                entry: read_entry(&mut reader)?,
            },
            PUT_REPLY => Self::PutReply {
                req: reader.u64()?,
                status: match reader.u8()? {
                    0 => PutStatus::Stored,
                    1 => PutStatus::NotOwner,
                    2 => PutStatus::StoreFull,
                    3 => PutStatus::RateLimited,
                    4 => PutStatus::Stale,
                    other => return Err(DecodeError::UnknownOp(other)),
                },
                current: reader.u64()?,
            },
            GET => Self::Get {
                req: reader.u64()?,
                key: read_key(&mut reader, MAX_KEY)?,
                sub: match reader.u8()? {
                    0 => None,
                    1 => Some(read_key(&mut reader, MAX_SUB)?),
                    other => return Err(DecodeError::UnknownOp(other)),
                },
            },
            GET_REPLY => Self::GetReply {
                req: reader.u64()?,
                part: reader.u8()?,
                parts: reader.u8()?,
                entries: read_entries(&mut reader)?,
            },
            WATCH => Self::Watch {
                watch: reader.u64()?,
                key: read_key(&mut reader, MAX_KEY)?,
                digest: reader.u64()?,
            },
            WATCH_SYNC => Self::WatchSync {
                watch: reader.u64()?,
                part: reader.u8()?,
                parts: reader.u8()?,
                entries: read_entries(&mut reader)?,
            },
            WATCH_ALIVE => Self::WatchAlive {
                watch: reader.u64()?,
            },
            EVENT => Self::Event {
                watch: reader.u64()?,
                entry: read_entry(&mut reader)?,
            },
            UNWATCH => Self::Unwatch {
                watch: reader.u64()?,
            },
            DIGEST => {
                let count = read_count(&mut reader, 16)?;
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    keys.push((reader.u64()?, reader.u64()?));
                }
                Self::Digest { keys }
            }
            DIGEST_ACK => Self::DigestAck,
            PULL => {
                let count = read_count(&mut reader, 8)?;
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    keys.push(reader.u64()?);
                }
                Self::Pull { keys }
            }
            PUSH => Self::Push {
                key: read_key(&mut reader, MAX_KEY)?,
                entries: read_entries(&mut reader)?,
            },
            LEASE => Self::Lease,
            SUSPECT => Self::Suspect {
                node: NodeId::from_bytes(reader.bytes()?),
            },
            LEASE_LOST => {
                let count = read_count(&mut reader, 2)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push((
                        read_key(&mut reader, MAX_KEY)?,
                        read_key(&mut reader, MAX_SUB)?,
                    ));
                }
                Self::LeaseLost { entries }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        reader.finish()?;
        Ok(message)
    }
}

fn put_key(out: &mut Vec<u8>, key: &[u8]) {
    debug_assert!(key.len() <= usize::from(u8::MAX));
    out.push(key.len() as u8);
    out.extend_from_slice(key);
}

fn put_entry(out: &mut Vec<u8>, entry: &WireEntry) {
    put_key(out, &entry.sub);
    out.extend_from_slice(entry.writer.as_bytes());
    out.extend_from_slice(&entry.version.to_be_bytes());
    let flags = if entry.ephemeral { EPHEMERAL_BIT } else { 0 };
    out.push(entry.state.rank() | flags);
    let ttl_ms = entry.ttl.map_or(0, |ttl| {
        (ttl.as_micros() / 1_000).clamp(1, i64::from(u32::MAX)) as u32
    });
    out.extend_from_slice(&ttl_ms.to_be_bytes());
    if let State::Live(value) = &entry.state {
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
}

fn put_entries(out: &mut Vec<u8>, entries: &[WireEntry]) {
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for entry in entries {
        put_entry(out, entry);
    }
}

fn read_key(reader: &mut Reader<'_>, max: usize) -> Result<Vec<u8>, DecodeError> {
    let len = usize::from(reader.u8()?);
    if len > max {
        return Err(DecodeError::TooLong(len));
    }
    Ok(reader.slice(len)?.to_vec())
}

/// A count of items of at least `min_len` bytes each, checked against what is left, so a
/// forged count cannot make the decoder reserve more than the message holds.
fn read_count(reader: &mut Reader<'_>, min_len: usize) -> Result<usize, DecodeError> {
    let count = usize::from(reader.u16()?);
    if count > MAX_ITEMS || count * min_len > reader.remaining() {
        return Err(DecodeError::TooManyEntries(count));
    }
    Ok(count)
}

fn read_entry(reader: &mut Reader<'_>) -> Result<WireEntry, DecodeError> {
    let sub = read_key(reader, MAX_SUB)?;
    let writer = NodeId::from_bytes(reader.bytes()?);
    let version = reader.u64()?;
    let flags = reader.u8()?;
    let ttl_ms = reader.u32()?;
    let state = match flags & !EPHEMERAL_BIT {
        0 => {
            let len = usize::from(reader.u16()?);
            if len > MAX_VALUE {
                return Err(DecodeError::TooLong(len));
            }
            State::Live(reader.slice(len)?.to_vec())
        }
        1 => State::Deleted,
        2 => State::Expired,
        other => return Err(DecodeError::UnknownOp(other)),
    };
    Ok(WireEntry {
        sub,
        writer,
        version,
        state,
        ephemeral: flags & EPHEMERAL_BIT != 0,
        ttl: (ttl_ms > 0).then(|| Duration::from_millis(i64::from(ttl_ms))),
    })
}

fn read_entries(reader: &mut Reader<'_>) -> Result<Vec<WireEntry>, DecodeError> {
    // The smallest entry: empty sub, writer, version, state, ttl.
    let count = read_count(reader, 1 + NodeId::LEN + 8 + 1 + 4)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(read_entry(reader)?);
    }
    Ok(entries)
}
