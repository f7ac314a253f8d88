//! Conditional request decisions (RFC 9110 §13): `If-Range` and `If-None-Match`. Pure.

use std::time::SystemTime;

/// Whether the `Range` header may be honoured given the request's `If-Range` value: with no
/// `If-Range`, yes; with an entity tag, only if it strongly equals ours; with a date, only if
/// it equals our `Last-Modified` exactly. Anything else means "send the whole object".
pub fn if_range_allows(if_range: Option<&[u8]>, etag: &[u8], last_modified: SystemTime) -> bool {
    let Some(value) = if_range else {
        return true;
    };
    let value = trim(value);
    if value.starts_with(b"W/") {
        // Weak validators never match in If-Range (§13.1.5).
        return false;
    }
    if value.starts_with(b"\"") {
        return value == etag;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    match httpdate::parse_http_date(text) {
        Ok(date) => date == truncate_to_secs(last_modified),
        Err(_) => false,
    }
}

/// Whether `If-None-Match` matches our entity tag (weak comparison, §13.1.2), meaning a GET or
/// HEAD should be answered with 304.
pub fn none_match_hits(if_none_match: Option<&[u8]>, etag: &[u8]) -> bool {
    let Some(value) = if_none_match else {
        return false;
    };
    let value = trim(value);
    if value == b"*" {
        return true;
    }
    let ours = strip_weak(etag);
    value
        .split(|&b| b == b',')
        .map(trim)
        .any(|candidate| strip_weak(candidate) == ours)
}

fn strip_weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TAG: &[u8] = b"\"abc\"";

    fn lm() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn if_range() {
        assert!(if_range_allows(None, TAG, lm()));
        assert!(if_range_allows(Some(b"\"abc\""), TAG, lm()));
        assert!(!if_range_allows(Some(b"\"abd\""), TAG, lm()));
        assert!(!if_range_allows(Some(b"W/\"abc\""), TAG, lm()));
        let date = httpdate::fmt_http_date(lm());
        assert!(if_range_allows(Some(date.as_bytes()), TAG, lm()));
        let other = httpdate::fmt_http_date(lm() + Duration::from_secs(1));
        assert!(!if_range_allows(Some(other.as_bytes()), TAG, lm()));
        assert!(!if_range_allows(Some(b"garbage"), TAG, lm()));
        assert!(!if_range_allows(Some(&[0xff, 0xfe]), TAG, lm()));
    }

    #[test]
    fn if_none_match() {
        assert!(!none_match_hits(None, TAG));
        assert!(none_match_hits(Some(b"*"), TAG));
        assert!(none_match_hits(Some(b"\"x\", W/\"abc\""), TAG));
        assert!(!none_match_hits(Some(b"\"x\""), TAG));
    }
}
