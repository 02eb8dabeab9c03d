//! `hopwise sim`: run real protocol nodes over a latency matrix in virtual time.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use hopwise_proto::{Algorithm, Duration};
use hopwise_sim::{Matrix, NetworkConfig, SimConfig, Unit, coords_csv};
use indicatif::{ProgressBar, ProgressStyle};

/// 50 PlanetLab hosts (see data/README.md), used when no matrix is given.
const BUNDLED_MATRIX: &str = include_str!("../data/planetlab50.txt");

#[derive(Args)]
pub struct SimArgs {
    /// Latency matrix: square text (whitespace or commas, optional header) or JSON {src: {dst: rtt}}.
    /// Without it, a bundled 50-node PlanetLab matrix is used.
    #[arg(long)]
    matrix: Option<PathBuf>,
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
    let mut matrix = match &args.matrix {
        Some(path) => {
            Matrix::load(path, unit).with_context(|| format!("loading {}", path.display()))?
        }
        None => Matrix::parse(BUNDLED_MATRIX, unit).context("parsing the bundled matrix")?,
    };
    if let Some(n) = args.nodes {
        matrix = matrix.truncated(n);
    }
    let duration = Duration::from_micros(
        i64::try_from(args.duration.as_micros()).context("--duration is too long")?,
    );
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
        },
        ..SimConfig::default()
    };

    // indicatif draws only when stderr is a terminal.
    let bar = ProgressBar::new(duration.as_secs_f64().ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} simulating {pos}/{len} s [{bar:40}] {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let outcome = hopwise_sim::run(matrix, &config, duration, |t| {
        bar.set_position(t.as_secs_f64() as u64)
    });
    bar.finish_and_clear();

    let report = &outcome.report;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
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
        "traffic: {:.0} B/s per node on the wire ({:.1} datagrams/s)",
        report.traffic.bytes_per_node_per_sec, report.traffic.datagrams_per_node_per_sec
    );
    Ok(())
}
