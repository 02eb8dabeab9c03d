//! The `hopwise sim` command as a user runs it: files, field names, determinism.

use std::path::Path;
use std::process::Command;

/// Fails the test with the command's stderr if it did not succeed.
fn assert_succeeded(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_sim(dir: &Path, name: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let report = dir.join(format!("{name}.json"));
    let coords = dir.join(format!("{name}.csv"));
    let output = Command::new(env!("CARGO_BIN_EXE_hopwise"))
        .args(["sim", "--nodes", "25", "--duration", "45s", "--seed", "3"])
        .arg("--report")
        .arg(&report)
        .arg("--coords")
        .arg(&coords)
        .args(extra)
        .output()
        .expect("hopwise runs");
    assert_succeeded(&output);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    (std::fs::read_to_string(coords).unwrap(), report)
}

#[test]
fn sim_writes_the_documented_files_and_is_deterministic() {
    let dir = std::env::temp_dir().join(format!("hopwise-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (coords_a, mut report_a) = run_sim(&dir, "a", &[]);
    let (coords_b, mut report_b) = run_sim(&dir, "b", &[]);

    let mut lines = coords_a.lines();
    assert_eq!(lines.next(), Some("node,x1,x2,height,error"));
    assert_eq!(lines.count(), 25);
    assert_eq!(report_a["nodes"], 25);
    assert_eq!(report_a["seed"], 3);
    assert_eq!(report_a["sim_seconds"], 45.0);
    for field in ["median_rel_error", "p90_rel_error"] {
        let value = report_a["coords"][field].as_f64().unwrap();
        assert!(value > 0.0 && value < 1.0, "{field} = {value}");
    }
    let checkpoints: Vec<f64> = report_a["coords"]["convergence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["at_s"].as_f64().unwrap())
        .collect();
    assert_eq!(checkpoints, [10.0, 30.0, 45.0]);
    assert!(
        report_a["traffic"]["bytes_per_node_per_sec"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(report_a["events"].as_u64().unwrap() > 0);
    assert!(report_a["wall_seconds"].as_f64().unwrap() >= 0.0);

    assert_eq!(coords_a, coords_b);
    report_a.as_object_mut().unwrap().remove("wall_seconds");
    report_b.as_object_mut().unwrap().remove("wall_seconds");
    assert_eq!(report_a, report_b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_reads_a_json_matrix_and_rejects_a_broken_one() {
    let dir = std::env::temp_dir().join(format!("hopwise-sim-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"a": {"b": 0.030, "c": 0.050}, "b": {"a": 0.030, "c": 0.040}, "c": {"a": 0.050, "b": 0.040}}"#).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hopwise"))
        .args(["sim", "--unit", "s", "--duration", "20s", "--coords"])
        .arg(dir.join("coords.csv"))
        .arg("--matrix")
        .arg(&good)
        .output()
        .unwrap();
    assert_succeeded(&output);
    let coords = std::fs::read_to_string(dir.join("coords.csv")).unwrap();
    assert!(coords.lines().nth(1).unwrap().starts_with("a,"), "{coords}");

    let broken = dir.join("broken.txt");
    std::fs::write(&broken, "0 1 2\n1 0\n2 1 0\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hopwise"))
        .args(["sim", "--matrix"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("row 1 has 2 entries"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_routes_expands_and_replays_matrices() {
    let dir = std::env::temp_dir().join(format!("hopwise-sim-routing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two copies of a 3-node matrix where the direct a-c path is slow and b is a good relay,
    // replayed in turn by a glob; each node expanded into 4 behind its host.
    for (name, slow) in [("m1.txt", "90"), ("m2.txt", "120")] {
        let text = format!("0 10 {slow}\n10 0 10\n{slow} 10 0\n");
        std::fs::write(dir.join(name), text).unwrap();
    }
    let pairs = dir.join("pairs.csv");
    let report = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_hopwise"))
        .args([
            "sim",
            "--duration",
            "50s",
            "--expand",
            "12",
            "--matrix-interval",
            "20s",
        ])
        .arg("--matrix")
        .arg(dir.join("m*.txt"))
        .arg("--pairs")
        .arg(&pairs)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_succeeded(&output);
    let pairs = std::fs::read_to_string(pairs).unwrap();
    let mut lines = pairs.lines();
    assert_eq!(lines.next(), Some("src,dst,direct_ms,overlay_ms,hops"));
    assert_eq!(lines.count(), 12 * 11);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(report["expanded_from"]["hosts"], 3);
    assert_eq!(report["network"]["matrices"], 2);
    assert_eq!(report["routing"]["reachable_fraction"], 1.0);
    // The slow direct paths between the hosts of a and c are avoided through b's host.
    assert!(report["routing"]["captured_fraction"].as_f64().unwrap() > 0.9);
    assert_eq!(report["slices"].as_array().unwrap().len(), 2);
    for field in ["median", "p95", "p99"] {
        assert!(
            report["routing"]["stretch_vs_optimal"][field]
                .as_f64()
                .unwrap()
                >= 1.0
        );
    }
    assert!(
        report["state"]["route_entries_per_node"]["mean"]
            .as_f64()
            .unwrap()
            >= 11.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
