//! Wire formats. Every datagram starts with the same 12-byte header:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  magic 0x68   |  version = 1  |     kind      |  reserved = 0 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                     sender NodeId (8 bytes)                   +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      kind-specific body ...                   |
//! ```
//!
//! All integers are big-endian. The magic byte lets a runner classify a datagram from its first
//! byte before parsing it (see [`accepts`]); the version byte lets later formats coexist.
//! Decoding untrusted bytes never panics and allocates no more than the datagram holds.

pub(crate) mod codec;
pub mod data;
pub mod probe;
pub mod route;

use std::fmt;

use crate::NodeId;
pub use data::{
    BASE_PAYLOAD, Data, DataBody, INITIAL_TTL, MAX_PAYLOAD, MAX_TRACE_HOPS, RelayHeader, Trace,
    TraceHop, payload_for_datagram, rewrite_for_next_hop,
};
pub use probe::{GossipEntry, MAX_GOSSIP, Probe, WireCoord};
pub use route::{LinkOp, MAX_ROUTE_ENTRIES, RouteEntry, RouteUpdate, SeqnoRequest};

pub const MAGIC: u8 = 0x68;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 4 + NodeId::LEN;

/// The largest path MTU a node may be configured for: jumbo frames, as data centre networks
/// (and loopback) carry them.
pub const MAX_PATH_MTU: usize = 9000;
/// The largest datagram the core accepts, and the most a node may send: what a path of
/// [`MAX_PATH_MTU`] bytes carries under the UDP and IPv6 headers and the secure layer's
/// [`crate::secure::OVERHEAD`]. A node sends at most its own [`crate::node::Config`]
/// `max_datagram`, which its path MTU sets (1,500 bytes unless told otherwise).
pub const MAX_DATAGRAM: usize = datagram_for_path_mtu(MAX_PATH_MTU);
/// What every node sends by default, and the size the services that split their messages
/// (the key-value store) keep to, so that any path a node may be configured for carries them:
/// a 1,280-byte path (the IPv6 minimum) carries it.
pub const BASE_DATAGRAM: usize = 1200;

/// IPv6 and UDP headers, the larger of the two families' costs.
const IP_UDP_HEADERS: usize = 40 + 8;

/// The largest overlay datagram a path of `mtu` bytes carries, sealed by the secure layer.
#[must_use]
pub const fn datagram_for_path_mtu(mtu: usize) -> usize {
    mtu.saturating_sub(IP_UDP_HEADERS + crate::secure::OVERHEAD)
}

const KIND_PROBE_REQUEST: u8 = 1;
const KIND_PROBE_REPLY: u8 = 2;
const KIND_ROUTE_UPDATE: u8 = 3;
const KIND_LINK: u8 = 4;
const KIND_SEQNO_REQUEST: u8 = 5;
const KIND_DATA: u8 = 6;
const KIND_ZONED_ROUTE_UPDATE: u8 = 7;

/// Why a datagram was dropped. Malformed input is never an error for the node as a whole: it is
/// counted and discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    TooLong(usize),
    BadMagic(u8),
    UnsupportedVersion(u8),
    UnknownKind(u8),
    ReservedBitsSet,
    BadAddressFamily(u8),
    TooManyGossipEntries(u8),
    TooManyEntries(usize),
    UnknownOp(u8),
    InvalidCoordinate,
    EmptyTags,
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "datagram truncated"),
            Self::TooLong(n) => write!(f, "datagram of {n} bytes exceeds {MAX_DATAGRAM}"),
            Self::BadMagic(b) => write!(f, "bad magic byte {b:#04x}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Self::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            Self::ReservedBitsSet => write!(f, "reserved header bits set"),
            Self::BadAddressFamily(a) => write!(f, "bad address family {a}"),
            Self::TooManyGossipEntries(n) => write!(f, "{n} gossip entries exceed the limit"),
            Self::TooManyEntries(n) => write!(f, "{n} route entries exceed the limit"),
            Self::UnknownOp(op) => write!(f, "unknown operation {op}"),
            Self::InvalidCoordinate => write!(f, "coordinate out of range"),
            Self::EmptyTags => write!(f, "an empty tag filter"),
            Self::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// One decoded datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub sender: NodeId,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A latency probe; also serves as hello and keepalive.
    ProbeRequest(Probe),
    /// The answer to a probe, echoing its sequence number and timestamp.
    ProbeReply(Probe),
    /// Distances to destinations, sent to the nodes at the other end of routing links.
    RouteUpdate(RouteUpdate),
    /// Opens, accepts, refuses or closes a routing link.
    Link(LinkOp),
    SeqnoRequest(SeqnoRequest),
    /// A packet travelling through the overlay.
    Data(Data),
}

