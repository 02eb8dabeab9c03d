//! Untrusted bytes: every decoder and the node itself must drop garbage without panicking,
//! without unbounded allocation, and must count what they drop.

use std::net::SocketAddr;

use hopwise_proto::routing::{Metric, Seqno};
use hopwise_proto::tags::TagFilter;
use hopwise_proto::wire::{
    Data, DataBody, GossipEntry, LinkOp, MAX_GOSSIP, MAX_ROUTE_ENTRIES, MAX_TRACE_HOPS, Message,
    Packet, Probe, RelayHeader, RouteEntry, RouteUpdate, SeqnoRequest, Trace, TraceHop, WireCoord,
    rewrite_for_next_hop,
};
use hopwise_proto::{Config, Input, Instant, Node, NodeId, Output};
use proptest::prelude::*;

fn wire_coord() -> impl Strategy<Value = WireCoord> {
    (-1e4f32..1e4, -1e4f32..1e4, 0f32..1e3, 0f32..2.0).prop_map(|(x1, x2, height, error)| {
        WireCoord {
            x1,
            x2,
            height,
            error,
        }
    })
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    // Untagged nodes (no filter on the wire) as well as tagged ones.
    let tags = || prop_oneof![Just(TagFilter::NONE), (1u64..).prop_map(TagFilter)];
    let entry = (
        any::<[u8; NodeId::LEN]>(),
        socket_addr(),
        wire_coord(),
        tags(),
    )
        .prop_map(|(id, addr, coord, tags)| GossipEntry {
            id: NodeId::from_bytes(id),
            addr,
            coord,
            tags,
        });
    let probe = (
        any::<u32>(),
        any::<u64>(),
        wire_coord(),
        prop::collection::vec(entry, 0..=MAX_GOSSIP),
        tags(),
    )
        .prop_map(|(seq, timestamp_us, coord, gossip, tags)| Probe {
            seq,
            timestamp_us,
            coord,
            gossip,
            tags,
        });
    let node_id = || any::<[u8; NodeId::LEN]>().prop_map(NodeId::from_bytes);
    let route_entry = (node_id(), any::<u16>(), any::<u16>(), node_id()).prop_map(
        |(destination, seqno, metric, zone)| RouteEntry {
            destination,
            seqno: Seqno(seqno),
            metric: Metric(metric),
            zone: Some(zone),
        },
    );
    // Flat or zoned: every entry of one update carries a zone, or none does.
    let route_update = (
        any::<bool>(),
        prop::collection::vec(route_entry, 0..=MAX_ROUTE_ENTRIES),
    )
        .prop_map(|(zoned, mut entries)| {
            if !zoned {
                entries.iter_mut().for_each(|e| e.zone = None);
            }
            RouteUpdate { entries }
        });
    let link_op = prop_oneof![
        Just(LinkOp::Open),
        Just(LinkOp::Accept),
        Just(LinkOp::Refuse),
        Just(LinkOp::Close)
    ];
    let body = prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(token, sent_us)| DataBody::Ping { token, sent_us }),
        (any::<u64>(), any::<u64>(), any::<u8>()).prop_map(|(token, sent_us, ping_hops)| {
            DataBody::Pong {
                token,
                sent_us,
                ping_hops,
            }
        }),
        prop::collection::vec(any::<u8>(), 0..1_000).prop_map(DataBody::Payload),
        prop::collection::vec(any::<u8>(), 0..1_000).prop_map(DataBody::Sealed),
        node_id().prop_map(|zone| DataBody::Register { zone }),
        node_id().prop_map(|target| DataBody::Lookup { target }),
        (node_id(), proptest::option::of(node_id()))
            .prop_map(|(target, zone)| DataBody::LookupReply { target, zone }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(0u8..=MAX_TRACE_HOPS as u8),
            prop::collection::vec((node_id(), any::<u32>()), 0..=MAX_TRACE_HOPS),
        )
            .prop_map(|(token, sent_us, outbound, hops)| {
                DataBody::Trace(Trace {
                    token,
                    sent_us,
                    outbound,
                    path: hops
                        .into_iter()
                        .map(|(node, rtt_us)| TraceHop { node, rtt_us })
                        .collect(),
                })
            }),
    ];
    let zones = (
        proptest::option::of(node_id()),
        proptest::option::of(node_id()),
    );
    let data = (node_id(), node_id(), any::<u8>(), any::<u8>(), zones, body).prop_map(
        |(source, destination, ttl, hops, (source_zone, destination_zone), body)| Data {
            source,
            destination,
            ttl,
            hops,
            source_zone,
            destination_zone,
            body,
        },
    );
    let message = prop_oneof![
        (any::<bool>(), probe).prop_map(|(request, probe)| if request {
            Message::ProbeRequest(probe)
        } else {
            Message::ProbeReply(probe)
        }),
        route_update.prop_map(Message::RouteUpdate),
        link_op.prop_map(Message::Link),
        (node_id(), any::<u16>(), any::<u8>()).prop_map(|(destination, seqno, hop_limit)| {
            Message::SeqnoRequest(SeqnoRequest {
                destination,
                seqno: Seqno(seqno),
                hop_limit,
            })
        }),
        data.prop_map(Message::Data),
    ];
    (node_id(), message).prop_map(|(sender, message)| Packet { sender, message })
}

