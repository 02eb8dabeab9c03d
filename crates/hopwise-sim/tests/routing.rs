//! Routing scenarios on the bundled 50-node PlanetLab matrix: convergence, a cut link, dead
//! relays, a partition and its healing, restricted reachability, a latency change, and loop
//! freedom while nodes die.

mod common;

use common::bundled_planetlab;
use hopwise_proto::{Duration, Event, Instant, ZoneConfig};
use hopwise_sim::paths::choose_pairs;
use hopwise_sim::report::Report;
use hopwise_sim::{Matrix, NetworkConfig, Scenario, SimConfig, Simulation, run};

fn secs(s: i64) -> Instant {
    Instant::ZERO + Duration::from_secs(s)
}

fn report_of(config: &SimConfig, seconds: i64) -> Report {
    run(
        bundled_planetlab(),
        config,
        Duration::from_secs(seconds),
        |_| {},
    )
    .report
}

/// Pings every listed pair now and returns the round trip of each (None if lost).
fn ping_all(sim: &mut Simulation, pairs: &[(usize, usize)]) -> Vec<Option<f64>> {
    let start = sim.now();
    for (token, &(a, b)) in pairs.iter().enumerate() {
        sim.ping(a, b, token as u64);
    }
    sim.run_until(start + Duration::from_secs(5));
    let mut rtts = vec![None; pairs.len()];
    for recorded in sim.take_recorded() {
        if let Event::PingReply { token, rtt_ms, .. } = recorded.event {
            rtts[token as usize] = Some(rtt_ms);
        }
    }
    rtts
}

/// Pings every pair every 100 ms for `window`; returns, per pair, how long after the start the
/// first ping that came back was sent (None if none did). The first packets into a failure
/// nobody has noticed yet are lost; this measures how soon traffic flows again.
fn recovery(
    sim: &mut Simulation,
    pairs: &[(usize, usize)],
    window: Duration,
) -> Vec<Option<Duration>> {
    const ROUND: Duration = Duration::from_millis(100);
    let start = sim.now();
    let rounds = window.as_micros() / ROUND.as_micros();
    for round in 0..rounds {
        sim.run_until(start + Duration::from_micros(ROUND.as_micros() * round));
        for (index, &(a, b)) in pairs.iter().enumerate() {
            sim.ping(a, b, (round as u64) << 32 | index as u64);
        }
    }
    sim.run_until(start + window + Duration::from_secs(5));
    let mut first = vec![None; pairs.len()];
    for recorded in sim.take_recorded() {
        if let Event::PingReply { token, .. } = recorded.event {
            let (round, index) = ((token >> 32) as i64, (token & 0xffff_ffff) as usize);
            let sent = Duration::from_micros(ROUND.as_micros() * round);
            if first[index].is_none_or(|f| sent < f) {
                first[index] = Some(sent);
            }
        }
    }
    first
}

/// Follows next hops from every running node towards every running node; panics on a loop.
fn assert_loop_free(sim: &Simulation) {
    for destination in (0..sim.len()).filter(|&d| sim.is_running(d)) {
        let id = sim.id_of(destination);
        for start in (0..sim.len()).filter(|&s| sim.is_running(s)) {
            let mut path = vec![start];
            let mut at = start;
            while at != destination {
                let Some(next) = sim
                    .node(at)
                    .and_then(|n| n.route(&id))
                    .and_then(|r| sim.index_of_id(&r.next_hop))
                else {
                    break;
                };
                assert!(
                    !path.contains(&next),
                    "loop {path:?} -> {next} at {:?}",
                    sim.now()
                );
                path.push(next);
                at = next;
            }
        }
    }
}

#[test]
fn cold_start_converges_to_near_optimal_paths() {
    let report = report_of(&SimConfig::default(), 60);
    assert_near_optimal_after_cold_start(&report);
    assert!(report.secure.is_none() && report.traffic.secure_overhead.is_none());
}

