//! Network coordinates: the Vivaldi model of two Euclidean dimensions plus a height.
//!
//! The predicted round trip between two nodes is `sqrt(dx1^2 + dx2^2) + h1 + h2` milliseconds; the
//! height stands for the access link that every path out of a node crosses.
//!
//! Two update rules are implemented:
//!
//! * [`Algorithm::Classic`] is Vivaldi as published by Dabek et al. (SIGCOMM 2004): one spring
//!   relaxation per RTT sample, timestep `cc * w` with `w = e_i / (e_i + e_j)`. It is kept as the
//!   baseline that simulations compare against.
//! * [`Algorithm::Fit`] (the default) keeps the same model, error estimate and neighbour exchange,
//!   but on each sample moves the node toward the position that best explains *all* of its
//!   neighbours' filtered RTTs at once: one damped Gauss-Newton step on a Huber loss of the
//!   *relative* error `(d - rtt) / rtt`. Fitting relative error is what makes short links as
//!   accurate as long ones; the Huber loss keeps triangle-inequality violations from dragging the
//!   fit; the step is scaled by the error-weighted adaptive timestep (Ledlie et al., NSDI 2007),
//!   and a weak quadratic pull toward the origin ("gravity", as in serf) stops the whole map from
//!   drifting. Decentralised, it approaches the accuracy of a centralised embedding.

use rand::{Rng, RngExt};

/// A position in the coordinate space, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Coordinate {
    pub x1: f64,
    pub x2: f64,
    pub height: f64,
}

impl Coordinate {
    pub const fn new(x1: f64, x2: f64, height: f64) -> Self {
        Self { x1, x2, height }
    }

    /// Predicted round-trip time to `other`, in milliseconds.
    pub fn distance_ms(&self, other: &Coordinate) -> f64 {
        (self.x1 - other.x1).hypot(self.x2 - other.x2) + self.height + other.height
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Dabek et al. 2004, one spring step per sample; the baseline.
    Classic,
    /// Robust relative-error fit over all neighbours (see the module documentation).
    Fit,
}

#[derive(Debug, Clone)]
pub struct VivaldiConfig {
    pub algorithm: Algorithm,
    /// Classic Vivaldi's timestep constant.
    pub cc: f64,
    /// Weight of a new sample in the error estimate.
    pub ce: f64,
    /// Heights never fall below this (ms).
    pub min_height_ms: f64,
    /// Distance from the origin (ms) at which gravity costs as much as a unit relative error.
    pub gravity_rho_ms: f64,
    /// Relative error at which the fit's loss turns from quadratic to linear.
    pub huber_delta: f64,
    /// Upper bound of the error estimate (also its starting value).
    pub max_error: f64,
    /// Residuals are relative to `max(rtt, rtt_floor_ms)`: below this, a link's error counts in
    /// absolute terms, so sub-millisecond same-site pairs cannot pin a node to one neighbour.
    pub rtt_floor_ms: f64,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Fit,
            cc: 0.25,
            ce: 0.25,
            min_height_ms: 0.01,
            gravity_rho_ms: 2_000.0,
            huber_delta: 0.05,
            max_error: 1.5,
            rtt_floor_ms: 100.0,
        }
    }
}

/// What a node knows about one neighbour when it updates its coordinate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub coord: Coordinate,
    pub error: f64,
    pub rtt_ms: f64,
}

/// One node's coordinate and the confidence it has in it.
#[derive(Debug, Clone)]
pub struct Vivaldi {
    config: VivaldiConfig,
    coord: Coordinate,
    error: f64,
    updates: u64,
    fixed: bool,
}

impl Vivaldi {
    pub fn new(config: VivaldiConfig) -> Self {
        let coord = Coordinate::new(0.0, 0.0, config.min_height_ms);
        let error = config.max_error;
        Self {
            config,
            coord,
            error,
            updates: 0,
            fixed: false,
        }
    }

    /// A landmark: pinned at `coord` with full confidence, never moves.
    pub fn fixed(config: VivaldiConfig, coord: Coordinate) -> Self {
        Self {
            coord,
            error: 0.0,
            fixed: true,
            ..Self::new(config)
        }
    }

    pub fn coordinate(&self) -> Coordinate {
        self.coord
    }

    /// Estimated relative error of this node's predictions, in `[0, max_error]`.
    pub fn error(&self) -> f64 {
        self.error
    }

