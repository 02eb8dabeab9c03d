//! Publish/subscribe on real `hopwise node` processes (127.15.0.0/16): subscribers on most
//! nodes get every message of two publishers in order, through the API and the CLI; messages
//! too large and bad topics are refused; killing nodes mid-stream loses nothing for the
//! subscribers that remain.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use hopwise::api::{Request, Response};
use hopwise::client::call;
use hopwise::testnet::Testnet;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use common::{binary, cities, scratch};

const NETWORK_KEY: [u8; 32] = [15; 32];
const TOPIC: &str = "news";

/// One delivered message: its source's id, sequence number and text.
type Got = (String, u64, String);

/// Subscribes through the API of `api` and hands every message to `got`, tagged with `who`.
async fn subscribe(api: SocketAddr, who: usize, got: mpsc::UnboundedSender<(usize, Got)>) {
    let stream = TcpStream::connect(api).await.expect("the API accepts");
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&Request::Subscribe {
        topic: TOPIC.into(),
    })
    .unwrap();
    line.push(b'\n');
    write.write_all(&line).await.unwrap();
    let mut lines = BufReader::new(read).lines();
    let first = lines.next_line().await.unwrap().expect("an answer");
    assert!(
        matches!(
            serde_json::from_str(&first),
            Ok(Response::Subscribed { .. })
        ),
        "{first}"
    );
    tokio::spawn(async move {
        let _keep_open = write;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Response>(&line) {
                Ok(Response::Message(message)) => {
                    let text = String::from_utf8(message.bytes()).unwrap();
                    let _ = got.send((who, (message.source, message.seq, text)));
                }
                other => panic!("subscriber {who} got {other:?}"),
            }
        }
    });
}

async fn publish(api: SocketAddr, message: &str) -> Response {
    let request = Request::Publish {
        topic: TOPIC.into(),
        message: Some(message.into()),
        message_b64: None,
    };
    call(api, &request).await.expect("the API answers")
}

/// Waits until every subscriber in `expected` has all of `counts` (messages per source) or
/// `within` passes; returns what each had, in arrival order.
async fn collect(
    received: &mut mpsc::UnboundedReceiver<(usize, Got)>,
    seen: &mut HashMap<usize, Vec<Got>>,
    expected: &[usize],
    counts: &HashMap<String, u64>,
    within: Duration,
) {
    let complete = |seen: &HashMap<usize, Vec<Got>>| {
        expected.iter().all(|who| {
            counts.iter().all(|(source, &count)| {
                seen.get(who).is_some_and(|got| {
                    got.iter().filter(|g| &g.0 == source).count() as u64 >= count
                })
            })
        })
    };
    let deadline = tokio::time::Instant::now() + within;
    while !complete(seen) {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some((who, got))) => seen.entry(who).or_default().push(got),
            _ => break,
        }
    }
}

/// Each subscriber had each source's messages exactly once, in order, as published.
fn check_in_order(
    seen: &HashMap<usize, Vec<Got>>,
    expected: &[usize],
    counts: &HashMap<String, u64>,
) {
    for who in expected {
        let got = seen.get(who).map(Vec::as_slice).unwrap_or_default();
        for (source, &count) in counts {
            let from_source: Vec<(u64, &str)> = got
                .iter()
                .filter(|g| &g.0 == source)
                .map(|g| (g.1, g.2.as_str()))
                .collect();
            let want: Vec<(u64, String)> = (1..=count)
                .map(|seq| (seq, format!("{}-{seq}", &source[..8])))
                .collect();
            let want: Vec<(u64, &str)> = want.iter().map(|(s, t)| (*s, t.as_str())).collect();
            assert_eq!(from_source, want, "subscriber {who}, source {source}");
        }
    }
}

