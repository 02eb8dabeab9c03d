use super::tree::{Accepted, Tree};
use super::*;

fn at(ms: i64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

fn node(byte: u8) -> NodeId {
    NodeId::from_bytes([byte; 8])
}

fn data(seq: u64) -> Vec<u8> {
    Message::Data {
        tree: TreeId {
            topic: 1,
            publisher: node(9),
        },
        epoch: 7,
        seq,
        message: &seq.to_be_bytes(),
    }
    .to_bytes()
}

fn delivered(tree: &mut Tree, now: Instant) -> Vec<u64> {
    let mut out = VecDeque::new();
    tree.deliverable(now, &mut out);
    out.into_iter().map(|(seq, _)| seq).collect()
}

/// A member of a young publication that joined at `highest`.
fn member(highest: u64) -> Tree {
    let mut tree = Tree::new(at(0), 1);
    tree.local = true;
    tree.epoch = 7;
    tree.learn_highest(highest, at(0));
    tree
}

#[test]
fn messages_are_delivered_in_order_and_a_gap_is_asked_for_once_per_retry() {
    let mut tree = member(0);
    assert_eq!(
        tree.accept(1, node(2), &data(1), DATA_OVERHEAD, at(0)),
        Accepted::New
    );
    assert_eq!(
        tree.accept(4, node(2), &data(4), DATA_OVERHEAD, at(10)),
        Accepted::New
    );
    assert_eq!(delivered(&mut tree, at(10)), vec![1], "2 and 3 hold 4 back");
    let retry = Duration::from_millis(50);
    assert_eq!(tree.due_nacks(at(10), retry), vec![(2, 2)]);
    assert!(
        tree.due_nacks(at(30), retry).is_empty(),
        "asked for already"
    );
    assert_eq!(tree.due_nacks(at(61), retry), vec![(2, 2)], "asked again");
    assert_eq!(
        tree.accept(3, node(2), &data(3), DATA_OVERHEAD, at(70)),
        Accepted::New
    );
    assert!(delivered(&mut tree, at(70)).is_empty());
    assert_eq!(
        tree.accept(2, node(5), &data(2), DATA_OVERHEAD, at(80)),
        Accepted::New
    );
    assert_eq!(delivered(&mut tree, at(80)), vec![2, 3, 4]);
    assert_eq!(tree.missing_count(), 0);
    assert_eq!(tree.lost_unreported, 0);
}

#[test]
fn duplicates_are_told_apart_by_the_link_they_came_over() {
    let mut tree = member(0);
    tree.accept(1, node(2), &data(1), DATA_OVERHEAD, at(0));
    assert_eq!(
        tree.accept(1, node(2), &data(1), DATA_OVERHEAD, at(1)),
        Accepted::DuplicateSameLink
    );
    assert_eq!(
        tree.accept(1, node(3), &data(1), DATA_OVERHEAD, at(1)),
        Accepted::DuplicateOtherLink
    );
}

#[test]
fn a_gap_not_recovered_in_time_is_passed_over_and_counted() {
    let mut tree = member(0);
    tree.accept(2, node(2), &data(2), DATA_OVERHEAD, at(0));
    assert!(delivered(&mut tree, at(100)).is_empty());
    let late = Instant::ZERO + GIVE_UP + Duration::from_millis(1);
    assert_eq!(delivered(&mut tree, late), vec![2]);
    assert_eq!(tree.lost_unreported, 1);
    assert!(tree.due_nacks(late, Duration::from_millis(50)).is_empty());
    assert_eq!(
        tree.accept(1, node(2), &data(1), DATA_OVERHEAD, late),
        Accepted::Old,
        "given up on"
    );
}

#[test]
fn a_member_joining_a_young_publication_fetches_it_all_and_an_old_one_only_what_follows() {
    let mut young = Tree::new(at(0), 1);
    young.local = true;
    young.learn_highest(CATCH_UP, at(0));
    assert_eq!(young.missing_count() as u64, CATCH_UP);
    let mut old = Tree::new(at(0), 1);
    old.local = true;
    old.learn_highest(CATCH_UP + 1, at(0));
    assert_eq!(old.missing_count(), 0);
    assert_eq!(
        old.accept(CATCH_UP, node(2), &data(CATCH_UP), DATA_OVERHEAD, at(1)),
        Accepted::Old
    );
    old.accept(
        CATCH_UP + 2,
        node(2),
        &data(CATCH_UP + 2),
        DATA_OVERHEAD,
        at(1),
    );
    assert_eq!(delivered(&mut old, at(1)), vec![CATCH_UP + 2]);
}

#[test]
fn a_subscriber_that_was_there_when_the_publication_started_fetches_all_of_it() {
    // Told by a rendezvous that the publication started (from 0) after it subscribed: at any
    // rate, all of it, although the join's answer is far beyond CATCH_UP.
    let mut early = Tree::new(at(0), 1);
    early.local = true;
    early.start_after(0, at(0));
    early.learn_highest(500, at(0));
    assert_eq!(early.missing_count(), 500);
    // A rendezvous that heard of it late (it took over the topic) says where it was then.
    let mut later = Tree::new(at(0), 1);
    later.local = true;
    later.start_after(450, at(0));
    later.learn_highest(500, at(0));
    assert_eq!(later.missing_count(), 50);
    // Once it delivered something, a hint changes nothing.
    later.accept(451, node(2), &data(451), DATA_OVERHEAD, at(1));
    assert_eq!(delivered(&mut later, at(1)), vec![451]);
    later.start_after(0, at(1));
    later.learn_highest(510, at(1));
    assert_eq!(later.missing_count(), 59);
    // A member that started as a forwarder, before the word came, goes back to it.
    let mut forwarder = Tree::new(at(0), 1);
    forwarder.epoch = 7;
    forwarder.learn_highest(500, at(0));
    assert_eq!(forwarder.missing_count(), 0);
    forwarder.local = true;
    forwarder.start_after(0, at(1));
    assert_eq!(forwarder.missing_count(), 500);
}

#[test]
fn a_forwarder_fetches_only_what_its_children_lack_and_sends_none_what_it_has() {
    // A forwarder that left a young publication and joined again: its children say how far
    // they have it, and it fetches nothing below that.
    let mut forwarder = Tree::new(at(0), 1);
    forwarder.epoch = 7;
    let child = |highest| tree::Child {
        until: at(30_000),
        epoch: 7,
        highest,
    };
    forwarder.children.insert(node(3), child(20));
    forwarder.children.insert(node(4), child(30));
    forwarder.learn_highest(40, at(0));
    assert_eq!(forwarder.missing_count(), 20, "21 to 40");
    let to = |tree: &Tree, seq| {
        let mut to: Vec<NodeId> = tree.children_lacking(seq, node(2)).collect();
        to.sort();
        to
    };
    assert_eq!(to(&forwarder, 25), vec![node(3)], "node 4 has 25");
    assert_eq!(to(&forwarder, 31), vec![node(3), node(4)]);
    // A child of another publication has nothing of this one.
    forwarder.children.insert(
        node(4),
        tree::Child {
            epoch: 6,
            ..child(90)
        },
    );
    assert_eq!(to(&forwarder, 25), vec![node(3), node(4)]);
}

/// What `pubsub` sends, decoded, as (to, message kind) pairs.
fn sent(pubsub: &mut PubSub) -> Vec<(NodeId, String)> {
    std::iter::from_fn(|| pubsub.poll_transmit())
        .map(|transmit| {
            let message = wire::decode(&transmit.data).expect("well formed");
            let kind = format!("{message:?}");
            (
                transmit.to,
                kind.split([' ', '(']).next().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn joins_are_answered_only_when_the_child_is_new_behind_or_asks_and_nothing_is_sent_twice() {
    use crate::node::{Config, Node};
    let overlay = Node::new(Config::new(node(2), 1), at(0));
    let mut parent = PubSub::new(node(2), 1_100, 5);
    let id = TreeId {
        topic: 1,
        publisher: node(9),
    };
    let hear = |pubsub: &mut PubSub, from: NodeId, message: Message<'_>, ms: i64| {
        let data = message.to_bytes();
        let message = ServiceMessage {
            from,
            source_port: ports::PUBSUB,
            data: &data,
        };
        pubsub.handle_message(at(ms), message, &overlay);
        sent(pubsub)
    };
    let join = |ask, epoch, highest| Message::Join {
        tree: id,
        ask,
        epoch,
        highest,
    };
    let published = |seq| Message::Data {
        tree: id,
        epoch: 7,
        seq,
        message: b"m",
    };
    // Not known here yet: no answer, the child asks again.
    assert!(hear(&mut parent, node(3), join(true, 0, 0), 0).is_empty());
    assert_eq!(
        hear(&mut parent, node(9), published(1), 10),
        vec![(node(3), "Data".to_string())]
    );
    let joined = vec![(node(3), "Joined".to_string())];
    assert!(
        hear(&mut parent, node(3), join(false, 7, 1), 20).is_empty(),
        "up to date"
    );
    assert_eq!(
        hear(&mut parent, node(3), join(true, 7, 1), 30),
        joined,
        "asked"
    );
    assert_eq!(
        hear(&mut parent, node(3), join(false, 7, 0), 40),
        joined,
        "behind"
    );
    assert_eq!(
        hear(&mut parent, node(4), join(false, 7, 1), 50),
        vec![(node(4), "Joined".to_string())],
        "new here"
    );
    // A child that had message 2 from elsewhere does not get it again.
    assert!(hear(&mut parent, node(3), join(false, 7, 2), 60).is_empty());
    assert_eq!(
        hear(&mut parent, node(9), published(2), 70),
        vec![(node(4), "Data".to_string())]
    );
    // A member of the publication that moved here gets what it lacks above where it had got
    // at once, ahead of the answer; one that had everything gets only the answer.
    assert_eq!(
        hear(&mut parent, node(5), join(true, 7, 1), 80),
        vec![
            (node(5), "Data".to_string()),
            (node(5), "Joined".to_string())
        ]
    );
    assert_eq!(
        hear(&mut parent, node(6), join(true, 7, 2), 90),
        vec![(node(6), "Joined".to_string())]
    );
    // A member whose route flaps away and straight back is not sent again what went to it
    // before it left (message 2, still on its way when it said it had 1) ...
    assert!(hear(&mut parent, node(5), Message::Leave(id), 100).is_empty());
    assert_eq!(
        hear(&mut parent, node(5), join(true, 7, 1), 110),
        vec![(node(5), "Joined".to_string())]
    );
    // ... but one that comes back later gets what it says it lacks.
    assert!(hear(&mut parent, node(5), Message::Leave(id), 120).is_empty());
    assert_eq!(
        hear(&mut parent, node(5), join(true, 7, 1), 2_200),
        vec![
            (node(5), "Data".to_string()),
            (node(5), "Joined".to_string())
        ]
    );
}

#[test]
fn the_recent_window_is_bounded_and_what_fell_out_cannot_be_wanted() {
    let mut tree = member(0);
    let total = RECENT as u64 + 10;
    for seq in 1..=total {
        tree.accept(seq, node(2), &data(seq), DATA_OVERHEAD, at(0));
    }
    assert!(!tree.has(10));
    assert!(tree.has(11));
    tree.want(5, at(1));
    assert_eq!(tree.missing_count(), 0, "out of the window: not fetched");
    // A jump far ahead tracks at most a window of missing numbers.
    tree.accept(total * 10, node(2), &data(total * 10), DATA_OVERHEAD, at(2));
    assert!(tree.missing_count() < RECENT);
}

#[test]
fn a_rendezvous_tells_the_interested_of_a_new_publisher_once_and_forgets_silence() {
    let mut rendezvous = rendezvous::Rendezvous::new(3);
    assert!(rendezvous.interest(1, node(1), at(30_000)).is_empty());
    assert_eq!(rendezvous.announce(1, node(9), at(30_000)), vec![node(1)]);
    assert!(
        rendezvous.announce(1, node(9), at(40_000)).is_empty(),
        "known"
    );
    assert_eq!(rendezvous.interest(1, node(2), at(30_000)), vec![node(9)]);
    rendezvous.expire(at(35_000));
    assert_eq!(rendezvous.interest(1, node(3), at(70_000)), vec![node(9)]);
    rendezvous.expire(at(80_000));
    assert_eq!(rendezvous.topic_count(), 0);
}

#[test]
fn publishing_checks_topics_and_sizes_and_numbers_messages() {
    let mut pubsub = PubSub::new(node(1), 1_100, 5);
    assert_eq!(pubsub.max_message(), 1_100 - DATA_OVERHEAD);
    assert!(matches!(
        pubsub.publish(at(0), "", b"x"),
        Err(PubSubError::InvalidTopic(_))
    ));
    assert!(matches!(
        pubsub.publish(at(0), &"t".repeat(MAX_TOPIC + 1), b"x"),
        Err(PubSubError::InvalidTopic(_))
    ));
    let too_big = vec![0; pubsub.max_message() + 1];
    assert_eq!(
        pubsub.publish(at(0), "news", &too_big),
        Err(PubSubError::MessageTooLarge {
            len: too_big.len(),
            max: pubsub.max_message()
        })
    );
    pubsub.subscribe(at(0), "news").unwrap();
    assert_eq!(pubsub.publish(at(0), "news", b"one"), Ok(1));
    assert_eq!(pubsub.publish(at(1), "news", b"two"), Ok(2));
    let mine: Vec<u64> = std::iter::from_fn(|| pubsub.poll_event())
        .map(|event| match event {
            PubSubEvent::Message(delivery) => delivery.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(mine, vec![1, 2], "a publisher that subscribes hears itself");
}

#[test]
fn a_flood_of_publishes_is_refused_beyond_the_rate_and_counted() {
    let mut pubsub = PubSub::new(node(1), 1_100, 5);
    let accepted = (0..20_000)
        .filter(|_| pubsub.publish(at(1_000), "storm", b"m").is_ok())
        .count();
    assert_eq!(
        accepted, MAX_PUBLISH_RATE as usize,
        "a burst of a second's worth"
    );
    assert_eq!(
        pubsub.publish(at(1_000), "calm", b"m"),
        Err(PubSubError::RateLimited)
    );
    assert_eq!(pubsub.stats().rate_limited, 20_000 - accepted as u64 + 1);
    // A tenth of a second later, a tenth of the rate again.
    let later = (0..1_000)
        .filter(|_| pubsub.publish(at(1_100), "calm", b"m").is_ok())
        .count();
    assert_eq!(later, MAX_PUBLISH_RATE as usize / 10);
}

#[test]
fn subscriptions_are_bounded() {
    let mut pubsub = PubSub::new(node(1), 1_100, 5);
    for topic in 0..MAX_SUBSCRIPTIONS {
        pubsub.subscribe(at(0), &format!("t{topic}")).unwrap();
    }
    assert_eq!(
        pubsub.subscribe(at(0), "one-more"),
        Err(PubSubError::TooManySubscriptions)
    );
    assert!(pubsub.unsubscribe("t0"));
    assert!(pubsub.subscribe(at(0), "one-more").is_ok());
}

#[test]
fn a_subscriber_that_does_not_keep_up_loses_messages_and_is_told_how_many() {
    let mut pubsub = PubSub::new(node(1), 1_100, 5);
    pubsub.subscribe(at(0), "firehose").unwrap();
    let published = MAX_EVENTS as u64 + 100;
    // Within the publishing rate: a message a millisecond.
    for seq in 1..=published {
        assert_eq!(pubsub.publish(at(seq as i64), "firehose", b"m"), Ok(seq));
    }
    let events: Vec<PubSubEvent> = std::iter::from_fn(|| pubsub.poll_event()).collect();
    assert!(events.len() <= MAX_EVENTS);
    let delivered = events
        .iter()
        .filter(|e| matches!(e, PubSubEvent::Message(_)))
        .count() as u64;
    // Room again: the next message comes after a report of what was lost.
    pubsub
        .publish(at(published as i64 + 1), "firehose", b"m")
        .unwrap();
    let lost: u64 = std::iter::from_fn(|| pubsub.poll_event())
        .chain(events)
        .filter_map(|e| match e {
            PubSubEvent::Lost { count, .. } => Some(count),
            PubSubEvent::Message(_) => None,
        })
        .sum();
    assert!(lost > 0);
    assert_eq!(
        delivered + lost,
        published,
        "every message delivered or reported lost"
    );
    assert_eq!(pubsub.stats().lost, lost);
}

#[test]
fn a_copy_on_its_way_is_not_sent_again_to_the_same_child() {
    let mut tree = member(0);
    tree.accept(1, node(2), &data(1), DATA_OVERHEAD, at(0));
    let in_flight = Duration::from_millis(100);
    assert!(
        tree.repair_for(1, node(3), at(50), in_flight).is_none(),
        "it went down with its arrival"
    );
    assert_eq!(
        tree.repair_for(1, node(3), at(150), in_flight),
        Some(&data(1)[..])
    );
    assert!(
        tree.repair_for(1, node(3), at(300), in_flight).is_none(),
        "answered already"
    );
    assert!(
        tree.repair_for(1, node(4), at(300), in_flight).is_some(),
        "another child"
    );
    assert!(
        tree.repair_for(1, node(3), at(600), in_flight).is_some(),
        "asked again later"
    );
}

#[test]
fn numbers_near_the_end_of_the_range_neither_panic_nor_cost_more_than_a_window() {
    let mut tree = member(0);
    tree.accept(1, node(2), &data(1), DATA_OVERHEAD, at(0));
    // A child asking for numbers far beyond anything known is not followed.
    for seq in [u64::MAX, u64::MAX - 1, RECENT as u64 * 4] {
        tree.want(seq, at(1));
    }
    assert_eq!(tree.highest, 1);
    assert_eq!(tree.missing_count(), 0);
    // An upstream jumping to the end of the range: the missing numbers are a window at most,
    // and delivery passes over the rest at once.
    let last = u64::MAX - 1;
    assert_eq!(
        tree.accept(last, node(2), &data(last), DATA_OVERHEAD, at(2)),
        Accepted::New
    );
    assert!(tree.missing_count() < RECENT);
    assert_eq!(
        tree.accept(u64::MAX, node(2), &data(u64::MAX), DATA_OVERHEAD, at(3)),
        Accepted::New
    );
    let late = at(3) + GIVE_UP + Duration::from_millis(1);
    assert_eq!(
        delivered(&mut tree, late),
        vec![last, u64::MAX],
        "1 fell below the window"
    );
    assert!(tree.lost_unreported >= last - 2);
    assert!(tree.due_nacks(late, Duration::from_millis(50)).is_empty());
}
