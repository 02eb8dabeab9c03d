//! VPN addresses: an IPv6 address every node has from its id alone, and IPv4 addresses
//! claimed inside one network-wide prefix.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use blake2::{Blake2s256, Digest};

use crate::NodeId;

/// The network's IPv6 /64: a unique local prefix (RFC 4193: `fd` and 56 bits) taken from the
/// network key's hash, so every member derives the same one and other networks get others.
/// A node's address is the prefix with its 8-byte id as the interface identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix([u8; 8]);

impl Ipv6Prefix {
    pub fn from_network_key(network_key: &[u8; 32]) -> Self {
        let hash = Blake2s256::new()
            .chain_update(b"hopwise vpn ipv6 prefix")
            .chain_update(network_key)
            .finalize();
        let mut prefix = [0; 8];
        prefix[0] = 0xfd;
        prefix[1..].copy_from_slice(&hash[..7]);
        Self(prefix)
    }

    pub fn address_of(&self, node: NodeId) -> Ipv6Addr {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.0);
        bytes[8..].copy_from_slice(node.as_bytes());
        Ipv6Addr::from(bytes)
    }

    /// The node an address of this prefix belongs to.
    pub fn node_of(&self, address: Ipv6Addr) -> Option<NodeId> {
        let bytes = address.octets();
        (bytes[..8] == self.0).then(|| {
            let mut id = [0; NodeId::LEN];
            id.copy_from_slice(&bytes[8..]);
            NodeId::from_bytes(id)
        })
    }
}

/// The network-wide IPv4 prefix the members' addresses are claimed in (100.64.0.0/10, the
/// shared address space of RFC 6598, by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    network: Ipv4Addr,
    len: u8,
}

/// An IPv4 prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPrefix(String);

impl fmt::Display for BadPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad IPv4 prefix: {}", self.0)
    }
}

impl std::error::Error for BadPrefix {}

impl Ipv4Prefix {
    pub const DEFAULT: Self = Self {
        network: Ipv4Addr::new(100, 64, 0, 0),
        len: 10,
    };

    /// A prefix of `len` bits (8 to 30: at least 4 addresses, of which 2 are usable).
    pub fn new(network: Ipv4Addr, len: u8) -> Result<Self, BadPrefix> {
        if !(8..=30).contains(&len) {
            return Err(BadPrefix(format!("/{len} (use /8 to /30)")));
        }
        let prefix = Self { network, len };
        if u32::from(network) & !prefix.mask() != 0 {
            return Err(BadPrefix(format!("{network}/{len} has host bits set")));
        }
        Ok(prefix)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.len)
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// A usable host address: in the prefix, neither its network nor its broadcast address.
    pub fn is_host(&self, address: Ipv4Addr) -> bool {
        let host = u32::from(address) & !self.mask();
        self.contains(address) && host != 0 && host != !self.mask()
    }

    /// The `attempt`th candidate address of `node`: spread over the prefix by a hash of the id,
    /// so that nodes rarely collide, and a node that did tries the next.
    pub fn candidate(&self, node: NodeId, attempt: u32) -> Ipv4Addr {
        let hash = Blake2s256::new()
            .chain_update(b"hopwise vpn ipv4 candidate")
            .chain_update(node.as_bytes())
            .chain_update(attempt.to_be_bytes())
            .finalize();
        let hosts = !self.mask() - 1; // neither the network nor the broadcast address
        let pick = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % hosts;
        Ipv4Addr::from(u32::from(self.network) + 1 + pick)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = BadPrefix;

    fn from_str(text: &str) -> Result<Self, BadPrefix> {
        let (network, len) = text
            .split_once('/')
            .ok_or_else(|| BadPrefix(format!("{text} (write A.B.C.D/LEN)")))?;
        let network = network
            .parse()
            .map_err(|_| BadPrefix(format!("{network} is not an IPv4 address")))?;
        let len = len
            .parse()
            .map_err(|_| BadPrefix(format!("{len} is not a prefix length")))?;
        Self::new(network, len)
    }
}

/// The store key that claims an IPv4 address: its entry's writer owns it.
pub fn ipv4_key(address: Ipv4Addr) -> Vec<u8> {
    format!("vpn4/{address}").into_bytes()
}

/// The store key that names the IPv4 address a node claimed (for its DNS A record); only an
/// entry written by `node` itself counts.
pub fn ipv4_of_key(node: NodeId) -> Vec<u8> {
    format!("vpn4-of/{node}").into_bytes()
}

/// The one sub-key of both.
pub const CLAIM_SUB: &[u8] = b"claim";

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n, 1, 2, 3, 4, 5, 6, 7])
    }

    #[test]
    fn an_ipv6_address_names_its_node() {
        let prefix = Ipv6Prefix::from_network_key(&[7; 32]);
        let address = prefix.address_of(id(9));
        assert_eq!(address.octets()[0], 0xfd);
        assert_eq!(prefix.node_of(address), Some(id(9)));
        assert_eq!(address.segments()[4..], [0x0901, 0x0203, 0x0405, 0x0607]);
        let other_network = Ipv6Prefix::from_network_key(&[8; 32]);
        assert_ne!(other_network, prefix);
        assert_eq!(other_network.node_of(address), None);
    }

    #[test]
    fn ipv4_candidates_are_usable_hosts_of_the_prefix() {
        for text in ["100.64.0.0/10", "10.9.8.0/30", "192.168.0.0/24"] {
            let prefix: Ipv4Prefix = text.parse().unwrap();
            for attempt in 0..200 {
                let candidate = prefix.candidate(id(attempt as u8), attempt);
                assert!(prefix.is_host(candidate), "{candidate} in {prefix}");
            }
        }
        let prefix = Ipv4Prefix::DEFAULT;
        assert_ne!(prefix.candidate(id(1), 0), prefix.candidate(id(1), 1));
        assert!(!prefix.is_host(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(!prefix.is_host(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!prefix.contains(Ipv4Addr::new(100, 128, 0, 1)));
    }

    #[test]
    fn bad_prefixes_are_refused_with_the_reason() {
        for bad in [
            "100.64.0.1/10",
            "10.0.0.0/31",
            "10.0.0.0/4",
            "10.0.0.0",
            "x/8",
            "1.2.3.0/x",
        ] {
            assert!(bad.parse::<Ipv4Prefix>().is_err(), "{bad}");
        }
    }
}