fn fresh_node() -> Node {
    let mut node = Node::new(
        Config::new(NodeId::from_bytes([1; NodeId::LEN]), 5),
        Instant::ZERO,
    );
    drain(&mut node);
    node
}

fn drain(node: &mut Node) {
    while !matches!(node.poll_output(), Output::Timeout(_)) {}
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1500)) {
        let _ = Packet::parse(&data);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(kind in 0u8..9, body in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut data = vec![0x68, 1, kind, 0];
        data.extend_from_slice(&[9; NodeId::LEN]);
        data.extend_from_slice(&body);
        let _ = Packet::parse(&data);
    }

    #[test]
    fn valid_packets_round_trip(packet in packet()) {
        let bytes = packet.to_bytes();
        prop_assert_eq!(bytes.len(), packet.buffer_len());
        prop_assert_eq!(Packet::parse(&bytes), Ok(packet));
    }

    #[test]
    fn truncated_and_mutated_packets_are_rejected_or_decoded_without_panic(
        packet in packet(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let bytes = packet.to_bytes();
        let cut = cut.index(bytes.len());
        prop_assert!(Packet::parse(&bytes[..cut]).is_err());
        let mut mutated = bytes.clone();
        let at = flip.index(mutated.len());
        mutated[at] ^= xor;
        if let Ok(decoded) = Packet::parse(&mutated) {
            // Whatever decodes re-encodes to exactly the bytes it came from.
            prop_assert_eq!(decoded.to_bytes(), mutated);
        }
    }

    #[test]
    fn the_relay_fast_path_reads_and_rewrites_as_the_decoder_does(
        packet in packet(),
        relay in any::<[u8; NodeId::LEN]>().prop_map(NodeId::from_bytes),
    ) {
        let mut bytes = packet.to_bytes();
        let peeked = RelayHeader::peek(&bytes);
        let Message::Data(data) = packet.message else {
            prop_assert_eq!(peeked, None);
            return Ok(());
        };
        if !matches!(data.body, DataBody::Payload(_) | DataBody::Sealed(_)) {
            prop_assert_eq!(peeked, None);
            return Ok(());
        }
        prop_assert_eq!(peeked, Some(RelayHeader {
            sender: packet.sender,
            source: data.source,
            destination: data.destination,
            ttl: data.ttl,
            source_zone: data.source_zone,
            destination_zone: data.destination_zone,
        }));
        rewrite_for_next_hop(&mut bytes, relay);
        let relayed = Packet {
            sender: relay,
            message: Message::Data(Data {
                ttl: data.ttl.saturating_sub(1),
                hops: data.hops.saturating_add(1),
                ..data
            }),
        };
        prop_assert_eq!(bytes, relayed.to_bytes());
    }

    #[test]
    fn what_the_relay_fast_path_takes_the_decoder_takes_too(
        packet in packet(),
        flip in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = packet.to_bytes();
        let at = flip.index(bytes.len());
        bytes[at] ^= xor;
        for candidate in [&bytes[..], &bytes[..cut.index(bytes.len())]] {
            if let Some(header) = RelayHeader::peek(candidate) {
                let decoded = Packet::parse(candidate);
                prop_assert!(decoded.is_ok(), "peeked {:?} but the decoder says {:?}", header, decoded);
                let decoded = decoded.unwrap();
                let Message::Data(data) = decoded.message else {
                    return Err(TestCaseError::fail("peeked a packet that is no data"));
                };
                prop_assert_eq!((header.sender, header.destination, header.ttl), (decoded.sender, data.destination, data.ttl));
            }
        }
    }

    #[test]
    fn the_node_survives_well_formed_hostile_packets(packets in prop::collection::vec(packet(), 1..40)) {
        // Well-formed but arbitrary: pongs for pings never sent (with any timestamp), route
        // updates and link operations from strangers, data with any TTL.
        let mut node = fresh_node();
        let from: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        for (i, packet) in packets.iter().enumerate() {
            let data = packet.to_bytes();
            let now = Instant::from_micros(i as i64 * 1_000);
            node.handle_input(Input::Datagram { now, from, data: &data });
            drain(&mut node);
        }
        prop_assert_eq!(node.stats().datagrams_received, packets.len() as u64);
        prop_assert_eq!(node.stats().dropped_malformed, 0);
    }

    #[test]
    fn the_node_counts_and_survives_garbage(datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..40)) {
        let mut node = fresh_node();
        let from: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        let mut malformed = 0;
        for (i, data) in datagrams.iter().enumerate() {
            malformed += u64::from(Packet::parse(data).is_err());
            let now = Instant::from_micros(i as i64 * 1_000);
            node.handle_input(Input::Datagram { now, from, data });
            drain(&mut node);
        }
        prop_assert_eq!(node.stats().dropped_malformed, malformed);
        prop_assert_eq!(node.stats().datagrams_received, datagrams.len() as u64);
        prop_assert!(node.coordinate().x1.is_finite() && node.coordinate().height.is_finite());
    }
}

