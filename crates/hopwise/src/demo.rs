//! `hopwise demo`: a local network of real node processes with real-world latencies between
//! them, and a table of the paths it found against the direct paths and the best ones possible.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hopwise_sim::network::Network;
use hopwise_sim::paths::optimal_round_trips;
use hopwise_sim::{Matrix, NetworkConfig, Unit};

use crate::api::TraceReport;
use crate::testnet::Testnet;

/// 30 cities of the WonderNetwork ping measurements (see data/README.md).
const BUNDLED_CITIES: &str = include_str!("../data/cities30.csv");
/// After full routes, the time given to relay choice before the table is measured.
const SETTLE: Duration = Duration::from_secs(10);
/// The demo's nodes listen on 127.1.0.2, 127.1.0.3, ...
const DEMO_SUBNET: u8 = 1;
/// Traces per pair; the table shows the fastest, as ping tools report the minimum.
const TRACES_PER_PAIR: usize = 3;

#[derive(Args)]
pub struct DemoArgs {
    /// Nodes to start: the first N hosts of the matrix.
    #[arg(long, default_value_t = 30)]
    nodes: usize,
    /// Latency matrix (as for `hopwise sim`) instead of the bundled 30 cities.
    #[arg(long)]
    matrix: Option<PathBuf>,
    /// City pairs in the table: the ones with the most to gain from a relay, then others.
    #[arg(long, default_value_t = 12)]
    pairs: usize,
    /// After the table, kill a relay that one of the shown paths crosses and show how long
    /// the pair's traffic takes to move to another path.
    #[arg(long)]
    kill_relay: bool,
    /// Stop the network and exit after the table, instead of running until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Directory for keys, delay files and logs [default: a new temporary directory, removed
    /// at exit].
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let matrix = match &args.matrix {
        Some(path) => Matrix::load(path, Unit::Milliseconds)?,
        None => Matrix::parse(BUNDLED_CITIES, Unit::Milliseconds)
            .context("parsing the bundled cities")?,
    };
    if args.nodes < 2 || args.nodes > matrix.len() {
        bail!("--nodes must be between 2 and {}", matrix.len());
    }
    let matrix = matrix.truncated(args.nodes);
    let best = ShortestPaths::new(&matrix);
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hopwise-demo-{}", std::process::id()))
    });
    let binary = std::env::current_exe()?;
    println!(
        "starting {} hopwise nodes on 127.1.0.x with the matrix's latencies (testbed delays); logs in {}",
        matrix.len(),
        dir.display()
    );
    let started = tokio::time::Instant::now();
    let network_key = crate::keys::random_bytes()?;
    let mut net = Testnet::start(&binary, &matrix, &dir, &network_key, DEMO_SUBNET)?;
    let result = show(&mut net, &matrix, &best, &args, started).await;
    if result.is_ok() && !args.exit {
        println!("the network keeps running; Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
    }
    net.stop().await;
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn show(
    net: &mut Testnet,
    matrix: &Matrix,
    best: &ShortestPaths,
    args: &DemoArgs,
    started: tokio::time::Instant,
) -> anyhow::Result<()> {
    net.wait_for_routes(Duration::from_secs(45)).await?;
    println!(
        "every node routes to every other after {:.1} s; {} s more for the relays to settle",
        started.elapsed().as_secs_f64(),
        SETTLE.as_secs()
    );
    // Routes exist once every node is known; relays are chosen from measurements gossiped
    // over the following seconds.
    tokio::time::sleep(SETTLE).await;
    println!("table after {:.1} s\n", started.elapsed().as_secs_f64());
    let pairs = choose_pairs(matrix, best, args.pairs);
    println!(
        "{:<18} {:<18} {:>9} {:>9} {:>9} {:>6}  path through the overlay",
        "from", "to", "direct", "overlay", "best", "gain"
    );
    let mut shown = Vec::new();
    for (from, to) in pairs {
        let Some(report) = fastest_trace(net, from, to).await else {
            println!(
                "{:<18} {:<18} no answer",
                matrix.names()[from],
                matrix.names()[to]
            );
            continue;
        };
        let direct = matrix.rtt_ms(from, to);
        let gain = direct.map_or("-".into(), |d| {
            format!("{:.0}%", 100.0 * (d - report.rtt_ms) / d)
        });
        println!(
            "{:<18} {:<18} {:>9} {:>9.1} {:>9.1} {:>6}  {}",
            matrix.names()[from],
            matrix.names()[to],
            direct.map_or("-".into(), |d| format!("{d:.1}")),
            report.rtt_ms,
            best.rtt_ms(from, to),
            gain,
            path_names(net, &report)
        );
        shown.push((from, to, report));
    }
    println!("\nRTTs in ms; \"best\" is the fastest path through the matrix, found offline.");
    print_how_to_talk(net);
    if args.kill_relay {
        kill_relay(net, &shown).await?;
    }
    Ok(())
}

/// Where the running network answers, and a few commands to try against it.
fn print_how_to_talk(net: &Testnet) {
    let (Some(first), Some(last)) = (net.members.first(), net.members.last()) else {
        return;
    };
    let far = crate::testnet::alias_of(&last.name).unwrap_or_else(|| last.id.to_string());
    let here = crate::testnet::alias_of(&first.name).unwrap_or_else(|| "me".to_string());
    println!(
        "\nevery node is named by its city; {}'s control API is {} (each node's is its address, port 4001):",
        first.name, first.api
    );
    println!("  hopwise trace {far} --api {}", first.api);
    println!("  hopwise resolve {far} --api {}", first.api);
    println!(
        "  hopwise kv watch greeting --api {}        (in another terminal)",
        last.api
    );
    println!("  hopwise kv set greeting {here} hello --api {}", first.api);
    println!("  hopwise kv get greeting --api {}", last.api);
}

/// The pairs with the most to gain from a relay (one per source city), then the first pairs
/// without a faster relay path, for contrast.
fn choose_pairs(matrix: &Matrix, best: &ShortestPaths, count: usize) -> Vec<(usize, usize)> {
    let n = matrix.len();
    let mut by_gain: Vec<(f64, usize, usize)> = (0..n)
        .flat_map(|a| ((a + 1)..n).map(move |b| (a, b)))
        .filter_map(|(a, b)| {
            let direct = matrix.rtt_ms(a, b)?;
            Some(((direct - best.rtt_ms(a, b)) / direct, a, b))
        })
        .collect();
    by_gain.sort_by(|x, y| y.0.total_cmp(&x.0));
    let relayed = count - count / 4;
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for &(gain, a, b) in &by_gain {
        if chosen.len() >= relayed || gain < 0.05 {
            break;
        }
        if chosen.iter().all(|(x, _)| *x != a) {
            chosen.push((a, b));
        }
    }
    for &(_, a, b) in by_gain.iter().rev() {
        if chosen.len() >= count {
            break;
        }
        if chosen.iter().all(|(x, y)| (*x, *y) != (a, b)) {
            chosen.push((a, b));
        }
    }
    chosen
}

async fn fastest_trace(net: &Testnet, from: usize, to: usize) -> Option<TraceReport> {
    let mut fastest: Option<TraceReport> = None;
    for _ in 0..TRACES_PER_PAIR {
        if let Ok(report) = net.trace(from, to).await
            && fastest.as_ref().is_none_or(|f| report.rtt_ms < f.rtt_ms)
        {
            fastest = Some(report);
        }
    }
    fastest
}

fn path_names(net: &Testnet, report: &TraceReport) -> String {
    report
        .outbound
        .iter()
        .map(|step| {
            net.index_of(&step.node).map_or_else(
                || step.node[..8].to_string(),
                |i| net.members[i].name.clone(),
            )
        })
        .collect::<Vec<_>>()
        .join(" > ")
}

/// Kills the first relay on a shown path while that pair carries a flow of 20 traces per
/// second, as the simulator's failover flows do, and reports the flow's delivery gap.
async fn kill_relay(
    net: &mut Testnet,
    shown: &[(usize, usize, TraceReport)],
) -> anyhow::Result<()> {
    let Some((from, to, relay)) = shown.iter().find_map(|(from, to, report)| {
        let relay = report
            .outbound
            .get(1)
            .filter(|_| report.outbound.len() > 2)?;
        Some((*from, *to, net.index_of(&relay.node)?))
    }) else {
        println!("\nno shown path crosses a relay: nothing to kill");
        return Ok(());
    };
    println!(
        "\nsending 20 traces/s from {} to {}, then killing {}, a relay on their path ...",
        net.members[from].name, net.members[to].name, net.members[relay].name
    );
    let (gap, report) = net.kill_under_flow(from, to, relay).await?;
    println!(
        "delivery gap {:.0} ms; now {:.1} ms via {}",
        gap.as_secs_f64() * 1000.0,
        report.rtt_ms,
        path_names(net, &report)
    );
    Ok(())
}

/// The best round trip of every pair, as the simulator computes its optimum.
struct ShortestPaths {
    n: usize,
    rtt: Vec<f64>,
}

impl ShortestPaths {
    fn new(matrix: &Matrix) -> Self {
        let n = matrix.len();
        let network = Network::new(vec![matrix.clone()], NetworkConfig::default(), 0);
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).collect();
        let rtt = optimal_round_trips(&network, matrix, &pairs)
            .into_iter()
            .map(|best| best.unwrap_or(f64::INFINITY))
            .collect();
        Self { n, rtt }
    }

    fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.rtt[a * self.n + b]
    }
}
