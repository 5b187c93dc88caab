//! The offset check of channels with history: per subscriber, offsets increase by exactly one.
//!
//! A channel with history numbers its messages 1, 2, 3... and every subscriber must see them in
//! that order with no gap and no repeat (docs/PROTOCOL.md, "History and recovery"), across the
//! seam of a `subscribe` (the `subscribed` reply names the newest offset N, the first message
//! after it must be N+1) and across a recovery (missed messages, then the live stream).

/// One subscriber's view of one channel's offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffsetCheck {
    /// The last offset seen, or the offset the `subscribed` reply named.
    pub last: u64,
    /// Messages whose offset was checked.
    pub checked: u64,
    /// Times an offset skipped ahead (`offset > last + 1`).
    pub gaps: u64,
    /// Offsets skipped over, all gaps together.
    pub skipped: u64,
    /// Messages whose offset was not above the last one (a duplicate, or late).
    pub repeats: u64,
    /// Messages without an offset on a channel whose `subscribed` reply had one.
    pub missing: u64,
}

/// What one offset did to the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `last + 1`: as it should be.
    Next,
    /// Ahead of `last + 1` by this many missing offsets.
    Gap(u64),
    /// Not above `last`.
    Repeat,
}

impl OffsetCheck {
    /// A check that expects `subscribed + 1` next.
    pub fn after(subscribed: u64) -> Self {
        Self {
            last: subscribed,
            ..Self::default()
        }
    }

    /// Checks the offset of one message; a gap moves `last` forward, a repeat does not.
    pub fn see(&mut self, offset: u64) -> Step {
        self.checked += 1;
        if offset <= self.last {
            self.repeats += 1;
            return Step::Repeat;
        }
        let skipped = offset - self.last - 1;
        self.last = offset;
        if skipped == 0 {
            Step::Next
        } else {
            self.gaps += 1;
            self.skipped += skipped;
            Step::Gap(skipped)
        }
    }

    /// Adds another subscriber's counts (not `last`) into this one.
    pub fn add(&mut self, other: &OffsetCheck) {
        self.checked += other.checked;
        self.gaps += other.gaps;
        self.skipped += other.skipped;
        self.repeats += other.repeats;
        self.missing += other.missing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_offsets_are_clean() {
        let mut c = OffsetCheck::after(41);
        assert_eq!(c.see(42), Step::Next);
        assert_eq!(c.see(43), Step::Next);
        assert_eq!((c.gaps, c.repeats, c.missing), (0, 0, 0));
        assert_eq!((c.last, c.checked), (43, 2));
    }

    #[test]
    fn gaps_and_repeats_are_counted() {
        let mut c = OffsetCheck::after(0);
        assert_eq!(c.see(1), Step::Next);
        assert_eq!(c.see(4), Step::Gap(2));
        assert_eq!(c.see(4), Step::Repeat);
        assert_eq!(c.see(3), Step::Repeat);
        assert_eq!(c.see(5), Step::Next);
        assert_eq!(
            (c.last, c.checked, c.gaps, c.skipped, c.repeats),
            (5, 5, 1, 2, 2)
        );
        // The first message after `subscribed` must be the next offset too.
        let mut late = OffsetCheck::after(10);
        assert_eq!(late.see(12), Step::Gap(1));
        let mut total = OffsetCheck::default();
        total.add(&c);
        total.add(&late);
        assert_eq!((total.checked, total.gaps, total.skipped), (6, 2, 3));
    }
}
