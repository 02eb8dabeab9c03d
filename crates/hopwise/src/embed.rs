//! hopwise inside another program: a running node on the program's tokio runtime, and
//! datagram sockets on service ports, end-to-end encrypted between nodes.
//!
//! ```no_run
//! # async fn example(peer: hopwise_proto::NodeId) -> anyhow::Result<()> {
//! use hopwise::node_command::{self, NodeArgs};
//! let node = node_command::start(NodeArgs {
//!     network_key_file: Some("network.key".into()),
//!     seed: vec!["192.0.2.10:4000".parse()?],
//!     ..NodeArgs::default()
//! })
//! .await?;
//! let mut socket = node.bind(7007).await?;
//! socket.send_to(peer, 7007, b"hello").await?;
//! if let Some(answer) = socket.recv_from().await {
//!     println!("{} says {:?}", answer.from, answer.data);
//! }
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The calls reach the node's task over a channel, as the control API does; the node runs
//! until [`RunningNode::shutdown`] or until the handle is dropped.

use std::net::SocketAddr;

use anyhow::{anyhow, bail};
use hopwise_proto::NodeId;
use hopwise_proto::e2e::Port;
use hopwise_proto::service::SocketDatagram;
use hopwise_proto::service::ports::FIRST_USER_PORT;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::ApiContext;
use crate::runner::{ControlRequest, NodeHost, SocketError};

/// A node started by [`crate::node_command::start`].
pub struct RunningNode {
    id: NodeId,
    listen: SocketAddr,
    api: SocketAddr,
    /// What the control API's actions take: the channel to the runner, through which calls
    /// reach the node, and names are resolved.
    context: ApiContext,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The control API's task, and the VPN's DNS responder's: they end with the node.
    side_tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    pub(crate) fn new(
        id: NodeId,
        listen: SocketAddr,
        api: SocketAddr,
        context: ApiContext,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
        side_tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            id,
            listen,
            api,
            context,
            stop: Some(stop),
            task: Some(task),
            side_tasks,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The UDP address the node listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The address of its control API.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// Binds a datagram socket to service `port` (1024 and up; lower ports are hopwise's own).
    pub async fn bind(&self, port: impl Into<Port>) -> anyhow::Result<ServiceSocket> {
        let port = port.into();
        if port < FIRST_USER_PORT {
            bail!(
                "ports below {} are reserved for hopwise's own services",
                FIRST_USER_PORT
            );
        }
        let (reply, answer) = oneshot::channel();
        self.context
            .requests
            .send(ControlRequest::Bind { port, reply })
            .await
            .map_err(|_| SocketError::Stopped)?;
        let incoming = answer
            .await
            .map_err(|_| SocketError::Stopped)?
            .map_err(|error| anyhow!("binding port {port}: {error}"))?;
        Ok(ServiceSocket {
            port,
            context: self.context.clone(),
            incoming,
        })
    }

    /// The node `name` stands for: a node id, a prefix of a known one, or an alias (its
    /// nearest claimant, looked up in the store).
    pub async fn resolve(&self, name: &str) -> anyhow::Result<NodeId> {
        resolve(&self.context, name).await
    }

    /// Reads the node's state on its task (the control API's views take a host).
    pub async fn inspect<T: Send + 'static>(
        &self,
        inspect: impl FnOnce(&NodeHost) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Inspect(Box::new(move |host| {
            let _ = reply.send(inspect(host));
        }));
        self.context
            .requests
            .send(request)
            .await
            .map_err(|_| SocketError::Stopped)?;
        Ok(answer.await.map_err(|_| SocketError::Stopped)?)
    }

    /// Tells the routing neighbours that the node leaves, and stops it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.side_tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        // The runner leaves when its stop channel closes; the API goes with it.
        self.side_tasks.iter().for_each(JoinHandle::abort);
    }
}

/// A datagram socket bound to a service port of a running node. Dropping it unbinds the port.
pub struct ServiceSocket {
    port: Port,
    context: ApiContext,
    incoming: mpsc::Receiver<SocketDatagram>,
}

async fn resolve(context: &ApiContext, name: &str) -> anyhow::Result<NodeId> {
    crate::api::resolve_destination(context, name)
        .await
        .map(|(node, _)| node)
        .map_err(|refused| anyhow!("{}", refused.error_text().unwrap_or("cannot resolve")))
}

impl ServiceSocket {
    pub fn port(&self) -> Port {
        self.port
    }

    /// Sends `data` to port `port` of node `to`, end-to-end encrypted, from this socket's port.
    /// At most what the node's path carries (1,349 bytes with the default `--mtu` of 1,500);
    /// a larger datagram is refused with [`hopwise_proto::e2e::SendError::TooLarge`].
    pub async fn send_to(
        &self,
        to: NodeId,
        port: impl Into<Port>,
        data: &[u8],
    ) -> Result<(), SocketError> {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::SendTo {
            from: self.port,
            to,
            port: port.into(),
            data: data.to_vec(),
            reply,
        };
        self.context
            .requests
            .send(request)
            .await
            .map_err(|_| SocketError::Stopped)?;
        answer.await.map_err(|_| SocketError::Stopped)?
    }

    /// Like [`ServiceSocket::send_to`], to the node `to` names: a node id, a prefix of a
    /// known one, or an alias (its nearest claimant).
    pub async fn send_to_name(
        &self,
        to: &str,
        port: impl Into<Port>,
        data: &[u8],
    ) -> anyhow::Result<()> {
        let node = resolve(&self.context, to).await?;
        Ok(self.send_to(node, port, data).await?)
    }

    /// The next datagram for this socket: who sent it, from which port, and its bytes; `None`
    /// once the node has stopped.
    pub async fn recv_from(&mut self) -> Option<SocketDatagram> {
        self.incoming.recv().await
    }
}

impl Drop for ServiceSocket {
    fn drop(&mut self) {
        let _ = self
            .context
            .requests
            .try_send(ControlRequest::Unbind { port: self.port });
    }
}
