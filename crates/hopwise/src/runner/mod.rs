//! Drives one protocol [`Host`] (the node, its end-to-end layer and its services) over a real
//! UDP socket.
//!
//! The runner owns the socket, the clock and the timers; the host owns every decision. One task
//! runs the loop: a received datagram, an expired deadline, a control request or a shutdown
//! signal goes into the host, and then everything it wants sent or reported comes out, and the
//! datagrams of bound sockets go to their async users.

pub mod batch;
mod capture;
mod clock;
mod forward;
mod interface;
mod kv;
mod pubsub;
mod store_file;
mod streams;
mod tcp_forward;
mod testbed;
mod vpn;

use batch::{BatchReceiver, BatchSender};
pub use capture::Capture;
pub use clock::Clock;
use forward::ForwardBridge;
pub use forward::{ForwardEntry, ForwardRequest, Listing};
pub use kv::{KvBridge, KvRequest, Watched, claimants, watch_channel};
pub use pubsub::{PubSubBridge, PubSubRequest, subscription_channel};
pub use store_file::StoreFile;
pub use tcp_forward::TcpCounters;
pub use testbed::{Testbed, load_delays};
pub use vpn::{Ipv4Setting, VpnOptions};
use vpn::{VpnAnswer, VpnBridge};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hopwise_proto::e2e::{Port, SendError};
use hopwise_proto::secure::SecureNode;
use hopwise_proto::service::{DatagramSocket, Host, ServiceHandle, SocketDatagram};
use hopwise_proto::wire::TraceHop;
use hopwise_proto::{Event, Input, NodeId, Output, Transmit};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// What the runner drives: the secure node with its end-to-end layer and services.
pub type NodeHost = Host<SecureNode>;

/// A request from the control API or an embedding program, answered on the runner's task
/// where the host lives.
pub enum ControlRequest {
    /// Reads the host's state; the closure sends its answer itself.
    Inspect(Box<dyn FnOnce(&NodeHost) + Send>),
    /// Sends a trace through the overlay and answers with what came back (`None`: lost).
    Trace {
        destination: NodeId,
        reply: oneshot::Sender<Option<TraceOutcome>>,
    },
    /// Binds a datagram socket to `port`; its datagrams arrive on the receiver.
    Bind {
        port: Port,
        reply: oneshot::Sender<Result<mpsc::Receiver<SocketDatagram>, String>>,
    },
    /// Sends a datagram from the socket bound to `from`.
    SendTo {
        from: Port,
        to: NodeId,
        port: Port,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), SocketError>>,
    },
    Unbind {
        port: Port,
    },
    /// A key-value call; its answer comes on the channel it carries.
    Kv(KvRequest),
    /// An expose or forward call.
    Forward(ForwardRequest),
    /// A publish or a subscription.
    PubSub(PubSubRequest),
}

/// Why a datagram could not be sent from a bound socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketError {
    Send(SendError),
    NotBound(Port),
    /// The node has stopped.
    Stopped,
}

impl std::fmt::Display for SocketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send(error) => write!(f, "{error}"),
            Self::NotBound(port) => write!(f, "no socket is bound to port {port}"),
            Self::Stopped => write!(f, "the node has stopped"),
        }
    }
}

impl std::error::Error for SocketError {}

/// Datagrams a bound socket holds for its user, each way, before it drops more.
const SOCKET_CAPACITY: usize = 1_024;

/// A socket bound through [`ControlRequest::Bind`].
struct BoundSocket {
    handle: ServiceHandle<DatagramSocket>,
    deliver: mpsc::Sender<SocketDatagram>,
}

