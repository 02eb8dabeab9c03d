//! One simulation run from cold start to report: the `hopwise sim` scenario.

use std::collections::HashMap;
use std::fmt::Write as _;

use hopwise_proto::{Algorithm, Duration, Instant, Node, NodeId, Volume};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::datagrams::{DatagramWorkload, E2eReport};
use crate::flows::{FLOW_INTERVAL, Flows};
use crate::kvload::{KvReport, KvWorkload, KvWorkloadConfig};
use crate::matrix::Matrix;
use crate::metrics::{Accuracy, coordinate_accuracy, percentile};
use crate::paths::{PairResult, WARM_UP, choose_pairs, evaluate};
use crate::pubsub::{PubSubReport, PubSubWorkload};
use crate::sim::{SimConfig, Simulation};

/// IPv4 + UDP headers, added to every datagram's payload to count bytes as they are on the wire.
pub const IP_UDP_HEADER_BYTES: u64 = 28;

/// The bytes every service datagram carries beyond its own on the wire at its first hop: the
/// end-to-end and overlay headers, IPv4/UDP, and the secure layer's where it runs.
pub fn service_datagram_overhead(secure: bool) -> u64 {
    let secure_layer = if secure {
        hopwise_proto::secure::OVERHEAD as u64
    } else {
        0
    };
    hopwise_proto::e2e::OVERHEAD as u64
        + (hopwise_proto::wire::MAX_DATAGRAM - hopwise_proto::wire::MAX_PAYLOAD) as u64
        + IP_UDP_HEADER_BYTES
        + secure_layer
}

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
    /// Present when the run measured overlay paths.
    pub routing: Option<RoutingReport>,
    pub state: StateReport,
    /// Present when nodes were killed during the run.
    pub failover: Option<FailoverReport>,
    /// With several matrices: path quality shortly after each switch.
    pub slices: Vec<SliceReport>,
    /// Present when the matrix was expanded from a smaller one.
    pub expanded_from: Option<ExpandedFrom>,
    /// Present when the nodes ran behind the secure layer (`--secure`).
    pub secure: Option<SecureReport>,
    /// Present when the run carried end-to-end datagrams (`--e2e-peers`).
    pub e2e: Option<E2eReport>,
    /// The key-value store every node runs: the workload's measurements (`--kv-puts`,
    /// `--kv-gets`, `--kv-watches`) and the store's own traffic.
    pub kv: KvReport,
    /// Present when the run carried topics (`--topics`).
    pub pubsub: Option<PubSubReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecureReport {
    pub handshakes_completed: u64,
    pub handshakes_failed: u64,
    /// Datagrams the secure layer dropped (failed handshakes, no session, forged, replayed).
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpandedFrom {
    pub hosts: usize,
    pub access_ms_min: f64,
    pub access_ms_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The median, p95 and p99 of `values` (NaN where there are none).
pub(crate) fn percentiles_of(values: &mut [f64]) -> Percentiles {
    Percentiles {
        median: crate::metrics::percentile(values, 0.5),
        p95: crate::metrics::percentile(values, 0.95),
        p99: crate::metrics::percentile(values, 0.99),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutingReport {
    pub pairs_measured: usize,
    /// Overlay round trip over the best round trip the network allows, over the pairs that have
    /// a direct path and were reached.
    pub stretch_vs_optimal: Percentiles,
    /// Pairs whose overlay round trip exceeds the direct one by more than 1 ms.
    pub worse_than_direct_fraction: f64,
    /// Of the pairs whose optimum beats the direct path by 10% or more, the share the overlay
    /// improves by 10% or more.
    pub captured_fraction: f64,
    pub reachable_fraction: f64,
    /// Packets dropped for an exhausted TTL while the pairs were measured (steady state), and
    /// over the whole run.
    pub ttl_expired: u64,
    pub ttl_expired_total: u64,
    /// First second at which every running node had a route to every other one (in zoned
    /// routing: had joined a zone, and had a route to every head and every member of its zone).
    pub converged_at_s: Option<f64>,
    pub mean_hops: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeanMax {
    pub mean: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    pub route_entries_per_node: MeanMax,
    pub routing_links_per_node: MeanMax,
    /// Present in zoned routing.
    pub zones: Option<ZonesReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZonesReport {
    pub head_one_in: u64,
    /// Running zone heads.
    pub heads: usize,
    /// Running nodes per zone (the head included).
    pub members_per_zone: MeanMax,
    /// Running nodes that have not joined a zone.
    pub without_zone: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Nodes killed in the first wave, and in all waves.
    pub failed_nodes: usize,
    pub failed_nodes_total: usize,
    pub waves: usize,
    pub fail_at_s: f64,
    pub flows: usize,
    /// Flows (between surviving nodes) whose path crossed a killed node.
    pub affected_flows: usize,
    /// Per affected flow, the longest time without a delivery after the failure.
    pub reroute_ms: GapPercentiles,
    pub unrecovered_flows: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapPercentiles {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SliceReport {
    /// Which matrix took over, counting from 1 in the order given (the schedule repeats).
    pub slice: usize,
    pub switched_at_s: f64,
    pub measured_at_s: f64,
    pub pairs_measured: usize,
    pub stretch_median: f64,
    pub stretch_p95: f64,
    pub reachable_fraction: f64,
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
    /// `bytes_per_node_per_sec` split by message kind (wire bytes, headers included).
    pub by_kind: ControlTrafficByKind,
    /// Secure runs: what encryption adds to `bytes_per_node_per_sec` (handshakes, and each
    /// control datagram's counter and tag); included in it and in no `by_kind` entry.
    pub secure_overhead: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlTrafficByKind {
    pub probes: f64,
    pub route_updates: f64,
    pub link_control: f64,
    pub seqno_requests: f64,
    /// Zone registrations and lookups (zoned routing).
    pub directory: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PacketReport {
    pub probes_sent: u64,
    pub probes_lost: u64,
    pub dropped_malformed: u64,
    pub dropped_unexpected: u64,
    pub route_updates_sent: u64,
    pub seqno_requests_sent: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkReport {
    pub jitter_ms: f64,
    pub loss: f64,
    pub bootstrap_per_node: usize,
    pub landmark: bool,
    pub restrict: f64,
    pub nat: f64,
    pub matrices: usize,
}

/// The final state of a run besides its report.
pub struct Outcome {
    pub report: Report,
    pub simulation: Simulation,
    /// The measured pairs, for `pairs.csv`.
    pub pairs: Vec<PairResult>,
}

/// How long the flows run before a failure, and after it.
const FLOWS_BEFORE_FAILURE: Duration = Duration::from_secs(20);
const FLOWS_AFTER_FAILURE: Duration = Duration::from_secs(20);
/// Without a failure, flows run during the last stretch of the run.
const FLOWS_WITHOUT_FAILURE: Duration = Duration::from_secs(30);
/// End-to-end datagrams stop this long before the end of the run, so that all have arrived.
const DATAGRAMS_DRAIN: Duration = Duration::from_secs(2);
/// Path quality after a matrix switch: direct sessions warm up, then pairs are measured.
const SLICE_MEASURE_AFTER: Duration = Duration::from_secs(6);
/// Pairs sampled per slice measurement.
const SLICE_PAIRS: usize = 20_000;

/// Runs every node of `matrix` for `duration` from a cold start, with the scenario in `config`.
/// `progress` is called with the simulated time after every simulated second.
pub fn run(
    matrix: Matrix,
    config: &SimConfig,
    duration: Duration,
    mut progress: impl FnMut(Duration),
) -> Outcome {
    let wall_start = std::time::Instant::now();
    let expanded_from = matrix.expansion().map(|e| ExpandedFrom {
        hosts: e.hosts,
        access_ms_min: e.access_ms_min,
        access_ms_max: e.access_ms_max,
    });
    let mut sim = Simulation::new(matrix, config);
    let scenario = &config.scenario;
    let end = Instant::ZERO + duration;
    let mut convergence = Vec::new();
    let mut checkpoints: Vec<Instant> = CHECKPOINTS_S
        .iter()
        .map(|&s| Instant::ZERO + Duration::from_secs(s))
        .filter(|&t| t < end)
        .collect();
    checkpoints.reverse();
    let fail_at = scenario
        .fail_at
        .filter(|_| scenario.fail_nodes > 0.0)
        .map(|at| Instant::ZERO + at);
    let (flow_start, flow_end) = match fail_at {
        Some(at) => (at - FLOWS_BEFORE_FAILURE, at + FLOWS_AFTER_FAILURE),
        None => (end - FLOWS_WITHOUT_FAILURE, end),
    };
    let mut flows = Flows::new(sim.len(), scenario.flows, config.seed);
    let mut datagrams = scenario.datagrams.clone().map(|workload| {
        // The last datagrams leave early enough to arrive before the run ends.
        let stop = end - DATAGRAMS_DRAIN;
        DatagramWorkload::new(sim.len(), workload, config.seed, stop)
    });
    let kv_config = scenario.kv.clone().unwrap_or(KvWorkloadConfig {
        puts: 0,
        gets: 0,
        watches: 0,
        start: Duration::from_secs(60),
    });
    let mut kv = KvWorkload::new(kv_config, sim.len(), config.seed, end);
    let mut pubsub = scenario
        .pubsub
        .clone()
        .map(|workload| PubSubWorkload::new(workload, &sim, config.seed, end));
    let mut failure: Option<Failure> = None;
    // Later failure waves: when the next is due, and how many are left.
    let mut waves_left = scenario.fail_waves.saturating_sub(1);
    let mut failed_later = 0usize;
    let mut converged_at = None;
    let mut slices = Vec::new();
    let switch_interval = config.network.matrix_interval;
    let mut next_slice = (!config.later_matrices.is_empty()).then_some(1usize);
    let mut second = Instant::ZERO;
    while second < end {
        let next_second = (second + Duration::from_secs(1)).min(end);
        let mut at = second;
        let mut flow_at = second;
        while at < next_second {
            let flow_next = if flows.pairs().is_empty()
                || flow_at + FLOW_INTERVAL <= flow_start
                || flow_at >= flow_end
            {
                next_second
            } else {
                (flow_at + FLOW_INTERVAL).min(next_second)
            };
            let workload_due = datagrams
                .as_ref()
                .and_then(DatagramWorkload::next_due)
                .into_iter()
                .chain(kv.next_due())
                .chain(pubsub.as_ref().and_then(PubSubWorkload::next_due))
                .min()
                .filter(|&due| due < flow_next);
            at = workload_due.unwrap_or(flow_next).max(at);
            let flow_step = workload_due.is_none();
            if flow_step {
                flow_at = at;
            }
            if let Some(fail) = fail_at.filter(|&f| f <= at && failure.is_none()) {
                sim.run_until(fail);
                failure = Some(fail_nodes(
                    &mut sim,
                    &flows,
                    scenario.fail_nodes,
                    config.seed,
                    fail,
                    |sim, failed| {
                        if let Some(workload) = &mut pubsub {
                            workload.note_failure(sim, failed, fail);
                        }
                    },
                ));
            }
            if let Some(fail) = fail_at
                && waves_left > 0
            {
                let wave = scenario.fail_waves - waves_left;
                let due = fail + scenario.fail_every.mul_f64(wave as f64);
                if due <= at {
                    sim.run_until(due);
                    failed_later += fail_more(&mut sim, scenario.fail_nodes, config.seed, wave);
                    waves_left -= 1;
                }
            }
            sim.run_until(at);
            if flow_step && !flows.pairs().is_empty() && at >= flow_start && at < flow_end {
                flows.send(&mut sim);
            }
            if let Some(workload) = &mut datagrams {
                workload.send_due(&mut sim, at);
            }
            kv.send_due(&mut sim, at);
            if let Some(workload) = &mut pubsub {
                workload.send_due(&mut sim, at);
            }
            let recorded = sim.take_recorded();
            kv.record(&recorded);
            if let Some(workload) = &mut pubsub {
                workload.record(&recorded);
            }
            flows.record(&recorded);
            if let Some(workload) = &mut datagrams {
                workload.record(&recorded);
            }
        }
        second = next_second;
        kv.collect(&mut sim);
        if let Some(workload) = &mut pubsub {
            workload.collect(&mut sim);
        }
        progress(sim.now() - Instant::ZERO);
        if converged_at.is_none() && fully_routed(&sim) {
            converged_at = Some((second - Instant::ZERO).as_secs_f64());
        }
        if checkpoints.last() == Some(&second) {
            checkpoints.pop();
            let accuracy = accuracy_of(&sim);
            convergence.push(Checkpoint {
                at_s: (second - Instant::ZERO).as_secs_f64(),
                median_rel_error: accuracy.median_rel_error,
                p90_rel_error: accuracy.p90_rel_error,
            });
        }
        if let Some(slice) = next_slice {
            let switched =
                Instant::ZERO + Duration::from_micros(switch_interval.as_micros() * slice as i64);
            if second == switched + SLICE_MEASURE_AFTER && switched < end {
                let matrix_number = slice % (1 + config.later_matrices.len()) + 1;
                slices.push(measure_slice(
                    &mut sim,
                    slice,
                    matrix_number,
                    switched,
                    config.seed,
                ));
                next_slice = Some(slice + 1);
            }
        }
    }
    let accuracy = accuracy_of(&sim);
    convergence.push(Checkpoint {
        at_s: duration.as_secs_f64(),
        median_rel_error: accuracy.median_rel_error,
        p90_rel_error: accuracy.p90_rel_error,
    });
    let stats = sim.total_stats();
    let state = state_of(&sim);
    let per_node_second = sim.len() as f64 * duration.as_secs_f64();
    // Control traffic only: the flows' and the measurement's data packets are user traffic.
    let total = stats.sent.total();
    let control_datagrams = total.datagrams - stats.sent.data.datagrams;
    let control_bytes = total.bytes - stats.sent.data.bytes;
    let secure = sim.total_secure_stats();
    let secure_overhead = sim.is_secure().then(|| {
        secure.handshake_bytes_sent
            + secure.handshake_datagrams_sent * IP_UDP_HEADER_BYTES
            + control_datagrams * hopwise_proto::secure::OVERHEAD as u64
    });
    let wire_bytes =
        control_bytes + control_datagrams * IP_UDP_HEADER_BYTES + secure_overhead.unwrap_or(0);
    let wire_rate =
        |v: Volume| (v.bytes + v.datagrams * IP_UDP_HEADER_BYTES) as f64 / per_node_second;
    kv.collect(&mut sim);
    let kv = kv.report(&sim, duration, sim.is_secure());
    let pubsub = pubsub.as_mut().map(|workload| {
        workload.collect(&mut sim);
        workload.report(&sim, duration, sim.is_secure())
    });
    let failover = failure.map(|f| {
        let mut report = failover_report(&f, &flows, flow_end);
        report.failed_nodes_total = report.failed_nodes + failed_later;
        report.waves = scenario.fail_waves.max(1);
        report
    });
    let e2e = datagrams.as_ref().map(|workload| workload.report(&sim));
    let routing = scenario.measure_pairs.then(|| {
        let ttl_before = sim.total_stats().dropped_ttl_expired;
        let pairs = choose_pairs(&sim, config.seed);
        let results = evaluate(&mut sim, &pairs);
        let ttl_after = sim.total_stats().dropped_ttl_expired;
        let mut report = routing_report(&results);
        report.ttl_expired = ttl_after - ttl_before;
        report.ttl_expired_total = ttl_after;
        report.converged_at_s = converged_at;
        (report, results)
    });
    let (routing, pair_results) = match routing {
        Some((report, results)) => (Some(report), results),
        None => (None, Vec::new()),
    };
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
            payload_bytes_per_node_per_sec: control_bytes as f64 / per_node_second,
            datagrams_per_node_per_sec: control_datagrams as f64 / per_node_second,
            by_kind: ControlTrafficByKind {
                probes: wire_rate(stats.sent.probes),
                route_updates: wire_rate(stats.sent.route_updates),
                link_control: wire_rate(stats.sent.link_control),
                seqno_requests: wire_rate(stats.sent.seqno_requests),
                directory: wire_rate(stats.sent.directory),
            },
            secure_overhead: secure_overhead.map(|bytes| bytes as f64 / per_node_second),
        },
        secure: sim.is_secure().then(|| SecureReport {
            handshakes_completed: secure.handshakes_completed,
            handshakes_failed: secure.handshakes_failed,
            dropped: secure.dropped(),
        }),
        packets: PacketReport {
            probes_sent: stats.probes_sent,
            probes_lost: stats.probes_lost,
            dropped_malformed: stats.dropped_malformed,
            dropped_unexpected: stats.dropped_unexpected,
            route_updates_sent: stats.sent.route_updates.datagrams,
            seqno_requests_sent: stats.sent.seqno_requests.datagrams,
        },
        network: NetworkReport {
            jitter_ms: config.network.jitter_ms,
            loss: config.network.loss,
            bootstrap_per_node: config.bootstrap_per_node,
            landmark: config.landmark,
            restrict: config.network.restrict,
            nat: config.network.nat,
            matrices: 1 + config.later_matrices.len(),
        },
        routing,
        state,
        failover,
        slices,
        expanded_from,
        e2e,
        kv,
        pubsub,
    };
    Outcome {
        report,
        simulation: sim,
        pairs: pair_results,
    }
}

/// Whether every running node has a route to every other running node; in zoned routing,
/// whether every running node has joined a zone and has a route to every running head and every
/// running member of its zone.
fn fully_routed(sim: &Simulation) -> bool {
    let nodes: Vec<&Node> = (0..sim.len()).filter_map(|i| sim.node(i)).collect();
    let Some(zoning) = nodes.first().and_then(|n| n.zoning()) else {
        return nodes
            .iter()
            .all(|node| node.route_count() + 1 >= nodes.len());
    };
    let heads: Vec<NodeId> = nodes
        .iter()
        .map(|n| n.id())
        .filter(|id| zoning.is_head(id))
        .collect();
    let members = zone_members(&nodes);
    nodes.iter().all(|node| {
        let Some(zone) = node.zone() else {
            return false;
        };
        let reaches = |id: &NodeId| *id == node.id() || node.route(id).is_some();
        heads.iter().all(reaches) && members[&zone].iter().all(reaches)
    })
}

/// Running nodes by the zone they joined.
fn zone_members(nodes: &[&Node]) -> HashMap<NodeId, Vec<NodeId>> {
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for node in nodes {
        if let Some(zone) = node.zone() {
            members.entry(zone).or_default().push(node.id());
        }
    }
    members
}

fn mean_max(values: Vec<f64>) -> MeanMax {
    MeanMax {
        mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
        max: values.iter().copied().fold(0.0, f64::max),
    }
}

fn zones_of(nodes: &[&Node]) -> Option<ZonesReport> {
    let zoning = nodes.first()?.zoning()?;
    let members = zone_members(nodes);
    Some(ZonesReport {
        head_one_in: zoning.head_one_in,
        heads: nodes.iter().filter(|n| zoning.is_head(&n.id())).count(),
        members_per_zone: mean_max(members.values().map(|m| m.len() as f64).collect()),
        without_zone: nodes.iter().filter(|n| n.zone().is_none()).count(),
    })
}

fn state_of(sim: &Simulation) -> StateReport {
    let nodes: Vec<&Node> = (0..sim.len()).filter_map(|i| sim.node(i)).collect();
    StateReport {
        zones: zones_of(&nodes),
        route_entries_per_node: mean_max(nodes.iter().map(|n| n.route_count() as f64).collect()),
        routing_links_per_node: mean_max(
            nodes
                .iter()
                .map(|n| n.routing_links().count() as f64)
                .collect(),
        ),
    }
}

fn routing_report(results: &[PairResult]) -> RoutingReport {
    let reached: Vec<&PairResult> = results.iter().filter(|r| r.overlay_ms.is_some()).collect();
    let mut stretch: Vec<f64> = reached
        .iter()
        .filter(|r| r.direct_ms.is_some())
        .filter_map(|r| Some(r.overlay_ms? / r.optimal_ms?))
        .collect();
    let with_direct: Vec<&&PairResult> = reached.iter().filter(|r| r.direct_ms.is_some()).collect();
    let worse = with_direct
        .iter()
        .filter(|r| r.overlay_ms.unwrap() > r.direct_round_trip_ms.unwrap_or(f64::INFINITY) + 1.0)
        .count();
    let improvable: Vec<&PairResult> = results
        .iter()
        .filter(|r| match (r.direct_round_trip_ms, r.optimal_ms) {
            (Some(direct), Some(optimal)) => optimal <= 0.9 * direct,
            _ => false,
        })
        .collect();
    let captured = improvable
        .iter()
        .filter(|r| {
            r.overlay_ms
                .is_some_and(|o| o <= 0.9 * r.direct_round_trip_ms.unwrap_or(f64::INFINITY))
        })
        .count();
    let hops: Vec<f64> = reached
        .iter()
        .filter_map(|r| r.hops.map(f64::from))
        .collect();
    RoutingReport {
        pairs_measured: results.len(),
        stretch_vs_optimal: Percentiles {
            median: percentile(&mut stretch, 0.5),
            p95: percentile(&mut stretch, 0.95),
            p99: percentile(&mut stretch, 0.99),
        },
        worse_than_direct_fraction: worse as f64 / with_direct.len().max(1) as f64,
        captured_fraction: captured as f64 / improvable.len().max(1) as f64,
        reachable_fraction: reached.len() as f64 / results.len().max(1) as f64,
        ttl_expired: 0,
        ttl_expired_total: 0,
        converged_at_s: None,
        mean_hops: hops.iter().sum::<f64>() / hops.len().max(1) as f64,
    }
}

struct Failure {
    at: Instant,
    failed: Vec<usize>,
    /// Flows between surviving nodes whose path crossed a failed node, with the last delivery
    /// before the failure.
    affected: Vec<(usize, Instant)>,
}

fn fail_nodes(
    sim: &mut Simulation,
    flows: &Flows,
    fraction: f64,
    seed: u64,
    at: Instant,
    before_stop: impl FnOnce(&Simulation, &[usize]),
) -> Failure {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6661_696c);
    let count = ((sim.len() as f64) * fraction).round() as usize;
    let mut order: Vec<usize> = (0..sim.len()).collect();
    order.shuffle(&mut rng);
    let failed: Vec<usize> = order.into_iter().take(count).collect();
    before_stop(sim, &failed);
    let affected = (0..flows.pairs().len())
        .filter(|&flow| {
            let (a, b) = flows.pairs()[flow];
            if failed.contains(&a) || failed.contains(&b) {
                return false;
            }
            flows
                .trace(sim, flow)
                .iter()
                .any(|hop| failed.contains(hop))
        })
        .map(|flow| (flow, flows.last_arrival_before(flow, at).unwrap_or(at)))
        .collect();
    for &node in &failed {
        sim.stop_node(node);
    }
    Failure {
        at,
        failed,
        affected,
    }
}

/// Kills another `fraction` of all nodes among those still running (a later failure wave);
/// returns how many.
fn fail_more(sim: &mut Simulation, fraction: f64, seed: u64, wave: usize) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6661_696c ^ (wave as u64) << 32);
    let count = ((sim.len() as f64) * fraction).round() as usize;
    let mut running: Vec<usize> = (0..sim.len()).filter(|&i| sim.is_running(i)).collect();
    running.shuffle(&mut rng);
    let killed: Vec<usize> = running.into_iter().take(count).collect();
    for &node in &killed {
        sim.stop_node(node);
    }
    killed.len()
}

fn failover_report(failure: &Failure, flows: &Flows, flow_end: Instant) -> FailoverReport {
    // Packets sent in the last second may still be in flight when the flows stop.
    let until = flow_end - Duration::from_secs(1);
    let mut gaps: Vec<f64> = failure
        .affected
        .iter()
        .map(|&(flow, last)| flows.longest_gap_ms(flow, last, until))
        .collect();
    let unrecovered = failure
        .affected
        .iter()
        .filter(|&&(flow, _)| {
            flows
                .last_arrival_before(flow, until)
                .is_none_or(|t| until - t > Duration::from_secs(1))
        })
        .count();
    FailoverReport {
        failed_nodes: failure.failed.len(),
        failed_nodes_total: failure.failed.len(),
        waves: 1,
        fail_at_s: (failure.at - Instant::ZERO).as_secs_f64(),
        flows: flows.pairs().len(),
        affected_flows: failure.affected.len(),
        reroute_ms: GapPercentiles {
            p50: percentile(&mut gaps, 0.5),
            p95: percentile(&mut gaps, 0.95),
            max: gaps.iter().copied().fold(0.0, f64::max),
        },
        unrecovered_flows: unrecovered,
    }
}

/// Path quality after switch number `switch` (counted from 1), which brought matrix
/// `matrix_number` into force at `switched`.
fn measure_slice(
    sim: &mut Simulation,
    switch: usize,
    matrix_number: usize,
    switched: Instant,
    seed: u64,
) -> SliceReport {
    let mut pairs = choose_pairs(sim, seed.wrapping_add(switch as u64));
    if pairs.len() > SLICE_PAIRS {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ switch as u64);
        pairs.shuffle(&mut rng);
        pairs.truncate(SLICE_PAIRS);
    }
    let results = evaluate(sim, &pairs);
    let report = routing_report(&results);
    SliceReport {
        slice: matrix_number,
        switched_at_s: (switched - Instant::ZERO).as_secs_f64(),
        measured_at_s: (switched + SLICE_MEASURE_AFTER + WARM_UP - Instant::ZERO).as_secs_f64(),
        pairs_measured: results.len(),
        stretch_median: report.stretch_vs_optimal.median,
        stretch_p95: report.stretch_vs_optimal.p95,
        reachable_fraction: report.reachable_fraction,
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
