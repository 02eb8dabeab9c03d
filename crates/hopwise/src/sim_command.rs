//! `hopwise sim`: run real protocol nodes over a latency matrix in virtual time.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use hopwise_proto::{Algorithm, Duration, ZoneConfig};
use hopwise_sim::datagrams::DatagramConfig;
use hopwise_sim::kvload::KvWorkloadConfig;
use hopwise_sim::pubsub::PubSubWorkloadConfig;
use hopwise_sim::{Matrix, NetworkConfig, Scenario, SimConfig, Unit, coords_csv, pairs_csv};
use indicatif::{ProgressBar, ProgressStyle};

/// 50 PlanetLab hosts (see data/README.md), used when no matrix is given.
const BUNDLED_MATRIX: &str = include_str!("../data/planetlab50.txt");

#[derive(Args)]
pub struct SimArgs {
    /// Latency matrix: square text (whitespace or commas, optional header) or JSON {src: {dst: rtt}}.
    /// Without it, a bundled 50-node PlanetLab matrix is used. Give it several times (or a glob
    /// pattern) to replay several matrices in turn, each for --matrix-interval.
    #[arg(long)]
    matrix: Vec<String>,
    /// How long each matrix is in force when several are given.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    matrix_interval: std::time::Duration,
    /// Build an N-node network from the matrix: every node sits behind one of its hosts with its
    /// own access delay (1-20 ms).
    #[arg(long)]
    expand: Option<usize>,
    /// Unit of the matrix entries.
    #[arg(long, value_enum, default_value_t = UnitArg::Ms)]
    unit: UnitArg,
    /// Simulate only the first N nodes of the matrix.
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulated time, e.g. 300s or 5m.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Seed of every random choice in the run; the same seed gives the same results.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the final coordinates here (CSV: node,x1,x2,height,error).
    #[arg(long)]
    coords: Option<PathBuf>,
    /// Coordinate update rule: the robust fit, or classic Vivaldi as a baseline.
    #[arg(long, value_enum, default_value_t = AlgorithmArg::Fit)]
    algorithm: AlgorithmArg,
    /// Bootstrap addresses each node knows at start.
    #[arg(long, default_value_t = 2)]
    bootstrap: usize,
    /// Make node 0 a landmark: the fixed zero point, known to every node at start.
    #[arg(long)]
    landmark: bool,
    /// Mean extra delay per datagram in milliseconds (exponentially distributed).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Fraction of datagrams lost at random.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of node pairs that cannot reach each other directly.
    #[arg(long, default_value_t = 0.0)]
    restrict: f64,
    /// Fraction of nodes behind a NAT: they accept datagrams only from nodes they contacted,
    /// and two of them never connect directly.
    #[arg(long, default_value_t = 0.0)]
    nat: f64,
    /// Write the measured overlay paths here (CSV: src,dst,direct_ms,overlay_ms,hops).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Flows of 20 packets/s between random node pairs (around --fail-at, or during the last
    /// 30 s of the run).
    #[arg(long, default_value_t = 0)]
    flows: usize,
    /// Fraction of nodes killed at --fail-at.
    #[arg(long, default_value_t = 0.0)]
    fail_nodes: f64,
    /// When to kill --fail-nodes, e.g. 200s.
    #[arg(long, value_parser = humantime::parse_duration)]
    fail_at: Option<std::time::Duration>,
    /// Kill --fail-nodes this many times, --fail-every apart (each wave among the survivors).
    #[arg(long, default_value_t = 1)]
    fail_waves: usize,
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    fail_every: std::time::Duration,
    /// Key-value puts, gets and watches spread over the run from --kv-start, on seeded random
    /// keys and nodes (report field `kv`). The store runs on every node either way.
    #[arg(long, default_value_t = 0)]
    kv_puts: usize,
    #[arg(long, default_value_t = 0)]
    kv_gets: usize,
    #[arg(long, default_value_t = 0)]
    kv_watches: usize,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    kv_start: std::time::Duration,
    /// Zoned routing: exact routes within a zone, one route per zone head beyond. `auto` zones
    /// networks of more than 1,000 nodes and routes smaller ones flat.
    #[arg(long, value_enum, default_value_t = ZonesArg::Auto)]
    zones: ZonesArg,
    /// In zoned routing, one node in this many is a zone head.
    #[arg(long, default_value_t = ZoneConfig::default().head_one_in)]
    zone_heads: u64,
    /// Run every node behind the real secure layer (Noise handshakes, encryption, replay
    /// windows), as real nodes run; the report adds its cost to the traffic.
    #[arg(long)]
    secure: bool,
    /// End-to-end datagrams: every node sends one to each of this many random peers every
    /// --e2e-interval from --e2e-start on, each with a plain overlay twin to compare delivery
    /// times with (report field `e2e`). 0: none.
    #[arg(long, default_value_t = 0)]
    e2e_peers: usize,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    e2e_interval: std::time::Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    e2e_start: std::time::Duration,
    /// Bytes per end-to-end datagram (at least 9).
    #[arg(long, default_value_t = 64)]
    e2e_bytes: usize,
    /// Publish/subscribe: this many topics, each with a fraction --subscribers of the nodes
    /// subscribed and --publishers publishers sending --publish-rate messages a second each
    /// (report field `pubsub`). 0: none.
    #[arg(long, default_value_t = 0)]
    topics: usize,
    #[arg(long, default_value_t = 0.3)]
    subscribers: f64,
    #[arg(long, default_value_t = 5)]
    publishers: usize,
    #[arg(long, default_value_t = 10.0)]
    publish_rate: f64,
    /// Bytes per published message.
    #[arg(long, default_value_t = 64)]
    publish_bytes: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ZonesArg {
    Auto,
    On,
    Off,
}

/// Above this many nodes, `--zones auto` routes in zones.
const ZONED_ABOVE: usize = 1_000;

/// The matrix paths named by `--matrix` arguments, with glob patterns expanded (sorted).
fn matrix_paths(patterns: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for pattern in patterns {
        if !pattern.contains(['*', '?', '[']) {
            paths.push(PathBuf::from(pattern));
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("bad pattern {pattern}"))?
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(!matched.is_empty(), "no file matches {pattern}");
        matched.sort();
        paths.extend(matched);
    }
    Ok(paths)
}

fn to_duration(value: std::time::Duration, flag: &str) -> anyhow::Result<Duration> {
    Ok(Duration::from_micros(
        i64::try_from(value.as_micros()).with_context(|| format!("{flag} is too long"))?,
    ))
}

#[derive(Clone, Copy, ValueEnum)]
enum UnitArg {
    Ms,
    S,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Fit,
    Classic,
}

fn datagram_workload(args: &SimArgs) -> anyhow::Result<Option<DatagramConfig>> {
    if args.e2e_peers == 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        args.e2e_bytes <= hopwise_proto::e2e::BASE_DATA,
        "--e2e-bytes must be at most {}",
        hopwise_proto::e2e::BASE_DATA
    );
    let interval = to_duration(args.e2e_interval, "--e2e-interval")?;
    anyhow::ensure!(interval > Duration::ZERO, "--e2e-interval must be positive");
    Ok(Some(DatagramConfig {
        peers_per_node: args.e2e_peers,
        interval,
        start: to_duration(args.e2e_start, "--e2e-start")?,
        payload_bytes: args.e2e_bytes,
    }))
}

