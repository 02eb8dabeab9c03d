//! The few facts the VPN reads from an IP packet (version, addresses, don't-fragment), and
//! the ICMP errors it answers oversized packets with, so path MTU discovery works.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A packet that is not a whole IPv4 or IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const PROTOCOL_ICMP: u8 = 1;
const NEXT_HEADER_ICMPV6: u8 = 58;
/// ICMPv6 error messages have types below 128 (RFC 4443 §2.1).
const ICMPV6_FIRST_INFORMATIONAL: u8 = 128;
/// An ICMPv6 error never exceeds the minimum MTU (RFC 4443 §2.4 (c)).
const IPV6_MIN_MTU: usize = 1_280;

/// What the VPN needs to know of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// IPv4's don't-fragment bit; IPv6 packets are never fragmented on the way.
    pub dont_fragment: bool,
    /// The packet is itself an ICMP error, which is never answered with another.
    pub icmp_error: bool,
}

impl Header {
    /// Reads the header of a whole IPv4 or IPv6 packet; the length fields must match.
    pub fn parse(packet: &[u8]) -> Result<Self, Malformed> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(packet),
            Some(6) => Self::parse_v6(packet),
            _ => Err(Malformed),
        }
    }

    fn parse_v4(packet: &[u8]) -> Result<Self, Malformed> {
        if packet.len() < IPV4_HEADER {
            return Err(Malformed);
        }
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        if header_len < IPV4_HEADER || header_len > total || total != packet.len() {
            return Err(Malformed);
        }
        let address =
            |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
        let icmp_type = (packet[9] == PROTOCOL_ICMP)
            .then(|| packet.get(header_len).copied())
            .flatten();
        Ok(Self {
            source: IpAddr::V4(address(12)),
            destination: IpAddr::V4(address(16)),
            dont_fragment: packet[6] & 0x40 != 0,
            // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
            icmp_error: matches!(icmp_type, Some(3 | 4 | 5 | 11 | 12)),
        })
    }

    fn parse_v6(packet: &[u8]) -> Result<Self, Malformed> {
        if packet.len() < IPV6_HEADER {
            return Err(Malformed);
        }
        let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
        if IPV6_HEADER + payload != packet.len() {
            return Err(Malformed);
        }
        let address = |at: usize| {
            let mut bytes = [0; 16];
            bytes.copy_from_slice(&packet[at..at + 16]);
            Ipv6Addr::from(bytes)
        };
        let icmp_error = packet[6] == NEXT_HEADER_ICMPV6
            && packet
                .get(IPV6_HEADER)
                .is_some_and(|&kind| kind < ICMPV6_FIRST_INFORMATIONAL);
        Ok(Self {
            source: IpAddr::V6(address(8)),
            destination: IpAddr::V6(address(24)),
            dont_fragment: true,
            icmp_error,
        })
    }
}

