//! The key-value store and aliases on real `hopwise node` processes (127.8.0.0/16): reads on
//! every node, owner and size errors, a watch, an ephemeral entry that leaves with its writer,
//! anycast aliases, two replicas killed, and a restart of the whole network from `--data-dir`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use hopwise::api::{KvEntry, Request, Response};
use hopwise::client::call;
use hopwise::testnet::{Testnet, alias_of};
use hopwise_proto::kv::key_hash;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::{binary, cities, scratch};

const NETWORK_KEY: [u8; 32] = [8; 32];
const SETTLE: Duration = Duration::from_secs(2);

async fn set(
    api: SocketAddr,
    key: &str,
    sub: &str,
    value: &str,
    ttl_s: Option<f64>,
    ephemeral: bool,
) -> Response {
    let request = Request::KvSet {
        key: key.into(),
        sub: sub.into(),
        value: Some(value.into()),
        value_b64: None,
        ttl_s,
        ephemeral,
    };
    call(api, &request).await.expect("the API answers")
}

async fn try_get(api: SocketAddr, key: &str) -> Result<Vec<KvEntry>, Response> {
    let request = Request::KvGet {
        key: key.into(),
        sub: None,
    };
    match call(api, &request).await.expect("the API answers") {
        Response::KvGet { entries } => Ok(entries),
        other => Err(other),
    }
}

async fn get(api: SocketAddr, key: &str) -> Vec<KvEntry> {
    match try_get(api, key).await {
        Ok(entries) => entries,
        Err(other) => panic!("kv_get of {key} answered {other:?}"),
    }
}

