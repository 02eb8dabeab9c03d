//! Reliable streams between nodes: QUIC (quinn) over the overlay's end-to-end datagrams on
//! [`ports::STREAMS`].
//!
//! quinn sees a UDP socket ([`OverlaySocket`]) whose addresses stand for node ids: node
//! `0123456789abcdef` is `[fd68:7770::0123:4567:89ab:cdef]:5`. What quinn sends goes to the
//! runner, which hands it to the end-to-end layer; what arrives on the port comes back with the
//! sender's id, which the end-to-end session proved with the sender's node key. So the peer of
//! a connection is authenticated by the overlay, not by TLS: the certificate is a throwaway
//! self-signed one and the client accepts any, since no other node can put datagrams under
//! that id. For the same reason the connections negotiate a suite ([`suite`]) that leaves
//! QUIC's packets to the overlay's protection rather than encrypting them a second time.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hopwise_proto::NodeId;
use hopwise_proto::service::SocketDatagram;
use hopwise_proto::service::ports;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::sync::mpsc;

mod suite;

/// The first 64 bits of every node's stream address.
const ADDRESS_PREFIX: [u8; 8] = [0xfd, 0x68, 0x77, 0x70, 0, 0, 0, 0];
/// Streams one connection may have open at once; more wait for the peer's credit.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Connections from other nodes accepted at once.
pub const MAX_INCOMING_CONNECTIONS: usize = 256;
/// Datagrams waiting to go into the overlay, or up to quinn, before more are dropped.
pub const DATAGRAM_QUEUE: usize = 4_096;
/// The smallest datagram QUIC works with.
pub const QUIC_MIN_DATAGRAM: usize = 1_200;
const ALPN: &[u8] = b"hopwise-streams/1";

/// The stream address of a node.
pub fn address_of(node: NodeId) -> SocketAddr {
    let mut octets = [0; 16];
    octets[..8].copy_from_slice(&ADDRESS_PREFIX);
    octets[8..].copy_from_slice(node.as_bytes());
    SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(octets),
        ports::STREAMS.0,
        0,
        0,
    ))
}

/// The node a stream address stands for.
pub fn node_of(address: SocketAddr) -> Option<NodeId> {
    let SocketAddr::V6(v6) = address else {
        return None;
    };
    let octets = v6.ip().octets();
    (octets[..8] == ADDRESS_PREFIX).then(|| NodeId::from_bytes(octets[8..].try_into().unwrap()))
}

/// A datagram quinn wants sent to a node's stream port.
pub struct StreamDatagram {
    pub to: NodeId,
    pub data: Vec<u8>,
}

/// quinn's socket: datagrams to and from the runner.
pub struct OverlaySocket {
    local: SocketAddr,
    outgoing: mpsc::Sender<StreamDatagram>,
    incoming: Mutex<mpsc::Receiver<SocketDatagram>>,
}

impl fmt::Debug for OverlaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverlaySocket")
            .field("local", &self.local)
            .finish()
    }
}

/// Sending never waits: a datagram that finds the queue full is lost, as on a real network,
/// and QUIC's congestion control slows down.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for OverlaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(to) = node_of(transmit.destination) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a node's stream address",
            ));
        };
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len());
        for datagram in transmit.contents.chunks(segment.max(1)) {
            let _ = self.outgoing.try_send(StreamDatagram {
                to,
                data: datagram.to_vec(),
            });
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut incoming = self.incoming.lock().expect("the receive queue");
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let next = if filled == 0 {
                match incoming.poll_recv(cx) {
                    Poll::Ready(Some(datagram)) => datagram,
                    // The runner is gone: nothing will arrive again.
                    Poll::Ready(None) => return Poll::Pending,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match incoming.try_recv() {
                    Ok(datagram) => datagram,
                    Err(_) => break,
                }
            };
            let len = next.data.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&next.data[..len]);
            meta[filled] = RecvMeta {
                addr: address_of(next.from),
                len,
                stride: len,
                ..RecvMeta::default()
            };
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        16
    }

    fn may_fragment(&self) -> bool {
        // The overlay never fragments: what does not fit is refused before it is sent.
        false
    }
}

/// The runner's ends of an endpoint's socket.
pub struct StreamPorts {
    /// What quinn sends.
    pub outgoing: mpsc::Receiver<StreamDatagram>,
    /// Where datagrams for the stream port go.
    pub incoming: mpsc::Sender<SocketDatagram>,
}

/// A QUIC endpoint over the overlay for node `local`, both client and server, whose packets
/// are at most `max_data` bytes (the overlay's payload limit, at least 1,200).
pub fn endpoint(local: NodeId, max_data: usize) -> anyhow::Result<(quinn::Endpoint, StreamPorts)> {
    anyhow::ensure!(
        max_data >= QUIC_MIN_DATAGRAM,
        "streams need overlay datagrams of {QUIC_MIN_DATAGRAM} bytes; this node's path carries \
         {max_data} (raise --mtu)"
    );
    let (to_runner, outgoing) = mpsc::channel(DATAGRAM_QUEUE);
    let (incoming, from_runner) = mpsc::channel(DATAGRAM_QUEUE);
    let socket = Arc::new(OverlaySocket {
        local: address_of(local),
        outgoing: to_runner,
        incoming: Mutex::new(from_runner),
    });
    let provider = Arc::new(suite::provider());
    let mtu = u16::try_from(max_data).unwrap_or(u16::MAX);
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(mtu)?,
        Some(server_config(provider.clone(), mtu)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client_config(provider, mtu)?);
    Ok((endpoint, StreamPorts { outgoing, incoming }))
}

