//! The receive side of a session's counters: each counter is accepted once, and counters far
//! behind the highest seen are refused (a sliding window, as in RFC 6479 without the blocks).

/// Counters less than this far behind the highest accepted one are still accepted once.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// The highest counter accepted, plus one (0: none yet).
    next: u64,
    /// Bit `c % WINDOW` is set when counter `c` (within the window) was accepted.
    seen: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            next: 0,
            seen: [0; WORDS],
        }
    }

    /// Whether `counter` could be accepted: call before decrypting, then [`Self::accept`]
    /// once the packet proved authentic, so forged packets cannot move the window.
    pub fn is_fresh(&self, counter: u64) -> bool {
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let bit = counter % WINDOW;
        self.seen[(bit / 64) as usize] & (1 << (bit % 64)) == 0
    }

    pub fn accept(&mut self, counter: u64) {
        if counter >= self.next {
            // Clear the bits of the counters the window skips over.
            let skipped = (counter - self.next).min(WINDOW);
            for c in self.next..self.next + skipped {
                let bit = c % WINDOW;
                self.seen[(bit / 64) as usize] &= !(1 << (bit % 64));
            }
            self.next = counter + 1;
        }
        let bit = counter % WINDOW;
        self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_counter_once_and_none_too_old() {
        let mut window = ReplayWindow::new();
        for c in [0, 5, 3, 2000, 1500] {
            assert!(window.is_fresh(c));
            window.accept(c);
            assert!(!window.is_fresh(c));
        }
        assert!(!window.is_fresh(5), "outside the window");
        assert!(window.is_fresh(1999));
        assert!(window.is_fresh(2000 - WINDOW + 1));
        assert!(!window.is_fresh(2000 - WINDOW));
    }

    proptest! {
        /// Against a model that remembers everything: the window never accepts a counter
        /// twice, and always accepts a new counter within WINDOW of the highest.
        #[test]
        fn matches_a_model(counters in prop::collection::vec(0u64..5_000, 1..400)) {
            let mut window = ReplayWindow::new();
            let mut accepted = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let fresh = window.is_fresh(c);
                if accepted.contains(&c) {
                    prop_assert!(!fresh);
                } else if highest.is_none_or(|h| c + WINDOW > h) {
                    prop_assert!(fresh);
                }
                if fresh {
                    window.accept(c);
                    accepted.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