fn values(entries: &[KvEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| (e.sub.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn error_of(response: &Response) -> &str {
    match response {
        Response::Error { error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Reads `key` on `api` until `check` holds or `within` passes; how long it took.
async fn read_until(
    api: SocketAddr,
    key: &str,
    within: Duration,
    check: impl Fn(&[KvEntry]) -> bool,
) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    while started.elapsed() < within {
        // A read may time out while dead replicas are still in the reader's view.
        if try_get(api, key).await.is_ok_and(|entries| check(&entries)) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

#[tokio::test]
async fn ten_nodes_share_a_store_with_aliases_watches_leases_and_restarts() {
    let matrix = cities(10);
    let dir = scratch("kv-ten");
    let mut net = Testnet::create(binary(), &matrix, &dir, &NETWORK_KEY, 8).expect("create");
    // Two nodes claim one more name: an anycast alias.
    for (index, member) in net.members.iter_mut().enumerate() {
        member.options.push("--data-dir".into());
        member
            .options
            .push(dir.join(format!("node{index}.data")).display().to_string());
        if index == 2 || index == 7 {
            member
                .options
                .extend(["--alias".to_string(), "shared".to_string()]);
        }
    }
    for i in 0..net.members.len() {
        net.launch(i).expect("launch");
    }
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("routes");
    // Each store looks at its routes twice a second: let every view include every node.
    tokio::time::sleep(SETTLE).await;
    let api: Vec<SocketAddr> = net.members.iter().map(|m| m.api).collect();

    // A value set on one node is read on every other.
    assert!(matches!(
        set(api[0], "config", "n0", "hello", None, false).await,
        Response::KvSet { .. }
    ));
    assert!(matches!(
        set(api[3], "config", "n3", "world", None, false).await,
        Response::KvSet { .. }
    ));
    for (i, &node) in api.iter().enumerate().skip(1) {
        let read = values(&get(node, "config").await);
        assert_eq!(
            read,
            vec![("n0".into(), "hello".into()), ("n3".into(), "world".into())],
            "node {i}"
        );
    }

    // Bad input gets clear errors and stores nothing.
    let stolen = set(api[1], "config", "n0", "mine now", None, false).await;
    assert!(error_of(&stolen).contains("not the owner"), "{stolen:?}");
    let huge = set(api[1], "config", "big", &"x".repeat(1_025), None, false).await;
    assert!(error_of(&huge).contains("too large"), "{huge:?}");
    let long_key = set(api[1], &"k".repeat(256), "s", "v", None, false).await;
    assert!(error_of(&long_key).contains("too large"), "{long_key:?}");
    let bad_name = call(
        api[1],
        &Request::Resolve {
            name: "Not A Name".into(),
        },
    )
    .await
    .unwrap();
    assert!(
        error_of(&bad_name).contains("invalid alias"),
        "{bad_name:?}"
    );
    assert_eq!(values(&get(api[5], "config").await).len(), 2);

    // A watch prints a set, a del and an expiry.
    let mut watch = TcpStream::connect(api[5]).await.unwrap();
    watch
        .write_all(b"{\"action\":\"kv_watch\",\"key\":\"events\"}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(watch).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        set(api[2], "events", "a", "1", None, false).await,
        Response::KvSet { .. }
    ));
    assert!(matches!(
        call(
            api[2],
            &Request::KvDel {
                key: "events".into(),
                sub: "a".into()
            }
        )
        .await
        .unwrap(),
        Response::KvDel { .. }
    ));
    assert!(matches!(
        set(api[2], "events", "b", "2", Some(2.0), false).await,
        Response::KvSet { .. }
    ));
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["type"], "kv_event", "{line}");
        seen.push((
            event["event"].as_str().unwrap().to_string(),
            event["sub"].as_str().unwrap().to_string(),
        ));
    }
    let expected: Vec<(String, String)> =
        [("set", "a"), ("del", "a"), ("set", "b"), ("expire", "b")]
            .iter()
            .map(|(e, s)| (e.to_string(), s.to_string()))
            .collect();
    assert_eq!(seen, expected);

    // Aliases: every city resolves to its node; an alias claimed by two resolves to the nearer.
    let from = 0;
    let knoxville = alias_of(&net.members[4].name).unwrap();
    match call(
        api[from],
        &Request::Resolve {
            name: knoxville.clone(),
        },
    )
    .await
    .unwrap()
    {
        Response::Resolve { nodes, .. } => {
            assert_eq!(nodes.len(), 1);
            assert_eq!(nodes[0].id, net.members[4].id.to_string());
        }
        other => panic!("resolve answered {other:?}"),
    }
    let nearer = if matrix.rtt_ms(from, 2) <= matrix.rtt_ms(from, 7) {
        2
    } else {
        7
    };
    match call(
        api[from],
        &Request::Resolve {
            name: "shared".into(),
        },
    )
    .await
    .unwrap()
    {
        Response::Resolve { nodes, .. } => {
            assert_eq!(nodes.len(), 2, "{nodes:?}");
            assert_eq!(nodes[0].id, net.members[nearer].id.to_string(), "{nodes:?}");
        }
        other => panic!("resolve answered {other:?}"),
    }
    match call(
        api[from],
        &Request::Ping {
            node: "shared".into(),
        },
    )
    .await
    .unwrap()
    {
        Response::Trace(report) => {
            assert_eq!(report.destination, net.members[nearer].id.to_string());
            assert_eq!(report.alias.as_ref().map(|a| a.claimants), Some(2));
        }
        other => panic!("ping by alias answered {other:?}"),
    }

    // An ephemeral entry is gone within 10 s of its writer's Ctrl-C.
    assert!(matches!(
        set(api[6], "presence", "n6", "here", None, true).await,
        Response::KvSet { .. }
    ));
    assert_eq!(values(&get(api[1], "presence").await).len(), 1);
    net.terminate(6).await;
    let gone = read_until(api[1], "presence", Duration::from_secs(10), |e| {
        e.is_empty()
    })
    .await;
    println!("ephemeral entry gone {gone:?} after its writer stopped");
    assert!(
        gone.is_some(),
        "the ephemeral entry outlived its writer by 10 s"
    );

    // Killing two of a key's replicas leaves it readable.
    let point = key_hash(b"config");
    let mut by_distance: Vec<usize> = (0..net.members.len()).filter(|&i| i != 6).collect();
    by_distance.sort_by_key(|&i| u64::from_be_bytes(*net.members[i].id.as_bytes()) ^ point);
    let (first, second) = (by_distance[0], by_distance[1]);
    net.kill(first).await;
    net.kill(second).await;
    let reader = (0..net.members.len())
        .find(|i| ![first, second, 6].contains(i))
        .unwrap();
    // A read whose two nearest replicas are the dead ones times out (3 s) and suspects them;
    // the next goes to the third once the reader's view has dropped them (0.1 to 5.6 s in
    // local runs). Node 6, stopped just before, may have been the key's third replica: it
    // handed the key to its successor as it left, or the key would be on the two killed
    // nodes alone. 20 s leaves room for a loaded machine; the time is printed below.
    let readable = read_until(api[reader], "config", Duration::from_secs(20), |e| {
        e.len() == 2
    })
    .await;
    println!("config readable {readable:?} after killing replicas {first} and {second}");
    assert!(
        readable.is_some(),
        "the key was lost with two of its replicas"
    );

    // Every node stopped and restarted from its data directory serves every entry again.
    net.stop().await;
    for i in 0..net.members.len() {
        net.launch(i).expect("relaunch");
    }
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("routes after the restart");
    tokio::time::sleep(SETTLE).await;
    for (i, &node) in api.iter().enumerate() {
        let ok = read_until(node, "config", Duration::from_secs(10), |e| {
            values(e) == vec![("n0".into(), "hello".into()), ("n3".into(), "world".into())]
        })
        .await;
        assert!(
            ok.is_some(),
            "node {i} does not serve config after the restart: {:?}",
            get(node, "config").await
        );
    }
    assert!(
        get(api[0], "presence").await.is_empty(),
        "ephemeral entries are not kept"
    );
    net.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
