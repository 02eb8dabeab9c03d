//! A client and a serving node that hand each other's transmits straight over.

use super::*;

const MAX_DATA: usize = 1_349;

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n, 0, 0, 0, 0, 0, 0, n])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

struct Pair {
    client: Forwards,
    server: Forwards,
}

impl Pair {
    fn new() -> Self {
        let mut server = Forwards::new(MAX_DATA, 2);
        server
            .expose("dns", Kind::Udp, addr("127.0.0.1:53"))
            .unwrap();
        server
            .expose("web", Kind::Tcp, addr("127.0.0.1:80"))
            .unwrap();
        Self {
            client: Forwards::new(MAX_DATA, 1),
            server,
        }
    }

    /// Carries every pending transmit both ways until none is left; returns how many.
    fn carry(&mut self, now: Instant) -> usize {
        let mut carried = 0;
        loop {
            let mut moved = false;
            while let Some(transmit) = self.client.poll_transmit() {
                assert_eq!((transmit.to, transmit.port), (id(2), ports::FORWARD));
                self.server.receive(now, id(1), &transmit.data);
                moved = true;
                carried += 1;
            }
            while let Some(transmit) = self.server.poll_transmit() {
                assert_eq!((transmit.to, transmit.port), (id(1), ports::FORWARD));
                self.client.receive(now, id(2), &transmit.data);
                moved = true;
                carried += 1;
            }
            if !moved {
                return carried;
            }
        }
    }
}

fn events(forwards: &mut Forwards) -> Vec<ForwardEvent> {
    std::iter::from_fn(|| forwards.poll_event()).collect()
}

#[test]
fn each_local_client_gets_a_flow_of_its_own_and_the_answers_find_it() {
    let mut pair = Pair::new();
    let forward = pair.client.open_forward(id(2), "dns").unwrap();
    let (alice, bob) = (addr("127.0.0.1:5001"), addr("127.0.0.1:5002"));
    let now = Instant::ZERO;
    pair.client
        .send(now, forward, alice, b"from alice")
        .unwrap();
    pair.client.send(now, forward, bob, b"from bob").unwrap();
    pair.client
        .send(now, forward, alice, b"alice again")
        .unwrap();
    pair.carry(now);
    let served = events(&mut pair.server);
    let target = addr("127.0.0.1:53");
    let (first, second) = (ServedFlow(1), ServedFlow(2));
    assert_eq!(
        served,
        [
            ForwardEvent::OpenTarget {
                flow: first,
                target
            },
            ForwardEvent::ToTarget {
                flow: first,
                data: b"from alice".to_vec()
            },
            ForwardEvent::OpenTarget {
                flow: second,
                target
            },
            ForwardEvent::ToTarget {
                flow: second,
                data: b"from bob".to_vec()
            },
            ForwardEvent::ToTarget {
                flow: first,
                data: b"alice again".to_vec()
            },
        ]
    );
    pair.server.from_target(now, second, b"to bob");
    pair.server.from_target(now, first, b"to alice");
    pair.carry(now);
    assert_eq!(
        events(&mut pair.client),
        [
            ForwardEvent::ToClient {
                forward,
                client: bob,
                data: b"to bob".to_vec()
            },
            ForwardEvent::ToClient {
                forward,
                client: alice,
                data: b"to alice".to_vec()
            },
        ]
    );
    assert_eq!(pair.client.stats().flows_forwarded, 2);
    assert_eq!(pair.server.stats().flows_served, 2);
    assert_eq!(pair.server.stats().bytes_to_targets, 29);
}

