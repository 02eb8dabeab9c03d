//! A key-value workload: seeded random puts, gets and watches spread over the run, then a
//! read of every key written, to measure what the store promises (latency against the overlay's
//! round trips, no lost writes, no stale reads, watchers that end with the store's view).
//!
//! Every put writes sub-key `n<node>` of one of `puts / 5` keys, so each node owns its
//! sub-keys and a key collects several writers. A get or put pings, with the same overlay, the
//! live replica its latency is compared with: the nearest one (gets) or the `W`-th nearest
//! (puts), chosen by the ground truth of which nodes are running.

use std::collections::{BTreeMap, HashMap};

use hopwise_proto::kv::{Entry, KvError, KvEvent, OpId, WatchId, key_hash};
use hopwise_proto::{Duration, Event, Instant};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::report::{MeanMax, Percentiles, percentiles_of, service_datagram_overhead};
use crate::sim::{Recorded, Simulation};

/// Ping tokens of the workload: this tag, and the operation's number.
const PING_TAG: u64 = 0x6B76 << 48;
/// The last operation leaves this long before the end; the final reads this long before it.
const QUIET_BEFORE_END: Duration = Duration::from_secs(20);
const VERIFY_BEFORE_END: Duration = Duration::from_secs(12);
/// A put counts towards a watch's latency once the watch has had this long to attach.
const WATCH_SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq)]
pub struct KvWorkloadConfig {
    pub puts: usize,
    pub gets: usize,
    pub watches: usize,
    /// When the first operations start (nodes should be routed by then).
    pub start: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Put,
    Get,
    Watch,
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Instant,
    kind: Kind,
    node: usize,
    key: u32,
}

#[derive(Debug, Clone)]
struct Started {
    kind: Kind,
    /// The node it ran on (whose sub-key a put writes).
    node: usize,
    key: u32,
    at: Instant,
    /// The replica pinged for the comparison, and its round trip once answered.
    compared_rtt_ms: Option<f64>,
    local: bool,
}

#[derive(Debug, Clone)]
struct Done {
    started: Started,
    latency_ms: f64,
    /// For gets: the entries read.
    entries: Vec<Entry>,
    version: u64,
}

struct WatchRecord {
    node: usize,
    key: u32,
    id: WatchId,
    at: Instant,
    /// (sub-key, version) to the time each event arrived.
    events: HashMap<(Vec<u8>, u64), Instant>,
}

/// Acknowledged puts by (key, sub-key): when each was acknowledged, and its version.
type Acknowledged = BTreeMap<(u32, Vec<u8>), Vec<(Instant, u64)>>;

pub struct KvWorkload {
    config: KvWorkloadConfig,
    plan: Vec<Planned>,
    cursor: usize,
    keys: u32,
    rng: ChaCha8Rng,
    stop: Instant,
    verify_at: Instant,
    verified: bool,
    /// Operations in flight by node and id, and their number in `started`.
    pending: HashMap<(usize, OpId), usize>,
    started: Vec<Started>,
    done: Vec<Option<Done>>,
    failed: Vec<(Kind, KvError)>,
    watches: Vec<WatchRecord>,
    watch_by_id: HashMap<(usize, WatchId), usize>,
    /// The final read of each key: its node and operation.
    verification: Vec<(u32, usize, OpId)>,
    verification_results: HashMap<u32, Result<Vec<Entry>, KvError>>,
}

fn key_name(key: u32) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

fn sub_name(node: usize) -> Vec<u8> {
    format!("n{node}").into_bytes()
}

