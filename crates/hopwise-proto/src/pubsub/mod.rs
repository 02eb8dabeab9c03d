//! Publish/subscribe: a multicast tree per publisher over the overlay's routes, with
//! per-publisher sequence numbers, repairs from the upstream's recent messages, and trees that
//! follow route changes.
//!
//! * **Rendezvous.** A topic's rendezvous nodes are where the key-value store would place its
//!   name ([`crate::kv::placement`], the [`RENDEZVOUS`] closest). Publishers announce
//!   themselves there and subscribers register their interest; a rendezvous answers an interest
//!   with the topic's publishers and tells every interested node of a new one at once.
//! * **Trees.** For every publisher of a topic it subscribes to, a node joins the tree of that
//!   (topic, publisher) at its overlay next hop towards the publisher; a node joined by someone
//!   joins its own next hop in turn. So a message goes down the reverse of the subscribers'
//!   routes to the publisher, one copy per tree link, and members reachable only through
//!   relays are reached through them. Every tick a member compares its upstream with the
//!   current route and moves when the route moved (a dead forwarder, a better path): it leaves
//!   the old parent and joins the new one, whose answer says how far the publication has got.
//! * **Reliability.** Messages carry the publisher's sequence number. A member that sees a gap
//!   (or learns from a join's answer that it is behind) asks its upstream for the missing
//!   numbers (a nack), which answers from its [`tree::RECENT`] messages or asks further up.
//!   Subscribers get messages in order per publisher; one not recovered within
//!   [`tree::GIVE_UP`] is passed over and reported as lost, as are messages a subscriber that
//!   does not keep up has no room for ([`MAX_EVENTS`]).
//!
//! Messages are authenticated hop by hop (each comes from the tree neighbour the end-to-end
//! session proved), not signed by their publisher: a member forwarder is trusted with them.

mod rendezvous;
mod tree;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use crate::keyed::{self, Map};
use crate::kv::key_hash;
use crate::kv::placement::View;
use crate::limit::{Bucket, Rate};
use crate::node::Node;
use crate::service::{Message as ServiceMessage, Service, ServiceTransmit, ports};
use crate::{Duration, Instant, NodeId};
use rendezvous::Rendezvous;
use tracing::debug;
use tree::{Accepted, Child, Tree};
pub use tree::{CATCH_UP, GIVE_UP, RECENT};
pub use wire::TreeId;
use wire::{DATA_OVERHEAD, Message};

/// Rendezvous nodes per topic.
pub const RENDEZVOUS: usize = 2;
/// The longest topic name, in bytes.
pub const MAX_TOPIC: usize = 255;
/// Topics a node subscribes to at most, and publishes on at most.
pub const MAX_SUBSCRIPTIONS: usize = 1_024;
pub const MAX_PUBLICATIONS: usize = 1_024;
/// Trees a node takes part in at most (as subscriber, forwarder or publisher).
pub const MAX_TREES: usize = 8_192;
/// Members one tree node forwards to at most: the fan-out of every message.
pub const MAX_CHILDREN: usize = 256;
/// Messages a node publishes a second at most, on all its topics together (and as many at
/// once): a flood beyond it is refused, so that it cannot outrun the buffers that repair its
/// messages ([`RECENT`]).
pub const MAX_PUBLISH_RATE: u32 = 5_000;
const PUBLISH_RATE: Rate = Rate {
    per_second: MAX_PUBLISH_RATE as f64,
    burst: MAX_PUBLISH_RATE as f64,
};
/// Events waiting for the service's user at most; a user that does not keep up loses messages.
pub const MAX_EVENTS: usize = 16_384;
/// Joins, announcements and interests are renewed this often, and forgotten when they were not
/// renewed for [`SOFT_STATE`].
pub const REFRESH: Duration = Duration::from_secs(10);
pub const SOFT_STATE: Duration = Duration::from_secs(30);
/// A subscriber renews its interest at one rendezvous a [`REFRESH`], in turn (at all of them
/// when it subscribes), so each hears it every `RENDEZVOUS` refreshes; a rendezvous keeps it
/// for three of those.
pub const INTEREST_KEPT: Duration =
    Duration::from_micros(REFRESH.as_micros() * RENDEZVOUS as i64 * 3);
