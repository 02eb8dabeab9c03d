//! End-to-end datagrams, which the overlay carries as opaque sealed bodies
//! ([`crate::wire::DataBody::Sealed`]). The first byte says what follows:
//!
//! ```text
//! 1 init      initiator index (32 bits), Noise XX message 1: e (32 bytes), then an
//!             optional early plaintext in the clear (bound to the handshake's hash)
//! 2 response  initiator index (32 bits), responder index (32 bits),
//!             Noise message 2: e, ee, s, es (80 bytes), then the sealed early answer
//!             (16-byte tag; empty when there is none)
//! 3 finish    responder index (32 bits), Noise message 3: s, se (48 bytes), then the sealed
//!             first payload (16-byte tag)
//! 4 data      counter (64 bits), then the AES-256-GCM-sealed payload (16-byte tag);
//!             the counter is the nonce
//!
//! payload (after opening): source port (16 bits), destination port (16 bits), bytes.
//!     An empty payload carries nothing: it acknowledges a finished handshake.
//! ```
//!
//! The indices pair the three handshake messages of one handshake: each end picks its own at
//! random, so a message for a handshake that is over, or for another one, is told apart without
//! any cryptography. All integers are big-endian.

use crate::wire::{BASE_PAYLOAD, MAX_PAYLOAD};

const TYPE_INIT: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const TYPE_FINISH: u8 = 3;
const TYPE_DATA: u8 = 4;

pub(super) const KEY_LEN: usize = 32;
pub(super) const TAG_LEN: usize = 16;
pub(super) const INIT_MESSAGE_LEN: usize = KEY_LEN;
pub(super) const RESPONSE_MESSAGE_LEN: usize = 2 * KEY_LEN + 2 * TAG_LEN;
/// The finish message before its payload: the sealed static key and the payload's tag.
pub(super) const FINISH_MESSAGE_MIN: usize = KEY_LEN + 2 * TAG_LEN;
const INIT_LEN: usize = 1 + 4 + INIT_MESSAGE_LEN;
const RESPONSE_LEN: usize = 1 + 8 + RESPONSE_MESSAGE_LEN;
const FINISH_HEADER_LEN: usize = 1 + 4;
const DATA_HEADER_LEN: usize = 1 + 8;
const PORTS_LEN: usize = 4;

/// Bytes a data datagram adds to the application bytes it carries: type, counter, tag and the
/// two ports.
pub const OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN + PORTS_LEN;
/// The largest application datagram one end-to-end datagram carries, on a node whose path
/// carries the overlay's largest datagrams ([`crate::wire::MAX_DATAGRAM`]).
pub const MAX_DATA: usize = MAX_PAYLOAD - OVERHEAD;
/// What every node carries ([`crate::wire::BASE_DATAGRAM`]): the size services that split
/// their messages keep to.
pub const BASE_DATA: usize = BASE_PAYLOAD - OVERHEAD;
/// The largest first plaintext (ports and bytes) a finish message carries; a larger one
/// follows it as data. Handshake messages keep to the base size, which every path carries.
pub(super) const MAX_FINISH_PLAIN: usize = BASE_PAYLOAD - FINISH_HEADER_LEN - FINISH_MESSAGE_MIN;
/// The largest early plaintext an init carries, and the largest early answer a response does.
pub(super) const MAX_INIT_PLAIN: usize = BASE_PAYLOAD - INIT_LEN;
pub(super) const MAX_RESPONSE_PLAIN: usize = BASE_PAYLOAD - RESPONSE_LEN;

/// A service port: which service on the destination node a datagram is for, and which one on
/// the source node sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

impl From<u16> for Port {
    fn from(port: u16) -> Self {
        Self(port)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A parsed end-to-end datagram; the byte slices point into the received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Datagram<'a> {
    Init {
        initiator: u32,
        message: &'a [u8],
    },
    Response {
        initiator: u32,
        responder: u32,
        message: &'a [u8],
    },
    Finish {
        responder: u32,
        message: &'a [u8],
    },
    Data {
        counter: u64,
        sealed: &'a [u8],
    },
}

/// Why bytes are not an end-to-end datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl<'a> Datagram<'a> {
    /// Classifies and splits `bytes` without any cryptography; never panics.
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, Malformed> {
        match bytes.first() {
            Some(&TYPE_INIT) if (INIT_LEN..=MAX_PAYLOAD).contains(&bytes.len()) => Ok(Self::Init {
                initiator: u32_at(bytes, 1),
                message: &bytes[5..],
            }),
            Some(&TYPE_RESPONSE) if (RESPONSE_LEN..=MAX_PAYLOAD).contains(&bytes.len()) => {
                Ok(Self::Response {
                    initiator: u32_at(bytes, 1),
                    responder: u32_at(bytes, 5),
                    message: &bytes[9..],
                })
            }
            Some(&TYPE_FINISH) if bytes.len() >= FINISH_HEADER_LEN + FINISH_MESSAGE_MIN => {
                Ok(Self::Finish {
                    responder: u32_at(bytes, 1),
                    message: &bytes[FINISH_HEADER_LEN..],
                })
            }
            Some(&TYPE_DATA) if bytes.len() >= DATA_HEADER_LEN + TAG_LEN => Ok(Self::Data {
                counter: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
                sealed: &bytes[DATA_HEADER_LEN..],
            }),
            _ => Err(Malformed),
        }
    }
}

