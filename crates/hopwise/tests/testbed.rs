//! Testbed tests: real `hopwise node` processes on 127.0.0.0/8, real UDP sockets and real
//! encryption, with the latencies of the bundled city matrix applied by the testbed delays.
//! Each test uses its own loopback subnet, so they may run at the same time (the flood test,
//! which loads both cores, has a binary of its own: `tests/flood.rs`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use hopwise::api::{Request, Response, TraceReport};
use hopwise::client::call;
use hopwise::testnet::Testnet;
use hopwise_sim::paths::measure_overlay;
use hopwise_sim::{Matrix, SimConfig, Simulation};

use common::{binary, cities, scratch};
use tokio::task::JoinSet;

const NETWORK_KEY: [u8; 32] = [7; 32];
/// Seconds the demo also waits after full routes, for relays to be chosen.
const SETTLE: Duration = Duration::from_secs(10);

/// The fastest of three traces for every pair, traced concurrently.
async fn fastest_traces(net: &Testnet, pairs: &[(usize, usize)]) -> Vec<Option<TraceReport>> {
    let mut fastest: Vec<Option<TraceReport>> = vec![None; pairs.len()];
    for _ in 0..3 {
        let mut traces = JoinSet::new();
        for (index, &(from, to)) in pairs.iter().enumerate() {
            let api = net.members[from].api;
            let request = Request::Trace {
                node: net.members[to].id.to_string(),
            };
            traces.spawn(async move { (index, call(api, &request).await) });
        }
        while let Some(done) = traces.join_next().await {
            let (index, answer) = done.expect("trace task");
            if let Ok(Response::Trace(report)) = answer
                && fastest[index]
                    .as_ref()
                    .is_none_or(|f| report.rtt_ms < f.rtt_ms)
            {
                fastest[index] = Some(report);
            }
        }
    }
    fastest
}

