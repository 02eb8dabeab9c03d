//! The control API's key-value and alias actions: `kv_set`, `kv_get`, `kv_del`, `kv_watch` and
//! `resolve`, answered through the runner's store.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hopwise_proto::kv::{Entry, KvError};
use hopwise_proto::{Duration, Node, NodeId, alias};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use super::Response;
use super::context::{ApiContext, ask, inspect};
use crate::runner::{ControlRequest, KvRequest, Watched, claimants, watch_channel};

/// An entry as the API shows it: a UTF-8 value as `value`, anything else as `value_b64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEntry {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    pub writer: String,
    pub version: u64,
}

impl KvEntry {
    pub fn new(entry: &Entry) -> Self {
        let (value, value_b64) = match std::str::from_utf8(&entry.value) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(BASE64.encode(&entry.value))),
        };
        Self {
            sub: String::from_utf8_lossy(&entry.sub).into_owned(),
            value,
            value_b64,
            writer: entry.writer.to_string(),
            version: entry.version,
        }
    }

    /// The value's bytes, from whichever form it came in.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.value, &self.value_b64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => BASE64.decode(b64).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// One change streamed by `kv_watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEventView {
    pub event: String,
    pub key: String,
    #[serde(flatten)]
    pub entry: KvEntry,
}

/// A node claiming an alias, with the round trip to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claimant {
    pub id: String,
    pub rtt_ms: Option<f64>,
    /// True when the round trip is the route's (measured), false when the coordinates
    /// predicted it.
    pub measured: bool,
}

fn kv_error(error: KvError) -> Response {
    Response::error(error.to_string())
}

/// The value of a `kv_set`: `value` as text or `value_b64`.
pub fn value_of(value: Option<String>, value_b64: Option<String>) -> Result<Vec<u8>, String> {
    match (value, value_b64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => BASE64
            .decode(b64)
            .map_err(|error| format!("bad request: value_b64: {error}")),
        _ => Err("bad request: give exactly one of value and value_b64".to_string()),
    }
}

pub async fn set(
    context: &ApiContext,
    key: String,
    sub: String,
    value: Vec<u8>,
    ttl_s: Option<f64>,
    ephemeral: bool,
) -> Result<Response, Response> {
    let ttl = match ttl_s {
        Some(s) if !(s.is_finite() && s > 0.0 && s < 4e6) => {
            return Err(Response::error("bad request: ttl_s must be positive"));
        }
        Some(s) => Some(Duration::from_micros((s * 1e6) as i64)),
        None => None,
    };
    let written = ask(context, |reply| {
        ControlRequest::Kv(KvRequest::Set {
            key: key.into_bytes(),
            sub: sub.into_bytes(),
            value,
            ttl,
            ephemeral,
            reply,
        })
    })
    .await?;
    written
        .map(|version| Response::KvSet { version })
        .map_err(kv_error)
}

pub async fn del(context: &ApiContext, key: String, sub: String) -> Result<Response, Response> {
    let written = ask(context, |reply| {
        ControlRequest::Kv(KvRequest::Del {
            key: key.into_bytes(),
            sub: sub.into_bytes(),
            reply,
        })
    })
    .await?;
    written
        .map(|version| Response::KvDel { version })
        .map_err(kv_error)
}

pub async fn get_entries(
    context: &ApiContext,
    key: Vec<u8>,
    sub: Option<Vec<u8>>,
) -> Result<Vec<Entry>, Response> {
    let read = ask(context, |reply| {
        ControlRequest::Kv(KvRequest::Get { key, sub, reply })
    })
    .await?;
    read.map_err(kv_error)
}

pub async fn get(
    context: &ApiContext,
    key: String,
    sub: Option<String>,
) -> Result<Response, Response> {
    let entries = get_entries(context, key.into_bytes(), sub.map(String::into_bytes)).await?;
    Ok(Response::KvGet {
        entries: entries.iter().map(KvEntry::new).collect(),
    })
}

/// The claimants of `name`, nearest first.
pub async fn claimants_of(context: &ApiContext, name: &str) -> Result<Vec<Claimant>, Response> {
    alias::validate(name).map_err(|error| Response::error(error.to_string()))?;
    let entries = get_entries(context, alias::key(name), None).await?;
    let ids = claimants(&entries);
    let mut nodes = inspect(context, move |node| {
        ids.iter().map(|id| claimant(node, *id)).collect::<Vec<_>>()
    })
    .await?;
    nodes.sort_by(|a, b| {
        a.rtt_ms
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.rtt_ms.unwrap_or(f64::INFINITY))
    });
    Ok(nodes)
}

