//! What a download request will get, decided from its method and headers and the object
//! alone, before the ticket is touched: a 304, a 416, headers only (HEAD), or these bytes.
//! Pure: the handler composes it with the ticket's admission and the body.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};

use super::conditional;
use super::range::{self, RangeDecision};
use crate::ads::tickets::coverage::Coverage;

/// The plan for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// `If-None-Match` names the object: 304, no body.
    NotModified,
    /// No requested range overlaps the object: 416.
    Unsatisfiable,
    /// HEAD: the headers `decision` would have, no body.
    Head(RangeDecision),
    /// These object bytes (`ranges`) go out, framed as `decision` says.
    Send {
        decision: RangeDecision,
        ranges: Coverage,
    },
}

impl Plan {
    /// Whether the plan sends object bytes (and so counts toward the ticket's delivery).
    pub fn sends(&self) -> bool {
        matches!(self, Plan::Send { .. })
    }
}

/// The object facts a plan needs.
pub struct Target<'a> {
    pub size: u64,
    pub etag: &'a HeaderValue,
    pub last_modified: SystemTime,
}

/// Plans a request with `headers` (`head` for HEAD) on `target`, allowing `max_ranges`.
pub fn plan(headers: &HeaderMap, head: bool, target: &Target<'_>, max_ranges: usize) -> Plan {
    let etag = target.etag.as_bytes();
    if conditional::none_match_hits(
        headers
            .get(header::IF_NONE_MATCH)
            .map(HeaderValue::as_bytes),
        etag,
    ) {
        return Plan::NotModified;
    }
    let decision = match headers.get(header::RANGE) {
        Some(range)
            if conditional::if_range_allows(
                headers.get(header::IF_RANGE).map(HeaderValue::as_bytes),
                etag,
                target.last_modified,
            ) =>
        {
            match range.to_str() {
                Ok(text) => range::decide(text, target.size, max_ranges),
                // A Range header that is not text is ignored, as an unparseable one is.
                Err(_) => RangeDecision::Full,
            }
        }
        _ => RangeDecision::Full,
    };
    let mut ranges = Coverage::new();
    match &decision {
        RangeDecision::Unsatisfiable => return Plan::Unsatisfiable,
        _ if head => return Plan::Head(decision),
        RangeDecision::Full => ranges.insert(0, target.size),
        RangeDecision::Single(r) => ranges.insert(r.start, r.end + 1),
        RangeDecision::Multi(rs) => rs.iter().for_each(|r| ranges.insert(r.start, r.end + 1)),
    }
    Plan::Send { decision, ranges }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn target(etag: &HeaderValue) -> Target<'_> {
        Target {
            size: 1000,
            etag,
            last_modified: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn plans() {
        let etag = HeaderValue::from_static("\"abc\"");
        let t = target(&etag);
        let whole = |p: Plan| match p {
            Plan::Send { decision, ranges } => (decision, ranges.covered()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            whole(plan(&headers(&[]), false, &t, 8)),
            (RangeDecision::Full, 1000)
        );
        let (d, n) = whole(plan(&headers(&[("range", "bytes=10-19")]), false, &t, 8));
        assert!(matches!(d, RangeDecision::Single(_)));
        assert_eq!(n, 10);
        // Two ranges: their union is what counts.
        let (d, n) = whole(plan(
            &headers(&[("range", "bytes=0-9,500-509")]),
            false,
            &t,
            8,
        ));
        assert!(matches!(d, RangeDecision::Multi(_)));
        assert_eq!(n, 20);
        assert_eq!(
            plan(&headers(&[("if-none-match", "\"abc\"")]), false, &t, 8),
            Plan::NotModified
        );
        assert_eq!(
            plan(&headers(&[("range", "bytes=5000-")]), false, &t, 8),
            Plan::Unsatisfiable
        );
        assert!(matches!(
            plan(&headers(&[("range", "bytes=0-9")]), true, &t, 8),
            Plan::Head(RangeDecision::Single(_))
        ));
        assert!(!plan(&headers(&[]), true, &t, 8).sends());
        // If-Range with another validator: the whole object, not the range.
        assert_eq!(
            whole(plan(
                &headers(&[("range", "bytes=0-9"), ("if-range", "\"other\"")]),
                false,
                &t,
                8
            )),
            (RangeDecision::Full, 1000)
        );
    }
}
