//! Shared helpers for the simulator's scenario tests.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use hopwise_sim::{Matrix, Unit};

/// The 50-node PlanetLab matrix bundled with the `hopwise` binary.
pub fn bundled_planetlab() -> Matrix {
    Matrix::parse(
        include_str!("../../../hopwise/data/planetlab50.txt"),
        Unit::Milliseconds,
    )
    .expect("bundled matrix parses")
}

/// A matrix from `../shared/data`, or `None` (with a note on stderr) where that folder is absent.
pub fn shared_matrix(relative: &str) -> Option<Matrix> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(relative);
    if !path.exists() {
        eprintln!(
            "skipping: {} is not present (a clone without ../shared/data)",
            path.display()
        );
        return None;
    }
    Some(Matrix::load(&path, Unit::Milliseconds).expect("shared matrix loads"))
}