#[test]
fn secure_nodes_converge_as_well_as_plain_ones() {
    let config = SimConfig {
        secure: true,
        ..SimConfig::default()
    };
    let report = report_of(&config, 60);
    assert_near_optimal_after_cold_start(&report);
    let secure = report.secure.expect("a secure run");
    assert!(secure.handshakes_completed >= 50 * 49, "{secure:?}");
    let overhead = report.traffic.secure_overhead.expect("overhead reported");
    assert!(overhead > 0.0 && overhead < report.traffic.bytes_per_node_per_sec);
}

fn assert_near_optimal_after_cold_start(report: &Report) {
    let routing = report.routing.as_ref().expect("pairs measured");
    assert_eq!(routing.pairs_measured, 50 * 49);
    assert_eq!(routing.reachable_fraction, 1.0);
    assert!(
        routing.converged_at_s.is_some_and(|s| s <= 30.0),
        "{:?}",
        routing.converged_at_s
    );
    assert!(
        routing.stretch_vs_optimal.median <= 1.02,
        "{:?}",
        routing.stretch_vs_optimal
    );
    assert!(
        routing.worse_than_direct_fraction <= 0.01,
        "{}",
        routing.worse_than_direct_fraction
    );
    assert_eq!(routing.ttl_expired, 0);
    assert!(report.state.route_entries_per_node.mean >= 49.0);
}

#[test]
fn a_cut_link_is_routed_around() {
    let mut sim = Simulation::new(bundled_planetlab(), &SimConfig::default());
    sim.run_until(secs(40));
    // A pair that talks directly now.
    let (a, b) = (0..sim.len())
        .flat_map(|a| (0..sim.len()).map(move |b| (a, b)))
        .find(|&(a, b)| {
            a != b
                && sim
                    .node(a)
                    .and_then(|n| n.route(&sim.id_of(b)))
                    .is_some_and(|r| r.direct)
        })
        .expect("some pair routes directly");
    assert!(ping_all(&mut sim, &[(a, b)])[0].is_some());
    sim.network_mut().cut(a, b);
    let recovered = recovery(&mut sim, &[(a, b), (b, a)], Duration::from_secs(3));
    for (pair, after) in [(a, b), (b, a)].iter().zip(recovered) {
        let after = after.unwrap_or_else(|| panic!("{pair:?} unreachable after the cut"));
        assert!(
            after <= Duration::from_secs(1),
            "{pair:?} recovered after {after:?}"
        );
    }
    let route = sim.node(a).unwrap().route(&sim.id_of(b)).unwrap();
    assert!(!route.direct, "still routed over the cut path");
}

#[test]
fn dead_relays_are_routed_around_within_a_second() {
    let config = SimConfig {
        scenario: Scenario {
            measure_pairs: true,
            flows: 300,
            fail_nodes: 0.1,
            fail_at: Some(Duration::from_secs(40)),
            ..Scenario::default()
        },
        ..SimConfig::default()
    };
    let report = report_of(&config, 70);
    let failover = report.failover.expect("failure injected");
    assert_eq!(failover.failed_nodes, 5);
    assert!(failover.affected_flows > 0, "no flow crossed a killed node");
    assert!(
        failover.reroute_ms.p95 <= 1_000.0,
        "{:?}",
        failover.reroute_ms
    );
    assert!(
        failover.reroute_ms.max <= 3_000.0,
        "{:?}",
        failover.reroute_ms
    );
    assert_eq!(failover.unrecovered_flows, 0);
    let routing = report.routing.expect("pairs measured");
    assert_eq!(routing.pairs_measured, 45 * 44, "survivors only");
    assert_eq!(routing.reachable_fraction, 1.0);
}

