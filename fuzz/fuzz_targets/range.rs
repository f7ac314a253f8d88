//! Range header parsing: never panics, and every decision stays inside the object.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scomo_ads::ads::download::range::{decide, RangeDecision};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) % (1 << 40);
    let Ok(header) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    match decide(header, size, 16) {
        RangeDecision::Single(r) => assert!(r.start <= r.end && r.end < size),
        RangeDecision::Multi(v) => {
            assert!(v.len() >= 2 && v.len() <= 16);
            for w in v.windows(2) {
                assert!(w[0].end + 1 < w[1].start);
            }
            for r in &v {
                assert!(r.start <= r.end && r.end < size);
            }
        }
        RangeDecision::Full | RangeDecision::Unsatisfiable => {}
    }
});
