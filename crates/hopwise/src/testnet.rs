//! A local test network: one `hopwise node` process per host of a latency matrix, each on its
//! own loopback address (127.S.0.2, 127.S.0.3, ... for subnet S), with the matrix's latencies
//! applied by the runner's testbed delays. `hopwise demo` and the testbed tests use it; tests
//! that run at the same time use different subnets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use hopwise_proto::NodeId;
use hopwise_sim::Matrix;
use tokio::process::{Child, Command};

use crate::api::{Request, Response, Status, TraceReport};
use crate::client::call;
use crate::keys::{self, NodeKey};

const UDP_PORT: u16 = 4000;
/// Interval of the flow [`Testnet::kill_under_flow`] watches: 20 packets per second.
const FLOW_INTERVAL: Duration = Duration::from_millis(50);
const API_PORT: u16 = 4001;

/// One node of the test network.
pub struct Member {
    pub name: String,
    pub id: NodeId,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    key_file: PathBuf,
    delays_file: PathBuf,
    /// The network key this member starts with; a test may point it elsewhere.
    pub network_key_file: PathBuf,
    log_file: PathBuf,
    /// The address this member joins through; a test may point it elsewhere.
    pub seed: Option<SocketAddr>,
    /// Another program than `hopwise node` (one that embeds a node and takes its options),
    /// with its arguments before the node options.
    pub program: Option<(PathBuf, Vec<String>)>,
    /// More node options, after the usual ones.
    pub options: Vec<String>,
    /// The network namespace the member runs in (through `ip netns exec`), if not this one.
    pub netns: Option<String>,
    process: Option<Child>,
}

pub struct Testnet {
    pub members: Vec<Member>,
    binary: PathBuf,
    dir: PathBuf,
}

/// A host's name as an alias: lowercase, words joined by `-` ("New York" is `new-york`);
/// `None` if nothing of it is left.
pub fn alias_of(name: &str) -> Option<String> {
    let words: Vec<String> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let alias = words.join("-");
    hopwise_proto::alias::validate(&alias).ok()?;
    Some(alias)
}

