//! Noise sessions by peer address: handshakes, encryption, replay protection.
//!
//! Every datagram between two members starts with a type byte:
//!
//! ```text
//! 1 hello    Noise message 1 (-> psk, e): 48 bytes; its tag proves the network key
//! 2 reply    Noise message 2 (<- e, ee, s, es): 96 bytes
//! 3 confirm  Noise message 3 (-> s, se): 64 bytes
//! 4 data     counter (64 bits), then the AEAD-sealed hopwise packet (16-byte tag)
//! ```
//!
//! A stranger without the network key costs one hash and one AEAD check per hello, after a
//! rate limit, and nothing is allocated for it. Handshakes in progress and sessions live in
//! bounded tables.

use std::collections::VecDeque;
use std::net::SocketAddr;

use rand_chacha::ChaCha8Rng;
use snow::{HandshakeState, StatelessTransportState};

use super::crypto;
use super::replay::ReplayWindow;
use crate::keyed::{HashKey, Map};
use crate::limit::{HandshakeLimiter, Rate};
use crate::node::Transmit;
use crate::wire::MAX_DATAGRAM;
use crate::{Duration, Instant, NodeId};

const TYPE_HELLO: u8 = 1;
const TYPE_REPLY: u8 = 2;
const TYPE_CONFIRM: u8 = 3;
const TYPE_DATA: u8 = 4;

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const HELLO_LEN: usize = 1 + KEY_LEN + TAG_LEN;
/// Bytes a data datagram adds to the hopwise packet it carries.
pub const OVERHEAD: usize = 1 + 8 + TAG_LEN;
/// The largest datagram a secure node sends or accepts.
pub const MAX_SECURE_DATAGRAM: usize = MAX_DATAGRAM + OVERHEAD;

/// Handshakes in progress, both roles together.
const MAX_HANDSHAKES: usize = 1_024;
/// Established sessions; the least recently used makes room.
const MAX_SESSIONS: usize = 8_192;
/// Packets held for a peer while its handshake runs.
const MAX_QUEUED_PER_PEER: usize = 16;
/// An unanswered hello is sent again after this long ...
const HELLO_RETRY: Duration = Duration::from_secs(1);
/// ... and a handshake gives up after this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that has sent but heard nothing for this long starts a new handshake: the peer
/// may have restarted and lost its keys.
const SESSION_STALE: Duration = Duration::from_secs(5);
/// A session silent both ways for this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(180);
/// Hellos a source IP may start per second, and in a burst ...
const HELLO_SOURCE_RATE: Rate = Rate {
    per_second: 10.0,
    burst: 20.0,
};
/// ... and all sources together.
const HELLO_OVERALL_RATE: Rate = Rate {
    per_second: 200.0,
    burst: 400.0,
};

/// Counters of what the secure layer dropped and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecureStats {
    pub handshakes_completed: u64,
    /// Handshake messages that failed (wrong network key, forged or garbled).
    pub handshakes_failed: u64,
    /// Hellos refused by the rate limits or because the handshake table was full.
    pub handshakes_refused: u64,
    /// Datagrams that are not secure hopwise datagrams at all.
    pub dropped_malformed: u64,
    /// Data from an address without a session.
    pub dropped_no_session: u64,
    /// Data that failed authentication.
    pub dropped_forged: u64,
    /// Data whose counter was seen before or is too old.
    pub dropped_replayed: u64,
    /// Authentic data whose packet claims another node's id.
    pub dropped_wrong_sender: u64,
    /// Handshake messages sent (hellos, replies, confirmations), and their bytes.
    pub handshake_datagrams_sent: u64,
    pub handshake_bytes_sent: u64,
}

impl std::ops::AddAssign<&SecureStats> for SecureStats {
    fn add_assign(&mut self, other: &SecureStats) {
        self.handshakes_completed += other.handshakes_completed;
        self.handshakes_failed += other.handshakes_failed;
        self.handshakes_refused += other.handshakes_refused;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_no_session += other.dropped_no_session;
        self.dropped_forged += other.dropped_forged;
        self.dropped_replayed += other.dropped_replayed;
        self.dropped_wrong_sender += other.dropped_wrong_sender;
        self.handshake_datagrams_sent += other.handshake_datagrams_sent;
        self.handshake_bytes_sent += other.handshake_bytes_sent;
    }
}

impl SecureStats {
    pub fn dropped(&self) -> u64 {
        self.handshakes_failed
            + self.handshakes_refused
            + self.dropped_malformed
            + self.dropped_no_session
            + self.dropped_forged
            + self.dropped_replayed
            + self.dropped_wrong_sender
    }
}

