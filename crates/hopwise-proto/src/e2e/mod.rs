//! End-to-end sessions: authenticated, encrypted datagrams between any two nodes, through any
//! relays, addressed to service ports.
//!
//! Hop-by-hop encryption (`secure`) keeps outsiders out, but every member relay on a path sees
//! and could change what it forwards, including the source id. [`EndToEnd`] runs a Noise
//! session (`Noise_XX_25519_AESGCM_BLAKE2s`) with each node it talks to, over the overlay's
//! sealed datagrams and keyed to the nodes' static keys: the receiver opens a datagram only
//! under the session with the node it claims to come from, and that session exists only if the
//! peer proved the static key whose hash is its id. A relay can drop datagrams, but not read,
//! alter, replay or forge them.
//!
//! # Cost
//! The first payload to a new peer rides in the third handshake message, so it arrives one
//! overlay round trip later than it would unprotected; later payloads add 29 bytes and no
//! waiting ([`OVERHEAD`]). A session is re-keyed by a new handshake after [`REKEY_AFTER`] (or
//! 2^48 datagrams) while payloads keep flowing on the old keys, long before a counter could
//! repeat. A packet from a peer we hold no session with (it restarted, or forgot us) makes us
//! start a handshake, so a restarted peer is re-keyed rather than black-holed.
//!
//! # Bounds
//! Peers, handshakes in progress (per role), payloads waiting for a handshake (per peer and in
//! total) are all bounded; handshakes answered are rate-limited per last hop (the member that
//! handed the datagram over) and overall, so a member flooding handshakes under forged ids
//! costs a bounded amount of work and does not crowd out others.
//!
//! # Driving
//! Like every component of the crate: [`EndToEnd::handle_datagram`] for every sealed datagram
//! the overlay delivers, [`EndToEnd::handle_timeout`] once [`EndToEnd::poll_timeout`] has
//! passed, [`EndToEnd::send`] for outgoing payloads; then drain [`EndToEnd::poll_transmit`]
//! (datagrams for the overlay) and [`EndToEnd::poll_received`] (authenticated payloads).

mod handshake;
mod session;
pub mod wire;

pub use wire::{BASE_DATA, MAX_DATA, OVERHEAD, Port};

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tracing::trace;

use crate::keyed::{self, Map};
use crate::limit::{HandshakeLimiter, Rate};
use crate::wire::{BASE_PAYLOAD, MAX_PAYLOAD};
use crate::{Duration, Instant, NodeId};
use handshake::{Initiation, Responding};
use session::{OpenError, Session};
use wire::{Datagram, Plain};

/// The Noise protocol of every end-to-end session. No pre-shared key: only members reach each
/// other through the overlay at all, and the static keys are what is authenticated here.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_BLAKE2s";
/// Binds every handshake to this layer and to the two ids the overlay headers name.
const PROLOGUE: &[u8] = b"hopwise end-to-end 1";

/// A session is re-keyed after this long ...
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// ... or after this many datagrams, whichever comes first;
const REKEY_AFTER_DATAGRAMS: u64 = 1 << 48;
/// and never sends beyond this many (a nonce must never repeat).
const REJECT_AFTER_DATAGRAMS: u64 = 1 << 60;
/// An unanswered init is sent again after this long ...
const INIT_RETRY: Duration = Duration::from_secs(1);
/// ... a handshake gives up after this long, and a finish is repeated until then.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session silent both ways for this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(180);
/// Keys replaced by newer ones still open packets for this long: some were in flight.
const RETIRED_KEYS_LIFETIME: Duration = Duration::from_secs(30);
/// Retired sessions kept per peer.
const MAX_RETIRED: usize = 2;
/// At most one handshake to recover a lost session, per peer and interval.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(2);
/// How often idle sessions and retired keys are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Peers with a session or a handshake; the least recently used session makes room.
const MAX_PEERS: usize = 4_096;
/// Handshakes this node started and waits on.
const MAX_INITIATIONS: usize = 1_024;
/// Handshakes this node answered and waits on, in all and per last hop.
const MAX_RESPONDING: usize = 1_024;
const MAX_RESPONDING_PER_HOP: usize = 64;
/// Answered handshakes of one claimed peer kept at once (a peer retrying with a new one).
const MAX_RESPONDING_PER_PEER: usize = 2;
/// Payloads waiting for a handshake, per peer and in all.
const MAX_QUEUED_PER_PEER: usize = 16;
const MAX_QUEUED: usize = 1_024;
/// Inits answered per last hop, and by all together.
const INIT_PER_HOP: Rate = Rate {
    per_second: 50.0,
    burst: 100.0,
};
const INIT_OVERALL: Rate = Rate {
    per_second: 1_000.0,
    burst: 2_000.0,
};

