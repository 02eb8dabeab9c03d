//! The composition of an overlay node, the end-to-end layer and the services on its ports.

use std::marker::PhantomData;

use super::{Message, Port, Service};
use crate::e2e::{E2eStats, EndToEnd, Received, SessionInfo};
use crate::keyed::{self, Map};
use crate::node::{Event, Input, Node, Output};
use crate::secure::{Keys, SecureNode};
use crate::{Instant, NodeId};

/// What a [`Host`] drives underneath: a bare [`Node`] (simulations without hop-by-hop
/// encryption) or a [`SecureNode`].
pub trait OverlayNode: Send {
    fn handle_input(&mut self, input: Input<'_>);
    fn poll_output(&mut self) -> Output;
    #[must_use]
    fn poll_timeout(&self) -> Instant;
    fn node(&self) -> &Node;
    /// For the node's own calls (`ping`, `trace`, `leave`).
    fn node_mut(&mut self) -> &mut Node;
}

impl OverlayNode for Node {
    fn handle_input(&mut self, input: Input<'_>) {
        Node::handle_input(self, input);
    }
    fn poll_output(&mut self) -> Output {
        Node::poll_output(self)
    }
    fn poll_timeout(&self) -> Instant {
        Node::poll_timeout(self)
    }
    fn node(&self) -> &Node {
        self
    }
    fn node_mut(&mut self) -> &mut Node {
        self
    }
}

impl OverlayNode for SecureNode {
    fn handle_input(&mut self, input: Input<'_>) {
        SecureNode::handle_input(self, input);
    }
    fn poll_output(&mut self) -> Output {
        SecureNode::poll_output(self)
    }
    fn poll_timeout(&self) -> Instant {
        SecureNode::poll_timeout(self)
    }
    fn node(&self) -> &Node {
        SecureNode::node(self)
    }
    fn node_mut(&mut self) -> &mut Node {
        SecureNode::node_mut(self)
    }
}

/// Names a registered service of type `S`; [`Host::service_mut`] hands it out.
pub struct ServiceHandle<S> {
    slot: usize,
    _service: PhantomData<fn() -> S>,
}

impl<S> Clone for ServiceHandle<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for ServiceHandle<S> {}

impl<S> std::fmt::Debug for ServiceHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceHandle({})", self.slot)
    }
}

/// Why [`Host::register`] refused a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// Another service has the port.
    PortInUse(Port),
    /// Port 0 is never used.
    PortZero,
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortInUse(port) => write!(f, "port {port} is in use"),
            Self::PortZero => write!(f, "port 0 is not a service port"),
        }
    }
}

impl std::error::Error for RegisterError {}

struct Registered {
    port: Port,
    service: Box<dyn Service>,
}

/// An overlay node with its end-to-end layer and services, behind the node's contract:
///
/// 1. feed every received datagram and expired deadline to [`Host::handle_input`];
/// 2. drain [`Host::poll_output`] until it returns [`Output::Timeout`], after every input and
///    after every user call on a service ([`Host::service_mut`]) or on the node
///    ([`Host::overlay_mut`]);
/// 3. call `handle_input(Input::Timeout(now))` once the deadline has passed.
///
/// Overlay events come out of `poll_output`; services keep their own events for their users.
/// End-to-end datagrams never come out: the host opens them and hands each to the service on
/// its port, or counts it (`dropped_unknown_port`) when nothing listens there.
pub struct Host<O> {
    overlay: O,
    e2e: EndToEnd,
    services: Vec<Option<Registered>>,
    ports: Map<Port, usize>,
    now: Instant,
}

impl<O: OverlayNode> Host<O> {
    /// `keys` must be the node's own: its id is their public key's. Randomness for the
    /// end-to-end layer comes from `rng_seed`.
    pub fn new(overlay: O, keys: &Keys, rng_seed: u64, now: Instant) -> Self {
        let id = overlay.node().id();
        assert_eq!(
            id,
            NodeId::from_public_key(&keys.public_key),
            "a host needs the node's own keys"
        );
        Self {
            e2e: EndToEnd::new(id, keys.private_key, rng_seed, now)
                .with_payload_limit(overlay.node().payload_limit()),
            overlay,
            services: Vec::new(),
            ports: Map::with_hasher(keyed::hash_key(rng_seed)),
            now,
        }
    }

    pub fn overlay(&self) -> &O {
        &self.overlay
    }

    /// For calls on the overlay (`ping`, `trace`, `leave`); drain [`Host::poll_output`] after.
    pub fn overlay_mut(&mut self) -> &mut O {
        &mut self.overlay
    }

    pub fn node(&self) -> &Node {
        self.overlay.node()
    }

    /// The largest datagram a service on this host may send: what the node's path carries
    /// (at least [`super::BASE_DATA`]).
    #[must_use]
    pub fn max_data(&self) -> usize {
        self.e2e.max_data()
    }

    pub fn e2e_stats(&self) -> &E2eStats {
        self.e2e.stats()
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        self.e2e.sessions()
    }

    pub fn handshakes_in_progress(&self) -> usize {
        self.e2e.handshakes_in_progress()
    }

    /// Service datagrams held until a handshake with their destination completes.
    pub fn payloads_waiting(&self) -> usize {
        self.e2e.payloads_waiting()
    }

    /// Puts `service` on `port`: every datagram for that port goes to it, and it sends from
    /// that port.
    pub fn register<S: Service>(
        &mut self,
        port: Port,
        service: S,
    ) -> Result<ServiceHandle<S>, RegisterError> {
        if port == Port(0) {
            return Err(RegisterError::PortZero);
        }
        if self.ports.contains_key(&port) {
            return Err(RegisterError::PortInUse(port));
        }
        let registered = Registered {
            port,
            service: Box::new(service),
        };
        let slot = match self.services.iter().position(Option::is_none) {
            Some(free) => {
                self.services[free] = Some(registered);
                free
            }
            None => {
                self.services.push(Some(registered));
                self.services.len() - 1
            }
        };
        self.ports.insert(port, slot);
        Ok(ServiceHandle {
            slot,
            _service: PhantomData,
        })
    }

