//! The WBXML decoder: never panics on any bytes, and what it accepts re-encodes (in WBXML and
//! in XML) to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scomo_ads::syncml::codec::{self, Limits};
use scomo_ads::syncml::wbxml::{decode, decode_header, encode};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(m) = decode(data, &limits) {
        let again = decode(&encode(&m), &limits).expect("our own WBXML decodes");
        assert_eq!(again, m);
        let xml = codec::decode(codec::encode(&m).as_bytes(), &limits).expect("and our XML");
        assert_eq!(xml, m);
    }
    let _ = decode_header(data, &limits);
});