/// Why [`EndToEnd::send`] refused a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// More bytes than one datagram carries ([`EndToEnd::max_data`]).
    TooLarge { len: usize, max: usize },
    /// No session yet, and no room to hold the payload (or to start a handshake) until there is.
    QueueFull,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "a datagram of {len} bytes exceeds the limit of {max}")
            }
            Self::QueueFull => write!(f, "too many datagrams wait for handshakes"),
        }
    }
}

impl std::error::Error for SendError {}

/// A payload that arrived. `from` holds the static key of its id, unless `early` is set: an
/// early payload rode the init of a handshake, in the clear, and only claims to come from
/// `from` (see [`EndToEnd::send_early`]); it arrives again, authenticated, once the handshake
/// finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: NodeId,
    pub source_port: Port,
    pub destination_port: Port,
    pub data: Vec<u8>,
    pub early: bool,
}

/// What the end-to-end layer did and dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E2eStats {
    pub handshakes_completed: u64,
    /// Of those, the ones that replaced an established session (re-keying, or a restarted
    /// peer).
    pub rekeys: u64,
    /// Handshake messages that failed: forged, garbled, or from a key that is not the claimed
    /// node's.
    pub handshakes_failed: u64,
    /// Inits refused by the rate limits or because the handshake tables were full.
    pub handshakes_refused: u64,
    pub handshakes_timed_out: u64,
    /// Bytes that are not end-to-end datagrams, or payloads that make no sense once opened.
    pub dropped_malformed: u64,
    /// Handshake messages for a handshake that this node does not wait on.
    pub dropped_unexpected: u64,
    /// Data from a node this node holds no session with.
    pub dropped_no_session: u64,
    /// Data that failed authentication: altered, truncated, or forged.
    pub dropped_bad_tag: u64,
    /// Data whose counter was seen before, or is too old.
    pub dropped_replayed: u64,
    /// Authentic payloads for a port nothing listens on (counted by the host).
    pub dropped_unknown_port: u64,
    /// Payloads this node gave up sending: no room to wait for a handshake, or the handshake
    /// failed or timed out.
    pub dropped_unsent: u64,
    pub payloads_sent: u64,
    pub payloads_received: u64,
    /// Datagrams handed to the overlay (handshakes and data), and their bytes.
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
}

impl std::ops::AddAssign<&E2eStats> for E2eStats {
    fn add_assign(&mut self, other: &E2eStats) {
        self.handshakes_completed += other.handshakes_completed;
        self.rekeys += other.rekeys;
        self.handshakes_failed += other.handshakes_failed;
        self.handshakes_refused += other.handshakes_refused;
        self.handshakes_timed_out += other.handshakes_timed_out;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_unexpected += other.dropped_unexpected;
        self.dropped_no_session += other.dropped_no_session;
        self.dropped_bad_tag += other.dropped_bad_tag;
        self.dropped_replayed += other.dropped_replayed;
        self.dropped_unknown_port += other.dropped_unknown_port;
        self.dropped_unsent += other.dropped_unsent;
        self.payloads_sent += other.payloads_sent;
        self.payloads_received += other.payloads_received;
        self.datagrams_sent += other.datagrams_sent;
        self.bytes_sent += other.bytes_sent;
    }
}

/// A session as a driver shows it (`hopwise status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub peer: NodeId,
    pub established: Instant,
    pub confirmed: bool,
    pub datagrams_sent: u64,
}

#[derive(Default)]
struct Peer {
    current: Option<Session>,
    /// Sessions that only open late packets, newest last: the ones `current` replaced, and
    /// the other session of a simultaneous open. A re-key that meets the peer's own re-key
    /// has three sessions alive at once for a moment.
    retired: Vec<Session>,
    initiation: Option<Initiation>,
    /// When this node last started a handshake because the peer sent data it could not open.
    recovery_at: Option<Instant>,
    /// Keys of this peer's sessions were forgotten: data it seals with them fails here.
    let_keys_go: bool,
}

