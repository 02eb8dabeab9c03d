//! Per-neighbour link estimation: smoothed RTT, jitter, loss and liveness.
//!
//! Fixed-size state only (no allocation per sample), so a link costs the same however long it
//! lives.

/// Samples kept for the latency filter.
const FILTER_WINDOW: usize = 8;
/// Probe outcomes kept for the loss estimate (one bit each).
const LOSS_WINDOW: u32 = 32;
/// Losses among the last [`LOSS_WINDOW`] probes that [`Link::costed_loss`] leaves out. Isolated
/// losses are the background of a path with a little random loss (at 2% a window holds none,
/// one or two of them most of the time), not a sign of a worse path; costing each one moved
/// every route through the link by an eighth and back a few seconds later, and under 2% loss
/// route updates rose 36-fold and seqno requests 700-fold.
const TOLERATED_LOSSES: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Down,
}

/// What the estimator reports after a probe was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossVerdict {
    StillUp,
    WentDown,
    AlreadyDown,
}

#[derive(Debug, Clone)]
pub struct Link {
    srtt_ms: f64,
    rttvar_ms: f64,
    jitter_ms: f64,
    last_sample_ms: f64,
    recent: [f64; FILTER_WINDOW],
    recent_len: usize,
    recent_next: usize,
    /// Bit i set: the i-th most recent probe was lost.
    outcomes: u32,
    outcome_count: u32,
    consecutive_missed: u32,
    max_missed: u32,
    state: LinkState,
    samples: u64,
}

impl Link {
    /// A link whose first sample was `rtt_ms`. It goes down after `max_missed` probes in a row
    /// go unanswered.
    pub fn new(rtt_ms: f64, max_missed: u32) -> Self {
        let mut link = Self {
            srtt_ms: rtt_ms,
            rttvar_ms: rtt_ms / 2.0,
            jitter_ms: 0.0,
            last_sample_ms: rtt_ms,
            recent: [0.0; FILTER_WINDOW],
            recent_len: 0,
            recent_next: 0,
            outcomes: 0,
            outcome_count: 0,
            consecutive_missed: 0,
            max_missed: max_missed.max(1),
            state: LinkState::Up,
            samples: 0,
        };
        link.push_sample(rtt_ms);
        link
    }

    /// Records an answered probe. Returns true if this revived a link that was down.
    pub fn on_sample(&mut self, rtt_ms: f64) -> bool {
        // RFC 6298 smoothing, and RFC 3550's interarrival jitter over consecutive samples.
        let deviation = (self.srtt_ms - rtt_ms).abs();
        self.rttvar_ms += (deviation - self.rttvar_ms) / 4.0;
        self.srtt_ms += (rtt_ms - self.srtt_ms) / 8.0;
        self.jitter_ms += ((rtt_ms - self.last_sample_ms).abs() - self.jitter_ms) / 16.0;
        self.last_sample_ms = rtt_ms;
        self.push_sample(rtt_ms);
        self.record_outcome(false);
        self.consecutive_missed = 0;
        let revived = self.state == LinkState::Down;
        self.state = LinkState::Up;
        revived
    }

    /// Records a probe that got no answer in time.
    pub fn on_probe_lost(&mut self) -> LossVerdict {
        self.record_outcome(true);
        self.consecutive_missed = self.consecutive_missed.saturating_add(1);
        match self.state {
            LinkState::Down => LossVerdict::AlreadyDown,
            LinkState::Up if self.consecutive_missed >= self.max_missed => {
                self.state = LinkState::Down;
                LossVerdict::WentDown
            }
            LinkState::Up => LossVerdict::StillUp,
        }
    }

    fn push_sample(&mut self, rtt_ms: f64) {
        self.recent[self.recent_next] = rtt_ms;
        self.recent_next = (self.recent_next + 1) % FILTER_WINDOW;
        self.recent_len = (self.recent_len + 1).min(FILTER_WINDOW);
        self.samples += 1;
    }

    fn record_outcome(&mut self, lost: bool) {
        self.outcomes = (self.outcomes << 1) | u32::from(lost);
        self.outcome_count = (self.outcome_count + 1).min(LOSS_WINDOW);
    }

    /// The RTT the coordinate system should use: the 25th percentile of the recent samples.
    /// Queueing only ever adds delay, so a low percentile tracks the propagation delay while
    /// still following real route changes within a few samples (Ledlie et al.'s moving
    /// percentile filter).
    pub fn filtered_rtt_ms(&self) -> f64 {
        let mut window = self.recent;
        let samples = &mut window[..self.recent_len];
        samples.sort_unstable_by(f64::total_cmp);
        samples[(self.recent_len - 1) / 4]
    }