/// Cheap first-byte classification: could this datagram be a hopwise packet at all?
pub fn accepts(datagram: &[u8]) -> bool {
    datagram.first() == Some(&MAGIC)
}

/// Where a probe request's sequence number and timestamp sit in its datagram.
const PROBE_SEQ_AT: usize = HEADER_LEN;
const PROBE_TIMESTAMP_AT: usize = HEADER_LEN + 4;

/// The sequence number of a probe request, read without parsing the rest; `None` for any other
/// datagram.
pub fn probe_request_seq(datagram: &[u8]) -> Option<u32> {
    match datagram {
        [MAGIC, VERSION, KIND_PROBE_REQUEST, ..] => {
            let seq = datagram.get(PROBE_SEQ_AT..PROBE_TIMESTAMP_AT)?;
            Some(u32::from_be_bytes(seq.try_into().ok()?))
        }
        _ => None,
    }
}

/// Rewrites the timestamp of a probe request in place (a driver that held the request back
/// sends it with the time it really leaves); false if `datagram` is no probe request.
pub fn set_probe_request_timestamp(datagram: &mut [u8], timestamp_us: u64) -> bool {
    let is_request = probe_request_seq(datagram).is_some();
    match datagram.get_mut(PROBE_TIMESTAMP_AT..PROBE_TIMESTAMP_AT + 8) {
        Some(field) if is_request => {
            field.copy_from_slice(&timestamp_us.to_be_bytes());
            true
        }
        _ => false,
    }
}

