//! Invariants of the IMMP DATA payload reader on arbitrary input: it never panics, never keeps
//! more than the limit, and stays in step (reads every payload of a stream, with and without
//! LENGTH); base64 and gzip decoding of what it returns never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(2));
    let length = match head.first() {
        Some(b) if b % 2 == 0 => Some(u64::from(head.get(1).copied().unwrap_or(0))),
        _ => None,
    };
    mailgate_immp::fuzz_payloads(rest, length, 4096);
});
