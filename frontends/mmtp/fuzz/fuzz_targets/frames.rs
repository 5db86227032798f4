//! Invariants of the MMTP frame reader and SEND packet parser on arbitrary input: neither
//! panics; every frame the reader cuts is one complete JSON value of at most the frame limit;
//! the packet parser accepts or refuses every frame's `data.packet` with a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailgate_mmtp::codec::{CodecError, FrameReader};

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let mut frames = FrameReader::new(data, MAX);
        for _ in 0..64 {
            match frames.next_frame().await {
                Ok(frame) => {
                    let bytes = frame.bytes().clone();
                    assert!(bytes.len() <= MAX);
                    // One complete JSON value (numbers may be beyond f64: RawValue keeps them).
                    assert!(serde_json::from_slice::<&serde_json::value::RawValue>(&bytes).is_ok());
                    let value = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                    let _ = mailgate_mmtp::packet::parse_send(bytes, "127.0.0.1");
                    if let Some(packet) = value.as_ref().and_then(|v| v.pointer("/data/packet")) {
                        let _ = mailgate_mmtp::packet::parse_send(packet.to_string(), "127.0.0.1");
                    }
                }
                Err(CodecError::Closed | CodecError::Truncated | CodecError::Io(_)) => break,
                Err(_) => {}
            }
        }
    });
});

