//! A node driven by hand: when it loses its route and only an unfeasible offer is left, it asks
//! for a newer seqno, and asks again while no answer comes (the request or the answer can be
//! lost), then stops once the answer is in.

mod common;

use std::net::SocketAddr;

use common::{addr, advertise, from, id, link_from, node, run_until};
use hopwise_proto::routing::Seqno;
use hopwise_proto::wire::{LinkOp, Message};
use hopwise_proto::{Duration, Instant};

const NEAR: u8 = 2;
const FAR: u8 = 3;
const DESTINATION: u8 = 9;

fn requests_to(sent: &[(SocketAddr, Message)], peer: u8) -> Vec<Seqno> {
    sent.iter()
        .filter_map(|(to, m)| match m {
            Message::SeqnoRequest(r) if *to == addr(peer) && r.destination == id(DESTINATION) => {
                Some(r.seqno)
            }
            _ => None,
        })
        .collect()
}

fn ms(at: i64) -> Instant {
    Instant::ZERO + Duration::from_millis(at)
}

#[test]
fn a_starving_node_asks_again_until_answered() {
    let mut node = node();
    let now = link_from(&mut node, ms(10), NEAR, Duration::from_millis(20));
    let now = link_from(&mut node, now, FAR, Duration::from_millis(20));
    advertise(&mut node, now, NEAR, DESTINATION, 1, 50.0);
    // The route through NEAR is advertised, which sets the feasibility distance; FAR's offer,
    // farther at the same seqno, is unfeasible.
    run_until(&mut node, ms(2_000));
    advertise(&mut node, ms(2_000), FAR, DESTINATION, 1, 200.0);
    assert_eq!(node.route(&id(DESTINATION)).unwrap().next_hop, id(NEAR));

    let lost = from(&mut node, ms(2_100), NEAR, Message::Link(LinkOp::Close));
    assert_eq!(requests_to(&lost, FAR), vec![Seqno(2)], "asks at once");
    let unanswered = run_until(&mut node, ms(2_399));
    assert!(
        requests_to(&unanswered, FAR).is_empty(),
        "waits for an answer"
    );
    let resent = run_until(&mut node, ms(2_400));
    assert_eq!(requests_to(&resent, FAR), vec![Seqno(2)], "asks again");
    let resent = run_until(&mut node, ms(3_000));
    assert_eq!(
        requests_to(&resent, FAR),
        vec![Seqno(2)],
        "after twice the wait"
    );

    advertise(&mut node, ms(3_050), FAR, DESTINATION, 2, 200.0);
    assert_eq!(node.route(&id(DESTINATION)).unwrap().next_hop, id(FAR));
    let after = run_until(&mut node, ms(12_000));
    assert!(
        requests_to(&after, FAR).is_empty(),
        "answered: no more requests"
    );
}
