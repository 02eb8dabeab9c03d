//! The hopwise simulator: many real protocol nodes in one process, over real latency matrices,
//! deterministic for a given seed.

pub mod datagrams;
pub mod flows;
pub mod kvload;
pub mod matrix;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod pubsub;
pub mod report;
pub mod sim;

pub use matrix::{Expansion, Matrix, MatrixError, Unit};
pub use network::NetworkConfig;
pub use paths::pairs_csv;
pub use report::{Outcome, Report, coords_csv, run};
pub use sim::{NodeTags, Scenario, SimConfig, Simulation};
