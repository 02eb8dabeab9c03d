//! The hopwise node runner, its control API and command-line tools, as a library so that the
//! testbed tests drive the same code as the `hopwise` binary.

pub mod api;
pub mod client;
pub mod demo;
pub mod dns;
pub mod embed;
pub mod keys;
pub mod node_command;
pub mod runner;
pub mod sim_command;
pub mod testnet;
