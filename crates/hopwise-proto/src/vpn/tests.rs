//! The VPN service between members that hand each other's transmits straight over.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::packet::tests::{echo_v6, udp_v4};
use super::*;

const MTU: usize = 1_349;
/// Every member has a route to every other.
const ROUTED: Routed<'static> = &|_| true;

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n, 0, 0, 0, 0, 0, 0, n])
}

fn vpn(n: u8, allow: Option<Vec<NodeId>>) -> Vpn {
    let config = VpnConfig {
        ipv6_prefix: Ipv6Prefix::from_network_key(&[7; 32]),
        ipv4_prefix: Ipv4Prefix::DEFAULT,
        allow,
        mtu: MTU,
    };
    let mut vpn = Vpn::new(id(n), config, u64::from(n));
    vpn.set_ipv4(Ipv4Addr::new(100, 64, 0, n));
    vpn
}

/// Hands every transmit of `from` to its destination among `members` (by index + 1 = id).
fn carry(members: &mut [Vpn], from: usize, now: Instant) -> usize {
    let mut carried = 0;
    while let Some(transmit) = members[from].poll_transmit() {
        assert_eq!(transmit.port, ports::VPN);
        let to = members
            .iter()
            .position(|m| m.local == transmit.to)
            .expect("a member");
        let sender = members[from].local;
        members[to].accept(now, sender, &transmit.data);
        carried += 1;
    }
    carried
}

fn addr6(members: &[Vpn], i: usize) -> Ipv6Addr {
    members[i].ipv6()
}

#[test]
fn an_ipv6_packet_reaches_the_node_its_address_names() {
    let mut members = [vpn(1, None), vpn(2, None)];
    let packet = echo_v6(addr6(&members, 0), addr6(&members, 1), 200);
    members[0].route_packet(Instant::ZERO, &packet, ROUTED);
    assert_eq!(carry(&mut members, 0, Instant::ZERO), 1);
    assert_eq!(members[1].poll_packet(), Some(packet.clone()));
    assert_eq!(members[0].stats().bytes_sent, 200);
    assert_eq!(members[1].stats().packets_received, 1);
    // The largest packet goes through; a larger one is answered with Packet Too Big.
    let largest = echo_v6(addr6(&members, 0), addr6(&members, 1), MTU);
    members[0].route_packet(Instant::ZERO, &largest, ROUTED);
    assert_eq!(carry(&mut members, 0, Instant::ZERO), 1);
    assert_eq!(members[1].poll_packet().map(|p| p.len()), Some(MTU));
    let too_big = echo_v6(addr6(&members, 0), addr6(&members, 1), MTU + 1);
    members[0].route_packet(Instant::ZERO, &too_big, ROUTED);
    assert_eq!(carry(&mut members, 0, Instant::ZERO), 0);
    let error = members[0].poll_packet().expect("an ICMP error");
    let header = Header::parse(&error).unwrap();
    assert!(header.icmp_error);
    assert_eq!(header.destination, IpAddr::V6(addr6(&members, 0)));
    assert_eq!(
        header.source,
        IpAddr::V6(addr6(&members, 1)),
        "from the destination"
    );
    assert_eq!(&error[44..48], &(MTU as u32).to_be_bytes());
    assert_eq!(members[0].stats().icmp_errors, 1);
}

#[test]
fn bad_packets_from_the_interface_are_counted() {
    let mut members = [vpn(1, None), vpn(2, None)];
    let me = addr6(&members, 0);
    members[0].route_packet(Instant::ZERO, &[0x60, 1, 2], ROUTED);
    members[0].route_packet(
        Instant::ZERO,
        &echo_v6(me, "2001:db8::1".parse().unwrap(), 80),
        ROUTED,
    );
    members[0].route_packet(Instant::ZERO, &echo_v6(me, me, 80), ROUTED);
    let outside = udp_v4(
        Ipv4Addr::new(100, 64, 0, 1),
        Ipv4Addr::new(8, 8, 8, 8),
        60,
        true,
    );
    members[0].route_packet(Instant::ZERO, &outside, ROUTED);
    let big = udp_v4(
        Ipv4Addr::new(100, 64, 0, 1),
        Ipv4Addr::new(100, 64, 0, 2),
        MTU + 1,
        false,
    );
    members[0].route_packet(Instant::ZERO, &big, ROUTED);
    let stats = *members[0].stats();
    assert_eq!(stats.dropped_malformed, 1);
    assert_eq!(stats.dropped_unknown_destination, 3);
    // May be fragmented, so there is nothing to answer; the interface MTU prevents it anyway.
    assert_eq!(stats.dropped_too_big, 1);
    assert_eq!(carry(&mut members, 0, Instant::ZERO), 0);
    // A member the overlay has no route to.
    let packet = echo_v6(me, addr6(&members, 1), 80);
    members[0].route_packet(Instant::ZERO, &packet, &|_| false);
    assert_eq!(members[0].stats().dropped_no_route, 1);
    assert_eq!(carry(&mut members, 0, Instant::ZERO), 0);
}

