//! Overlay paths measured with real packets, compared with the best paths the network allows.

use std::fmt::Write as _;

use hopwise_proto::{Duration, Event, Instant};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::matrix::Matrix;
use crate::network::Network;
use crate::sim::Simulation;

/// Up to this many nodes every ordered pair is measured; above, a seeded sample.
const ALL_PAIRS_UP_TO: usize = 500;
/// Sampled pairs: this many sources, each with `SAMPLE_PAIRS / SAMPLE_SOURCES` destinations.
const SAMPLE_SOURCES: usize = 100;
const SAMPLE_PAIRS: usize = 20_000;

/// Pings are spread over this window so that no node sends hundreds in one instant.
const PING_SPREAD: Duration = Duration::from_secs(1);
/// Between the first round of pings (which opens direct sessions) and the measured one.
pub(crate) const WARM_UP: Duration = Duration::from_secs(4);
/// A ping unanswered this long after the last was sent counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, PartialEq)]
pub struct PairResult {
    pub src: usize,
    pub dst: usize,
    /// The matrix entry from `src` to `dst`, if the two can talk directly.
    pub direct_ms: Option<f64>,
    /// The round trip of the direct path, `(rtt(a,b) + rtt(b,a)) / 2`.
    pub direct_round_trip_ms: Option<f64>,
    /// The best round trip over any chain of allowed direct paths.
    pub optimal_ms: Option<f64>,
    /// Measured through the overlay; `None` if the ping never came back.
    pub overlay_ms: Option<f64>,
    pub hops: Option<u8>,
}

/// The pairs to measure: all ordered pairs of running nodes up to 500 nodes, otherwise a seeded
/// sample of `SAMPLE_PAIRS` from `SAMPLE_SOURCES` sources.
pub fn choose_pairs(sim: &Simulation, seed: u64) -> Vec<(usize, usize)> {
    let running: Vec<usize> = (0..sim.len()).filter(|&i| sim.is_running(i)).collect();
    if running.len() <= ALL_PAIRS_UP_TO {
        return running
            .iter()
            .flat_map(|&a| {
                running
                    .iter()
                    .filter(move |&&b| b != a)
                    .map(move |&b| (a, b))
            })
            .collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7061_6972);
    let mut sources = running.clone();
    sources.shuffle(&mut rng);
    sources.truncate(SAMPLE_SOURCES);
    let per_source = SAMPLE_PAIRS / SAMPLE_SOURCES;
    let mut pairs = Vec::with_capacity(SAMPLE_PAIRS);
    for &a in &sources {
        for _ in 0..per_source {
            let b = loop {
                let b = running[rng.random_range(0..running.len())];
                if b != a {
                    break b;
                }
            };
            pairs.push((a, b));
        }
    }
    pairs
}

/// One-way shortest delays over allowed direct paths (each worth half its RTT): from `source`
/// to every node, or with `towards` from every node to `source`. Dense Dijkstra, `O(n^2)`.
fn shortest_one_way(network: &Network, matrix: &Matrix, source: usize, towards: bool) -> Vec<f64> {
    let n = matrix.len();
    let mut dist = vec![f64::INFINITY; n];
    let mut done = vec![false; n];
    dist[source] = 0.0;
    for _ in 0..n {
        let Some(u) = (0..n)
            .filter(|&i| !done[i] && dist[i].is_finite())
            .min_by(|&a, &b| dist[a].total_cmp(&dist[b]))
        else {
            break;
        };
        done[u] = true;
        for v in 0..n {
            if done[v] {
                continue;
            }
            let (from, to) = if towards { (v, u) } else { (u, v) };
            if !network.path_allowed(matrix, from, to) {
                continue;
            }
            let Some(rtt) = matrix.rtt_ms(from, to) else {
                continue;
            };
            let candidate = dist[u] + rtt / 2.0;
            if candidate < dist[v] {
                dist[v] = candidate;
            }
        }
    }
    dist
}

