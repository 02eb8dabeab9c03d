//! The runner's side of the key-value store: the store service on the host, its users' calls
//! and their answers, watch streams, aliases, and the on-disk copy (`--data-dir`).

use std::collections::HashMap;

use hopwise_proto::kv::{Entry, EventKind, Kv, KvConfig, KvError, KvEvent, OpId, WatchId};
use hopwise_proto::service::{ServiceHandle, ports};
use hopwise_proto::{Duration, Instant, NodeId};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::NodeHost;
use super::store_file::{StoreFile, WallTime};
use hopwise_proto::alias;

/// A key-value call from the control API or an embedding program.
pub enum KvRequest {
    Set {
        key: Vec<u8>,
        sub: Vec<u8>,
        value: Vec<u8>,
        ttl: Option<Duration>,
        ephemeral: bool,
        reply: oneshot::Sender<Result<u64, KvError>>,
    },
    Del {
        key: Vec<u8>,
        sub: Vec<u8>,
        reply: oneshot::Sender<Result<u64, KvError>>,
    },
    Get {
        key: Vec<u8>,
        sub: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<Vec<Entry>, KvError>>,
    },
    /// Streams every change of `key` to `events` until its receiver is dropped.
    Watch {
        key: Vec<u8>,
        events: mpsc::Sender<Watched>,
        reply: oneshot::Sender<Result<(), KvError>>,
    },
}

/// One change a watch reports.
#[derive(Debug, Clone)]
pub struct Watched {
    pub kind: EventKind,
    pub key: Vec<u8>,
    pub entry: Entry,
}

/// Events a slow watcher may fall behind by before it loses some.
const WATCH_BACKLOG: usize = 1_024;

pub struct KvBridge {
    handle: ServiceHandle<Kv>,
    writes: HashMap<OpId, oneshot::Sender<Result<u64, KvError>>>,
    reads: HashMap<OpId, oneshot::Sender<Result<Vec<Entry>, KvError>>>,
    watches: HashMap<WatchId, mpsc::Sender<Watched>>,
    file: Option<StoreFile>,
}

/// Wall-clock milliseconds now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KvBridge {
    /// Puts the store on its port of `host`; with `file`, loads what it kept.
    pub fn new(host: &mut NodeHost, file: Option<StoreFile>, now: Instant) -> anyhow::Result<Self> {
        let id = host.node().id();
        let config = KvConfig {
            // Versions continue from the wall clock, across restarts.
            clock_base_ms: unix_ms().saturating_sub((now.as_micros() / 1_000) as u64),
            ..KvConfig::default()
        };
        let seed = u64::from_be_bytes(*id.as_bytes()) ^ unix_ms();
        let mut kv = Kv::new(id, config, seed, now);
        if let Some(file) = &file {
            let kept = file.load(WallTime {
                now,
                unix_ms: unix_ms(),
            })?;
            kv.restore(now, kept);
            kv.enable_persistence();
        }
        let handle = host.register(ports::KV, kv)?;
        Ok(Self {
            handle,
            writes: HashMap::new(),
            reads: HashMap::new(),
            watches: HashMap::new(),
            file,
        })
    }

    pub fn handle(&self) -> ServiceHandle<Kv> {
        self.handle
    }

    /// Claims each alias with an ephemeral entry naming this node, and lists them in the
    /// reverse directory (which names nodes in netloc's answers).
    pub fn publish_aliases(&mut self, host: &mut NodeHost, now: Instant, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let id = host.node().id();
        let kv = host.service_mut(self.handle);
        let listed = names.join(",");
        let claims = names
            .iter()
            .map(|name| (alias::key(name), Vec::new()))
            .chain([(alias::directory_key(id), listed.into_bytes())]);
        for (key, value) in claims {
            if let Err(error) = kv.set(now, &key, &alias::sub(id), &value, None, true) {
                warn!(%error, "cannot publish the aliases");
            }
        }
    }

    pub fn request(&mut self, host: &mut NodeHost, now: Instant, request: KvRequest) {
        let kv = host.service_mut(self.handle);
        match request {
            KvRequest::Set {
                key,
                sub,
                value,
                ttl,
                ephemeral,
                reply,
            } => match kv.set(now, &key, &sub, &value, ttl, ephemeral) {
                Ok(op) => {
                    self.writes.insert(op, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            KvRequest::Del { key, sub, reply } => match kv.del(now, &key, &sub) {
                Ok(op) => {
                    self.writes.insert(op, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            KvRequest::Get { key, sub, reply } => match kv.get(now, &key, sub.as_deref()) {
                Ok(op) => {
                    self.reads.insert(op, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            KvRequest::Watch { key, events, reply } => match kv.watch(now, &key) {
                Ok(watch) => {
                    self.watches.insert(watch, events);
                    let _ = reply.send(Ok(()));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
        }
    }

    /// Hands the store's answers and events to their callers, ends watches nobody reads, and
    /// writes the store's changes to disk.
    pub fn pump(&mut self, host: &mut NodeHost, now: Instant) {
        let kv = host.service_mut(self.handle);
        let mut ended = Vec::new();
        while let Some((_, event)) = kv.poll_event() {
            match event {
                KvEvent::Written { op, result } => {
                    if let Some(reply) = self.writes.remove(&op) {
                        let _ = reply.send(result);
                    }
                }
                KvEvent::Read { op, result } => {
                    if let Some(reply) = self.reads.remove(&op) {
                        let _ = reply.send(result);
                    }
                }
                KvEvent::Watched {
                    watch,
                    key,
                    kind,
                    entry,
                } => {
                    let Some(events) = self.watches.get(&watch) else {
                        continue;
                    };
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        events.try_send(Watched { kind, key, entry })
                    {
                        ended.push(watch);
                    }
                }
            }
        }
        ended.extend(
            self.watches
                .iter()
                .filter(|(_, events)| events.is_closed())
                .map(|(watch, _)| *watch),
        );
        for watch in ended {
            self.watches.remove(&watch);
            kv.unwatch(now, watch);
        }
        if let Some(file) = &self.file {
            let changes = kv.poll_persist();
            if !changes.is_empty() {
                let wall = WallTime {
                    now,
                    unix_ms: unix_ms(),
                };
                if let Err(error) = file.write(&changes, wall) {
                    warn!(%error, "cannot write the key-value store to disk");
                }
            }
        }
    }

    /// This node is leaving: its ephemeral entries (its aliases among them) are deleted.
    pub fn leave(&mut self, host: &mut NodeHost, now: Instant) {
        host.service_mut(self.handle).leave(now);
    }
}

/// The claimants of an alias, from the entries of its key.
pub fn claimants(entries: &[Entry]) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = entries.iter().map(|e| e.writer).collect();
    ids.sort();
    ids.dedup();
    ids
}

pub fn watch_channel() -> (mpsc::Sender<Watched>, mpsc::Receiver<Watched>) {
    mpsc::channel(WATCH_BACKLOG)
}