/// A publication nobody published on for this long is no longer announced.
pub const PUBLICATION_IDLE: Duration = Duration::from_secs(600);
/// Messages sent at once to a member that moved here; it asks for anything more.
const MAX_CATCH_UP_PUSH: usize = 1_024;
/// How often trees are checked against the routes, and nacks and joins sent again.
const TICK: Duration = Duration::from_millis(100);
/// The least wait before asking again (a join or a nack), on top of twice the round trip.
const RETRY_MARGIN: Duration = Duration::from_millis(30);

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubError {
    InvalidTopic(&'static str),
    MessageTooLarge { len: usize, max: usize },
    TooManySubscriptions,
    TooManyPublications,
    TooManyTrees,
    RateLimited,
}

impl std::fmt::Display for PubSubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidTopic(reason) => write!(f, "invalid topic: {reason}"),
            Self::MessageTooLarge { len, max } => write!(
                f,
                "a message of {len} bytes is larger than the {max} bytes one carries"
            ),
            Self::TooManySubscriptions => {
                write!(
                    f,
                    "this node subscribes to {MAX_SUBSCRIPTIONS} topics already"
                )
            }
            Self::TooManyPublications => {
                write!(
                    f,
                    "this node publishes on {MAX_PUBLICATIONS} topics already"
                )
            }
            Self::TooManyTrees => write!(f, "this node is in {MAX_TREES} trees already"),
            Self::RateLimited => write!(
                f,
                "this node publishes more than {MAX_PUBLISH_RATE} messages a second"
            ),
        }
    }
}

impl std::error::Error for PubSubError {}

/// A message for a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub source: NodeId,
    pub seq: u64,
    pub message: Vec<u8>,
    /// When it was delivered (it arrived, or the gap before it closed).
    pub at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubEvent {
    Message(Delivery),
    /// `count` messages of `source` on `topic` were not delivered: not recovered in time, or
    /// no room while the user did not take events.
    Lost {
        topic: String,
        source: NodeId,
        count: u64,
    },
}

/// Counters of one node's pub/sub service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubSubStats {
    pub published: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Data messages sent down a tree, and those sent again in answer to a nack.
    pub forwarded: u64,
    pub repairs_sent: u64,
    pub nacks_sent: u64,
    pub joins_sent: u64,
    pub leaves_sent: u64,
    /// Upstream changes of trees this node was already in.
    pub upstream_moves: u64,
    /// A message that came again over the same tree link, and one this node had already had
    /// from another neighbour (a tree move in flight).
    pub duplicate_link_crossings: u64,
    pub duplicate_arrivals: u64,
    /// Data for a tree this node is not in (answered with a leave).
    pub unwanted: u64,
    /// Joins, trees and rendezvous state turned away by the bounds.
    pub refused: u64,
    /// Publishes refused beyond [`MAX_PUBLISH_RATE`].
    pub rate_limited: u64,
    pub malformed: u64,
    /// Service datagrams and their bytes (before end-to-end sealing).
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
}

/// One tree as `hopwise status` and the simulator see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeInfo {
    pub tree: TreeId,
    pub upstream: Option<NodeId>,
    pub children: usize,
    pub subscribed: bool,
    pub highest: u64,
    pub missing: usize,
}

struct Subscription {
    name: String,
    /// When the topic's next interest is due.
    interest_due: Instant,
    /// Interests sent so far: which rendezvous the next one goes to.
    interests_sent: usize,
}

struct Publication {
    name: String,
    epoch: u32,
    next_seq: u64,
    /// Whether it was announced yet: the first announcement says it starts from 0.
    announced: bool,
    announce_due: Instant,
    last_published: Instant,
}

/// Datagrams to send, and those to this node itself (a rendezvous can be the node itself),
/// which the service reads back before it returns.
struct Outbox {
    local: NodeId,
    queue: VecDeque<ServiceTransmit>,
    loopback: VecDeque<Vec<u8>>,
}

