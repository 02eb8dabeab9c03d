//! One node's part in one tree (a topic's messages from one publisher): where it joined, who
//! joined it, the recent messages it can hand out again, and what it is missing.
//!
//! Sequence numbers count a publisher's messages from 1. A member *starts* at the highest
//! number its parent knows when it joins, or at 0 when the publication is young (at most
//! [`CATCH_UP`] messages), so subscribers that join as a publisher starts get everything; a
//! subscriber that a rendezvous told the publication started after it subscribed starts where
//! the rendezvous said, and a forwarder of a young one where its children need it. From
//! there every number it learns of and has not received is *missing* until it arrives, is
//! given up on ([`GIVE_UP`]), or falls out of the recent window.

use std::collections::{BTreeMap, VecDeque};

use crate::keyed::{self, Map};
use crate::{Duration, Instant, NodeId};

/// Messages each member keeps for repairs at most: enough for the [`GIVE_UP`] time at a
/// thousand messages a second. They are kept for [`RETAIN`] (the last [`CATCH_UP`] for
/// longer) and take [`RECENT_BYTES`] at most.
pub const RECENT: usize = 4_096;
pub const RECENT_BYTES: usize = 1 << 20;
pub const RETAIN: Duration = Duration::from_secs(10);
/// A member that joins a publication of at most this many messages fetches all of them.
pub const CATCH_UP: u64 = 64;
/// The window of numbers a member keeps track of, below its highest.
const WINDOW: u64 = RECENT as u64;
/// A missing message not recovered in this long is given up (and counted as lost).
pub const GIVE_UP: Duration = Duration::from_secs(3);
/// How long a member that left is remembered with what was sent to it: longer than a message
/// forwarded just before its leave arrived takes to reach it.
const DEPARTED_KEPT: Duration = Duration::from_secs(2);
/// Members remembered so at most, per tree.
const MAX_DEPARTED: usize = 256;

/// What became of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// The same message from the same neighbour again.
    DuplicateSameLink,
    /// A message this member had from another neighbour.
    DuplicateOtherLink,
    /// Older than this member's start or its window.
    Old,
}

struct Stored {
    from: NodeId,
    /// The whole data message as it travels, forwarded unchanged.
    bytes: Vec<u8>,
    message_at: usize,
    arrived: Instant,
    /// The last member it was sent to again in answer to a nack, and when.
    repaired: Option<(NodeId, Instant)>,
}

/// A member joined to this one.
#[derive(Debug, Clone, Copy)]
pub struct Child {
    /// When its join expires unless renewed.
    pub until: Instant,
    /// It had got to number `highest` of publication `epoch` when it last joined: nothing up
    /// to there is sent to it (it asks for what it lacks below that itself).
    pub epoch: u32,
    pub highest: u64,
}

/// A member that left: everything of publication `epoch` up to `sent` had gone to it.
#[derive(Debug, Clone, Copy)]
struct Departed {
    epoch: u32,
    sent: u64,
    until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    noticed: Instant,
    nacked: Option<Instant>,
}

pub(super) struct Tree {
    /// The publication this state belongs to; 0 until heard of.
    pub epoch: u32,
    /// Where this member joined (none for the publisher itself).
    pub upstream: Option<NodeId>,
    /// The upstream answered the last join.
    pub acked: bool,
    pub join_sent: Option<Instant>,
    /// Members joined here.
    pub children: Map<NodeId, Child>,
    /// Children that left lately (see [`Tree::child_left`]).
    departed: Map<NodeId, Departed>,
    /// This node subscribes to the topic.
    pub local: bool,
    /// Messages left out of local delivery (given up or no room) not yet reported.
    pub lost_unreported: u64,
    /// The last time the publisher was heard of (data, an answered join, a listing).
    pub heard: Instant,
    recent: BTreeMap<u64, Stored>,
    recent_bytes: usize,
    started: bool,
    /// Where to start instead of the usual rule: the publication started after this node
    /// subscribed, and this is where (see [`Tree::start_after`]).
    start_hint: Option<u64>,
    /// Numbers at or below this were before this member's start.
    floor: u64,
    pub highest: u64,
    /// The last number delivered locally, or skipped.
    delivered: u64,
    missing: BTreeMap<u64, Missing>,
}

impl Tree {
    pub fn new(now: Instant, seed: u64) -> Self {
        Self {
            epoch: 0,
            upstream: None,
            acked: false,
            join_sent: None,
            children: Map::with_hasher(keyed::hash_key(seed)),
            departed: Map::with_hasher(keyed::hash_key(seed ^ 1)),
            local: false,
            lost_unreported: 0,
            heard: now,
            recent: BTreeMap::new(),
            recent_bytes: 0,
            started: false,
            start_hint: None,
            floor: 0,
            highest: 0,
            delivered: 0,
            missing: BTreeMap::new(),
        }
    }

    /// Forgets the messages of an earlier publication.
    pub fn restart(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.recent.clear();
        self.recent_bytes = 0;
        self.missing.clear();
        self.started = false;
        self.floor = 0;
        self.highest = 0;
        self.delivered = 0;
    }

