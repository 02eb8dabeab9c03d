//! The forward service on a simulated PlanetLab network behind the secure layer: UDP flows from
//! local clients on many nodes reach services exposed on others, direct or relayed, and every
//! answer finds its client; a name that is not exposed is refused, and idle flows close.

mod common;

use std::net::SocketAddr;

use hopwise_proto::forward::{ForwardEvent, Forwards, Kind, QueryOutcome, Refusal};
use hopwise_proto::service::{ServiceHandle, ports};
use hopwise_proto::{Duration, Instant};
use hopwise_sim::{SimConfig, Simulation};

fn at(secs: i64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

fn events(sim: &mut Simulation, node: usize, handle: ServiceHandle<Forwards>) -> Vec<ForwardEvent> {
    sim.with_service(node, handle, |forwards| {
        std::iter::from_fn(|| forwards.poll_event()).collect()
    })
    .unwrap_or_default()
}

#[test]
fn flows_reach_exposed_services_and_their_answers_find_each_client() {
    let config = SimConfig {
        secure: true,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(common::bundled_planetlab(), &config);
    sim.run_until(at(40));
    let n = sim.len();
    let handles: Vec<ServiceHandle<Forwards>> = (0..n)
        .map(|i| {
            let forwards = Forwards::new(hopwise_proto::service::BASE_DATA, i as u64);
            sim.register(i, ports::FORWARD, forwards).unwrap().unwrap()
        })
        .collect();
    let target: SocketAddr = "127.0.0.1:53".parse().unwrap();
    // Every fifth node serves `dns`; every other node forwards to one of them, from two clients.
    let servers: Vec<usize> = (0..n).step_by(5).collect();
    for &server in &servers {
        sim.with_service(server, handles[server], |f| {
            f.expose("dns", Kind::Udp, target)
        })
        .unwrap()
        .unwrap();
    }
    let mut flows = Vec::new();
    let mut relayed = 0;
    for client in (0..n).filter(|i| i % 5 != 0) {
        let server = servers[client % servers.len()];
        let server_id = sim.id_of(server);
        relayed += usize::from(!sim.node(client).unwrap().route(&server_id).unwrap().direct);
        let forward = sim
            .with_service(client, handles[client], |f| {
                f.open_forward(server_id, "dns")
            })
            .unwrap()
            .unwrap();
        for port in [5000, 5001] {
            let local = SocketAddr::from(([127, 0, 0, 1], port));
            let query = format!("{client}:{port}").into_bytes();
            let now = sim.now();
            sim.with_service(client, handles[client], |f| {
                f.send(now, forward, local, &query)
            })
            .unwrap()
            .unwrap();
            flows.push((client, server, forward, local, query));
        }
    }
    sim.run_until(at(45));
    // Each serving node sees one flow per client, opens it towards the target, and answers.
    let mut opened = 0;
    for &server in &servers {
        for event in events(&mut sim, server, handles[server]) {
            match event {
                ForwardEvent::OpenTarget { target: t, .. } => {
                    assert_eq!(t, target);
                    opened += 1;
                }
                ForwardEvent::ToTarget { flow, data } => {
                    let now = sim.now();
                    let answer = [b"answer to ".as_slice(), &data].concat();
                    sim.with_service(server, handles[server], |f| {
                        f.from_target(now, flow, &answer)
                    });
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(opened, flows.len());
    sim.run_until(at(50));
    let mut received: std::collections::HashMap<usize, Vec<ForwardEvent>> = Default::default();
    for client in (0..n).filter(|i| i % 5 != 0) {
        received.insert(client, events(&mut sim, client, handles[client]));
    }
    let mut answered = 0;
    for &(client, _, forward, local, ref query) in &flows {
        let expected = ForwardEvent::ToClient {
            forward,
            client: local,
            data: [b"answer to ".as_slice(), query].concat(),
        };
        assert!(
            received[&client].contains(&expected),
            "{client}: {:?}",
            received[&client]
        );
        answered += 1;
    }
    println!(
        "{answered} flows from {} clients answered by {} servers, {relayed} forwards relayed",
        flows.len() / 2,
        servers.len()
    );
    assert!(relayed > 0, "some forwards cross a relay");

    // A name nobody exposes: the query says so, and a flow to it is refused.
    let (client, server) = (1, servers[0]);
    let now = sim.now();
    let server_id = sim.id_of(server);
    let token = sim
        .with_service(client, handles[client], |f| {
            f.query(now, server_id, Kind::Udp, "ssh")
        })
        .unwrap()
        .unwrap();
    sim.run_until(at(52));
    assert!(
        events(&mut sim, client, handles[client]).contains(&ForwardEvent::Answered {
            token,
            outcome: QueryOutcome::Refused(Refusal::NotExposed)
        })
    );
    // Nothing carries the flows for 40 s: both sides close them.
    sim.run_until(at(52 + 40));
    for (i, handle) in handles.iter().enumerate() {
        let open = sim.with_service(i, *handle, |f| f.open_flows()).unwrap();
        assert_eq!(open, (0, 0), "node {i}");
    }
}
