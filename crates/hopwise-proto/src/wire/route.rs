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
//! SeqnoRequest body: destination NodeId (8), wanted sequence number (16 bits), hop limit (8 bits)
//! ```

use super::DecodeError;
use super::codec::Reader;
use crate::NodeId;
use crate::routing::{Metric, Seqno};

/// Entries per route update. 56 × 12 bytes plus the header and the count byte is 685 bytes, well
/// inside `MAX_DATAGRAM`; the bound dates from 20-byte entries and could rise to 98.
pub const MAX_ROUTE_ENTRIES: usize = 56;
const ENTRY_LEN: usize = NodeId::LEN + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    pub destination: NodeId,
    pub seqno: Seqno,
    pub metric: Metric,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    pub entries: Vec<RouteEntry>,
}

impl RouteUpdate {
    pub(super) fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = usize::from(reader.u8()?);
        if count > MAX_ROUTE_ENTRIES {
            return Err(DecodeError::TooManyEntries(count));
        }
        if reader.remaining() < count * ENTRY_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(RouteEntry {
                destination: NodeId::from_bytes(reader.bytes()?),
                seqno: Seqno(reader.u16()?),
                metric: Metric(reader.u16()?),
            });
        }
        Ok(Self { entries })
    }

    pub(super) fn buffer_len(&self) -> usize {
        1 + self.entries.len().min(MAX_ROUTE_ENTRIES) * ENTRY_LEN
    }

    /// Emits at most [`MAX_ROUTE_ENTRIES`]; callers split larger updates.
    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        debug_assert!(self.entries.len() <= MAX_ROUTE_ENTRIES);
        let entries = &self.entries[..self.entries.len().min(MAX_ROUTE_ENTRIES)];
        out.push(entries.len() as u8);
        for entry in entries {
            out.extend_from_slice(entry.destination.as_bytes());
            out.extend_from_slice(&entry.seqno.0.to_be_bytes());
            out.extend_from_slice(&entry.metric.0.to_be_bytes());
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