    /// Takes a service off its port and hands it back.
    pub fn unregister<S: Service>(&mut self, handle: ServiceHandle<S>) -> S {
        let registered = self.services[handle.slot]
            .take()
            .expect("a handle names a registered service");
        self.ports.swap_remove(&registered.port);
        let service: Box<dyn std::any::Any> = registered.service;
        *service
            .downcast()
            .expect("a handle names a service of its type")
    }

    /// The service for its user's calls; drain [`Host::poll_output`] after calls that send.
    pub fn service_mut<S: Service>(&mut self, handle: ServiceHandle<S>) -> &mut S {
        self.service_with_node(handle).0
    }

    /// Like [`Host::service_mut`], with the overlay node in view, for user calls that need
    /// it (where a packet can go).
    pub fn service_with_node<S: Service>(&mut self, handle: ServiceHandle<S>) -> (&mut S, &Node) {
        let node = self.overlay.node();
        let registered = self.services[handle.slot]
            .as_mut()
            .expect("a handle names a registered service");
        let service: &mut dyn std::any::Any = registered.service.as_mut();
        let service = service
            .downcast_mut()
            .expect("a handle names a service of its type");
        (service, node)
    }

    pub fn service<S: Service>(&self, handle: ServiceHandle<S>) -> &S {
        let service: &dyn std::any::Any = self.services[handle.slot]
            .as_ref()
            .expect("a handle names a registered service")
            .service
            .as_ref();
        service
            .downcast_ref()
            .expect("a handle names a service of its type")
    }

    /// The service on `port`, if one of type `S` is there.
    pub fn service_at<S: Service>(&self, port: Port) -> Option<&S> {
        let slot = *self.ports.get(&port)?;
        let service: &dyn std::any::Any = self.services[slot].as_ref()?.service.as_ref();
        service.downcast_ref()
    }

    pub fn handle_input(&mut self, input: Input<'_>) {
        let now = match &input {
            Input::Datagram { now, .. } | Input::Timeout(now) => *now,
        };
        self.now = self.now.max(now);
        self.overlay.handle_input(input);
        if self.e2e.poll_timeout() <= self.now {
            self.e2e.handle_timeout(self.now);
        }
        let node = self.overlay.node();
        for registered in self.services.iter_mut().flatten() {
            let service = &mut registered.service;
            if service.poll_timeout().is_some_and(|at| at <= self.now) {
                service.handle_timeout(self.now, node);
            }
        }
    }

    /// The next output; [`Output::Timeout`] means everything is drained.
    pub fn poll_output(&mut self) -> Output {
        loop {
            let mut busy = self.dispatch_received();
            busy |= self.send_from_services();
            busy |= self.hand_to_overlay();
            match self.overlay.poll_output() {
                Output::Event(Event::Sealed {
                    source,
                    via,
                    datagram,
                }) => self.e2e.handle_datagram(self.now, source, via, &datagram),
                Output::Timeout(_) if busy => {}
                Output::Timeout(_) => return Output::Timeout(self.poll_timeout()),
                output => return output,
            }
        }
    }

    /// The earliest deadline of the node, the end-to-end layer and the services.
    pub fn poll_timeout(&self) -> Instant {
        self.services
            .iter()
            .flatten()
            .filter_map(|r| r.service.poll_timeout())
            .fold(
                self.overlay.poll_timeout().min(self.e2e.poll_timeout()),
                Instant::min,
            )
    }

    /// Hands every authenticated payload to the service on its port; true if there were any.
    fn dispatch_received(&mut self) -> bool {
        let mut any = false;
        while let Some(Received {
            from,
            source_port,
            destination_port,
            data,
            early,
        }) = self.e2e.poll_received()
        {
            any = true;
            let Some(&slot) = self.ports.get(&destination_port) else {
                // An early payload arrives again once authenticated, and is counted then.
                if !early {
                    self.e2e.count_unknown_port();
                }
                continue;
            };
            let registered = self.services[slot].as_mut().expect("ports name services");
            let message = Message {
                from,
                source_port,
                data: &data,
            };
            let service = &mut registered.service;
            if early {
                service.handle_early(self.now, message, self.overlay.node());
            } else {
                service.handle_message(self.now, message, self.overlay.node());
            }
        }
        any
    }

    /// Passes the services' datagrams to the end-to-end layer; true if there were any.
    fn send_from_services(&mut self) -> bool {
        let mut any = false;
        for registered in self.services.iter_mut().flatten() {
            while let Some(transmit) = registered.service.poll_transmit() {
                any = true;
                let send = if transmit.early {
                    EndToEnd::send_early
                } else {
                    EndToEnd::send
                };
                let sent = send(
                    &mut self.e2e,
                    self.now,
                    transmit.to,
                    registered.port,
                    transmit.port,
                    &transmit.data,
                );
                if sent.is_err() {
                    // Services check sizes themselves; what is left is a full handshake queue.
                    self.e2e.count_unsent();
                }
            }
        }
        any
    }

    /// Passes the end-to-end layer's datagrams to the overlay; true if there were any.
    fn hand_to_overlay(&mut self) -> bool {
        let mut any = false;
        while let Some((to, datagram)) = self.e2e.poll_transmit() {
            any = true;
            let node = self.overlay.node_mut();
            node.send_sealed(self.now, to, datagram)
                .expect("end-to-end datagrams fit the overlay's payload");
        }
        any
    }
}
