//! TCP forwards: every connection accepted on a forward's local address becomes a QUIC stream
//! to the serving node ([`super::streams`]), which connects to the exposed target and splices
//! the two. QUIC gives each stream reliability, order, flow control, and congestion control
//! shared fairly by the streams of one connection; half-closes and resets cross both ways.
//!
//! A stream starts with a header from the client, `1 | name_len | name`, and the server's
//! one-byte answer: 0 to go on, or why not ([`Status`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use hopwise_proto::NodeId;
use hopwise_proto::forward::{MAX_NAME, Refusal};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use super::ControlRequest;
use super::forward::ForwardRequest;
use super::streams;

const HEADER_VERSION: u8 = 1;
/// How long a server waits for a stream's header, and for its target to accept.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a node serves at once, for every client together; more are refused as busy.
pub const MAX_SERVED_STREAMS: usize = 1_024;
/// Stream error code of a reset that crosses from one TCP side to the other.
const RESET: u32 = 1;
/// The copy buffer of each direction.
const COPY_BUFFER: usize = 64 * 1024;

/// The server's answer to a stream's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    Ready = 0,
    NotExposed = 1,
    OtherKind = 2,
    Busy = 3,
    TargetUnreachable = 4,
}

impl Status {
    fn of(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotExposed => Self::NotExposed,
            Refusal::OtherKind => Self::OtherKind,
            Refusal::Busy => Self::Busy,
        }
    }

    fn describe(byte: u8) -> &'static str {
        match byte {
            1 => "no service of that name is exposed",
            2 => "the service is exposed as udp",
            3 => "the serving node has no room for another stream",
            4 => "the serving node cannot reach the service's target",
            _ => "an unknown answer",
        }
    }
}

/// Counters of the TCP forwards, shared by their tasks.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Local connections carried to a serving node, and streams served to targets.
    pub connections_forwarded: AtomicU64,
    pub streams_served: AtomicU64,
    /// Streams this node refused, and streams the serving node refused.
    pub streams_refused: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Resets carried across, either way.
    pub resets: AtomicU64,
    pub bytes_to_targets: AtomicU64,
    pub bytes_from_targets: AtomicU64,
}

/// Open QUIC connections to serving nodes, one per node, made when first needed.
pub struct Peers {
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<NodeId, Arc<Mutex<Option<quinn::Connection>>>>>,
}

