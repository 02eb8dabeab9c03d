//! Publish/subscribe on every node of a simulated PlanetLab network: trees along the unicast
//! routes, repairs of random loss, and trees that follow the routes around dead forwarders.

mod common;

use hopwise_proto::Duration;
use hopwise_sim::pubsub::{PubSubReport, PubSubWorkloadConfig};
use hopwise_sim::{NetworkConfig, Scenario, SimConfig, run};

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