/// Datagrams from forwards and QUIC handled after the first, before the node's output is sent.
const FORWARD_INPUTS_PER_WAKE: usize = 256;
/// Control requests handled after the first, before the node's output is sent: a program
/// sending on a service socket gets its datagrams batched, not one system call each.
const REQUESTS_PER_WAKE: usize = 256;
/// Receive batches handled before the node's output is sent.
const BATCHES_PER_WAKE: usize = 16;
/// A trace unanswered for this long is reported as lost.
const TRACE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Bound on traces waiting for an answer: each costs a pending entry.
const MAX_PENDING_TRACES: usize = 1_024;
/// How long a leaving node waits for handshakes that hold its last messages.
const LEAVE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

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
    host: NodeHost,
    kv: KvBridge,
    pubsub: PubSubBridge,
    sockets: HashMap<Port, BoundSocket>,
    socket: Arc<UdpSocket>,
    clock: Clock,
    testbed: Option<Testbed>,
    requests: mpsc::Receiver<ControlRequest>,
    traces: HashMap<u64, PendingTrace>,
    next_token: u64,
    /// The socket is IPv6 and reaches IPv4 peers through v4-mapped addresses.
    dual_stack: bool,
    capture: Option<Capture>,
    vpn: Option<VpnBridge>,
    vpn_answers: mpsc::UnboundedReceiver<VpnAnswer>,
    forward: Option<ForwardBridge>,
    /// What the host sent during a drain, sent in batches at its end.
    outbox: Vec<Transmit>,
    sender: BatchSender,
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
    /// With `store_file`, the key-value store starts from what it kept and keeps every change.
    pub fn new(
        mut host: NodeHost,
        socket: UdpSocket,
        clock: Clock,
        testbed: Option<Testbed>,
        requests: mpsc::Receiver<ControlRequest>,
        store_file: Option<StoreFile>,
    ) -> anyhow::Result<Self> {
        let dual_stack = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let kv = KvBridge::new(&mut host, store_file, clock.now())?;
        let seed = u64::from_be_bytes(*host.node().id().as_bytes())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let pubsub = PubSubBridge::new(&mut host, seed)?;
        let sender = BatchSender::new(&socket)?;
        Ok(Self {
            host,
            kv,
            pubsub,
            sockets: HashMap::new(),
            dual_stack,
            socket: Arc::new(socket),
            clock,
            testbed,
            requests,
            traces: HashMap::new(),
            next_token: 1,
            capture: None,
            vpn: None,
            vpn_answers: mpsc::unbounded_channel().1,
            forward: None,
            outbox: Vec::new(),
            sender,
        })
    }

    /// Claims these aliases for this node (ephemeral entries in the key-value store).
    pub fn with_aliases(mut self, names: &[String]) -> Self {
        self.kv
            .publish_aliases(&mut self.host, self.clock.now(), names);
        self
    }

    /// Runs the VPN (`--vpn`): creates its interface, which needs CAP_NET_ADMIN.
    pub fn with_vpn(
        mut self,
        options: VpnOptions,
        network_key: &[u8; 32],
        seed: u64,
    ) -> anyhow::Result<Self> {
        let (vpn, answers) = VpnBridge::start(&mut self.host, options, network_key, seed)?;
        self.vpn = Some(vpn);
        self.vpn_answers = answers;
        Ok(self)
    }

    /// Runs exposed services and forwards; `requests` reaches this runner (the servers of TCP
    /// streams look up exposed services through it), and `counters` count the TCP forwards.
    pub fn with_forwards(
        mut self,
        seed: u64,
        requests: mpsc::Sender<ControlRequest>,
        counters: Arc<TcpCounters>,
    ) -> anyhow::Result<Self> {
        self.forward = Some(ForwardBridge::start(
            &mut self.host,
            seed,
            requests,
            counters,
        )?);
        Ok(self)
    }

    /// Writes every packet the node handles, decrypted, to `capture` (`--capture`).
    pub fn with_capture(mut self, capture: Capture) -> Self {
        self.host.overlay_mut().capture(true);
        self.capture = Some(capture);
        self
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
            let node_deadline = self.clock.to_tokio(self.host.poll_timeout());
            let deadline = self
                .traces
                .values()
                .map(|t| t.deadline)
                .chain(self.vpn.as_ref().map(VpnBridge::deadline))
                .min()
                .map_or(node_deadline, |other| other.min(node_deadline));
            let interface = async {
                match &self.vpn {
                    Some(vpn) => vpn.readable().await,
                    None => std::future::pending().await,
                }
            };
            let forwarded = async {
                match &mut self.forward {
                    Some(forward) => forward.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(input) = forwarded => self.on_forward_input(input),
                readable = self.socket.readable() => match readable {
                    Ok(()) => self.receive_all(&mut receiver),
                    Err(error) => debug!(%error, "socket not readable"),
                },
                readable = interface => match readable {
                    Ok(()) => self.read_interface(),
                    Err(error) => debug!(%error, "VPN interface not readable"),
                },
                Some(answer) = self.vpn_answers.recv() => self.on_vpn_answer(answer),
                () = tokio::time::sleep_until(deadline) => self.on_deadline(),
                Some(request) = self.requests.recv() => self.on_requests(request),
                () = &mut shutdown => break,
            }
        }
        info!("leaving: withdrawing ephemeral entries, closing routing links");
        // Goodbyes go out at once, without the testbed's delay: nobody waits for them.
        self.testbed = None;
        self.kv.leave(&mut self.host, self.clock.now());
        // The deletes start at the store's next timeout, which is now.
        self.host.handle_input(Input::Timeout(self.clock.now()));
        self.drain_outputs();
        self.linger_for_handshakes(&mut receiver).await;
        self.host.overlay_mut().node_mut().leave(self.clock.now());
        self.drain_outputs();
        if let Some(capture) = &mut self.capture
            && let Err(error) = capture.flush()
        {
            warn!(%error, "cannot write the capture");
        }
    }

    /// The store's last messages (hand-offs of the keys this node holds, deletes of its
    /// ephemeral entries) to members without a session wait for a handshake: they get up to
    /// `LEAVE_LINGER` to go out before the routing links close, with the node still receiving
    /// and routing.
    async fn linger_for_handshakes(&mut self, receiver: &mut BatchReceiver) {
        let until = tokio::time::Instant::now() + LEAVE_LINGER;
        while self.host.payloads_waiting() > 0 && tokio::time::Instant::now() < until {
            let deadline = self.clock.to_tokio(self.host.poll_timeout()).min(until);
            tokio::select! {
                readable = self.socket.readable() => {
                    if readable.is_ok() {
                        self.receive_all(receiver);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.host.handle_input(Input::Timeout(self.clock.now()));
                }
            }
            self.drain_outputs();
        }
    }

    /// Feeds the node what the socket holds, a batch per system call, up to
    /// `BATCHES_PER_WAKE` batches: then the node's answers go out before more is read.
    fn receive_all(&mut self, receiver: &mut BatchReceiver) {
        let (socket, host, clock) = (&self.socket, &mut self.host, &self.clock);
        for _ in 0..BATCHES_PER_WAKE {
            let received = receiver.receive(socket, |from, data| {
                let (from, now) = (canonical(from), clock.now());
                host.handle_input(Input::Datagram { now, from, data });
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

    fn read_interface(&mut self) {
        if let Some(vpn) = &mut self.vpn {
            vpn.read_all(&mut self.host, self.clock.now());
        }
    }

    /// A datagram from a forward's local socket or from QUIC, and whatever else is waiting,
    /// up to a batch: their datagrams then go out together.
    fn on_forward_input(&mut self, input: forward::ForwardInput) {
        let Some(forward) = &mut self.forward else {
            return;
        };
        let now = self.clock.now();
        forward.on_input(&mut self.host, now, input);
        for _ in 0..FORWARD_INPUTS_PER_WAKE {
            let Some(input) = forward.try_recv() else {
                break;
            };
            forward.on_input(&mut self.host, now, input);
        }
    }

    fn on_vpn_answer(&mut self, answer: VpnAnswer) {
        if let Some(vpn) = &mut self.vpn {
            vpn.on_answer(&mut self.host, &mut self.kv, self.clock.now(), answer);
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
        self.host.handle_input(Input::Timeout(self.clock.now()));
    }

    fn drain_outputs(&mut self) {
        self.poll_host();
        // Answers and events of the store; ending a watch sends, so the host is polled again.
        self.kv.pump(&mut self.host, self.clock.now());
        if let Some(vpn) = &mut self.vpn {
            // Received packets go to the interface; lookups and claims go to the store.
            vpn.pump(&mut self.host, &mut self.kv, self.clock.now());
        }
        if let Some(forward) = &mut self.forward {
            forward.pump(&mut self.host);
        }
        self.pubsub.pump(&mut self.host);
        self.poll_host();
        self.deliver_to_sockets();
        self.write_capture();
        let dual_stack = self.dual_stack;
        let overlay = self.host.overlay_mut();
        self.sender.send_all(
            &self.socket,
            &mut self.outbox,
            |to| for_socket(to, dual_stack),
            |buffer| overlay.recycle(buffer),
        );
    }

    fn poll_host(&mut self) {
        loop {
            match self.host.poll_output() {
                Output::Transmit(transmit) => self.transmit(transmit),
                Output::Event(event) => self.on_event(event),
                Output::Timeout(_) => break,
            }
        }
    }

    fn write_capture(&mut self) {
        let Some(capture) = &mut self.capture else {
            return;
        };
        while let Some(captured) = self.host.overlay_mut().poll_captured() {
            if let Err(error) = capture.write(&captured) {
                warn!(%error, "cannot write the capture; capturing stops");
                self.host.overlay_mut().capture(false);
                self.capture = None;
                return;
            }
        }
    }

    /// Hands what bound sockets received to their users; a user that stopped listening
    /// unbinds its socket, and one that does not keep up loses datagrams (counted by the
    /// socket).
    fn deliver_to_sockets(&mut self) {
        let mut closed = Vec::new();
        for (port, bound) in &self.sockets {
            let socket = self.host.service_mut(bound.handle);
            while let Some(datagram) = socket.recv_from() {
                match bound.deliver.try_send(datagram) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => socket.count_dropped(),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        closed.push(*port);
                        break;
                    }
                }
            }
        }
        for port in closed {
            self.unbind(port);
        }
    }

    fn unbind(&mut self, port: Port) {
        if let Some(bound) = self.sockets.remove(&port) {
            self.host.unregister(bound.handle);
        }
    }

    fn transmit(&mut self, transmit: Transmit) {
        match &self.testbed {
            Some(testbed) => testbed.send(transmit.destination, transmit.contents),
            None => self.outbox.push(transmit),
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
            Event::PingReply { .. } | Event::Delivered { .. } | Event::Sealed { .. } => {}
        }
    }

    /// A control request, and whatever else is waiting, up to a batch.
    fn on_requests(&mut self, first: ControlRequest) {
        // User calls take effect at the current time, like every input.
        self.host.handle_input(Input::Timeout(self.clock.now()));
        self.on_request(first);
        for _ in 0..REQUESTS_PER_WAKE {
            let Ok(request) = self.requests.try_recv() else {
                break;
            };
            self.on_request(request);
        }
    }

    fn on_request(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::Inspect(inspect) => inspect(&self.host),
            ControlRequest::Bind { port, reply } => {
                let _ = reply.send(self.bind(port));
            }
            ControlRequest::SendTo {
                from,
                to,
                port,
                data,
                reply,
            } => {
                let sent = match self.sockets.get(&from) {
                    Some(bound) => self
                        .host
                        .service_mut(bound.handle)
                        .send_owned(to, port, data)
                        .map_err(SocketError::Send),
                    None => Err(SocketError::NotBound(from)),
                };
                let _ = reply.send(sent);
            }
            ControlRequest::Unbind { port } => self.unbind(port),
            ControlRequest::Kv(request) => {
                self.kv.request(&mut self.host, self.clock.now(), request);
            }
            ControlRequest::PubSub(request) => {
                self.pubsub
                    .request(&mut self.host, self.clock.now(), request);
            }
            ControlRequest::Forward(request) => match &mut self.forward {
                Some(forward) => forward.request(&mut self.host, self.clock.now(), request),
                None => warn!("a forward request, but this runner runs no forwards"),
            },
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
                self.host
                    .overlay_mut()
                    .node_mut()
                    .trace(self.clock.now(), destination, token);
            }
        }
    }

    fn bind(&mut self, port: Port) -> Result<mpsc::Receiver<SocketDatagram>, String> {
        let socket = DatagramSocket::new(SOCKET_CAPACITY).with_max_data(self.host.max_data());
        let handle = self
            .host
            .register(port, socket)
            .map_err(|error| error.to_string())?;
        let (deliver, receiver) = mpsc::channel(SOCKET_CAPACITY);
        self.sockets.insert(port, BoundSocket { handle, deliver });
        Ok(receiver)
    }
}
