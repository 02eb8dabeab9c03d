//! The probe body, shared by requests and replies:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        sequence number                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               timestamp, µs on the requester's clock          |
//! +                (a reply echoes the request's value)           +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        sender coordinate: x1, x2, height, error (4 x f32)     |
//! +                           16 bytes                            +
//! |                              ...                              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |T|gossip count |  gossip entries (count x entry) ...           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      [sender's tag filter (64 bits), present when T is set]   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! gossip entry:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      NodeId (8 bytes)                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |T| family 4/6  | IPv4 (4) or IPv6 (16) address | port (16)     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             coordinate: x1, x2, height, error (4 x f32)       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |       [tag filter (64 bits), present when T is set]           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Tag filters (see `tags`) cost nothing for untagged nodes.
//!
//! Coordinates are milliseconds. Non-finite or out-of-range values are rejected at decode time so
//! a bad peer cannot poison anyone's coordinate with NaN.

use std::net::SocketAddr;

use super::DecodeError;
use super::codec::{Reader, put_socket_addr, socket_addr_len};
use crate::NodeId;
use crate::tags::TagFilter;

/// At most this many gossip entries ride on one probe; decoding rejects more.
pub const MAX_GOSSIP: usize = 8;

/// Largest magnitude accepted for a coordinate component, in milliseconds (well beyond any
/// terrestrial round trip).
const MAX_COMPONENT_MS: f32 = 100_000.0;
/// Largest accepted error estimate (the estimator itself clamps far below this).
const MAX_ERROR: f32 = 100.0;

const COORD_LEN: usize = 16;
const TAGS_LEN: usize = 8;
/// Set in a gossip entry's family byte when a tag filter follows the entry, and in the gossip
/// count when the sender's own filter follows the entries.
const TAGGED: u8 = 0x80;

/// A coordinate as carried on the wire, with the sender's error estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireCoord {
    pub x1: f32,
    pub x2: f32,
    pub height: f32,
    pub error: f32,
}

impl WireCoord {
    fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let coord = Self {
            x1: reader.f32()?,
            x2: reader.f32()?,
            height: reader.f32()?,
            error: reader.f32()?,
        };
        let component_ok = |v: f32| v.is_finite() && v.abs() <= MAX_COMPONENT_MS;
        let valid = component_ok(coord.x1)
            && component_ok(coord.x2)
            && component_ok(coord.height)
            && coord.height >= 0.0
            && coord.error.is_finite()
            && (0.0..=MAX_ERROR).contains(&coord.error);
        if valid {
            Ok(coord)
        } else {
            Err(DecodeError::InvalidCoordinate)
        }
    }

    fn emit(&self, out: &mut Vec<u8>) {
        for v in [self.x1, self.x2, self.height, self.error] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// A node the sender knows about, passed on so that everyone learns the overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipEntry {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub coord: WireCoord,
    pub tags: TagFilter,
}

impl GossipEntry {
    fn buffer_len(&self) -> usize {
        NodeId::LEN + socket_addr_len(&self.addr) + COORD_LEN + tags_len(self.tags)
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = NodeId::from_bytes(reader.bytes()?);
        let family = reader.u8()?;
        let addr = reader.socket_addr_of_family(family & !TAGGED)?;
        let coord = WireCoord::parse(reader)?;
        let tags = if family & TAGGED != 0 {
            read_tags(reader)?
        } else {
            TagFilter::NONE
        };
        Ok(Self {
            id,
            addr,
            coord,
            tags,
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        let start = out.len();
        put_socket_addr(out, &self.addr);
        self.coord.emit(out);
        if !self.tags.is_empty() {
            out[start] |= TAGGED;
            out.extend_from_slice(&self.tags.0.to_be_bytes());
        }
    }
}

/// A present filter is never empty: one encoding per probe.
fn read_tags(reader: &mut Reader<'_>) -> Result<TagFilter, DecodeError> {
    match reader.u64()? {
        0 => Err(DecodeError::EmptyTags),
        bits => Ok(TagFilter(bits)),
    }
}

fn tags_len(tags: TagFilter) -> usize {
    if tags.is_empty() { 0 } else { TAGS_LEN }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub seq: u32,
    pub timestamp_us: u64,
    pub coord: WireCoord,
    pub gossip: Vec<GossipEntry>,
    /// The sender's own tags.
    pub tags: TagFilter,
}

impl Probe {
    pub(super) fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let seq = reader.u32()?;
        let timestamp_us = reader.u64()?;
        let coord = WireCoord::parse(reader)?;
        let count_byte = reader.u8()?;
        let count = count_byte & !TAGGED;
        if usize::from(count) > MAX_GOSSIP {
            return Err(DecodeError::TooManyGossipEntries(count));
        }
        // The smallest entry is an IPv4 one; refuse to allocate for entries that cannot be there.
        let min_entry = NodeId::LEN + 7 + COORD_LEN;
        if reader.remaining() < usize::from(count) * min_entry {
            return Err(DecodeError::Truncated);
        }
        let mut gossip = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            gossip.push(GossipEntry::parse(reader)?);
        }
        let tags = if count_byte & TAGGED != 0 {
            read_tags(reader)?
        } else {
            TagFilter::NONE
        };
        Ok(Self {
            seq,
            timestamp_us,
            coord,
            gossip,
            tags,
        })
    }

    pub(super) fn buffer_len(&self) -> usize {
        4 + 8
            + COORD_LEN
            + 1
            + self
                .gossip
                .iter()
                .map(GossipEntry::buffer_len)
                .sum::<usize>()
            + tags_len(self.tags)
    }

