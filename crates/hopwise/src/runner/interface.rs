//! The VPN's TUN interface, read and written in batches. On Linux the interface runs with
//! offloads (a virtio-net header on every packet): the kernel hands over a TCP stream's
//! segments as one large packet, which tun-rs splits into MTU-sized ones, and packets
//! written back are coalesced per flow the same way (GRO), so a batch costs one system call.
//! Every buffer is allocated once.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tun_rs::{AsyncDevice, DeviceBuilder};

/// Packets handed over per read or write call at most.
#[cfg(target_os = "linux")]
const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;

pub struct Interface {
    device: AsyncDevice,
    #[cfg(target_os = "linux")]
    offload: Offload,
    #[cfg(not(target_os = "linux"))]
    buffer: Vec<u8>,
}

#[cfg(target_os = "linux")]
struct Offload {
    /// What one read returns: the virtio-net header and a packet of up to 64 KiB.
    raw: Vec<u8>,
    /// The packets it splits into, and their sizes.
    packets: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Packets to write, each behind room for the header; `writing` of them are in use.
    outgoing: Vec<Vec<u8>>,
    writing: usize,
    gro: tun_rs::GROTable,
}

impl Interface {
    pub fn create(name: &str, mtu: u16, ipv6: Ipv6Addr) -> io::Result<Self> {
        let builder = DeviceBuilder::new().name(name).mtu(mtu).ipv6(ipv6, 64);
        #[cfg(target_os = "linux")]
        let builder = builder.with(|builder| {
            builder.offload(true);
        });
        let device = builder.build_async()?;
        Ok(Self {
            device,
            #[cfg(target_os = "linux")]
            offload: Offload {
                raw: vec![0; tun_rs::VIRTIO_NET_HDR_LEN + 65_535],
                // A packet the kernel did not segment lands in the first buffer: it holds
                // any size, so one over the MTU (set by hand) reaches the VPN, which answers
                // it. Segments of a large one fit the MTU.
                packets: std::iter::once(vec![0; 65_535])
                    .chain(std::iter::repeat_n(vec![0; usize::from(mtu)], BATCH - 1))
                    .collect(),
                sizes: vec![0; BATCH],
                outgoing: Vec::new(),
                writing: 0,
                gro: tun_rs::GROTable::default(),
            },
            #[cfg(not(target_os = "linux"))]
            buffer: vec![0; usize::from(u16::MAX)],
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.device.readable().await
    }

    /// One read: hands each packet it holds to `each`; `WouldBlock` when there is none.
    pub fn read(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let offload = &mut self.offload;
            let count = self.device.try_recv_multiple(
                &mut offload.raw,
                &mut offload.packets,
                &mut offload.sizes,
                0,
            )?;
            for (packet, size) in offload.packets.iter().zip(&offload.sizes).take(count) {
                each(&packet[..*size]);
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let len = self.device.try_recv(&mut self.buffer)?;
            each(&self.buffer[..len]);
        }
        Ok(())
    }

    /// Queues a packet for [`Interface::flush`].
    pub fn write(&mut self, packet: &[u8]) {
        #[cfg(target_os = "linux")]
        {
            let offload = &mut self.offload;
            if offload.writing == offload.outgoing.len() {
                offload.outgoing.push(Vec::new());
            }
            let buffer = &mut offload.outgoing[offload.writing];
            buffer.clear();
            // Room for the header, which tun-rs fills in.
            buffer.resize(tun_rs::VIRTIO_NET_HDR_LEN, 0);
            buffer.extend_from_slice(packet);
            offload.writing += 1;
            if offload.writing == BATCH {
                self.flush();
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            // A full interface queue drops the packet, as a congested link would.
            let _ = self.device.try_send(packet);
        }
    }

    /// Writes the queued packets, coalesced where they continue one flow.
    pub fn flush(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let offload = &mut self.offload;
            if offload.writing == 0 {
                return;
            }
            let queued = &mut offload.outgoing[..offload.writing];
            // The device's own (non-blocking) write, not the async one of the same name. A
            // full interface queue drops packets, as a congested link would.
            let device: &tun_rs::DeviceImpl = &self.device;
            let _ = device.send_multiple(&mut offload.gro, queued, tun_rs::VIRTIO_NET_HDR_LEN);
            offload.writing = 0;
        }
    }

    pub fn add_ipv4(&self, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        self.device.add_address_v4(address, prefix_len)
    }

    pub fn remove_address(&self, address: IpAddr) -> io::Result<()> {
        self.device.remove_address(address)
    }
}
