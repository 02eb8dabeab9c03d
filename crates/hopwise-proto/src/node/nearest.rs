//! The nearest nodes this node has measured, whether or not they became coordinate neighbours:
//! the candidates for near routing links.
//!
//! Coordinate neighbours are mostly far nodes (they constrain the coordinate from every
//! direction), and a measured node that is not among the 4 nearest rarely becomes one. Without
//! this table a node forgot most of the near nodes its probes found: a minute after a cold start
//! on planetlab490 it had kept only 1.4 of its 4 nearest nodes.

use std::net::SocketAddr;

use crate::NodeId;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub rtt_ms: f64,
}

/// Up to `capacity` nodes, lowest RTT first.
#[derive(Debug)]
pub struct NearestMeasured {
    entries: Vec<Measured>,
    capacity: usize,
}

impl NearestMeasured {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity + 1),
            capacity,
        }
    }

    /// Records a fresh RTT sample of `id`; it stays if it is among the nearest.
    pub fn observe(&mut self, id: NodeId, addr: SocketAddr, rtt_ms: f64) {
        self.entries.retain(|m| m.id != id);
        let at = self.entries.partition_point(|m| m.rtt_ms <= rtt_ms);
        if at < self.capacity {
            self.entries.insert(at, Measured { id, addr, rtt_ms });
            self.entries.truncate(self.capacity);
        }
    }

    /// Forgets a node that stopped answering.
    pub fn forget(&mut self, id: &NodeId) {
        self.entries.retain(|m| m.id != *id);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Measured> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        NodeId::from_bytes([i; NodeId::LEN])
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 4000))
    }

    fn ids(table: &NearestMeasured) -> Vec<NodeId> {
        table.iter().map(|m| m.id).collect()
    }

    #[test]
    fn keeps_the_nearest_in_order_and_follows_new_samples() {
        let mut table = NearestMeasured::new(3);
        for (i, rtt) in [(1, 40.0), (2, 10.0), (3, 30.0), (4, 20.0), (5, 50.0)] {
            table.observe(id(i), addr(i), rtt);
        }
        assert_eq!(ids(&table), vec![id(2), id(4), id(3)]);
        // A node measured again moves to its new place.
        table.observe(id(3), addr(3), 5.0);
        assert_eq!(ids(&table), vec![id(3), id(2), id(4)]);
        table.observe(id(2), addr(2), 60.0);
        assert_eq!(ids(&table), vec![id(3), id(4), id(2)]);
        // A closer node pushes the farthest out; a farther one does not get in.
        table.observe(id(6), addr(6), 1.0);
        table.observe(id(7), addr(7), 70.0);
        assert_eq!(ids(&table), vec![id(6), id(3), id(4)]);
        table.forget(&id(3));
        assert_eq!(ids(&table), vec![id(6), id(4)]);
    }
}
