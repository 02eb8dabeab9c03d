//! Routing messages: route updates, link control, sequence-number requests.
//!
//! ```text
//! RouteUpdate body:                       LinkControl body:
//! +---------------+-------------------+   +---------------+
//! | entry count   | entries ...       |   |      op       |  1 open, 2 accept, 3 refuse, 4 close
//! +---------------+-------------------+   +---------------+
//!
//! route entry (12 bytes):
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               destination NodeId (8 bytes)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        sequence number        |   metric (0.1 ms, 0xFFFF = ∞) |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! A zoned route update (its own message kind) carries 20-byte entries: the 12 above, then the
//! NodeId of the head of the destination's zone.
//!
//! SeqnoRequest body: destination NodeId (8), wanted sequence number (16 bits), hop limit (8 bits)
//! ```

use super::DecodeError;
use super::codec::Reader;
use crate::NodeId;
use crate::routing::{Metric, Seqno};

/// Entries per route update. 56 × 20 bytes (zoned) plus the header and the count byte is 1,133
/// bytes, inside `MAX_DATAGRAM`; flat 12-byte entries could fit 98, but one bound serves both.
pub const MAX_ROUTE_ENTRIES: usize = 56;
const ENTRY_LEN: usize = NodeId::LEN + 4;
const ZONED_ENTRY_LEN: usize = ENTRY_LEN + NodeId::LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    pub destination: NodeId,
    pub seqno: Seqno,
    pub metric: Metric,
    /// The head of the destination's zone, in zoned routing; `None` in flat routing.
    pub zone: Option<NodeId>,
}

/// Every entry of one update carries a zone, or none does: the two are different message kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    pub entries: Vec<RouteEntry>,
}

impl RouteUpdate {
    pub(super) fn parse(reader: &mut Reader<'_>, zoned: bool) -> Result<Self, DecodeError> {
        let count = usize::from(reader.u8()?);
        if count > MAX_ROUTE_ENTRIES {
            return Err(DecodeError::TooManyEntries(count));
        }
        let entry_len = if zoned { ZONED_ENTRY_LEN } else { ENTRY_LEN };
        if reader.remaining() < count * entry_len {
            return Err(DecodeError::Truncated);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(RouteEntry {
                destination: NodeId::from_bytes(reader.bytes()?),
                seqno: Seqno(reader.u16()?),
                metric: Metric(reader.u16()?),
                zone: if zoned {
                    Some(NodeId::from_bytes(reader.bytes()?))
                } else {
                    None
                },
            });
        }
        Ok(Self { entries })
    }

    /// Whether this update goes out as the zoned message kind.
    pub fn is_zoned(&self) -> bool {
        self.entries.first().is_some_and(|e| e.zone.is_some())
    }

    pub(super) fn buffer_len(&self) -> usize {
        let entry_len = if self.is_zoned() {
            ZONED_ENTRY_LEN
        } else {
            ENTRY_LEN
        };
        1 + self.entries.len().min(MAX_ROUTE_ENTRIES) * entry_len
    }

    /// Emits at most [`MAX_ROUTE_ENTRIES`]; callers split larger updates, and updates that mix
    /// zoned and flat entries.
    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        debug_assert!(self.entries.len() <= MAX_ROUTE_ENTRIES);
        let zoned = self.is_zoned();
        debug_assert!(self.entries.iter().all(|e| e.zone.is_some() == zoned));
        let entries = &self.entries[..self.entries.len().min(MAX_ROUTE_ENTRIES)];
        out.push(entries.len() as u8);
        for entry in entries {
            out.extend_from_slice(entry.destination.as_bytes());
            out.extend_from_slice(&entry.seqno.0.to_be_bytes());
            out.extend_from_slice(&entry.metric.0.to_be_bytes());
            if zoned {
                let zone = entry.zone.unwrap_or(entry.destination);
                out.extend_from_slice(zone.as_bytes());
            }
        }
    }
}

/// The life cycle of a routing link between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOp {
    /// "Exchange routes with me."
    Open = 1,
    Accept = 2,
    /// The receiver has no room for another link.
    Refuse = 3,
    /// The sender drops the link.
    Close = 4,
}

impl LinkOp {
    pub(super) fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            1 => Ok(Self::Open),
            2 => Ok(Self::Accept),
            3 => Ok(Self::Refuse),
            4 => Ok(Self::Close),
            other => Err(DecodeError::UnknownOp(other)),
        }
    }
}

/// Asks the destination for a newer sequence number, so a node left without a feasible route can
/// accept a new one (RFC 8966 §3.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqnoRequest {
    pub destination: NodeId,
    pub seqno: Seqno,
    pub hop_limit: u8,
}

impl SeqnoRequest {
    pub(super) const LEN: usize = NodeId::LEN + 3;

    pub(super) fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            destination: NodeId::from_bytes(reader.bytes()?),
            seqno: Seqno(reader.u16()?),
            hop_limit: reader.u8()?,
        })
    }

    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.destination.as_bytes());
        out.extend_from_slice(&self.seqno.0.to_be_bytes());
        out.push(self.hop_limit);
    }
}
