//! SMTP command lines and RFC 5322 / MIME messages from strangers: the input's lines through
//! the command parser, then the whole input through the MIME-to-model conversion. Never
//! panics; every accepted MAIL/RCPT path is a valid address; an accepted BDAT carries its size
//! and nothing more; the model keeps the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_core::Address;
use mailgate_smtp::command::{parse, Command, MAX_COMMAND_LINE};

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_COMMAND_LINE {
            continue;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        match parse(text) {
            Ok(Command::Mail { from: Some(a), .. }) | Ok(Command::Rcpt(a)) => {
                // What the parser accepts prints as an address that parses back to it.
                let printed = a.to_string();
                assert_eq!(Address::parse_any(&printed).ok(), Some(a), "{printed}");
            }
            Ok(Command::Bdat { size, last }) => {
                // An accepted chunk size is the number written, and nothing else rode along.
                let printed = format!("BDAT {size}{}", if last { " LAST" } else { "" });
                assert_eq!(parse(&printed), Ok(Command::Bdat { size, last }), "{text:?}");
                assert!(text.split(' ').count() <= 3, "{text:?}");
            }
            _ => {}
        }
    }
    let sender = Address::new("carol", "b.test").unwrap();
    let recipient = Address::new("bob", "a.test").unwrap();
    let m = mailgate_smtp::mime::to_model(bytes::Bytes::copy_from_slice(data), sender, vec![recipient]);
    assert_eq!(&m.wire.as_ref().unwrap().bytes[..], data);
    assert_eq!(m.parts.iter().filter(|p| p.content).count(), 1);
});
