//! Batched receiving: one system call reads up to [`SLOTS`] datagrams (`recvmmsg`, and GRO
//! where the kernel coalesces datagrams of one sender), through `quinn-udp`. Platforms without
//! either read one datagram per call through the same interface.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use hopwise_proto::secure::MAX_SECURE_DATAGRAM;
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffers per call: enough to drain a burst, small enough to keep an idle node lean.
const SLOTS: usize = 8;

pub struct BatchReceiver {
    state: UdpSocketState,
    slots: Vec<Vec<u8>>,
    meta: [RecvMeta; SLOTS],
}

impl BatchReceiver {
    pub fn new(socket: &UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(socket.into())?;
        // A slot holds every segment GRO may coalesce into it.
        let slot_len = state.gro_segments().max(1) * (MAX_SECURE_DATAGRAM + 1).max(1500);
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
