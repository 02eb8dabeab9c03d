//! The hopwise protocol core.
//!
//! A pure state machine: no sockets, no async runtime, no clock reads, no global randomness.
//! Time is always an argument, randomness comes from a seed in the configuration, and timers are
//! deadlines returned by [`Node::poll_timeout`]. See [`node`] for the driving contract and
//! `docs/ARCHITECTURE.md` for how the crates fit together.

pub mod alias;
pub mod coords;
pub mod e2e;
pub mod forward;
mod id;
pub mod keyed;
pub mod kv;
mod limit;
pub mod link;
pub mod node;
pub mod peers;
pub mod pubsub;
pub mod routing;
pub mod secure;
pub mod service;
pub mod tags;
mod time;
pub mod vpn;
pub mod wire;

pub use coords::{Algorithm, Coordinate, VivaldiConfig};
pub use id::NodeId;
pub use node::{
    Config, Event, Input, LinkKind, Node, NodeStats, Output, PayloadTooLarge, RouteInfo,
    RoutingConfig, RoutingLink, SentByKind, Transmit, Volume,
};
pub use routing::ZoneConfig;
pub use time::{Duration, Instant};
