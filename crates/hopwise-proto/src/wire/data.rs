//! Overlay data packets, forwarded hop by hop towards their destination.
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 source NodeId (8 bytes)                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              destination NodeId (8 bytes)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      TTL      |  hops so far  |Z| body kind   |  [zones]  body ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! zones (present when Z is set): source's zone head, destination's zone head (8 bytes each;
//!     all zeros: not known)
//! ping body: token (64 bits), origin timestamp µs (64 bits)
//! pong body: token (64 bits), origin timestamp µs (64 bits), hops the ping took (8 bits)
//! payload body: length (16 bits), then that many application bytes
//! sealed body: the same, carrying an end-to-end sealed datagram (see `e2e`)
//! register body: the source's zone head (8 bytes)
//! lookup body: the NodeId whose zone is wanted (8 bytes)
//! lookup reply body: that NodeId, its zone head (8 bytes each; zeros: not registered)
//! trace body: token (64 bits), origin timestamp µs (64 bits), hops on the way out (8 bits;
//!     0xff while still on the way out), hop count (8 bits), then per hop: the NodeId that
//!     forwarded it and its measured RTT to the next hop in µs (32 bits)
//! ```
//!
//! A trace is a ping that records its path: every node that forwards it appends itself, so the
//! origin learns each hop and its latency (`hopwise ping` and `hopwise trace`). A full trace
//! stops recording but still travels.
//!
//! Zones matter in zoned routing only (see `routing::zones`): a node keeps exact routes within
//! its zone, and reaches any other node through the head of that node's zone.
//!
//! The TTL is decremented by every relay; a packet whose TTL reaches zero is dropped and counted,
//! so a transient loop can never keep a packet alive.

use super::DecodeError;
use super::codec::Reader;
use crate::NodeId;

/// TTL a source gives every packet: far above any useful path length.
pub const INITIAL_TTL: u8 = 32;

/// Bytes a data packet adds to its payload.
const DATA_OVERHEAD: usize = super::HEADER_LEN + 4 * NodeId::LEN + 3 + 2;
/// The largest application payload one data packet carries (in a datagram of
/// [`super::MAX_DATAGRAM`]).
pub const MAX_PAYLOAD: usize = payload_for_datagram(super::MAX_DATAGRAM);
/// The payload of a datagram of [`super::BASE_DATAGRAM`], which every node carries.
pub const BASE_PAYLOAD: usize = payload_for_datagram(super::BASE_DATAGRAM);

/// The largest payload of a data packet in a datagram of `datagram` bytes.
#[must_use]
pub const fn payload_for_datagram(datagram: usize) -> usize {
    datagram.saturating_sub(DATA_OVERHEAD)
}

const BODY_PING: u8 = 1;
const BODY_PONG: u8 = 2;
const BODY_PAYLOAD: u8 = 3;
const BODY_REGISTER: u8 = 4;
const BODY_LOOKUP: u8 = 5;
const BODY_LOOKUP_REPLY: u8 = 6;
const BODY_TRACE: u8 = 7;
const BODY_SEALED: u8 = 8;
/// `Trace::outbound` while the trace has not reached its destination.
const TRACE_OUTBOUND: u8 = 0xff;
/// Hops a trace records, both ways together.
pub const MAX_TRACE_HOPS: usize = 32;
const TRACE_HOP_LEN: usize = NodeId::LEN + 4;
/// Set in the body-kind byte when the zones follow.
const ZONES_PRESENT: u8 = 0x80;
/// The wire form of "no zone known". No node has the all-zero id (ids are hashes of keys).
const NO_ZONE: NodeId = NodeId::from_bytes([0; NodeId::LEN]);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub source: NodeId,
    pub destination: NodeId,
    pub ttl: u8,
    pub hops: u8,
    /// Zone heads of the source and the destination, where known (zoned routing only).
    pub source_zone: Option<NodeId>,
    pub destination_zone: Option<NodeId>,
    pub body: DataBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataBody {
    /// An overlay echo request; the destination answers with a pong through its own routes.
    Ping {
        token: u64,
        sent_us: u64,
    },
    Pong {
        token: u64,
        sent_us: u64,
        ping_hops: u8,
    },
    /// Application bytes as the source handed them over: not authenticated end to end, so a
    /// member relay could alter them or the source id (the simulator's flows use them).
    Payload(Vec<u8>),
    /// An end-to-end sealed datagram (`e2e`): opaque to the overlay, authenticated by the
    /// receiving end.
    Sealed(Vec<u8>),
    /// "My zone is headed by this node": sent to the directory node for the source.
    Register {
        zone: NodeId,
    },
    /// "Which zone is `target` in?", sent to the directory node for `target`.
    Lookup {
        target: NodeId,
    },
    LookupReply {
        target: NodeId,
        zone: Option<NodeId>,
    },
    Trace(Trace),
}

/// A ping that records every node that forwarded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub token: u64,
    pub sent_us: u64,
    /// Hops recorded on the way out, once the destination has answered; `None` on the way out.
    pub outbound: Option<u8>,
    pub path: Vec<TraceHop>,
}

