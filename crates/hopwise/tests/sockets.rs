//! Datagram sockets of the embedding API between two nodes run in this process on real UDP
//! sockets (subnet 127.10): a datagram as large as the node's path carries arrives whole, one
//! sent to an alias reaches its claimant, and a larger one is refused with an error at the
//! sender.

mod common;

use std::time::Duration;

use hopwise::node_command::{self, NodeArgs};
use hopwise::runner::SocketError;
use hopwise_proto::e2e::SendError;

use common::scratch;

const PORT: u16 = 7100;

#[tokio::test]
async fn a_datagram_of_the_path_limit_arrives_and_a_larger_one_is_refused() {
    let dir = scratch("sockets");
    std::fs::create_dir_all(&dir).unwrap();
    let network_key = dir.join("network.key");
    hopwise::keys::save_network_key(&[10; 32], &network_key).unwrap();
    let args = |host: u8, seed: Option<u8>| NodeArgs {
        network_key_file: Some(network_key.clone()),
        listen: Some(format!("127.10.0.{host}:4000").parse().unwrap()),
        api: Some(format!("127.10.0.{host}:4001").parse().unwrap()),
        seed: seed
            .map(|s| format!("127.10.0.{s}:4000").parse().unwrap())
            .into_iter()
            .collect(),
        ..NodeArgs::default()
    };
    let a = node_command::start(NodeArgs {
        alias: vec!["sockets-a".into()],
        ..args(2, None)
    })
    .await
    .expect("start a");
    let b = node_command::start(args(3, Some(2)))
        .await
        .expect("start b");
    let (mut to_a, to_b) = (a.bind(PORT).await.unwrap(), b.bind(PORT).await.unwrap());
    let largest = 1_349; // what a 1,500-byte path carries (the default --mtu)
    let data: Vec<u8> = (0..largest).map(|i| (i % 251) as u8).collect();
    // The first datagram waits for the end-to-end handshake, which waits for a route.
    let mut received = None;
    for _ in 0..40 {
        let _ = to_b.send_to(a.id(), PORT, &data).await;
        if let Ok(Some(datagram)) =
            tokio::time::timeout(Duration::from_millis(500), to_a.recv_from()).await
        {
            received = Some(datagram);
            break;
        }
    }
    let received = received.expect("a datagram of the path limit arrives");
    assert_eq!((received.from, received.data), (b.id(), data));
    // By alias: the nearest claimant, looked up in the store (the claim may still be on its
    // way when the first datagram went through).
    // Copies of the first datagram, sent again while the handshake was under way, may still
    // be arriving: they are skipped.
    let mut by_alias = None;
    'sending: for _ in 0..40 {
        if to_b
            .send_to_name("sockets-a", PORT, b"by name")
            .await
            .is_ok()
        {
            while let Ok(Some(datagram)) =
                tokio::time::timeout(Duration::from_millis(500), to_a.recv_from()).await
            {
                if datagram.data == b"by name" {
                    by_alias = Some(datagram);
                    break 'sending;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let by_alias = by_alias.expect("a datagram sent to the alias arrives");
    assert_eq!(
        (by_alias.from, by_alias.data),
        (b.id(), b"by name".to_vec())
    );
    assert!(
        to_b.send_to_name("nobody-claims-this", PORT, b"x")
            .await
            .is_err()
    );
    let too_large = vec![0; largest + 1];
    assert_eq!(
        to_b.send_to(a.id(), PORT, &too_large).await,
        Err(SocketError::Send(SendError::TooLarge {
            len: largest + 1,
            max: largest
        }))
    );
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