/// The Internet checksum (RFC 1071) of `parts`, one after the other.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMPv6 Packet Too Big (RFC 4443 §3.2) from `router` to the sender of `original`, saying
/// `mtu`, with as much of `original` as fits in the minimum MTU.
pub fn packet_too_big(router: Ipv6Addr, original: &[u8], source: Ipv6Addr, mtu: u32) -> Vec<u8> {
    let quoted = original.len().min(IPV6_MIN_MTU - IPV6_HEADER - 8);
    let icmp_len = 8 + quoted;
    let mut packet = Vec::with_capacity(IPV6_HEADER + icmp_len);
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[NEXT_HEADER_ICMPV6, 64]);
    packet.extend_from_slice(&router.octets());
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&[2, 0, 0, 0]);
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&original[..quoted]);
    let pseudo_header = [
        &router.octets()[..],
        &source.octets()[..],
        &(icmp_len as u32).to_be_bytes()[..],
        &[0, 0, 0, NEXT_HEADER_ICMPV6][..],
    ];
    let sum = checksum(&[&pseudo_header.concat(), &packet[IPV6_HEADER..]]);
    packet[IPV6_HEADER + 2..IPV6_HEADER + 4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// ICMPv4 Destination Unreachable, Fragmentation Needed (RFC 792, RFC 1191) from `router` to
/// the sender of `original`, saying `mtu`, quoting its header and first 8 bytes of data.
pub fn fragmentation_needed(
    router: Ipv4Addr,
    original: &[u8],
    source: Ipv4Addr,
    mtu: u16,
) -> Vec<u8> {
    let header_len = usize::from(original[0] & 0x0f) * 4;
    let quoted = original.len().min(header_len + 8);
    let total = IPV4_HEADER + 8 + quoted;
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 64, PROTOCOL_ICMP, 0, 0]);
    packet.extend_from_slice(&router.octets());
    packet.extend_from_slice(&source.octets());
    let header_sum = checksum(&[&packet[..IPV4_HEADER]]);
    packet[10..12].copy_from_slice(&header_sum.to_be_bytes());
    packet.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    packet.extend_from_slice(&mtu.to_be_bytes());
    packet.extend_from_slice(&original[..quoted]);
    let icmp_sum = checksum(&[&packet[IPV4_HEADER..]]);
    packet[IPV4_HEADER + 2..IPV4_HEADER + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    packet
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An ICMPv6 echo request of `len` bytes in all.
    pub(crate) fn echo_v6(source: Ipv6Addr, destination: Ipv6Addr, len: usize) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&((len - IPV6_HEADER) as u16).to_be_bytes());
        packet.extend_from_slice(&[NEXT_HEADER_ICMPV6, 64]);
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        packet.extend_from_slice(&[128, 0, 0, 0]);
        packet.resize(len, 0xab);
        packet
    }

    /// An IPv4 UDP packet of `len` bytes in all.
    pub(crate) fn udp_v4(source: Ipv4Addr, destination: Ipv4Addr, len: usize, df: bool) -> Vec<u8> {
        let mut packet = vec![0x45, 0];
        packet.extend_from_slice(&(len as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, if df { 0x40 } else { 0 }, 0, 64, 17, 0, 0]);
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        packet.resize(len, 0xcd);
        packet
    }

    #[test]
    fn headers_are_read_and_bad_lengths_refused() {
        let (a, b) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let echo = echo_v6(a, b, 100);
        let header = Header::parse(&echo).unwrap();
        assert_eq!(
            (header.source, header.destination),
            (IpAddr::V6(a), IpAddr::V6(b))
        );
        assert!(!header.icmp_error);
        let (c, d) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        let udp = udp_v4(c, d, 60, true);
        let header = Header::parse(&udp).unwrap();
        assert_eq!(
            (header.source, header.destination),
            (IpAddr::V4(c), IpAddr::V4(d))
        );
        assert!(header.dont_fragment);
        assert!(
            !Header::parse(&udp_v4(c, d, 60, false))
                .unwrap()
                .dont_fragment
        );
        for bad in [
            &[][..],
            &[0x45; 19][..],
            &echo[..99],
            &udp[..59],
            &[0x70; 60][..],
        ] {
            assert_eq!(Header::parse(bad), Err(Malformed), "{} bytes", bad.len());
        }
    }

    #[test]
    fn the_errors_are_valid_icmp_that_quote_the_packet() {
        let (router, host) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let big = echo_v6(host, "fd00::3".parse().unwrap(), 1_400);
        let error = packet_too_big(router, &big, host, 1_300);
        assert_eq!(error.len(), IPV6_MIN_MTU);
        let header = Header::parse(&error).unwrap();
        assert_eq!(
            (header.source, header.destination),
            (IpAddr::V6(router), IpAddr::V6(host))
        );
        assert!(header.icmp_error);
        assert_eq!(&error[44..48], &1_300u32.to_be_bytes());
        assert_eq!(&error[48..], &big[..IPV6_MIN_MTU - 48]);
        // A valid checksum sums to zero with the pseudo-header.
        let pseudo = [
            &router.octets()[..],
            &host.octets()[..],
            &[0, 0, 0x04, 0xd8, 0, 0, 0, 58][..],
        ]
        .concat();
        assert_eq!(checksum(&[&pseudo, &error[40..]]), 0);

        let (router, host) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        let big = udp_v4(host, Ipv4Addr::new(100, 64, 0, 3), 1_400, true);
        let error = fragmentation_needed(router, &big, host, 1_300);
        assert_eq!(error.len(), 20 + 8 + 28);
        let header = Header::parse(&error).unwrap();
        assert_eq!(
            (header.source, header.destination),
            (IpAddr::V4(router), IpAddr::V4(host))
        );
        assert!(header.icmp_error);
        assert_eq!(checksum(&[&error[..20]]), 0);
        assert_eq!(checksum(&[&error[20..]]), 0);
        assert_eq!(&error[26..28], &1_300u16.to_be_bytes());
        assert_eq!(&error[28..], &big[..28]);
    }
}