    /// Number of updates applied, the netloc "iteration".
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Feeds one fresh sample (`latest`, already filtered) together with the current view of every
    /// neighbour (`neighbours`, which includes `latest`'s peer).
    pub fn update(&mut self, latest: &Observation, neighbours: &[Observation], rng: &mut impl Rng) {
        if self.fixed || !(latest.rtt_ms.is_finite() && latest.rtt_ms > 0.0) {
            return;
        }
        let weight = self.sample_weight(latest);
        match self.config.algorithm {
            Algorithm::Classic => self.spring_step(latest, weight, rng),
            Algorithm::Fit => self.fit_step(neighbours, weight, rng),
        }
        self.update_error(latest, weight);
        self.updates += 1;
    }

    /// Vivaldi's `w = e_i / (e_i + e_j)`: trust confident neighbours, move less when confident.
    fn sample_weight(&self, peer: &Observation) -> f64 {
        let total = self.error + peer.error;
        if total > 0.0 { self.error / total } else { 0.5 }
    }

    fn update_error(&mut self, latest: &Observation, weight: f64) {
        let predicted = self.coord.distance_ms(&latest.coord);
        let sample_error =
            ((predicted - latest.rtt_ms).abs() / latest.rtt_ms).min(self.config.max_error);
        let alpha = self.config.ce * weight;
        self.error =
            (sample_error * alpha + self.error * (1.0 - alpha)).clamp(0.0, self.config.max_error);
    }

    fn spring_step(&mut self, peer: &Observation, weight: f64, rng: &mut impl Rng) {
        let (unit, planar) = unit_toward(&self.coord, &peer.coord, rng);
        let force = self.config.cc * weight * (peer.rtt_ms - self.coord.distance_ms(&peer.coord));
        self.coord.x1 += unit[0] * force;
        self.coord.x2 += unit[1] * force;
        // The height takes its share of the force in proportion to its share of the distance.
        if planar > f64::EPSILON {
            self.coord.height += (self.coord.height + peer.coord.height) * force / planar;
        }
        self.coord.height = self.coord.height.max(self.config.min_height_ms);
    }

    fn fit_step(&mut self, neighbours: &[Observation], weight: f64, rng: &mut impl Rng) {
        // Graduated robustness: while a node is unsure of its position the loss stays quadratic,
        // which pulls it into the right basin; it turns robust as the node gains confidence.
        let huber_delta = self.config.huber_delta.max(self.error * self.error);
        let mut fit = LocalFit::new(&self.config, huber_delta, neighbours, rng);
        let current = self.coord;
        let Some(target) = fit.gauss_newton_target(current) else {
            return;
        };
        let current_cost = fit.cost(&current);
        // Adaptive timestep: a node that is less sure than its neighbours moves further.
        let mut step = weight.clamp(0.05, 1.0);
        for _ in 0..4 {
            let candidate = Coordinate {
                x1: current.x1 + step * (target.x1 - current.x1),
                x2: current.x2 + step * (target.x2 - current.x2),
                height: (current.height + step * (target.height - current.height))
                    .max(self.config.min_height_ms),
            };
            if fit.cost(&candidate) <= current_cost {
                self.coord = candidate;
                return;
            }
            step *= 0.5;
        }
    }
}

/// Direction from `peer` toward `me` in the plane, and the planar distance. Coincident points get
/// a random direction so that nodes starting at the origin spread out.
fn unit_toward(me: &Coordinate, peer: &Coordinate, rng: &mut impl Rng) -> ([f64; 2], f64) {
    let (dx, dy) = (me.x1 - peer.x1, me.x2 - peer.x2);
    let planar = dx.hypot(dy);
    if planar > 1e-6 {
        ([dx / planar, dy / planar], planar)
    } else {
        let angle = rng.random_range(0.0..std::f64::consts::TAU);
        ([angle.cos(), angle.sin()], 0.0)
    }
}

/// The local objective of [`Algorithm::Fit`]: a robust loss over one node's neighbours.
struct LocalFit<'a> {
    config: &'a VivaldiConfig,
    huber_delta: f64,
    neighbours: &'a [Observation],
    /// Fallback directions for neighbours that coincide with the node, drawn once per step.
    tie_breaks: Vec<[f64; 2]>,
}

impl<'a> LocalFit<'a> {
    fn new(
        config: &'a VivaldiConfig,
        huber_delta: f64,
        neighbours: &'a [Observation],
        rng: &mut impl Rng,
    ) -> Self {
        let tie_breaks = neighbours
            .iter()
            .map(|_| {
                let angle = rng.random_range(0.0..std::f64::consts::TAU);
                [angle.cos(), angle.sin()]
            })
            .collect();
        Self {
            config,
            huber_delta,
            neighbours,
            tie_breaks,
        }
    }