/// The loopback address of member `index` in `subnet`.
fn host(subnet: u8, index: usize) -> IpAddr {
    let n = index + 1;
    IpAddr::V4(Ipv4Addr::new(
        127,
        subnet,
        (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

impl Testnet {
    /// Writes keys and delay files for every host of `matrix` into `dir` and starts the nodes
    /// (see [`Testnet::create`]).
    pub fn start(
        binary: &Path,
        matrix: &Matrix,
        dir: &Path,
        network_key: &[u8; keys::KEY_LEN],
        subnet: u8,
    ) -> anyhow::Result<Self> {
        let mut net = Self::create(binary, matrix, dir, network_key, subnet)?;
        for i in 0..net.members.len() {
            net.launch(i)?;
        }
        Ok(net)
    }

    /// Writes keys and delay files for every host of `matrix` into `dir`, without starting
    /// anything. Each node will delay a datagram to another by half the matrix's round trip,
    /// and drop it where the matrix has no direct path; every node but the first joins through
    /// the first. Each claims its host's name as an alias ([`alias_of`]).
    pub fn create(
        binary: &Path,
        matrix: &Matrix,
        dir: &Path,
        network_key: &[u8; keys::KEY_LEN],
        subnet: u8,
    ) -> anyhow::Result<Self> {
        let hosts: Vec<IpAddr> = (0..matrix.len()).map(|i| host(subnet, i)).collect();
        Self::create_on(binary, matrix, dir, network_key, &hosts)
    }

    /// Like [`Testnet::create`], with member `i` on `hosts[i]` (its UDP port and its control
    /// API there), such as the address of a network namespace it will run in.
    pub fn create_on(
        binary: &Path,
        matrix: &Matrix,
        dir: &Path,
        network_key: &[u8; keys::KEY_LEN],
        hosts: &[IpAddr],
    ) -> anyhow::Result<Self> {
        assert_eq!(hosts.len(), matrix.len(), "one host per member");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let network_key_file = dir.join("network.key");
        let _ = std::fs::remove_file(&network_key_file);
        keys::save_network_key(network_key, &network_key_file)?;
        let n = matrix.len();
        let listen: Vec<SocketAddr> = hosts
            .iter()
            .map(|host| SocketAddr::new(*host, UDP_PORT))
            .collect();
        let mut members = Vec::with_capacity(n);
        for (i, name) in matrix.names().iter().enumerate() {
            let key = NodeKey::generate()?;
            let key_file = dir.join(format!("node{i}.key"));
            let _ = std::fs::remove_file(&key_file);
            key.save(&key_file)?;
            // Pairs without a direct path in the matrix cannot talk directly here either.
            let delays: HashMap<String, f64> = (0..n)
                .filter(|j| *j != i)
                .map(|j| {
                    let one_way = matrix.rtt_ms(i, j).map_or(-1.0, |rtt| rtt / 2.0);
                    (listen[j].to_string(), one_way)
                })
                .collect();
            let delays_file = dir.join(format!("node{i}.delays.json"));
            std::fs::write(&delays_file, serde_json::to_string(&delays)?)?;
            members.push(Member {
                name: name.clone(),
                id: key.id(),
                listen: listen[i],
                api: SocketAddr::new(hosts[i], API_PORT),
                key_file,
                delays_file,
                network_key_file: network_key_file.clone(),
                log_file: dir.join(format!("node{i}.log")),
                seed: (i > 0).then_some(listen[0]),
                program: None,
                options: alias_of(name)
                    .map(|alias| vec!["--alias".to_string(), alias])
                    .unwrap_or_default(),
                netns: None,
                process: None,
            });
        }
        Ok(Self {
            members,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts (or restarts) member `index` with its key.
    pub fn launch(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let (program, args) = match &member.program {
            Some((program, args)) => (program.clone(), args.clone()),
            None => (self.binary.clone(), vec!["node".to_string()]),
        };
        let mut command = match &member.netns {
            // `ip netns exec` execs the program: the child is the node itself.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command.args(&args);
        command
            .args(["--listen", &member.listen.to_string()])
            .args(["--api", &member.api.to_string()])
            .arg("--key")
            .arg(&member.key_file)
            .arg("--testbed-delays")
            .arg(&member.delays_file)
            .arg("--network-key-file")
            .arg(&member.network_key_file);
        if let Some(seed) = member.seed {
            command.args(["--seed", &seed.to_string()]);
        }
        command.args(&member.options);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_file)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        member.process = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        Ok(())
    }

    /// Kills member `index` at once, as a crash would: it says goodbye to nobody.
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].process.take() {
            let _ = child.kill().await;
        }
    }

    /// Asks member `index` to leave (SIGTERM, as Ctrl-C would) and waits up to 3 s for it.
    pub async fn terminate(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].process.take() {
            terminate(&child);
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// Asks every node to leave (SIGTERM) and waits for them.
    pub async fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = &member.process {
                terminate(child);
            }
        }
        for member in &mut self.members {
            if let Some(mut child) = member.process.take() {
                let stopped = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
                if stopped.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Waits up to `timeout` for member `index` to exit by itself; its exit status.
    pub async fn wait(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.members[index].process.as_mut()?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .ok()?
            .ok()?;
        self.members[index].process = None;
        Some(status)
    }

    /// What member `index` printed (standard output and error, every run so far).
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.members[index].log_file).unwrap_or_default()
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].process.is_some()
    }

    /// The operating system's process id of member `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].process.as_ref()?.id()
    }

    pub async fn status(&self, index: usize) -> anyhow::Result<Status> {
        match call(self.members[index].api, &Request::Status).await? {
            Response::Status(status) => Ok(*status),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Waits until every running node has a route to every other running node.
    pub async fn wait_for_routes(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.is_running(*i))
            .collect();
        self.wait_for_routes_among(&running, timeout).await
    }

    /// Waits until each of `members` has a route to at least every other one of them.
    pub async fn wait_for_routes_among(
        &self,
        members: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = tokio::time::Instant::now();
        loop {
            let mut complete = true;
            for &i in members {
                let routed = self.status(i).await.map_or(0, |s| s.routes);
                complete &= routed + 1 >= members.len();
            }
            if complete {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("not every member had a route to every other within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A trace from member `from` to member `to` through the overlay.
    pub async fn trace(&self, from: usize, to: usize) -> anyhow::Result<TraceReport> {
        let request = Request::Trace {
            node: self.members[to].id.to_string(),
        };
        match call(self.members[from].api, &request).await? {
            Response::Trace(report) => Ok(report),
            Response::Error { error } => bail!("{error}"),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Kills member `victim` while `from` sends 20 traces per second to `to` (like the
    /// simulator's failover flows), and returns the flow's delivery gap (between the last
    /// answered trace sent before the kill and the first sent after it) with a trace answered
    /// after the kill.
    pub async fn kill_under_flow(
        &mut self,
        from: usize,
        to: usize,
        victim: usize,
    ) -> anyhow::Result<(Duration, TraceReport)> {
        let (api, destination) = (self.members[from].api, self.members[to].id.to_string());
        let (results, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let flow = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FLOW_INTERVAL);
            loop {
                ticks.tick().await;
                let results = results.clone();
                let request = Request::Trace {
                    node: destination.clone(),
                };
                tokio::spawn(async move {
                    let sent = tokio::time::Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(2), call(api, &request)).await;
                    let report = match answer {
                        Ok(Ok(Response::Trace(report))) => Some(report),
                        _ => None,
                    };
                    let _ = results.send((sent, report));
                });
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.kill(victim).await;
        let killed = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        flow.abort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut outcomes = Vec::new();
        while let Ok(outcome) = answers.try_recv() {
            outcomes.push(outcome);
        }
        outcomes.sort_by_key(|(sent, _)| *sent);
        let before = outcomes
            .iter()
            .filter(|(sent, report)| *sent < killed && report.is_some())
            .map(|(sent, _)| *sent)
            .next_back();
        let after = outcomes
            .into_iter()
            .find_map(|(sent, report)| Some((sent, report?)).filter(|(sent, _)| *sent >= killed));
        match (before, after) {
            (Some(before), Some((sent, report))) => Ok((sent - before, report)),
            (None, _) => bail!("the flow was not answered before the kill"),
            (_, None) => bail!("the flow did not recover within 5 s"),
        }
    }

    /// The member with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id.to_string() == id)
    }
}

#[cfg(unix)]
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

#[cfg(not(unix))]
fn terminate(_child: &Child) {}
