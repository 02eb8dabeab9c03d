//! The three handshake messages: a node starts a handshake (init), answers one (response),
//! finishes its own (finish), and installs the session that comes of it.

use rand::RngExt;
use snow::HandshakeState;

use super::session::Session;
use super::{
    EndToEnd, HANDSHAKE_TIMEOUT, MAX_INITIATIONS, MAX_RESPONDING, MAX_RESPONDING_PER_HOP,
    MAX_RESPONDING_PER_PEER, NOISE_PARAMS, PROLOGUE, wire,
};
use crate::secure::crypto;
use crate::{Instant, NodeId};

/// A handshake this node started.
pub(super) struct Initiation {
    /// `None` until the init goes out: after a failed response, or while the payloads wait
    /// for a handshake the peer started (see [`EndToEnd::queue`]).
    pub(super) state: Option<HandshakeState>,
    /// The peer started a handshake at the same time, and its id is lower: the session this
    /// one makes only carries what waited for it, and the peer's becomes the current one.
    pub(super) yields: bool,
    pub(super) index: u32,
    pub(super) init: Vec<u8>,
    pub(super) started: Instant,
    pub(super) last_sent: Instant,
    /// Plaintexts to send once the session is up.
    pub(super) queued: Vec<Vec<u8>>,
    /// The early plaintext the init carries (see [`EndToEnd::send_early`]).
    pub(super) early: Option<Vec<u8>>,
}

/// A handshake this node answered.
pub(super) struct Responding {
    pub(super) peer: NodeId,
    /// The member that handed the init over.
    pub(super) via: NodeId,
    pub(super) state: HandshakeState,
    pub(super) initiator_index: u32,
    /// Empty while it is held back for the answer to the init's early payload.
    pub(super) response: Vec<u8>,
    /// The init's early payload, delivered again once the finish authenticates its sender.
    pub(super) early: Option<Vec<u8>>,
    /// The answer to ride the response.
    pub(super) answer: Option<Vec<u8>>,
    pub(super) started: Instant,
    /// Answered while our own handshake with a peer of higher id was under way: the session
    /// only receives, ours becomes the current one.
    pub(super) secondary: bool,
}

impl EndToEnd {
    /// Starts a handshake with `to`, holding `queued` until it is done; its init goes out now,
    /// or with `send_now` false at the first retry. False if there is no room for it.
    pub(super) fn initiate(
        &mut self,
        now: Instant,
        to: NodeId,
        queued: Vec<Vec<u8>>,
        early: Option<Vec<u8>>,
        send_now: bool,
    ) -> bool {
        if self.initiations() >= MAX_INITIATIONS || !self.make_room_for(to) {
            return false;
        }
        let mut initiation = Initiation {
            state: None,
            yields: false,
            index: 0,
            init: Vec::new(),
            started: now,
            last_sent: now,
            queued,
            early,
        };
        if send_now {
            self.start_over(to, &mut initiation);
        }
        self.peers.entry(to).or_default().initiation = Some(initiation);
        true
    }

    /// A fresh handshake state and index for `initiation`, and its init sent.
    pub(super) fn start_over(&mut self, to: NodeId, initiation: &mut Initiation) {
        initiation.state = None;
        let Some(mut state) = self.handshake(true, self.local, to) else {
            return;
        };
        let early = initiation.early.as_deref().unwrap_or(&[]);
        // snow wants room for a tag even where the pattern sends none.
        let mut message = vec![0; wire::INIT_MESSAGE_LEN + early.len() + wire::TAG_LEN];
        match state.write_message(early, &mut message) {
            Ok(len) if len == wire::INIT_MESSAGE_LEN + early.len() => message.truncate(len),
            _ => return,
        }
        initiation.index = self.rng.random();
        initiation.init = wire::init(initiation.index, &message);
        initiation.state = Some(state);
        self.transmit(to, initiation.init.clone());
    }

    pub(super) fn handshake(
        &mut self,
        initiator: bool,
        from: NodeId,
        to: NodeId,
    ) -> Option<HandshakeState> {
        let mut prologue = PROLOGUE.to_vec();
        prologue.extend_from_slice(from.as_bytes());
        prologue.extend_from_slice(to.as_bytes());
        let builder = crypto::builder(&mut self.rng, NOISE_PARAMS)
            .local_private_key(&self.private_key)
            .ok()?
            .prologue(&prologue)
            .ok()?;
        if initiator {
            builder.build_initiator().ok()
        } else {
            builder.build_responder().ok()
        }
    }