impl Peer {
    /// The session to send on: the current one, unless it is an unconfirmed new one and the
    /// confirmed session it replaces can still be used (a re-key in progress, whose finish
    /// may yet be lost).
    fn sending(&mut self) -> Option<&mut Session> {
        let usable = |s: &Session| s.sent() < REJECT_AFTER_DATAGRAMS;
        if self.current.as_ref().is_some_and(|c| !c.confirmed) {
            let fall_back = self
                .retired
                .iter_mut()
                .rev()
                .find(|r| r.confirmed && !r.receive_only && usable(r));
            if fall_back.is_some() {
                return fall_back;
            }
        }
        self.current.as_mut().filter(|c| usable(c))
    }

    fn retire(&mut self, mut session: Session, at: Instant) {
        session.retired = Some(at);
        if self.retired.len() >= MAX_RETIRED {
            self.retired.remove(0);
        }
        self.retired.push(session);
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.initiation.is_none()
            && self
                .current
                .as_ref()
                .is_none_or(|s| now - s.last_sent.max(s.last_received) >= SESSION_IDLE)
    }

    fn last_used(&self) -> Instant {
        self.current
            .as_ref()
            .map_or(Instant::ZERO, |s| s.last_sent.max(s.last_received))
    }
}

pub struct EndToEnd {
    local: NodeId,
    private_key: [u8; 32],
    rng: ChaCha8Rng,
    peers: Map<NodeId, Peer>,
    /// Answered handshakes by our (responder) index.
    responding: Map<u32, Responding>,
    limiter: HandshakeLimiter,
    queued: usize,
    outgoing: VecDeque<(NodeId, Vec<u8>)>,
    received: VecDeque<Received>,
    next_sweep: Instant,
    /// Reused for every opened plaintext.
    scratch: Vec<u8>,
    /// The largest payload sent, from the overlay's payload limit.
    max_data: usize,
    stats: E2eStats,
}

impl EndToEnd {
    /// The layer of node `local`, which holds `private_key` (whose public key's id is
    /// `local`). Randomness (ephemeral keys, indices) comes from `rng_seed`.
    pub fn new(local: NodeId, private_key: [u8; 32], rng_seed: u64, now: Instant) -> Self {
        let hash_key = keyed::hash_key(rng_seed ^ 0xE2E0_E2E0_E2E0_E2E0);
        Self {
            local,
            private_key,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            peers: Map::with_hasher(hash_key),
            responding: Map::with_hasher(hash_key),
            limiter: HandshakeLimiter::new(INIT_PER_HOP, INIT_OVERALL, hash_key, now),
            queued: 0,
            outgoing: VecDeque::new(),
            received: VecDeque::new(),
            next_sweep: now + SWEEP_INTERVAL,
            scratch: Vec::new(),
            max_data: BASE_DATA,
            stats: E2eStats::default(),
        }
    }

    /// Sends payloads up to what an overlay payload of `overlay_payload` bytes carries (the
    /// node's [`Node::payload_limit`](crate::node::Node::payload_limit)) instead of
    /// [`BASE_DATA`].
    #[must_use]
    pub fn with_payload_limit(mut self, overlay_payload: usize) -> Self {
        self.max_data = overlay_payload.clamp(BASE_PAYLOAD, MAX_PAYLOAD) - OVERHEAD;
        self
    }

    /// The largest payload [`EndToEnd::send`] takes.
    #[must_use]
    pub fn max_data(&self) -> usize {
        self.max_data
    }

    pub fn stats(&self) -> &E2eStats {
        &self.stats
    }

    /// Counts an authentic payload that no service took (the host knows the ports).
    pub fn count_unknown_port(&mut self) {
        self.stats.dropped_unknown_port += 1;
    }

    /// Counts a payload a caller could not hand over (see [`SendError::QueueFull`]).
    pub fn count_unsent(&mut self) {
        self.stats.dropped_unsent += 1;
    }