fn pubsub_workload(args: &SimArgs) -> anyhow::Result<Option<PubSubWorkloadConfig>> {
    if args.topics == 0 {
        return Ok(None);
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.subscribers),
        "--subscribers is a fraction of the nodes, between 0 and 1"
    );
    anyhow::ensure!(
        args.publish_rate > 0.0 && args.publish_rate <= 1_000.0,
        "--publish-rate must be above 0 and at most 1000 messages a second"
    );
    let max = hopwise_proto::service::BASE_DATA - hopwise_proto::pubsub::wire::DATA_OVERHEAD;
    anyhow::ensure!(
        args.publish_bytes <= max,
        "--publish-bytes must be at most {max}"
    );
    Ok(Some(PubSubWorkloadConfig {
        topics: args.topics,
        subscribers: args.subscribers,
        publishers: args.publishers,
        rate: args.publish_rate,
        message_bytes: args.publish_bytes,
        ..PubSubWorkloadConfig::default()
    }))
}

/// Without a terminal, progress goes to stderr once per this many simulated seconds.
const PLAIN_PROGRESS_EVERY_S: u64 = 30;

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.loss),
        "--loss must be between 0 and 1"
    );
    anyhow::ensure!(args.jitter_ms >= 0.0, "--jitter-ms must not be negative");
    let unit = match args.unit {
        UnitArg::Ms => Unit::Milliseconds,
        UnitArg::S => Unit::Seconds,
    };
    for (value, flag) in [
        (args.restrict, "--restrict"),
        (args.nat, "--nat"),
        (args.fail_nodes, "--fail-nodes"),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&value),
            "{flag} must be between 0 and 1"
        );
    }
    let mut matrices = Vec::new();
    for path in matrix_paths(&args.matrix)? {
        matrices.push(
            Matrix::load(&path, unit).with_context(|| format!("loading {}", path.display()))?,
        );
    }
    if matrices.is_empty() {
        matrices.push(Matrix::parse(BUNDLED_MATRIX, unit).context("parsing the bundled matrix")?);
    }
    for matrix in &mut matrices {
        if let Some(n) = args.nodes {
            *matrix = matrix.truncated(n);
        }
        if let Some(n) = args.expand {
            *matrix = matrix.expanded(n, args.seed);
        }
    }
    let size = matrices[0].len();
    anyhow::ensure!(
        matrices.iter().all(|m| m.len() == size),
        "all matrices must have the same number of nodes"
    );
    let matrix = matrices.remove(0);
    anyhow::ensure!(args.zone_heads >= 1, "--zone-heads must be at least 1");
    let zoned = match args.zones {
        ZonesArg::Auto => size > ZONED_ABOVE,
        ZonesArg::On => true,
        ZonesArg::Off => false,
    };
    let duration = to_duration(args.duration, "--duration")?;
    let config = SimConfig {
        seed: args.seed,
        bootstrap_per_node: args.bootstrap,
        landmark: args.landmark,
        algorithm: match args.algorithm {
            AlgorithmArg::Fit => Algorithm::Fit,
            AlgorithmArg::Classic => Algorithm::Classic,
        },
        network: NetworkConfig {
            jitter_ms: args.jitter_ms,
            loss: args.loss,
            restrict: args.restrict,
            nat: args.nat,
            matrix_interval: to_duration(args.matrix_interval, "--matrix-interval")?,
        },
        later_matrices: matrices,
        scenario: Scenario {
            measure_pairs: true,
            flows: args.flows,
            fail_nodes: args.fail_nodes,
            fail_at: args
                .fail_at
                .map(|at| to_duration(at, "--fail-at"))
                .transpose()?,
            datagrams: datagram_workload(&args)?,
            fail_waves: args.fail_waves.max(1),
            fail_every: to_duration(args.fail_every, "--fail-every")?,
            kv: (args.kv_puts + args.kv_gets + args.kv_watches > 0)
                .then(|| -> anyhow::Result<KvWorkloadConfig> {
                    Ok(KvWorkloadConfig {
                        puts: args.kv_puts,
                        gets: args.kv_gets,
                        watches: args.kv_watches,
                        start: to_duration(args.kv_start, "--kv-start")?,
                    })
                })
                .transpose()?,
            pubsub: pubsub_workload(&args)?,
        },
        zones: zoned.then_some(ZoneConfig {
            head_one_in: args.zone_heads,
        }),
        secure: args.secure,
        ..SimConfig::default()
    };

    // indicatif draws only when stderr is a terminal; a long run in the background or under a
    // log collector reports its progress in plain lines instead.
    let total_s = duration.as_secs_f64().ceil() as u64;
    let bar = ProgressBar::new(total_s);
    let plain_progress = !std::io::stderr().is_terminal();
    let wall_start = std::time::Instant::now();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} simulating {pos}/{len} s [{bar:40}] {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let outcome = hopwise_sim::run(matrix, &config, duration, |t| {
        let simulated_s = t.as_secs_f64() as u64;
        bar.set_position(simulated_s);
        if plain_progress && simulated_s % PLAIN_PROGRESS_EVERY_S == 0 && simulated_s < total_s {
            eprintln!(
                "simulated {simulated_s}/{total_s} s in {:.0} s",
                wall_start.elapsed().as_secs_f64()
            );
        }
    });
    bar.finish_and_clear();

    let report = &outcome.report;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.pairs {
        std::fs::write(path, pairs_csv(outcome.simulation.matrix(), &outcome.pairs))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.coords {
        std::fs::write(path, coords_csv(&outcome.simulation))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} nodes, {:.0} s simulated in {:.2} s ({} events)",
        report.nodes, report.sim_seconds, report.wall_seconds, report.events
    );
    for checkpoint in &report.coords.convergence {
        println!(
            "  t={:>4.0}s  coordinate error median {:.4}  p90 {:.4}",
            checkpoint.at_s, checkpoint.median_rel_error, checkpoint.p90_rel_error
        );
    }
    println!(
        "traffic: {:.0} B/s per node on the wire ({:.1} datagrams/s), {:.0} routes and {:.1} routing links per node",
        report.traffic.bytes_per_node_per_sec,
        report.traffic.datagrams_per_node_per_sec,
        report.state.route_entries_per_node.mean,
        report.state.routing_links_per_node.mean,
    );
    if let Some(routing) = &report.routing {
        println!(
            "routing: {} pairs, stretch vs optimal median {:.3} p95 {:.3} p99 {:.3}; worse than direct {:.4}; captured {:.3}; reachable {:.4}; ttl expired {}; converged at {}",
            routing.pairs_measured,
            routing.stretch_vs_optimal.median,
            routing.stretch_vs_optimal.p95,
            routing.stretch_vs_optimal.p99,
            routing.worse_than_direct_fraction,
            routing.captured_fraction,
            routing.reachable_fraction,
            routing.ttl_expired,
            routing
                .converged_at_s
                .map_or("never".to_string(), |s| format!("{s:.0} s")),
        );
    }
    if let Some(failover) = &report.failover {
        println!(
            "failover: {} nodes killed at {:.0} s, {} of {} flows affected, reroute p50 {:.0} ms p95 {:.0} ms max {:.0} ms, {} unrecovered",
            failover.failed_nodes,
            failover.fail_at_s,
            failover.affected_flows,
            failover.flows,
            failover.reroute_ms.p50,
            failover.reroute_ms.p95,
            failover.reroute_ms.max,
            failover.unrecovered_flows,
        );
    }
    if let Some(e2e) = &report.e2e {
        println!(
            "end-to-end: {} of {} datagrams delivered ({} twins); first payload {:.1} ms median, {:.1} ms p99 ({:+.1} / {:+.1} ms against the plain twin, {:.2} / {:.2} overlay RTTs, max {:.2}); later payloads {:.4} / {:.4} of the twin's time (median / p99); {} bytes added per payload",
            e2e.delivered,
            e2e.sent,
            e2e.twins_delivered,
            e2e.first_payload_ms.median,
            e2e.first_payload_ms.p99,
            e2e.first_payload_extra_ms.median,
            e2e.first_payload_extra_ms.p99,
            e2e.first_payload_extra_rtts.median,
            e2e.first_payload_extra_rtts.p99,
            e2e.first_payload_extra_max_rtts,
            e2e.later_payload_ratio.median,
            e2e.later_payload_ratio.p99,
            e2e.bytes_added_per_payload,
        );
    }
    let kv = &report.kv;
    println!(
        "kv: {} puts ({} acked, {} failed), {} gets ({} failed), {} watches; get ratio median {:.3} p99 {:.3}; put ratio median {:.3} p99 {:.3}; watch {:.0} / {:.0} ms (median / p99); lost {}; stale reads {:.4}; {:.1} entries per node (max {:.0}); {:.0} B/s per node",
        kv.puts,
        kv.puts_acked,
        kv.failed_puts,
        kv.gets,
        kv.failed_gets,
        kv.watches,
        kv.get_ratio.median,
        kv.get_ratio.p99,
        kv.put_ratio.median,
        kv.put_ratio.p99,
        kv.watch_ms.median,
        kv.watch_ms.p99,
        kv.lost,
        kv.stale_read_fraction,
        kv.entries_per_node.mean,
        kv.entries_per_node.max,
        kv.bytes_per_node_per_sec,
    );
    if let Some(pubsub) = &report.pubsub {
        println!(
            "pubsub: {} topics, {} publishers, {} messages; rdp median {:.3} p95 {:.3} max {:.2}; delivered {:.5} ({} missing of {}); duplicate link crossings {}; repair {} (p50 / p95 / max ms, {} pairs); publisher fan-out max {} ({} next hops; at most {} above them); {:.0} B/s per node",
            pubsub.topics,
            pubsub.publishers,
            pubsub.published,
            pubsub.rdp.median,
            pubsub.rdp.p95,
            pubsub.rdp.max,
            pubsub.delivered_fraction,
            pubsub.missing_deliveries,
            pubsub.expected_deliveries,
            pubsub.duplicate_link_crossings,
            pubsub.repair_ms.map_or("none".to_string(), |r| format!(
                "{:.0} / {:.0} / {:.0}",
                r.p50, r.p95, r.max
            )),
            pubsub.repaired_pairs,
            pubsub.publisher_fanout.max,
            pubsub.publisher_fanout.next_hops_at_max,
            pubsub.publisher_fanout.above_next_hops_max,
            pubsub.bytes_per_node_per_sec,
        );
    }
    for slice in &report.slices {
        println!(
            "  matrix {} (from {:.0} s), measured at {:.0} s: stretch median {:.3} p95 {:.3}, reachable {:.4}",
            slice.slice,
            slice.switched_at_s,
            slice.measured_at_s,
            slice.stretch_median,
            slice.stretch_p95,
            slice.reachable_fraction
        );
    }
    Ok(())
}
