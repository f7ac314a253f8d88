//! RFC 9110 §14 `Range: bytes=…` parsing and satisfiability. Pure: header text and object size
//! in, a decision out.
//!
//! Policy, as nginx does it: a header we cannot parse, or one asking for more pieces than
//! `max_ranges` after coalescing, is ignored (the whole object is sent with 200, which the RFC
//! allows); a well-formed header none of whose ranges overlap the object is unsatisfiable (416).

/// An inclusive byte range `start..=end` inside an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a range holds at least one byte. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What to send for a request's `Range` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable Range header: send the whole object with 200.
    Full,
    /// One range: 206 with `Content-Range`.
    Single(ByteRange),
    /// Several disjoint ranges, ascending: 206 `multipart/byteranges`.
    Multi(Vec<ByteRange>),
    /// Well-formed, but nothing overlaps the object: 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Upper bound on range specs we even look at; beyond it the header is ignored as abusive.
const MAX_SPECS: usize = 256;

/// Decides what to send for `header` (the Range field value) on an object of `size` bytes.
pub fn decide(header: &str, size: u64, max_ranges: usize) -> RangeDecision {
    let Some(spec_list) = strip_bytes_unit(header) else {
        return RangeDecision::Full;
    };
    let mut first: Option<ByteRange> = None;
    let mut rest: Vec<ByteRange> = Vec::new();
    let mut specs = 0usize;
    for spec in spec_list.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            // RFC 9110 list syntax tolerates empty elements ("bytes=0-1,,5-6").
            continue;
        }
        specs += 1;
        if specs > MAX_SPECS {
            return RangeDecision::Full;
        }
        let Some(parsed) = parse_spec(spec) else {
            return RangeDecision::Full;
        };
        if let Some(r) = resolve(parsed, size) {
            if first.is_none() {
                first = Some(r);
            } else {
                rest.push(r);
            }
        }
    }
    if specs == 0 {
        return RangeDecision::Full;
    }
    let Some(first) = first else {
        return RangeDecision::Unsatisfiable;
    };
    if rest.is_empty() {
        return RangeDecision::Single(first);
    }
    rest.push(first);
    let merged = coalesce(rest);
    match merged.len() {
        1 => RangeDecision::Single(merged[0]),
        n if n > max_ranges => RangeDecision::Full,
        _ => RangeDecision::Multi(merged),
    }
}

fn strip_bytes_unit(header: &str) -> Option<&str> {
    let header = header.trim_matches([' ', '\t']);
    let (unit, rest) = header.split_once('=')?;
    unit.trim_end()
        .eq_ignore_ascii_case("bytes")
        .then_some(rest)
}

