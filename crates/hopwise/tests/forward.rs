//! Expose and forward on real processes (subnet 127.11): four `hopwise node` processes with the
//! testbed's latencies, the client and the server without a direct path, so every forward
//! crosses a relay. Real clients go through the forwards: dig to dnsmasq, iperf3 TCP and UDP,
//! curl of 100 MB from an HTTP server (checksums compared), 100 concurrent connections with
//! half-closes, a reset carried across; a forward to a name that is not exposed fails with a
//! clear error, an expose of a taken name is refused, and floods of datagrams and of streams
//! are bounded while the nodes stay up.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hopwise::testnet::Testnet;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{binary, installed, scratch, spawn, two_relays};

const NETWORK_KEY: [u8; 32] = [11; 32];
const TOOLS: [&str; 5] = ["dnsmasq", "dig", "iperf3", "curl", "python3"];
/// The members: the relay the forwards cross, the serving node, the client, another relay.
const RELAY: usize = 0;
const SERVER: usize = 1;
const CLIENT: usize = 2;
const OTHER_RELAY: usize = 3;
/// Where the serving node's targets listen, and where the client's forwards listen.
const TARGETS: &str = "127.11.9.1";
const LOCAL: &str = "127.11.8.1";

/// Runs the `hopwise` CLI against member `index`'s API.
fn cli(net: &Testnet, index: usize, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .args(["--api", &net.members[index].api.to_string()])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running hopwise")
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn iperf3(args: &[&str]) -> Value {
    let output = Command::new("iperf3")
        .args(["-J", "-t", "2", "-c", LOCAL])
        .args(args)
        .output()
        .expect("iperf3");
    serde_json::from_slice(&output.stdout).expect("iperf3's JSON")
}

/// What dig gets through the UDP forward for the name dnsmasq answers on the far side.
fn dig_through_forward() -> String {
    let dig = Command::new("dig")
        .args([
            "+short",
            "+tries=3",
            "+timeout=2",
            &format!("@{LOCAL}"),
            "-p",
            "5300",
        ])
        .arg("example.hopwise.test")
        .output()
        .expect("dig");
    String::from_utf8_lossy(&dig.stdout).trim().to_string()
}

fn sha256(path: &std::path::Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An echo server: each connection gets back what it sent, and a FIN after the client's.
async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = write.shutdown().await;
        });
    }
}

/// A server that answers every connection with a reset.
async fn resetting_server(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // A zero linger time makes the close a reset.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    }
}

/// Sends `data` through one connection to `addr`, half-closes, and reads the echo to its end.
async fn echo_through(addr: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&data).await?;
        write.shutdown().await
    });
    let mut echoed = Vec::new();
    read.read_to_end(&mut echoed).await?;
    writer.await.expect("writer")?;
    Ok(echoed)
}