impl KvWorkload {
    pub fn new(config: KvWorkloadConfig, nodes: usize, seed: u64, end: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b76_776f_726b);
        let start = Instant::ZERO + config.start;
        let stop = end - QUIET_BEFORE_END;
        let span = stop.saturating_since(start);
        let keys = (config.puts / 5).max(1) as u32;
        let mut plan = Vec::new();
        let counts = [
            (Kind::Put, config.puts),
            (Kind::Get, config.gets),
            (Kind::Watch, config.watches),
        ];
        for (kind, count) in counts {
            for _ in 0..count {
                // Watches start in the first third, so they see most of the writes.
                let within = match kind {
                    Kind::Watch => span.mul_f64(rng.random::<f64>() / 3.0),
                    _ => span.mul_f64(rng.random::<f64>()),
                };
                plan.push(Planned {
                    at: start + within,
                    kind,
                    node: rng.random_range(0..nodes),
                    key: rng.random_range(0..keys),
                });
            }
        }
        plan.sort_by_key(|p| p.at);
        Self {
            config,
            plan,
            cursor: 0,
            keys,
            rng,
            stop,
            verify_at: end - VERIFY_BEFORE_END,
            verified: false,
            pending: HashMap::new(),
            started: Vec::new(),
            done: Vec::new(),
            failed: Vec::new(),
            watches: Vec::new(),
            watch_by_id: HashMap::new(),
            verification: Vec::new(),
            verification_results: HashMap::new(),
        }
    }

    /// When the workload next acts.
    pub fn next_due(&self) -> Option<Instant> {
        match self.plan.get(self.cursor) {
            Some(planned) if planned.at < self.stop => Some(planned.at),
            _ => (!self.verified).then_some(self.verify_at),
        }
    }

    /// A running node: the planned one, or another drawn at random if it was killed.
    fn running(&mut self, sim: &Simulation, node: usize) -> Option<usize> {
        if sim.is_running(node) {
            return Some(node);
        }
        (0..16)
            .map(|_| self.rng.random_range(0..sim.len()))
            .find(|&other| sim.is_running(other))
    }

    /// The live replicas of `key` by the ground truth: the closest running node ids (zone
    /// heads only, in zoned routing).
    fn live_replicas(sim: &Simulation, key: &[u8], count: usize) -> Vec<usize> {
        let point = key_hash(key);
        let zoning = (0..sim.len()).find_map(|i| sim.node(i)?.zoning().copied());
        let mut nodes: Vec<(u64, usize)> = (0..sim.len())
            .filter(|&i| sim.is_running(i))
            .filter(|&i| zoning.is_none_or(|zones| zones.is_head(&sim.id_of(i))))
            .map(|i| (u64::from_be_bytes(*sim.id_of(i).as_bytes()) ^ point, i))
            .collect();
        nodes.sort_unstable();
        nodes.into_iter().take(count).map(|(_, i)| i).collect()
    }

    /// Starts every operation due by `now`, and the final reads when their time comes.
    pub fn send_due(&mut self, sim: &mut Simulation, now: Instant) {
        while let Some(planned) = self.plan.get(self.cursor).copied() {
            if planned.at > now || planned.at >= self.stop {
                break;
            }
            self.cursor += 1;
            let Some(node) = self.running(sim, planned.node) else {
                continue;
            };
            self.start(sim, planned, node);
        }
        if !self.verified && now >= self.verify_at {
            self.verified = true;
            self.verify(sim);
        }
    }

    fn start(&mut self, sim: &mut Simulation, planned: Planned, node: usize) {
        let key = key_name(planned.key);
        let sub = sub_name(node);
        let number = self.started.len();
        let value = format!("value {number}").into_bytes();
        let started = match planned.kind {
            Kind::Put => sim.with_kv(node, |kv, now| kv.set(now, &key, &sub, &value, None, false)),
            Kind::Get => sim.with_kv(node, |kv, now| kv.get(now, &key, None)),
            Kind::Watch => {
                if let Some(Ok(id)) = sim.with_kv(node, |kv, now| kv.watch(now, &key)) {
                    self.watch_by_id.insert((node, id), self.watches.len());
                    self.watches.push(WatchRecord {
                        node,
                        key: planned.key,
                        id,
                        at: sim.now(),
                        events: HashMap::new(),
                    });
                }
                return;
            }
        };
        let Some(Ok(op)) = started else {
            return;
        };
        // Compared with the nearest live replica (gets) or the W-th nearest (puts).
        let rank = match planned.kind {
            Kind::Put => sim.kv(node).map_or(2, |kv| kv.config().write_quorum),
            _ => 1,
        };
        let replicas =
            Self::live_replicas(sim, &key, sim.kv(node).map_or(3, |kv| kv.config().replicas));
        let reader = sim.node(node).expect("running");
        let mut by_rtt: Vec<(f64, usize)> = replicas
            .iter()
            .map(|&r| {
                let rtt = if r == node {
                    0.0
                } else {
                    reader
                        .route(&sim.id_of(r))
                        .map_or(f64::MAX, |route| route.metric_ms)
                };
                (rtt, r)
            })
            .collect();
        by_rtt.sort_by(|a, b| a.0.total_cmp(&b.0));
        let compared = by_rtt.get(rank - 1).map(|&(_, r)| r);
        let local = compared == Some(node);
        self.pending.insert((node, op), number);
        self.started.push(Started {
            kind: planned.kind,
            node,
            key: planned.key,
            at: sim.now(),
            compared_rtt_ms: None,
            local,
        });
        self.done.push(None);
        if let Some(replica) = compared.filter(|_| !local) {
            sim.ping(node, replica, PING_TAG | number as u64);
        }
    }

    fn verify(&mut self, sim: &mut Simulation) {
        let mut written: Vec<u32> = self
            .done
            .iter()
            .flatten()
            .filter(|d| matches!(d.started.kind, Kind::Put))
            .map(|d| d.started.key)
            .collect();
        written.sort_unstable();
        written.dedup();
        for key in written {
            let pick = self.rng.random_range(0..sim.len());
            let Some(node) = self.running(sim, pick) else {
                continue;
            };
            let name = key_name(key);
            if let Some(Ok(op)) = sim.with_kv(node, |kv, now| kv.get(now, &name, None)) {
                self.verification.push((key, node, op));
            }
        }
    }

    /// Takes the ping answers out of what the nodes recorded.
    pub fn record(&mut self, recorded: &[Recorded]) {
        for r in recorded {
            if let Event::PingReply { token, rtt_ms, .. } = &r.event
                && token & PING_TAG == PING_TAG
                && let Some(started) = self.started.get_mut((token & !PING_TAG) as usize)
            {
                started.compared_rtt_ms = Some(*rtt_ms);
            }
        }
    }

    /// Collects the stores' answers and watch events (each carries when it happened).
    pub fn collect(&mut self, sim: &mut Simulation) {
        let nodes: Vec<usize> = {
            let mut nodes: Vec<usize> = self.pending.keys().map(|(node, _)| *node).collect();
            nodes.extend(self.watches.iter().map(|w| w.node));
            nodes.extend(self.verification.iter().map(|(_, node, _)| *node));
            nodes.sort_unstable();
            nodes.dedup();
            nodes
        };
        for node in nodes {
            for (at, event) in sim.kv_events(node) {
                self.take_event(node, at, event);
            }
        }
    }

    fn take_event(&mut self, node: usize, at: Instant, event: KvEvent) {
        match event {
            KvEvent::Written { op, result } => {
                self.finish(node, op, at, result.map(|v| (v, Vec::new())))
            }
            KvEvent::Read { op, result } => {
                if let Some(index) = self
                    .verification
                    .iter()
                    .position(|(_, n, o)| *n == node && *o == op)
                {
                    let key = self.verification[index].0;
                    self.verification_results.insert(key, result);
                    return;
                }
                self.finish(node, op, at, result.map(|entries| (0, entries)));
            }
            KvEvent::Watched { watch, entry, .. } => {
                if let Some(&index) = self.watch_by_id.get(&(node, watch)) {
                    self.watches[index]
                        .events
                        .entry((entry.sub, entry.version))
                        .or_insert(at);
                }
            }
        }
    }

    fn finish(
        &mut self,
        node: usize,
        op: OpId,
        at: Instant,
        result: Result<(u64, Vec<Entry>), KvError>,
    ) {
        let Some(number) = self.pending.remove(&(node, op)) else {
            return;
        };
        let started = self.started[number].clone();
        match result {
            Ok((version, entries)) => {
                self.done[number] = Some(Done {
                    latency_ms: (at - started.at).as_millis_f64(),
                    started,
                    entries,
                    version,
                });
            }
            Err(error) => self.failed.push((started.kind, error)),
        }
    }

    /// What the workload measured, once the run is over.
    pub fn report(&self, sim: &Simulation, duration: Duration, secure: bool) -> KvReport {
        let done = || self.done.iter().flatten();
        let ratio = |kind_put: bool| {
            let mut ratios: Vec<f64> = done()
                .filter(|d| matches!(d.started.kind, Kind::Put) == kind_put)
                .filter(|d| !matches!(d.started.kind, Kind::Watch) && !d.started.local)
                .filter_map(|d| {
                    Some(d.latency_ms / d.started.compared_rtt_ms.filter(|&r| r > 0.0)?)
                })
                .collect();
            percentiles(&mut ratios)
        };
        // Acknowledged puts: (key, sub) to the acknowledgement times and versions, in order.
        let mut acked: Acknowledged = BTreeMap::new();
        let mut put_acks = Vec::new();
        for d in done().filter(|d| matches!(d.started.kind, Kind::Put)) {
            let ack_at = d.started.at + Duration::from_micros((d.latency_ms * 1_000.0) as i64);
            let sub = sub_name(d.started.node);
            acked
                .entry((d.started.key, sub.clone()))
                .or_default()
                .push((ack_at, d.version));
            put_acks.push((d.started.key, sub, d.version, ack_at));
        }
        for acks in acked.values_mut() {
            acks.sort();
        }
        // A get is stale if, for a sub-key acknowledged before it started, it read an older
        // version (or nothing).
        let gets: Vec<&Done> = done()
            .filter(|d| matches!(d.started.kind, Kind::Get))
            .collect();
        let stale = gets
            .iter()
            .filter(|get| {
                acked
                    .range((get.started.key, Vec::new())..)
                    .take_while(|((key, _), _)| *key == get.started.key)
                    .any(|((_, sub), acks)| {
                        let before = acks.partition_point(|(at, _)| *at < get.started.at);
                        let Some(&(_, version)) = before.checked_sub(1).map(|i| &acks[i]) else {
                            return false;
                        };
                        let read = get
                            .entries
                            .iter()
                            .find(|e| &e.sub == sub)
                            .map_or(0, |e| e.version);
                        read < version
                    })
            })
            .count();
        let failed_gets = self
            .failed
            .iter()
            .filter(|(k, _)| matches!(k, Kind::Get))
            .count();
        let failed_puts = self
            .failed
            .iter()
            .filter(|(k, _)| matches!(k, Kind::Put))
            .count();
        // Lost: the newest acknowledged version of a sub-key that the final read did not find.
        let mut lost = 0;
        let mut verify_failed = 0;
        for ((key, sub), acks) in &acked {
            let version = acks.iter().map(|(_, v)| *v).max().unwrap_or(0);
            match self.verification_results.get(key) {
                Some(Ok(entries)) => {
                    let read = entries
                        .iter()
                        .find(|e| &e.sub == sub)
                        .map_or(0, |e| e.version);
                    if read < version {
                        lost += 1;
                    }
                }
                _ => {
                    verify_failed += 1;
                    lost += 1;
                }
            }
        }
        // Watch latency: from a put's acknowledgement to each settled watcher's event.
        let mut watch_ms = Vec::new();
        let mut watch_missed = 0;
        let mut watch_mismatches = 0;
        let mut watches_checked = 0;
        for watch in self.watches.iter().filter(|w| sim.is_running(w.node)) {
            for (key, sub, version, ack_at) in &put_acks {
                if *key != watch.key || *ack_at < watch.at + WATCH_SETTLE {
                    continue;
                }
                let seen = watch
                    .events
                    .iter()
                    .filter(|((s, v), _)| s == sub && v >= version)
                    .map(|(_, at)| *at)
                    .min();
                match seen {
                    Some(at) => watch_ms.push(at.saturating_since(*ack_at).as_millis_f64()),
                    None => watch_missed += 1,
                }
            }
            if let (Some(view), Some(Ok(entries))) = (
                sim.kv(watch.node).and_then(|kv| kv.watched(watch.id)),
                self.verification_results.get(&watch.key),
            ) {
                watches_checked += 1;
                let versions = |list: &[Entry]| {
                    let mut v: Vec<(Vec<u8>, u64)> =
                        list.iter().map(|e| (e.sub.clone(), e.version)).collect();
                    v.sort();
                    v
                };
                if versions(&view) != versions(entries) {
                    watch_mismatches += 1;
                }
            }
        }
        let entries: Vec<f64> = (0..sim.len())
            .filter_map(|i| sim.kv(i).map(|kv| kv.store().entries() as f64))
            .collect();
        let stats = sim.all_kv_stats();
        let datagrams: u64 = stats.iter().map(|s| s.datagrams_sent).sum();
        let bytes: u64 = stats.iter().map(|s| s.bytes_sent).sum();
        let per_datagram = service_datagram_overhead(secure);
        let node_seconds = sim.len() as f64 * duration.as_secs_f64();
        let sum = |f: fn(&hopwise_proto::kv::KvStats) -> u64| stats.iter().map(f).sum::<u64>();
        KvReport {
            puts: self.config.puts,
            gets: self.config.gets,
            watches: self.config.watches,
            keys: self.keys as usize,
            puts_acked: put_acks.len(),
            failed_puts,
            get_ratio: ratio(false),
            put_ratio: ratio(true),
            local_operations: done().filter(|d| d.started.local).count(),
            watch_ms: percentiles(&mut watch_ms),
            watch_events_missed: watch_missed,
            lost,
            final_reads_failed: verify_failed,
            stale_read_fraction: stale as f64 / gets.len().max(1) as f64,
            failed_gets,
            watches_checked,
            watch_view_mismatches: watch_mismatches,
            entries_per_node: MeanMax {
                mean: entries.iter().sum::<f64>() / entries.len().max(1) as f64,
                max: entries.iter().copied().fold(0.0, f64::max),
            },
            bytes_per_node_per_sec: (bytes + datagrams * per_datagram) as f64 / node_seconds,
            hedged_reads: sum(|s| s.hedged),
            read_repairs: sum(|s| s.read_repairs),
            handoffs: sum(|s| s.handoffs),
            suspicions: sum(|s| s.suspicions),
            digests_sent: sum(|s| s.digests_sent),
            pushes_sent: sum(|s| s.pushes_sent),
        }
    }
}