enum Spec {
    /// `a-b` or `a-`
    FromTo(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (a, b) = spec.split_once('-')?;
    let a = a.trim_matches([' ', '\t']);
    let b = b.trim_matches([' ', '\t']);
    if a.is_empty() {
        return Some(Spec::Suffix(parse_digits(b)?));
    }
    let start = parse_digits(a)?;
    if b.is_empty() {
        return Some(Spec::FromTo(start, None));
    }
    let end = parse_digits(b)?;
    // RFC 9110 §14.1.1: last-pos < first-pos makes the spec invalid, hence the header.
    (end >= start).then_some(Spec::FromTo(start, Some(end)))
}

/// 1*DIGIT, no sign, no overflow.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn resolve(spec: Spec, size: u64) -> Option<ByteRange> {
    if size == 0 {
        return None;
    }
    match spec {
        Spec::FromTo(start, end) => {
            if start >= size {
                return None;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            Some(ByteRange { start, end })
        }
        Spec::Suffix(0) => None,
        Spec::Suffix(n) => Some(ByteRange {
            start: size.saturating_sub(n),
            end: size - 1,
        }),
    }
}

/// Sorts and merges overlapping or touching ranges (RFC 9110 §14.2 lets a server coalesce).
pub fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(1) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn single_forms() {
        assert_eq!(
            decide("bytes=0-499", 1000, 8),
            RangeDecision::Single(r(0, 499))
        );
        assert_eq!(
            decide("bytes=500-", 1000, 8),
            RangeDecision::Single(r(500, 999))
        );
        assert_eq!(
            decide("bytes=-200", 1000, 8),
            RangeDecision::Single(r(800, 999))
        );
        assert_eq!(
            decide("bytes=-5000", 1000, 8),
            RangeDecision::Single(r(0, 999))
        );
        assert_eq!(
            decide("bytes=900-5000", 1000, 8),
            RangeDecision::Single(r(900, 999))
        );
        assert_eq!(
            decide("BYTES = 1-1", 1000, 8),
            RangeDecision::Single(r(1, 1))
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(decide("bytes=1000-", 1000, 8), RangeDecision::Unsatisfiable);
        assert_eq!(decide("bytes=-0", 1000, 8), RangeDecision::Unsatisfiable);
        assert_eq!(decide("bytes=0-0", 0, 8), RangeDecision::Unsatisfiable);
        assert_eq!(
            decide("bytes=2000-3000, 5000-", 1000, 8),
            RangeDecision::Unsatisfiable
        );
    }

    #[test]
    fn malformed_is_ignored() {
        for h in [
            "bytes=5-1",
            "bytes=abc",
            "bytes=",
            "items=0-1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes 0-1",
            "bytes=-",
            "bytes=0-1,x",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(decide(h, 1000, 8), RangeDecision::Full, "{h}");
        }
    }

    #[test]
    fn multi_coalesces_and_caps() {
        assert_eq!(
            decide("bytes=0-9, 20-29", 100, 8),
            RangeDecision::Multi(vec![r(0, 9), r(20, 29)])
        );
        assert_eq!(
            decide("bytes=0-9,5-19,20-29", 100, 8),
            RangeDecision::Single(r(0, 29))
        );
        assert_eq!(
            decide("bytes=50-59,0-9,2000-", 100, 8),
            RangeDecision::Multi(vec![r(0, 9), r(50, 59)])
        );
        assert_eq!(decide("bytes=0-0,2-2,4-4", 100, 2), RangeDecision::Full);
        let many = format!("bytes={}", vec!["0-0"; 300].join(","));
        assert_eq!(decide(&many, 100, 8), RangeDecision::Full);
    }

    proptest! {
        /// Whatever the header, the decision only names bytes inside the object, in ascending,
        /// disjoint order, and never more pieces than allowed.
        #[test]
        fn decisions_stay_inside_the_object(h in "bytes=[0-9,\\- ]{0,40}", size in 0u64..5000) {
            match decide(&h, size, 4) {
                RangeDecision::Single(x) => prop_assert!(x.start <= x.end && x.end < size),
                RangeDecision::Multi(v) => {
                    prop_assert!(v.len() >= 2 && v.len() <= 4);
                    for w in v.windows(2) { prop_assert!(w[0].end + 1 < w[1].start); }
                    for x in &v { prop_assert!(x.start <= x.end && x.end < size); }
                }
                RangeDecision::Full | RangeDecision::Unsatisfiable => {}
            }
        }

        /// Coalescing keeps exactly the same set of bytes.
        #[test]
        fn coalesce_preserves_bytes(v in proptest::collection::vec((0u64..200, 0u64..20), 0..12)) {
            let ranges: Vec<ByteRange> = v.iter().map(|&(s, l)| r(s, s + l)).collect();
            let mut want = std::collections::BTreeSet::new();
            for x in &ranges { for b in x.start..=x.end { want.insert(b); } }
            let merged = coalesce(ranges);
            let mut got = std::collections::BTreeSet::new();
            for x in &merged { for b in x.start..=x.end { got.insert(b); } }
            prop_assert_eq!(want, got);
        }
    }
}
