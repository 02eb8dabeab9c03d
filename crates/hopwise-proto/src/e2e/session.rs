//! One established end-to-end session: its keys, counters and replay window.

use snow::StatelessTransportState;

use super::wire::{self, TAG_LEN};
use crate::Instant;
use crate::secure::ReplayWindow;

pub(super) struct Session {
    transport: StatelessTransportState,
    next_counter: u64,
    replay: ReplayWindow,
    pub(super) established: Instant,
    pub(super) last_sent: Instant,
    pub(super) last_received: Instant,
    /// The peer has shown that it holds these keys (a packet under them arrived). A responder's
    /// session is confirmed from the start: the finish message proved it.
    pub(super) confirmed: bool,
    /// As initiator: the finish message, sent again until the peer confirms, and when it last
    /// went out.
    pub(super) finish: Option<(Vec<u8>, Instant)>,
    /// As responder: the index of the handshake that made this session, so that a repeated
    /// finish (its acknowledgement was lost) is acknowledged again instead of failing.
    pub(super) made_by: Option<u32>,
    /// When a newer session replaced this one; it still opens packets for a while.
    pub(super) retired: Option<Instant>,
    /// Never sent on: the other session of a simultaneous open.
    pub(super) receive_only: bool,
}

/// Why a data datagram did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpenError {
    Replayed,
    BadTag,
}

impl Session {
    pub(super) fn new(transport: StatelessTransportState, now: Instant, confirmed: bool) -> Self {
        Self {
            transport,
            next_counter: 0,
            replay: ReplayWindow::new(),
            established: now,
            last_sent: now,
            last_received: now,
            confirmed,
            finish: None,
            made_by: None,
            retired: None,
            receive_only: false,
        }
    }

    /// Datagrams sealed under these keys so far.
    pub(super) fn sent(&self) -> u64 {
        self.next_counter
    }

    /// A data datagram carrying `plain`; `None` only if the cipher refuses (it does not for
    /// counters below 2^64 - 1, which no session reaches: it is re-keyed long before).
    pub(super) fn seal(&mut self, now: Instant, plain: &[u8]) -> Option<Vec<u8>> {
        let counter = self.next_counter;
        self.next_counter += 1;
        self.last_sent = now;
        let (mut datagram, at) = wire::data_buffer(counter, plain.len());
        self.transport
            .write_message(counter, plain, &mut datagram[at..])
            .ok()?;
        Some(datagram)
    }

    /// Opens a data datagram's sealed part into `plain`. The replay window is checked before
    /// and moved only after authentication, so forged packets cannot move it; a counter seen
    /// before is a replay only if the packet is authentic under these keys (a late packet of
    /// another session is not).
    pub(super) fn open(
        &mut self,
        now: Instant,
        counter: u64,
        sealed: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let fresh = self.replay.is_fresh(counter);
        plain.resize(sealed.len() - TAG_LEN, 0);
        let len = self
            .transport
            .read_message(counter, sealed, plain)
            .map_err(|_| OpenError::BadTag)?;
        if !fresh {
            return Err(OpenError::Replayed);
        }
        plain.truncate(len);
        self.replay.accept(counter);
        self.last_received = now;
        Ok(())
    }
}
