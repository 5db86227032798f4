//! Between TMTP data and the store's message model: a Post becomes a message readable in
//! every protocol (subject and attachments from its secondary header), and a stored message
//! becomes a `delivery` — byte for byte what the sender posted when it arrived over TMTP,
//! otherwise a secondary header with the subject and the sender's address, then the text and
//! the attachments.

use crate::frame::{OutFrame, TooLong};
use crate::ids;
use bytes::{BufMut, Bytes, BytesMut};
use mailgate_core::message::{Message, Part, SpanEncoding, WireForm, WireSpan};
use mailgate_core::Address;
use serde_json::{json, Map, Value};

/// The protocol name of TMTP wire forms.
pub const PROTOCOL: &str = "tmtp";

/// The data fields of a post, kept in front of its data in the wire form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataFields {
    /// Octets of secondary header.
    pub datahead: u64,
    /// The sender's checksum.
    pub datasum: u64,
    /// PostNotify's recipient count.
    pub notify: Option<u64>,
}

impl DataFields {
    fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("datahead".into(), self.datahead.into());
        m.insert("datasum".into(), self.datasum.into());
        if let Some(n) = self.notify {
            m.insert("notify".into(), n.into());
        }
        Value::Object(m)
    }
}

/// What a secondary header says, as far as the model can use it.
struct Head {
    subject: String,
    attachments: Vec<(String, usize)>,
}

fn read_head(head: &[u8]) -> Head {
    let v: Value = serde_json::from_slice(head).unwrap_or(Value::Null);
    let subject = v["subject"].as_str().unwrap_or_default().to_owned();
    let attachments = v["attach"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|a| {
                    let name = a["name"].as_str()?;
                    let size = usize::try_from(a["size"].as_u64()?).ok()?;
                    // u:, f: and r: say where the file came from; readers want its name.
                    let shown = name
                        .get(2..)
                        .filter(|_| name.as_bytes().get(1) == Some(&b':'));
                    Some((shown.unwrap_or(name).to_owned(), size))
                })
                .collect()
        })
        .unwrap_or_default();
    Head {
        subject,
        attachments,
    }
}

fn media_type(data: &[u8]) -> &'static str {
    if std::str::from_utf8(data).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// The message a Post (or PostNotify's post) stores: subject and attachments from the
/// secondary header, the rest of the data as its text; the wire form keeps the data exactly.
pub fn post_message(
    sender: Address,
    recipients: Vec<Address>,
    fields: DataFields,
    data: &Bytes,
) -> Message {
    let prefix = crate::frame::request(&fields.json(), &[]).unwrap_or_default();
    let mut wire = BytesMut::with_capacity(prefix.len() + data.len());
    wire.put_slice(&prefix);
    wire.put_slice(data);
    let wire = wire.freeze();
    let head_len = usize::try_from(fields.datahead)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let head = read_head(&data[..head_len]);
    let attached: usize = head.attachments.iter().map(|(_, n)| n).sum();
    let rest = data.len() - head_len;
    // Attachments follow the text when their sizes add up; otherwise all of it is text.
    let attachments = if attached <= rest {
        head.attachments
    } else {
        Vec::new()
    };
    let body_end = data.len() - attachments.iter().map(|(_, n)| n).sum::<usize>();
    let base = prefix.len();
    let span = |start: usize, end: usize| {
        Some(WireSpan {
            start: base + start,
            len: end - start,
            encoding: SpanEncoding::Raw,
        })
    };
    let mut spans = vec![span(head_len, body_end)];
    let mut parts = vec![Part {
        name: "body".into(),
        media_type: media_type(&data[head_len..body_end]).into(),
        data: data.slice(head_len..body_end),
        content: true,
    }];
    let mut at = body_end;
    for (name, size) in attachments {
        parts.push(Part {
            name,
            media_type: "application/octet-stream".into(),
            data: data.slice(at..at + size),
            content: false,
        });
        spans.push(span(at, at + size));
        at += size;
    }
    let mut m = Message::new(sender, recipients, head.subject, "");
    m.parts = parts;
    m.wire = Some(WireForm {
        protocol: PROTOCOL.into(),
        bytes: wire,
        spans,
    });
    m
}