impl Outbox {
    fn send(&mut self, stats: &mut PubSubStats, to: NodeId, data: Vec<u8>) {
        if to == self.local {
            self.loopback.push_back(data);
            return;
        }
        stats.datagrams_sent += 1;
        stats.bytes_sent += data.len() as u64;
        self.queue.push_back(ServiceTransmit {
            to,
            port: ports::PUBSUB,
            data,
            early: false,
        });
    }
}

/// The pub/sub service. See the module documentation.
pub struct PubSub {
    local: NodeId,
    max_message: usize,
    seed: u64,
    epochs_drawn: u64,
    subscriptions: Map<u64, Subscription>,
    publications: Map<u64, Publication>,
    trees: BTreeMap<TreeId, Tree>,
    rendezvous: Rendezvous,
    out: Outbox,
    events: VecDeque<PubSubEvent>,
    stats: PubSubStats,
    next_tick: Option<Instant>,
    ready: VecDeque<(u64, Vec<u8>)>,
    publish_tokens: Bucket,
}

fn check_topic(topic: &str) -> Result<u64, PubSubError> {
    if topic.is_empty() {
        return Err(PubSubError::InvalidTopic("it is empty"));
    }
    if topic.len() > MAX_TOPIC {
        return Err(PubSubError::InvalidTopic("it is longer than 255 bytes"));
    }
    Ok(key_hash(topic.as_bytes()))
}

/// How long to wait for an answer from `neighbour`: twice its round trip (the route's metric
/// can be below what a datagram takes) and a margin.
fn retry_after(overlay: &Node, neighbour: NodeId) -> Duration {
    let rtt_ms = overlay
        .route(&neighbour)
        .map_or(200.0, |route| route.metric_ms);
    Duration::from_millis_f64(rtt_ms * 2.0) + RETRY_MARGIN
}

impl PubSub {
    /// The service of node `local`, whose end-to-end datagrams carry `max_data` bytes.
    /// `seed` draws the epochs of its publications and keys its tables.
    pub fn new(local: NodeId, max_data: usize, seed: u64) -> Self {
        Self {
            local,
            max_message: max_data.saturating_sub(DATA_OVERHEAD),
            seed,
            epochs_drawn: 0,
            subscriptions: Map::with_hasher(keyed::hash_key(seed)),
            publications: Map::with_hasher(keyed::hash_key(seed ^ 1)),
            trees: BTreeMap::new(),
            rendezvous: Rendezvous::new(seed ^ 2),
            out: Outbox {
                local,
                queue: VecDeque::new(),
                loopback: VecDeque::new(),
            },
            events: VecDeque::new(),
            stats: PubSubStats::default(),
            next_tick: None,
            ready: VecDeque::new(),
            publish_tokens: Bucket::full(PUBLISH_RATE, Instant::ZERO),
        }
    }

