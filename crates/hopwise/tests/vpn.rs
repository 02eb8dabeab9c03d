//! The VPN on real processes: four `hopwise node --vpn` processes, each in a network namespace
//! of its own, joined by veth pairs to a bridge, with the testbed's emulated latencies and one
//! pair blocked from talking directly by nftables. Real tools go over the VPN: ping and
//! ping -6 between every pair (the blocked one through a relay), iperf3 TCP and UDP, curl to
//! an HTTP server, dig to the DNS responder; a relay is killed under 20 pings per second.
//! Needs root; elsewhere it says so and passes.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use hopwise::testnet::{Testnet, alias_of};
use serde_json::Value;

use common::netns::{Namespaces, run, try_run, unavailable};
use common::{binary, cities, scratch, spawn};

const NETWORK_KEY: [u8; 32] = [31; 32];
const SUBNET: u8 = 31;
/// Members 0 and 1 cannot reach each other directly.
const BLOCKED: (usize, usize) = (0, 1);

/// The VPN addresses of every member, once each has claimed its IPv4 address.
async fn vpn_addresses(net: &Testnet) -> Vec<(Ipv6Addr, Ipv4Addr)> {
    for _ in 0..60 {
        let mut addresses = Vec::new();
        for i in 0..net.members.len() {
            let vpn = net.status(i).await.ok().and_then(|s| s.vpn);
            if let Some(vpn) = vpn
                && let Some(ipv4) = vpn.ipv4
            {
                addresses.push((vpn.ipv6.parse().unwrap(), ipv4.parse().unwrap()));
            }
        }
        if addresses.len() == net.members.len() {
            return addresses;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("not every member claimed an IPv4 address within 30 s");
}

/// Packets ping sent and got answers for, from its summary line.
fn ping_counts(output: &str) -> (u32, u32) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in {output}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

fn ping(namespaces: &Namespaces, from: usize, to: IpAddr, extra: &[&str]) -> (bool, String) {
    let to = to.to_string();
    let family = if to.contains(':') { "-6" } else { "-4" };
    let mut args = vec!["ping", family, "-n", "-c", "3", "-i", "0.2", "-W", "3"];
    args.extend_from_slice(extra);
    args.push(&to);
    try_run(&namespaces.exec(from, &args))
}

fn iperf3_json(namespaces: &Namespaces, from: usize, args: &[&str]) -> Value {
    let mut line = vec!["iperf3", "-J", "-t", "2"];
    line.extend_from_slice(args);
    let output = run(&namespaces.exec(from, &line));
    serde_json::from_slice(&output.stdout).expect("iperf3's JSON")
}

#[tokio::test]
async fn four_namespaces_reach_each_other_over_the_vpn_with_real_tools() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: the VPN namespace test {why}");
        return;
    }
    let namespaces = Namespaces::create("v", SUBNET, 4);
    let matrix = cities(4);
    let dir = scratch("vpn");
    let mut net = Testnet::create_on(binary(), &matrix, &dir, &NETWORK_KEY, &namespaces.addresses)
        .expect("create");
    for (member, host) in net.members.iter_mut().zip(&namespaces.hosts) {
        member.netns = Some(host.clone());
        member.options.push("--vpn".into());
    }
    // The blocked member joins through another than the first.
    net.members[BLOCKED.1].seed = Some(net.members[2].listen);
    let rules = dir.join("block.nft");
    let blocked = namespaces.addresses[BLOCKED.1];
    std::fs::write(
        &rules,
        format!(
            "table inet hopwise_test_block {{\n\
             chain input {{ type filter hook input priority 0; ip saddr {blocked} drop; }}\n\
             chain output {{ type filter hook output priority 0; ip daddr {blocked} drop; }}\n}}\n"
        ),
    )
    .unwrap();
    run(&namespaces.exec(BLOCKED.0, &["nft", "-f", rules.to_str().unwrap()]));
    for i in 0..net.members.len() {
        net.launch(i).expect("launch");
    }
    net.wait_for_routes(Duration::from_secs(60))
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", net.log(0)));
    let addresses = vpn_addresses(&net).await;
    println!("VPN addresses: {addresses:?}");

    // ping and ping -6 between every pair.
    for from in 0..4 {
        for to in (0..4).filter(|to| *to != from) {
            let (ipv6, ipv4) = addresses[to];
            for address in [IpAddr::V6(ipv6), IpAddr::V4(ipv4)] {
                let (ok, output) = ping(&namespaces, from, address, &[]);
                assert!(ok, "{from} -> {to} ({address}): {output}");
                assert_eq!(ping_counts(&output), (3, 3), "{from} -> {to}: {output}");
            }
        }
    }
    // The blocked pair goes through a relay.
    let trace = net.trace(BLOCKED.0, BLOCKED.1).await.expect("trace");
    assert_eq!(trace.outbound.len(), 3, "{trace:?}");
    let relay = net
        .index_of(&trace.outbound[1].node)
        .expect("a member relays");
    println!("{} -> {} relayed by {relay}", BLOCKED.0, BLOCKED.1);

    // iperf3 TCP and UDP across.
    let server = IpAddr::V4(addresses[2].1).to_string();
    let _iperf = spawn(&namespaces.exec(2, &["iperf3", "-s", "-B", &server]));
    let tcp = iperf3_json(&namespaces, 0, &["-c", &server]);
    let tcp_bps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let udp = iperf3_json(&namespaces, 0, &["-c", &server, "-u", "-b", "20M"]);
    let udp_loss = udp["end"]["sum"]["lost_percent"].as_f64().unwrap();
    let udp_bytes = udp["end"]["sum"]["bytes"].as_f64().unwrap();
    println!(
        "iperf3 0 -> 2: TCP {:.0} Mbit/s; UDP at 20 Mbit/s lost {udp_loss:.2}%",
        tcp_bps / 1e6
    );
    assert!(tcp_bps > 1e6, "TCP {tcp_bps} bit/s");
    assert!(udp_bytes > 0.0 && udp_loss < 20.0, "UDP lost {udp_loss}%");

    // curl to an HTTP server on another member's VPN addresses.
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let blob: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(site.join("blob"), &blob).unwrap();
    let site_dir = site.to_str().unwrap();
    let _http = spawn(&namespaces.exec(
        3,
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "::",
            "--directory",
            site_dir,
            "8080",
        ],
    ));
    for address in [format!("[{}]", addresses[3].0), addresses[3].1.to_string()] {
        let url = format!("http://{address}:8080/blob");
        let fetched = run(&namespaces.exec(1, &["curl", "-sSfg", "--max-time", "20", &url]));
        assert!(
            fetched.stdout == blob,
            "curl {url}: {} bytes",
            fetched.stdout.len()
        );
    }

    // dig answers an alias from the DNS responder on the VPN addresses.
    let alias = alias_of(&net.members[2].name).unwrap();
    let name = format!("{alias}.hopwise");
    for server in [addresses[0].0.to_string(), addresses[0].1.to_string()] {
        let at = format!("@{server}");
        for (kind, expected) in [
            ("AAAA", addresses[2].0.to_string()),
            ("A", addresses[2].1.to_string()),
        ] {
            let (ok, answer) = try_run(&namespaces.exec(
                0,
                &["dig", "+short", "+time=3", "+tries=2", &at, &name, kind],
            ));
            assert!(
                ok && answer.trim() == expected,
                "dig {at} {name} {kind}: {answer:?}"
            );
        }
    }
    let (_, unknown) = try_run(&namespaces.exec(
        0,
        &[
            "dig",
            "+time=3",
            &format!("@{}", addresses[0].1),
            "nobody.hopwise",
        ],
    ));
    assert!(unknown.contains("NXDOMAIN"), "{unknown}");

    // Oversized packets get Packet Too Big / Fragmentation Needed (the interface MTU is
    // raised so that they reach the node), and packets to no member are counted.
    run(&namespaces.exec(0, &["ip", "link", "set", "hopwise0", "mtu", "1500"]));
    let mtu = net.status(0).await.unwrap().vpn.unwrap().mtu;
    for address in [IpAddr::V6(addresses[2].0), IpAddr::V4(addresses[2].1)] {
        let (_, output) = ping(&namespaces, 0, address, &["-s", "1400", "-M", "do"]);
        assert!(
            output.contains(&format!("mtu = {mtu}")) || output.contains(&format!("mtu={mtu}")),
            "{output}"
        );
    }
    run(&namespaces.exec(
        0,
        &["ip", "link", "set", "hopwise0", "mtu", &mtu.to_string()],
    ));
    let nobody = {
        let mut octets = addresses[0].0.octets();
        octets[8..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let (ok, _) = ping(&namespaces, 0, nobody, &["-c", "1", "-W", "1"]);
    assert!(!ok, "nobody answers for {nobody}");
    let vpn = net.status(0).await.unwrap().vpn.unwrap();
    println!("member 0's VPN: {vpn:?}");
    assert!(vpn.icmp_errors >= 2 && vpn.dropped_no_route >= 1, "{vpn:?}");
    assert!(vpn.packets_sent > 0 && vpn.packets_received > 0, "{vpn:?}");

    // A relay killed under 20 pings per second costs at most a second of them.
    let target = addresses[BLOCKED.1].1.to_string();
    let stream = Command::new("ip")
        .args(["netns", "exec", &namespaces.hosts[BLOCKED.0]])
        .args(["ping", "-n", "-i", "0.05", "-c", "160", "-W", "1", &target])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.kill(relay).await;
    let output = tokio::task::spawn_blocking(move || stream.wait_with_output())
        .await
        .unwrap()
        .expect("ping output");
    let (sent, received) = ping_counts(&String::from_utf8_lossy(&output.stdout));
    println!(
        "relay {relay} killed under 20 pings/s: {} of {sent} lost",
        sent - received
    );
    assert!(
        sent - received <= 20,
        "{} of {sent} pings lost",
        sent - received
    );

    // --vpn-allow: member 1, restarted to take only the remaining relay's packets.
    let other = if relay == 2 { 3 } else { 2 };
    net.terminate(BLOCKED.1).await;
    let allowed = alias_of(&net.members[other].name).unwrap();
    net.members[BLOCKED.1]
        .options
        .extend(["--vpn-allow".to_string(), allowed]);
    net.launch(BLOCKED.1).expect("relaunch");
    let running = [BLOCKED.0, BLOCKED.1, other];
    net.wait_for_routes_among(&running, Duration::from_secs(30))
        .await
        .expect("routes");
    let target = IpAddr::V6(addresses[BLOCKED.1].0);
    let mut answered = false;
    for _ in 0..20 {
        if ping(&namespaces, other, target, &["-c", "1", "-W", "1"]).0 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(answered, "the allowed member reaches {target}");
    let (ok, _) = ping(&namespaces, BLOCKED.0, target, &[]);
    assert!(!ok, "a member not allowed is refused");
    let refused = net
        .status(BLOCKED.1)
        .await
        .unwrap()
        .vpn
        .unwrap()
        .dropped_not_allowed;
    assert!(refused >= 3, "{refused} refused");

    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