    fn usable(n: &Observation) -> bool {
        n.rtt_ms.is_finite() && n.rtt_ms > 0.0
    }

    /// Confidence in a neighbour's position: a node with a large error estimate counts less.
    fn confidence(&self, n: &Observation) -> f64 {
        1.0 / (0.1 + n.error.min(self.config.max_error))
    }

    fn scale(&self, n: &Observation) -> f64 {
        n.rtt_ms.max(self.config.rtt_floor_ms)
    }

    fn huber(&self, residual: f64) -> f64 {
        let delta = self.huber_delta;
        let abs = residual.abs();
        if abs <= delta {
            0.5 * abs * abs
        } else {
            delta * (abs - 0.5 * delta)
        }
    }

    fn gravity(&self, c: &Coordinate) -> f64 {
        let rho = self.config.gravity_rho_ms;
        (c.x1 * c.x1 + c.x2 * c.x2) / (rho * rho)
    }

    fn cost(&self, c: &Coordinate) -> f64 {
        let residuals: f64 = self
            .neighbours
            .iter()
            .filter(|n| Self::usable(n))
            .map(|n| {
                self.confidence(n)
                    * self.huber((c.distance_ms(&n.coord) - n.rtt_ms) / self.scale(n))
            })
            .sum();
        residuals + self.gravity(c)
    }

    /// The Gauss-Newton minimiser of the iteratively reweighted loss around `c`, with a small
    /// Levenberg-Marquardt damping so that a poorly constrained node does not jump far.
    fn gauss_newton_target(&mut self, c: Coordinate) -> Option<Coordinate> {
        let mut normal = [[0.0f64; 3]; 3];
        let mut gradient = [0.0f64; 3];
        let mut used = 0;
        for (n, tie_break) in self.neighbours.iter().zip(&self.tie_breaks) {
            if !Self::usable(n) {
                continue;
            }
            used += 1;
            let (dx, dy) = (c.x1 - n.coord.x1, c.x2 - n.coord.x2);
            let planar = dx.hypot(dy);
            let unit = if planar > 1e-6 {
                [dx / planar, dy / planar]
            } else {
                *tie_break
            };
            let scale = self.scale(n);
            let residual = (c.distance_ms(&n.coord) - n.rtt_ms) / scale;
            let robust = if residual.abs() <= self.huber_delta {
                1.0
            } else {
                self.huber_delta / residual.abs()
            };
            let w = self.confidence(n) * robust;
            let row = [unit[0] / scale, unit[1] / scale, 1.0 / scale];
            for i in 0..3 {
                gradient[i] += w * row[i] * residual;
                for j in 0..3 {
                    normal[i][j] += w * row[i] * row[j];
                }
            }
        }
        if used == 0 {
            return None;
        }
        let g = 1.0 / (self.config.gravity_rho_ms * self.config.gravity_rho_ms);
        normal[0][0] += g;
        normal[1][1] += g;
        gradient[0] += g * c.x1;
        gradient[1] += g * c.x2;
        for (i, row) in normal.iter_mut().enumerate() {
            row[i] *= 1.0 + LEVENBERG_MARQUARDT_DAMPING;
        }
        let delta = solve3(normal, gradient)?;
        Some(Coordinate {
            x1: c.x1 - delta[0],
            x2: c.x2 - delta[1],
            height: (c.height - delta[2]).max(self.config.min_height_ms),
        })
    }
}

const LEVENBERG_MARQUARDT_DAMPING: f64 = 0.1;

