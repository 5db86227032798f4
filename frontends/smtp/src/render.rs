//! The model rendered as an RFC 5322 / MIME message with mail-builder, for SMTP delivery: the
//! envelope sender as `From`, the recipient as `To`, subject, date, `Message-ID` (the origin
//! id, else one made from the store id), the content part as the text or HTML body, the other
//! parts as attachments, and this gateway's verdicts in a `Mailgate-Verdicts` field. A delivery
//! report (a bounce) becomes `multipart/report; report-type=delivery-status` (RFC 3464).
//! Encrypted content goes as the armored OpenPGP text it is; the gateway cannot read it.

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;
use mailgate_core::message::DELIVERY_STATUS;
use mailgate_core::{Address, Message};

/// `message` as MIME for `recipient`.
pub fn to_mime(message: &Message, recipient: &Address) -> Vec<u8> {
    let sender = message.sender.to_string();
    let to = recipient.to_string();
    let message_id = message
        .origin_id
        .clone()
        .unwrap_or_else(|| format!("{}@{}", message.id.0, message.sender.domain));
    let mut builder = MessageBuilder::new()
        .from(sender)
        .to(to)
        .subject(message.subject.clone())
        .date(message.received_at.div_euclid(1000))
        .message_id(message_id);
    if let Some(verdicts) = message.security.verdicts().header() {
        builder = builder.header("Mailgate-Verdicts", Raw::new(verdicts));
    }
    let parts = body_parts(message);
    if message
        .parts
        .iter()
        .any(|p| p.media_type == DELIVERY_STATUS)
    {
        let report = MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            parts,
        );
        builder = builder.body(report);
    } else if parts.len() == 1 {
        builder = builder.body(parts.into_iter().next().unwrap_or_else(empty_text));
    } else {
        builder = builder.body(MimePart::new("multipart/mixed", parts));
    }
    builder.write_to_vec().unwrap_or_default()
}

fn empty_text() -> MimePart<'static> {
    MimePart::new("text/plain", String::new())
}

/// The MIME parts: the content (or the armored ciphertext), then every other part.
fn body_parts(message: &Message) -> Vec<MimePart<'static>> {
    let mut out = Vec::with_capacity(message.parts.len() + 1);
    if let Some(armored) = &message.security.encrypted {
        out.push(MimePart::new("text/plain", armored.clone()));
    }
    for part in &message.parts {
        let media_type = part
            .media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let text = media_type.starts_with("text/") || media_type == DELIVERY_STATUS;
        let mime = match (text, std::str::from_utf8(&part.data)) {
            (true, Ok(s)) => MimePart::new(ContentType::new(media_type), s.to_owned()),
            _ => MimePart::new(ContentType::new(media_type), part.data.to_vec()),
        };
        out.push(if part.content || part.media_type == DELIVERY_STATUS {
            mime
        } else {
            let name = if part.name.is_empty() {
                "attachment"
            } else {
                &part.name
            };
            mime.attachment(name.to_owned())
        });
    }
    if out.is_empty() {
        out.push(empty_text());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mailgate_core::Part;

    fn addr(s: &str) -> Address {
        Address::parse_imid(s).unwrap()
    }

    #[test]
    fn a_model_message_round_trips_through_mime() {
        let mut m = Message::new(
            addr("alice@a.test"),
            vec![addr("bob@legacy.test")],
            "Grüße",
            "Hello Bob\n",
        );
        m.origin_id = Some("m1@a.test".into());
        m.parts.push(Part {
            name: "logo.png".into(),
            media_type: "image/png".into(),
            data: Bytes::from_static(&[0, 1, 2, 255]),
            content: false,
        });
        let raw = to_mime(&m, &addr("bob@legacy.test"));
        let back = crate::mime::to_model(Bytes::from(raw), m.sender.clone(), m.recipients.clone());
        assert_eq!(back.subject, "Grüße");
        assert_eq!(back.origin_id.as_deref(), Some("m1@a.test"));
        assert_eq!(back.body_text().trim_end(), "Hello Bob");
        assert_eq!(back.parts[1].name, "logo.png");
        assert_eq!(&back.parts[1].data[..], &[0, 1, 2, 255]);
    }

    #[test]
    fn a_delivery_report_is_multipart_report() {
        let mut m = Message::new(
            addr("mailer-daemon@a.test"),
            vec![addr("alice@a.test")],
            "Undeliverable",
            "No.\n",
        );
        m.parts.push(Part {
            name: String::new(),
            media_type: DELIVERY_STATUS.into(),
            data: Bytes::from_static(b"Reporting-MTA: dns; a.test\r\n\r\nFinal-Recipient: rfc822; bob@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
            content: false,
        });
        let raw = String::from_utf8(to_mime(&m, &addr("alice@a.test"))).unwrap();
        assert!(raw.contains("multipart/report"), "{raw}");
        assert!(
            raw.contains("report-type=delivery-status")
                || raw.contains("report-type=\"delivery-status\""),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: message/delivery-status"),
            "{raw}"
        );
        assert!(raw.contains("Final-Recipient: rfc822; bob@b.test"), "{raw}");
    }
}