#[test]
fn idle_flows_close_on_both_sides_and_a_busy_one_stays() {
    let mut pair = Pair::new();
    let forward = pair.client.open_forward(id(2), "dns").unwrap();
    let (quiet, busy) = (addr("127.0.0.1:5001"), addr("127.0.0.1:5002"));
    let start = Instant::ZERO;
    pair.client.send(start, forward, quiet, b"q").unwrap();
    pair.client.send(start, forward, busy, b"b").unwrap();
    pair.carry(start);
    events(&mut pair.server);
    let mut now = start;
    while now < start + FLOW_IDLE + Duration::from_secs(2) {
        now += Duration::from_millis(500);
        pair.client.send(now, forward, busy, b"b").unwrap();
        pair.carry(now);
        pair.client.sweep(now);
        pair.server.sweep(now);
    }
    assert_eq!(pair.client.open_flows(), (0, 1));
    assert_eq!(pair.server.open_flows(), (1, 0));
    let closed: Vec<_> = events(&mut pair.server)
        .into_iter()
        .filter(|e| matches!(e, ForwardEvent::CloseTarget { .. }))
        .collect();
    assert_eq!(
        closed,
        [ForwardEvent::CloseTarget {
            flow: ServedFlow(1)
        }]
    );
    // Once everything is idle the service stops asking for timeouts.
    let later = now + FLOW_IDLE + Duration::from_secs(1);
    pair.client.sweep(later);
    pair.server.sweep(later);
    assert_eq!(pair.client.poll_timeout(), None);
    assert_eq!(pair.server.poll_timeout(), None);
}

#[test]
fn a_name_that_is_not_exposed_is_refused_and_the_client_is_told() {
    let mut pair = Pair::new();
    let now = Instant::ZERO;
    let queries = [
        (Kind::Udp, "dns", QueryOutcome::Exposed),
        (Kind::Tcp, "web", QueryOutcome::Exposed),
        (Kind::Udp, "web", QueryOutcome::Refused(Refusal::OtherKind)),
        (Kind::Tcp, "ssh", QueryOutcome::Refused(Refusal::NotExposed)),
    ];
    for (kind, name, outcome) in queries {
        let token = pair.client.query(now, id(2), kind, name).unwrap();
        pair.carry(now);
        assert_eq!(
            events(&mut pair.client),
            [ForwardEvent::Answered { token, outcome }],
            "{kind} {name}"
        );
    }
    // A flow to a name that is not exposed never reaches a target.
    let forward = pair.client.open_forward(id(2), "secret").unwrap();
    let client = addr("127.0.0.1:5001");
    pair.client
        .send(now, forward, client, b"let me in")
        .unwrap();
    pair.carry(now);
    assert_eq!(events(&mut pair.server), []);
    assert_eq!(
        events(&mut pair.client),
        [ForwardEvent::Refused {
            forward,
            client,
            refusal: Refusal::NotExposed
        }]
    );
    assert_eq!(pair.server.stats().refused_not_exposed, 1);
    assert_eq!(pair.client.open_flows(), (0, 0));
}

#[test]
fn an_unanswered_query_fails_after_its_timeout() {
    let mut client = Forwards::new(MAX_DATA, 1);
    let token = client
        .query(Instant::ZERO, id(9), Kind::Udp, "dns")
        .unwrap();
    let mut now = Instant::ZERO;
    while now <= Instant::ZERO + QUERY_TIMEOUT {
        now += Duration::from_millis(500);
        client.sweep(now);
    }
    assert_eq!(
        events(&mut client),
        [ForwardEvent::Answered {
            token,
            outcome: QueryOutcome::NoAnswer
        }]
    );
}

#[test]
fn unexposing_closes_its_flows_and_a_name_is_exposed_once() {
    let mut pair = Pair::new();
    assert_eq!(
        pair.server.expose("dns", Kind::Udp, addr("127.0.0.1:5353")),
        Err(ExposeError::AlreadyExposed { name: "dns".into() })
    );
    assert!(matches!(
        pair.server
            .expose("Bad Name", Kind::Udp, addr("127.0.0.1:1")),
        Err(ExposeError::InvalidName { .. })
    ));
    let forward = pair.client.open_forward(id(2), "dns").unwrap();
    pair.client
        .send(Instant::ZERO, forward, addr("127.0.0.1:5001"), b"x")
        .unwrap();
    pair.carry(Instant::ZERO);
    events(&mut pair.server);
    assert!(pair.server.unexpose("dns"));
    assert!(!pair.server.unexpose("dns"));
    assert_eq!(
        events(&mut pair.server),
        [ForwardEvent::CloseTarget {
            flow: ServedFlow(1)
        }]
    );
    assert_eq!(pair.server.exposed().count(), 1);
}