    /// Emits at most [`MAX_GOSSIP`] entries; callers never build more.
    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        debug_assert!(self.gossip.len() <= MAX_GOSSIP);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp_us.to_be_bytes());
        self.coord.emit(out);
        let entries = &self.gossip[..self.gossip.len().min(MAX_GOSSIP)];
        let tagged = if self.tags.is_empty() { 0 } else { TAGGED };
        out.push(entries.len() as u8 | tagged);
        for entry in entries {
            entry.emit(out);
        }
        if !self.tags.is_empty() {
            out.extend_from_slice(&self.tags.0.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Message, Packet};
    use super::*;

    fn sample() -> Packet {
        Packet {
            sender: NodeId::from_bytes([0x11; NodeId::LEN]),
            message: Message::ProbeReply(Probe {
                seq: 0x0102_0304,
                timestamp_us: 0x0000_0000_0000_1388,
                coord: WireCoord {
                    x1: 1.0,
                    x2: -2.0,
                    height: 0.5,
                    error: 0.25,
                },
                gossip: vec![GossipEntry {
                    id: NodeId::from_bytes([0x22; NodeId::LEN]),
                    addr: "10.0.0.7:7000".parse().unwrap(),
                    coord: WireCoord {
                        x1: 0.0,
                        x2: 0.0,
                        height: 2.0,
                        error: 1.0,
                    },
                    tags: TagFilter::NONE,
                }],
                tags: TagFilter::NONE,
            }),
        }
    }

    #[rustfmt::skip]
    const SAMPLE_BYTES: &[u8] = &[
        0x68, 0x01, 0x02, 0x00,                         // magic, version, kind = reply, reserved
        0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // sender
        0x01, 0x02, 0x03, 0x04,                         // seq
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x13, 0x88, // timestamp 5000 µs
        0x3f, 0x80, 0x00, 0x00,                         // x1 = 1.0
        0xc0, 0x00, 0x00, 0x00,                         // x2 = -2.0
        0x3f, 0x00, 0x00, 0x00,                         // height = 0.5
        0x3e, 0x80, 0x00, 0x00,                         // error = 0.25
        0x01,                                           // one gossip entry
        0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, // its id
        0x04, 0x0a, 0x00, 0x00, 0x07, 0x1b, 0x58,       // IPv4 10.0.0.7 port 7000
        0x00, 0x00, 0x00, 0x00,                         // x1 = 0
        0x00, 0x00, 0x00, 0x00,                         // x2 = 0
        0x40, 0x00, 0x00, 0x00,                         // height = 2.0
        0x3f, 0x80, 0x00, 0x00,                         // error = 1.0
    ];

    #[test]
    fn emits_the_documented_layout() {
        let packet = sample();
        assert_eq!(packet.to_bytes(), SAMPLE_BYTES);
        assert_eq!(packet.buffer_len(), SAMPLE_BYTES.len());
    }

    #[test]
    fn parses_the_documented_layout() {
        assert_eq!(Packet::parse(SAMPLE_BYTES), Ok(sample()));
    }

    #[test]
    fn ipv6_entries_round_trip() {
        let mut packet = sample();
        let Message::ProbeReply(probe) = &mut packet.message else {
            unreachable!()
        };
        probe.gossip[0].addr = "[2001:db8::1]:443".parse().unwrap();
        let bytes = packet.to_bytes();
        assert_eq!(bytes.len(), SAMPLE_BYTES.len() + 12);
        assert_eq!(Packet::parse(&bytes), Ok(packet));
    }

    #[test]
    fn tag_filters_ride_only_when_present() {
        let mut packet = sample();
        let Message::ProbeReply(probe) = &mut packet.message else {
            unreachable!()
        };
        probe.tags = TagFilter(0x0102_0304_0506_0708);
        probe.gossip[0].tags = TagFilter(0xff00_0000_0000_0001);
        let bytes = packet.to_bytes();
        assert_eq!(bytes.len(), SAMPLE_BYTES.len() + 16);
        assert_eq!(bytes[40], 0x81, "the tagged bit on the gossip count");
        assert_eq!(bytes[49], 0x84, "the tagged bit on the entry's family");
        assert_eq!(&bytes[bytes.len() - 8..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Packet::parse(&bytes), Ok(packet));
    }

    #[test]
    fn rejects_bad_bodies() {
        let mut nan = SAMPLE_BYTES.to_vec();
        nan[24..28].copy_from_slice(&f32::NAN.to_be_bytes());
        assert_eq!(Packet::parse(&nan), Err(DecodeError::InvalidCoordinate));

        let mut negative_height = SAMPLE_BYTES.to_vec();
        negative_height[32..36].copy_from_slice(&(-1.0f32).to_be_bytes());
        assert_eq!(
            Packet::parse(&negative_height),
            Err(DecodeError::InvalidCoordinate)
        );

        let mut too_many = SAMPLE_BYTES.to_vec();
        too_many[40] = 9;
        assert_eq!(
            Packet::parse(&too_many),
            Err(DecodeError::TooManyGossipEntries(9))
        );

        let mut claims_more = SAMPLE_BYTES.to_vec();
        claims_more[40] = 2;
        assert_eq!(Packet::parse(&claims_more), Err(DecodeError::Truncated));

        let mut bad_family = SAMPLE_BYTES.to_vec();
        bad_family[49] = 5;
        assert_eq!(
            Packet::parse(&bad_family),
            Err(DecodeError::BadAddressFamily(5))
        );

        let mut trailing = SAMPLE_BYTES.to_vec();
        trailing.push(0);
        assert_eq!(Packet::parse(&trailing), Err(DecodeError::TrailingBytes(1)));

        for len in 0..SAMPLE_BYTES.len() {
            assert!(
                Packet::parse(&SAMPLE_BYTES[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }
}