#[test]
fn a_partition_heals() {
    let mut sim = Simulation::new(bundled_planetlab(), &SimConfig::default());
    sim.run_until(secs(40));
    let side: Vec<bool> = (0..sim.len()).map(|i| i % 2 == 0).collect();
    sim.network_mut().partition(side);
    sim.run_until(secs(80));
    let within: Vec<(usize, usize)> = (0..10).map(|i| (2 * i, 2 * i + 20)).collect();
    let across: Vec<(usize, usize)> = (0..10).map(|i| (2 * i, 2 * i + 21)).collect();
    assert!(ping_all(&mut sim, &within).iter().all(Option::is_some));
    assert!(ping_all(&mut sim, &across).iter().all(Option::is_none));
    assert_loop_free(&sim);
    sim.network_mut().heal();
    sim.run_until(sim.now() + Duration::from_secs(60));
    // Every ordered pair (50 nodes are below the sampling threshold).
    let everyone = choose_pairs(&sim, 1);
    assert_eq!(everyone.len(), 50 * 49);
    let reached = ping_all(&mut sim, &everyone).iter().flatten().count();
    assert_eq!(
        reached,
        everyone.len(),
        "not every pair reachable after healing"
    );
}

#[test]
fn routes_stay_loop_free_while_nodes_die() {
    let mut sim = Simulation::new(bundled_planetlab(), &SimConfig::default());
    sim.run_until(secs(30));
    for (round, victims) in [[3, 17, 29], [8, 40, 44], [11, 23, 36]].iter().enumerate() {
        for &victim in victims {
            sim.stop_node(victim);
        }
        sim.network_mut().cut(round, round + 25);
        let start = sim.now();
        // Check every 50 ms while the network reacts.
        for step in 1..=100 {
            sim.run_until(start + Duration::from_millis(50 * step));
            assert_loop_free(&sim);
        }
    }
    // Every ordered pair of survivors.
    let pairs = choose_pairs(&sim, 1);
    assert_eq!(pairs.len(), 41 * 40);
    let recovered = recovery(&mut sim, &pairs, Duration::from_secs(2));
    let slowest = recovered
        .iter()
        .map(|r| r.expect("every survivor pair reachable"))
        .max();
    assert!(
        slowest <= Some(Duration::from_secs(1)),
        "slowest pair {slowest:?}"
    );
    assert_eq!(sim.total_stats().dropped_ttl_expired, 0);
}

#[test]
fn restricted_and_natted_pairs_are_reached_through_relays() {
    for network in [
        NetworkConfig {
            restrict: 0.5,
            ..NetworkConfig::default()
        },
        NetworkConfig {
            nat: 0.3,
            ..NetworkConfig::default()
        },
    ] {
        let config = SimConfig {
            network: network.clone(),
            ..SimConfig::default()
        };
        let routing = report_of(&config, 60).routing.expect("pairs measured");
        assert_eq!(routing.reachable_fraction, 1.0, "{network:?}");
        assert!(
            routing.stretch_vs_optimal.median <= 1.05,
            "{network:?}: {:?}",
            routing.stretch_vs_optimal
        );
    }
}

#[test]
fn routes_follow_a_latency_change() {
    // The second matrix stretches and shrinks every pair by up to a factor of 2, deterministically.
    let first = bundled_planetlab();
    let n = first.len();
    let rows = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let factor = 0.5 + ((i.min(j) * 31 + i.max(j) * 17) % 100) as f64 / 100.0 * 1.5;
                    first.rtt_ms(i, j).map(|rtt| rtt * factor)
                })
                .collect()
        })
        .collect();
    let second = Matrix::from_rows(rows).unwrap();
    // Ten seconds after the switch, on 50 nodes, the median stretch depends on the seed (on
    // the code before end-to-end sessions, seeds 1 to 8 gave 1.005 to 1.038): judge a few.
    let medians: Vec<f64> = (1..=4)
        .map(|seed| {
            let config = SimConfig {
                seed,
                later_matrices: vec![second.clone()],
                network: NetworkConfig {
                    matrix_interval: Duration::from_secs(60),
                    ..NetworkConfig::default()
                },
                ..SimConfig::default()
            };
            let report = report_of(&config, 90);
            let slice = report
                .slices
                .first()
                .expect("the switch at 60 s was measured")
                .clone();
            assert_eq!(slice.switched_at_s, 60.0);
            assert_eq!(slice.reachable_fraction, 1.0, "seed {seed}");
            assert!(slice.stretch_median <= 1.05, "seed {seed}: {slice:?}");
            slice.stretch_median
        })
        .collect();
    let mean = medians.iter().sum::<f64>() / medians.len() as f64;
    assert!(
        mean <= 1.035,
        "median stretch after the switch by seed: {medians:?}"
    );
}

