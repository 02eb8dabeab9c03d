//! `hopwise node --capture FILE`: the node's packets after hop-by-hop decryption (and before
//! encryption), as a pcap file that tshark or Wireshark reads. Each packet is wrapped in an
//! IP and UDP header between the node's address and its peer's (link type RAW), so the tools
//! show who talked to whom; the UDP payload is the hopwise packet a member relay sees.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hopwise_proto::secure::Captured;

/// pcap's link type for packets that start with an IPv4 or IPv6 header.
const LINKTYPE_RAW: u32 = 101;
const UDP: u8 = 17;

pub struct Capture {
    out: BufWriter<File>,
    local: SocketAddr,
}

impl Capture {
    /// Creates `path` (replacing it) and writes the pcap header.
    pub fn create(path: &Path, local: SocketAddr) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?; // time zone, accuracy
        out.write_all(&65_535u32.to_le_bytes())?;
        out.write_all(&LINKTYPE_RAW.to_le_bytes())?;
        Ok(Self { out, local })
    }

    pub fn write(&mut self, captured: &Captured) -> std::io::Result<()> {
        let (source, destination) = if captured.outgoing {
            (self.local, captured.peer)
        } else {
            (captured.peer, self.local)
        };
        let record = ip_udp(source, destination, &captured.packet);
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.out
            .write_all(&(since_epoch.as_secs() as u32).to_le_bytes())?;
        self.out
            .write_all(&since_epoch.subsec_micros().to_le_bytes())?;
        let len = (record.len() as u32).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&len)?;
        self.out.write_all(&record)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `payload` behind an IP header (IPv4 when the peer is IPv4) and a UDP header.
fn ip_udp(source: SocketAddr, destination: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&source.port().to_be_bytes());
    udp.extend_from_slice(&destination.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum
    udp.extend_from_slice(payload);
    let v4 = |addr: SocketAddr| match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
    };
    let mut packet = Vec::with_capacity(40 + udp_len);
    if destination.ip().to_canonical().is_ipv4() || source.ip().to_canonical().is_ipv4() {
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        header[6] = 0x40; // don't fragment
        header[8] = 64;
        header[9] = UDP;
        header[12..16].copy_from_slice(&v4(source).octets());
        header[16..20].copy_from_slice(&v4(destination).octets());
        let checksum = ipv4_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet.extend_from_slice(&header);
    } else {
        let v6 = |addr: SocketAddr| match addr.ip() {
            IpAddr::V6(v6) => v6,
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        };
        packet.extend_from_slice(&[0x60, 0, 0, 0]);
        packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
        packet.extend_from_slice(&[UDP, 64]);
        packet.extend_from_slice(&v6(source).octets());
        packet.extend_from_slice(&v6(destination).octets());
    }
    packet.extend_from_slice(&udp);
    packet
}

fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_record_and_its_checksum() {
        let packet = ip_udp(
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.2:4002".parse().unwrap(),
            b"hw",
        );
        assert_eq!(packet.len(), 20 + 8 + 2);
        assert_eq!(&packet[..4], &[0x45, 0, 0, 30]);
        assert_eq!(&packet[12..20], &[127, 0, 0, 1, 127, 0, 0, 2]);
        assert_eq!(&packet[20..28], &[0x0f, 0xa0, 0x0f, 0xa2, 0, 10, 0, 0]);
        let header: [u8; 20] = packet[..20].try_into().unwrap();
        // A header with its checksum in place sums to all ones.
        let mut check = header;
        check[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(
            ipv4_checksum(&check),
            u16::from_be_bytes([header[10], header[11]])
        );
        assert_eq!(&packet[28..], b"hw");
    }
}
