//! A datagram socket: the simplest service, which hands its user every datagram for its port
//! and sends what its user gives it.

use std::collections::VecDeque;

use super::{BASE_DATA, Message, Port, SendError, Service, ServiceTransmit};
use crate::node::Node;
use crate::{Instant, NodeId};

/// A datagram that arrived on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDatagram {
    pub from: NodeId,
    /// The port it was sent from on `from`: answers go there.
    pub port: Port,
    pub data: Vec<u8>,
}

/// A bound port: `send_to` and `recv_from`, end-to-end encrypted through the host it is
/// registered with. Both directions are bounded; a datagram that finds the receive queue full
/// is dropped and counted, like a full socket buffer.
pub struct DatagramSocket {
    capacity: usize,
    max_data: usize,
    received: VecDeque<SocketDatagram>,
    outgoing: VecDeque<ServiceTransmit>,
    dropped: u64,
}

impl DatagramSocket {
    /// A socket that holds at most `capacity` datagrams each way, each at most
    /// [`BASE_DATA`] bytes (what every node carries).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            max_data: BASE_DATA,
            received: VecDeque::new(),
            outgoing: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Sends datagrams up to `max_data` bytes: its host's [`super::Host::max_data`], what
    /// the node's path carries (from [`BASE_DATA`] to [`super::MAX_DATA`]).
    #[must_use]
    pub fn with_max_data(mut self, max_data: usize) -> Self {
        self.max_data = max_data.clamp(BASE_DATA, super::MAX_DATA);
        self
    }

    /// The largest datagram [`DatagramSocket::send_to`] takes.
    pub fn max_data(&self) -> usize {
        self.max_data
    }

    /// Queues `data` for port `port` of node `to`; the host sends it when it is next polled.
    /// A datagram larger than [`DatagramSocket::max_data`] is refused, never cut or dropped.
    pub fn send_to(&mut self, to: NodeId, port: Port, data: &[u8]) -> Result<(), SendError> {
        self.check_room(data.len())?;
        self.queue(to, port, data.to_vec());
        Ok(())
    }

    /// [`DatagramSocket::send_to`] for a datagram its caller owns already, which the socket
    /// keeps rather than copies.
    pub fn send_owned(&mut self, to: NodeId, port: Port, data: Vec<u8>) -> Result<(), SendError> {
        self.check_room(data.len())?;
        self.queue(to, port, data);
        Ok(())
    }

    fn check_room(&self, len: usize) -> Result<(), SendError> {
        if len > self.max_data {
            return Err(SendError::TooLarge {
                len,
                max: self.max_data,
            });
        }
        if self.outgoing.len() >= self.capacity {
            return Err(SendError::QueueFull);
        }
        Ok(())
    }

    fn queue(&mut self, to: NodeId, port: Port, data: Vec<u8>) {
        self.outgoing.push_back(ServiceTransmit {
            early: false,
            to,
            port,
            data,
        });
    }

    /// The oldest datagram received and not yet taken.
    pub fn recv_from(&mut self) -> Option<SocketDatagram> {
        self.received.pop_front()
    }

    /// Datagrams dropped because the receive queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counts a datagram that its user could not take in after it left this queue (a driver
    /// that hands datagrams on, with a queue of its own).
    pub fn count_dropped(&mut self) {
        self.dropped += 1;
    }
}

impl Service for DatagramSocket {
    fn handle_message(&mut self, _now: Instant, message: Message<'_>, _overlay: &Node) {
        if self.received.len() >= self.capacity {
            self.dropped += 1;
            return;
        }
        self.received.push_back(SocketDatagram {
            from: message.from,
            port: message.source_port,
            data: message.data.to_vec(),
        });
    }

    fn poll_transmit(&mut self) -> Option<ServiceTransmit> {
        self.outgoing.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_up_to_the_limit_are_taken_and_larger_ones_refused() {
        let to = NodeId::from_bytes([1; 8]);
        for (socket, max) in [
            (DatagramSocket::new(4), BASE_DATA),
            (DatagramSocket::new(4).with_max_data(1_349), 1_349),
            (
                DatagramSocket::new(4).with_max_data(100_000),
                super::super::MAX_DATA,
            ),
        ] {
            let mut socket = socket;
            assert_eq!(socket.max_data(), max);
            assert_eq!(socket.send_to(to, Port(9), &vec![0; max]), Ok(()));
            assert_eq!(
                socket.send_to(to, Port(9), &vec![0; max + 1]),
                Err(SendError::TooLarge { len: max + 1, max })
            );
            assert_eq!(socket.poll_transmit().map(|t| t.data.len()), Some(max));
            // An owned datagram meets the same bound.
            assert_eq!(
                socket.send_owned(to, Port(9), vec![0; max + 1]),
                Err(SendError::TooLarge { len: max + 1, max })
            );
            assert_eq!(socket.send_owned(to, Port(9), vec![7; max]), Ok(()));
            assert_eq!(socket.poll_transmit().map(|t| t.data), Some(vec![7; max]));
        }
    }

    #[test]
    fn a_full_queue_refuses_either_way_of_sending() {
        let to = NodeId::from_bytes([1; 8]);
        let mut socket = DatagramSocket::new(2);
        assert_eq!(socket.send_to(to, Port(9), b"one"), Ok(()));
        assert_eq!(socket.send_owned(to, Port(9), b"two".to_vec()), Ok(()));
        assert_eq!(
            socket.send_to(to, Port(9), b"three"),
            Err(SendError::QueueFull)
        );
        assert_eq!(
            socket.send_owned(to, Port(9), b"three".to_vec()),
            Err(SendError::QueueFull)
        );
    }
}
