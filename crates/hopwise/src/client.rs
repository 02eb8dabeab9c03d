//! Client subcommands (`hopwise status`, `peers`, `routes`, `coords`, `ping`, `trace`, `kv`,
//! `resolve`, `expose`, `forward`, `pub`, `sub`): one request to a local node's control API,
//! printed for people (or as JSON with `--json`); `kv watch` and `sub` stream until
//! interrupted, and `pub` without a message publishes each line of standard input.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::api::{Request, Response, TraceReport};

/// Appends one formatted line to a `String`.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        writeln!($out, $($arg)*).expect("writing to a String");
    }};
}

#[derive(Args)]
pub struct ClientArgs {
    /// The node's control API.
    #[arg(long, default_value = "127.0.0.1:4001")]
    pub api: SocketAddr,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TargetArgs {
    /// Node id (or a unique prefix of a known one), or an alias (the nearest claimant).
    pub node: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// The node's id, address, coordinate, counters and drops.
    Status(ClientArgs),
    /// Routing links and measured neighbours.
    Peers(ClientArgs),
    /// Every destination's next hop and expected round trip.
    Routes(ClientArgs),
    /// This node's coordinate and every known node's.
    Coords(ClientArgs),
    /// Round trip to a node through the overlay, with the path taken.
    Ping(TargetArgs),
    /// Every hop to a node and back, with its latency.
    Trace(TargetArgs),
    /// The replicated key-value store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Every node that claims an alias, nearest first.
    Resolve(ResolveArgs),
    /// Services this node publishes for forwards from other nodes.
    #[command(subcommand)]
    Expose(ExposeCommand),
    /// Local addresses whose flows go to a service another node exposes (as `ssh -L`).
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// Publishes MESSAGE on TOPIC, or every line of standard input when MESSAGE is absent.
    Pub(PubArgs),
    /// Prints every message of TOPIC, one line each, until interrupted.
    Sub(SubArgs),
}

#[derive(Args)]
pub struct PubArgs {
    pub topic: String,
    pub message: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args)]
