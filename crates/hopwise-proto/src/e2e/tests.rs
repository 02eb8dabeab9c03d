//! The end-to-end layer between two ends that hand each other's datagrams straight over.

use super::*;
use crate::secure::crypto::generate_keypair;

/// Two ends that hand each other's datagrams straight over, `delay` each way.
struct Pair {
    ends: [EndToEnd; 2],
    ids: [NodeId; 2],
    now: Instant,
}

fn end(seed: u64, now: Instant) -> (EndToEnd, NodeId) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (private, public) = generate_keypair(&mut rng);
    let id = NodeId::from_public_key(&public);
    (EndToEnd::new(id, private, seed, now), id)
}

impl Pair {
    fn new() -> Self {
        let (a, a_id) = end(1, Instant::ZERO);
        let (b, b_id) = end(2, Instant::ZERO);
        Self {
            ends: [a, b],
            ids: [a_id, b_id],
            now: Instant::ZERO,
        }
    }

    /// Carries datagrams back and forth until neither end has any left; returns how many.
    fn exchange(&mut self) -> usize {
        self.exchange_unless(|_, _| false)
    }

    /// Like [`Pair::exchange`], dropping the datagrams `lose` picks (by sender and bytes).
    fn exchange_unless(&mut self, mut lose: impl FnMut(usize, &[u8]) -> bool) -> usize {
        let mut carried = 0;
        loop {
            let mut any = false;
            for from in 0..2 {
                while let Some((to, datagram)) = self.ends[from].poll_transmit() {
                    assert_eq!(to, self.ids[1 - from]);
                    any = true;
                    if lose(from, &datagram) {
                        continue;
                    }
                    carried += 1;
                    let (source, now) = (self.ids[from], self.now);
                    self.ends[1 - from].handle_datagram(now, source, source, &datagram);
                }
            }
            if !any {
                return carried;
            }
        }
    }

    /// Moves time on by `step` at a time, running timers and carrying datagrams.
    fn run_for(&mut self, total: Duration, step: Duration) {
        let until = self.now + total;
        while self.now < until {
            self.now += step;
            for end in &mut self.ends {
                end.handle_timeout(self.now);
            }
            self.exchange();
        }
    }

    fn send(&mut self, from: usize, data: &[u8]) {
        let (to, now) = (self.ids[1 - from], self.now);
        self.ends[from]
            .send(now, to, Port(7), Port(9), data)
            .unwrap();
    }

    fn received(&mut self, end: usize) -> Vec<Received> {
        std::iter::from_fn(|| self.ends[end].poll_received()).collect()
    }
}

#[test]
fn the_first_payload_rides_the_handshake_and_later_ones_go_at_once() {
    let mut pair = Pair::new();
    let b = pair.ids[1];
    pair.ends[0]
        .send(pair.now, b, Port(7), Port(9), b"hello")
        .unwrap();
    // init, response, finish (with the payload), acknowledgement.
    assert_eq!(pair.exchange(), 4);
    let got = pair.received(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, pair.ids[0]);
    assert_eq!(
        (got[0].source_port, got[0].destination_port),
        (Port(7), Port(9))
    );
    assert_eq!(got[0].data, b"hello");
    pair.ends[0]
        .send(pair.now, b, Port(7), Port(9), b"again")
        .unwrap();
    assert_eq!(pair.exchange(), 1);
    assert_eq!(pair.received(1)[0].data, b"again");
    let a = pair.ids[0];
    pair.ends[1]
        .send(pair.now, a, Port(9), Port(7), b"back")
        .unwrap();
    assert_eq!(pair.exchange(), 1);
    assert_eq!(pair.received(0)[0].data, b"back");
    assert_eq!(pair.ends[0].stats().handshakes_completed, 1);
    assert_eq!(pair.ends[1].stats().handshakes_completed, 1);
}

#[test]
fn simultaneous_opens_each_carry_their_first_payload_and_agree_on_one_session() {
    let mut pair = Pair::new();
    pair.send(0, b"from a");
    pair.send(1, b"from b");
    pair.exchange();
    assert_eq!(pair.received(1)[0].data, b"from a");
    assert_eq!(pair.received(0)[0].data, b"from b");
    // Long after the other session's keys are gone, both ways still work.
    pair.run_for(Duration::from_secs(40), Duration::from_secs(1));
    for round in 0..3u8 {
        pair.send(0, &[round]);
        pair.send(1, &[round]);
        pair.exchange();
        assert_eq!(pair.received(1).len(), 1, "a to b, round {round}");
        assert_eq!(pair.received(0).len(), 1, "b to a, round {round}");
    }
    let stats = |end: usize| *pair.ends[end].stats();
    assert_eq!(stats(0).dropped_bad_tag + stats(1).dropped_bad_tag, 0);
}