#[tokio::test]
async fn forwards_carry_real_clients_through_a_relay() {
    if let Some(missing) = TOOLS.iter().find(|tool| !installed(tool)) {
        eprintln!("skipped: the forward test needs {missing} (.ci/run installs it)");
        return;
    }
    let dir = scratch("forward");
    let mut net = Testnet::create(binary(), &two_relays(), &dir, &NETWORK_KEY, 11).expect("create");
    net.members[SERVER].options = vec!["--alias".into(), "server".into()];
    for i in 0..net.members.len() {
        net.launch(i).expect("launch");
    }
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("every node routes to every other");

    // The targets on the serving node's side.
    let _dns = spawn(&[
        "dnsmasq",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={TARGETS}"),
        "--port=5353",
        "--address=/example.hopwise.test/10.1.2.3",
        &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
    ]);
    let _iperf = spawn(&["iperf3", "-s", "-B", TARGETS, "-p", "5201"]);
    let blob = dir.join("blob");
    let contents: Vec<u8> = {
        use rand::{Rng, SeedableRng};
        let mut contents = vec![0; 100_000_000];
        rand_chacha::ChaCha8Rng::seed_from_u64(17).fill_bytes(&mut contents);
        contents
    };
    std::fs::write(&blob, &contents).expect("write the blob");
    drop(contents);
    let _http = spawn(&[
        "python3",
        "-m",
        "http.server",
        "8099",
        "--bind",
        TARGETS,
        "--directory",
        &dir.display().to_string(),
    ]);
    let echo = TcpListener::bind((TARGETS, 7000)).await.expect("echo");
    let echo_task = tokio::spawn(echo_server(echo));
    let resetting = TcpListener::bind((TARGETS, 7001)).await.expect("reset");
    let reset_task = tokio::spawn(resetting_server(resetting));

    for (kind, name, port) in [
        ("udp", "dns", 5353),
        ("tcp", "iperf", 5201),
        ("udp", "iperf", 5201),
        ("tcp", "web", 8099),
        ("tcp", "echo", 7000),
        ("tcp", "reset", 7001),
    ] {
        let name = if kind == "udp" && name == "iperf" {
            "iperf-udp"
        } else {
            name
        };
        let printed = succeeded(&cli(
            &net,
            SERVER,
            &["expose", kind, name, &format!("{TARGETS}:{port}")],
        ));
        assert!(
            printed.contains(&format!("exposed {kind} service {name}")),
            "{printed}"
        );
    }
    // A name is exposed once.
    let again = cli(&net, SERVER, &["expose", "tcp", "web", "127.0.0.1:1"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a service named web is exposed already"),
        "{again:?}"
    );
    let listed = succeeded(&cli(&net, SERVER, &["expose", "list"]));
    assert_eq!(listed.lines().count(), 6, "{listed}");

    // A forward to a name that is not exposed fails at once, saying why.
    let refused = cli(
        &net,
        CLIENT,
        &["forward", "tcp", &format!("{LOCAL}:2222"), "server/ssh"],
    );
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("server/ssh: no service of that name is exposed"),
        "{why}"
    );
    let wrong_kind = cli(
        &net,
        CLIENT,
        &["forward", "udp", &format!("{LOCAL}:8099"), "server/web"],
    );
    assert!(
        String::from_utf8_lossy(&wrong_kind.stderr).contains("is exposed as tcp"),
        "{wrong_kind:?}"
    );

    let server_id = net.members[SERVER].id.to_string();
    for (kind, port, service) in [
        ("udp", 5300, "server/dns".to_string()),
        ("tcp", 5201, format!("{server_id}/iperf")),
        ("udp", 5201, "server/iperf-udp".to_string()),
        ("tcp", 8099, "server/web".to_string()),
        ("tcp", 7000, "server/echo".to_string()),
        ("tcp", 7001, "server/reset".to_string()),
    ] {
        let printed = succeeded(&cli(
            &net,
            CLIENT,
            &["forward", kind, &format!("{LOCAL}:{port}"), &service],
        ));
        assert!(printed.contains(&server_id), "{printed}");
    }
    let listed = succeeded(&cli(&net, CLIENT, &["forward", "list"]));
    assert_eq!(listed.lines().count(), 6, "{listed}");
    let relayed_before = net.status(RELAY).await.expect("status").data_relayed
        + net.status(OTHER_RELAY).await.expect("status").data_relayed;

    // dig through the UDP forward, to dnsmasq on the far side.
    for _ in 0..5 {
        assert_eq!(dig_through_forward(), "10.1.2.3");
    }

    // iperf3 TCP, and UDP (its control connection over the TCP forward).
    let tcp = iperf3(&["-p", "5201"]);
    let tcp_mbits = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 TCP result")
        / 1e6;
    // Datagrams up to what a forward carries (1,334 bytes for this name on a 1,500-byte path).
    let udp = iperf3(&["-p", "5201", "-u", "-b", "20M", "-l", "1200"]);
    let udp_loss = udp["end"]["sum"]["lost_percent"]
        .as_f64()
        .expect("iperf3 UDP result");
    let udp_packets = udp["end"]["sum"]["packets"].as_u64().unwrap_or(0);
    println!(
        "iperf3 through forwards: TCP {tcp_mbits:.0} Mbit/s; UDP at 20 Mbit/s lost {udp_loss:.2}% of {udp_packets}"
    );
    assert!(tcp_mbits > 10.0, "TCP {tcp_mbits} Mbit/s");
    assert!(
        udp_packets > 1_000 && udp_loss < 5.0,
        "UDP lost {udp_loss}%"
    );

    // curl of 100 MB through the relayed TCP forward.
    let fetched = dir.join("fetched");
    let started = Instant::now();
    let curl = Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&fetched)
        .arg(format!("http://{LOCAL}:8099/blob"))
        .output()
        .expect("curl");
    let took = started.elapsed();
    assert!(curl.status.success(), "{curl:?}");
    let (expected, got) = (sha256(&blob), sha256(&fetched));
    println!(
        "curl of 100 MB through a relayed forward: {:.2} s ({:.0} Mbit/s), sha256 {got}",
        took.as_secs_f64(),
        800.0 / took.as_secs_f64()
    );
    assert_eq!(got, expected);
    let relayed_after = net.status(RELAY).await.expect("status").data_relayed
        + net.status(OTHER_RELAY).await.expect("status").data_relayed;
    assert!(
        relayed_after - relayed_before > 70_000,
        "the transfer crossed a relay: {} datagrams relayed",
        relayed_after - relayed_before
    );

    // 100 concurrent connections, each echoed whole after its half-close.
    let echo_addr: SocketAddr = format!("{LOCAL}:7000").parse().unwrap();
    let mut connections = tokio::task::JoinSet::new();
    for n in 0..100u32 {
        let data: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + n) as u8).collect();
        connections.spawn(async move { (data.clone(), echo_through(echo_addr, data).await) });
    }
    let mut echoed = 0;
    while let Some(done) = connections.join_next().await {
        let (sent, answer) = done.expect("connection task");
        assert_eq!(answer.expect("echo"), sent);
        echoed += 1;
    }
    assert_eq!(echoed, 100);

    // A reset on the far side resets the local connection.
    let mut reset = TcpStream::connect(format!("{LOCAL}:7001"))
        .await
        .expect("connect");
    let _ = reset.write_all(b"hello").await;
    let mut buffer = [0; 16];
    let outcome = tokio::time::timeout(Duration::from_secs(5), reset.read(&mut buffer))
        .await
        .expect("the reset arrives");
    assert!(
        matches!(&outcome, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{outcome:?}"
    );

    // A flood of datagrams into the UDP forward: counted, bounded, and dig still answers.
    let flooder = std::net::UdpSocket::bind((LOCAL, 0)).expect("bind");
    for n in 0..20_000u32 {
        let size = (n as usize * 131) % 2_000;
        let _ = flooder.send_to(&vec![n as u8; size], (LOCAL, 5300));
    }
    let status = net.status(CLIENT).await.expect("the client node answers");
    println!(
        "flood into the UDP forward: {} datagrams too large dropped, {} carried",
        status.forwards.udp_dropped_too_large, status.forwards.udp_datagrams_from_clients
    );
    assert!(status.forwards.udp_dropped_too_large > 0);
    assert_eq!(dig_through_forward(), "10.1.2.3");

    // A thousand connections held open at once: the serving node serves at most a
    // connection's stream limit at a time, and stays up.
    let served_before = net
        .status(SERVER)
        .await
        .expect("status")
        .forwards
        .tcp_streams_served;
    let mut held = Vec::new();
    for _ in 0..1_000 {
        let mut stream = TcpStream::connect(echo_addr).await.expect("connect");
        let _ = stream.write_all(b"x").await;
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let serving = net.status(SERVER).await.expect("the serving node answers");
    let served = serving.forwards.tcp_streams_served - served_before;
    println!("1,000 connections held open: the serving node serves {served} of them at once");
    assert!(
        (200..=256).contains(&served),
        "{served} streams served at once (a connection carries at most 256)"
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        echo_through(echo_addr, b"still there".to_vec())
            .await
            .expect("echo"),
        b"still there"
    );

    // Removing a forward closes its port; removing an expose refuses new flows.
    succeeded(&cli(
        &net,
        CLIENT,
        &["forward", "rm", &format!("{LOCAL}:7001")],
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(format!("{LOCAL}:7001")).await.is_err());
    succeeded(&cli(&net, SERVER, &["expose", "rm", "echo"]));
    let after = echo_through(echo_addr, b"gone".to_vec()).await;
    assert!(
        after.as_ref().map_or(true, |echoed| echoed.is_empty()),
        "{after:?}"
    );

    for i in 0..net.members.len() {
        assert!(net.is_running(i), "member {i} is still up");
    }
    echo_task.abort();
    reset_task.abort();
    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
