//! Node identity.
//!
//! A `NodeId` is 8 bytes. Today the simulator and tests draw ids from a seeded generator; once
//! nodes carry key pairs the id becomes a hash of the static public key, so the type only promises
//! "8 opaque, uniformly distributed bytes".
//!
//! Why 64 bits: every route entry, gossip entry and datagram header carries ids, and at 8 bytes a
//! route entry costs 12 bytes instead of 20, which is most of the routing traffic. Accidental
//! collisions are negligible (about 3·10⁻¹² for 10,000 nodes), and matching a chosen node's id
//! with a new key takes about 2⁶⁴ key generations; links authenticate the full key.

use std::fmt;

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
    }
}
