//! Drives one protocol [`Node`] over a real UDP socket.
//!
//! The runner owns the socket, the clock and the timers; the node owns every decision. One task
//! runs the loop: a received datagram, an expired deadline, a control request or a shutdown
//! signal goes into the node, and then everything the node wants sent or reported comes out.

mod batch;
mod clock;
mod testbed;

use batch::BatchReceiver;
pub use clock::Clock;
pub use testbed::{Testbed, load_delays};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hopwise_proto::secure::SecureNode;
use hopwise_proto::wire::TraceHop;
use hopwise_proto::{Event, Input, NodeId, Output, Transmit};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// A request from the control API, answered on the runner's task where the node lives.
pub enum ControlRequest {
    /// Reads the node's state; the closure sends its answer itself.
    Inspect(Box<dyn FnOnce(&SecureNode) + Send>),
    /// Sends a trace through the overlay and answers with what came back (`None`: lost).
    Trace {
        destination: NodeId,
        reply: oneshot::Sender<Option<TraceOutcome>>,
    },
}

/// Receive batches handled before the node's output is sent.
const BATCHES_PER_WAKE: usize = 16;
/// A trace unanswered for this long is reported as lost.
const TRACE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Bound on traces waiting for an answer: each costs a pending entry.
const MAX_PENDING_TRACES: usize = 1_024;

/// What a trace through the overlay found.
#[derive(Debug, Clone)]
pub struct TraceOutcome {
    pub rtt_ms: f64,
    pub outbound_hops: u8,
    pub path: Vec<TraceHop>,
}

struct PendingTrace {
    destination: NodeId,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Option<TraceOutcome>>,
}

pub struct Runner {
    node: SecureNode,
    socket: Arc<UdpSocket>,
    clock: Clock,
    testbed: Option<Testbed>,
    requests: mpsc::Receiver<ControlRequest>,
    traces: HashMap<u64, PendingTrace>,
    next_token: u64,
    /// The socket is IPv6 and reaches IPv4 peers through v4-mapped addresses.
    dual_stack: bool,
}

/// The address the node sees: an IPv4 peer that reached a dual-stack socket as
/// `::ffff:a.b.c.d` is `a.b.c.d`, the form other (IPv4-only) nodes can use when it is gossiped.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The address a socket sends to: an IPv6 socket reaches IPv4 peers at their v4-mapped form.
pub(crate) fn for_socket(addr: SocketAddr, dual_stack: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if dual_stack => {
            SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    }
}

impl Runner {
    pub fn new(
        node: SecureNode,
        socket: UdpSocket,
        clock: Clock,
        testbed: Option<Testbed>,
        requests: mpsc::Receiver<ControlRequest>,
    ) -> Self {
        let dual_stack = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        Self {
            node,
            dual_stack,
            socket: Arc::new(socket),
            clock,
            testbed,
            requests,
            traces: HashMap::new(),
            next_token: 1,
        }
    }

    /// Runs until `shutdown` resolves, then tells the routing neighbours that this node leaves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut receiver = match BatchReceiver::new(&self.socket) {
            Ok(receiver) => receiver,
            Err(error) => {
                warn!(%error, "cannot set up the socket for batched receiving");
                return;
            }
        };
        loop {
            self.drain_outputs();
            let node_deadline = self.clock.to_tokio(self.node.poll_timeout());
            let deadline = self
                .traces
                .values()
                .map(|t| t.deadline)
                .min()
                .map_or(node_deadline, |trace| trace.min(node_deadline));
            tokio::select! {
                readable = self.socket.readable() => match readable {
                    Ok(()) => self.receive_all(&mut receiver),
                    Err(error) => debug!(%error, "socket not readable"),
                },
                () = tokio::time::sleep_until(deadline) => self.on_deadline(),
                Some(request) = self.requests.recv() => self.on_request(request),
                () = &mut shutdown => break,
            }
        }
        info!("leaving: closing routing links");
        // Goodbyes go out at once, without the testbed's delay: nobody waits for them.
        self.testbed = None;
        self.node.node_mut().leave(self.clock.now());
        self.drain_outputs();
    }

    /// Feeds the node what the socket holds, a batch per system call, up to
    /// `BATCHES_PER_WAKE` batches: then the node's answers go out before more is read.
    fn receive_all(&mut self, receiver: &mut BatchReceiver) {
        let (socket, node, clock) = (&self.socket, &mut self.node, &self.clock);
        for _ in 0..BATCHES_PER_WAKE {
            let received = receiver.receive(socket, |from, data| {
                let (from, now) = (canonical(from), clock.now());
                node.handle_input(Input::Datagram { now, from, data });
            });
            match received {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on some platforms; the node sees the loss anyway.
                Err(error) => {
                    debug!(%error, "receive failed");
                    return;
                }
            }
        }
    }

    fn on_deadline(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<u64> = self
            .traces
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            if let Some(trace) = self.traces.remove(&token) {
                let _ = trace.reply.send(None);
            }
        }
        self.node.handle_input(Input::Timeout(self.clock.now()));
    }

    fn drain_outputs(&mut self) {
        loop {
            match self.node.poll_output() {
                Output::Transmit(transmit) => self.transmit(transmit),
                Output::Event(event) => self.on_event(event),
                Output::Timeout(_) => break,
            }
        }
    }

    fn transmit(&mut self, transmit: Transmit) {
        match &self.testbed {
            Some(testbed) => testbed.send(transmit.destination, transmit.contents),
            None => self.send_now(transmit.destination, &transmit.contents),
        }
    }

    /// A UDP send never blocks for long; a full socket buffer drops the datagram, like the
    /// network would.
    fn send_now(&self, destination: SocketAddr, contents: &[u8]) {
        let to = for_socket(destination, self.dual_stack);
        if let Err(error) = self.socket.try_send_to(contents, to) {
            debug!(%destination, %error, "send failed");
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::LinkUp { id, addr, rtt_ms } => {
                debug!(peer = %id.short(), %addr, rtt_ms, "link up")
            }
            Event::LinkDown { id } => debug!(peer = %id.short(), "link down"),
            Event::TraceReply {
                destination,
                token,
                rtt_ms,
                outbound_hops,
                path,
            } => {
                let answered = self.traces.remove_entry(&token);
                match answered {
                    Some((_, pending)) if pending.destination == destination => {
                        let _ = pending.reply.send(Some(TraceOutcome {
                            rtt_ms,
                            outbound_hops,
                            path,
                        }));
                    }
                    Some((token, pending)) => {
                        warn!(from = %destination.short(), "trace answered by the wrong node");
                        self.traces.insert(token, pending);
                    }
                    None => {}
                }
            }
            Event::PingReply { .. } | Event::Delivered { .. } => {}
        }
    }

    fn on_request(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::Inspect(inspect) => inspect(&self.node),
            ControlRequest::Trace { destination, reply } => {
                if self.traces.len() >= MAX_PENDING_TRACES {
                    let _ = reply.send(None);
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                self.traces.insert(
                    token,
                    PendingTrace {
                        destination,
                        deadline: tokio::time::Instant::now() + TRACE_TIMEOUT,
                        reply,
                    },
                );
                self.node
                    .node_mut()
                    .trace(self.clock.now(), destination, token);
            }
        }
    }
}