#[tokio::test]
async fn ten_nodes_deliver_two_publishers_in_order_through_the_api_the_cli_and_node_loss() {
    let matrix = cities(10);
    let dir = scratch("pubsub-ten");
    let mut net = Testnet::create(binary(), &matrix, &dir, &NETWORK_KEY, 15).expect("create");
    for i in 0..net.members.len() {
        net.launch(i).expect("launch");
    }
    net.wait_for_routes(Duration::from_secs(45))
        .await
        .expect("routes");
    let api: Vec<SocketAddr> = net.members.iter().map(|m| m.api).collect();
    let id: Vec<String> = net.members.iter().map(|m| m.id.to_string()).collect();

    // Bad input is refused with a clear error.
    let too_large = "x".repeat(2_000);
    match publish(api[0], &too_large).await {
        Response::Error { error } => assert!(error.contains("larger than"), "{error}"),
        other => panic!("a message too large was answered {other:?}"),
    }
    let bad_topic = Request::Publish {
        topic: String::new(),
        message: Some("x".into()),
        message_b64: None,
    };
    match call(api[0], &bad_topic).await.unwrap() {
        Response::Error { error } => assert!(error.contains("topic"), "{error}"),
        other => panic!("an empty topic was answered {other:?}"),
    }

    // Nodes 1 to 9 but 4 subscribe through the API; node 3 also through `hopwise sub`.
    let subscribers: Vec<usize> = (1..10).filter(|&i| i != 4).collect();
    let (got, mut received) = mpsc::unbounded_channel();
    for &who in &subscribers {
        subscribe(api[who], who, got.clone()).await;
    }
    let mut cli_sub = tokio::process::Command::new(binary())
        .args(["sub", TOPIC, "--json", "--api", &api[3].to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hopwise sub starts");
    let mut cli_lines = BufReader::new(cli_sub.stdout.take().unwrap()).lines();

    // Node 0 publishes 40 messages at 20 a second, node 5 (a subscriber itself) 20.
    let mut counts: HashMap<String, u64> = HashMap::new();
    for round in 1..=40u64 {
        let message = format!("{}-{round}", &id[0][..8]);
        assert_eq!(
            publish(api[0], &message).await,
            Response::Published {
                topic: TOPIC.into(),
                seq: round
            }
        );
        if round % 2 == 0 {
            let seq = round / 2;
            let message = format!("{}-{seq}", &id[5][..8]);
            assert!(matches!(
                publish(api[5], &message).await,
                Response::Published { .. }
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counts.insert(id[0].clone(), 40);
    counts.insert(id[5].clone(), 20);
    let mut seen = HashMap::new();
    collect(
        &mut received,
        &mut seen,
        &subscribers,
        &counts,
        Duration::from_secs(15),
    )
    .await;
    check_in_order(&seen, &subscribers, &counts);

    // The CLI subscriber printed the same messages as JSON lines.
    let mut cli_got = 0;
    while cli_got < 60 {
        let line = tokio::time::timeout(Duration::from_secs(5), cli_lines.next_line())
            .await
            .expect("hopwise sub prints every message")
            .unwrap()
            .expect("a line");
        if let Ok(Response::Message(message)) = serde_json::from_str::<Response>(&line) {
            assert_eq!(message.topic, TOPIC);
            cli_got += 1;
        }
    }

    // `hopwise pub` without a message publishes each line of standard input.
    let mut cli_pub = tokio::process::Command::new(binary())
        .args(["pub", TOPIC, "--api", &api[0].to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hopwise pub starts");
    let mut stdin = cli_pub.stdin.take().unwrap();
    let lines: String = (41..=45)
        .map(|seq| format!("{}-{seq}\n", &id[0][..8]))
        .collect();
    stdin.write_all(lines.as_bytes()).await.unwrap();
    drop(stdin);
    assert!(cli_pub.wait().await.unwrap().success());
    counts.insert(id[0].clone(), 45);
    collect(
        &mut received,
        &mut seen,
        &subscribers,
        &counts,
        Duration::from_secs(10),
    )
    .await;
    check_in_order(&seen, &subscribers, &counts);

    // Two nodes die mid-stream (one not subscribed, which may forward); the subscribers that
    // remain still get every message in order, what the trees lost meanwhile repaired.
    for round in 46..=85u64 {
        if round == 50 {
            net.kill(4).await;
            net.kill(8).await;
        }
        let message = format!("{}-{round}", &id[0][..8]);
        assert!(matches!(
            publish(api[0], &message).await,
            Response::Published { .. }
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counts.insert(id[0].clone(), 85);
    let remaining: Vec<usize> = subscribers.iter().copied().filter(|&i| i != 8).collect();
    collect(
        &mut received,
        &mut seen,
        &remaining,
        &counts,
        Duration::from_secs(20),
    )
    .await;
    check_in_order(&seen, &remaining, &counts);
    // `hopwise status` counts them: node 0 published 85, node 1 had 85 + 20 delivered.
    let publisher = net.status(0).await.expect("status").pubsub;
    assert_eq!((publisher.published, publisher.publications), (85, 1));
    let subscriber = net.status(1).await.expect("status").pubsub;
    assert_eq!((subscriber.delivered, subscriber.subscriptions), (105, 1));
    cli_sub.kill().await.ok();
    net.stop().await;
}
