//! Untrusted bytes at the end-to-end layer: whatever a relay or a member puts into a sealed
//! datagram, the layer never panics, counts what it drops, and delivers as authenticated
//! nothing but what the genuine sender sent (an init's early payload is delivered marked as
//! early: it only claims a sender).

use hopwise_proto::e2e::{EndToEnd, Port};
use hopwise_proto::secure::crypto::generate_keypair;
use hopwise_proto::{Instant, NodeId};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn end(seed: u64) -> (EndToEnd, NodeId) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (private, public) = generate_keypair(&mut rng);
    let id = NodeId::from_public_key(&public);
    (EndToEnd::new(id, private, seed, Instant::ZERO), id)
}

/// Two ends with a session, and the genuine datagrams of a few payloads from `a` to `b` (not
/// yet delivered).
fn established() -> (EndToEnd, NodeId, EndToEnd, Vec<Vec<u8>>) {
    let ((mut a, a_id), (mut b, b_id)) = (end(1), end(2));
    let now = Instant::ZERO;
    a.send(now, b_id, Port(1), Port(2), b"open").unwrap();
    for _ in 0..3 {
        while let Some((_, d)) = a.poll_transmit() {
            b.handle_datagram(now, a_id, a_id, &d);
        }
        while let Some((_, d)) = b.poll_transmit() {
            a.handle_datagram(now, b_id, b_id, &d);
        }
    }
    assert!(b.poll_received().is_some());
    let genuine = (0..4u8)
        .map(|i| {
            a.send(now, b_id, Port(1), Port(2), &[i; 40]).unwrap();
            a.poll_transmit().unwrap().1
        })
        .collect();
    (b, a_id, a, genuine)
}

fn dropped(end: &EndToEnd) -> u64 {
    let s = end.stats();
    s.dropped_malformed
        + s.dropped_unexpected
        + s.dropped_no_session
        + s.dropped_bad_tag
        + s.dropped_replayed
        + s.handshakes_failed
        + s.handshakes_refused
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_are_counted_and_deliver_nothing(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1200), 1..30),
        claimed in any::<[u8; 8]>(),
    ) {
        let (mut b, _, _, _) = established();
        let claimed = NodeId::from_bytes(claimed);
        let before = dropped(&b);
        for datagram in &datagrams {
            b.handle_datagram(Instant::ZERO, claimed, claimed, datagram);
        }
        // Nothing arrives as authenticated: an init's early payload may, marked early (it only
        // claims a sender).
        prop_assert!(std::iter::from_fn(|| b.poll_received()).all(|r| r.early));
        // Every datagram is either dropped and counted, or (a well-formed init) answered.
        let answered = b.handshakes_in_progress() as u64;
        prop_assert!(dropped(&b) - before + answered >= datagrams.len() as u64);
    }

    #[test]
    fn mutated_genuine_datagrams_deliver_only_what_was_sent(
        picks in prop::collection::vec((0usize..4, any::<u16>(), any::<u8>(), 0usize..3), 1..40),
    ) {
        let (mut b, a_id, _, genuine) = established();
        for (which, at, value, how) in picks {
            let mut datagram = genuine[which].clone();
            match how {
                0 => {
                    let at = usize::from(at) % datagram.len();
                    datagram[at] ^= value.max(1);
                }
                1 => datagram.truncate(usize::from(at) % datagram.len()),
                _ => {}
            }
            b.handle_datagram(Instant::ZERO, a_id, a_id, &datagram);
        }
        let mut seen = Vec::new();
        while let Some(received) = b.poll_received() {
            prop_assert_eq!(received.from, a_id);
            prop_assert_eq!(&received.data, &vec![received.data[0]; 40]);
            prop_assert!(!seen.contains(&received.data), "delivered twice");
            prop_assert!(genuine.len() > usize::from(received.data[0]));
            seen.push(received.data);
        }
    }
}
