//! Large-object reassembly from arbitrary chunks: never panics, never holds more than the
//! announced size, and completes only with exactly that many bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scomo_ads::syncml::large_object::{Progress, Reassembly};
use scomo_ads::syncml::message::{Item, Meta};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let b64 = data[2] & 1 == 1;
    let mut items = Vec::new();
    for (i, chunk) in data[3..].split(|&b| b == 0xff).enumerate() {
        items.push(Item {
            meta: Meta {
                format: Some(if b64 { "b64" } else { "chr" }.into()),
                size: (i == 0).then_some(size),
                ..Meta::default()
            },
            data: Some(String::from_utf8_lossy(chunk).into_owned()),
            more_data: true,
            ..Item::target("./SCOMO/Inventory/Delivered/x/Data")
        });
    }
    if let Some(last) = items.last_mut() {
        last.more_data = false;
    }
    let Ok((mut r, mut p)) = Reassembly::start(&items[0], 1 << 16) else {
        return;
    };
    for i in &items[1..] {
        match r.push(i) {
            Ok(next) => p = next,
            Err(_) => return,
        }
    }
    if let Progress::Complete(bytes) = p {
        assert_eq!(bytes.len() as u64, size);
    }
});
