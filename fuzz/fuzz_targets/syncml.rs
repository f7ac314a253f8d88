//! The SyncML decoder: never panics on any bytes, and what it accepts re-encodes to the same
//! message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scomo_ads::syncml::codec::{decode, encode, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(m) = decode(data, &limits) {
        let again = decode(encode(&m).as_bytes(), &limits).expect("our own encoding decodes");
        assert_eq!(again, m);
    }
    let _ = scomo_ads::syncml::codec::decode_header(data, &limits);
});