/// What the simulator predicts for the same matrix: overlay round trips of real protocol
/// nodes (behind the same secure layer) after the same start-up time.
fn simulated_round_trips(matrix: &Matrix, pairs: &[(usize, usize)], after: Duration) -> Vec<f64> {
    let config = SimConfig {
        secure: true,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(matrix.clone(), &config);
    let after = hopwise_proto::Duration::from_millis(after.as_millis() as i64);
    sim.run_until(hopwise_proto::Instant::ZERO + after);
    measure_overlay(&mut sim, pairs)
        .into_iter()
        .map(|measured| measured.expect("the simulated pair answers").0)
        .collect()
}

#[tokio::test]
async fn ten_nodes_converge_match_the_simulator_fail_over_and_rejoin() {
    let matrix = cities(10);
    let dir = scratch("testbed-ten");
    let mut net = Testnet::start(binary(), &matrix, &dir, &NETWORK_KEY, 2).expect("start");

    let converged = net.wait_for_routes(Duration::from_secs(45)).await;
    let converged = converged.expect("every node routes to every other");
    println!("full routes after {converged:?}");
    tokio::time::sleep(SETTLE).await;

    // Every ordered pair, traced with real packets, against the simulator's prediction.
    let n = matrix.len();
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|a| (0..n).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect();
    let mut measured = fastest_traces(&net, &pairs).await;
    let predicted = simulated_round_trips(&matrix, &pairs, converged + SETTLE);
    let off_by = |real: &Option<TraceReport>, sim: f64| {
        real.as_ref()
            .map_or(f64::INFINITY, |real| (real.rtt_ms - sim).abs() / sim)
    };
    // Real nodes start a little apart and their relay reviews fall at other instants than the
    // simulator's, so a pair may still be a relay swap (at most 20 s) away from the path the
    // simulator found: such pairs are traced again once more, after another settling time.
    let off: Vec<usize> = (0..pairs.len())
        .filter(|&i| off_by(&measured[i], predicted[i]) > 0.10)
        .collect();
    if !off.is_empty() {
        println!(
            "{} pairs off by more than 10%; tracing them again",
            off.len()
        );
        tokio::time::sleep(2 * SETTLE).await;
        let again: Vec<(usize, usize)> = off.iter().map(|&i| pairs[i]).collect();
        for (&i, report) in off.iter().zip(fastest_traces(&net, &again).await) {
            measured[i] = report;
        }
    }
    let mut worst: f64 = 0.0;
    for ((&(a, b), real), sim) in pairs.iter().zip(&measured).zip(&predicted) {
        let real = real
            .as_ref()
            .unwrap_or_else(|| panic!("{a} -> {b} unanswered"));
        let deviation = (real.rtt_ms - sim).abs() / sim;
        worst = worst.max(deviation);
        assert!(
            deviation <= 0.10,
            "{} -> {}: {:.1} ms on sockets, {sim:.1} ms simulated",
            matrix.names()[a],
            matrix.names()[b],
            real.rtt_ms
        );
    }
    println!(
        "largest deviation from the simulator: {:.1}%",
        worst * 100.0
    );

    // A pair whose path crosses a relay: kill the relay under a 20 packets/s flow.
    let (from, to, relay) = pairs
        .iter()
        .zip(&measured)
        .find_map(|(&(a, b), report)| {
            let report = report.as_ref()?;
            let relay = report
                .outbound
                .get(1)
                .filter(|_| report.outbound.len() > 2)?;
            Some((a, b, net.index_of(&relay.node)?))
        })
        .expect("some path crosses a relay");
    let (gap, report) = net
        .kill_under_flow(from, to, relay)
        .await
        .expect("the flow recovers");
    println!("delivery gap {gap:?} after killing the relay");
    assert!(gap <= Duration::from_secs(1), "delivery gap {gap:?}");
    let killed = net.members[relay].id.to_string();
    assert!(report.outbound.iter().all(|step| step.node != killed));

    // The relay restarts with its key and is reachable again under the same id.
    net.launch(relay).expect("relaunch");
    let rejoined = async {
        loop {
            if net.trace(from, relay).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), rejoined)
        .await
        .expect("the restarted node is reachable again");
    let status = net.status(relay).await.expect("status");
    assert_eq!(status.id, killed);

    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_without_the_network_key_cannot_join_or_inject() {
    let matrix = cities(4);
    let dir = scratch("testbed-outsider");
    let mut net = Testnet::create(binary(), &matrix, &dir, &NETWORK_KEY, 3).expect("create");
    let outsider = 3;
    let wrong_key = dir.join("wrong-network.key");
    hopwise::keys::save_network_key(&[8; 32], &wrong_key).expect("key");
    net.members[outsider].network_key_file = wrong_key;
    for i in 0..matrix.len() {
        net.launch(i).expect("launch");
    }
    let members: Vec<usize> = (0..outsider).collect();
    net.wait_for_routes_among(&members, Duration::from_secs(30))
        .await
        .expect("the members route to each other");

    // Datagrams a stranger can make: plain hopwise packets claiming an id, and garbage.
    let forged_id = hopwise_proto::NodeId::from_bytes([0xab; 8]);
    let probe = hopwise_proto::wire::Packet {
        sender: forged_id,
        message: hopwise_proto::wire::Message::Link(hopwise_proto::wire::LinkOp::Open),
    };
    let injector = tokio::net::UdpSocket::bind("127.3.9.9:0")
        .await
        .expect("bind");
    let before = net.status(0).await.expect("status").dropped_insecure;
    for i in 0..50u8 {
        let datagram = if i % 2 == 0 {
            probe.to_bytes()
        } else {
            vec![i; usize::from(i) * 7]
        };
        injector
            .send_to(&datagram, net.members[0].listen)
            .await
            .expect("send");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let outsider_status = net.status(outsider).await.expect("outsider status");
    assert_eq!(outsider_status.routes, 0, "the outsider found no route");
    assert_eq!(outsider_status.handshakes_completed, 0);
    assert_eq!(outsider_status.known_nodes, 0);
    let outsider_id = net.members[outsider].id.to_string();
    let mut failed = 0;
    for &i in &members {
        let status = net.status(i).await.expect("member status");
        failed += status.handshakes_failed;
        let map = call(net.members[i].api, &Request::GetFullMap)
            .await
            .expect("map");
        let Response::FullMap { nodes } = map else {
            panic!("unexpected answer {map:?}");
        };
        let known: HashSet<String> = nodes.into_iter().map(|node| node.id).collect();
        assert!(
            !known.contains(&outsider_id),
            "member {i} knows the outsider"
        );
        assert!(
            !known.contains(&forged_id.to_string()),
            "member {i} knows a forged id"
        );
    }
    assert!(failed > 0, "the outsider's hellos failed their check");
    let after = net.status(0).await.expect("status").dropped_insecure;
    assert!(
        after >= before + 50,
        "{} of 50 injected datagrams counted",
        after - before
    );

    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_control_api_speaks_netloc_and_survives_bad_requests() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let matrix = cities(3);
    let dir = scratch("testbed-api");
    let mut net = Testnet::start(binary(), &matrix, &dir, &NETWORK_KEY, 5).expect("start");
    net.wait_for_routes(Duration::from_secs(30))
        .await
        .expect("every node routes to every other");

    // One connection, many requests: good, malformed and unknown ones in turn.
    let stream = tokio::net::TcpStream::connect(net.members[0].api)
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let other = net.members[1].listen;
    let requests = [
        r#"{"action": "get_location"}"#.to_string(),
        "this is not json".to_string(),
        format!(r#"{{"action": "get_node_info", "node_addr": "{other}"}}"#),
        r#"{"action": "launch_missiles"}"#.to_string(),
        r#"{"action": "get_recent_nodes", "max_nodes": 1}"#.to_string(),
        r#"{"action": "get_node_info", "node_addr": "not an address"}"#.to_string(),
        r#"{"action": "get_full_map"}"#.to_string(),
        "x".repeat(100_000),
        r#"{"action": "status"}"#.to_string(),
        r#"{"action": "get_node_info", "node_addr": "192.0.2.1:9"}"#.to_string(),
    ];
    let mut answers = Vec::new();
    for request in &requests {
        write
            .write_all(format!("{request}\n").as_bytes())
            .await
            .expect("write");
        let line = lines.next_line().await.expect("read").expect("an answer");
        answers.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON"));
    }
    let types: Vec<&str> = answers
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "location",
            "failure",
            "node_info",
            "failure",
            "recent_nodes",
            "failure",
            "full_map",
            "failure",
            "status",
            "failure"
        ]
    );
    // netloc's reasons (and hopwise's detail besides).
    let reasons: Vec<&str> = [1, 3, 5, 7, 9]
        .iter()
        .map(|&i| answers[i]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "bad request",
            "bad request",
            "bad node address",
            "bad request",
            "node not found"
        ]
    );
    assert!(
        answers[5]["error"]
            .as_str()
            .unwrap()
            .contains("not an address")
    );
    // netloc's shapes: a location, a node's info by address, the most recent nodes, the map.
    let loc = &answers[0]["loc"];
    for field in ["x1", "x2", "height", "pos_err", "iteration"] {
        assert!(loc[field].is_number(), "loc.{field}");
    }
    let info = &answers[2]["info"];
    assert_eq!(info["ip"], other.ip().to_string());
    assert_eq!(info["port"], other.port());
    assert_eq!(info["id"], net.members[1].id.to_string());
    assert!(info["location"]["x1"].is_number() && info["updated_at"].is_number());
    assert_eq!(answers[4]["nodes"].as_array().unwrap().len(), 1);
    let map = answers[6]["nodes"].as_array().unwrap();
    assert_eq!(map.len(), 2, "the map holds the other two nodes");
    for node in map {
        assert_eq!(node["flags"]["is_addr_ipv6"], false);
        assert!(node["ip"].is_string() && node["port"].is_number() && node["name"].is_string());
    }
    // netloc's name is the node's first alias (its city here), once the store has it.
    let aliases_named = async || {
        let Ok(Response::FullMap { nodes }) = call(net.members[0].api, &Request::GetFullMap).await
        else {
            return false;
        };
        nodes.iter().all(|node| {
            let member = net.index_of(&node.id).unwrap();
            hopwise::testnet::alias_of(&net.members[member].name).as_deref() == Some(&node.name)
        })
    };
    let started = tokio::time::Instant::now();
    while !aliases_named().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nodes not named by their aliases"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(answers[8]["id"], net.members[0].id.to_string());

    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
