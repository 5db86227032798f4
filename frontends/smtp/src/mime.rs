//! An RFC 5322 / MIME message, as SMTP delivers it, turned into the model with mail-parser:
//! the subject, the text body (HTML when there is no text) as the content part, attachments as
//! further parts, `Message-ID` as the origin id. The bytes as received are kept as the wire
//! form, so mail relayed on over SMTP leaves unchanged.

use bytes::Bytes;
use mail_parser::{MessageParser, MimeHeaders};
use mailgate_core::message::WireForm;
use mailgate_core::{Address, Message, Part};

/// The wire-form protocol name of mail that arrived over SMTP.
pub const WIRE_PROTOCOL: &str = "smtp";

/// Build the model of `raw` for the envelope `sender` → `recipients`.
pub fn to_model(raw: Bytes, sender: Address, recipients: Vec<Address>) -> Message {
    let mut message = Message::new(sender, recipients, "", "");
    message.parts.clear();
    if let Some(parsed) = MessageParser::default().parse(&raw[..]) {
        message.subject = parsed.subject().unwrap_or_default().to_owned();
        message.origin_id = parsed.message_id().map(str::to_owned);
        let (body, media_type) = match parsed.body_text(0) {
            Some(text) => (Some(text.into_owned()), "text/plain"),
            None => (parsed.body_html(0).map(|h| h.into_owned()), "text/html"),
        };
        message.parts.push(Part {
            name: String::new(),
            media_type: media_type.to_owned(),
            data: Bytes::from(body.unwrap_or_default()),
            content: true,
        });
        for (i, attachment) in parsed.attachments().enumerate() {
            let media_type = attachment
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            message.parts.push(Part {
                name: attachment
                    .attachment_name()
                    .map_or_else(|| format!("attachment-{}", i + 1), str::to_owned),
                media_type: media_type.to_ascii_lowercase(),
                data: Bytes::copy_from_slice(attachment.contents()),
                content: false,
            });
        }
    } else {
        // Not MIME at all: the text as it came is the body.
        message
            .parts
            .push(Part::text_body(String::from_utf8_lossy(&raw)));
    }
    message.wire = Some(WireForm::new(WIRE_PROTOCOL, raw));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_message_becomes_subject_body_and_attachment() {
        let raw = "From: Alice <alice@b.test>\r\nTo: bob@a.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
            Message-ID: <m1@b.test>\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob\r\n\
            --b\r\nContent-Type: image/png; name=\"logo.png\"\r\nContent-Disposition: attachment; filename=\"logo.png\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b--\r\n";
        let m = to_model(
            Bytes::from(raw),
            Address::parse_imid("alice@b.test").unwrap(),
            vec![Address::parse_imid("bob@a.test").unwrap()],
        );
        assert_eq!(m.subject, "Grüße");
        assert_eq!(m.origin_id.as_deref(), Some("m1@b.test"));
        assert_eq!(m.body_text().trim_end(), "Hello Bob");
        assert_eq!(m.parts.len(), 2);
        assert_eq!(m.parts[1].name, "logo.png");
        assert_eq!(m.parts[1].media_type, "image/png");
        assert_eq!(&m.parts[1].data[..], &[0, 1, 2, 255]);
        assert_eq!(m.wire.as_ref().unwrap().bytes, Bytes::from(raw));
    }
}