struct Session {
    transport: StatelessTransportState,
    remote: NodeId,
    next_counter: u64,
    replay: ReplayWindow,
    /// The keys this session replaced, still accepted on receipt: the peer may have sent with
    /// them before it learned of the new ones.
    previous: Option<(StatelessTransportState, ReplayWindow)>,
    last_received: Instant,
    last_sent: Instant,
    /// The first packet sent since the peer was last heard from.
    unanswered_since: Option<Instant>,
}

struct Handshake {
    state: HandshakeState,
    /// Our hello, while we are the initiator and wait for the reply.
    hello: Option<Vec<u8>>,
    /// As responder: the hello we answered and our reply, sent again if the hello comes again
    /// (its sender did not hear the reply).
    answered: Option<(Vec<u8>, Vec<u8>)>,
    started: Instant,
    last_sent: Instant,
    /// Packets to send once the session is up.
    queued: Vec<Vec<u8>>,
}

/// What became of a packet handed to [`Channels::seal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    Sent,
    /// Waiting for a handshake, for at most [`HANDSHAKE_TIMEOUT`].
    Held,
    /// No room to hold it.
    Dropped,
}

/// Buffers kept for the datagrams to come ([`Channels::recycle`]): a node's outgoing
/// datagrams, forwarded ones above all, reuse them instead of allocating one each.
const MAX_SPARE_BUFFERS: usize = 256;

pub struct Channels {
    private_key: [u8; KEY_LEN],
    network_key: [u8; KEY_LEN],
    rng: ChaCha8Rng,
    sessions: Map<SocketAddr, Session>,
    handshakes: Map<SocketAddr, Handshake>,
    limiter: HandshakeLimiter,
    outputs: VecDeque<Transmit>,
    stats: SecureStats,
    /// Sessions that came up since the caller last asked, with their queued packets.
    established: Vec<(SocketAddr, Vec<Vec<u8>>)>,
    spare: Vec<Vec<u8>>,
}

impl Channels {
    pub fn new(
        private_key: [u8; KEY_LEN],
        network_key: [u8; KEY_LEN],
        rng: ChaCha8Rng,
        hash_key: HashKey,
        now: Instant,
    ) -> Self {
        Self {
            private_key,
            network_key,
            rng,
            sessions: Map::with_hasher(hash_key),
            handshakes: Map::with_hasher(hash_key),
            limiter: HandshakeLimiter::new(HELLO_SOURCE_RATE, HELLO_OVERALL_RATE, hash_key, now),
            outputs: VecDeque::new(),
            stats: SecureStats::default(),
            established: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Takes back the buffer of a datagram that has been sent, for a later one.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < MAX_SPARE_BUFFERS {
            self.spare.push(buffer);
        }
    }

    pub fn stats(&self) -> &SecureStats {
        &self.stats
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outputs.pop_front()
    }

    /// Sessions established since the last call, with the packets that waited for them.
    pub fn take_established(&mut self) -> Vec<(SocketAddr, Vec<Vec<u8>>)> {
        std::mem::take(&mut self.established)
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.handshakes
            .values()
            .map(|h| match h.hello {
                Some(_) => (h.last_sent + HELLO_RETRY).min(h.started + HANDSHAKE_TIMEOUT),
                None => h.started + HANDSHAKE_TIMEOUT,
            })
            .min()
    }

    /// Encrypts `packet` for `to`, or holds a copy while a handshake with `to` runs; returns
    /// whether it was held.
    pub fn seal(&mut self, now: Instant, to: SocketAddr, packet: &[u8]) -> Sealed {
        let stale = match self.sessions.get_mut(&to) {
            Some(session) => {
                let counter = session.next_counter;
                session.next_counter += 1;
                session.last_sent = now;
                let unanswered_since = *session.unanswered_since.get_or_insert(now);
                let mut datagram = self.spare.pop().unwrap_or_default();
                datagram.clear();
                datagram.resize(OVERHEAD + packet.len(), 0);
                datagram[0] = TYPE_DATA;
                datagram[1..9].copy_from_slice(&counter.to_be_bytes());
                let sealed = session
                    .transport
                    .write_message(counter, packet, &mut datagram[9..]);
                if sealed.is_ok() {
                    self.outputs.push_back(Transmit {
                        destination: to,
                        contents: datagram,
                    });
                }
                now - unanswered_since >= SESSION_STALE
            }
            None => return self.queue(now, to, packet),
        };
        if stale && !self.handshakes.contains_key(&to) {
            self.initiate(now, to, Vec::new());
        }
        Sealed::Sent
    }

    fn queue(&mut self, now: Instant, to: SocketAddr, packet: &[u8]) -> Sealed {
        match self.handshakes.get_mut(&to) {
            Some(handshake) if handshake.queued.len() < MAX_QUEUED_PER_PEER => {
                handshake.queued.push(packet.to_vec());
                Sealed::Held
            }
            Some(_) => Sealed::Dropped,
            None => self.initiate(now, to, vec![packet.to_vec()]),
        }
    }

    fn initiate(&mut self, now: Instant, to: SocketAddr, queued: Vec<Vec<u8>>) -> Sealed {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            return Sealed::Dropped;
        }
        let Some(mut state) = self.new_state(true) else {
            return Sealed::Dropped;
        };
        let mut hello = vec![TYPE_HELLO; HELLO_LEN];
        if state.write_message(&[], &mut hello[1..]).is_err() {
            return Sealed::Dropped;
        }
        self.send_handshake(to, hello.clone());
        self.handshakes.insert(
            to,
            Handshake {
                state,
                hello: Some(hello),
                answered: None,
                started: now,
                last_sent: now,
                queued,
            },
        );
        Sealed::Held
    }

