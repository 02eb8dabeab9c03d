//! The control API's TCP server: one task per connection, one JSON line per request.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use super::context::{ApiContext, ask, inspect, inspect_host};
use super::views::{
    self, AliasChoice, Location, MapNode, NodeInfo, Status, TraceReport, WallClock,
};
use super::{Request, Response, forward, kv, pubsub, reasons};
use crate::runner::ControlRequest;
use hopwise_proto::NodeId;

/// Longest request line accepted; longer ones are answered with an error and skipped.
const MAX_LINE: usize = 64 * 1024;
/// Connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 64;
/// `get_recent_nodes` without `max_nodes`, as in netloc.
const DEFAULT_RECENT_NODES: usize = 10;

pub async fn serve(listener: TcpListener, context: ApiContext) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let context = context.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(stream, &context).await {
                        debug!(%peer, %error, "control connection ended");
                    }
                    drop(permit);
                });
            }
            Err(error) => debug!(%error, "accept failed"),
        }
    }
}

async fn serve_connection(stream: TcpStream, context: &ApiContext) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(line) = read_line(&mut reader).await? else {
            return Ok(());
        };
        let response = match line {
            Line::TooLong => Response::failure(
                reasons::BAD_REQUEST,
                format!("request longer than {MAX_LINE} bytes"),
            ),
            Line::Text(text) if text.trim_ascii().is_empty() => continue,
            Line::Text(text) => match serde_json::from_slice::<Request>(&text) {
                // A watch keeps the connection for its stream of events.
                Ok(Request::KvWatch { key }) => return kv::watch(context, key, &mut write).await,
                Ok(Request::Subscribe { topic }) => {
                    return pubsub::subscribe(context, topic, &mut write).await;
                }
                Ok(request) => {
                    let mut response = answer(context, request).await;
                    kv::name_nodes(context, &mut response).await;
                    response
                }
                Err(error) => {
                    Response::failure(reasons::BAD_REQUEST, format!("bad request: {error}"))
                }
            },
        };
        kv::write_line(&mut write, &response).await?;
    }
}

enum Line {
    Text(Vec<u8>),
    TooLong,
}

/// The next line, without reading more than `MAX_LINE` bytes of it into memory; `None` at the
/// end of the stream.
async fn read_line(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let read = AsyncReadExt::take(&mut *reader, MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() <= MAX_LINE || line.ends_with(b"\n") {
        return Ok(Some(Line::Text(line)));
    }
    // Skip the rest of the oversized line.
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(Some(Line::TooLong));
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(Some(Line::TooLong));
            }
            None => {
                let len = buffer.len();
                reader.consume(len);
            }
        }
    }
}

