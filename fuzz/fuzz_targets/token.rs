//! Token verification: never panics, and nothing but a minted token verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scomo_ads::ads::token::{Keyring, TicketId};

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::single(1, [7; 32]);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let genuine = ring.mint(TicketId([1; 16]), 1000);
    if ring.verify(s, 0).is_ok() {
        assert_eq!(s, genuine, "a token that was never minted verified");
    }
});
