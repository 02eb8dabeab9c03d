//! A local test network: one `hopwise node` process per host of a latency matrix, each on its
//! own loopback address (127.0.1.1, 127.0.1.2, ...), with the matrix's latencies applied by the
//! runner's testbed delays. `hopwise demo` and the testbed tests use it.

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
    process: Option<Child>,
}

pub struct Testnet {
    pub members: Vec<Member>,
    binary: PathBuf,
    dir: PathBuf,
    /// The first node: every other node joins through it.
    seed: SocketAddr,
}

/// The loopback address of member `index`.
fn host(index: usize) -> IpAddr {
    let n = index + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250) as u8 + 1))
}

impl Testnet {
    /// Writes keys and delay files for every host of `matrix` into `dir` and starts the nodes.
    /// Each node delays a datagram to another by half the matrix's round trip.
    pub async fn start(
        binary: &Path,
        matrix: &Matrix,
        dir: &Path,
        network_key: &[u8; keys::KEY_LEN],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let network_key_file = dir.join("network.key");
        let _ = std::fs::remove_file(&network_key_file);
        keys::save_network_key(network_key, &network_key_file)?;
        let n = matrix.len();
        let listen: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::new(host(i), UDP_PORT)).collect();
        let mut members = Vec::with_capacity(n);
        for (i, name) in matrix.names().iter().enumerate() {
            let key = NodeKey::generate()?;
            let key_file = dir.join(format!("node{i}.key"));
            let _ = std::fs::remove_file(&key_file);
            key.save(&key_file)?;
            let delays: HashMap<String, f64> = (0..n)
                .filter(|j| *j != i)
                .filter_map(|j| Some((listen[j].to_string(), matrix.rtt_ms(i, j)? / 2.0)))
                .collect();
            let delays_file = dir.join(format!("node{i}.delays.json"));
            std::fs::write(&delays_file, serde_json::to_string(&delays)?)?;
            members.push(Member {
                name: name.clone(),
                id: key.id(),
                listen: listen[i],
                api: SocketAddr::new(host(i), API_PORT),
                key_file,
                delays_file,
                network_key_file: network_key_file.clone(),
                log_file: dir.join(format!("node{i}.log")),
                process: None,
            });
        }
        let mut net = Self {
            members,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            seed: listen[0],
        };
        for i in 0..n {
            net.launch(i)?;
        }
        Ok(net)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts (or restarts) member `index` with its key.
    pub fn launch(&mut self, index: usize) -> anyhow::Result<()> {
        let seed = self.seed;
        let member = &mut self.members[index];
        let mut command = Command::new(&self.binary);
        command
            .arg("node")
            .args(["--listen", &member.listen.to_string()])
            .args(["--api", &member.api.to_string()])
            .arg("--key")
            .arg(&member.key_file)
            .arg("--testbed-delays")
            .arg(&member.delays_file)
            .arg("--network-key-file")
            .arg(&member.network_key_file);
        if member.listen != seed {
            command.args(["--seed", &seed.to_string()]);
        }
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

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].process.is_some()
    }

    pub async fn status(&self, index: usize) -> anyhow::Result<Status> {
        match call(self.members[index].api, &Request::Status).await? {
            Response::Status(status) => Ok(*status),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Waits until every running node has a route to every other running node.
    pub async fn wait_for_routes(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = tokio::time::Instant::now();
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| self.is_running(*i))
            .collect();
        loop {
            let mut complete = true;
            for &i in &running {
                let routed = self.status(i).await.map_or(0, |s| s.routes);
                complete &= routed + 1 >= running.len();
            }
            if complete {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("not every node had a route to every other within {timeout:?}");
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
