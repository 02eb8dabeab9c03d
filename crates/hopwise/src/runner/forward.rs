//! The runner's side of `hopwise expose` and `hopwise forward`: the forward service on the
//! host, the local sockets of UDP forwards and of the flows they serve, and the QUIC endpoint
//! whose streams carry TCP forwards ([`super::tcp_forward`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hopwise_proto::forward::{
    ExposeError, ForwardEvent, ForwardId, Forwards, Kind, QueryOutcome, Refusal, ServedFlow,
};
use hopwise_proto::service::{DatagramSocket, ServiceHandle, ports};
use hopwise_proto::{Instant, NodeId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::NodeHost;
use super::streams::{self, StreamDatagram, StreamPorts};
use super::tcp_forward::{self, Peers, TcpCounters};

/// Datagrams from local clients and targets waiting for the runner, before their readers wait.
const INPUT_QUEUE: usize = 1_024;
/// The largest UDP datagram a forward reads.
const MAX_UDP: usize = 65_535;

/// A forward or expose call from the control API.
pub enum ForwardRequest {
    Expose {
        kind: Kind,
        name: String,
        target: SocketAddr,
        reply: oneshot::Sender<Result<(), ExposeError>>,
    },
    Unexpose {
        name: String,
        reply: oneshot::Sender<bool>,
    },
    /// Checks that `node` exposes `name` as `kind`, then listens on `listen`; answers with
    /// the address it listens on.
    Forward {
        kind: Kind,
        listen: SocketAddr,
        node: NodeId,
        name: String,
        /// `NODE/NAME` as the user wrote it.
        service: String,
        reply: oneshot::Sender<Result<SocketAddr, String>>,
    },
    /// Stops the forwards on `listen` (of `kind` only, if given); answers how many.
    Unforward {
        listen: SocketAddr,
        kind: Option<Kind>,
        reply: oneshot::Sender<usize>,
    },
    List {
        reply: oneshot::Sender<Listing>,
    },
    /// Where the TCP service `name` leads (for a stream this node serves).
    LookupTcp {
        name: String,
        reply: oneshot::Sender<Result<SocketAddr, Refusal>>,
    },
}

/// What this node exposes and forwards.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub exposed: Vec<(String, Kind, SocketAddr)>,
    pub forwards: Vec<ForwardEntry>,
}

#[derive(Debug, Clone)]
pub struct ForwardEntry {
    pub kind: Kind,
    pub listen: SocketAddr,
    pub service: String,
    pub node: NodeId,
}

/// What the local sockets hand the runner.
pub enum ForwardInput {
    FromClient {
        forward: ForwardId,
        client: SocketAddr,
        data: Vec<u8>,
    },
    FromTarget {
        flow: ServedFlow,
        data: Vec<u8>,
    },
    Stream(StreamDatagram),
}

struct Running {
    entry: ForwardEntry,
    /// The UDP forward's socket (replies go out through it, as through a target's) and id;
    /// none for TCP.
    udp: Option<(std::net::UdpSocket, ForwardId)>,
    task: JoinHandle<()>,
}

struct Target {
    /// Sends on the socket without asking tokio for its readiness, which it learns only on
    /// the reactor's next turn: the flow's first datagram goes out in the same turn as the
    /// socket is made.
    sender: std::net::UdpSocket,
    task: JoinHandle<()>,
}

struct PendingForward {
    kind: Kind,
    listen: SocketAddr,
    node: NodeId,
    name: String,
    service: String,
    reply: oneshot::Sender<Result<SocketAddr, String>>,
}

/// The QUIC endpoint and what drives it; absent when the path is too small for QUIC.
struct Streams {
    handle: ServiceHandle<DatagramSocket>,
    ports: StreamPorts,
    peers: Arc<Peers>,
    server: JoinHandle<()>,
}

pub struct ForwardBridge {
    handle: ServiceHandle<Forwards>,
    local: NodeId,
    running: Vec<Running>,
    targets: std::collections::HashMap<ServedFlow, Target>,
    pending: std::collections::HashMap<u32, PendingForward>,
    inputs: mpsc::Sender<ForwardInput>,
    from_sockets: mpsc::Receiver<ForwardInput>,
    streams: Result<Streams, String>,
    counters: Arc<TcpCounters>,
}

