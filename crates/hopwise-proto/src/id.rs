//! Node identity.
//!
//! A `NodeId` is 8 bytes: the first 8 bytes of the BLAKE2s hash of the node's static public key
//! ([`NodeId::from_public_key`]). The simulator and some tests draw ids from a seeded generator
//! instead, so the type only promises "8 opaque, uniformly distributed bytes".
//!
//! Why 64 bits: every route entry, gossip entry and datagram header carries ids, and at 8 bytes a
//! route entry costs 12 bytes instead of 20, which is most of the routing traffic. Accidental
//! collisions are negligible (about 3·10⁻¹² for 10,000 nodes), and matching a chosen node's id
//! with a new key takes about 2⁶⁴ key generations; links authenticate the full key.

use std::fmt;

use blake2::{Blake2s256, Digest};
use rand::{Rng, RngExt};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; NodeId::LEN]);

impl NodeId {
    pub const LEN: usize = 8;

    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// The id of the node holding this static (X25519) public key.
    pub fn from_public_key(public_key: &[u8]) -> Self {
        let hash = Blake2s256::digest(public_key);
        let mut id = [0; Self::LEN];
        id.copy_from_slice(&hash[..Self::LEN]);
        Self(id)
    }

    /// Parses the full hex form that `Display` writes.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 2 * Self::LEN || !text.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut id = [0; Self::LEN];
        for (byte, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(id))
    }

    /// Draws an id from the given generator (simulations and tests).
    pub fn random(rng: &mut impl Rng) -> Self {
        Self(rng.random())
    }

    /// The first four bytes in hex: enough to tell nodes apart in logs and tables.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        let id = NodeId::from_bytes([0xab, 0x01, 0, 0xff, 0, 0, 0, 0x10]);
        assert_eq!(id.short(), "ab0100ff");
        assert_eq!(id.to_string(), "ab0100ff00000010");
        assert_eq!(format!("{id:?}"), "NodeId(ab0100ff)");
        assert_eq!(NodeId::from_hex(&id.to_string()), Some(id));
        assert_eq!(NodeId::from_hex("ab0100ff"), None);
        assert_eq!(NodeId::from_hex("zz0100ff00000010"), None);
        assert_eq!(NodeId::from_hex("+b0100ff00000010"), None);
    }

    #[test]
    fn ids_come_from_keys() {
        let a = NodeId::from_public_key(&[1; 32]);
        assert_eq!(a, NodeId::from_public_key(&[1; 32]));
        assert_ne!(a, NodeId::from_public_key(&[2; 32]));
    }
}
