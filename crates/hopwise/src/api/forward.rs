//! The service actions: `expose`, `expose_list`, `expose_rm`, `forward`, `forward_list` and
//! `forward_rm`.

use std::net::SocketAddr;

use hopwise_proto::forward::Kind;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Response;
use super::context::{ApiContext, ask};
use super::server::resolve_destination;
use crate::runner::{ControlRequest, ForwardEntry, ForwardRequest};

/// A service this node exposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposedService {
    pub name: String,
    pub kind: String,
    pub target: SocketAddr,
}

/// A forward this node runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardView {
    pub kind: String,
    pub listen: SocketAddr,
    /// `NODE/NAME` as it was given.
    pub service: String,
    /// The serving node's id.
    pub node: String,
}

impl From<&ForwardEntry> for ForwardView {
    fn from(entry: &ForwardEntry) -> Self {
        Self {
            kind: entry.kind.to_string(),
            listen: entry.listen,
            service: entry.service.clone(),
            node: entry.node.to_string(),
        }
    }
}

fn kind(text: &str) -> Result<Kind, String> {
    text.parse()
}

/// An address, or a bare port on 127.0.0.1 (as `ssh -L` listens on loopback by default).
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is neither an address (127.0.0.1:8080) nor a port"))
}

/// A forward request for [`ask`].
fn request<T>(
    make: impl FnOnce(oneshot::Sender<T>) -> ForwardRequest,
) -> impl FnOnce(oneshot::Sender<T>) -> ControlRequest {
    |reply| ControlRequest::Forward(make(reply))
}

pub async fn expose(
    context: &ApiContext,
    kind_text: String,
    name: String,
    target: String,
) -> Result<Response, Response> {
    let kind = kind(&kind_text).map_err(Response::error)?;
    let target: SocketAddr = target.parse().map_err(|_| {
        Response::error(format!(
            "{target:?}: the target is an address on this node's side, such as 127.0.0.1:53"
        ))
    })?;
    let exposed = ask(
        context,
        request(|reply| ForwardRequest::Expose {
            kind,
            name: name.clone(),
            target,
            reply,
        }),
    )
    .await?;
    exposed.map_err(|error| Response::error(error.to_string()))?;
    Ok(Response::Exposed(ExposedService {
        name,
        kind: kind.to_string(),
        target,
    }))
}

pub async fn expose_list(context: &ApiContext) -> Result<Response, Response> {
    let listing = ask(context, request(|reply| ForwardRequest::List { reply })).await?;
    Ok(Response::ExposeList {
        exposed: listing
            .exposed
            .into_iter()
            .map(|(name, kind, target)| ExposedService {
                name,
                kind: kind.to_string(),
                target,
            })
            .collect(),
    })
}

pub async fn expose_rm(context: &ApiContext, name: String) -> Result<Response, Response> {
    let removed = ask(
        context,
        request(|reply| ForwardRequest::Unexpose {
            name: name.clone(),
            reply,
        }),
    )
    .await?;
    if !removed {
        return Err(Response::error(format!(
            "no service named {name} is exposed"
        )));
    }
    Ok(Response::Unexposed { name })
}

pub async fn forward(
    context: &ApiContext,
    kind_text: String,
    listen: String,
    service: String,
) -> Result<Response, Response> {
    let kind = kind(&kind_text).map_err(Response::error)?;
    let listen = listen_address(&listen).map_err(Response::error)?;
    let Some((node, name)) = service.rsplit_once('/') else {
        return Err(Response::error(format!(
            "{service:?}: name the service as NODE/NAME (NODE an id or an alias)"
        )));
    };
    hopwise_proto::forward::validate_name(name).map_err(|e| Response::error(e.to_string()))?;
    let (node_id, _) = resolve_destination(context, node).await?;
    let bound = ask(
        context,
        request(|reply| ForwardRequest::Forward {
            kind,
            listen,
            node: node_id,
            name: name.to_string(),
            service: service.clone(),
            reply,
        }),
    )
    .await?
    .map_err(Response::error)?;
    Ok(Response::Forwarding(ForwardView {
        kind: kind.to_string(),
        listen: bound,
        service,
        node: node_id.to_string(),
    }))
}

pub async fn forward_list(context: &ApiContext) -> Result<Response, Response> {
    let listing = ask(context, request(|reply| ForwardRequest::List { reply })).await?;
    Ok(Response::ForwardList {
        forwards: listing.forwards.iter().map(ForwardView::from).collect(),
    })
}

pub async fn forward_rm(
    context: &ApiContext,
    listen: String,
    kind_text: Option<String>,
) -> Result<Response, Response> {
    let listen = listen_address(&listen).map_err(Response::error)?;
    let kind = kind_text
        .as_deref()
        .map(kind)
        .transpose()
        .map_err(Response::error)?;
    let removed = ask(
        context,
        request(|reply| ForwardRequest::Unforward {
            listen,
            kind,
            reply,
        }),
    )
    .await?;
    if removed == 0 {
        return Err(Response::error(format!("no forward listens on {listen}")));
    }
    Ok(Response::Unforwarded { listen, removed })
}
