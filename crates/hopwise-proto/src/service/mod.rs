//! Services: sans-I/O components above the overlay, reached through end-to-end datagrams on
//! service ports.
//!
//! A service (the key-value store, pub/sub, a datagram socket, or a library user's own) has one
//! job and the crate's driving grammar: it is handed the authenticated messages for its port
//! ([`Service::handle_message`]) and its expired deadlines ([`Service::handle_timeout`]), with
//! a read-only view of the overlay (the [`Node`]); it hands back datagrams to send
//! ([`Service::poll_transmit`]) and its next deadline ([`Service::poll_timeout`]). Its own
//! user calls (`set`, `subscribe`, `send_to`, ...) queue work the same way, and its events wait
//! in the service until its user asks for them.
//!
//! A [`Host`] composes the overlay node, the end-to-end layer and the services behind the
//! node's own contract (`handle_input`, `poll_output`, `poll_timeout`), so the simulator and
//! the runner drive a node with services exactly as they drive a bare node.
//!
//! Ports 1 to 1023 are for hopwise's own services ([`ports`]); port 0 is never used; a
//! program's own services take ports from 1024 up.

pub mod fragment;
mod host;
mod socket;

pub use host::{Host, OverlayNode, RegisterError, ServiceHandle};
pub use socket::{DatagramSocket, SocketDatagram};

use std::any::Any;

pub use crate::e2e::{BASE_DATA, MAX_DATA, Port, SendError};
use crate::node::Node;
use crate::{Instant, NodeId};

/// Well-known ports.
pub mod ports {
    use super::Port;

    /// The first port that is not reserved for hopwise's own services.
    pub const FIRST_USER_PORT: Port = Port(1024);
    /// The key-value store (and the aliases kept in it).
    pub const KV: Port = Port(2);
    /// The VPN: IP packets between the members' interfaces.
    pub const VPN: Port = Port(3);
    /// Exposed services and UDP forwards ([`crate::forward`]).
    pub const FORWARD: Port = Port(4);
    /// The QUIC connections that carry TCP forwards.
    pub const STREAMS: Port = Port(5);
    /// Publish/subscribe: rendezvous, tree joins, messages and repairs ([`crate::pubsub`]).
    pub const PUBSUB: Port = Port(6);
}

/// An authenticated datagram for a service: `from` proved the static key of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub from: NodeId,
    /// The port of the service on `from` that sent it (where answers go).
    pub source_port: Port,
    pub data: &'a [u8],
}

/// A datagram a service wants sent, from its own port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTransmit {
    pub to: NodeId,
    /// The port of the service on `to` that is to receive it.
    pub port: Port,
    pub data: Vec<u8>,
    /// It may travel in a handshake's first flight (see [`crate::e2e::EndToEnd::send_early`]):
    /// a request members may read and that may be answered before its sender is proven, or
    /// the answer to an early request ([`Service::handle_early`]).
    pub early: bool,
}

/// A sans-I/O service on one port. See the module documentation.
pub trait Service: Any + Send {
    /// A datagram for this service's port arrived.
    fn handle_message(&mut self, now: Instant, message: Message<'_>, overlay: &Node);

    /// An early datagram: it rode the init of an end-to-end handshake in the clear, and
    /// `message.from` is only what it claims. It arrives again through
    /// [`Service::handle_message`], authenticated, once the handshake finishes; a service may
    /// answer it at once with an `early` transmit, which rides the handshake's response to
    /// whoever sent the init. The default ignores it.
    fn handle_early(&mut self, now: Instant, message: Message<'_>, overlay: &Node) {
        let _ = (now, message, overlay);
    }

    /// The deadline from [`Service::poll_timeout`] has passed (it may be called earlier).
    fn handle_timeout(&mut self, now: Instant, overlay: &Node) {
        let _ = (now, overlay);
    }

    /// The next datagram to send; the host drains them after every input and user call.
    #[must_use]
    fn poll_transmit(&mut self) -> Option<ServiceTransmit>;

    /// When this service next needs [`Service::handle_timeout`].
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}
