//! What every API connection shares, and the round trip of a request to the runner's task,
//! where the host lives.

use std::net::SocketAddr;
use std::sync::Arc;

use hopwise_proto::Node;
use tokio::sync::{mpsc, oneshot};

use super::Response;
use super::kv::NameCache;
use crate::runner::{Clock, ControlRequest, NodeHost, TcpCounters};

#[derive(Clone)]
pub struct ApiContext {
    pub requests: mpsc::Sender<ControlRequest>,
    pub listen: SocketAddr,
    pub clock: Clock,
    /// Nodes' names for netloc's answers, read from the store now and then.
    pub names: Arc<std::sync::Mutex<NameCache>>,
    /// The TCP forwards' counters, kept by their tasks.
    pub tcp: Arc<TcpCounters>,
}

/// Runs `inspect` on the runner's task, where the node lives.
pub async fn inspect<T: Send + 'static>(
    context: &ApiContext,
    inspect: impl FnOnce(&Node) -> T + Send + 'static,
) -> Result<T, Response> {
    inspect_host(context, |host| inspect(host.node())).await
}

/// Like [`inspect`], with the secure layer, the end-to-end layer and the services in view.
pub async fn inspect_host<T: Send + 'static>(
    context: &ApiContext,
    inspect: impl FnOnce(&NodeHost) -> T + Send + 'static,
) -> Result<T, Response> {
    ask(context, |reply| {
        ControlRequest::Inspect(Box::new(move |node| {
            let _ = reply.send(inspect(node));
        }))
    })
    .await
}

/// Sends the runner a request carrying a reply channel, and waits for the reply.
pub async fn ask<T>(
    context: &ApiContext,
    request: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    let stopped = || Response::error("the node is shutting down");
    context
        .requests
        .send(request(reply))
        .await
        .map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())
}
