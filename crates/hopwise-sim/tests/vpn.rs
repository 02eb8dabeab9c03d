//! The VPN service on every node of a simulated PlanetLab network, behind the secure layer:
//! IP packets reach the node their address names, through relays where the overlay relays,
//! and IPv4 addresses are claimed and resolved through the key-value store.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use hopwise_proto::kv::{KvError, KvEvent, OpId};
use hopwise_proto::service::{ServiceHandle, ports};
use hopwise_proto::vpn::{CLAIM_SUB, Ipv4Prefix, Ipv6Prefix, Vpn, VpnConfig, ipv4_key};
use hopwise_proto::{Duration, Instant};
use hopwise_sim::{SimConfig, Simulation};

const NETWORK_KEY: [u8; 32] = [5; 32];

fn at(secs: i64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

/// An ICMPv6 echo request of `len` bytes whose body carries `tag`.
fn echo(source: Ipv6Addr, destination: Ipv6Addr, len: usize, tag: u32) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&((len - 40) as u16).to_be_bytes());
    packet.extend_from_slice(&[58, 64]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(&[128, 0, 0, 0]);
    packet.extend_from_slice(&tag.to_be_bytes());
    packet.resize(len, 0x5a);
    packet
}

/// A routed 50-node secure network with the VPN on every node.
fn network() -> (Simulation, Vec<ServiceHandle<Vpn>>) {
    let config = SimConfig {
        secure: true,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(common::bundled_planetlab(), &config);
    sim.run_until(at(40));
    let handles = (0..sim.len())
        .map(|i| {
            let config = VpnConfig {
                ipv6_prefix: Ipv6Prefix::from_network_key(&NETWORK_KEY),
                ipv4_prefix: Ipv4Prefix::DEFAULT,
                allow: None,
                mtu: hopwise_proto::service::BASE_DATA,
            };
            let vpn = Vpn::new(sim.id_of(i), config, i as u64);
            sim.register(i, ports::VPN, vpn).unwrap().unwrap()
        })
        .collect();
    (sim, handles)
}

#[test]
fn packets_reach_the_node_their_address_names_direct_or_relayed() {
    let (mut sim, vpn) = network();
    let n = sim.len();
    let prefix = Ipv6Prefix::from_network_key(&NETWORK_KEY);
    let (mut sent, mut relayed) = (Vec::new(), 0);
    for a in 0..n {
        for b in [(a * 7 + 3) % n, (a * 13 + 11) % n] {
            if a == b {
                continue;
            }
            let tag = sent.len() as u32;
            let packet = echo(
                prefix.address_of(sim.id_of(a)),
                prefix.address_of(sim.id_of(b)),
                1_000,
                tag,
            );
            relayed += usize::from(!sim.node(a).unwrap().route(&sim.id_of(b)).unwrap().direct);
            sim.with_service_and_node(a, vpn[a], |vpn, node, now| {
                vpn.send_packet(now, &packet, node)
            });
            sent.push((b, packet));
        }
    }
    sim.run_until(at(45));
    let received: Vec<Vec<Vec<u8>>> = (0..n)
        .map(|b| {
            std::iter::from_fn(|| sim.with_service(b, vpn[b], Vpn::poll_packet).flatten()).collect()
        })
        .collect();
    let delivered = sent
        .iter()
        .filter(|(b, packet)| received[*b].contains(packet))
        .count();
    assert_eq!(
        received.iter().map(Vec::len).sum::<usize>(),
        sent.len(),
        "nothing else arrived"
    );
    println!(
        "{delivered} of {} packets delivered, {relayed} sent on relayed routes",
        sent.len()
    );
    assert_eq!(delivered, sent.len());
    assert!(relayed > 0, "some routes go through relays");
}

/// Runs the simulation until node `node`'s store answers `op` (at most 4 s).
fn answer(sim: &mut Simulation, node: usize, op: OpId) -> KvEvent {
    let until = sim.now() + Duration::from_secs(4);
    while sim.now() < until {
        let step = sim.now() + Duration::from_millis(10);
        sim.run_until(step);
        let answered = sim
            .kv_events(node)
            .into_iter()
            .find(|(_, event)| match event {
                KvEvent::Written { op: done, .. } | KvEvent::Read { op: done, .. } => *done == op,
                KvEvent::Watched { .. } => false,
            });
        if let Some((_, event)) = answered {
            return event;
        }
    }
    panic!("node {node}'s store did not answer");
}

/// Node `node` claims `address`, as the runner does; whether it got it.
fn claim(
    sim: &mut Simulation,
    vpn: &[ServiceHandle<Vpn>],
    node: usize,
    address: Ipv4Addr,
) -> Result<(), KvError> {
    let op = sim
        .with_kv(node, |kv, now| {
            kv.set(now, &ipv4_key(address), CLAIM_SUB, b"", None, true)
        })
        .unwrap()
        .unwrap();
    match answer(sim, node, op) {
        KvEvent::Written { result, .. } => result.map(|_| ()),
        other => panic!("{other:?}"),
    }?;
    sim.with_service(node, vpn[node], |vpn| vpn.set_ipv4(address));
    Ok(())
}

/// Answers node `node`'s lookups from the store, as the runner does.
fn resolve_lookups(sim: &mut Simulation, vpn: &[ServiceHandle<Vpn>], node: usize) -> usize {
    let mut resolved = 0;
    while let Some(address) = sim
        .with_service(node, vpn[node], Vpn::poll_lookup)
        .flatten()
    {
        let op = sim
            .with_kv(node, |kv, now| kv.get(now, &ipv4_key(address), None))
            .unwrap()
            .unwrap();
        let KvEvent::Read { result, .. } = answer(sim, node, op) else {
            panic!("a read answers a read");
        };
        let owner = result.unwrap().first().map(|entry| entry.writer);
        sim.with_service_and_node(node, vpn[node], |vpn, overlay, now| {
            vpn.resolved(now, address, owner, overlay);
        });
        resolved += 1;
    }
    resolved
}

#[test]
fn ipv4_addresses_are_claimed_once_and_resolved_through_the_store() {
    let (mut sim, vpn) = network();
    let prefix = Ipv4Prefix::DEFAULT;
    let (a, b) = (
        prefix.candidate(sim.id_of(1), 0),
        prefix.candidate(sim.id_of(3), 0),
    );
    assert_eq!(claim(&mut sim, &vpn, 1, a), Ok(()));
    assert_eq!(
        claim(&mut sim, &vpn, 2, a),
        Err(KvError::NotOwner),
        "the first claimant keeps it"
    );
    assert_eq!(claim(&mut sim, &vpn, 3, b), Ok(()));

    // Node 3 sends to 1's address: it asks who has it, and the packet waits meanwhile.
    let mut packet = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&b.octets());
    packet.extend_from_slice(&a.octets());
    packet.resize(60, 7);
    sim.with_service_and_node(3, vpn[3], |vpn, node, now| {
        vpn.send_packet(now, &packet, node)
    });
    assert_eq!(resolve_lookups(&mut sim, &vpn, 3), 1);
    sim.run_until(sim.now() + Duration::from_secs(1));
    // Node 1 checks that the source address is 3's before it takes the packet.
    assert_eq!(
        sim.with_service(1, vpn[1], Vpn::poll_packet).flatten(),
        None
    );
    assert_eq!(resolve_lookups(&mut sim, &vpn, 1), 1);
    assert_eq!(
        sim.with_service(1, vpn[1], Vpn::poll_packet).flatten(),
        Some(packet.clone())
    );

    // Node 2 lost the claim; a packet from it with 1's address as its source is refused.
    let mut spoofed = packet.clone();
    spoofed[12..16].copy_from_slice(&a.octets());
    spoofed[16..20].copy_from_slice(&b.octets());
    sim.with_service_and_node(2, vpn[2], |vpn, node, now| {
        vpn.send_packet(now, &spoofed, node)
    });
    assert_eq!(resolve_lookups(&mut sim, &vpn, 2), 1);
    sim.run_until(sim.now() + Duration::from_secs(1));
    assert_eq!(
        sim.with_service(3, vpn[3], Vpn::poll_packet).flatten(),
        None
    );
    let stats = *sim.service(3, vpn[3]).unwrap().stats();
    assert_eq!(stats.dropped_spoofed, 1, "{stats:?}");
}