    /// Every established session.
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        self.peers.iter().filter_map(|(peer, p)| {
            let session = p.current.as_ref()?;
            Some(SessionInfo {
                peer: *peer,
                established: session.established,
                confirmed: session.confirmed,
                datagrams_sent: session.sent(),
            })
        })
    }

    /// Handshakes in progress, both roles together.
    pub fn handshakes_in_progress(&self) -> usize {
        self.responding.len() + self.initiations()
    }

    /// Payloads waiting for a handshake to complete before they can go out.
    pub fn payloads_waiting(&self) -> usize {
        self.queued
    }

    /// Handshakes this node started and waits on.
    fn initiations(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.initiation.is_some())
            .count()
    }

    /// A datagram for the overlay to carry to a node.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        // Responses held back for the answer to an early payload go out now: the services
        // have had their turn.
        self.write_held_responses();
        self.outgoing.pop_front()
    }

    /// An authenticated payload for a service.
    pub fn poll_received(&mut self) -> Option<Received> {
        self.received.pop_front()
    }

    /// Sends `data` from our port `source_port` to port `destination_port` of node `to`. A
    /// payload for a node without a session waits (bounded) for the handshake it starts.
    pub fn send(
        &mut self,
        now: Instant,
        to: NodeId,
        source_port: Port,
        destination_port: Port,
        data: &[u8],
    ) -> Result<(), SendError> {
        self.send_with(now, to, source_port, destination_port, data, false)
    }

    fn send_with(
        &mut self,
        now: Instant,
        to: NodeId,
        source_port: Port,
        destination_port: Port,
        data: &[u8],
        early: bool,
    ) -> Result<(), SendError> {
        if data.len() > self.max_data {
            return Err(SendError::TooLarge {
                len: data.len(),
                max: self.max_data,
            });
        }
        if to == self.local {
            self.stats.payloads_sent += 1;
            self.stats.payloads_received += 1;
            self.received.push_back(Received {
                from: to,
                source_port,
                destination_port,
                data: data.to_vec(),
                early: false,
            });
            return Ok(());
        }
        let plain = wire::plaintext(source_port, destination_port, data);
        if early && self.answer_early(to, &plain) {
            self.stats.payloads_sent += 1;
            return Ok(());
        }
        let Some((sealed, rekey)) = self.peers.get_mut(&to).and_then(|peer| {
            // (A session, when there is one, carries early payloads like any other.)
            let handshaking = peer.initiation.is_some();
            let session = peer.sending()?;
            let due =
                now - session.established >= REKEY_AFTER || session.sent() >= REKEY_AFTER_DATAGRAMS;
            Some((session.seal(now, &plain), due && !handshaking))
        }) else {
            return self.queue(now, to, plain, early);
        };
        if let Some(datagram) = sealed {
            self.stats.payloads_sent += 1;
            self.transmit(to, datagram);
        }
        if rekey {
            self.initiate(now, to, Vec::new(), None, true);
        }
        Ok(())
    }

    /// Sends `data` like [`EndToEnd::send`], and where there is no session yet, in the
    /// handshake's first flight: in the clear in the init this starts (bound to the handshake,
    /// so the answer and the session fail if anyone alters it), or, when it answers an early
    /// payload from `to`, sealed in the response to that init. For requests whose contents
    /// members may see and that may be answered before the sender is authenticated (a read of
    /// public data), and for their answers; the answer reaches whoever sent the init. Saves
    /// the handshake's round trip.
    pub fn send_early(
        &mut self,
        now: Instant,
        to: NodeId,
        source_port: Port,
        destination_port: Port,
        data: &[u8],
    ) -> Result<(), SendError> {
        self.send_with(now, to, source_port, destination_port, data, true)
    }

    /// Puts an answer to an early payload into the response this node still owes `to`; false
    /// if it owes none, has an answer already, or the answer does not fit.
    fn answer_early(&mut self, to: NodeId, plain: &[u8]) -> bool {
        if plain.len() > wire::MAX_RESPONSE_PLAIN {
            return false;
        }
        let owed = self
            .responding
            .values_mut()
            .find(|r| r.peer == to && r.response.is_empty() && r.answer.is_none());
        match owed {
            Some(responding) => {
                responding.answer = Some(plain.to_vec());
                true
            }
            None => false,
        }
    }

    fn queue(
        &mut self,
        now: Instant,
        to: NodeId,
        plain: Vec<u8>,
        early: bool,
    ) -> Result<(), SendError> {
        if self.queued >= MAX_QUEUED {
            return Err(SendError::QueueFull);
        }
        if let Some(initiation) = self.peers.get_mut(&to).and_then(|p| p.initiation.as_mut()) {
            if initiation.queued.len() >= MAX_QUEUED_PER_PEER {
                return Err(SendError::QueueFull);
            }
            initiation.queued.push(plain);
            self.queued += 1;
            return Ok(());
        }
        // The peer is opening a session with us: the payload waits for it rather than start
        // a second handshake, and the init goes out only if that one does not finish soon.
        let answering = self.responding.values().any(|r| r.peer == to);
        if early && !answering && plain.len() <= wire::MAX_INIT_PLAIN {
            return if self.initiate(now, to, Vec::new(), Some(plain), true) {
                self.stats.payloads_sent += 1;
                Ok(())
            } else {
                Err(SendError::QueueFull)
            };
        }
        if self.initiate(now, to, vec![plain], None, !answering) {
            self.queued += 1;
            Ok(())
        } else {
            Err(SendError::QueueFull)
        }
    }

    /// Whether `peer` has, or can be given, an entry in the peer table: when it is full, the
    /// least recently used peer without a handshake in progress makes room.
    fn make_room_for(&mut self, peer: NodeId) -> bool {
        if self.peers.len() < MAX_PEERS || self.peers.contains_key(&peer) {
            return true;
        }
        let oldest = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| p.initiation.is_none())
            .min_by_key(|(_, (_, p))| p.last_used())
            .map(|(index, _)| index);
        match oldest {
            Some(index) => {
                self.peers.swap_remove_index(index);
                true
            }
            None => false,
        }
    }

    fn transmit(&mut self, to: NodeId, datagram: Vec<u8>) {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += datagram.len() as u64;
        self.outgoing.push_back((to, datagram));
    }

    /// A sealed datagram the overlay delivered: `source` is the node it claims to come from,
    /// `via` the member that handed it over.
    pub fn handle_datagram(&mut self, now: Instant, source: NodeId, via: NodeId, datagram: &[u8]) {
        if source == self.local {
            // Our own payloads to ourselves never leave this layer.
            self.stats.dropped_malformed += 1;
            return;
        }
        match Datagram::parse(datagram) {
            Ok(Datagram::Init { initiator, message }) => {
                self.on_init(now, source, via, initiator, message);
            }
            Ok(Datagram::Response {
                initiator,
                responder,
                message,
            }) => self.on_response(now, source, initiator, responder, message),
            Ok(Datagram::Finish { responder, message }) => {
                self.on_finish(now, source, responder, message);
            }
            Ok(Datagram::Data { counter, sealed }) => {
                self.on_data(now, source, via, counter, sealed);
            }
            Err(_) => {
                trace!(source = %source.short(), "dropping a malformed end-to-end datagram");
                self.stats.dropped_malformed += 1;
            }
        }
    }

    fn send_queued(&mut self, now: Instant, peer: NodeId, queued: Vec<Vec<u8>>) {
        for plain in queued {
            let sealed = self
                .peers
                .get_mut(&peer)
                .and_then(Peer::sending)
                .and_then(|s| s.seal(now, &plain));
            match sealed {
                Some(datagram) => {
                    self.stats.payloads_sent += 1;
                    self.transmit(peer, datagram);
                }
                None => self.stats.dropped_unsent += 1,
            }
        }
    }

    fn on_data(&mut self, now: Instant, peer: NodeId, via: NodeId, counter: u64, sealed: &[u8]) {
        let Some(entry) = self
            .peers
            .get_mut(&peer)
            .filter(|p| p.current.is_some() || !p.retired.is_empty())
        else {
            self.stats.dropped_no_session += 1;
            self.recover(now, peer, via);
            return;
        };
        let keys_gone = entry.let_keys_go;
        let mut plain = std::mem::take(&mut self.scratch);
        let sessions = entry
            .current
            .iter_mut()
            .chain(entry.retired.iter_mut().rev());
        let mut outcome = Err(OpenError::BadTag);
        for (index, session) in sessions.enumerate() {
            match session.open(now, counter, sealed, &mut plain) {
                Ok(()) => {
                    outcome = Ok(index == 0 && entry.current.is_some());
                    break;
                }
                // Authentic under these keys, and seen before.
                Err(OpenError::Replayed) => outcome = Err(OpenError::Replayed),
                Err(OpenError::BadTag) => {}
            }
        }
        match outcome {
            Ok(opened_current) => {
                if opened_current && let Some(current) = entry.current.as_mut() {
                    current.confirmed = true;
                    current.finish = None;
                }
                self.accept_plain(peer, &plain, false);
            }
            Err(OpenError::Replayed) => self.stats.dropped_replayed += 1,
            Err(OpenError::BadTag) => {
                self.stats.dropped_bad_tag += 1;
                // Once this node has let keys of the peer go, the peer may still be sealing
                // with them (a re-key whose confirmation went astray): a new handshake puts
                // both on one session again, rather than leaving the peer black-holed.
                // Rate-limited like any recovery.
                if keys_gone {
                    self.recover(now, peer, via);
                }
            }
        }
        self.scratch = plain;
    }

    /// A payload that opened: an acknowledgement, or data for a service (early: it only
    /// claims to come from `peer`).
    fn accept_plain(&mut self, peer: NodeId, plain: &[u8], early: bool) {
        match Plain::parse(plain) {
            Ok(Plain::Ack) => {}
            Ok(Plain::Payload {
                source,
                destination,
                data,
            }) => {
                if !early {
                    self.stats.payloads_received += 1;
                }
                self.received.push_back(Received {
                    from: peer,
                    source_port: source,
                    destination_port: destination,
                    data: data.to_vec(),
                    early,
                });
            }
            Err(_) => self.stats.dropped_malformed += 1,
        }
    }

    /// Data from a peer we hold no session with: it restarted, or we forgot it. A handshake
    /// from our side re-keys it (at most one per interval, and within the init rate limits,
    /// since anyone can send such data claiming any id).
    fn recover(&mut self, now: Instant, peer: NodeId, via: NodeId) {
        let waiting = self.responding.values().any(|r| r.peer == peer)
            || self.peers.get(&peer).is_some_and(|p| {
                p.initiation.is_some()
                    || p.recovery_at.is_some_and(|at| now - at < RECOVERY_INTERVAL)
            });
        if waiting || !self.limiter.allow(via, now) {
            return;
        }
        if self.initiate(now, peer, Vec::new(), None, true)
            && let Some(p) = self.peers.get_mut(&peer)
        {
            p.recovery_at = Some(now);
        }
    }

    /// Retries inits, repeats unconfirmed finishes, gives up on stalled handshakes, and forgets
    /// idle sessions and retired keys.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.responding
            .retain(|_, r| now - r.started < HANDSHAKE_TIMEOUT);
        let mut retries = Vec::new();
        let mut resend = Vec::new();
        for (id, peer) in &mut self.peers {
            if let Some(initiation) = &mut peer.initiation {
                if now - initiation.started >= HANDSHAKE_TIMEOUT {
                    self.stats.handshakes_timed_out += 1;
                    self.stats.dropped_unsent += initiation.queued.len() as u64;
                    self.queued -= initiation.queued.len();
                    peer.initiation = None;
                } else if now - initiation.last_sent >= INIT_RETRY {
                    initiation.last_sent = now;
                    retries.push(*id);
                }
            }
            if let Some(session) = &mut peer.current
                && let Some((finish, sent)) = &mut session.finish
            {
                if now - session.established >= HANDSHAKE_TIMEOUT {
                    session.finish = None;
                } else if now - *sent >= INIT_RETRY {
                    *sent = now;
                    resend.push((*id, finish.clone()));
                }
            }
        }
        for id in retries {
            let Some(mut initiation) = self.peers.get_mut(&id).and_then(|p| p.initiation.take())
            else {
                continue;
            };
            if initiation.state.is_some() {
                self.transmit(id, initiation.init.clone());
            } else {
                self.start_over(id, &mut initiation);
            }
            self.restore(id, initiation);
        }
        for (id, finish) in resend {
            self.transmit(id, finish);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            for peer in self.peers.values_mut() {
                let before = peer.retired.len();
                peer.retired
                    .retain(|s| s.retired.is_none_or(|at| now - at < RETIRED_KEYS_LIFETIME));
                peer.let_keys_go |= peer.retired.len() < before;
            }
            self.peers.retain(|_, p| !p.is_idle(now));
        }
    }

    /// The earliest instant at which [`EndToEnd::handle_timeout`] has work ([`Instant::MAX`]
    /// while there are no peers: an idle layer never wakes its node).
    pub fn poll_timeout(&self) -> Instant {
        if self.peers.is_empty() && self.responding.is_empty() {
            return Instant::MAX;
        }
        let responding = self
            .responding
            .values()
            .map(|r| r.started + HANDSHAKE_TIMEOUT);
        let peers = self.peers.values().flat_map(|p| {
            let initiation = p
                .initiation
                .as_ref()
                .map(|i| (i.last_sent + INIT_RETRY).min(i.started + HANDSHAKE_TIMEOUT));
            let finish = p.current.as_ref().and_then(|s| {
                let (_, sent) = s.finish.as_ref()?;
                Some((*sent + INIT_RETRY).min(s.established + HANDSHAKE_TIMEOUT))
            });
            initiation.into_iter().chain(finish)
        });
        responding.chain(peers).fold(self.next_sweep, Instant::min)
    }
}

#[cfg(test)]
mod tests;
