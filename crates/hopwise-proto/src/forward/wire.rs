//! The forward service's messages on [`crate::service::ports::FORWARD`].
//!
//! ```text
//! query    1 | token u32 | kind u8 | name_len u8 | name         client -> server
//! answer   2 | token u32 | status u8                           server -> client
//! data     3 | flow u32  | name_len u8 | name | payload        client -> server (a UDP flow)
//! reply    4 | flow u32  | payload                             server -> client
//! refused  5 | flow u32  | status u8                           server -> client
//! ```
//!
//! Every client datagram names its service, so a server keeps no state for a flow it has not
//! accepted, and a restarted server picks up a flow where it was.

use super::{Kind, MAX_NAME, Refusal};

const QUERY: u8 = 1;
const ANSWER: u8 = 2;
const DATA: u8 = 3;
const REPLY: u8 = 4;
const REFUSED: u8 = 5;

/// The bytes a data message adds in front of its payload, for a service name of `name_len`.
pub fn data_overhead(name_len: usize) -> usize {
    1 + 4 + 1 + name_len
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Query {
        token: u32,
        kind: Kind,
        name: &'a str,
    },
    /// `None`: the service is exposed with the kind asked for.
    Answer {
        token: u32,
        refusal: Option<Refusal>,
    },
    Data {
        flow: u32,
        name: &'a str,
        payload: &'a [u8],
    },
    Reply {
        flow: u32,
        payload: &'a [u8],
    },
    Refused {
        flow: u32,
        refusal: Refusal,
    },
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(name.len() <= MAX_NAME);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn status(refusal: Option<Refusal>) -> u8 {
    match refusal {
        None => 0,
        Some(Refusal::NotExposed) => 1,
        Some(Refusal::OtherKind) => 2,
        Some(Refusal::Busy) => 3,
    }
}

fn refusal(status: u8) -> Option<Option<Refusal>> {
    Some(match status {
        0 => None,
        1 => Some(Refusal::NotExposed),
        2 => Some(Refusal::OtherKind),
        3 => Some(Refusal::Busy),
        _ => return None,
    })
}

impl Message<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Self::Query { token, kind, name } => {
                out.push(QUERY);
                out.extend_from_slice(&token.to_be_bytes());
                out.push(kind as u8);
                put_name(out, name);
            }
            Self::Answer { token, refusal } => {
                out.push(ANSWER);
                out.extend_from_slice(&token.to_be_bytes());
                out.push(status(refusal));
            }
            Self::Data {
                flow,
                name,
                payload,
            } => {
                out.push(DATA);
                out.extend_from_slice(&flow.to_be_bytes());
                put_name(out, name);
                out.extend_from_slice(payload);
            }
            Self::Reply { flow, payload } => {
                out.push(REPLY);
                out.extend_from_slice(&flow.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Self::Refused { flow, refusal } => {
                out.push(REFUSED);
                out.extend_from_slice(&flow.to_be_bytes());
                out.push(status(Some(refusal)));
            }
        }
    }
}

/// A length-prefixed name at the start of `rest`, and the bytes it took.
fn read_name(rest: &[u8]) -> Option<(&str, usize)> {
    let (&len, tail) = rest.split_first()?;
    let len = usize::from(len);
    if len > MAX_NAME || tail.len() < len {
        return None;
    }
    Some((std::str::from_utf8(&tail[..len]).ok()?, 1 + len))
}

/// Reads a message; `None` for anything malformed (the service counts it).
pub fn decode(data: &[u8]) -> Option<Message<'_>> {
    let (&tag, rest) = data.split_first()?;
    let (number, rest) = rest.split_first_chunk::<4>()?;
    let number = u32::from_be_bytes(*number);
    Some(match tag {
        QUERY => {
            let (&kind, rest) = rest.split_first()?;
            let (name, used) = read_name(rest)?;
            if used != rest.len() {
                return None;
            }
            Message::Query {
                token: number,
                kind: Kind::from_byte(kind)?,
                name,
            }
        }
        ANSWER => match rest {
            [status] => Message::Answer {
                token: number,
                refusal: refusal(*status)?,
            },
            _ => return None,
        },
        DATA => {
            let (name, used) = read_name(rest)?;
            Message::Data {
                flow: number,
                name,
                payload: &rest[used..],
            }
        }
        REPLY => Message::Reply {
            flow: number,
            payload: rest,
        },
        REFUSED => match rest {
            [status] => Message::Refused {
                flow: number,
                refusal: refusal(*status)??,
            },
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let messages = [
            Message::Query {
                token: 7,
                kind: Kind::Tcp,
                name: "web",
            },
            Message::Answer {
                token: 7,
                refusal: None,
            },
            Message::Answer {
                token: 8,
                refusal: Some(Refusal::OtherKind),
            },
            Message::Data {
                flow: 1,
                name: "dns",
                payload: b"\x12\x34question",
            },
            Message::Data {
                flow: 2,
                name: "dns",
                payload: b"",
            },
            Message::Reply {
                flow: 1,
                payload: b"answer",
            },
            Message::Refused {
                flow: 1,
                refusal: Refusal::NotExposed,
            },
        ];
        for message in messages {
            let mut out = Vec::new();
            message.encode(&mut out);
            assert_eq!(decode(&out), Some(message));
            if let Message::Data { name, payload, .. } = message {
                assert_eq!(out.len(), data_overhead(name.len()) + payload.len());
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking_and_re_encode_to_themselves(
            data in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            if let Some(message) = decode(&data) {
                let mut out = Vec::new();
                message.encode(&mut out);
                prop_assert_eq!(out, data);
            }
        }
    }
}