/// An init datagram around Noise message 1 (and its early plaintext).
pub(super) fn init(initiator: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(TYPE_INIT);
    out.extend_from_slice(&initiator.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A response datagram around Noise message 2 (and its sealed early answer).
pub(super) fn response(initiator: u32, responder: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(TYPE_RESPONSE);
    out.extend_from_slice(&initiator.to_be_bytes());
    out.extend_from_slice(&responder.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A finish datagram: the header, with room for Noise message 3 behind it. Returns the buffer
/// and where the message starts.
pub(super) fn finish_buffer(responder: u32, message_len: usize) -> (Vec<u8>, usize) {
    let mut out = vec![0; FINISH_HEADER_LEN + message_len];
    out[0] = TYPE_FINISH;
    out[1..5].copy_from_slice(&responder.to_be_bytes());
    (out, FINISH_HEADER_LEN)
}

/// A data datagram: the header, with room for a sealed plaintext of `plain_len` bytes. Returns
/// the buffer and where the sealed part starts.
pub(super) fn data_buffer(counter: u64, plain_len: usize) -> (Vec<u8>, usize) {
    let mut out = vec![0; DATA_HEADER_LEN + plain_len + TAG_LEN];
    out[0] = TYPE_DATA;
    out[1..9].copy_from_slice(&counter.to_be_bytes());
    (out, DATA_HEADER_LEN)
}

/// The plaintext of a payload: both ports, then the bytes.
pub(super) fn plaintext(source: Port, destination: Port, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PORTS_LEN + data.len());
    out.extend_from_slice(&source.0.to_be_bytes());
    out.extend_from_slice(&destination.0.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// What an opened payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plain<'a> {
    /// An empty payload: the peer confirms the session.
    Ack,
    Payload {
        source: Port,
        destination: Port,
        data: &'a [u8],
    },
}

impl<'a> Plain<'a> {
    pub(super) fn parse(plain: &'a [u8]) -> Result<Self, Malformed> {
        if plain.is_empty() {
            return Ok(Self::Ack);
        }
        if plain.len() < PORTS_LEN {
            return Err(Malformed);
        }
        Ok(Self::Payload {
            source: Port(u16::from_be_bytes([plain[0], plain[1]])),
            destination: Port(u16::from_be_bytes([plain[2], plain[3]])),
            data: &plain[PORTS_LEN..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let init = init(0x0102_0304, &[9; 32]);
        assert_eq!(&init[..5], &[1, 1, 2, 3, 4]);
        assert_eq!(
            Datagram::parse(&init),
            Ok(Datagram::Init {
                initiator: 0x0102_0304,
                message: &[9; 32]
            })
        );
        let response = response(7, 0xa0b0_c0d0, &[5; 96]);
        assert_eq!(&response[..9], &[2, 0, 0, 0, 7, 0xa0, 0xb0, 0xc0, 0xd0]);
        assert_eq!(response.len(), 105);
        let (finish, at) = finish_buffer(0xa0b0_c0d0, 64);
        assert_eq!(&finish[..at], &[3, 0xa0, 0xb0, 0xc0, 0xd0]);
        assert!(matches!(
            Datagram::parse(&finish),
            Ok(Datagram::Finish { responder: 0xa0b0_c0d0, message }) if message.len() == 64
        ));
        let (data, at) = data_buffer(0x0102_0304_0506_0708, 4);
        assert_eq!(&data[..at], &[4, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(data.len(), 9 + 4 + 16);
        assert_eq!(
            plaintext(Port(0x1234), Port(7), b"hi"),
            [0x12, 0x34, 0, 7, b'h', b'i']
        );
        assert_eq!(
            Plain::parse(&[0x12, 0x34, 0, 7, b'h', b'i']),
            Ok(Plain::Payload {
                source: Port(0x1234),
                destination: Port(7),
                data: b"hi"
            })
        );
        assert_eq!(Plain::parse(&[]), Ok(Plain::Ack));
        assert_eq!(OVERHEAD, 29);
    }

    #[test]
    fn rejections() {
        for bad in [
            &[][..],
            &[0; 37][..],
            &[1; 36][..],
            &[1; MAX_PAYLOAD + 1][..],
            &[2; 104][..],
            &[3; 52][..],
            &[4; 24][..],
            &[5; 100][..],
        ] {
            assert_eq!(Datagram::parse(bad), Err(Malformed), "{} bytes", bad.len());
        }
        assert_eq!(Plain::parse(&[1, 2, 3]), Err(Malformed));
    }
}
