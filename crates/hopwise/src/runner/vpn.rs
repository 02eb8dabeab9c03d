//! The runner's side of the VPN (`--vpn`): the TUN interface, the VPN service on the host,
//! the node's IPv4 claim and the store lookups the service asks for.

use std::net::Ipv4Addr;
use std::time::Duration as StdDuration;

use anyhow::Context;
use hopwise_proto::kv::{Entry, KvError};
use hopwise_proto::service::{ServiceHandle, ports};
use hopwise_proto::vpn::{
    CLAIM_SUB, Ipv4Prefix, Ipv6Prefix, Vpn, VpnConfig, ipv4_key, ipv4_of_key,
};
use hopwise_proto::{Instant, NodeId, alias};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::NodeHost;
use super::interface::Interface;
use super::kv::{KvBridge, KvRequest, claimants};

/// How this node takes an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Setting {
    Off,
    /// Candidates derived from the id, the next after a collision.
    Auto,
    Fixed(Ipv4Addr),
}

#[derive(Debug, Clone)]
pub struct VpnOptions {
    pub interface: String,
    pub ipv4: Ipv4Setting,
    pub ipv4_prefix: Ipv4Prefix,
    /// Node ids (full hex) or aliases that may send into this interface; empty: everyone.
    pub allow: Vec<String>,
}

/// Reads of the interface per wake (each up to a batch of packets), before the node's
/// output goes out.
const READS_PER_WAKE: usize = 16;
/// A claim that failed for a passing reason (no replica yet) is tried again after this long;
/// a held claim is checked this often.
const CLAIM_RETRY: StdDuration = StdDuration::from_secs(1);
const CLAIM_CHECK: StdDuration = StdDuration::from_secs(30);
/// Aliases in the allow list are resolved again this often.
const ALLOW_REFRESH: StdDuration = StdDuration::from_secs(30);

/// What a store call the bridge started came back with.
pub enum VpnAnswer {
    Resolved(Ipv4Addr, Result<Vec<Entry>, KvError>),
    Claimed(Ipv4Addr, Result<u64, KvError>),
    Checked(Ipv4Addr, Result<Vec<Entry>, KvError>),
    Allowed(Result<Vec<Entry>, KvError>),
}

/// Where the IPv4 claim stands; `attempt` numbers the candidate (`--vpn-ipv4 auto`).
enum Claim {
    Off,
    Due {
        at: tokio::time::Instant,
        attempt: u32,
    },
    Asking {
        attempt: u32,
    },
    Held {
        address: Ipv4Addr,
        check_at: tokio::time::Instant,
        attempt: u32,
    },
}

pub struct VpnBridge {
    handle: ServiceHandle<Vpn>,
    device: Interface,
    options: VpnOptions,
    local: NodeId,
    claim: Claim,
    /// `--vpn-allow` split once: the ids given as ids, and the aliases to resolve.
    allowed_by_id: Vec<NodeId>,
    allowed_aliases: Vec<String>,
    /// Those ids and the aliases' claimants found since the last refresh.
    allowed_ids: Vec<NodeId>,
    allow_refresh_at: tokio::time::Instant,
    answers: mpsc::UnboundedSender<VpnAnswer>,
}

impl VpnBridge {
    /// Creates the interface (it needs CAP_NET_ADMIN) and puts the VPN on its port.
    pub fn start(
        host: &mut NodeHost,
        options: VpnOptions,
        network_key: &[u8; 32],
        seed: u64,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<VpnAnswer>)> {
        let local = host.node().id();
        let mtu = host.max_data();
        let ipv6_prefix = Ipv6Prefix::from_network_key(network_key);
        let address = ipv6_prefix.address_of(local);
        let device = Interface::create(
            &options.interface,
            u16::try_from(mtu).unwrap_or(u16::MAX),
            address,
        )
        .with_context(|| {
            format!(
                "cannot create the VPN interface {} (--vpn needs root or CAP_NET_ADMIN, \
                     and /dev/net/tun)",
                options.interface
            )
        })?;
        let explicit: Vec<NodeId> = options
            .allow
            .iter()
            .filter_map(|a| NodeId::from_hex(a))
            .collect();
        let config = VpnConfig {
            ipv6_prefix,
            ipv4_prefix: options.ipv4_prefix,
            allow: (!options.allow.is_empty()).then(|| explicit.clone()),
            mtu,
        };
        let handle = host.register(ports::VPN, Vpn::new(local, config, seed))?;
        info!(interface = %options.interface, %address, mtu, "VPN up");
        let (answers, answered) = mpsc::unbounded_channel();
        let now = tokio::time::Instant::now();
        Ok((
            Self {
                handle,
                device,
                local,
                claim: match options.ipv4 {
                    Ipv4Setting::Off => Claim::Off,
                    _ => Claim::Due {
                        at: now,
                        attempt: 0,
                    },
                },
                allowed_aliases: options
                    .allow
                    .iter()
                    .filter(|entry| NodeId::from_hex(entry).is_none())
                    .cloned()
                    .collect(),
                allowed_ids: explicit.clone(),
                allowed_by_id: explicit,
                allow_refresh_at: now,
                options,
                answers,
            },
            answered,
        ))
    }

