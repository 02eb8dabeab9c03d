//! The control API's pub/sub actions: `publish`, and `subscribe`, which keeps its connection
//! for the stream of the topic's messages.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hopwise_proto::pubsub::PubSubEvent;
use serde::{Deserialize, Serialize};
use tokio::net::tcp::OwnedWriteHalf;

use super::Response;
use super::context::{ApiContext, ask};
use super::kv::write_line;
use crate::runner::{ControlRequest, PubSubRequest, subscription_channel};

/// One message streamed by `subscribe`: a UTF-8 message as `message`, anything else as
/// `message_b64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub topic: String,
    pub source: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_b64: Option<String>,
}

impl MessageView {
    /// The message's bytes, from whichever form it came in.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.message, &self.message_b64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => BASE64.decode(b64).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

pub async fn publish(
    context: &ApiContext,
    topic: String,
    message: Option<String>,
    message_b64: Option<String>,
) -> Result<Response, Response> {
    let message = super::kv::value_of(message, message_b64).map_err(Response::error)?;
    let reply_topic = topic.clone();
    let published = ask(context, |reply| {
        ControlRequest::PubSub(PubSubRequest::Publish {
            topic,
            message,
            reply,
        })
    })
    .await?;
    match published {
        Ok(seq) => Ok(Response::Published {
            topic: reply_topic,
            seq,
        }),
        Err(error) => Err(Response::error(error.to_string())),
    }
}

/// Streams the messages of `topic` to the connection until either side ends it.
pub async fn subscribe(
    context: &ApiContext,
    topic: String,
    write: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let (events, mut received) = subscription_channel();
    let subscribed = ask(context, |reply| {
        ControlRequest::PubSub(PubSubRequest::Subscribe {
            topic: topic.clone(),
            events,
            reply,
        })
    })
    .await;
    let answer = match subscribed {
        Ok(Ok(())) => Response::Subscribed { topic },
        Ok(Err(error)) => return write_line(write, &Response::error(error.to_string())).await,
        Err(response) => return write_line(write, &response).await,
    };
    write_line(write, &answer).await?;
    while let Some(event) = received.recv().await {
        write_line(write, &event_response(event)).await?;
    }
    Ok(())
}

fn event_response(event: PubSubEvent) -> Response {
    match event {
        PubSubEvent::Message(delivery) => {
            let (message, message_b64) = match String::from_utf8(delivery.message) {
                Ok(text) => (Some(text), None),
                Err(error) => (None, Some(BASE64.encode(error.as_bytes()))),
            };
            Response::Message(MessageView {
                topic: delivery.topic,
                source: delivery.source.to_string(),
                seq: delivery.seq,
                message,
                message_b64,
            })
        }
        PubSubEvent::Lost {
            topic,
            source,
            count,
        } => Response::Lost {
            topic,
            source: source.to_string(),
            count,
        },
    }
}