    /// The RTT routing should use: the median of the last three samples, so a real change of
    /// latency shows within two probes while a single delayed probe does not.
    pub fn recent_rtt_ms(&self) -> f64 {
        let count = self.recent_len.min(3);
        let mut last = [0.0; 3];
        for (i, slot) in last.iter_mut().enumerate().take(count) {
            *slot = self.recent[(self.recent_next + FILTER_WINDOW - 1 - i) % FILTER_WINDOW];
        }
        let samples = &mut last[..count];
        samples.sort_unstable_by(f64::total_cmp);
        samples[count / 2]
    }

    pub fn srtt_ms(&self) -> f64 {
        self.srtt_ms
    }

    pub fn rttvar_ms(&self) -> f64 {
        self.rttvar_ms
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    /// Fraction of the recent probes that went unanswered.
    pub fn loss(&self) -> f64 {
        self.loss_beyond(0)
    }

    /// The loss a route's cost counts: the fraction of recent probes lost beyond
    /// [`TOLERATED_LOSSES`].
    pub fn costed_loss(&self) -> f64 {
        self.loss_beyond(TOLERATED_LOSSES)
    }

    fn loss_beyond(&self, tolerated: u32) -> f64 {
        if self.outcome_count == 0 {
            return 0.0;
        }
        let mask = if self.outcome_count >= LOSS_WINDOW {
            u32::MAX
        } else {
            (1 << self.outcome_count) - 1
        };
        let lost = (self.outcomes & mask)
            .count_ones()
            .saturating_sub(tolerated);
        f64::from(lost) / f64::from(self.outcome_count)
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_follows_rfc6298_and_rfc3550() {
        let mut link = Link::new(100.0, 3);
        assert_eq!(link.srtt_ms(), 100.0);
        assert_eq!(link.rttvar_ms(), 50.0);
        link.on_sample(108.0);
        assert_eq!(link.srtt_ms(), 101.0);
        assert_eq!(link.rttvar_ms(), 50.0 + (8.0 - 50.0) / 4.0);
        assert_eq!(link.jitter_ms(), 0.5);
    }

    #[test]
    fn filter_ignores_queueing_spikes() {
        let mut link = Link::new(50.0, 3);
        for rtt in [51.0, 250.0, 50.5, 300.0, 52.0, 49.5, 400.0] {
            link.on_sample(rtt);
        }
        // Sorted window: 49.5 50 50.5 51 52 250 300 400; the 25th percentile is the second.
        assert_eq!(link.filtered_rtt_ms(), 50.0);
        // A lasting route change shows through once it fills most of the window.
        for _ in 0..7 {
            link.on_sample(80.0);
        }
        assert_eq!(link.filtered_rtt_ms(), 80.0);
    }

    #[test]
    fn recent_rtt_is_the_median_of_the_last_three() {
        let mut link = Link::new(50.0, 3);
        assert_eq!(link.recent_rtt_ms(), 50.0);
        link.on_sample(90.0);
        assert_eq!(link.recent_rtt_ms(), 90.0, "of two samples, the larger");
        link.on_sample(52.0);
        assert_eq!(link.recent_rtt_ms(), 52.0);
        link.on_sample(80.0);
        link.on_sample(81.0);
        assert_eq!(
            link.recent_rtt_ms(),
            80.0,
            "a lasting change shows after two samples"
        );
    }

    #[test]
    fn goes_down_after_bounded_misses_and_revives() {
        let mut link = Link::new(10.0, 3);
        assert_eq!(link.on_probe_lost(), LossVerdict::StillUp);
        link.on_sample(10.0);
        assert_eq!(link.on_probe_lost(), LossVerdict::StillUp);
        assert_eq!(link.on_probe_lost(), LossVerdict::StillUp);
        assert_eq!(link.on_probe_lost(), LossVerdict::WentDown);
        assert_eq!(link.state(), LinkState::Down);
        assert_eq!(link.on_probe_lost(), LossVerdict::AlreadyDown);
        assert!(link.on_sample(10.0));
        assert_eq!(link.state(), LinkState::Up);
    }

    #[test]
    fn loss_is_the_lost_fraction_of_recent_probes() {
        let mut link = Link::new(10.0, 100);
        assert_eq!(link.loss(), 0.0);
        for i in 0..40 {
            if i % 4 == 0 {
                link.on_probe_lost();
            } else {
                link.on_sample(10.0);
            }
        }
        assert_eq!(link.loss(), 8.0 / 32.0);
        assert_eq!(link.costed_loss(), 6.0 / 32.0);
    }

    #[test]
    fn isolated_losses_cost_nothing_and_a_third_does() {
        let mut link = Link::new(10.0, 100);
        for i in 0..32 {
            if i == 5 || i == 20 {
                link.on_probe_lost();
            } else {
                link.on_sample(10.0);
            }
        }
        assert_eq!(link.loss(), 2.0 / 32.0);
        assert_eq!(link.costed_loss(), 0.0);
        link.on_probe_lost();
        assert_eq!(link.costed_loss(), 1.0 / 32.0);
    }
}