/// The largest QUIC packet this endpoint takes is what the overlay carries to it.
fn endpoint_config(mtu: u16) -> anyhow::Result<quinn::EndpointConfig> {
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(mtu)?;
    Ok(config)
}

/// RFC 9002's initial congestion window for datagrams of `mtu` bytes. quinn's default counts
/// ten 1,200-byte datagrams (12,000 bytes): on a path whose datagrams are that large it holds
/// none, and a connection would never send its first.
fn initial_window(mtu: u16) -> u64 {
    let mtu = u64::from(mtu);
    (10 * mtu).min((2 * mtu).max(14_720))
}

fn transport(mtu: u16) -> Arc<quinn::TransportConfig> {
    let mut congestion = quinn::congestion::CubicConfig::default();
    congestion.initial_window(initial_window(mtu));
    let mut transport = quinn::TransportConfig::default();
    transport
        .congestion_controller_factory(Arc::new(congestion))
        .initial_mtu(mtu)
        .min_mtu(mtu)
        .mtu_discovery_config(None)
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            Duration::from_secs(30)
                .try_into()
                .expect("30 s is a valid idle timeout"),
        ));
    Arc::new(transport)
}

fn server_config(provider: Arc<CryptoProvider>, mtu: u16) -> anyhow::Result<quinn::ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec!["hopwise".to_string()])
        .context("making the streams' certificate")?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(transport(mtu))
        .max_incoming(MAX_INCOMING_CONNECTIONS);
    Ok(config)
}

fn client_config(provider: Arc<CryptoProvider>, mtu: u16) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OverlayAuthenticated(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(mtu));
    Ok(config)
}

/// Accepts the server's certificate: the overlay has proved who the server is (see the module
/// documentation). Its handshake signature is still checked, so TLS itself stays sound.
#[derive(Debug)]
struct OverlayAuthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for OverlayAuthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_and_its_stream_address_map_to_each_other() {
        let node = NodeId::from_bytes([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        let address = address_of(node);
        assert_eq!(address.to_string(), "[fd68:7770::123:4567:89ab:cdef]:5");
        assert_eq!(node_of(address), Some(node));
        assert_eq!(node_of("127.0.0.1:5".parse().unwrap()), None);
        assert_eq!(node_of("[fd00::1]:5".parse().unwrap()), None);
    }

    /// Carries what one endpoint sends to the other, as the overlay does, keeping a copy.
    fn wire(
        from: NodeId,
        mut sent: mpsc::Receiver<StreamDatagram>,
        to: mpsc::Sender<SocketDatagram>,
    ) -> mpsc::UnboundedReceiver<Vec<u8>> {
        let (seen, copies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(datagram) = sent.recv().await {
                let _ = seen.send(datagram.data.clone());
                let _ = to
                    .send(SocketDatagram {
                        from,
                        port: ports::STREAMS,
                        data: datagram.data,
                    })
                    .await;
            }
        });
        copies
    }

    #[tokio::test]
    async fn two_endpoints_carry_a_stream_under_the_overlay_protected_suite() {
        let (a, b) = (NodeId::from_bytes([0xa; 8]), NodeId::from_bytes([0xb; 8]));
        let (client, client_ports) = endpoint(a, 1_349).unwrap();
        let (server, server_ports) = endpoint(b, 1_349).unwrap();
        let mut sent_by_client = wire(a, client_ports.outgoing, server_ports.incoming);
        let _sent_by_server = wire(b, server_ports.outgoing, client_ports.incoming);

        let marker = b"bytes the overlay seals, not QUIC";
        let served = tokio::spawn(async move {
            let connection = server.accept().await.unwrap().await.unwrap();
            assert_eq!(node_of(connection.remote_address()), Some(a));
            let (mut send, mut recv) = connection.accept_bi().await.unwrap();
            let received = recv.read_to_end(1 << 16).await.unwrap();
            send.write_all(&received).await.unwrap();
            send.finish().unwrap();
            send.stopped().await.unwrap();
        });
        let connection = client
            .connect(address_of(b), "hopwise")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(marker).await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(1 << 16).await.unwrap(), marker);
        served.await.unwrap();

        // Had the connection taken TLS_AES_128_GCM_SHA256, no packet would hold the bytes.
        let mut packets = Vec::new();
        while let Ok(packet) = sent_by_client.try_recv() {
            packets.push(packet);
        }
        assert!(
            packets
                .iter()
                .any(|p| p.windows(marker.len()).any(|w| w == marker)),
            "{} packets, none with the stream's bytes in the clear",
            packets.len()
        );
    }
}
