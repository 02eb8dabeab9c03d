//! Behaviour of real nodes in the simulator, one scenario per test.

mod common;

use hopwise_proto::LinkKind;
use hopwise_proto::{Duration, Instant};
use hopwise_sim::metrics::coordinate_accuracy;
use hopwise_sim::{Matrix, NetworkConfig, NodeTags, Scenario, SimConfig, Simulation, run};

fn at(secs: i64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

fn accuracy(sim: &Simulation) -> hopwise_sim::metrics::Accuracy {
    let coords: Vec<_> = sim.coordinates().into_iter().map(|(c, _)| c).collect();
    coordinate_accuracy(sim.matrix(), &coords)
}

#[test]
fn two_nodes_measure_each_other_and_place_themselves_apart() {
    let matrix = Matrix::from_rows(vec![vec![None, Some(40.0)], vec![Some(40.0), None]]).unwrap();
    let mut sim = Simulation::new(matrix, &SimConfig::default());
    sim.run_until(at(20));
    for index in 0..2 {
        let node = sim.node(index).unwrap();
        let neighbours: Vec<_> = node.neighbours().collect();
        assert_eq!(neighbours.len(), 1, "node {index}");
        let link = &neighbours[0].1.link;
        assert!(
            (link.filtered_rtt_ms() - 40.0).abs() < 0.01,
            "filtered {}",
            link.filtered_rtt_ms()
        );
        assert!((link.srtt_ms() - 40.0).abs() < 0.01);
        assert_eq!(link.loss(), 0.0);
    }
    let (a, b) = (
        sim.node(0).unwrap().coordinate(),
        sim.node(1).unwrap().coordinate(),
    );
    assert!(
        (a.distance_ms(&b) - 40.0).abs() < 1.0,
        "predicted {}",
        a.distance_ms(&b)
    );
}

#[test]
fn gossip_spreads_the_membership_in_seconds() {
    let matrix = common::bundled_planetlab();
    let n = matrix.len();
    let mut sim = Simulation::new(matrix, &SimConfig::default());
    sim.run_until(at(15));
    for index in 0..n {
        let known = sim.node(index).unwrap().known_nodes().len();
        assert_eq!(
            known,
            n - 1,
            "node {index} knows {known} of {} others after 15 s",
            n - 1
        );
    }
}

#[test]
fn a_dead_neighbour_is_declared_down_within_bounded_time() {
    let matrix = Matrix::from_rows(vec![
        vec![None, Some(20.0), Some(30.0)],
        vec![Some(20.0), None, Some(25.0)],
        vec![Some(30.0), Some(25.0), None],
    ])
    .unwrap();
    let mut sim = Simulation::new(matrix, &SimConfig::default());
    sim.run_until(at(10));
    let has_neighbour_2 = |sim: &Simulation, i: usize| {
        sim.node(i)
            .unwrap()
            .neighbours()
            .any(|(_, n)| n.addr == hopwise_sim::sim::addr_of(2))
    };
    assert!(has_neighbour_2(&sim, 0) && has_neighbour_2(&sim, 1));
    sim.stop_node(2);
    // A neighbour with a probe in flight is not probed again, so the link goes down after
    // `max_missed_probes` timeouts, each at most one (jittered) probe interval apart.
    let defaults = hopwise_proto::Config::new(
        hopwise_proto::NodeId::from_bytes([0; hopwise_proto::NodeId::LEN]),
        0,
    );
    let per_miss = defaults.probe_timeout + defaults.probe_interval.mul_f64(1.2);
    let bound = (0..defaults.max_missed_probes).fold(Duration::ZERO, |total, _| total + per_miss);
    sim.run_until(at(10) + bound);
    assert!(
        !has_neighbour_2(&sim, 0) && !has_neighbour_2(&sim, 1),
        "node 2 is still listed as a neighbour"
    );
    for i in 0..2 {
        assert_eq!(
            sim.node(i).unwrap().neighbours().count(),
            1,
            "the live link survives"
        );
        assert!(sim.node(i).unwrap().stats().probes_lost >= 4);
    }
}

#[test]
fn pairs_without_a_direct_path_are_never_neighbours() {
    // Node 3 can reach only node 0; everyone else shares a full mesh.
    let rtt = |i: usize, j: usize| -> Option<f64> {
        if i == j || (i == 3 && j != 0) || (j == 3 && i != 0) {
            None
        } else {
            Some(10.0 + 5.0 * (i + j) as f64)
        }
    };
    let rows = (0..6)
        .map(|i| (0..6).map(|j| rtt(i, j)).collect())
        .collect();
    let mut sim = Simulation::new(Matrix::from_rows(rows).unwrap(), &SimConfig::default());
    sim.run_until(at(30));
    let node3 = hopwise_sim::sim::addr_of(3);
    for i in [1, 2, 4, 5] {
        let node = sim.node(i).unwrap();
        assert!(
            node.neighbours().all(|(_, n)| n.addr != node3),
            "node {i} lists node 3"
        );
        assert_eq!(
            node.neighbours().count(),
            4,
            "node {i} links to every reachable node"
        );
    }
    assert_eq!(sim.node(3).unwrap().neighbours().count(), 1);
}

#[test]
fn coordinates_converge_on_real_data_despite_loss_and_jitter() {
    let config = SimConfig {
        network: NetworkConfig {
            jitter_ms: 2.0,
            loss: 0.05,
            ..NetworkConfig::default()
        },
        ..SimConfig::default()
    };
    let outcome = run(
        common::bundled_planetlab(),
        &config,
        Duration::from_secs(120),
        |_| {},
    );
    let coords = &outcome.report.coords;
    // With this loss and jitter the median error settles near 0.055 within 30 s on this matrix.
    assert!(
        coords.median_rel_error < 0.08,
        "median {}",
        coords.median_rel_error
    );
    // Noisy samples must not make the coordinates drift once they have settled.
    let best = coords
        .convergence
        .iter()
        .map(|c| c.median_rel_error)
        .fold(f64::INFINITY, f64::min);
    assert!(
        coords.median_rel_error <= 1.2 * best,
        "drifted: best {best}, final {}",
        coords.median_rel_error
    );
    assert!(outcome.report.packets.probes_lost > 0, "loss was simulated");
}

#[test]
fn a_landmark_stays_at_the_origin_and_anchors_the_map() {
    let config = SimConfig {
        landmark: true,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(common::bundled_planetlab(), &config);
    sim.run_until(at(60));
    let landmark = sim.node(0).unwrap().coordinate();
    assert_eq!((landmark.x1, landmark.x2), (0.0, 0.0));
    assert!(
        accuracy(&sim).median_rel_error < 0.15,
        "{:?}",
        accuracy(&sim)
    );
}

#[test]
fn the_fit_beats_classic_vivaldi_on_planetlab() {
    let Some(matrix) = common::shared_matrix("planetlab490/PlanetLabData_1") else {
        return;
    };
    let matrix = matrix.truncated(200);
    let run_with = |algorithm| {
        let config = SimConfig {
            algorithm,
            // Coordinates only: skip measuring overlay paths.
            scenario: Scenario {
                measure_pairs: false,
                ..Scenario::default()
            },
            ..SimConfig::default()
        };
        run(matrix.clone(), &config, Duration::from_secs(120), |_| {})
            .report
            .coords
    };
    let fit = run_with(hopwise_proto::Algorithm::Fit);
    let classic = run_with(hopwise_proto::Algorithm::Classic);
    assert!(
        fit.median_rel_error < 0.09,
        "fit median {}",
        fit.median_rel_error
    );
    assert!(
        fit.median_rel_error < classic.median_rel_error
            && fit.p90_rel_error < classic.p90_rel_error,
        "fit {fit:?} vs classic {classic:?}"
    );
}

#[test]
fn nodes_link_to_their_nearest_nodes_within_a_minute() {
    let Some(matrix) = common::shared_matrix("planetlab490/PlanetLabData_1") else {
        return;
    };
    let matrix = matrix.truncated(200);
    let mut sim = Simulation::new(matrix.clone(), &SimConfig::default());
    sim.run_until(at(60));
    // Of each node's four nearest nodes (by the matrix), how many it has a routing link with.
    let mut linked = 0;
    for i in 0..matrix.len() {
        let mut others: Vec<(usize, f64)> = (0..matrix.len())
            .filter(|&j| j != i)
            .filter_map(|j| Some((j, matrix.rtt_ms(i, j)?)))
            .collect();
        others.sort_by(|a, b| a.1.total_cmp(&b.1));
        let node = sim.node(i).unwrap();
        linked += others
            .iter()
            .take(4)
            .filter(|(j, _)| {
                let id = sim.id_of(*j);
                node.routing_links().any(|(link, _)| *link == id)
            })
            .count();
    }
    // 3.6 of 4 on average; 3.1 when only coordinate neighbours were near-link candidates and a
    // fifth of the probes explored from the start.
    let mean = linked as f64 / matrix.len() as f64;
    assert!(
        mean >= 3.4,
        "{mean} of the 4 nearest nodes linked on average"
    );
}

#[test]
fn nodes_with_connect_tags_link_to_every_node_carrying_them() {
    let tagged = [10, 20, 30];
    let mut tags: Vec<NodeTags> = tagged
        .iter()
        .map(|&node| NodeTags {
            node,
            tags: vec!["db".into(), format!("rack-{node}")],
            ..NodeTags::default()
        })
        .collect();
    let connecting = 45;
    tags.push(NodeTags {
        node: connecting,
        connect_tags: vec!["db".into()],
        ..NodeTags::default()
    });
    let config = SimConfig {
        tags,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(common::bundled_planetlab(), &config);
    sim.run_until(at(30));
    let tagged_links = |index: usize| -> Vec<usize> {
        let mut linked: Vec<usize> = sim
            .node(index)
            .unwrap()
            .routing_links()
            .filter(|(_, link)| link.kind == LinkKind::Tagged)
            .filter_map(|(id, _)| sim.index_of_id(id))
            .collect();
        linked.sort_unstable();
        linked
    };
    assert_eq!(tagged_links(connecting), tagged);
    assert!(
        tagged_links(44).is_empty(),
        "a node without connect-tags opens none"
    );
}