#[test]
fn a_lost_finish_is_sent_again_and_its_payload_arrives() {
    let mut pair = Pair::new();
    pair.send(0, b"first");
    let mut dropped = false;
    pair.exchange_unless(|from, datagram| {
        let finish = from == 0 && datagram[0] == 3 && !dropped;
        dropped |= finish;
        finish
    });
    assert!(dropped);
    assert!(pair.received(1).is_empty());
    pair.run_for(Duration::from_millis(1_100), Duration::from_millis(100));
    assert_eq!(pair.received(1)[0].data, b"first");
}

#[test]
fn a_restarted_peer_is_re_keyed() {
    let mut pair = Pair::new();
    pair.send(0, b"before");
    pair.exchange();
    assert_eq!(pair.received(1).len(), 1);
    pair.run_for(Duration::from_secs(10), Duration::from_secs(1));
    // The peer restarts: same key, no state.
    let (fresh, id) = end(2, pair.now);
    assert_eq!(id, pair.ids[1]);
    pair.ends[1] = fresh;
    pair.send(0, b"lost on the old keys");
    pair.exchange();
    assert!(pair.received(1).is_empty());
    assert_eq!(pair.ends[1].stats().dropped_no_session, 1);
    // The restarted end opened a new session; the next payload arrives.
    pair.send(0, b"after");
    pair.exchange();
    assert_eq!(pair.received(1)[0].data, b"after");
    assert_eq!(pair.ends[0].stats().rekeys, 1);
}

#[test]
fn sessions_are_re_keyed_without_holding_payloads() {
    let mut pair = Pair::new();
    pair.send(0, b"0");
    pair.exchange();
    pair.received(1);
    pair.run_for(REKEY_AFTER, Duration::from_secs(10));
    for round in 0..5u8 {
        pair.send(0, &[round]);
        pair.exchange();
        assert_eq!(pair.received(1).len(), 1, "round {round}");
    }
    assert_eq!(pair.ends[0].stats().rekeys, 1);
    assert_eq!(pair.ends[1].stats().rekeys, 1);
}

#[test]
fn altered_truncated_replayed_and_forged_data_is_counted_not_delivered() {
    let mut pair = Pair::new();
    pair.send(0, b"open");
    pair.exchange();
    pair.received(1);
    pair.send(0, b"genuine");
    let (_, genuine) = pair.ends[0].poll_transmit().unwrap();
    let (a, now) = (pair.ids[0], pair.now);
    let b = &mut pair.ends[1];
    let mut altered = genuine.clone();
    *altered.last_mut().unwrap() ^= 1;
    b.handle_datagram(now, a, a, &altered);
    b.handle_datagram(now, a, a, &genuine[..genuine.len() - 1]);
    b.handle_datagram(now, a, a, &genuine[..10]);
    b.handle_datagram(now, a, a, &genuine);
    b.handle_datagram(now, a, a, &genuine);
    // The same bytes claiming another sender, which holds no session here.
    let other = NodeId::from_bytes([9; 8]);
    b.handle_datagram(now, other, other, &genuine);
    let stats = *b.stats();
    assert_eq!(stats.dropped_bad_tag, 2, "altered and one byte short");
    assert_eq!(stats.dropped_malformed, 1, "shorter than a tag");
    assert_eq!(stats.dropped_replayed, 1);
    assert_eq!(stats.dropped_no_session, 1);
    let received = pair.received(1);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].data, b"genuine");
}

#[test]
fn a_flood_of_inits_from_one_neighbour_is_bounded_and_others_still_get_in() {
    let (mut target, _) = end(1, Instant::ZERO);
    let (mut honest, honest_id) = end(2, Instant::ZERO);
    let flooder = NodeId::from_bytes([0xf1; 8]);
    let mut now = Instant::ZERO;
    for round in 0..100u64 {
        now += Duration::from_millis(10);
        for i in 0..100u64 {
            // Inits under made-up ids, all handed over by the same member.
            let (mut forger, forged_id) = end(1_000 + round * 100 + i, now);
            forger
                .send(now, target.local, Port(1), Port(1), b"x")
                .unwrap();
            let (_, init) = forger.poll_transmit().unwrap();
            target.handle_datagram(now, forged_id, flooder, &init);
        }
        while target.poll_transmit().is_some() {}
        assert!(target.responding.len() <= MAX_RESPONDING_PER_HOP);
    }
    let refused = target.stats().handshakes_refused;
    assert!(refused >= 9_000, "{refused} of 10,000 refused");
    // A node that reaches the target through another neighbour still gets in.
    honest
        .send(now, target.local, Port(1), Port(2), b"hi")
        .unwrap();
    let target_id = target.local;
    for _ in 0..4 {
        while let Some((_, datagram)) = honest.poll_transmit() {
            target.handle_datagram(now, honest_id, honest_id, &datagram);
        }
        while let Some((_, datagram)) = target.poll_transmit() {
            honest.handle_datagram(now, target_id, target_id, &datagram);
        }
    }
    assert_eq!(target.poll_received().unwrap().data, b"hi");
}

