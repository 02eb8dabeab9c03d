//! `hopwise node`: run a node on a real UDP socket, with its control API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use hopwise_proto::Config;
use hopwise_proto::secure::{Keys, SecureNode};
use hopwise_proto::service::Host;
use hopwise_proto::tags::{MAX_TAG_LEN, MAX_TAGS};
use serde::Deserialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::api::{self, ApiContext};
use crate::embed::RunningNode;
use crate::keys::{NodeKey, load_network_key};
use crate::runner::{
    Capture, Clock, Ipv4Setting, Runner, StoreFile, TcpCounters, Testbed, VpnOptions, load_delays,
};
use hopwise_proto::NodeId;
use hopwise_proto::vpn::Ipv4Prefix;

const DEFAULT_LISTEN: &str = "0.0.0.0:4000";
const DEFAULT_API: &str = "127.0.0.1:4001";

/// Every option can also be set in the TOML file given with `--config`, under the same name
/// (`listen = "0.0.0.0:4000"`, `seed = ["192.0.2.1:4000"]`, `network-key-file = "..."`);
/// the command line wins over the file.
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeArgs {
    /// TOML file with any of these options under the same names, e.g. `listen = "[::]:4000"`,
    /// `seed = ["192.0.2.1:4000"]`, `network-key-file = "network.key"`; the command line wins.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// UDP address to listen on (IPv4 or IPv6) [default: 0.0.0.0:4000].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of a node to join through; repeat for several.
    #[arg(long = "seed")]
    #[serde(default)]
    pub seed: Vec<SocketAddr>,
    /// This node's tags, comma-separated (at most 8, each at most 64 bytes).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub tags: Vec<String>,
    /// Keep a routing link to every node whose tags include one of these.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub connect_tags: Vec<String>,
    /// Node key file (from `hopwise keygen`); without it the node makes up a key for this run.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Network key file (from `hopwise keygen --network`) shared by every member.
    #[arg(long)]
    pub network_key_file: Option<PathBuf>,
    /// Address of the control API (newline-delimited JSON over TCP) [default: 127.0.0.1:4001].
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Be a landmark: the fixed zero point of the coordinate space.
    #[arg(long)]
    #[serde(default)]
    pub landmark: bool,
    /// Write every packet this node sends and receives, as it is after hop-by-hop decryption
    /// (what a relay sees), to this pcap file; for debugging.
    #[arg(long)]
    pub capture: Option<PathBuf>,
    /// Keep the key-value store's entries in this directory (a redb database), so a restarted
    /// node serves them again; without it the store lives in memory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Claim this alias (repeatable): other nodes reach this one by the name, and several nodes
    /// may claim one name (the nearest is used).
    #[arg(long = "alias")]
    #[serde(default)]
    pub alias: Vec<String>,
    /// The MTU of the path to other nodes (1,280 to 9,000) [default: 1500]: the overlay's
    /// datagrams are sized to fit it under the UDP, IP and encryption headers.
    #[arg(long)]
    pub mtu: Option<u16>,
    /// Run the VPN: a TUN interface with this node's IPv6 address (from the network key and
    /// the node id) and an IPv4 address claimed in the store, carrying IP packets to every
    /// member end to end; a DNS responder on the VPN addresses answers NAME.hopwise. Needs
    /// root or CAP_NET_ADMIN.
    #[arg(long)]
    #[serde(default)]
    pub vpn: bool,
    /// The VPN interface's name [default: hopwise0].
    #[arg(long)]
    pub vpn_interface: Option<String>,
    /// `auto` (an address derived from the id, the next on a collision), an address
    /// A.B.C.D inside --vpn-ipv4-prefix, or `off` [default: auto].
    #[arg(long)]
    pub vpn_ipv4: Option<String>,
    /// The network-wide IPv4 prefix; every member must use the same [default: 100.64.0.0/10].
    #[arg(long)]
    pub vpn_ipv4_prefix: Option<String>,
    /// Members that may send into this node's VPN interface, by node id or alias,
    /// comma-separated [default: every member].
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub vpn_allow: Vec<String>,
    /// Services to expose at start (TOML only): `[[expose]]` tables with `kind` (udp or tcp),
    /// `name` and `target`; `hopwise expose` adds more while the node runs.
    #[arg(skip)]
    #[serde(default)]
    pub expose: Vec<ExposeConfig>,
    /// Forwards to start (TOML only): `[[forward]]` tables with `kind`, `listen` and
    /// `service` (NODE/NAME); each is set up once its serving node answers.
    #[arg(skip)]
    #[serde(default)]
    pub forward: Vec<ForwardConfig>,
    /// TESTBED ONLY: delay every outgoing datagram by a one-way latency per destination, read
    /// from a JSON file {"ip:port": milliseconds}; a negative delay drops every datagram to
    /// that destination. Emulates a wide-area network on one machine.
    #[arg(long)]
    pub testbed_delays: Option<PathBuf>,
}