    /// The largest message one publish carries.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    pub fn stats(&self) -> &PubSubStats {
        &self.stats
    }

    /// Subscribes to `topic`: its messages arrive as [`PubSubEvent::Message`] from now on.
    pub fn subscribe(&mut self, now: Instant, topic: &str) -> Result<(), PubSubError> {
        let hash = check_topic(topic)?;
        if !self.subscriptions.contains_key(&hash) {
            if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Err(PubSubError::TooManySubscriptions);
            }
            self.subscriptions.insert(
                hash,
                Subscription {
                    name: topic.to_string(),
                    interest_due: now,
                    interests_sent: 0,
                },
            );
            for (_, tree) in self.trees.range_mut(Self::trees_of(hash)) {
                tree.local = true;
            }
        }
        self.next_tick = Some(now);
        Ok(())
    }

    /// Stops delivering `topic`; the trees it needed are left on the next tick.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let Ok(hash) = check_topic(topic) else {
            return false;
        };
        for (_, tree) in self.trees.range_mut(Self::trees_of(hash)) {
            tree.local = false;
        }
        self.subscriptions.swap_remove(&hash).is_some()
    }

    /// The topics this node subscribes to.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.values().map(|s| s.name.as_str())
    }

    /// The topics this node publishes on, with how many messages it published on each.
    pub fn publications(&self) -> impl Iterator<Item = (&str, u64)> {
        self.publications
            .values()
            .map(|p| (p.name.as_str(), p.next_seq - 1))
    }

    /// Publishes `message` on `topic` and returns its sequence number.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        message: &[u8],
    ) -> Result<u64, PubSubError> {
        let hash = check_topic(topic)?;
        if message.len() > self.max_message {
            return Err(PubSubError::MessageTooLarge {
                len: message.len(),
                max: self.max_message,
            });
        }
        if !self.publish_tokens.take(now, PUBLISH_RATE) {
            self.stats.rate_limited += 1;
            return Err(PubSubError::RateLimited);
        }
        let id = TreeId {
            topic: hash,
            publisher: self.local,
        };
        if !self.publications.contains_key(&hash) {
            if self.publications.len() >= MAX_PUBLICATIONS {
                return Err(PubSubError::TooManyPublications);
            }
            if !self.trees.contains_key(&id) && self.trees.len() >= MAX_TREES {
                return Err(PubSubError::TooManyTrees);
            }
            let epoch = self.draw_epoch();
            self.publications.insert(
                hash,
                Publication {
                    name: topic.to_string(),
                    epoch,
                    next_seq: 1,
                    announced: false,
                    announce_due: now,
                    last_published: now,
                },
            );
            self.trees
                .entry(id)
                .or_insert_with(|| Tree::new(now, self.seed))
                .start_as_root(epoch);
            self.next_tick = Some(now);
        }
        let publication = self.publications.get_mut(&hash).expect("just made");
        let seq = publication.next_seq;
        publication.next_seq += 1;
        publication.last_published = now;
        let bytes = Message::Data {
            tree: id,
            epoch: publication.epoch,
            seq,
            message,
        }
        .to_bytes();
        let tree = self.trees.get_mut(&id).expect("a publication has its tree");
        tree.heard = now;
        tree.accept(seq, self.local, &bytes, DATA_OVERHEAD, now);
        // A publisher that subscribes hears itself, in order and bounded like any subscriber.
        tree.local = self.subscriptions.contains_key(&hash);
        self.stats.published += 1;
        for &child in tree.children.keys() {
            self.stats.forwarded += 1;
            self.out.send(&mut self.stats, child, bytes.clone());
        }
        self.deliver(id, now);
        Ok(seq)
    }

    pub fn poll_event(&mut self) -> Option<PubSubEvent> {
        self.events.pop_front()
    }

    /// The trees this node is in.
    pub fn trees(&self) -> impl Iterator<Item = TreeInfo> + '_ {
        self.trees.iter().map(|(&tree, state)| TreeInfo {
            tree,
            upstream: state.upstream,
            children: state.children.len(),
            subscribed: state.local,
            highest: state.highest,
            missing: state.missing_count(),
        })
    }

    /// Where this node joined the tree of `publisher` on topic hash `topic`.
    pub fn upstream(&self, topic: u64, publisher: NodeId) -> Option<NodeId> {
        self.trees
            .get(&TreeId { topic, publisher })
            .and_then(|tree| tree.upstream)
    }

    /// Topics this node keeps rendezvous state for.
    pub fn rendezvous_topics(&self) -> usize {
        self.rendezvous.topic_count()
    }

    fn trees_of(topic: u64) -> std::ops::RangeInclusive<TreeId> {
        TreeId {
            topic,
            publisher: NodeId::from_bytes([0; 8]),
        }..=TreeId {
            topic,
            publisher: NodeId::from_bytes([0xff; 8]),
        }
    }

    fn draw_epoch(&mut self) -> u32 {
        self.epochs_drawn += 1;
        // splitmix64 of the seed and a counter: distinct per publication, never 0.
        let mut z = self
            .seed
            .wrapping_add(self.epochs_drawn.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) as u32).max(1)
    }

    fn rendezvous_of(overlay: &Node, topic: u64, now: Instant) -> Vec<NodeId> {
        View::of(overlay, &BTreeMap::new(), now)
            .closest(topic, RENDEZVOUS)
            .into_iter()
            .map(|member| member.id)
            .collect()
    }

    fn on_message(&mut self, now: Instant, from: NodeId, data: &[u8], overlay: &Node) {
        let Ok(message) = wire::decode(data) else {
            self.stats.malformed += 1;
            return;
        };
        match message {
            Message::Announce { topic, since } => {
                let tell = self.rendezvous.announce(topic, from, now + SOFT_STATE);
                let started = Message::Started {
                    tree: TreeId {
                        topic,
                        publisher: from,
                    },
                    since,
                }
                .to_bytes();
                for subscriber in tell {
                    self.out.send(&mut self.stats, subscriber, started.clone());
                }
            }
            Message::Started { tree: id, since } => {
                if !self.subscriptions.contains_key(&id.topic) || id.publisher == self.local {
                    return;
                }
                // Made or kept local: this node subscribes to the topic.
                let Some(tree) = self.tree_entry(id, now) else {
                    return;
                };
                tree.heard = now;
                tree.start_after(since, now);
                self.maintain(id, now, overlay);
            }
            Message::Interest { topic } => {
                let publishers = self.rendezvous.interest(topic, from, now + INTEREST_KEPT);
                let listing = wire::encode_publishers(topic, publishers.into_iter());
                self.out.send(&mut self.stats, from, listing);
            }
            Message::Publishers { topic, .. } => {
                if !self.subscriptions.contains_key(&topic) {
                    return;
                }
                for publisher in message.publishers() {
                    if publisher == self.local {
                        continue;
                    }
                    let id = TreeId { topic, publisher };
                    let Some(tree) = self.tree_entry(id, now) else {
                        return;
                    };
                    tree.local = true;
                    tree.heard = now;
                    self.maintain(id, now, overlay);
                }
            }
            Message::Join {
                tree,
                ask,
                epoch,
                highest,
            } => self.on_join(now, from, tree, ask, (epoch, highest), overlay),
            Message::Joined {
                tree: id,
                epoch,
                highest,
            } => {
                let Some(tree) = self.trees.get_mut(&id) else {
                    return;
                };
                if tree.upstream != Some(from) || epoch == 0 {
                    return;
                }
                if !tree.acked {
                    debug!(
                        topic = format_args!("{:016x}", id.topic),
                        publisher = %id.publisher,
                        upstream = %from,
                        highest,
                        have = tree.highest,
                        missing = tree.missing_count(),
                        "pub/sub join answered"
                    );
                }
                tree.acked = true;
                tree.heard = now;
                let news = tree.epoch != epoch;
                if news {
                    tree.restart(epoch);
                }
                tree.learn_highest(highest, now);
                if news {
                    // Children that joined before this node knew the publication hear of it.
                    let answer = Message::Joined {
                        tree: id,
                        epoch,
                        highest: tree.highest,
                    }
                    .to_bytes();
                    for &child in tree.children.keys() {
                        self.out.send(&mut self.stats, child, answer.clone());
                    }
                }
                self.send_nacks(id, now, overlay);
                self.deliver(id, now);
            }
            Message::Leave(id) => {
                if let Some(tree) = self.trees.get_mut(&id) {
                    tree.child_left(from, now);
                }
            }
            Message::Data {
                tree: id,
                epoch,
                seq,
                ..
            } => self.on_data(now, from, id, epoch, seq, data, overlay),
            Message::Nack {
                tree: id,
                epoch,
                first,
                count,
            } => {
                let Some(tree) = self.trees.get_mut(&id) else {
                    return;
                };
                if tree.epoch != epoch {
                    return;
                }
                let mut lacking = false;
                let in_flight = retry_after(overlay, from);
                for seq in first..first.saturating_add(count.into()) {
                    if !tree.has(seq) {
                        tree.want(seq, now);
                        lacking = true;
                    } else if let Some(bytes) = tree.repair_for(seq, from, now, in_flight) {
                        self.stats.repairs_sent += 1;
                        self.out.send(&mut self.stats, from, bytes.to_vec());
                    }
                }
                if lacking {
                    self.send_nacks(id, now, overlay);
                }
            }
        }
    }

    /// The state of tree `id`, made if there is room.
    fn tree_entry(&mut self, id: TreeId, now: Instant) -> Option<&mut Tree> {
        if !self.trees.contains_key(&id) && self.trees.len() >= MAX_TREES {
            self.stats.refused += 1;
            return None;
        }
        let seed = self.seed;
        let local = self.subscriptions.contains_key(&id.topic);
        Some(self.trees.entry(id).or_insert_with(|| {
            let mut tree = Tree::new(now, seed);
            tree.local = local;
            tree
        }))
    }

    /// A join from `from`, which has got to number `highest` of publication `epoch`. A
    /// renewal is answered only when the child is behind (or asks): an idle tree's upkeep is
    /// the joins alone.
    fn on_join(
        &mut self,
        now: Instant,
        from: NodeId,
        id: TreeId,
        ask: bool,
        (epoch, highest): (u32, u64),
        overlay: &Node,
    ) {
        if id.publisher == from {
            self.stats.malformed += 1;
            return;
        }
        let Some(tree) = self.tree_entry(id, now) else {
            return;
        };
        let renewal = tree.children.contains_key(&from);
        if !renewal && tree.children.len() >= MAX_CHILDREN {
            self.stats.refused += 1;
            return;
        }
        // A member back moments after it left (its route flapped) had what went to it before.
        let highest = if renewal {
            highest
        } else {
            tree.returning(from, epoch, highest, now)
        };
        tree.children.insert(
            from,
            Child {
                until: now + SOFT_STATE,
                epoch,
                highest,
            },
        );
        let known = tree.epoch != 0;
        let behind = epoch != tree.epoch || highest < tree.highest;
        // A member of this publication that moved here (its route changed, a forwarder died):
        // what it lacks goes at once, a round trip sooner than its nacks would ask.
        let moved_here = known && !renewal && epoch == tree.epoch && highest > 0;
        let catch_up = if moved_here {
            tree.catch_up(from, highest, now, MAX_CATCH_UP_PUSH)
        } else {
            Vec::new()
        };
        let answer = (known && (ask || !renewal || behind)).then(|| {
            Message::Joined {
                tree: id,
                epoch: tree.epoch,
                highest: tree.highest,
            }
            .to_bytes()
        });
        if moved_here {
            debug!(
                topic = format_args!("{:016x}", id.topic),
                publisher = %id.publisher,
                child = %from,
                after = highest,
                count = catch_up.len(),
                "pub/sub member moved here, catching it up"
            );
        }
        for bytes in catch_up {
            self.stats.repairs_sent += 1;
            self.out.send(&mut self.stats, from, bytes);
        }
        // After the messages, so that the child sees what it still lacks when it reads this.
        if let Some(answer) = answer {
            self.out.send(&mut self.stats, from, answer);
        }
        // Without an answer the child asks again; by then this node has joined upstream.
        if id.publisher != self.local && self.trees[&id].upstream.is_none() {
            self.maintain(id, now, overlay);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        now: Instant,
        from: NodeId,
        id: TreeId,
        epoch: u32,
        seq: u64,
        bytes: &[u8],
        overlay: &Node,
    ) {
        let Some(tree) = self.trees.get_mut(&id) else {
            self.stats.unwanted += 1;
            self.out
                .send(&mut self.stats, from, Message::Leave(id).to_bytes());
            return;
        };
        if tree.epoch != epoch {
            if tree.epoch != 0 && tree.upstream != Some(from) {
                return;
            }
            tree.restart(epoch);
        }
        tree.heard = now;
        match tree.accept(seq, from, bytes, DATA_OVERHEAD, now) {
            Accepted::New => {}
            Accepted::DuplicateSameLink => {
                self.stats.duplicate_link_crossings += 1;
                return;
            }
            Accepted::DuplicateOtherLink => {
                self.stats.duplicate_arrivals += 1;
                return;
            }
            Accepted::Old => return,
        }
        for child in tree.children_lacking(seq, from) {
            self.stats.forwarded += 1;
            self.out.send(&mut self.stats, child, bytes.to_vec());
        }
        self.send_nacks(id, now, overlay);
        self.deliver(id, now);
    }

    /// Asks the upstream of `id` for what it is missing and has not asked for lately.
    fn send_nacks(&mut self, id: TreeId, now: Instant, overlay: &Node) {
        let Some(tree) = self.trees.get_mut(&id) else {
            return;
        };
        let Some(upstream) = tree.upstream.filter(|_| tree.missing_count() > 0) else {
            return;
        };
        for (first, count) in tree.due_nacks(now, retry_after(overlay, upstream)) {
            let nack = Message::Nack {
                tree: id,
                epoch: tree.epoch,
                first,
                count,
            };
            self.stats.nacks_sent += 1;
            self.out.send(&mut self.stats, upstream, nack.to_bytes());
        }
    }

    /// Hands the subscriber what is ready in order.
    fn deliver(&mut self, id: TreeId, now: Instant) {
        let Some(tree) = self.trees.get_mut(&id) else {
            return;
        };
        if !tree.local {
            return;
        }
        tree.deliverable(now, &mut self.ready);
        let Some(subscription) = self.subscriptions.get(&id.topic) else {
            self.ready.clear();
            return;
        };
        let report_lost =
            |events: &mut VecDeque<PubSubEvent>, stats: &mut PubSubStats, tree: &mut Tree| {
                if tree.lost_unreported > 0 && events.len() < MAX_EVENTS {
                    events.push_back(PubSubEvent::Lost {
                        topic: subscription.name.clone(),
                        source: id.publisher,
                        count: tree.lost_unreported,
                    });
                    stats.lost += tree.lost_unreported;
                    tree.lost_unreported = 0;
                }
            };
        for (seq, message) in self.ready.drain(..) {
            // Room for this message and for a report of losses before it.
            if self.events.len() + 2 > MAX_EVENTS {
                tree.lost_unreported += 1;
                continue;
            }
            report_lost(&mut self.events, &mut self.stats, tree);
            self.stats.delivered += 1;
            self.events.push_back(PubSubEvent::Message(Delivery {
                topic: subscription.name.clone(),
                source: id.publisher,
                seq,
                message,
                at: now,
            }));
        }
        report_lost(&mut self.events, &mut self.stats, tree);
    }

    /// Keeps tree `id` joined where the route to its publisher goes now.
    fn maintain(&mut self, id: TreeId, now: Instant, overlay: &Node) {
        if id.publisher == self.local {
            return;
        }
        let Some(tree) = self.trees.get_mut(&id) else {
            return;
        };
        let next_hop = overlay.route(&id.publisher).map(|route| route.next_hop);
        let moved = next_hop.is_some() && next_hop != tree.upstream;
        let due = tree.upstream.is_some()
            && tree.join_sent.is_none_or(|sent| {
                let wait = if tree.acked {
                    REFRESH
                } else {
                    retry_after(overlay, tree.upstream.expect("checked"))
                };
                now >= sent + wait
            });
        if moved {
            debug!(
                topic = format_args!("{:016x}", id.topic),
                publisher = %id.publisher,
                old = ?tree.upstream,
                new = ?next_hop,
                "pub/sub tree moves upstream with the route"
            );
            if let Some(old) = tree.upstream.replace(next_hop.expect("checked")) {
                self.stats.upstream_moves += 1;
                self.stats.leaves_sent += 1;
                self.out
                    .send(&mut self.stats, old, Message::Leave(id).to_bytes());
            }
            tree.acked = false;
        }
        if moved || due {
            tree.join_sent = Some(now);
            self.stats.joins_sent += 1;
            let upstream = tree.upstream.expect("set");
            let join = Message::Join {
                tree: id,
                ask: !tree.acked,
                epoch: tree.epoch,
                highest: tree.highest,
            };
            self.out.send(&mut self.stats, upstream, join.to_bytes());
        }
    }

    fn tick(&mut self, now: Instant, overlay: &Node) {
        self.rendezvous.expire(now);
        self.publications
            .retain(|_, publication| now < publication.last_published + PUBLICATION_IDLE);
        let mut announce = Vec::new();
        for (&topic, publication) in &mut self.publications {
            if now >= publication.announce_due {
                publication.announce_due = now + REFRESH;
                let since = if publication.announced {
                    publication.next_seq - 1
                } else {
                    0
                };
                publication.announced = true;
                announce.push((topic, since));
            }
        }
        let mut interest = Vec::new();
        for (&topic, subscription) in &mut self.subscriptions {
            if now >= subscription.interest_due {
                subscription.interest_due = now + REFRESH;
                // The first goes to every rendezvous.
                let turn = (subscription.interests_sent > 0).then_some(subscription.interests_sent);
                subscription.interests_sent += 1;
                interest.push((topic, turn));
            }
        }
        for (topic, since) in announce {
            for node in Self::rendezvous_of(overlay, topic, now) {
                let bytes = Message::Announce { topic, since }.to_bytes();
                self.out.send(&mut self.stats, node, bytes);
            }
        }
        for (topic, turn) in interest {
            let rendezvous = Self::rendezvous_of(overlay, topic, now);
            let chosen = match turn {
                Some(turn) if !rendezvous.is_empty() => vec![rendezvous[turn % rendezvous.len()]],
                _ => rendezvous,
            };
            for node in chosen {
                let bytes = Message::Interest { topic }.to_bytes();
                self.out.send(&mut self.stats, node, bytes);
            }
        }
        let ids: Vec<TreeId> = self.trees.keys().copied().collect();
        for id in ids {
            let publishing =
                self.publications.contains_key(&id.topic) && id.publisher == self.local;
            let tree = self.trees.get_mut(&id).expect("listed");
            tree.expire_children(now);
            tree.forget_old(now);
            let silent = now >= tree.heard + SOFT_STATE;
            if !publishing && tree.children.is_empty() && (!tree.local || silent) {
                if let Some(upstream) = tree.upstream {
                    self.stats.leaves_sent += 1;
                    self.out
                        .send(&mut self.stats, upstream, Message::Leave(id).to_bytes());
                }
                self.trees.remove(&id);
                continue;
            }
            self.maintain(id, now, overlay);
            self.send_nacks(id, now, overlay);
            self.deliver(id, now);
        }
    }

    /// Anything that needs ticks: trees, subscriptions, publications, rendezvous state.
    fn has_state(&self) -> bool {
        !(self.trees.is_empty()
            && self.subscriptions.is_empty()
            && self.publications.is_empty()
            && self.rendezvous.topic_count() == 0)
    }

    /// Reads back what this node sent itself.
    fn drain_loopback(&mut self, now: Instant, overlay: &Node) {
        // Each round answers the last; a rendezvous on this node answers its own node once.
        for _ in 0..4 {
            let pending: Vec<Vec<u8>> = self.out.loopback.drain(..).collect();
            if pending.is_empty() {
                return;
            }
            for data in pending {
                self.on_message(now, self.local, &data, overlay);
            }
        }
        self.out.loopback.clear();
    }
}

impl Service for PubSub {
    fn handle_message(&mut self, now: Instant, message: ServiceMessage<'_>, overlay: &Node) {
        self.on_message(now, message.from, message.data, overlay);
        self.drain_loopback(now, overlay);
        if self.next_tick.is_none() && self.has_state() {
            self.next_tick = Some(now + TICK);
        }
    }

    fn handle_timeout(&mut self, now: Instant, overlay: &Node) {
        if self.next_tick.is_some_and(|tick| now >= tick) {
            self.tick(now, overlay);
            self.drain_loopback(now, overlay);
            self.next_tick = self.has_state().then_some(now + TICK);
        }
    }

    fn poll_transmit(&mut self) -> Option<ServiceTransmit> {
        self.out.queue.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }
}