#[test]
fn unsolicited_replies_are_dropped_and_counted() {
    let mut node = fresh_node();
    let reply = Packet {
        sender: NodeId::from_bytes([2; NodeId::LEN]),
        message: Message::ProbeReply(Probe {
            seq: 77,
            timestamp_us: 0,
            coord: WireCoord {
                x1: 1.0,
                x2: 1.0,
                height: 1.0,
                error: 0.1,
            },
            gossip: Vec::new(),
            tags: TagFilter::NONE,
        }),
    };
    let data = reply.to_bytes();
    node.handle_input(Input::Datagram {
        now: Instant::from_micros(10),
        from: "192.0.2.1:1".parse().unwrap(),
        data: &data,
    });
    assert_eq!(node.stats().dropped_unexpected, 1);
    assert_eq!(node.neighbours().count(), 0);
    assert!(
        node.known_nodes().is_empty(),
        "an unsolicited reply teaches nothing"
    );
}

#[test]
fn pongs_with_impossible_timestamps_are_dropped_and_counted() {
    let mut node = fresh_node();
    let now = Instant::from_micros(5_000_000);
    for sent_us in [u64::MAX, 1 << 63, 6_000_000] {
        let pong = Packet {
            sender: NodeId::from_bytes([2; NodeId::LEN]),
            message: Message::Data(Data {
                source: NodeId::from_bytes([2; NodeId::LEN]),
                destination: NodeId::from_bytes([1; NodeId::LEN]),
                ttl: 5,
                hops: 1,
                source_zone: None,
                destination_zone: None,
                body: DataBody::Pong {
                    token: 1,
                    sent_us,
                    ping_hops: 1,
                },
            }),
        };
        let data = pong.to_bytes();
        let from = "192.0.2.1:1".parse().unwrap();
        node.handle_input(Input::Datagram {
            now,
            from,
            data: &data,
        });
        loop {
            match node.poll_output() {
                Output::Timeout(_) => break,
                Output::Event(hopwise_proto::Event::PingReply { .. }) => {
                    panic!("a pong sent at {sent_us} µs became a ping reply")
                }
                _ => {}
            }
        }
    }
    assert_eq!(node.stats().dropped_unexpected, 3);
}
