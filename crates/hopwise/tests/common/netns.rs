//! Network namespaces for tests: hosts joined by veth pairs to a bridge in a namespace of
//! their own, with one more veth pair from the test's namespace to the bridge so the test
//! reaches every host's control API. Everything is named after the test's process id and
//! removed on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};

pub struct Namespaces {
    prefix: String,
    /// The hosts' namespaces, in order.
    pub hosts: Vec<String>,
    /// The hosts' addresses on the bridge.
    pub addresses: Vec<IpAddr>,
    hub: String,
    uplink: String,
}

/// Why namespace tests cannot run here, if they cannot: they need root.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, TUN, nftables); CI runs it as root".into());
    }
    None
}

/// Runs a command; its output, or a panic that shows what failed.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{}: {error} (is it installed?)", args[0]));
    assert!(
        output.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command and returns its exit status and standard output, whatever the status.
pub fn try_run(args: &[&str]) -> (bool, String) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{}: {error} (is it installed?)", args[0]));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

impl Namespaces {
    /// `count` hosts at 10.`subnet`.0.1, .2, ...; the test's own end is 10.`subnet`.0.254.
    pub fn create(tag: &str, subnet: u8, count: usize) -> Self {
        let prefix = format!("h{tag}{}", std::process::id() % 100_000);
        let mut namespaces = Self {
            hosts: (0..count).map(|i| format!("{prefix}n{i}")).collect(),
            addresses: (0..count)
                .map(|i| IpAddr::V4(Ipv4Addr::new(10, subnet, 0, i as u8 + 1)))
                .collect(),
            hub: format!("{prefix}hub"),
            uplink: format!("{prefix}u"),
            prefix,
        };
        namespaces.build(subnet).unwrap_or_else(|error| {
            namespaces.remove();
            panic!("{error}")
        });
        namespaces
    }

    fn build(&mut self, subnet: u8) -> Result<(), String> {
        let hub = self.hub.clone();
        let step = |args: &[&str]| -> Result<(), String> {
            let output = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|error| format!("{}: {error}", args[0]))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        };
        step(&["ip", "netns", "add", &hub])?;
        step(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        step(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let (inside, outside) = (
                format!("{}a{i}", self.prefix),
                format!("{}b{i}", self.prefix),
            );
            step(&["ip", "netns", "add", host])?;
            step(&[
                "ip", "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ])?;
            step(&["ip", "link", "set", &inside, "netns", host])?;
            step(&["ip", "link", "set", &outside, "netns", &hub])?;
            step(&[
                "ip", "-n", &hub, "link", "set", &outside, "master", "br0", "up",
            ])?;
            let address = format!("{}/24", self.addresses[i]);
            step(&["ip", "-n", host, "addr", "add", &address, "dev", &inside])?;
            step(&["ip", "-n", host, "link", "set", &inside, "up"])?;
            step(&["ip", "-n", host, "link", "set", "lo", "up"])?;
        }
        let uplink_peer = format!("{}p", self.uplink);
        step(&[
            "ip",
            "link",
            "add",
            &self.uplink,
            "type",
            "veth",
            "peer",
            "name",
            &uplink_peer,
        ])?;
        step(&["ip", "link", "set", &uplink_peer, "netns", &hub])?;
        step(&[
            "ip",
            "-n",
            &hub,
            "link",
            "set",
            &uplink_peer,
            "master",
            "br0",
            "up",
        ])?;
        step(&[
            "ip",
            "addr",
            "add",
            &format!("10.{subnet}.0.254/24"),
            "dev",
            &self.uplink,
        ])?;
        step(&["ip", "link", "set", &self.uplink, "up"])
    }

    /// `ip netns exec` in host `index`: the command line to run there.
    pub fn exec<'a>(&'a self, index: usize, args: &[&'a str]) -> Vec<&'a str> {
        let mut line = vec!["ip", "netns", "exec", self.hosts[index].as_str()];
        line.extend_from_slice(args);
        line
    }

    fn remove(&self) {
        // Deleting a namespace deletes the veth ends in it, and with them their peers.
        let _ = Command::new("ip")
            .args(["link", "del", &self.uplink])
            .output();
        for namespace in self.hosts.iter().chain([&self.hub]) {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .output();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.remove();
    }
}
