//! Overlay data packets, forwarded hop by hop towards their destination.
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 source NodeId (8 bytes)                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              destination NodeId (8 bytes)                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      TTL      |  hops so far  |     body kind  |  body ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! ping body: token (64 bits), origin timestamp µs (64 bits)
//! pong body: token (64 bits), origin timestamp µs (64 bits), hops the ping took (8 bits)
//! payload body: length (16 bits), then that many application bytes
//! ```
//!
//! The TTL is decremented by every relay; a packet whose TTL reaches zero is dropped and counted,
//! so a transient loop can never keep a packet alive.

use super::DecodeError;
use super::codec::Reader;
use crate::NodeId;

/// TTL a source gives every packet: far above any useful path length.
pub const INITIAL_TTL: u8 = 32;

/// The largest application payload one data packet carries.
pub const MAX_PAYLOAD: usize = super::MAX_DATAGRAM - super::HEADER_LEN - 2 * NodeId::LEN - 3 - 2;

const BODY_PING: u8 = 1;
const BODY_PONG: u8 = 2;
const BODY_PAYLOAD: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub source: NodeId,
    pub destination: NodeId,
    pub ttl: u8,
    pub hops: u8,
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
    Payload(Vec<u8>),
}

impl Data {
    pub(super) fn parse(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let source = NodeId::from_bytes(reader.bytes()?);
        let destination = NodeId::from_bytes(reader.bytes()?);
        let ttl = reader.u8()?;
        let hops = reader.u8()?;
        let body = match reader.u8()? {
            BODY_PING => DataBody::Ping {
                token: reader.u64()?,
                sent_us: reader.u64()?,
            },
            BODY_PONG => DataBody::Pong {
                token: reader.u64()?,
                sent_us: reader.u64()?,
                ping_hops: reader.u8()?,
            },
            // The length makes a truncated datagram fail instead of delivering a shorter payload;
            // it is bounded by the datagram, which the header check capped at MAX_DATAGRAM.
            BODY_PAYLOAD => {
                let len = usize::from(reader.u16()?);
                DataBody::Payload(reader.slice(len)?.to_vec())
            }
            other => return Err(DecodeError::UnknownOp(other)),
        };
        Ok(Self {
            source,
            destination,
            ttl,
            hops,
            body,
        })
    }

    pub(super) fn buffer_len(&self) -> usize {
        2 * NodeId::LEN
            + 3
            + match &self.body {
                DataBody::Ping { .. } => 16,
                DataBody::Pong { .. } => 17,
                DataBody::Payload(bytes) => 2 + bytes.len(),
            }
    }

    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.source.as_bytes());
        out.extend_from_slice(self.destination.as_bytes());
        out.push(self.ttl);
        out.push(self.hops);
        match &self.body {
            DataBody::Ping { token, sent_us } => {
                out.push(BODY_PING);
                out.extend_from_slice(&token.to_be_bytes());
                out.extend_from_slice(&sent_us.to_be_bytes());
            }
            DataBody::Pong {
                token,
                sent_us,
                ping_hops,
            } => {
                out.push(BODY_PONG);
                out.extend_from_slice(&token.to_be_bytes());
                out.extend_from_slice(&sent_us.to_be_bytes());
                out.push(*ping_hops);
            }
            DataBody::Payload(bytes) => {
                debug_assert!(bytes.len() <= MAX_PAYLOAD);
                out.push(BODY_PAYLOAD);
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
}
