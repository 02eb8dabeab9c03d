//! Testbed latency emulation (`hopwise node --testbed-delays`): every outgoing datagram waits
//! for the one-way latency to its destination before it is sent.
//!
//! This exists because local test networks run on one machine, where every path takes
//! microseconds and the kernel here offers no netem. It is for test networks only: a real
//! deployment has real latencies.
//!
//! The delays run on a thread of their own, which sleeps with the operating system's
//! sub-millisecond precision; the async runtime's timers tick in whole milliseconds, which
//! would add up to a millisecond to every hop of every measured path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Bound on datagrams waiting for their delay; beyond it they are dropped, like a full queue.
const MAX_QUEUED: usize = 65_536;

/// One-way delays by destination: `{"127.0.0.1:7001": 12.5, ...}` in milliseconds.
/// Destinations not listed get no delay; a negative delay means there is no direct path
/// (every datagram to that destination is dropped, as a firewall or a NAT would).
pub fn load_delays(path: &Path) -> anyhow::Result<HashMap<SocketAddr, f64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading testbed delays {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("parsing testbed delays {}", path.display()))
}

/// Hands datagrams to the delay thread; dropping it stops the thread.
pub struct Testbed {
    queue: SyncSender<(SocketAddr, Vec<u8>)>,
}

impl Testbed {
    /// Starts the delay thread, which sends on its own handle of `socket`.
    pub fn start(socket: UdpSocket, delays_ms: HashMap<SocketAddr, f64>) -> Self {
        let one_way = delays_ms
            .into_iter()
            .filter(|(_, ms)| ms.is_finite() && *ms != 0.0)
            .map(|(addr, ms)| {
                (
                    addr,
                    (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0)),
                )
            })
            .collect();
        let (queue, incoming) = mpsc::sync_channel(MAX_QUEUED);
        let dual_stack = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        std::thread::Builder::new()
            .name("testbed-delays".into())
            .spawn(move || {
                DelayLine::new(one_way).run(&incoming, |to, bytes| {
                    let _ = socket.send_to(bytes, super::for_socket(to, dual_stack));
                })
            })
            .expect("spawning the testbed thread");
        Self { queue }
    }

    /// Queues a datagram; a full queue drops it.
    pub fn send(&self, destination: SocketAddr, contents: Vec<u8>) {
        let _ = self.queue.try_send((destination, contents));
    }
}

/// Datagrams ordered by the time they are due, then by the order they were sent.
struct DelayLine {
    /// `None`: no path to that destination.
    one_way: HashMap<SocketAddr, Option<Duration>>,
    queue: BinaryHeap<Reverse<Delayed>>,
    sequence: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    due: Instant,
    sequence: u64,
    destination: SocketAddr,
    contents: Vec<u8>,
}

impl DelayLine {
    fn new(one_way: HashMap<SocketAddr, Option<Duration>>) -> Self {
        Self {
            one_way,
            queue: BinaryHeap::new(),
            sequence: 0,
        }
    }

    fn push(&mut self, now: Instant, destination: SocketAddr, contents: Vec<u8>) {
        if self.queue.len() >= MAX_QUEUED {
            return;
        }
        let delay = match self.one_way.get(&destination) {
            Some(Some(delay)) => *delay,
            Some(None) => return,
            None => Duration::ZERO,
        };
        self.sequence += 1;
        self.queue.push(Reverse(Delayed {
            due: now + delay,
            sequence: self.sequence,
            destination,
            contents,
        }));
    }

    /// Sends everything due by `now`.
    fn release(&mut self, now: Instant, send: &mut impl FnMut(SocketAddr, &[u8])) {
        while self.queue.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Reverse(d) = self.queue.pop().expect("peeked");
            send(d.destination, &d.contents);
        }
    }

    fn run(
        mut self,
        incoming: &Receiver<(SocketAddr, Vec<u8>)>,
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) {
        loop {
            let now = Instant::now();
            self.release(now, &mut send);
            let next = match self.queue.peek() {
                Some(Reverse(d)) => incoming.recv_timeout(d.due.saturating_duration_since(now)),
                None => incoming.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok((destination, contents)) => self.push(Instant::now(), destination, contents),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_leave_after_their_destinations_delay_in_order() {
        let near: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let far: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let unlisted: SocketAddr = "127.0.0.1:7003".parse().unwrap();
        let blocked: SocketAddr = "127.0.0.1:7004".parse().unwrap();
        let ms = Duration::from_millis;
        let mut line = DelayLine::new(HashMap::from([
            (near, Some(ms(5))),
            (far, Some(ms(40))),
            (blocked, None),
        ]));
        line.push(Instant::now(), blocked, vec![0]);
        let start = Instant::now();
        line.push(start, far, vec![1]);
        line.push(start, near, vec![2]);
        line.push(start, unlisted, vec![3]);
        line.push(start, near, vec![4]);
        let released = |line: &mut DelayLine, at| {
            let mut sent = Vec::new();
            line.release(at, &mut |to, bytes: &[u8]| sent.push((to, bytes[0])));
            sent
        };
        assert_eq!(released(&mut line, start), vec![(unlisted, 3)]);
        assert_eq!(released(&mut line, start + ms(4)), vec![]);
        assert_eq!(
            released(&mut line, start + ms(5)),
            vec![(near, 2), (near, 4)]
        );
        assert_eq!(released(&mut line, start + ms(39)), vec![]);
        assert_eq!(released(&mut line, start + ms(40)), vec![(far, 1)]);
    }

    #[test]
    fn the_thread_delays_real_datagrams() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let testbed = Testbed::start(sender, HashMap::from([(to, 30.0)]));
        let sent = Instant::now();
        testbed.send(to, b"hello".to_vec());
        let mut buf = [0; 16];
        let len = receiver.recv(&mut buf).unwrap();
        let waited = sent.elapsed();
        assert_eq!(&buf[..len], b"hello");
        assert!(waited >= Duration::from_millis(30), "sent after {waited:?}");
    }
}
