//! One simulation run from cold start to report: the `hopwise sim` scenario.

use std::fmt::Write as _;

use hopwise_proto::{Algorithm, Duration, Instant};
use serde::Serialize;

use crate::matrix::Matrix;
use crate::metrics::{Accuracy, coordinate_accuracy};
use crate::sim::{SimConfig, Simulation};

/// IPv4 + UDP headers, added to every datagram's payload to count bytes as they are on the wire.
pub const IP_UDP_HEADER_BYTES: u64 = 28;

/// Times (s) at which coordinate accuracy is recorded, besides the end of the run.
const CHECKPOINTS_S: [i64; 4] = [10, 30, 60, 120];

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub seed: u64,
    pub sim_seconds: f64,
    /// Host time the run took; the only field that differs between two runs with one seed.
    pub wall_seconds: f64,
    pub events: u64,
    pub coords: CoordsReport,
    pub traffic: TrafficReport,
    pub packets: PacketReport,
    pub network: NetworkReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoordsReport {
    pub algorithm: &'static str,
    pub median_rel_error: f64,
    pub p90_rel_error: f64,
    /// Accuracy over time, to see convergence.
    pub convergence: Vec<Checkpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    pub at_s: f64,
    pub median_rel_error: f64,
    pub p90_rel_error: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    /// Everything the nodes sent, UDP payload plus IPv4/UDP headers, per node per second.
    pub bytes_per_node_per_sec: f64,
    pub payload_bytes_per_node_per_sec: f64,
    pub datagrams_per_node_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PacketReport {
    pub probes_sent: u64,
    pub probes_lost: u64,
    pub dropped_malformed: u64,
    pub dropped_unexpected: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkReport {
    pub jitter_ms: f64,
    pub loss: f64,
    pub bootstrap_per_node: usize,
    pub landmark: bool,
}

/// The final state of a run besides its report.
pub struct Outcome {
    pub report: Report,
    pub simulation: Simulation,
}

/// Runs every node of `matrix` for `duration` from a cold start. `progress` is called with the
/// simulated time after every simulated second.
pub fn run(
    matrix: Matrix,
    config: &SimConfig,
    duration: Duration,
    mut progress: impl FnMut(Duration),
) -> Outcome {
    let wall_start = std::time::Instant::now();
    let mut sim = Simulation::new(matrix, config);
    let end = Instant::ZERO + duration;
    let mut convergence = Vec::new();
    let mut checkpoints: Vec<Instant> = CHECKPOINTS_S
        .iter()
        .map(|&s| Instant::ZERO + Duration::from_secs(s))
        .filter(|&t| t < end)
        .collect();
    checkpoints.reverse();
    let mut second = Instant::ZERO;
    while second < end {
        second = (second + Duration::from_secs(1)).min(end);
        sim.run_until(second);
        progress(sim.now() - Instant::ZERO);
        if checkpoints.last() == Some(&second) {
            checkpoints.pop();
            let accuracy = accuracy_of(&sim);
            convergence.push(Checkpoint {
                at_s: (second - Instant::ZERO).as_secs_f64(),
                median_rel_error: accuracy.median_rel_error,
                p90_rel_error: accuracy.p90_rel_error,
            });
        }
    }
    let accuracy = accuracy_of(&sim);
    convergence.push(Checkpoint {
        at_s: duration.as_secs_f64(),
        median_rel_error: accuracy.median_rel_error,
        p90_rel_error: accuracy.p90_rel_error,
    });
    let stats = sim.total_stats();
    let per_node_second = sim.len() as f64 * duration.as_secs_f64();
    let wire_bytes = stats.bytes_sent + stats.datagrams_sent * IP_UDP_HEADER_BYTES;
    let report = Report {
        nodes: sim.len(),
        seed: config.seed,
        sim_seconds: duration.as_secs_f64(),
        wall_seconds: wall_start.elapsed().as_secs_f64(),
        events: sim.events(),
        coords: CoordsReport {
            algorithm: match config.algorithm {
                Algorithm::Classic => "classic",
                Algorithm::Fit => "fit",
            },
            median_rel_error: accuracy.median_rel_error,
            p90_rel_error: accuracy.p90_rel_error,
            convergence,
        },
        traffic: TrafficReport {
            bytes_per_node_per_sec: wire_bytes as f64 / per_node_second,
            payload_bytes_per_node_per_sec: stats.bytes_sent as f64 / per_node_second,
            datagrams_per_node_per_sec: stats.datagrams_sent as f64 / per_node_second,
        },
        packets: PacketReport {
            probes_sent: stats.probes_sent,
            probes_lost: stats.probes_lost,
            dropped_malformed: stats.dropped_malformed,
            dropped_unexpected: stats.dropped_unexpected,
        },
        network: NetworkReport {
            jitter_ms: config.network.jitter_ms,
            loss: config.network.loss,
            bootstrap_per_node: config.bootstrap_per_node,
            landmark: config.landmark,
        },
    };
    Outcome {
        report,
        simulation: sim,
    }
}

fn accuracy_of(sim: &Simulation) -> Accuracy {
    let coords: Vec<_> = sim.coordinates().into_iter().map(|(c, _)| c).collect();
    coordinate_accuracy(sim.matrix(), &coords)
}

/// `coords.csv`: `node,x1,x2,height,error`, one row per node, milliseconds.
pub fn coords_csv(sim: &Simulation) -> String {
    let mut out = String::from("node,x1,x2,height,error\n");
    for (name, (coord, error)) in sim.matrix().names().iter().zip(sim.coordinates()) {
        writeln!(
            out,
            "{name},{:.4},{:.4},{:.4},{:.4}",
            coord.x1, coord.x2, coord.height, error
        )
        .expect("writing to a String");
    }
    out
}