    fn new_state(&mut self, initiator: bool) -> Option<HandshakeState> {
        let builder = crypto::builder(&mut self.rng, super::NOISE_PARAMS)
            .local_private_key(&self.private_key)
            .ok()?
            .psk(0, &self.network_key)
            .ok()?;
        if initiator {
            builder.build_initiator().ok()
        } else {
            builder.build_responder().ok()
        }
    }

    /// Retries hellos, gives up on stalled handshakes and forgets idle sessions.
    pub fn on_timeout(&mut self, now: Instant) {
        self.handshakes
            .retain(|_, h| now - h.started < HANDSHAKE_TIMEOUT);
        for (to, handshake) in &mut self.handshakes {
            if let Some(hello) = &handshake.hello
                && now - handshake.last_sent >= HELLO_RETRY
            {
                handshake.last_sent = now;
                self.stats.handshake_datagrams_sent += 1;
                self.stats.handshake_bytes_sent += hello.len() as u64;
                self.outputs.push_back(Transmit {
                    destination: *to,
                    contents: hello.clone(),
                });
            }
        }
        self.sessions
            .retain(|_, s| now - s.last_received.max(s.last_sent) < SESSION_IDLE);
    }

    /// Handles one received datagram; if it was authentic data, the packet it carried is in
    /// `packet` (whatever was there before is gone) and the peer's id is returned.
    pub fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        packet: &mut Vec<u8>,
    ) -> Option<NodeId> {
        if datagram.len() > MAX_SECURE_DATAGRAM {
            self.stats.dropped_malformed += 1;
            return None;
        }
        match datagram.first() {
            Some(&TYPE_DATA) => self.open_data(now, from, datagram, packet),
            Some(&TYPE_HELLO) => {
                self.on_hello(now, from, datagram);
                None
            }
            Some(&TYPE_REPLY) => {
                self.on_reply(now, from, &datagram[1..]);
                None
            }
            Some(&TYPE_CONFIRM) => {
                self.on_confirm(now, from, &datagram[1..]);
                None
            }
            _ => {
                self.stats.dropped_malformed += 1;
                None
            }
        }
    }

    fn open_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        packet: &mut Vec<u8>,
    ) -> Option<NodeId> {
        let Some(session) = self.sessions.get_mut(&from) else {
            self.stats.dropped_no_session += 1;
            return None;
        };
        if datagram.len() < OVERHEAD {
            self.stats.dropped_malformed += 1;
            return None;
        }
        let counter = u64::from_be_bytes(datagram[1..9].try_into().expect("8 bytes"));
        packet.clear();
        packet.resize(datagram.len() - OVERHEAD, 0);
        let sealed = &datagram[9..];
        let keys = std::iter::once((&session.transport, &mut session.replay)).chain(
            session
                .previous
                .as_mut()
                .map(|(transport, replay)| (&*transport, replay)),
        );
        let mut replayed = false;
        let mut opened = None;
        for (transport, replay) in keys {
            if !replay.is_fresh(counter) {
                replayed = true;
                continue;
            }
            if let Ok(len) = transport.read_message(counter, sealed, packet) {
                replay.accept(counter);
                opened = Some(len);
                break;
            }
        }
        let Some(len) = opened else {
            if replayed {
                self.stats.dropped_replayed += 1;
            } else {
                self.stats.dropped_forged += 1;
            }
            return None;
        };
        packet.truncate(len);
        session.last_received = now;
        session.unanswered_since = None;
        Some(session.remote)
    }

    fn on_hello(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if datagram.len() != HELLO_LEN {
            self.stats.dropped_malformed += 1;
            return;
        }
        if let Some((hello, reply)) = self.handshakes.get(&from).and_then(|h| h.answered.as_ref())
            && hello.as_slice() == datagram
        {
            let reply = reply.clone();
            self.send_handshake(from, reply);
            return;
        }
        // Both ends said hello at once: the one with the lower ephemeral key stays initiator.
        let mut queued = Vec::new();
        if let Some(ours) = self.handshakes.get(&from).and_then(|h| h.hello.as_ref()) {
            if ours[1..1 + KEY_LEN] < datagram[1..1 + KEY_LEN] {
                return;
            }
            queued = self.handshakes.swap_remove(&from).expect("present").queued;
        }
        let replacing = self.handshakes.contains_key(&from);
        if (!replacing && self.handshakes.len() >= MAX_HANDSHAKES)
            || !self.limiter.allow(from.ip(), now)
        {
            self.stats.handshakes_refused += 1;
            return;
        }
        let Some(mut state) = self.new_state(false) else {
            return;
        };
        if state.read_message(&datagram[1..], &mut []).is_err() {
            self.stats.handshakes_failed += 1;
            return;
        }
        let mut reply = vec![TYPE_REPLY; 1 + 2 * KEY_LEN + 2 * TAG_LEN];
        if state.write_message(&[], &mut reply[1..]).is_err() {
            return;
        }
        self.send_handshake(from, reply.clone());
        if let Some(previous) = self.handshakes.swap_remove(&from) {
            queued.extend(previous.queued);
        }
        self.handshakes.insert(
            from,
            Handshake {
                state,
                hello: None,
                answered: Some((datagram.to_vec(), reply)),
                started: now,
                last_sent: now,
                queued,
            },
        );
    }

    /// Reads the next handshake message from `from` into its handshake, if one awaits it in
    /// that role (`initiator`: we said hello and wait for the reply); counts a failure.
    fn read_handshake(&mut self, from: SocketAddr, initiator: bool, message: &[u8]) -> bool {
        let Some(handshake) = self
            .handshakes
            .get_mut(&from)
            .filter(|h| h.hello.is_some() == initiator)
        else {
            self.stats.handshakes_failed += 1;
            return false;
        };
        if handshake.state.read_message(message, &mut []).is_err() {
            // A failed read leaves the state unusable: start over with the next packet.
            self.handshakes.swap_remove(&from);
            self.stats.handshakes_failed += 1;
            return false;
        }
        true
    }

    fn on_reply(&mut self, now: Instant, from: SocketAddr, message: &[u8]) {
        if !self.read_handshake(from, true, message) {
            return;
        }
        let handshake = self.handshakes.get_mut(&from).expect("just read");
        let mut confirm = vec![TYPE_CONFIRM; 1 + KEY_LEN + 2 * TAG_LEN];
        if handshake
            .state
            .write_message(&[], &mut confirm[1..])
            .is_err()
        {
            self.handshakes.swap_remove(&from);
            return;
        }
        self.send_handshake(from, confirm);
        self.establish(now, from);
    }

    fn on_confirm(&mut self, now: Instant, from: SocketAddr, message: &[u8]) {
        if self.read_handshake(from, false, message) {
            self.establish(now, from);
        }
    }

    /// A finished handshake becomes the session with `peer`, replacing any older one.
    fn establish(&mut self, now: Instant, peer: SocketAddr) {
        let handshake = self.handshakes.swap_remove(&peer).expect("present");
        let Ok(transport) = handshake.state.into_stateless_transport_mode() else {
            return;
        };
        let Some(remote) = transport.get_remote_static().map(NodeId::from_public_key) else {
            return;
        };
        let previous = self
            .sessions
            .swap_remove(&peer)
            .map(|old| (old.transport, old.replay));
        if self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, s))| s.last_received.max(s.last_sent))
                .map(|(index, _)| index);
            if let Some(index) = oldest {
                self.sessions.swap_remove_index(index);
            }
        }
        self.sessions.insert(
            peer,
            Session {
                transport,
                remote,
                next_counter: 0,
                replay: ReplayWindow::new(),
                previous,
                last_received: now,
                last_sent: now,
                unanswered_since: None,
            },
        );
        self.stats.handshakes_completed += 1;
        self.established.push((peer, handshake.queued));
    }

    fn send_handshake(&mut self, to: SocketAddr, message: Vec<u8>) {
        self.stats.handshake_datagrams_sent += 1;
        self.stats.handshake_bytes_sent += message.len() as u64;
        self.outputs.push_back(Transmit {
            destination: to,
            contents: message,
        });
    }

    /// Counts an authentic packet that claimed the wrong sender.
    pub fn count_wrong_sender(&mut self) {
        self.stats.dropped_wrong_sender += 1;
    }
}