#[test]
fn ipv4_is_resolved_once_held_meanwhile_and_checked_on_arrival() {
    let mut members = [vpn(1, None), vpn(2, None), vpn(3, None)];
    let (a, b) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
    let now = Instant::ZERO;
    for _ in 0..3 {
        members[0].route_packet(now, &udp_v4(a, b, 100, true), ROUTED);
    }
    assert_eq!(members[0].poll_lookup(), Some(b));
    assert_eq!(members[0].poll_lookup(), None, "one lookup per address");
    assert_eq!(carry(&mut members, 0, now), 0);
    members[0].resolved_with(now, b, Some(id(2)), ROUTED);
    assert_eq!(carry(&mut members, 0, now), 3);
    // The receiver checks that the source address is the sender's claim.
    assert_eq!(members[1].poll_lookup(), Some(a));
    assert_eq!(members[1].poll_packet(), None);
    members[1].resolved_with(now, a, Some(id(1)), ROUTED);
    assert_eq!((0..3).filter_map(|_| members[1].poll_packet()).count(), 3);
    // A member that sends from another member's address is caught.
    members[2].route_packet(now, &udp_v4(a, b, 100, true), ROUTED);
    members[2].resolved_with(now, b, Some(id(2)), ROUTED);
    assert_eq!(carry(&mut members, 2, now), 1);
    assert_eq!(members[1].poll_packet(), None);
    assert_eq!(members[1].stats().dropped_spoofed, 1);
    // Nobody claimed it: dropped, and not asked again for a while.
    let unclaimed = Ipv4Addr::new(100, 64, 0, 9);
    members[0].route_packet(now, &udp_v4(a, unclaimed, 100, true), ROUTED);
    assert_eq!(members[0].poll_lookup(), Some(unclaimed));
    members[0].resolved_with(now, unclaimed, None, ROUTED);
    members[0].route_packet(
        now + Duration::from_secs(1),
        &udp_v4(a, unclaimed, 100, true),
        ROUTED,
    );
    assert_eq!(members[0].poll_lookup(), None);
    assert_eq!(members[0].stats().dropped_unknown_destination, 2);
    members[0].route_packet(
        now + Duration::from_secs(6),
        &udp_v4(a, unclaimed, 100, true),
        ROUTED,
    );
    assert_eq!(
        members[0].poll_lookup(),
        Some(unclaimed),
        "the negative answer expired"
    );
}

#[test]
fn the_allow_list_and_spoofed_or_misaddressed_packets_are_refused() {
    let mut members = [vpn(1, None), vpn(2, Some(vec![id(3)])), vpn(3, None)];
    let now = Instant::ZERO;
    let to_b = |members: &[Vpn], from: usize| echo_v6(addr6(members, from), addr6(members, 1), 80);
    let packet = to_b(&members, 0);
    members[0].route_packet(now, &packet, ROUTED);
    carry(&mut members, 0, now);
    assert_eq!(members[1].poll_packet(), None);
    assert_eq!(members[1].stats().dropped_not_allowed, 1);
    let packet = to_b(&members, 2);
    members[2].route_packet(now, &packet, ROUTED);
    carry(&mut members, 2, now);
    assert_eq!(members[1].poll_packet(), Some(packet));
    // Straight into the service: from 3, claiming 1's address, or for someone else.
    let spoofed = to_b(&members, 0);
    members[1].accept(now, id(3), &spoofed);
    let misaddressed = echo_v6(addr6(&members, 2), addr6(&members, 0), 80);
    members[1].accept(now, id(3), &misaddressed);
    members[1].accept(now, id(3), &[0x45, 0, 0]);
    let stats = *members[1].stats();
    assert_eq!((stats.dropped_spoofed, stats.dropped_invalid), (1, 2));
    assert_eq!(members[1].poll_packet(), None);
}

#[test]
fn waiting_packets_are_bounded_and_given_up() {
    let mut member = vpn(1, None);
    let a = Ipv4Addr::new(100, 64, 0, 1);
    for n in 0..20 {
        member.route_packet(
            Instant::ZERO,
            &udp_v4(a, Ipv4Addr::new(100, 64, 1, 1), 60 + n, true),
            ROUTED,
        );
    }
    assert_eq!(member.stats().dropped_unresolved, 12);
    // The lookup is never answered: the next packet after the timeout drops the old ones.
    let later = Instant::ZERO + LOOKUP_TIMEOUT + Duration::from_millis(1);
    member.route_packet(
        later,
        &udp_v4(a, Ipv4Addr::new(100, 64, 2, 2), 60, true),
        ROUTED,
    );
    assert_eq!(member.stats().dropped_unresolved, 20);
}

proptest::proptest! {
    /// Whatever the interface or a member hands over, the service counts or carries it and
    /// never panics; every packet is accounted for exactly once.
    #[test]
    fn arbitrary_packets_are_carried_or_counted(
        packets in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1_500), 1..20),
        version in 0u8..16,
    ) {
        let mut member = vpn(1, None);
        for mut packet in packets {
            if let Some(first) = packet.first_mut() {
                *first = (version << 4) | (*first & 0x0f);
            }
            member.route_packet(Instant::ZERO, &packet, ROUTED);
            member.accept(Instant::ZERO, id(2), &packet);
        }
        while member.poll_transmit().is_some() {}
        while member.poll_packet().is_some() {}
    }
}

#[test]
fn made_up_source_addresses_start_no_more_lookups_than_packets_are_held() {
    let mut member = vpn(1, None);
    let me = Ipv4Addr::new(100, 64, 0, 1);
    for n in 0..1_000u32 {
        let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 65, 0, 0)) + n);
        member.accept(Instant::ZERO, id(2), &udp_v4(source, me, 60, true));
    }
    let lookups = std::iter::from_fn(|| member.poll_lookup()).count();
    assert_eq!(lookups, MAX_WAITING);
    assert_eq!(
        member.stats().dropped_unresolved,
        1_000 - MAX_WAITING as u64
    );
}
