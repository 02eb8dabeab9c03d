//! The control API: newline-delimited JSON over TCP (by default on 127.0.0.1:4001).
//!
//! Every request is one JSON object with an `action`; every answer is one JSON object with a
//! `type`. The four netloc actions (`get_location`, `get_node_info`, `get_recent_nodes`,
//! `get_full_map`) answer in netloc's shapes, with coordinates in seconds as netloc has them,
//! and fail as netloc does (`{"type": "failure", "reason": ...}`, with a detailed `error`);
//! hopwise adds `status`, `peers`, `routes`, `ping`, `trace`, the key-value actions (`kv_set`,
//! `kv_get`, `kv_del`, `kv_watch`), `resolve`, and the service actions (`expose`,
//! `expose_list`, `expose_rm`, `forward`, `forward_list`, `forward_rm`, `publish`, `subscribe`),
//! which the CLI uses. A hopwise request that
//! cannot be served gets `{"type": "error", "error": "..."}`; a line that cannot be parsed gets
//! netloc's `failure` with reason `bad request`. The connection stays open either way.

mod context;
pub mod forward;
mod kv;
mod pubsub;
mod server;
mod views;

pub use context::{ApiContext, inspect_host};
pub use forward::{ExposedService, ForwardView};
pub use kv::{Claimant, KvEntry, KvEventView, NameCache, claimants_of, get_entries};
pub use pubsub::MessageView;
pub use server::{resolve_destination, serve};
pub use views::*;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Request {
    GetLocation,
    GetNodeInfo {
        node_addr: String,
    },
    GetRecentNodes {
        #[serde(default)]
        max_nodes: Option<usize>,
    },
    GetFullMap,
    Status,
    Peers,
    Routes,
    /// A round trip through the overlay to `node` (a full id, or a prefix of a known one).
    Ping {
        node: String,
    },
    /// Like `ping`, with every hop and its latency.
    Trace {
        node: String,
    },
    KvSet {
        key: String,
        sub: String,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        value_b64: Option<String>,
        #[serde(default)]
        ttl_s: Option<f64>,
        #[serde(default)]
        ephemeral: bool,
    },
    KvGet {
        key: String,
        #[serde(default)]
        sub: Option<String>,
    },
    KvDel {
        key: String,
        sub: String,
    },
    /// The connection then streams a `kv_event` line per change until it closes.
    KvWatch {
        key: String,
    },
    /// Every node claiming an alias, nearest first.
    Resolve {
        name: String,
    },
    /// Publishes service `name` (`kind` udp or tcp) at `target`, an address on this node's
    /// side, for forwards from other nodes.
    Expose {
        kind: String,
        name: String,
        target: String,
    },
    ExposeList,
    ExposeRm {
        name: String,
    },
    /// Listens on `listen` (an address, or a port on 127.0.0.1) and carries every flow to
    /// `service`, `NODE/NAME` (NODE an id, a prefix of a known one, or an alias).
    Forward {
        kind: String,
        listen: String,
        service: String,
    },
    ForwardList,
    /// Stops the forwards on `listen` (only the one of `kind`, udp or tcp, if given).
    ForwardRm {
        listen: String,
        #[serde(default)]
        kind: Option<String>,
    },
    /// Publishes `message` (text) or `message_b64` on `topic`.
    Publish {
        topic: String,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        message_b64: Option<String>,
    },
    /// The connection then streams a `message` line per message of `topic` (and `lost` lines
    /// for what did not arrive) until it closes.
    Subscribe {
        topic: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Location {
        loc: Location,
    },
    NodeInfo {
        info: NodeInfo,
    },
    RecentNodes {
        nodes: Vec<MapNode>,
    },
    FullMap {
        nodes: Vec<MapNode>,
    },
    Status(Box<Status>),
    Peers {
        peers: Vec<Peer>,
    },
    Routes {
        routes: Vec<Route>,
    },
    Trace(TraceReport),
    KvSet {
        version: u64,
    },
    KvDel {
        version: u64,
    },
    KvGet {
        entries: Vec<KvEntry>,
    },
    KvEvent(KvEventView),
    Resolve {
        name: String,
        nodes: Vec<Claimant>,
    },
    Exposed(ExposedService),
    ExposeList {
        exposed: Vec<ExposedService>,
    },
    Unexposed {
        name: String,
    },
    Forwarding(ForwardView),
    ForwardList {
        forwards: Vec<ForwardView>,
    },
    Unforwarded {
        listen: SocketAddr,
        removed: usize,
    },
    Published {
        topic: String,
        seq: u64,
    },
    Subscribed {
        topic: String,
    },
    Message(MessageView),
    Lost {
        topic: String,
        source: String,
        count: u64,
    },
    Error {
        error: String,
    },
    /// netloc's failure, for the netloc actions and for lines that do not parse: one of
    /// netloc's reasons, and hopwise's detailed error.
    Failure {
        reason: String,
        error: String,
    },
}

/// netloc's failure reasons.
pub mod reasons {
    pub const BAD_REQUEST: &str = "bad request";
    pub const BAD_NODE_ADDRESS: &str = "bad node address";
    pub const NODE_NOT_FOUND: &str = "node not found";
    pub const NO_INFORMATION: &str = "no information";
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error {
            error: message.into(),
        }
    }

    pub fn failure(reason: &str, error: impl Into<String>) -> Self {
        Self::Failure {
            reason: reason.to_string(),
            error: error.into(),
        }
    }

    /// The error of an `error` or a `failure` answer.
    pub fn error_text(&self) -> Option<&str> {
        match self {
            Self::Error { error } | Self::Failure { error, .. } => Some(error),
            _ => None,
        }
    }
}