pub struct SubArgs {
    pub topic: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
pub enum ExposeCommand {
    /// Publishes UDP service NAME at TARGET, an address on this node's side (127.0.0.1:53).
    Udp {
        name: String,
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publishes TCP service NAME at TARGET, an address on this node's side (127.0.0.1:80).
    Tcp {
        name: String,
        target: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The services this node exposes.
    List(ClientArgs),
    /// Withdraws service NAME.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum ForwardCommand {
    /// Listens for UDP on LISTEN (an address, or a port on 127.0.0.1) and carries each
    /// client's flow to SERVICE, NODE/NAME (NODE an id or an alias).
    Udp {
        listen: String,
        service: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Listens for TCP on LISTEN and carries each connection to SERVICE, NODE/NAME.
    Tcp {
        listen: String,
        service: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The forwards this node runs.
    List(ClientArgs),
    /// Stops the forwards listening on LISTEN (only the udp or tcp one with --kind).
    Rm {
        listen: String,
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ExposeCommand {
    fn request(&self) -> (Request, &ClientArgs) {
        match self {
            Self::Udp {
                name,
                target,
                client,
            }
            | Self::Tcp {
                name,
                target,
                client,
            } => (
                Request::Expose {
                    kind: if matches!(self, Self::Udp { .. }) {
                        "udp"
                    } else {
                        "tcp"
                    }
                    .into(),
                    name: name.clone(),
                    target: target.clone(),
                },
                client,
            ),
            Self::List(client) => (Request::ExposeList, client),
            Self::Rm { name, client } => (Request::ExposeRm { name: name.clone() }, client),
        }
    }
}

impl ForwardCommand {
    fn request(&self) -> (Request, &ClientArgs) {
        match self {
            Self::Udp {
                listen,
                service,
                client,
            }
            | Self::Tcp {
                listen,
                service,
                client,
            } => (
                Request::Forward {
                    kind: if matches!(self, Self::Udp { .. }) {
                        "udp"
                    } else {
                        "tcp"
                    }
                    .into(),
                    listen: listen.clone(),
                    service: service.clone(),
                },
                client,
            ),
            Self::List(client) => (Request::ForwardList, client),
            Self::Rm {
                listen,
                kind,
                client,
            } => (
                Request::ForwardRm {
                    listen: listen.clone(),
                    kind: kind.clone(),
                },
                client,
            ),
        }
    }
}

#[derive(Args)]
pub struct ResolveArgs {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
pub enum KvCommand {
    /// Sets SUB of KEY to VALUE (only the node that wrote an entry may change it).
    Set {
        key: String,
        sub: String,
        value: String,
        /// Lifetime of the entry, e.g. 30s or 1h.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// The entry lives only as long as the node does.
        #[arg(long)]
        ephemeral: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every entry of KEY, or only SUB.
    Get {
        key: String,
        sub: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes SUB of KEY.
    Del {
        key: String,
        sub: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prints every set, del and expire of KEY, one line each, until interrupted.
    Watch {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl KvCommand {
    fn client(&self) -> &ClientArgs {
        match self {
            Self::Set { client, .. }
            | Self::Get { client, .. }
            | Self::Del { client, .. }
            | Self::Watch { client, .. } => client,
        }
    }

    fn request(&self) -> Request {
        match self {
            Self::Set {
                key,
                sub,
                value,
                ttl,
                ephemeral,
                ..
            } => Request::KvSet {
                key: key.clone(),
                sub: sub.clone(),
                value: Some(value.clone()),
                value_b64: None,
                ttl_s: ttl.map(|ttl| ttl.as_secs_f64()),
                ephemeral: *ephemeral,
            },
            Self::Get { key, sub, .. } => Request::KvGet {
                key: key.clone(),
                sub: sub.clone(),
            },
            Self::Del { key, sub, .. } => Request::KvDel {
                key: key.clone(),
                sub: sub.clone(),
            },
            Self::Watch { key, .. } => Request::KvWatch { key: key.clone() },
        }
    }
}

pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (request, args) = match &command {
        ClientCommand::Status(args) => (Request::Status, args),
        ClientCommand::Peers(args) => (Request::Peers, args),
        ClientCommand::Routes(args) => (Request::Routes, args),
        ClientCommand::Coords(args) => (Request::GetFullMap, args),
        ClientCommand::Ping(target) => (
            Request::Ping {
                node: target.node.clone(),
            },
            &target.client,
        ),
        ClientCommand::Trace(target) => (
            Request::Trace {
                node: target.node.clone(),
            },
            &target.client,
        ),
        ClientCommand::Kv(KvCommand::Watch { key, client }) => {
            let request = Request::KvWatch { key: key.clone() };
            return runtime.block_on(stream(client, &request, "watch"));
        }
        ClientCommand::Sub(sub) => {
            let request = Request::Subscribe {
                topic: sub.topic.clone(),
            };
            return runtime.block_on(stream(&sub.client, &request, "subscription"));
        }
        ClientCommand::Pub(publish) if publish.message.is_none() => {
            return runtime.block_on(publish_lines(publish));
        }
        ClientCommand::Pub(publish) => (
            Request::Publish {
                topic: publish.topic.clone(),
                message: publish.message.clone(),
                message_b64: None,
            },
            &publish.client,
        ),
        ClientCommand::Kv(kv) => (kv.request(), kv.client()),
        ClientCommand::Resolve(resolve) => (
            Request::Resolve {
                name: resolve.name.clone(),
            },
            &resolve.client,
        ),
        ClientCommand::Expose(expose) => expose.request(),
        ClientCommand::Forward(forward) => forward.request(),
    };
    let response = runtime.block_on(call(args.api, &request))?;
    let mut out = String::new();
    if args.json {
        outln!(out, "{}", serde_json::to_string_pretty(&response)?);
        return emit(&out);
    }
    if let ClientCommand::Coords(_) = command {
        let own = runtime.block_on(call(args.api, &Request::GetLocation))?;
        print_response(&mut out, &own, false);
    }
    print_response(
        &mut out,
        &response,
        matches!(command, ClientCommand::Trace(_)),
    );
    emit(&out)?;
    if response.error_text().is_some() {
        bail!("the node refused the request");
    }
    Ok(())
}

/// Writes `text` to standard output. A reader that went away (`hopwise status | head -1`) is
/// not an error: the command ends quietly, as Unix tools do.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

/// Sends a streaming request (`kv_watch`, `subscribe`) and prints what comes until the node
/// or the user ends it.
async fn stream(client: &ClientArgs, request: &Request, what: &str) -> anyhow::Result<()> {
    let api = client.api;
    let stream = TcpStream::connect(api)
        .await
        .with_context(|| format!("connecting to the node's API at {api} (is the node running?)"))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response: Response =
            serde_json::from_str(&line).with_context(|| format!("reading the event {line:?}"))?;
        let mut out = String::new();
        if client.json {
            outln!(out, "{line}");
        } else {
            print_response(&mut out, &response, false);
        }
        emit(&out)?;
        if response.error_text().is_some() {
            bail!("the node refused the {what}");
        }
    }
    Ok(())
}

/// Publishes each line of standard input on the topic, over one connection.
async fn publish_lines(publish: &PubArgs) -> anyhow::Result<()> {
    let api = publish.client.api;
    let stream = TcpStream::connect(api)
        .await
        .with_context(|| format!("connecting to the node's API at {api} (is the node running?)"))?;
    let (read, mut write) = stream.into_split();
    let mut answers = BufReader::new(read).lines();
    // The command does nothing else meanwhile, so reading standard input may block.
    for message in std::io::BufRead::lines(std::io::stdin().lock()) {
        let message = message.context("reading standard input")?;
        let mut line = serde_json::to_vec(&Request::Publish {
            topic: publish.topic.clone(),
            message: Some(message),
            message_b64: None,
        })?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let answer = answers
            .next_line()
            .await?
            .context("the node closed the connection")?;
        let response: Response = serde_json::from_str(&answer)
            .with_context(|| format!("reading the answer {answer:?}"))?;
        let mut out = String::new();
        if publish.client.json {
            outln!(out, "{answer}");
        } else {
            print_response(&mut out, &response, false);
        }
        emit(&out)?;
        if response.error_text().is_some() {
            bail!("the node refused the message");
        }
    }
    Ok(())
}

/// Sends one request and reads its answer.
pub async fn call(api: SocketAddr, request: &Request) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(api)
        .await
        .with_context(|| format!("connecting to the node's API at {api} (is the node running?)"))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str(&answer).with_context(|| format!("reading the answer {answer:?}"))
}

fn print_response(out: &mut String, response: &Response, hop_by_hop: bool) {
    match response {
        Response::Status(status) => {
            outln!(out, "id          {}", status.id);
            outln!(out, "listen      {}", status.listen);
            outln!(out, "uptime      {:.0} s", status.uptime_s);
            let loc = &status.location;
            outln!(
                out,
                "coordinate  ({:.1}, {:.1}) ms + height {:.1} ms, error {:.2}",
                loc.x1 * 1000.0,
                loc.x2 * 1000.0,
                loc.height * 1000.0,
                loc.pos_err
            );
            outln!(
                out,
                "known {} · neighbours {} · routing links {} · routes {}",
                status.known_nodes,
                status.neighbours,
                status.routing_links,
                status.routes
            );
            outln!(
                out,
                "received {} datagrams ({} bytes) · sent {} ({} bytes)",
                status.datagrams_received,
                status.bytes_received,
                status.datagrams_sent,
                status.bytes_sent
            );
            outln!(
                out,
                "dropped: insecure {} · malformed {} · unexpected {} · no route {} · ttl expired {}",
                status.dropped_insecure,
                status.dropped_malformed,
                status.dropped_unexpected,
                status.dropped_no_route,
                status.dropped_ttl_expired
            );
            outln!(
                out,
                "handshakes: completed {} · failed {} · refused {}",
                status.handshakes_completed,
                status.handshakes_failed,
                status.handshakes_refused
            );
            outln!(
                out,
                "data: relayed {} · delivered {}",
                status.data_relayed,
                status.data_delivered
            );
            let e2e = &status.end_to_end;
            outln!(
                out,
                "end-to-end: sessions {} · payloads sent {} · received {} · handshakes \
                 completed {} (re-keys {}), in progress {}, failed {}, refused {}, timed out {}",
                e2e.sessions,
                e2e.payloads_sent,
                e2e.payloads_received,
                e2e.handshakes_completed,
                e2e.rekeys,
                e2e.handshakes_in_progress,
                e2e.handshakes_failed,
                e2e.handshakes_refused,
                e2e.handshakes_timed_out
            );
            outln!(
                out,
                "end-to-end dropped: bad tag {} · replay {} · unknown port {} · no session {} \
                 · malformed {} · unexpected {} · unsent {}",
                e2e.dropped_bad_tag,
                e2e.dropped_replayed,
                e2e.dropped_unknown_port,
                e2e.dropped_no_session,
                e2e.dropped_malformed,
                e2e.dropped_unexpected,
                e2e.dropped_unsent
            );
            let kv = &status.kv;
            outln!(
                out,
                "kv: {} keys, {} entries ({} bytes) held · view {} · writes {} ok, {} failed · \
                 reads {} ok, {} failed, {} hedged",
                kv.keys,
                kv.entries,
                kv.bytes,
                kv.view,
                kv.writes_ok,
                kv.writes_failed,
                kv.reads_ok,
                kv.reads_failed,
                kv.hedged_reads
            );
            outln!(
                out,
                "kv refused: not owner {} · store full {} · rate {} · forged {} · malformed {}",
                kv.refused_not_owner,
                kv.refused_full,
                kv.refused_rate,
                kv.dropped_forged,
                kv.dropped_malformed
            );
            let pubsub = &status.pubsub;
            outln!(
                out,
                "pubsub: {} subscriptions, {} publications, {} trees, rendezvous for {} · \
                 published {} · delivered {} · forwarded {} · repairs {} · nacks {} · moves {} · \
                 lost {} · duplicates {} · refused {} · rate limited {} · malformed {}",
                pubsub.subscriptions,
                pubsub.publications,
                pubsub.trees,
                pubsub.rendezvous_topics,
                pubsub.published,
                pubsub.delivered,
                pubsub.forwarded,
                pubsub.repairs_sent,
                pubsub.nacks_sent,
                pubsub.upstream_moves,
                pubsub.lost,
                pubsub.duplicates,
                pubsub.refused,
                pubsub.rate_limited,
                pubsub.dropped_malformed
            );
            if let Some(vpn) = &status.vpn {
                outln!(
                    out,
                    "vpn: {} · {} · mtu {} · sent {} packets ({} bytes) · received {} packets \
                     ({} bytes) · ICMP errors {}",
                    vpn.ipv6,
                    vpn.ipv4.as_deref().unwrap_or("no IPv4 yet"),
                    vpn.mtu,
                    vpn.packets_sent,
                    vpn.bytes_sent,
                    vpn.packets_received,
                    vpn.bytes_received,
                    vpn.icmp_errors
                );
                outln!(
                    out,
                    "vpn dropped: malformed {} · unknown destination {} · no route {} · too big {} · \
                     unresolved {} · not allowed {} · spoofed {} · invalid {} · interface full {}",
                    vpn.dropped_malformed,
                    vpn.dropped_unknown_destination,
                    vpn.dropped_no_route,
                    vpn.dropped_too_big,
                    vpn.dropped_unresolved,
                    vpn.dropped_not_allowed,
                    vpn.dropped_spoofed,
                    vpn.dropped_invalid,
                    vpn.dropped_interface_full
                );
            }
        }
        Response::Peers { peers } => {
            outln!(
                out,
                "{:<16}  {:<22}  {:<9}  {:>9}",
                "id",
                "address",
                "kind",
                "rtt ms"
            );
            for peer in peers {
                let rtt = peer.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1}"));
                outln!(
                    out,
                    "{:<16}  {:<22}  {:<9}  {rtt:>9}",
                    peer.id,
                    peer.addr,
                    peer.kind
                );
            }
        }
        Response::Routes { routes } => {
            outln!(
                out,
                "{:<16}  {:<16}  {:>9}  direct",
                "destination",
                "next hop",
                "rtt ms"
            );
            for route in routes {
                outln!(
                    out,
                    "{:<16}  {:<16}  {:>9.1}  {}",
                    route.destination,
                    route.next_hop,
                    route.metric_ms,
                    if route.direct { "yes" } else { "" }
                );
            }
        }
        Response::Location { loc } => outln!(
            out,
            "this node   ({:.1}, {:.1}) ms + height {:.1} ms, error {:.2}",
            loc.x1 * 1000.0,
            loc.x2 * 1000.0,
            loc.height * 1000.0,
            loc.pos_err
        ),
        Response::FullMap { nodes } | Response::RecentNodes { nodes } => {
            for node in nodes {
                let loc = &node.location;
                outln!(
                    out,
                    "{}  ({:.1}, {:.1}) ms + height {:.1} ms, error {:.2}  {}:{}",
                    node.id,
                    loc.x1 * 1000.0,
                    loc.x2 * 1000.0,
                    loc.height * 1000.0,
                    loc.pos_err,
                    node.ip,
                    node.port
                );
            }
        }
        Response::NodeInfo { info } => outln!(out, "{} at {}:{}", info.id, info.ip, info.port),
        Response::Trace(report) => print_trace(out, report, hop_by_hop),
        Response::KvSet { version } | Response::KvDel { version } => {
            outln!(out, "ok (version {version})");
        }
        Response::KvGet { entries } => {
            for entry in entries {
                outln!(
                    out,
                    "{}  {}  (writer {}, version {})",
                    entry.sub,
                    entry.value.as_deref().unwrap_or("<binary>"),
                    short(&entry.writer),
                    entry.version
                );
            }
        }
        Response::KvEvent(event) => outln!(
            out,
            "{} {} {}{}  (writer {}, version {})",
            event.event,
            event.key,
            event.entry.sub,
            event
                .entry
                .value
                .as_deref()
                .filter(|_| event.event == "set")
                .map_or(String::new(), |v| format!(" = {v}")),
            short(&event.entry.writer),
            event.entry.version
        ),
        Response::Resolve { name, nodes } => {
            if nodes.is_empty() {
                outln!(out, "no node claims {name}");
            }
            for node in nodes {
                let rtt = node.rtt_ms.map_or("-".into(), |ms| format!("{ms:.1} ms"));
                let how = if node.measured {
                    "measured"
                } else {
                    "predicted"
                };
                outln!(out, "{}  {rtt} ({how})", node.id);
            }
        }
        Response::Exposed(service) => outln!(
            out,
            "exposed {} service {} at {}",
            service.kind,
            service.name,
            service.target
        ),
        Response::ExposeList { exposed } => {
            for service in exposed {
                outln!(
                    out,
                    "{}  {}  {}",
                    service.kind,
                    service.name,
                    service.target
                );
            }
        }
        Response::Unexposed { name } => outln!(out, "{name} is no longer exposed"),
        Response::Forwarding(forward) => outln!(
            out,
            "forwarding {} {} to {} (node {})",
            forward.kind,
            forward.listen,
            forward.service,
            forward.node
        ),
        Response::ForwardList { forwards } => {
            for forward in forwards {
                outln!(
                    out,
                    "{}  {}  {}  (node {})",
                    forward.kind,
                    forward.listen,
                    forward.service,
                    short(&forward.node)
                );
            }
        }
        Response::Unforwarded { listen, removed } => {
            outln!(out, "stopped {removed} forward(s) on {listen}")
        }
        Response::Published { topic, seq } => outln!(out, "published {topic} #{seq}"),
        Response::Subscribed { topic } => eprintln!("subscribed to {topic}"),
        Response::Message(message) => {
            let text = String::from_utf8_lossy(&message.bytes()).into_owned();
            let source = message.source.get(..8).unwrap_or(&message.source);
            outln!(out, "{} {source} #{}: {text}", message.topic, message.seq)
        }
        Response::Lost {
            topic,
            source,
            count,
        } => outln!(
            out,
            "{topic} {}: {count} message(s) lost",
            source.get(..8).unwrap_or(source)
        ),
        Response::Error { error } | Response::Failure { error, .. } => eprintln!("error: {error}"),
    }
}

fn print_trace(out: &mut String, report: &TraceReport, hop_by_hop: bool) {
    let path = |steps: &[crate::api::TraceStep]| {
        steps
            .iter()
            .map(|s| short(&s.node))
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    if let Some(alias) = &report.alias {
        outln!(
            out,
            "{} is claimed by {} node(s); using the nearest, {}",
            alias.name,
            alias.claimants,
            report.destination
        );
    }
    outln!(
        out,
        "{} ms to {} (out {} hops, back {} hops)",
        format_args!("{:.1}", report.rtt_ms),
        report.destination,
        report.outbound.len().saturating_sub(1),
        report.inbound.len().saturating_sub(1)
    );
    if !hop_by_hop {
        outln!(out, "path out:  {}", path(&report.outbound));
        outln!(out, "path back: {}", path(&report.inbound));
        return;
    }
    for (label, steps) in [("out", &report.outbound), ("back", &report.inbound)] {
        outln!(out, "{label}:");
        for pair in steps.windows(2) {
            let rtt = pair[0]
                .rtt_ms
                .map_or("-".into(), |ms| format!("{ms:.1} ms"));
            outln!(
                out,
                "  {} -> {}  {rtt}",
                short(&pair[0].node),
                short(&pair[1].node)
            );
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