impl Packet {
    pub fn parse(datagram: &[u8]) -> Result<Packet, DecodeError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong(datagram.len()));
        }
        let mut reader = codec::Reader::new(datagram);
        let [magic, version, kind, reserved] = reader.bytes::<4>()?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if reserved != 0 {
            return Err(DecodeError::ReservedBitsSet);
        }
        let sender = NodeId::from_bytes(reader.bytes()?);
        let message = match kind {
            KIND_PROBE_REQUEST => Message::ProbeRequest(Probe::parse(&mut reader)?),
            KIND_PROBE_REPLY => Message::ProbeReply(Probe::parse(&mut reader)?),
            KIND_ROUTE_UPDATE => Message::RouteUpdate(RouteUpdate::parse(&mut reader, false)?),
            KIND_ZONED_ROUTE_UPDATE => Message::RouteUpdate(RouteUpdate::parse(&mut reader, true)?),
            KIND_LINK => Message::Link(LinkOp::parse(&mut reader)?),
            KIND_SEQNO_REQUEST => Message::SeqnoRequest(SeqnoRequest::parse(&mut reader)?),
            KIND_DATA => Message::Data(Data::parse(&mut reader)?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        reader.finish()?;
        Ok(Packet { sender, message })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match &self.message {
                Message::ProbeRequest(probe) | Message::ProbeReply(probe) => probe.buffer_len(),
                Message::RouteUpdate(update) => update.buffer_len(),
                Message::Link(_) => 1,
                Message::SeqnoRequest(_) => SeqnoRequest::LEN,
                Message::Data(data) => data.buffer_len(),
            }
    }

    /// Appends the encoded packet to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(self.buffer_len());
        let kind = match &self.message {
            Message::ProbeRequest(_) => KIND_PROBE_REQUEST,
            Message::ProbeReply(_) => KIND_PROBE_REPLY,
            Message::RouteUpdate(update) if update.is_zoned() => KIND_ZONED_ROUTE_UPDATE,
            Message::RouteUpdate(_) => KIND_ROUTE_UPDATE,
            Message::Link(_) => KIND_LINK,
            Message::SeqnoRequest(_) => KIND_SEQNO_REQUEST,
            Message::Data(_) => KIND_DATA,
        };
        out.extend_from_slice(&[MAGIC, VERSION, kind, 0]);
        out.extend_from_slice(self.sender.as_bytes());
        match &self.message {
            Message::ProbeRequest(probe) | Message::ProbeReply(probe) => probe.emit(out),
            Message::RouteUpdate(update) => update.emit(out),
            Message::Link(op) => out.push(*op as u8),
            Message::SeqnoRequest(request) => request.emit(out),
            Message::Data(data) => data.emit(out),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len());
        self.emit(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_request_is_read_and_retimed_in_place() {
        let request = Packet {
            sender: NodeId::from_bytes([3; NodeId::LEN]),
            message: Message::ProbeRequest(Probe {
                seq: 77,
                timestamp_us: 5,
                coord: WireCoord {
                    x1: 1.0,
                    x2: 2.0,
                    height: 3.0,
                    error: 0.5,
                },
                gossip: Vec::new(),
                tags: crate::tags::TagFilter::NONE,
            }),
        };
        let mut bytes = request.to_bytes();
        assert_eq!(probe_request_seq(&bytes), Some(77));
        assert!(set_probe_request_timestamp(&mut bytes, 9_000));
        let Ok(Packet {
            message: Message::ProbeRequest(retimed),
            ..
        }) = Packet::parse(&bytes)
        else {
            panic!("still a probe request");
        };
        assert_eq!((retimed.seq, retimed.timestamp_us), (77, 9_000));
        let Message::ProbeRequest(probe) = request.message else {
            unreachable!()
        };
        let mut reply = Packet {
            sender: request.sender,
            message: Message::ProbeReply(probe),
        }
        .to_bytes();
        assert_eq!(probe_request_seq(&reply), None);
        assert!(!set_probe_request_timestamp(&mut reply, 1));
        assert!(!set_probe_request_timestamp(&mut bytes[..15], 1));
    }

    #[test]
    fn header_rejections() {
        let mut good = vec![MAGIC, VERSION, KIND_PROBE_REQUEST, 0];
        good.extend_from_slice(&[7; NodeId::LEN]);
        assert_eq!(Packet::parse(&good[..3]), Err(DecodeError::Truncated));
        let mut bad = good.clone();
        bad[0] = 0x00;
        assert_eq!(Packet::parse(&bad), Err(DecodeError::BadMagic(0)));
        let mut bad = good.clone();
        bad[1] = 9;
        assert_eq!(Packet::parse(&bad), Err(DecodeError::UnsupportedVersion(9)));
        let mut bad = good.clone();
        bad[2] = 77;
        assert_eq!(Packet::parse(&bad), Err(DecodeError::UnknownKind(77)));
        let mut bad = good.clone();
        bad[3] = 1;
        assert_eq!(Packet::parse(&bad), Err(DecodeError::ReservedBitsSet));
        // A probe body is missing after the header.
        assert_eq!(Packet::parse(&good), Err(DecodeError::Truncated));
        assert_eq!(
            Packet::parse(&vec![MAGIC; MAX_DATAGRAM + 1]),
            Err(DecodeError::TooLong(MAX_DATAGRAM + 1))
        );
        assert!(accepts(&good) && !accepts(&[]) && !accepts(&[0x16, 3, 1]));
    }
}
