//! The sequence-number requests a node sent or passed on: duplicates are suppressed, every
//! neighbour that asked is answered once the seqno arrives, and the node's own requests go out
//! again while unanswered. A request crosses a path and its answer crosses it back; either can be
//! lost, and without a resend the asker would starve until its next link review (5 s).

use crate::keyed::{HashKey, Map};
use crate::routing::Seqno;
use crate::{Duration, Instant, NodeId};

/// The same request is not passed on twice within this time, except as a resend by the same
/// asker.
const MEMORY: Duration = Duration::from_secs(2);
/// An own request unanswered after this long goes out again, then after twice as long, and so
/// on: about a round trip on long paths, and a fraction of the fallback a lost route keeps.
const FIRST_RESEND: Duration = Duration::from_millis(300);
/// Sends of one own request (300 + 600 + 1,200 ms of waiting) before the link review's slow
/// re-asking takes over.
const MAX_SENDS: u8 = 4;
/// A resend by the same asker is passed on at most this often.
const RESEND_FLOOR: Duration = Duration::from_millis(100);
/// Neighbours remembered per request; one more asking is answered by its own resend.
const MAX_REQUESTERS: usize = 8;
/// Bound on remembered requests.
const MAX_PENDING: usize = 4_096;

/// A request for `destination` at a seqno, as remembered.
pub(super) type RequestKey = (NodeId, Seqno);

#[derive(Debug)]
struct Pending {
    /// When it last went out.
    at: Instant,
    sends: u8,
    /// Whether this node asked for itself, and resends it.
    own: bool,
    /// The neighbours it was passed on for.
    requesters: Vec<NodeId>,
}

impl Pending {
    fn next_resend(&self) -> Option<Instant> {
        (self.own && self.sends < MAX_SENDS)
            .then(|| self.at + Duration::from_micros(FIRST_RESEND.as_micros() << (self.sends - 1)))
    }
}

#[derive(Debug)]
pub(super) struct SeqnoRequests {
    pending: Map<RequestKey, Pending>,
    /// The earliest resend of an own request.
    next_resend: Option<Instant>,
}

impl SeqnoRequests {
    pub fn new(hash_key: HashKey) -> Self {
        Self {
            pending: Map::with_hasher(hash_key),
            next_resend: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether this node's own request should go out now: not when the same request went out
    /// within the memory (for us or a neighbour); the resends take care of it from here.
    pub fn own(&mut self, key: RequestKey, now: Instant) -> bool {
        let send = match self.pending.get_mut(&key) {
            Some(pending) if now - pending.at < MEMORY => {
                pending.own = true;
                false
            }
            _ => self.insert(key, now, true, None),
        };
        self.update_next_resend();
        send
    }

    /// Whether a request `requester` sent for `key` should be passed on now: when nobody's went
    /// out within the memory, or when it is the same asker's resend (its request or the answer
    /// was lost). Another asker's duplicate is held back and answered with the first one's.
    pub fn passed_on(&mut self, key: RequestKey, requester: NodeId, now: Instant) -> bool {
        match self.pending.get_mut(&key) {
            Some(pending) if now - pending.at < MEMORY => {
                if !pending.requesters.contains(&requester) {
                    if pending.requesters.len() < MAX_REQUESTERS {
                        pending.requesters.push(requester);
                    }
                    return false;
                }
                if now - pending.at < RESEND_FLOOR {
                    return false;
                }
                pending.at = now;
                pending.sends = pending.sends.saturating_add(1);
                true
            }
            _ => {
                self.pending.swap_remove(&key);
                self.insert(key, now, false, Some(requester))
            }
        }
    }

    fn insert(
        &mut self,
        key: RequestKey,
        now: Instant,
        own: bool,
        requester: Option<NodeId>,
    ) -> bool {
        if self.pending.len() >= MAX_PENDING {
            self.forget_old(now);
            if self.pending.len() >= MAX_PENDING {
                return false;
            }
        }
        let pending = Pending {
            at: now,
            sends: 1,
            own,
            requesters: requester.into_iter().collect(),
        };
        self.pending.insert(key, pending);
        true
    }

    /// `destination`'s route now has seqno `have`: forgets the requests it satisfies and returns
    /// the neighbours that asked for them.
    pub fn answered(&mut self, destination: &NodeId, have: Seqno) -> Vec<NodeId> {
        let requesters: Vec<NodeId> = self
            .pending
            .extract_if(.., |(wanted_for, wanted), _| {
                wanted_for == destination && !wanted.is_newer_than(have)
            })
            .flat_map(|(_, pending)| pending.requesters)
            .collect();
        if self.next_resend.is_some() {
            self.update_next_resend();
        }
        requesters
    }

    /// Own requests due for a resend at `now`; they count as sent again.
    pub fn due(&mut self, now: Instant) -> Vec<RequestKey> {
        if self.next_resend.is_none_or(|at| at > now) {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (key, pending) in self.pending.iter_mut() {
            if pending.next_resend().is_some_and(|at| at <= now) {
                pending.at = now;
                pending.sends += 1;
                due.push(*key);
            }
        }
        self.update_next_resend();
        due
    }

    /// This node no longer wants `key` (its route moved on): no more resends of it.
    pub fn drop_own(&mut self, key: &RequestKey) {
        if let Some(pending) = self.pending.get_mut(key) {
            pending.own = false;
        }
        self.update_next_resend();
    }

    pub fn next_resend(&self) -> Option<Instant> {
        self.next_resend
    }

    /// Forgets requests past the memory that will not be sent again.
    pub fn forget_old(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now - p.at < MEMORY || p.next_resend().is_some());
        self.update_next_resend();
    }

    fn update_next_resend(&mut self) {
        self.next_resend = self.pending.values().filter_map(Pending::next_resend).min();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 8])
    }

