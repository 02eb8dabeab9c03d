//! The runner's side of publish/subscribe: the service on the host, publishes from the control
//! API or an embedding program, and the streams of every local subscriber.

use std::collections::HashMap;

use hopwise_proto::pubsub::{PubSub, PubSubError, PubSubEvent};
use hopwise_proto::service::{ServiceHandle, ports};
use hopwise_proto::{Instant, NodeId};
use tokio::sync::{mpsc, oneshot};

use super::NodeHost;

/// A pub/sub call; its answer comes on the channel it carries.
pub enum PubSubRequest {
    Publish {
        topic: String,
        message: Vec<u8>,
        reply: oneshot::Sender<Result<u64, PubSubError>>,
    },
    /// Streams the messages of `topic` to `events` until its receiver is dropped.
    Subscribe {
        topic: String,
        events: mpsc::Sender<PubSubEvent>,
        reply: oneshot::Sender<Result<(), PubSubError>>,
    },
}

/// Events a slow subscriber may fall behind by; it is told how many it lost beyond that.
/// Twice what one repair can hand over at once (a tree's recent messages), so a reader that
/// keeps up with the publisher loses nothing to the burst after a repair.
const STREAM_BACKLOG: usize = 2 * hopwise_proto::pubsub::RECENT;

pub fn subscription_channel() -> (mpsc::Sender<PubSubEvent>, mpsc::Receiver<PubSubEvent>) {
    mpsc::channel(STREAM_BACKLOG)
}

/// One local subscriber's stream.
struct Stream {
    events: mpsc::Sender<PubSubEvent>,
    /// Messages it had no room for, by publisher, not yet reported.
    lost: HashMap<NodeId, u64>,
}

impl Stream {
    /// Sends `event`, or counts it lost; false once the subscriber is gone.
    fn offer(&mut self, event: &PubSubEvent) -> bool {
        let (topic, source, count) = match event {
            PubSubEvent::Message(delivery) => (&delivery.topic, delivery.source, 1),
            PubSubEvent::Lost {
                topic,
                source,
                count,
            } => (topic, *source, *count),
        };
        if let Some(&lost) = self.lost.get(&source) {
            let report = PubSubEvent::Lost {
                topic: topic.clone(),
                source,
                count: lost,
            };
            match self.events.try_send(report) {
                Ok(()) => {
                    self.lost.remove(&source);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    *self.lost.entry(source).or_default() += count;
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        match self.events.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                *self.lost.entry(source).or_default() += count;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

pub struct PubSubBridge {
    handle: ServiceHandle<PubSub>,
    /// Local subscribers by topic.
    streams: HashMap<String, Vec<Stream>>,
}

impl PubSubBridge {
    pub fn new(host: &mut NodeHost, seed: u64) -> anyhow::Result<Self> {
        let service = PubSub::new(host.node().id(), host.max_data(), seed);
        let handle = host.register(ports::PUBSUB, service)?;
        Ok(Self {
            handle,
            streams: HashMap::new(),
        })
    }

    pub fn handle(&self) -> ServiceHandle<PubSub> {
        self.handle
    }

    pub fn request(&mut self, host: &mut NodeHost, now: Instant, request: PubSubRequest) {
        let pubsub = host.service_mut(self.handle);
        match request {
            PubSubRequest::Publish {
                topic,
                message,
                reply,
            } => {
                let _ = reply.send(pubsub.publish(now, &topic, &message));
            }
            PubSubRequest::Subscribe {
                topic,
                events,
                reply,
            } => match pubsub.subscribe(now, &topic) {
                Ok(()) => {
                    self.streams.entry(topic).or_default().push(Stream {
                        events,
                        lost: HashMap::new(),
                    });
                    let _ = reply.send(Ok(()));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
        }
    }

    /// Hands the service's events to the subscribers' streams, and unsubscribes from topics
    /// nobody reads any more.
    pub fn pump(&mut self, host: &mut NodeHost) {
        let pubsub = host.service_mut(self.handle);
        while let Some(event) = pubsub.poll_event() {
            let topic = match &event {
                PubSubEvent::Message(delivery) => &delivery.topic,
                PubSubEvent::Lost { topic, .. } => topic,
            };
            if let Some(streams) = self.streams.get_mut(topic) {
                streams.retain_mut(|stream| stream.offer(&event));
            }
        }
        self.streams.retain(|topic, streams| {
            streams.retain(|stream| !stream.events.is_closed());
            if streams.is_empty() {
                pubsub.unsubscribe(topic);
            }
            !streams.is_empty()
        });
    }
}