#[test]
fn the_largest_datagram_goes_through_and_a_larger_one_is_refused() {
    // By default an end keeps to the base size; on a node whose path carries more, to that.
    for (overlay_payload, max) in [
        (None, BASE_DATA),
        (Some(MAX_PAYLOAD), MAX_DATA),
        (Some(1_300), 1_300 - OVERHEAD),
    ] {
        let mut pair = Pair::new();
        if let Some(limit) = overlay_payload {
            for end in &mut pair.ends {
                let (id, private) = (end.local, end.private_key);
                *end = EndToEnd::new(id, private, 3, pair.now).with_payload_limit(limit);
            }
        }
        let (b, now) = (pair.ids[1], pair.now);
        assert_eq!(pair.ends[0].max_data(), max);
        let too_large = vec![7; max + 1];
        assert_eq!(
            pair.ends[0].send(now, b, Port(7), Port(9), &too_large),
            Err(SendError::TooLarge { len: max + 1, max })
        );
        // The first payload is too large to ride the finish: it follows it.
        let largest = vec![7; max];
        pair.ends[0]
            .send(now, b, Port(7), Port(9), &largest)
            .unwrap();
        pair.exchange();
        assert_eq!(pair.received(1)[0].data, largest);
        let mut overlay_limit = 0;
        pair.ends[0]
            .send(now, b, Port(7), Port(9), &largest)
            .unwrap();
        while let Some((_, datagram)) = pair.ends[0].poll_transmit() {
            overlay_limit = overlay_limit.max(datagram.len());
        }
        assert_eq!(overlay_limit, max + OVERHEAD);
    }
}

/// Hands one datagram of `from` to the other end; false if it had none.
fn carry_one(pair: &mut Pair, from: usize, alter: impl FnOnce(&mut Vec<u8>)) -> bool {
    let Some((_, mut datagram)) = pair.ends[from].poll_transmit() else {
        return false;
    };
    alter(&mut datagram);
    let (source, now) = (pair.ids[from], pair.now);
    pair.ends[1 - from].handle_datagram(now, source, source, &datagram);
    true
}

#[test]
fn an_early_request_is_answered_in_the_response_and_arrives_again_authenticated() {
    let mut pair = Pair::new();
    let (a, b) = (pair.ids[0], pair.ids[1]);
    pair.ends[0]
        .send_early(pair.now, b, Port(7), Port(9), b"read k")
        .unwrap();
    // The init carries the request: b sees it at once, marked early.
    assert!(carry_one(&mut pair, 0, |_| {}));
    let early = pair.received(1);
    assert_eq!(early.len(), 1);
    assert!(early[0].early);
    assert_eq!(
        (early[0].from, early[0].data.as_slice()),
        (a, &b"read k"[..])
    );
    // b's answer rides the response: a has it, authenticated, after one round trip.
    pair.ends[1]
        .send_early(pair.now, a, Port(9), Port(7), b"k = 1")
        .unwrap();
    assert!(carry_one(&mut pair, 1, |_| {}));
    let answer = pair.received(0);
    assert_eq!(answer.len(), 1);
    assert!(!answer[0].early);
    assert_eq!(
        (answer[0].from, answer[0].data.as_slice()),
        (b, &b"k = 1"[..])
    );
    // The finish proves a: the request arrives again, authenticated, and only once.
    pair.exchange();
    let again = pair.received(1);
    assert_eq!(again.len(), 1);
    assert!(!again[0].early);
    assert_eq!(again[0].data, b"read k");
    // The session works as any other.
    pair.send(0, b"later");
    pair.exchange();
    assert_eq!(pair.received(1)[0].data, b"later");
}

#[test]
fn an_altered_early_request_gets_no_answer_through_and_is_never_authenticated() {
    let mut pair = Pair::new();
    let (a, b) = (pair.ids[0], pair.ids[1]);
    pair.ends[0]
        .send_early(pair.now, b, Port(7), Port(9), b"read k")
        .unwrap();
    // A relay changes the request in the init.
    assert!(carry_one(&mut pair, 0, |d| {
        let last = d.len() - 1;
        d[last] ^= 1;
    }));
    assert!(pair.received(1).iter().all(|r| r.early));
    pair.ends[1]
        .send_early(pair.now, a, Port(9), Port(7), b"answer")
        .unwrap();
    pair.exchange();
    // The response was made over the altered handshake: a cannot open it.
    assert!(pair.received(0).is_empty());
    assert!(pair.ends[0].stats().handshakes_failed >= 1);
    assert!(pair.received(1).iter().all(|r| r.early));
}

#[test]
fn an_early_send_with_no_init_to_answer_starts_an_early_init_of_its_own() {
    let mut pair = Pair::new();
    let a = pair.ids[0];
    // With no init of a to answer, b's early payload rides an init of its own.
    pair.ends[1]
        .send_early(pair.now, a, Port(9), Port(7), b"hello")
        .unwrap();
    pair.exchange();
    let got = pair.received(0);
    assert!(got.iter().any(|r| r.early && r.data == b"hello"));
    assert!(got.iter().any(|r| !r.early && r.data == b"hello"));
}