    /// A rendezvous said the publication started after this subscriber was there, from
    /// message `since` on: a member that has not started yet fetches everything after it
    /// (what its window holds), not just what comes after its join; one that started already
    /// (it forwarded for others before the word came) goes back to `since` if it has delivered
    /// nothing yet.
    pub fn start_after(&mut self, since: u64, now: Instant) {
        if !self.started {
            self.start_hint = Some(since);
            return;
        }
        if since >= self.floor || self.delivered != self.floor {
            return;
        }
        let from = (since + 1).max(self.highest.saturating_sub(WINDOW - 1));
        self.mark_missing(from..=self.floor, now);
        self.floor = since;
        self.delivered = since;
    }

    /// The publisher's own tree starts with its first message.
    pub fn start_as_root(&mut self, epoch: u32) {
        self.restart(epoch);
        self.started = true;
    }

    /// Messages up to `highest` exist: the start, for a member that has none yet, and what is
    /// missing otherwise.
    pub fn learn_highest(&mut self, highest: u64, now: Instant) {
        if !self.started {
            self.started = true;
            self.floor = match self.start_hint.take() {
                Some(since) => since.min(highest),
                None if highest <= CATCH_UP => self.needed_from().min(highest),
                None => highest,
            };
            self.delivered = self.floor;
            self.highest = self.floor;
        }
        self.note_missing_up_to(highest, now);
    }

    fn note_missing_up_to(&mut self, highest: u64, now: Instant) {
        if highest <= self.highest {
            return;
        }
        let from = (self.highest + 1).max(highest.saturating_sub(WINDOW - 1));
        self.mark_missing(from..=highest, now);
        self.highest = highest;
    }

    /// A child asked for `seq`, which this member lacks: it is missing here too, if it can
    /// still be had.
    pub fn want(&mut self, seq: u64, now: Instant) {
        // A child is at most a window ahead of its parent (it came from another one); a
        // number further on is no one's.
        if seq == 0
            || self.recent.contains_key(&seq)
            || self.below_window(seq)
            || seq > self.highest.saturating_add(WINDOW)
        {
            return;
        }
        if seq > self.highest {
            self.note_missing_up_to(seq, now);
        } else {
            self.mark_missing(seq..=seq, now);
        }
    }