    pub async fn readable(&self) -> std::io::Result<()> {
        self.device.readable().await
    }

    /// Hands what the interface holds to the service, up to [`READS_PER_WAKE`] reads.
    pub fn read_all(&mut self, host: &mut NodeHost, now: Instant) {
        let (vpn, node) = host.service_with_node(self.handle);
        for _ in 0..READS_PER_WAKE {
            match self
                .device
                .read(|packet| vpn.send_packet(now, packet, node))
            {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    warn!(%error, "reading the VPN interface failed");
                    return;
                }
            }
        }
    }

    /// Writes what the service received to the interface, and starts the lookups it asks for.
    pub fn pump(&mut self, host: &mut NodeHost, kv: &mut KvBridge, now: Instant) {
        let vpn = host.service_mut(self.handle);
        while let Some(packet) = vpn.poll_packet() {
            self.device.write(&packet);
        }
        self.device.flush();
        let mut lookups = Vec::new();
        while let Some(address) = vpn.poll_lookup() {
            lookups.push(address);
        }
        for address in lookups {
            self.get(host, kv, now, ipv4_key(address), move |read| {
                VpnAnswer::Resolved(address, read)
            });
        }
        self.tick(host, kv, now);
    }

    /// When [`VpnBridge::tick`] next has something to do.
    pub fn deadline(&self) -> tokio::time::Instant {
        let claim = match self.claim {
            Claim::Due { at, .. } => at,
            Claim::Held { check_at, .. } => check_at,
            Claim::Off | Claim::Asking { .. } => self.allow_refresh_at,
        };
        claim.min(self.allow_refresh_at)
    }

    /// Claims or checks the IPv4 address, and refreshes the allow list's aliases.
    pub fn tick(&mut self, host: &mut NodeHost, kv: &mut KvBridge, now: Instant) {
        let wall = tokio::time::Instant::now();
        if wall >= self.allow_refresh_at {
            self.allow_refresh_at = wall + ALLOW_REFRESH;
            self.allowed_ids.clone_from(&self.allowed_by_id);
            for name in &self.allowed_aliases {
                self.get(host, kv, now, alias::key(name), VpnAnswer::Allowed);
            }
        }
        // The store places a claim among the nodes this one routes to: claim once there are some.
        let joined = host.node().routes().next().is_some();
        match self.claim {
            Claim::Due { at, attempt } if wall >= at && !joined => {
                // Looked at again in a while (arriving routes wake the runner anyway).
                self.claim = Claim::Due {
                    at: wall + CLAIM_RETRY,
                    attempt,
                };
            }
            Claim::Due { at, attempt } if wall >= at => {
                let address = match self.options.ipv4 {
                    Ipv4Setting::Fixed(address) => address,
                    _ => self.options.ipv4_prefix.candidate(self.local, attempt),
                };
                self.claim = Claim::Asking { attempt };
                let answers = self.answers.clone();
                let (reply, answer) = oneshot::channel();
                kv.request(
                    host,
                    now,
                    KvRequest::Set {
                        key: ipv4_key(address),
                        sub: CLAIM_SUB.to_vec(),
                        value: Vec::new(),
                        ttl: None,
                        ephemeral: true,
                        reply,
                    },
                );
                tokio::spawn(async move {
                    if let Ok(result) = answer.await {
                        let _ = answers.send(VpnAnswer::Claimed(address, result));
                    }
                });
            }
            Claim::Held {
                address,
                check_at,
                attempt,
            } if wall >= check_at => {
                self.claim = Claim::Held {
                    address,
                    check_at: wall + CLAIM_CHECK,
                    attempt,
                };
                self.get(host, kv, now, ipv4_key(address), move |read| {
                    VpnAnswer::Checked(address, read)
                });
            }
            _ => {}
        }
    }

    fn get(
        &self,
        host: &mut NodeHost,
        kv: &mut KvBridge,
        now: Instant,
        key: Vec<u8>,
        answer: impl FnOnce(Result<Vec<Entry>, KvError>) -> VpnAnswer + Send + 'static,
    ) {
        let (reply, read) = oneshot::channel();
        kv.request(
            host,
            now,
            KvRequest::Get {
                key,
                sub: None,
                reply,
            },
        );
        let answers = self.answers.clone();
        tokio::spawn(async move {
            if let Ok(result) = read.await {
                let _ = answers.send(answer(result));
            }
        });
    }

    /// A store call came back.
    pub fn on_answer(
        &mut self,
        host: &mut NodeHost,
        kv: &mut KvBridge,
        now: Instant,
        answer: VpnAnswer,
    ) {
        let wall = tokio::time::Instant::now();
        match answer {
            VpnAnswer::Resolved(address, read) => {
                // A failed read is no answer: the packets wait for the lookup's timeout.
                if let Ok(entries) = read {
                    let owner = claim_owner(&entries);
                    let (vpn, node) = host.service_with_node(self.handle);
                    vpn.resolved(now, address, owner, node);
                }
            }
            VpnAnswer::Claimed(address, result) => {
                let Claim::Asking { attempt } = self.claim else {
                    return;
                };
                match result {
                    Ok(_) => self.hold(host, kv, now, address, attempt),
                    Err(KvError::NotOwner) if self.options.ipv4 == Ipv4Setting::Auto => {
                        info!(%address, "IPv4 address taken; trying the next");
                        self.claim = Claim::Due {
                            at: wall,
                            attempt: attempt + 1,
                        };
                    }
                    Err(error) => {
                        let retry = if error == KvError::NotOwner {
                            CLAIM_CHECK
                        } else {
                            CLAIM_RETRY
                        };
                        warn!(%address, %error, "cannot claim the IPv4 address yet");
                        self.claim = Claim::Due {
                            at: wall + retry,
                            attempt,
                        };
                    }
                }
            }
            VpnAnswer::Checked(address, read) => {
                if let Ok(entries) = read
                    && claim_owner(&entries).is_some_and(|owner| owner != self.local)
                {
                    warn!(%address, "lost the IPv4 address to another node; claiming another");
                    if let Err(error) = self.device.remove_address(address.into()) {
                        warn!(%error, "cannot remove the address");
                    }
                    let Claim::Held { attempt, .. } = self.claim else {
                        return;
                    };
                    let attempt = if self.options.ipv4 == Ipv4Setting::Auto {
                        attempt + 1
                    } else {
                        attempt
                    };
                    self.claim = Claim::Due { at: wall, attempt };
                }
            }
            VpnAnswer::Allowed(read) => {
                if let Ok(entries) = read {
                    self.allowed_ids.extend(claimants(&entries));
                    self.allowed_ids.sort();
                    self.allowed_ids.dedup();
                    host.service_mut(self.handle)
                        .set_allow(self.allowed_ids.clone());
                }
            }
        }
    }

    fn hold(
        &mut self,
        host: &mut NodeHost,
        kv: &mut KvBridge,
        now: Instant,
        address: Ipv4Addr,
        attempt: u32,
    ) {
        let prefix = self.options.ipv4_prefix.prefix_len();
        if let Err(error) = self.device.add_ipv4(address, prefix) {
            warn!(%error, %address, "cannot give the interface its IPv4 address");
        }
        host.service_mut(self.handle).set_ipv4(address);
        // Others find this node's address by its id, for DNS A records.
        let (reply, _ignored) = oneshot::channel();
        kv.request(
            host,
            now,
            KvRequest::Set {
                key: ipv4_of_key(self.local),
                sub: CLAIM_SUB.to_vec(),
                value: address.to_string().into_bytes(),
                ttl: None,
                ephemeral: true,
                reply,
            },
        );
        info!(%address, "IPv4 address claimed");
        self.claim = Claim::Held {
            address,
            check_at: tokio::time::Instant::now() + CLAIM_CHECK,
            attempt,
        };
    }
}

/// The node a claim names: the writer of its entry.
fn claim_owner(entries: &[Entry]) -> Option<NodeId> {
    entries
        .iter()
        .find(|e| e.sub == CLAIM_SUB)
        .map(|e| e.writer)
}
