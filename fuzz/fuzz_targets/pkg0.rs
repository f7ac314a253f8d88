//! Package 0 decoding and verification: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scomo_ads::syncml::pkg0;

fuzz_target!(|data: &[u8]| {
    if let Ok((n, _)) = pkg0::decode(data) {
        let _ = pkg0::verify(data, &n.server_id, "pw", &[b"nonce"]);
    }
});