/// One forwarding node of a trace and the round trip it measured to the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHop {
    pub node: NodeId,
    pub rtt_us: u32,
}

impl Trace {
    /// Appends a hop unless the trace is full.
    pub fn record(&mut self, node: NodeId, rtt_ms: f64) {
        if self.path.len() < MAX_TRACE_HOPS {
            let rtt_us = (rtt_ms * 1000.0).clamp(0.0, f64::from(u32::MAX)) as u32;
            self.path.push(TraceHop { node, rtt_us });
        }
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let token = reader.u64()?;
        let sent_us = reader.u64()?;
        let outbound = Some(reader.u8()?).filter(|n| *n != TRACE_OUTBOUND);
        let count = usize::from(reader.u8()?);
        if count > MAX_TRACE_HOPS {
            return Err(DecodeError::TooManyEntries(count));
        }
        let path = (0..count)
            .map(|_| {
                Ok(TraceHop {
                    node: NodeId::from_bytes(reader.bytes()?),
                    rtt_us: reader.u32()?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Self {
            token,
            sent_us,
            outbound,
            path,
        })
    }

    fn buffer_len(&self) -> usize {
        18 + self.path.len() * TRACE_HOP_LEN
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.token.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.push(self.outbound.unwrap_or(TRACE_OUTBOUND));
        out.push(self.path.len() as u8);
        for hop in &self.path {
            out.extend_from_slice(hop.node.as_bytes());
            out.extend_from_slice(&hop.rtt_us.to_be_bytes());
        }
    }
}

impl DataBody {
    /// Zone registrations and lookups: control traffic of zoned routing, not user data.
    pub fn is_directory(&self) -> bool {
        matches!(
            self,
            Self::Register { .. } | Self::Lookup { .. } | Self::LookupReply { .. }
        )
    }
}

/// A length-prefixed byte string. The length makes a truncated datagram fail instead of
/// delivering shorter bytes; it is bounded by the datagram, which the header check capped at
/// `MAX_DATAGRAM`.
fn read_bytes(reader: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = usize::from(reader.u16()?);
    Ok(reader.slice(len)?.to_vec())
}

/// What a relay reads of a data packet that carries application bytes (a payload or an end-to-end
/// sealed datagram, nearly all the data a relay forwards), found without copying the body: the
/// relay's fast path forwards such a packet as it arrived, rewritten in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHeader {
    /// The hop it came from.
    pub sender: NodeId,
    pub source: NodeId,
    pub destination: NodeId,
    pub ttl: u8,
    pub source_zone: Option<NodeId>,
    pub destination_zone: Option<NodeId>,
}

/// Where a data packet's TTL and hop count are.
const TTL_AT: usize = super::HEADER_LEN + 2 * NodeId::LEN;
const HOPS_AT: usize = TTL_AT + 1;

impl RelayHeader {
    /// The header of `datagram` if it is a data packet with a payload or sealed body that the
    /// full decoder ([`super::Packet::parse`]) accepts; `None` for anything else, which takes
    /// the decoder's path.
    pub fn peek(datagram: &[u8]) -> Option<Self> {
        if datagram.len() > super::MAX_DATAGRAM {
            return None;
        }
        let mut reader = Reader::new(datagram);
        if reader.bytes::<4>().ok()? != [super::MAGIC, super::VERSION, super::KIND_DATA, 0] {
            return None;
        }
        let sender = NodeId::from_bytes(reader.bytes().ok()?);
        let source = NodeId::from_bytes(reader.bytes().ok()?);
        let destination = NodeId::from_bytes(reader.bytes().ok()?);
        let ttl = reader.u8().ok()?;
        let _hops = reader.u8().ok()?;
        let kind = reader.u8().ok()?;
        let (source_zone, destination_zone) = if kind & ZONES_PRESENT != 0 {
            let source = zone_from_wire(NodeId::from_bytes(reader.bytes().ok()?));
            (
                source,
                zone_from_wire(NodeId::from_bytes(reader.bytes().ok()?)),
            )
        } else {
            (None, None)
        };
        if !matches!(kind & !ZONES_PRESENT, BODY_PAYLOAD | BODY_SEALED) {
            return None;
        }
        let len = usize::from(reader.u16().ok()?);
        (reader.remaining() == len).then_some(Self {
            sender,
            source,
            destination,
            ttl,
            source_zone,
            destination_zone,
        })
    }
}

/// Readies a packet [`RelayHeader::peek`] accepted for its next hop, in place: sent by `relay`,
/// its TTL one less and its hop count one more, as a relay that decoded and encoded it would.
pub fn rewrite_for_next_hop(datagram: &mut [u8], relay: NodeId) {
    datagram[4..super::HEADER_LEN].copy_from_slice(relay.as_bytes());
    datagram[TTL_AT] = datagram[TTL_AT].saturating_sub(1);
    datagram[HOPS_AT] = datagram[HOPS_AT].saturating_add(1);
}

fn zone_from_wire(id: NodeId) -> Option<NodeId> {
    (id != NO_ZONE).then_some(id)
}

impl Data {
    pub(super) fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let source = NodeId::from_bytes(reader.bytes()?);
        let destination = NodeId::from_bytes(reader.bytes()?);
        let ttl = reader.u8()?;
        let hops = reader.u8()?;
        let kind = reader.u8()?;
        let (source_zone, destination_zone) = if kind & ZONES_PRESENT != 0 {
            let source = zone_from_wire(NodeId::from_bytes(reader.bytes()?));
            (source, zone_from_wire(NodeId::from_bytes(reader.bytes()?)))
        } else {
            (None, None)
        };
        let body = match kind & !ZONES_PRESENT {
            BODY_PING => DataBody::Ping {
                token: reader.u64()?,
                sent_us: reader.u64()?,
            },
            BODY_PONG => DataBody::Pong {
                token: reader.u64()?,
                sent_us: reader.u64()?,
                ping_hops: reader.u8()?,
            },
            BODY_PAYLOAD => DataBody::Payload(read_bytes(reader)?),
            BODY_SEALED => DataBody::Sealed(read_bytes(reader)?),
            BODY_REGISTER => DataBody::Register {
                zone: NodeId::from_bytes(reader.bytes()?),
            },
            BODY_LOOKUP => DataBody::Lookup {
                target: NodeId::from_bytes(reader.bytes()?),
            },
            BODY_LOOKUP_REPLY => DataBody::LookupReply {
                target: NodeId::from_bytes(reader.bytes()?),
                zone: zone_from_wire(NodeId::from_bytes(reader.bytes()?)),
            },
            BODY_TRACE => DataBody::Trace(Trace::parse(reader)?),
            other => return Err(DecodeError::UnknownOp(other)),
        };
        Ok(Self {
            source,
            destination,
            ttl,
            hops,
            source_zone,
            destination_zone,
            body,
        })
    }

    fn has_zones(&self) -> bool {
        self.source_zone.is_some() || self.destination_zone.is_some()
    }

    pub(super) fn buffer_len(&self) -> usize {
        2 * NodeId::LEN
            + 3
            + if self.has_zones() { 2 * NodeId::LEN } else { 0 }
            + match &self.body {
                DataBody::Ping { .. } => 16,
                DataBody::Pong { .. } => 17,
                DataBody::Payload(bytes) | DataBody::Sealed(bytes) => 2 + bytes.len(),
                DataBody::Register { .. } | DataBody::Lookup { .. } => NodeId::LEN,
                DataBody::LookupReply { .. } => 2 * NodeId::LEN,
                DataBody::Trace(trace) => trace.buffer_len(),
            }
    }

    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.source.as_bytes());
        out.extend_from_slice(self.destination.as_bytes());
        out.push(self.ttl);
        out.push(self.hops);
        let kind = match &self.body {
            DataBody::Ping { .. } => BODY_PING,
            DataBody::Pong { .. } => BODY_PONG,
            DataBody::Payload(_) => BODY_PAYLOAD,
            DataBody::Sealed(_) => BODY_SEALED,
            DataBody::Register { .. } => BODY_REGISTER,
            DataBody::Lookup { .. } => BODY_LOOKUP,
            DataBody::LookupReply { .. } => BODY_LOOKUP_REPLY,
            DataBody::Trace(_) => BODY_TRACE,
        };
        if self.has_zones() {
            out.push(kind | ZONES_PRESENT);
            out.extend_from_slice(self.source_zone.unwrap_or(NO_ZONE).as_bytes());
            out.extend_from_slice(self.destination_zone.unwrap_or(NO_ZONE).as_bytes());
        } else {
            out.push(kind);
        }
        match &self.body {
            DataBody::Ping { token, sent_us } => {
                out.extend_from_slice(&token.to_be_bytes());
                out.extend_from_slice(&sent_us.to_be_bytes());
            }
            DataBody::Pong {
                token,
                sent_us,
                ping_hops,
            } => {
                out.extend_from_slice(&token.to_be_bytes());
                out.extend_from_slice(&sent_us.to_be_bytes());
                out.push(*ping_hops);
            }
            DataBody::Payload(bytes) | DataBody::Sealed(bytes) => {
                debug_assert!(bytes.len() <= MAX_PAYLOAD);
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            DataBody::Register { zone } => out.extend_from_slice(zone.as_bytes()),
            DataBody::Lookup { target } => out.extend_from_slice(target.as_bytes()),
            DataBody::LookupReply { target, zone } => {
                out.extend_from_slice(target.as_bytes());
                out.extend_from_slice(zone.unwrap_or(NO_ZONE).as_bytes());
            }
            DataBody::Trace(trace) => trace.emit(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Message, Packet};
    use super::*;

    #[test]
    fn a_sealed_body_on_the_wire() {
        let packet = Packet {
            sender: NodeId::from_bytes([1; 8]),
            message: Message::Data(Data {
                source: NodeId::from_bytes([2; 8]),
                destination: NodeId::from_bytes([3; 8]),
                ttl: 32,
                hops: 1,
                source_zone: None,
                destination_zone: None,
                body: DataBody::Sealed(vec![0xaa, 0xbb]),
            }),
        };
        let bytes = packet.to_bytes();
        let mut expected = vec![0x68, 1, 6, 0];
        expected.extend([1; 8]);
        expected.extend([2; 8]);
        expected.extend([3; 8]);
        expected.extend([32, 1, BODY_SEALED, 0, 2, 0xaa, 0xbb]);
        assert_eq!(bytes, expected);
        assert_eq!(Packet::parse(&bytes), Ok(packet));
        // A length beyond the datagram is truncation, never a shorter body.
        let mut short = expected.clone();
        short[HEADER_BODY_LEN_AT] = 3;
        assert!(Packet::parse(&short).is_err());
    }

    /// The low byte of the sealed body's length in the datagram above.
    const HEADER_BODY_LEN_AT: usize = super::super::HEADER_LEN + 2 * NodeId::LEN + 4;
}