#[test]
fn zoned_routing_reaches_every_pair_with_a_fraction_of_the_routes() {
    // 200 nodes behind the 50 PlanetLab hosts, about one in 16 a zone head.
    let matrix = bundled_planetlab().expanded(200, 7);
    let config = SimConfig {
        zones: Some(ZoneConfig { head_one_in: 16 }),
        ..SimConfig::default()
    };
    let report = run(matrix, &config, Duration::from_secs(60), |_| {}).report;
    let zones = report.state.zones.as_ref().expect("zoned");
    assert!(zones.heads >= 4, "{zones:?}");
    assert_eq!(zones.without_zone, 0);
    let routing = report.routing.expect("pairs measured");
    assert_eq!(routing.pairs_measured, 200 * 199);
    // Most pairs are in different zones: reached through the destination's head, after a
    // directory lookup.
    assert_eq!(routing.reachable_fraction, 1.0);
    assert_eq!(routing.ttl_expired, 0);
    assert!(routing.converged_at_s.is_some());
    let routes = report.state.route_entries_per_node.mean;
    assert!(routes < 0.6 * 199.0, "{routes} routes per node");
    assert!(report.traffic.by_kind.directory > 0.0);
}

/// Round trips in ms between four nodes: two relays (0, and 3 farther) between nodes 1 and 2,
/// which have no direct path (the topology of the real-process failover test).
fn two_relays() -> Matrix {
    let rows: [[f64; 4]; 4] = [
        [0.0, 4.0, 4.0, 3.0],
        [4.0, 0.0, -1.0, 6.0],
        [4.0, -1.0, 0.0, 6.0],
        [3.0, 6.0, 6.0, 0.0],
    ];
    let rows = rows
        .iter()
        .map(|row| row.iter().map(|&ms| (ms > 0.0).then_some(ms)).collect())
        .collect();
    Matrix::from_rows(rows).expect("a square matrix")
}

/// For each seed, plain and secure: nodes 1 and 2 ping each other every 20 ms, and the relay
/// their route crosses is killed 2 s in. Returns, per direction, how long after the kill the
/// first ping that came back was sent (None: none within 8 s).
fn relay_kill_recoveries(seeds: u64, loss: f64) -> Vec<Option<Duration>> {
    const STEP_MS: i64 = 20;
    const ROUNDS: u64 = 500;
    const KILL_ROUND: u64 = 100;
    let mut recoveries = Vec::new();
    for seed in 0..seeds {
        for secure in [false, true] {
            let mut config = SimConfig {
                seed,
                secure,
                ..SimConfig::default()
            };
            config.network.loss = loss;
            let mut sim = Simulation::new(two_relays(), &config);
            let start = secs(30);
            sim.run_until(start);
            let Some(relay) = sim
                .node(1)
                .and_then(|n| n.route(&sim.id_of(2)))
                .and_then(|r| sim.index_of_id(&r.next_hop))
            else {
                recoveries.extend([None, None]);
                continue;
            };
            for round in 0..ROUNDS {
                sim.run_until(start + Duration::from_millis(STEP_MS * round as i64));
                if round == KILL_ROUND {
                    sim.stop_node(relay);
                }
                sim.ping(1, 2, round);
                sim.ping(2, 1, round | 1 << 32);
            }
            sim.run_until(start + Duration::from_secs(15));
            let mut first = [None::<u64>; 2];
            for recorded in sim.take_recorded() {
                if let Event::PingReply { token, .. } = recorded.event {
                    let (direction, round) = ((token >> 32) as usize, token & 0xffff_ffff);
                    if round >= KILL_ROUND && first[direction].is_none_or(|f| round < f) {
                        first[direction] = Some(round);
                    }
                }
            }
            recoveries.extend(first.map(|round| {
                round.map(|r| Duration::from_millis(STEP_MS * (r - KILL_ROUND) as i64))
            }));
        }
    }
    recoveries
}