/// Solves `a x = b` for a 3x3 system by Gaussian elimination with partial pivoting.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-15 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..3 {
            let factor = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (target, source) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *target -= factor * source;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const SEEDS: std::ops::RangeInclusive<u64> = 1..=5;

    /// Runs every node against a random other for `rounds`, with exact RTTs.
    fn embed(truth: &[Coordinate], algorithm: Algorithm, rounds: usize, seed: u64) -> Vec<Vivaldi> {
        let config = VivaldiConfig {
            algorithm,
            ..VivaldiConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut nodes: Vec<Vivaldi> = truth.iter().map(|_| Vivaldi::new(config.clone())).collect();
        for _ in 0..rounds {
            for i in 0..nodes.len() {
                let j = (i + rng.random_range(1..nodes.len())) % nodes.len();
                let observe = |k: usize, nodes: &[Vivaldi]| Observation {
                    coord: nodes[k].coordinate(),
                    error: nodes[k].error(),
                    rtt_ms: truth[i].distance_ms(&truth[k]),
                };
                let neighbours: Vec<Observation> = (0..nodes.len())
                    .filter(|&k| k != i)
                    .map(|k| observe(k, &nodes))
                    .collect();
                let latest = observe(j, &nodes);
                nodes[i].update(&latest, &neighbours, &mut rng);
            }
        }
        nodes
    }

    fn worst_relative_error(truth: &[Coordinate], nodes: &[Vivaldi]) -> f64 {
        let mut worst: f64 = 0.0;
        for i in 0..truth.len() {
            for j in 0..truth.len() {
                if i != j {
                    let real = truth[i].distance_ms(&truth[j]);
                    let predicted = nodes[i].coordinate().distance_ms(&nodes[j].coordinate());
                    worst = worst.max((predicted - real).abs() / real);
                }
            }
        }
        worst
    }

    fn line() -> Vec<Coordinate> {
        (0..6)
            .map(|i| Coordinate::new(20.0 * i as f64, 0.0, 0.0))
            .collect()
    }

    fn grid() -> Vec<Coordinate> {
        (0..16)
            .map(|i| Coordinate::new(30.0 * (i % 4) as f64, 30.0 * (i / 4) as f64, 0.0))
            .collect()
    }

    /// A ring of eight grounded nodes and one node on a 25 ms access link in its middle.
    fn raised() -> Vec<Coordinate> {
        let mut nodes: Vec<Coordinate> = (0..8)
            .map(|i| {
                let angle = i as f64 * std::f64::consts::TAU / 8.0;
                Coordinate::new(40.0 * angle.cos(), 40.0 * angle.sin(), 0.0)
            })
            .collect();
        nodes.push(Coordinate::new(0.0, 0.0, 25.0));
        nodes
    }

    #[test]
    fn fit_converges_on_a_line() {
        let truth = line();
        for seed in SEEDS {
            let nodes = embed(&truth, Algorithm::Fit, 300, seed);
            let worst = worst_relative_error(&truth, &nodes);
            assert!(worst < 0.02, "seed {seed}: worst relative error {worst}");
            assert!(
                nodes.iter().all(|n| n.error() < 0.05),
                "seed {seed}: error estimates stay high"
            );
        }
    }

    #[test]
    fn fit_converges_on_a_grid() {
        let truth = grid();
        for seed in SEEDS {
            let nodes = embed(&truth, Algorithm::Fit, 300, seed);
            let worst = worst_relative_error(&truth, &nodes);
            assert!(worst < 0.03, "seed {seed}: worst relative error {worst}");
        }
    }

    #[test]
    fn fit_finds_a_raised_node() {
        let truth = raised();
        for seed in SEEDS {
            let nodes = embed(&truth, Algorithm::Fit, 300, seed);
            let worst = worst_relative_error(&truth, &nodes);
            assert!(worst < 0.03, "seed {seed}: worst relative error {worst}");
            let heights: Vec<f64> = nodes.iter().map(|n| n.coordinate().height).collect();
            assert!(
                (heights[8] - 25.0).abs() < 2.0,
                "seed {seed}: heights {heights:?}"
            );
            assert!(
                heights[..8].iter().all(|&h| h < 2.0),
                "seed {seed}: heights {heights:?}"
            );
        }
    }

    #[test]
    fn classic_vivaldi_converges_on_a_grid() {
        let truth = grid();
        for seed in SEEDS {
            let nodes = embed(&truth, Algorithm::Classic, 2_000, seed);
            let worst = worst_relative_error(&truth, &nodes);
            assert!(worst < 0.10, "seed {seed}: worst relative error {worst}");
        }
    }

    #[test]
    fn a_landmark_never_moves() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let pinned = Coordinate::new(5.0, 5.0, 1.0);
        let mut landmark = Vivaldi::fixed(VivaldiConfig::default(), pinned);
        let far = Observation {
            coord: Coordinate::new(300.0, 0.0, 1.0),
            error: 0.1,
            rtt_ms: 40.0,
        };
        landmark.update(&far, &[far], &mut rng);
        assert_eq!(landmark.coordinate(), pinned);
        assert_eq!(landmark.error(), 0.0);
    }

    #[test]
    fn solves_a_known_system() {
        let x = solve3(
            [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0]],
            [3.0, 4.0, 5.0],
        )
        .unwrap();
        for (got, want) in x.iter().zip([1.0, 1.0, 1.0]) {
            assert!((got - want).abs() < 1e-12);
        }
        assert_eq!(
            solve3(
                [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]],
                [1.0, 2.0, 3.0]
            ),
            None
        );
    }
}
