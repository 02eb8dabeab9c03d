//! Batched receiving and sending through `quinn-udp`. One system call reads up to [`SLOTS`]
//! datagrams (`recvmmsg`, and GRO where the kernel coalesces datagrams of one sender); one
//! sends a run of datagrams to one destination (GSO: equal sizes, the last may be shorter).
//! Platforms without either move one datagram per call through the same interface.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use hopwise_proto::Transmit;
use hopwise_proto::secure::MAX_SECURE_DATAGRAM;
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffers per call: enough to drain a burst, small enough to keep an idle node lean.
const SLOTS: usize = 8;
/// The most the kernel coalesces into one received buffer.
const GRO_MAX: usize = 65_536;
/// The socket's receive and send buffers asked for (the kernel caps them at
/// `net.core.rmem_max` and `wmem_max`): a burst (a pub/sub catch-up of a thousand messages, a
/// repair) arrives faster than the runner reads it, and the default of about 200 KiB holds
/// only a few hundred datagrams.
const SOCKET_BUFFER: usize = 4 << 20;

pub struct BatchReceiver {
    state: UdpSocketState,
    slots: Vec<Vec<u8>>,
    meta: [RecvMeta; SLOTS],
}

impl BatchReceiver {
    pub fn new(socket: &UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(socket.into())?;
        // Best effort: a smaller buffer drops more of a burst, as a network's queue would.
        let sized = state
            .set_recv_buffer_size(socket.into(), SOCKET_BUFFER)
            .and_then(|()| state.set_send_buffer_size(socket.into(), SOCKET_BUFFER))
            .and_then(|()| state.recv_buffer_size(socket.into()));
        match sized {
            Ok(bytes) if bytes < SOCKET_BUFFER => tracing::warn!(
                bytes,
                asked = SOCKET_BUFFER,
                "the UDP receive buffer is smaller than asked for (raise net.core.rmem_max)"
            ),
            Ok(bytes) => tracing::debug!(bytes, "UDP receive buffer"),
            Err(error) => tracing::warn!(%error, "the UDP socket buffers could not be sized"),
        }
        // A slot holds every segment GRO may coalesce into it (at most a UDP datagram's
        // 64 KiB), and one datagram of the largest size plus a byte, to tell a larger one.
        let slot_len = (state.gro_segments().max(1) * 1500).clamp(MAX_SECURE_DATAGRAM + 1, GRO_MAX);
        Ok(Self {
            state,
            slots: (0..SLOTS).map(|_| vec![0; slot_len]).collect(),
            meta: [RecvMeta::default(); SLOTS],
        })
    }

    /// Reads whatever is waiting, without blocking, and hands each datagram to `deliver`.
    /// Returns `WouldBlock` once the socket is empty.
    pub fn receive(
        &mut self,
        socket: &UdpSocket,
        mut deliver: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<()> {
        let mut buffers: Vec<IoSliceMut<'_>> =
            self.slots.iter_mut().map(|s| IoSliceMut::new(s)).collect();
        let state = &self.state;
        let meta = &mut self.meta;
        let count = socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut buffers, meta)
        })?;
        for (meta, buffer) in self.meta.iter().zip(&buffers).take(count) {
            let stride = meta.stride.max(1);
            for datagram in buffer[..meta.len].chunks(stride) {
                deliver(meta.addr, datagram);
            }
        }
        Ok(())
    }
}

/// The most bytes one GSO send carries (the largest UDP payload, less a margin for headers).
const MAX_GSO_BYTES: usize = 64_000;

pub struct BatchSender {
    state: UdpSocketState,
    /// The run being sent, reused for every send.
    run: Vec<u8>,
}

impl BatchSender {
    pub fn new(socket: &UdpSocket) -> io::Result<Self> {
        Ok(Self {
            state: UdpSocketState::new(socket.into())?,
            run: Vec::with_capacity(MAX_GSO_BYTES),
        })
    }

    /// Sends every datagram of `outbox` (in order) and empties it: consecutive datagrams to
    /// one destination go in one system call where the platform segments them. `address` maps
    /// a destination to the form the socket sends to. A full socket buffer drops, as the
    /// network would. Each datagram's buffer goes to `sent` afterwards, to be used again.
    pub fn send_all(
        &mut self,
        socket: &UdpSocket,
        outbox: &mut Vec<Transmit>,
        address: impl Fn(SocketAddr) -> SocketAddr,
        sent: impl FnMut(Vec<u8>),
    ) {
        let max_segments = self.state.max_gso_segments().max(1);
        let mut rest = &outbox[..];
        while let Some(first) = rest.first() {
            let size = first.contents.len();
            let mut count = 1;
            while count < rest.len().min(max_segments) {
                let next = &rest[count];
                let fits = (count + 1) * size <= MAX_GSO_BYTES;
                if next.destination != first.destination || next.contents.len() > size || !fits {
                    break;
                }
                count += 1;
                // Only the last segment may be shorter.
                if next.contents.len() < size {
                    break;
                }
            }
            self.run.clear();
            for transmit in &rest[..count] {
                self.run.extend_from_slice(&transmit.contents);
            }
            let transmit = quinn_udp::Transmit {
                destination: address(first.destination),
                ecn: None,
                contents: &self.run,
                segment_size: (count > 1).then_some(size),
                src_ip: None,
            };
            let state = &self.state;
            // Errors other than a full buffer are logged by quinn-udp and dropped.
            let _ = socket.try_io(Interest::WRITABLE, || state.send(socket.into(), &transmit));
            rest = &rest[count..];
        }
        outbox
            .drain(..)
            .map(|transmit| transmit.contents)
            .for_each(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(to: SocketAddr, tag: u8, len: usize) -> Transmit {
        Transmit {
            destination: to,
            contents: vec![tag; len],
        }
    }

    #[tokio::test]
    async fn runs_to_one_destination_arrive_as_the_datagrams_they_were() {
        let receivers: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for receiver in &receivers {
            receiver
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
        }
        let (a, b) = (
            receivers[0].local_addr().unwrap(),
            receivers[1].local_addr().unwrap(),
        );
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut sender = BatchSender::new(&socket).unwrap();
        // As in the runner, sends go out once the reactor has seen the socket writable.
        socket.writable().await.unwrap();
        // Runs of equal sizes, a shorter last one, a change of destination, a larger one, and
        // more than one send's worth.
        let mut outbox: Vec<Transmit> = (0..5).map(|i| datagram(a, i, 1_000)).collect();
        outbox.push(datagram(a, 5, 300));
        outbox.extend((6..9).map(|i| datagram(b, i, 1_000)));
        outbox.extend((9..11).map(|i| datagram(a, i, 1_200)));
        outbox.extend((11..61).map(|i| datagram(a, i, 1_400)));
        let expected: Vec<(SocketAddr, Vec<u8>)> = outbox
            .iter()
            .map(|t| (t.destination, t.contents.clone()))
            .collect();
        #[cfg(target_os = "linux")]
        assert!(sender.state.max_gso_segments() > 1, "runs go out segmented");
        sender.send_all(&socket, &mut outbox, |to| to, drop);
        assert!(outbox.is_empty());
        for (receiver, address) in receivers.iter().zip([a, b]) {
            let mut buffer = vec![0; 65_536];
            for (_, contents) in expected.iter().filter(|(to, _)| *to == address) {
                let len = receiver.recv(&mut buffer).expect("every datagram arrives");
                assert_eq!(&buffer[..len], &contents[..]);
            }
        }
    }
}