/// Split a TMTP wire form into its data fields and data.
fn split_wire(wire: &Bytes) -> Option<(DataFields, Bytes)> {
    let len = usize::from_str_radix(std::str::from_utf8(wire.get(..4)?).ok()?, 16).ok()?;
    let head: Value = serde_json::from_slice(wire.get(4..4 + len)?).ok()?;
    let fields = DataFields {
        datahead: head["datahead"].as_u64()?,
        datasum: head["datasum"].as_u64()?,
        notify: head["notify"].as_u64(),
    };
    Some((fields, wire.slice(4 + len..)))
}

/// The secondary header and data a message from another protocol is delivered with.
fn foreign_data(message: &Message) -> (DataFields, Bytes) {
    let body = message
        .parts
        .iter()
        .find(|p| p.content)
        .map(|p| p.data.clone())
        .unwrap_or_default();
    let attached: Vec<&Part> = message.parts.iter().filter(|p| !p.content).collect();
    let mut head = json!({
        "threadid": "",
        "alias": message.sender.to_string(),
        "from": message.sender.to_string(),
        "subject": message.subject,
    });
    if !attached.is_empty() {
        head["attach"] = attached
            .iter()
            .map(|p| json!({"name": format!("u:{}", p.name), "size": p.data.len()}))
            .collect();
    }
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut data = BytesMut::new();
    data.put_slice(&head);
    data.put_slice(&body);
    for p in attached {
        data.put_slice(&p.data);
    }
    (
        DataFields {
            datahead: head.len() as u64,
            ..DataFields::default()
        },
        data.freeze(),
    )
}

/// A stored message as a `delivery` with this TMTP id, from `from` (the sender's uid, or its
/// address when the sender is no member).
pub fn delivery(message: &Message, tmtp_id: &str, from: &str) -> Result<Bytes, TooLong> {
    let kept = message
        .wire
        .as_ref()
        .filter(|w| w.protocol == PROTOCOL)
        .and_then(|w| split_wire(&w.bytes));
    let (fields, data) = kept.unwrap_or_else(|| foreign_data(message));
    let mut frame = OutFrame::new("delivery")
        .with("id", tmtp_id)
        .with("from", from)
        .with("posted", ids::posted(message.received_at))
        .with_data(data);
    if fields.datahead != 0 {
        frame.set("datahead", fields.datahead);
    }
    if fields.datasum != 0 {
        frame.set("datasum", fields.datasum);
    }
    if let Some(n) = fields.notify {
        frame.set("notify", n);
    }
    frame.encode_with_headsum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse_any(s).unwrap()
    }

    #[test]
    fn a_post_keeps_its_data_and_shows_subject_text_and_attachments() {
        let head = br#"{"alias":"alice-alias","subject":"Hi","threadid":"","attach":[{"name":"u:a.bin","size":3}]}"#;
        let mut data = head.to_vec();
        data.extend_from_slice(b"hello\x00\x01\x02");
        let data = Bytes::from(data);
        let fields = DataFields {
            datahead: head.len() as u64,
            datasum: 7,
            notify: None,
        };
        let m = post_message(addr("a@x.test"), vec![addr("b@x.test")], fields, &data);
        assert_eq!(m.subject, "Hi");
        assert_eq!(&m.parts[0].data[..], b"hello");
        assert_eq!(m.parts[1].name, "a.bin");
        assert_eq!(&m.parts[1].data[..], b"\x00\x01\x02");
        let out = delivery(&m, "id1", "UID").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&out[..4]).unwrap(), 16).unwrap();
        let h: Value = serde_json::from_slice(&out[4..4 + len]).unwrap();
        assert_eq!(h["datahead"], head.len());
        assert_eq!(h["datasum"], 7);
        assert_eq!(h["datalen"], data.len());
        assert_eq!(&out[4 + len..], &data[..]);
    }

    #[test]
    fn mail_from_another_protocol_carries_subject_and_sender_in_the_datahead() {
        let m = Message::new(addr("c@y.test"), vec![addr("b@x.test")], "Subj", "text");
        let out = delivery(&m, "id2", "c@y.test").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&out[..4]).unwrap(), 16).unwrap();
        let h: Value = serde_json::from_slice(&out[4..4 + len]).unwrap();
        let dh = h["datahead"].as_u64().unwrap() as usize;
        let data = &out[4 + len..];
        let sec: Value = serde_json::from_slice(&data[..dh]).unwrap();
        assert_eq!(sec["subject"], "Subj");
        assert_eq!(sec["from"], "c@y.test");
        assert_eq!(&data[dh..], b"text");
    }
}
