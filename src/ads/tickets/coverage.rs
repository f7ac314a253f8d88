//! The set of object bytes a ticket has delivered, as sorted, disjoint, half-open intervals,
//! and the completion test. Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};

/// Delivered byte intervals `[start, end)`, sorted and merged (touching intervals join).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Coverage(Vec<(u64, u64)>);

impl Coverage {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The intervals, ascending.
    pub fn intervals(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Adds `[start, end)`. Empty intervals are ignored.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First interval that could touch [start, end): the first whose end >= start.
        let i = self.0.partition_point(|&(_, e)| e < start);
        let mut new_start = start;
        let mut new_end = end;
        let mut j = i;
        while j < self.0.len() && self.0[j].0 <= end {
            new_start = new_start.min(self.0[j].0);
            new_end = new_end.max(self.0[j].1);
            j += 1;
        }
        self.0.splice(i..j, std::iter::once((new_start, new_end)));
    }

    /// Takes `[start, end)` out: bytes credited that turned out not to have left (a held
    /// final frame whose completion could not be recorded).
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First interval reaching past `start`, then every one beginning before `end`.
        let i = self.0.partition_point(|&(_, e)| e <= start);
        let mut j = i;
        while j < self.0.len() && self.0[j].0 < end {
            j += 1;
        }
        if i == j {
            return;
        }
        let left = (self.0[i].0 < start).then_some((self.0[i].0, start));
        let right = (self.0[j - 1].1 > end).then_some((end, self.0[j - 1].1));
        self.0.splice(i..j, left.into_iter().chain(right));
    }

    /// Adds every interval of `other`.
    pub fn merge(&mut self, other: &Coverage) {
        for &(s, e) in &other.0 {
            self.insert(s, e);
        }
    }

    /// Number of distinct bytes covered.
    pub fn covered(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether every byte of an object of `size` bytes is covered. An empty object is complete
    /// once any request for it has finished, which the caller decides; here it is "covered".
    pub fn covers(&self, size: u64) -> bool {
        size == 0 || matches!(self.0.first(), Some(&(0, e)) if e >= size)
    }

    /// Compact text form for storage: `a-b,c-d` (half-open), empty string for none.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("{a}-{b}"));
        }
        s
    }

    /// Parses [`Coverage::to_text`]; malformed pieces are skipped (storage is ours).
    pub fn from_text(text: &str) -> Self {
        let mut c = Coverage::new();
        for piece in text.split(',').filter(|p| !p.is_empty()) {
            if let Some((a, b)) = piece.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    c.insert(a, b);
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_overlapping_and_touching() {
        let mut c = Coverage::new();
        c.insert(10, 20);
        c.insert(30, 40);
        assert_eq!(c.intervals(), &[(10, 20), (30, 40)]);
        c.insert(20, 30);
        assert_eq!(c.intervals(), &[(10, 40)]);
        c.insert(0, 5);
        c.insert(50, 60);
        c.insert(3, 55);
        assert_eq!(c.intervals(), &[(0, 60)]);
        assert!(c.covers(60));
        assert!(!c.covers(61));
        c.insert(7, 7);
        assert_eq!(c.covered(), 60);
    }

    #[test]
    fn text_round_trip() {
        let mut c = Coverage::new();
        c.insert(0, 100);
        c.insert(200, 300);
        assert_eq!(c.to_text(), "0-100,200-300");
        assert_eq!(Coverage::from_text(&c.to_text()), c);
        assert_eq!(Coverage::from_text(""), Coverage::new());
    }

    proptest! {
        /// The interval set holds exactly the bytes inserted and not removed since, stays
        /// sorted and disjoint, and `covers` agrees with a byte-by-byte check.
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..300, 0u64..60), 0..40), size in 1u64..320) {
            let mut c = Coverage::new();
            let mut bits = vec![false; 400];
            for (add, s, l) in ops {
                if add { c.insert(s, s + l) } else { c.remove(s, s + l) }
                for b in s..s + l { bits[b as usize] = add; }
            }
            for w in c.intervals().windows(2) { prop_assert!(w[0].1 < w[1].0); }
            prop_assert_eq!(c.covered(), bits.iter().filter(|&&b| b).count() as u64);
            prop_assert_eq!(c.covers(size), bits[..size as usize].iter().all(|&b| b));
        }
    }
}
