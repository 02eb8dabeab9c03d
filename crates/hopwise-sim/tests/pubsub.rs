//! Publish/subscribe on every node of a simulated PlanetLab network: trees along the unicast
//! routes, repairs of random loss, trees that follow the routes around dead forwarders, and a
//! member that subscribes to everything and floods.

mod common;

use hopwise_proto::pubsub::{
    MAX_PUBLISH_RATE, MAX_SUBSCRIPTIONS, MAX_TREES, PubSub, PubSubError, PubSubEvent,
};
use hopwise_proto::service::{BASE_DATA, ServiceHandle, ports};
use hopwise_proto::{Duration, NodeId};
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
    // And no more than the publisher's routing next hops towards them (children are the
    // nodes whose route to the publisher ends there, which is not always the way back).
    assert!(
        report.publisher_fanout.max <= report.publisher_fanout.next_hops_at_max,
        "{report:?}"
    );
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

/// Takes the events of node `node`'s service: the sequence numbers of `source`'s messages in
/// the order they came, and how many were reported lost.
fn take_events(
    sim: &mut Simulation,
    node: usize,
    handle: ServiceHandle<PubSub>,
    source: NodeId,
    got: &mut Vec<u64>,
) -> u64 {
    let events: Vec<PubSubEvent> = sim
        .with_service(node, handle, |pubsub| {
            std::iter::from_fn(|| pubsub.poll_event()).collect()
        })
        .unwrap_or_default();
    let mut lost = 0;
    for event in events {
        match event {
            PubSubEvent::Message(delivery) if delivery.source == source => got.push(delivery.seq),
            PubSubEvent::Lost { count, .. } => lost += count,
            PubSubEvent::Message(_) => {}
        }
    }
    lost
}

#[test]
fn a_member_subscribing_to_100000_topics_and_flooding_publishes_is_bounded_and_the_others_keep_delivering()
 {
    let mut sim = Simulation::new(common::bundled_planetlab(), &SimConfig::default());
    sim.run_until(sim.now() + Duration::from_secs(40));
    let handles: Vec<ServiceHandle<PubSub>> = (0..sim.len())
        .map(|node| {
            let service = PubSub::new(sim.id_of(node), BASE_DATA, node as u64);
            sim.register(node, ports::PUBSUB, service)
                .expect("running")
                .expect("a free port")
        })
        .collect();
    let (abuser, calm_publisher) = (5, 1);
    let calm: Vec<usize> = (10..30).collect();
    let storm: Vec<usize> = (30..40).collect();
    let now = sim.now();
    for (nodes, topic) in [(&calm, "calm"), (&storm, "storm")] {
        for &node in nodes {
            sim.with_service(node, handles[node], |pubsub| pubsub.subscribe(now, topic))
                .unwrap()
                .unwrap();
        }
    }
    // The abuser subscribes to 100,000 topics: the first MAX_SUBSCRIPTIONS are taken.
    let refused = sim
        .with_service(abuser, handles[abuser], |pubsub| {
            (0..100_000)
                .filter(|t| pubsub.subscribe(now, &format!("t{t}")).is_err())
                .count()
        })
        .unwrap();
    assert_eq!(refused, 100_000 - MAX_SUBSCRIPTIONS);
    sim.run_until(now + Duration::from_secs(5));

    // For 10 s the abuser tries 10,000 messages a second on "storm", twice its rate, while
    // another member publishes 10 a second on "calm".
    let mut flood = (0, 0);
    let mut calm_sent = 0;
    let (mut calm_got, mut storm_got) = (vec![Vec::new(); sim.len()], vec![Vec::new(); sim.len()]);
    let (mut lost, mut storm_lost) = (0, vec![0; sim.len()]);
    let (abuser_id, calm_id) = (sim.id_of(abuser), sim.id_of(calm_publisher));
    for step in 0..1_500 {
        let now = sim.now();
        if step < 1_000 {
            let outcome = sim
                .with_service(abuser, handles[abuser], |pubsub| {
                    (0..100)
                        .map(|_| pubsub.publish(now, "storm", b"flood"))
                        .collect::<Vec<_>>()
                })
                .unwrap();
            for result in outcome {
                match result {
                    Ok(_) => flood.0 += 1,
                    Err(error) => {
                        assert_eq!(error, PubSubError::RateLimited);
                        assert!(error.to_string().contains("messages a second"));
                        flood.1 += 1;
                    }
                }
            }
            if step % 10 == 0 {
                sim.with_service(calm_publisher, handles[calm_publisher], |pubsub| {
                    pubsub.publish(now, "calm", b"calm")
                })
                .unwrap()
                .unwrap();
                calm_sent += 1;
            }
        }
        sim.run_until(now + Duration::from_millis(10));
        if step % 10 == 9 {
            for &node in &calm {
                lost += take_events(&mut sim, node, handles[node], calm_id, &mut calm_got[node]);
            }
            for &node in &storm {
                storm_lost[node] += take_events(
                    &mut sim,
                    node,
                    handles[node],
                    abuser_id,
                    &mut storm_got[node],
                );
            }
        }
    }
    eprintln!("flood: {} published, {} refused", flood.0, flood.1);
    let abuser_stats = *sim.service(abuser, handles[abuser]).unwrap().stats();
    assert_eq!(abuser_stats.rate_limited, flood.1);
    // A second's burst and 10 s at the rate let through, no more.
    assert!(flood.0 <= 11 * MAX_PUBLISH_RATE as u64, "{flood:?}");
    assert!(flood.1 >= 40_000, "{flood:?}");
    // The calm topic lost nothing and kept its order; the storm's subscribers had what the
    // flood's first second did not push out of the buffers before their trees formed, in
    // order, and were told of the rest.
    assert_eq!(lost, 0);
    for &node in &calm {
        assert_eq!(
            calm_got[node],
            (1..=calm_sent).collect::<Vec<u64>>(),
            "node {node}"
        );
    }
    for &node in &storm {
        let got = &storm_got[node];
        assert!(got.windows(2).all(|pair| pair[0] < pair[1]), "node {node}");
        assert_eq!(got.len() as u64 + storm_lost[node], flood.0, "node {node}");
        assert!(
            got.len() as u64 >= flood.0 * 9 / 10,
            "node {node}: {}",
            got.len()
        );
    }
    // Every node's state stayed within its bounds.
    for (node, &handle) in handles.iter().enumerate() {
        let pubsub = sim.service(node, handle).unwrap();
        assert!(pubsub.trees().count() <= MAX_TREES);
        assert!(pubsub.subscriptions().count() <= MAX_SUBSCRIPTIONS);
    }
}