impl ForwardBridge {
    /// Puts the forward service and the stream port on the host. `requests` reaches the
    /// runner (stream servers look up exposed services through it).
    pub fn start(
        host: &mut NodeHost,
        seed: u64,
        requests: mpsc::Sender<super::ControlRequest>,
        counters: Arc<TcpCounters>,
    ) -> anyhow::Result<Self> {
        let local = host.node().id();
        let handle = host
            .register(ports::FORWARD, Forwards::new(host.max_data(), seed))
            .context("registering the forward service")?;
        let streams = match streams::endpoint(local, host.max_data()) {
            Ok((endpoint, ports)) => {
                let socket =
                    DatagramSocket::new(streams::DATAGRAM_QUEUE).with_max_data(host.max_data());
                let handle = host
                    .register(ports::STREAMS, socket)
                    .context("registering the stream port")?;
                let server = tokio::spawn(tcp_forward::serve(
                    endpoint.clone(),
                    requests,
                    counters.clone(),
                ));
                Ok(Streams {
                    handle,
                    ports,
                    peers: Arc::new(Peers::new(endpoint)),
                    server,
                })
            }
            Err(error) => {
                warn!("TCP forwards are off: {error:#}");
                Err(format!("{error:#}"))
            }
        };
        let (inputs, from_sockets) = mpsc::channel(INPUT_QUEUE);
        Ok(Self {
            handle,
            local,
            running: Vec::new(),
            targets: Default::default(),
            pending: Default::default(),
            inputs,
            from_sockets,
            streams,
            counters,
        })
    }

    /// The next datagram from a local socket or from QUIC.
    pub async fn recv(&mut self) -> Option<ForwardInput> {
        match &mut self.streams {
            Ok(streams) => tokio::select! {
                input = self.from_sockets.recv() => input,
                datagram = streams.ports.outgoing.recv() => datagram.map(ForwardInput::Stream),
            },
            Err(_) => self.from_sockets.recv().await,
        }
    }

