//! The same seed gives byte-identical results; a different seed gives different ones.

mod common;

use hopwise_proto::Duration;
use hopwise_sim::{NetworkConfig, SimConfig, coords_csv, run};

fn run_once(seed: u64) -> (String, serde_json::Value) {
    let config = SimConfig {
        seed,
        // Loss and jitter draw from the network's generator too.
        network: NetworkConfig {
            jitter_ms: 1.0,
            loss: 0.01,
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
    (coords_csv(&outcome.simulation), report)
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