async fn answer(context: &ApiContext, request: Request) -> Response {
    let wall = WallClock {
        clock: context.clock,
    };
    let listen = context.listen;
    let clock = context.clock;
    let result = match request {
        Request::GetLocation => {
            inspect(context, |node| Response::Location {
                loc: Location::of_node(node),
            })
            .await
        }
        Request::GetNodeInfo { node_addr } => match node_addr.parse::<SocketAddr>() {
            Ok(addr) => {
                inspect(context, move |node| {
                    node.known_nodes()
                        .iter()
                        .find(|known| known.addr == addr)
                        .map_or_else(
                            || {
                                Response::failure(
                                    reasons::NODE_NOT_FOUND,
                                    format!("no known node at {addr}"),
                                )
                            },
                            |known| Response::NodeInfo {
                                info: NodeInfo::new(known, wall),
                            },
                        )
                })
                .await
            }
            Err(error) => Ok(Response::failure(
                reasons::BAD_NODE_ADDRESS,
                format!("bad node_addr {node_addr:?}: {error}"),
            )),
        },
        Request::GetRecentNodes { max_nodes } => {
            let max = max_nodes.unwrap_or(DEFAULT_RECENT_NODES);
            inspect(context, move |node| {
                let mut known: Vec<_> = node.known_nodes().iter().collect();
                known.sort_by_key(|k| std::cmp::Reverse(k.heard_at));
                let nodes = known.into_iter().take(max).map(|k| MapNode::new(k, wall));
                Response::RecentNodes {
                    nodes: nodes.collect(),
                }
            })
            .await
        }
        Request::GetFullMap => {
            inspect(context, move |node| Response::FullMap {
                nodes: node
                    .known_nodes()
                    .iter()
                    .map(|k| MapNode::new(k, wall))
                    .collect(),
            })
            .await
        }
        Request::Status => {
            let tcp = context.tcp.clone();
            inspect_host(context, move |host| {
                Response::Status(Box::new(Status::new(host, listen, clock, &tcp)))
            })
            .await
        }
        Request::Peers => {
            inspect(context, |node| Response::Peers {
                peers: views::peers(node),
            })
            .await
        }
        Request::Routes => {
            inspect(context, |node| Response::Routes {
                routes: views::routes(node),
            })
            .await
        }
        Request::Ping { node } | Request::Trace { node } => trace(context, node).await,
        Request::KvSet {
            key,
            sub,
            value,
            value_b64,
            ttl_s,
            ephemeral,
        } => match kv::value_of(value, value_b64) {
            Ok(value) => kv::set(context, key, sub, value, ttl_s, ephemeral).await,
            Err(error) => Err(Response::error(error)),
        },
        Request::KvGet { key, sub } => kv::get(context, key, sub).await,
        Request::KvDel { key, sub } => kv::del(context, key, sub).await,
        Request::KvWatch { .. } => Err(Response::error("kv_watch streams on its own connection")),
        Request::Subscribe { .. } => {
            Err(Response::error("subscribe streams on its own connection"))
        }
        Request::Publish {
            topic,
            message,
            message_b64,
        } => pubsub::publish(context, topic, message, message_b64).await,
        Request::Resolve { name } => kv::resolve(context, name).await,
        Request::Expose { kind, name, target } => {
            forward::expose(context, kind, name, target).await
        }
        Request::ExposeList => forward::expose_list(context).await,
        Request::ExposeRm { name } => forward::expose_rm(context, name).await,
        Request::Forward {
            kind,
            listen,
            service,
        } => forward::forward(context, kind, listen, service).await,
        Request::ForwardList => forward::forward_list(context).await,
        Request::ForwardRm { listen, kind } => forward::forward_rm(context, listen, kind).await,
    };
    result.unwrap_or_else(|error| error)
}

async fn trace(context: &ApiContext, target: String) -> Result<Response, Response> {
    let (destination, alias) = resolve_destination(context, &target).await?;
    let origin = inspect(context, |node| node.id()).await?;
    let traced = ask(context, |reply| ControlRequest::Trace {
        destination,
        reply,
    })
    .await?;
    match traced {
        Some(outcome) => {
            let mut report = TraceReport::new(origin, destination, &outcome);
            report.alias = alias;
            Ok(Response::Trace(report))
        }
        None => Err(Response::error(format!(
            "no answer from {destination} within 3 s"
        ))),
    }
}

/// The node `target` names: an id, a prefix of a known one, or an alias (its nearest
/// claimant, reported with how many claim it).
pub async fn resolve_destination(
    context: &ApiContext,
    target: &str,
) -> Result<(NodeId, Option<AliasChoice>), Response> {
    let lookup = target.to_string();
    let resolved = inspect(context, move |node| views::resolve_node(node, &lookup)).await?;
    match resolved {
        Ok(id) => Ok((id, None)),
        // Not a node id: an alias, served by its nearest claimant.
        Err(not_an_id) if hopwise_proto::alias::validate(target).is_ok() => {
            let claimants = kv::claimants_of(context, target).await?;
            let Some(nearest) = claimants.first() else {
                return Err(Response::error(format!(
                    "{not_an_id}, and no node claims the alias {target}"
                )));
            };
            let destination = NodeId::from_hex(&nearest.id).expect("ids print as hex");
            let alias = AliasChoice {
                name: target.to_string(),
                claimants: claimants.len(),
            };
            Ok((destination, Some(alias)))
        }
        Err(error) => Err(Response::error(error)),
    }
}
