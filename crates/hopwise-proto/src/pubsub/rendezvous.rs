//! What a rendezvous node keeps for each topic placed on it: who publishes, and who wants to
//! hear of publishers. Both are soft state, renewed by their senders.

use crate::keyed::{self, Map};
use crate::{Duration, Instant, NodeId};

use super::wire::MAX_LISTED_PUBLISHERS;

/// Topics a node keeps rendezvous state for at most.
pub const MAX_TOPICS: usize = 16_384;
/// Subscribers a rendezvous keeps per topic at most.
pub const MAX_INTERESTED: usize = 4_096;
/// Times news of a publisher is pushed again to a subscriber that did not acknowledge it (the
/// wait doubling each time); after that its next renewal brings it the listing.
const PUSH_RETRIES: u32 = 4;

struct Topic {
    publishers: Map<NodeId, Instant>,
    interested: Map<NodeId, Instant>,
    /// Subscribers pushed news of a publisher that have not acknowledged it with an interest:
    /// when to push again, the last wait, and how many times it was pushed again.
    unacknowledged: Map<NodeId, (Instant, Duration, u32)>,
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
            unacknowledged: Map::with_hasher(keyed::hash_key(seed ^ topic.rotate_left(32))),
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
        entry.unacknowledged.swap_remove(&subscriber);
        entry.publishers.keys().copied().collect()
    }

    /// `subscriber` was pushed news of a publisher of `topic` now; `wait` is how long its
    /// acknowledgement may take.
    pub fn pushed(&mut self, topic: u64, subscriber: NodeId, now: Instant, wait: Duration) {
        if let Some(entry) = self.topics.get_mut(&topic) {
            entry
                .unacknowledged
                .insert(subscriber, (now + wait, wait, 0));
        }
    }

    /// Subscribers to push a topic's listing to again now.
    pub fn pushes_due(&mut self, now: Instant) -> Vec<(u64, NodeId)> {
        let mut due = Vec::new();
        for (&topic, entry) in &mut self.topics {
            entry
                .unacknowledged
                .retain(|&subscriber, (at, wait, retries)| {
                    if now < *at {
                        return true;
                    }
                    if *retries >= PUSH_RETRIES {
                        return false;
                    }
                    *retries += 1;
                    *wait = *wait + *wait;
                    *at = now + *wait;
                    due.push((topic, subscriber));
                    true
                });
        }
        due
    }

    /// The publishers of `topic` known here.
    pub fn publishers(&self, topic: u64) -> Vec<NodeId> {
        self.topics
            .get(&topic)
            .map(|entry| entry.publishers.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets what was not renewed in time, and topics left with nothing.
    pub fn expire(&mut self, now: Instant) {
        self.topics.retain(|_, topic| {
            topic.publishers.retain(|_, until| now < *until);
            topic.interested.retain(|_, until| now < *until);
            let interested = &topic.interested;
            topic
                .unacknowledged
                .retain(|subscriber, _| interested.contains_key(subscriber));
            !(topic.publishers.is_empty() && topic.interested.is_empty())
        });
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}