    /// Where a member that starts now has to fetch a young publication from: the start for a
    /// subscriber, and otherwise only what its children lack (a forwarder that left the tree
    /// and joined again would fetch what they have had from it before).
    fn needed_from(&self) -> u64 {
        if self.local {
            return 0;
        }
        self.children
            .values()
            .map(|child| {
                if child.epoch == self.epoch {
                    child.highest
                } else {
                    0
                }
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The children to send data message `seq` to: all but `from` and those that have it.
    pub fn children_lacking(&self, seq: u64, from: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.children
            .iter()
            .filter(move |(id, child)| {
                **id != from && !(child.epoch == self.epoch && seq <= child.highest)
            })
            .map(|(&id, _)| id)
    }

    /// The numbers of `seqs` that have not arrived are missing (from `now`, unless they were
    /// already).
    fn mark_missing(&mut self, seqs: std::ops::RangeInclusive<u64>, now: Instant) {
        for seq in seqs {
            if !self.recent.contains_key(&seq) {
                self.missing.entry(seq).or_insert(Missing {
                    noticed: now,
                    nacked: None,
                });
            }
        }
    }

    /// Older than the window below the highest number known.
    fn below_window(&self, seq: u64) -> bool {
        seq.saturating_add(WINDOW) <= self.highest
    }

    /// Takes in data message `seq` (`bytes`, with the message itself from `message_at` on)
    /// from neighbour `from`.
    pub fn accept(
        &mut self,
        seq: u64,
        from: NodeId,
        bytes: &[u8],
        message_at: usize,
        now: Instant,
    ) -> Accepted {
        if seq == 0 {
            return Accepted::Old;
        }
        if let Some(stored) = self.recent.get(&seq) {
            return if stored.from == from {
                Accepted::DuplicateSameLink
            } else {
                Accepted::DuplicateOtherLink
            };
        }
        if !self.started {
            self.learn_highest(seq - 1, now);
        }
        let wanted = self.missing.remove(&seq).is_some() || seq > self.highest;
        if !wanted || self.below_window(seq) {
            return Accepted::Old;
        }
        // Everything below `seq` in its window that has not arrived is missing now.
        self.note_missing_up_to(seq, now);
        self.missing.remove(&seq);
        self.recent.insert(
            seq,
            Stored {
                from,
                bytes: bytes.to_vec(),
                message_at,
                arrived: now,
                repaired: None,
            },
        );
        self.recent_bytes += bytes.len();
        self.forget_old(now);
        Accepted::New
    }

    /// Lets go of the messages beyond the bounds of [`RECENT`].
    pub fn forget_old(&mut self, now: Instant) {
        while let Some((_, oldest)) = self.recent.first_key_value() {
            let over = self.recent.len() > RECENT || self.recent_bytes > RECENT_BYTES;
            let aged = self.recent.len() > CATCH_UP as usize && now >= oldest.arrived + RETAIN;
            if !(over || aged) {
                return;
            }
            let (_, dropped) = self.recent.pop_first().expect("seen");
            self.recent_bytes -= dropped.bytes.len();
        }
    }

    /// What a child that joined here from elsewhere lacks, having got to `highest`: the
    /// messages after that, at most `limit`, sent now (so a nack for one of them soon after is
    /// not answered twice).
    pub fn catch_up(
        &mut self,
        child: NodeId,
        highest: u64,
        now: Instant,
        limit: usize,
    ) -> Vec<Vec<u8>> {
        let from = highest.saturating_add(1);
        self.recent
            .range_mut(from..)
            .take(limit)
            .map(|(_, stored)| {
                stored.repaired = Some((child, now));
                stored.bytes.clone()
            })
            .collect()
    }

    /// Whether this member has data message `seq`.
    pub fn has(&self, seq: u64) -> bool {
        self.recent.contains_key(&seq)
    }

    /// Data message `seq` to send `child` again in answer to its nack, unless a copy is still on
    /// its way there: what arrived here within `in_flight` went down to the children with its
    /// arrival, and what was sent to `child` again within twice that was its answer already.
    /// Sending either again would cross the link twice.
    pub fn repair_for(
        &mut self,
        seq: u64,
        child: NodeId,
        now: Instant,
        in_flight: Duration,
    ) -> Option<&[u8]> {
        let stored = self.recent.get_mut(&seq)?;
        let answered = stored
            .repaired
            .is_some_and(|(to, at)| to == child && now < at + in_flight + in_flight);
        if now < stored.arrived + in_flight || answered {
            return None;
        }
        stored.repaired = Some((child, now));
        Some(&stored.bytes)
    }

    /// The next messages for local delivery in order: what has arrived, passing over what was
    /// given up or can no longer be had (counted in `lost_unreported`).
    pub fn deliverable(&mut self, now: Instant, out: &mut VecDeque<(u64, Vec<u8>)>) {
        // What lies below the window can no longer be had: passed over at once, so a jump in
        // the numbers costs no more than a window's work.
        let floor = self.highest.saturating_sub(WINDOW);
        if self.delivered < floor {
            self.lost_unreported += floor - self.delivered;
            self.delivered = floor;
        }
        while self.delivered < self.highest {
            let next = self.delivered + 1;
            if let Some(stored) = self.recent.get(&next) {
                out.push_back((next, stored.bytes[stored.message_at..].to_vec()));
            } else if self
                .missing
                .get(&next)
                .is_some_and(|missing| now < missing.noticed + GIVE_UP)
            {
                return;
            } else {
                self.lost_unreported += 1;
            }
            self.delivered = next;
        }
    }

    /// The ranges to ask the upstream for now: missing numbers never asked for, or asked for
    /// longer than `retry` ago. Numbers given up on are dropped.
    pub fn due_nacks(&mut self, now: Instant, retry: Duration) -> Vec<(u64, u16)> {
        self.missing
            .retain(|_, missing| now < missing.noticed + GIVE_UP);
        let mut ranges: Vec<(u64, u16)> = Vec::new();
        for (&seq, missing) in &mut self.missing {
            if missing.nacked.is_some_and(|at| now < at + retry) {
                continue;
            }
            missing.nacked = Some(now);
            match ranges.last_mut() {
                Some((first, count))
                    if *first + u64::from(*count) == seq
                        && *count < super::wire::MAX_NACK_COUNT =>
                {
                    *count += 1;
                }
                _ => ranges.push((seq, 1)),
            }
        }
        ranges
    }

    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// Joins that were not renewed in time end.
    pub fn expire_children(&mut self, now: Instant) {
        self.children.retain(|_, child| now < child.until);
        self.departed.retain(|_, departed| now < departed.until);
    }

    /// `child` left. What this member had by then went to it (every message is sent to the
    /// children as it arrives), some of it still on its way: remembered for a while, so that
    /// if its route flaps straight back here, that is not sent to it again.
    pub fn child_left(&mut self, child: NodeId, now: Instant) {
        if self.children.swap_remove(&child).is_none() || self.departed.len() >= MAX_DEPARTED {
            return;
        }
        self.departed.insert(
            child,
            Departed {
                epoch: self.epoch,
                sent: self.highest,
                until: now + DEPARTED_KEPT,
            },
        );
    }

    /// How far a member of publication `epoch` that joins here again had got, by what it says
    /// (`highest`) and by what was sent to it before it left: the more of the two.
    pub fn returning(&mut self, child: NodeId, epoch: u32, highest: u64, now: Instant) -> u64 {
        let sent = self
            .departed
            .swap_remove(&child)
            .filter(|departed| departed.epoch == epoch && epoch != 0 && now < departed.until)
            .map_or(0, |departed| departed.sent);
        highest.max(sent)
    }
}