impl NodeArgs {
    /// The command line over the config file.
    fn merged(self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let file: NodeArgs =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        Ok(Self {
            config: self.config,
            listen: self.listen.or(file.listen),
            seed: command_line_or(self.seed, file.seed),
            tags: command_line_or(self.tags, file.tags),
            connect_tags: command_line_or(self.connect_tags, file.connect_tags),
            key: self.key.or(file.key),
            network_key_file: self.network_key_file.or(file.network_key_file),
            api: self.api.or(file.api),
            landmark: self.landmark || file.landmark,
            capture: self.capture.or(file.capture),
            testbed_delays: self.testbed_delays.or(file.testbed_delays),
            data_dir: self.data_dir.or(file.data_dir),
            alias: command_line_or(self.alias, file.alias),
            mtu: self.mtu.or(file.mtu),
            vpn: self.vpn || file.vpn,
            vpn_interface: self.vpn_interface.or(file.vpn_interface),
            vpn_ipv4: self.vpn_ipv4.or(file.vpn_ipv4),
            vpn_ipv4_prefix: self.vpn_ipv4_prefix.or(file.vpn_ipv4_prefix),
            vpn_allow: command_line_or(self.vpn_allow, file.vpn_allow),
            expose: command_line_or(self.expose, file.expose),
            forward: command_line_or(self.forward, file.forward),
        })
    }
}

/// An `[[expose]]` table of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExposeConfig {
    pub kind: String,
    pub name: String,
    pub target: String,
}

/// A `[[forward]]` table of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    pub kind: String,
    pub listen: String,
    pub service: String,
}

/// A list given on the command line replaces the file's.
fn command_line_or<T>(command_line: Vec<T>, file: Vec<T>) -> Vec<T> {
    if command_line.is_empty() {
        file
    } else {
        command_line
    }
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let args = args.merged()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = start(args).await?;
        println!(
            "hopwise node {} listening on {}",
            node.id(),
            node.listen_addr()
        );
        shutdown_signal().await;
        node.shutdown().await;
        Ok(())
    })
}

/// Starts a node on the current tokio runtime: its socket, its control API and the task that
/// runs it. The config file named in `args` is read first.
pub async fn start(args: NodeArgs) -> anyhow::Result<RunningNode> {
    let args = args.merged()?;
    let key = match &args.key {
        Some(path) => NodeKey::load(path)?,
        None => NodeKey::generate()?,
    };
    let Some(network_key_file) = &args.network_key_file else {
        bail!(
            "a network key is required (--network-key-file); create one with \
             `hopwise keygen --network --out network.key` and give it to every member"
        );
    };
    let keys = Keys {
        private_key: key.private,
        public_key: key.public,
        network_key: load_network_key(network_key_file)?,
    };
    for name in &args.alias {
        hopwise_proto::alias::validate(name)?;
    }
    let listed = args.alias.join(",").len();
    if listed > hopwise_proto::kv::MAX_VALUE {
        bail!(
            "the aliases take {listed} bytes; at most {} in all",
            hopwise_proto::kv::MAX_VALUE
        );
    }
    let store_file = args.data_dir.as_deref().map(StoreFile::open).transpose()?;
    let listen = args.listen.unwrap_or(DEFAULT_LISTEN.parse()?);
    let socket =
        std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    socket.set_nonblocking(true)?;
    let listen = socket.local_addr()?;
    let api_addr = args.api.unwrap_or(DEFAULT_API.parse()?);
    let api_listener = TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the control API on {api_addr}"))?;
    let api_addr = api_listener.local_addr()?;
    let testbed = match &args.testbed_delays {
        Some(path) => {
            let delays = load_delays(path)?;
            // The clone shares the socket and its non-blocking mode: a datagram that meets a
            // full send buffer is dropped, as the network would drop it.
            Some(Testbed::start(socket.try_clone()?, delays))
        }
        None => None,
    };

    let clock = Clock::start();
    let seed = u64::from_be_bytes(crate::keys::random_bytes()?[..8].try_into()?);
    let mut config = Config::new(key.id(), seed);
    config.bootstrap = args.seed.clone();
    config.landmark = args.landmark;
    config.tags = checked_tags(&args.tags)?;
    config.connect_tags = checked_tags(&args.connect_tags)?;
    config.max_datagram = datagram_for_path_mtu(args.mtu.unwrap_or(DEFAULT_MTU))?;
    let vpn = args.vpn.then(|| vpn_options(&args)).transpose()?;
    let node = SecureNode::new(config, &keys, clock.now());
    let host = Host::new(node, &keys, seed.rotate_left(29), clock.now());
    info!(id = %key.id(), %listen, api = %api_addr, "hopwise node started");

    let (requests, inbox) = mpsc::channel(64);
    let tcp_counters = Arc::new(TcpCounters::default());
    let context = ApiContext {
        requests: requests.clone(),
        listen,
        clock,
        names: Default::default(),
        tcp: tcp_counters.clone(),
    };
    let context_for_dns = context.clone();
    let context_for_services = context.clone();
    let context_for_embedding = context.clone();
    let api = tokio::spawn(api::serve(api_listener, context));
    let mut runner = Runner::new(
        host,
        UdpSocket::from_std(socket)?,
        clock,
        testbed,
        inbox,
        store_file,
    )?
    .with_aliases(&args.alias)
    .with_forwards(seed.rotate_left(53), requests.clone(), tcp_counters)?;
    let dns = match vpn {
        Some(options) => {
            runner = runner.with_vpn(options, &keys.network_key, seed.rotate_left(41))?;
            Some(tokio::spawn(crate::dns::serve(
                context_for_dns,
                keys.network_key,
            )))
        }
        None => None,
    };
    if let Some(path) = &args.capture {
        runner = runner.with_capture(Capture::create(path, listen)?);
    }
    let configured = configured_services(&args, context_for_services);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async {
        // A dropped handle stops the node too.
        let _ = stopped.await;
    }));
    Ok(RunningNode::new(
        key.id(),
        listen,
        api_addr,
        context_for_embedding,
        stop,
        task,
        [api, configured].into_iter().chain(dns).collect(),
    ))
}

