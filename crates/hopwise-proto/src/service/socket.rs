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
    received: VecDeque<SocketDatagram>,
    outgoing: VecDeque<ServiceTransmit>,
    dropped: u64,
}

impl DatagramSocket {
    /// A socket that holds at most `capacity` datagrams each way.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            received: VecDeque::new(),
            outgoing: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Queues `data` for port `port` of node `to`; the host sends it when it is next polled.
    pub fn send_to(&mut self, to: NodeId, port: Port, data: &[u8]) -> Result<(), SendError> {
        if data.len() > BASE_DATA {
            return Err(SendError::TooLarge {
                len: data.len(),
                max: BASE_DATA,
            });
        }
        if self.outgoing.len() >= self.capacity {
            return Err(SendError::QueueFull);
        }
        self.outgoing.push_back(ServiceTransmit {
            early: false,
            to,
            port,
            data: data.to_vec(),
        });
        Ok(())
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