    /// One that is already waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<ForwardInput> {
        if let Ok(input) = self.from_sockets.try_recv() {
            return Some(input);
        }
        let streams = self.streams.as_mut().ok()?;
        streams
            .ports
            .outgoing
            .try_recv()
            .ok()
            .map(ForwardInput::Stream)
    }

    pub fn on_input(&mut self, host: &mut NodeHost, now: Instant, input: ForwardInput) {
        match input {
            ForwardInput::FromClient {
                forward,
                client,
                data,
            } => {
                // A datagram too large or without a flow slot is counted by the service.
                let _ = host
                    .service_mut(self.handle)
                    .send(now, forward, client, &data);
            }
            ForwardInput::FromTarget { flow, data } => {
                host.service_mut(self.handle).from_target(now, flow, &data);
            }
            ForwardInput::Stream(datagram) => {
                if let Ok(streams) = &self.streams {
                    // What does not fit or finds the queue full is lost; QUIC sends it again.
                    let _ = host.service_mut(streams.handle).send_owned(
                        datagram.to,
                        ports::STREAMS,
                        datagram.data,
                    );
                }
            }
        }
    }

    pub fn request(&mut self, host: &mut NodeHost, now: Instant, request: ForwardRequest) {
        let forwards = host.service_mut(self.handle);
        match request {
            ForwardRequest::Expose {
                kind,
                name,
                target,
                reply,
            } => {
                let exposed = forwards.expose(&name, kind, target);
                if exposed.is_ok() {
                    info!(%name, %kind, %target, "exposed");
                }
                let _ = reply.send(exposed);
            }
            ForwardRequest::Unexpose { name, reply } => {
                let _ = reply.send(forwards.unexpose(&name));
            }
            ForwardRequest::Forward {
                kind,
                listen,
                node,
                name,
                service,
                reply,
            } => {
                if self
                    .running
                    .iter()
                    .any(|r| r.entry.listen == listen && r.entry.kind == kind)
                {
                    let _ =
                        reply.send(Err(format!("a {kind} forward listens on {listen} already")));
                    return;
                }
                if node == self.local {
                    let _ = reply.send(Err(format!(
                        "{service} is on this node: connect to its target directly"
                    )));
                    return;
                }
                if kind == Kind::Tcp
                    && let Err(error) = &self.streams
                {
                    let _ = reply.send(Err(error.clone()));
                    return;
                }
                let Some(token) = forwards.query(now, node, kind, &name) else {
                    let _ = reply.send(Err("too many forwards are being set up".into()));
                    return;
                };
                self.pending.insert(
                    token,
                    PendingForward {
                        kind,
                        listen,
                        node,
                        name,
                        service,
                        reply,
                    },
                );
            }
            ForwardRequest::Unforward {
                listen,
                kind,
                reply,
            } => {
                let matches = |r: &Running| {
                    r.entry.listen == listen && kind.is_none_or(|kind| r.entry.kind == kind)
                };
                let (stopped, kept) = std::mem::take(&mut self.running)
                    .into_iter()
                    .partition::<Vec<_>, _>(matches);
                self.running = kept;
                for running in &stopped {
                    running.task.abort();
                    if let Some((_, id)) = running.udp {
                        forwards.close_forward(id);
                    }
                }
                let _ = reply.send(stopped.len());
            }
            ForwardRequest::List { reply } => {
                let _ = reply.send(Listing {
                    exposed: forwards
                        .exposed()
                        .map(|(name, e)| (name.to_string(), e.kind, e.target))
                        .collect(),
                    forwards: self.running.iter().map(|r| r.entry.clone()).collect(),
                });
            }
            ForwardRequest::LookupTcp { name, reply } => {
                let _ = reply.send(forwards.lookup(&name, Kind::Tcp));
            }
        }
    }

    /// Acts on what the service asks for, and hands quinn the datagrams for its port.
    pub fn pump(&mut self, host: &mut NodeHost) {
        while let Some(event) = host.service_mut(self.handle).poll_event() {
            self.on_event(host, event);
        }
        if let Ok(streams) = &self.streams {
            let socket = host.service_mut(streams.handle);
            while let Some(datagram) = socket.recv_from() {
                if streams.ports.incoming.try_send(datagram).is_err() {
                    socket.count_dropped();
                }
            }
        }
    }

    fn on_event(&mut self, host: &mut NodeHost, event: ForwardEvent) {
        match event {
            ForwardEvent::Answered { token, outcome } => {
                if let Some(pending) = self.pending.remove(&token) {
                    self.finish_forward(host, pending, outcome);
                }
            }
            ForwardEvent::OpenTarget { flow, target } => match open_target(target) {
                Ok((sender, receiver)) => {
                    let task =
                        tokio::spawn(read_into(receiver, self.inputs.clone(), move |_, data| {
                            ForwardInput::FromTarget { flow, data }
                        }));
                    self.targets.insert(flow, Target { sender, task });
                }
                Err(error) => warn!(%target, %error, "cannot open a socket for a forwarded flow"),
            },
            ForwardEvent::ToTarget { flow, data } => {
                if let Some(target) = self.targets.get(&flow) {
                    // A full socket buffer drops the datagram, as the network would.
                    let _ = target.sender.send(&data);
                }
            }
            ForwardEvent::CloseTarget { flow } => {
                if let Some(target) = self.targets.remove(&flow) {
                    target.task.abort();
                }
            }
            ForwardEvent::ToClient {
                forward,
                client,
                data,
            } => {
                let socket = self.running.iter().find_map(|r| match &r.udp {
                    Some((socket, id)) if *id == forward => Some(socket),
                    _ => None,
                });
                if let Some(socket) = socket {
                    let _ = socket.send_to(&data, client);
                }
            }
            ForwardEvent::Refused {
                forward,
                client,
                refusal,
            } => {
                let service = self
                    .running
                    .iter()
                    .find(|r| r.udp.as_ref().is_some_and(|(_, id)| *id == forward))
                    .map(|r| r.entry.service.clone());
                warn!(%client, service = ?service, "forwarded flow refused: {refusal}");
            }
        }
    }

    fn finish_forward(
        &mut self,
        host: &mut NodeHost,
        pending: PendingForward,
        outcome: QueryOutcome,
    ) {
        let PendingForward {
            kind,
            listen,
            node,
            name,
            service,
            reply,
        } = pending;
        let refused = match outcome {
            QueryOutcome::Exposed => None,
            QueryOutcome::Refused(Refusal::OtherKind) => Some(format!(
                "{service} is not a {kind} service: it is exposed as {}",
                match kind {
                    Kind::Udp => Kind::Tcp,
                    Kind::Tcp => Kind::Udp,
                }
            )),
            QueryOutcome::Refused(refusal) => Some(format!("{service}: {refusal}")),
            QueryOutcome::NoAnswer => Some(format!(
                "{service}: no answer from {node} within {} s",
                hopwise_proto::forward::QUERY_TIMEOUT.as_secs_f64()
            )),
        };
        if let Some(refused) = refused {
            let _ = reply.send(Err(refused));
            return;
        }
        let entry = ForwardEntry {
            kind,
            listen,
            service,
            node,
        };
        let started = match kind {
            Kind::Udp => self.start_udp(host, entry, &name),
            Kind::Tcp => self.start_tcp(entry, &name),
        };
        match started {
            Ok(running) => {
                let entry = &running.entry;
                info!(%kind, listen = %entry.listen, service = %entry.service, "forwarding");
                let _ = reply.send(Ok(entry.listen));
                self.running.push(running);
            }
            Err(error) => {
                let _ = reply.send(Err(format!("listening on {listen}: {error:#}")));
            }
        }
    }

    /// Listens for UDP on `entry.listen`, which becomes the address bound.
    fn start_udp(
        &mut self,
        host: &mut NodeHost,
        mut entry: ForwardEntry,
        name: &str,
    ) -> anyhow::Result<Running> {
        let socket = std::net::UdpSocket::bind(entry.listen)?;
        socket.set_nonblocking(true)?;
        let sender = socket.try_clone()?;
        entry.listen = socket.local_addr()?;
        let socket = UdpSocket::from_std(socket)?;
        let id = host
            .service_mut(self.handle)
            .open_forward(entry.node, name)
            .map_err(anyhow::Error::from)?;
        let task = tokio::spawn(read_into(
            socket,
            self.inputs.clone(),
            move |client, data| ForwardInput::FromClient {
                forward: id,
                client,
                data,
            },
        ));
        Ok(Running {
            entry,
            udp: Some((sender, id)),
            task,
        })
    }

    /// Listens for TCP on `entry.listen`, which becomes the address bound.
    fn start_tcp(&mut self, mut entry: ForwardEntry, name: &str) -> anyhow::Result<Running> {
        let streams = self.streams.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let listener = std::net::TcpListener::bind(entry.listen)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        entry.listen = listener.local_addr()?;
        let task = tokio::spawn(tcp_forward::forward(
            listener,
            entry.node,
            name.to_string(),
            streams.peers.clone(),
            self.counters.clone(),
        ));
        Ok(Running {
            entry,
            udp: None,
            task,
        })
    }
}

impl Drop for ForwardBridge {
    fn drop(&mut self) {
        self.running.iter().for_each(|r| r.task.abort());
        self.targets.values().for_each(|t| t.task.abort());
        if let Ok(streams) = &self.streams {
            streams.server.abort();
        }
    }
}

/// A socket of the target's family, connected to it, so only its answers come back: a
/// handle to send on, and one to receive on.
fn open_target(target: SocketAddr) -> std::io::Result<(std::net::UdpSocket, UdpSocket)> {
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    let sender = socket.try_clone()?;
    Ok((sender, UdpSocket::from_std(socket)?))
}

/// Hands every datagram `socket` receives to the runner, made into an input by `input` (from
/// the sender's address and the bytes), until the runner is gone. An ICMP error for an earlier
/// datagram (a target that is down) surfaces as a failed receive; the socket goes on.
async fn read_into(
    socket: UdpSocket,
    inputs: mpsc::Sender<ForwardInput>,
    input: impl Fn(SocketAddr, Vec<u8>) -> ForwardInput,
) {
    let mut buffer = vec![0; MAX_UDP];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if inputs
            .send(input(from, buffer[..len].to_vec()))
            .await
            .is_err()
        {
            return;
        }
    }
}
