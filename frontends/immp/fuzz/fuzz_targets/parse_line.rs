//! Invariants of the IMMP command parser on arbitrary input: it never panics, and every command
//! it accepts encodes to a line that parses back to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_immp::codec::{encode, parse_line};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(commands) = parse_line(line) {
        for c in commands {
            let again = parse_line(&encode(&c)).expect("an encoded command parses");
            assert_eq!(again, vec![c]);
        }
    }
});
