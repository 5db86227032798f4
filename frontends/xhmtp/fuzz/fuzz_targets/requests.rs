//! Invariants of the XHMTP request bodies on arbitrary input: a notification or a submission
//! is parsed and checked (message URL, sender, date; parts into a message) without a panic,
//! whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_core::Address;
use mailgate_xhmtp::wire::{self, NotifyRequest, SubmitRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(me) = Address::new("bob", "b.test") else {
        return;
    };
    if let Ok(n) = serde_json::from_slice::<NotifyRequest>(data) {
        let _ = mailgate_xhmtp::routes::check_url(&n.url, &me);
        if let Some(from) = n.from.as_deref() {
            let _ = wire::parse_address(from);
        }
        if let Some(date) = n.date.as_deref() {
            let _ = wire::parse_date(date);
        }
    }
    if let Ok(s) = serde_json::from_slice::<SubmitRequest>(data) {
        let _ = s.into_message(me.clone());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wire::parse_address(text);
        let _ = wire::parse_id(text);
    }
});