/// Percentiles, 0 where there is nothing to measure (a run without the workload).
fn percentiles(values: &mut [f64]) -> Percentiles {
    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    let p = percentiles_of(values);
    Percentiles {
        median: finite(p.median),
        p95: finite(p.p95),
        p99: finite(p.p99),
    }
}

/// The `kv` section of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct KvReport {
    pub puts: usize,
    pub gets: usize,
    pub watches: usize,
    pub keys: usize,
    pub puts_acked: usize,
    pub failed_puts: usize,
    /// Each get's latency over the overlay round trip (a ping) to the nearest live replica.
    pub get_ratio: Percentiles,
    /// Each put's latency over the round trip to the W-th nearest live replica.
    pub put_ratio: Percentiles,
    /// Gets and puts whose compared replica was the node itself (no ratio).
    pub local_operations: usize,
    /// From a put's acknowledgement to each watcher's event.
    pub watch_ms: Percentiles,
    pub watch_events_missed: usize,
    /// Acknowledged writes the final reads did not find.
    pub lost: usize,
    pub final_reads_failed: usize,
    /// Gets that returned an older version than one acknowledged before they started.
    pub stale_read_fraction: f64,
    pub failed_gets: usize,
    /// Watchers on running nodes whose final view was compared with the final read, and how
    /// many differed.
    pub watches_checked: usize,
    pub watch_view_mismatches: usize,
    pub entries_per_node: MeanMax,
    /// The store's own traffic (its datagrams with every header, at their first hop).
    pub bytes_per_node_per_sec: f64,
    pub hedged_reads: u64,
    pub read_repairs: u64,
    pub handoffs: u64,
    pub suspicions: u64,
    pub digests_sent: u64,
    pub pushes_sent: u64,
}