    fn at(ms: i64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn requests() -> SeqnoRequests {
        SeqnoRequests::new(HashKey::default())
    }

    #[test]
    fn own_requests_go_out_again_with_growing_waits_until_answered() {
        let mut requests = requests();
        let key = (node(9), Seqno(3));
        assert!(requests.own(key, at(0)));
        assert!(
            !requests.own(key, at(10)),
            "a second want waits for the resend"
        );
        assert!(requests.due(at(299)).is_empty());
        assert_eq!(requests.due(at(300)), vec![key]);
        assert!(
            requests.due(at(899)).is_empty(),
            "the second wait is twice as long"
        );
        assert_eq!(requests.due(at(900)), vec![key]);
        assert_eq!(requests.due(at(2_100)), vec![key]);
        assert!(requests.due(at(60_000)).is_empty(), "the review takes over");
        assert_eq!(requests.next_resend(), None);
        assert!(requests.answered(&node(9), Seqno(3)).is_empty());
        assert!(requests.is_empty());
    }

    #[test]
    fn an_answered_request_is_not_resent() {
        let mut requests = requests();
        assert!(requests.own((node(9), Seqno(3)), at(0)));
        requests.answered(&node(9), Seqno(4));
        assert_eq!(requests.next_resend(), None);
        assert!(requests.due(at(1_000)).is_empty());
    }

    #[test]
    fn duplicates_are_held_back_but_every_asker_is_answered() {
        let mut requests = requests();
        let key = (node(9), Seqno(3));
        assert!(requests.passed_on(key, node(1), at(0)));
        assert!(
            !requests.passed_on(key, node(2), at(200)),
            "another asker's duplicate"
        );
        assert!(
            !requests.passed_on(key, node(1), at(50)),
            "a resend too soon"
        );
        assert!(
            requests.passed_on(key, node(1), at(300)),
            "the same asker's resend"
        );
        assert!(requests.answered(&node(9), Seqno(2)).is_empty(), "too old");
        let mut answered = requests.answered(&node(9), Seqno(3));
        answered.sort();
        assert_eq!(answered, vec![node(1), node(2)]);
        assert!(requests.is_empty());
    }

    #[test]
    fn a_request_past_the_memory_goes_out_again() {
        let mut requests = requests();
        let key = (node(9), Seqno(3));
        assert!(requests.passed_on(key, node(1), at(0)));
        assert!(requests.passed_on(key, node(2), at(2_000)));
        requests.forget_old(at(4_000));
        assert!(requests.is_empty());
    }

    #[test]
    fn a_dropped_want_stops_its_resends() {
        let mut requests = requests();
        let key = (node(9), Seqno(3));
        assert!(requests.own(key, at(0)));
        requests.drop_own(&key);
        assert!(requests.due(at(1_000)).is_empty());
    }
}