    pub(super) fn on_init(
        &mut self,
        now: Instant,
        peer: NodeId,
        via: NodeId,
        index: u32,
        message: &[u8],
    ) {
        // Repeats pass the rate limit too: a response is larger than an init, and anyone can
        // repeat an init that claims someone else's id.
        if !self.limiter.allow(via, now) {
            self.stats.handshakes_refused += 1;
            return;
        }
        // The same init again: its sender missed our response.
        if let Some(answered) = self
            .responding
            .values()
            .find(|r| r.peer == peer && r.initiator_index == index)
        {
            let response = answered.response.clone();
            if !response.is_empty() {
                self.transmit(peer, response);
            }
            return;
        }
        if self.responding.len() >= MAX_RESPONDING {
            self.stats.handshakes_refused += 1;
            return;
        }
        self.evict_responding(|r| r.via == via, MAX_RESPONDING_PER_HOP);
        self.evict_responding(|r| r.peer == peer, MAX_RESPONDING_PER_PEER);
        let Some(mut state) = self.handshake(false, peer, self.local) else {
            return;
        };
        let mut early = vec![0; message.len()];
        let Ok(early_len) = state.read_message(message, &mut early) else {
            self.stats.handshakes_failed += 1;
            return;
        };
        early.truncate(early_len);
        let responder_index = loop {
            let candidate: u32 = self.rng.random();
            if !self.responding.contains_key(&candidate) {
                break candidate;
            }
        };
        let early = (!early.is_empty()).then_some(early);
        let mut response = Vec::new();
        match &early {
            // The response waits for the services' answer (see `write_held_responses`).
            Some(plain) => self.accept_plain(peer, plain, true),
            None => {
                let Some(written) = write_response(&mut state, index, responder_index, &[]) else {
                    self.stats.handshakes_failed += 1;
                    return;
                };
                response = written;
                self.transmit(peer, response.clone());
            }
        }
        // Both ends started a handshake at once. Both complete, so that each end's first
        // payload rides its own finish, and both ends keep the session the lower id started
        // as the current one.
        let mut secondary = false;
        if let Some(ours) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.initiation.as_mut())
            .filter(|i| i.state.is_some())
        {
            if self.local < peer {
                secondary = true;
            } else {
                ours.yields = true;
            }
        }
        self.responding.insert(
            responder_index,
            Responding {
                peer,
                via,
                state,
                initiator_index: index,
                response,
                early,
                answer: None,
                started: now,
                secondary,
            },
        );
    }

    /// Writes the responses held back for an answer to their init's early payload, with the
    /// answer if a service gave one.
    pub(super) fn write_held_responses(&mut self) {
        let held: Vec<u32> = self
            .responding
            .iter()
            .filter(|(_, r)| r.response.is_empty())
            .map(|(index, _)| *index)
            .collect();
        for responder_index in held {
            let responding = self.responding.get_mut(&responder_index).expect("listed");
            let answer = responding.answer.take().unwrap_or_default();
            let index = responding.initiator_index;
            let written = write_response(&mut responding.state, index, responder_index, &answer);
            let peer = responding.peer;
            match written {
                Some(response) => {
                    responding.response = response.clone();
                    self.transmit(peer, response);
                }
                None => {
                    self.stats.handshakes_failed += 1;
                    self.responding.swap_remove(&responder_index);
                }
            }
        }
    }

    /// Makes room for one more answered handshake among those that `matches`: at most `limit`
    /// of them stay, the oldest leave first.
    pub(super) fn evict_responding(&mut self, matches: impl Fn(&Responding) -> bool, limit: usize) {
        loop {
            let same: Vec<(u32, Instant)> = self
                .responding
                .iter()
                .filter(|(_, r)| matches(r))
                .map(|(index, r)| (*index, r.started))
                .collect();
            if same.len() < limit {
                return;
            }
            let (oldest, _) = same
                .into_iter()
                .min_by_key(|(_, started)| *started)
                .expect("at least the limit");
            self.responding.swap_remove(&oldest);
        }
    }

    pub(super) fn on_response(
        &mut self,
        now: Instant,
        peer: NodeId,
        initiator_index: u32,
        responder_index: u32,
        message: &[u8],
    ) {
        let Some(initiation) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.initiation.take_if(|i| i.index == initiator_index))
        else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        let mut initiation = initiation;
        let Some(mut state) = initiation.state.take() else {
            self.stats.dropped_unexpected += 1;
            self.restore(peer, initiation);
            return;
        };
        let mut answer = vec![0; message.len()];
        let read = state.read_message(message, &mut answer);
        if read.is_err() || !holds_key_of(&state, peer) {
            // Forged, garbled, or someone else's key: this handshake state is spent, and the
            // next retry starts over.
            self.stats.handshakes_failed += 1;
            self.restore(peer, initiation);
            return;
        }
        // The answer to our early payload, from the proven holder of the peer's key.
        if let Ok(len) = read
            && len > 0
        {
            self.accept_plain(peer, &answer[..len], false);
        }
        let mut queued = std::mem::take(&mut initiation.queued);
        self.queued -= queued.len();
        let first = (!queued.is_empty() && queued[0].len() <= wire::MAX_FINISH_PLAIN)
            .then(|| queued.remove(0));
        let first_plain = first.as_deref().unwrap_or(&[]);
        let (mut finish, at) = wire::finish_buffer(
            responder_index,
            wire::FINISH_MESSAGE_MIN + first_plain.len(),
        );
        let transport = state
            .write_message(first_plain, &mut finish[at..])
            .ok()
            .and_then(|_| state.into_stateless_transport_mode().ok());
        let Some(transport) = transport else {
            self.stats.handshakes_failed += 1;
            self.stats.dropped_unsent += 1 + queued.len() as u64;
            return;
        };
        if first.is_some() {
            self.stats.payloads_sent += 1;
        }
        let mut session = Session::new(transport, now, false);
        session.finish = Some((finish.clone(), now));
        self.transmit(peer, finish);
        // What waited goes out on this session even if it yields: the peer opens it.
        for plain in queued {
            match session.seal(now, &plain) {
                Some(datagram) => {
                    self.stats.payloads_sent += 1;
                    self.transmit(peer, datagram);
                }
                None => self.stats.dropped_unsent += 1,
            }
        }
        self.install(peer, session, initiation.yields);
    }

    /// Puts back an initiation whose response failed; its retry starts over.
    pub(super) fn restore(&mut self, peer: NodeId, initiation: Initiation) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.initiation = Some(initiation);
        }
    }

    pub(super) fn on_finish(&mut self, now: Instant, peer: NodeId, index: u32, message: &[u8]) {
        let Some(responding) = self.responding.get(&index) else {
            let repeated = self
                .peers
                .get_mut(&peer)
                .and_then(|p| p.current.as_mut())
                .filter(|s| s.made_by == Some(index))
                .and_then(|s| s.seal(now, &[]));
            match repeated {
                Some(ack) => self.transmit(peer, ack),
                None => self.stats.dropped_unexpected += 1,
            }
            return;
        };
        if responding.peer != peer {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let mut responding = self.responding.swap_remove(&index).expect("present");
        let mut plain = vec![0; message.len()];
        let read = responding.state.read_message(message, &mut plain);
        let transport = match read {
            Ok(len) if holds_key_of(&responding.state, peer) => {
                plain.truncate(len);
                responding.state.into_stateless_transport_mode().ok()
            }
            _ => None,
        };
        let Some(transport) = transport else {
            self.stats.handshakes_failed += 1;
            return;
        };
        if !self.make_room_for(peer) {
            self.stats.handshakes_refused += 1;
            return;
        }
        let mut session = Session::new(transport, now, true);
        session.made_by = Some(index);
        let ack = session.seal(now, &[]);
        self.install(peer, session, responding.secondary);
        if let Some(ack) = ack {
            self.transmit(peer, ack);
        }
        // The init's early payload comes first, now from a proven sender.
        if let Some(early) = responding.early.take() {
            self.accept_plain(peer, &early, false);
        }
        self.accept_plain(peer, &plain, false);
        // A handshake of our own with this peer is moot now, unless ours is the one both keep:
        // its payloads go on this session.
        let ours = self
            .peers
            .get_mut(&peer)
            .filter(|_| !responding.secondary)
            .and_then(|p| p.initiation.take());
        if let Some(ours) = ours {
            self.queued -= ours.queued.len();
            self.send_queued(now, peer, ours.queued);
        }
    }

    /// Makes `session` the current one with `peer`; the one it replaces opens late packets for
    /// a while. A session of a simultaneous open that `yields` only opens packets, unless there
    /// is no other yet.
    pub(super) fn install(&mut self, peer: NodeId, mut session: Session, yields: bool) {
        self.stats.handshakes_completed += 1;
        let now = session.established;
        let entry = self.peers.entry(peer).or_default();
        if yields && entry.current.is_some() {
            session.receive_only = true;
            entry.retire(session, now);
            return;
        }
        if let Some(old) = entry.current.replace(session) {
            if now - old.established >= HANDSHAKE_TIMEOUT {
                self.stats.rekeys += 1;
            }
            entry.retire(old, now);
        }
    }
}

/// Noise message 2 with `answer` sealed in it, in its response datagram.
fn write_response(
    state: &mut HandshakeState,
    initiator_index: u32,
    responder_index: u32,
    answer: &[u8],
) -> Option<Vec<u8>> {
    let mut message = vec![0; wire::RESPONSE_MESSAGE_LEN + answer.len()];
    let len = state.write_message(answer, &mut message).ok()?;
    Some(wire::response(
        initiator_index,
        responder_index,
        &message[..len],
    ))
}

/// Whether the peer of a handshake proved the static key of `peer`'s id.
pub(super) fn holds_key_of(state: &HandshakeState, peer: NodeId) -> bool {
    state
        .get_remote_static()
        .is_some_and(|key| NodeId::from_public_key(key) == peer)
}
