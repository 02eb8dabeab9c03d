//! Publish/subscribe on every node of a simulated PlanetLab network: trees along the unicast
//! routes, repairs of random loss, and trees that follow the routes around dead forwarders.

mod common;

use std::collections::BTreeMap;

use hopwise_proto::kv::key_hash;
use hopwise_proto::kv::placement::View;
use hopwise_proto::pubsub::{PubSub, PubSubEvent, RENDEZVOUS};
use hopwise_proto::service::{BASE_DATA, ServiceHandle, ports};
use hopwise_proto::{Duration, Instant};
use hopwise_sim::pubsub::{PubSubReport, PubSubWorkloadConfig};
use hopwise_sim::{NetworkConfig, Scenario, SimConfig, Simulation, run};

/// 4 topics on the bundled 50 nodes, 40 % of them subscribed to each, 3 publishers per topic
/// at 10 messages a second, for `seconds`.
fn topics_run(seconds: i64, loss: f64, fail_nodes: f64) -> PubSubReport {
    let config = SimConfig {
        network: NetworkConfig {
            loss,
            ..NetworkConfig::default()
        },
        scenario: Scenario {
            measure_pairs: false,
            fail_nodes,
            fail_at: (fail_nodes > 0.0).then(|| Duration::from_secs(50)),
            pubsub: Some(PubSubWorkloadConfig {
                topics: 4,
                subscribers: 0.4,
                publishers: 3,
                ..PubSubWorkloadConfig::default()
            }),
            ..Scenario::default()
        },
        ..SimConfig::default()
    };
    let outcome = run(
        common::bundled_planetlab(),
        &config,
        Duration::from_secs(seconds),
        |_| {},
    );
    outcome
        .report
        .pubsub
        .expect("a run with topics reports pubsub")
}

#[test]
fn every_subscriber_gets_every_message_once_per_link_along_unicast_grade_paths() {
    // Long enough for the end-to-end sessions of the trees to re-key (120 s) and for the keys
    // they replaced to expire (30 s later): a peer left sealing with those keys was once
    // black-holed until its next re-key.
    let report = topics_run(200, 0.0, 0.0);
    eprintln!("{report:?}");
    assert_eq!(report.publishers, 12);
    assert!(report.expected_deliveries > 50_000, "{report:?}");
    assert!(report.delivered_fraction >= 0.9999, "{report:?}");
    assert_eq!(report.duplicate_link_crossings, 0, "{report:?}");
    assert!(report.rdp.median <= 1.05, "{report:?}");
    assert!(report.rdp.p95 <= 1.3, "{report:?}");
    // A tree, not unicast to every subscriber: each publisher sends fewer copies than it has
    // subscribers (20 per topic).
    assert!(report.publisher_fanout.max < 20, "{report:?}");
}

#[test]
fn random_loss_is_repaired_from_the_upstream_buffers() {
    let report = topics_run(75, 0.02, 0.0);
    eprintln!("{report:?}");
    assert!(
        report.nacks_sent > 0 && report.repairs_sent > 0,
        "{report:?}"
    );
    assert!(report.delivered_fraction >= 0.999, "{report:?}");
}

#[test]
fn trees_follow_the_routes_around_dead_forwarders_within_seconds() {
    let report = topics_run(75, 0.0, 0.1);
    eprintln!("{report:?}");
    let repair = report
        .repair_ms
        .expect("some tree paths crossed a failed node");
    assert!(report.repaired_pairs > 0);
    assert!(repair.max <= 3_000.0, "{report:?}");
    assert!(report.delivered_fraction >= 0.999, "{report:?}");
}

#[test]
fn a_subscriber_registers_at_once_with_a_topic_s_new_rendezvous() {
    let mut sim = Simulation::new(common::bundled_planetlab(), &SimConfig::default());
    sim.run_until(Instant::ZERO + Duration::from_secs(40));
    let handles: Vec<ServiceHandle<PubSub>> = (0..sim.len())
        .map(|node| {
            let service = PubSub::new(sim.id_of(node), BASE_DATA, node as u64);
            sim.register(node, ports::PUBSUB, service).unwrap().unwrap()
        })
        .collect();
    let topic = "rendezvous-moves";
    let closest = |sim: &mut Simulation, node: usize, count: usize| -> Vec<usize> {
        let members = sim
            .with_service_and_node(node, handles[node], |_, overlay, now| {
                View::of(overlay, &BTreeMap::new(), now).closest(key_hash(topic.as_bytes()), count)
            })
            .unwrap();
        members
            .iter()
            .map(|member| sim.index_of_id(&member.id).unwrap())
            .collect()
    };
    // The topic's rendezvous, and members near them that may take their place.
    let nearest = closest(&mut sim, 0, 4 * RENDEZVOUS);
    let first = nearest[..RENDEZVOUS].to_vec();
    let mut others = (0..sim.len()).filter(|node| !nearest.contains(node));
    let (subscriber, publisher) = (others.next().unwrap(), others.next().unwrap());
    let now = sim.now();
    sim.with_service(subscriber, handles[subscriber], |pubsub| {
        pubsub.subscribe(now, topic)
    })
    .unwrap()
    .unwrap();
    sim.run_until(sim.now() + Duration::from_secs(2));
    // Both rendezvous die: the members that take their place learn of the subscriber only
    // from the subscriber itself, whose renewal may be 30 s away.
    for node in &first {
        sim.stop_node(*node);
    }
    // Until the routes to them expire, which takes the overlay up to a minute.
    let deadline = sim.now() + Duration::from_secs(120);
    let second = loop {
        sim.run_until(sim.now() + Duration::from_millis(100));
        let seen = closest(&mut sim, subscriber, RENDEZVOUS);
        if seen.iter().all(|node| !first.contains(node))
            && closest(&mut sim, publisher, RENDEZVOUS) == seen
        {
            break seen;
        }
        assert!(sim.now() < deadline, "{first:?} are still the rendezvous");
    };
    assert!(
        second
            .iter()
            .all(|node| ![subscriber, publisher].contains(node)),
        "{first:?} died, {second:?} took their place"
    );
    let published = sim.now();
    sim.with_service(publisher, handles[publisher], |pubsub| {
        pubsub.publish(published, topic, b"hello")
    })
    .unwrap()
    .unwrap();
    // A few round trips; waiting for the subscriber's next renewal would take up to 30 s
    // (2 s in this run, which the check brought down to 0.15 s).
    let until = published + Duration::from_secs(1);
    while sim.now() < until {
        sim.run_until(sim.now() + Duration::from_millis(50));
        let mut got = false;
        sim.with_service(subscriber, handles[subscriber], |pubsub| {
            while let Some(event) = pubsub.poll_event() {
                got |= matches!(event, PubSubEvent::Message(ref d) if d.message == b"hello");
            }
        });
        if got {
            return;
        }
    }
    panic!("the subscriber got nothing within 1 s of the publisher's first message");
}