/// The best round trip for each pair under `matrix`.
pub fn optimal_round_trips(
    network: &Network,
    matrix: &Matrix,
    pairs: &[(usize, usize)],
) -> Vec<Option<f64>> {
    let mut result = vec![None; pairs.len()];
    let mut by_source: Vec<(usize, usize)> =
        pairs.iter().enumerate().map(|(i, p)| (p.0, i)).collect();
    by_source.sort_unstable();
    let mut start = 0;
    while start < by_source.len() {
        let source = by_source[start].0;
        let end = start
            + by_source[start..]
                .iter()
                .take_while(|(s, _)| *s == source)
                .count();
        let out = shortest_one_way(network, matrix, source, false);
        let back = shortest_one_way(network, matrix, source, true);
        for &(_, index) in &by_source[start..end] {
            let dst = pairs[index].1;
            let round_trip = out[dst] + back[dst];
            result[index] = round_trip.is_finite().then_some(round_trip);
        }
        start = end;
    }
    result
}

/// Measures every pair with real overlay pings, starting at the simulator's current time: a
/// first round opens direct sessions (as real traffic would), a second round is measured.
/// Returns, per pair, the round trip and the hops of the outbound ping.
pub fn measure_overlay(sim: &mut Simulation, pairs: &[(usize, usize)]) -> Vec<Option<(f64, u8)>> {
    let start = sim.now();
    send_pings(sim, pairs, start, None);
    sim.run_until(start + WARM_UP);
    sim.take_recorded();
    send_pings(sim, pairs, start + WARM_UP, Some(()));
    sim.run_until(start + WARM_UP + PING_SPREAD + PING_TIMEOUT);
    let mut results = vec![None; pairs.len()];
    for recorded in sim.take_recorded() {
        if let Event::PingReply {
            token,
            rtt_ms,
            ping_hops,
            ..
        } = recorded.event
        {
            let index = token as usize;
            if index < pairs.len() && pairs[index].0 == recorded.node {
                results[index] = Some((rtt_ms, ping_hops));
            }
        }
    }
    results
}

/// Warm-up pings carry tokens no pair uses.
const WARM_UP_TOKEN: u64 = u64::MAX;

fn send_pings(
    sim: &mut Simulation,
    pairs: &[(usize, usize)],
    start: Instant,
    measured: Option<()>,
) {
    const BATCHES: usize = 20;
    let per_batch = pairs.len().div_ceil(BATCHES).max(1);
    for (batch, chunk) in pairs.chunks(per_batch).enumerate() {
        let at = start + PING_SPREAD.mul_f64(batch as f64 / BATCHES as f64);
        sim.run_until(at);
        for (offset, &(a, b)) in chunk.iter().enumerate() {
            let token = match measured {
                Some(()) => (batch * per_batch + offset) as u64,
                None => WARM_UP_TOKEN,
            };
            sim.ping(a, b, token);
        }
    }
}

/// Measures `pairs` and puts each result next to the direct path and the optimum.
pub fn evaluate(sim: &mut Simulation, pairs: &[(usize, usize)]) -> Vec<PairResult> {
    let matrix = sim.matrix().clone();
    let optimal = optimal_round_trips(sim.network(), &matrix, pairs);
    let measured = measure_overlay(sim, pairs);
    pairs
        .iter()
        .zip(optimal)
        .zip(measured)
        .map(|((&(src, dst), optimal_ms), measured)| {
            let network = sim.network();
            let allowed =
                network.path_allowed(&matrix, src, dst) && network.path_allowed(&matrix, dst, src);
            let direct_ms = allowed.then(|| matrix.rtt_ms(src, dst)).flatten();
            let direct_round_trip_ms = direct_ms
                .and_then(|there| matrix.rtt_ms(dst, src).map(|back| (there + back) / 2.0));
            PairResult {
                src,
                dst,
                direct_ms,
                direct_round_trip_ms,
                optimal_ms,
                overlay_ms: measured.map(|m| m.0),
                hops: measured.map(|m| m.1),
            }
        })
        .collect()
}

/// `pairs.csv`: `src,dst,direct_ms,overlay_ms,hops` (empty fields where there is no value).
pub fn pairs_csv(matrix: &Matrix, results: &[PairResult]) -> String {
    let mut out = String::from("src,dst,direct_ms,overlay_ms,hops\n");
    let names = matrix.names();
    for r in results {
        let direct = r.direct_ms.map_or(String::new(), |v| format!("{v:.3}"));
        let overlay = r.overlay_ms.map_or(String::new(), |v| format!("{v:.3}"));
        let hops = r.hops.map_or(String::new(), |h| h.to_string());
        writeln!(
            out,
            "{},{},{direct},{overlay},{hops}",
            names[r.src], names[r.dst]
        )
        .expect("writing to a String");
    }
    out
}