fn claimant(node: &Node, id: NodeId) -> Claimant {
    if id == node.id() {
        return Claimant {
            id: id.to_string(),
            rtt_ms: Some(0.0),
            measured: true,
        };
    }
    if let Some(route) = node.route(&id) {
        return Claimant {
            id: id.to_string(),
            rtt_ms: Some(route.metric_ms),
            measured: true,
        };
    }
    let predicted = node
        .known_nodes()
        .get(&id)
        .map(|known| node.coordinate().distance_ms(&known.coord));
    Claimant {
        id: id.to_string(),
        rtt_ms: predicted,
        measured: false,
    }
}

pub async fn resolve(context: &ApiContext, name: String) -> Result<Response, Response> {
    let nodes = claimants_of(context, &name).await?;
    Ok(Response::Resolve { name, nodes })
}

/// Streams the changes of `key` to the connection until either side ends it.
pub async fn watch(
    context: &ApiContext,
    key: String,
    write: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let (events, mut received) = watch_channel();
    let started = ask(context, |reply| {
        ControlRequest::Kv(KvRequest::Watch {
            key: key.into_bytes(),
            events,
            reply,
        })
    })
    .await;
    let failed = match started {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(kv_error(error)),
        Err(response) => Some(response),
    };
    if let Some(response) = failed {
        return write_line(write, &response).await;
    }
    while let Some(watched) = received.recv().await {
        write_line(write, &event_response(&watched)).await?;
    }
    Ok(())
}

fn event_response(watched: &Watched) -> Response {
    Response::KvEvent(KvEventView {
        event: watched.kind.name().to_string(),
        key: String::from_utf8_lossy(&watched.key).into_owned(),
        entry: KvEntry::new(&watched.entry),
    })
}

pub async fn write_line(write: &mut OwnedWriteHalf, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).expect("responses serialize");
    out.push(b'\n');
    write.write_all(&out).await
}

/// How long the names of nodes (their first aliases) are reused before they are read again;
/// when a node asked about has no name yet, they are read again after the shorter time.
const NAMES_FRESH: std::time::Duration = std::time::Duration::from_secs(10);
const NAMES_FRESH_IF_MISSING: std::time::Duration = std::time::Duration::from_secs(1);

/// Each node's first alias, from the reverse directory, by id (hex).
#[derive(Default)]
pub struct NameCache {
    read_at: Option<std::time::Instant>,
    names: std::collections::HashMap<String, String>,
}

async fn names(context: &ApiContext, ids: &[&str]) -> std::collections::HashMap<String, String> {
    {
        let cache = context.names.lock().expect("not poisoned");
        let missing = ids.iter().any(|id| !cache.names.contains_key(*id));
        let fresh = if missing {
            NAMES_FRESH_IF_MISSING
        } else {
            NAMES_FRESH
        };
        if cache.read_at.is_some_and(|at| at.elapsed() < fresh) {
            return cache.names.clone();
        }
    }
    let mut reads = tokio::task::JoinSet::new();
    for shard in 0..alias::DIRECTORY_SHARDS {
        let context = context.clone();
        reads
            .spawn(async move { get_entries(&context, alias::directory_shard(shard), None).await });
    }
    let mut names = std::collections::HashMap::new();
    while let Some(read) = reads.join_next().await {
        for entry in read.ok().and_then(Result::ok).unwrap_or_default() {
            let listed = String::from_utf8_lossy(&entry.value).into_owned();
            if let Some(first) = listed.split(',').next().filter(|n| !n.is_empty()) {
                names.insert(entry.writer.to_string(), first.to_string());
            }
        }
    }
    let mut cache = context.names.lock().expect("not poisoned");
    cache.read_at = Some(std::time::Instant::now());
    cache.names = names.clone();
    names
}

/// Names the nodes of a netloc answer by their first alias, where they have one.
pub async fn name_nodes(context: &ApiContext, response: &mut Response) {
    let has_nodes = matches!(
        response,
        Response::NodeInfo { .. } | Response::RecentNodes { .. } | Response::FullMap { .. }
    );
    if !has_nodes {
        return;
    }
    let ids: Vec<String> = match &*response {
        Response::NodeInfo { info } => vec![info.id.clone()],
        Response::RecentNodes { nodes } | Response::FullMap { nodes } => {
            nodes.iter().map(|n| n.id.clone()).collect()
        }
        _ => Vec::new(),
    };
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let names = names(context, &ids).await;
    match response {
        Response::NodeInfo { info } => {
            if let Some(name) = names.get(&info.id) {
                info.name = name.clone();
            }
        }
        Response::RecentNodes { nodes } | Response::FullMap { nodes } => {
            for node in nodes {
                if let Some(name) = names.get(&node.id) {
                    node.name = name.clone();
                }
            }
        }
        _ => {}
    }
}