#[test]
fn a_dead_relay_between_two_nodes_without_a_direct_path_is_routed_around_for_every_seed() {
    let recoveries = relay_kill_recoveries(40, 0.0);
    let worst = recoveries.iter().max().copied().flatten();
    assert!(
        recoveries
            .iter()
            .all(|r| r.is_some_and(|r| r <= Duration::from_secs(1))),
        "worst recovery {worst:?} of {recoveries:?}"
    );
}

/// The same under 5% loss on every packet, for the figures in docs/ARCHITECTURE.md:
/// `cargo test --release -p hopwise-sim --test routing -- --ignored --nocapture lossy`.
#[test]
#[ignore = "a measurement: 400 runs"]
fn a_dead_relay_under_lossy_paths_measured() {
    let recoveries = relay_kill_recoveries(200, 0.05);
    let over = |limit: Duration| {
        recoveries
            .iter()
            .filter(|r| r.is_none_or(|r| r > limit))
            .count()
    };
    println!(
        "{} directions: over 1 s {}, over 2 s {}, over 5 s {}, not within 8 s {}",
        recoveries.len(),
        over(Duration::from_secs(1)),
        over(Duration::from_secs(2)),
        over(Duration::from_secs(5)),
        recoveries.iter().filter(|r| r.is_none()).count()
    );
    assert!(over(Duration::from_secs(2)) <= recoveries.len() / 6);
}

/// A one-way stream: node 1 sends node 2 data every 20 ms through a relay, and node 2 sends
/// nothing back. When the relay dies, node 2, which only receives through it, moves its route
/// to node 1 off the relay within a second as well: data received keeps a link watched as
/// closely as data sent (without that it was probed every 5 s, and the route stayed on the
/// dead relay for seconds).
#[test]
fn the_receiving_end_of_a_one_way_stream_routes_around_its_dead_relay_within_a_second() {
    const STEP_MS: i64 = 20;
    for seed in 0..10 {
        for secure in [false, true] {
            let config = SimConfig {
                seed,
                secure,
                ..SimConfig::default()
            };
            let mut sim = Simulation::new(two_relays(), &config);
            let start = secs(30);
            sim.run_until(start);
            let next_hop_of_2 = |sim: &Simulation| {
                sim.node(2)
                    .and_then(|n| n.route(&sim.id_of(1)))
                    .and_then(|r| sim.index_of_id(&r.next_hop))
            };
            let relay = next_hop_of_2(&sim).expect("node 2 has a route to node 1");
            let mut moved_after = None;
            for round in 0..150 {
                let now = start + Duration::from_millis(STEP_MS * round);
                sim.run_until(now);
                if round == 50 {
                    sim.stop_node(relay);
                }
                if round > 50 && moved_after.is_none() && next_hop_of_2(&sim) != Some(relay) {
                    moved_after = Some(Duration::from_millis(STEP_MS * (round - 50)));
                }
                sim.send_data(1, 2, vec![0; 100]).expect("a small payload");
            }
            assert!(
                moved_after.is_some_and(|after| after <= Duration::from_secs(1)),
                "seed {seed} secure {secure}: node 2's route left the dead relay after {moved_after:?}"
            );
        }
    }
}
