//! A publish/subscribe workload: topics with subscribers and publishers, the pub/sub service on
//! every node, and what its deliveries cost against unicast.
//!
//! Every node runs [`PubSub`] on [`ports::PUBSUB`]. For each of `topics` topics a fraction of
//! the nodes subscribes (at `start`) and `publishers` nodes publish `rate` messages a second
//! each (from `start` + [`PUBLISH_AFTER`]). Every [`PROBE_EVERY`] each publisher also sends a
//! plain overlay payload to each of its subscribers: its one-way delay is the unicast latency
//! a delivery's latency is divided by (the relative delay penalty, `rdp`). Messages published
//! from `measure_after` on count towards `delivered_fraction`; the last ones leave
//! [`DRAIN`] before the end, so that repairs can finish.

use std::collections::{HashMap, HashSet};

use hopwise_proto::pubsub::{PubSub, PubSubEvent, PubSubStats};
use hopwise_proto::service::{BASE_DATA, ServiceHandle, ports};
use hopwise_proto::{Duration, Event, Instant, NodeId};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::report::service_datagram_overhead;
use crate::sim::{Recorded, Simulation};

/// Publishers start this long after the subscriptions, once the first trees can form.
pub const PUBLISH_AFTER: Duration = Duration::from_secs(5);
/// How often each publisher measures the unicast latency to each of its subscribers.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Publishing stops this long before the end of the run.
pub const DRAIN: Duration = Duration::from_secs(5);
/// A subscriber's delivery gap after a failure is looked for this long.
const REPAIR_WINDOW: Duration = Duration::from_secs(10);
/// Marks the probes among other overlay payloads.
const PROBE_TAG: u8 = 0x5B;

#[derive(Debug, Clone, PartialEq)]
pub struct PubSubWorkloadConfig {
    pub topics: usize,
    /// The fraction of nodes subscribing to each topic.
    pub subscribers: f64,
    /// Publishers per topic.
    pub publishers: usize,
    /// Messages per second of each publisher.
    pub rate: f64,
    pub message_bytes: usize,
    /// When the subscriptions are made.
    pub start: Duration,
    /// Messages published from then on are measured.
    pub measure_after: Duration,
}

impl Default for PubSubWorkloadConfig {
    fn default() -> Self {
        Self {
            topics: 0,
            subscribers: 0.3,
            publishers: 5,
            rate: 10.0,
            message_bytes: 64,
            start: Duration::from_secs(20),
            measure_after: Duration::from_secs(30),
        }
    }
}

struct Topic {
    name: String,
    hash: u64,
    subscribers: Vec<usize>,
}

/// One publisher of one topic.
struct Publication {
    topic: usize,
    node: usize,
    next_at: Instant,
    /// Publish time of each message, by sequence number - 1.
    published: Vec<Instant>,
}