/// A configured forward whose serving node did not answer yet is tried again this often.
const FORWARD_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets up the config file's `[[expose]]` and `[[forward]]` tables through the control API's
/// own actions, so they behave as `hopwise expose` and `hopwise forward` do. A forward is
/// tried until its serving node answers (it may start later, or the alias may not be
/// claimed yet).
fn configured_services(args: &NodeArgs, context: ApiContext) -> tokio::task::JoinHandle<()> {
    let (exposes, forwards) = (args.expose.clone(), args.forward.clone());
    tokio::spawn(async move {
        for expose in exposes {
            let answer =
                api::forward::expose(&context, expose.kind, expose.name.clone(), expose.target)
                    .await;
            if let Err(refused) = answer {
                warn!(name = %expose.name, "[[expose]]: {}", refused.error_text().unwrap_or(""));
            }
        }
        let mut waiting = forwards;
        let mut warned = std::collections::HashSet::new();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for forward in waiting {
                let answer = api::forward::forward(
                    &context,
                    forward.kind.clone(),
                    forward.listen.clone(),
                    forward.service.clone(),
                )
                .await;
                if let Err(refused) = answer {
                    if warned.insert(forward.service.clone()) {
                        warn!(service = %forward.service, "[[forward]] (trying again every {} s): {}",
                            FORWARD_RETRY.as_secs(), refused.error_text().unwrap_or(""));
                    }
                    still.push(forward);
                }
            }
            waiting = still;
            if !waiting.is_empty() {
                tokio::time::sleep(FORWARD_RETRY).await;
            }
        }
    })
}

const DEFAULT_MTU: u16 = 1500;
/// The path MTU the VPN needs for an interface MTU of 1,280 (the IPv6 minimum).
const VPN_MIN_MTU: u16 = 1431;

/// The overlay datagram a path of `mtu` bytes carries.
fn datagram_for_path_mtu(mtu: u16) -> anyhow::Result<usize> {
    let most = hopwise_proto::wire::MAX_PATH_MTU;
    if !(1280..=most).contains(&usize::from(mtu)) {
        bail!("--mtu {mtu}: the path MTU must be 1280 to {most}");
    }
    Ok(hopwise_proto::wire::datagram_for_path_mtu(usize::from(mtu)))
}

fn vpn_options(args: &NodeArgs) -> anyhow::Result<VpnOptions> {
    let mtu = args.mtu.unwrap_or(DEFAULT_MTU);
    if mtu < VPN_MIN_MTU {
        bail!("--vpn needs --mtu {VPN_MIN_MTU} or more, for an interface MTU of 1280");
    }
    let ipv4_prefix: Ipv4Prefix = match &args.vpn_ipv4_prefix {
        Some(text) => text.parse()?,
        None => Ipv4Prefix::DEFAULT,
    };
    let ipv4 = match args.vpn_ipv4.as_deref() {
        None | Some("auto") => Ipv4Setting::Auto,
        Some("off") => Ipv4Setting::Off,
        Some(text) => {
            let address = text
                .parse()
                .with_context(|| format!("--vpn-ipv4 {text}: use auto, off or A.B.C.D"))?;
            if !ipv4_prefix.is_host(address) {
                bail!("--vpn-ipv4 {address} is not a host address of {ipv4_prefix}");
            }
            Ipv4Setting::Fixed(address)
        }
    };
    for entry in &args.vpn_allow {
        if NodeId::from_hex(entry).is_none() {
            hopwise_proto::alias::validate(entry)
                .with_context(|| format!("--vpn-allow {entry}: neither a node id nor an alias"))?;
        }
    }
    Ok(VpnOptions {
        interface: args
            .vpn_interface
            .clone()
            .unwrap_or_else(|| "hopwise0".into()),
        ipv4,
        ipv4_prefix,
        allow: args.vpn_allow.clone(),
    })
}

fn checked_tags(tags: &[String]) -> anyhow::Result<Vec<String>> {
    if tags.len() > MAX_TAGS {
        bail!("at most {MAX_TAGS} tags");
    }
    if let Some(tag) = tags.iter().find(|t| t.is_empty() || t.len() > MAX_TAG_LEN) {
        bail!("tag {tag:?}: a tag has 1 to {MAX_TAG_LEN} bytes");
    }
    Ok(tags.to_vec())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
