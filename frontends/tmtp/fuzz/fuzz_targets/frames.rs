//! TMTP input from strangers: the bytes as a stream of frames through the frame reader and the
//! request check, then as a post's data into the message model and back out as a delivery.
//! Never panics; a post's data comes back byte for byte.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mailgate_core::Address;
use mailgate_tmtp::frame::{read_header, read_data};
use mailgate_tmtp::render::{delivery, post_message, DataFields};
use mailgate_tmtp::request::check;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let mut input = data;
        let mut buf = Vec::new();
        while let Ok(Some(h)) = read_header(&mut input, &mut buf).await {
            if !check(&h) || h.datalen as usize > input.len() {
                break;
            }
            if read_data(&mut input, h.datalen as usize).await.is_err() {
                break;
            }
        }
    });
    let head = data.first().map_or(0, |b| u64::from(*b)).min(data.len() as u64);
    let fields = DataFields { datahead: head, datasum: 1, notify: None };
    let sender = Address::new("alice", "a.test").unwrap();
    let recipient = Address::new("bob", "a.test").unwrap();
    let bytes = Bytes::copy_from_slice(data);
    let m = post_message(sender, vec![recipient], fields, &bytes);
    let out = delivery(&m, "id", "UID").unwrap();
    assert!(out.ends_with(data));
});
