//! The nodes this node has heard of, directly or through gossip: a bounded table.

use std::net::SocketAddr;

use rand::{Rng, RngExt};

use crate::coords::Coordinate;
use crate::keyed::{HashKey, Map};
use crate::tags::TagFilter;
use crate::{Instant, NodeId};

#[derive(Debug, Clone, PartialEq)]
pub struct KnownNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub coord: Coordinate,
    pub error: f64,
    pub heard_at: Instant,
    /// When the node itself last sent us a packet (as opposed to being gossiped about).
    pub direct_at: Option<Instant>,
    /// Its tags, as far as known.
    pub tags: TagFilter,
}

/// Insertion-ordered (so iteration is deterministic) and capped: when full, a random entry makes
/// room, so a flood of gossip costs bounded memory.
#[derive(Debug)]
pub struct PeerTable {
    nodes: Map<NodeId, KnownNode>,
    capacity: usize,
}

impl PeerTable {
    pub fn new(capacity: usize, hash_key: HashKey) -> Self {
        Self {
            nodes: Map::with_hasher(hash_key),
            capacity: capacity.max(1),
        }
    }

    /// Records what we heard about `node`, keeping the time we last heard from it directly.
    pub fn learn(&mut self, node: KnownNode, rng: &mut impl Rng) {
        if let Some(existing) = self.nodes.get_mut(&node.id) {
            let direct_at = node.direct_at.or(existing.direct_at);
            // The node's own word on its tags stands; gossip without them takes nothing away.
            let tags = if node.tags.is_empty() && node.direct_at != Some(node.heard_at) {
                existing.tags
            } else {
                node.tags
            };
            *existing = KnownNode {
                direct_at,
                tags,
                ..node
            };
            return;
        }
        if self.nodes.len() >= self.capacity {
            let victim = rng.random_range(0..self.nodes.len());
            self.nodes.swap_remove_index(victim);
        }
        self.nodes.insert(node.id, node);
    }

    pub fn get(&self, id: &NodeId) -> Option<&KnownNode> {
        self.nodes.get(id)
    }

    pub fn remove(&mut self, id: &NodeId) -> Option<KnownNode> {
        self.nodes.swap_remove(id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &KnownNode> {
        self.nodes.values()
    }

    /// A uniformly chosen entry.
    pub fn random(&self, rng: &mut impl Rng) -> Option<&KnownNode> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes
            .get_index(rng.random_range(0..self.nodes.len()))
            .map(|(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn node(i: u8) -> KnownNode {
        KnownNode {
            id: NodeId::from_bytes([i; NodeId::LEN]),
            addr: SocketAddr::from(([10, 0, 0, i], 7000)),
            coord: Coordinate::default(),
            error: 1.0,
            heard_at: Instant::ZERO,
            direct_at: None,
            tags: TagFilter::NONE,
        }
    }

    #[test]
    fn stays_within_capacity_and_updates_in_place() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut table = PeerTable::new(4, HashKey::default());
        for i in 0..10 {
            table.learn(node(i), &mut rng);
            assert!(table.len() <= 4);
        }
        assert!(table.get(&node(9).id).is_some(), "the newest entry is kept");
        let mut direct = node(9);
        direct.direct_at = Some(Instant::from_micros(5));
        table.learn(direct, &mut rng);
        let mut gossiped = node(9);
        gossiped.coord.x1 = 42.0;
        table.learn(gossiped.clone(), &mut rng);
        assert_eq!(table.len(), 4);
        let kept = table.get(&gossiped.id).unwrap();
        assert_eq!(kept.coord.x1, 42.0, "gossip updates the coordinate");
        assert_eq!(
            kept.direct_at,
            Some(Instant::from_micros(5)),
            "but not when we last heard from the node"
        );
    }
}