#[test]
fn sizes_and_counts_are_bounded_with_errors() {
    let mut pair = Pair::new();
    let forward = pair.client.open_forward(id(2), "dns").unwrap();
    let max = pair.client.max_payload(forward).unwrap();
    assert_eq!(max, MAX_DATA - wire::data_overhead(3));
    let client = addr("127.0.0.1:5001");
    assert_eq!(
        pair.client
            .send(Instant::ZERO, forward, client, &vec![0; max + 1]),
        Err(ForwardSendError::TooLarge { len: max + 1, max })
    );
    pair.client
        .send(Instant::ZERO, forward, client, &vec![0; max])
        .unwrap();
    pair.carry(Instant::ZERO);
    // An answer too large for the way back is dropped and counted.
    pair.server
        .from_target(Instant::ZERO, ServedFlow(1), &vec![0; MAX_DATA]);
    assert_eq!(pair.server.stats().dropped_too_large, 1);
    for port in 0..MAX_CLIENT_FLOWS as u16 {
        let client = SocketAddr::from(([127, 0, 0, 2], port));
        let _ = pair.client.send(Instant::ZERO, forward, client, b"x");
    }
    assert_eq!(
        pair.client
            .send(Instant::ZERO, forward, addr("127.0.0.3:1"), b"x"),
        Err(ForwardSendError::TooManyFlows)
    );
    pair.carry(Instant::ZERO);
    // The server serves at most its bound; another node's flow is refused as busy.
    assert_eq!(pair.server.open_flows().0, MAX_SERVED_FLOWS);
    let mut data = Vec::new();
    wire::Message::Data {
        flow: 1,
        name: "dns",
        payload: b"x",
    }
    .encode(&mut data);
    pair.server.receive(Instant::ZERO, id(3), &data);
    let refused = pair.server.poll_transmit().unwrap();
    assert_eq!(
        (refused.to, wire::decode(&refused.data)),
        (
            id(3),
            Some(wire::Message::Refused {
                flow: 1,
                refusal: Refusal::Busy
            })
        )
    );
    assert_eq!(pair.server.stats().refused_busy, 1);
    for n in 0..MAX_EXPOSED {
        let _ = pair
            .server
            .expose(&format!("s{n}"), Kind::Udp, addr("127.0.0.1:1"));
    }
    assert_eq!(
        pair.server
            .expose("one-more", Kind::Udp, addr("127.0.0.1:1")),
        Err(ExposeError::TooMany)
    );
}

#[test]
fn replies_from_a_node_the_flow_does_not_go_to_are_dropped() {
    let mut pair = Pair::new();
    let forward = pair.client.open_forward(id(2), "dns").unwrap();
    pair.client
        .send(Instant::ZERO, forward, addr("127.0.0.1:5001"), b"x")
        .unwrap();
    let transmit = pair.client.poll_transmit().unwrap();
    let Some(wire::Message::Data { flow, .. }) = wire::decode(&transmit.data) else {
        panic!("a data message");
    };
    let mut forged = Vec::new();
    wire::Message::Reply {
        flow,
        payload: b"forged",
    }
    .encode(&mut forged);
    pair.client.receive(Instant::ZERO, id(3), &forged);
    pair.client.receive(Instant::ZERO, id(2), &[0xff, 1, 2]);
    assert_eq!(events(&mut pair.client), []);
    assert_eq!(pair.client.stats().dropped_invalid, 2);
}
