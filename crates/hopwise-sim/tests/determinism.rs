//! The same seed gives byte-identical results; a different seed gives different ones.

mod common;

use hopwise_proto::Duration;
use hopwise_sim::datagrams::DatagramConfig;
use hopwise_sim::kvload::KvWorkloadConfig;
use hopwise_sim::pubsub::PubSubWorkloadConfig;
use hopwise_sim::{NetworkConfig, Scenario, SimConfig, coords_csv, pairs_csv, run};

fn run_once(seed: u64) -> (String, serde_json::Value) {
    let config = SimConfig {
        seed,
        // Loss and jitter draw from the network's generator too.
        network: NetworkConfig {
            jitter_ms: 1.0,
            loss: 0.01,
            restrict: 0.1,
            nat: 0.1,
            ..NetworkConfig::default()
        },
        // Flows, failures and pair measurements draw from seeded generators too.
        scenario: Scenario {
            measure_pairs: true,
            flows: 20,
            fail_nodes: 0.1,
            fail_at: Some(Duration::from_secs(25)),
            // End-to-end sessions draw randomness too: they must repeat as well.
            datagrams: Some(DatagramConfig {
                peers_per_node: 3,
                start: Duration::from_secs(10),
                ..DatagramConfig::default()
            }),
            // So does the key-value store, through two failure waves.
            fail_waves: 2,
            fail_every: Duration::from_secs(5),
            kv: Some(KvWorkloadConfig {
                puts: 200,
                gets: 200,
                watches: 20,
                start: Duration::from_secs(10),
            }),
            // And pub/sub, whose trees move as the failures change the routes.
            pubsub: Some(PubSubWorkloadConfig {
                topics: 3,
                publishers: 2,
                start: Duration::from_secs(10),
                measure_after: Duration::from_secs(15),
                ..PubSubWorkloadConfig::default()
            }),
        },
        ..SimConfig::default()
    };
    let outcome = run(
        common::bundled_planetlab().truncated(30),
        &config,
        Duration::from_secs(40),
        |_| {},
    );
    let mut report = serde_json::to_value(&outcome.report).unwrap();
    report.as_object_mut().unwrap().remove("wall_seconds");
    let pairs = pairs_csv(outcome.simulation.matrix(), &outcome.pairs);
    (coords_csv(&outcome.simulation) + &pairs, report)
}

#[test]
fn same_seed_same_bytes() {
    let (coords_a, report_a) = run_once(11);
    let (coords_b, report_b) = run_once(11);
    assert_eq!(coords_a, coords_b);
    assert_eq!(
        serde_json::to_string(&report_a).unwrap(),
        serde_json::to_string(&report_b).unwrap()
    );
    let (coords_c, _) = run_once(12);
    assert_ne!(coords_a, coords_c, "the seed must matter");
}