impl Peers {
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// The open connection to `node`, or a new one. Each node has a slot of its own, held
    /// while its handshake runs: streams to one node wait for that one connection, and a
    /// serving node that does not answer holds up no connection to the others.
    async fn connection(&self, node: NodeId) -> anyhow::Result<quinn::Connection> {
        let slot = self
            .connections
            .lock()
            .await
            .entry(node)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(open) = slot.as_ref()
            && open.close_reason().is_none()
        {
            return Ok(open.clone());
        }
        let connection = self
            .endpoint
            .connect(streams::address_of(node), "hopwise")?
            .await
            .with_context(|| format!("connecting to {node}"))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

/// Accepts local connections on `listener` for service `name` on `node`, until aborted.
pub async fn forward(
    listener: TcpListener,
    node: NodeId,
    name: String,
    peers: Arc<Peers>,
    counters: Arc<TcpCounters>,
) {
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, for one: wait rather than spin.
                warn!(%error, "accepting a forwarded connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (name, peers, counters) = (name.clone(), peers.clone(), counters.clone());
        tokio::spawn(async move {
            if let Err(error) = carry(tcp, node, &name, &peers, &counters).await {
                warn!(%client, service = %format!("{node}/{name}"), "forward: {error:#}");
            }
        });
    }
}

async fn carry(
    tcp: TcpStream,
    node: NodeId,
    name: &str,
    peers: &Peers,
    counters: &TcpCounters,
) -> anyhow::Result<()> {
    let connection = peers.connection(node).await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut header = vec![HEADER_VERSION, name.len() as u8];
    header.extend_from_slice(name.as_bytes());
    send.write_all(&header).await?;
    let mut status = [0];
    recv.read_exact(&mut status)
        .await
        .context("the serving node did not answer")?;
    if status[0] != Status::Ready as u8 {
        counters.connections_refused.fetch_add(1, Ordering::Relaxed);
        reset(tcp);
        bail!("refused: {}", Status::describe(status[0]));
    }
    counters
        .connections_forwarded
        .fetch_add(1, Ordering::Relaxed);
    let (sent, received) = splice(tcp, send, recv, counters).await;
    debug!(sent, received, "forwarded connection closed");
    Ok(())
}

/// How a server task asks the runner where an exposed TCP service leads.
pub type Requests = mpsc::Sender<ControlRequest>;

/// Serves the streams of every connection `endpoint` accepts, until aborted.
pub async fn serve(endpoint: quinn::Endpoint, requests: Requests, counters: Arc<TcpCounters>) {
    let permits = Arc::new(Semaphore::new(MAX_SERVED_STREAMS));
    while let Some(incoming) = endpoint.accept().await {
        let (requests, counters, permits) = (requests.clone(), counters.clone(), permits.clone());
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => return debug!(%error, "incoming stream connection failed"),
            };
            let Some(from) = streams::node_of(connection.remote_address()) else {
                return;
            };
            while let Ok((send, recv)) = connection.accept_bi().await {
                let (requests, counters) = (requests.clone(), counters.clone());
                let permit = permits.clone().try_acquire_owned().ok();
                tokio::spawn(async move {
                    if let Err(error) = serve_stream(send, recv, permit, &requests, &counters).await
                    {
                        debug!(from = %from.short(), "stream: {error:#}");
                    }
                });
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    requests: &Requests,
    counters: &TcpCounters,
) -> anyhow::Result<()> {
    let refuse = |status: Status| {
        counters.streams_refused.fetch_add(1, Ordering::Relaxed);
        status
    };
    let name = tokio::time::timeout(SETUP_TIMEOUT, read_header(&mut recv))
        .await
        .context("no header in time")??;
    let answer = match permit {
        None => Err(refuse(Status::Busy)),
        Some(_) => lookup(requests, name)
            .await
            .map_err(|r| refuse(Status::of(r))),
    };
    let target = match answer {
        Ok(target) => target,
        Err(status) => {
            send.write_all(&[status as u8]).await?;
            let _ = send.finish();
            let _ = send.stopped().await;
            return Ok(());
        }
    };
    let tcp = match tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        outcome => {
            refuse(Status::TargetUnreachable);
            send.write_all(&[Status::TargetUnreachable as u8]).await?;
            let _ = send.finish();
            let _ = send.stopped().await;
            return Err(match outcome {
                Ok(Err(error)) => anyhow!(error).context(format!("connecting to {target}")),
                _ => anyhow!("connecting to {target} timed out"),
            });
        }
    };
    send.write_all(&[Status::Ready as u8]).await?;
    counters.streams_served.fetch_add(1, Ordering::Relaxed);
    let (sent, received) = splice(tcp, send, recv, counters).await;
    counters
        .bytes_from_targets
        .fetch_add(sent, Ordering::Relaxed);
    counters
        .bytes_to_targets
        .fetch_add(received, Ordering::Relaxed);
    Ok(())
}

async fn read_header(recv: &mut quinn::RecvStream) -> anyhow::Result<String> {
    let mut start = [0; 2];
    recv.read_exact(&mut start).await?;
    let [version, len] = start;
    if version != HEADER_VERSION || usize::from(len) > MAX_NAME {
        bail!("a malformed stream header");
    }
    let mut name = vec![0; usize::from(len)];
    recv.read_exact(&mut name).await?;
    String::from_utf8(name).context("a service name that is not UTF-8")
}

async fn lookup(requests: &Requests, name: String) -> Result<std::net::SocketAddr, Refusal> {
    let (reply, answer) = oneshot::channel();
    let request = ControlRequest::Forward(ForwardRequest::LookupTcp { name, reply });
    if requests.send(request).await.is_err() {
        return Err(Refusal::Busy);
    }
    answer.await.unwrap_or(Err(Refusal::Busy))
}

/// Copies both ways until both are done: an end of stream on one side half-closes the other,
/// and a reset on one side resets the other. Returns the bytes sent from the TCP side and the
/// bytes received for it.
async fn splice(
    mut tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    counters: &TcpCounters,
) -> (u64, u64) {
    let (reader, mut writer) = tcp.split();
    let mut reader = BufReader::with_capacity(COPY_BUFFER, reader);
    let (mut sent, mut received) = (0, 0);
    let mut reset_here = false;
    {
        let up = async {
            match tokio::io::copy_buf(&mut reader, &mut send).await {
                Ok(bytes) => {
                    sent = bytes;
                    let _ = send.finish();
                    // Wait until the peer has everything, or the stream ends otherwise.
                    let _ = send.stopped().await;
                    true
                }
                Err(_) => {
                    let _ = send.reset(RESET.into());
                    false
                }
            }
        };
        let down = async {
            let mut buffer = vec![0; COPY_BUFFER];
            loop {
                match recv.read(&mut buffer).await {
                    Ok(Some(n)) => {
                        if writer.write_all(&buffer[..n]).await.is_err() {
                            let _ = recv.stop(RESET.into());
                            return false;
                        }
                        received += n as u64;
                    }
                    Ok(None) => {
                        let _ = writer.shutdown().await;
                        return true;
                    }
                    Err(_) => return false,
                }
            }
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) {
            tokio::select! {
                clean = &mut up, if !up_done => {
                    up_done = true;
                    if !clean {
                        break;
                    }
                }
                clean = &mut down, if !down_done => {
                    down_done = true;
                    if !clean {
                        reset_here = true;
                        break;
                    }
                }
            }
        }
        if !(up_done && down_done) {
            counters.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
    if reset_here {
        let _ = send.reset(RESET.into());
        reset(tcp);
    }
    (sent, received)
}

/// Closes a TCP connection with a reset rather than a FIN.
fn reset(tcp: TcpStream) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the descriptor is open (owned by `tcp`) and the option value is a linger.
        unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    drop(tcp);
}
