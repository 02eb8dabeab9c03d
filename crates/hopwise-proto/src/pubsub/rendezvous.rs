//! What a rendezvous node keeps for each topic placed on it: who publishes, and who wants to
//! hear of publishers. Both are soft state, renewed by their senders.

use crate::keyed::{self, Map};
use crate::{Instant, NodeId};

use super::wire::MAX_LISTED_PUBLISHERS;

/// Topics a node keeps rendezvous state for at most.
pub const MAX_TOPICS: usize = 16_384;
/// Subscribers a rendezvous keeps per topic at most.
pub const MAX_INTERESTED: usize = 4_096;

#[derive(Default)]
struct Topic {
    publishers: Map<NodeId, Instant>,
    interested: Map<NodeId, Instant>,
}

pub(super) struct Rendezvous {
    topics: Map<u64, Topic>,
    seed: u64,
    /// Announcements and interests turned away by the bounds.
    pub refused: u64,
}

impl Rendezvous {
    pub fn new(seed: u64) -> Self {
        Self {
            topics: Map::with_hasher(keyed::hash_key(seed)),
            seed,
            refused: 0,
        }
    }

    fn topic(&mut self, topic: u64) -> Option<&mut Topic> {
        if !self.topics.contains_key(&topic) && self.topics.len() >= MAX_TOPICS {
            self.refused += 1;
            return None;
        }
        let seed = self.seed;
        Some(self.topics.entry(topic).or_insert_with(|| Topic {
            publishers: Map::with_hasher(keyed::hash_key(seed ^ topic)),
            interested: Map::with_hasher(keyed::hash_key(seed ^ !topic)),
        }))
    }

    /// `publisher` publishes on `topic` until `until`. Returns who should hear of it now:
    /// everyone interested, if the publisher is new here.
    pub fn announce(&mut self, topic: u64, publisher: NodeId, until: Instant) -> Vec<NodeId> {
        let Some(entry) = self.topic(topic) else {
            return Vec::new();
        };
        let new = !entry.publishers.contains_key(&publisher);
        if new && entry.publishers.len() >= MAX_LISTED_PUBLISHERS {
            self.refused += 1;
            return Vec::new();
        }
        entry.publishers.insert(publisher, until);
        if new {
            entry.interested.keys().copied().collect()
        } else {
            Vec::new()
        }
    }

    /// `subscriber` wants to hear of `topic`'s publishers until `until`. Returns the
    /// publishers known now (none if the interest was refused).
    pub fn interest(&mut self, topic: u64, subscriber: NodeId, until: Instant) -> Vec<NodeId> {
        let Some(entry) = self.topic(topic) else {
            return Vec::new();
        };
        if !entry.interested.contains_key(&subscriber) && entry.interested.len() >= MAX_INTERESTED {
            self.refused += 1;
            return Vec::new();
        }
        entry.interested.insert(subscriber, until);
        entry.publishers.keys().copied().collect()
    }

    /// Forgets what was not renewed in time, and topics left with nothing.
    pub fn expire(&mut self, now: Instant) {
        self.topics.retain(|_, topic| {
            topic.publishers.retain(|_, until| now < *until);
            topic.interested.retain(|_, until| now < *until);
            !(topic.publishers.is_empty() && topic.interested.is_empty())
        });
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}
