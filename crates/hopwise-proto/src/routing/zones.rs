//! Zoned routing: how a large network keeps per-node routing state small.
//!
//! Some nodes are zone heads: those whose id hashes to a multiple of `head_one_in`, so every node
//! can tell a head from its id alone, and heads are spread like the nodes themselves (dense
//! regions get more). Every other node joins the zone of the head it reaches fastest through the
//! overlay. A node then keeps exact routes to every head, to the members of its own zone, and to
//! the members of its routing neighbours' zones (which lets it bridge two members of a zone
//! that have no link to each other); that is about `N / head_one_in` plus a few zones' members,
//! instead of `N`.
//!
//! A packet for a node outside those routes carries the destination's zone head and follows
//! the route to that head until it meets a node with an exact route, at the latest in the zone.
//! The destination's zone comes from a directory: every node registers its zone with one head,
//! chosen by rendezvous hashing over the heads everybody has routes to, and senders ask that
//! same head.

use crate::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneConfig {
    /// One node in this many (by id hash) is a zone head.
    pub head_one_in: u64,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self { head_one_in: 64 }
    }
}

impl ZoneConfig {
    pub fn is_head(&self, id: &NodeId) -> bool {
        mix(u64::from_be_bytes(*id.as_bytes())) % self.head_one_in.max(1) == 0
    }

    /// The head that keeps the directory entry for `target`: the highest rendezvous score among
    /// `heads`, so every node that knows the same heads picks the same one, and a head coming or
    /// going moves only its own share of the entries.
    pub fn directory_for(
        &self,
        target: &NodeId,
        heads: impl IntoIterator<Item = NodeId>,
    ) -> Option<NodeId> {
        let key = u64::from_be_bytes(*target.as_bytes());
        heads
            .into_iter()
            .max_by_key(|head| (mix(key ^ mix(u64::from_be_bytes(*head.as_bytes()))), *head))
    }
}

/// A 64-bit finaliser (splitmix64): spreads any id uniformly, so head selection and the
/// directory do not depend on how ids were drawn.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> NodeId {
        NodeId::from_bytes(i.to_be_bytes())
    }

    #[test]
    fn about_one_node_in_head_one_in_is_a_head() {
        let zones = ZoneConfig { head_one_in: 16 };
        let heads = (0..16_000).filter(|i| zones.is_head(&id(*i))).count();
        assert!((800..1_200).contains(&heads), "{heads} heads");
    }

    #[test]
    fn the_directory_moves_only_with_its_own_head() {
        let zones = ZoneConfig::default();
        let heads: Vec<NodeId> = (0..20).map(|i| id(1_000 + i)).collect();
        let before: Vec<NodeId> = (0..500)
            .map(|t| zones.directory_for(&id(t), heads.clone()).unwrap())
            .collect();
        let gone = heads[3];
        let fewer: Vec<NodeId> = heads.iter().copied().filter(|h| *h != gone).collect();
        let mut moved = 0;
        for (t, old) in before.iter().enumerate() {
            let new = zones.directory_for(&id(t as u64), fewer.clone()).unwrap();
            if *old != gone {
                assert_eq!(new, *old, "an entry of a surviving head moved");
            } else {
                moved += 1;
            }
        }
        assert!(
            (5..60).contains(&moved),
            "{moved} entries had the removed head"
        );
        assert!(zones.directory_for(&id(1), []).is_none());
    }
}
