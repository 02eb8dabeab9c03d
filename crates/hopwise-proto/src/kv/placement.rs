//! Where a key lives: the `R` members whose ids are closest to the key's hash by XOR distance,
//! among the members this node can reach (itself and every destination with a route), less the
//! members it suspects of being dead. Every node evaluates the rule on its own view; in a flat
//! network the views agree once routing has converged, and repair covers the moments they do
//! not.
//!
//! In zoned routing a node's routes cover its own zone and the zone heads only, so views of all
//! members would differ from zone to zone. There the candidates are the zone heads alone: every
//! node routes to every head, so all views agree again (the overlay keeps its own directory on
//! the heads the same way).

use std::collections::BTreeMap;

use crate::node::Node;
use crate::{Instant, NodeId};

/// One reachable member and what reaching it costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub id: NodeId,
    /// Expected round trip: the route's metric, the coordinates' prediction where there is no
    /// route metric, zero for this node itself.
    pub rtt_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct View {
    members: Vec<Member>,
    /// Changes whenever the set of members does (not with their round trips).
    fingerprint: (usize, u64),
}

fn point(id: &NodeId) -> u64 {
    u64::from_be_bytes(*id.as_bytes())
}

impl View {
    /// The view of `node`, leaving out `suspects` whose suspicion has not expired.
    pub fn of(node: &Node, suspects: &BTreeMap<NodeId, Instant>, now: Instant) -> Self {
        let suspected = |id: &NodeId| suspects.get(id).is_some_and(|&until| until > now);
        let candidate = |id: &NodeId| node.zoning().is_none_or(|zones| zones.is_head(id));
        let own = Member {
            id: node.id(),
            rtt_ms: 0.0,
        };
        let mut members: Vec<Member> = candidate(&own.id).then_some(own).into_iter().collect();
        members.extend(
            node.routes()
                .filter(|(id, _)| candidate(id) && !suspected(id))
                .map(|(id, route)| Member {
                    id,
                    rtt_ms: route.metric_ms,
                }),
        );
        Self::from_members(members)
    }

    /// A view of exactly these members (tests, and a node before its first route).
    pub fn from_members(members: Vec<Member>) -> Self {
        let mut hash = 0u64;
        for member in &members {
            // A multiplicative mix, so that the sum does not cancel the way a plain XOR can.
            hash = hash.wrapping_add(point(&member.id).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        }
        Self {
            fingerprint: (members.len(), hash),
            members,
        }
    }

    pub fn fingerprint(&self) -> (usize, u64) {
        self.fingerprint
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.members.iter().any(|m| m.id == *id)
    }

    pub fn rtt_ms(&self, id: &NodeId) -> Option<f64> {
        self.members.iter().find(|m| m.id == *id).map(|m| m.rtt_ms)
    }

    /// The `count` members closest to `key_hash`, closest first.
    pub fn closest(&self, key_hash: u64, count: usize) -> Vec<Member> {
        let mut best: Vec<(u64, Member)> = Vec::with_capacity(count + 1);
        for member in &self.members {
            let distance = point(&member.id) ^ key_hash;
            if best.len() == count && best.last().is_some_and(|(d, _)| *d <= distance) {
                continue;
            }
            let at = best.partition_point(|(d, _)| *d < distance);
            best.insert(at, (distance, *member));
            best.truncate(count);
        }
        best.into_iter().map(|(_, member)| member).collect()
    }

    /// This view less `gone`.
    pub fn without(&self, gone: &[NodeId]) -> Self {
        let members = self
            .members
            .iter()
            .filter(|m| !gone.contains(&m.id))
            .copied();
        Self::from_members(members.collect())
    }

    /// The replicas of `key_hash`, nearest (by round trip) first.
    pub fn by_rtt(&self, key_hash: u64, count: usize) -> Vec<Member> {
        let mut replicas = self.closest(key_hash, count);
        replicas.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
        replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u64) -> Member {
        Member {
            id: NodeId::from_bytes(n.to_be_bytes()),
            rtt_ms: n as f64,
        }
    }

    #[test]
    fn the_closest_by_xor_in_order() {
        let view = View::from_members((0..64).map(member).collect());
        let ids: Vec<u64> = view
            .closest(0b1010, 3)
            .iter()
            .map(|m| m.rtt_ms as u64)
            .collect();
        assert_eq!(ids, vec![0b1010, 0b1011, 0b1000]);
        let all = view.closest(5, 100);
        assert_eq!(all.len(), 64);
    }

    #[test]
    fn the_fingerprint_follows_the_member_set() {
        let a = View::from_members((0..5).map(member).collect());
        let b = View::from_members((0..5).rev().map(member).collect());
        let c = View::from_members((1..6).map(member).collect());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