/// One (publication, subscriber) pair.
struct Pair {
    publication: usize,
    subscriber: usize,
    /// The last unicast one-way delay measured from the publisher (ms).
    unicast_ms: Option<f64>,
    last_delivery: Option<Instant>,
    /// The pair's tree path crossed a node that failed.
    affected: bool,
    longest_gap: Duration,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RdpSummary {
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RepairSummary {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fanout {
    /// The most children any publisher's tree had: the copies it sends of each message.
    pub max: usize,
    /// That publisher's distinct routing next hops towards the topic's subscribers then.
    pub next_hops_at_max: usize,
    /// The most by which a publisher's children outnumbered its next hops towards the
    /// subscribers (0: never more copies than next hops).
    pub above_next_hops_max: usize,
}

/// The `pubsub` section of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PubSubReport {
    pub topics: usize,
    pub publishers: usize,
    pub subscriptions: usize,
    pub published: u64,
    /// Each measured delivery's latency over the unicast latency of its pair.
    pub rdp: RdpSummary,
    pub deliveries_measured: usize,
    /// Measured messages delivered, over those every live subscriber should have had.
    pub delivered_fraction: f64,
    pub expected_deliveries: u64,
    pub missing_deliveries: u64,
    /// (Publisher, subscriber) pairs that missed some measured messages, and all of them.
    pub pairs_missing_some: usize,
    pub pairs_missing_all: usize,
    /// Copies of a message that crossed a tree link beyond the first, summed over all nodes;
    /// and copies that reached a node over a second link (tree moves in flight).
    pub duplicate_link_crossings: u64,
    pub duplicate_arrivals: u64,
    /// The longest delivery gap of each pair whose tree path crossed a failed node.
    pub repair_ms: Option<RepairSummary>,
    pub repaired_pairs: usize,
    /// Children of a publisher in its own tree: the copies it sends of each message.
    pub publisher_fanout: Fanout,
    /// The service's own traffic, with every header, at its first hop.
    pub bytes_per_node_per_sec: f64,
    pub nacks_sent: u64,
    pub repairs_sent: u64,
    pub upstream_moves: u64,
    pub lost_reported: u64,
}

pub struct PubSubWorkload {
    config: PubSubWorkloadConfig,
    /// The service on each node, registered once the node runs.
    handles: Vec<Option<ServiceHandle<PubSub>>>,
    seed: u64,
    topics: Vec<Topic>,
    topic_by_name: HashMap<String, usize>,
    publications: Vec<Publication>,
    publication_of: HashMap<(usize, usize), usize>,
    pairs: Vec<Pair>,
    pair_of: HashMap<(usize, usize), usize>,
    subscribed: bool,
    next_probe: Instant,
    stop: Instant,
    measure_from: Instant,
    rdp: Vec<f32>,
    /// Measured deliveries per pair (for the delivered fraction).
    delivered: Vec<u64>,
    /// The latest counters of each node (kept for nodes that stopped).
    stats: Vec<PubSubStats>,
    fanout: Fanout,
    failure: Option<(Instant, Vec<usize>)>,
    ids: Vec<NodeId>,
    index_of: HashMap<NodeId, usize>,
}

impl PubSubWorkload {
    /// Draws the topics of the nodes of `sim` from `seed`; the run ends at `end`. The service
    /// goes on every node once it runs.
    pub fn new(config: PubSubWorkloadConfig, sim: &Simulation, seed: u64, end: Instant) -> Self {
        let n = sim.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7075_6273_7562);
        let per_topic = ((n as f64) * config.subscribers).round() as usize;
        let start = Instant::ZERO + config.start;
        let mut topics = Vec::new();
        let mut publications = Vec::new();
        let mut pairs = Vec::new();
        for t in 0..config.topics {
            let name = format!("topic-{t}");
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            let subscribers: Vec<usize> = order[..per_topic.min(n)].to_vec();
            order.shuffle(&mut rng);
            for &node in order.iter().take(config.publishers.min(n)) {
                let phase =
                    Duration::from_millis_f64(1e3 * rng.random::<f64>() / config.rate.max(1e-9));
                let publication = publications.len();
                publications.push(Publication {
                    topic: t,
                    node,
                    next_at: start + PUBLISH_AFTER + phase,
                    published: Vec::new(),
                });
                for &subscriber in subscribers.iter().filter(|&&s| s != node) {
                    pairs.push(Pair {
                        publication,
                        subscriber,
                        unicast_ms: None,
                        last_delivery: None,
                        affected: false,
                        longest_gap: Duration::ZERO,
                    });
                }
            }
            topics.push(Topic {
                hash: hopwise_proto::kv::key_hash(name.as_bytes()),
                name,
                subscribers,
            });
        }
        let topic_by_name = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let publication_of = publications
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.topic, p.node), i))
            .collect();
        let pair_of = pairs
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.publication, p.subscriber), i))
            .collect();
        let delivered = vec![0; pairs.len()];
        Self {
            ids: (0..n).map(|i| sim.id_of(i)).collect(),
            index_of: (0..n).map(|i| (sim.id_of(i), i)).collect(),
            handles: vec![None; n],
            seed,
            topic_by_name,
            publication_of,
            pair_of,
            delivered,
            stats: vec![PubSubStats::default(); n],
            subscribed: config.topics == 0,
            next_probe: start,
            stop: end - DRAIN,
            measure_from: Instant::ZERO + config.measure_after,
            rdp: Vec::new(),
            fanout: Fanout {
                max: 0,
                next_hops_at_max: 0,
                above_next_hops_max: 0,
            },
            failure: None,
            config,
            topics,
            publications,
            pairs,
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        if self.config.topics == 0 {
            return None;
        }
        let start = Instant::ZERO + self.config.start;
        let publish = self.publications.iter().map(|p| p.next_at).min();
        [
            (!self.subscribed).then_some(start),
            Some(self.next_probe).filter(|&at| at < self.stop),
            publish.filter(|&at| at < self.stop),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Puts the service on every running node that lacks it.
    fn register_new(&mut self, sim: &mut Simulation) {
        for (node, handle) in self.handles.iter_mut().enumerate() {
            if handle.is_none() && sim.is_running(node) {
                let service =
                    PubSub::new(self.ids[node], BASE_DATA, self.seed ^ (node as u64) << 20);
                *handle = sim
                    .register(node, ports::PUBSUB, service)
                    .and_then(Result::ok);
            }
        }
    }

    pub fn send_due(&mut self, sim: &mut Simulation, now: Instant) {
        if !self.subscribed && now >= Instant::ZERO + self.config.start {
            self.register_new(sim);
            self.subscribed = true;
            for topic in &self.topics {
                for &node in &topic.subscribers {
                    if let Some(handle) = self.handles[node] {
                        sim.with_service(node, handle, |pubsub| {
                            pubsub
                                .subscribe(now, &topic.name)
                                .expect("a valid topic within the bounds")
                        });
                    }
                }
            }
        }
        if now >= self.next_probe && now < self.stop {
            self.next_probe = now + PROBE_EVERY;
            for (index, pair) in self.pairs.iter().enumerate() {
                let from = self.publications[pair.publication].node;
                let _ = sim.send_data(from, pair.subscriber, probe(index, now));
            }
        }
        let interval = Duration::from_millis_f64(1e3 / self.config.rate.max(1e-9));
        let message = vec![0x55; self.config.message_bytes];
        for publication in &mut self.publications {
            while publication.next_at <= now && publication.next_at < self.stop {
                publication.next_at += interval;
                let Some(handle) = self.handles[publication.node] else {
                    continue;
                };
                if !sim.is_running(publication.node) {
                    continue;
                }
                let name = &self.topics[publication.topic].name;
                let seq = sim.with_service(publication.node, handle, |pubsub| {
                    pubsub.publish(now, name, &message)
                });
                if let Some(Ok(seq)) = seq {
                    debug_assert_eq!(seq as usize, publication.published.len() + 1);
                    publication.published.push(now);
                }
            }
        }
    }

    /// Takes the probes' arrivals from what the nodes reported.
    pub fn record(&mut self, recorded: &[Recorded]) {
        for record in recorded {
            let Event::Delivered { payload, .. } = &record.event else {
                continue;
            };
            let Some((pair, sent)) = parse_probe(payload) else {
                continue;
            };
            if let Some(pair) = self.pairs.get_mut(pair) {
                pair.unicast_ms = Some((record.at - sent).as_secs_f64() * 1e3);
            }
        }
    }

    /// Before `failed` stop at `at`: the pairs whose tree path crosses one of them.
    pub fn note_failure(&mut self, sim: &Simulation, failed: &[usize], at: Instant) {
        if self.config.topics == 0 {
            return;
        }
        let is_failed = |node: usize| failed.contains(&node);
        for pair in &mut self.pairs {
            let publication = &self.publications[pair.publication];
            if is_failed(pair.subscriber) || is_failed(publication.node) {
                continue;
            }
            let topic = self.topics[publication.topic].hash;
            let publisher = self.ids[publication.node];
            let mut node = pair.subscriber;
            for _ in 0..64 {
                let Some(upstream) = self.handles[node]
                    .and_then(|h| sim.service(node, h))
                    .and_then(|pubsub| pubsub.upstream(topic, publisher))
                else {
                    break;
                };
                if upstream == publisher {
                    break;
                }
                let Some(next) = sim.index_of_id(&upstream) else {
                    break;
                };
                if is_failed(next) {
                    pair.affected = true;
                    break;
                }
                node = next;
            }
        }
        self.failure = Some((at, failed.to_vec()));
    }

    /// Takes every node's deliveries so far (once per simulated second).
    pub fn collect(&mut self, sim: &mut Simulation) {
        if self.config.topics == 0 {
            return;
        }
        self.register_new(sim);
        for node in 0..self.handles.len() {
            let Some(handle) = self.handles[node] else {
                continue;
            };
            let Some(events) = sim.with_service(node, handle, |pubsub| {
                std::iter::from_fn(|| pubsub.poll_event()).collect::<Vec<_>>()
            }) else {
                continue;
            };
            for event in events {
                if let PubSubEvent::Message(delivery) = event {
                    self.take_delivery(node, &delivery);
                }
            }
            if let Some(pubsub) = sim.service(node, handle) {
                self.stats[node] = *pubsub.stats();
                let publishing: Vec<(u64, usize)> = pubsub
                    .trees()
                    .filter(|tree| tree.tree.publisher == self.ids[node])
                    .map(|tree| (tree.tree.topic, tree.children))
                    .collect();
                for (topic, children) in publishing {
                    self.compare_fanout(sim, node, topic, children);
                }
            }
        }
    }

    /// Holds publisher `node`'s copies per message on `topic` against its next hops towards
    /// the topic's subscribers.
    fn compare_fanout(&mut self, sim: &Simulation, node: usize, topic: u64, children: usize) {
        let Some(overlay) = sim.node(node) else {
            return;
        };
        let Some(topic) = self.topics.iter().find(|t| t.hash == topic) else {
            return;
        };
        let next_hops: HashSet<NodeId> = topic
            .subscribers
            .iter()
            .filter(|&&subscriber| subscriber != node && sim.is_running(subscriber))
            .filter_map(|&subscriber| overlay.route(&self.ids[subscriber]))
            .map(|route| route.next_hop)
            .collect();
        let fanout = &mut self.fanout;
        if children > fanout.max {
            fanout.max = children;
            fanout.next_hops_at_max = next_hops.len();
        }
        fanout.above_next_hops_max = fanout
            .above_next_hops_max
            .max(children.saturating_sub(next_hops.len()));
    }

    fn take_delivery(&mut self, node: usize, delivery: &hopwise_proto::pubsub::Delivery) {
        let Some(&topic) = self.topic_by_name.get(&delivery.topic) else {
            return;
        };
        let Some(&source) = self.index_of.get(&delivery.source) else {
            return;
        };
        let Some(&publication) = self.publication_of.get(&(topic, source)) else {
            return;
        };
        let Some(&pair_index) = self.pair_of.get(&(publication, node)) else {
            return;
        };
        let Some(&published) = self.publications[publication]
            .published
            .get((delivery.seq as usize).wrapping_sub(1))
        else {
            return;
        };
        let pair = &mut self.pairs[pair_index];
        if let Some((failed_at, _)) = self.failure
            && pair.affected
            && delivery.at <= failed_at + REPAIR_WINDOW
            && let Some(last) = pair.last_delivery
        {
            pair.longest_gap = pair.longest_gap.max(delivery.at - last);
        }
        pair.last_delivery = Some(delivery.at);
        if published < self.measure_from {
            return;
        }
        self.delivered[pair_index] += 1;
        if let Some(unicast_ms) = pair.unicast_ms.filter(|&ms| ms > 0.0) {
            let latency_ms = (delivery.at - published).as_secs_f64() * 1e3;
            self.rdp.push((latency_ms / unicast_ms) as f32);
        }
    }

    pub fn report(&mut self, sim: &Simulation, duration: Duration, secure: bool) -> PubSubReport {
        let failed: &[usize] = self.failure.as_ref().map_or(&[], |(_, f)| f.as_slice());
        let failed_at = self.failure.as_ref().map(|(at, _)| *at);
        let mut expected = 0u64;
        let mut delivered = 0u64;
        let (mut pairs_short, mut pairs_empty) = (0usize, 0usize);
        for (index, pair) in self.pairs.iter().enumerate() {
            let publication = &self.publications[pair.publication];
            if failed.contains(&pair.subscriber) || !sim.is_running(pair.subscriber) {
                continue;
            }
            let publisher_gone = failed.contains(&publication.node);
            let counted = publication
                .published
                .iter()
                .filter(|&&at| {
                    at >= self.measure_from
                        && !(publisher_gone && failed_at.is_some_and(|f| at >= f))
                })
                .count() as u64;
            expected += counted;
            let had = self.delivered[index].min(counted);
            delivered += had;
            if had < counted {
                pairs_short += 1;
                if had == 0 {
                    pairs_empty += 1;
                }
            }
        }
        let mut gaps: Vec<f64> = Vec::new();
        if let Some(failed_at) = failed_at {
            for pair in self.pairs.iter().filter(|p| p.affected) {
                if !sim.is_running(pair.subscriber) {
                    continue;
                }
                let tail = pair.last_delivery.map_or(REPAIR_WINDOW, |last| {
                    (failed_at + REPAIR_WINDOW).saturating_since(last)
                });
                gaps.push(pair.longest_gap.max(tail).as_secs_f64() * 1e3);
            }
        }
        let total = |f: fn(&PubSubStats) -> u64| self.stats.iter().map(f).sum::<u64>();
        let per_datagram = service_datagram_overhead(secure);
        let node_seconds = sim.len() as f64 * duration.as_secs_f64();
        let bytes = total(|s| s.bytes_sent) + total(|s| s.datagrams_sent) * per_datagram;
        let mut rdp = std::mem::take(&mut self.rdp);
        PubSubReport {
            topics: self.topics.len(),
            publishers: self.publications.len(),
            subscriptions: self.topics.iter().map(|t| t.subscribers.len()).sum(),
            published: total(|s| s.published),
            deliveries_measured: rdp.len(),
            rdp: RdpSummary {
                median: quantile(&mut rdp, 0.5),
                p95: quantile(&mut rdp, 0.95),
                max: quantile(&mut rdp, 1.0),
            },
            delivered_fraction: if expected == 0 {
                f64::NAN
            } else {
                delivered as f64 / expected as f64
            },
            expected_deliveries: expected,
            missing_deliveries: expected - delivered,
            pairs_missing_some: pairs_short,
            pairs_missing_all: pairs_empty,
            duplicate_link_crossings: total(|s| s.duplicate_link_crossings),
            duplicate_arrivals: total(|s| s.duplicate_arrivals),
            repaired_pairs: gaps.len(),
            repair_ms: (!gaps.is_empty()).then(|| {
                let mut as_f32: Vec<f32> = gaps.iter().map(|&g| g as f32).collect();
                RepairSummary {
                    p50: quantile(&mut as_f32, 0.5),
                    p95: quantile(&mut as_f32, 0.95),
                    max: quantile(&mut as_f32, 1.0),
                }
            }),
            publisher_fanout: self.fanout,
            bytes_per_node_per_sec: bytes as f64 / node_seconds,
            nacks_sent: total(|s| s.nacks_sent),
            repairs_sent: total(|s| s.repairs_sent),
            upstream_moves: total(|s| s.upstream_moves),
            lost_reported: total(|s| s.lost),
        }
    }
}

/// The `q` quantile of `values` by rank (NaN where there are none).
fn quantile(values: &mut [f32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let (_, value, _) = values.select_nth_unstable_by(rank - 1, f32::total_cmp);
    f64::from(*value)
}

fn probe(pair: usize, now: Instant) -> Vec<u8> {
    let mut bytes = vec![PROBE_TAG];
    bytes.extend_from_slice(&(pair as u32).to_be_bytes());
    bytes.extend_from_slice(&now.as_micros().to_be_bytes());
    bytes
}

fn parse_probe(bytes: &[u8]) -> Option<(usize, Instant)> {
    let [PROBE_TAG, rest @ ..] = bytes else {
        return None;
    };
    let (pair, sent) = rest.split_first_chunk::<4>()?;
    let sent: [u8; 8] = sent.try_into().ok()?;
    Some((
        u32::from_be_bytes(*pair) as usize,
        Instant::from_micros(i64::from_be_bytes(sent)),
    ))
}
